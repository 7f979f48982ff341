#include "batch_engine.h"

#include <algorithm>
#include <new>
#include <stdexcept>

namespace edgeai {

namespace {
double seconds(std::chrono::steady_clock::duration d) { return std::chrono::duration<double>(d).count(); }
}  // namespace

// One sequence. The owner thread (in generate) and the stepper share `out`, `done` and the end state under
// mu_; the rest is the stepper's alone while the sequence is queued or holds a row.
struct BatchEngine::Seq {
    uint64_t id = 0;
    const std::vector<int32_t>* prompt = nullptr;
    SamplerChain* chain = nullptr;
    const BatchParams* p = nullptr;
    std::atomic<bool> cancelled{false};  // cancel(id)
    std::atomic<bool> stop{false};       // the callback asked to stop
    // stepper only
    std::vector<int32_t> history;  // prompt, then the tokens sampled so far (what penalties look at)
    int slot = -1, pos = 0;        // KV row; positions in the cache
    bool decoding = false;         // prefill done: `next` waits to be fed
    int32_t next = -1;
    int reused = 0;                // prompt positions restored from the prefix cache
    Clock::time_point arrived, prefill_t0, first_token;
    double forward_s = 0, decode_forward_s = 0, prefill_s = 0;
    int decode_steps = 0;
    // shared, under mu_
    std::vector<int32_t> out;
    bool done = false;      // no more tokens will come
    bool released = false;  // the stepper holds no pointer to it any more: the owner may return
    bool ended_on_eos = false;
    std::string finish;
    std::exception_ptr error;
    double ttft_s = 0, decode_s = 0;
};

BatchEngine::BatchEngine(std::shared_ptr<Forward> forward, int layers, int kv_heads, int head_dim, int max_seq,
                         int n_vocab, int max_rows, int prefill_chunk, bool interleave_prefill, bool batch_invariant,
                         size_t prompt_cache_bytes)
    : forward_(std::move(forward)), kv_(layers, kv_heads, head_dim, max_seq), n_vocab_(n_vocab),
      max_rows_(max_rows), prefill_chunk_(prefill_chunk), interleave_(interleave_prefill),
      invariant_(batch_invariant), cache_(prompt_cache_bytes) {
    if (!forward_) throw std::invalid_argument("batch engine needs a forward implementation");
    if (n_vocab <= 0 || prefill_chunk <= 0) throw std::invalid_argument("n_vocab and prefill_chunk must be positive");
    if (max_rows < 1 || max_rows > 256) throw std::invalid_argument("max_rows must be in [1, 256]");
    // Untouched pages cost nothing: only the positions the rows actually use become resident. One row more
    // than max_rows may be fed: the dummy companion of batch_invariant.
    const int capacity = std::max(max_rows, 2);
    kv_.ensure_batch(capacity);
    logits_.resize(static_cast<size_t>(capacity) * n_vocab_);
    tokens_.reserve(std::max(capacity, prefill_chunk));
    past_.reserve(capacity);
}

Engine::KVShape BatchEngine::kv_shape() {
    std::lock_guard<std::mutex> state(state_mu_);
    return {kv_.batch_capacity(), kv_.kv_heads(), kv_.max_seq(), kv_.head_dim()};
}

float* BatchEngine::kv_address(int layer, bool value) {
    std::lock_guard<std::mutex> state(state_mu_);
    return kv_.layer_buffer(layer, value);
}

uint64_t BatchEngine::kv_version() {
    std::lock_guard<std::mutex> state(state_mu_);
    return kv_.version();
}

BatchEngine::Stats BatchEngine::stats() {
    Stats s;
    {
        std::lock_guard<std::mutex> lock(mu_);
        s = stats_;
        s.queued = static_cast<int>(queue_.size());
        s.running = static_cast<int>(by_id_.size()) - s.queued;
    }
    std::lock_guard<std::mutex> state(state_mu_);
    s.cache_bytes = cache_.used_bytes();
    s.cache_entries = cache_.size();
    return s;
}

void BatchEngine::clear_cache() {
    std::lock_guard<std::mutex> state(state_mu_);
    cache_.clear();
}

// Restores the longest cached prefix of s's prompt that keeps its keys/values exact (prompt_cache.h:
// reusable_prefix) into s's row; returns its length.
int BatchEngine::reuse_prefix(const Seq& s) {
    const auto& prompt = *s.prompt;
    std::lock_guard<std::mutex> state(state_mu_);
    if (cache_.capacity() == 0 || !s.p->use_prompt_cache) return 0;
    size_t shared = 0;
    const PromptCacheEntry* hit = cache_.lookup(prompt, shared);
    const int p = static_cast<int>(reusable_prefix(shared, prompt.size(), prefill_chunk_));
    if (!hit || p <= 0) return 0;
    kv_.restore(hit->kv, static_cast<int>(hit->tokens.size()), p, s.slot);
    return p;
}

// After s's prompt is prefilled: its positions join the cache, but for one computed in a 1-row chunk.
void BatchEngine::cache_prompt(const Seq& s, int last_chunk) {
    const int n = static_cast<int>(s.prompt->size());
    const int keep = exact_chunk(last_chunk, prefill_chunk_) ? n : n - 1;
    std::lock_guard<std::mutex> state(state_mu_);
    if (cache_.capacity() == 0 || !s.p->use_prompt_cache || keep <= s.reused || keep < 2) return;
    if (static_cast<size_t>(keep) * kv_.bytes_per_position() > cache_.capacity()) return;  // would not fit
    try {
        cache_.insert(std::vector<int32_t>(s.prompt->begin(), s.prompt->begin() + keep), kv_.snapshot(keep, s.slot));
    } catch (const std::bad_alloc&) {
        // The cache only saves work: no memory for a snapshot must not fail the request that was prefilled.
    }
}

bool BatchEngine::cancel(uint64_t id) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = by_id_.find(id);
    if (it == by_id_.end()) return false;
    it->second->cancelled.store(true);
    return true;
}

void BatchEngine::cancel_all() {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& kv : by_id_) kv.second->cancelled.store(true);
}

void BatchEngine::end(Seq& s, const char* reason) {
    if (s.done) return;
    s.done = true;
    s.finish = reason;
    if (!s.out.empty()) s.decode_s = seconds(Clock::now() - s.first_token);
}

// Between steps: sequences that ended or were cancelled leave (queued ones without any work), later rows
// move down into the holes, and one queued sequence takes the next row when no prefill is in progress.
void BatchEngine::retire_and_admit() {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = queue_.begin(); it != queue_.end();) {
        Seq* s = *it;
        if (s->cancelled.load() || s->stop.load()) {
            end(*s, "cancelled");
            s->released = true;
            by_id_.erase(s->id);
            it = queue_.erase(it);
        } else {
            ++it;
        }
    }
    size_t keep = 0;
    for (Seq* s : rows_) {
        if (s->cancelled.load() || s->stop.load()) end(*s, "cancelled");
        if (s->done) {
            s->released = true;
            by_id_.erase(s->id);
            continue;
        }
        // Slots only ever move down (rows keep their order), so copying in order never overwrites a row
        // that has yet to move.
        if (s->slot != static_cast<int>(keep)) {
            kv_.copy_row(s->slot, static_cast<int>(keep), s->pos);
            s->slot = static_cast<int>(keep);
        }
        rows_[keep++] = s;
    }
    rows_.resize(keep);
    if (rows_.empty()) kv_.release_from(0);  // idle: the KV pages go back to the OS
    if (static_cast<int>(rows_.size()) < max_rows_ && (rows_.empty() || rows_.back()->decoding) && !queue_.empty()) {
        Seq* s = queue_.front();
        queue_.pop_front();
        s->slot = static_cast<int>(rows_.size());
        s->pos = 0;
        rows_.push_back(s);
    }
}

void BatchEngine::run_forward(int first_row, int batch, int n_tokens, const std::vector<Seq*>& rows) {
    const auto t0 = Clock::now();
    int end = 0;
    for (int i = 0; i < batch; ++i) end = std::max(end, past_[i] + n_tokens);
    kv_.note_written(end);
    forward_->run_rows(kv_, first_row, batch, n_tokens, past_.data(), tokens_.data(), logits_.data());
    const double dt = seconds(Clock::now() - t0);
    for (Seq* s : rows) {
        s->forward_s += dt;
        if (s->decoding) s->decode_forward_s += dt;
    }
}

void BatchEngine::sample(Seq& s, const float* logits) {
    const int32_t tok = s.chain->sample(logits, n_vocab_, TokenHistory{s.history.data(), s.history.size()});
    s.history.push_back(tok);
    std::lock_guard<std::mutex> lock(mu_);
    if (s.out.empty()) {
        s.first_token = Clock::now();
        s.ttft_s = seconds(s.first_token - s.arrived);
    }
    s.out.push_back(tok);
    const auto& eos = s.p->eos_ids;
    if (std::find(eos.begin(), eos.end(), tok) != eos.end()) {
        s.ended_on_eos = true;
        end(s, "stop");
    } else if (static_cast<int>(s.out.size()) >= s.p->max_new_tokens || s.pos + 1 >= kv_.max_seq()) {
        end(s, "length");  // the same bounds as Engine::sample_loop
    } else {
        s.next = tok;
    }
}

void BatchEngine::step() {
    retire_and_admit();
    if (rows_.empty()) return;
    Seq* joiner = rows_.back()->decoding ? nullptr : rows_.back();
    const int n_dec = static_cast<int>(rows_.size()) - (joiner ? 1 : 0);
    const bool prefill = joiner && (n_dec == 0 || !interleave_ || !last_was_prefill_);
    std::vector<Seq*> fed;
    try {
        if (prefill) {
            Seq& s = *joiner;
            const auto& prompt = *s.prompt;
            fed.push_back(&s);  // from here a failure ends this sequence with the error (catch below)
            if (s.pos == 0) {
                s.prefill_t0 = Clock::now();
                s.reused = s.pos = reuse_prefix(s);
            }
            // Up to the next multiple of prefill_chunk: the chunks a fresh prefill makes, once past a
            // cached prefix that ends mid-chunk.
            const int len = std::min(prefill_chunk_ - s.pos % prefill_chunk_, static_cast<int>(prompt.size()) - s.pos);
            tokens_.assign(prompt.begin() + s.pos, prompt.begin() + s.pos + len);
            past_.assign(1, s.pos);
            run_forward(s.slot, 1, len, fed);
            s.pos += len;
            last_was_prefill_ = true;
            {
                std::lock_guard<std::mutex> lock(mu_);
                ++stats_.prefill_chunks;
            }
            if (s.pos == static_cast<int>(prompt.size())) {
                s.decoding = true;
                cache_prompt(s, len);
                {
                    std::lock_guard<std::mutex> lock(mu_);
                    stats_.prompt_tokens += prompt.size();
                    stats_.reused_tokens += s.reused;
                }
                s.prefill_s = seconds(Clock::now() - s.prefill_t0);
                sample(s, logits_.data());
            }
        } else {
            tokens_.clear();
            past_.clear();
            for (int i = 0; i < n_dec; ++i) {
                tokens_.push_back(rows_[i]->next);
                past_.push_back(rows_[i]->pos);
                fed.push_back(rows_[i]);
            }
            int batch = n_dec;
            if (invariant_ && n_dec == 1) {
                // The dummy companion row sits in the next row: free, or the joiner's, at the position its
                // next prefill chunk starts at (which overwrites it before anything reads it). Its logits
                // are ignored.
                tokens_.push_back(0);
                past_.push_back(joiner ? joiner->pos : 0);
                batch = 2;
            }
            run_forward(0, batch, 1, fed);
            last_was_prefill_ = false;
            {
                std::lock_guard<std::mutex> lock(mu_);
                ++stats_.decode_steps;
                stats_.decode_rows += n_dec;
            }
            for (int i = 0; i < n_dec; ++i) {
                Seq& s = *rows_[i];
                ++s.pos;
                ++s.decode_steps;
                try {
                    sample(s, logits_.data() + static_cast<size_t>(i) * n_vocab_);
                } catch (...) {  // this row's logits or chain failed (NaN logits): this row only
                    std::lock_guard<std::mutex> lock(mu_);
                    s.error = std::current_exception();
                    end(s, "error");
                }
            }
        }
    } catch (...) {  // the forward pass failed: every row it held ends with the error
        std::lock_guard<std::mutex> lock(mu_);
        for (Seq* s : fed) {
            if (!s->error) s->error = std::current_exception();
            end(*s, "error");
        }
    }
    retire_and_admit();  // ended rows leave now, so their owners return without waiting for another step
}

GenerateResult BatchEngine::generate(uint64_t id, const std::vector<int32_t>& prompt, SamplerChain* chain,
                                     const BatchParams& p, const TokenCallback& on_token) {
    if (prompt.empty()) throw std::invalid_argument("prompt is empty: nothing to continue from");
    if (static_cast<int>(prompt.size()) >= kv_.max_seq())
        throw std::length_error("prompt has " + std::to_string(prompt.size()) + " tokens but the context holds " +
                                std::to_string(kv_.max_seq()) + " (including at least one generated token)");
    for (int32_t t : prompt)
        if (t < 0 || t >= n_vocab_) throw std::invalid_argument("prompt token id " + std::to_string(t) + " is outside the vocabulary");
    if (p.max_new_tokens < 1) throw std::invalid_argument("max_new_tokens must be >= 1");
    if (!chain) throw std::invalid_argument("sampling needs a sampler chain");

    Seq s;
    s.id = id;
    s.prompt = &prompt;
    s.chain = chain;
    s.p = &p;
    s.history = prompt;
    s.arrived = Clock::now();
    std::unique_lock<std::mutex> lock(mu_);
    if (by_id_.count(id)) throw std::invalid_argument("request id " + std::to_string(id) + " is already running");
    by_id_[id] = &s;
    queue_.push_back(&s);
    size_t delivered = 0, stop_at = 0;
    bool stopped = false;
    std::exception_ptr callback_error;
    while (true) {
        while (delivered < s.out.size()) {
            const size_t i = delivered++;
            if (stopped || (s.ended_on_eos && i + 1 == s.out.size())) continue;  // eos is no text
            const int32_t tok = s.out[i];
            lock.unlock();
            bool keep = true;
            try {
                keep = !on_token || on_token(tok);
            } catch (...) {
                callback_error = std::current_exception();
                keep = false;
            }
            lock.lock();
            if (!keep) {
                stopped = true;
                stop_at = i + 1;
                s.stop.store(true);
            }
        }
        if (s.released && delivered == s.out.size()) break;
        if (!stepping_) {
            stepping_ = true;
            lock.unlock();
            step();  // never throws: failures end the rows they hit
            lock.lock();
            stepping_ = false;
            cv_.notify_all();
            continue;
        }
        cv_.wait(lock);
    }
    lock.unlock();
    if (callback_error) std::rethrow_exception(callback_error);
    if (s.error) std::rethrow_exception(s.error);
    GenerateResult r;
    r.prompt_tokens = static_cast<int>(prompt.size());
    r.reused_tokens = s.reused;
    r.finish_reason = s.finish;
    if (stopped) {  // the callback stopped at token stop_at-1: later tokens the steps made are dropped
        s.out.resize(stop_at);
        r.finish_reason = s.cancelled.load() ? "cancelled" : "stop";
    }
    r.sequences.push_back(std::move(s.out));
    r.ttft_s = s.ttft_s;
    r.prefill_s = s.prefill_s;
    r.decode_s = s.decode_s;
    r.forward_s = s.forward_s;
    r.decode_forward_s = s.decode_forward_s;
    r.decode_steps = s.decode_steps;
    return r;
}

}  // namespace edgeai
