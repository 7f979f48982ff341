"""Export a trained student: a Hugging Face folder (config.json, model.safetensors, tokenizer files), then
edgeai's own converter (HF folder -> ONNX -> q4/q8/fp32), then a `distill` section in the model's manifest.

The HF folder is kept (in the work folder): it is the converted model's source, so `eval fidelity` can build
an all-logits twin of the student from it, and other tools can read it.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..convert.weights import SourceModel


def write_hf_folder(tensors: dict, like: SourceModel, folder) -> Path:
    """Write float32 `tensors` (HF names) with `like`'s config and tokenizer as a Hugging Face folder,
    atomically (a temporary folder renamed into place)."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    c = like.config
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        arch = {"qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}.get(c.architecture,
                                                                                 "LlamaForCausalLM")
        (tmp / "config.json").write_text(json.dumps({
            "architectures": [arch], "model_type": c.architecture, "vocab_size": c.vocab_size,
            "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
            "num_hidden_layers": c.num_layers, "num_attention_heads": c.num_heads,
            "num_key_value_heads": c.num_kv_heads, "head_dim": c.head_dim,
            "max_position_embeddings": c.max_position_embeddings, "rms_norm_eps": c.rms_norm_eps,
            "rope_theta": c.rope_theta, "tie_word_embeddings": c.tie_word_embeddings,
            "attention_bias": c.attention_bias, "hidden_act": "silu", "torch_dtype": "float32"}, indent=1))
        weights = {k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()
                   if not (c.tie_word_embeddings and k == "lm_head.weight")}
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "tokenizer.json").write_text(like.tokenizer_json, encoding="utf-8")
        sp = like.special_tokens or {}
        (tmp / "tokenizer_config.json").write_text(json.dumps(
            {"chat_template": like.chat_template, **{f"{k}_token": sp.get(k) for k in ("bos", "eos", "pad", "unk")}},
            indent=1), encoding="utf-8")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def export_student(tensors: dict, like: SourceModel, hf_dir, out, quant: str = "q4", force: bool = False,
                   distill_info: dict | None = None, progress: bool = True) -> Path:
    """HF folder -> edgeai model folder `out` (converted with `quant`), manifest extended with distill_info."""
    from .. import manifest as mf
    from ..convert.pipeline import convert

    hf_dir = write_hf_folder(tensors, like, hf_dir)
    out = convert(hf_dir, out, quant=quant, force=force, progress=progress)
    m = mf.load_manifest(out)
    m["distill"] = distill_info or {}
    mf.write_manifest(out, m)
    return out
