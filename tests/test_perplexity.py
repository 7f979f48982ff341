"""Perplexity on a tiny model vs the NumPy reference (full context and sliding window)."""
import json

import numpy as np
import pytest

from edgeai.convert.builder import build_onnx
from edgeai.convert.tiny import make_tiny_source
from edgeai.evaluate import perplexity
from helpers.reference import ReferenceLlama

IDS = np.random.default_rng(5).integers(0, 256, 40)


@pytest.fixture(scope="module")
def src():
    return make_tiny_source(seed=7)


@pytest.fixture(scope="module")
def model_dir(src, tmp_path_factory):
    d = tmp_path_factory.mktemp("ppl")
    info = build_onnx(src, d, "fp32", all_logits=True, max_seq_len=64)
    (d / "edgeai.json").write_text(json.dumps({"graph": info}))
    return d


def window_ppl(src, ids, window, stride):
    """Reference sliding-window perplexity: each token after the first scored once, with <= window context."""
    nll, done = [], 0
    for begin in range(0, len(ids), stride):
        w = ids[begin:begin + window]
        lg = ReferenceLlama(src).forward(w, 0)
        lp = lg - lg.max(-1, keepdims=True)
        lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
        for j in range(len(w) - 1):
            if begin + j + 1 > done:
                nll.append(-lp[j, w[j + 1]])
        done = begin + len(w) - 1
        if begin + window >= len(ids):
            break
    return float(np.exp(np.mean(nll))), len(nll)


def test_full_context(model_dir, src):
    r = perplexity(model_dir, IDS)
    assert r["tokens_scored"] == len(IDS) - 1
    assert r["ppl"] == pytest.approx(ReferenceLlama(src).perplexity(IDS), rel=1e-4)


def test_sliding_window(model_dir, src):
    r = perplexity(model_dir / "model.onnx", IDS, window=16, stride=8)
    ppl, n = window_ppl(src, IDS, 16, 8)
    assert r["tokens_scored"] == n == len(IDS) - 1
    assert r["ppl"] == pytest.approx(ppl, rel=1e-4)


def test_last_position_graph(src, tmp_path):
    """A graph without all_logits still works (one token per run)."""
    build_onnx(src, tmp_path, "fp32", max_seq_len=64)
    r = perplexity(tmp_path, IDS[:12])
    assert not r["all_logits_graph"]
    assert r["ppl"] == pytest.approx(ReferenceLlama(src).perplexity(IDS[:12]), rel=1e-4)


@pytest.mark.smollm2
@pytest.mark.slow
def test_smollm2_quant_quality(smollm2_source, tmp_path):
    """Real model on GPL-3 text: the fp32 graph equals the NumPy reference (192 tokens); over 1024 tokens, q4 (Q4_1
    codes and scales as they are, mins m + 8d stored as two 4-bit digits: fold_mins) at accuracy_level 0 stays
    within 0.25% of fp32, with per-block zero points within 0.1%, and at level 4 (int8 activations) within 2%.

    Why 1024 tokens for level 4: int8 activation rounding moves each token's log-probability a little, up or
    down, and the kernels that do it differ by CPU (AVX2, AVX-512 VNNI). Over 192 tokens the perplexity ratio to
    fp32 came out -0.7% on an AVX2 box and +2.2% on an AVX-512 VNNI box: the mean of 191 noisy differences, not
    a quality difference. The noise of a mean shrinks as 1/sqrt(n), so over 1023 scored tokens that 3% spread
    shrinks by sqrt(1023/191) = 2.3x (AVX2: -0.07%), and the 2% bound keeps its meaning (the shipped q4's
    systematic cost over 2048 tokens is +0.6%, README) with a margin on every CPU instead of by luck."""
    from pathlib import Path

    from tokenizers import Tokenizer

    lic = Path("/usr/share/common-licenses/GPL-3")
    text = lic.read_text() if lic.exists() else "The quick brown fox jumps over the lazy dog. " * 400
    ids = Tokenizer.from_str(smollm2_source.tokenizer_json).encode(text, add_special_tokens=False).ids[:1024]
    ppl = {}
    for name, quant, acc, zp in (("fp32", "fp32", 0, "default"), ("q4_0", "q4", 0, "default"),
                                 ("q4_0_per_block", "q4", 0, "per-block"), ("q4_4", "q4", 4, "default")):
        d = tmp_path / name
        build_onnx(smollm2_source, d, quant, all_logits=True, max_seq_len=1024, accuracy_level=acc, zero_points=zp)
        ppl[name] = perplexity(d, ids, threads=2)["ppl"]
        if name == "fp32":
            assert perplexity(d, ids[:192], threads=2)["ppl"] == pytest.approx(
                ReferenceLlama(smollm2_source).perplexity(ids[:192]), rel=1e-4)
    assert ppl["q4_0"] == pytest.approx(ppl["fp32"], rel=2.5e-3)
    assert ppl["q4_0_per_block"] == pytest.approx(ppl["fp32"], rel=1e-3)
    assert ppl["q4_4"] == pytest.approx(ppl["fp32"], rel=0.02)
