"""Decode speed with and without prompt-lookup draft tokens, in the same process, on two kinds of text.

  continuation  86-token windows of a real document (GPL-3), greedily continued: the model often quotes
                what it has read, the case drafts are for (RAG answers quote their context the same way).
  chat          chat-template questions with free-form answers: drafts rarely land, and the adaptive
                draft length must keep their cost near zero.
  rag           the same kind of questions about the Python docs, asked the way `edgeai ask` asks them
                (retrieved chunks in the RAG template, repetition penalty 1.1 over the last 64 tokens),
                when `edgeai ask` has built its default index.

For each prompt, `prompt_lookup=0` and each k run alternately (2 rounds, medians); continuations get 128 new
tokens with EOS suppressed, questions end with the model's answer (at most 256 tokens). Prints tokens/s, the speed-up, drafts confirmed/fed, and where the drafted tokens first differ
from plain decoding (int8-activation models round a multi-token step slightly differently: near-ties can
flip, see edgeai/llm.py). Geometric-mean speed-ups per kind at the end.

    python bench/prompt_lookup_bench.py [--model smollm2-135m-q4] [--k 4 8] [--json out.json]
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

QUESTIONS = ["How do I read a CSV file in Python?", "Write a short story about a robot.",
             "Explain recursion with an example.", "List three uses of the os module.",
             "What is the difference between a list and a tuple?", "Give me tips for a job interview."]


RAG_QUESTIONS = ["How do I read a CSV file with the csv module?", "How do I parse command line arguments?",
                 "How can I compute a SHA-256 digest of a file?", "How do I run a shell command and get its output?",
                 "How do I format a date as ISO 8601?", "How do I make a temporary directory?"]


def rag_prompts(llm) -> list:
    """Prompts exactly as `edgeai ask` builds them, from the default index (skipped when there is none)."""
    from edgeai.paths import cache_dir
    from edgeai.retrieval.embedder import DEFAULT_MODEL, Embedder
    from edgeai.retrieval.rag import RAG

    folder = cache_dir() / "index" / "default"
    if not folder.is_dir():
        print(f"no default index at {folder} (run `edgeai ask` once): rag prompts skipped", file=sys.stderr)
        return []
    rag = RAG(llm, Embedder(DEFAULT_MODEL), folder)
    out = []
    for q in RAG_QUESTIONS:
        messages, _ = rag.build_messages(q, rag.retrieve(q, k=3), 384)
        out.append(("rag", q, llm.tokenizer.encode(llm.tokenizer.apply_chat_template(messages,
                                                                                     add_generation_prompt=True))))
    return out


def build_prompts(llm, text, windows=6, questions=QUESTIONS) -> list:
    """(kind, name, token ids): `windows` 86-token windows of `text`, chat questions, and `edgeai ask` prompts."""
    tok = llm.tokenizer
    ids = tok.encode(Path(text).read_text(encoding="utf-8", errors="replace"))
    prompts = [("continuation", f"text@{o}", ids[o:o + 86]) for o in np.linspace(0, len(ids) - 200, windows).astype(int)]
    prompts += [("chat", q, tok.encode(tok.apply_chat_template([{"role": "user", "content": q}],
                                                             add_generation_prompt=True))) for q in questions]
    return prompts + rag_prompts(llm)


def generation_options(llm, kind) -> dict:
    """Continuations run 128 tokens with EOS suppressed; questions end where the model ends its answer (at most
    256 tokens): a suppressed EOS would push them into the repetitive text drafts predict best. `rag` prompts
    decode the way `edgeai ask` does."""
    if kind == "continuation":
        return dict(max_new_tokens=128, logit_bias={int(t): -1e4 for t in llm.eos_token_ids})
    answer = dict(max_new_tokens=256)
    return dict(answer, repetition_penalty=1.1, penalty_last_n=64) if kind == "rag" else answer


def first_difference(a, b) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-q4")
    ap.add_argument("--k", type=int, nargs="+", default=[4, 8], help="prompt_lookup values to compare with 0")
    ap.add_argument("--text", default="/usr/share/common-licenses/GPL-3")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    import edgeai

    llm = edgeai.LLM(args.model, threads=args.threads, prompt_cache=False)
    prompts = build_prompts(llm, args.text)
    llm.generate(prompts[0][2], max_new_tokens=8)  # warm-up
    ks = [0] + list(args.k)
    rows = []
    for kind, name, p in prompts:
        speed, gens = {k: [] for k in ks}, {}
        for rnd in range(2):
            for k in (ks if rnd == 0 else ks[::-1]):
                g = llm.generate(list(p), prompt_lookup=k, **generation_options(llm, kind))
                speed[k].append(g.timings["decode_tokens_per_s"])
                gens[k] = g
        row = {"kind": kind, "prompt": name, "plain_tok_s": float(np.median(speed[0])),
               "tokens": len(gens[0].token_ids)}
        for k in args.k:
            t = gens[k].timings
            row[f"k{k}"] = {"tok_s": float(np.median(speed[k])), "speedup": float(np.median(speed[k]) / row["plain_tok_s"]),
                            "confirmed": t["draft_accepted"], "fed": t["draft_proposed"],
                            "first_difference": first_difference(gens[0].token_ids, gens[k].token_ids)}
        rows.append(row)
        print(f"{kind:12s} {name[:34]:34s} {row['tokens']:3d} tokens, plain {row['plain_tok_s']:6.1f} tok/s  " + "  ".join(
            f"k={k}: {row[f'k{k}']['tok_s']:6.1f} x{row[f'k{k}']['speedup']:.2f} "
            f"({row[f'k{k}']['confirmed']}/{row[f'k{k}']['fed']}, same for {row[f'k{k}']['first_difference']})"
            for k in args.k), flush=True)
    summary = {}
    for kind in sorted({r["kind"] for r in rows}):
        for k in args.k:
            s = [r[f"k{k}"]["speedup"] for r in rows if r["kind"] == kind]
            summary[f"{kind} k={k}"] = round(float(np.exp(np.mean(np.log(s)))), 3)
    print("geometric-mean speed-up:", summary)
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "rows": rows, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
