"""`edgeai eval rag QUESTIONS.jsonl`: retrieval and answers of the whole RAG pipeline on questions with known
answers, including questions the documents cannot answer.

A case is one JSON line:
  {"id": "csv-reader", "question": "How do I read a CSV file?",
   "sources": ["csv.md"], "section": "csv.reader",            # where the answer is (section: optional;
                                                              # a list when several sections each answer)
   "expect": {"contains": ["csv.reader"], "contains_any": ["open(", "with "],
              "regex": "csv\\.reader\\(", "not_contains": ["pandas"]}}   # checks as `eval golden`'s
  {"id": "no-pandas", "question": "How do I create a pandas DataFrame?", "answerable": false}

Retrieval: a retrieved chunk is relevant when its file matches one of `sources` (same rule as `eval
retrieval`) and, when `section` is given, its heading path or one of its own heading lines names it. Reported:
recall@k (share of answerable cases with a relevant chunk in the first k) and MRR (1/rank of the first
relevant chunk, 0 beyond the deepest k), and the same at the level of files alone (`sources`: the right page,
any section of it) as source_recall@k and source_mrr.

Answers (unless retrieval only):
- correctness: an answerable case is correct when the answer is not a refusal and passes every check of
  `expect` (golden.check, case-insensitive); an unanswerable case is correct when the answer refuses;
- refusal rate on the unanswerable cases (the retrieval floor or the model's own "do not answer");
- citation precision: each [n] in an answer counts once; it is precise when source n exists and holds an
  identifier the citing sentence names (`csv.reader`, `heappush()`, `json.dumps`), or, for a sentence naming
  none, when source n is a relevant source of the case. The "Source: [n]" line that `RAG.ask` adds to an
  answer citing nothing (the pipeline's attribution, rag.attribute) names no identifier, so it is precise
  only when it names the case's answering section: a check against the hand-written labels, which the
  attribution never sees. `answers_attributed` counts those answers;
- latency of `ask` with streaming: time to the first text piece (retrieval included) and to the end.
"""
from __future__ import annotations

import re
import statistics
import time
from pathlib import Path
from typing import List, Optional

DATA = Path(__file__).with_name("data")
PYDOC_CASES = DATA / "rag_pydoc.jsonl"


def load_cases(path) -> list:
    from .golden import CHECKS
    from .report import read_jsonl

    cases = []
    for n, c in read_jsonl(path):
        if not isinstance(c, dict) or not isinstance(c.get("question"), str) or not c["question"].strip():
            raise ValueError(f"{path}:{n}: a case needs a non-empty 'question'")
        answerable = c.get("answerable", True)
        srcs = c.get("sources") or ([c["source"]] if c.get("source") else [])
        if answerable and not srcs:
            raise ValueError(f"{path}:{n}: an answerable case needs 'sources' (or set \"answerable\": false)")
        expect = c.get("expect", {})
        if not isinstance(expect, dict) or (answerable and not any(k in expect for k in CHECKS)):
            raise ValueError(f"{path}:{n}: an answerable case needs 'expect' with one of {', '.join(CHECKS)}")
        if "regex" in expect:
            try:
                re.compile(expect["regex"])
            except (re.error, TypeError) as exc:
                raise ValueError(f"{path}:{n}: bad regex {expect['regex']!r} ({exc})") from None
        sec = c.get("section")
        if sec is not None and not (isinstance(sec, str) or (isinstance(sec, list) and sec
                                                              and all(isinstance(x, str) for x in sec))):
            raise ValueError(f"{path}:{n}: 'section' must be a string or a non-empty list of strings")
        cases.append({"id": str(c.get("id", f"case{n}")), "question": c["question"], "answerable": bool(answerable),
                      "sources": [str(s) for s in srcs], "section": sec, "expect": expect})
    if not cases:
        raise ValueError(f"{path}: no cases")
    return cases


def is_relevant(chunk: dict, case: dict, section: bool = True) -> bool:
    from .retrieval_eval import _matches

    if not any(_matches(chunk["path"], s) for s in case["sources"]):
        return False
    sec = case.get("section") if section else None
    if not sec:
        return True
    path = " > ".join(chunk["section"]).lower()
    # a tiny section folded into its parent still has its heading line in the chunk
    heads = [ln.lower() for ln in chunk["text"].splitlines() if ln.lstrip().startswith("#")]
    return any(s.lower() in path or any(s.lower() in h for h in heads)
               for s in ([sec] if isinstance(sec, str) else sec))


def check_answer(text: str, case: dict) -> List[str]:
    """The checks an answer fails (empty: it passes)."""
    from .golden import check

    return check({**case["expect"], "ignore_case": True}, text)[1]


def _holds(source_text: str, ident: str) -> bool:
    # `csv.reader` is held by a source that says csv.reader, or says reader( under a csv heading: the last
    # component as a whole word is enough; the module prefix is often implied by the page.
    last = ident.split(".")[-1]
    return ident in source_text or re.search(rf"(?<![\w]){re.escape(last)}(?![\w])", source_text) is not None


def citation_checks(text: str, sources: list, chunks: dict, case: dict) -> List[bool]:
    """One bool per [n] citation: is it precise (see the module docstring)?"""
    from ..retrieval.rag import citations_in, identifiers, prose

    given = {n: chunks.get(n) for n, *_ in sources}
    out = []
    # code first, sentences second: a line of a code block (`data = [1, 2, 3]`) is not a citing sentence
    for sentence in re.split(r"(?<=[.!?])\s+|\n+", prose(text, inline=False)):
        for n in citations_in(sentence):
            chunk = given.get(n)
            if chunk is None:
                out.append(False)
                continue
            idents = identifiers(sentence)
            body = " > ".join(chunk["section"]) + "\n" + chunk["text"]
            out.append(any(_holds(body, i) for i in idents) if idents else
                       (case["answerable"] and is_relevant(chunk, case)))
    return out


def chunks_behind(sources: list, retrieved: list) -> dict:
    """{n: chunk} for an answer's sources, to check its citations against their text. The prompt numbers the
    retrieved chunks in order, so source n is the n-th chunk; two chunks of one section (a long section's
    windows) are two sources, each with its own text."""
    return {n: c for (n, path, section, _), (c, _) in zip(sources, retrieved)
            if (c["path"], " > ".join(c["section"])) == (path, section)}


def _pct(values, q):
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def rag_eval(cases, rag, k: int = 3, ks=(1, 3, 5), answer: bool = True, max_new_tokens: int = 256,
             progress: bool = False, **ask_kwargs) -> dict:
    """Run every case through `rag` (an edgeai RAG; with answer=True its llm is asked)."""
    from ..retrieval.rag import is_refusal
    from .report import run_meta
    from .retrieval_eval import score

    cases = load_cases(cases) if isinstance(cases, (str, Path)) else list(cases)
    deepest = max(max(ks), k)
    per, ranks, file_ranks = [], [], []
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(cases), desc="eval rag", unit="case")
    for case in cases:
        t0 = time.perf_counter()
        hits = rag.retrieve(case["question"], k=deepest)
        retrieval_s = time.perf_counter() - t0
        rank = next((i for i, (c, _) in enumerate(hits, 1) if is_relevant(c, case)), None)
        file_rank = next((i for i, (c, _) in enumerate(hits, 1) if is_relevant(c, case, section=False)), None)
        row = {"id": case["id"], "answerable": case["answerable"], "rank": rank, "source_rank": file_rank,
               "top": [f"{Path(c['path']).name}: {' > '.join(c['section'])}"[:120] for c, _ in hits[:3]],
               "top_score": round(hits[0][1], 4) if hits else None, "retrieval_s": round(retrieval_s, 4)}
        if case["answerable"]:
            ranks.append(rank)
            file_ranks.append(file_rank)
        sketch = rag.sketch(case["question"]) if hasattr(rag, "sketch") else ""
        if sketch:
            row["sketch"] = sketch
        if answer:
            if hasattr(rag, "forget_sketches"):
                rag.forget_sketches()  # the timed ask generates its own sketch, as a user's would
            t0 = time.perf_counter()
            ans = rag.ask(case["question"], k=k, stream=True, max_new_tokens=max_new_tokens, **ask_kwargs)
            ttft = None
            for piece in ans:
                if ttft is None and piece:
                    ttft = time.perf_counter() - t0
            total = time.perf_counter() - t0
            refused = ans.refused or is_refusal(ans.text)
            by_n = chunks_behind(ans.sources, rag.retrieve(case["question"], k=k)) if ans.sources else {}
            cites = citation_checks(ans.text, ans.sources, by_n, case)
            failed = check_answer(ans.text, case) if case["answerable"] else []
            correct = (not refused and not failed) if case["answerable"] else refused
            row.update({"answer": ans.text, "refused": refused, "refused_by_floor": ans.refused,
                        "correct": correct, "failed_checks": failed, "citations": len(cites),
                        "precise_citations": sum(cites), "invalid_citations": ans.invalid_citations,
                        "attributed": bool(getattr(ans, "attributed", False)),
                        "ttft_s": round(ttft, 3) if ttft is not None else None, "total_s": round(total, 3)})
        per.append(row)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()

    answerable = [r for r in per if r["answerable"]]
    unanswerable = [r for r in per if not r["answerable"]]
    out = {"meta": run_meta(command="eval rag", mode=getattr(rag, "mode", None), k=k,
                            expand=bool(getattr(rag, "expand", False) and getattr(rag, "llm", None) is not None),
                            min_score=getattr(rag, "min_score", None)),
           "cases": len(per), "answerable": len(answerable), "unanswerable": len(unanswerable),
           "retrieval": {**score(ranks, ks), **{f"source_{key}": v for key, v in score(file_ranks, ks).items()},
                         "median_s": statistics.median(r["retrieval_s"] for r in per)}}
    # what the score floor alone decides: unanswerable cases whose best chunk is below it
    floor = getattr(rag, "min_score", None)
    if floor is not None and unanswerable:
        out["retrieval"]["floor_refuses_unanswerable"] = sum(
            1 for r in unanswerable if r["top_score"] is None or r["top_score"] < floor) / len(unanswerable)
        out["retrieval"]["floor_refuses_answerable"] = sum(
            1 for r in answerable if r["top_score"] is None or r["top_score"] < floor) / max(1, len(answerable))
    if answer:
        n_cit = sum(r["citations"] for r in per)
        ttft = [r["ttft_s"] for r in per if r["ttft_s"] is not None]
        total = [r["total_s"] for r in per]
        out["answers"] = {
            "correctness": sum(r["correct"] for r in answerable) / max(1, len(answerable)),
            "refusal_unanswerable": sum(r["refused"] for r in unanswerable) / max(1, len(unanswerable)),
            "refusal_answerable": sum(r["refused"] for r in answerable) / max(1, len(answerable)),
            "citation_precision": sum(r["precise_citations"] for r in per) / n_cit if n_cit else None,
            "citations": n_cit,
            "answers_citing": sum(1 for r in answerable if r["citations"]) / max(1, len(answerable)),
            # citations that the pipeline attributed (a "Source: [n]" line) rather than the model wrote
            "answers_attributed": sum(1 for r in per if r.get("attributed")),
            "ttft_s": {"median": _pct(ttft, 0.5), "p95": _pct(ttft, 0.95)},
            "total_s": {"median": _pct(total, 0.5), "p95": _pct(total, 0.95)}}
    out["per_case"] = per
    return out


def format_report(r: dict) -> str:
    ret = r["retrieval"]
    ks = [key for key in ret if key.startswith("recall@")]
    lines = [f"{r['cases']} cases ({r['answerable']} answerable, {r['unanswerable']} not), "
             f"mode {r['meta'].get('mode')}, k {r['meta'].get('k')}",
             "section     " + "  ".join(f"{key} {ret[key]:.3f}" for key in ks) + f"  MRR {ret['mrr']:.3f}"
             + f"  (median {ret['median_s'] * 1000:.0f} ms/query)",
             "page        " + "  ".join(f"{key} {ret['source_' + key]:.3f}" for key in ks)
             + f"  MRR {ret['source_mrr']:.3f}"]
    if "floor_refuses_unanswerable" in ret:
        lines.append(f"score floor {r['meta'].get('min_score')}: refuses {ret['floor_refuses_unanswerable']:.0%} "
                     f"of unanswerable, {ret['floor_refuses_answerable']:.0%} of answerable cases")
    a = r.get("answers")
    if a:
        cp = "n/a" if a["citation_precision"] is None else f"{a['citation_precision']:.1%}"
        lines += [f"answers     correct {a['correctness']:.1%}  citation precision {cp} ({a['citations']} "
                  f"citations; {a.get('answers_attributed', 0)} answers' sources attributed by the pipeline)  "
                  f"refusal on unanswerable {a['refusal_unanswerable']:.1%}  "
                  f"(on answerable {a['refusal_answerable']:.1%})",
                  f"latency     first text median {a['ttft_s']['median']}s p95 {a['ttft_s']['p95']}s, "
                  f"full answer median {a['total_s']['median']}s p95 {a['total_s']['p95']}s"]
    missed = [p["id"] for p in r["per_case"] if p["answerable"] and (p["rank"] is None or p["rank"] > 3)]
    if missed:
        lines.append("not in the top 3: " + ", ".join(missed[:30]))
    if a:
        wrong = [p["id"] for p in r["per_case"] if not p.get("correct")]
        if wrong:
            lines.append("wrong answers: " + ", ".join(wrong[:30]))
    return "\n".join(lines)
