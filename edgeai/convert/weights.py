"""The in-memory form of a model between reading a source (GGUF, Hugging Face folder) and building ONNX.

Readers produce a `SourceModel`; the graph builder consumes it. Tensor names and layouts follow
Hugging Face Llama (`model.layers.{i}.self_attn.q_proj.weight`, weights stored [out_features, in_features]),
so every source maps onto one builder. Weights that arrive already block-quantized (GGUF Q4_1, Q8_0) stay
in their quantized form (`BlockQuantized`), so the builder can map them exactly instead of re-quantizing
dequantized values (which loses quality).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, Optional, Union

import numpy as np


@dataclass
class LlamaConfig:
    """Dimensions of a Llama-family decoder (Llama, SmolLM2, Qwen2, Mistral, TinyLlama)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = True
    attention_bias: bool = False  # Qwen2 has q/k/v biases
    architecture: str = "llama"
    # Rope scaling (see convert/rope.py): {"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
    # "original_max_position_embeddings"} or {"rope_type": "linear", "factor"}; None for plain RoPE.
    rope_scaling: Optional[dict] = None
    # Per-frequency divisors of the rotary frequencies (a GGUF's rope_freqs.weight, llama.cpp's form of the
    # llama3 scaling), head_dim // 2 floats; None when the source has none.
    rope_freq_factors: Optional[list] = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LlamaConfig":
        names = cls.__dataclass_fields__.keys()
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class BlockQuantized:
    """A 2-D weight [rows, cols] quantized in blocks of `block_size` along cols (the input dimension).

    kind "q4_1": w = scale * q + min,  q in 0..15   (mins present)
    kind "q8_0": w = scale * q,        q in -128..127 (mins None)
    `q` holds one unpacked integer per weight (uint8 for q4_1, int8 for q8_0), shape [rows, cols];
    `scales` (and `mins`) are float32 [rows, cols // block_size].
    """

    kind: str
    q: np.ndarray
    scales: np.ndarray
    mins: Optional[np.ndarray] = None
    block_size: int = 32

    @property
    def shape(self):
        return self.q.shape

    def dequantize(self) -> np.ndarray:
        rows, cols = self.q.shape
        nb = cols // self.block_size
        q = self.q.reshape(rows, nb, self.block_size).astype(np.float32)
        w = q * self.scales[:, :, None]
        if self.mins is not None:
            w = w + self.mins[:, :, None]
        return w.reshape(rows, cols).astype(np.float32)

    def take_rows(self, index) -> "BlockQuantized":
        """Rows selected/permuted by `index` (used to undo GGUF's q/k row permutation)."""
        return BlockQuantized(self.kind, self.q[index], self.scales[index],
                              None if self.mins is None else self.mins[index], self.block_size)


Tensor = Union[np.ndarray, BlockQuantized]


def as_float(t: Tensor) -> np.ndarray:
    return t.dequantize() if isinstance(t, BlockQuantized) else np.asarray(t, dtype=np.float32)


@dataclass
class SourceModel:
    """Everything the builder and the tokenizer writer need from a source model."""

    config: LlamaConfig
    tensors: Dict[str, Tensor]
    tokenizer_json: Optional[str] = None  # a complete tokenizers-library JSON, if the source has/produces one
    chat_template: Optional[str] = None
    special_tokens: Dict[str, Optional[str]] = field(default_factory=dict)  # bos/eos/pad/unk -> token text
    source: Dict[str, str] = field(default_factory=dict)  # path, format, sha256, name
