"""Distilled vs cross-entropy-only student, same steps, compared with `edgeai eval fidelity` on held-out text.

Teacher: SmolLM2-135M (the pulled q4 model; its all-logits twin scores). Student: `layers:N` of the teacher.
Data: the Python documentation corpus that `edgeai ask` builds (edgeai/retrieval/pydoc_corpus.py). Every
15th module page is held out; the training text takes the opening `--chars` characters of each other page
(module summaries, so the few steps a CPU allows see the whole library rather than a few modules). The
held-out text is the opening 1500 characters of each held-out page.

Runs, each as its own process (children of this one, so `nice -n 19 python ...` covers all):
  1. at the same time, so both train under the same load on a shared box:
     edgeai distill ... --alpha A       (KL to the teacher mixed with cross-entropy; teacher targets first)
     edgeai distill ... --alpha 0       (cross-entropy only; same student, data, steps, learning rate, seed)
  2. the untrained `layers:N` student, converted the same way (the starting point of both)
  3. edgeai eval fidelity of each against the teacher on the held-out text (one saved reference)
The work folders keep targets and checkpoints, and finished models and scores are kept, so a rerun resumes
(add --resume to continue training).

    nice -n 19 python bench/distill_run.py --out /tmp/distill-run [--layers 8 --steps 20 ...]
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def start(cmd, log):
    print("$ " + " ".join(map(str, cmd)), flush=True)
    f = open(log, "a")
    f.write("$ " + " ".join(map(str, cmd)) + "\n")
    f.flush()
    return subprocess.Popen([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT)


def sh(cmd, log):
    if start(cmd, log).wait():
        raise SystemExit(f"failed: {' '.join(map(str, cmd))} (see {log})")


def split_corpus(out: Path, chars: int):
    from edgeai.retrieval.pydoc_corpus import build_corpus

    pages = sorted(build_corpus().glob("*.md"))
    held = [p for i, p in enumerate(pages) if i % 15 == 7]
    train = [p for p in pages if p not in held]
    (out / "train.txt").write_text("\n\n".join(p.read_text()[:chars] for p in train))
    (out / "heldout.txt").write_text("\n\n".join(p.read_text()[:1500] for p in held))
    return [p.stem for p in held]


def untrained(teacher, spec, out, quant):
    """The layers:N student before any training, exported exactly like the trained ones."""
    from edgeai.distill.export import export_student
    from edgeai.distill.student import student_source
    from edgeai.convert.weights import as_float

    if Path(out).exists():
        return
    src, desc = student_source(spec, teacher)
    export_student({k: as_float(v) for k, v in src.tensors.items()}, src, Path(str(out) + ".hf"), out,
                   quant=quant, distill_info={"student": desc, "train": {"steps": 0}}, progress=False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--teacher", default="smollm2-135m")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--chars", type=int, default=300)
    ap.add_argument("--quant", default="q8")
    ap.add_argument("--eval-tokens", type=int, default=1024)
    ap.add_argument("--resume", action="store_true")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "log.txt"
    t_all = time.perf_counter()
    held = split_corpus(out, a.chars)
    spec = f"layers:{a.layers}"
    common = ["--data", out / "train.txt", "--steps", a.steps, "--batch", a.batch, "--seq-len", a.seq_len,
              "--lr", a.lr, "--quant", a.quant, "--save-every", 5] + (["--resume"] if a.resume else [])
    runs = [(name, start(["edgeai", "distill", a.teacher, spec, out / name, "--alpha", alpha,
                          "--json", out / f"{name}.json"] + common, out / f"{name}.log"))
            for name, alpha in (("kd", a.alpha), ("ce", 0.0)) if not (out / name / "edgeai.json").is_file()]
    for name, proc in runs:
        if proc.wait():
            raise SystemExit(f"edgeai distill ({name}) failed: see {out / name}.log")
    untrained(a.teacher, spec, out / "untrained", a.quant)
    ref = out / "reference.npz"
    results = {}
    for name in ("untrained", "ce", "kd"):
        args = ["--reference", ref] if ref.is_file() else ["--reference", a.teacher, "--save-reference", ref]
        if not (out / f"fidelity-{name}.json").is_file():
            sh(["edgeai", "eval", "fidelity", *args, "--candidate", out / name, "--text", out / "heldout.txt",
                "--max-tokens", a.eval_tokens, "--json", out / f"fidelity-{name}.json"], log)
        r = json.loads((out / f"fidelity-{name}.json").read_text())
        results[name] = {"kl_mean": r["kl"]["mean"], "kl_median": r["kl"]["median"],
                         "top1": r["top1_agreement"], "ppl": r["ppl_candidate"], "ppl_teacher": r["ppl_reference"],
                         "tokens": r["tokens_scored"]}
    runs = {n: json.loads((out / f"{n}.json").read_text()) for n in ("kd", "ce") if (out / f"{n}.json").is_file()}
    summary = {"held_out_modules": held, "fidelity": results, "student": spec,
               "train": {n: {k: r["train"].get(k) for k in ("steps", "loss", "kl", "ce", "train_tokens",
                                                             "train_seconds", "train_tokens_per_s",
                                                             "peak_memory_bytes")} | {
                             "wall_seconds": r["wall_seconds"], "teacher_target_seconds": r["teacher_target_seconds"]}
                         for n, r in runs.items()},
               "bench_wall_seconds": round(time.perf_counter() - t_all, 1)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    sys.exit(main())
