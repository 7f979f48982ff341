"""Speculative decoding with a draft model (csrc/speculative.h): greedy output is the target's own, sampled
output follows the target's distribution after the sampler chain, the draft shares the tokenizer, and
cancellation, stop strings, eos and max_new_tokens behave as in plain decoding."""
import ctypes
import itertools
import json
import math
import threading
import time

import numpy as np
import pytest

from conftest import build_tiny_llm_folder
from edgeai import _core
from edgeai.llm import LLM
from edgeai.sampling import SamplingParams
from helpers.sampling_ref import reference_filters

PROMPT = [1, 2, 3, 4, 5, 6, 7]


def engine(vocab, repeat_period=0, max_seq=256, chunk=16):
    return _core.Engine(_core.FakeForward(vocab, repeat_period), 1, 1, 4, max_seq, vocab, 0, chunk)


def greedy():
    return SamplingParams(temperature=0).make_chain()


def run(target, draft, chain, gamma, seed=0, **kw):
    return target.generate(PROMPT, chain, draft_tokens=gamma, draft=draft, draft_cost=0.3, seed=seed, **kw)


# ---------------------------------------------------------------- engine level (FakeForward)

@pytest.mark.parametrize("draft_period", [3, 0, 5])  # the target's own logits, close ones, far ones
@pytest.mark.parametrize("gamma", [1, 2, 3, 5, 8])
def test_greedy_equals_plain_greedy(draft_period, gamma):
    target, draft = engine(64, 3), engine(64, draft_period)
    runs = []
    for max_new, eos in [(40, []), (17, []), (60, [41]), (60, [46])]:
        plain = target.generate(PROMPT, greedy(), max_new, eos)
        spec = run(target, draft, greedy(), gamma, max_new_tokens=max_new, eos_ids=eos)
        assert spec["sequences"] == plain["sequences"]
        assert spec["finish_reason"] == plain["finish_reason"]
        s = spec["speculative"]
        # every token is one step's own token or an accepted proposal
        assert spec["decode_steps"] + spec["draft_accepted"] == len(spec["sequences"][0]) - 1
        assert s["model_accepted"] + s["lookup_accepted"] == spec["draft_accepted"]
        assert len(s["steps_by_width"]) == gamma + 2 and sum(s["steps_by_width"]) == spec["decode_steps"]
        runs.append((plain, spec))
    assert runs[2][0]["sequences"] == [[41]] and runs[3][0]["finish_reason"] == "stop"  # eos first, and later
    plain, spec = runs[0]
    s = spec["speculative"]
    if draft_period == 3:  # the draft is the target: every model proposal is accepted, and steps are saved
        assert s["model_proposed"] > 0 and s["model_accepted"] == s["model_proposed"]
        assert spec["decode_steps"] < len(plain["sequences"][0]) - 1


def test_draft_with_shorter_context_and_budget_edges():
    target, draft = engine(64, 3, max_seq=64), engine(64, 3, max_seq=20)
    plain = target.generate(PROMPT, greedy(), 200)
    spec = run(target, draft, greedy(), 6, max_new_tokens=200)
    assert spec["sequences"] == plain["sequences"] and len(plain["sequences"][0]) == 64 - len(PROMPT)


def test_bad_draft_arguments():
    target = engine(64)
    with pytest.raises(ValueError, match="vocabulary"):
        run(target, engine(32), greedy(), 4)
    with pytest.raises(ValueError, match="its own draft"):
        run(target, target, greedy(), 4)
    with pytest.raises(ValueError, match="draft_tokens >= 1"):
        run(target, engine(64), greedy(), 0)
    with pytest.raises(ValueError, match="beam search"):
        target.generate(PROMPT, None, 8, [], 2, draft=engine(64), draft_tokens=2)


@pytest.mark.parametrize("gamma", [1, 3, 8])
def test_fixed_draft_proposes_gamma_every_round(gamma):
    """fixed_draft (a draft's own measurement): the model proposes min(gamma, room) every round, never prompt
    lookup, and is not switched off when it keeps missing; the output is still the target's."""
    target, far = engine(64, 3), engine(64, 5)
    plain = target.generate(PROMPT, greedy(), 40, [])
    fixed = run(target, far, greedy(), gamma, max_new_tokens=40, fixed_draft=True)
    adaptive = run(target, far, greedy(), gamma, max_new_tokens=40)
    assert fixed["sequences"] == plain["sequences"] == adaptive["sequences"]
    s = fixed["speculative"]
    assert s["lookup_proposed"] == 0 and s["lookup_rounds"] == 0
    assert s["model_rounds"] == s["rounds"] - s["steps_by_width"][1]
    # narrower rounds only at the end, where fewer than gamma tokens are still wanted (the last has none)
    assert sum(s["steps_by_width"][1:gamma + 1]) <= gamma and s["steps_by_width"][gamma + 1] > 0
    assert s["model_accepted"] < s["model_proposed"]  # the far draft misses ...
    a = adaptive["speculative"]  # ... so the adaptive policy stops asking it, and prompt lookup takes over
    assert a["model_proposed"] < s["model_proposed"] and a["lookup_proposed"] > 0


def _fake_logits(tokens, vocab, repeat_period):
    """FakeForward's logits after `tokens` (csrc/forward.cpp), in float64."""
    h = 0.0
    for t in tokens:
        h = math.fmod(h * 31.0 + t + 7.0, 1000003.0)
    v = np.arange(vocab)
    out = (3.0 * np.cos(0.61 * v + 0.013 * h) + 0.5 * np.sin(0.17 * v * (1 + math.fmod(h, 5.0))))
    out = out.astype(np.float32).astype(np.float64)
    echo = len(tokens) - repeat_period
    if repeat_period > 0 and echo >= 0:
        out[tokens[echo]] += 5.0
    return out


def _chi_square(counts, probs):
    """Pearson's statistic and degrees of freedom; cells expected below 5 are pooled into one."""
    n = counts.sum()
    expected = probs * n
    small = expected < 5
    obs = np.append(counts[~small], counts[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    keep = exp > 0
    return float(((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum()), int(keep.sum()) - 1


def _critical(df, z=5.0):
    """Chi-square critical value at a normal-tail z (Wilson-Hilferty); z=5 is a p-value of about 3e-7."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def test_rejection_sampling_matches_target_distribution():
    """The joint distribution of the first three sampled tokens, against the exact one computed from the
    target's logits through the same transforms (repetition penalty on the history, temperature, top-k).
    Fixed seeds: the outcome is deterministic, and the threshold's p-value (~3e-7) leaves no room to flake."""
    vocab, n_runs, n_new = 6, 12000, 3
    prompt = [0, 1, 2, 3, 4, 5, 1, 2]
    kw = dict(temperature=0.8, top_k=5, repetition_penalty=1.3)
    target, draft = engine(vocab, 0), engine(vocab, 2)  # the draft favours an echo the target does not
    chain = SamplingParams(**kw, seed=0).make_chain()
    cells = list(itertools.product(range(vocab), repeat=n_new))
    index = {c: i for i, c in enumerate(cells)}
    exact = np.zeros(len(cells))
    ref = dict(repetition=1.3, temperature=0.8, top_k=5)
    for i, c in enumerate(cells):
        prob, hist = 1.0, list(prompt)
        for t in c:
            ids, p = reference_filters(_fake_logits(hist, vocab, 0), hist, **ref)
            prob *= float(p[list(ids).index(t)]) if t in ids else 0.0
            hist.append(t)
        exact[i] = prob
    assert abs(exact.sum() - 1) < 1e-9

    spec_counts, draft_counts = np.zeros(len(cells)), np.zeros(len(cells))
    proposed = accepted = 0
    for seed in range(n_runs):
        r = target.generate(prompt, chain, n_new + 1, draft_tokens=3, draft=draft, draft_cost=0.1, seed=seed)
        spec_counts[index[tuple(r["sequences"][0][:n_new])]] += 1
        proposed += r["speculative"]["model_proposed"]
        accepted += r["speculative"]["model_accepted"]
        chain.reseed(seed)
        d = draft.generate(prompt, chain, n_new)  # the draft sampling on its own: a different distribution
        draft_counts[index[tuple(d["sequences"][0])]] += 1
    assert 0 < accepted < proposed  # proposals were made, and both accepted and rejected
    stat, df = _chi_square(spec_counts, exact)
    assert stat < _critical(df), (stat, df)
    stat_draft, df_draft = _chi_square(draft_counts, exact)
    assert stat_draft > _critical(df_draft) * 3  # the test tells a wrong distribution apart


def test_seeded_sampling_is_deterministic_and_history_free():
    chain = lambda: SamplingParams(temperature=1.0, top_p=0.9, seed=1).make_chain()
    target, draft = engine(64, 3), engine(64, 0)
    first = run(target, draft, chain(), 4, seed=11, max_new_tokens=50)
    run(target, draft, chain(), 4, seed=3, max_new_tokens=30)  # other history in both caches
    target.generate([9, 9, 9] + PROMPT, chain(), 20)
    again = run(target, draft, chain(), 4, seed=11, max_new_tokens=50)
    fresh = run(engine(64, 3), engine(64, 0), chain(), 4, seed=11, max_new_tokens=50)
    assert first["sequences"] == again["sequences"] == fresh["sequences"]
    other = run(target, draft, chain(), 4, seed=12, max_new_tokens=50)
    assert other["sequences"] != first["sequences"]


def test_cancel_mid_round_and_stop_callback():
    target, draft = engine(64, 3), engine(64, 3)
    plain = target.generate(PROMPT, greedy(), 40)["sequences"][0]
    seen = []

    def cancel_at_5(tok):
        seen.append(tok)
        if len(seen) == 5:
            target.cancel()
        return True

    r = run(target, draft, greedy(), 8, max_new_tokens=40, on_token=cancel_at_5)
    assert r["finish_reason"] == "cancelled" and r["sequences"][0] == plain[:5] == seen
    assert r["speculative"]["model_accepted"] > 0  # tokens 2..5 came from accepted proposals
    count = itertools.count(1)
    stop = run(target, draft, greedy(), 8, max_new_tokens=40, on_token=lambda t: next(count) < 7)
    assert stop["finish_reason"] == "stop" and stop["sequences"][0] == plain[:7]
    # the draft and the target go on as if nothing happened
    assert run(target, draft, greedy(), 8, max_new_tokens=40)["sequences"][0] == plain


def test_cancel_from_another_thread_while_the_draft_runs():
    """The draft's forward is slow Python here: a cancel from another thread ends the request within a step."""
    started = threading.Event()

    def slow_draft(batch, n_tokens, past_len, tokens_addr, logits_addr, kv_version, n_logits=1):
        out = np.ctypeslib.as_array((ctypes.c_float * (batch * n_logits * 64)).from_address(logits_addr))
        out[:] = 0.0
        out[(past_len + n_tokens) % 64] = 1.0
        started.set()
        time.sleep(0.01)

    def failing_draft(*args):
        raise RuntimeError("no model behind this forward")

    target = engine(64, 3)
    # a draft forward that fails surfaces as the request's error and leaves both engines usable
    broken = _core.Engine(failing_draft, 1, 1, 4, 256, 64, 0, 16)
    with pytest.raises(RuntimeError, match="no model behind"):
        run(target, broken, greedy(), 4, max_new_tokens=40)
    assert target.generate(PROMPT, greedy(), 5)["finish_reason"] == "length"
    draft = _core.Engine(slow_draft, 1, 1, 4, 256, 64, 0, 16)
    result = {}
    t = threading.Thread(target=lambda: result.update(run(target, draft, greedy(), 8, max_new_tokens=200)))
    t.start()
    assert started.wait(10)
    target.cancel()
    t.join(10)
    assert not t.is_alive()
    assert result["finish_reason"] == "cancelled" and len(result["sequences"][0]) < 200


# ---------------------------------------------------------------- LLM level (tiny ONNX models)

@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("spec")
    _, target = build_tiny_llm_folder(root / "target", seed=3)
    _, close = build_tiny_llm_folder(root / "close", seed=3, quant="q4")  # agrees often: a realistic draft
    _, far = build_tiny_llm_folder(root / "far", seed=4)  # random: rarely agrees
    return target, close, far


@pytest.mark.parametrize("gamma", [1, 2, 4, 8])
def test_llm_greedy_equals_plain(pair, gamma):
    target, close, far = pair
    with LLM(target, prompt_lookup=0) as plain, LLM(target, draft=close) as a, LLM(target, draft=far) as b:
        for prompt in ("hello world, this is", "def f(x): return x"):
            want = plain.generate(prompt, max_new_tokens=40).token_ids
            for spec in (a, b):
                g = spec.generate(prompt, max_new_tokens=40, prompt_lookup=gamma)
                assert g.token_ids == want
                s = g.timings["speculative"]
                assert s["target_steps"] == g.timings["decode_steps"] and s["draft_s"] >= 0
        assert a.generate("hello world, this is", max_new_tokens=40,
                          prompt_lookup=gamma).timings["speculative"]["model_accepted"] > 0


def test_llm_stop_strings_streaming_and_sampling(pair):
    target, close, _ = pair
    with LLM(target, prompt_lookup=0) as plain, LLM(target, draft=close) as spec:
        want = plain.generate("hello", max_new_tokens=30)
        stop = want.text[len(want.text) // 2:][:3]
        a = plain.generate("hello", max_new_tokens=30, stop=[stop])
        b = spec.generate("hello", max_new_tokens=30, stop=[stop])
        assert (a.text, a.finish_reason) == (b.text, b.finish_reason) and b.finish_reason == "stop"
        stream = spec.stream("hello", max_new_tokens=30)
        assert "".join(stream) == want.text
        s1 = spec.generate("hello", max_new_tokens=30, temperature=0.9, seed=5)
        s2 = spec.generate("hello", max_new_tokens=30, temperature=0.9, seed=5)
        assert s1.token_ids == s2.token_ids


def test_llm_draft_must_share_the_tokenizer(pair, tmp_path):
    target, close, _ = pair
    _, small_vocab = build_tiny_llm_folder(tmp_path / "v", seed=3, vocab=300)
    with pytest.raises(ValueError, match="does not share the tokenizer"):
        LLM(target, draft=small_vocab)
    # same vocabulary size, different token ids: two merges' ids swapped
    from edgeai.convert.pipeline import convert
    from edgeai.convert.tiny import make_tiny_source
    from conftest import SMOLLM2_TEMPLATE
    from edgeai.convert.tokenizer_build import make_tiny_tokenizer_json

    src = make_tiny_source(vocab=320, max_pos=256, seed=3)
    tok = json.loads(make_tiny_tokenizer_json(320))
    vocab = tok["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[-2:]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    src.tokenizer_json = json.dumps(tok)
    src.chat_template = SMOLLM2_TEMPLATE
    src.special_tokens = {"bos": None, "eos": "<|im_end|>", "pad": "<|im_end|>", "unk": "<|endoftext|>"}
    src.source = {"format": "tiny", "name": "tiny"}
    other = convert(src, tmp_path / "other", quant="fp32", progress=False)
    with pytest.raises(ValueError, match="tokenizer digest"):
        LLM(target, draft=other)
    with pytest.raises(ValueError, match="target model itself"):
        LLM(target, draft=target)
    with pytest.raises(TypeError, match="draft must be"):
        LLM(target, draft=3)
    with LLM(close) as loaded:  # an LLM instance is shared, not owned: closing the target leaves it open
        with LLM(target, draft=loaded) as spec:
            assert spec.draft is loaded
        assert loaded.generate("hi", max_new_tokens=2).token_ids


def test_cli_generate_with_draft_and_mismatch(pair, tmp_path, capsys):
    from edgeai.cli import main

    target, close, _ = pair
    assert main(["generate", "hello", "--raw", "--model", str(target), "--draft", str(close), "-v",
                 "--max-new-tokens", "12"]) == 0
    err = capsys.readouterr().err
    assert "[draft:" in err and "target steps" in err
    _, small_vocab = build_tiny_llm_folder(tmp_path / "v", seed=3, vocab=300)
    assert main(["generate", "hello", "--model", str(target), "--draft", str(small_vocab)]) == 1
    assert "does not share the tokenizer" in capsys.readouterr().err


def test_served_models_share_one_draft(pair):
    from edgeai.server.registry import load_llms

    target, close, _ = pair
    served = load_llms([f"a={target}", f"b={target}"], threads=1, draft=str(close))
    a, b = served["a"].llm, served["b"].llm
    assert a.draft is b.draft and a.draft is not None
    with LLM(target, prompt_lookup=0) as plain:
        want = plain.generate("hello world", max_new_tokens=20).token_ids
    assert a.generate("hello world", max_new_tokens=20).token_ids == want


def test_draft_window_changes_proposals_never_the_output():
    """The draft reads only the prompt's tail (from a chunk boundary): fewer prompt tokens to prefill, same tokens."""
    target, draft = engine(64, 3), engine(64, 3)
    prompt = list(range(40, 60)) * 3 + PROMPT  # 67 tokens
    plain = target.generate(prompt, greedy(), 40)
    for window in (0, 8, 20, 1000):
        spec = target.generate(prompt, greedy(), 40, draft_tokens=4, draft=draft, draft_window=window)
        assert spec["sequences"] == plain["sequences"]
    chain = lambda: SamplingParams(temperature=1.0, seed=0).make_chain()  # noqa: E731
    a = target.generate(prompt, chain(), 40, draft_tokens=4, draft=draft, draft_window=20, seed=9)
    b = engine(64, 3).generate(prompt, chain(), 40, draft_tokens=4, draft=engine(64, 3), draft_window=20, seed=9)
    assert a["sequences"] == b["sequences"]


def test_draft_acceptance_bench(pair):
    """bench/speculative_bench.py's draft_acceptance (the draft stage of bench/distill_run.py): every round asks
    the draft, its counts add up (each token after the first is a target step's own or an accepted proposal),
    the close draft is accepted at least as often as the far one, and on an fp32 target the greedy tokens equal
    the target alone's. (Random tiny models fall into short loops, so even the far draft often agrees.)"""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    from speculative_bench import draft_acceptance

    target, close, far = pair
    with LLM(target) as llm:
        prompts = [("text", llm.tokenizer.encode(t)) for t in ("hello world, this is", "def f(x): return x")]
        prompts.append(("chat", llm.tokenizer.encode("the heap queue algorithm")))
    r = draft_acceptance(target, {"close": close, "far": far}, prompts, max_new_tokens=30, gamma=3)
    for name in ("close", "far"):
        assert r[name]["greedy_mismatches"] == 0 and r[name]["prompts"] == 3
        assert r[name]["proposed"] >= 3 * 5  # every round asks the draft, weak or not
        assert set(r[name]["by_kind"]) == {"text", "chat"}
        steps = r[name]["steps"]
        assert r[name]["tokens_per_target_step"] == pytest.approx((steps + r[name]["accepted"]) / steps)
        assert sum(k["proposed"] for k in r[name]["by_kind"].values()) == r[name]["proposed"]
    assert r["close"]["acceptance"] >= r["far"]["acceptance"] and r["close"]["acceptance"] > 0.9
    with LLM(target, draft=close) as spec, pytest.raises(ValueError, match="fixed_draft"):
        spec.generate("hello", max_new_tokens=4, fixed_draft="yes")
