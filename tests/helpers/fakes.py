"""Stand-ins shared by tests that need an embedder without a model."""
import hashlib
import re

import numpy as np


class BagOfWordsEmbedder:
    """Deterministic stand-in for a sentence model: hashed word counts, L2-normalised."""

    dims, max_length = 256, 256

    def __init__(self, model_id="bow-test"):
        self.model_id = model_id
        self.calls = 0

    def encode(self, texts, show_progress=None, **kw):
        self.calls += len(texts)
        out = np.zeros((len(texts), self.dims), np.float32)
        for i, t in enumerate(texts):
            for w in re.findall(r"[a-z0-9]+", t.lower()):
                out[i, int(hashlib.md5(w.encode()).hexdigest(), 16) % self.dims] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)

    def count_tokens(self, texts):
        return [len(t.split()) for t in texts]
