"""Retrieval on a whole real documentation set: dense-only, lexical-only and the final (hybrid) pipeline side by
side on hand-written questions with known answering pages, plus index build time and query latency.

  python bench/docs_eval.py --docs /usr/share/doc/sqlite3 --questions bench/data/sqlite_doc_questions.json

The documentation folder is indexed whole with `edgeai index`'s code path (RAG.add) into a persistent index
folder (default <cache>/bench/index-<folder name>), so a second run only queries; the build time reported is
that of the run that built it (kept in the index's meta). Without --docs, Debian's sqlite3-doc package is
fetched with `apt-get download` and unpacked with dpkg -x under <cache>/bench (outside the repository).

For each question the retrieved chunks are mapped to their pages (first occurrence keeps its rank); a hit is
one of the question's pages. Reports recall@1, recall@5 and MRR over the first 20 distinct pages.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODES = ("dense", "lexical", "hybrid")


def fetch_deb_docs(package: str, cache: Path, subdir: str) -> Path:
    target = cache / package
    docs = target / subdir
    if not docs.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as td:
            subprocess.run(["apt-get", "download", package], cwd=td, check=True, capture_output=True)
            deb = next(Path(td).glob(f"{package}_*.deb"))
            subprocess.run(["dpkg", "-x", str(deb), str(target)], check=True)
    return docs


def open_index(docs: Path, index: Path, model: str, quant=None):
    """RAG over `index`, built from `docs` if it is not there yet; returns (rag, stats, build seconds)."""
    from edgeai.retrieval.embedder import Embedder
    from edgeai.retrieval.rag import RAG

    rag = RAG(None, Embedder(model, quant=quant), index)
    t = time.perf_counter()
    stats = rag.add([docs], show_progress=True)
    took = time.perf_counter() - t
    if stats["added"] or stats["updated"]:
        rag.store.set_meta("bench_build", {"seconds": round(took, 1), "chunks": rag.store.count(),
                                           "files": len(rag.store.files())})
    return rag, rag.store.get_meta("bench_build", {})


class LexicalOnly:
    """The lexical half alone, without embedding anything: chunks exactly as `edgeai index` cuts them, in a
    DocStore whose vectors are zeros. For a quick figure on a set too big to embed here (--lexical-only)."""

    def __init__(self, docs: Path, index: Path, model: str):
        import numpy as np

        from edgeai.retrieval.chunker import Chunker
        from edgeai.retrieval.docstore import DocStore
        from edgeai.retrieval.embedder import Embedder
        from edgeai.retrieval.loaders import load_paths
        from edgeai.retrieval.sphinx import refine

        index.mkdir(parents=True, exist_ok=True)
        self.store = DocStore(index / "lexical.sqlite")
        self.min_score = float("-inf")
        t = time.perf_counter()
        if not self.store.count():
            chunker = Chunker.for_embedder(Embedder(model))  # its tokenizer only: nothing is embedded
            for doc in map(refine, load_paths([docs])):
                cs = chunker.split(doc)
                rows = [{"id": f"{doc.source}#{i}", "section": c.section, "start": c.start, "end": c.end,
                         "text": c.text} for i, c in enumerate(cs)]
                self.store.replace_file(doc.source, "-", 0, rows, np.zeros((len(rows), 1), np.float32))
            self.store.set_meta("bench_build", {"seconds": round(time.perf_counter() - t, 1),
                                                "chunks": self.store.count(), "files": len(self.store.files())})

    def retrieve(self, question, k=20, mode=None):
        hits = self.store.search_lexical(question, k)
        chunks = self.store.get_chunks([i for i, _ in hits])
        return [(chunks[i], s) for i, s in hits if i in chunks]


def evaluate(rag, questions: list, key, wanted, deepest: int = 20, modes=MODES) -> dict:
    """key(chunk) -> the unit a question is answered by (page, FAQ section); wanted(item, unit) -> bool."""
    out = {}
    for mode in modes:
        ranks, lat, best = [], [], []
        for item in questions:
            t = time.perf_counter()
            got = rag.retrieve(item["q"], k=4 * deepest, mode=mode)
            lat.append(time.perf_counter() - t)
            best.append(max((s for _, s in got), default=0.0))
            units = list(dict.fromkeys(u for u in (key(c) for c, _ in got) if u is not None))[:deepest]
            ranks.append(next((i + 1 for i, u in enumerate(units) if wanted(item, u)), None))
        n = len(ranks)
        out[mode] = {"recall@1": round(sum(r == 1 for r in ranks) / n, 3),
                     "recall@5": round(sum(1 for r in ranks if r and r <= 5) / n, 3),
                     "mrr": round(sum(1 / r for r in ranks if r) / n, 3),
                     "query_ms_median": round(1000 * statistics.median(lat), 1),
                     # answerable questions that `ask` would refuse: best cosine below the floor
                     "below_min_score": round(sum(b < rag.min_score for b in best) / n, 3),
                     "best_score_min": round(min(best), 3),
                     "misses@5": [q["q"] for q, r in zip(questions, ranks) if not r or r > 5]}
    return out


def print_table(title: str, res: dict, build: dict) -> None:
    print(f"{title}: {build.get('files', '?')} files, {build.get('chunks', '?')} chunks, "
          f"index built in {build.get('seconds', '?')} s")
    print(f"{'mode':8} {'R@1':>6} {'R@5':>6} {'MRR':>6} {'query ms':>9} {'refused':>8}")
    for mode, r in res.items():
        print(f"{mode:8} {r['recall@1']:6.3f} {r['recall@5']:6.3f} {r['mrr']:6.3f} {r['query_ms_median']:9.1f} "
              f"{r['below_min_score']:8.3f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=Path, default=None, help="documentation folder (default: sqlite3-doc)")
    ap.add_argument("--questions", type=Path, default=ROOT / "bench" / "data" / "sqlite_doc_questions.json")
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--quant", default=None)
    ap.add_argument("--index", type=Path, default=None, help="index folder (default: <cache>/bench/index-NAME)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--exclude", nargs="+", default=[], metavar="GLOB",
                    help="leave pages matching these globs (relative to --docs) out of the results, e.g. aggregate "
                         "pages that repeat other pages (a query-time filter: the index is the same)")
    ap.add_argument("--lexical-only", action="store_true",
                    help="no embeddings: chunk and index for FTS only, report the lexical mode")
    args = ap.parse_args(argv)
    from edgeai.paths import cache_dir
    if args.docs is None:
        args.docs = fetch_deb_docs("sqlite3-doc", cache_dir() / "bench", "usr/share/doc/sqlite3")
    docs = args.docs.resolve()
    index = args.index or cache_dir() / "bench" / f"index-{docs.name}-{Path(str(args.model)).name}"
    questions = json.loads(args.questions.read_text())["questions"]
    if args.lexical_only:
        rag = LexicalOnly(docs, index, args.model)
        build = rag.store.get_meta("bench_build", {})
    else:
        rag, build = open_index(docs, index, args.model, args.quant)

    def page(chunk):
        return Path(chunk["path"]).relative_to(docs).as_posix() if chunk["path"].startswith(str(docs)) else None

    if args.exclude and args.lexical_only:
        raise SystemExit("--exclude needs the full index (not --lexical-only)")
    if args.exclude:
        import fnmatch
        keep = lambda meta: not any(fnmatch.fnmatch(page(meta) or "", g) for g in args.exclude)  # noqa: E731
        retrieve = rag.retrieve
        rag.retrieve = lambda q, k=4, mode=None: retrieve(q, k=k, mode=mode, filter=keep)
    res = evaluate(rag, questions, page, lambda item, p: p in item["pages"],
                   modes=("lexical",) if args.lexical_only else MODES)
    print_table(f"{docs} ({len(questions)} questions)", res, build)
    if args.json:
        args.json.write_text(json.dumps({"docs": str(docs), "build": build, "results": res}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
