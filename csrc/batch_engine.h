// Continuous batching: concurrent sequences share each forward step (the server's throughput).
//
// A decode step streams the weights once whatever the rows, so on a memory-bound CPU 4 rows cost far less
// than 4 steps. Every sequence owns one row of the KV cache, its own position, its own sampling chain
// (seed, penalties), eos ids and token budget. Rows [0, n) are in use and each step is one of:
//   - a decode step: every decoding row feeds its last token at its own position (one forward of n rows;
//     GroupQueryAttention reads each row's length from seqlens_k and derives its rotary position from it);
//   - a prefill chunk of the one joining sequence (batch 1, at most prefill_chunk tokens, chunks starting at
//     multiples of prefill_chunk from position 0: computed exactly as Engine's fresh prefill computes them).
// New sequences join between steps, one prefill at a time. With interleave_prefill a decode step of the
// running rows goes between two chunks of a joining prompt, so they keep streaming while it prefills (their
// per-token latency grows by one chunk, not by the whole prompt); without it a joining prompt is prefilled
// in one go (its first token sooner, the others stall). Finished and cancelled sequences leave between
// steps; later rows move down (a copy of their positions) so the decoding rows stay contiguous.
//
// Threads: there is no engine thread. generate() blocks its caller; while its sequence runs, the caller
// takes the stepper role whenever nobody holds it and runs one step for every row, then hands its own new
// tokens to its callback outside any lock (a slow consumer never holds up the others' steps). cancel(id)
// may come from any thread at any time: the row leaves at the next step boundary.
//
// Prefix cache: a joining prompt that starts like an earlier one (the same system prompt, the earlier turns of
// a chat) takes those positions' keys/values from a snapshot instead of computing them, by the same exact rule
// as Engine's (prompt_cache.h: reusable_prefix, exact_chunk): only prompt positions, never the last prompt
// token, never positions written by decode steps or by a 1-row chunk; a prefix may end mid-chunk where the
// rest of that chunk keeps >= 2 rows. A prompt's keys/values are then bit-identical to a fresh prefill's
// (tests/test_batching.py checks the logits).
//
// Determinism: no draft tokens here, and the prefix cache keeps a prompt's keys/values equal to a fresh batch-1
// prefill. A decode step holds several rows: with fp32 weights every row's logits equal those of the same
// sequence run alone (tests/test_batching.py). MatMulNBits at accuracy level 4 quantizes activations per
// row and per block, so a row never depends on the other rows' values, and every M >= 2 gives a row the
// same bits; but M == 1 takes another kernel path (4-bit: up to ~2e-6 apart; measured in docs/server.md).
// So on q4 models a sequence decoded alone can differ from the same sequence decoded with others. With
// batch_invariant a lone decoding row gets a dummy companion row, so every decode step runs with M >= 2
// and a result never depends on what else runs, at the price of a two-row step for a lone sequence.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine.h"
#include "forward.h"
#include "kv_cache.h"
#include "prompt_cache.h"
#include "sampling.h"

namespace edgeai {

struct BatchParams {
    int max_new_tokens = 128;
    std::vector<int32_t> eos_ids;
    bool use_prompt_cache = true;  // false: neither reuses nor adds to the prefix cache
};

class BatchEngine {
public:
    BatchEngine(std::shared_ptr<Forward> forward, int layers, int kv_heads, int head_dim, int max_seq, int n_vocab,
                int max_rows, int prefill_chunk, bool interleave_prefill, bool batch_invariant = false,
                size_t prompt_cache_bytes = 0);

    // Runs one sequence to its end (eos, budget, context end, callback false, cancel) and returns it like
    // Engine::generate. `id` names it for cancel(); ids of running sequences must differ. The callback sees
    // each token but eos, in order, on the calling thread.
    GenerateResult generate(uint64_t id, const std::vector<int32_t>& prompt, SamplerChain* chain,
                            const BatchParams& p, const TokenCallback& on_token);
    bool cancel(uint64_t id);  // false when no such sequence is queued or running
    void cancel_all();
    void clear_cache();

    struct Stats {
        uint64_t decode_steps, decode_rows, prefill_chunks;  // decode_rows / decode_steps: mean batch
        uint64_t prompt_tokens, reused_tokens;                 // reused: prompt positions the prefix cache gave
        int running, queued;
        size_t cache_bytes, cache_entries;
    };
    Stats stats();
    Engine::KVShape kv_shape();
    float* kv_address(int layer, bool value);
    uint64_t kv_version();
    int max_seq() const { return kv_.max_seq(); }
    int n_vocab() const { return n_vocab_; }
    int max_rows() const { return max_rows_; }
    int prefill_chunk() const { return prefill_chunk_; }

private:
    using Clock = std::chrono::steady_clock;
    struct Seq;
    void step();  // the stepper only
    void retire_and_admit();
    void run_forward(int first_row, int batch, int n_tokens, const std::vector<Seq*>& rows);
    int reuse_prefix(const Seq& s);  // restores the cached prefix into s's row; returns its length
    void cache_prompt(const Seq& s, int last_chunk);
    void sample(Seq& s, const float* logits);
    void end(Seq& s, const char* reason);  // under mu_

    std::shared_ptr<Forward> forward_;
    KVCache kv_;
    int n_vocab_, max_rows_, prefill_chunk_;
    bool interleave_, invariant_;
    // Stepper-only state: the rows in slot order (at most one still prefilling, and then last) and buffers.
    std::vector<Seq*> rows_;
    std::vector<int64_t> tokens_;
    std::vector<int32_t> past_;
    std::vector<float> logits_;
    bool last_was_prefill_ = false;
    // Shared state, under mu_.
    std::mutex mu_;
    std::condition_variable cv_;
    bool stepping_ = false;
    std::deque<Seq*> queue_;
    std::unordered_map<uint64_t, Seq*> by_id_;
    Stats stats_{0, 0, 0, 0, 0, 0, 0, 0, 0};
    std::mutex state_mu_;  // the read-only views (kv_shape, kv_address), like Engine's, and cache_
    PromptCache cache_;    // used by the stepper; capacity 0 = off
};

}  // namespace edgeai
