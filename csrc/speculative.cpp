// Speculative decoding: the draft policy, the draft model's side and the target's verify loop (see speculative.h).
#include "speculative.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <mutex>
#include <stdexcept>

#include "draft.h"
#include "engine.h"
#include "rng.h"

namespace edgeai {

// ---------------------------------------------------------------- policy

DraftPolicy::DraftPolicy(int max_tokens, double draft_cost, double verify_cost)
    : max_(max_tokens), draft_cost_(draft_cost), verify_cost_(verify_cost) {}

double DraftPolicy::gain(double a, int n, double per_token_cost) {
    double expected = 1.0, term = 1.0;
    for (int k = 1; k <= n; ++k) expected += (term *= a);
    return expected / (1.0 + n * per_token_cost);
}

double DraftPolicy::model_acceptance() const { return model_hits_ / model_tests_; }
double DraftPolicy::lookup_acceptance() const { return lookup_hits_ / lookup_tests_; }

int DraftPolicy::model_tokens(int room) const {
    // The best length, or 0 when no length beats a plain step (gain 1): a draft that keeps missing is
    // switched off for the rest of the request (prompt lookup still runs).
    int best = 0;
    double best_gain = 1.0;
    for (int n = 1; n <= std::min(max_, room); ++n) {
        const double g = gain(model_acceptance(), n, draft_cost_ + verify_cost_);
        if (g > best_gain) best = n, best_gain = g;
    }
    return best;
}

bool DraftPolicy::prefer_lookup(int lookup_len, int room) const {
    if (lookup_len <= 0) return false;
    const int n = model_tokens(room);
    const double model = n > 0 ? gain(model_acceptance(), n, draft_cost_ + verify_cost_) : 1.0;
    return gain(lookup_acceptance(), lookup_len, verify_cost_) >= model;
}

void DraftPolicy::record(bool model, int proposed, int accepted) {
    const double tested = accepted + (accepted < proposed ? 1 : 0);
    (model ? model_hits_ : lookup_hits_) += accepted;
    (model ? model_tests_ : lookup_tests_) += tested;
}

// ---------------------------------------------------------------- distributions

namespace {

double seconds_since(std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

// A sampler chain's surviving candidates and their probabilities (they sum to 1).
struct Distribution {
    std::vector<int32_t> ids;
    std::vector<float> probs;
};

// Inverse-CDF draw with u in [0, 1); rounding at the end never picks a zero-probability token.
int32_t draw(const std::vector<int32_t>& ids, const std::vector<float>& w, double total, double u) {
    const double target = u * total;
    double cum = 0.0;
    size_t pick = w.size() - 1;
    for (size_t i = 0; i < w.size(); ++i) {
        cum += w[i];
        if (cum > target) {
            pick = i;
            break;
        }
    }
    while (pick > 0 && w[pick] == 0.0f) --pick;
    return ids[pick];
}

float prob_of(const Distribution& d, int32_t id) {
    for (size_t i = 0; i < d.ids.size(); ++i)
        if (d.ids[i] == id) return d.probs[i];
    return 0.0f;
}

}  // namespace

// ---------------------------------------------------------------- the draft model's side

// The draft engine, driven one step at a time while the target generates. It holds the draft's lock for the
// whole request, so a draft shared by several targets (or generating on its own) serves one at a time. `fed_`
// is what its KV cache holds for this request; proposals the target rejects are dropped from it, and their
// positions are overwritten by the next step (a rollback is just a shorter length).
class DraftModel {
public:
    DraftModel(Engine& e, SpeculativeStats& s) : e_(e), s_(s), lock_(e.mu_) {}
    // Proposals that fit after `history_len` tokens of history.
    int room(size_t history_len) const { return e_.kv_.max_seq() - static_cast<int>(history_len - offset_) + 1; }

    // The prompt into the draft's cache: its reusable prefix (exact reuse, prompt_cache.h) and a prefill of
    // the rest, so its keys/values, and thus its proposals, never depend on what ran before. With window > 0 the
    // draft sees only the prompt's last `window` tokens or so (from a chunk boundary): its prefill of a long
    // RAG prompt would otherwise cost a good part of the target's, paid before its first proposal. What it
    // does not see only makes its proposals worse, never the output different.
    void start(const std::vector<int32_t>& prompt, bool use_cache, int window) {
        const size_t n = prompt.size();
        offset_ = window > 0 && n > static_cast<size_t>(window) ? e_.aligned(n - window) : 0;
        const std::vector<int32_t> seen(prompt.begin() + offset_, prompt.end());
        GenerateResult scratch;
        e_.prefill(seen, e_.reuse_prefix(seen, use_cache), scratch);
        s_.draft_prefill_s += scratch.prefill_s;
        fed_ = seen;
        started_ = true;
    }
    bool started() const { return started_; }

    // n proposals continuing `history` (fewer if cancelled): greedy takes the chain's choice on the draft's
    // logits; sampling draws from the chain's distribution q, kept per proposal in `q`.
    std::vector<int32_t> propose(const std::vector<int32_t>& history, int n, SamplerChain* chain, bool greedy, Rng& rng,
                                 std::vector<Distribution>& q, const std::function<bool()>& cancelled) {
        seq_.assign(history.begin() + offset_, history.end());
        full_ = history;  // what the chain's penalties see: the whole history, as the target's chain does
        std::vector<int32_t> out;
        if (q.size() < static_cast<size_t>(n)) q.resize(n);
        for (int i = 0; i < n && !cancelled(); ++i) {
            const float* logits = extend();
            TokenHistory h{full_.data(), full_.size()};
            int32_t x;
            if (greedy) {
                x = chain->sample(logits, e_.n_vocab_, h);
            } else {
                chain->candidates(logits, e_.n_vocab_, h, q[i].ids, q[i].probs);
                x = draw(q[i].ids, q[i].probs, 1.0, rng.uniform());
            }
            out.push_back(x);
            seq_.push_back(x);
            full_.push_back(x);
        }
        return out;
    }

private:
    // Feeds what seq_ has beyond the longest prefix already in the cache (the tokens accepted since the last
    // step, in prefill-sized pieces) and returns the logits after seq_'s last token.
    const float* extend() {
        size_t keep = std::min(common_prefix(fed_, seq_), seq_.size() - 1);
        const int chunk = e_.prefill_chunk_;
        GenerateResult scratch;
        while (keep < seq_.size()) {
            const size_t len = std::min(seq_.size() - keep, static_cast<size_t>(chunk));
            e_.tokens_.assign(seq_.begin() + keep, seq_.begin() + keep + len);
            e_.forward(1, static_cast<int>(len), static_cast<int>(keep), scratch);
            keep += len;
            ++s_.draft_steps;
        }
        s_.draft_s += scratch.forward_s;
        fed_ = seq_;
        return e_.logits_.data();
    }

    Engine& e_;
    SpeculativeStats& s_;
    std::unique_lock<std::mutex> lock_;
    std::vector<int32_t> fed_, seq_, full_;  // fed_ and seq_ start at prompt position offset_
    size_t offset_ = 0;
    bool started_ = false;
};

// ---------------------------------------------------------------- the target's loop

// As sample_loop, one emitted token per iteration from logits row `row` of the last target step; a step feeds
// the pending token plus the proposals, and row i holds the target's distribution after proposal i-1. The
// proposal at `row` is checked (accepted: its keys/values are already in the cache, go on to row+1; rejected:
// the replacement drawn from the residual is the next pending token). Past the last proposal the target draws
// a token of its own. Then the next round's proposals are chosen and the next step runs.
void Engine::speculative_loop(const std::vector<int32_t>& prompt, SamplerChain* chain, const GenerateParams& p,
                              const TokenCallback& on_token, GenerateResult& r, Clock::time_point start) {
    SpeculativeStats& st = r.speculative;
    st.steps_by_width.assign(p.draft_tokens + 2, 0);
    st.seconds_by_width.assign(p.draft_tokens + 2, 0.0);
    const auto names = chain->names();
    const bool greedy = !names.empty() && names.back() == "greedy";
    Rng rng(p.seed);
    DraftModel draft(*p.draft, st);
    DraftPolicy policy(p.draft_tokens, p.draft_cost, p.verify_cost);
    auto is_cancelled = [this] { return cancelled(); };

    std::vector<int32_t> history(prompt), out, props;  // props: proposals fed by the last step
    std::vector<Distribution> q;                         // the draft's distribution for each proposal (sampling)
    Distribution target;
    std::vector<float> residual;
    std::vector<float> qdense(n_vocab_, 0.0f);  // q of the proposal being checked, by token id (zero elsewhere)
    bool from_model = false;
    auto decode_start = Clock::now();
    double forward_before = r.forward_s;
    int pos = static_cast<int>(prompt.size());  // history[0..pos) is in the target's cache
    size_t row = 0;
    r.finish_reason = "length";
    while (true) {
        if (cancelled()) {
            r.finish_reason = "cancelled";
            break;
        }
        const float* logits = logits_.data() + row * n_vocab_;
        TokenHistory h{history.data(), history.size()};
        int32_t tok;
        bool accepted = false;
        if (greedy) {
            tok = chain->sample(logits, n_vocab_, h);
            accepted = row < props.size() && tok == props[row];
        } else {
            chain->candidates(logits, n_vocab_, h, target.ids, target.probs);
            if (row < props.size()) {
                // Accept x with probability min(1, p(x)/q(x)); otherwise draw from norm(max(0, p - q)).
                const int32_t x = props[row];
                const float px = prob_of(target, x);
                if (from_model)
                    for (size_t i = 0; i < q[row].ids.size(); ++i) qdense[q[row].ids[i]] = q[row].probs[i];
                else
                    qdense[x] = 1.0f;  // a lookup guess: a point mass
                accepted = rng.uniform() * qdense[x] < px;
                if (accepted) {
                    tok = x;
                } else {
                    residual.resize(target.ids.size());
                    double total = 0.0;
                    for (size_t i = 0; i < target.ids.size(); ++i) {
                        const int32_t id = target.ids[i];
                        total += residual[i] = std::max(0.0f, target.probs[i] - qdense[id]);
                    }
                    // p <= q everywhere only by rounding (then p == q and x is accepted surely): draw from p.
                    tok = total > 0.0 ? draw(target.ids, residual, total, rng.uniform())
                                      : draw(target.ids, target.probs, 1.0, rng.uniform());
                }
                if (from_model)
                    for (int32_t id : q[row].ids) qdense[id] = 0.0f;
                else
                    qdense[x] = 0.0f;
            } else {
                tok = draw(target.ids, target.probs, 1.0, rng.uniform());
            }
        }
        if (emit(tok, p, on_token, pos, out, history, r, start)) break;
        if (accepted) {
            ++pos;
            ++row;
            ++r.draft_accepted;
            ++(from_model ? st.model_accepted : st.lookup_accepted);
            continue;
        }
        if (!props.empty()) policy.record(from_model, static_cast<int>(props.size()), static_cast<int>(row));

        // Next proposals: never past the tokens still wanted or the end of either context.
        const int room = std::min(p.max_new_tokens - static_cast<int>(out.size()) - 1, kv_.max_seq() - pos - 2);
        const int model_room = std::min(room, draft.room(history.size()));
        props = p.fixed_draft ? std::vector<int32_t>() : prompt_lookup_draft(history, std::min(p.draft_tokens, room));
        from_model = false;
        if (p.fixed_draft || !policy.prefer_lookup(static_cast<int>(props.size()), model_room)) {
            const int n = p.fixed_draft ? std::max(0, std::min(p.draft_tokens, model_room))
                                        : policy.model_tokens(model_room);
            if (n > 0) {
                if (!draft.started()) draft.start(prompt, p.use_prompt_cache, p.draft_window);
                props = draft.propose(history, n, chain, greedy, rng, q, is_cancelled);
                from_model = true;
            }
        }
        tokens_.assign(1, tok);
        tokens_.insert(tokens_.end(), props.begin(), props.end());
        const int n = static_cast<int>(tokens_.size());
        const double before = r.forward_s;
        forward(1, n, pos, r, n);  // writes positions past the prompt: never part of the reusable prefix
        st.target_s += r.forward_s - before;
        st.seconds_by_width[n] += r.forward_s - before;
        ++st.steps_by_width[n];
        ++st.rounds;
        if (n > 1) {
            ++(from_model ? st.model_rounds : st.lookup_rounds);
            (from_model ? st.model_proposed : st.lookup_proposed) += n - 1;
        }
        ++pos;
        row = 0;
        r.draft_proposed += n - 1;
        ++r.decode_steps;
    }
    r.decode_s = seconds_since(decode_start);
    r.decode_forward_s = r.forward_s - forward_before;
    r.sequences.push_back(std::move(out));
}

}  // namespace edgeai
