// The sampling chain: each sampler edits a candidate list in place; the last one picks the token.
//
// The candidate list starts as "every token" and reads the caller's logits directly (no copy); the
// first sampler that narrows it (top-k, top-p, min-p) turns it into a short compact list, so later
// samplers touch a few dozen entries instead of the whole vocabulary. Temperature is kept as a pending
// scale factor, because scaling by a positive factor never changes which tokens top-k keeps.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "rng.h"

namespace edgeai {

// Tokens the penalties look at (prompt and generated so far), oldest first.
struct TokenHistory {
    const int32_t* tokens = nullptr;
    size_t size = 0;
};

class Candidates {
public:
    void reset(const float* logits, int32_t n_vocab);

    bool is_full() const { return full_; }
    int32_t n_vocab() const { return n_vocab_; }
    size_t size() const { return full_ ? static_cast<size_t>(n_vocab_) : ids_.size(); }

    // Effective logit = stored logit * scale (scale carries the temperature).
    float scale = 1.0f;

    // Full mode reads the caller's logits. Edits (penalties, bias) touch few tokens, so they are kept
    // as a short override list; the array is copied only when an operation needs it whole.
    float full_value(int32_t id) const;
    void set_full_value(int32_t id, float v);
    const float* full_logits();  // all logits with the edits applied (copies once if there are edits)
    // The k best tokens of the full set, edits included, in Better order (the set is left unchanged).
    void top_of_full(size_t k, std::vector<std::pair<float, int32_t>>& out);

    // Compact mode: the surviving tokens, sorted by logit descending when `sorted` is true.
    std::vector<int32_t>& ids() { return ids_; }
    std::vector<float>& logits() { return logits_; }
    bool sorted = false;

    // Narrow the full set to its k best tokens (sorted); ties go to the lower token id.
    void keep_top_k(size_t k);
    // Turn the full set into a compact list of the tokens whose logit >= threshold (in stored units).
    void keep_at_least(float threshold);
    void sort_compact(size_t keep);  // sort the compact list (partially when keep < size) and cut it

    // Probabilities of the current candidates (softmax of effective logits); ids in the same order.
    void probabilities(std::vector<int32_t>& ids, std::vector<float>& probs);

    std::vector<float> scratch;  // reusable buffer for samplers

private:
    bool full_ = false;
    const float* src_ = nullptr;  // caller memory, or own_ once materialised
    int32_t n_vocab_ = 0;
    std::vector<std::pair<int32_t, float>> overrides_;  // (token, stored logit) edits not yet in src_
    std::vector<uint8_t> overridden_;  // per token: 1 when it has an override (fast membership test)
    std::vector<float> own_;  // private copy of the full logits, made when an edit must be materialised
    std::vector<int32_t> ids_;
    std::vector<float> logits_;
};

class Sampler {
public:
    virtual ~Sampler() = default;
    virtual std::string name() const = 0;
    virtual void apply(Candidates& c, const TokenHistory& h) = 0;
    // Choosers return the picked token; filters return -1.
    virtual bool is_chooser() const { return false; }
    virtual int32_t choose(Candidates& c) { (void)c; return -1; }
    virtual void reseed(uint64_t seed) { (void)seed; }
};

std::unique_ptr<Sampler> make_logit_bias(std::vector<std::pair<int32_t, float>> bias);
std::unique_ptr<Sampler> make_penalties(float repetition, float presence, float frequency, int32_t last_n);
std::unique_ptr<Sampler> make_temperature(float t);
std::unique_ptr<Sampler> make_top_k(int32_t k);
std::unique_ptr<Sampler> make_top_p(float p);
std::unique_ptr<Sampler> make_min_p(float p);
std::unique_ptr<Sampler> make_greedy();
std::unique_ptr<Sampler> make_dist(uint64_t seed);

class SamplerChain {
public:
    void add(std::unique_ptr<Sampler> s);
    // Runs every sampler; the last must be a chooser. Throws std::invalid_argument on NaN/+inf logits.
    int32_t sample(const float* logits, int32_t n_vocab, const TokenHistory& h);
    // Runs the filters only and reports the surviving candidates with their probabilities.
    void candidates(const float* logits, int32_t n_vocab, const TokenHistory& h, std::vector<int32_t>& ids,
                    std::vector<float>& probs);
    void reseed(uint64_t seed);
    std::vector<std::string> names() const;

private:
    void run_filters(const float* logits, int32_t n_vocab, const TokenHistory& h);
    std::vector<std::unique_ptr<Sampler>> samplers_;
    Candidates cands_;
    mutable std::mutex mu_;  // a chain holds state (buffers, RNG): calls on one chain, names() too, are serialised
};

}  // namespace edgeai
