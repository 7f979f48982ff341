"""The training loop: AdamW on the distillation loss, a progress bar, checkpoints, and --resume to the same state.

Resuming gives exactly the state an uninterrupted run would have: the batch of step s is a pure function of
(seed, s) (a seeded permutation per pass over the data), and the checkpoint holds the trainable weights, the
optimizer's moments and the step; the frozen weights are rebuilt from the source. The checkpoint also records
the run's settings and data digests, and a resume with other settings is refused rather than mixing two runs.
Checkpoints are written to a temporary file and renamed.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .loss import distill_loss
from .torch_llama import TorchLlama

CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainConfig:
    steps: int = 200
    batch: int = 4
    lr: float = 1e-4
    alpha: float = 0.5          # weight of the KL term; 0 trains on cross-entropy only
    temperature: float = 1.0
    lora: int = 0               # LoRA rank; 0 = full fine-tune
    lora_alpha: float | None = None
    weight_decay: float = 0.0
    warmup: int = 0             # warm-up steps (default: 5% of steps)
    seed: int = 0

    def check(self):
        if self.steps < 1 or self.batch < 1:
            raise ValueError("steps and batch must be at least 1")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be between 0 and 1, not {self.alpha}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, not {self.temperature}")
        if self.lr <= 0:
            raise ValueError(f"learning rate must be positive, not {self.lr}")


def batch_indices(step: int, batch: int, n: int, seed: int) -> np.ndarray:
    """The sequence indices of training step `step`: consecutive slots of a seeded permutation per pass."""
    slots = np.arange(step * batch, (step + 1) * batch)
    out = np.empty(batch, np.int64)
    for p in np.unique(slots // n):
        order = np.random.default_rng([seed, int(p)]).permutation(n)
        sel = slots // n == p
        out[sel] = order[slots[sel] % n]
    return out


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    warm = cfg.warmup or max(1, cfg.steps // 20)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    t = (step - warm) / max(1, cfg.steps - warm)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def pick_device(device: str | None = None, threads: int | None = None) -> torch.device:
    """CUDA when present (or asked for), else the CPU with all its cores."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(threads or os.cpu_count() or 1)
    return torch.device(device)


def _atomic_save(obj, path):
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _trainable(model) -> dict:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


class Trainer:
    def __init__(self, source, ids: np.ndarray, cfg: TrainConfig, work_dir, targets=None, run_key=None,
                 device=None, threads=None):
        cfg.check()
        if cfg.alpha > 0 and targets is None:
            raise ValueError("alpha > 0 needs teacher targets")
        self.cfg, self.ids, self.targets = cfg, np.ascontiguousarray(ids, np.int64), targets
        self.work_dir = work_dir
        self.device = pick_device(device, threads)
        torch.manual_seed(cfg.seed)
        self.model = TorchLlama.from_source(source)
        if cfg.lora:
            self.model.add_lora(cfg.lora, cfg.lora_alpha, seed=cfg.seed)
        self.model.to(self.device).train()
        self.params = _trainable(self.model)
        self.opt = torch.optim.AdamW(self.params.values(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.step, self.history, self.seconds = 0, [], 0.0
        # what a checkpoint must agree on to be resumed
        self.run_key = {"train": asdict(cfg), **(run_key or {})}

    # ------------------------------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_path(self):
        return self.work_dir / CHECKPOINT

    def save(self):
        self.work_dir.mkdir(parents=True, exist_ok=True)
        _atomic_save({"step": self.step, "run_key": self.run_key, "history": self.history,
                      "seconds": self.seconds,
                      "trainable": {n: p.detach().cpu() for n, p in self.params.items()},
                      "optimizer": self.opt.state_dict()}, self.checkpoint_path)

    def load(self):
        path = self.checkpoint_path
        if not path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {path}")
        try:
            ck = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a damaged file is named, not a traceback
            raise ValueError(f"{path} cannot be read ({exc}); remove it to start over") from exc
        if ck.get("run_key") != self.run_key:
            old, new = ck.get("run_key") or {}, self.run_key
            diff = _diff(old, new)
            raise ValueError(f"{path} is from a run with other settings ({diff}); resume with the same "
                             f"settings, or use another work folder")
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(ck["trainable"][n].to(p.device))
        self.opt.load_state_dict(ck["optimizer"])
        self.step, self.history, self.seconds = ck["step"], list(ck["history"]), float(ck["seconds"])

    # ------------------------------------------------------------------------------------------ training
    def _batch(self, step):
        idx = batch_indices(step, self.cfg.batch, len(self.ids), self.cfg.seed)
        ids = torch.from_numpy(self.ids[idx]).to(self.device)
        if self.targets is None:
            return ids, None, None, None
        t = self.targets
        return ids, *(torch.from_numpy(np.ascontiguousarray(a[idx])).to(self.device)
                      for a in (t.topk_idx, t.topk_lp, t.rest_lp))

    def train_step(self) -> dict:
        cfg = self.cfg
        for g in self.opt.param_groups:
            g["lr"] = lr_at(self.step, cfg)
        ids, idx, lp, rest = self._batch(self.step)
        logits = self.model(ids)
        loss, kl, ce = distill_loss(logits, ids, idx, lp, rest, cfg.temperature, cfg.alpha)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params.values(), 1.0)
        self.opt.step()
        self.step += 1
        rec = {"step": self.step, "loss": loss.item(), "kl": kl.item(), "ce": ce.item()}
        self.history.append(rec)
        return rec

    def run(self, save_every: int = 50, progress: bool = True, stop_after: int | None = None) -> dict:
        """Train up to cfg.steps (or stop_after more steps), checkpointing every save_every steps and at the end."""
        from tqdm import tqdm

        end = self.cfg.steps if stop_after is None else min(self.cfg.steps, self.step + stop_after)
        tokens_per_step = self.cfg.batch * self.ids.shape[1]
        bar = tqdm(total=self.cfg.steps, initial=self.step, unit="step", desc="train", disable=not progress,
                   file=sys.stderr, dynamic_ncols=True)
        t0, first = time.perf_counter(), self.step
        try:
            while self.step < end:
                rec = self.train_step()
                elapsed = time.perf_counter() - t0
                bar.update(1)
                bar.set_postfix(loss=f"{rec['loss']:.3f}", kl=f"{rec['kl']:.3f}", ce=f"{rec['ce']:.3f}",
                                tok_s=f"{(self.step - first) * tokens_per_step / elapsed:.0f}")
                if self.step % save_every == 0 or self.step == end:
                    self.seconds += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    first = self.step
                    self.save()
        finally:
            bar.close()
        return self.summary()

    def summary(self) -> dict:
        last = self.history[-20:]
        mean = (lambda k: float(np.mean([r[k] for r in last])) if last else None)
        tokens = self.step * self.cfg.batch * self.ids.shape[1]
        peak = torch.cuda.max_memory_allocated() if self.device.type == "cuda" else _peak_rss()
        return {"steps": self.step, "loss": mean("loss"), "kl": mean("kl"), "ce": mean("ce"),
                "loss_window": len(last), "train_tokens": tokens, "train_seconds": round(self.seconds, 1),
                "train_tokens_per_s": round(tokens / self.seconds, 1) if self.seconds else None,
                "peak_memory_bytes": peak, "device": str(self.device),
                "trainable_parameters": int(sum(p.numel() for p in self.params.values()))}


def _peak_rss():
    """Peak resident memory of this process in bytes (the whole run: teacher targets too), None where unknown."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def _diff(old: dict, new: dict, prefix="") -> str:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            d = _diff(a, b, f"{prefix}{k}.")
            if d:
                out.append(d)
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return "; ".join(out)
