// Beam-search bookkeeping with the semantics of Hugging Face transformers' beam search
// (vectorised version, transformers >= 4.50): log-softmax scores summed along each beam, the best
// 2 x num_beams continuations per step, finished hypotheses scored sum_logprobs / generated_len^length_penalty,
// and early stopping True / False (heuristic) / "never".
//
// The engine owns the model and the KV cache; this class only says, after each step, which token each
// beam appends and which parent beam it continues (so the engine can reorder its caches).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace edgeai {

enum class EarlyStopping { kHeuristic = 0, kTrue = 1, kNever = 2 };

struct Hypothesis {
    std::vector<int32_t> tokens;  // generated tokens (eos included when it ended on eos)
    float score = -1e9f;          // length-penalised score
    bool finished = false;
};

// log(softmax(x)) of one row, written to out.
void log_softmax(const float* x, size_t n, float* out);

class BeamSearch {
public:
    BeamSearch(int num_beams, int n_vocab, std::vector<int32_t> eos_ids, float length_penalty,
               EarlyStopping early_stopping, int max_new_tokens);

    // logits: [num_beams, n_vocab], row b for running beam b.
    void step(const float* logits);

    const std::vector<int32_t>& next_tokens() const { return next_tokens_; }
    const std::vector<int32_t>& parents() const { return parents_; }
    const std::vector<float>& running_scores() const { return running_scores_; }
    const std::vector<std::vector<int32_t>>& running_sequences() const { return running_; }
    bool done() const { return done_; }
    int generated() const { return generated_; }
    int num_beams() const { return num_beams_; }
    int n_vocab() const { return n_vocab_; }

    // The best n finished hypotheses, best first.
    std::vector<Hypothesis> finalize(int n) const;

private:
    bool is_eos(int32_t t) const;

    int num_beams_, n_vocab_, max_new_tokens_;
    std::vector<int32_t> eos_;
    float length_penalty_;
    EarlyStopping early_stopping_;

    int generated_ = 0;
    bool done_ = false;
    bool improvement_possible_ = true;  // transformers' is_early_stop_heuristic_unsatisfied
    std::vector<std::vector<int32_t>> running_;
    std::vector<float> running_scores_;
    std::vector<Hypothesis> finished_;  // always num_beams slots, best first
    std::vector<int32_t> next_tokens_, parents_;
    std::vector<float> scratch_;
};

}  // namespace edgeai
