// Prefix cache: KV snapshots of earlier prompts, reused when a new prompt starts with the same tokens
// (a fixed system prompt, the earlier turns of a chat, the same retrieved context).
// Bounded in bytes; the least recently used snapshot goes first.
#pragma once

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

}  // namespace edgeai
