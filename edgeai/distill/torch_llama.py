"""A trainable torch Llama/Qwen2 decoder built from a SourceModel (the `edgeai[distill]` extra; never imported
at run time).

Same maths as the graph builder and tests/helpers/reference.py: RMSNorm, rotary embeddings in Hugging Face's
rotate_half layout, grouped-query attention with a causal mask, SwiGLU MLP, optional q/k/v biases (Qwen2), tied
or separate output head. Parameter names are Hugging Face's (`model.layers.0.self_attn.q_proj.weight`), so
`state_dict()` maps straight back onto a SourceModel for export. Training runs whole sequences from position 0:
there is no KV cache.

LoRA (`add_lora`): each linear layer of the decoder gets a trainable low-rank update B·A (B starts at zero,
so the model starts exactly as the source) while the source weights stay frozen; `merged_tensors()` folds
the update into the weights for export.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..convert.weights import SourceModel, as_float

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class Linear(nn.Linear):
    """nn.Linear with an optional LoRA update: y = x W^T + b + (x A^T B^T) * scale."""

    def __init__(self, in_features: int, out_features: int, bias: bool):
        super().__init__(in_features, out_features, bias=bias)
        self.register_parameter("lora_a", None)  # registered (as None) so a later Parameter is found
        self.register_parameter("lora_b", None)
        self.lora_scale = 0.0

    def add_lora(self, rank: int, alpha: float, generator: torch.Generator):
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        a = torch.empty(rank, self.in_features)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)  # PEFT's init for A
        self.lora_a = nn.Parameter(a)
        self.lora_b = nn.Parameter(torch.zeros(self.out_features, rank))
        self.lora_scale = alpha / rank

    def forward(self, x):
        y = F.linear(x, self.weight, self.bias)
        if self.lora_a is not None:
            y = y + F.linear(F.linear(x, self.lora_a), self.lora_b) * self.lora_scale
        return y

    def merged_weight(self) -> torch.Tensor:
        w = self.weight
        if self.lora_a is not None:
            w = w + (self.lora_b @ self.lora_a) * self.lora_scale
        return w


class RMSNorm(nn.Module):
    def __init__(self, n: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.q_proj = Linear(c.hidden_size, c.num_heads * c.head_dim, bias=c.attention_bias)
        self.k_proj = Linear(c.hidden_size, c.num_kv_heads * c.head_dim, bias=c.attention_bias)
        self.v_proj = Linear(c.hidden_size, c.num_kv_heads * c.head_dim, bias=c.attention_bias)
        self.o_proj = Linear(c.num_heads * c.head_dim, c.hidden_size, bias=False)

    def forward(self, x, cos, sin):
        c, (b, s, _) = self.c, x.shape
        q = self.q_proj(x).view(b, s, c.num_heads, c.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, s, c.num_kv_heads, c.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, s, c.num_kv_heads, c.head_dim).transpose(1, 2)
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        group = c.num_heads // c.num_kv_heads
        if group > 1:
            k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(o.transpose(1, 2).reshape(b, s, c.num_heads * c.head_dim))


def _rope(x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin


class MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.gate_proj = Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mlp = MLP(c)

    def forward(self, h, cos, sin):
        h = h + self.self_attn(self.input_layernorm(h), cos, sin)
        return h + self.mlp(self.post_attention_layernorm(h))


class Body(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(Layer(c) for _ in range(c.num_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)


class TorchLlama(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.model = Body(config)
        self.lm_head = None if config.tie_word_embeddings else Linear(config.hidden_size, config.vocab_size,
                                                                       bias=False)
        inv = 1.0 / (config.rope_theta ** (torch.arange(0, config.head_dim, 2, dtype=torch.float64)
                                           / config.head_dim))
        self.register_buffer("inv_freq", inv, persistent=False)

    @classmethod
    def from_source(cls, source: SourceModel) -> "TorchLlama":
        m = cls(source.config)
        own = m.state_dict()
        missing = sorted(set(own) - set(source.tensors))
        extra = sorted(set(source.tensors) - set(own))
        if missing or extra:
            raise ValueError(f"source tensors do not match the model: missing {missing[:4]}, unexpected "
                             f"{extra[:4]}")
        with torch.no_grad():
            for name, p in own.items():
                w = as_float(source.tensors[name])
                if tuple(w.shape) != tuple(p.shape):
                    raise ValueError(f"{name}: source shape {w.shape}, model expects {tuple(p.shape)}")
                p.copy_(torch.from_numpy(np.array(w, np.float32)))  # a copy: source arrays may be read-only maps
        return m

    def add_lora(self, rank: int, alpha: float | None = None, seed: int = 0):
        """Freeze everything; train rank-`rank` updates of the decoder's linear layers only."""
        if rank < 1:
            raise ValueError(f"LoRA rank must be at least 1, not {rank}")
        self.requires_grad_(False)
        g = torch.Generator().manual_seed(seed)
        for name, mod in self.named_modules():
            if isinstance(mod, Linear) and name.rsplit(".", 1)[-1] in LORA_TARGETS:
                mod.add_lora(rank, float(alpha if alpha is not None else 2 * rank), g)

    def forward(self, ids):
        """Logits [batch, seq, vocab] for token ids [batch, seq] starting at position 0."""
        pos = torch.arange(ids.shape[1], dtype=torch.float64, device=ids.device)
        ang = pos[:, None] * self.inv_freq[None, :]
        cos = torch.cat([ang.cos()] * 2, -1).float()
        sin = torch.cat([ang.sin()] * 2, -1).float()
        h = self.model.embed_tokens(ids)
        for layer in self.model.layers:
            h = layer(h, cos, sin)
        h = self.model.norm(h)
        head = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(h, head)

    def merged_tensors(self) -> dict:
        """{HF name: float32 numpy array}: the weights to export, LoRA updates folded in."""
        out = {}
        with torch.no_grad():
            for name, t in self.state_dict().items():
                if ".lora_" not in name:
                    out[name] = t.detach().float().cpu().numpy().copy()
            for name, mod in self.named_modules():
                if isinstance(mod, Linear) and mod.lora_a is not None:
                    out[name + ".weight"] = mod.merged_weight().detach().float().cpu().numpy().copy()
        return out
