"""Continuous batching (csrc/batch_engine.h, LLM(max_batch=N)): sequences that share forward steps give the
tokens they give alone; rows join between steps, leave when they end or are cancelled, and never wait on a
slow consumer."""
import ctypes
import random
import threading
import time

import numpy as np
import pytest

from edgeai import LLM, _core
from edgeai.sampling import SamplingParams

from conftest import build_tiny_llm_folder
from helpers.prefix_rule import reusable_prefix

V = 200
EOS = [5]


def _alone(prompt, n, seed, vocab=V):
    """The reference: the single-sequence engine, no prompt cache, one token per step."""
    e = _core.Engine(_core.FakeForward(vocab), 2, 1, 4, 512, vocab, 0, 8)
    return e.generate(prompt, SamplingParams(temperature=0.8, seed=seed).make_chain(), n, EOS,
                      use_prompt_cache=False)


def _prompts(count, seed=0, lo=1, hi=40, vocab=V):
    rng = random.Random(seed)
    return [[rng.randrange(vocab) for _ in range(rng.randrange(lo, hi))] for _ in range(count)]


def _run_concurrently(fn, count):
    out, errors = {}, []
    barrier = threading.Barrier(count)

    def worker(i):
        barrier.wait()
        try:
            out[i] = fn(i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a generation hung"
    assert not errors, errors
    return out


@pytest.mark.parametrize("invariant", [False, True])
def test_rows_in_a_batch_give_the_tokens_they_give_alone(invariant):
    # 7 sequences, 3 rows: joins. batch_invariant's dummy row writes into the joiner's row: harmless.
    # A wide vocabulary makes a fake step slow enough (~1 ms a row) that the sequences overlap.
    n, vocab = 7, 20000
    be = _core.BatchEngine(_core.FakeForward(vocab), 2, 1, 4, 512, vocab, 3, 8, True, invariant)
    prompts = _prompts(n, lo=1, hi=40, vocab=vocab)  # 1 to 39 tokens: 1 to 5 prefill chunks of 8
    streamed = {i: [] for i in range(n)}

    def one(i):
        return be.generate(100 + i, prompts[i], SamplingParams(temperature=0.8, seed=i).make_chain(), 20 + 3 * i,
                           EOS, lambda t: streamed[i].append(t) or True)

    got = _run_concurrently(one, n)
    for i in range(n):
        ref = _alone(prompts[i], 20 + 3 * i, i, vocab)
        assert got[i]["sequences"] == ref["sequences"], i
        assert got[i]["finish_reason"] == ref["finish_reason"]
        assert streamed[i] == [t for t in ref["sequences"][0] if t not in EOS]  # eos is never streamed
    s = be.stats
    assert s["decode_rows"] > s["decode_steps"]  # rows did share steps
    assert s["running"] == s["queued"] == 0


@pytest.mark.parametrize("interleave", [True, False])
def test_a_cancelled_row_leaves_and_the_others_are_unaffected(interleave):
    n, vocab = 4, 20000  # a wide vocabulary makes each fake step slow enough (~1 ms a row) for the cancel
    be = _core.BatchEngine(_core.FakeForward(vocab), 2, 1, 4, 512, vocab, 4, 8, interleave)
    prompts = _prompts(n, seed=1, lo=10, hi=30, vocab=vocab)
    started = threading.Event()

    def one(i):
        chain = SamplingParams(temperature=0.8, seed=i).make_chain()
        if i == 0:  # cancelled from another thread after its third token, while the others run
            def on_token(t, k=[0]):  # noqa: B006
                k[0] += 1
                if k[0] == 3:
                    started.set()
                    time.sleep(0.05)
                return True
            return be.generate(7, prompts[i], chain, 400, [], on_token)
        return be.generate(i, prompts[i], chain, 60, EOS, None)

    cancelled = []

    def canceller():
        started.wait(30)
        cancelled.append(be.cancel(7))

    t = threading.Thread(target=canceller)
    t.start()
    got = _run_concurrently(one, n)
    t.join()
    assert cancelled == [True]
    assert got[0]["finish_reason"] == "cancelled" and 3 <= len(got[0]["sequences"][0]) < 400
    assert got[0]["sequences"][0] == _alone(prompts[0], 400, 0, vocab)["sequences"][0][:len(got[0]["sequences"][0])]
    for i in range(1, n):
        assert got[i]["sequences"] == _alone(prompts[i], 60, i, vocab)["sequences"]
    assert not be.cancel(7)  # gone


def _counting_forward(first_row, batch, n_tokens, past_lens_addr, tokens_addr, logits_addr, kv_version):
    """A slow Python forward whose greedy next token is the last one fed plus one."""
    time.sleep(0.005)
    toks = np.ctypeslib.as_array((ctypes.c_int64 * (batch * n_tokens)).from_address(tokens_addr))
    logits = np.ctypeslib.as_array((ctypes.c_float * (batch * V)).from_address(logits_addr)).reshape(batch, V)
    logits[:] = 0.0
    logits[np.arange(batch), (toks.reshape(batch, n_tokens)[:, -1] + 1) % V] = 1.0


def test_callback_stop_and_a_cancel_while_queued():
    be = _core.BatchEngine(_counting_forward, 2, 1, 4, 512, V, 1, 8, True)  # one row: the second must wait
    greedy = SamplingParams(temperature=0.0)
    holding = threading.Event()
    res = {}

    def stops_at_4(t, seen=[]):  # noqa: B006
        seen.append(t)
        holding.set()
        return len(seen) < 4

    def first():
        res["a"] = be.generate(1, [10], greedy.make_chain(), 200, [], stops_at_4)

    def queued():
        res["b"] = be.generate(2, [50, 51], greedy.make_chain(), 200, [], None)

    ta = threading.Thread(target=first)
    ta.start()
    holding.wait(10)
    tb = threading.Thread(target=queued)
    tb.start()
    for _ in range(5000):
        if be.stats["queued"]:
            break
        time.sleep(0.0005)
    assert be.cancel(2)
    ta.join(30)
    tb.join(30)
    assert res["a"]["finish_reason"] == "stop" and res["a"]["sequences"][0] == [11, 12, 13, 14]
    assert res["b"]["finish_reason"] == "cancelled" and res["b"]["sequences"][0] == []
    # rows at their own positions reach a Python forward as per-row lengths
    got = _run_concurrently(lambda i: be.generate(10 + i, [20 * i + 1] * (i + 1), greedy.make_chain(), 5, [], None), 3)
    assert [got[i]["sequences"][0] for i in range(3)] == [list(range(20 * i + 2, 20 * i + 7)) for i in range(3)]


def test_bad_calls_are_refused():
    be = _core.BatchEngine(_core.FakeForward(V), 2, 1, 4, 64, V, 2, 8, True)
    ch = SamplingParams(temperature=0.0).make_chain()
    with pytest.raises(ValueError, match="empty"):
        be.generate(1, [], ch, 5, [], None)
    with pytest.raises(ValueError, match="outside"):
        be.generate(1, [V], ch, 5, [], None)
    with pytest.raises(ValueError, match="context"):
        be.generate(1, [1] * 64, ch, 5, [], None)
    with pytest.raises(ValueError, match="max_new_tokens"):
        be.generate(1, [1], ch, 0, [], None)
    with pytest.raises(ValueError, match="sampler chain"):
        be.generate(1, [1], None, 5, [], None)
    with pytest.raises(ValueError, match="request_id"):
        be.generate(-1, [1], ch, 5, [], None)
    with pytest.raises(ValueError, match="max_rows"):
        _core.BatchEngine(_core.FakeForward(V), 2, 1, 4, 64, V, 0, 8, True)
    with pytest.raises(TypeError, match="forward"):
        _core.BatchEngine(3, 2, 1, 4, 64, V, 2, 8, True)

    def raises(*a):
        raise RuntimeError("model exploded")

    bad = _core.BatchEngine(raises, 2, 1, 4, 64, V, 2, 8, True)
    got = _run_concurrently(lambda i: pytest.raises(RuntimeError, bad.generate, i, [1, 2], ch, 5, [], None), 3)
    assert all("model exploded" in str(g.value) for g in got.values())  # every row of the step, no hang

    def boom(t):
        raise KeyError("consumer bug")

    with pytest.raises(KeyError, match="consumer bug"):
        be.generate(3, [1, 2], ch, 5, [], boom)
    assert be.generate(3, [1, 2], ch, 5, [], None)["finish_reason"] == "length"  # the id is free again


# --------------------------------------------------------------------------- a real graph (ONNX Runtime)

@pytest.fixture(scope="module")
def tiny_fp32(tmp_path_factory):
    return build_tiny_llm_folder(tmp_path_factory.mktemp("batch") / "fp32", seed=3, max_pos=512, vocab=320)[1]


@pytest.mark.parametrize("invariant", [False, True])
def test_batched_llm_equals_alone_on_fp32(tiny_fp32, invariant):
    """Rows at different positions in one GroupQueryAttention step (per-row seqlens_k and rotary positions),
    prompts longer than a prefill chunk joining while others decode: every sequence's tokens equal the same
    request run alone. fp32 weights, so equal means exactly equal."""
    n = 6
    alone = LLM(tiny_fp32, threads=1, prompt_lookup=0, prompt_cache=False, prefill_chunk=16)
    batched = LLM(tiny_fp32, threads=1, max_batch=3, prefill_chunk=16, batch_invariant=invariant)
    prompts = _prompts(n, seed=4, lo=3, hi=70, vocab=300)
    kw = [dict(max_new_tokens=60 + 4 * i, temperature=0.0 if i % 2 else 0.9, seed=i, presence_penalty=0.5)
          for i in range(n)]

    def one(i):
        return list(batched.stream(prompts[i], **kw[i]))

    got = _run_concurrently(one, n)
    for i in range(n):
        ref = alone.generate(prompts[i], **kw[i])
        assert "".join(got[i]) == ref.text, i
    s = batched._batch.stats
    assert s["decode_rows"] > s["decode_steps"] and s["prefill_chunks"] > n  # shared steps, chunked prompts


def test_stream_cancel_ends_one_batched_generation(tiny_fp32):
    llm = LLM(tiny_fp32, threads=1, max_batch=2)
    ban = {t: -100.0 for t in llm.eos_token_ids}
    a = llm.stream([7, 8, 9], max_new_tokens=400, temperature=0.0, logit_bias=ban)
    ref = LLM(tiny_fp32, threads=1).generate([10, 11], max_new_tokens=30, temperature=0.0, logit_bias=ban,
                                              prompt_lookup=0)
    out = {}

    def other():
        out["b"] = llm.generate([10, 11], max_new_tokens=30, temperature=0.0, logit_bias=ban)

    next(a)
    t = threading.Thread(target=other)
    t.start()
    a.cancel()  # from this thread, while another thread's row keeps decoding
    rest = list(a)
    t.join(60)
    assert a.generation.finish_reason == "cancelled" and len(a.generation.token_ids) < 400
    assert len(rest) < 400
    assert out["b"].token_ids == ref.token_ids and out["b"].finish_reason == "length"
    with pytest.raises(ValueError, match="max_batch"):
        LLM(tiny_fp32, max_batch=0)


@pytest.mark.parametrize("cache_bytes", [0, 1 << 20])
def test_many_threads_with_random_cancels(cache_bytes):
    """8 threads submit, a ninth cancels random ones at random moments (queued, prefilling or decoding):
    every sequence is a prefix of its solo run, complete unless cancelled; nothing hangs. With the prefix
    cache the prompts share a 13-token start, so rows join from restored prefixes (the fake's logits depend on
    every position a row holds: a wrong restore would show)."""
    n, vocab = 8, 5000
    be = _core.BatchEngine(_core.FakeForward(vocab), 2, 1, 4, 512, vocab, 3, 8, True, False, cache_bytes)
    prompts = _prompts(n, seed=7, lo=1, hi=60, vocab=vocab)
    if cache_bytes:
        prompts = [list(range(100, 113)) + p for p in prompts]
    rng = random.Random(3)
    victims = rng.sample(range(n), 4)
    done = threading.Event()
    results = {}

    def canceller():
        t0 = time.time()  # once all have arrived (3 rows for 8 sequences: most still wait or run)
        while be.stats["running"] + be.stats["queued"] < n and time.time() - t0 < 10:
            time.sleep(0.0005)
        for v in victims:
            time.sleep(rng.uniform(0.0, 0.02))
            be.cancel(500 + v)
        done.set()

    t = threading.Thread(target=canceller)
    t.start()
    results = _run_concurrently(lambda i: be.generate(500 + i, prompts[i], SamplingParams(
        temperature=0.8, seed=i).make_chain(), 80, EOS, None), n)
    t.join(30)
    for i in range(n):
        ref = _alone(prompts[i], 80, i, vocab)
        got = results[i]["sequences"][0]
        assert got == ref["sequences"][0][:len(got)], i
        if results[i]["finish_reason"] != "cancelled":
            assert got == ref["sequences"][0] and results[i]["finish_reason"] == ref["finish_reason"]
        else:
            assert i in victims
    assert any(results[v]["finish_reason"] == "cancelled" for v in victims)
    assert be.stats["running"] == be.stats["queued"] == 0
    assert (be.stats["reused_prompt_tokens"] > 0) == bool(cache_bytes)


# --------------------------------------------------------------------------- the batch engine's prefix cache

@pytest.fixture(scope="module")
def tiny_q4(tmp_path_factory):
    return build_tiny_llm_folder(tmp_path_factory.mktemp("batch") / "q4", seed=5, max_pos=512, vocab=320,
                                 quant="q4")[1]


def test_prefix_cache_is_bit_exact_on_q4(tiny_q4, monkeypatch):
    """Prompts that share a prefix with earlier ones take it from the batch engine's prefix cache, with the
    prefix ending anywhere in a prefill chunk, or the prompt's last chunk being one token (a 1-row pass, which
    int8 activations round differently): the logits of every step are bit-identical to the same requests on an
    engine without the cache. q4 (MatMulNBits with int8 activations) is where a different pass would show."""
    from edgeai.ort_forward import OrtForward

    seen = []
    rows = OrtForward.rows

    def traced(self, first_row, batch, n_tokens, past_lens_addr, tokens_addr, logits_addr, kv_version):
        rows(self, first_row, batch, n_tokens, past_lens_addr, tokens_addr, logits_addr, kv_version)
        buf = np.ctypeslib.as_array((ctypes.c_float * (batch * self.vocab)).from_address(logits_addr))
        seen.append(buf[: self.vocab].tobytes())  # row 0; batch_invariant's dummy row is not compared

    monkeypatch.setattr(OrtForward, "rows", traced)
    chunk = 8
    rng = random.Random(11)
    system = [rng.randrange(300) for _ in range(21)]  # ends mid-chunk
    prompts = [system + [rng.randrange(300) for _ in range(k)] for k in (4, 1, 3, 12, 4, 20)]
    prompts += [prompts[3][:25], prompts[3][:26] + [7]]  # last chunk of 1 (25 = 3 * 8 + 1); a longer turn
    prompts.append(prompts[0])  # the same prompt again: all but its last token from the cache
    kw = dict(max_new_tokens=6, temperature=0.0)

    def trace(llm):
        out = []
        for p in prompts:
            del seen[:]
            g = llm.generate(p, **kw)
            out.append((g.token_ids, list(seen[-len(g.token_ids):])))
        return out

    cached = LLM(tiny_q4, threads=1, max_batch=2, prefill_chunk=chunk, batch_invariant=True)
    plain = LLM(tiny_q4, threads=1, max_batch=2, prefill_chunk=chunk, batch_invariant=True, prompt_cache=False)
    got, ref = trace(cached), trace(plain)
    for i, ((ids, logits), (ref_ids, ref_logits)) in enumerate(zip(got, ref)):
        assert ids == ref_ids, f"prompt {i}: tokens differ"
        assert logits == ref_logits, f"prompt {i}: logits differ"
    stats = cached.batch_stats
    assert stats["reused_prompt_tokens"] >= 8 * 19 and stats["cache_entries"] > 0
    assert plain.batch_stats["reused_prompt_tokens"] == 0
    # use_prompt_cache=False per call: no reuse
    before = cached.batch_stats["reused_prompt_tokens"]
    cached.generate(prompts[0], use_prompt_cache=False, **kw)
    assert cached.batch_stats["reused_prompt_tokens"] == before
    cached.clear_prompt_cache()
    assert cached.batch_stats["cache_entries"] == 0


def test_prefix_cache_rule_on_a_fake_forward():
    """The reused length: never the last prompt token, and a prefix ending mid-chunk leaves >= 2 rows to its
    chunk. Checked through the chunks the engine feeds (FakeForward records nothing, so count forwards)."""
    vocab = 50
    be = _core.BatchEngine(_core.FakeForward(vocab), 2, 1, 4, 128, vocab, 2, 8, True, False, 1 << 20)
    chain = lambda: SamplingParams(temperature=0.0).make_chain()  # noqa: E731
    base = list(range(1, 20))
    r1 = be.generate(1, base, chain(), 2)
    assert r1["reused_tokens"] == 0
    r2 = be.generate(2, base, chain(), 2)  # the same prompt: at most 18 (not the last token), but that
    assert r2["reused_tokens"] == reusable_prefix(19, 19, 8) == 17  # would leave 1 row of [16, 19)
    r3 = be.generate(3, base[:17] + [40], chain(), 2)  # shares 17 = 2 * 8 + 1: 1 row left -> reuse 16
    assert r3["reused_tokens"] == 16
    r4 = be.generate(4, base + [41, 42], chain(), 2)  # shares all 19 of base: 19 % 8 = 3, 21 ends its chunk
    assert r4["reused_tokens"] == 19
    assert r2["sequences"] == r1["sequences"]
