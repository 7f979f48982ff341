#include "prompt_cache.h"

#include <algorithm>

namespace edgeai {

size_t common_prefix(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
    size_t n = std::min(a.size(), b.size()), i = 0;
    while (i < n && a[i] == b[i]) ++i;
    return i;
}

const PromptCacheEntry* PromptCache::lookup(const std::vector<int32_t>& prompt, size_t& shared) {
    shared = 0;
    auto best = entries_.end();
    for (auto it = entries_.begin(); it != entries_.end(); ++it) {
        size_t s = common_prefix(it->tokens, prompt);
        if (s > shared) {
            shared = s;
            best = it;
        }
    }
    if (best == entries_.end()) return nullptr;
    entries_.splice(entries_.begin(), entries_, best);
    return &entries_.front();
}

void PromptCache::insert(std::vector<int32_t> tokens, std::vector<float> kv) {
    size_t bytes = kv.size() * sizeof(float);
    if (bytes > capacity_ || tokens.empty()) return;
    // An entry that is a prefix of the new one is superseded by it.
    for (auto it = entries_.begin(); it != entries_.end();) {
        if (it->tokens.size() <= tokens.size() && common_prefix(it->tokens, tokens) == it->tokens.size()) {
            used_ -= it->kv.size() * sizeof(float);
            it = entries_.erase(it);
        } else {
            ++it;
        }
    }
    evict_to(capacity_ - bytes);
    used_ += bytes;
    entries_.push_front(PromptCacheEntry{std::move(tokens), std::move(kv)});
}

void PromptCache::set_capacity(size_t bytes) {
    capacity_ = bytes;
    evict_to(capacity_);
}

void PromptCache::evict_to(size_t limit) {
    while (used_ > limit && !entries_.empty()) {
        used_ -= entries_.back().kv.size() * sizeof(float);
        entries_.pop_back();
    }
}

}  // namespace edgeai
