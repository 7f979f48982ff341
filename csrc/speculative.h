// Speculative decoding with a draft model (Leviathan et al. 2023, Chen et al. 2023).
//
// A small draft model that shares the target's tokenizer proposes up to γ tokens from its own KV cache, one
// cheap step each; the target checks all of them in ONE forward pass of γ+1 tokens (a step that streams the
// weights once, so it costs little more than a one-token step), and keeps the longest run it agrees with plus
// one token of its own. Each round therefore yields 1..γ+1 tokens for one target step and γ draft steps.
//
// Exactness. Both models' logits go through the SAME sampler chain with the same history (penalties, bias,
// temperature, top-k, top-p, min-p): p is the target's candidate distribution after the chain's filters, q the
// draft's. Greedy: the draft proposes the chain's choice on its logits and the target's chain picks every
// token itself, so the output is the target's greedy output token for token. Sampling: the draft samples
// x ~ q; the target accepts x with probability min(1, p(x)/q(x)) and otherwise draws from norm(max(0, p - q)),
// and after a fully accepted run draws a bonus token from p; every emitted token is then distributed exactly
// as p, the distribution the plain sampler would have drawn from (the chain's Dist chooser). Prompt-lookup
// guesses (draft.h) are proposals with q = a point mass, for which the same rule accepts x with probability
// p(x) and resamples from p without x.
//
// Randomness comes from one Rng seeded per request (GenerateParams::seed), drawn in a fixed order, and every
// policy decision (γ, lookup or model) depends only on tokens accepted in this request: a seeded run is
// reproducible. The draft reuses only prompt positions computed as a fresh prefill computes them (as the target
// does, see engine.h), so its proposals, and with them the random draws, never depend on the prompt cache or
// history.
#pragma once

#include <cstdint>
#include <vector>

namespace edgeai {

// What a speculative generation did, reported with its result. Index w of the *_by_width vectors is a
// target step that fed w tokens (the pending token plus w - 1 proposals).
struct SpeculativeStats {
    int rounds = 0;                                     // target verify steps
    int model_rounds = 0, lookup_rounds = 0;            // whose proposals were checked
    int model_proposed = 0, model_accepted = 0;         // draft-model tokens
    int lookup_proposed = 0, lookup_accepted = 0;       // prompt-lookup tokens
    int draft_steps = 0;                                // draft forward passes during decode
    double draft_prefill_s = 0, draft_s = 0;            // draft time: its prompt, its decode steps
    double target_s = 0;                                // target verify time
    std::vector<int> steps_by_width;
    std::vector<double> seconds_by_width;
};

// Chooses how many tokens to propose and from where, from acceptance seen so far in this request only.
// Expected tokens per round with per-token acceptance a and n proposals: 1 + a + ... + a^n; its cost in
// target-step units: 1 + n * (draft_cost + verify_cost), with draft_cost the draft's step cost relative to
// the target's (measured once from the weight sizes, passed in, never timed: timing would make the choice,
// and with it a seeded run, depend on the machine's load) and verify_cost what each extra verified token
// adds to the target's step (a constant measured by bench/speculative_bench.py, also passed in). The source and length with the most tokens per unit cost win.
class DraftPolicy {
public:
    DraftPolicy(int max_tokens, double draft_cost, double verify_cost);
    // Proposals to request from the model (0: do not use it), given `room` tokens may still be proposed.
    int model_tokens(int room) const;
    // True when `lookup_len` prompt-lookup guesses promise more per cost than model_tokens(room) of the model.
    bool prefer_lookup(int lookup_len, int room) const;
    // A round checked `proposed` tokens from a source and the target accepted the first `accepted`.
    void record(bool model, int proposed, int accepted);
    double model_acceptance() const;
    double lookup_acceptance() const;

private:
    static double gain(double a, int n, double per_token_cost);
    int max_;
    double draft_cost_, verify_cost_;
    // Per-token acceptance estimate: accepted / tested (a rejection ends a round, later tokens are untested),
    // starting from a prior worth a few tokens so the first rounds are neither all-in nor never.
    double model_hits_ = 3.4, model_tests_ = 4.0;   // prior 0.85: a same-family draft (measured 0.85)
    double lookup_hits_ = 1.0, lookup_tests_ = 2.0; // prior 0.5: a text match may or may not be a quote
};

}  // namespace edgeai
