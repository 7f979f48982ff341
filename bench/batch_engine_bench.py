"""Continuous batching on a real model, without HTTP: what batch composition does to greedy tokens, what a
decode step of N rows costs, and how a joining prompt's prefill is best scheduled.

    python bench/batch_engine_bench.py --model /work/models/q05-q4 [--rows 1 2 4 8] [--tokens 48] [--reps 2]

1. tokens: N chat prompts decoded greedily together (one batch, rows at different positions) against each
   decoded alone (batch 1, the same engine): identical sequences, and where the first difference falls.
   With int8 activations (q4/q8 folders) a different batch may change rounding: this is where it shows.
2. scaling: N concurrent greedy sequences of --tokens each (eos banned); aggregate tokens/s of the decode
   phase against N = 1 rows, with and without batch_invariant (a lone row decodes as a two-row step),
   levels interleaved over --reps rounds, medians.
3. join: 3 rows decoding, then a --join-tokens prompt arrives: its time to first token and the longest gap
   the running rows see while it prefills, with interleave_prefill on (a decode step between two chunks)
   and off (the whole prompt first).
Speed figures move with the box's load: compare them within one run only.
"""
from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

from edgeai import LLM, _core
from edgeai.sampling import SamplingParams

QUESTIONS = ["What is the capital of France?", "Name three primary colours.", "What does a compiler do?",
             "Why is the sky blue?", "Give me a tip for learning Python.", "What is a prime number?",
             "How many days are in a leap year?", "What is photosynthesis?", "Explain what an API is.",
             "What is the boiling point of water?", "Who wrote Hamlet?", "What is a list in Python?"]


def batch_engine(llm, rows, interleave=True, invariant=False):
    g = llm.manifest["graph"]
    fwd = llm._forward.sharing()
    be = _core.BatchEngine(fwd.rows, g["num_layers"], g["num_kv_heads"], g["head_dim"], llm.context_length,
                           g["vocab_size"], rows, 128, interleave, invariant)
    fwd.attach(be)
    return be


def run_together(be, prompts, max_new, eos, on_token=None, ids=None):
    out, times = {}, {}
    ids = ids or list(range(len(prompts)))

    def one(i):
        t0 = time.perf_counter()
        out[i] = be.generate(1000 + ids[i], prompts[i], SamplingParams(temperature=0.0).make_chain(), max_new, eos,
                             on_token(i) if on_token else None)
        times[i] = time.perf_counter() - t0

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [out[i] for i in range(len(prompts))], [times[i] for i in range(len(prompts))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--join-tokens", type=int, default=512)
    ap.add_argument("--skip", nargs="*", default=[], choices=["tokens", "scaling", "join"])
    ap.add_argument("--json")
    args = ap.parse_args()
    llm = LLM(args.model, threads=args.threads)
    tok = llm.tokenizer
    eos = list(llm.eos_token_ids)
    n = max(args.rows)
    prompts = [tok.encode(tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True))
               for q in QUESTIONS[:n]]
    report = {"model": args.model}
    be = batch_engine(llm, n)

    if "tokens" not in args.skip:
        report["tokens"] = {}
        for invariant in (False, True):
            bt = batch_engine(llm, n, invariant=invariant)
            alone = [run_together(bt, [p], args.tokens, eos)[0][0]["sequences"][0] for p in prompts]
            together = [r["sequences"][0] for r in run_together(bt, prompts, args.tokens, eos)[0]]
            first_diff = []
            for a, b in zip(alone, together):
                k = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), None)
                first_diff.append(k if k is not None else (None if len(a) == len(b) else min(len(a), len(b))))
            report["tokens"]["batch_invariant" if invariant else "default"] = {
                "sequences": n, "identical": sum(d is None for d in first_diff),
                "first_difference_at": first_diff, "lengths": [len(a) for a in alone]}
        print(json.dumps(report["tokens"]), flush=True)

    if "scaling" not in args.skip:
        ban = SamplingParams(temperature=0.0, logit_bias={t: -100.0 for t in eos})
        engines = {"default": be, "batch_invariant": batch_engine(llm, n, invariant=True)}
        per = {(name, r): [] for r in args.rows for name in engines}
        for _ in range(args.reps):
            for r, name in [(r, name) for r in args.rows for name in engines]:
                res = {}

                def one(i, r=r, res=res, e=engines[name]):
                    res[i] = e.generate(2000 + i, prompts[i], ban.make_chain(), args.tokens, [], None)
                threads = [threading.Thread(target=one, args=(i,)) for i in range(r)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                # decode phase: tokens after the first over the span from the last first token to the last end
                dec = sum(len(x["sequences"][0]) - 1 for x in res.values())
                span = max(x["ttft_s"] + x["decode_s"] for x in res.values()) - max(x["ttft_s"] for x in res.values())
                per[name, r].append(dec / span if span > 0 else 0.0)
        base = statistics.median(per["default", args.rows[0]])
        report["scaling"] = {f"{name} {r} rows": {"tok_per_s": round(statistics.median(v), 2),
                                                  "x_default_one_row": round(statistics.median(v) / base, 2)}
                             for (name, r), v in per.items()}
        print(json.dumps(report["scaling"]), flush=True)

    if "join" not in args.skip:
        long_prompt = tok.encode("Summarise this text. " + " ".join(QUESTIONS * 40))[:args.join_tokens]
        report["join"] = {}
        for interleave in (True, False):
            bj = batch_engine(llm, 4, interleave)
            stamps = {i: [] for i in range(3)}
            ban = SamplingParams(temperature=0.0, logit_bias={t: -100.0 for t in eos})
            joiner = {}

            def runner(i, bj=bj, stamps=stamps):
                bj.generate(3000 + i, prompts[i], ban.make_chain(), 400, [],
                            lambda t: stamps[i].append(time.perf_counter()) or len(stamps[i]) < 400)

            def join(bj=bj, joiner=joiner):
                t0 = time.perf_counter()
                r = bj.generate(3999, long_prompt, ban.make_chain(), 2, [], None)
                joiner.update(ttft=r["ttft_s"], start=t0, end=time.perf_counter())

            threads = [threading.Thread(target=runner, args=(i,)) for i in range(3)]
            for t in threads:
                t.start()
            while min(len(s) for s in stamps.values()) < 10:
                time.sleep(0.01)
            jt = threading.Thread(target=join)
            jt.start()
            jt.join()
            time.sleep(0.3)
            bj.cancel_all()
            for t in threads:
                t.join()
            gaps = [b - a for s in stamps.values() for a, b in zip(s, s[1:])
                    if joiner["start"] <= b <= joiner["end"] + 0.05]
            report["join"]["interleave" if interleave else "whole_prompt"] = {
                "joiner_ttft_s": round(joiner["ttft"], 3), "running_rows_max_gap_s": round(max(gaps), 3)
                if gaps else None, "running_rows_median_gap_s": round(statistics.median(gaps), 3) if gaps else None}
        print(json.dumps(report["join"]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
