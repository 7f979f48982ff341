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


def edgeai_config(model) -> Config:
    from ..pull import resolve_model

    folder = Path(resolve_model(model))
    m = json.loads((folder / "edgeai.json").read_text())
    quant = (m.get("quantization") or {}).get("mode", "?")
    label = f"edgeai {folder.name}" if str(model) == str(folder) else f"edgeai {model}"
    return Config(label=label, kind="edgeai", model=str(folder), info={"quant": quant})


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
def make_prompts(model_folder, text_path=DEFAULT_TEXT, lengths=PROMPT_LENGTHS, contexts=DECODE_CONTEXTS) -> dict:
    """Token ids of exact lengths cut from a real text (edgeai's tokenizer of `model_folder`).
    TTFT prompts start at the text's beginning, decode prompts further in, the warm-up prompt elsewhere."""
    from ..tokenizer import Tokenizer

    ids = Tokenizer.from_folder(model_folder).encode(Path(text_path).read_text(encoding="utf-8", errors="replace"),
                                                      add_special_tokens=False)
    need = max(max(lengths, default=0), max(contexts, default=0)) + 64
    while len(ids) < 2 * need:
        ids = ids + ids
    half = len(ids) // 2

    def cut(start, n):
        return [int(t) for t in ids[start:start + n]]

    return {"text": str(text_path), "warm": cut(len(ids) - 48, 24),
            "ttft": {str(L): cut(0, L) for L in lengths},
            "decode": {str(C): cut(half, C) for C in contexts}}


# ------------------------------------------------------------------------------------------------ weights read
_MATMUL_OPS = {"MatMul", "Gemm", "MatMulNBits", "MatMulInteger", "DynamicQuantizeMatMul", "FusedMatMul",
               "MatMulIntegerToFloat", "QLinearMatMul", "QMoE"}
_GATHER_OPS = {"Gather", "GatherBlockQuantized"}
_PASS_OPS = {"Transpose", "Cast", "DequantizeLinear", "Reshape", "Identity"}


def _onnx_init_bytes(model):
    from onnx import helper

    sizes, dims = {}, {}
    for t in model.graph.initializer:
        ext = {e.key: e.value for e in t.external_data}
        if "length" in ext:
            n = int(ext["length"])
        elif t.raw_data:
            n = len(t.raw_data)
        else:
            import numpy as np

            count = int(np.prod(t.dims)) if len(t.dims) else 1
            n = count * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        sizes[t.name], dims[t.name] = n, list(t.dims)
    return sizes, dims


def onnx_weight_bytes_per_token(onnx_path) -> dict:
    """Bytes of initializers one decode step reads: every initializer feeding a matrix product (through
    Transpose/Cast/DequantizeLinear too), once each, plus one row of each gathered table that no matrix
    product reads whole."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    sizes, dims = _onnx_init_bytes(model)
    producer = {o: n for n in model.graph.node for o in n.output}

    def sources(name, depth=0):
        if name in sizes:
            return {name}
        n = producer.get(name)
        if n is None or depth > 3 or n.op_type not in _PASS_OPS:
            return set()
        out = set()
        for i in (n.input if n.op_type == "DequantizeLinear" else n.input[:1]):  # not Reshape's shape
            out |= sources(i, depth + 1)
        return out

    mm, gathered = set(), set()
    for n in model.graph.node:
        if n.op_type in _MATMUL_OPS:
            for i in n.input:
                mm |= sources(i)
        elif n.op_type in _GATHER_OPS and n.input and n.input[0] in sizes:
            gathered.add(n.input[0])
            if n.op_type == "GatherBlockQuantized":
                gathered |= {i for i in n.input[1:] if i in sizes}
    rows = sum(sizes[g] // max(1, dims[g][0] if dims[g] else 1) for g in gathered - mm)
    total = sum(sizes.values())
    return {"matmul_bytes": sum(sizes[i] for i in mm), "gather_row_bytes": rows,
            "bytes_per_token": sum(sizes[i] for i in mm) + rows, "all_initializer_bytes": total}


def gguf_weight_bytes_per_token(path) -> dict:
    from gguf import GGUFReader

    r = GGUFReader(str(path))
    sizes = {t.name: int(t.n_bytes) for t in r.tensors}
    emb = sizes.get("token_embd.weight", 0)
    tied = "output.weight" not in sizes
    rows = 0
    if not tied and emb:
        t = next(t for t in r.tensors if t.name == "token_embd.weight")
        rows = emb // max(1, int(t.shape[-1]))
    per = sum(sizes.values()) - (0 if tied else emb) + rows
    return {"bytes_per_token": per, "all_initializer_bytes": sum(sizes.values()), "tied_embedding": tied}


def weight_bytes_per_token(cfg: Config) -> dict | None:
    try:
        p = Path(cfg.model)
        if p.suffix == ".gguf":
            return gguf_weight_bytes_per_token(p)
        onnx_path = p / "model.onnx" if p.is_dir() else p
        if not onnx_path.exists():
            cands = sorted(p.glob("*.onnx")) if p.is_dir() else []
            if not cands:
                return None
            onnx_path = cands[0]
        return onnx_weight_bytes_per_token(onnx_path)
    except Exception as exc:  # a peer format we cannot read: no bound for it
        return {"error": f"{type(exc).__name__}: {exc}"}


def model_size_bytes(path) -> int:
    """Weight files only (.gguf, .onnx + external data, .safetensors, .bin); tokenizer files excluded."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    exts = (".gguf", ".onnx", ".data", ".onnx_data", ".safetensors", ".bin")
    return sum(f.stat().st_size for f in p.iterdir() if f.is_file() and f.name.endswith(exts))


def kv_bytes_per_position(arch: dict, dtype_bytes=4) -> int:
    return 2 * arch["num_layers"] * arch["num_kv_heads"] * arch["head_dim"] * dtype_bytes


# ------------------------------------------------------------------------------------------------ runs
def run_once(cfg: Config, prompts_path, new=128, threads=2, timeout=900) -> dict:
    """One child process; returns its JSON plus wall time and the busy cores of other processes."""
    cmd = [cfg.python, str(RUNNER), "--kind", cfg.kind, "--model", cfg.model, "--prompts", str(prompts_path),
           "--new", str(new), "--threads", str(threads)]
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
    for k in ("load_s", "peak_rss_mb", "rss_after_load_mb"):
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


def run_bench(models=(), peers=None, reps=3, threads=2, new=128, lengths=PROMPT_LENGTHS,
              contexts=DECODE_CONTEXTS, text=DEFAULT_TEXT, max_busy=0.25, max_reruns=None, quiet_wait_s=20.0,
              bw_mb=1024, bw_reps=5, log=None, timeout=900) -> dict:
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
    prompts = make_prompts(configs[0].model, text, lengths, contexts)
    pp = tmp / "prompts.json"
    pp.write_text(json.dumps(prompts))

    runs = {c.label: [] for c in active}
    reruns_left = {c.label: (reps if max_reruns is None else max_reruns) for c in active}
    busy_warnings = []
    for rep in range(reps):
        queue = list(active)
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


# ------------------------------------------------------------------------------------------------ table
def _fmt(m, key, scale=1.0, digits=0):
    s = (m.get(key) or {})
    if not s:
        return "-"
    med, lo, hi = s["median"] * scale, s["min"] * scale, s["max"] * scale
    if s["n"] > 1 and hi > lo:
        return f"{med:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})"
    return f"{med:.{digits}f}"


def format_table(res: dict) -> str:
    L, C = res["prompt_lengths"], res["decode_contexts"]
    head = (["config", "size MB", "load s"] + [f"TTFT@{x} ms" for x in L] + [f"decode@{x} tok/s" for x in C]
            + [f"fwd/other ms@{C[0]}", "peak RSS MB", f"bound@{C[0]} tok/s (reached)", "busy"])
    rows = []
    for c in res["configs"]:
        if not c["installed"]:
            rows.append([c["label"], "-", c.get("note") or "not installed"] + [""] * (len(head) - 3))
            continue
        m = c.get("metrics", {})
        size = f"{c['size_bytes'] / 1e6:.0f}" if c.get("size_bytes") else "-"
        fo = "-"
        if m.get(f"fwd_ms@{C[0]}"):
            fo = f"{m[f'fwd_ms@{C[0]}']['median']:.2f}/{m[f'other_ms@{C[0]}']['median']:.2f}"
        b = (c.get("bandwidth_bound") or {}).get(str(C[0])) or {}
        bound = f"{b['bound_tps']:.0f} ({b['fraction'] * 100:.0f}%)" if b.get("fraction") else "-"
        busy = c.get("busy_cores") or {}
        busy_s = f"{busy.get('max', 0):.2f}" + (" NOISY" if c.get("noisy") else "")
        rows.append([c["label"], size, _fmt(m, "load_s", 1, 2)] + [_fmt(m, f"ttft_ms@{x}") for x in L]
                    + [_fmt(m, f"tps@{x}", 1, 1) for x in C] + [fo, _fmt(m, "peak_rss_mb"), bound, busy_s])
        if c.get("errors"):
            rows.append(["  error: " + "; ".join(c["errors"])[:150]] + [""] * (len(head) - 1))
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    line = lambda r: "  ".join(str(x).ljust(w) if i == 0 else str(x).rjust(w)  # noqa: E731
                               for i, (x, w) in enumerate(zip(r, widths)))
    out = [line(head), line(["-" * w for w in widths])] + [line(r) for r in rows]
    bw = res["bandwidth"]
    out.append("read bandwidth: " + ", ".join(f"{k.replace('_', ' ')} {v['gbps']:.1f} GB/s" for k, v in bw.items())
               + f"; medians (min-max) of {res['meta']['reps']} reps, {res['meta']['threads']} threads, "
               f"{res['meta']['new_tokens']} new tokens; busy = max cores used by other processes during a run")
    for w in res.get("busy_warnings", []):
        out.append("WARNING: " + w)
    if res.get("noisy_configs"):
        out.append("WARNING: every run of " + ", ".join(res["noisy_configs"]) + f" was disturbed (> "
                   f"{res['meta']['max_busy']} busy cores): those figures are noisy")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------ peers config
def default_peer_config() -> dict:
    """$EDGEAI_PEERS/peer_models.json or /work/peers/peer_models.json (written by setup_peers.sh), else the
    three peers with no model (the table then says why they did not run)."""
    for base in (os.environ.get("EDGEAI_PEERS"), "/work/peers"):
        if base and (Path(base) / "peer_models.json").is_file():
            return json.loads((Path(base) / "peer_models.json").read_text())
    return {"llamacpp": {}, "genai": {}, "optimum": {}}


# ------------------------------------------------------------------------------------------------ retrieval
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
                     + (f"  raw hnswlib {row['raw_recall@10']:.4f} / {row['raw_qps']} QPS" if "raw_qps" in row else ""))
    return "\n".join(lines)
