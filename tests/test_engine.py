"""The C++ decode engine driven by a fake forward pass (no model): KV reuse, beams, stops, cancellation."""
import ctypes
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgeai import SamplingParams, _core
from helpers.prefix_rule import reusable_prefix

V = 97


def make_engine(cache_mb=8, max_seq=256, chunk=512, repeat_period=0):
    fake = _core.FakeForward(V, repeat_period)
    return fake, _core.Engine(fake, 2, 2, 4, max_seq, V, cache_mb << 20, chunk)


def fake_logits(tokens, repeat_period=0):
    """NumPy twin of FakeForward: logits for the last position of a row holding `tokens`."""
    h = 0.0
    for t in tokens:
        h = np.fmod(h * 31.0 + float(t) + 7.0, 1000003.0)
    v = np.arange(V, dtype=np.float64)
    out = (3.0 * np.cos(0.61 * v + 0.013 * h) + 0.5 * np.sin(0.17 * v * (1 + np.fmod(h, 5.0)))).astype(np.float32)
    echo = len(tokens) - repeat_period
    if repeat_period and echo >= 0:
        out[tokens[echo]] += 5.0
    return out


def greedy(engine, prompt, n=12, **kw):
    return engine.generate(prompt, SamplingParams(temperature=0.0).make_chain(), max_new_tokens=n, **kw)


def test_greedy_matches_a_recomputing_reference():
    _, e = make_engine()
    prompt = [5, 17, 42, 8]
    out = greedy(e, prompt)["sequences"][0]
    seq, ref = list(prompt), []
    for _ in range(12):
        t = int(np.argmax(fake_logits(seq)))
        ref.append(t)
        seq.append(t)
    assert out == ref


@pytest.mark.parametrize("chunk", [1, 3, 512])
def test_chunked_prefill_gives_the_same_tokens(chunk):
    _, e = make_engine(chunk=chunk)
    _, ref = make_engine()
    prompt = list(range(1, 40))
    assert greedy(e, prompt)["sequences"] == greedy(ref, prompt)["sequences"]


def test_prefix_reuse_skips_work_and_changes_nothing():
    fake, e = make_engine(chunk=10)  # the shared 50 tokens are 5 whole prefill chunks
    _, plain = make_engine(cache_mb=0)
    system = list(range(10, 60))
    a, b = system + [1, 2, 3], system + [7, 8]
    greedy(e, a)
    before = fake.tokens_processed
    r = greedy(e, b)
    assert r["reused_tokens"] == len(system)
    assert fake.tokens_processed - before == len(b) - len(system) + r["decode_steps"]
    assert r["sequences"] == greedy(plain, b, use_prompt_cache=False)["sequences"]


def test_snapshot_cache_serves_an_older_prefix():
    _, e = make_engine(chunk=10)
    _, plain = make_engine(cache_mb=0)
    p1, p2 = list(range(10, 50)), list(range(50, 90))
    greedy(e, p1)
    greedy(e, p2)  # row 0 now holds p2; p1's prefix must come back from the snapshot
    r = greedy(e, p1[:30] + [3, 3])
    assert r["reused_tokens"] == 30
    assert r["sequences"] == greedy(plain, p1[:30] + [3, 3], use_prompt_cache=False)["sequences"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="KV pages are given back with madvise (Linux)")
def test_stale_kv_pages_go_back_to_the_os_and_nothing_live_is_lost():
    """After a long prompt, a short request releases the cache positions it cannot reach (they read back as
    zero: fresh pages), keeps what it uses, and the long prompt still comes back right (from the snapshot)."""
    fake, e = make_engine(max_seq=4096, chunk=100)
    _, plain = make_engine(max_seq=4096, cache_mb=0)
    keys = np.ctypeslib.as_array((ctypes.c_float * (4096 * 4)).from_address(e.kv_address(0, False)))
    long_prompt = [int(t) for t in np.random.default_rng(0).integers(1, V, 3000)]
    greedy(e, long_prompt, n=1)
    assert keys[2990 * 4] == long_prompt[2990]  # head 0, element 0 of a position: the token the fake saw
    short = [5, 6, 7, 8]
    r = greedy(e, short, n=5)
    assert r["sequences"] == greedy(plain, short, n=5)["sequences"]
    assert keys[2990 * 4] == 0.0 and keys[1024 * 4] == 0.0  # released: beyond 4 + 5 new tokens + 1
    assert list(keys[:4 * 4:4]) == short  # written by this request, kept
    again = greedy(e, long_prompt, n=3)
    # all but the last 2 prompt tokens: the last one starts generation, and its chunk keeps >= 2 rows
    assert again["reused_tokens"] == reusable_prefix(len(long_prompt), len(long_prompt), 100) == len(long_prompt) - 2
    assert again["sequences"] == greedy(plain, long_prompt, n=3, use_prompt_cache=False)["sequences"]


def test_cache_is_bounded():
    _, e = make_engine(cache_mb=0)
    greedy(e, list(range(50)))
    assert e.cache_entries == 0
    fake, small = make_engine()
    for i in range(40):
        greedy(small, [i] * 30, n=1)
    assert small.cache_bytes <= 8 << 20


def test_eos_and_callback_stop():
    _, e = make_engine()
    prompt = [5, 17, 42, 8]
    full = greedy(e, prompt)["sequences"][0]
    r = greedy(e, prompt, eos_ids=[full[3]])
    assert r["sequences"][0] == full[:4] and r["finish_reason"] == "stop"
    seen = []
    r = greedy(e, prompt, on_token=lambda t: seen.append(t) or len(seen) < 2)
    assert r["finish_reason"] == "stop" and r["sequences"][0] == full[:2]
    assert greedy(e, prompt, n=5)["finish_reason"] == "length"


def test_cancel_from_another_thread():
    _, e = make_engine(max_seq=4096)
    def slow(t):
        time.sleep(0.002)
        return True
    threading.Timer(0.05, e.cancel).start()
    t0 = time.perf_counter()
    r = greedy(e, [1, 2, 3], n=3000, on_token=slow)
    assert r["finish_reason"] == "cancelled"
    assert time.perf_counter() - t0 < 2.0
    assert len(r["sequences"][0]) < 3000


def test_bad_inputs():
    _, e = make_engine(max_seq=16)
    chain = SamplingParams(temperature=0.0).make_chain()
    with pytest.raises(ValueError, match="empty"):
        e.generate([], chain)
    with pytest.raises(ValueError, match="context"):
        e.generate(list(range(16)), chain)
    with pytest.raises(ValueError, match="vocabulary"):
        e.generate([V + 1], chain)
    with pytest.raises(ValueError, match="max_new_tokens"):
        e.generate([1], chain, max_new_tokens=0)
    with pytest.raises(ValueError, match="chain"):
        e.generate([1], None)


def test_generation_stops_at_the_end_of_the_context():
    _, e = make_engine(max_seq=16)
    r = greedy(e, list(range(10)), n=100)
    assert r["finish_reason"] == "length" and len(r["sequences"][0]) == 6


def test_callback_exception_propagates_and_engine_recovers():
    _, e = make_engine()
    def boom(t):
        raise KeyError("consumer failed")
    with pytest.raises(KeyError):
        greedy(e, [1, 2, 3], on_token=boom)
    _, ref = make_engine()
    assert greedy(e, [1, 2, 3, 4])["sequences"] == greedy(ref, [1, 2, 3, 4])["sequences"]


def python_beam_search(prompt, num_beams, n, eos, lp=1.0):
    """Drives the C++ scorer with logits recomputed from scratch for each beam: no KV cache involved."""
    b = _core.BeamSearch(num_beams, V, eos, lp, _core.EarlyStopping.HEURISTIC, n)
    seqs = [list(prompt)] * num_beams
    while True:
        logits = np.stack([fake_logits(s) for s in seqs])
        tok, par = b.step(logits)
        if b.done:
            return b.finalize(num_beams)
        seqs = [seqs[p] + [int(t)] for t, p in zip(tok, par)]


@pytest.mark.parametrize("num_beams", [2, 4])
def test_beam_search_reorders_the_cache_correctly(num_beams):
    _, e = make_engine()
    prompt = [5, 17, 42, 8]
    eos = [3, 11]
    r = e.generate(prompt, None, max_new_tokens=10, eos_ids=eos, num_beams=num_beams,
                   num_return_sequences=num_beams)
    ref = python_beam_search(prompt, num_beams, 10, eos)
    assert r["sequences"] == [h[0] for h in ref]
    assert np.allclose(r["scores"], [h[1] for h in ref], atol=1e-5)


def test_queued_generation_from_many_threads():
    _, e = make_engine()
    prompts = [[i, i + 1, i + 2, 7] for i in range(8)]
    _, ref_engine = make_engine(cache_mb=0)
    expected = [greedy(ref_engine, p, use_prompt_cache=False)["sequences"] for p in prompts]
    results = [None] * 8

    def work(i):
        results[i] = greedy(e, prompts[i])["sequences"]
    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == expected


# ---- draft tokens (prompt lookup): same tokens as plain decoding, fewer forward passes

LOOP = dict(repeat_period=9)  # the fake then drifts into loops that prompt lookup can predict
PROMPT = [5, 17, 42, 8, 5, 17, 61, 30, 2, 11, 5, 17]


def drafted(engine, prompt, k, params=None, n=60, **kw):
    chain = (params or SamplingParams(temperature=0.0)).make_chain()
    return engine.generate(prompt, chain, max_new_tokens=n, draft_tokens=k, **kw)


def test_greedy_with_drafts_matches_the_reference_with_fewer_forwards():
    seq, ref = list(PROMPT), []
    for _ in range(60):
        ref.append(int(np.argmax(fake_logits(seq, 9))))
        seq.append(ref[-1])
    fake0, plain = make_engine(**LOOP)
    assert drafted(plain, PROMPT, 0)["sequences"][0] == ref
    for k in (1, 3, 8):
        fake, e = make_engine(**LOOP)
        r = drafted(e, PROMPT, k)
        assert r["sequences"][0] == ref, k
        assert r["draft_accepted"] > 10 and r["decode_steps"] + r["draft_accepted"] == 59
        assert fake.calls < fake0.calls  # the point: fewer forward passes


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0.9, top_k=20, seed=7),
    SamplingParams(temperature=0.7, top_p=0.9, min_p=0.05, seed=3),
    SamplingParams(temperature=0.0, repetition_penalty=1.3, presence_penalty=0.5, penalty_last_n=16),
])
def test_sampling_and_penalties_are_unchanged_by_drafts(params):
    _, a = make_engine(**LOOP)
    _, b = make_engine(**LOOP)
    assert drafted(a, PROMPT, 0, params)["sequences"] == drafted(b, PROMPT, 4, params)["sequences"]


def test_stops_inside_a_confirmed_draft_and_limits_are_exact():
    _, e = make_engine(**LOOP)
    full = drafted(e, PROMPT, 0)["sequences"][0]
    for n in (1, 2, 7, 33):
        r = drafted(e, PROMPT, 5, n=n, use_prompt_cache=False)
        assert r["sequences"][0] == full[:n] and r["finish_reason"] == "length"
    later = full[20]
    r = drafted(e, PROMPT, 5, eos_ids=[later])
    assert r["sequences"][0] == full[:full.index(later) + 1] and r["finish_reason"] == "stop"
    seen = []
    r = drafted(e, PROMPT, 5, on_token=lambda t: seen.append(t) or len(seen) < 25)
    assert r["sequences"][0] == full[:25] == seen and r["finish_reason"] == "stop"


def test_drafts_keep_the_prefix_cache_and_context_end_correct():
    _, e = make_engine(max_seq=80, chunk=4, **LOOP)
    _, plain = make_engine(max_seq=80, cache_mb=0, **LOOP)
    first = drafted(e, PROMPT, 6, n=200)  # runs into the end of the context
    assert first["sequences"] == drafted(plain, PROMPT, 0, n=200, use_prompt_cache=False)["sequences"]
    assert len(PROMPT) + len(first["sequences"][0]) <= 80
    follow = PROMPT + first["sequences"][0][:30]  # continues the cached row: only the prompt's chunks are reused
    r = drafted(e, follow, 6, n=20)
    assert r["reused_tokens"] == len(PROMPT)  # 3 whole chunks; positions written by decode steps are recomputed
    assert r["sequences"] == drafted(plain, follow, 0, n=20, use_prompt_cache=False)["sequences"]
    with pytest.raises(ValueError, match="draft_tokens"):
        drafted(e, PROMPT, -1)


@pytest.mark.parametrize("prompt,n", [(PROMPT, 60), (list(range(1, 30)) * 2, 40), ([3, 1, 4, 1, 5, 9, 2, 6], 90)])
def test_draft_policy_replay_counts_what_the_engine_does(prompt, n):
    """bench/draft_policy_sim.py prices draft policies by replaying the engine's on a reference text: its
    replay must count the same steps and draft tokens fed as the engine (greedy on the fake: same text)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    from draft_policy_sim import replay

    _, e = make_engine(**LOOP)
    r = drafted(e, prompt, 8, n=n)
    assert r["draft_proposed"] > 0
    assert replay(prompt, r["sequences"][0]) == (r["decode_steps"], r["draft_proposed"])
