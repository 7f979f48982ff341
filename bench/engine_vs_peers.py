"""The decode engine's targets, checked against peer runtimes in the same command.

Runs `edgeai.bench.run_bench` (one child process per run, configurations interleaved, medians, busy-core
checks) on our model, with its default prompt-lookup drafts and with plain one-token steps
(prompt_lookup=0), and on each peer (--peer, repeatable: all peers run interleaved in one command), then prints
the ratios the issues ask for:
  --peer genai     ONNX Runtime GenAI's own int4 build of the same weights (SmolLM2 targets: decode >= 1.2x,
                   TTFT@512 <= 0.8x, our peak RSS < 250 MB); for another model give its build with
                   --peer-model genai=DIR (bench/peers/setup_peers.sh with MODEL=... builds it);
  --peer llamacpp  llama.cpp on the very GGUF file our folder was converted from (Qwen2.5-Coder): decode
                   >= 1.3x one token per step and >= 1.6x with drafts, TTFT@512 <= 0.8x, peak RSS <= llama.cpp's,
                   and one-token decode >= 70% of the read-bandwidth bound (bytes per token / measured bandwidth).
The decode prompts are --windows windows of GPL-3 that the model continues (decode tokens/s: geometric mean over
the windows of each window's median); bench/prompt_lookup_bench.py shows how the drafts' gain depends on the
text (large on continuations, small on free chat answers). A peer that is not installed (see
bench/peers/setup_peers.sh) is said so, and our own figures are reported.

    python bench/engine_vs_peers.py [--model smollm2-135m-q4] [--peer genai] [--reps 6] [--windows 4]
    python bench/engine_vs_peers.py --model qwen2.5-coder-0.5b-q4 --peer llamacpp [--peer-python PY]
    python bench/engine_vs_peers.py --model FOLDER --peer genai --peer llamacpp \
        --peer-model genai=/work/peers/genai-int4-qwen05 --reps 3 --windows 2
"""
import argparse
import json
import math
import sys

from edgeai.bench import apply_peer_overrides, default_peer_config, run_bench


# ratio targets per peer: decode with drafts, decode one token per step (None: not a target), TTFT@512
TARGETS = {"genai": {"decode": 1.2, "decode_plain": None, "ttft": 0.8},
           "llamacpp": {"decode": 1.6, "decode_plain": 1.3, "ttft": 0.8, "bandwidth": 0.7}}


def manifest(model) -> dict:
    from pathlib import Path

    from edgeai.pull import resolve_model

    return json.loads((Path(resolve_model(model)) / "edgeai.json").read_text())


def source_gguf(model) -> str:
    """The GGUF file a model folder was converted from (its manifest's source)."""
    return (manifest(model).get("source") or {}).get("path") or ""


def median(entry, key):
    return ((entry.get("metrics") or {}).get(key) or {}).get("median")


def decode_tps(entry, context, windows):
    """Geometric mean over the decode windows of each window's median tokens/s."""
    keys = [f"tps@{context}"] + [f"tps@{context}#{w}" for w in range(2, windows + 1)]
    vals = [median(entry, k) for k in keys]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if all(vals) else None, vals


def peer_spec(args) -> dict:
    """{kind: {"python", "model"}} for the chosen peers: peer_models.json (setup_peers.sh), llama.cpp on our
    folder's own source GGUF, then --peer-model / --peer-python overrides (edgeai bench's own parsing)."""
    spec = {k: dict(v) for k, v in (default_peer_config() or {}).items() if k in args.peer}
    for kind in args.peer:
        spec.setdefault(kind, {})
    if "llamacpp" in args.peer:  # the same file our folder was converted from
        spec["llamacpp"]["model"] = source_gguf(args.model)
    spec = apply_peer_overrides(spec, args.peer_model, args.peer_python)
    check_same_model(args.model, spec)
    return spec


def check_same_model(model, spec):
    """A genai build of another model (peer_models.json's SmolLM2 build, or the other Qwen size) would measure
    something else, or be fed token ids outside its vocabulary: refuse that by name."""
    from pathlib import Path

    c = manifest(model)["config"]
    ours = (c["vocab_size"], c["hidden_size"], c["num_layers"])
    gcfg = Path((spec.get("genai") or {}).get("model") or "/nonexistent") / "genai_config.json"
    if gcfg.is_file():
        g = json.loads(gcfg.read_text())["model"]
        theirs = (g.get("vocab_size"), g["decoder"].get("hidden_size"), g["decoder"].get("num_hidden_layers"))
        if theirs != ours:
            raise SystemExit(f"the genai model {gcfg.parent} (vocabulary, hidden size, layers: {theirs}) is not "
                             f"the model of {model} ({ours}); give its own build with --peer-model genai=DIR")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-q4")
    ap.add_argument("--reps", type=int, default=6)
    ap.add_argument("--context", type=int, default=86, help="prompt length before the decode measurement")
    ap.add_argument("--windows", type=int, default=4, help="decode prompts cut from this many places in the text")
    ap.add_argument("--peer", choices=sorted(TARGETS), action="append",
                    help="peer to run against (repeatable; default genai)")
    ap.add_argument("--peer-model", action="append", metavar="KIND=PATH",
                    help="a peer's model (default: peer_models.json's; llama.cpp: our folder's source GGUF)")
    ap.add_argument("--peer-python", action="append", metavar="[KIND=]PYTHON",
                    help="a peer's Python, or every peer's (default: peer_models.json's, else this one)")
    ap.add_argument("--max-busy", type=float, default=0.25,
                    help="other processes' cores above which a run counts as disturbed (and is re-run)")
    ap.add_argument("--max-reruns", type=int, default=None, help="re-runs of disturbed runs per configuration "
                    "(default: --reps; 0 on a shared box, where every run is disturbed)")
    ap.add_argument("--quiet-wait", type=float, default=20.0, help="seconds to wait for a quiet machine before a run")
    ap.add_argument("--json")
    args = ap.parse_args()
    args.peer = list(dict.fromkeys(args.peer or ["genai"]))

    peers = peer_spec(args)
    # Our default (prompt-lookup drafts on) and plain one-token-per-step decoding, both against the peers.
    variants = {"default": args.model, "prompt_lookup=0": {"model": args.model, "prompt_lookup": 0}}
    res = run_bench(models=list(variants.values()), peers=peers, reps=args.reps, lengths=(512,),
                    contexts=(args.context,), windows=args.windows, max_busy=args.max_busy,
                    max_reruns=args.max_reruns, quiet_wait_s=args.quiet_wait)
    out = {"bench": res, "peers": args.peer, "targets": {k: TARGETS[k] for k in args.peer}}
    got = {}  # kind -> the peer's medians
    for kind in args.peer:
        peer = next((c for c in res["configs"] if c["kind"] == kind), None)
        if not (peer and peer.get("installed")):
            print(f"{kind} is not installed or its model is missing ({(peer or {}).get('note')}; "
                  f"bench/peers/setup_peers.sh sets it up): no ratios against it")
            continue
        (p_tps, p_win), p_ttft = decode_tps(peer, args.context, args.windows), median(peer, "ttft_ms@512")
        p_rss = median(peer, "peak_rss_mb")
        got[kind] = out[kind] = {"model": peer.get("model"), "tps": p_tps, "tps_per_window": p_win,
                                 "ttft_ms_512": p_ttft, "peak_rss_mb": p_rss,
                                 "greedy_prefix_match": peer.get("greedy_prefix_match")}
        print(f"{peer['label']} {peer.get('version')}: decode {p_tps:.1f} tok/s "
              f"(windows: {', '.join(f'{v:.0f}' for v in p_win)}), TTFT@512 {p_ttft:.0f} ms, peak RSS {p_rss:.0f} MB")
    small = "smollm2" in ((manifest(args.model).get("source") or {}).get("name") or "").lower()
    for (name, _), ours in zip(variants.items(), res["configs"]):
        (tps, win), ttft, rss = (decode_tps(ours, args.context, args.windows), median(ours, "ttft_ms@512"),
                                 median(ours, "peak_rss_mb"))
        at_load = median(ours, "peak_rss_after_load_mb")
        bound = (ours.get("bandwidth_bound") or {}).get(str(args.context)) or {}
        out[name] = {"tps": tps, "tps_per_window": win, "ttft_ms_512": ttft, "peak_rss_mb": rss,
                     "peak_rss_after_load_mb": at_load, "bandwidth_bound": bound, "ratios": {}}
        print(f"edgeai {args.model} ({name}): decode {tps:.1f} tok/s (windows: {', '.join(f'{v:.0f}' for v in win)}), "
              f"TTFT@512 {ttft:.0f} ms, peak RSS {rss:.0f} MB (by the end of loading {at_load or float('nan'):.0f} MB)")
        if bound.get("bound_tps"):
            frac = tps / bound["bound_tps"]
            verdict = "" if name == "default" or "llamacpp" not in args.peer else \
                f" (target >= {TARGETS['llamacpp']['bandwidth']}: " \
                f"{'met' if frac >= TARGETS['llamacpp']['bandwidth'] else 'MISSED'})"
            print(f"  bytes per token {bound['bytes_per_token'] / 1e6:.0f} MB at {res['bandwidth_gbps']:.1f} GB/s: "
                  f"bound {bound['bound_tps']:.1f} tok/s, reached {frac:.0%}{verdict}")
        if "genai" in args.peer and name == "default" and small:  # the SmolLM2 issue's absolute target
            print(f"  peak RSS target < 250 MB: {'met' if rss < 250 else 'MISSED'}")
        for kind, p in got.items():
            t = TARGETS[kind]
            goal = t["decode"] if name == "default" else t["decode_plain"]
            r = out[name]["ratios"][kind] = {"decode": tps / p["tps"], "ttft_512": ttft / p["ttft_ms_512"],
                                             "peak_rss": rss / p["peak_rss_mb"]}
            line = f"  vs {kind}: decode x{r['decode']:.2f}"
            if goal:
                line += f" (target >= {goal}: {'met' if r['decode'] >= goal else 'MISSED'})"
            line += (f"; TTFT@512 x{r['ttft_512']:.2f} (target <= {t['ttft']}: "
                     f"{'met' if r['ttft_512'] <= t['ttft'] else 'MISSED'}); peak RSS x{r['peak_rss']:.2f}")
            if kind == "llamacpp":
                line += f" (target <= 1: {'met' if rss <= p['peak_rss_mb'] else 'MISSED'})"
            print(line)
    if res.get("noisy_configs") or res.get("busy_warnings"):
        print("WARNING: busy machine: other processes used CPU during the runs of "
              + (", ".join(res.get("noisy_configs") or []) or "some configurations")
              + "; the figures are not clean", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
