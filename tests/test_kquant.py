"""Every ggml block type that real GGUF files use maps onto MatMulNBits with its own codes and scales.

The tests write random blocks (any codes, any packed sub-block scales; sane float16 super-scales) into tiny
Qwen2-shaped GGUF files, and check (1) the reader's codes decode to exactly what `gguf`'s own dequantization
gives, (2) the MatMulNBits form decodes to the same weights, and (3) a converted graph equals the NumPy
reference run on the weights it encodes.
"""
import numpy as np
import onnx
import pytest

from conftest import write_tiny_gguf
from edgeai.convert import quantize as Q
from edgeai.convert.builder import build_onnx
from edgeai.convert.gguf_source import load_gguf
from edgeai.convert.weights import BLOCK_KINDS, BlockQuantized, as_float
from helpers import OrtLlama
from helpers.reference import ReferenceLlama

KINDS = sorted(BLOCK_KINDS)
IDS = np.random.default_rng(1).integers(0, 512, 20)


def test_every_kind_decodes_like_gguf(tmp_path, tiny_llm):
    """One tensor of each kind: the reader's BlockQuantized equals gguf.quants.dequantize bit for bit, and the
    exact MatMulNBits form decodes to the same weights (4-bit codes in 4 bits, wider ones in 8, Q6_K in blocks
    of 16, every zero point the kernel's default)."""
    src = tiny_llm(hidden=256, intermediate=512, heads=4, kv_heads=2, vocab=512)
    roles = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
             "mlp.up_proj", "mlp.down_proj"]
    types = {f"model.layers.0.{r}.weight": k for r, k in zip(roles, KINDS)}
    path = tmp_path / "kinds.gguf"
    expected = write_tiny_gguf(path, src, arch="qwen2", weights=types)
    got = load_gguf(path)
    for name, kind in types.items():
        t = got.tensors[name]
        assert isinstance(t, BlockQuantized) and t.kind == kind, name
        assert np.array_equal(t.dequantize().view(np.uint32), expected[name].view(np.uint32)), kind
        nw = Q.from_block_quantized(t)
        assert nw.bits == (4 if t.code_bits <= 4 else 8) and nw.block_size == (16 if kind == "q6_k" else 32)
        assert (nw.zero_points == Q.default_zero_point(nw.bits)).all() and nw.origin == kind
        np.testing.assert_allclose(nw.dequantize(), expected[name], rtol=0, atol=1e-6 * np.abs(expected[name]).max())
        wide = Q.from_block_quantized(t, bits=8)  # the q8 form keeps the same values
        np.testing.assert_allclose(wide.dequantize(), expected[name], rtol=0, atol=1e-6 * np.abs(expected[name]).max())


def qwen_k_quant(tiny_llm, tmp_path):
    """A tiny Qwen2 (q/k/v biases, untied head) laid out like a Q4_K_M file: q/k Q4_K, v Q6_K in layer 0 and
    Q5_0 in layer 1, o Q5_K, gate/up Q4_K and Q5_0, down Q6_K and Q4_0, embedding Q4_K, head Q6_K."""
    src = tiny_llm(hidden=256, intermediate=512, heads=4, kv_heads=2, vocab=512, attention_bias=True,
                   tie_word_embeddings=False, num_layers=2)
    types = {"model.embed_tokens.weight": "q4_k", "lm_head.weight": "q6_k"}
    for i, (v, gu, down) in enumerate([("q6_k", "q4_k", "q6_k"), ("q5_0", "q5_0", "q4_0")]):
        p = f"model.layers.{i}."
        types.update({p + "self_attn.q_proj.weight": "q4_k", p + "self_attn.k_proj.weight": "q4_k",
                      p + "self_attn.v_proj.weight": v, p + "self_attn.o_proj.weight": "q5_k",
                      p + "mlp.gate_proj.weight": gu, p + "mlp.up_proj.weight": gu if i else "q4_1",
                      p + "mlp.down_proj.weight": down})
    path = tmp_path / "qwen.gguf"
    write_tiny_gguf(path, src, arch="qwen2", weights=types)
    return load_gguf(path)


def test_k_quant_graph_is_exact(tmp_path, tiny_llm):
    """accuracy_level 0: ORT equals the reference on the weights the graph encodes; those are the source's
    own weights but for the offsets' digits (mins); a group mixing 4- and 8-bit parts runs as one MatMulNBits
    per run plus a Concat, and no node carries zero points."""
    s = qwen_k_quant(tiny_llm, tmp_path)
    assert s.config.architecture == "qwen2" and s.config.attention_bias and not s.config.tie_word_embeddings
    info = build_onnx(s, tmp_path / "m", "q4", all_logits=True, max_seq_len=64, accuracy_level=0)
    r = OrtLlama(tmp_path / "m" / "model.onnx", info)
    out = np.concatenate([r.step(IDS[:12], 0)[0]] + [r.step(IDS[t:t + 1], t)[0] for t in range(12, len(IDS))])
    want = ReferenceLlama(Q.effective_source(s, "q4")).forward(IDS, 0)
    assert np.abs(out - want).max() <= 1e-5 * np.abs(want).max()  # float32 rounding only
    # Against the dequantized source itself the only difference is the offsets' digits (fold_mins), each within
    # 1/196 of the largest offset in its run of 32 blocks; random K-quant mins are a worst case for that.
    for name, t in s.tensors.items():
        if isinstance(t, BlockQuantized) and t.mins is not None:
            w = Q.from_block_quantized(t)
            err = np.abs(Q.fold_mins(w)[1] - w.mins).max()
            assert err <= np.abs(w.mins).max() / 196 + 1e-7, name
    ref = ReferenceLlama(s).forward(IDS, 0)
    assert np.abs(out - ref).max() / np.abs(ref).max() < 0.06 and (out.argmax(-1) == ref.argmax(-1)).mean() >= 0.9
    m = onnx.load(str(tmp_path / "m" / "model.onnx"), load_external_data=False)
    nbits = {n.name: n for n in m.graph.node if n.op_type == "MatMulNBits"}
    assert all(len(n.input) == 3 for n in nbits.values())
    attrs = {k: {a.name: a.i for a in n.attribute} for k, n in nbits.items()}
    assert attrs["layers.0.qkv_proj.part0"]["bits"] == 4 and attrs["layers.0.qkv_proj.part1"]["block_size"] == 16
    assert "layers.1.qkv_proj.part1" in attrs  # Q4_K q/k + Q5_0 v: 4-bit run, 8-bit run
    assert attrs["lm_head"]["bits"] == 8 and attrs["lm_head"]["block_size"] == 16
    assert "8-bit q6_k block 16" in info["quant"]["projections"] and "4-bit q4_k" in info["quant"]["projections"]
    # the Q4_K embedding keeps its codes packed in 4 bits (gathered rows are unpacked in the graph)
    assert info["quant"]["embedding"].startswith("4-bit") and any(n.op_type == "BitShift" for n in m.graph.node)


def test_k_quant_conversion_end_to_end(tmp_path, tiny_llm):
    """The pipeline (calibration on lazily read tensors, graph, manifest) converts a K-quant file and the LLM
    runs it; q4 (int8 activations) starts like the fp32 conversion of the same file. Random weights make
    near-ties, so the prompt is the one (of a few) whose fp32 top-1 leads by the widest margin, and only the
    first token is held equal: int8 rounding differs between AVX2 and AVX-512/VNNI kernels."""
    from edgeai import LLM
    from edgeai.convert.pipeline import convert
    from edgeai.manifest import load_manifest

    s = qwen_k_quant(tiny_llm, tmp_path)
    path = s.source["path"]
    ref = ReferenceLlama(s)

    def margin(ids):
        top = np.sort(ref.forward(np.asarray(ids), 0)[-1])[::-1]
        return top[0] - top[1]
    prompt = max((list(map(int, IDS[i:i + 8])) for i in range(0, 12, 3)), key=margin)
    outs = {}
    for quant in ("fp32", "q4"):
        folder = convert(path, tmp_path / quant, quant=quant, max_seq_len=128, progress=False)
        with LLM(folder, threads=1) as llm:
            outs[quant] = llm.generate(prompt, max_new_tokens=12, prompt_lookup=0).token_ids
        assert load_manifest(folder)["quantization"]["source_weights"] == "Q4_K"
    assert len(outs["q4"]) == 12 and outs["q4"][0] == outs["fp32"][0]


def test_unknown_block_type_is_refused_before_conversion(tmp_path, tiny_llm):
    """A type edgeai cannot read fails at load, naming the tensor and type, and convert leaves no folder."""
    from edgeai.convert.pipeline import convert

    src = tiny_llm(hidden=256, intermediate=512, heads=4, kv_heads=2, vocab=512)
    path = tmp_path / "q8k.gguf"
    write_tiny_gguf(path, src, weights={"model.layers.0.mlp.up_proj.weight": "q8_k"})
    with pytest.raises(ValueError, match=r"blk\.0\.ffn_up\.weight.*Q8_K"):
        load_gguf(path)
    with pytest.raises(ValueError, match="Q8_K"):
        convert(path, tmp_path / "out", quant="q4", progress=False)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))
