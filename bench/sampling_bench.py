"""One full sampling step on 49,152 logits: the C++ chain against a vectorised NumPy chain, same process.

Chain: repetition 1.1 + presence 0.2 + frequency 0.1 penalties (history of 256 tokens), temperature 0.8,
top-k 50, top-p 0.9, seeded choice. Reports medians of repeated timed batches and the ratio.

    python bench/sampling_bench.py [--iters 2000] [--json out.json]
"""
import argparse
import json
import statistics
import time

import numpy as np

from edgeai import Sampler, SamplingParams

V = 49152
PARAMS = dict(repetition_penalty=1.1, presence_penalty=0.2, frequency_penalty=0.1,
              temperature=0.8, top_k=50, top_p=0.9)


def numpy_step(logits, history, rng):
    """The same chain, written the way a NumPy user would: vectorised, float32, argpartition."""
    x = logits.copy()
    toks, counts = np.unique(history, return_counts=True)
    v = x[toks]
    v = np.where(v > 0, v / 1.1, v * 1.1)
    x[toks] = v - 0.2 - 0.1 * counts
    x /= 0.8
    top = np.argpartition(-x, 49)[:50]
    top = top[np.argsort(-x[top])]
    p = np.exp(x[top] - x[top[0]])
    p /= p.sum()
    cum = np.cumsum(p)
    m = int(np.searchsorted(cum, 0.9)) + 1
    keep, pk = top[:m], p[:m] / cum[m - 1]
    return int(keep[np.searchsorted(np.cumsum(pk), rng.random() * pk.sum(), side="right")])


def time_per_call(fn, iters, repeats):
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        out.append((time.perf_counter() - t0) / iters)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    logits = (rng.standard_normal(V) * 3).astype(np.float32)
    history = rng.integers(0, V, 256).astype(np.int32)
    sampler = Sampler(SamplingParams(seed=1, **PARAMS))

    cpp_fn = lambda: sampler(logits, history)  # noqa: E731
    np_fn = lambda: numpy_step(logits, history, rng)  # noqa: E731
    cpp_fn(), np_fn()  # warm-up
    # Interleave the two so that a noisy neighbour affects both alike.
    cpp, npy = [], []
    for _ in range(args.repeats):
        cpp += time_per_call(cpp_fn, args.iters, 1)
        npy += time_per_call(np_fn, max(1, args.iters // 10), 1)
    c, n = statistics.median(cpp) * 1e6, statistics.median(npy) * 1e6
    res = {"vocab": V, "chain": PARAMS, "cpp_us_median": round(c, 1), "cpp_us_min": round(min(cpp) * 1e6, 1),
           "cpp_us_max": round(max(cpp) * 1e6, 1), "numpy_us_median": round(n, 1),
           "numpy_us_min": round(min(npy) * 1e6, 1), "numpy_us_max": round(max(npy) * 1e6, 1),
           "speedup": round(n / c, 1)}
    print(f"sampling step, {V} logits: C++ {c:.1f} us (min {res['cpp_us_min']}, max {res['cpp_us_max']})  "
          f"NumPy {n:.1f} us (min {res['numpy_us_min']}, max {res['numpy_us_max']})  speed-up x{n / c:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
