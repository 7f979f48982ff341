"""Build a BERT sentence-encoder ONNX graph straight from Hugging Face `BertModel` weights (numpy arrays).

Graph: input_ids, attention_mask (int64 [batch, seq]) -> sentence_embedding (float32 [batch, hidden]),
i.e. encoder + masked mean pooling + L2 normalisation all in-graph, so a caller only tokenizes.

`fused=True` uses ONNX Runtime contrib ops (com.microsoft Attention, SkipLayerNormalization, BiasGelu):
one kernel per block instead of ~15 small ones, which is what matters on a 2-core CPU.
`fused=False` uses only standard ONNX ops (opset 17) - portable, and a second check in the tests.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


@dataclass
class BertConfig:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_hf(cls, d: dict) -> "BertConfig":
        if d.get("hidden_act", "gelu") not in ("gelu",):
            raise ValueError(f"unsupported hidden_act {d.get('hidden_act')!r} (only exact erf gelu)")
        if d.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("only absolute position embeddings are supported")
        return cls(d["vocab_size"], d["hidden_size"], d["num_hidden_layers"], d["num_attention_heads"],
                   d["intermediate_size"], d["max_position_embeddings"], d.get("type_vocab_size", 2),
                   d.get("layer_norm_eps", 1e-12))


def strip_prefix(tensors: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Checkpoints saved from BertForX carry a 'bert.' prefix; the plain BertModel doesn't."""
    return {(k[5:] if k.startswith("bert.") else k): v for k, v in tensors.items()}


class _G:
    """Tiny graph-building helper: unique names, initializers, nodes."""

    def __init__(self):
        self.nodes, self.inits, self._n = [], [], 0

    def name(self, base):
        self._n += 1
        return f"{base}_{self._n}"

    def const(self, arr, base="c"):
        n = self.name(base)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), n))
        return n

    def op(self, op_type, inputs, n_out=1, domain="", **attrs):
        outs = [self.name(op_type) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.name(op_type + "_node"),
                                           domain=domain, **attrs))
        return outs[0] if n_out == 1 else outs


def quantize_q8_blocks(W: np.ndarray, block: int = 32):
    """W [K, N] (x @ W) -> MatMulNBits 8-bit inputs: B uint8 [N, K/block, block], scales float32 [N, K/block].
    Symmetric per block of `block` input rows: w = scale * (q - 128), the op's default zero point."""
    K, N = W.shape
    if K % block:
        raise ValueError(f"K={K} is not a multiple of the block size {block}")
    Wt = W.T.reshape(N, K // block, block)
    scales = np.maximum(np.abs(Wt).max(-1), 1e-12) / 127.0
    q = np.clip(np.rint(Wt / scales[..., None]), -127, 127).astype(np.int16) + 128
    return q.astype(np.uint8), scales.astype(np.float32)


def build_bert_graph(cfg: BertConfig, w: Dict[str, np.ndarray], fused: bool = True,
                     q8: bool = False) -> onnx.ModelProto:
    """q8 (fused only): the dense layers (attention output, both FFN matmuls: ~85% of the FLOPs) become
    MatMulNBits with 8-bit block-32 weights and int8 compute (accuracy_level 4); QKV stays fp32 inside Attention."""
    if q8 and not fused:
        raise ValueError("q8 needs the fused graph")
    w = strip_prefix(w)
    f32 = lambda k: np.asarray(w[k], dtype=np.float32)  # noqa: E731
    g = _G()

    def dense(x_in, W, base):
        if not q8:
            return g.op("MatMul", [x_in, g.const(W, base)])
        B, sc = quantize_q8_blocks(W)
        return g.op("MatMulNBits", [x_in, g.const(B, base + "_q8"), g.const(sc, base + "_scales")],
                    domain="com.microsoft", K=W.shape[0], N=W.shape[1], bits=8, block_size=32, accuracy_level=4)

    H, nh, eps = cfg.hidden_size, cfg.num_heads, float(cfg.layer_norm_eps)
    hd = H // nh

    ids, mask = "input_ids", "attention_mask"
    # Embeddings: word + position + token_type(0). Token-type row 0 is folded into the position table.
    pos_table = f32("embeddings.position_embeddings.weight") + f32("embeddings.token_type_embeddings.weight")[0]
    seq_len = g.op("Shape", [ids], start=1, end=2)  # 1-D [S]
    pos = g.op("Slice", [g.const(pos_table, "pos_emb"), g.const(np.array([0], np.int64)), seq_len,
                         g.const(np.array([0], np.int64))])  # first S rows of the position table
    x = g.op("Add", [g.op("Gather", [g.const(f32("embeddings.word_embeddings.weight"), "word_emb"), ids]), pos])
    x = g.op("LayerNormalization", [x, g.const(f32("embeddings.LayerNorm.weight")),
                                    g.const(f32("embeddings.LayerNorm.bias"))], axis=-1, epsilon=eps)

    maskf = g.op("Cast", [mask], to=TensorProto.FLOAT)
    if fused:
        mask_i32 = g.op("Cast", [mask], to=TensorProto.INT32)
    else:
        # additive mask [B,1,1,S]: 0 where attended, -1e4 at padding (BERT's own convention)
        m4 = g.op("Unsqueeze", [maskf, g.const(np.array([1, 2], np.int64))])
        add_mask = g.op("Mul", [g.op("Sub", [g.const(np.array(1.0, np.float32)), m4]),
                                g.const(np.array(-10000.0, np.float32))])
        split_heads = g.const(np.array([0, 0, nh, hd], np.int64))
        merge_heads = g.const(np.array([0, 0, H], np.int64))
        scale = g.const(np.array(1.0 / np.sqrt(hd), np.float32))

    for i in range(cfg.num_layers):
        p = f"encoder.layer.{i}."
        Wq, Wk, Wv = (f32(p + f"attention.self.{n}.weight").T for n in ("query", "key", "value"))
        bq, bk, bv = (f32(p + f"attention.self.{n}.bias") for n in ("query", "key", "value"))
        Wo, bo = f32(p + "attention.output.dense.weight").T, f32(p + "attention.output.dense.bias")
        ln1 = (f32(p + "attention.output.LayerNorm.weight"), f32(p + "attention.output.LayerNorm.bias"))
        Wi, bi = f32(p + "intermediate.dense.weight").T, f32(p + "intermediate.dense.bias")
        Wd, bd = f32(p + "output.dense.weight").T, f32(p + "output.dense.bias")
        ln2 = (f32(p + "output.LayerNorm.weight"), f32(p + "output.LayerNorm.bias"))

        if fused:
            qkv_w = np.concatenate([Wq, Wk, Wv], axis=1)
            qkv_b = np.concatenate([bq, bk, bv])
            ctx = g.op("Attention", [x, g.const(qkv_w, "qkv_w"), g.const(qkv_b, "qkv_b"), mask_i32],
                       domain="com.microsoft", num_heads=nh)
            attn = dense(ctx, Wo, "attn_out_w")
            x = g.op("SkipLayerNormalization", [attn, x, g.const(ln1[0]), g.const(ln1[1]), g.const(bo)],
                     domain="com.microsoft", epsilon=eps)
            h = g.op("BiasGelu", [dense(x, Wi, "ffn_in_w"), g.const(bi)], domain="com.microsoft")
            y = dense(h, Wd, "ffn_out_w")
            x = g.op("SkipLayerNormalization", [y, x, g.const(ln2[0]), g.const(ln2[1]), g.const(bd)],
                     domain="com.microsoft", epsilon=eps)
        else:
            def proj(W, b):
                t = g.op("Add", [g.op("MatMul", [x, g.const(W)]), g.const(b)])
                return g.op("Transpose", [g.op("Reshape", [t, split_heads])], perm=[0, 2, 1, 3])  # B,nh,S,hd
            q, k, v = proj(Wq, bq), proj(Wk, bk), proj(Wv, bv)
            kt = g.op("Transpose", [k], perm=[0, 1, 3, 2])
            scores = g.op("Add", [g.op("Mul", [g.op("MatMul", [q, kt]), scale]), add_mask])
            ctx = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])
            ctx = g.op("Reshape", [g.op("Transpose", [ctx], perm=[0, 2, 1, 3]), merge_heads])
            attn = g.op("Add", [g.op("MatMul", [ctx, g.const(Wo)]), g.const(bo)])
            x = g.op("LayerNormalization", [g.op("Add", [attn, x]), g.const(ln1[0]), g.const(ln1[1])],
                     axis=-1, epsilon=eps)
            t = g.op("Add", [g.op("MatMul", [x, g.const(Wi)]), g.const(bi)])
            gelu = g.op("Mul", [g.op("Mul", [t, g.const(np.array(0.5, np.float32))]),
                                g.op("Add", [g.op("Erf", [g.op("Div", [t, g.const(np.array(np.sqrt(2.0), np.float32))])]),
                                             g.const(np.array(1.0, np.float32))])])
            y = g.op("Add", [g.op("MatMul", [gelu, g.const(Wd)]), g.const(bd)])
            x = g.op("LayerNormalization", [g.op("Add", [y, x]), g.const(ln2[0]), g.const(ln2[1])],
                     axis=-1, epsilon=eps)

    # Masked mean pooling then L2 normalisation (sentence-transformers' Pooling + Normalize modules).
    m3 = g.op("Unsqueeze", [maskf, g.const(np.array([2], np.int64))])
    axis1 = g.const(np.array([1], np.int64))
    summed = g.op("ReduceSum", [g.op("Mul", [x, m3]), axis1], keepdims=0)
    count = g.op("Max", [g.op("ReduceSum", [m3, axis1], keepdims=0), g.const(np.array(1e-9, np.float32))])
    pooled = g.op("Div", [summed, count])
    norm = g.op("Max", [g.op("ReduceL2", [pooled], axes=[1], keepdims=1), g.const(np.array(1e-12, np.float32))])
    g.nodes.append(helper.make_node("Div", [pooled, norm], ["sentence_embedding"], name="l2_normalize"))

    graph = helper.make_graph(
        g.nodes, "bert_sentence_encoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", H])],
        initializer=g.inits)
    opsets = [helper.make_opsetid("", OPSET)]
    if fused:
        opsets.append(helper.make_opsetid("com.microsoft", 1))
    model = helper.make_model(graph, opset_imports=opsets, producer_name="edgeai.retrieval.bert_graph")
    model.ir_version = 8
    return model


def reference_encode(cfg: BertConfig, w: Dict[str, np.ndarray], ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Plain NumPy BERT + mean pooling + L2 norm (float64) - the ground truth the graphs are tested against."""
    from math import erf
    w = {k: np.asarray(v, np.float64) for k, v in strip_prefix(w).items()}
    H, nh = cfg.hidden_size, cfg.num_heads
    hd = H // nh
    verf = np.vectorize(erf)

    def ln(t, gname):
        mu = t.mean(-1, keepdims=True)
        var = ((t - mu) ** 2).mean(-1, keepdims=True)
        return (t - mu) / np.sqrt(var + cfg.layer_norm_eps) * w[gname + ".weight"] + w[gname + ".bias"]

    B, S = ids.shape
    x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:S]
         + w["embeddings.token_type_embeddings.weight"][0])
    x = ln(x, "embeddings.LayerNorm")
    add = (1.0 - mask[:, None, None, :].astype(np.float64)) * -10000.0
    for i in range(cfg.num_layers):
        p = f"encoder.layer.{i}."
        lin = lambda t, n: t @ w[p + n + ".weight"].T + w[p + n + ".bias"]  # noqa: E731
        heads = lambda t: t.reshape(B, S, nh, hd).transpose(0, 2, 1, 3)  # noqa: E731
        q, k, v = (heads(lin(x, f"attention.self.{n}")) for n in ("query", "key", "value"))
        s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd) + add
        s = np.exp(s - s.max(-1, keepdims=True))
        ctx = ((s / s.sum(-1, keepdims=True)) @ v).transpose(0, 2, 1, 3).reshape(B, S, H)
        x = ln(lin(ctx, "attention.output.dense") + x, p + "attention.output.LayerNorm")
        t = lin(x, "intermediate.dense")
        x = ln(lin(0.5 * t * (1.0 + verf(t / np.sqrt(2.0))), "output.dense") + x, p + "output.LayerNorm")
    m = mask[:, :, None].astype(np.float64)
    pooled = (x * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
