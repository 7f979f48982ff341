// The KV cache memory, owned by the core and lent to the forward pass (zero copies).
//
// Layout per layer, for keys and for values: [batch, kv_heads, max_seq, head_dim] float32, the layout
// GroupQueryAttention reads and writes in place. Memory comes from the OS untouched, so only the
// positions actually written become resident: a 8k-token context costs nothing until it is used. Each
// request gives back the pages of positions it cannot reach (release_from), so resident KV follows the
// current context, not the longest one seen (SmolLM2: 46 KB per position).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace edgeai {

class KVCache {
public:
    KVCache(int layers, int kv_heads, int head_dim, int max_seq);

    // Makes room for `batch` rows; a reallocation keeps nothing (the caller re-fills) and bumps version().
    // Strong guarantee: if an allocation throws (std::bad_alloc), the old buffers, batch and version stay as
    // they were, so a forward pass bound to them never touches freed memory.
    void ensure_batch(int batch);

    // One layer's keys (value false) or values, for binding to the forward pass; the layer is checked
    // (std::out_of_range naming it), as it arrives from Python.
    float* layer_buffer(int layer, bool value);
    float* key(int layer) { return buffers_[2 * layer].get(); }
    float* value(int layer) { return buffers_[2 * layer + 1].get(); }
    int layers() const { return layers_; }
    int kv_heads() const { return kv_heads_; }
    int head_dim() const { return head_dim_; }
    int max_seq() const { return max_seq_; }
    int batch_capacity() const { return batch_; }
    uint64_t version() const { return version_; }
    size_t bytes_per_position() const { return static_cast<size_t>(2) * layers_ * kv_heads_ * head_dim_ * sizeof(float); }

    // Copies positions [0, n) of row src into row dst (every layer, keys and values). Rows and n are
    // checked (std::out_of_range): a bad index would read or write outside the buffers.
    void copy_row(int src, int dst, int n);
    // Beam reordering: new row b = old row parents[b], positions [0, n); checked like copy_row.
    void gather_rows(const std::vector<int32_t>& parents, int n);
    // Compact copy of positions [0, n) of `row`; restore() puts back its first n positions into `row`
    // (n <= snap_len, the length the snapshot was taken with). Rows and n are checked like copy_row.
    std::vector<float> snapshot(int n, int row = 0) const;
    void restore(const std::vector<float>& snap, int snap_len, int n, int row = 0);

    // The forward pass wrote positions [0, end) of some rows: remembered so release_from knows what is resident.
    void note_written(int end) { written_end_ = std::max(written_end_, end); }
    // Returns the memory of positions [pos, max_seq) of every row to the OS (their contents are lost; a later
    // write faults in zeroed pages). After a long prompt, a shorter request then keeps only what it uses
    // resident instead of the longest context ever seen (Linux/macOS; a no-op elsewhere).
    void release_from(int pos);

private:
    size_t row_floats() const { return static_cast<size_t>(kv_heads_) * max_seq_ * head_dim_; }
    void check_row(int row, const char* what) const;
    void check_len(int n) const;
    int layers_, kv_heads_, head_dim_, max_seq_;
    int batch_ = 0;
    int written_end_ = 0;  // no position at or past this was written since the last release
    uint64_t version_ = 0;
    std::vector<std::unique_ptr<float[]>> buffers_;
};

}  // namespace edgeai
