"""Retrieval quality on a real FAQ: the Debian FAQ (HTML from the `debian-faq` package) and hand-written,
paraphrased questions (bench/data/debian_faq_questions.json), each labelled with the FAQ section answering it.

For each question the top chunks are mapped to their deepest numbered heading ("7.12"); a hit is that section
or one of its subsections. Reports recall@1, recall@5 and MRR (over the first 20 distinct sections).

  python bench/faq_eval.py --model minilm-l6 [--quant fp32 q8] [--faq-dir DIR]       # FAQ pages, in memory
  python bench/faq_eval.py --whole [--faq-dir DIR]      # the package's whole doc folder, 3 modes side by side
  python bench/faq_eval.py --expand-llm qwen2.5-coder-0.5b   # FAQ pages, hybrid, without/with the code sketch

Without --faq-dir the package is fetched with `apt-get download debian-faq` and unpacked with dpkg -x into
<cache>/bench/debian-faq (outside the repository). --whole indexes everything the package installs under
/usr/share/doc/debian (both copies of each page, *.html and *.en.html, and the rest) into a persistent index
with bench/docs_eval.py's code, and reports dense-only, lexical-only and hybrid retrieval side by side.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

QUESTIONS = ROOT / "bench" / "data" / "debian_faq_questions.json"


def fetch_debian_faq(cache: Path) -> Path:
    target = cache / "debian-faq"
    html = target / "usr" / "share" / "doc" / "debian" / "FAQ"
    if not html.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as td:
            subprocess.run(["apt-get", "download", "debian-faq"], cwd=td, check=True, capture_output=True)
            deb = next(Path(td).glob("debian-faq_*.deb"))
            subprocess.run(["dpkg", "-x", str(deb), str(target)], check=True)
    return html


def section_number(section) -> str | None:
    for title in reversed(list(section)):
        m = re.match(r"(\d+(?:\.\d+)+)\.?\s", title + " ")
        if m:
            return m.group(1)
    return None


def evaluate(model: str, quant: str, faq_html: Path, questions: list, k_chunks: int = 20,
             expand_llm=None) -> dict:
    """Dense retrieval over the FAQ pages; with expand_llm (an LLM) hybrid instead, without and with the LLM's
    code sketch (expansion.py: a Python sketch must add nothing to documents that hold none of its names)."""
    from edgeai.retrieval.embedder import Embedder
    from edgeai.retrieval.index import VectorIndex
    from edgeai.retrieval.rag import RAG

    emb = Embedder(model, quant=quant)
    files = sorted(faq_html.glob("*.en.html"))  # the *.html copies are the same pages
    rag = RAG(None, emb, VectorIndex(emb.dims, capacity=4096), mode="dense" if expand_llm is None else "hybrid",
              expand=True)  # dense: as measured before
    t = time.perf_counter()
    stats = rag.add(files, show_progress=False)
    index_s = time.perf_counter() - t
    if expand_llm is not None:
        out = {}
        for name, llm in (("hybrid", None), ("hybrid+sketch", expand_llm)):
            rag.llm = llm
            out[name] = _ranks(rag, questions, k_chunks)
        return {"model": str(model), "chunks": stats["chunks"], **out}
    return {"model": str(model), "quant": emb.quant, "files": stats["added"], "chunks": stats["chunks"],
            "index_seconds": round(index_s, 2), **_ranks(rag, questions, k_chunks)}


def _ranks(rag, questions: list, k_chunks: int) -> dict:
    ranks, lat = [], []
    for item in questions:
        t = time.perf_counter()
        got = rag.retrieve(item["q"], k=k_chunks)
        lat.append(time.perf_counter() - t)
        seen = []
        for chunk, _ in got:
            s = section_number(chunk["section"])
            if s and s not in seen:
                seen.append(s)
        want = item["section"]
        ranks.append(next((i + 1 for i, s in enumerate(seen) if s == want or s.startswith(want + ".")), None))
    n = len(ranks)
    return {"questions": n,
            "recall@1": round(sum(1 for r in ranks if r == 1) / n, 3),
            "recall@5": round(sum(1 for r in ranks if r and r <= 5) / n, 3),
            "mrr": round(sum(1 / r for r in ranks if r) / n, 3),
            "query_ms_median": round(1000 * sorted(lat)[n // 2], 2),
            "misses": [q["q"] for q, r in zip(questions, ranks) if not r or r > 5]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--quant", nargs="*", default=[None], help="model variants to compare (default: manifest's)")
    ap.add_argument("--faq-dir", type=Path, default=None)
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write results here")
    ap.add_argument("--whole", action="store_true", help="index the whole doc folder; dense/lexical/hybrid")
    ap.add_argument("--expand-llm", default=None, metavar="NAME",
                    help="FAQ pages, hybrid, without and with this LLM's code sketch (`edgeai ask`'s expansion)")
    ap.add_argument("--index", type=Path, default=None,
                    help="--whole: index folder (default <cache>/bench/index-debian-faq-MODEL)")
    args = ap.parse_args(argv)
    from edgeai.paths import cache_dir
    if args.faq_dir is None:
        args.faq_dir = fetch_debian_faq(args.cache or cache_dir() / "bench")
    questions = json.loads(QUESTIONS.read_text())["questions"]
    if args.whole:
        from docs_eval import evaluate as eval_modes, open_index, print_table
        folder = args.faq_dir.resolve().parent  # /usr/share/doc/debian: the FAQ and whatever else is there
        index = args.index or cache_dir() / "bench" / f"index-debian-faq-{Path(args.model).name}"
        rag, build = open_index(folder, index, args.model, args.quant[0])
        res = eval_modes(rag, questions, lambda c: section_number(c["section"]),
                         lambda item, s: s == item["section"] or s.startswith(item["section"] + "."))
        print_table(f"{folder} ({len(questions)} questions)", res, build)
        if args.json:
            args.json.write_text(json.dumps({"docs": str(folder), "build": build, "results": res}, indent=2))
        return 0
    if args.expand_llm:
        from edgeai import LLM
        with LLM(args.expand_llm) as llm:
            res = evaluate(args.model, args.quant[0], args.faq_dir, questions, expand_llm=llm)
        for name in ("hybrid", "hybrid+sketch"):
            r = res[name]
            print(f"{name:14} R@1 {r['recall@1']:.3f}  R@5 {r['recall@5']:.3f}  MRR {r['mrr']:.3f}  "
                  f"query {r['query_ms_median']:.0f} ms")
        if args.json:
            args.json.write_text(json.dumps(res, indent=2))
        return 0
    results = [evaluate(args.model, q, args.faq_dir, questions) for q in args.quant]
    print(f"{'quant':6} {'chunks':>6} {'index s':>8} {'R@1':>6} {'R@5':>6} {'MRR':>6} {'query ms':>9}")
    for r in results:
        print(f"{r['quant']:6} {r['chunks']:6d} {r['index_seconds']:8.2f} {r['recall@1']:6.3f} "
              f"{r['recall@5']:6.3f} {r['mrr']:6.3f} {r['query_ms_median']:9.2f}")
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
