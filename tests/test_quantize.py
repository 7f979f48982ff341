"""MatMulNBits packing, quantizers, exact GGUF mappings, and q4/q8 graphs vs the reference."""
import numpy as np
import onnx
import pytest

from edgeai.convert import quantize as Q
from edgeai.convert.builder import build_onnx
from edgeai.convert.tiny import make_tiny_source, to_q4_1, to_q8_0
from helpers import OrtLlama
from helpers.reference import ReferenceLlama


@pytest.mark.parametrize("bits", [4, 8])
def test_pack_roundtrip(rng, bits):
    q = rng.integers(0, 1 << bits, (6, 96)).astype(np.uint8)
    b = Q.pack_nbits(q, bits)
    assert b.shape == (6, 3, 32 * bits // 8) and b.dtype == np.uint8
    assert np.array_equal(Q.unpack_nbits(b, bits), q)
    zp = rng.integers(0, 1 << bits, (6, 3)).astype(np.uint8)  # odd block count: rows padded to bytes
    pz = Q.pack_zero_points(zp, bits)
    assert pz.size == 6 * (2 if bits == 4 else 3)
    assert np.array_equal(Q.unpack_zero_points(pz, 6, 3, bits), zp)


def test_nibble_order():
    b = Q.pack_nbits(np.tile(np.arange(32, dtype=np.uint8) % 16, (1, 1)), 4)
    assert b[0, 0, 0] == 0x10 and b[0, 0, 1] == 0x32  # element 2j low nibble, 2j+1 high nibble


@pytest.mark.parametrize("bits", [4, 8])
def test_rtn_error(rng, bits):
    w = rng.standard_normal((16, 128)).astype(np.float32)
    nw = Q.quantize_rtn(w, bits, search=False)
    step = nw.scales.repeat(32, axis=1)
    assert np.all(np.abs(nw.dequantize() - w) <= step * 0.5 + 1e-6)
    if bits == 4:
        searched = Q.quantize_rtn(w, 4, search=True)
        assert ((searched.dequantize() - w) ** 2).sum() <= ((nw.dequantize() - w) ** 2).sum()


@pytest.mark.parametrize("bits", [4, 8])
def test_symmetric_error(rng, bits):
    """Codes around the default zero point; each block's largest |w| lands on code 0 (the far end of the
    range) when the unshrunk scale wins; never worse than plain signed-max rounding."""
    w = rng.standard_normal((16, 128)).astype(np.float32)
    nw = Q.quantize_symmetric(w, bits)
    zp = Q.default_zero_point(bits)
    assert (nw.zero_points == zp).all() and nw.mins is None and nw.q.max() <= 2 * zp - 1
    wb = w.reshape(16, 4, 32)
    extreme = np.take_along_axis(wb, np.abs(wb).argmax(-1)[..., None], -1)[..., 0]
    plain = np.clip(np.round(wb / (extreme / -zp)[..., None]) + zp, 0, 2 * zp - 1)
    plain_err = (((plain - zp) * (extreme / -zp)[..., None] - wb) ** 2).sum()
    err = ((nw.dequantize() - w) ** 2).sum()
    assert err <= plain_err + 1e-6
    assert np.sqrt(err / (w ** 2).sum()) < (0.12 if bits == 4 else 0.006)
    unshrunk = np.isclose(nw.scales, extreme / -zp)
    assert unshrunk.any() and (nw.q.reshape(16, 4, 32).min(-1)[unshrunk] == 0).all()


def test_gguf_blocks_map_exactly(rng):
    w = rng.standard_normal((8, 64)).astype(np.float32)
    for bq in (to_q4_1(w), to_q8_0(w)):
        nw = Q.from_block_quantized(bq)
        np.testing.assert_allclose(nw.dequantize(), bq.dequantize(), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(Q.map_linear(bq, "q4").dequantize(), bq.dequantize(), rtol=1e-6, atol=1e-6)
    assert Q.from_block_quantized(to_q4_1(w), bits=8).dequantize() == pytest.approx(to_q4_1(w).dequantize())


def test_mixed_group_splits_into_runs(rng):
    w = rng.standard_normal((8, 64)).astype(np.float32)
    parts = [to_q4_1(w), to_q4_1(2 * w), to_q8_0(w)]
    g = Q.map_group(parts, "q4")  # mixed GGUF kinds: one fused 4-bit run, then the 8-bit part, each exact
    assert isinstance(g, list) and [(x.shape, x.bits) for x in g] == [((16, 64), 4), ((8, 64), 8)]
    np.testing.assert_allclose(np.concatenate([x.dequantize() for x in g]),
                               np.concatenate([p.dequantize() for p in parts]), atol=1e-6)
    g = Q.map_group([to_q4_1(w), w], "q4")  # 4-bit both: Q4_1 part exact, float part quantized
    assert g.bits == 4
    np.testing.assert_allclose(g.dequantize()[:8], parts[0].dequantize(), atol=1e-6)


# ---------------------------------------------------------------------------------------------- graphs

IDS = np.random.default_rng(1).integers(0, 256, 20)


def run(src, tmp_path, quant, acc, all_logits=True):
    info = build_onnx(src, tmp_path, quant, all_logits=all_logits, max_seq_len=64, accuracy_level=acc)
    r = OrtLlama(tmp_path / "model.onnx", info)
    out = [r.step(IDS[:12], 0)[0]]
    out += [r.step(IDS[t:t + 1], t)[0] for t in range(12, len(IDS))]
    return np.concatenate(out), info


def rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("quant", ["q4", "q8"])
@pytest.mark.parametrize("kw", [{}, {"attention_bias": True, "tie_word_embeddings": False}])
def test_graph_exact_on_effective_weights(tmp_path, quant, kw):
    """accuracy_level 0: ORT equals the reference run on the weights the graph really uses."""
    for qlike in (False, True):
        src = make_tiny_source(quantized_like_gguf=qlike, **kw)
        out, _ = run(src, tmp_path / f"{qlike}", quant, 0)
        assert np.abs(out - ReferenceLlama(Q.effective_source(src, quant)).forward(IDS, 0)).max() <= 1e-4


def test_q4_from_gguf_blocks_is_near_lossless(tmp_path):
    """Q4_1 layers + Q8_0 tied embedding map without re-quantization (only the mins are stored as digits,
    to 1/196 of their largest): q4 within 0.5% of the dequantized source, same argmax everywhere; every
    MatMulNBits uses the kernel's default zero point (no zero_points input: its faster path)."""
    src = make_tiny_source(quantized_like_gguf=True)
    ref = ReferenceLlama(src).forward(IDS, 0)
    out0, info = run(src, tmp_path / "a0", "q4", 0)
    m = onnx.load(str(tmp_path / "a0" / "model.onnx"), load_external_data=False)
    nbits = [n for n in m.graph.node if n.op_type == "MatMulNBits"]
    assert nbits and all(len(n.input) == 3 for n in nbits)
    assert {"lm_head", "layers.0.qkv_proj", "layers.0.down_proj"} <= {n.name for n in nbits}
    # the block sums a Q4_1 projection's mins need are named after it (profile_graph.py --split block_sums)
    assert any(n.name == "layers.0.qkv_proj.block_sums" and n.op_type == "ReduceSum" for n in m.graph.node)
    assert rel(out0, ref) < 5e-3 and (out0.argmax(-1) == ref.argmax(-1)).all()
    out4, info4 = run(src, tmp_path / "a4", "q4", 4)  # int8 activations inside MatMulNBits
    assert info4["accuracy_level"] == 4
    assert rel(out4, ref) < 0.05 and (out4.argmax(-1) == ref.argmax(-1)).mean() >= 0.9


def test_per_block_zero_points_option(tmp_path):
    """zero_points="per-block": the same exact mapping with a zero point per block (smaller offsets, so a closer
    product at float accuracy), graphs that carry zero_points inputs, and ORT equal to the reference on the
    weights it encodes."""
    src = make_tiny_source(quantized_like_gguf=True)
    q4_1 = next(w for w in src.tensors.values() if getattr(w, "kind", None) == "q4_1")
    a, b = Q.from_block_quantized(q4_1), Q.from_block_quantized(q4_1, zero_points="per-block")
    np.testing.assert_allclose(a.dequantize(), b.dequantize(), atol=1e-5)
    assert (a.zero_points == 8).all() and (b.zero_points != 8).any()
    assert np.abs(b.mins).max() <= 0.5 * b.scales.max() + 1e-6 < np.abs(a.mins).max()
    with pytest.raises(ValueError, match="zero_points"):
        Q.from_block_quantized(q4_1, zero_points="none")
    ref = ReferenceLlama(src).forward(IDS, 0)
    info = build_onnx(src, tmp_path, "q4", all_logits=True, max_seq_len=64, accuracy_level=0, zero_points="per-block")
    assert info["quant"]["zero_points"] == "per-block"
    m = onnx.load(str(tmp_path / "model.onnx"), load_external_data=False)
    assert any(len(n.input) == 4 for n in m.graph.node if n.op_type == "MatMulNBits")
    r = OrtLlama(tmp_path / "model.onnx", info)
    out = np.concatenate([r.step(IDS[:12], 0)[0]] + [r.step(IDS[t:t + 1], t)[0] for t in range(12, len(IDS))])
    assert np.abs(out - ReferenceLlama(Q.effective_source(src, "q4", "per-block")).forward(IDS, 0)).max() <= 1e-4
    assert rel(out, ref) < 1e-3


def test_symmetric_option(tmp_path):
    """zero_points="symmetric": every weight re-quantized around the default zero point (no zero_points
    inputs, no block sums), the tied q4 head in 4 bits of its own while the embedding keeps its exact 8-bit
    rows; ORT equals the reference on the weights it encodes, and the result is lossy but close."""
    src = make_tiny_source(quantized_like_gguf=True)
    info = build_onnx(src, tmp_path, "q4", all_logits=True, max_seq_len=64, accuracy_level=0, zero_points="symmetric")
    assert info["quant"]["zero_points"] == "symmetric" and "4-bit" in info["quant"]["lm_head"]
    m = onnx.load(str(tmp_path / "model.onnx"), load_external_data=False)
    nbits = {n.name: n for n in m.graph.node if n.op_type == "MatMulNBits"}
    assert all(len(n.input) == 3 for n in nbits.values())
    assert all({a.name: a.i for a in n.attribute}["bits"] == 4 for n in nbits.values())
    assert not any("block_sums" in n.name for n in m.graph.node)
    assert nbits["lm_head"].input[1] != "embed_tokens.qweight"
    r = OrtLlama(tmp_path / "model.onnx", info)
    out = np.concatenate([r.step(IDS[:12], 0)[0]] + [r.step(IDS[t:t + 1], t)[0] for t in range(12, len(IDS))])
    eff = Q.effective_source(src, "q4", "symmetric")
    assert "lm_head.weight" in eff.tensors  # the head no longer equals the (exact) embedding
    assert np.abs(out - ReferenceLlama(eff).forward(IDS, 0)).max() <= 1e-4
    assert "embed_tokens.scales" not in {i.name for i in m.graph.initializer}  # no unused float32 copy
    ref = ReferenceLlama(src).forward(IDS, 0)
    # re-quantized: visibly lossy (the exact form is within 0.5%), still the same model on this tiny one
    assert 0.01 < rel(out, ref) < 0.5 and (out.argmax(-1) == ref.argmax(-1)).mean() >= 0.8


def test_q8_close_to_fp32(tmp_path):
    src = make_tiny_source()
    ref = ReferenceLlama(src).forward(IDS, 0)
    out, _ = run(src, tmp_path, "q8", 4)
    assert rel(out, ref) < 0.05 and (out.argmax(-1) == ref.argmax(-1)).mean() >= 0.9


def test_no_float_embedding_table(tmp_path):
    src = make_tiny_source(quantized_like_gguf=True)
    build_onnx(src, tmp_path, "q4", max_seq_len=64)
    m = onnx.load(str(tmp_path / "model.onnx"), load_external_data=False)
    c = src.config
    for t in m.graph.initializer:
        assert not (t.data_type == onnx.TensorProto.FLOAT and c.vocab_size in t.dims and c.hidden_size in t.dims)
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("MatMulNBits") == 4 * c.num_layers + 1  # fused qkv, o, fused gate_up, down; head


def test_accuracy_level_per_role(tmp_path):
    src = make_tiny_source(quantized_like_gguf=True)
    info = build_onnx(src, tmp_path, "q4", max_seq_len=64, accuracy_level={"down": 0, "lm_head": 0})
    assert info["accuracy_level"]["down"] == 0 and info["accuracy_level"]["qkv"] == 4
    m = onnx.load(str(tmp_path / "model.onnx"), load_external_data=False)
    levels = {n.input[1]: next(a.i for a in n.attribute if a.name == "accuracy_level")
              for n in m.graph.node if n.op_type == "MatMulNBits"}
    assert levels["layers.0.down_proj.qweight"] == 0 and levels["layers.0.qkv_proj.qweight"] == 4
    assert levels["embed_tokens.qweight"] == 0


@pytest.mark.parametrize("bits", [4, 8])
def test_fold_mins_puts_the_mins_term_inside_the_product(bits):
    """[x, block sums x digits] @ folded^T == x @ (weights with the encoded mins)^T, the original codes and
    scales are kept as they are, the mins' codes sit around the default zero point, and each encoded min is
    within 1/196 (4-bit) or 1/254 (8-bit) of the largest |min| in its row block."""
    rng = np.random.default_rng(3)
    n, k = 24, 96  # 3 blocks of 32: the block sums are padded to one whole block
    q = rng.integers(0, 1 << bits, (n, k)).astype(np.uint8)
    scales = rng.uniform(0.01, 0.1, (n, k // 32)).astype(np.float32)
    zp = rng.integers(0, 1 << bits, (n, k // 32)).astype(np.uint8)
    mins = (rng.uniform(-0.5, 0.5, (n, k // 32)) * scales).astype(np.float32)
    w = Q.NBitsWeight(bits, q, scales, zp, mins)
    folded, encoded = Q.fold_mins(w)
    assert folded.mins is None and folded.shape == (n, k + 32 * Q.mins_digits(w))
    assert (folded.q[:, :k] == q).all() and (folded.scales[:, :3] == scales).all()
    assert (folded.zero_points[:, 3:] == Q.default_zero_point(bits)).all()
    largest = np.abs(mins).max(1)
    assert (np.abs(encoded - mins) <= largest[:, None] / (196 if bits == 4 else 254) + 1e-9).all()
    x = rng.standard_normal((5, k)).astype(np.float32)
    sums = np.pad(x.reshape(5, 3, 32).sum(-1), ((0, 0), (0, 29)))
    x_aug = np.concatenate([x] + [sums] * Q.mins_digits(w), axis=1)
    as_encoded = Q.NBitsWeight(bits, q, scales, zp, encoded)
    np.testing.assert_allclose(x_aug @ folded.dequantize().T, x @ as_encoded.dequantize().T, rtol=1e-4, atol=1e-4)
