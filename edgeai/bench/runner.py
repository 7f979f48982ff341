"""One benchmark run of one configuration, in THIS process; prints one JSON line `RESULT {...}`.

  python -m edgeai.bench.runner --kind edgeai --model DIR --prompts prompts.json [--new 128] [--threads 2]
  /peer/venv/bin/python .../edgeai/bench/runner.py --kind genai --model DIR --prompts prompts.json

The parent (`edgeai bench`) starts one such process per run so peak memory never mixes between
configurations; it can run under a peer's own Python (no edgeai there), so this file and peers.py import
only the standard library at module level.

prompts.json: {"warm": [ids], "ttft": {"32": [ids], ...}, "decode": {"32": [ids], ...}}.
Peak RSS is VmHWM of the child (its own address space: imports, load, all generations).
Order: load, warm-up (8 tokens on a different prompt), TTFT for each length (1 new token each), then
`--new` tokens after each decode prompt. TTFT = time from handing the ids to the engine to the first new
token; decode tokens/s = (n - 1) / (t_last - t_first), the first token excluded.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

try:
    from . import peers
except ImportError:  # run as a plain script under a peer's Python
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import peers  # type: ignore


def _status_mb(field):
    """A /proc/self/status size field (VmRSS, VmHWM) in MiB, or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def peak_rss_mb():
    """Peak RSS of this process's own address space: VmHWM. (ru_maxrss is NOT used where VmHWM exists: Linux
    carries the parent's high-water mark across fork+exec into the child's ru_maxrss, so a child of a big
    parent would report the parent's peak.)"""
    hwm = _status_mb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _rss_mb():
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return None


def measure(kind, model, prompts, new=128, threads=2, warm_tokens=8, options=None) -> dict:
    r = {"kind": kind, "model": str(model), "threads": threads, "pid": os.getpid(),
         "python": sys.executable, "rss_before_load_mb": _rss_mb(), "options": options or {}}
    t0 = time.perf_counter()
    eng = peers.ENGINES[kind](model, threads, **(options or {}))
    r["load_s"] = time.perf_counter() - t0
    if getattr(eng, "load_s", None):  # the engine's own figure (excludes the Python import of the engine)
        r["engine_load_s"] = eng.load_s
    r["version"] = getattr(eng, "version", None)
    r["rss_after_load_mb"] = _rss_mb()
    r["peak_rss_after_load_mb"] = peak_rss_mb()  # building the engine (weight pre-packing) can be the peak
    t = time.perf_counter()
    _, times, _ = eng.generate(prompts["warm"], warm_tokens)
    r["warmup_s"] = time.perf_counter() - t
    r["warmup_ttft_s"] = times[0]
    r["ttft_s"] = {}
    for L, ids in prompts["ttft"].items():
        toks, times, tm = eng.generate(ids, 1)
        r["ttft_s"][str(L)] = times[0]
    r["decode"] = {}
    for C, ids in prompts["decode"].items():
        toks, times, tm = eng.generate(ids, new)
        d = {"prompt_tokens": len(ids), "new_tokens": len(toks), "ttft_s": times[0], "token_ids": toks[:64]}
        if len(toks) > 1 and times[-1] > times[0]:
            d["tokens_per_s"] = (len(toks) - 1) / (times[-1] - times[0])
        if tm:
            steps = max(1, len(toks) - 1)
            if tm.get("decode_tokens_per_s"):
                d["engine_tokens_per_s"] = tm["decode_tokens_per_s"]
            for key in ("forward_s", "overhead_s", "prefill_s", "decode_s", "draft_proposed", "draft_accepted"):
                if tm.get(key) is not None:
                    d[key] = tm[key]
            steps = tm.get("decode_steps") or steps
            if tm.get("forward_s") is not None and tm.get("overhead_s") is not None:
                # a decode step = the model forward (engine side, incl. binding) + everything else
                d["forward_ms_per_token"] = 1e3 * tm["forward_s"] / steps
                d["overhead_ms_per_token"] = 1e3 * tm["overhead_s"] / steps
            if tm.get("ort_run_s") is not None and tm.get("prefill_s") is not None:
                d["ort_run_s"] = tm["ort_run_s"]
            if tm.get("finish_reason"):
                d["finish_reason"] = tm["finish_reason"]
        r["decode"][str(C)] = d
    close = getattr(eng, "close", None)
    if close:
        close()
    r["peak_rss_mb"] = peak_rss_mb()
    r["ru_maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return r


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", required=True, choices=peers.KINDS)
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--check", action="store_true", help="only report whether the engine is installed")
    ap.add_argument("--options", default=None, help="JSON keyword arguments for the engine adapter")
    a = ap.parse_args(argv)
    if a.check or not peers.installed(a.kind):
        ok = peers.installed(a.kind)
        print("RESULT " + json.dumps({"kind": a.kind, "installed": ok, "python": sys.executable}), flush=True)
        return 0 if ok else 3
    with open(a.prompts) as f:
        prompts = json.load(f)
    r = measure(a.kind, a.model, prompts, new=a.new, threads=a.threads,
                options=json.loads(a.options) if a.options else None)
    r["installed"] = True
    print("RESULT " + json.dumps(r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
