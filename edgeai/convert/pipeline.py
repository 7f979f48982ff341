"""Source (GGUF file, HF folder, SourceModel or recipe name) -> model folder, atomically.

Everything is written into a temporary folder beside the destination and renamed into place at the end, so
an error or Ctrl-C never leaves a half-written model and never damages a model that is already there.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .. import manifest as mf
from ..durable import fsync_path, fsync_tree
from .quantize import ZERO_POINTS
from .weights import SourceModel

QUANTS = ("fp32", "q8", "q4")


class ModelExistsError(FileExistsError):
    """The destination already holds a model and force was not given."""


def build_onnx(source, out_dir, quant="fp32", all_logits=False, max_seq_len=None, precise_mlp_layers=(),
               zero_points="default") -> dict:
    """Indirection to the graph builder (imported late: it pulls in onnx); tests monkeypatch this."""
    from .builder import build_onnx as _build

    return _build(source, Path(out_dir), quant=quant, all_logits=all_logits, max_seq_len=max_seq_len,
                  precise_mlp_layers=precise_mlp_layers, zero_points=zero_points)


CALIBRATION_MESSAGES = [
    {"role": "user", "content": "What is the capital of France? Answer in one sentence, then count to 5."},
    {"role": "assistant", "content": "The capital of France is Paris. 1, 2, 3, 4, 5."},
]


def calibration_layers(source: SourceModel) -> list:
    """Massive-activation layers of `source` on a short chat prompt (see calibrate.py)."""
    from ..tokenizer import Tokenizer
    from .calibrate import massive_activation_layers

    special = {k: v for k, v in (source.special_tokens or {}).items()}
    tok = Tokenizer(source.tokenizer_json, source.chat_template, special)
    try:
        text = tok.apply_chat_template(CALIBRATION_MESSAGES, add_generation_prompt=False)
    except Exception:  # a template that rejects these roles: plain text still shows the big outliers
        text = "\n".join(m["content"] for m in CALIBRATION_MESSAGES)
    ids = tok.encode(text)[:256]
    return massive_activation_layers(source, ids)


def load_source(src) -> SourceModel:
    """A SourceModel from a SourceModel, a .gguf file, a Hugging Face folder or hub id, or a recipe name."""
    if isinstance(src, SourceModel):
        return src
    p = Path(src)
    if p.is_file():
        from .gguf_source import load_gguf
        return load_gguf(p)
    if p.is_dir():
        from .hf_source import load_hf_folder
        return load_hf_folder(p)
    from ..recipes import list_recipes
    if str(src) in list_recipes():
        from ..pull import fetch_source
        return load_source(fetch_source(str(src)))
    if "/" in str(src) and not str(src).startswith((".", "/", "~")):  # a Hugging Face hub id
        from .hf_source import load_hf_folder
        return load_hf_folder(str(src))
    raise FileNotFoundError(f"no such model source: {src} (not a file, folder or known model name)")


def tokenizer_section(source: SourceModel) -> dict:
    """The manifest's tokenizer entry: chat template, special tokens and the ids that end generation."""
    from ..tokenizer import Tokenizer

    sp = source.special_tokens or {}
    tok = Tokenizer(source.tokenizer_json, source.chat_template, sp)
    ids = {k: (tok.token_to_id(sp[k]) if sp.get(k) else None) for k in ("bos", "eos", "pad", "unk")}
    probe = tok.encode("a", add_special_tokens=True)
    return {"chat_template": source.chat_template,
            **{f"{k}_token": sp.get(k) for k in ("bos", "eos", "pad", "unk")},
            **{f"{k}_token_id": ids[k] for k in ("bos", "eos", "pad", "unk")},
            "eos_token_ids": tok.eos_token_ids,
            "adds_bos": bool(ids["bos"] is not None and probe[:1] == [ids["bos"]])}


def _check_out_dir(out_dir: Path, force: bool):
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ModelExistsError(f"{out_dir} exists and is not a folder")
        if any(out_dir.iterdir()) and not force:
            what = "a model" if mf.is_model_folder(out_dir) else "files"
            raise ModelExistsError(f"{out_dir} already holds {what}; use --force (force=True) to replace it")


def make_temp_dir(out_dir: Path) -> Path:
    """A fresh folder beside out_dir (same filesystem, so the final rename is atomic)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; a model folder should read like any other
    return tmp


def _swap_into_place(tmp: Path, out_dir: Path):
    """Rename tmp to out_dir; an existing out_dir is moved aside first and removed only after success."""
    fsync_tree(tmp)  # also: dirty page-cache pages would stay resident in every process mapping the weights
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        out_dir.rename(old)
    try:
        tmp.rename(out_dir)
    except BaseException:
        if old is not None:
            old.rename(out_dir)
        raise
    fsync_path(out_dir.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def convert(src, out_dir, quant: str = "q4", force: bool = False, all_logits: bool = False,
            max_seq_len: int | None = None, progress: bool = True, zero_points: str = "default") -> Path:
    """Convert `src` into the model folder `out_dir` (model.onnx, model.onnx.data, tokenizer.json, edgeai.json).
    zero_points: where exact GGUF Q4_1 mappings put their zero points ("default": faster decode; "per-block":
    slightly closer to the source), or "symmetric": re-quantize every weight, the q4 head too, to symmetric
    blocks (ONNX Runtime GenAI's form: faster still, lossy), see convert.quantize."""
    if quant not in QUANTS:
        raise ValueError(f"quant must be one of {', '.join(QUANTS)}, not {quant!r}")
    if zero_points not in ZERO_POINTS:
        raise ValueError(f"zero_points must be one of {', '.join(ZERO_POINTS)}, not {zero_points!r}")
    out_dir = Path(out_dir).expanduser().absolute()
    _check_out_dir(out_dir, force)  # fail before the (slow) load, and again before the swap
    steps = _Steps(progress)
    try:
        _convert(src, out_dir, quant, force, all_logits, max_seq_len, steps, zero_points)
    except BaseException:
        steps.abort()
        raise
    steps.done()
    return out_dir


def _convert(src, out_dir: Path, quant, force, all_logits, max_seq_len, steps, zero_points):
    steps("read source")
    source = load_source(src)
    if not source.tokenizer_json:
        raise ValueError("the source has no tokenizer (tokenizer_json is empty)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(out_dir)
    try:
        precise = []
        if quant != "fp32":
            steps("calibrate (find massive-activation layers)")
            precise = calibration_layers(source)
        steps(f"build ONNX graph ({quant})")
        graph = build_onnx(source, tmp, quant=quant, all_logits=all_logits, max_seq_len=max_seq_len,
                           precise_mlp_layers=precise, zero_points=zero_points)
        steps("write tokenizer and manifest")
        (tmp / "tokenizer.json").write_text(source.tokenizer_json, encoding="utf-8")
        cfg = source.config
        mf.write_manifest(tmp, {
            "kind": "llm",
            "architecture": cfg.architecture,
            "config": cfg.to_dict(),
            "kv_cache": {"num_layers": cfg.num_layers, "num_kv_heads": cfg.num_kv_heads,
                         "head_dim": cfg.head_dim, "dtype": "float32",
                         "layout": "batch, kv_heads, seq, head_dim",
                         "max_seq_len": (graph or {}).get("max_seq_len", max_seq_len or cfg.max_position_embeddings)},
            "graph": graph,
            "quantization": {"mode": quant, "source_weights": source.source.get("file_type") or "float"},
            "tokenizer": tokenizer_section(source),
            "source": {k: source.source.get(k) for k in ("path", "sha256", "format", "name")},
        })
        mf.load_manifest(tmp, verify_digests=False)  # the folder we wrote must pass our own checks
        _check_out_dir(out_dir, force)
        _swap_into_place(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


class _Steps:
    """One line per stage on stderr, with the time each took (conversion stages are coarse and few)."""

    def __init__(self, on: bool):
        self.on, self.t = on, None

    def __call__(self, what: str):
        self._end()
        self.t = time.time()
        if self.on:
            print(f"  {what} ...", end="", file=sys.stderr, flush=True)

    def _end(self):
        if self.on and self.t is not None:
            print(f" {time.time() - self.t:.1f}s", file=sys.stderr, flush=True)

    def done(self):
        self._end()
        self.t = None

    def abort(self):
        if self.on and self.t is not None:
            print(" failed", file=sys.stderr, flush=True)
        self.t = None


def folder_size(folder) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
