"""ONNX graph (fp32) vs the NumPy reference: prefill, continuation chunks, decode, prefix reuse, batch."""
import json

import numpy as np
import onnx
import pytest

from edgeai.convert.builder import build_onnx
from edgeai.convert.tiny import make_tiny_source
from helpers import OrtLlama
from helpers.reference import ReferenceLlama

TOL = 1e-4
MAX_SEQ = 64


@pytest.fixture(scope="module")
def src():
    return make_tiny_source()


@pytest.fixture(scope="module")
def ids():
    return np.random.default_rng(1).integers(0, 256, 24)


@pytest.fixture(scope="module")
def built(src, tmp_path_factory):
    """{all_logits: (onnx path, graph_info)}"""
    out = {}
    for al in (False, True):
        d = tmp_path_factory.mktemp(f"fp32_{al}")
        out[al] = (d / "model.onnx", build_onnx(src, d, "fp32", all_logits=al, max_seq_len=MAX_SEQ))
    return out


def err(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max())


@pytest.mark.parametrize("shared", [True, False])
def test_prefill_all_logits(built, src, ids, shared):
    path, info = built[True]
    logits = OrtLlama(path, info, shared=shared).step(ids[:16], 0)
    assert logits.shape == (1, 16, src.config.vocab_size)
    assert err(logits[0], ReferenceLlama(src).forward(ids[:16], 0)) <= TOL


@pytest.mark.parametrize("shared", [True, False])
def test_prefill_chunk_then_decode(built, src, ids, shared):
    path, info = built[False]
    full = ReferenceLlama(src).forward(ids, 0)
    r = OrtLlama(path, info, shared=shared)
    out = r.step(ids[:8], 0)  # prefill from an empty cache
    assert out.shape == (1, 1, src.config.vocab_size)
    assert err(out[0, -1], full[7]) <= TOL
    assert err(r.step(ids[8:14], 8)[0, -1], full[13]) <= TOL  # continuation chunk on a cached prefix
    for t in range(14, len(ids)):  # single-token decode
        assert err(r.step(ids[t:t + 1], t)[0, -1], full[t]) <= TOL


def test_continuation_all_positions(built, src, ids):
    path, info = built[True]
    full = ReferenceLlama(src).forward(ids, 0)
    r = OrtLlama(path, info)
    r.step(ids[:5], 0)
    assert err(r.step(ids[5:17], 5)[0], full[5:17]) <= TOL


def test_prefix_reuse_rewinds_cache(built, src, ids):
    """The engine's prefix cache: keep the KV of the first N tokens, overwrite what follows."""
    path, info = built[False]
    r = OrtLlama(path, info)
    r.step(ids[:20], 0)
    alt = ids.copy()
    alt[10:] = (alt[10:] + 7) % 256
    full = ReferenceLlama(src).forward(alt, 0)
    assert err(r.step(alt[10:16], 10)[0, -1], full[15]) <= TOL
    assert err(r.step(alt[16:17], 16)[0, -1], full[16]) <= TOL


def test_batch2_different_lengths(built, src):
    path, info = built[False]
    ids = np.random.default_rng(2).integers(0, 256, (2, 12))
    ref = [ReferenceLlama(src).forward(ids[b], 0) for b in range(2)]
    r = OrtLlama(path, info, batch=2)
    out = r.step(ids[:, :8], 0)
    for b in range(2):
        assert err(out[b, -1], ref[b][7]) <= TOL
    out = r.step(ids[:, 8:9], 8)
    for b in range(2):
        assert err(out[b, -1], ref[b][8]) <= TOL
    # note: ORT's CPU GroupQueryAttention rejects multi-token chunks on a non-empty cache when batch > 1


def test_batch_continuation_chunk_unsupported(built):
    path, info = built[False]
    r = OrtLlama(path, info, batch=2)
    r.step(np.zeros((2, 4), np.int64), 0)
    with pytest.raises(Exception, match="batch_size must be 1"):
        r.step(np.zeros((2, 2), np.int64), 4)


@pytest.mark.parametrize("kw", [dict(attention_bias=True), dict(tie_word_embeddings=False), dict(heads=4, kv_heads=4)])
def test_variants(tmp_path, ids, kw):
    src = make_tiny_source(seed=3, **kw)
    info = build_onnx(src, tmp_path, "fp32", all_logits=True, max_seq_len=MAX_SEQ)
    assert err(OrtLlama(tmp_path / "model.onnx", info).step(ids, 0)[0], ReferenceLlama(src).forward(ids, 0)) <= TOL


def test_graph_info_and_files(built, src):
    path, info = built[False]
    json.dumps(info)
    assert (path.parent / "model.onnx.data").stat().st_size > 0
    names = [i["name"] for i in info["inputs"]]
    assert names[:3] == ["input_ids", "seqlens_k", "total_sequence_length"]
    assert names[3:5] == ["past_key_0", "past_value_0"]
    assert [o["name"] for o in info["outputs"]][:3] == ["logits", "present_key_0", "present_value_0"]
    assert info["max_seq_len"] == MAX_SEQ and info["kv_cache"]["shared_buffer"]
    m = onnx.load(str(path), load_external_data=False)
    ops = {n.op_type for n in m.graph.node}
    assert {"GroupQueryAttention", "SkipSimplifiedLayerNormalization", "SimplifiedLayerNormalization"} <= ops
    assert sum(n.op_type == "GroupQueryAttention" for n in m.graph.node) == src.config.num_layers


def test_nodes_named_after_projections(built, src):
    """bench/profile_graph.py --split lm_head (or qkv_proj, attention) finds nodes by these names."""
    m = onnx.load(str(built[False][0]), load_external_data=False)
    names = [n.name for n in m.graph.node]
    assert len(set(names)) == len(names)
    by_name = {n.name: n.op_type for n in m.graph.node}
    assert by_name["lm_head"] == "Gemm"  # tied fp32 head
    L = src.config.num_layers
    for i in range(L):
        assert by_name[f"layers.{i}.attention"] == "GroupQueryAttention"
        for proj in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"):
            assert by_name[f"layers.{i}.{proj}"] == "MatMul"
