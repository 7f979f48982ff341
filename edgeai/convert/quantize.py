"""Weight quantization for ONNX Runtime's MatMulNBits (com.microsoft) and the source -> target mappings.

MatMulNBits computes Y = A @ W^T with W [N, K] stored in blocks of `block_size` along K:
    w[n, k] = scale[n, b] * (q[n, k] - zp[n, b]),   b = k // block_size
Layout (ORT contrib op spec):
    B           uint8 [N, K/block, block*bits/8]; 4-bit: element 2j in the low nibble, 2j+1 in the high nibble
    scales      float [N, K/block]
    zero_points uint8 [N, ceil(K/block * bits / 8)]; 4-bit packed like B (low nibble first)
Integer zero points keep MatMulNBits on its fast integer path (float zero points, which could express Q4_1
exactly, made a SmolLM2 decode step ~17x slower on ORT 1.32 CPU). Zero points equal to the kernel's default
(2^(bits-1)) are left out of the graph: without a zero_points input a SmolLM2 q4 decode step took 8-12% less
time on an AVX2 CPU (`python bench/zero_point_ab.py`: x0.88 and x0.92; prefill unchanged), so exact GGUF
mappings use the default zero point unless asked for one per block.

Mappings (`map_linear`, `from_block_quantized`):
    GGUF blocks without mins (w = d*(q - z): Q4_0, Q5_0, Q6_K, Q8_0) -> codes shifted so z sits on the default
                              zero point; 4-bit storage for 4-bit codes, 8-bit for wider ones; Q6_K's 16-wide
                              sub-blocks stay blocks of 16 with scale d*sc. Exact.
    GGUF blocks with mins (w = d*q + m: Q4_1, Q4_K, Q5_K) -> the codes around the default zero point plus
                              offsets m' = m + d*c (c the middle code): the builder adds sum_b m'_b * sum(x_b)
                              inside the same MatMulNBits (fold_mins). K-quant sub-block scales are d*sc and
                              mins -dmin*m (exact float32 products). zero_points="per-block": zp nearest -m/d.
    under q8 4-bit codes are kept in 8-bit storage (same values, same offsets).
    float weights           -> asymmetric round-to-nearest with integer zero points (4 or 8 bit), with a
                              small per-block range-shrink search that minimises squared error (4-bit).
    zero_points="symmetric" -> every weight, of any source, re-quantized to symmetric blocks at the default
                              zero point (quantize_symmetric; under q4 the LM head too): ONNX Runtime GenAI's
                              form. No offsets, no zero points, a 4-bit head: faster, and lossy (a GGUF source
                              is quantized twice).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .weights import BlockQuantized, Tensor, as_float

BLOCK = 32
# How 4-bit weights place their zero points (see from_block_quantized): "default" and "per-block" keep GGUF
# Q4_1 codes exactly; "symmetric" re-quantizes every weight around the default zero point (lossy, faster).
# "rtn" dequantizes GGUF blocks and re-quantizes them per block (round to nearest, integer zero points):
# the path K-quant files took before their exact import, kept to measure what exactness buys.
ZERO_POINTS = ("default", "per-block", "symmetric", "rtn")


@dataclass
class NBitsWeight:
    """One linear weight W [N, K] ready for MatMulNBits (values unpacked; pack with `packed_*`)."""

    bits: int
    q: np.ndarray  # uint8 [N, K], 0..2^bits-1
    scales: np.ndarray  # float32 [N, K/block]
    zero_points: np.ndarray  # uint8 [N, K/block]
    mins: Optional[np.ndarray] = None  # float32 [N, K/block]: w += mins per block (GGUF Q4_1 residual)
    block_size: int = BLOCK
    origin: str = "rtn"  # a GGUF block kind ("q4_k", "q6_k", ...: exact mappings), "rtn" or "symmetric"

    @property
    def shape(self):
        return self.q.shape

    def dequantize(self) -> np.ndarray:
        n, k = self.q.shape
        nb = k // self.block_size
        q = self.q.reshape(n, nb, self.block_size).astype(np.float32)
        w = (q - self.zero_points[:, :, None].astype(np.float32)) * self.scales[:, :, None]
        if self.mins is not None:
            w = w + self.mins[:, :, None]
        return w.reshape(n, k)

    def packed_b(self) -> np.ndarray:
        return pack_nbits(self.q, self.bits, self.block_size)

    def packed_zero_points(self) -> np.ndarray:
        return pack_zero_points(self.zero_points, self.bits)


def concat(parts: list) -> NBitsWeight:
    """Stack weights along N (fused q/k/v or gate/up); all parts must share bits and block size."""
    p0 = parts[0]
    mins = None
    if any(p.mins is not None for p in parts):
        mins = np.concatenate([p.mins if p.mins is not None else np.zeros_like(p.scales) for p in parts])
    if mins is not None and not mins.any():
        mins = None
    return NBitsWeight(p0.bits, np.concatenate([p.q for p in parts]), np.concatenate([p.scales for p in parts]),
                       np.concatenate([p.zero_points for p in parts]), mins, p0.block_size,
                        "+".join(sorted({p.origin for p in parts})))


# ---------------------------------------------------------------------------------------------- packing

def pack_nbits(q: np.ndarray, bits: int, block: int = BLOCK) -> np.ndarray:
    n, k = q.shape
    assert k % block == 0, f"K={k} is not a multiple of the block size {block}"
    q = q.astype(np.uint8)
    if bits == 8:
        return np.ascontiguousarray(q.reshape(n, k // block, block))
    assert bits == 4
    packed = (q[:, 0::2] & 0x0F) | ((q[:, 1::2] & 0x0F) << 4)
    return np.ascontiguousarray(packed.reshape(n, k // block, block // 2))


def unpack_nbits(b: np.ndarray, bits: int) -> np.ndarray:
    n = b.shape[0]
    if bits == 8:
        return b.reshape(n, -1).copy()
    flat = b.reshape(n, -1)
    out = np.empty((n, flat.shape[1] * 2), np.uint8)
    out[:, 0::2] = flat & 0x0F
    out[:, 1::2] = flat >> 4
    return out


def pack_zero_points(zp: np.ndarray, bits: int) -> np.ndarray:
    """[N, nb] -> uint8 [N * ceil(nb*bits/8)] (each row padded to whole bytes)."""
    zp = zp.astype(np.uint8)
    if bits == 8:
        return zp.reshape(-1).copy()
    n, nb = zp.shape
    if nb % 2:
        zp = np.concatenate([zp, np.zeros((n, 1), np.uint8)], axis=1)
    return ((zp[:, 0::2] & 0x0F) | ((zp[:, 1::2] & 0x0F) << 4)).reshape(-1)


def unpack_zero_points(packed: np.ndarray, n: int, nb: int, bits: int) -> np.ndarray:
    if bits == 8:
        return packed.reshape(n, nb).copy()
    rows = packed.reshape(n, -1)
    out = np.empty((n, rows.shape[1] * 2), np.uint8)
    out[:, 0::2] = rows & 0x0F
    out[:, 1::2] = rows >> 4
    return out[:, :nb]


# ---------------------------------------------------------------------------------------------- quantizers

def _keep_better(best, err, *arrays):
    """Per block, keep (err, *arrays) where err beats best's (the search loops of the quantizers). Arrays
    shaped like err hold one value per block; longer ones (the codes) one row of values per block."""
    if best is None:
        return [err, *arrays]
    m = err < best[0]
    return [np.where(m.reshape(m.shape + (1,) * (new.ndim - m.ndim)), new, old)
            for new, old in zip([err, *arrays], best)]


def quantize_rtn(w: np.ndarray, bits: int, block: int = BLOCK, search: bool | None = None) -> NBitsWeight:
    """Asymmetric round-to-nearest per block with integer zero points.

    With `search` (default for 4-bit) each block tries a few shrunken [min, max] ranges and keeps the
    one with the least squared error: clipping a rare outlier usually buys precision for the rest.
    """
    w = np.asarray(w, dtype=np.float32)
    n, k = w.shape
    assert k % block == 0, f"K={k} is not a multiple of the block size {block}"
    qmax = (1 << bits) - 1
    if search is None:
        search = bits == 4
    wb = w.reshape(n, k // block, block)
    lo0 = np.minimum(wb.min(-1), 0.0)  # include 0 so that it is representable exactly
    hi0 = np.maximum(wb.max(-1), 0.0)
    best = None
    for shrink in (np.linspace(1.0, 0.8, 9) if search else [1.0]):
        lo, hi = lo0 * shrink, hi0 * shrink
        scale = np.where(hi > lo, (hi - lo) / qmax, 1.0).astype(np.float32)
        zp = np.clip(np.round(-lo / scale), 0, qmax)
        q = np.clip(np.round(wb / scale[..., None]) + zp[..., None], 0, qmax)
        err = (((q - zp[..., None]) * scale[..., None] - wb) ** 2).sum(-1)
        best = _keep_better(best, err, scale, zp, q)
    _, scale, zp, q = best
    return NBitsWeight(bits, q.reshape(n, k).astype(np.uint8), scale.astype(np.float32),
                       zp.astype(np.uint8), None, block, "rtn")


def quantize_symmetric(w: np.ndarray, bits: int, block: int = BLOCK) -> NBitsWeight:
    """Symmetric round-to-nearest per block around the kernel's default zero point (no zero_points input).

    The codes run from -zp to zp - 1, one step further below zero than above, so each block's scale takes
    the sign that puts its largest |w| on the long end, exactly (stored code 0); each block also tries a few
    smaller scales (to 70%) and keeps the one with the least squared error."""
    w = np.asarray(w, dtype=np.float32)
    n, k = w.shape
    assert k % block == 0, f"K={k} is not a multiple of the block size {block}"
    zp = default_zero_point(bits)
    wb = w.reshape(n, k // block, block)
    extreme = np.take_along_axis(wb, np.abs(wb).argmax(-1)[..., None], -1)[..., 0]
    best = None
    for shrink in np.linspace(1.0, 0.7, 13):
        scale = np.where(extreme != 0, extreme * shrink / -zp, 1.0).astype(np.float32)
        q = np.clip(np.round(wb / scale[..., None]) + zp, 0, 2 * zp - 1)
        err = (((q - zp) * scale[..., None] - wb) ** 2).sum(-1)
        best = _keep_better(best, err, scale, q)
    _, scale, q = best
    return NBitsWeight(bits, q.reshape(n, k).astype(np.uint8), scale.astype(np.float32),
                       np.full(scale.shape, zp, np.uint8), None, block, "symmetric")


def default_zero_point(bits: int) -> int:
    """The zero point MatMulNBits assumes when the graph gives none."""
    return 1 << (bits - 1)


def fold_mins(w: NBitsWeight):
    """Move the Q4_1 mins term inside MatMulNBits: returns (weight over [x, block sums], the mins it encodes).

    sum_b m'_b * sum(x_b) is a product with the input's block sums, so appending those sums to the input
    (padded to whole blocks) lets the same MatMulNBits compute it, with the mins as extra weight columns. A
    separate float MatMul + Add per projection was 240 more nodes per SmolLM2 decode step (a one-off A/B in one
    process: 139 tok/s with them, 190 without the term at all; node dispatch, not bytes).
    The mins are stored as codes around the default zero point (so the graph needs no zero_points input):
    4-bit weights use two digits per min (a coarse one and one for its rounding residual, 1/14 of the coarse
    step), keeping each min within 1/196 of the largest |min| in its row block; 8-bit weights use one digit
    (1/254). The input side must repeat the block sums once per digit.
    SmolLM2-135M q4 against its fp32 source (`edgeai eval fidelity`, GPL-3, 2048 tokens, accuracy_level 4):
    mean KL 0.0040, top-1 agreement 96.2%, perplexity ratio 1.006 (with per-block zero points nearest -m/d,
    which leave smaller mins: 0.0031, 96.1%, 1.0014, but slower decode steps; a third digit does not help: the
    remaining error is the int8 rounding of the block sums, and one digit loses: KL 0.085).
    """
    n, k = w.shape
    blk, z = w.block_size, default_zero_point(w.bits)
    nb = k // blk
    nbp = -(-nb // blk) * blk  # block sums, padded to whole blocks
    v = np.zeros((n, nbp), np.float32)
    v[:, :nb] = w.mins
    v = v.reshape(n, nbp // blk, blk)
    step = np.maximum(-v.min(-1) / z, v.max(-1) / (z - 1))  # codes - z span [-z, z-1] steps
    step = np.where(step > 0, step, 1.0).astype(np.float32)
    codes, scales, approx = [], [], np.zeros_like(v)
    for _ in range(mins_digits(w)):  # each digit encodes what the ones before it left over
        c = np.clip(np.round((v - approx) / step[..., None]) + z, 0, 2 * z - 1)
        approx = approx + (c - z) * step[..., None]
        codes.append(c.reshape(n, nbp).astype(np.uint8))
        scales.append(step)
        step = (step / 14).astype(np.float32)  # levels -8..7 of step/14 cover the residual [-step/2, step/2]
    extra_blocks = len(codes) * nbp // blk
    folded = NBitsWeight(w.bits, np.concatenate([w.q] + codes, axis=1),
                         np.concatenate([w.scales] + scales, axis=1).astype(np.float32),
                         np.concatenate([w.zero_points, np.full((n, extra_blocks), z, np.uint8)], axis=1),
                         None, blk, w.origin)
    return folded, approx.reshape(n, nbp)[:, :nb].astype(np.float32)


def mins_digits(w: NBitsWeight) -> int:
    """How many copies of the block sums `fold_mins(w)` expects after the input."""
    return 2 if w.bits == 4 else 1


def from_block_quantized(t: BlockQuantized, bits: int | None = None, zero_points: str = "default") -> NBitsWeight:
    """Exact MatMulNBits form of a GGUF block tensor (no re-quantization): its codes, scales and mins as they are.

    Codes of up to 4 bits (Q4_0, Q4_1, Q4_K) go to 4-bit MatMulNBits, wider ones (Q5_0, Q5_K, Q6_K, Q8_0) to
    8-bit; `bits=8` widens 4-bit codes too (same values). Q6_K keeps its 16-wide sub-blocks as blocks of 16.
    Codes are shifted so that each kind's zero sits on the kernel's default zero point (no zero_points input:
    the faster kernel path). Kinds with mins (w = d*q + m) are written w = d*(q - c) + (m + d*c) with c the
    middle code; the offsets m + d*c ride along in the same MatMulNBits (`fold_mins`).
    zero_points (kinds with mins): "default" puts c on the default zero point; "per-block" uses the integer
    zero point nearest -m/d in each block, which leaves smaller offsets (SmolLM2 Q4_1: mean KL 0.0031
    instead of 0.0040), at the cost of a zero_points input (8-12% slower decode steps on an AVX2 CPU)."""
    if zero_points not in ZERO_POINTS[:2]:
        raise ValueError(f"exact block mappings take zero_points default or per-block, not {zero_points!r}")
    b = bits or (4 if t.code_bits <= 4 else 8)
    if t.code_bits > b:
        raise ValueError(f"{t.kind} codes need {t.code_bits} bits; they do not fit {b}-bit MatMulNBits")
    top = (1 << t.code_bits) - 1
    d = t.scales.astype(np.float32)
    if t.mins is None:  # w = d * (q - zero): move zero onto the default zero point
        shift = default_zero_point(b) - t.zero
        q = (t.q.astype(np.int16) + shift).astype(np.uint8)
        zp = np.full(d.shape, default_zero_point(b), np.uint8)
        return NBitsWeight(b, q, d, zp, None, t.block_size, t.kind)
    m = t.mins.astype(np.float32)
    if zero_points == "per-block":
        c = np.clip(np.round(-m / np.where(d != 0, d, 1)), 0, top).astype(np.float32)
    else:
        c = np.full(d.shape, float(1 << (t.code_bits - 1)), np.float32)
    shift = default_zero_point(b) - (1 << (t.code_bits - 1))  # the middle code lands on the default
    return NBitsWeight(b, (t.q.astype(np.int16) + shift).astype(np.uint8), d, (c + shift).astype(np.uint8),
                       m + d * c, t.block_size, t.kind)


def map_linear(t: Tensor, quant: str, zero_points: str = "default"):
    """Target form of one linear weight [out, in]: float32 ndarray for fp32, NBitsWeight otherwise.

    q4: GGUF block tensors map exactly (4- or 8-bit storage by their code width); float sources are quantized
        to 4 bits.
    q8: GGUF block tensors map exactly in 8-bit storage; float sources are quantized to 8 bits (near lossless).
    zero_points="symmetric": any source is re-quantized symmetrically (4 or 8 bits); "rtn": any source is
    re-quantized like a float weight.
    """
    if quant == "fp32":
        return as_float(t)
    if zero_points == "symmetric":
        return quantize_symmetric(as_float(t), 4 if quant == "q4" else 8)
    if isinstance(t, BlockQuantized) and zero_points != "rtn":  # exact; under q8 4-bit codes are stored in 8 bits (same values)
        return from_block_quantized(t, bits=None if quant == "q4" else 8, zero_points=zero_points)
    return quantize_rtn(as_float(t), 4 if quant == "q4" else 8)


def map_group(tensors: list, quant: str, zero_points: str = "default"):
    """Map several weights that share one input and will be fused along N (q/k/v, gate/up).

    Returns one float array (fp32), one NBitsWeight, or a list of NBitsWeights whose outputs are concatenated
    in order: parts fuse into one MatMulNBits only where they share bit width and block size. GGUF files mix
    kinds within a group (Q4_K_M: q/k Q4_K, v Q6_K); widening them all to the widest form would read the
    narrow parts' bytes twice over on every token, while an extra node costs a few microseconds.
    """
    parts = [map_linear(t, quant, zero_points) for t in tensors]
    if quant == "fp32":
        return np.concatenate(parts, axis=0)
    runs = []
    for p in parts:
        if runs and (runs[-1][-1].bits, runs[-1][-1].block_size) == (p.bits, p.block_size):
            runs[-1].append(p)
        else:
            runs.append([p])
    fused = [concat(r) for r in runs]
    return fused[0] if len(fused) == 1 else fused


def as_nbits_list(w) -> list:
    """A map_group result as a list of weights (one per MatMulNBits node)."""
    return w if isinstance(w, list) else [w]


def lm_head_weight(t: Tensor, quant: str, zero_points: str = "default") -> NBitsWeight:
    """The LM head's form (t: lm_head.weight, or the embedding table of a tied head).

    Exact from GGUF blocks (Q8_0 in 8 bits, Q4_1 keeps its codes), 8-bit from float weights: the head is the
    most sensitive weight (a 4-bit head re-quantized from
    SmolLM2's Q8_0 table raised GPL-3 perplexity x1.09). Only the symmetric q4 form re-quantizes it to
    4 bits, as ONNX Runtime GenAI does."""
    if zero_points == "symmetric" and quant == "q4":
        return quantize_symmetric(as_float(t), 4)
    if isinstance(t, BlockQuantized) and zero_points != "rtn":  # exact: a 4-bit head keeps its codes and mins
        return from_block_quantized(t, zero_points="default" if zero_points == "symmetric" else zero_points)
    return map_linear(t, "q8")


def embedding_table(t: Tensor, zero_points: str = "default") -> NBitsWeight:
    """Block form of the embedding table [vocab, hidden] (shared with a tied LM head): GGUF blocks exactly, in 4
    bits for 4-bit codes (the builder unpacks the gathered rows), float tables quantized to 8 bits."""
    if isinstance(t, BlockQuantized) and zero_points != "rtn":
        return from_block_quantized(t)
    return quantize_rtn(as_float(t), 8)


def effective_source(source, quant: str, zero_points: str = "default"):
    """The SourceModel whose float32 weights equal what the `quant` graph really multiplies with.

    Lets tests separate graph correctness (ORT vs reference on these weights, ~exact at accuracy_level 0)
    from quantization loss (these weights vs the original ones).
    """
    from dataclasses import replace

    if quant == "fp32":
        return source
    t, cfg = source.tensors, source.config
    out = {k: as_float(v) for k, v in t.items()}

    def as_graph(w):  # the mins as fold_mins stores them
        if w.mins is not None:
            w = NBitsWeight(w.bits, w.q, w.scales, w.zero_points, fold_mins(w)[1], w.block_size, w.origin)
        return w.dequantize()
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        for names in (["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["mlp.gate_proj", "mlp.up_proj"]):
            w = map_group([t[p + n + ".weight"] for n in names], quant, zero_points)
            w = w if isinstance(w, np.ndarray) else np.concatenate([as_graph(x) for x in as_nbits_list(w)])
            rows = np.cumsum([t[p + n + ".weight"].shape[0] for n in names])[:-1]
            for n, part in zip(names, np.split(w, rows)):
                out[p + n + ".weight"] = part
        for n in ("self_attn.o_proj", "mlp.down_proj"):
            out[p + n + ".weight"] = as_graph(map_linear(t[p + n + ".weight"], quant, zero_points))
    out["model.embed_tokens.weight"] = embedding_table(t["model.embed_tokens.weight"], zero_points).dequantize()
    if "lm_head.weight" in t:
        out["lm_head.weight"] = as_graph(lm_head_weight(t["lm_head.weight"], quant, zero_points))
    elif zero_points == "symmetric" and quant == "q4":  # the tied head gets its own 4-bit copy
        out["lm_head.weight"] = lm_head_weight(t["model.embed_tokens.weight"], quant, zero_points).dequantize()
    return replace(source, tensors=out)
