#include "engine.h"

#include <algorithm>
#include <limits>
#include <stdexcept>
#include <string>

namespace edgeai {

namespace {
double seconds_since(std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}
}  // namespace

Engine::Engine(std::shared_ptr<Forward> forward, int layers, int kv_heads, int head_dim, int max_seq, int n_vocab,
               size_t prompt_cache_bytes, int prefill_chunk)
    : forward_(std::move(forward)), kv_(layers, kv_heads, head_dim, max_seq), cache_(prompt_cache_bytes),
      n_vocab_(n_vocab), prefill_chunk_(prefill_chunk) {
    if (!forward_) throw std::invalid_argument("engine needs a forward implementation");
    if (n_vocab <= 0 || prefill_chunk <= 0) throw std::invalid_argument("n_vocab and prefill_chunk must be positive");
    logits_.resize(n_vocab_);
}

void Engine::clear_cache() {
    std::lock_guard<std::mutex> lock(mu_);
    std::lock_guard<std::mutex> state(state_mu_);
    cache_.clear();
    live_.clear();
}

Engine::KVShape Engine::kv_shape() {
    std::lock_guard<std::mutex> state(state_mu_);
    return {kv_.batch_capacity(), kv_.kv_heads(), kv_.max_seq(), kv_.head_dim()};
}

float* Engine::kv_address(int layer, bool value) {
    std::lock_guard<std::mutex> state(state_mu_);
    return kv_.layer_buffer(layer, value);
}

uint64_t Engine::kv_version() {
    std::lock_guard<std::mutex> state(state_mu_);
    return kv_.version();
}

size_t Engine::cache_bytes() {
    std::lock_guard<std::mutex> state(state_mu_);
    return cache_.used_bytes();
}

size_t Engine::cache_entries() {
    std::lock_guard<std::mutex> state(state_mu_);
    return cache_.size();
}

void Engine::forward(int batch, int n_tokens, int past_len, GenerateResult& r, int n_logits) {
    auto t0 = Clock::now();
    const size_t need = static_cast<size_t>(batch) * n_logits * n_vocab_;
    if (logits_.size() < need) logits_.resize(need);
    kv_.note_written(past_len + n_tokens);
    forward_->run(kv_, batch, n_tokens, past_len, tokens_.data(), logits_.data(), n_logits);
    r.forward_s += seconds_since(t0);
}

// Makes row 0 of the cache hold the longest reusable prefix of `prompt` and returns its length
// (prompt_cache.h: reusable_prefix; never the last prompt token, whose logits start generation).
int Engine::reuse_prefix(const std::vector<int32_t>& prompt, bool use_cache) {
    if (!use_cache) return 0;  // the switch turns every kind of reuse off
    const size_t live = reusable_prefix(common_prefix(live_, prompt), prompt.size(), prefill_chunk_);
    std::lock_guard<std::mutex> state(state_mu_);
    size_t shared = 0;
    const PromptCacheEntry* hit = cache_.lookup(prompt, shared);
    shared = reusable_prefix(shared, prompt.size(), prefill_chunk_);  // <= the entry's length
    if (hit && shared > live) {
        kv_.restore(hit->kv, static_cast<int>(hit->tokens.size()), static_cast<int>(shared));
        live_.assign(prompt.begin(), prompt.begin() + shared);
        return static_cast<int>(shared);
    }
    return static_cast<int>(live);
}

// Chunks end at multiples of prefill_chunk, as in a fresh prefill (a reused prefix may end mid-chunk: the
// first chunk then completes that one); positions of chunks of >= 2 rows join the reusable prefix.
void Engine::prefill(const std::vector<int32_t>& prompt, int from, GenerateResult& r) {
    auto t0 = Clock::now();
    live_.resize(from);
    const int n = static_cast<int>(prompt.size());
    for (int pos = from; pos < n;) {
        const int len = std::min(prefill_chunk_ - pos % prefill_chunk_, n - pos);
        tokens_.assign(prompt.begin() + pos, prompt.begin() + pos + len);
        forward(1, len, pos, r);
        pos += len;
        if (exact_chunk(len, prefill_chunk_)) live_.assign(prompt.begin(), prompt.begin() + pos);
    }
    r.prefill_s = seconds_since(t0);
}

GenerateResult Engine::generate(const std::vector<int32_t>& prompt, SamplerChain* chain, const GenerateParams& p,
                                const TokenCallback& on_token) {
    const uint64_t ticket = cancel_epoch_.load();  // taken on arrival: a cancel while queued still counts
    std::lock_guard<std::mutex> lock(mu_);
    ticket_ = ticket;
    auto start = Clock::now();
    if (prompt.empty()) throw std::invalid_argument("prompt is empty: nothing to continue from");
    if (static_cast<int>(prompt.size()) >= kv_.max_seq())
        throw std::length_error("prompt has " + std::to_string(prompt.size()) + " tokens but the context holds " +
                                std::to_string(kv_.max_seq()) + " (including at least one generated token)");
    for (int32_t t : prompt)
        if (t < 0 || t >= n_vocab_) throw std::invalid_argument("prompt token id " + std::to_string(t) + " is outside the vocabulary");
    if (p.max_new_tokens < 1) throw std::invalid_argument("max_new_tokens must be >= 1");
    if (p.num_beams < 1) throw std::invalid_argument("num_beams must be >= 1");
    if (p.num_beams > 1 && 2 * static_cast<int64_t>(p.num_beams) > n_vocab_)
        throw std::invalid_argument("num_beams must be at most half the vocabulary (" + std::to_string(n_vocab_ / 2) + ")");
    if (p.num_return_sequences < 1 || p.num_return_sequences > p.num_beams)
        throw std::invalid_argument("num_return_sequences must be in [1, num_beams]");
    if (p.num_beams == 1 && !chain) throw std::invalid_argument("sampling needs a sampler chain");
    if (p.draft_tokens < 0) throw std::invalid_argument("draft_tokens must be >= 0");
    if (p.draft) {
        if (p.draft == this) throw std::invalid_argument("an engine cannot be its own draft model");
        if (p.num_beams > 1) throw std::invalid_argument("a draft model works with sampling or greedy decoding, not beam search");
        if (p.draft->n_vocab() != n_vocab_)
            throw std::invalid_argument("the draft model's vocabulary (" + std::to_string(p.draft->n_vocab()) +
                                        ") differs from the target's (" + std::to_string(n_vocab_) + ")");
        if (p.draft_tokens < 1) throw std::invalid_argument("a draft model needs draft_tokens >= 1");
    }

    GenerateResult r;
    r.prompt_tokens = static_cast<int>(prompt.size());
    if (cancelled()) {  // cancelled while it waited in the queue: no work at all
        r.finish_reason = "cancelled";
        r.sequences.assign(1, {});
        if (p.num_beams > 1) r.scores.assign(1, -std::numeric_limits<float>::infinity());
        return r;
    }
    // Snapshots are taken lazily: only when this request is about to overwrite the reusable prefix in row 0
    // (a single conversation reuses row 0 directly and never pays for a copy).
    if (p.use_prompt_cache && !live_.empty() && common_prefix(live_, prompt) < live_.size()) {
        auto snap = kv_.snapshot(static_cast<int>(live_.size()));
        std::lock_guard<std::mutex> state(state_mu_);
        cache_.insert(live_, std::move(snap));
    }
    if (p.num_beams > 1 && kv_.batch_capacity() < p.num_beams) {
        live_.clear();  // a reallocation drops whatever was cached in the rows
        std::lock_guard<std::mutex> state(state_mu_);
        kv_.ensure_batch(p.num_beams);
    }
    int from = reuse_prefix(prompt, p.use_prompt_cache);
    // Positions this request cannot reach hold stale keys/values of an earlier, longer one: give their
    // memory back, so resident KV follows the current context rather than the longest ever seen.
    const int64_t reach = static_cast<int64_t>(prompt.size()) + p.max_new_tokens + p.draft_tokens + 1;
    kv_.release_from(static_cast<int>(std::min<int64_t>(reach, kv_.max_seq())));
    r.reused_tokens = from;
    prefill(prompt, from, r);

    if (p.num_beams > 1)
        beam_loop(prompt, p, r);
    else if (p.draft)
        speculative_loop(prompt, chain, p, on_token, r, start);
    else
        sample_loop(prompt, chain, p, on_token, r, start);
    return r;
}

bool Engine::emit(int32_t tok, const GenerateParams& p, const TokenCallback& on_token, int pos,
                  std::vector<int32_t>& out, std::vector<int32_t>& history, GenerateResult& r,
                  Clock::time_point start) {
    if (out.empty()) r.ttft_s = seconds_since(start);
    out.push_back(tok);
    history.push_back(tok);
    if (std::find(p.eos_ids.begin(), p.eos_ids.end(), tok) != p.eos_ids.end()) {
        r.finish_reason = "stop";
        return true;
    }
    if (on_token && !on_token(tok)) {
        r.finish_reason = cancelled() ? "cancelled" : "stop";
        return true;
    }
    return static_cast<int>(out.size()) >= p.max_new_tokens || pos + 1 >= kv_.max_seq();  // "length"
}

// One token per iteration, sampled from logits row `row`. Without drafts every token costs one forward
// pass. With drafts, the forward that feeds token t also feeds the guesses d0..dk-1 and returns k+1 rows of
// logits: row i is what follows d(i-1) (row 0 follows t). Sampling row i and getting d(i) confirms that guess,
// whose keys/values are then already in the cache, so the next token comes from row i+1 without a forward.
// The first mismatch is itself the next token (sampled exactly as without drafts) and is fed next; the
// cache positions of unconfirmed guesses are overwritten later.
void Engine::sample_loop(const std::vector<int32_t>& prompt, SamplerChain* chain, const GenerateParams& p,
                         const TokenCallback& on_token, GenerateResult& r, Clock::time_point start) {
    std::vector<int32_t> history(prompt);  // what the penalties look at; history[0..pos) is in the cache
    std::vector<int32_t> out, drafts;      // drafts fed by the last forward, not yet confirmed
    auto decode_start = Clock::now();
    double forward_before = r.forward_s;
    int pos = static_cast<int>(prompt.size());
    size_t row = 0;
    // How many guesses to feed next: a wrong guess costs a little (a wider step), a right one saves a
    // whole step, so grow the draft while guesses land and shrink it to what landed when one misses.
    int draft_len = 1;
    r.finish_reason = "length";
    while (true) {
        if (cancelled()) {
            r.finish_reason = "cancelled";
            break;
        }
        TokenHistory h{history.data(), history.size()};
        int32_t tok = chain->sample(logits_.data() + row * n_vocab_, n_vocab_, h);
        if (emit(tok, p, on_token, pos, out, history, r, start)) break;
        if (row < drafts.size() && tok == drafts[row]) {  // confirmed: its keys/values are in the cache
            ++pos;
            ++row;
            ++r.draft_accepted;
            continue;
        }
        if (!drafts.empty())
            draft_len = row == drafts.size() ? std::min(p.draft_tokens, draft_len + 2) : static_cast<int>(row) + 1;
        // Feed tok and, if the text so far suggests them, guesses of what follows; never guess past the
        // tokens still wanted or the end of the context.
        const int room = std::min(p.max_new_tokens - static_cast<int>(out.size()) - 1, kv_.max_seq() - pos - 2);
        drafts = prompt_lookup_draft(history, std::min({p.draft_tokens, draft_len, room}));
        tokens_.assign(1, tok);
        tokens_.insert(tokens_.end(), drafts.begin(), drafts.end());
        const int n = static_cast<int>(tokens_.size());
        forward(1, n, pos, r, n);  // writes positions past the prompt: never part of the reusable prefix
        ++pos;
        row = 0;
        r.draft_proposed += n - 1;
        ++r.decode_steps;
    }
    r.decode_s = seconds_since(decode_start);
    r.decode_forward_s = r.forward_s - forward_before;
    r.sequences.push_back(std::move(out));
}

void Engine::beam_loop(const std::vector<int32_t>& prompt, const GenerateParams& p, GenerateResult& r) {
    const int nb = p.num_beams;
    const int plen = static_cast<int>(prompt.size());
    const int max_new = std::min(p.max_new_tokens, kv_.max_seq() - plen);
    BeamSearch beams(nb, n_vocab_, p.eos_ids, p.length_penalty, p.early_stopping, max_new);
    live_.clear();  // rows are about to be reordered: no reusable prefix in row 0, even if a step throws
    auto decode_start = Clock::now();
    double forward_before = r.forward_s;
    // Every beam starts from the prompt: copy its cache row and logits.
    for (int b = 1; b < nb; ++b) kv_.copy_row(0, b, plen);
    logits_.resize(static_cast<size_t>(nb) * n_vocab_);
    for (int b = 1; b < nb; ++b) std::copy(logits_.begin(), logits_.begin() + n_vocab_, logits_.begin() + b * n_vocab_);
    r.finish_reason = "length";
    int pos = plen;
    while (true) {
        beams.step(logits_.data());
        if (r.ttft_s == 0) r.ttft_s = r.prefill_s + seconds_since(decode_start);
        if (beams.done()) break;
        if (cancelled()) {
            r.finish_reason = "cancelled";
            break;
        }
        kv_.gather_rows(beams.parents(), pos);
        tokens_.assign(beams.next_tokens().begin(), beams.next_tokens().end());
        forward(nb, 1, pos, r);  // one row of logits per beam
        ++pos;
        ++r.decode_steps;
    }
    for (const auto& h : beams.finalize(std::min(p.num_return_sequences, nb))) {
        r.sequences.push_back(h.tokens);
        r.scores.push_back(h.score);
        if (r.finish_reason != "cancelled" && !h.tokens.empty() &&
            std::find(p.eos_ids.begin(), p.eos_ids.end(), h.tokens.back()) != p.eos_ids.end() && r.sequences.size() == 1)
            r.finish_reason = "stop";
    }
    r.decode_s = seconds_since(decode_start);
    r.decode_forward_s = r.forward_s - forward_before;
}

}  // namespace edgeai
