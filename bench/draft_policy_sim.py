"""How much could another draft-token policy or source gain? A noise-free estimate, checked against the clock.

Timed A/B runs of draft policies are hard to read on a shared 2-core box: the box drifts 10-15% within minutes,
and with int8 activations a multi-token step can flip a near-tie, so two policies end up decoding different
texts. This bench separates the two:

1. Decode the prompts of bench/prompt_lookup_bench.py plainly (greedy, one token per step): the reference
   texts. Decode them again with the engine's drafts (prompt_lookup=8) and fit what a step costs from the
   engine's own timings: forward time = steps * a + draft tokens fed * b (least squares over all prompts).
2. Replay each policy on the reference texts (a guess counts when it equals the reference's next token, as in
   greedy decoding) and price the replay with a and b: estimated speed-up = (tokens - 1) / (steps + fed * b/a).
   The replay of the engine's own policy is checked against its measured speed-up.

Policies: the engine's (`csrc/engine.cpp` + `csrc/draft.h`: guesses grow by 2 while they land, shrink to what
landed on a miss, at most 8, n-grams of 5 down to 2), variants of its knobs, and a bigram table of the
model's own answers to the other prompts (leave-one-out) for when the text so far has no match: a draft
source beyond the prompt.

    python bench/draft_policy_sim.py [--model smollm2-135m-q4] [--json out.json]
"""
import argparse
import collections
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prompt_lookup_bench import build_prompts, generation_options  # noqa: E402


def lookup(history, k, max_ngram=5, min_ngram=2):
    """Python twin of csrc/draft.cpp prompt_lookup_draft."""
    n = len(history)
    for g in range(min(max_ngram, n - 1), max(1, min_ngram) - 1, -1):
        tail = history[n - g:]
        for start in range(n - g - 1, -1, -1):
            if history[start:start + g] == tail:
                return history[start + g:start + g + min(k, n - start - g)]
    return []


def bigram_table(texts):
    """(a, b) -> the most frequent next token, with its count and the pair's count."""
    counts = collections.defaultdict(collections.Counter)
    for t in texts:
        for i in range(2, len(t)):
            counts[(t[i - 2], t[i - 1])][t[i]] += 1
    return {k: (*c.most_common(1)[0], sum(c.values())) for k, c in counts.items()}


def replay(prompt, reference, cap=8, grow=2, min_ngram=2, table=None):
    """(steps, draft tokens fed) to decode `reference` after `prompt` under a policy (engine: the defaults)."""
    hist, i, steps, fed, length = list(prompt) + reference[:1], 0, 0, 0, 1
    while i < len(reference) - 1:
        drafts = lookup(hist, min(cap, length), min_ngram=min_ngram)
        if not drafts and table is not None:  # chain the table's confident guesses, at most 2
            while len(drafts) < 2:
                e = table.get(tuple((hist + drafts)[-2:]))
                if not e or e[1] < 2 or e[1] < 0.6 * e[2]:
                    break
                drafts.append(e[0])
        drafts = drafts[:max(0, len(reference) - i - 2)]  # as the engine: never guess past the last token
        a = 0
        while a < len(drafts) and drafts[a] == reference[i + 1 + a]:
            a += 1
        if drafts:
            length = min(cap, length + grow) if a == len(drafts) else a + 1
        steps, fed = steps + 1, fed + len(drafts)
        hist += reference[i + 1:i + 2 + a]
        i += a + 1
    return steps, fed


def geomean(v):
    return float(np.exp(np.mean(np.log(v))))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-q4")
    ap.add_argument("--text", default="/usr/share/common-licenses/GPL-3")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    import edgeai

    llm = edgeai.LLM(args.model, threads=args.threads, prompt_cache=False)
    prompts = build_prompts(llm, args.text, windows=12)
    llm.generate(prompts[0][2], max_new_tokens=8)  # warm-up
    runs = []
    for kind, name, p in prompts:
        plain = llm.generate(list(p), prompt_lookup=0, **generation_options(llm, kind))
        drafted = llm.generate(list(p), prompt_lookup=8, **generation_options(llm, kind))
        runs.append({"kind": kind, "prompt": list(p), "reference": list(plain.token_ids),
                     "timings": [plain.timings, drafted.timings], "drafted_tokens": len(drafted.token_ids)})
    # Step cost from the engine's timings: forward_s = a * steps + b * fed.
    rows = [(t["decode_steps"], t["draft_proposed"], t["forward_s"]) for r in runs for t in r["timings"]]
    (a, b), *_ = np.linalg.lstsq(np.array([[s, f] for s, f, _ in rows], float), np.array([x for *_, x in rows]),
                                 rcond=None)
    c = b / a
    print(f"a step costs {1e3 * a:.2f} ms, each draft token fed in it {1e3 * b:.2f} ms more (x{c:.3f} of a step)")

    def estimate(r, **policy):
        steps, fed = replay(r["prompt"], r["reference"], **policy)
        return (len(r["reference"]) - 1) / (steps + c * fed)

    measured = collections.defaultdict(list)
    for r in runs:  # the engine's real speed-up (drafted texts may differ from the reference: see the docstring)
        plain, drafted = r["timings"]
        measured[r["kind"]].append(drafted["decode_tokens_per_s"] / plain["decode_tokens_per_s"])
    policies = {"engine (cap 8, grow 2)": {}, "cap 4": {"cap": 4}, "cap 16": {"cap": 16}, "grow 1": {"grow": 1},
                "grow 4": {"grow": 4}, "n-grams down to 3": {"min_ngram": 3}, "n-grams down to 1": {"min_ngram": 1}}
    kinds = sorted(measured)
    out = {"step_ms": 1e3 * a, "draft_token_ms": 1e3 * b,
           "measured_engine": {k: geomean(v) for k, v in measured.items()}, "estimates": {}}
    print(f"{'policy':34s}" + "".join(f"{k:>14s}" for k in kinds))
    print(f"{'engine, measured (timed)':34s}" + "".join(f"{out['measured_engine'][k]:14.3f}" for k in kinds))
    for label, policy in policies.items():
        est = collections.defaultdict(list)
        for r in runs:
            est[r["kind"]].append(estimate(r, **policy))
        out["estimates"][label] = {k: geomean(v) for k, v in est.items()}
        print(f"{label:34s}" + "".join(f"{out['estimates'][label][k]:14.3f}" for k in kinds))
    est = collections.defaultdict(list)
    answers = [r for r in runs if r["kind"] != "continuation"]
    for r in runs:
        table = bigram_table([o["reference"] for o in answers if o is not r])
        est[r["kind"]].append(estimate(r, table=table))
    label = "engine + bigram table of answers"
    out["estimates"][label] = {k: geomean(v) for k, v in est.items()}
    print(f"{label:34s}" + "".join(f"{out['estimates'][label][k]:14.3f}" for k in kinds))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
