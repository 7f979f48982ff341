"""Embedding throughput and agreement: the same real chunks through two (or more) variants of an embedding model,
interleaved in rounds (order rotated each round), medians.

  python bench/embed_throughput.py --models minilm-l6-fp32 minilm-l6-q8 [--chunks 96] [--rounds 3]

Chunks come from the pydoc corpus (`edgeai ask`'s documents), cut by the same Chunker `edgeai index` uses, and
are embedded without the cache. Reports texts/s and tokens/s per variant, the ratio to the first, and the
cosine of each variant's vectors to the first's (min / mean): int8 is only worth having where that holds.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def sample_chunks(n: int, embedder) -> list:
    from edgeai.retrieval.chunker import Chunker
    from edgeai.retrieval.loaders import load_paths
    from edgeai.retrieval.pydoc_corpus import build_corpus

    files = sorted(build_corpus().glob("*.md"))
    step = max(1, len(files) // n)
    chunker = Chunker.for_embedder(embedder)
    out = []
    for doc in load_paths(files[::step]):
        cs = chunker.split(doc)
        out += [c.embed_text for c in cs[: max(1, len(cs) // 8)]]  # a few from each file, long and short
        if len(out) >= n:
            break
    return out[:n]


def main(argv=None) -> int:
    from edgeai.retrieval.embedder import Embedder

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", required=True, help="embedding model names or folders")
    ap.add_argument("--chunks", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    embs = [Embedder(m) for m in args.models]
    texts = sample_chunks(args.chunks, embs[0])
    n_tok = sum(embs[0].count_tokens(texts))
    times = {m: [] for m in args.models}
    vecs = {}
    for r in range(args.rounds):
        order = list(range(len(embs)))
        order = order[r % len(order):] + order[:r % len(order)]
        for i in order:
            t = time.perf_counter()
            vecs[args.models[i]] = embs[i].encode(texts, batch_size=args.batch, use_cache=False, show_progress=False)
            times[args.models[i]].append(time.perf_counter() - t)
    base = args.models[0]
    rows = []
    for m in args.models:
        med = statistics.median(times[m])
        cos = (vecs[m] * vecs[base]).sum(1)
        rows.append({"model": m, "quant": embs[args.models.index(m)].quant, "texts": len(texts), "tokens": n_tok,
                     "seconds_median": round(med, 3), "texts_per_s": round(len(texts) / med, 1),
                     "tokens_per_s": round(n_tok / med),
                     "speed_vs_first": round(statistics.median(times[base]) / med, 3),
                     "cosine_to_first_min": round(float(cos.min()), 5),
                     "cosine_to_first_mean": round(float(cos.mean()), 5)})
    print(f"{len(texts)} chunks, {n_tok} tokens, {args.rounds} interleaved rounds, batch {args.batch}")
    print(f"{'model':28} {'texts/s':>8} {'tokens/s':>9} {'x first':>8} {'cos min':>8} {'cos mean':>9}")
    for r in rows:
        print(f"{r['model'][:28]:28} {r['texts_per_s']:8.1f} {r['tokens_per_s']:9d} {r['speed_vs_first']:8.2f} "
              f"{r['cosine_to_first_min']:8.4f} {r['cosine_to_first_mean']:9.4f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
