"""Speculative decoding with a draft model: decode speed against the target alone, acceptance, step costs.

Target and draft load once; every prompt runs in each configuration, in alternating order, --reps times
(interleaved, so a busy box slows all configurations alike); figures are medians over prompts.
  alone   the target, one token per step (prompt_lookup=0)
  draft   the target with the draft model and prompt lookup (csrc/speculative.h), up to --gamma per step
  lookup  the target with prompt lookup only (edgeai's default without a draft; loads a second target)
Prompts: 6 chat prompts and 6 `ask`-style RAG prompts (edgeai's own RAG prompt builder, sources taken from the
standard library's pydoc text, so no index or embedder is needed), greedy. Reported: decode tokens/s (tokens
after the first / decode time; the draft's prefill of the prompt happens after the first token and counts
as decode time), the speed-up per prompt, draft acceptance, the cost of each step (draft step ms, target
verify ms by tokens fed) and whether greedy tokens are identical (exact on fp32 folders; int8 activations of
q4 graphs round a multi-token step differently, so a near-tie can fall the other way).

--peer llamacpp runs llama-cpp-python (its Python, --peer-python) on the GGUF files: the target alone, with
its prompt-lookup draft (LlamaPromptLookupDecoding) and with the 0.5B model as draft. llama-cpp-python has no
draft-model class of its own; its `draft_model` hook takes any LlamaDraftModel, so the draft here is a second
Llama that keeps its own KV cache (prefix reuse, rollback by n_tokens) and proposes greedy tokens with llama.cpp's
own draft defaults (up to 16, stopping below probability 0.75). llama.cpp's native speculative decoding
(llama-speculative, llama-server --model-draft) is C++ and not exposed by the Python package.

    python bench/speculative_bench.py                      # 1.5B q4 target, 0.5B q4 draft, 12 prompts
    python bench/speculative_bench.py --prompts 4 --max-new-tokens 32 --target /work/models/q15-fp32-all \\
        --draft /work/models/q05-fp32                      # greedy identity on fp32 folders
    python bench/speculative_bench.py --peer llamacpp      # also llama.cpp on the GGUF pair
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

CHAT = [
    "Write a Python function that checks whether a string is a palindrome.",
    "Explain the difference between a list and a tuple in Python, with a short example.",
    "Write a function that returns the n-th Fibonacci number iteratively, with a docstring.",
    "How do I read a CSV file and sum one of its columns in Python?",
    "Write a Python class for a stack with push, pop and peek methods.",
    "What does the `with` statement do in Python? Show an example with a file.",
]
RAG = [  # (question, objects whose pydoc text are the sources)
    ("How do I read rows from a CSV file?", ["csv.reader", "csv.DictReader"]),
    ("How do I get the n smallest items of a list?", ["heapq.nsmallest", "heapq.heappush"]),
    ("How do I serialize a dict to a JSON string with sorted keys?", ["json.dumps"]),
    ("How can I run a shell command and capture its output?", ["subprocess.run"]),
    ("How do I count how often each word occurs?", ["collections.Counter"]),
    ("How do I join path components portably?", ["os.path.join", "pathlib.PurePath.joinpath"]),
]
PEER_PYTHON = "/work/peers/venv/bin/python"
GGUF = {"target": "/work/dl/gguf/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        "draft": "/work/dl/gguf/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"}


def source_text(path: str, chars: int = 700) -> str:
    import pydoc

    obj = pydoc.locate(path)
    return pydoc.render_doc(obj, renderer=pydoc.plaintext)[:chars]


def prompt_messages(llm, n: int, max_new: int):
    from edgeai.retrieval.rag import RAG as Rag

    out = []
    for i in range(n):
        if i % 2 == 0 and i // 2 < len(CHAT):
            out.append(("chat", [{"role": "user", "content": CHAT[i // 2]}]))
        else:
            q, objs = RAG[(i // 2) % len(RAG)]
            retrieved = [({"path": f"{o.split('.')[0]}.txt", "section": [o], "text": source_text(o)}, 0.6)
                         for o in objs]
            messages, _ = Rag.build_messages(SimpleNamespace(llm=llm, min_score=0.0, source_tokens=None), q, retrieved, max_new)
            out.append(("ask", messages))
    return out


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def run_ours(a) -> dict:
    from edgeai.llm import LLM
    from edgeai.retrieval.rag import chat_token_ids, plain_copy

    t0 = time.perf_counter()
    spec = LLM(a.target, threads=a.threads, context_length=a.context, draft=a.draft)
    models = {"alone": spec, "draft": spec}  # alone: the same LLM with drafting off (prompt_lookup=0)
    if "lookup" in a.configs:
        models["lookup"] = LLM(a.target, threads=a.threads, context_length=a.context)
    print(f"loaded in {time.perf_counter() - t0:.1f} s; draft cost {spec.draft_cost:.3f} of a target step "
          f"(weight bytes)", file=sys.stderr)
    prompts = prompt_messages(spec, a.prompts, a.max_new_tokens)
    tok = spec.tokenizer
    rows = []
    for i, (kind, messages) in enumerate(prompts):
        ids = chat_token_ids(tok, messages, plain_copy(tok))
        for rep in range(a.reps):
            order = list(a.configs) if (i + rep) % 2 == 0 else list(reversed(a.configs))
            for cfg in order:
                k = 0 if cfg == "alone" else a.gamma
                g = models[cfg].generate(ids, max_new_tokens=a.max_new_tokens, prompt_lookup=k, truncate="left")
                t = g.timings
                produced = len(g.token_ids) - 1
                s = t.get("speculative") or {}
                own = t["decode_s"] - s.get("draft_prefill_s", 0.0)  # decode without the draft's prompt prefill
                rows.append(dict(prompt=i, kind=kind, rep=rep, config=cfg, prompt_tokens=len(ids), tokens=g.token_ids,
                                 tps=produced / t["decode_s"] if t["decode_s"] > 0 else None,
                                 tps_excl_draft_prefill=produced / own if own > 0 else None,
                                 total_s=t["ttft_s"] + t["decode_s"],
                                 ttft_s=t["ttft_s"], decode_s=t["decode_s"], steps=t["decode_steps"],
                                 forward_s=t["forward_s"], speculative=t.get("speculative")))
                print(f"prompt {i:2d} {kind:4s} rep {rep} {cfg:6s} {len(ids):4d} tok in, {produced + 1:3d} out, "
                      f"{rows[-1]['tps'] or 0:6.2f} tok/s, {t['decode_steps']:3d} steps"
                      + (f", draft {s['model_accepted']}/{s['model_proposed']}, lookup "
                         f"{s['lookup_accepted']}/{s['lookup_proposed']}" if s else ""), file=sys.stderr, flush=True)
    return summarize(rows, a), prompts


def summarize(rows, a) -> dict:
    by = {}
    for r in rows:
        by.setdefault((r["prompt"], r["config"]), []).append(r)
    out = {"configs": {}, "per_prompt": []}
    for cfg in a.configs:
        tps = [med([r["tps"] for r in by[(p, cfg)]]) for p in range(a.prompts)]
        out["configs"][cfg] = {"decode_tps_median": med(tps)}
    for p in range(a.prompts):
        out["per_prompt"].append({cfg: {k: med([r[k] for r in by[(p, cfg)]]) for k in
                                        ("tps", "tps_excl_draft_prefill", "total_s", "ttft_s")}
                                  for cfg in a.configs})
        out["per_prompt"][-1]["kind"] = by[(p, a.configs[0])][0]["kind"]
    base = "alone"
    for cfg in a.configs:
        if cfg == base:
            continue
        ratios = [med([r["tps"] for r in by[(p, cfg)]]) / med([r["tps"] for r in by[(p, base)]])
                  for p in range(a.prompts)]
        out["configs"][cfg]["speedup_median"] = med(ratios)
        excl = [med([r["tps_excl_draft_prefill"] for r in by[(p, cfg)]]) / med([r["tps"] for r in by[(p, base)]])
                for p in range(a.prompts)]
        out["configs"][cfg]["speedup_excl_draft_prefill_median"] = med(excl)
        total = [med([r["total_s"] for r in by[(p, base)]]) / med([r["total_s"] for r in by[(p, cfg)]])
                 for p in range(a.prompts)]
        out["configs"][cfg]["answer_time_speedup_median"] = med(total)
        out["configs"][cfg]["speedup_chat"] = med(ratios[0::2])
        out["configs"][cfg]["speedup_ask"] = med(ratios[1::2])
        same = sum(by[(p, cfg)][0]["tokens"] == by[(p, base)][0]["tokens"] for p in range(a.prompts))
        out["configs"][cfg]["greedy_identical"] = f"{same}/{a.prompts}"
    spec_rows = [r for r in rows if r["config"] == "draft" and r["speculative"]]
    if spec_rows:
        tot = lambda key: sum(r["speculative"][key] for r in spec_rows)  # noqa: E731
        width_steps, width_s = {}, {}
        for r in spec_rows:
            for w, (n, s) in enumerate(zip(r["speculative"]["steps_by_width"], r["speculative"]["seconds_by_width"])):
                width_steps[w] = width_steps.get(w, 0) + n
                width_s[w] = width_s.get(w, 0.0) + s
        one = [r["forward_s"] / r["steps"] for r in rows if r["config"] == "alone" and r["steps"]]
        out["draft"] = {
            "model_acceptance": tot("model_accepted") / max(1, tot("model_proposed")),
            "model_acceptance_median": med([r["speculative"]["model_acceptance"] for r in spec_rows]),
            "lookup_acceptance": tot("lookup_accepted") / max(1, tot("lookup_proposed")),
            "model_rounds": tot("model_rounds"), "lookup_rounds": tot("lookup_rounds"),
            "tokens_per_target_step": sum(len(r["tokens"]) - 1 for r in spec_rows) / max(1, tot("rounds")),
            "draft_step_ms": 1000 * tot("draft_s") / max(1, tot("draft_steps")),
            "draft_prefill_s_median": med([r["speculative"]["draft_prefill_s"] for r in spec_rows]),
            "target_one_token_step_ms": 1000 * med(one) if one else None,
            "target_verify_ms_by_width": {w: round(1000 * width_s[w] / width_steps[w], 1)
                                          for w in sorted(width_steps) if width_steps[w]},
            "draft_share_of_decode": tot("draft_s") / max(1e-9, tot("draft_s") + tot("target_s")),
        }
    return out


# ---------------------------------------------------------------- a draft's acceptance at fixed gamma

def draft_acceptance(target, drafts: dict, prompts: list, max_new_tokens: int = 48, gamma: int = 4,
                     threads=None, context=None) -> dict:
    """How often the target accepts each draft's proposals: greedy, every round `gamma` proposals from the draft
    model (fixed_draft: no prompt lookup, no adaptation, so weak and strong drafts are measured the same way;
    the engine's policy would switch a weak draft off after a few rounds). `drafts`: {name: model folder};
    `prompts`: [(kind, token ids)]. Per draft: acceptance (accepted / proposed), tokens per target step
    (generated tokens after the first / target steps), both overall and by prompt kind, and the prompts whose
    greedy tokens differ from the target alone's (none on fp32 by construction; on q4 a multi-token step
    rounds int8 activations differently from a one-token step, so a near-tie can fall the other way)."""
    from edgeai.llm import LLM

    with LLM(target, threads=threads, context_length=context, prompt_lookup=0) as alone:
        reference = [alone.generate(ids, max_new_tokens=max_new_tokens).token_ids for _, ids in prompts]
    out = {}
    for name, folder in drafts.items():
        with LLM(target, threads=threads, context_length=context, draft=folder) as spec:
            rows = []
            for (kind, ids), want in zip(prompts, reference):
                g = spec.generate(ids, max_new_tokens=max_new_tokens, prompt_lookup=gamma, fixed_draft=True)
                s = g.timings["speculative"]
                diverge = next((i for i, (a, b) in enumerate(zip(g.token_ids, want)) if a != b),
                               None if len(g.token_ids) == len(want) else min(len(g.token_ids), len(want)))
                rows.append(dict(kind=kind, proposed=s["model_proposed"], accepted=s["model_accepted"],
                                 steps=s["target_steps"], tokens=len(g.token_ids) - 1, diverges_at=diverge))
        print(f"draft {name}: " + ", ".join(f"{r['accepted']}/{r['proposed']}" for r in rows), file=sys.stderr,
              flush=True)

        def totals(rs):
            proposed, accepted = sum(r["proposed"] for r in rs), sum(r["accepted"] for r in rs)
            return {"acceptance": accepted / proposed if proposed else None, "proposed": proposed,
                    "accepted": accepted, "steps": sum(r["steps"] for r in rs),
                    "tokens_per_target_step": sum(r["tokens"] for r in rs) / max(1, sum(r["steps"] for r in rs))}

        out[name] = {**totals(rows), "by_kind": {k: totals([r for r in rows if r["kind"] == k])
                                                 for k in dict.fromkeys(r["kind"] for r in rows)},
                     "greedy_mismatches": sum(r["diverges_at"] is not None for r in rows),
                     "diverges_at": [r["diverges_at"] for r in rows], "prompts": len(rows),
                     "gamma": gamma, "max_new_tokens": max_new_tokens}
    return out


# ---------------------------------------------------------------- llama.cpp peer (runs in the peer's Python)

def peer_worker(spec: dict) -> dict:
    import numpy as np
    from llama_cpp import Llama
    from llama_cpp.llama_speculative import LlamaDraftModel, LlamaPromptLookupDecoding

    class ModelDraft(LlamaDraftModel):
        """A second Llama proposing up to n greedy tokens from its own KV cache (prefix kept, the rest rolled
        back), stopping at the first whose probability is below p_min: llama.cpp's own speculative defaults
        (common/speculative.cpp: n_max 16, p_min 0.75)."""

        def __init__(self, llama, n=16, p_min=0.75):
            self.llama, self.n, self.p_min, self.steps, self.seconds = llama, n, p_min, 0, 0.0

        def __call__(self, input_ids, **kw):
            t0 = time.perf_counter()
            d = self.llama
            ids = [int(x) for x in input_ids]
            have = [int(x) for x in d.input_ids[:d.n_tokens]]
            common = 0
            while common < min(len(have), len(ids) - 1) and have[common] == ids[common]:
                common += 1
            d.n_tokens = common
            d.eval(ids[common:])
            out = []
            for i in range(self.n):
                logits = np.ctypeslib.as_array(d._ctx.get_logits(), shape=(d.n_vocab(),)).astype(np.float64)
                best = int(np.argmax(logits))
                if 1.0 / np.exp(logits - logits[best]).sum() < self.p_min:
                    break
                out.append(best)
                if i + 1 < self.n:
                    d.eval(out[-1:])
                self.steps += 1
            self.seconds += time.perf_counter() - t0
            return np.array(out, dtype=np.intc)

    kw = dict(n_ctx=spec["context"], n_threads=spec["threads"], verbose=False, seed=0)
    results = []
    plain = Llama(spec["target"], **kw)
    drafts = {"lookup": LlamaPromptLookupDecoding(num_pred_tokens=spec["gamma"])}
    llamas = {"alone": plain}
    if spec["draft"]:
        drafts["draft"] = ModelDraft(Llama(spec["draft"], **kw))
    checker = Llama(spec["target"], draft_model=drafts["lookup"], **kw)  # one target for both draft kinds
    for cfg in drafts:
        llamas[cfg] = checker
    for i, messages in enumerate(spec["prompts"]):
        for rep in range(spec["reps"]):
            order = list(llamas) if (i + rep) % 2 == 0 else list(reversed(list(llamas)))
            for cfg in order:
                llm = llamas[cfg]
                if cfg in drafts:
                    llm.draft_model = drafts[cfg]
                llm.reset()
                times, toks = [], []
                t0 = time.perf_counter()
                for chunk in llm.create_chat_completion(messages, max_tokens=spec["max_new_tokens"], temperature=0.0,
                                                        top_k=1, stream=True):
                    delta = chunk["choices"][0].get("delta", {}).get("content")
                    if delta:
                        times.append(time.perf_counter())
                        toks.append(delta)
                n = len(toks)
                tps = (n - 1) / (times[-1] - times[0]) if n > 1 and times[-1] > times[0] else None
                results.append(dict(prompt=i, rep=rep, config=cfg, tps=tps, pieces=n,
                                    ttft_s=times[0] - t0 if times else None, text="".join(toks)))
                print(f"llama.cpp prompt {i:2d} rep {rep} {cfg:6s} {n:3d} pieces, {tps or 0:6.2f} tok/s",
                      file=sys.stderr, flush=True)
    return {"rows": results}


def run_peer(a, prompts) -> dict:
    spec = dict(target=GGUF["target"], draft=GGUF["draft"], context=a.context, threads=a.threads or os.cpu_count(),
                gamma=a.gamma, reps=a.reps, max_new_tokens=a.max_new_tokens, prompts=[m for _, m in prompts])
    proc = subprocess.run([a.peer_python, __file__, "--peer-worker"], input=json.dumps(spec), text=True,
                          stdout=subprocess.PIPE)
    if proc.returncode != 0:
        return {"error": f"peer exited with {proc.returncode}"}
    rows = json.loads(proc.stdout)["rows"]
    configs = sorted({r["config"] for r in rows})
    out = {}
    for cfg in configs:
        tps = [med([r["tps"] for r in rows if r["prompt"] == p and r["config"] == cfg]) for p in range(len(prompts))]
        base = [med([r["tps"] for r in rows if r["prompt"] == p and r["config"] == "alone"]) for p in range(len(prompts))]
        out[cfg] = {"decode_tps_median": med(tps),
                    "speedup_median": med([x / b for x, b in zip(tps, base) if x and b])}
    return out


def main():
    if "--peer-worker" in sys.argv:
        print(json.dumps(peer_worker(json.loads(sys.stdin.read()))))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="/work/models/q15-q4b")
    ap.add_argument("--draft", default="/work/models/q05-q4")
    ap.add_argument("--prompts", type=int, default=12, help="alternately chat and ask-style prompts")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--gamma", type=int, default=8, help="most proposals per step (prompt_lookup)")
    ap.add_argument("--configs", default="alone,draft", help="comma list of alone, draft, lookup")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--peer", choices=["llamacpp"], default=None)
    ap.add_argument("--peer-python", default=PEER_PYTHON)
    ap.add_argument("--out", type=Path, default=None, help="write the summary as JSON here")
    a = ap.parse_args()
    a.configs = [c for c in a.configs.split(",") if c]
    if "alone" not in a.configs:
        a.configs.insert(0, "alone")
    result = {"args": {k: str(v) for k, v in vars(a).items()}, "load_average": os.getloadavg()}
    result["edgeai"], prompts = run_ours(a)
    if a.peer == "llamacpp":
        result["llamacpp"] = run_peer(a, prompts)
    result["load_average_end"] = os.getloadavg()
    text = json.dumps(result, indent=2)
    print(text)
    if a.out:
        a.out.write_text(text)


if __name__ == "__main__":
    main()
