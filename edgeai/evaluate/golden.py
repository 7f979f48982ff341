"""Golden answers: fixed prompts whose greedy answers must keep passing simple checks.

A case file is JSON lines, one case per line:

  {"id": "capital-france", "messages": [{"role": "user", "content": "What is the capital of France?"}],
   "expect": {"contains": "Paris"}, "max_new_tokens": 24}

`prompt` (raw text, no chat template) may stand in for `messages`. `expect` holds one or more checks, all
of which must pass: "exact" (the stripped answer equals it), "regex" (re.search), "contains" (a string or a
list of strings, all present), "contains_any" (a list, one present), "not_contains"; "ignore_case": true
makes the string checks case-insensitive. Decoding is greedy (temperature 0), so a run is reproducible and
a later run can be compared with a saved one: a case that passed before and fails now is a regression.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

DATA_DIR = Path(__file__).parent / "data"
SMOLLM2_GOLDEN = DATA_DIR / "smollm2_golden.jsonl"
CHECKS = ("exact", "regex", "contains", "contains_any", "not_contains")


def load_cases(path) -> list:
    from .report import read_jsonl

    cases, seen = [], set()
    for n, c in read_jsonl(path):
        if not isinstance(c, dict) or ("prompt" not in c and "messages" not in c):
            raise ValueError(f"{path}:{n}: a case needs 'prompt' or 'messages'")
        exp = c.get("expect")
        if not isinstance(exp, dict) or not any(k in exp for k in CHECKS):
            raise ValueError(f"{path}:{n}: 'expect' needs one of {', '.join(CHECKS)}")
        c.setdefault("id", f"case-{n}")
        if c["id"] in seen:
            raise ValueError(f"{path}:{n}: duplicate id {c['id']!r}")
        seen.add(c["id"])
        cases.append(c)
    return cases


def check(expect: dict, text: str) -> tuple:
    """(passed, [failure reasons]) of an answer against a case's `expect`."""
    ic = bool(expect.get("ignore_case"))
    norm = (lambda s: s.lower()) if ic else (lambda s: s)  # noqa: E731
    t = norm(text)
    fails = []

    def as_list(v):
        return [v] if isinstance(v, str) else list(v)

    if "exact" in expect and norm(text.strip()) != norm(str(expect["exact"]).strip()):
        fails.append(f"exact: wanted {expect['exact']!r}")
    if "regex" in expect and not re.search(expect["regex"], text, re.IGNORECASE if ic else 0):
        fails.append(f"regex: no match for {expect['regex']!r}")
    if "contains" in expect:
        missing = [s for s in as_list(expect["contains"]) if norm(s) not in t]
        if missing:
            fails.append(f"contains: missing {missing!r}")
    if "contains_any" in expect and not any(norm(s) in t for s in as_list(expect["contains_any"])):
        fails.append(f"contains_any: none of {as_list(expect['contains_any'])!r}")
    if "not_contains" in expect:
        found = [s for s in as_list(expect["not_contains"]) if norm(s) in t]
        if found:
            fails.append(f"not_contains: found {found!r}")
    return not fails, fails


def _prompt(llm, case):
    if "messages" in case:
        return llm.tokenizer.apply_chat_template(case["messages"], add_generation_prompt=True)
    return case["prompt"]


def run_golden(cases, llm, max_new_tokens: int = 48) -> dict:
    """Run every case greedily on `llm` (an edgeai.LLM or anything with the same generate/tokenizer)."""
    from .report import run_meta

    if isinstance(cases, (str, Path)):
        cases = load_cases(cases)
    results, t0 = [], time.perf_counter()
    for c in cases:
        t = time.perf_counter()
        g = llm.generate(_prompt(llm, c), max_new_tokens=int(c.get("max_new_tokens", max_new_tokens)),
                         temperature=0.0, seed=0)
        ok, why = check(c["expect"], g.text)
        results.append({"id": c["id"], "passed": ok, "failures": why, "output": g.text,
                        "finish_reason": getattr(g, "finish_reason", None),
                        "new_tokens": len(getattr(g, "token_ids", []) or []),
                        "seconds": round(time.perf_counter() - t, 3)})
    passed = sum(r["passed"] for r in results)
    return {"meta": run_meta(command="eval golden", model=str(getattr(llm, "model_dir", ""))),
            "total": len(results), "passed": passed, "failed": len(results) - passed,
            "pass_rate": passed / len(results) if results else 0.0,
            "seconds": round(time.perf_counter() - t0, 3), "cases": results}


def golden(path=None, model="smollm2-135m", threads=None, llm=None) -> dict:
    """Load the cases (default: the shipped SmolLM2 set) and run them on `model` (or a given llm)."""
    cases = load_cases(path or SMOLLM2_GOLDEN)
    if llm is not None:
        return run_golden(cases, llm)
    from ..llm import LLM

    with LLM(model, threads=threads) as m:
        r = run_golden(cases, m)
    r["meta"]["model"] = str(model)
    return r


def compare_golden(old: dict, new: dict) -> dict:
    """Regressions (passed in `old`, fails in `new`), fixes (the reverse), cases only in one run, and cases
    whose output text changed."""
    a = {c["id"]: c for c in old.get("cases", [])}
    b = {c["id"]: c for c in new.get("cases", [])}
    common = [i for i in b if i in a]
    return {"regressions": [i for i in common if a[i]["passed"] and not b[i]["passed"]],
            "fixed": [i for i in common if not a[i]["passed"] and b[i]["passed"]],
            "output_changed": [i for i in common if a[i].get("output") != b[i].get("output")],
            "new_cases": [i for i in b if i not in a], "missing_cases": [i for i in a if i not in b]}


def format_report(r: dict, cmp: dict | None = None) -> str:
    lines = []
    for c in r["cases"]:
        mark = "PASS" if c["passed"] else "FAIL"
        out = c["output"].strip().replace("\n", " ")
        lines.append(f"{mark}  {c['id']:28} {out[:70]!r}" + ("" if c["passed"] else f"  <- {'; '.join(c['failures'])}"))
    lines.append(f"{r['passed']}/{r['total']} passed ({r['seconds']:.1f}s)")
    if cmp is not None:
        if cmp["regressions"]:
            lines.append(f"REGRESSIONS (passed before, fail now): {', '.join(cmp['regressions'])}")
        else:
            lines.append("no regressions against the saved run")
        if cmp["fixed"]:
            lines.append(f"fixed since the saved run: {', '.join(cmp['fixed'])}")
        if cmp["output_changed"]:
            lines.append(f"output text changed: {', '.join(cmp['output_changed'])}")
    return "\n".join(lines)
