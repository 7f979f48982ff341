"""The retrieval section of `edgeai bench`: index build time and memory, QPS and recall@10 at a few ef values."""
from __future__ import annotations

import time
from pathlib import Path

from . import memory

def _retrieval_bench_module():
    """The repository's bench/retrieval_bench.py (another engineer's), when this is a source checkout."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent.parent / "bench" / "retrieval_bench.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("edgeai_retrieval_bench", path)
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
    except Exception:  # noqa: BLE001 - fall back to the small built-in measurement
        return None
    return mod if hasattr(mod, "run_set") else None


def synthetic_vectors(n, dim, queries=500, clusters=64, seed=0):
    """Clustered Gaussian vectors (closer to real embeddings than uniform noise); queries held out."""
    import numpy as np

    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim)).astype(np.float32)
    lab = rng.integers(0, clusters, n + queries)
    x = centers[lab] + 0.6 * rng.standard_normal((n + queries, dim)).astype(np.float32)
    return x[:n], x[n:]


def retrieval_section(n=50000, dim=128, queries=500, threads=2) -> dict:
    """Index build time and memory, QPS and recall@10 at several ef values (VectorIndex vs raw hnswlib),
    using bench/retrieval_bench.py's run_set when available."""
    data, q = synthetic_vectors(n, dim, queries)
    mod = _retrieval_bench_module()
    if mod is not None:
        r = mod.run_set(f"synthetic{dim}", data, q, threads)
        r["source"] = "bench/retrieval_bench.py run_set"
        return r
    import numpy as np

    from ..retrieval.index import VectorIndex

    t = time.perf_counter()
    m0 = memory.current_rss_mb()
    ix = VectorIndex(dim, space="cosine", capacity=n)
    ix.add(data)
    res = {"set": f"synthetic{dim}", "n": n, "dim": dim, "queries": queries,
           "vi_build_s": round(time.perf_counter() - t, 2), "vi_mem_mb": round(memory.current_rss_mb() - m0, 1),
           "source": "built-in"}
    d = data / np.linalg.norm(data, axis=1, keepdims=True)
    qq = q / np.linalg.norm(q, axis=1, keepdims=True)
    truth = np.argsort(-(qq @ d.T), axis=1)[:, :10]
    rows = []
    for ef in (32, 64, 128):
        ix.set_ef(ef)
        t = time.perf_counter()
        found = [[int(h.id) for h in ix.search(v, k=10)] for v in q]
        qps = len(q) / (time.perf_counter() - t)
        rec = float(np.mean([len(set(f) & set(tr)) / 10 for f, tr in zip(found, truth)]))
        rows.append({"ef": ef, "vi_recall@10": round(rec, 4), "vi_qps": round(qps)})
    res["by_ef"] = rows
    return res


def format_retrieval(r: dict) -> str:
    lines = [f"vector index ({r['set']}, n={r['n']}, dim={r['dim']}): build {r.get('vi_build_s')}s, "
             f"+{r.get('vi_mem_mb')} MB RSS" + (f" (raw hnswlib {r['raw_build_s']}s, +{r['raw_mem_mb']} MB)"
                                                if "raw_build_s" in r else "")]
    for row in r["by_ef"]:
        lines.append(f"  ef {row['ef']:4d}: recall@10 {row['vi_recall@10']:.4f}  {row['vi_qps']} QPS (1 query/call)"
                     + (f"  raw hnswlib {row['raw_recall@10']:.4f} / {row['raw_qps']} QPS" if "raw_qps" in row else "")
                     + (f"; raw calls on the same graph {row['same_qps']} QPS (wrapper ratio {row['qps_ratio']:.3f})"
                        if "same_qps" in row else ""))
    return "\n".join(lines)
