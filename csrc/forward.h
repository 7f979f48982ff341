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

    // Rows at their own positions, for continuous batching (batch_engine.h): rows [first_row, first_row +
    // batch) of the KV cache, row i holding past_lens[i] positions, each fed n_tokens new tokens (ids in
    // tokens[batch * n_tokens]); the logits of each row's last position go to logits[batch * n_vocab].
    // GroupQueryAttention takes one length per row (seqlens_k) and derives each row's rotary positions from
    // it; ORT 1.32's CPU kernel allows n_tokens > 1 on a non-empty cache with batch == 1 only, so callers
    // feed several rows one token each and prefill one row at a time.
    // The default handles the case run() already covers (first_row 0, equal lengths) and refuses the rest.
    virtual void run_rows(KVCache& kv, int first_row, int batch, int n_tokens, const int32_t* past_lens,
                          const int64_t* tokens, float* logits);
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
    void run_rows(KVCache& kv, int first_row, int batch, int n_tokens, const int32_t* past_lens,
                  const int64_t* tokens, float* logits) override;
    int calls = 0;
    long long tokens_processed = 0;

private:
    // One row of the cache at `past` positions fed n_tokens tokens; logits of its last n_logits positions.
    void fill_row(KVCache& kv, int row, int past, int n_tokens, const int64_t* tokens, float* logits, int n_logits);
    int n_vocab_, repeat_period_;
};

}  // namespace edgeai
