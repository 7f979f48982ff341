"""Read a llama.cpp GGUF file into a `SourceModel`.

The ggml block types of real files (Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q5_K, Q6_K) stay block-quantized (the builder
maps their codes exactly); F32/F16/BF16 become float arrays; any other ggml type is dequantized with gguf.quants.
Tensors are read lazily, one at a time (`GGUFTensors`), so a 1.5B model converts in little memory. llama.cpp's converter permutes the rows of q_proj/k_proj
(interleaved rotary); we undo that so every source has Hugging Face's rotate_half layout.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..manifest import sha256_file
from .weights import BlockQuantized, LlamaConfig, SourceModel

# Architectures whose graph is a Llama decoder. Only "llama" has permuted q/k rows (llama.cpp's
# qwen2 converter keeps HF's layout because llama.cpp runs qwen2 with NeoX-style rotary).
SUPPORTED = {"llama": True, "mistral": True, "qwen2": False}  # arch -> q/k rows permuted

GGUF_MAGIC = b"GGUF"

_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def hf_name(gguf_name: str) -> str | None:
    """HF Llama name for a GGUF tensor name, None for tensors we do not use (e.g. rope_freqs)."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    if gguf_name.startswith("blk."):
        _, idx, rest = gguf_name.split(".", 2)
        if rest in _LAYER_NAMES:
            return f"model.layers.{int(idx)}.{_LAYER_NAMES[rest]}"
    return None


def llama_permutation(rows: int, n_head: int) -> np.ndarray:
    """Row index that llama.cpp's converter applies: gguf_rows = hf_rows[index]."""
    return np.arange(rows).reshape(n_head, 2, rows // n_head // 2).swapaxes(1, 2).reshape(-1)


def llama_unpermutation(rows: int, n_head: int) -> np.ndarray:
    """Inverse of `llama_permutation`: hf_rows = gguf_rows[index]."""
    return np.arange(rows).reshape(n_head, rows // n_head // 2, 2).swapaxes(1, 2).reshape(-1)


# ---------------------------------------------------------------------------------------------- block layouts
# Each unpacker takes the raw bytes of one tensor as uint8 [rows, blocks_per_row * bytes_per_block] and returns
# its codes, per-block scales (and mins) as a BlockQuantized whose dequantize() equals gguf.quants.dequantize
# bit for bit. Layouts: ggml-common.h (QK_K = 256 super-blocks; K-quant sub-block scales packed in 6 bits).

QK_K = 256


def _f16(b: np.ndarray) -> np.ndarray:
    """Two bytes per value (little-endian float16) -> float32, shape without the last axis."""
    return np.ascontiguousarray(b).view(np.float16)[..., 0].astype(np.float32)


def _blocks(raw: np.ndarray, cols: int, per_block: int, block_bytes: int) -> np.ndarray:
    rows = raw.shape[0]
    if cols % per_block:
        raise ValueError(f"row length {cols} is not a multiple of the block length {per_block}")
    return np.ascontiguousarray(raw).reshape(rows, cols // per_block, block_bytes)


def _nibbles(qs: np.ndarray, group: int) -> np.ndarray:
    """Bytes [..., n*group/2] whose low nibbles are elements 0..group/2-1 of each `group` and high nibbles the
    rest (ggml's layout) -> uint8 codes [..., n*group]."""
    shp = qs.shape[:-1]
    qs = qs.reshape(shp + (-1, group // 2))
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1).reshape(shp + (-1,))


def unpack_q4_0(raw, cols):
    b = _blocks(raw, cols, 32, 18)  # fp16 d, 16 bytes of nibbles
    return BlockQuantized("q4_0", _nibbles(b[..., 2:], 32).reshape(raw.shape[0], cols), _f16(b[..., 0:2]))


def unpack_q4_1(raw, cols):
    b = _blocks(raw, cols, 32, 20)  # fp16 d, fp16 m, 16 bytes of nibbles
    return BlockQuantized("q4_1", _nibbles(b[..., 4:], 32).reshape(raw.shape[0], cols), _f16(b[..., 0:2]),
                          _f16(b[..., 2:4]))


def unpack_q5_0(raw, cols):
    b = _blocks(raw, cols, 32, 22)  # fp16 d, 32 high bits (uint32 LE), 16 bytes of nibbles
    hi = np.unpackbits(b[..., 2:6], axis=-1, bitorder="little")  # bit j = high bit of element j
    q = _nibbles(b[..., 6:], 32) | (hi << 4)
    return BlockQuantized("q5_0", q.reshape(raw.shape[0], cols), _f16(b[..., 0:2]))


def unpack_q8_0(raw, cols):
    b = _blocks(raw, cols, 32, 34)  # fp16 d, 32 int8
    q = (b[..., 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
    return BlockQuantized("q8_0", q.reshape(raw.shape[0], cols), _f16(b[..., 0:2]))


def _k_scale_min(sc12: np.ndarray):
    """The 8 six-bit scales and mins packed in 12 bytes (ggml get_scale_min_k4) -> two uint8 [..., 8]."""
    d, m, md = sc12[..., 0:4], sc12[..., 4:8], sc12[..., 8:12]
    sc = np.concatenate([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], axis=-1)
    mn = np.concatenate([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], axis=-1)
    return sc, mn


def _k_scales(b: np.ndarray):
    """Sub-block scales d*sc and mins -(dmin*m), float32 [rows, superblocks * 8]; the products are exact."""
    rows = b.shape[0]
    sc, mn = _k_scale_min(b[..., 4:16])
    scales = _f16(b[..., 0:2])[..., None] * sc.astype(np.float32)
    mins = -(_f16(b[..., 2:4])[..., None] * mn.astype(np.float32))
    return scales.reshape(rows, -1), mins.reshape(rows, -1)


def unpack_q4_k(raw, cols):
    b = _blocks(raw, cols, QK_K, 144)  # fp16 d, fp16 dmin, 12 bytes scales/mins, 128 bytes of nibbles
    scales, mins = _k_scales(b)
    return BlockQuantized("q4_k", _nibbles(b[..., 16:], 64).reshape(raw.shape[0], cols), scales, mins)


def unpack_q5_k(raw, cols):
    b = _blocks(raw, cols, QK_K, 176)  # as Q4_K, then 32 bytes of high bits, then 128 bytes of nibbles
    scales, mins = _k_scales(b)
    lo = _nibbles(b[..., 48:], 64)  # [rows, nsb, 256]
    qh = b[..., 16:48]  # bit j of byte l is the high bit of element 32*j + l
    hi = ((qh[..., None, :] >> np.arange(8, dtype=np.uint8)[:, None]) & 1).reshape(lo.shape)
    return BlockQuantized("q5_k", (lo | (hi << 4)).reshape(raw.shape[0], cols), scales, mins)


def unpack_q6_k(raw, cols):
    b = _blocks(raw, cols, QK_K, 210)  # 128 bytes low nibbles, 64 bytes high 2 bits, 16 int8 scales, fp16 d
    rows, nsb = b.shape[:2]
    # Each half (128 elements) of a super-block: 64 bytes of low nibbles and 32 of high bits cover 4 runs of 32.
    ql = b[..., 0:128].reshape(rows, nsb, 2, 2, 32)  # [half, low/high nibble source byte run, l]
    qh = b[..., 128:192].reshape(rows, nsb, 2, 1, 32)
    lo = np.stack([ql[..., 0, :] & 0x0F, ql[..., 1, :] & 0x0F, ql[..., 0, :] >> 4, ql[..., 1, :] >> 4], axis=3)
    hi = (qh >> (2 * np.arange(4, dtype=np.uint8))[:, None]) & 0x03
    q = (lo | (hi << 4)).reshape(rows, cols)
    scales = _f16(b[..., 208:210])[..., None] * b[..., 192:208].view(np.int8).astype(np.float32)
    return BlockQuantized("q6_k", q, scales.reshape(rows, -1), None, 16)


UNPACKERS = {"Q4_0": unpack_q4_0, "Q4_1": unpack_q4_1, "Q5_0": unpack_q5_0, "Q8_0": unpack_q8_0,
             "Q4_K": unpack_q4_k, "Q5_K": unpack_q5_k, "Q6_K": unpack_q6_k}


def file_sha256(path, progress: bool = False) -> str:
    return sha256_file(path, progress="sha256" if progress else None)


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


class GGUFTensors(Mapping):
    """HF name -> tensor, read from the file when asked for and never kept (conversion then holds one tensor
    at a time, not the model). Reads use pread, not the reader's memory map, so pages already converted do
    not stay in this process's resident set. llama.cpp's q/k row permutation is undone on each read."""

    def __init__(self, path: Path, reader, permuted: bool, n_heads: int, n_kv: int):
        self.path, self.permuted, self.n_heads, self.n_kv = path, permuted, n_heads, n_kv
        self.entries = {hf_name(t.name): t for t in reader.tensors}

    def __getitem__(self, hf):
        t = self.entries[hf]
        try:
            w = _read_tensor(self.path, t)
        except ValueError:  # already names the file and tensor
            raise
        except Exception as exc:  # struct/shape errors from a corrupt file
            raise ValueError(f"corrupt or truncated GGUF file {self.path}: tensor {t.name}: {exc}") from exc
        if self.permuted and (hf.endswith("q_proj.weight") or hf.endswith("k_proj.weight")):
            idx = llama_unpermutation(w.shape[0], self.n_heads if "q_proj" in hf else self.n_kv)
            w = w.take_rows(idx) if isinstance(w, BlockQuantized) else w[idx]
        return w

    def __iter__(self):
        return iter(self.entries)

    def __len__(self):
        return len(self.entries)

    def kind(self, hf) -> str:
        """The ggml type name of a tensor (without reading it)."""
        return self.entries[hf].tensor_type.name


def _readable(kind) -> bool:
    if kind.name in UNPACKERS or kind.name in ("F32", "F16", "BF16"):
        return True
    try:
        from gguf.quants import dequantize
        from gguf.constants import GGML_QUANT_SIZES

        block, size = GGML_QUANT_SIZES[kind]
        dequantize(np.zeros(size, np.uint8), kind)  # raises NotImplementedError for types it cannot decode
        return True
    except Exception:
        return False


def _read_tensor(path: Path, t):
    """One ReaderTensor as a float array or BlockQuantized, HF orientation [out, in]."""
    # ggml shapes list the fastest dim first; numpy shape is reversed: [rows=out, cols=in].
    shape = tuple(int(x) for x in reversed(list(t.shape)))
    kind = t.tensor_type.name
    n = int(t.n_bytes)
    with open(path, "rb") as f:
        buf = os.pread(f.fileno(), n, int(t.data_offset))
    if len(buf) != n:
        raise ValueError(f"corrupt or truncated GGUF file {path}: tensor {t.name} runs past the end")
    raw = np.frombuffer(buf, np.uint8)
    if kind == "F32":
        return raw.view(np.float32).reshape(shape).copy()
    if kind == "F16":
        return raw.view(np.float16).astype(np.float32).reshape(shape)
    if kind == "BF16":
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(shape)
    if kind in UNPACKERS and len(shape) == 2:
        return UNPACKERS[kind](raw.reshape(shape[0], -1), shape[1])
    try:
        from gguf.quants import dequantize
    except ImportError as exc:  # very old gguf
        raise ValueError(f"tensor {t.name} has ggml type {kind}, which this gguf package cannot "
                         f"dequantize; upgrade gguf") from exc
    try:
        return np.asarray(dequantize(raw, t.tensor_type), dtype=np.float32).reshape(shape)
    except NotImplementedError as exc:
        raise ValueError(f"tensor {t.name}: ggml type {kind} is not supported") from exc


def _open(path: Path):
    from gguf import GGUFReader

    if not path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    with open(path, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise ValueError(f"{path} is not a GGUF file (bad magic)")
    try:
        reader = GGUFReader(str(path), "r")
        # Touch every tensor's extent: GGUFReader maps lazily, so a truncated file shows up here.
        end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
        if end > path.stat().st_size:
            raise ValueError("tensor data runs past the end of the file")
    except Exception as exc:  # the reader raises many kinds (ValueError, IndexError, struct errors)
        raise ValueError(f"corrupt or truncated GGUF file {path}: {exc}") from exc
    return reader


def load_gguf(path, name: str | None = None, with_sha256: bool = True) -> SourceModel:
    path = Path(path)
    reader = _open(path)
    arch = _field(reader, "general.architecture")
    if arch not in SUPPORTED:
        raise ValueError(f"unsupported GGUF architecture {arch!r} in {path}; "
                         f"supported: {', '.join(sorted(SUPPORTED))}")

    def meta(key, default=None):
        return _field(reader, f"{arch}.{key}", default)

    try:
        n_heads = int(meta("attention.head_count"))
        n_kv = int(meta("attention.head_count_kv", n_heads))
        hidden = int(meta("embedding_length"))
        head_dim = int(meta("attention.key_length", 0) or meta("rope.dimension_count", 0) or hidden // n_heads)
        tokens = _field(reader, "tokenizer.ggml.tokens")
        vocab = int(meta("vocab_size", 0) or len(tokens))
        cfg = LlamaConfig(
            vocab_size=vocab, hidden_size=hidden,
            intermediate_size=int(meta("feed_forward_length")),
            num_layers=int(meta("block_count")), num_heads=n_heads, num_kv_heads=n_kv, head_dim=head_dim,
            max_position_embeddings=int(meta("context_length", 2048)),
            rms_norm_eps=_f32(meta("attention.layer_norm_rms_epsilon", 1e-5)),
            rope_theta=_f32(meta("rope.freq_base", 10000.0)),
            tie_word_embeddings=not any(t.name == "output.weight" for t in reader.tensors),
            attention_bias=any(t.name.endswith("attn_q.bias") for t in reader.tensors),
            architecture=arch,
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(f"GGUF {path} lacks model metadata ({exc})") from exc

    # Rope scaling (convert/rope.py). Llama 3.x files carry theirs as rope_freqs.weight (per-frequency divisors,
    # llama.cpp's form of the llama3 scaling); linear scaling is a factor. YaRN and the rest change more than
    # the frequencies: refuse rather than convert a model that would silently go wrong on long inputs.
    scaling = meta("rope.scaling.type")
    if scaling == "linear":
        from .rope import rope_scaling_from_hf
        try:
            cfg.rope_scaling = rope_scaling_from_hf({"rope_type": "linear", "factor": meta("rope.scaling.factor")})
        except (TypeError, ValueError) as exc:
            raise ValueError(f"GGUF {path}: bad rope scaling ({exc})") from exc
    elif scaling and scaling != "none":
        raise ValueError(f"GGUF {path} uses rope scaling {scaling!r}, which is not supported "
                         f"(supported: llama3 rope_freqs, linear)")
    freqs = [t for t in reader.tensors if t.name == "rope_freqs.weight"]
    if freqs:
        f = np.asarray(freqs[0].data, dtype=np.float32).reshape(-1)
        if f.size != head_dim // 2 or not np.all(np.isfinite(f) & (f > 0)):
            raise ValueError(f"GGUF {path}: rope scaling tensor rope_freqs.weight has {f.size} factors "
                             f"(the model needs {head_dim // 2} positive ones)")
        cfg.rope_freq_factors = [float(x) for x in f]
        reader.tensors = [t for t in reader.tensors if t.name != "rope_freqs.weight"]  # consumed: not a weight
    unknown = [t.name for t in reader.tensors if hf_name(t.name) is None]
    if unknown:
        raise ValueError(f"GGUF {path} has tensors this reader does not know: {', '.join(unknown[:5])}")

    for t in reader.tensors:  # refuse unknown types now, not halfway through a conversion
        if not _readable(t.tensor_type):
            raise ValueError(f"GGUF {path}: tensor {t.name} has ggml type {t.tensor_type.name}, which edgeai cannot "
                             f"read (supported: F32, F16, BF16, {', '.join(UNPACKERS)} and what gguf dequantizes)")
    tensors = GGUFTensors(path, reader, SUPPORTED[arch], n_heads, n_kv)
    missing = [n for n in ("model.embed_tokens.weight", "model.norm.weight") if n not in tensors.entries]
    if missing:
        raise ValueError(f"GGUF {path} lacks tensors {missing}")

    from .tokenizer_build import tokenizer_from_gguf_reader

    tok_json, specials = tokenizer_from_gguf_reader(reader)
    return SourceModel(
        config=cfg, tensors=tensors, tokenizer_json=tok_json,
        chat_template=_field(reader, "tokenizer.chat_template"),
        special_tokens=specials,
        source={"path": str(path.resolve()), "format": "gguf",
                "sha256": file_sha256(path) if with_sha256 else "",
                "name": name or _field(reader, "general.name") or path.stem,
                "file_type": _file_type_name(reader)},
    )


def _f32(v) -> float:
    """GGUF stores these as float32: give back the short decimal it was written from (1e-05, not 9.99e-06)."""
    return float(str(np.float32(v)))


def _file_type_name(reader) -> str:
    """Most common ggml type among 2-D weights (e.g. 'Q4_1'), for the manifest."""
    kinds = [t.tensor_type.name for t in reader.tensors if len(t.shape) == 2]
    return max(set(kinds), key=kinds.count) if kinds else ""
