"""Perplexity of a token sequence under an edgeai ONNX model.

Best with a graph built with all_logits=True (one session run per window). A last-position-only graph
also works, one token per run (slow; fine for short texts). Texts longer than the window are scored with
a sliding window (Hugging Face style): each window re-reads up to `window` tokens of context and scores
only the tokens the previous window did not, so every token after the first is scored exactly once.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np


def _load(model_dir_or_onnx):
    p = Path(model_dir_or_onnx)
    onnx_path = p / "model.onnx" if p.is_dir() else p
    info = {}
    manifest = onnx_path.parent / "edgeai.json"
    if manifest.exists():
        info = json.loads(manifest.read_text()).get("graph", {}) or {}
    return onnx_path, info


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


class _Session:
    def __init__(self, onnx_path, threads):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = threads
        self.sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        self.past = {i.name: i.shape for i in self.sess.get_inputs() if i.name.startswith("past_")}
        logits = next(o for o in self.sess.get_outputs() if o.name == "logits")
        # last-position graphs: [batch, 1, vocab], or [batch, num_logits, vocab] (num_logits defaults to 1)
        self.all_logits = logits.shape[1] not in (1, "num_logits")
        self.out_names = [o.name for o in self.sess.get_outputs()]
        self.multi_logits = any(i.name == "num_logits" for i in self.sess.get_inputs())

    def run(self, ids, past, past_len, num_logits=None):
        """num_logits: logits of the last num_logits positions (graphs with that input; others give one or
        every position)."""
        s = len(ids)
        feeds = {"input_ids": np.asarray(ids, np.int64)[None], "seqlens_k": np.array([past_len + s - 1], np.int32),
                 "total_sequence_length": np.array([past_len + s], np.int32)}
        if num_logits is not None and self.multi_logits:
            feeds["num_logits"] = np.array([num_logits], np.int64)
        feeds.update(past)
        out = self.sess.run(None, feeds)
        present = {n.replace("present_", "past_"): v for n, v in zip(self.out_names[1:], out[1:])}
        return out[0][0], present

    def empty(self):
        return {n: np.zeros((1, sh[1], 0, sh[3]), np.float32) for n, sh in self.past.items()}

    def window_logprobs(self, ids):
        """log p(ids[t+1] | ids[:t+1]) for t = 0..len-2, from an empty cache."""
        if self.all_logits:
            logits, _ = self.run(ids, self.empty(), 0)
        else:  # one token per run, reusing the cache the graph returns
            past, rows = self.empty(), []
            for t in range(len(ids) - 1):
                lg, past = self.run(ids[t:t + 1], past, t)
                rows.append(lg[-1])
            logits = np.stack(rows + [rows[-1]])
        lp = _log_softmax(logits[:-1].astype(np.float64))
        return lp[np.arange(len(ids) - 1), np.asarray(ids[1:])]


def perplexity(model_dir_or_onnx, token_ids, window: int | None = None, stride: int | None = None,
               threads: int | None = None) -> dict:
    """Perplexity over token_ids (no BOS added). window: context tokens per run (default: the whole text,
    capped at the graph's max_seq_len); stride: window advance (default window // 2)."""
    onnx_path, info = _load(model_dir_or_onnx)
    ids = np.asarray(token_ids, np.int64).reshape(-1)
    n = len(ids)
    if n < 2:
        raise ValueError("need at least 2 tokens")
    sess = _Session(onnx_path, threads)
    cap = int(info.get("max_seq_len") or 0) or n
    window = min(window or n, cap, n)
    stride = min(stride or max(1, window // 2), max(1, window - 1))  # windows must overlap by >= 1
    t0 = time.perf_counter()
    nll, scored_upto, begin = [], 0, 0  # tokens 1..scored_upto already scored
    while scored_upto < n - 1:
        end = min(begin + window, n)
        lp = sess.window_logprobs(ids[begin:end])  # scores tokens begin+1 .. end-1
        first_new = scored_upto + 1 - (begin + 1)
        nll.append(-lp[first_new:])
        scored_upto = end - 1
        begin = min(begin + stride, n - 1) if end < n else n
    nll = np.concatenate(nll)
    return {"ppl": float(np.exp(nll.mean())), "nll_mean": float(nll.mean()), "tokens_scored": int(len(nll)),
            "window": window, "stride": stride if window < n else None,
            "all_logits_graph": sess.all_logits, "seconds": round(time.perf_counter() - t0, 3)}
