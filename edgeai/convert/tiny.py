"""Random-weight tiny Llama models for fast tests (no downloads).

Weights are scaled like a trained model's (std ~ 1/sqrt(fan_in), norms near 1) so activations stay sane
and logits are not flat. With `quantized_like_gguf` the linear weights become GGUF-style Q4_1 blocks and
the (tied) embedding a Q8_0 block tensor, which exercises the builder's exact-mapping path.
"""
from __future__ import annotations

import numpy as np

from .weights import BlockQuantized, LlamaConfig, SourceModel


def to_q4_1(w: np.ndarray, block: int = 32) -> BlockQuantized:
    """GGUF Q4_1 as llama.cpp makes it: per block d = (max-min)/15, m = min, q = round((w-m)/d); d and m are
    stored as float16."""
    rows, cols = w.shape
    wb = w.reshape(rows, cols // block, block)
    mn, mx = wb.min(-1), wb.max(-1)
    d = _f16(np.where(mx > mn, (mx - mn) / 15, 1.0))
    mn = _f16(mn)
    q = np.clip(np.round((wb - mn[..., None]) / d[..., None]), 0, 15).astype(np.uint8)
    return BlockQuantized("q4_1", q.reshape(rows, cols), d, mn, block)


def _f16(x) -> np.ndarray:
    """float32 values that float16 holds exactly (GGUF stores block scales and mins as float16)."""
    return np.asarray(x).astype(np.float16).astype(np.float32)


def to_q8_0(w: np.ndarray, block: int = 32) -> BlockQuantized:
    rows, cols = w.shape
    wb = w.reshape(rows, cols // block, block)
    d = (np.abs(wb).max(-1) / 127).astype(np.float32)
    d = _f16(np.where(d > 0, d, 1.0))
    q = np.clip(np.round(wb / d[..., None]), -127, 127).astype(np.int16) + 128  # stored codes: q + 128
    return BlockQuantized("q8_0", q.astype(np.uint8).reshape(rows, cols), d, None, block)


def make_tiny_source(num_layers=2, hidden=64, heads=4, kv_heads=2, intermediate=128, vocab=256, max_pos=256,
                     seed=0, quantized_like_gguf=False, attention_bias=False, tie_word_embeddings=True,
                     rope_theta=10000.0) -> SourceModel:
    rng = np.random.default_rng(seed)
    head_dim = hidden // heads
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_layers=num_layers,
                      num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim, max_position_embeddings=max_pos,
                      rms_norm_eps=1e-5, rope_theta=rope_theta, tie_word_embeddings=tie_word_embeddings,
                      attention_bias=attention_bias, architecture="qwen2" if attention_bias else "llama")

    def lin(out, inp):
        return (rng.standard_normal((out, inp)) / np.sqrt(inp)).astype(np.float32)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    q4 = to_q4_1 if quantized_like_gguf else (lambda w: w)
    t = {"model.embed_tokens.weight": rng.standard_normal((vocab, hidden)).astype(np.float32)}
    for i in range(num_layers):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = norm(hidden)
        t[p + "post_attention_layernorm.weight"] = norm(hidden)
        # larger q/k so attention is not uniform (tests then see the mask and RoPE at work)
        t[p + "self_attn.q_proj.weight"] = q4(2.0 * lin(heads * head_dim, hidden))
        t[p + "self_attn.k_proj.weight"] = q4(2.0 * lin(kv_heads * head_dim, hidden))
        t[p + "self_attn.v_proj.weight"] = q4(lin(kv_heads * head_dim, hidden))
        t[p + "self_attn.o_proj.weight"] = q4(lin(hidden, heads * head_dim))
        if attention_bias:
            t[p + "self_attn.q_proj.bias"] = (0.1 * rng.standard_normal(heads * head_dim)).astype(np.float32)
            t[p + "self_attn.k_proj.bias"] = (0.1 * rng.standard_normal(kv_heads * head_dim)).astype(np.float32)
            t[p + "self_attn.v_proj.bias"] = (0.1 * rng.standard_normal(kv_heads * head_dim)).astype(np.float32)
        t[p + "mlp.gate_proj.weight"] = q4(lin(intermediate, hidden))
        t[p + "mlp.up_proj.weight"] = q4(lin(intermediate, hidden))
        t[p + "mlp.down_proj.weight"] = q4(lin(hidden, intermediate))
    t["model.norm.weight"] = norm(hidden)
    if quantized_like_gguf:
        t["model.embed_tokens.weight"] = to_q8_0(t["model.embed_tokens.weight"])
    if not tie_word_embeddings:
        w = lin(vocab, hidden) * 4.0
        t["lm_head.weight"] = to_q8_0(w) if quantized_like_gguf else w
    return SourceModel(config=cfg, tensors=t, source={"format": "tiny", "name": f"tiny-seed{seed}"})
