"""Convert a Hugging Face BERT sentence-transformer folder (safetensors) into an edgeai embedding model folder.

Entry point used by `edgeai pull` recipes: `convert_folder(src_folder, out_dir, quant)`.

Output folder:
  model.onnx        fp32 encoder with pooling + normalisation in-graph (always written: the reference)
  model.q8.onnx     dense layers as MatMulNBits (8-bit weights, blocks of 32, int8 compute), written when
                    quant="q8" and kept only if its cosine to fp32 is >= 0.99 on real text
  tokenizer.json    the source tokenizer with padding/truncation stripped (the Embedder sets them)
  edgeai.json       manifest: kind, dims, max_length, pooling, normalize, quant, files, digests, versions
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..manifest import sha256_file
from .bert_graph import BertConfig, build_bert_graph

QUANTS = ("fp32", "q8", "int8", "q4")  # int8 is an alias of q8; q4 also gives q8 (4-bit hurts embeddings)
MIN_QUANT_COSINE = 0.99
# Calibration/check sentences for the quantized model: varied length, domain and punctuation.
_CHECK_TEXTS = [
    "How do I open a file for reading in Python?",
    "The quick brown fox jumps over the lazy dog.",
    "socket.create_connection() opens a TCP connection to the given address and returns the socket.",
    "Debian packages are installed with apt; dpkg handles the low-level unpacking.",
    "error: externally-managed-environment",
    "Quantization trades a little accuracy for a large speedup on small CPUs.",
    "A heap is a binary tree where every parent node has a value less than or equal to any of its children. "
    "This implementation uses arrays for which heap[k] <= heap[2*k+1] and heap[k] <= heap[2*k+2] for all k.",
    "Paris",
    "What is the capital of France? The capital of France is Paris, a city on the Seine.",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)",
]


def _check_texts() -> list:
    """Fixed sentences plus real passages (stdlib docstring paragraphs, always available offline)."""
    import importlib
    import inspect
    texts = list(_CHECK_TEXTS)
    for name in ("json", "heapq", "socket", "pathlib", "argparse", "logging", "subprocess", "collections"):
        doc = inspect.getdoc(importlib.import_module(name)) or ""
        texts += [p for p in doc.split("\n\n") if len(p.strip()) > 40][:8]
    return texts


def _find_model_dir(src: Path) -> Path:
    """The folder that holds config.json + model.safetensors (a wheel nests it a few levels down)."""
    src = Path(src)
    if (src / "config.json").is_file() and (src / "model.safetensors").is_file():
        return src
    found = sorted(p.parent for p in src.rglob("model.safetensors") if (p.parent / "config.json").is_file())
    if not found:
        raise FileNotFoundError(f"no config.json + model.safetensors under {src}")
    return found[0]


def _st_settings(model_dir: Path) -> dict:
    """Pooling/normalisation/max length as sentence-transformers would use them."""
    out = {"max_length": 256, "pooling": "mean", "normalize": True}
    sb = model_dir / "sentence_bert_config.json"
    if sb.is_file():
        out["max_length"] = int(json.loads(sb.read_text()).get("max_seq_length", 256))
    pool = model_dir / "1_Pooling" / "config.json"
    if pool.is_file():
        p = json.loads(pool.read_text())
        if not p.get("pooling_mode_mean_tokens", True) or p.get("pooling_mode_cls_token"):
            raise ValueError("only mean pooling is supported by this converter")
    modules = model_dir / "modules.json"
    if modules.is_file():
        out["normalize"] = any("Normalize" in m.get("type", "") for m in json.loads(modules.read_text()))
    return out


def _clean_tokenizer(src: Path, dst: Path) -> None:
    # Source tokenizer.json pads/truncates to a fixed 128; the Embedder decides per batch instead.
    d = json.loads(src.read_text(encoding="utf-8"))
    d["padding"] = None
    d["truncation"] = None
    dst.write_text(json.dumps(d, ensure_ascii=False), encoding="utf-8")


def _session(path: Path):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _embed_texts(sess, tok_path: Path, texts, max_length: int) -> np.ndarray:
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(tok_path))
    tok.enable_truncation(max_length)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    enc = tok.encode_batch(list(texts))
    ids = np.array([e.ids for e in enc], np.int64)
    mask = np.array([e.attention_mask for e in enc], np.int64)
    return sess.run(None, {"input_ids": ids, "attention_mask": mask})[0]


def convert_folder(src_folder: Path, out_dir: Path, quant: str = "fp32") -> None:
    import onnx
    import onnxruntime
    import tokenizers
    from safetensors.numpy import load_file

    if quant not in QUANTS:
        raise ValueError(f"quant must be one of {QUANTS}, got {quant!r}")
    requested = quant
    quant = "q8" if quant in ("int8", "q4") else quant
    model_dir = _find_model_dir(Path(src_folder))
    hf = json.loads((model_dir / "config.json").read_text())
    if hf.get("model_type", "bert") != "bert":
        raise ValueError(f"expected a BERT model, got model_type={hf.get('model_type')!r}")
    cfg = BertConfig.from_hf(hf)
    st = _st_settings(model_dir)
    st["max_length"] = min(st["max_length"], cfg.max_position_embeddings)
    weights_path = model_dir / "model.safetensors"
    weights = load_file(str(weights_path))

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Build in a temp folder beside the target, move files in at the end: a failed convert leaves no half model.
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=out_dir))
    try:
        model = build_bert_graph(cfg, weights, fused=True)
        onnx.save_model(model, str(tmp / "model.onnx"))
        _clean_tokenizer(model_dir / "tokenizer.json", tmp / "tokenizer.json")

        files = {"fp32": "model.onnx"}
        default = "fp32"
        quant_report = None
        if quant == "q8":
            onnx.save_model(build_bert_graph(cfg, weights, fused=True, q8=True), str(tmp / "model.q8.onnx"))
            texts = _check_texts()
            a = _embed_texts(_session(tmp / "model.onnx"), tmp / "tokenizer.json", texts, st["max_length"])
            b = _embed_texts(_session(tmp / "model.q8.onnx"), tmp / "tokenizer.json", texts, st["max_length"])
            cos = float(np.min(np.sum(a * b, axis=1)))  # both are L2-normalised
            quant_report = {"min_cosine_vs_fp32": round(cos, 5), "threshold": MIN_QUANT_COSINE,
                            "texts": len(texts)}
            if cos >= MIN_QUANT_COSINE:
                files["q8"] = "model.q8.onnx"
                default = "q8"
            else:  # keep the fp32 model rather than ship degraded embeddings
                (tmp / "model.q8.onnx").unlink()
                quant_report["rejected"] = True

        manifest = {
            "kind": "embedding",
            "architecture": "bert",
            "dims": cfg.hidden_size,
            "max_length": st["max_length"],
            "pooling": st["pooling"],
            "normalize": st["normalize"],
            "quant": default,
            "requested_quant": requested,
            "model_files": files,
            "quant_check": quant_report,
            "inputs": ["input_ids", "attention_mask"],
            "output": "sentence_embedding",
            "source": {"name": hf.get("_name_or_path", model_dir.name), "sha256": sha256_file(weights_path)},
            "tools": {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                      "tokenizers": tokenizers.__version__, "numpy": np.__version__},
        }
        try:  # the shared manifest writer adds format version and per-file digests
            from edgeai.manifest import write_manifest
            write_manifest(tmp, manifest)
        except ImportError:
            (tmp / "edgeai.json").write_text(json.dumps(manifest, indent=2))
        for f in tmp.iterdir():
            os.replace(f, out_dir / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
