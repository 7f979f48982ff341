"""Find the layers whose MLP makes "massive activations".

Small Llama-family models route attention sinks through a few huge hidden values (thousands, against a
typical 0.1) produced by one or two MLPs, mostly on special tokens such as <|im_start|>. MatMulNBits with
accuracy_level 4 quantizes activations to int8 per block; in those few projections the rounding error of
the product is large enough to derail chat prompts (SmolLM2-135M: layer 11 turns "The capital of France
is Paris." into French gibberish), while perplexity on plain text barely moves. The builder computes those
projections with float activations instead. This module finds them with a short float32 NumPy forward pass
over a calibration prompt, one layer at a time (dequantized weights never all live at once).
"""
from __future__ import annotations

from typing import List, Sequence

import numpy as np

from .rope import inv_freq
from .weights import SourceModel, as_float, rows_as_float


def _rms(x, g, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g


def _rope(x, pos, cfg):
    d = x.shape[-1]
    ang = pos[:, None] * inv_freq(cfg).astype(np.float32)[None, :]
    cos, sin = np.concatenate([np.cos(ang)] * 2, -1), np.concatenate([np.sin(ang)] * 2, -1)
    rot = np.concatenate([-x[..., d // 2:], x[..., :d // 2]], -1)
    return x * cos + rot * sin


def mlp_activation_peaks(source: SourceModel, token_ids: Sequence[int]) -> List[float]:
    """Largest |SwiGLU output| (the down projection's input) of each layer over the prompt."""
    c, t = source.config, source.tensors
    ids = np.asarray(token_ids, dtype=np.int64)
    s = len(ids)
    pos = np.arange(s, dtype=np.float32)
    h = rows_as_float(t["model.embed_tokens.weight"], ids)
    group = c.num_heads // c.num_kv_heads
    causal = np.tril(np.ones((s, s), bool))
    peaks = []
    for i in range(c.num_layers):
        p = f"model.layers.{i}."
        x = _rms(h, as_float(t[p + "input_layernorm.weight"]), c.rms_norm_eps)
        q, k, v = (x @ as_float(t[p + f"self_attn.{n}_proj.weight"]).T +
                   (as_float(t[p + f"self_attn.{n}_proj.bias"]) if p + f"self_attn.{n}_proj.bias" in t else 0)
                   for n in "qkv")
        q = _rope(q.reshape(s, c.num_heads, c.head_dim).transpose(1, 0, 2), pos, c)
        k = _rope(k.reshape(s, c.num_kv_heads, c.head_dim).transpose(1, 0, 2), pos, c)
        v = v.reshape(s, c.num_kv_heads, c.head_dim).transpose(1, 0, 2)
        k, v = np.repeat(k, group, 0), np.repeat(v, group, 0)
        att = np.where(causal, q @ k.transpose(0, 2, 1) / np.sqrt(c.head_dim), -np.inf)
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        h = h + (att @ v).transpose(1, 0, 2).reshape(s, -1) @ as_float(t[p + "self_attn.o_proj.weight"]).T
        x = _rms(h, as_float(t[p + "post_attention_layernorm.weight"]), c.rms_norm_eps)
        gate = x @ as_float(t[p + "mlp.gate_proj.weight"]).T
        act = gate / (1 + np.exp(-gate)) * (x @ as_float(t[p + "mlp.up_proj.weight"]).T)
        peaks.append(float(np.abs(act).max()))
        h = h + act @ as_float(t[p + "mlp.down_proj.weight"]).T
    return peaks


def massive_activation_layers(source: SourceModel, token_ids: Sequence[int], ratio: float = 50.0) -> List[int]:
    """Layers whose MLP peak exceeds `ratio` times the median peak over all layers."""
    if not len(token_ids):
        return []
    peaks = np.array(mlp_activation_peaks(source, token_ids))
    return [int(i) for i in np.nonzero(peaks > ratio * np.median(peaks))[0]]
