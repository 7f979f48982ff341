#include "sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <stdexcept>

#include "fast_math.h"

namespace edgeai {
namespace {

// Candidate order: higher logit first, the lower token id on ties (so results never depend on sort
// stability or platform).
struct Better {
    bool operator()(const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) const {
        return a.first > b.first || (a.first == b.first && a.second < b.second);
    }
};

// The k best of x[0..n) in Better order. One pass with a size-k heap whose top is the worst kept;
// most elements fail the single comparison against it, so the pass costs about n compares.
void select_top(const float* x, size_t n, size_t k, std::vector<std::pair<float, int32_t>>& out) {
    out.clear();
    k = std::min(k, n);
    if (k == 0) return;
    out.reserve(k);
    for (size_t i = 0; i < k; ++i) out.emplace_back(x[i], static_cast<int32_t>(i));
    Better better;
    std::make_heap(out.begin(), out.end(), better);
    float threshold = out.front().first;
    auto consider = [&](size_t i) {
        // Strictly greater: an equal logit with a higher id loses the tie.
        if (x[i] > threshold) {
            std::pop_heap(out.begin(), out.end(), better);
            out.back() = {x[i], static_cast<int32_t>(i)};
            std::push_heap(out.begin(), out.end(), better);
            threshold = out.front().first;
        }
    };
    size_t i = k;
    for (; i < n && i % kScanBlock; ++i) consider(i);
    // Blocks with no value above the current threshold are skipped by a vectorised scan.
    const size_t full_blocks_end = n - n % kScanBlock;
    while (i < full_blocks_end) {
        i = next_block_above(x, i, full_blocks_end, threshold);
        for (size_t end = std::min(i + kScanBlock, full_blocks_end); i < end; ++i) consider(i);
    }
    for (; i < n; ++i) consider(i);
    std::sort(out.begin(), out.end(), better);
}

}  // namespace

// ---------------------------------------------------------------- Candidates

void Candidates::reset(const float* logits, int32_t n_vocab) {
    full_ = true;
    src_ = logits;
    n_vocab_ = n_vocab;
    scale = 1.0f;
    sorted = false;
    ids_.clear();
    logits_.clear();
    for (const auto& o : overrides_) overridden_[o.first] = 0;
    overrides_.clear();
    if (overridden_.size() != static_cast<size_t>(n_vocab)) overridden_.assign(n_vocab, 0);
}

float Candidates::full_value(int32_t id) const {
    if (overridden_[id])
        for (const auto& o : overrides_)
            if (o.first == id) return o.second;
    return src_[id];
}

void Candidates::set_full_value(int32_t id, float v) {
    if (src_ == own_.data() && !own_.empty()) {
        own_[id] = v;
        return;
    }
    if (overridden_[id]) {
        for (auto& o : overrides_)
            if (o.first == id) o.second = v;
        return;
    }
    overridden_[id] = 1;
    overrides_.emplace_back(id, v);
}

const float* Candidates::full_logits() {
    if (!overrides_.empty()) {
        own_.assign(src_, src_ + n_vocab_);
        for (const auto& o : overrides_) {
            own_[o.first] = o.second;
            overridden_[o.first] = 0;
        }
        overrides_.clear();
        src_ = own_.data();
    }
    return src_;
}

void Candidates::top_of_full(size_t k, std::vector<std::pair<float, int32_t>>& out) {
    // Many edits (a long penalty window) make the merge below cost more than one copy of the logits.
    if (overrides_.size() > 16) full_logits();
    if (overrides_.empty()) {
        select_top(src_, static_cast<size_t>(n_vocab_), k, out);
        return;
    }
    // At most E of the original top (k + E) are edited tokens, so the best k unedited tokens are
    // among them; merge those with the edited tokens and cut to k.
    select_top(src_, static_cast<size_t>(n_vocab_), k + overrides_.size(), out);
    size_t j = 0;
    for (size_t i = 0; i < out.size(); ++i)
        if (!overridden_[out[i].second]) out[j++] = out[i];
    out.resize(j);
    for (const auto& o : overrides_) out.emplace_back(o.second, o.first);
    k = std::min(k, out.size());
    std::partial_sort(out.begin(), out.begin() + k, out.end(), Better());
    out.resize(k);
}

void Candidates::keep_top_k(size_t k) {
    if (!full_) {
        sort_compact(k);
        return;
    }
    std::vector<std::pair<float, int32_t>> top;
    top_of_full(k, top);
    ids_.resize(top.size());
    logits_.resize(top.size());
    for (size_t i = 0; i < top.size(); ++i) {
        logits_[i] = top[i].first;
        ids_[i] = top[i].second;
    }
    full_ = false;
    sorted = true;
}

void Candidates::keep_at_least(float threshold) {
    if (!full_) {
        size_t j = 0;
        for (size_t i = 0; i < ids_.size(); ++i) {
            if (logits_[i] >= threshold) {
                ids_[j] = ids_[i];
                logits_[j] = logits_[i];
                ++j;
            }
        }
        ids_.resize(j);
        logits_.resize(j);
        return;  // order preserved, so `sorted` stays as it was
    }
    const float* x = full_logits();
    ids_.clear();
    logits_.clear();
    for (int32_t i = 0; i < n_vocab_; ++i) {
        if (x[i] >= threshold) {
            ids_.push_back(i);
            logits_.push_back(x[i]);
        }
    }
    full_ = false;
    sorted = false;
}

void Candidates::sort_compact(size_t keep) {
    if (full_) {
        keep_top_k(keep);
        return;
    }
    std::vector<std::pair<float, int32_t>> v(ids_.size());
    for (size_t i = 0; i < v.size(); ++i) v[i] = {logits_[i], ids_[i]};
    keep = std::min(keep, v.size());
    if (!sorted || keep < v.size()) {
        std::partial_sort(v.begin(), v.begin() + keep, v.end(), Better());
        v.resize(keep);
    }
    ids_.resize(v.size());
    logits_.resize(v.size());
    for (size_t i = 0; i < v.size(); ++i) {
        logits_[i] = v[i].first;
        ids_[i] = v[i].second;
    }
    sorted = true;
}

void Candidates::probabilities(std::vector<int32_t>& ids, std::vector<float>& probs) {
    const float* x = full_ ? full_logits() : logits_.data();
    size_t n = size();
    probs.resize(n);
    double z = exp_shifted_sum(x, n, max_value(x, n), scale, probs.data());
    float inv = static_cast<float>(1.0 / z);
    for (auto& p : probs) p *= inv;
    if (full_) {
        ids.resize(n);
        std::iota(ids.begin(), ids.end(), 0);
    } else {
        ids = ids_;
    }
}

// ---------------------------------------------------------------- samplers

namespace {

// An edited logit stays a number or -inf (banned): a huge penalty or bias must not turn it into +inf or
// NaN, which would poison the softmax of every token.
inline float clamp_logit(float v) {
    if (std::isnan(v)) return -std::numeric_limits<float>::infinity();
    return std::min(v, std::numeric_limits<float>::max());
}

// Applies f to the effective logit of `id` (stored * scale) wherever the candidate lives; a banned
// token (-inf) stays banned.
template <typename F>
void edit_token(Candidates& c, int32_t id, F f) {
    auto edit = [&](float stored) {
        if (stored == -std::numeric_limits<float>::infinity()) return stored;
        return clamp_logit(clamp_logit(f(clamp_logit(stored * c.scale))) / c.scale);
    };
    if (c.is_full()) {
        c.set_full_value(id, edit(c.full_value(id)));
        return;
    }
    auto& ids = c.ids();
    for (size_t i = 0; i < ids.size(); ++i) {
        if (ids[i] == id) {
            c.logits()[i] = edit(c.logits()[i]);
            c.sorted = false;
            return;
        }
    }
}

[[noreturn]] void throw_all_banned() {
    throw std::invalid_argument("every candidate token is banned (-inf after logit bias and penalties): none can be chosen");
}

void check_token(int32_t id, int32_t n_vocab, const char* what) {
    if (id < 0 || id >= n_vocab)
        throw std::invalid_argument(std::string(what) + ": token id " + std::to_string(id) +
                                    " is outside the vocabulary of " + std::to_string(n_vocab));
}

class LogitBias : public Sampler {
public:
    explicit LogitBias(std::vector<std::pair<int32_t, float>> bias) : bias_(std::move(bias)) {}
    std::string name() const override { return "logit_bias"; }
    void apply(Candidates& c, const TokenHistory&) override {
        for (const auto& [id, b] : bias_) {
            check_token(id, c.n_vocab(), "logit_bias");
            float add = b;
            edit_token(c, id, [add](float v) { return v + add; });
        }
    }

private:
    std::vector<std::pair<int32_t, float>> bias_;
};

// Repetition penalty as in Hugging Face transformers (divide positive logits, multiply negative ones,
// once per distinct token seen) and presence/frequency penalties as in the OpenAI API
// (subtract presence once, and frequency times the count).
class Penalties : public Sampler {
public:
    Penalties(float repetition, float presence, float frequency, int32_t last_n)
        : rep_(repetition), presence_(presence), frequency_(frequency), last_n_(last_n) {}
    std::string name() const override { return "penalties"; }

    void apply(Candidates& c, const TokenHistory& h) override {
        if (h.size == 0 || (rep_ == 1.0f && presence_ == 0.0f && frequency_ == 0.0f)) return;
        size_t n_vocab = static_cast<size_t>(c.n_vocab());
        if (counts_.size() != n_vocab) counts_.assign(n_vocab, 0);
        size_t start = (last_n_ > 0 && h.size > static_cast<size_t>(last_n_)) ? h.size - last_n_ : 0;
        seen_.clear();
        for (size_t i = start; i < h.size; ++i) {
            int32_t t = h.tokens[i];
            if (t < 0 || static_cast<size_t>(t) >= n_vocab) {
                for (int32_t s : seen_) counts_[s] = 0;
                check_token(t, c.n_vocab(), "penalty history");
            }
            if (counts_[t]++ == 0) seen_.push_back(t);
        }
        auto penalise = [this](float v, int32_t count) {
            if (rep_ != 1.0f) v = v > 0.0f ? v / rep_ : v * rep_;
            return v - presence_ - frequency_ * static_cast<float>(count);
        };
        if (c.is_full()) {
            for (int32_t t : seen_) {
                int32_t n = counts_[t];
                edit_token(c, t, [&](float v) { return penalise(v, n); });
            }
        } else {
            auto& ids = c.ids();
            auto& logits = c.logits();
            for (size_t i = 0; i < ids.size(); ++i) {
                int32_t n = counts_[ids[i]];
                if (n > 0 && logits[i] != -std::numeric_limits<float>::infinity())
                    logits[i] = clamp_logit(clamp_logit(penalise(clamp_logit(logits[i] * c.scale), n)) / c.scale);
            }
            c.sorted = false;
        }
        for (int32_t t : seen_) counts_[t] = 0;  // leave the table clean for the next call
    }

private:
    float rep_, presence_, frequency_;
    int32_t last_n_;
    std::vector<int32_t> counts_;
    std::vector<int32_t> seen_;
};

class Temperature : public Sampler {
public:
    explicit Temperature(float t) : inv_t_(1.0f / t) {}
    std::string name() const override { return "temperature"; }
    void apply(Candidates& c, const TokenHistory&) override { c.scale *= inv_t_; }

private:
    float inv_t_;
};

class TopK : public Sampler {
public:
    explicit TopK(int32_t k) : k_(k) {}
    std::string name() const override { return "top_k"; }
    void apply(Candidates& c, const TokenHistory&) override {
        if (k_ > 0) c.keep_top_k(static_cast<size_t>(k_));
    }

private:
    int32_t k_;
};

// Keeps the smallest set of best tokens whose probability mass reaches p (the token that crosses p is
// kept). On the full vocabulary it avoids a full sort: it sorts the best 64, 256, 1024, ... tokens
// until their mass reaches p.
class TopP : public Sampler {
public:
    explicit TopP(float p) : p_(p) {}
    std::string name() const override { return "top_p"; }

    void apply(Candidates& c, const TokenHistory&) override {
        if (p_ >= 1.0f) return;
        if (!c.is_full()) c.sort_compact(c.size());
        const float* x = c.is_full() ? c.full_logits() : c.logits().data();
        size_t n = c.size();
        c.scratch.resize(n);
        float mx = max_value(x, n);
        double z = exp_shifted_sum(x, n, mx, c.scale, c.scratch.data());
        double target = static_cast<double>(p_) * z;
        if (!c.is_full()) {
            size_t keep = count_to_reach(c.logits().data(), n, mx, c.scale, target);
            c.sort_compact(keep == kNotReached ? n : keep);
            return;
        }
        std::vector<std::pair<float, int32_t>> top;
        for (size_t m = 64;; m *= 4) {
            select_top(x, n, m, top);
            std::vector<float> lg(top.size());
            for (size_t i = 0; i < top.size(); ++i) lg[i] = top[i].first;
            size_t keep = count_to_reach(lg.data(), lg.size(), mx, c.scale, target);
            if (keep != kNotReached || m >= n) {
                c.keep_top_k(keep == kNotReached ? n : keep);
                return;
            }
        }
    }

private:
    static constexpr size_t kNotReached = static_cast<size_t>(-1);
    // Number of leading (sorted) tokens whose mass first reaches target; kNotReached if it never does.
    static size_t count_to_reach(const float* sorted_logits, size_t n, float mx, float scale, double target) {
        double cum = 0.0;
        for (size_t i = 0; i < n; ++i) {
            cum += fast_exp((sorted_logits[i] - mx) * scale);
            if (cum >= target) return i + 1;
        }
        return kNotReached;
    }
    float p_;
};

// Keeps tokens whose probability is at least p times that of the most likely token.
class MinP : public Sampler {
public:
    explicit MinP(float p) : p_(p) {}
    std::string name() const override { return "min_p"; }
    void apply(Candidates& c, const TokenHistory&) override {
        if (p_ <= 0.0f) return;
        const float* x = c.is_full() ? c.full_logits() : c.logits().data();
        float mx = max_value(x, c.size());
        // prob_i >= p * prob_max  <=>  eff_i >= eff_max + log(p)  (computed in stored units)
        c.keep_at_least(mx + std::log(p_) / c.scale);
    }

private:
    float p_;
};

class Greedy : public Sampler {
public:
    std::string name() const override { return "greedy"; }
    void apply(Candidates&, const TokenHistory&) override {}
    bool is_chooser() const override { return true; }
    int32_t choose(Candidates& c) override {
        if (c.is_full()) {
            std::vector<std::pair<float, int32_t>> top;
            c.top_of_full(1, top);
            if (top.empty() || top[0].first == -std::numeric_limits<float>::infinity()) throw_all_banned();
            return top[0].second;
        }
        auto& ids = c.ids();
        auto& lg = c.logits();
        if (ids.empty()) throw_all_banned();
        size_t best = 0;
        for (size_t i = 1; i < ids.size(); ++i)
            if (lg[i] > lg[best] || (lg[i] == lg[best] && ids[i] < ids[best])) best = i;
        if (lg[best] == -std::numeric_limits<float>::infinity()) throw_all_banned();
        return ids[best];
    }
};

// Draws a token from the softmax of the surviving candidates with a seeded generator.
class Dist : public Sampler {
public:
    explicit Dist(uint64_t seed) : rng_(seed) {}
    std::string name() const override { return "dist"; }
    void apply(Candidates&, const TokenHistory&) override {}
    bool is_chooser() const override { return true; }
    void reseed(uint64_t seed) override { rng_.reseed(seed); }
    int32_t choose(Candidates& c) override {
        const float* x = c.is_full() ? c.full_logits() : c.logits().data();
        size_t n = c.size();
        const float mx = max_value(x, n);
        if (n == 0 || mx == -std::numeric_limits<float>::infinity()) throw_all_banned();
        c.scratch.resize(n);
        double z = exp_shifted_sum(x, n, mx, c.scale, c.scratch.data());
        double target = rng_.uniform() * z;
        double cum = 0.0;
        size_t pick = n - 1;
        for (size_t i = 0; i < n; ++i) {
            cum += c.scratch[i];
            if (cum > target) {
                pick = i;
                break;
            }
        }
        while (pick > 0 && c.scratch[pick] == 0.0f) --pick;  // rounding at the end: never pick a banned token
        return c.is_full() ? static_cast<int32_t>(pick) : c.ids()[pick];
    }

private:
    Rng rng_;
};

}  // namespace

std::unique_ptr<Sampler> make_logit_bias(std::vector<std::pair<int32_t, float>> bias) {
    for (const auto& [id, b] : bias)
        if (!std::isfinite(b) && !(std::isinf(b) && b < 0))
            throw std::invalid_argument("logit_bias: bias for token " + std::to_string(id) + " must be finite or -inf");
    return std::make_unique<LogitBias>(std::move(bias));
}
std::unique_ptr<Sampler> make_penalties(float repetition, float presence, float frequency, int32_t last_n) {
    if (!(repetition > 0.0f) || !std::isfinite(repetition))
        throw std::invalid_argument("repetition_penalty must be a finite number > 0");
    if (!std::isfinite(presence)) throw std::invalid_argument("presence_penalty must be finite");
    if (!std::isfinite(frequency)) throw std::invalid_argument("frequency_penalty must be finite");
    return std::make_unique<Penalties>(repetition, presence, frequency, last_n);
}
std::unique_ptr<Sampler> make_temperature(float t) {
    if (!(t > 0.0f) || !std::isfinite(t) || !std::isfinite(1.0f / t))
        throw std::invalid_argument("temperature must be a finite number > 0 whose inverse is finite here (0 means greedy)");
    return std::make_unique<Temperature>(t);
}
std::unique_ptr<Sampler> make_top_k(int32_t k) {
    if (k < 0) throw std::invalid_argument("top_k must be >= 0 (0 disables it)");
    return std::make_unique<TopK>(k);
}
std::unique_ptr<Sampler> make_top_p(float p) {
    if (!(p > 0.0f && p <= 1.0f)) throw std::invalid_argument("top_p must be in (0, 1]");
    return std::make_unique<TopP>(p);
}
std::unique_ptr<Sampler> make_min_p(float p) {
    if (!(p >= 0.0f && p <= 1.0f)) throw std::invalid_argument("min_p must be in [0, 1]");
    return std::make_unique<MinP>(p);
}
std::unique_ptr<Sampler> make_greedy() { return std::make_unique<Greedy>(); }
std::unique_ptr<Sampler> make_dist(uint64_t seed) { return std::make_unique<Dist>(seed); }

// ---------------------------------------------------------------- chain

void SamplerChain::add(std::unique_ptr<Sampler> s) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!samplers_.empty() && samplers_.back()->is_chooser())
        throw std::invalid_argument("sampler chain: nothing can follow the chooser '" + samplers_.back()->name() + "'");
    samplers_.push_back(std::move(s));
}

void SamplerChain::run_filters(const float* logits, int32_t n_vocab, const TokenHistory& h) {
    if (n_vocab <= 0) throw std::invalid_argument("logits are empty");
    bool bad = false;
    float mx = scan_logits(logits, static_cast<size_t>(n_vocab), bad);
    if (bad) throw std::invalid_argument("logits contain NaN or +inf: the model produced invalid output");
    if (mx == -std::numeric_limits<float>::infinity())
        throw std::invalid_argument("every logit is -inf: no token can be chosen");
    cands_.reset(logits, n_vocab);
    for (auto& s : samplers_)
        if (!s->is_chooser()) s->apply(cands_, h);
}

int32_t SamplerChain::sample(const float* logits, int32_t n_vocab, const TokenHistory& h) {
    std::lock_guard<std::mutex> lock(mu_);
    if (samplers_.empty() || !samplers_.back()->is_chooser())
        throw std::invalid_argument("sampler chain must end with a chooser (greedy or dist)");
    run_filters(logits, n_vocab, h);
    return samplers_.back()->choose(cands_);
}

void SamplerChain::candidates(const float* logits, int32_t n_vocab, const TokenHistory& h,
                              std::vector<int32_t>& ids, std::vector<float>& probs) {
    std::lock_guard<std::mutex> lock(mu_);
    run_filters(logits, n_vocab, h);
    cands_.probabilities(ids, probs);
}

void SamplerChain::reseed(uint64_t seed) {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& s : samplers_) s->reseed(seed);
}

std::vector<std::string> SamplerChain::names() const {
    std::lock_guard<std::mutex> lock(mu_);  // add() may run in another thread
    std::vector<std::string> out;
    for (const auto& s : samplers_) out.push_back(s->name());
    return out;
}

}  // namespace edgeai
