"""Read a llama.cpp GGUF file into a `SourceModel`.

Q4_1 and Q8_0 weights stay block-quantized (the builder maps them exactly); F32/F16 become float arrays;
any other ggml type is dequantized with gguf.quants. llama.cpp's converter permutes the rows of q_proj/k_proj
(interleaved rotary); we undo that so every source has Hugging Face's rotate_half layout.
"""
from __future__ import annotations

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


def unpack_q4_1(raw: np.ndarray, cols: int) -> BlockQuantized:
    """raw: uint8 [rows, nb*20]; a block is fp16 d, fp16 m, 16 bytes of nibbles (low = elems 0..15)."""
    rows = raw.shape[0]
    nb = cols // 32
    blocks = np.ascontiguousarray(raw).reshape(rows, nb, 20)
    d = blocks[:, :, 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    m = blocks[:, :, 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
    qs = blocks[:, :, 4:20]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=2).reshape(rows, cols).astype(np.uint8)
    return BlockQuantized("q4_1", q, d, m, 32)


def unpack_q8_0(raw: np.ndarray, cols: int) -> BlockQuantized:
    """raw: uint8 [rows, nb*34]; a block is fp16 d then 32 int8."""
    rows = raw.shape[0]
    nb = cols // 32
    blocks = np.ascontiguousarray(raw).reshape(rows, nb, 34)
    d = blocks[:, :, 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    q = blocks[:, :, 2:34].copy().view(np.int8).reshape(rows, cols)
    return BlockQuantized("q8_0", q, d, None, 32)


def file_sha256(path, progress: bool = False) -> str:
    return sha256_file(path, progress="sha256" if progress else None)


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def _tensor(t) -> object:
    """Convert one ReaderTensor to a float array or BlockQuantized, HF orientation [out, in]."""
    from gguf import GGMLQuantizationType as T

    # ggml shapes list the fastest dim first; numpy shape is reversed: [rows=out, cols=in].
    shape = tuple(int(x) for x in reversed(list(t.shape)))
    kind = t.tensor_type
    if kind == T.F32:
        return np.array(t.data, dtype=np.float32).reshape(shape)
    if kind == T.F16:
        return np.array(t.data, dtype=np.float16).astype(np.float32).reshape(shape)
    if kind in (T.Q4_1, T.Q8_0) and len(shape) == 2 and shape[1] % 32 == 0:
        raw = np.asarray(t.data, dtype=np.uint8).reshape(shape[0], -1)
        return unpack_q4_1(raw, shape[1]) if kind == T.Q4_1 else unpack_q8_0(raw, shape[1])
    try:
        from gguf.quants import dequantize
    except ImportError as exc:  # very old gguf
        raise ValueError(f"tensor {t.name} has ggml type {kind.name}, which this gguf package cannot "
                         f"dequantize; upgrade gguf") from exc
    try:
        return np.asarray(dequantize(np.asarray(t.data), kind), dtype=np.float32).reshape(shape)
    except NotImplementedError as exc:
        raise ValueError(f"tensor {t.name}: ggml type {kind.name} is not supported") from exc


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

    permuted = SUPPORTED[arch]
    tensors = {}
    try:
        for t in reader.tensors:
            hf = hf_name(t.name)
            w = _tensor(t)
            if permuted and (hf.endswith("q_proj.weight") or hf.endswith("k_proj.weight")):
                heads = n_heads if "q_proj" in hf else n_kv
                idx = llama_unpermutation(w.shape[0], heads)
                w = w.take_rows(idx) if isinstance(w, BlockQuantized) else w[idx]
            tensors[hf] = w
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(f"corrupt or truncated GGUF file {path}: {exc}") from exc
    missing = [n for n in ("model.embed_tokens.weight", "model.norm.weight") if n not in tensors]
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
