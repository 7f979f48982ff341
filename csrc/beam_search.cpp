#include "beam_search.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <stdexcept>

#include "fast_math.h"

namespace edgeai {

namespace {
constexpr float kNeg = -1.0e9f;  // transformers' stand-in for "impossible"

// Indices of the k largest values (descending; lower index first on ties).
std::vector<size_t> top_indices(const std::vector<float>& v, size_t k) {
    std::vector<size_t> idx(v.size());
    std::iota(idx.begin(), idx.end(), 0);
    k = std::min(k, idx.size());
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                      [&](size_t a, size_t b) { return v[a] > v[b] || (v[a] == v[b] && a < b); });
    idx.resize(k);
    return idx;
}
}  // namespace

void log_softmax(const float* x, size_t n, float* out) {
    if (has_nan_or_posinf(x, n)) throw std::invalid_argument("logits contain NaN or +inf");
    float mx = max_value(x, n);
    if (n == 0 || mx == -std::numeric_limits<float>::infinity())
        throw std::invalid_argument("every logit is -inf: no token can be chosen");
    double z = exp_shifted_sum(x, n, mx, 1.0f, out);
    float lse = mx + static_cast<float>(std::log(z));
    for (size_t i = 0; i < n; ++i) out[i] = x[i] - lse;
}

BeamSearch::BeamSearch(int num_beams, int n_vocab, std::vector<int32_t> eos_ids, float length_penalty,
                       EarlyStopping early_stopping, int max_new_tokens)
    : num_beams_(num_beams), n_vocab_(n_vocab), max_new_tokens_(max_new_tokens), eos_(std::move(eos_ids)),
      length_penalty_(length_penalty), early_stopping_(early_stopping) {
    if (num_beams < 1) throw std::invalid_argument("num_beams must be >= 1");
    // In 64 bits: 2 * num_beams overflows int for num_beams >= 2**30 (found by the fuzz test under UBSan/ASan).
    if (static_cast<int64_t>(n_vocab) < 2 * static_cast<int64_t>(num_beams))
        throw std::invalid_argument("vocabulary too small for this many beams");
    if (max_new_tokens < 1) throw std::invalid_argument("max_new_tokens must be >= 1");
    if (!std::isfinite(length_penalty)) throw std::invalid_argument("length_penalty must be finite");
    running_.assign(num_beams, {});
    // Only the first beam is live at the start; the others would duplicate it.
    running_scores_.assign(num_beams, kNeg);
    running_scores_[0] = 0.0f;
    finished_.assign(num_beams, Hypothesis{});
}

bool BeamSearch::is_eos(int32_t t) const { return std::find(eos_.begin(), eos_.end(), t) != eos_.end(); }

void BeamSearch::step(const float* logits) {
    if (done_) throw std::logic_error("beam search is already done");
    const size_t V = static_cast<size_t>(n_vocab_);
    const size_t nb = static_cast<size_t>(num_beams_);

    // 1. Scores of every (beam, token) continuation: running score + log-probability.
    scratch_.resize(nb * V);
    for (size_t b = 0; b < nb; ++b) {
        float* row = scratch_.data() + b * V;
        log_softmax(logits + b * V, V, row);
        for (size_t v = 0; v < V; ++v) row[v] += running_scores_[b];
    }
    // 2. The best max(2, 1 + n_eos) * num_beams of them, so enough non-eos continuations survive.
    size_t keep = static_cast<size_t>(std::max<size_t>(2, 1 + eos_.size())) * nb;
    std::vector<size_t> top = top_indices(scratch_, keep);
    const bool at_limit = generated_ + 1 >= max_new_tokens_;
    std::vector<float> cand_score(top.size());
    std::vector<char> hits(top.size());
    bool all_hit = true;
    for (size_t r = 0; r < top.size(); ++r) {
        cand_score[r] = scratch_[top[r]];
        hits[r] = at_limit || is_eos(static_cast<int32_t>(top[r] % V));
        all_hit = all_hit && hits[r];
    }
    auto sequence_of = [&](size_t r) {
        std::vector<int32_t> s = running_[top[r] / V];
        s.push_back(static_cast<int32_t>(top[r] % V));
        return s;
    };

    // 3. Finished hypotheses: only continuations ranked within the top num_beams may finish.
    bool all_finished = std::all_of(finished_.begin(), finished_.end(), [](const Hypothesis& h) { return h.finished; });
    float norm = std::pow(static_cast<float>(generated_ + 1), length_penalty_);
    std::vector<float> merged;
    for (const auto& h : finished_) merged.push_back(h.score);
    for (size_t r = 0; r < top.size(); ++r) {
        float s = cand_score[r] / norm;
        bool just_finished = hits[r] && r < nb;
        if (all_finished && early_stopping_ == EarlyStopping::kTrue) s += kNeg;
        if (!improvement_possible_) s += kNeg;
        if (!just_finished) s += kNeg;
        merged.push_back(s);
    }
    std::vector<Hypothesis> next_finished;
    for (size_t i : top_indices(merged, nb)) {
        if (i < nb) {
            next_finished.push_back(finished_[i]);
        } else {
            size_t r = i - nb;
            Hypothesis h;
            h.tokens = sequence_of(r);
            h.score = merged[i];
            h.finished = hits[r] && r < nb;
            next_finished.push_back(std::move(h));
        }
    }

    // 4. Running beams: the best continuations that did not finish.
    std::vector<float> running_cand(cand_score);
    for (size_t r = 0; r < top.size(); ++r)
        if (hits[r]) running_cand[r] += kNeg;
    std::vector<std::vector<int32_t>> next_running;
    std::vector<float> next_scores;
    next_tokens_.clear();
    parents_.clear();
    for (size_t r : top_indices(running_cand, nb)) {
        next_running.push_back(sequence_of(r));
        next_scores.push_back(running_cand[r]);
        next_tokens_.push_back(static_cast<int32_t>(top[r] % V));
        parents_.push_back(static_cast<int32_t>(top[r] / V));
    }
    running_ = std::move(next_running);
    running_scores_ = std::move(next_scores);
    finished_ = std::move(next_finished);
    ++generated_;

    // 5. Can a running beam still beat the worst finished one?
    int best_len = (early_stopping_ == EarlyStopping::kNever && length_penalty_ > 0.0f) ? max_new_tokens_ : generated_;
    float best_possible = running_scores_[0] / std::pow(static_cast<float>(best_len), length_penalty_);
    bool now_all_finished = true;
    float worst = 0.0f;
    for (size_t i = 0; i < finished_.size(); ++i) {
        now_all_finished = now_all_finished && finished_[i].finished;
        worst = i == 0 ? finished_[i].score : std::min(worst, finished_[i].score);
    }
    float worst_finished = now_all_finished ? worst : kNeg;
    improvement_possible_ = improvement_possible_ && best_possible > worst_finished;
    bool open_beam = !(now_all_finished && early_stopping_ == EarlyStopping::kTrue);
    done_ = !(improvement_possible_ && open_beam && !all_hit);
}

std::vector<Hypothesis> BeamSearch::finalize(int n) const {
    if (n < 1 || n > num_beams_) throw std::invalid_argument("num_return_sequences must be in [1, num_beams]");
    std::vector<Hypothesis> out(finished_.begin(), finished_.begin() + n);
    return out;
}

}  // namespace edgeai
