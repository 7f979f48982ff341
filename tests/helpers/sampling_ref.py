"""A short, vectorised NumPy version of the sampling chain: the reference the C++ chain is checked against
(and the baseline it is benchmarked against). Same order and semantics as edgeai.SamplingParams.make_chain."""
import numpy as np


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def reference_filters(logits, history=None, *, bias=None, repetition=1.0, presence=0.0, frequency=0.0,
                      last_n=0, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0):
    """Returns (kept token ids, their probabilities) after every filter; float64 throughout."""
    x = np.asarray(logits, dtype=np.float64).copy()
    for tok, b in (bias or {}).items():
        x[tok] += b
    if history is not None and len(history) and (repetition != 1.0 or presence or frequency):
        h = np.asarray(history)[-last_n:] if last_n else np.asarray(history)
        toks, counts = np.unique(h, return_counts=True)
        v = x[toks]
        if repetition != 1.0:
            v = np.where(v > 0, v / repetition, v * repetition)
        x[toks] = v - presence - frequency * counts
    x = x / temperature
    keep = np.arange(x.size)
    if top_k:
        keep = np.argpartition(-x, top_k - 1)[:top_k]
    if top_p < 1.0:
        order = keep[np.argsort(-x[keep], kind="stable")]
        cum = np.cumsum(softmax(x[order]))
        m = int(np.searchsorted(cum, top_p)) + 1  # the token that crosses top_p is kept
        keep = order[:m]
    if min_p > 0.0:
        p = softmax(x[keep])
        keep = keep[p >= min_p * p.max()]
    return keep, softmax(x[keep])


def reference_sample(logits, history, rng, **kw):
    ids, p = reference_filters(logits, history, **kw)
    return int(ids[rng.choice(ids.size, p=p)])
