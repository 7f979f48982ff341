#include "kv_cache.h"

#if defined(__unix__) || defined(__APPLE__)
#include <sys/mman.h>
#include <unistd.h>
#define EDGEAI_HAVE_MADVISE 1
#endif

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

namespace edgeai {

KVCache::KVCache(int layers, int kv_heads, int head_dim, int max_seq)
    : layers_(layers), kv_heads_(kv_heads), head_dim_(head_dim), max_seq_(max_seq) {
    if (layers <= 0 || kv_heads <= 0 || head_dim <= 0 || max_seq <= 0)
        throw std::invalid_argument("KV cache dimensions must be positive");
    ensure_batch(1);
}

void KVCache::ensure_batch(int batch) {
    if (batch <= batch_) return;
    const size_t floats = row_floats() * static_cast<size_t>(batch);
    if (floats / static_cast<size_t>(batch) != row_floats() || floats > SIZE_MAX / sizeof(float) / 2)
        throw std::length_error("KV cache for " + std::to_string(batch) + " rows does not fit in memory");
    // Allocate everything before giving anything back: if an allocation throws, the old buffers (which the
    // forward pass may still be bound to) stay valid and nothing changes.
    std::vector<std::unique_ptr<float[]>> fresh;
    fresh.reserve(2 * static_cast<size_t>(layers_));
    for (int i = 0; i < 2 * layers_; ++i)
        // new float[] without value-initialisation: pages stay untouched (not resident) until written.
        fresh.emplace_back(new float[floats]);
    buffers_.swap(fresh);
    written_end_ = 0;
    batch_ = batch;
    ++version_;
}

float* KVCache::layer_buffer(int layer, bool value) {
    if (layer < 0 || layer >= layers_)
        throw std::out_of_range("layer " + std::to_string(layer) + " is outside [0, " + std::to_string(layers_) + ")");
    return value ? this->value(layer) : key(layer);
}

void KVCache::check_row(int row, const char* what) const {
    if (row < 0 || row >= batch_)
        throw std::out_of_range(std::string(what) + " row " + std::to_string(row) + " is outside [0, " +
                                std::to_string(batch_) + ")");
}

void KVCache::check_len(int n) const {
    if (n < 0 || n > max_seq_)
        throw std::out_of_range("KV length " + std::to_string(n) + " is outside [0, " + std::to_string(max_seq_) + "]");
}

void KVCache::copy_row(int src, int dst, int n) {
    check_row(src, "copy_row source");
    check_row(dst, "copy_row destination");
    check_len(n);
    if (src == dst) return;
    const size_t run = static_cast<size_t>(n) * head_dim_;
    for (auto& buf : buffers_)
        for (int h = 0; h < kv_heads_; ++h) {
            const size_t head = static_cast<size_t>(h) * max_seq_ * head_dim_;
            std::memcpy(buf.get() + dst * row_floats() + head, buf.get() + src * row_floats() + head, run * sizeof(float));
        }
}

void KVCache::gather_rows(const std::vector<int32_t>& parents, int n) {
    if (parents.size() > static_cast<size_t>(batch_))
        throw std::out_of_range("gather_rows: " + std::to_string(parents.size()) + " parents for " +
                                std::to_string(batch_) + " rows");
    for (int32_t p : parents) check_row(p, "gather_rows parent");
    check_len(n);
    const int rows = static_cast<int>(parents.size());
    const size_t run = static_cast<size_t>(n) * head_dim_;
    std::vector<float> tmp(static_cast<size_t>(rows) * kv_heads_ * run);
    for (auto& buf : buffers_) {
        for (int b = 0; b < rows; ++b)
            for (int h = 0; h < kv_heads_; ++h)
                std::memcpy(tmp.data() + (static_cast<size_t>(b) * kv_heads_ + h) * run,
                            buf.get() + parents[b] * row_floats() + static_cast<size_t>(h) * max_seq_ * head_dim_,
                            run * sizeof(float));
        for (int b = 0; b < rows; ++b)
            for (int h = 0; h < kv_heads_; ++h)
                std::memcpy(buf.get() + b * row_floats() + static_cast<size_t>(h) * max_seq_ * head_dim_,
                            tmp.data() + (static_cast<size_t>(b) * kv_heads_ + h) * run, run * sizeof(float));
    }
}

std::vector<float> KVCache::snapshot(int n, int row) const {
    check_row(row, "snapshot row");
    check_len(n);
    const size_t run = static_cast<size_t>(n) * head_dim_;
    std::vector<float> out(buffers_.size() * kv_heads_ * run);
    float* o = out.data();
    for (const auto& buf : buffers_)
        for (int h = 0; h < kv_heads_; ++h, o += run)
            std::memcpy(o, buf.get() + row * row_floats() + static_cast<size_t>(h) * max_seq_ * head_dim_,
                        run * sizeof(float));
    return out;
}

void KVCache::release_from(int pos) {
    pos = std::max(pos, 0);
    if (pos >= written_end_) return;
#ifdef EDGEAI_HAVE_MADVISE
    const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
    for (auto& buf : buffers_)
        for (int span = 0; span < batch_ * kv_heads_; ++span) {  // one [max_seq, head_dim] run per row and head
            const float* run = buf.get() + static_cast<size_t>(span) * max_seq_ * head_dim_;
            // Whole pages strictly inside the run only: the edges may hold live positions or, at the end of
            // the buffer, the allocator's bookkeeping.
            uintptr_t from = reinterpret_cast<uintptr_t>(run + static_cast<size_t>(pos) * head_dim_);
            uintptr_t to = reinterpret_cast<uintptr_t>(run + static_cast<size_t>(max_seq_) * head_dim_);
            from = (from + page - 1) / page * page;
            to = to / page * page;
            if (to > from) madvise(reinterpret_cast<void*>(from), to - from, MADV_DONTNEED);
        }
#endif
    written_end_ = pos;
}

void KVCache::restore(const std::vector<float>& snap, int snap_len, int n, int row) {
    const size_t stride = static_cast<size_t>(snap_len) * head_dim_;
    check_row(row, "restore row");
    check_len(n);
    if (n > snap_len || snap.size() < buffers_.size() * kv_heads_ * stride) throw std::logic_error("KV snapshot too short");
    const float* s = snap.data();
    note_written(n);
    for (auto& buf : buffers_)
        for (int h = 0; h < kv_heads_; ++h, s += stride)
            std::memcpy(buf.get() + row * row_floats() + static_cast<size_t>(h) * max_seq_ * head_dim_, s,
                        static_cast<size_t>(n) * head_dim_ * sizeof(float));
}

}  // namespace edgeai
