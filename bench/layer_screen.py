"""Which teacher layers should a `layers:` student keep? Untrained copies scored against the teacher.

Each candidate keeps a set of the teacher's decoder layers (edgeai/distill/student.py: keep_layers) and is run in
torch, as is the whole teacher, on the same held-out text (the opening 1500 characters of every 15th module page
of the `edgeai ask` corpus, as in bench/distill_run.py); both start from the same source weights (GGUF
dequantized to float32). Reported per candidate: mean KL(teacher || candidate) over the next-token distributions
and top-1 agreement. No training: this is the starting point distillation has to repair, a few seconds each.

    nice -n 19 python bench/layer_screen.py [--teacher smollm2-135m] [--tokens 512] [--json out.json]
"""
import argparse
import json
import sys
import time


def ends(n: int, k: int, total: int) -> list:
    """The first k and last k of n layers kept whole, and total - 2k more evenly spread between them."""
    middle = total - 2 * k
    if k < 0 or middle < 0 or total > n:
        raise ValueError(f"cannot keep {k} layers at each end and {total} in all out of {n}")
    inner = [k + int(round((i + 0.5) * (n - 2 * k) / middle - 0.5)) for i in range(middle)]
    return list(range(k)) + inner + list(range(n - k, n))


def candidates(n: int) -> dict:
    """Layer sets of the teacher's n layers: even spacing (what `layers:N` keeps) against ends kept whole."""
    from edgeai.distill.student import kept_layers

    half, two_thirds = n // 2, 2 * n // 3
    k2, k4 = min(2, half // 2), min(4, half // 2)
    return {
        f"layers:{n // 4 + 1} (even)": kept_layers(n, n // 4 + 1),
        f"layers:{half} (even)": kept_layers(n, half),
        f"first {half - 1} + last": list(range(half - 1)) + [n - 1],
        f"ends {k2}+{k2}, even between ({half})": ends(n, k2, half),
        f"ends {k4}+{k4}, even between ({half})": ends(n, k4, half),
        f"ends {(half - 1) // 2}+{(half - 1) // 2}, one between ({half})": ends(n, (half - 1) // 2, half),
        f"layers:{two_thirds} (even)": kept_layers(n, two_thirds),
        f"ends {two_thirds // 2}+{two_thirds // 2} ({two_thirds})": ends(n, two_thirds // 2, two_thirds),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="smollm2-135m")
    ap.add_argument("--tokens", type=int, default=512, help="held-out tokens scored (in sequences of 256)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    import torch
    import torch.nn.functional as F

    from edgeai.distill.student import keep_layers, model_source
    from edgeai.distill.torch_llama import TorchLlama
    from edgeai.evaluate.fidelity import resolve
    from edgeai.retrieval.pydoc_corpus import build_corpus
    from edgeai.tokenizer import Tokenizer

    torch.set_num_threads(a.threads)
    folder = resolve(a.teacher)
    src = model_source(folder)
    pages = sorted(build_corpus().glob("*.md"))
    text = "\n\n".join(p.read_text()[:1500] for i, p in enumerate(pages) if i % 15 == 7)
    seq = min(256, a.tokens)
    ids = Tokenizer.from_folder(folder).encode(text)[: a.tokens // seq * seq]
    x = torch.tensor(ids).view(-1, seq)
    with torch.no_grad():
        t_log = F.log_softmax(TorchLlama.from_source(src)(x).float(), -1)
    rows = {}
    for name, layers in candidates(src.config.num_layers).items():
        t0 = time.perf_counter()
        with torch.no_grad():
            s_log = F.log_softmax(TorchLlama.from_source(keep_layers(src, layers))(x).float(), -1)
        kl = float((t_log.exp() * (t_log - s_log)).sum(-1).mean())
        top1 = float((t_log.argmax(-1) == s_log.argmax(-1)).float().mean())
        rows[name] = {"layers": layers, "n": len(layers), "kl": round(kl, 3), "top1": round(top1, 4)}
        print(f"{name:32s} n={len(layers):2d}  KL {kl:7.3f}  top-1 {top1:6.1%}  ({time.perf_counter() - t0:.0f} s)  "
              f"{layers}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"teacher": str(folder), "tokens": int(x.numel()), "candidates": rows}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
