"""Token ids never depend on the prompt cache, on what ran before in the same LLM, on the process or on the
thread. Through ONNX Runtime on a tiny q4 model (MatMulNBits with int8 activations, whose rounding depends on
the rows a forward pass holds) and, marked `smollm2`, on the real SmolLM2 q4.

Each prompt runs 5 times in one cached LLM with the other prompts in between (some of them continue an earlier
prompt and its answer, the chat pattern that reuses cached positions), with the cache on and off, and in a
separate process; greedy and seeded sampling; prompt lookup off and on (each setting must agree with itself).
"""
import ctypes
import hashlib
import json
import random
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import numpy as np

import edgeai
from conftest import build_tiny_llm_folder
from edgeai.ort_forward import OrtForward

MODES = {"greedy": {}, "seeded": dict(temperature=0.8, top_p=0.95, seed=7)}
ROUNDS = 5


def make_prompts(llm, n_new, chunk, repeat=2):
    """6 prompts as token ids: 3 questions after a shared system text (`repeat` sentences, longer than a prefill
    chunk so that whole chunks are reused), and 3 second turns that continue a first turn with its own
    (cache-free) answer, as a chat does."""
    tok = llm.tokenizer
    system = tok.encode("You are a careful assistant. Answer briefly, in plain words, and never make things up. " * repeat)
    assert len(system) > chunk
    firsts = [system + tok.encode(q) for q in ("Tell a story", "Name three colours.", "What is two plus two?")]
    with edgeai.LLM(llm.model_dir, threads=1, context_length=llm.context_length, prompt_cache=False,
                    prefill_chunk=chunk) as plain:
        answers = [plain.generate(p, max_new_tokens=n_new, prompt_lookup=0).token_ids for p in firsts]
    seconds = [p + [t for t in a if t not in llm.eos_token_ids] + tok.encode(" Go on.") for p, a in zip(firsts, answers)]
    return firsts + seconds


@pytest.fixture
def logit_trace(monkeypatch):
    """Digests of the logits every forward pass returns, with the position its rows end at. On a tiny random
    model a rounding difference rarely flips a token, but it always changes these bits."""
    calls = []
    run = OrtForward.__call__

    def traced(self, batch, n_tokens, past_len, tokens_addr, logits_addr, kv_version, n_logits=1):
        run(self, batch, n_tokens, past_len, tokens_addr, logits_addr, kv_version, n_logits)
        n = batch * n_logits * self.vocab
        buf = np.ctypeslib.as_array((ctypes.c_float * n).from_address(logits_addr))
        calls.append((past_len + n_tokens, hashlib.sha1(buf.tobytes()).hexdigest()))

    monkeypatch.setattr(OrtForward, "__call__", traced)
    return calls


def run_rounds(llm, prompts, n_new, mode, lookup, trace, rounds=ROUNDS):
    """Every prompt `rounds` times, in a rotating order, so each run follows different requests. Returns the
    token ids and the logits the sampler saw (the last prefill chunk's and every decode step's) of each run."""
    out = {i: [] for i in range(len(prompts))}
    for r in range(rounds):
        order = list(range(len(prompts)))
        random.Random(r).shuffle(order)
        for i in order:
            del trace[:]
            g = llm.generate(prompts[i], max_new_tokens=n_new, prompt_lookup=lookup, **MODES[mode])
            seen = [digest for end, digest in trace if end >= len(prompts[i])]
            out[i].append((g.token_ids, seen))
    return out


CHILD = r"""
import json, sys
import edgeai
args = json.load(open(sys.argv[1]))
modes = args["modes"]
with edgeai.LLM(args["folder"], threads=1, context_length=args["ctx"], prefill_chunk=args["chunk"]) as llm:
    out = {}
    for mode in modes:
        for lookup in args["lookups"]:
            out[f"{mode}/{lookup}"] = [llm.generate(p, max_new_tokens=args["n"], prompt_lookup=lookup, **modes[mode]).token_ids
                                        for p in args["prompts"]]
print(json.dumps(out))
"""


def in_fresh_process(tmp_path, folder, prompts, n_new, ctx, chunk, lookups):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(dict(folder=str(folder), prompts=prompts, n=n_new, ctx=ctx, chunk=chunk,
                                    lookups=list(lookups), modes=MODES)))
    res = subprocess.run([sys.executable, "-c", CHILD, str(spec)], capture_output=True, text=True, timeout=600,
                         cwd=Path(__file__).parent)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout)


def check_deterministic(folder, tmp_path, trace, n_new, ctx, chunk, repeat, lookups=(0, 8)):
    with edgeai.LLM(folder, threads=1, context_length=ctx, prefill_chunk=chunk) as cached, \
            edgeai.LLM(folder, threads=1, context_length=ctx, prefill_chunk=chunk, prompt_cache=False) as plain:
        prompts = make_prompts(cached, n_new, chunk, repeat)
        other = in_fresh_process(tmp_path, folder, prompts, n_new, ctx, chunk, lookups)
        reused = 0
        for mode in MODES:
            for lookup in lookups:
                got = run_rounds(cached, prompts, n_new, mode, lookup, trace)
                off = run_rounds(plain, prompts, n_new, mode, lookup, trace, rounds=2)
                for i in range(len(prompts)):
                    where = f"{mode}, prompt_lookup={lookup}, prompt {i}"
                    ids, logits = got[i][0]
                    assert all(run[0] == ids for run in got[i]), f"{where}: cached runs differ"
                    assert all(run[0] == ids for run in off[i]), f"{where}: cache on != cache off"
                    assert all(run[1] == logits for run in got[i] + off[i]), f"{where}: logits differ"
                    assert other[f"{mode}/{lookup}"][i] == ids, f"{where}: another process differs"
                reused += cached.generate(prompts[3], max_new_tokens=1).timings["reused_prompt_tokens"]
        assert reused > 0  # the cache was in play


@pytest.fixture(scope="module")
def tiny_q4(tmp_path_factory):
    return build_tiny_llm_folder(tmp_path_factory.mktemp("det") / "q4", seed=5, max_pos=512, quant="q4")[1]


def test_tiny_q4_ids_never_depend_on_cache_history_or_process(tiny_q4, tmp_path, logit_trace):
    check_deterministic(tiny_q4, tmp_path, logit_trace, n_new=24, ctx=512, chunk=16, repeat=2)


def test_threads_with_random_cancel_complete_like_a_serial_run(tiny_q4):
    with edgeai.LLM(tiny_q4, threads=1, context_length=512, prefill_chunk=16) as llm:
        prompts = make_prompts(llm, 16, 16)
        jobs = [(i % len(prompts), mode) for i in range(16) for mode in MODES]
        serial = {(i, m): llm.generate(prompts[i], max_new_tokens=16, **MODES[m]).token_ids for i, m in set(jobs)}
        random.Random(3).shuffle(jobs)
        results, lock = [], threading.Lock()

        def worker(k):
            for i, m in jobs[k::8]:
                g = llm.generate(prompts[i], max_new_tokens=16, **MODES[m])
                with lock:
                    results.append((i, m, g.finish_reason, g.token_ids))

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        rng = random.Random(11)
        while any(t.is_alive() for t in threads):
            threading.Event().wait(rng.uniform(0.0, 0.05))
            if rng.random() < 0.3:
                llm.cancel()
        for t in threads:
            t.join(60)
        assert len(results) == len(jobs)
        done = [r for r in results if r[2] != "cancelled"]
        assert done, "every generation was cancelled: the test proves nothing"
        for i, m, _, ids in done:
            assert ids == serial[(i, m)], f"prompt {i} ({m}) differs from the serial run"


@pytest.fixture(scope="module")
def smollm2_q4(smollm2_source, tmp_path_factory):
    from edgeai.convert.pipeline import convert

    folder = tmp_path_factory.mktemp("det-smollm2") / "q4"
    convert(smollm2_source, folder, quant="q4", progress=False)
    return folder


@pytest.mark.smollm2
@pytest.mark.slow
def test_smollm2_q4_ids_never_depend_on_cache_history_or_process(smollm2_q4, tmp_path, logit_trace):
    check_deterministic(smollm2_q4, tmp_path, logit_trace, n_new=32, ctx=1024, chunk=128, repeat=10)
