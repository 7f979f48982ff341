"""The decode engine's targets, checked against a peer runtime in the same command.

Runs `edgeai.bench.run_bench` (one child process per run, configurations interleaved, medians, busy-core
checks) on our model, with its default prompt-lookup drafts and with plain one-token steps
(prompt_lookup=0), and on the peer, then prints the ratios the issues ask for:
  --peer genai     ONNX Runtime GenAI's own int4 build (SmolLM2): decode >= 1.2x, TTFT@512 <= 0.8x, our peak
                   RSS < 250 MB;
  --peer llamacpp  llama.cpp on the very GGUF file our folder was converted from (Qwen2.5-Coder): decode
                   >= 1.3x one token per step and >= 1.6x with drafts, TTFT@512 <= 0.8x, peak RSS <= llama.cpp's,
                   and one-token decode >= 70% of the read-bandwidth bound (bytes per token / measured bandwidth).
The decode prompts are --windows windows of GPL-3 that the model continues (decode tokens/s: geometric mean over
the windows of each window's median); bench/prompt_lookup_bench.py shows how the drafts' gain depends on the
text (large on continuations, small on free chat answers). A peer that is not installed (see
bench/peers/setup_peers.sh) is said so, and our own figures are reported.

    python bench/engine_vs_peers.py [--model smollm2-135m-q4] [--peer genai] [--reps 6] [--windows 4]
    python bench/engine_vs_peers.py --model qwen2.5-coder-0.5b-q4 --peer llamacpp [--peer-python PY]
"""
import argparse
import json
import math
import sys

from edgeai.bench import default_peer_config, run_bench


# ratio targets per peer: decode with drafts, decode one token per step (None: not a target), TTFT@512
TARGETS = {"genai": {"decode": 1.2, "decode_plain": None, "ttft": 0.8},
           "llamacpp": {"decode": 1.6, "decode_plain": 1.3, "ttft": 0.8, "bandwidth": 0.7}}


def source_gguf(model) -> str:
    """The GGUF file a model folder was converted from (its manifest's source)."""
    from pathlib import Path

    from edgeai.pull import resolve_model

    m = json.loads((Path(resolve_model(model)) / "edgeai.json").read_text())
    return (m.get("source") or {}).get("path") or ""


def median(entry, key):
    return ((entry.get("metrics") or {}).get(key) or {}).get("median")


def decode_tps(entry, context, windows):
    """Geometric mean over the decode windows of each window's median tokens/s."""
    keys = [f"tps@{context}"] + [f"tps@{context}#{w}" for w in range(2, windows + 1)]
    vals = [median(entry, k) for k in keys]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if all(vals) else None, vals


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-q4")
    ap.add_argument("--reps", type=int, default=6)
    ap.add_argument("--context", type=int, default=86, help="prompt length before the decode measurement")
    ap.add_argument("--windows", type=int, default=4, help="decode prompts cut from this many places in the text")
    ap.add_argument("--peer", choices=sorted(TARGETS), default="genai")
    ap.add_argument("--peer-python", help="the peer's Python (default: peer_models.json's, else this one)")
    ap.add_argument("--json")
    args = ap.parse_args()

    peers = {k: v for k, v in (default_peer_config() or {}).items() if k == args.peer}
    if args.peer == "llamacpp":  # the same file our folder was converted from
        peers.setdefault("llamacpp", {})["model"] = source_gguf(args.model)
    if args.peer_python:
        peers.setdefault(args.peer, {})["python"] = args.peer_python
    t = TARGETS[args.peer]
    # Our default (prompt-lookup drafts on) and plain one-token-per-step decoding, both against GenAI.
    variants = {"default": args.model, "prompt_lookup=0": {"model": args.model, "prompt_lookup": 0}}
    res = run_bench(models=list(variants.values()), peers=peers, reps=args.reps, lengths=(512,),
                    contexts=(args.context,), windows=args.windows)
    peer = next((c for c in res["configs"] if c["kind"] == args.peer), None)
    have_peer = bool(peer and peer.get("installed"))
    out = {"bench": res, "peer": args.peer, "targets": t}
    if have_peer:
        (p_tps, p_win), p_ttft = decode_tps(peer, args.context, args.windows), median(peer, "ttft_ms@512")
        p_rss = median(peer, "peak_rss_mb")
        out[args.peer] = {"tps": p_tps, "tps_per_window": p_win, "ttft_ms_512": p_ttft, "peak_rss_mb": p_rss}
        print(f"{peer['label']} {peer.get('version')}: decode {p_tps:.1f} tok/s "
              f"(windows: {', '.join(f'{v:.0f}' for v in p_win)}), TTFT@512 {p_ttft:.0f} ms, peak RSS {p_rss:.0f} MB")
    for (name, _), ours in zip(variants.items(), res["configs"]):
        (tps, win), ttft, rss = (decode_tps(ours, args.context, args.windows), median(ours, "ttft_ms@512"),
                                 median(ours, "peak_rss_mb"))
        at_load = median(ours, "peak_rss_after_load_mb")
        bound = (ours.get("bandwidth_bound") or {}).get(str(args.context)) or {}
        out[name] = {"tps": tps, "tps_per_window": win, "ttft_ms_512": ttft, "peak_rss_mb": rss,
                     "peak_rss_after_load_mb": at_load, "bandwidth_bound": bound}
        print(f"edgeai {args.model} ({name}): decode {tps:.1f} tok/s (windows: {', '.join(f'{v:.0f}' for v in win)}), "
              f"TTFT@512 {ttft:.0f} ms, peak RSS {rss:.0f} MB (by the end of loading {at_load or float('nan'):.0f} MB)")
        if bound.get("bound_tps"):
            frac = tps / bound["bound_tps"]
            verdict = "" if name == "default" or "bandwidth" not in t else \
                f" (target >= {t['bandwidth']}: {'met' if frac >= t['bandwidth'] else 'MISSED'})"
            print(f"  bytes per token {bound['bytes_per_token'] / 1e6:.0f} MB at {res['bandwidth_gbps']:.1f} GB/s: "
                  f"bound {bound['bound_tps']:.1f} tok/s, reached {frac:.0%}{verdict}")
        if args.peer == "genai" and name == "default":
            print(f"  peak RSS target < 250 MB: {'met' if rss < 250 else 'MISSED'}")
        if have_peer:
            goal = t["decode"] if name == "default" else t["decode_plain"]
            out[name]["ratios"] = {"decode": tps / p_tps, "ttft_512": ttft / p_ttft, "peak_rss": rss / p_rss}
            line = f"  decode ratio x{tps / p_tps:.2f}"
            if goal:
                line += f" (target >= {goal}: {'met' if tps / p_tps >= goal else 'MISSED'})"
            line += (f"; TTFT@512 ratio x{ttft / p_ttft:.2f} (target <= {t['ttft']}: "
                     f"{'met' if ttft / p_ttft <= t['ttft'] else 'MISSED'})")
            if args.peer == "llamacpp":
                line += f"; peak RSS x{rss / p_rss:.2f} (target <= 1: {'met' if rss <= p_rss else 'MISSED'})"
            print(line)
    if not have_peer:
        print(f"{args.peer} is not installed (bench/peers/setup_peers.sh sets it up): own figures only")
    if res.get("noisy_configs"):
        print("WARNING: noisy machine for " + ", ".join(res["noisy_configs"]), file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
