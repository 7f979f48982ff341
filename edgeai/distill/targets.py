"""Teacher targets: what the teacher predicts at every position of the training sequences, kept on disk.

The teacher runs in edgeai's own runtime (ONNX Runtime), through the all-logits graph that `eval fidelity`
builds (`ensure_all_logits`), so it can be a quantized model and needs no torch. Its full distribution over a
49k-151k vocabulary is far too big to keep per position, so, like the fidelity reference, only the top-k
log-probs and the log of the remaining mass are kept (`topk_with_rest`); the loss compares k+1 bins.

Layout of the targets folder:
  targets.json          what the shards were made from (teacher graph digests, top-k, the token ids' sha256)
                        and {shard file: sha256} of every finished shard
  shard-00000.npz ...   topk_idx int32 [n, seq_len-1, k], topk_lp float32 [n, seq_len-1, k],
                        rest_lp float32 [n, seq_len-1] for sequences [i*shard_size, (i+1)*shard_size)
A shard is written to a temporary file and renamed, then recorded in targets.json (also replaced atomically),
so an interrupted run resumes at the first unrecorded shard and never reads half a file.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from ..manifest import sha256_file

MANIFEST = "targets.json"
FORMAT = 1
SHARD_SIZE = 32  # sequences per shard: the work an interruption can lose


def _teacher_key(teacher_folder: Path) -> dict:
    """What identifies the teacher's predictions: the graph and weight digests its manifest records."""
    m = json.loads((teacher_folder / "edgeai.json").read_text(encoding="utf-8"))
    files = m.get("files") or {}
    return {"graph": files.get("model.onnx"), "weights": files.get("model.onnx.data"),
            "source_sha256": (m.get("source") or {}).get("sha256")}


def _key(teacher_folder: Path, ids: np.ndarray, topk: int, shard_size: int) -> dict:
    return {"format": FORMAT, "teacher": _teacher_key(teacher_folder), "topk": int(topk),
            "shard_size": int(shard_size), "sequences": int(ids.shape[0]), "seq_len": int(ids.shape[1]),
            "ids_sha256": hashlib.sha256(np.ascontiguousarray(ids, np.int32).tobytes()).hexdigest()}


def _write_json(path: Path, obj: dict):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _read_state(out_dir: Path, key: dict) -> dict:
    """{shard name: sha256} already finished for this key; a folder made for something else is an error."""
    path = out_dir / MANIFEST
    if not path.is_file():
        return {}
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is malformed ({exc.msg}); remove the folder to rebuild the targets") from exc
    if old.get("key") != key:
        diff = sorted(k for k in key if (old.get("key") or {}).get(k) != key[k])
        raise ValueError(f"{out_dir} holds teacher targets made from a different {', '.join(diff)}; "
                         f"use another work folder or remove {out_dir}")
    return dict(old.get("shards") or {})


def build_targets(teacher_folder, ids: np.ndarray, out_dir, topk: int = 32, shard_size: int = SHARD_SIZE,
                  threads: int | None = None, progress: bool = True) -> Path:
    """Run the teacher over every sequence of `ids` [n, seq_len] (each from an empty cache) and keep its
    top-k log-probs and rest mass per position, in shards under out_dir; finished shards are kept."""
    from ..evaluate.fidelity import _log_softmax64, chunked_logits, open_session, topk_with_rest

    teacher_folder, out_dir = Path(teacher_folder), Path(out_dir)
    ids = np.ascontiguousarray(ids, np.int32)
    key = _key(teacher_folder, ids, topk, shard_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    done = _read_state(out_dir, key)
    n, seq_len = ids.shape
    names = [f"shard-{i:05d}.npz" for i in range((n + shard_size - 1) // shard_size)]
    todo = [i for i, name in enumerate(names) if name not in done or not (out_dir / name).is_file()]
    if not todo:
        return out_dir
    sess = open_session(teacher_folder, threads)
    if not sess.all_logits:
        raise ValueError(f"{teacher_folder}: the teacher graph returns last-position logits only")
    from tqdm import tqdm

    first = sum(min(shard_size, n - i * shard_size) for i in range(len(names)) if i not in todo)
    bar = tqdm(total=n, initial=first, unit="seq", desc="teacher targets", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    t0, tokens = time.perf_counter(), 0
    try:
        for i in todo:
            rows = ids[i * shard_size:(i + 1) * shard_size]
            parts = []
            for seq in rows:
                (_, lg), = list(chunked_logits(teacher_folder, seq, chunk=seq_len, session=sess))
                parts.append(topk_with_rest(_log_softmax64(lg[:-1]), topk))
                tokens += seq_len
                bar.update(1)
                bar.set_postfix(tok_s=f"{tokens / (time.perf_counter() - t0):.0f}")
            tmp = out_dir / f".{names[i]}.tmp.npz"
            np.savez(tmp, topk_idx=np.stack([p[0] for p in parts]), topk_lp=np.stack([p[1] for p in parts]),
                     rest_lp=np.stack([p[2] for p in parts]).astype(np.float32))
            os.replace(tmp, out_dir / names[i])
            done[names[i]] = sha256_file(out_dir / names[i])
            _write_json(out_dir / MANIFEST, {"key": key, "shards": done})
    finally:
        bar.close()
    return out_dir


class Targets:
    """The finished targets, in memory: top-k ids/log-probs [n, seq_len-1, k] and rest [n, seq_len-1]."""

    def __init__(self, topk_idx, topk_lp, rest_lp, key):
        self.topk_idx, self.topk_lp, self.rest_lp, self.key = topk_idx, topk_lp, rest_lp, key

    @classmethod
    def load(cls, out_dir, teacher_folder, ids: np.ndarray, topk: int, shard_size: int = SHARD_SIZE) -> "Targets":
        """Read every shard, checking each against its recorded sha256 and the key (teacher, ids, top-k)."""
        out_dir = Path(out_dir)
        ids = np.ascontiguousarray(ids, np.int32)
        key = _key(Path(teacher_folder), ids, topk, shard_size)
        done = _read_state(out_dir, key)
        n = ids.shape[0]
        names = [f"shard-{i:05d}.npz" for i in range((n + shard_size - 1) // shard_size)]
        missing = [s for s in names if s not in done]
        if missing:
            raise ValueError(f"{out_dir}: {len(missing)} of {len(names)} target shards are not built yet")
        parts = {"topk_idx": [], "topk_lp": [], "rest_lp": []}
        for s in names:
            path = out_dir / s
            if not path.is_file() or sha256_file(path) != done[s]:
                raise ValueError(f"{path} is missing or does not match its sha256 in {MANIFEST}; "
                                 f"remove it and run again to rebuild it")
            with np.load(path, allow_pickle=False) as z:
                for k in parts:
                    parts[k].append(z[k])
        t = cls(*(np.concatenate(parts[k]) for k in ("topk_idx", "topk_lp", "rest_lp")), key)
        if t.topk_idx.shape[:2] != (n, ids.shape[1] - 1):
            raise ValueError(f"{out_dir}: the shards hold {t.topk_idx.shape[:2]} positions, expected "
                             f"{(n, ids.shape[1] - 1)}")
        return t
