"""`edgeai distill`: teacher answers (optional) -> teacher targets -> training -> export, all resumable.

Everything between the inputs and the final model lives in a work folder (default: OUT beside, `OUT.distill/`):
  answers.jsonl   the teacher's answers with --generate (generate.py)
  targets/        the teacher's top-k + rest log-probs per position (targets.py)
  checkpoint.pt   the training state (train.py)
  student-hf/     the trained student as a Hugging Face folder, the source of the converted model in OUT
A rerun with the same inputs reuses finished answers and target shards; `resume=True` continues training
from the checkpoint (without it, an existing checkpoint is an error, so no run is overwritten by accident).
"""
from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

from ..evaluate.fidelity import ensure_all_logits, resolve


def work_folder(out, work=None) -> Path:
    out = Path(out).expanduser().absolute()
    return Path(work).expanduser().absolute() if work else out.with_name(out.name + ".distill")


def prepare(teacher, data, seq_len: int = 256, generate: int = 0, gen_tokens: int = 256, work=None,
            out=None, threads=None, progress: bool = True):
    """(teacher model folder, teacher all-logits folder, token sequences [n, seq_len], data description)."""
    import numpy as np

    from ..tokenizer import Tokenizer
    from .data import data_digest, read_documents, token_sequences
    from .generate import teacher_answers

    data = [Path(f) for f in data]
    docs = read_documents(data)
    teacher_folder = resolve(teacher)
    scorer = ensure_all_logits(teacher_folder, progress=progress)
    if generate:
        docs = teacher_answers(teacher_folder, docs, generate, work_folder(out, work), gen_tokens,
                               threads=threads, progress=progress)
    ids = token_sequences(docs, Tokenizer.from_folder(teacher_folder), seq_len)
    desc = {"files": [str(f) for f in data], "sha256": data_digest(data), "documents": len(docs),
            "teacher_answers": int(min(generate, len(docs))) if generate else 0,
            "sequences": int(ids.shape[0]), "seq_len": int(seq_len), "tokens": int(ids.size),
            "ids_sha256": hashlib.sha256(np.ascontiguousarray(ids, np.int32).tobytes()).hexdigest()}
    return teacher_folder, scorer, ids, desc


def distill(teacher, student, out, data, *, work=None, steps: int = 200, batch: int = 4, seq_len: int = 256,
            lr: float = 1e-4, alpha: float = 0.5, temperature: float = 1.0, topk: int = 32, lora: int = 0,
            lora_alpha: float | None = None, seed: int = 0, generate: int = 0, gen_tokens: int = 256,
            quant: str = "q4", resume: bool = False, force: bool = False, save_every: int = 50,
            threads: int | None = None, device: str | None = None, progress: bool = True,
            stop_after: int | None = None) -> dict:
    """Distil `teacher` into `student` (`layers:N` or a model sharing its tokenizer) on `data`; write the
    converted student to `out`. Returns a summary (also stored in out's manifest under "distill").
    stop_after: train at most that many steps in this call and stop without exporting (checkpoint kept)."""
    from ..convert.pipeline import QUANTS, _check_out_dir
    from .student import student_source
    from .targets import SHARD_SIZE, Targets, build_targets
    from .train import CHECKPOINT, TrainConfig, Trainer

    if quant not in QUANTS:
        raise ValueError(f"quant must be one of {', '.join(QUANTS)}, not {quant!r}")
    out = Path(out).expanduser().absolute()
    _check_out_dir(out, force)
    wd = work_folder(out, work)
    cfg = TrainConfig(steps=steps, batch=batch, lr=lr, alpha=alpha, temperature=temperature, lora=lora,
                      lora_alpha=lora_alpha, seed=seed)
    cfg.check()
    if (wd / CHECKPOINT).is_file() and not resume:
        raise ValueError(f"{wd} already holds a training checkpoint; pass --resume to continue it, or "
                         f"remove {wd / CHECKPOINT} to start over")
    t_start = time.perf_counter()
    teacher_folder, scorer, ids, data_desc = prepare(teacher, data, seq_len, generate, gen_tokens, work, out,
                                                     threads, progress)
    student_src, student_desc = student_source(student, teacher_folder)
    targets = None
    target_seconds = 0.0
    if alpha > 0:
        t0 = time.perf_counter()
        build_targets(scorer, ids, wd / "targets", topk, SHARD_SIZE, threads=threads, progress=progress)
        target_seconds = time.perf_counter() - t0
        targets = Targets.load(wd / "targets", scorer, ids, topk, SHARD_SIZE)
    run_key = {"student": student_desc, "data": data_desc["ids_sha256"], "teacher": str(teacher_folder),
               "topk": topk if alpha > 0 else None}
    trainer = Trainer(student_src, ids, cfg, wd, targets=targets, run_key=run_key, device=device,
                      threads=threads)
    if resume and (wd / CHECKPOINT).is_file():
        trainer.load()
        if progress:
            print(f"resumed from {wd / CHECKPOINT} at step {trainer.step}", file=sys.stderr)
    summary = trainer.run(save_every=save_every, progress=progress, stop_after=stop_after)
    info = {"teacher": {"model": str(teacher), "folder": str(teacher_folder)}, "student": student_desc,
            "data": data_desc, "train": {**cfg.__dict__, "topk": topk if alpha > 0 else None, **summary},
            "teacher_target_seconds": round(target_seconds, 1),
            "wall_seconds": round(time.perf_counter() - t_start, 1), "work_folder": str(wd)}
    if trainer.step < cfg.steps:
        info["stopped_at"] = trainer.step
        return info
    from .export import export_student

    export_student(trainer.model.merged_tensors(), student_src, wd / "student-hf", out, quant=quant,
                   force=force, distill_info=info, progress=progress)
    info["out"] = str(out)
    return info
