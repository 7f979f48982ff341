"""Build an ONNX decoder graph (with KV cache) from a `SourceModel`, using ORT's fused CPU contrib ops.

Graph I/O contract (the C++ decode engine and the evaluators depend on it; `graph_info` restates it):

  inputs
    input_ids              int64   [batch, seq]
    seqlens_k              int32   [batch]   total tokens in the cache AFTER this step, minus 1
    total_sequence_length  int32   [1]       max over the batch of (past + seq)
    past_key_{i}           float32 [batch, kv_heads, past_seq, head_dim]   i = 0..num_layers-1
    past_value_{i}         float32 [batch, kv_heads, past_seq, head_dim]
    num_logits             int64   [1]       optional (default 1): logits of the last num_logits positions
  outputs
    logits                 float32 [batch, num_logits, vocab], or [batch, seq, vocab] (all_logits graphs)
    present_key_{i}        float32 [batch, kv_heads, present_seq, head_dim]
    present_value_{i}      float32 [batch, kv_heads, present_seq, head_dim]

  The engine allocates past buffers of `max_seq_len` and binds past_* and present_* to the SAME buffer;
  GroupQueryAttention then writes the new keys/values in place at positions seqlens_k+1-seq .. seqlens_k
  and present_seq == past_seq. Unshared buffers also work (present_seq = max(past_seq, total)).
  Positions for RoPE come from seqlens_k (past length = seqlens_k + 1 - seq), so one graph serves
  prefill from an empty cache, a multi-token continuation on top of a cached prefix, and 1-token decode.
  Limit (ORT 1.32 CPU GQA): a multi-token continuation on a non-empty cache needs batch == 1.

Per layer (fused ops keep the node count low, which matters for 1-token decode latency):
  SkipSimplifiedLayerNorm -> one q/k/v projection -> GroupQueryAttention (RoPE inside, cos/sin caches
  as initializers, packed QKV) -> o_proj -> SkipSimplifiedLayerNorm -> one gate/up projection -> Split
  -> x*sigmoid(x)*up -> down_proj.
Projections are MatMul (fp32) or MatMulNBits (q4/q8, see quantize.py; a fused group whose GGUF parts differ in
bit width or block size is one MatMulNBits per run plus a Concat); GGUF weights with mins add a "mins" term
sum_b m'_b * sum(x_b), folded into the same MatMulNBits: the input gets its block sums appended (one MatMul
with a 0/1 matrix and a Concat) and the weight the mins as extra columns (`fold_mins`).
Quantized embeddings keep their block codes (4-bit codes packed two to a byte, wider ones one a byte): only the
gathered rows are dequantized, and a tied LM head (MatMulNBits) reuses the same initializers, so no float
vocab x hidden table exists in q4/q8.

accuracy_level 4 (int8 activations inside MatMulNBits) is the default: ~10x faster than 0 for 4-bit on
CPU. SmolLM2-135M Q4_1, GPL-3 first 2048 tokens: fp32 19.7155, q4 level 4 19.83 (19.79 with the mins as a
separate float MatMul: 240 more nodes per decode step, see fold_mins). At level 0 q4 stays within 0.1% of fp32.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .quantize import (NBitsWeight, as_nbits_list, default_zero_point, embedding_table, fold_mins, lm_head_weight,
                       map_group, map_linear, mins_digits)
from .weights import BlockQuantized, SourceModel, as_float

OPSET = 17
MS = "com.microsoft"
DATA_FILE = "model.onnx.data"
ALIGN = 4096  # page-aligned external tensors let ORT memory-map them


class _Graph:
    """Accumulates nodes/initializers; big initializers go straight to the external data file."""

    def __init__(self, data_path: Path):
        self.nodes, self.inits, self.inputs, self.outputs = [], [], [], []
        self.n = 0
        self.data = open(data_path, "wb")
        self.consts = {}
        self.ranges = {}  # external initializer -> [offset, length] in the data file

    def name(self, base):
        self.n += 1
        return f"{base}_{self.n}"

    def init(self, name, arr):
        arr = np.ascontiguousarray(arr)
        t = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(arr.dtype), dims=arr.shape)
        if arr.nbytes < 1024:
            t.raw_data = arr.tobytes()
        else:
            pad = (-self.data.tell()) % ALIGN
            self.data.write(b"\0" * pad)
            off = self.data.tell()
            self.ranges[name] = [off, arr.nbytes]
            self.data.write(arr.tobytes())
            t.data_location = TensorProto.EXTERNAL
            for k, v in (("location", DATA_FILE), ("offset", str(off)), ("length", str(arr.nbytes))):
                e = t.external_data.add()
                e.key, e.value = k, v
        self.inits.append(t)
        return name

    def const(self, values, dtype=np.int64):
        arr = np.asarray(values, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self.consts:
            self.consts[key] = self.init(self.name("const"), arr)
        return self.consts[key]

    def op(self, op_type, inputs, n_out=1, domain="", base=None, node_name=None, **attrs):
        """Add a node; node_name (unique) names it for profilers (bench/profile_graph.py --split)."""
        outs = [self.name(base or op_type) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=node_name or self.name("n_" + op_type),
                                           domain=domain, **attrs))
        return outs[0] if n_out == 1 else outs


def _quantized_embedding(g: _Graph, ew: NBitsWeight, src, hidden: int, head_shares: bool):
    """Gather + dequantize rows of the block table `ew` (4- or 8-bit codes; `src` the source tensor, for exact
    offsets): returns (h, codes, scales, gathered_ranges).

    With head_shares, codes and scales (float32) are also the tied head's MatMulNBits inputs (else scales is
    None where the rows need no float32 copy). The rows are gathered from the mapped file, a few per token, so
    every gathered table costs resident pages and disk: 4-bit codes stay packed two to a byte (unpacked after
    the gather), GGUF block scales that float16 holds exactly gather from a float16 copy, and kinds without
    mins need no offset table. Rows decode exactly as ggml does: d*(q - z), or d*q + m with the source's m."""
    f32 = TensorProto.FLOAT
    qb = g.init("embed_tokens.qweight", ew.packed_b())  # [V, nb, block * bits / 8] uint8
    exact16 = np.array_equal(ew.scales.astype(np.float16), ew.scales)
    sc = g.init("embed_tokens.scales", ew.scales) if head_shares or not exact16 else None
    row_sc = g.init("embed_tokens.row_scales", ew.scales.astype(np.float16)) if exact16 else sc
    rows = g.op("Gather", [qb, "input_ids"])
    if ew.bits == 4:  # element 2j in the low nibble, 2j+1 in the high one
        four = g.const([4], np.uint8)
        lo = g.op("BitShift", [g.op("BitShift", [rows, four], direction="LEFT"), four], direction="RIGHT")
        hi = g.op("BitShift", [rows, four], direction="RIGHT")
        pairs = g.op("Concat", [g.op("Unsqueeze", [lo, g.const([-1])]), g.op("Unsqueeze", [hi, g.const([-1])])],
                     axis=-1)
        rows = g.op("Reshape", [pairs, g.const([0, 0, 0, -1])])
    rows = g.op("Cast", [rows], to=f32)
    s_ = g.op("Unsqueeze", [g.op("Gather", [row_sc, "input_ids"]), g.const([-1])])
    if exact16:
        s_ = g.op("Cast", [s_], to=f32)
    zp = np.unique(ew.zero_points)
    mins = src.mins if isinstance(src, BlockQuantized) else None
    if mins is not None:  # w = d*q + m: the codes' shift from the source's undone, the source's own mins
        k = float(int(zp[0]) - (1 << (src.code_bits - 1)))
        q_ = g.op("Sub", [rows, g.const([k], np.float32)]) if k else rows
        off = g.init("embed_tokens.offset", mins.astype(np.float32))
        o_ = g.op("Unsqueeze", [g.op("Gather", [off, "input_ids"]), g.const([-1])])
        w_rows = g.op("Add", [g.op("Mul", [q_, s_]), o_])
        tables = [qb, row_sc, off]
    elif ew.mins is None and len(zp) == 1:  # w = scale * (q - zp)
        w_rows = g.op("Mul", [g.op("Sub", [rows, g.const([float(zp[0])], np.float32)]), s_])
        tables = [qb, row_sc]
    else:  # re-quantized float table: w = scale*q + offset  with offset = mins - scale*zp
        off = (ew.mins if ew.mins is not None else 0) - ew.scales * ew.zero_points.astype(np.float32)
        off = g.init("embed_tokens.offset", off.astype(np.float32))
        o_ = g.op("Unsqueeze", [g.op("Gather", [off, "input_ids"]), g.const([-1])])
        w_rows = g.op("Add", [g.op("Mul", [rows, s_]), o_])
        tables = [qb, row_sc, off]
    h = g.op("Reshape", [w_rows, g.const([0, 0, hidden])])
    return h, qb, sc, [g.ranges[n] for n in tables]


def _rope_cache(cfg, max_seq_len):
    from .rope import inv_freq

    ang = np.arange(max_seq_len, dtype=np.float64)[:, None] * inv_freq(cfg)[None, :]
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


class _Builder:
    def __init__(self, g: _Graph, quant: str, accuracy_level):
        self.g, self.quant = g, quant
        roles = ("qkv", "o", "gate_up", "down", "lm_head")
        if isinstance(accuracy_level, dict):  # per projection role; missing roles use 4
            self.acc = {r: int(accuracy_level.get(r, 4)) for r in roles}
        else:
            self.acc = {r: int(accuracy_level) for r in roles}
        self.block_sums = {}  # (input name, digits) -> [input, its block sums..] (shared by fused projections)
        self.mapped = {}  # "bits-bit origin" -> number of projections (reported in graph_info)

    def _with_block_sums(self, x, k, block, digits, name):
        """[x, s, .., s] with s = the per-block sums of x [.., K], padded to whole blocks and repeated `digits`
        times: the input of a MatMulNBits whose weight went through `fold_mins`. The sums are Reshape +
        ReduceSum (+ Pad): they read only x. (A MatMul with a 0/1 matrix is one node instead of three, but it
        streams K x nb floats per step: 10 MB per Q4_K down projection of the 1.5B model, 178 MB per token
        in all, 14 % more than the weights themselves.)"""
        if (x, digits) not in self.block_sums:
            nb = k // block
            g = self.g
            blocks = g.op("Reshape", [x, g.const([0, 0, nb, block])], node_name=name + ".blocks")
            sums = g.op("ReduceSum", [blocks, g.const([-1])], keepdims=0, node_name=name + ".block_sums")
            if nb % block:  # whole blocks, so that int8 activation quantization keeps the sums apart from x
                sums = g.op("Pad", [sums, g.const([0, 0, 0, 0, 0, -nb % block])], node_name=name + ".pad_sums")
            self.block_sums[(x, digits)] = g.op("Concat", [x] + [sums] * digits, axis=-1,
                                                node_name=name + ".with_block_sums")
        return self.block_sums[(x, digits)]

    def matmul_nbits(self, x, w: NBitsWeight, name, accuracy_level, shared=None):
        """x @ w^T with one MatMulNBits; a Q4_1 mins term rides along as extra input columns (fold_mins).
        shared: existing initializers (codes, scales) holding w (the embedding table, for a tied head)."""
        if w.mins is not None:
            x = self._with_block_sums(x, w.shape[1], w.block_size, mins_digits(w), name)
            w, shared = fold_mins(w)[0], None
        n, k = w.shape
        codes, scales = shared or (self.g.init(name + ".qweight", w.packed_b()), self.g.init(name + ".scales", w.scales))
        ins = [x, codes, scales]
        if (w.zero_points != default_zero_point(w.bits)).any():  # else the kernel's default: its faster path
            ins.append(self.g.init(name + ".zero_points", w.packed_zero_points()))
        return self.g.op("MatMulNBits", ins, domain=MS, K=k, N=n, bits=w.bits, block_size=w.block_size,
                         accuracy_level=accuracy_level, node_name=name)

    def linear(self, x, w, name, bias=None, transposed_init=None, role="qkv", accuracy_level=None):
        """y = x @ w^T (+ bias); w is float [N, K], an NBitsWeight, or a list of them (parts of different bit
        widths or block sizes, see map_group) whose outputs are concatenated."""
        g = self.g
        if isinstance(w, np.ndarray):
            y = g.op("MatMul", [x, transposed_init or g.init(name + ".weight_t", w.T)], node_name=name)
        else:
            parts = as_nbits_list(w)
            ys = []
            for j, p in enumerate(parts):
                tag = f"{p.bits}-bit {p.origin}" + (f" block {p.block_size}" if p.block_size != 32 else "")
                self.mapped[tag] = self.mapped.get(tag, 0) + 1
                ys.append(self.matmul_nbits(x, p, name if len(parts) == 1 else f"{name}.part{j}",
                                            self.acc[role] if accuracy_level is None else accuracy_level))
            y = ys[0] if len(ys) == 1 else g.op("Concat", ys, axis=-1, node_name=name + ".concat")
        if bias is not None:
            y = g.op("Add", [y, g.init(name + ".bias", bias.astype(np.float32))])
        return y


def build_onnx(source: SourceModel, out_dir: Path, quant: str = "fp32", all_logits: bool = False,
               max_seq_len: int | None = None, accuracy_level=4, precise_mlp_layers=(),
               zero_points: str = "default") -> dict:
    """Write out_dir/model.onnx (+ model.onnx.data) and return the JSON-serialisable graph_info.

    accuracy_level: MatMulNBits compute precision (4: int8 activations, fast; 0: float, exact), an int or a
    dict per projection role {"qkv", "o", "gate_up", "down", "lm_head"}.
    zero_points: "default" or "per-block" (where exact mappings with mins put their zero points), "rtn" (GGUF
    blocks re-quantized like float weights, to measure what exactness buys), or "symmetric"
    (every weight re-quantized around the default zero point, the q4 head too), see convert.quantize.
    precise_mlp_layers: layers whose gate/up projection must see float activations (massive-activation
    layers, see calibrate.py): 4-bit weights run at accuracy_level 1, 8-bit ones as a float MatMul (ORT's
    8-bit kernel at float accuracy is ~40x slower than a plain MatMul for one row).
    """
    if quant not in ("fp32", "q4", "q8"):
        raise ValueError(f"quant must be fp32, q4 or q8, not {quant!r}")
    cfg, t = source.config, source.tensors
    max_seq_len = int(max_seq_len or cfg.max_position_embeddings)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    g = _Graph(out_dir / DATA_FILE)
    b = _Builder(g, quant, accuracy_level if quant != "fp32" else 0)
    L, H, KV, D, E = cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size
    f32, i64, i32 = TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT32
    vi = helper.make_tensor_value_info

    g.inputs += [vi("input_ids", i64, ["batch", "sequence_length"]), vi("seqlens_k", i32, ["batch"]),
                 vi("total_sequence_length", i32, [1])]
    for i in range(L):
        for kind in ("key", "value"):
            g.inputs.append(vi(f"past_{kind}_{i}", f32, ["batch", KV, "past_sequence_length", D]))
    if not all_logits:
        # An input with a default (an initializer listed among the inputs): callers that never feed it get the
        # last position's logits; the engine feeds k+1 to verify k draft tokens in one step.
        g.inputs.append(vi("num_logits", i64, [1]))
        g.inits.append(numpy_helper.from_array(np.array([1], np.int64), "num_logits"))

    # ---- embedding (and the tied LM head's weights)
    emb_src = t["model.embed_tokens.weight"]
    tied = "lm_head.weight" not in t
    # a tied head reads the embedding's 8-bit codes in place, unless the symmetric q4 form re-quantizes it
    head_shares = tied and not (quant == "q4" and zero_points == "symmetric")
    head_info, gathered = {}, []
    if quant == "fp32":
        emb_name = g.init("embed_tokens.weight", as_float(emb_src))
        h = g.op("Gather", [emb_name, "input_ids"])
    else:
        ew = embedding_table(emb_src, zero_points)
        h, qb, sc, gathered = _quantized_embedding(g, ew, emb_src, E, head_shares)
        head_info["embedding"] = f"{ew.bits}-bit rows gathered and dequantized in-graph ({ew.origin})"

    cos, sin = _rope_cache(cfg, max_seq_len)
    cos_name, sin_name = g.init("cos_cache", cos), g.init("sin_cache", sin)
    eps = float(cfg.rms_norm_eps)

    x = g.op("SimplifiedLayerNormalization", [h, g.init("layers.0.input_layernorm.weight",
                                                        as_float(t["model.layers.0.input_layernorm.weight"]))],
             axis=-1, epsilon=eps, stash_type=1)
    for i in range(L):
        p = f"model.layers.{i}."
        qkv_w = map_group([t[p + f"self_attn.{n}_proj.weight"] for n in "qkv"], quant, zero_points)
        bias = None
        if p + "self_attn.q_proj.bias" in t:
            bias = np.concatenate([as_float(t[p + f"self_attn.{n}_proj.bias"]) for n in "qkv"])
        qkv = b.linear(x, qkv_w, f"layers.{i}.qkv_proj", bias)
        attn, pk, pv = g.op("GroupQueryAttention",
                            [qkv, "", "", f"past_key_{i}", f"past_value_{i}", "seqlens_k", "total_sequence_length",
                             cos_name, sin_name], n_out=3, domain=MS, node_name=f"layers.{i}.attention",
                            num_heads=H, kv_num_heads=KV, do_rotary=1, rotary_interleaved=0,
                            scale=float(1.0 / np.sqrt(D)))
        g.nodes[-1].output[1], g.nodes[-1].output[2] = f"present_key_{i}", f"present_value_{i}"
        if not all_logits and i + 1 == L:
            # Only the last num_logits positions feed the LM head, and the cache needs nothing from the last
            # layer past its attention: its o_proj and MLP run on those positions only (prefill: ~1/L less
            # projection work).
            start = g.op("Neg", ["num_logits"])
            end = g.const([np.iinfo(np.int64).max])
            attn = g.op("Slice", [attn, start, end, g.const([1])])
            h = g.op("Slice", [h, start, end, g.const([1])])
        o = b.linear(attn, map_linear(t[p + "self_attn.o_proj.weight"], quant, zero_points), f"layers.{i}.o_proj",
                     role="o")
        x2, _, _, h = g.op("SkipSimplifiedLayerNormalization",
                           [o, h, g.init(f"layers.{i}.post_attention_layernorm.weight",
                                         as_float(t[p + "post_attention_layernorm.weight"]))],
                           n_out=4, domain=MS, epsilon=eps)
        g.nodes[-1].output[1], g.nodes[-1].output[2] = "", ""
        gu_w = map_group([t[p + "mlp.gate_proj.weight"], t[p + "mlp.up_proj.weight"]], quant, zero_points)
        precise = i in precise_mlp_layers and not isinstance(gu_w, np.ndarray)
        if precise and any(p.bits == 8 for p in as_nbits_list(gu_w)):
            gu_w = map_group([t[p + "mlp.gate_proj.weight"], t[p + "mlp.up_proj.weight"]], "fp32")
        gu = b.linear(x2, gu_w, f"layers.{i}.gate_up_proj", role="gate_up", accuracy_level=1 if precise else None)
        gate, up = g.op("Split", [gu, g.const([cfg.intermediate_size] * 2)], n_out=2, axis=-1)
        act = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])]), up])
        down = b.linear(act, map_linear(t[p + "mlp.down_proj.weight"], quant, zero_points), f"layers.{i}.down_proj",
                        role="down")
        nxt = f"model.layers.{i + 1}.input_layernorm.weight" if i + 1 < L else "model.norm.weight"
        x, _, _, h = g.op("SkipSimplifiedLayerNormalization",
                          [down, h, g.init(nxt.replace("model.", ""), as_float(t[nxt]))],
                          n_out=4, domain=MS, epsilon=eps)
        g.nodes[-1].output[1], g.nodes[-1].output[2] = "", ""

    # ---- LM head
    V = cfg.vocab_size
    if quant == "fp32":
        if tied:  # Gemm(transB) reads the embedding table in place: no transposed copy
            flat = g.op("Reshape", [x, g.const([-1, E])])
            y = g.op("Gemm", [flat, emb_name], transB=1, node_name="lm_head")
            shp = g.op("Concat", [g.op("Shape", [x], start=0, end=2), g.const([V])], axis=0)
            logits = g.op("Reshape", [y, shp])
        else:
            logits = b.linear(x, as_float(t["lm_head.weight"]), "lm_head")
    else:
        if head_shares:  # (a Q4_1 table's folded mins need their own copy)
            hw = ew
            logits = b.matmul_nbits(x, hw, "lm_head", b.acc["lm_head"], shared=(qb, sc))
        else:  # its own weight: 8-bit (exact from GGUF blocks) unless re-quantized symmetric (see lm_head_weight)
            hw = lm_head_weight(emb_src if tied else t["lm_head.weight"], quant, zero_points)
            logits = b.linear(x, hw, "lm_head", role="lm_head")
        head_info["lm_head"] = f"{hw.bits}-bit MatMulNBits ({hw.origin})"
    g.nodes[-1].output[0] = "logits"
    g.data.close()

    g.outputs.append(vi("logits", f32, ["batch", "sequence_length" if all_logits else "num_logits", V]))
    for i in range(L):
        for kind in ("key", "value"):
            g.outputs.append(vi(f"present_{kind}_{i}", f32, ["batch", KV, "present_sequence_length", D]))
    graph = helper.make_graph(g.nodes, "edgeai_llama", g.inputs, g.outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)],
                              producer_name="edgeai")
    model.ir_version = 8
    onnx.save_model(model, str(out_dir / "model.onnx"))

    def io(v):
        tt = v.type.tensor_type
        return {"name": v.name, "dtype": {1: "float32", 6: "int32", 7: "int64"}[tt.elem_type],
                "shape": [d.dim_param or d.dim_value for d in tt.shape.dim]}

    info = {
        "format": "edgeai-llama-gqa/1",
        "opset": {"ai.onnx": OPSET, MS: 1},
        "inputs": [io(v) for v in g.inputs],
        "outputs": [io(v) for v in g.outputs],
        "num_layers": L, "num_heads": H, "num_kv_heads": KV, "head_dim": D, "hidden_size": E, "vocab_size": V,
        "kv_cache": {"past": "past_{key,value}_{i}", "present": "present_{key,value}_{i}", "dtype": "float32",
                     "layout": "batch, kv_heads, seq, head_dim", "shared_buffer": True,
                     "seqlens_k": "tokens in cache after this step - 1", "positions": "from seqlens_k (in GQA)",
                     "continuation_chunks": "batch 1 only (prefill and 1-token decode: any batch)"},
        "max_seq_len": max_seq_len,
        "all_logits": all_logits,
        **({} if all_logits else {"logits_rows_input": "num_logits"}),
        "gathered_ranges": gathered,  # [offset, length] in model.onnx.data of tables read row by row
        "quant": {"mode": quant, **({"weights": "float32 MatMul"} if quant == "fp32" else {
            "weights": "MatMulNBits block 32, integer zero points (the default where left out)", **head_info,
            "projections": b.mapped,
            "exact": "GGUF block origins (q4_0 q4_1 q5_0 q8_0 q4_k q5_k q6_k) keep their codes and scales",
            "zero_points": zero_points,
            "mins": "m + d*zp as extra MatMulNBits columns over the input's block sums (4-bit: two digits)"})},
        "accuracy_level": b.acc if len(set(b.acc.values())) > 1 else b.acc["qkv"],
        "precise_mlp_layers": sorted(int(i) for i in precise_mlp_layers) if quant != "fp32" else [],
        "rope_theta": cfg.rope_theta, "rms_norm_eps": cfg.rms_norm_eps,
    }
    json.dumps(info)  # must stay JSON-serialisable
    return info
