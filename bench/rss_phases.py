"""Where edgeai's peak RSS goes, phase by phase (issue #14), optionally against another checkout of edgeai.

    python bench/rss_phases.py --model qwen2.5-coder-0.5b-q4 [--reps 3]
    python bench/rss_phases.py --model FOLDER --tree before=/path/to/old/checkout --reps 4 [--json out.json]

Each run is a fresh child process (a peak belongs to one process), doing what bench/engine_vs_peers.py measures:
LLM(folder), an 8-token warm-up, a 512-token prompt (prefill + 1 token: TTFT@512), then 128 new tokens after an
86-token prompt (EOS suppressed, greedy). At each mark the child reads /proc/self/status: VmRSS, RssAnon (heap and
anonymous maps: packed weights, KV cache, activations), RssFile (mapped files: libraries, weight-file pages) and
VmHWM (the peak so far, so a mark whose HWM rose set a new peak during the phase before it). The session build and
the tokenizer load are marked inside LLM() by wrapping OrtForward.__init__ and Tokenizer.from_folder, whatever the
order LLM() calls them in.

--tree LABEL=PATH (repeatable) runs the same children against another edgeai checkout (PYTHONPATH=PATH; copy its
compiled core into PATH/edgeai first), interleaved with this checkout's runs in a rotating order; it prints the
ratios of the medians (peak, TTFT@512, decode tokens/s, load time) and whether the greedy tokens and the logits of
every step (CRC-32, taken in an extra untimed generation after the marks) are identical. The machine's load
average and the busy cores of other processes during each run are printed: speed ratios from a busy box are ratios
of interleaved medians, not speeds.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent  # this checkout
FIELDS = ("VmRSS", "RssAnon", "RssFile", "VmHWM")


# ------------------------------------------------------------------------------------------------ child
def _status() -> dict:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in FIELDS:
                out[key] = int(value.split()[0]) / 1024.0
    return out


def child(model: str, prompts_path: str, new: int, threads: int) -> dict:
    marks = [("start", _status())]
    import onnxruntime  # noqa: F401  (LLM imports it lazily; imported here so the import is its own phase)

    import edgeai
    from edgeai import ort_forward, tokenizer

    marks.append(("imports", _status()))

    def marked(original, label):
        def wrapped(*a, **k):
            result = original(*a, **k)
            marks.append((label, _status()))
            return result
        return wrapped

    ort_forward.OrtForward.__init__ = marked(ort_forward.OrtForward.__init__, "session built")
    tokenizer.Tokenizer.from_folder = classmethod(marked(tokenizer.Tokenizer.from_folder.__func__, "tokenizer loaded"))
    with open(prompts_path) as f:
        prompts = json.load(f)
    t0 = time.perf_counter()
    llm = edgeai.LLM(model, threads=threads, prompt_cache=False)
    load_s = time.perf_counter() - t0
    marks.append(("LLM() returned", _status()))
    no_eos = {int(t): -1e4 for t in llm.eos_token_ids}

    def gen(ids, n):
        return llm.generate(list(ids), max_new_tokens=n, temperature=0.0, logit_bias=dict(no_eos),
                            use_prompt_cache=False)

    gen(prompts["warm"], 8)
    long_prompt = next(iter(prompts["ttft"].values()))
    g = gen(long_prompt, 1)
    ttft = g.timings["ttft_s"]
    marks.append((f"{len(long_prompt)}-token prompt", _status()))
    ctx = next(iter(prompts["decode"]))
    g = gen(prompts["decode"][ctx], new)
    decode_tps = (len(g.token_ids) - 1) / g.timings["decode_s"]
    tokens = list(g.token_ids)
    marks.append((f"{new} new tokens", _status()))
    crc = _logits_crc(llm, lambda: gen(long_prompt, 16).token_ids)
    return {"marks": marks, "load_s": load_s, "ttft_s": ttft, "decode_tps": decode_tps, "tokens": tokens,
            "logits_crc": crc}


def _logits_crc(llm, run):
    """CRC-32 of the logits of every forward step of run() (untimed): each step's rows as the engine reads them."""
    import ctypes
    import zlib  # not hashlib: that would load OpenSSL into the measured process

    fwd, state = llm._forward, {"crc": 0}
    original = fwd._run

    def hooked(first_row, batch, n_tokens, past_lens, past_len, tokens_addr, logits_addr, kv_version, n_logits):
        original(first_row, batch, n_tokens, past_lens, past_len, tokens_addr, logits_addr, kv_version, n_logits)
        rows = batch * n_logits
        state["crc"] = zlib.crc32((ctypes.c_char * (rows * fwd.vocab * 4)).from_address(logits_addr), state["crc"])

    fwd._run = hooked
    try:
        ids = run()
    finally:
        del fwd._run
    return [state["crc"], list(ids)]


# ------------------------------------------------------------------------------------------------ parent
def run_child(python, tree, model, prompts_path, new, threads) -> dict:
    from edgeai.bench import memory

    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [python, str(HERE), "--child", "--model", model, "--prompts", prompts_path, "--new", str(new),
           "--threads", str(threads)]
    ru0, c0 = resource.getrusage(resource.RUSAGE_CHILDREN), memory.cpu_times()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    c1, ru1 = memory.cpu_times(), resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((ln for ln in reversed(p.stdout.splitlines()) if ln.startswith("RESULT ")), None)
    if p.returncode or not line:
        raise SystemExit(f"the run against {tree} failed (exit {p.returncode}): {p.stderr.strip()[-500:]}")
    r = json.loads(line[7:])
    own = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    r["foreign_cores"] = memory.foreign_cores(c0, c1, own)
    return r


def summarize(runs: list) -> dict:
    med = statistics.median
    names = [m[0] for m in runs[0]["marks"]]
    table = {n: {k: med(r["marks"][i][1][k] for r in runs) for k in FIELDS} for i, n in enumerate(names)}
    return {"marks": table, "peak_mb": med(r["marks"][-1][1]["VmHWM"] for r in runs),
            "peak_range_mb": [min(r["marks"][-1][1]["VmHWM"] for r in runs),
                              max(r["marks"][-1][1]["VmHWM"] for r in runs)],
            "ttft_s": med(r["ttft_s"] for r in runs), "decode_tps": med(r["decode_tps"] for r in runs),
            "load_s": med(r["load_s"] for r in runs), "busy_cores": med(r["foreign_cores"] for r in runs),
            "tokens": runs[0]["tokens"], "logits_crc": runs[0]["logits_crc"],
            "same_every_run": all(r["tokens"] == runs[0]["tokens"] and r["logits_crc"] == runs[0]["logits_crc"]
                                  for r in runs), "runs": len(runs)}


def print_summary(label, s):
    print(f"\n{label}: medians of {s['runs']} runs (MiB; busy cores of other processes {s['busy_cores']:.2f})")
    print(f"  {'after':<20}{'VmRSS':>8}{'RssAnon':>9}{'RssFile':>9}{'VmHWM':>8}")
    for name, v in s["marks"].items():
        print(f"  {name:<20}{v['VmRSS']:8.1f}{v['RssAnon']:9.1f}{v['RssFile']:9.1f}{v['VmHWM']:8.1f}")
    lo, hi = s["peak_range_mb"]
    print(f"  peak {s['peak_mb']:.1f} MiB ({lo:.1f}-{hi:.1f}); load {s['load_s']:.2f} s, TTFT@512 "
          f"{1e3 * s['ttft_s']:.0f} ms, decode {s['decode_tps']:.1f} tok/s; same tokens and logits every run: "
          f"{s['same_every_run']}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-q4")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tree", action="append", default=[], metavar="LABEL=PATH",
                    help="another edgeai checkout to run against, interleaved (repeatable)")
    ap.add_argument("--json")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--prompts", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print("RESULT " + json.dumps(child(a.model, a.prompts, a.new, a.threads)), flush=True)
        return
    sys.path.insert(0, str(ROOT))
    from edgeai.bench import make_prompts, run_order
    from edgeai.pull import resolve_model

    trees = []
    for spec in a.tree:
        label, sep, path = spec.partition("=")
        if not sep or not (Path(path) / "edgeai" / "__init__.py").is_file():
            raise SystemExit(f"--tree wants LABEL=PATH with PATH an edgeai checkout, got {spec!r}")
        trees.append((label, Path(path).resolve()))
    trees.append(("this checkout", ROOT))
    try:
        folder = str(resolve_model(a.model))
    except (OSError, ValueError) as exc:
        raise SystemExit(f"--model: {exc}") from None
    runs = {label: [] for label, _ in trees}
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        prompts_path = os.path.join(tmp, "prompts.json")
        with open(prompts_path, "w") as f:
            json.dump(make_prompts(folder, lengths=(512,), contexts=(86,)), f)
        for rep in range(a.reps):
            for label, tree in run_order(trees, rep):
                r = run_child(sys.executable, tree, folder, prompts_path, a.new, a.threads)
                runs[label].append(r)
                print(f"rep {rep + 1} {label}: peak {r['marks'][-1][1]['VmHWM']:.1f} MiB, TTFT@512 "
                      f"{1e3 * r['ttft_s']:.0f} ms, decode {r['decode_tps']:.1f} tok/s, busy {r['foreign_cores']:.2f}",
                      flush=True)
    out = {"model": folder, "reps": a.reps, "loadavg_start": load0, "loadavg_end": os.getloadavg(),
           "trees": {label: str(tree) for label, tree in trees}, "summary": {}}
    for label, _ in trees:
        out["summary"][label] = s = summarize(runs[label])
        print_summary(label, s)
    print(f"\nload average at start {load0[0]:.2f}, at end {out['loadavg_end'][0]:.2f}")
    new = out["summary"]["this checkout"]
    for label, _ in trees[:-1]:
        old = out["summary"][label]
        same = new["tokens"] == old["tokens"] and new["logits_crc"] == old["logits_crc"]
        print(f"this checkout / {label}: peak x{new['peak_mb'] / old['peak_mb']:.3f} "
              f"({new['peak_mb'] - old['peak_mb']:+.1f} MiB), TTFT@512 x{new['ttft_s'] / old['ttft_s']:.3f}, "
              f"decode x{new['decode_tps'] / old['decode_tps']:.3f}, load x{new['load_s'] / old['load_s']:.3f}; "
              f"greedy tokens and every step's logits identical: {same}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
