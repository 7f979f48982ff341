// The narrow interface between the decode engine and the model.
//
// One call: `batch` rows of `n_tokens` new tokens each (token ids in tokens[batch * n_tokens]), at
// positions past_len .. past_len + n_tokens - 1. The implementation writes the keys/values of those
// positions into the engine's KV cache in place and the logits of the last `n_logits` positions of each
// row into logits[batch * n_logits * n_vocab] (row-major; n_logits > 1 is used with batch 1 only, to check
// draft tokens). Production: ONNX Runtime with I/O binding (edgeai/ort_forward.py).
// Tests: FakeForward, a deterministic stand-in that reads and writes the KV cache like a model would.
#pragma once

#include <cstdint>

#include "kv_cache.h"

namespace edgeai {

class Forward {
public:
    virtual ~Forward() = default;
    virtual void run(KVCache& kv, int batch, int n_tokens, int past_len, const int64_t* tokens, float* logits,
                     int n_logits) = 0;
};

// Logits depend on every token in the row's cache (through the KV values), so a wrong prefix reuse, a
// wrong beam reorder or a stale position changes the output. With repeat_period > 0 the token that followed
// the same point one period earlier gets a bonus, so greedy output falls into loops that draft tokens
// (prompt lookup) can predict, like a model quoting its context.
class FakeForward : public Forward {
public:
    explicit FakeForward(int n_vocab, int repeat_period = 0) : n_vocab_(n_vocab), repeat_period_(repeat_period) {}
    void run(KVCache& kv, int batch, int n_tokens, int past_len, const int64_t* tokens, float* logits,
             int n_logits) override;
    int calls = 0;
    long long tokens_processed = 0;

private:
    int n_vocab_, repeat_period_;
};

}  // namespace edgeai
