// Prefix cache: KV snapshots of earlier prompts, reused when a new prompt starts with the same tokens
// (a fixed system prompt, the earlier turns of a chat, the same retrieved context).
// Bounded in bytes; the least recently used snapshot goes first.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <list>
#include <vector>

namespace edgeai {

struct PromptCacheEntry {
    std::vector<int32_t> tokens;
    std::vector<float> kv;  // KVCache::snapshot of tokens.size() positions
};

class PromptCache {
public:
    explicit PromptCache(size_t capacity_bytes) : capacity_(capacity_bytes) {}

    // The entry sharing the longest prefix with `prompt`, and that length (0 and nullptr when none).
    // A hit becomes the most recently used.
    const PromptCacheEntry* lookup(const std::vector<int32_t>& prompt, size_t& shared);
    void insert(std::vector<int32_t> tokens, std::vector<float> kv);
    void clear() { entries_.clear(); used_ = 0; }
    void set_capacity(size_t bytes);
    size_t capacity() const { return capacity_; }
    size_t used_bytes() const { return used_; }
    size_t size() const { return entries_.size(); }

private:
    void evict_to(size_t limit);
    size_t capacity_;
    size_t used_ = 0;
    std::list<PromptCacheEntry> entries_;  // front = most recently used
};

size_t common_prefix(const std::vector<int32_t>& a, const std::vector<int32_t>& b);

// Exact reuse. With int8 activations (MatMulNBits, accuracy level 4) a prefill chunk of M >= 2 rows gives each
// row the same bits whatever M and wherever the chunk starts, while a 1-row pass takes another kernel path and
// rounds differently (measured on the real Qwen2.5-Coder-0.5B q4: the logits were bit-identical with chunks of
// 128, 17 and 6 tokens; a last chunk of one token changed them). A fresh prefill cuts a prompt into chunks at
// multiples of `chunk` from position 0, so its only 1-row pass is a last chunk of one token.
//
// The longest prefix of a prompt of prompt_len tokens, of which `shared` tokens' keys/values are at hand, that
// a request may reuse with the rest computed as a fresh prefill would: never the last prompt token (its logits
// start generation), and when the prefix ends mid-chunk the rest of that chunk keeps >= 2 rows.
inline size_t reusable_prefix(size_t shared, size_t prompt_len, size_t chunk) {
    if (prompt_len == 0 || chunk == 0) return 0;
    size_t p = std::min(shared, prompt_len - 1);
    const size_t start = p - p % chunk;
    if (p != start) {
        const size_t end = std::min(start + chunk, prompt_len);
        if (end - p < 2) p = end - 2;  // >= start, since that chunk holds at least p - start + 1 >= 2 rows
    }
    return p;
}

// Whether the positions of a prefill chunk of `len` rows may be cached: computed as every fresh prefill
// computes them (with chunk 1 every pass has one row, so all are alike).
inline bool exact_chunk(int len, int chunk) { return len >= 2 || chunk == 1; }

}  // namespace edgeai
