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
  4. each student as the teacher's speculative-decoding draft (bench/speculative_bench.py's draft_acceptance):
     greedy, --gamma proposals every round, on held-out page openings and chat questions; acceptance, tokens
     per target step, and whether the greedy tokens equal the teacher's alone
The work folders keep targets and checkpoints, and finished models and scores are kept, so a rerun resumes
(add --resume to continue training).

    nice -n 19 python bench/distill_run.py --out /tmp/distill-run [--layers 8 --steps 20 ...]
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


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


def draft_prompts(teacher, held: list, n_text: int, n_chat: int, chars: int = 250) -> list:
    """[(kind, token ids)]: the openings of held-out module pages (the student continues unseen text of its
    training domain) and chat questions rendered with the teacher's template (off its training domain)."""
    from speculative_bench import CHAT

    from edgeai.evaluate.fidelity import resolve
    from edgeai.retrieval.pydoc_corpus import build_corpus
    from edgeai.retrieval.rag import chat_token_ids, plain_copy
    from edgeai.tokenizer import Tokenizer

    tok = Tokenizer.from_folder(resolve(teacher))
    texts = [(build_corpus() / f"{name}.md").read_text()[:chars] for name in held[:n_text]]
    return ([("text", tok.encode(t)) for t in texts]
            + [("chat", chat_token_ids(tok, [{"role": "user", "content": q}], plain_copy(tok))) for q in CHAT[:n_chat]])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--teacher", default="smollm2-135m")
    ap.add_argument("--layers", default="8", help="N (layers:N) or a layer list such as 0-6,15,23-29")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--chars", type=int, default=300)
    ap.add_argument("--quant", default="q8")
    ap.add_argument("--eval-tokens", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads per training process (the two run at once: 1 each on 2 cores)")
    ap.add_argument("--save-every", type=int, default=5)
    ap.add_argument("--draft-prompts", type=int, default=12, help="half held-out page openings, half chat")
    ap.add_argument("--draft-tokens", type=int, default=48, help="max_new_tokens of each draft-stage answer")
    ap.add_argument("--gamma", type=int, default=4, help="draft proposals per target step (fixed)")
    ap.add_argument("--eval-only", default=None, metavar="NAMES",
                    help="no training: score and try as drafts only these finished models (e.g. untrained,ce "
                         "while kd still trains)")
    ap.add_argument("--resume", action="store_true")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "log.txt"
    t_all = time.perf_counter()
    held = split_corpus(out, a.chars)
    spec = f"layers:{a.layers}"
    common = ["--data", out / "train.txt", "--steps", a.steps, "--batch", a.batch, "--seq-len", a.seq_len,
              "--lr", a.lr, "--quant", a.quant, "--save-every", a.save_every] + (["--resume"] if a.resume else []) + (
                  ["--threads", a.threads] if a.threads else [])
    runs = [(name, start(["edgeai", "distill", a.teacher, spec, out / name, "--alpha", alpha,
                          "--json", out / f"{name}.json"] + common, out / f"{name}.log"))
            for name, alpha in (("kd", a.alpha), ("ce", 0.0))
            if not (out / name / "edgeai.json").is_file() and a.eval_only is None]
    for name, proc in runs:
        if proc.wait():
            raise SystemExit(f"edgeai distill ({name}) failed: see {out / name}.log")
    untrained(a.teacher, spec, out / "untrained", a.quant)
    ref = out / "reference.npz"
    results = {}
    names = a.eval_only.split(",") if a.eval_only else ["untrained", "ce", "kd"]
    for name in names:
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
    # 4. each student as a speculative-decoding draft for the teacher (greedy, fixed gamma)
    #    (one model per call and file, so a rerun, or an --eval-only run beside training, keeps what is done)
    from speculative_bench import draft_acceptance

    n_text = a.draft_prompts // 2
    prompts = draft_prompts(a.teacher, held, n_text, a.draft_prompts - n_text)
    summary["draft"] = {}
    for name in names:
        path = out / f"draft-{name}.json"
        if not path.is_file():
            t0 = time.perf_counter()
            r = draft_acceptance(a.teacher, {name: out / name}, prompts, max_new_tokens=a.draft_tokens,
                                 gamma=a.gamma)[name]
            path.write_text(json.dumps({**r, "seconds": round(time.perf_counter() - t0, 1),
                                        "load_average": os.getloadavg()}, indent=1))
        summary["draft"][name] = json.loads(path.read_text())
    (out / ("summary-eval-only.json" if a.eval_only else "summary.json")).write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    sys.exit(main())
