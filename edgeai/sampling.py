"""Sampling parameters and the sampler chain they build.

`SamplingParams` validates every field and raises `ValueError` naming the bad one. `make_chain` turns it
into the native chain, in the order Hugging Face transformers applies its processors:
logit bias -> repetition/presence/frequency penalties -> temperature -> top-k -> top-p -> min-p -> choice.
Temperature 0 means greedy decoding (the filters cannot change the argmax, so they are skipped).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Dict, Optional

import numpy as np

from . import _core

INT32_MAX = 2 ** 31 - 1  # the native chain's token ids and counts are int32
MIN_TEMPERATURE = 1.0 / float(np.finfo(np.float32).max) * 1.0001  # below it, 1/t overflows float32


def _is_number(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


@dataclass
class SamplingParams:
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    min_p: float = 0.0  # 0: off
    repetition_penalty: float = 1.0  # 1: off (multiplicative, transformers semantics)
    presence_penalty: float = 0.0  # additive, OpenAI semantics
    frequency_penalty: float = 0.0
    penalty_last_n: int = 0  # penalties look at the last n tokens of the history (0: all)
    logit_bias: Dict[int, float] = field(default_factory=dict)
    seed: Optional[int] = None

    def __post_init__(self):
        self.validate()

    def validate(self) -> "SamplingParams":
        def number(name, lo=None, hi=None, lo_open=False, hi_open=False):
            v = getattr(self, name)
            if not _is_number(v):
                raise ValueError(f"{name} must be a number, got {type(v).__name__}")
            if math.isnan(v) or math.isinf(v):
                raise ValueError(f"{name} must be finite, got {v}")
            if lo is not None and (v < lo or (lo_open and v == lo)):
                raise ValueError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {v}")
            if hi is not None and (v > hi or (hi_open and v == hi)):
                raise ValueError(f"{name} must be {'<' if hi_open else '<='} {hi}, got {v}")

        def integer(name, lo, hi=INT32_MAX):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
                raise ValueError(f"{name} must be an integer, got {v!r}")
            if not lo <= v <= hi:
                raise ValueError(f"{name} must be in [{lo}, {hi}], got {v}")

        number("temperature", lo=0.0)
        if 0.0 < self.temperature < MIN_TEMPERATURE:  # its float32 inverse would be inf
            raise ValueError(f"temperature must be 0 or at least {MIN_TEMPERATURE:.3g}, "
                             f"got {self.temperature}")
        integer("top_k", 0)
        number("top_p", lo=0.0, hi=1.0, lo_open=True)
        number("min_p", lo=0.0, hi=1.0)
        number("repetition_penalty", lo=0.0, lo_open=True)
        number("presence_penalty")
        number("frequency_penalty")
        integer("penalty_last_n", 0)
        if not isinstance(self.logit_bias, dict):
            raise ValueError("logit_bias must be a dict {token_id: bias}")
        for tok, bias in self.logit_bias.items():
            if not isinstance(tok, (int, np.integer)) or isinstance(tok, bool) or not 0 <= tok <= INT32_MAX:
                raise ValueError(f"logit_bias keys must be token ids in [0, {INT32_MAX}], got {tok!r}")
            if not _is_number(bias) or math.isnan(bias) or bias == math.inf:
                raise ValueError(f"logit_bias[{tok}] must be a finite number or -inf, got {bias!r}")
        if self.seed is not None:
            if not isinstance(self.seed, (int, np.integer)) or isinstance(self.seed, bool) or \
                    not 0 <= self.seed < 2 ** 64:
                raise ValueError(f"seed must be an integer in [0, 2**64) or None, got {self.seed!r}")
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @classmethod
    def from_kwargs(cls, **kwargs) -> "SamplingParams":
        names = {f.name for f in fields(cls)}
        unknown = set(kwargs) - names
        if unknown:
            raise ValueError(f"unknown sampling parameter(s): {', '.join(sorted(unknown))}")
        return cls(**kwargs)

    def make_chain(self, seed: Optional[int] = None) -> "_core.SamplerChain":
        """Native chain for these parameters; `seed` overrides self.seed (None: a random seed)."""
        chain = _core.SamplerChain()
        if self.logit_bias:
            chain.add_logit_bias({int(k): float(v) for k, v in self.logit_bias.items()})
        if self.repetition_penalty != 1.0 or self.presence_penalty or self.frequency_penalty:
            chain.add_penalties(float(self.repetition_penalty), float(self.presence_penalty),
                                float(self.frequency_penalty), int(self.penalty_last_n))
        if self.greedy:
            chain.add_greedy()
            return chain
        if self.temperature != 1.0:
            chain.add_temperature(float(self.temperature))
        if self.top_k:
            chain.add_top_k(int(self.top_k))
        if self.top_p < 1.0:
            chain.add_top_p(float(self.top_p))
        if self.min_p > 0.0:
            chain.add_min_p(float(self.min_p))
        s = seed if seed is not None else self.seed
        if s is None:
            s = int.from_bytes(np.random.default_rng().bytes(8), "little")
        chain.add_dist(int(s))
        return chain


class Sampler:
    """Picks tokens from logits with a fixed chain; keeps its random state between calls."""

    def __init__(self, params: Optional[SamplingParams] = None, **kwargs):
        self.params = params if params is not None else SamplingParams.from_kwargs(**kwargs)
        self._chain = self.params.make_chain()

    def __call__(self, logits, history=None) -> int:
        return self._chain.sample(logits, history)

    def candidates(self, logits, history=None):
        """(token ids, probabilities) that survive the filters."""
        return self._chain.candidates(logits, history)

    def reseed(self, seed: int) -> None:
        self._chain.reseed(int(seed))
