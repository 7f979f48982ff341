"""The in-memory form of a model between reading a source (GGUF, Hugging Face folder) and building ONNX.

Readers produce a `SourceModel`; the graph builder consumes it. Tensor names and layouts follow
Hugging Face Llama (`model.layers.{i}.self_attn.q_proj.weight`, weights stored [out_features, in_features]),
so every source maps onto one builder. Weights that arrive already block-quantized (the GGUF types in
`BLOCK_KINDS`) stay in their quantized form (`BlockQuantized`), so the builder can map them exactly instead
of re-quantizing dequantized values (which loses quality). A source's `tensors` may be a lazy mapping (GGUF:
each tensor is read from the file when asked for and not kept), so conversion holds one tensor at a time.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, Mapping, Optional, Union

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


# The ggml block types that are kept exactly: kind -> (bits per code, code of zero, has mins, block size).
# Weights without mins decode as w = scale * (q - zero); those with mins as w = scale * q + min.
# K-quants keep their 6/8-bit sub-block scales folded into one float32 scale per sub-block (d * sc, an exact
# product of a float16 and a small integer), so each sub-block is an ordinary block here.
BLOCK_KINDS = {
    "q4_0": (4, 8, False, 32),
    "q4_1": (4, 0, True, 32),
    "q5_0": (5, 16, False, 32),
    "q8_0": (8, 128, False, 32),
    "q4_k": (4, 0, True, 32),
    "q5_k": (5, 0, True, 32),
    "q6_k": (6, 32, False, 16),
}


@dataclass
class BlockQuantized:
    """A 2-D weight [rows, cols] quantized in blocks of `block_size` along cols (the input dimension).

    `q` holds one unsigned code per weight (uint8, 0 .. 2^code_bits - 1), shape [rows, cols]; `scales` (and
    `mins`) are float32 [rows, cols // block_size]:
        no mins:   w = scale * (q - zero)     (Q4_0, Q5_0, Q6_K, Q8_0; zero is the kind's fixed code of 0)
        mins:      w = scale * q + min        (Q4_1, Q4_K, Q5_K)
    The float32 results equal ggml's own dequantization bit for bit (same products in the same order).
    """

    kind: str
    q: np.ndarray
    scales: np.ndarray
    mins: Optional[np.ndarray] = None
    block_size: int = 32

    def __post_init__(self):
        if self.kind not in BLOCK_KINDS:
            raise ValueError(f"unknown block kind {self.kind!r}; known: {', '.join(BLOCK_KINDS)}")

    @property
    def code_bits(self) -> int:
        return BLOCK_KINDS[self.kind][0]

    @property
    def zero(self) -> int:
        return BLOCK_KINDS[self.kind][1]

    @property
    def shape(self):
        return self.q.shape

    def dequantize(self) -> np.ndarray:
        rows, cols = self.q.shape
        nb = cols // self.block_size
        q = self.q.reshape(rows, nb, self.block_size).astype(np.float32)
        if self.mins is not None:
            w = self.scales[:, :, None] * q + self.mins[:, :, None]
        else:
            w = self.scales[:, :, None] * (q - np.float32(self.zero))
        return w.reshape(rows, cols).astype(np.float32)

    def take_rows(self, index) -> "BlockQuantized":
        """Rows selected/permuted by `index` (q/k row permutation, embedding rows for a few tokens)."""
        return BlockQuantized(self.kind, self.q[index], self.scales[index],
                              None if self.mins is None else self.mins[index], self.block_size)


Tensor = Union[np.ndarray, BlockQuantized]


def as_float(t: Tensor) -> np.ndarray:
    return t.dequantize() if isinstance(t, BlockQuantized) else np.asarray(t, dtype=np.float32)


def rows_as_float(t: Tensor, index) -> np.ndarray:
    """Float32 rows `index` of t (embedding lookups) without dequantizing the whole table."""
    return t.take_rows(index).dequantize() if isinstance(t, BlockQuantized) else np.asarray(t[index], np.float32)


@dataclass
class SourceModel:
    """Everything the builder and the tokenizer writer need from a source model."""

    config: LlamaConfig
    tensors: Mapping[str, Tensor]  # may be lazy (read on access): fetch each tensor once per use
    tokenizer_json: Optional[str] = None  # a complete tokenizers-library JSON, if the source has/produces one
    chat_template: Optional[str] = None
    special_tokens: Dict[str, Optional[str]] = field(default_factory=dict)  # bos/eos/pad/unk -> token text
    source: Dict[str, str] = field(default_factory=dict)  # path, format, sha256, name
