"""Rotary position embedding: the inverse frequencies of a model, rope scaling included.

One definition for the graph builder's cos/sin cache, the calibration pass and the NumPy reference, so a
scaled model cannot be right in one and wrong in another. Supported scalings are the ones that are exact at
every position with a fixed table of frequencies:
  - "llama3" (Llama 3.1/3.2/3.3): low frequencies divided by `factor`, high ones kept, a smooth blend between,
    computed as transformers' `_compute_llama3_parameters` does;
  - "linear": every frequency divided by `factor`;
  - a GGUF's `rope_freqs.weight`: per-frequency divisors (llama.cpp's stored form of the llama3 scaling).
YaRN rescales attention too and "dynamic" NTK changes the frequencies with the sequence length: both refused.
"""
from __future__ import annotations

import math

import numpy as np

_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def rope_scaling_from_hf(scaling) -> dict | None:
    """A config.json `rope_scaling` (or transformers 5's `rope_parameters`) as LlamaConfig.rope_scaling:
    None for plain RoPE, a checked dict for llama3/linear; ValueError naming the type for anything else."""
    if not scaling:
        return None
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind in (None, "default"):
        return None
    if kind == "llama3":
        missing = [k for k in _LLAMA3_KEYS if scaling.get(k) is None]
        if missing:
            raise ValueError(f"rope_scaling of type llama3 lacks {', '.join(missing)}")
        out = {"rope_type": "llama3", **{k: float(scaling[k]) for k in _LLAMA3_KEYS[:3]},
               "original_max_position_embeddings": int(scaling["original_max_position_embeddings"])}
    elif kind == "linear":
        out = {"rope_type": "linear", "factor": float(scaling.get("factor", 0))}
    else:
        raise ValueError(f"rope scaling of type {kind!r} is not supported (supported: llama3, linear); "
                         f"converting it without would silently change the model")
    if not out["factor"] > 0:
        raise ValueError(f"rope_scaling factor must be positive, not {scaling.get('factor')!r}")
    return out


def inv_freq(cfg) -> np.ndarray:
    """float64 [head_dim // 2]: the angle per position of each rotary frequency pair."""
    d = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
    s = getattr(cfg, "rope_scaling", None)
    if s and s["rope_type"] == "linear":
        inv = inv / s["factor"]
    elif s and s["rope_type"] == "llama3":
        inv = _llama3(inv, s["factor"], s["low_freq_factor"], s["high_freq_factor"],
                      s["original_max_position_embeddings"])
    elif s:
        raise ValueError(f"rope scaling {s['rope_type']!r} is not supported")
    factors = getattr(cfg, "rope_freq_factors", None)
    if factors is not None:
        factors = np.asarray(factors, dtype=np.float64)
        if factors.shape != inv.shape:
            raise ValueError(f"rope frequency factors have {factors.size} entries, the model needs {inv.size}")
        inv = inv / factors
    return inv


def _llama3(inv, factor, low_freq_factor, high_freq_factor, old_context_len):
    """transformers' _compute_llama3_parameters, step for step (in float64)."""
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv
    # wavelen < high_freq_wavelen: kept; wavelen > low_freq_wavelen: divided by factor
    inv_llama = np.where(wavelen > low_freq_wavelen, inv / factor, inv)
    with np.errstate(divide="ignore", invalid="ignore"):  # low == high: no band in between, the blend is unused
        smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * inv_llama / factor + smooth * inv_llama
    medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return np.where(medium, smoothed, inv_llama)
