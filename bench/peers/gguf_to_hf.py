#!/usr/bin/env python3
"""GGUF -> Hugging Face folder (fp32 safetensors shards, config.json, generation_config.json, tokenizer.json,
tokenizer_config.json) for the Llama and Qwen2 architectures edgeai reads.

Uses edgeai's own GGUF reader (run it with a Python that has edgeai installed), so the peers get exactly
the dequantized weights and the tokenizer edgeai uses (transformers' own GGUF tokenizer conversion gets
SmolLM2 wrong: BOS on every encode, eos=<|im_start|>, no per-digit split). The special tokens and the ids that
end generation are edgeai's manifest entries (`convert.pipeline.tokenizer_section`), so a peer stops where
edgeai stops.

Tensors are read, dequantized and written one shard (about 1 GB) at a time: a 1.5B model (6 GB of fp32)
never sits in memory whole. The folder is written beside OUT_DIR and renamed into place when complete.

  python gguf_to_hf.py SRC.gguf OUT_DIR
"""
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

SHARD_BYTES = 1 << 30


def hf_config(c, tok) -> dict:
    """config.json for the source's architecture (qwen2 -> Qwen2ForCausalLM, llama/mistral -> LlamaForCausalLM)."""
    if c.rope_freq_factors is not None:  # llama3 scaling as per-frequency divisors: HF has no such field
        raise ValueError("the GGUF scales RoPE with rope_freqs.weight (Llama 3.x); this script cannot express "
                         "that in config.json")
    common = {
        "vocab_size": c.vocab_size, "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_layers, "num_attention_heads": c.num_heads, "num_key_value_heads": c.num_kv_heads,
        "max_position_embeddings": c.max_position_embeddings, "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta, "rope_scaling": c.rope_scaling, "tie_word_embeddings": c.tie_word_embeddings,
        "hidden_act": "silu", "torch_dtype": "float32", "dtype": "float32",
        "bos_token_id": tok["bos_token_id"], "eos_token_id": tok["eos_token_id"], "pad_token_id": tok["pad_token_id"]}
    if c.architecture == "qwen2":
        # Qwen2 always has q/k/v biases and no o_proj bias (what edgeai's reader yields for these files); its
        # head_dim is hidden_size / num_heads, and sliding-window attention is off in every Qwen2.5 release.
        if c.head_dim * c.num_heads != c.hidden_size or not c.attention_bias:
            raise ValueError(f"not a Qwen2 layout: head_dim {c.head_dim} x {c.num_heads} heads != hidden "
                             f"{c.hidden_size}, or no q/k/v biases")
        return {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", **common, "use_sliding_window": False,
                "sliding_window": c.max_position_embeddings, "max_window_layers": c.num_layers,
                "attention_dropout": 0.0}
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **common, "head_dim": c.head_dim,
            "attention_bias": c.attention_bias}


def tokenizer_config(c, tok) -> dict:
    cls = "Qwen2Tokenizer" if c.architecture == "qwen2" else "PreTrainedTokenizerFast"
    return {"tokenizer_class": cls, "chat_template": tok["chat_template"], "bos_token": tok["bos_token"],
            "eos_token": tok["eos_token"], "pad_token": tok["pad_token"], "unk_token": tok["unk_token"],
            "add_bos_token": tok["adds_bos"], "add_prefix_space": False, "errors": "replace",
            "clean_up_tokenization_spaces": False, "model_max_length": c.max_position_embeddings}


def write_shards(tensors, out: Path) -> int:
    """fp32 safetensors shards of about SHARD_BYTES, plus model.safetensors.index.json when there are several."""
    from safetensors.numpy import save_file

    from edgeai.convert.weights import as_float

    shards, cur, size, total = [], {}, 0, 0

    def flush():
        nonlocal cur, size
        if cur:
            name = f"part-{len(shards):05d}.safetensors"
            save_file(cur, str(out / name), metadata={"format": "pt"})
            shards.append((name, list(cur)))
            cur, size = {}, 0

    for name in tensors:
        w = np.ascontiguousarray(as_float(tensors[name]), dtype=np.float32)
        if size and size + w.nbytes > SHARD_BYTES:
            flush()
        cur[name] = w
        size += w.nbytes
        total += w.nbytes
    flush()
    if len(shards) == 1:
        os.replace(out / shards[0][0], out / "model.safetensors")
        return total
    weight_map = {}
    for i, (name, keys) in enumerate(shards):
        final = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        os.replace(out / name, out / final)
        weight_map.update({k: final for k in keys})
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    return total


def main(src, out):
    from edgeai.convert.gguf_source import load_gguf
    from edgeai.convert.pipeline import tokenizer_section

    s = load_gguf(src, with_sha256=False)
    c = s.config
    tok = tokenizer_section(s)
    out = Path(out)
    if out.exists():
        raise SystemExit(f"{out} exists; remove it first")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "config.json").write_text(json.dumps(hf_config(c, tok), indent=1))
    (tmp / "generation_config.json").write_text(json.dumps({
        "bos_token_id": tok["bos_token_id"], "eos_token_id": tok["eos_token_ids"] or tok["eos_token_id"],
        "pad_token_id": tok["pad_token_id"]}, indent=1))
    (tmp / "tokenizer.json").write_text(s.tokenizer_json, encoding="utf-8")
    (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(c, tok), indent=1))
    total = write_shards(s.tensors, tmp)
    os.replace(tmp, out)
    print(f"wrote {out} ({c.architecture}, {total / 1e6:.0f} MB of fp32 weights)")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
