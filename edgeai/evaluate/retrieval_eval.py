"""Retrieval quality of an index folder: does a question find the file it was written from?

Questions are JSON lines: {"question": "...", "source": "path/or/name.txt"} (or "sources": [...], any of
which counts). Retrieved chunks are mapped to their files (first occurrence keeps its rank); a source
matches a retrieved file when the paths are equal, or the retrieved path ends with the given relative path
or name. Reported: recall@k (the share of questions with a relevant file among the first k files) and MRR
(mean of 1/rank of the first relevant file, 0 when none is found within the deepest k).
"""
from __future__ import annotations

import time
from pathlib import Path


def load_questions(path) -> list:
    from .report import read_jsonl

    qs = []
    for n, q in read_jsonl(path):
        srcs = q.get("sources") or ([q["source"]] if q.get("source") else [])
        if not q.get("question") or not srcs:
            raise ValueError(f"{path}:{n}: a question needs 'question' and 'source' (or 'sources')")
        qs.append({"id": q.get("id", f"q{n}"), "question": q["question"], "sources": [str(s) for s in srcs]})
    return qs


def _matches(retrieved: str, source: str) -> bool:
    r, s = Path(retrieved).as_posix(), Path(source).as_posix()
    if r == s:
        return True
    try:
        if Path(retrieved).resolve() == Path(source).resolve():
            return True
    except OSError:
        pass
    return r.endswith("/" + s.lstrip("./"))


def rank_of_first_relevant(files: list, sources: list):
    for i, f in enumerate(files, 1):
        if any(_matches(f, s) for s in sources):
            return i
    return None


def score(ranks: list, ks=(1, 5, 10)) -> dict:
    n = len(ranks)
    out = {f"recall@{k}": (sum(1 for r in ranks if r is not None and r <= k) / n if n else 0.0) for k in ks}
    deepest = max(ks)
    out["mrr"] = sum(1.0 / r for r in ranks if r is not None and r <= deepest) / n if n else 0.0
    return out


def retrieval_eval(index, questions, ks=(1, 5, 10), embedder=None, ef=None, rag=None) -> dict:
    """index: an index folder (as `edgeai index --index DIR` makes), searched with `embedder` (a model name or
    folder, or an Embedder; default: edgeai's default embedding model); or pass a ready `rag` (edgeai RAG)."""
    from .report import run_meta

    qs = load_questions(questions) if isinstance(questions, (str, Path)) else list(questions)
    if rag is None:
        from ..retrieval.embedder import DEFAULT_MODEL, Embedder
        from ..retrieval.rag import RAG

        if not Path(index).is_dir():
            raise FileNotFoundError(f"index folder {index} does not exist")
        if embedder is None or isinstance(embedder, (str, Path)):
            embedder = Embedder(embedder or DEFAULT_MODEL)
        rag = RAG(None, embedder, Path(index))
    if ef:
        rag.index.set_ef(int(ef))
    deepest = max(ks)
    per, ranks, t0 = [], [], time.perf_counter()
    for q in qs:
        hits = rag.retrieve(q["question"], k=min(max(4 * deepest, deepest), max(1, len(rag.index))))
        files = list(dict.fromkeys(c["path"] for c, _ in hits))[:deepest]
        r = rank_of_first_relevant(files, q["sources"])
        ranks.append(r)
        per.append({"id": q["id"], "rank": r, "top_files": files[:3]})
    dt = time.perf_counter() - t0
    return {"meta": run_meta(command="eval retrieval", index=str(index)), "questions": len(qs),
            **score(ranks, ks), "seconds": round(dt, 3), "queries_per_s": len(qs) / dt if dt > 0 else None,
            "per_question": per}


def format_report(r: dict) -> str:
    ks = [k for k in r if k.startswith("recall@")]
    missed = [p["id"] for p in r["per_question"] if p["rank"] is None]
    return (f"{r['questions']} questions: " + "  ".join(f"{k} {r[k]:.3f}" for k in ks) + f"  MRR {r['mrr']:.3f}"
            + f"  ({r['seconds']:.1f}s)" + (f"\nnot found: {', '.join(missed[:20])}" if missed else ""))
