"""A plain NumPy Llama forward pass with an explicit KV cache: the ground truth for the ONNX graphs.

    ref = ReferenceLlama(source)
    logits = ref.forward(token_ids, past_len)   # [len(token_ids), vocab]; keeps the first past_len cached tokens

Conventions follow Hugging Face Llama: RMSNorm, RoPE with "rotate_half" (first/second halves of head_dim),
grouped-query attention with a causal mask, SwiGLU MLP, tied or separate LM head. float64 internally.
"""
from __future__ import annotations

import numpy as np

from edgeai.convert.rope import inv_freq
from edgeai.convert.weights import SourceModel, as_float


class ReferenceLlama:
    def __init__(self, source: SourceModel):
        self.cfg = c = source.config
        w = {k: as_float(v).astype(np.float64) for k, v in source.tensors.items()}
        self.w = w
        self.head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
        self.inv_freq = inv_freq(c)
        self.k_cache = [np.zeros((c.num_kv_heads, 0, c.head_dim)) for _ in range(c.num_layers)]
        self.v_cache = [np.zeros((c.num_kv_heads, 0, c.head_dim)) for _ in range(c.num_layers)]

    def reset(self):
        for i in range(self.cfg.num_layers):
            self.k_cache[i] = self.k_cache[i][:, :0]
            self.v_cache[i] = self.v_cache[i][:, :0]

    def _rms(self, x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + self.cfg.rms_norm_eps) * g

    def _rope(self, x, pos):  # x [heads, seq, head_dim]
        ang = pos[:, None] * self.inv_freq[None, :]  # [seq, hd/2]
        cos = np.concatenate([np.cos(ang)] * 2, -1)
        sin = np.concatenate([np.sin(ang)] * 2, -1)
        half = x.shape[-1] // 2
        rot = np.concatenate([-x[..., half:], x[..., :half]], -1)
        return x * cos + rot * sin

    def forward(self, token_ids, past_len: int | None = None) -> np.ndarray:
        """Logits [seq, vocab] for `token_ids` following the first `past_len` cached tokens (default: all)."""
        c, w = self.cfg, self.w
        ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
        if past_len is None:
            past_len = self.k_cache[0].shape[1]
        assert past_len <= self.k_cache[0].shape[1], "past_len exceeds the cached tokens"
        s = len(ids)
        pos = np.arange(past_len, past_len + s, dtype=np.float64)
        h = w["model.embed_tokens.weight"][ids]
        group = c.num_heads // c.num_kv_heads
        mask = np.tril(np.ones((s, past_len + s), bool), k=past_len)
        for i in range(c.num_layers):
            p = f"model.layers.{i}."
            x = self._rms(h, w[p + "input_layernorm.weight"])
            q, k, v = (x @ w[p + f"self_attn.{n}_proj.weight"].T + w.get(p + f"self_attn.{n}_proj.bias", 0.0)
                       for n in "qkv")
            q = self._rope(q.reshape(s, c.num_heads, c.head_dim).transpose(1, 0, 2), pos)
            k = self._rope(k.reshape(s, c.num_kv_heads, c.head_dim).transpose(1, 0, 2), pos)
            v = v.reshape(s, c.num_kv_heads, c.head_dim).transpose(1, 0, 2)
            self.k_cache[i] = k = np.concatenate([self.k_cache[i][:, :past_len], k], 1)
            self.v_cache[i] = v = np.concatenate([self.v_cache[i][:, :past_len], v], 1)
            k, v = np.repeat(k, group, 0), np.repeat(v, group, 0)
            att = q @ k.transpose(0, 2, 1) / np.sqrt(c.head_dim)
            att = np.where(mask, att, -np.inf)
            att = np.exp(att - att.max(-1, keepdims=True))
            att /= att.sum(-1, keepdims=True)
            o = (att @ v).transpose(1, 0, 2).reshape(s, c.num_heads * c.head_dim)
            h = h + o @ w[p + "self_attn.o_proj.weight"].T
            x = self._rms(h, w[p + "post_attention_layernorm.weight"])
            g = x @ w[p + "mlp.gate_proj.weight"].T
            u = x @ w[p + "mlp.up_proj.weight"].T
            h = h + (g / (1 + np.exp(-g)) * u) @ w[p + "mlp.down_proj.weight"].T
        h = self._rms(h, w["model.norm.weight"])
        return h @ self.head.T

    def perplexity(self, token_ids) -> float:
        """Full-context perplexity: exp(mean NLL of token t+1 given tokens 0..t)."""
        ids = np.asarray(token_ids, dtype=np.int64)
        logits = self.forward(ids, 0)[:-1]
        logits = logits - logits.max(-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        nll = -logp[np.arange(len(ids) - 1), ids[1:]]
        return float(np.exp(nll.mean()))
