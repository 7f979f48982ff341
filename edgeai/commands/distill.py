"""`edgeai distill TEACHER STUDENT OUT --data FILES...`: train a student on a teacher's predictions and
convert it (edgeai.distill.pipeline)."""
from __future__ import annotations


def _distill(args) -> int:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise RuntimeError("edgeai distill trains with torch: pip install 'edgeai[distill]'") from None
    from ..distill.pipeline import distill

    info = distill(args.teacher, args.student, args.out, args.data, work=args.work, steps=args.steps,
                   batch=args.batch, seq_len=args.seq_len, lr=args.lr, alpha=args.alpha,
                   temperature=args.temperature, topk=args.topk, lora=args.lora, seed=args.seed,
                   generate=args.generate, gen_tokens=args.gen_tokens, quant=args.quant, resume=args.resume,
                   force=args.force, save_every=args.save_every, threads=args.threads, device=args.device,
                   stop_after=args.stop_after)
    t = info["train"]
    if "stopped_at" in info:
        print(f"stopped at step {info['stopped_at']} of {args.steps}; continue with --resume")
    else:
        print(f"student written to {info['out']} ({args.quant})")
    print(f"steps {t['steps']}  loss {t['loss']:.4f}  kl {t['kl']:.4f}  ce {t['ce']:.4f}  "
          f"(mean of the last {t['loss_window']} steps)")
    peak = f"{t['peak_memory_bytes'] / 2**20:.0f} MiB" if t["peak_memory_bytes"] else "unknown"
    print(f"training {t['train_seconds']:.0f}s, {t['train_tokens_per_s']} tokens/s on {t['device']}, "
          f"peak memory {peak}; wall {info['wall_seconds']:.0f}s")
    if args.json:
        from ..evaluate.report import save_json

        save_json(info, args.json)
        print(f"saved {args.json}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("distill", help="train a smaller student on a teacher's predictions (needs edgeai[distill])",
                       description="Distil TEACHER into STUDENT on the given texts and write the converted "
                                   "student to OUT. The teacher runs in edgeai's runtime; training needs torch.")
    p.add_argument("teacher", help="teacher model folder or name (e.g. smollm2-135m)")
    p.add_argument("student", help="layers:N (the teacher keeping N of its layers: first, last and evenly spaced "
                                   "between), layers:0-6,15,23-29 (the layers named), or a smaller model sharing "
                                   "the teacher's tokenizer")
    p.add_argument("out", help="output model folder")
    p.add_argument("--data", nargs="+", required=True, metavar="FILE",
                   help='plain-text files, or .jsonl with {"prompt","completion"}, {"messages"} or {"text"} lines')
    p.add_argument("--generate", type=int, default=0, metavar="N",
                   help="the teacher first answers the first N prompts (sequence-level distillation)")
    p.add_argument("--gen-tokens", type=int, default=256, help="longest teacher answer, in tokens")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=4, help="sequences per step")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per training sequence")
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (warm-up, cosine decay)")
    p.add_argument("--alpha", type=float, default=0.5,
                   help="weight of the KL-to-teacher term; the rest is cross-entropy on the text (0: CE only)")
    p.add_argument("--temperature", type=float, default=1.0, help="distillation temperature")
    p.add_argument("--topk", type=int, default=32, help="teacher log-probs kept per position (plus the rest)")
    p.add_argument("--lora", type=int, default=0, metavar="RANK",
                   help="train LoRA updates of this rank instead of every weight (for students too big to train)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quant", default="q4", choices=["q4", "q8", "fp32"], help="quantization of the output model")
    p.add_argument("--work", help="work folder for targets and checkpoints (default: OUT.distill beside OUT)")
    p.add_argument("--resume", action="store_true", help="continue training from the work folder's checkpoint")
    p.add_argument("--save-every", type=int, default=50, help="checkpoint every N steps")
    p.add_argument("--stop-after", type=int, default=None, metavar="N",
                   help="train at most N steps in this run, then stop (resume later with --resume)")
    p.add_argument("--force", action="store_true", help="replace OUT if it holds a model")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when present, else cpu)")
    p.add_argument("--json", metavar="OUT.json", help="save the run's summary as JSON")
    p.set_defaults(func=_distill)
