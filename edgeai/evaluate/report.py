"""Save evaluation/benchmark results as JSON and compare a run against a saved one.

Every result dict gets a `meta` entry (what ran, where, when) so a saved file says what it measured.
`compare(old, new)` walks both dicts and lists every numeric leaf that changed, with the relative change;
callers decide which direction is a regression (higher KL is worse, higher tokens/s is better).
"""
from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path


def run_meta(**extra) -> dict:
    from .. import __version__

    return {"edgeai": __version__, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(), **extra}


def _default(o):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_jsonl(path):
    """(line number, object) for each line of a JSONL file; blank lines and '#' comments are skipped, and a
    line that is not JSON is a ValueError naming it."""
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{n}: not JSON: {exc}") from None


def save_json(result: dict, path) -> Path:
    """Write `result` as indented JSON (atomically: a crash never leaves half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=_default, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def load_json(path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _leaves(d, prefix=""):
    if isinstance(d, dict):
        for k, v in d.items():
            if k == "meta":
                continue
            yield from _leaves(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(d, (int, float)) and not isinstance(d, bool):
        yield prefix, float(d)


def compare(old: dict, new: dict, rel_tol: float = 0.0, keys=None) -> list:
    """Numeric leaves present in both whose values differ by more than rel_tol (relative).

    Returns [{"key", "old", "new", "delta", "rel"}] sorted by |rel| (largest change first).
    `keys`: only leaves whose dotted path contains one of these substrings.
    """
    a, b = dict(_leaves(old)), dict(_leaves(new))
    out = []
    for k in a.keys() & b.keys():
        if keys and not any(s in k for s in keys):
            continue
        x, y = a[k], b[k]
        if x == y or (math.isnan(x) and math.isnan(y)):
            continue
        rel = (y - x) / abs(x) if x else math.inf
        if abs(rel) > rel_tol:
            out.append({"key": k, "old": x, "new": y, "delta": y - x, "rel": rel})
    return sorted(out, key=lambda r: -abs(r["rel"]) if math.isfinite(r["rel"]) else -math.inf)


def format_compare(diffs: list, limit: int = 40) -> str:
    if not diffs:
        return "no numeric differences from the saved run"
    lines = [f"{'value':48} {'before':>12} {'now':>12} {'change':>9}"]
    for d in diffs[:limit]:
        rel = f"{d['rel'] * 100:+.1f}%" if math.isfinite(d["rel"]) else "new"
        lines.append(f"{d['key'][:48]:48} {d['old']:12.6g} {d['new']:12.6g} {rel:>9}")
    if len(diffs) > limit:
        lines.append(f"... {len(diffs) - limit} more")
    return "\n".join(lines)
