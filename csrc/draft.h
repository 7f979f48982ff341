// Draft tokens by prompt lookup: when the last few tokens of the text so far occurred earlier (in the prompt
// or in what was generated), guess that what followed them then follows again. A decode step can then check
// several guesses at once: each draft token fed with the new one adds only part of a step (about 0.3 of one
// for SmolLM2 q4, bench/draft_policy_sim.py), because much of a step's time goes into streaming the weights
// from memory (bench/matmulnbits_scaling.py), and every guess the sampler confirms saves a whole step. Each
// position is still sampled in order from the model's own logits; drafts only decide how many positions a step
// sees. (With int8-activation graphs a multi-token step rounds activations slightly differently, so a near-tie
// can fall the other way; fp32 agrees.)
#pragma once

#include <cstdint>
#include <vector>

namespace edgeai {

// Up to max_draft tokens that followed the most recent earlier occurrence of the last n tokens of
// `history`, trying n = max_ngram down to min_ngram; empty when nothing matches.
std::vector<int32_t> prompt_lookup_draft(const std::vector<int32_t>& history, int max_draft, int max_ngram = 5,
                                         int min_ngram = 2);

}  // namespace edgeai
