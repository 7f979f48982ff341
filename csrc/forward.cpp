#include "forward.h"

#include <cmath>
#include <stdexcept>
#include <string>

namespace edgeai {

void Forward::run_rows(KVCache& kv, int first_row, int batch, int n_tokens, const int32_t* past_lens,
                       const int64_t* tokens, float* logits) {
    for (int b = 1; b < batch; ++b)
        if (past_lens[b] != past_lens[0])
            throw std::logic_error("this forward pass cannot run rows at different positions");
    if (first_row != 0) throw std::logic_error("this forward pass runs from KV row 0 only");
    run(kv, batch, n_tokens, past_lens[0], tokens, logits, 1);
}

void FakeForward::fill_row(KVCache& kv, int row, int past, int n_tokens, const int64_t* tokens, float* logits,
                           int n_logits) {
    if (row < 0 || row >= kv.batch_capacity()) throw std::out_of_range("fake forward: KV row " + std::to_string(row) + " does not exist");
    if (past < 0 || past + n_tokens > kv.max_seq()) throw std::out_of_range("fake forward: past the end of the KV cache");
    const size_t row_floats = static_cast<size_t>(kv.kv_heads()) * kv.max_seq() * kv.head_dim();
    float* slot = kv.key(0) + row * row_floats;  // head 0, element 0 of each position holds "the token seen there"
    for (int i = 0; i < n_tokens; ++i) slot[static_cast<size_t>(past + i) * kv.head_dim()] = static_cast<float>(tokens[i]);
    // A rolling hash of the row up to each position, read back from the cache; the last n_logits
    // positions each get logits from the hash of everything up to and including them.
    double h = 0.0;
    const int total = past + n_tokens;
    for (int p = 0; p < total; ++p) {
        h = std::fmod(h * 31.0 + slot[static_cast<size_t>(p) * kv.head_dim()] + 7.0, 1000003.0);
        const int row_out = p - (total - n_logits);
        if (row_out < 0) continue;
        float* out = logits + static_cast<size_t>(row_out) * n_vocab_;
        for (int v = 0; v < n_vocab_; ++v)
            out[v] = static_cast<float>(3.0 * std::cos(0.61 * v + 0.013 * h) +
                                        0.5 * std::sin(0.17 * v * (1 + std::fmod(h, 5.0))));
        const int echo = p + 1 - repeat_period_;
        if (repeat_period_ > 0 && echo >= 0) {
            const auto t = static_cast<int>(slot[static_cast<size_t>(echo) * kv.head_dim()]);
            if (t >= 0 && t < n_vocab_) out[t] += 5.0f;
        }
    }
}

void FakeForward::run(KVCache& kv, int batch, int n_tokens, int past_len, const int64_t* tokens, float* logits,
                      int n_logits) {
    if (n_logits < 1 || n_logits > n_tokens) throw std::invalid_argument("fake forward: n_logits out of range");
    ++calls;
    tokens_processed += static_cast<long long>(batch) * n_tokens;
    for (int b = 0; b < batch; ++b)
        fill_row(kv, b, past_len, n_tokens, tokens + static_cast<size_t>(b) * n_tokens,
                 logits + static_cast<size_t>(b) * n_logits * n_vocab_, n_logits);
}

void FakeForward::run_rows(KVCache& kv, int first_row, int batch, int n_tokens, const int32_t* past_lens,
                           const int64_t* tokens, float* logits) {
    ++calls;
    tokens_processed += static_cast<long long>(batch) * n_tokens;
    for (int b = 0; b < batch; ++b)
        fill_row(kv, first_row + b, past_lens[b], n_tokens, tokens + static_cast<size_t>(b) * n_tokens,
                 logits + static_cast<size_t>(b) * n_vocab_, 1);
}

}  // namespace edgeai
