"""`edgeai bench`: load time, TTFT, decode speed, memory and a bandwidth bound, for edgeai models and peers.

Each run of each configuration happens in its own child process (`edgeai.bench.runner`, one JSON line), so
peak memory never mixes; configurations are interleaved over repetitions so slow drifts of the machine hit
all of them alike. Around every run the parent reads /proc/stat: CPU time used by other processes during
the run ("busy cores") is recorded, and runs disturbed by more than `max_busy` cores are repeated (up to a
limit). Figures are medians with min-max over the undisturbed runs.

The bandwidth bound: decoding one token reads every weight used by a matrix product (all projections and the
LM head; one row of the embedding) plus the KV cache up to the context length, so
tokens/s <= read bandwidth / bytes per token. The bandwidth is measured in the same command.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import memory
from .bytes_read import (gguf_weight_bytes_per_token, kv_bytes_per_position, model_size_bytes,  # noqa: F401
                         onnx_weight_bytes_per_token, weight_bytes_per_token)
from .retrieval import format_retrieval, retrieval_section, synthetic_vectors  # noqa: F401
from .table import format_table  # noqa: F401

DEFAULT_TEXT = "/usr/share/common-licenses/GPL-3"
PROMPT_LENGTHS = (32, 128, 512, 1024)
DECODE_CONTEXTS = (32, 512)
RUNNER = Path(__file__).with_name("runner.py")


# ------------------------------------------------------------------------------------------------ configs
@dataclass
class Config:
    label: str
    kind: str  # edgeai | llamacpp | genai | optimum
    model: str
    python: str = sys.executable
    kv_dtype_bytes: int = 4
    installed: bool | None = None
    note: str = ""
    info: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)  # keyword arguments for the engine adapter (peers.py)


def edgeai_config(model) -> Config:
    """model: a folder or name, or {"model": ..., "prompt_lookup": k} for a variant of the engine's settings."""
    from ..pull import resolve_model

    options = {}
    if isinstance(model, dict):
        options = {k: v for k, v in model.items() if k != "model"}
        model = model["model"]
    folder = Path(resolve_model(model))
    m = json.loads((folder / "edgeai.json").read_text())
    quant = (m.get("quantization") or {}).get("mode", "?")
    label = f"edgeai {folder.name}" if str(model) == str(folder) else f"edgeai {model}"
    label += "".join(f" {k}={v}" for k, v in options.items())
    return Config(label=label, kind="edgeai", model=str(folder), info={"quant": quant, **options}, options=options)


def peer_configs(spec: dict) -> list:
    """spec: {kind: {"python": ..., "model": ..., "label": ...}} (peer_models.json from setup_peers.sh)."""
    from .peers import DESCRIPTIONS

    out = []
    for kind, v in spec.items():
        if kind not in DESCRIPTIONS or kind == "edgeai":
            raise ValueError(f"unknown peer {kind!r}; known: llamacpp, genai, optimum")
        if isinstance(v, str):
            v = {"model": v}
        out.append(Config(label=v.get("label") or DESCRIPTIONS[kind], kind=kind, model=str(v.get("model") or ""),
                          python=v.get("python") or sys.executable,
                          kv_dtype_bytes=int(v.get("kv_dtype_bytes") or (2 if kind == "llamacpp" else 4))))
    return out


def check_installed(cfg: Config, timeout=120) -> bool:
    if not cfg.model or not Path(cfg.model).exists():
        cfg.installed, cfg.note = False, f"model not found: {cfg.model or '(none given)'}"
        return False
    if not Path(cfg.python).exists():
        cfg.installed, cfg.note = False, f"python not found: {cfg.python}"
        return False
    try:
        p = subprocess.run([cfg.python, str(RUNNER), "--kind", cfg.kind, "--model", cfg.model, "--prompts", "-",
                            "--check"], capture_output=True, text=True, timeout=timeout)
        cfg.installed = p.returncode == 0
    except (OSError, subprocess.TimeoutExpired) as exc:
        cfg.installed, cfg.note = False, str(exc)
    if not cfg.installed and not cfg.note:
        cfg.note = "not installed"
    return cfg.installed


# ------------------------------------------------------------------------------------------------ prompts
def make_prompts(model_folder, text_path=DEFAULT_TEXT, lengths=PROMPT_LENGTHS, contexts=DECODE_CONTEXTS,
                 windows: int = 1) -> dict:
    """Token ids of exact lengths cut from a real text (edgeai's tokenizer of `model_folder`).
    TTFT prompts start at the text's beginning, decode prompts further in, the warm-up prompt elsewhere.
    windows > 1 adds decode prompts of each length from further places ("C#2", "C#3", ...): how much a
    continuation repeats itself (and so what draft tokens gain) depends on where the text is cut."""
    from ..tokenizer import Tokenizer

    ids = Tokenizer.from_folder(model_folder).encode(Path(text_path).read_text(encoding="utf-8", errors="replace"),
                                                      add_special_tokens=False)
    need = max(max(lengths, default=0), max(contexts, default=0)) + 64
    while len(ids) < 2 * need:
        ids = ids + ids
    half = len(ids) // 2

    def cut(start, n):
        return [int(t) for t in ids[start:start + n]]

    def room(n):  # decode windows of n tokens start in [half, half + room) and end before the warm-up prompt
        return len(ids) - 48 - n - half

    return {"text": str(text_path), "warm": cut(len(ids) - 48, 24),
            "ttft": {str(L): cut(0, L) for L in lengths},
            "decode": {(str(C) if w == 0 else f"{C}#{w + 1}"): cut(half + w * max(0, room(C)) // windows, C)
                       for w in range(windows) for C in contexts}}


# ------------------------------------------------------------------------------------------------ runs
def run_once(cfg: Config, prompts_path, new=128, threads=2, timeout=900) -> dict:
    """One child process; returns its JSON plus wall time and the busy cores of other processes."""
    cmd = [cfg.python, str(RUNNER), "--kind", cfg.kind, "--model", cfg.model, "--prompts", str(prompts_path),
           "--new", str(new), "--threads", str(threads)] + (["--options", json.dumps(cfg.options)] if cfg.options else [])
    env = dict(os.environ)
    if cfg.kind == "edgeai":  # make sure the child imports this very edgeai
        root = str(Path(__file__).resolve().parent.parent.parent)
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0, c0 = time.perf_counter(), memory.cpu_times()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        out, err, rc = p.stdout, p.stderr, p.returncode
    except subprocess.TimeoutExpired as exc:
        out, err, rc = exc.stdout or "", f"timed out after {timeout}s", -9
        out = out.decode() if isinstance(out, bytes) else out
    c1, wall = memory.cpu_times(), time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    line = next((ln for ln in reversed(out.splitlines()) if ln.startswith("RESULT ")), None)
    r = json.loads(line[7:]) if line else {}
    r.update({"label": cfg.label, "wall_s": wall, "child_cpu_s": own, "rc": rc,
              "foreign_cores": memory.foreign_cores(c0, c1, own), "steal_cores": memory.steal_cores(c0, c1)})
    if rc != 0 or not line:
        if rc < 0:
            import signal

            try:
                why = f"killed by {signal.Signals(-rc).name}"
            except ValueError:
                why = f"killed by signal {-rc}"
            if rc == -signal.SIGILL:
                why += " (illegal instruction: an engine built for another CPU)"
        else:
            why = f"exit status {rc}"
        last = (err.strip().splitlines() or [""])[-1][:300]
        r["error"] = why + (f": {last}" if last and rc > 0 else "")
    return r


def _common_prefix(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def flatten(run: dict) -> dict:
    """The figures of one run as flat keys: load_s, ttft_ms@L, tps@C, fwd_ms@C, other_ms@C, peak_rss_mb."""
    f = {}
    for k in ("load_s", "peak_rss_mb", "rss_after_load_mb", "peak_rss_after_load_mb"):
        if run.get(k) is not None:
            f[k] = run[k]
    for L, v in (run.get("ttft_s") or {}).items():
        f[f"ttft_ms@{L}"] = 1e3 * v
    for C, d in (run.get("decode") or {}).items():
        if d.get("tokens_per_s") is not None:
            f[f"tps@{C}"] = d["tokens_per_s"]
        if d.get("forward_ms_per_token") is not None:
            f[f"fwd_ms@{C}"] = d["forward_ms_per_token"]
            f[f"other_ms@{C}"] = d["overhead_ms_per_token"]
    return f


def spread(values) -> dict:
    v = [x for x in values if x is not None]
    if not v:
        return {}
    return {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)}


def summarize(runs: list, max_busy: float) -> dict:
    """Per metric median/min/max over the undisturbed successful runs (all successful runs if none is)."""
    ok = [r for r in runs if not r.get("error")]
    quiet = [r for r in ok if r["foreign_cores"] <= max_busy]
    use = quiet or ok
    keys = sorted({k for r in use for k in flatten(r)})
    return {"metrics": {k: spread([flatten(r).get(k) for r in use]) for k in keys},
            "runs_ok": len(ok), "runs_quiet": len(quiet), "runs_used": len(use),
            "noisy": not quiet and bool(ok),
            "busy_cores": spread([r["foreign_cores"] for r in use]),
            "errors": sorted({r["error"] for r in runs if r.get("error")})}


def run_order(configs: list, rep: int) -> list:
    """The order of one repetition: the list rotated by `rep`, so over len(configs) repetitions each
    configuration runs once in every slot. A fixed order lets position effects pass for speed differences
    (on a 2-core box, a graph's slot in an in-process A/B moved its decode step by 5-9%: bench/zero_point_ab.py
    prints that effect)."""
    k = rep % len(configs) if configs else 0
    return list(configs[k:]) + list(configs[:k])


def run_bench(models=(), peers=None, reps=3, threads=2, new=128, lengths=PROMPT_LENGTHS,
              contexts=DECODE_CONTEXTS, text=DEFAULT_TEXT, max_busy=0.25, max_reruns=None, quiet_wait_s=20.0,
              bw_mb=1024, bw_reps=5, log=None, timeout=900, windows=1) -> dict:
    """Benchmark edgeai models (folders or names) and peers ({kind: {"python", "model"}}); returns a dict."""
    from ..evaluate.report import run_meta

    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    configs = [edgeai_config(m) for m in models]
    if not configs:
        raise ValueError("give at least one edgeai model (its tokenizer makes the prompts)")
    pconfigs = peer_configs(peers or {})
    for c in pconfigs:
        check_installed(c)
        log(f"peer {c.label}: {'installed' if c.installed else c.note}")
    for c in configs:
        c.installed = True
    active = configs + [c for c in pconfigs if c.installed]

    arch = json.loads((Path(configs[0].model) / "edgeai.json").read_text())["kv_cache"]
    for c in configs + pconfigs:
        c.info["size_bytes"] = model_size_bytes(c.model) if c.model and Path(c.model).exists() else None
        c.info["weights_read"] = weight_bytes_per_token(c) if c.installed else None

    log(f"measuring read bandwidth ({bw_mb} MiB array, best of {bw_reps}) ...")
    bw = memory.read_bandwidth_child(bw_mb, bw_reps, tuple(sorted({1, threads})))
    gbps = max(b["gbps"] for b in bw.values())

    tmp = Path(tempfile.mkdtemp(prefix="edgeai-bench-"))
    prompts = make_prompts(configs[0].model, text, lengths, contexts, windows)
    pp = tmp / "prompts.json"
    pp.write_text(json.dumps(prompts))

    runs = {c.label: [] for c in active}
    reruns_left = {c.label: (reps if max_reruns is None else max_reruns) for c in active}
    busy_warnings = []
    for rep in range(reps):
        queue = run_order(active, rep)
        while queue:
            c = queue.pop(0)
            b, waited = memory.wait_for_quiet(max_busy, quiet_wait_s)
            if b > max_busy:
                busy_warnings.append(f"machine busy before {c.label} rep {rep + 1}: {b:.2f} cores "
                                     f"(waited {waited:.0f}s)")
            r = run_once(c, pp, new, threads, timeout)
            r["rep"] = rep + 1
            runs[c.label].append(r)
            fl = flatten(r)
            msg = (f"  rep {rep + 1} {c.label:34} " + (f"ERROR {r['error']}" if r.get("error") else
                   f"decode {fl.get(f'tps@{contexts[0]}', float('nan')):6.1f} tok/s  "
                   f"TTFT@{lengths[-1]} {fl.get(f'ttft_ms@{lengths[-1]}', float('nan')):7.1f} ms  "
                   f"busy {r['foreign_cores']:.2f}"))
            disturbed = not r.get("error") and r["foreign_cores"] > max_busy
            if disturbed:
                r["disturbed"] = True
                if reruns_left[c.label] > 0:
                    reruns_left[c.label] -= 1
                    queue.append(c)
                    msg += "  (disturbed: re-run)"
                else:
                    msg += "  (disturbed: no re-runs left)"
            log(msg)

    out_configs = []
    for c in configs + pconfigs:
        entry = {"label": c.label, "kind": c.kind, "model": c.model, "python": c.python,
                 "installed": bool(c.installed), "note": c.note, **c.info}
        if c.installed:
            s = summarize(runs[c.label], max_busy)
            entry.update(s)
            first = next((r for r in runs[c.label] if not r.get("error")), {})
            entry["version"] = first.get("version")
            wr = (c.info.get("weights_read") or {}).get("bytes_per_token")
            if wr:
                bound = {}
                for C in contexts:
                    per = wr + int(C) * kv_bytes_per_position(arch, c.kv_dtype_bytes)
                    tb = gbps * 1e9 / per
                    got = (s["metrics"].get(f"tps@{C}") or {}).get("median")
                    bound[str(C)] = {"bytes_per_token": per, "bound_tps": tb,
                                     "fraction": (got / tb) if got else None}
                entry["bandwidth_bound"] = bound
        out_configs.append(entry)
    # greedy sanity: how many leading decode tokens each configuration shares with the first one
    base = next((r for r in runs.get(configs[0].label, []) if not r.get("error")), None)
    for entry in out_configs:
        first = next((r for r in runs.get(entry["label"], []) if not r.get("error")), None)
        if base and first:
            entry["greedy_prefix_match"] = {C: _common_prefix(base["decode"][C].get("token_ids") or [],
                                                              first["decode"][C].get("token_ids") or [])
                                            for C in base.get("decode", {}) if C in first.get("decode", {})}
    noisy = [c["label"] for c in out_configs if c.get("noisy")]
    return {"meta": run_meta(command="bench", threads=threads, reps=reps, new_tokens=new, text=str(text),
                             max_busy=max_busy),
            "prompt_lengths": list(lengths), "decode_contexts": list(contexts),
            "bandwidth": bw, "bandwidth_gbps": gbps, "kv_cache": arch,
            "configs": out_configs, "runs": runs, "busy_warnings": busy_warnings, "noisy_configs": noisy}


# ------------------------------------------------------------------------------------------------ peers config
def default_peer_config() -> dict:
    """$EDGEAI_PEERS/peer_models.json or /work/peers/peer_models.json (written by setup_peers.sh), else the
    three peers with no model (the table then says why they did not run)."""
    for base in (os.environ.get("EDGEAI_PEERS"), "/work/peers"):
        if base and (Path(base) / "peer_models.json").is_file():
            return json.loads((Path(base) / "peer_models.json").read_text())
    return {"llamacpp": {}, "genai": {}, "optimum": {}}


def apply_peer_overrides(spec: dict, models=(), pythons=()) -> dict:
    """spec with `KIND=PATH` models and `[KIND=]PYTHON` interpreters applied (a bare PYTHON: every peer's)."""
    for item in models or []:
        kind, _, path = item.partition("=")
        spec.setdefault(kind, {})["model"] = path
    for item in pythons or []:
        kind, _, py = item.partition("=")
        if not py:  # one python for every peer
            for v in spec.values():
                v["python"] = kind
        else:
            spec.setdefault(kind, {})["python"] = py
    return spec
