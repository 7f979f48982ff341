// The decode engine: prefill, the decode loop, sampling or beam search, stop conditions, streaming
// callbacks, cancellation and prefix reuse. The model forward pass is behind `Forward` (forward.h).
//
// Threading: generate() calls on one engine are serialised by a mutex (requests queue); cancel() may be
// called from any thread at any time: it stops the generation in flight at its next token and every request
// already waiting in the queue (each request takes a ticket when it arrives; a cancel ends the tickets
// issued before it). The read-only views (kv_shape, kv_address, cache_bytes, cache_entries) take a second,
// short-held lock, so they may be read while a generation runs, also from inside the forward pass.
//
// Determinism: with int8 activations (MatMulNBits accuracy level 4) a 1-row pass rounds differently from a
// multi-row one, so a position's keys/values depend on how it was computed. Prefill chunks start at multiples of
// prefill_chunk from position 0, and the prefix reuse keeps only positions computed as a fresh prefill computes
// them (prompt_cache.h: reusable_prefix, exact_chunk): prompt positions from chunks of >= 2 rows, reused up to
// where the rest of their chunk keeps >= 2 rows. Positions written by decode steps or by a last chunk of one
// token are recomputed. Then the tokens of a request never depend on the prompt cache or on what ran before.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "beam_search.h"
#include "draft.h"
#include "forward.h"
#include "kv_cache.h"
#include "prompt_cache.h"
#include "sampling.h"
#include "speculative.h"

namespace edgeai {

class Engine;

struct GenerateParams {
    int max_new_tokens = 128;
    std::vector<int32_t> eos_ids;
    int num_beams = 1;
    float length_penalty = 1.0f;
    EarlyStopping early_stopping = EarlyStopping::kHeuristic;
    int num_return_sequences = 1;
    bool use_prompt_cache = true;
    // Prompt-lookup drafts checked per decode step (0: off). Sampling/greedy with one sequence only; every
    // token is still sampled from the model's logits (see draft.h for the one numerical caveat).
    int draft_tokens = 0;
    // Speculative decoding (speculative.h): a draft engine sharing the tokenizer proposes up to draft_tokens
    // per step. The policy's inputs: draft_cost, its step's cost relative to ours, and verify_cost, what each
    // extra token adds to our step. draft_window: prompt tokens the draft sees (0: all). seed: the rejection
    // sampler's stream (sampling only).
    Engine* draft = nullptr;
    double draft_cost = 0.4, verify_cost = 0.1;
    int draft_window = 0;
    // fixed_draft: measure the draft model itself (bench/): it proposes min(draft_tokens, room) tokens every
    // round, with no prompt lookup and no adaptation, so its acceptance is comparable across drafts (the
    // policy would switch a weak draft off after a few rounds). The output is the same either way.
    bool fixed_draft = false;
    uint64_t seed = 0;
};

struct GenerateResult {
    std::vector<std::vector<int32_t>> sequences;  // generated tokens (eos included when it ended on eos)
    std::vector<float> scores;                    // beam scores (empty for sampling)
    std::string finish_reason;                    // "stop" (eos or callback), "length", "cancelled"
    int prompt_tokens = 0;
    int reused_tokens = 0;  // prompt tokens whose KV came from the prefix cache
    double ttft_s = 0, prefill_s = 0, decode_s = 0, forward_s = 0, decode_forward_s = 0;
    int decode_steps = 0;                            // forward passes during decode
    int draft_proposed = 0, draft_accepted = 0;      // draft tokens fed to the model / confirmed by sampling
    SpeculativeStats speculative;                    // with a draft model only
};

// Called with each new token (sampling only); returning false stops generation (a stop string matched,
// or the consumer went away).
using TokenCallback = std::function<bool(int32_t)>;

class Engine {
public:
    Engine(std::shared_ptr<Forward> forward, int layers, int kv_heads, int head_dim, int max_seq, int n_vocab,
           size_t prompt_cache_bytes, int prefill_chunk);

    GenerateResult generate(const std::vector<int32_t>& prompt, SamplerChain* chain, const GenerateParams& p,
                            const TokenCallback& on_token);
    void cancel() { cancel_epoch_.fetch_add(1); }
    void clear_cache();

    struct KVShape {
        int batch, kv_heads, max_seq, head_dim;
    };
    KVShape kv_shape();
    float* kv_address(int layer, bool value);
    size_t cache_bytes();
    size_t cache_entries();
    int max_seq() const { return kv_.max_seq(); }
    int n_vocab() const { return n_vocab_; }
    int prefill_chunk() const { return prefill_chunk_; }
    uint64_t kv_version();

private:
    using Clock = std::chrono::steady_clock;
    bool cancelled() const { return cancel_epoch_.load() != ticket_; }
    size_t aligned(size_t n) const { return n / prefill_chunk_ * prefill_chunk_; }
    int reuse_prefix(const std::vector<int32_t>& prompt, bool use_cache);
    void prefill(const std::vector<int32_t>& prompt, int from, GenerateResult& r);
    void forward(int batch, int n_tokens, int past_len, GenerateResult& r, int n_logits = 1);
    void sample_loop(const std::vector<int32_t>& prompt, SamplerChain* chain, const GenerateParams& p,
                     const TokenCallback& on_token, GenerateResult& r, Clock::time_point start);
    void beam_loop(const std::vector<int32_t>& prompt, const GenerateParams& p, GenerateResult& r);
    // Appends a sampled token to the answer and the history, then applies the rules every sampling loop ends
    // on: eos, the consumer's callback (a stop string, a cancel), the token budget, the context. True: stop.
    bool emit(int32_t tok, const GenerateParams& p, const TokenCallback& on_token, int pos,
              std::vector<int32_t>& out, std::vector<int32_t>& history, GenerateResult& r, Clock::time_point start);
    void speculative_loop(const std::vector<int32_t>& prompt, SamplerChain* chain, const GenerateParams& p,
                          const TokenCallback& on_token, GenerateResult& r, Clock::time_point start);  // speculative.cpp
    friend class DraftModel;  // drives a draft engine step by step (speculative.cpp)

    std::shared_ptr<Forward> forward_;
    KVCache kv_;
    PromptCache cache_;
    int n_vocab_, prefill_chunk_;
    std::vector<int64_t> tokens_;
    std::vector<float> logits_;
    // Tokens whose keys/values in row 0 were computed exactly as a fresh prefill computes them (prompt
    // positions from chunks of >= 2 rows): the only positions a later request may reuse.
    std::vector<int32_t> live_;
    std::atomic<uint64_t> cancel_epoch_{0};
    uint64_t ticket_ = 0;  // the cancel epoch the running request arrived in
    std::mutex mu_;        // one generate() at a time
    std::mutex state_mu_;  // guards the KV buffers' identity and the prompt cache for the read-only views
};

}  // namespace edgeai
