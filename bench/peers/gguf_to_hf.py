#!/usr/bin/env python3
"""GGUF -> Hugging Face Llama folder (fp32 safetensors, config.json, tokenizer.json, tokenizer_config.json).

Uses edgeai's own GGUF reader (run it with a Python that has edgeai installed), so the peers get exactly
the dequantized weights and the tokenizer edgeai uses (transformers' own GGUF tokenizer conversion gets
SmolLM2 wrong: BOS on every encode, eos=<|im_start|>, no per-digit split).

  python gguf_to_hf.py SRC.gguf OUT_DIR
"""
import json
import sys
from pathlib import Path

import numpy as np


def main(src, out):
    from safetensors.numpy import save_file

    from edgeai.convert.gguf_source import load_gguf
    from edgeai.convert.weights import as_float

    s = load_gguf(src)
    c = s.config
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sp = s.special_tokens or {}
    tok = json.loads(s.tokenizer_json)
    ids = {t["content"]: t["id"] for t in tok.get("added_tokens", [])}
    ids.update(tok["model"].get("vocab", {}))
    tid = lambda k: ids.get(sp.get(k)) if sp.get(k) else None  # noqa: E731
    (out / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size, "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads, "num_key_value_heads": c.num_kv_heads, "head_dim": c.head_dim,
        "max_position_embeddings": c.max_position_embeddings, "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta, "tie_word_embeddings": c.tie_word_embeddings, "hidden_act": "silu",
        "attention_bias": c.attention_bias, "torch_dtype": "float32", "bos_token_id": tid("bos"),
        "eos_token_id": tid("eos"), "pad_token_id": tid("pad")}, indent=1))
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": tid("bos"), "eos_token_id": tid("eos"),
                                                            "pad_token_id": tid("pad")}))
    tensors = {k: np.ascontiguousarray(as_float(v), dtype=np.float32) for k, v in s.tensors.items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "tokenizer.json").write_text(s.tokenizer_json)
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "chat_template": s.chat_template,
        "bos_token": sp.get("bos"), "eos_token": sp.get("eos"), "pad_token": sp.get("pad"),
        "unk_token": sp.get("unk"), "add_bos_token": False, "model_max_length": c.max_position_embeddings}))
    print(f"wrote {out} ({sum(t.nbytes for t in tensors.values()) / 1e6:.0f} MB of fp32 weights)")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
