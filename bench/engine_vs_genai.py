"""The decode engine's targets, checked against ONNX Runtime GenAI in the same command.

Runs `edgeai.bench.run_bench` (one child process per run, configurations interleaved, medians, busy-core
checks) on our model, with its default prompt-lookup drafts and with plain one-token steps
(prompt_lookup=0), and on ONNX Runtime GenAI's own int4 build of the same model, then prints the three
ratios the engine issue asks for: decode tokens/s (target >= 1.2x GenAI), time to first token of a
512-token prompt (target <= 0.8x GenAI) and our peak resident memory (target < 250 MB). The decode prompts
are --windows windows of GPL-3 that the model continues (decode tokens/s: geometric mean over the windows of
each window's median); bench/prompt_lookup_bench.py shows how the drafts' gain depends on the text (large on
continuations, small on free chat answers). Where GenAI is not
installed (see bench/peers/setup_peers.sh) it says so and reports our own figures.

    python bench/engine_vs_genai.py [--model smollm2-135m-q4] [--reps 6] [--windows 4] [--json out.json]
"""
import argparse
import json
import math
import sys

from edgeai.bench import default_peer_config, run_bench


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
    ap.add_argument("--json")
    args = ap.parse_args()

    peers = {k: v for k, v in (default_peer_config() or {}).items() if k == "genai"}
    # Our default (prompt-lookup drafts on) and plain one-token-per-step decoding, both against GenAI.
    variants = {"default": args.model, "prompt_lookup=0": {"model": args.model, "prompt_lookup": 0}}
    res = run_bench(models=list(variants.values()), peers=peers, reps=args.reps, lengths=(512,),
                    contexts=(args.context,), windows=args.windows)
    genai = next((c for c in res["configs"] if c["kind"] == "genai"), None)
    have_genai = bool(genai and genai.get("installed"))
    out = {"bench": res}
    if have_genai:
        (g_tps, g_win), g_ttft = decode_tps(genai, args.context, args.windows), median(genai, "ttft_ms@512")
        out["genai"] = {"tps": g_tps, "tps_per_window": g_win, "ttft_ms_512": g_ttft,
                        "peak_rss_mb": median(genai, "peak_rss_mb")}
        print(f"ONNX Runtime GenAI {genai.get('version')}: decode {g_tps:.1f} tok/s "
              f"(windows: {', '.join(f'{v:.0f}' for v in g_win)}), TTFT@512 {g_ttft:.0f} ms, "
              f"peak RSS {out['genai']['peak_rss_mb']:.0f} MB")
    for (name, _), ours in zip(variants.items(), res["configs"]):
        (tps, win), ttft, rss = (decode_tps(ours, args.context, args.windows), median(ours, "ttft_ms@512"),
                                 median(ours, "peak_rss_mb"))
        at_load = median(ours, "peak_rss_after_load_mb")
        out[name] = {"tps": tps, "tps_per_window": win, "ttft_ms_512": ttft, "peak_rss_mb": rss,
                     "peak_rss_after_load_mb": at_load}
        print(f"edgeai {args.model} ({name}): decode {tps:.1f} tok/s (windows: {', '.join(f'{v:.0f}' for v in win)}), "
              f"TTFT@512 {ttft:.0f} ms, peak RSS {rss:.0f} MB (target < 250 MB: {'met' if rss < 250 else 'MISSED'}; "
              f"by the end of loading {at_load or float('nan'):.0f} MB)")
        if have_genai:
            out[name]["ratios"] = {"decode": tps / g_tps, "ttft_512": ttft / g_ttft}
            print(f"  decode ratio x{tps / g_tps:.2f} (target >= 1.2: {'met' if tps / g_tps >= 1.2 else 'MISSED'}); "
                  f"TTFT@512 ratio x{ttft / g_ttft:.2f} (target <= 0.8: {'met' if ttft / g_ttft <= 0.8 else 'MISSED'})")
    if not have_genai:
        print("ONNX Runtime GenAI is not installed (bench/peers/setup_peers.sh sets it up): own figures only")
    if res.get("noisy_configs"):
        print("WARNING: noisy machine for " + ", ".join(res["noisy_configs"]), file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
