"""Prompt (prefix) cache: time to first token of a request that shares a long prefix with an earlier one.

Two requests share a ~400-token prefix (a licence text as "retrieved context") and differ in the question.
The first runs on an empty cache; the second reuses the prefix's KV. Then a follow-up turn: the second prompt,
its 24-token answer and a new question, which reuses the second prompt's positions (not the answer's: decode
steps compute positions differently from a prefill, csrc/prompt_cache.h). The same requests also run with the
cache switched off, in the same process, as the baseline. Medians over --reps rounds.

    python bench/prompt_cache_bench.py [--model smollm2-135m] [--prefix 400] [--reps 5]
"""
import argparse
import json
import statistics

import edgeai

QUESTIONS = ["Summarise the text above in one sentence.", "Who may distribute copies of this work?"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prefix", type=int, default=400, help="shared prefix length in tokens")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json")
    args = ap.parse_args()

    cached = edgeai.LLM(args.model, threads=args.threads, context_length=1024)
    plain = edgeai.LLM(args.model, threads=args.threads, context_length=1024, prompt_cache=False)
    tok = cached.tokenizer
    prefix = tok.encode(open("/usr/share/common-licenses/Apache-2.0", encoding="utf-8").read())[:args.prefix]
    prompts = [prefix + tok.encode("\n\n" + q) for q in QUESTIONS]
    first, second, nocache, follow, follow_nocache, reused = [], [], [], [], [], {}
    for _ in range(args.reps):
        cached.clear_prompt_cache()
        first.append(cached.generate(prompts[0], max_new_tokens=1).timings["ttft_s"])
        g = cached.generate(prompts[1], max_new_tokens=24, prompt_lookup=0)
        reused["second"] = g.timings["reused_prompt_tokens"]
        second.append(g.timings["ttft_s"])
        nocache.append(plain.generate(prompts[1], max_new_tokens=1).timings["ttft_s"])
        turn = prompts[1] + [t for t in g.token_ids if t not in cached.eos_token_ids] + tok.encode("\n\nAnd in one word?")
        g = cached.generate(turn, max_new_tokens=1)
        reused["follow_up"] = g.timings["reused_prompt_tokens"]
        follow.append(g.timings["ttft_s"])
        follow_nocache.append(plain.generate(turn, max_new_tokens=1).timings["ttft_s"])
    f, s, n, fu, fn = (statistics.median(x) for x in (first, second, nocache, follow, follow_nocache))
    res = {"prefix_tokens": len(prefix), "prompt_tokens": [len(p) for p in prompts] + [len(turn)],
           "reused_tokens": reused, "ttft_first_s": f, "ttft_second_s": s, "ttft_no_cache_s": n,
           "ratio_second_to_first": s / f, "target_ratio": 0.2, "ttft_follow_up_s": fu,
           "ttft_follow_up_no_cache_s": fn}
    print(f"shared prefix {len(prefix)} tokens: TTFT first {f * 1000:.0f} ms, second (cached prefix, "
          f"{reused['second']} tokens reused) {s * 1000:.0f} ms = {s / f:.1%} of the first (target <= 20%); "
          f"without the cache {n * 1000:.0f} ms")
    print(f"follow-up turn ({len(turn)} tokens, {reused['follow_up']} reused): TTFT {fu * 1000:.0f} ms, without the "
          f"cache {fn * 1000:.0f} ms ({fu / fn:.1%})")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)


if __name__ == "__main__":
    main()
