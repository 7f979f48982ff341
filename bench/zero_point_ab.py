"""Exact Q4_1 mappings with MatMulNBits' default zero point against a zero point per block: what each costs.

Converts the model's GGUF source twice (`edgeai convert --zero-points default` and `--zero-points per-block`)
into --out, then times both graphs in one process the way the engine drives them (KV buffers bound once,
a 512-token prompt in chunks of 128, then single-token decode steps), round after round with the order
alternating, and prints medians and ratios, and what running second rather than first did to a decode step
(on a 2-core box it moved a step by 5-9%, one way or the other: the reason the order alternates).
Closeness to the source: `edgeai eval fidelity --reference smollm2-135m-fp32 --candidate OUT/per-block` (and
OUT/default) with the same --text.

    python bench/zero_point_ab.py [--source smollm2-135m | FILE.gguf] [--rounds 20] [--decode 48] [--out DIR]
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from profile_graph import feed_prompt, kv_session, step  # noqa: E402

from edgeai.convert.pipeline import convert  # noqa: E402
from edgeai.pull import fetch_source  # noqa: E402

MODES = ("default", "per-block")


def timed_round(graph, ids, prompt, chunk, decode):
    """(prefill seconds, median decode step seconds) for one pass over `graph` = (session, binding)."""
    sess, binding = graph
    t0 = time.perf_counter()
    feed_prompt(sess, binding, ids, prompt, chunk)
    prefill = time.perf_counter() - t0
    steps = []
    for t in range(decode):
        t0 = time.perf_counter()
        step(sess, binding, ids[:, prompt + t:prompt + t + 1], prompt + t)
        steps.append(time.perf_counter() - t0)
    return prefill, float(np.median(steps))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default="smollm2-135m", help="a known model name (its GGUF) or a .gguf file")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--chunk", type=int, default=128)
    ap.add_argument("--decode", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", help="where the two model folders go (default: a temporary folder)")
    args = ap.parse_args()

    src = Path(args.source) if Path(args.source).is_file() else fetch_source(args.source)
    out = Path(args.out or tempfile.mkdtemp(prefix="edgeai-zp-"))
    folders = {m: convert(src, out / m, quant="q4", force=True, progress=False, zero_points=m) for m in MODES}
    context = args.prompt + args.decode + 1
    graphs, keep = {}, []
    for m, folder in folders.items():
        sess, binding, buffers = kv_session(folder, args.threads, context)
        graphs[m] = (sess, binding)
        keep.append(buffers)
    ids = np.random.default_rng(0).integers(100, 1000, (1, context)).astype(np.int64)
    res = {m: ([], []) for m in MODES}
    by_slot = {m: ([], []) for m in MODES}  # decode step times when the mode ran first / second in its round
    for r in range(args.rounds):
        for slot, m in enumerate(MODES if r % 2 == 0 else MODES[::-1]):
            prefill, dec = timed_round(graphs[m], ids, args.prompt, args.chunk, args.decode)
            res[m][0].append(prefill)
            res[m][1].append(dec)
            by_slot[m][slot].append(dec)
    base_p, base_d = (float(np.median(v)) for v in res["per-block"])
    print(f"q4 from {src.name}, {args.rounds} rounds (order alternating), {args.threads} threads; models in {out}")
    for m in MODES:
        p, d = (float(np.median(v)) for v in res[m])
        print(f"  zero points {m:9s}  prefill {args.prompt}: {1e3 * p:7.1f} ms (x{p / base_p:.3f})   "
              f"decode step: {1e3 * d:6.2f} ms (x{d / base_d:.3f})")
    for m in MODES:
        first, second = (float(np.median(v)) if v else float("nan") for v in by_slot[m])
        print(f"  position effect, {m}: decode step when run second / when run first x{second / first:.3f}")


if __name__ == "__main__":
    main()
