"""Per-token log probabilities for `logprobs` / `top_logprobs`, computed by scoring, not during decoding.

The C++ engine samples inside its own loop and hands back token ids only, so the server does not see the
distribution each token was drawn from. Instead, once a choice is finished, its tokens are scored with a
teacher-forced pass of the same ONNX graph over prompt + completion (what `edgeai eval perplexity` does):
logprob(t_i) = log_softmax(logits at the position before t_i)[t_i].

What the numbers mean (documented in docs/server.md):
- They are the model's own distribution: log-softmax of the raw logits, before logit_bias, penalties,
  temperature and top_p (OpenAI's API reports the same kind of value).
- A prompt is scored in chunks of SCORE_CHUNK tokens. With int8-activation graphs (q4, q8) activations are
  rounded per chunk, so values can differ from the logits the engine saw while decoding by a few 1e-3;
  fp32 graphs agree to float rounding.
- Cost: the scorer holds a second ONNX Runtime session of the model (loaded on the first logprobs request:
  SmolLM2 q4 about +230 MB) and one prefill-sized pass per choice.

What the engine would need to expose to do this for free: per sampled token, the log-softmax of the raw
logits at the chosen id and the top-k (id, logprob) pairs, computed from its logits buffer before the
sampler chain runs (GenerateResult gaining `token_logprobs` and `top_logprobs`).
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import List, Tuple

import numpy as np

from ..convert.tokenizer_build import _byte_alphabet
from ..evaluate.perplexity import _log_softmax, _Session

SCORE_CHUNK = 256  # prompt tokens per scoring run: bounds ONNX Runtime's activation arena


# GPT-2 byte-level BPE writes byte b as the printable character _byte_alphabet()[b]: invert that table
_BYTES = {ch: b for b, ch in enumerate(_byte_alphabet())}


def token_bytes(tokenizer, token_id: int) -> bytes:
    """The bytes a token stands for: exact for byte-level BPE vocabularies (a token may hold part of a
    UTF-8 character), else the UTF-8 of its decoded text."""
    piece = tokenizer.id_to_token(token_id)
    if piece is not None and piece and all(ch in _BYTES for ch in piece) and \
            token_id not in tokenizer.eos_token_ids:
        return bytes(_BYTES[ch] for ch in piece)
    return tokenizer.decode([token_id]).encode("utf-8")


def token_text(tokenizer, token_id: int) -> str:
    return token_bytes(tokenizer, token_id).decode("utf-8", errors="replace")


class TokenScorer:
    """log p(completion token | everything before it) under one model folder's graph."""

    def __init__(self, model_dir, threads=None):
        self._sess = _Session(Path(model_dir) / "model.onnx", threads)
        self._lock = threading.Lock()

    def score(self, prompt_ids: List[int], completion_ids: List[int], top: int = 0
              ) -> List[Tuple[float, List[Tuple[int, float]]]]:
        """[(logprob of token i, [(id, logprob) of the `top` most likely tokens at i])] for each completion
        token."""
        if not completion_ids:
            return []
        ids = list(prompt_ids) + list(completion_ids[:-1])
        first = len(prompt_ids) - 1  # position whose logits predict completion_ids[0]
        rows = []
        with self._lock:
            s, past = self._sess, self._sess.empty()
            step = SCORE_CHUNK if (s.multi_logits or s.all_logits) else 1
            for a in range(0, len(ids), step):
                b = min(a + step, len(ids))
                need = b - max(a, first)
                logits, past = s.run(ids[a:b], past, a, num_logits=max(1, need))
                if need > 0:
                    rows.append(logits[-need:])
        lp = _log_softmax(np.concatenate(rows).astype(np.float64))
        out = []
        for i, tok in enumerate(completion_ids):
            alts = []
            if top:
                best = np.argpartition(-lp[i], top - 1)[:top]
                best = best[np.argsort(-lp[i][best], kind="stable")]
                alts = [(int(t), float(lp[i][t])) for t in best]
            out.append((float(lp[i][tok]), alts))
        return out
