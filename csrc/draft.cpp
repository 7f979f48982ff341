#include "draft.h"

#include <algorithm>

namespace edgeai {

std::vector<int32_t> prompt_lookup_draft(const std::vector<int32_t>& history, int max_draft, int max_ngram,
                                         int min_ngram) {
    const int n = static_cast<int>(history.size());
    if (max_draft <= 0) return {};
    for (int g = std::min(max_ngram, n - 1); g >= std::max(1, min_ngram); --g) {
        const int32_t* tail = history.data() + n - g;
        // Most recent match first: recent text predicts the next tokens best. A match must leave at least
        // one token after it, so it starts at most at n - g - 1.
        for (int start = n - g - 1; start >= 0; --start) {
            if (!std::equal(tail, tail + g, history.data() + start)) continue;
            const int from = start + g;
            const int len = std::min(max_draft, n - from);
            return {history.begin() + from, history.begin() + from + len};
        }
    }
    return {};
}

}  // namespace edgeai
