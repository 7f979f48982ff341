"""Read a Hugging Face model folder (config.json, *.safetensors, tokenizer.json) into a `SourceModel`.

Safetensors are parsed directly (an 8-byte header length, a JSON header, raw little-endian data) and
memory-mapped: this handles bf16, which the safetensors numpy API cannot return, and keeps memory low.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from .rope import rope_scaling_from_hf
from .weights import LlamaConfig, SourceModel

SUPPORTED = ("llama", "mistral", "qwen2")

_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}


def read_safetensors(path: Path) -> dict:
    """{name: float32 array} from one .safetensors file."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"corrupt safetensors file {path}")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise ValueError(f"corrupt or truncated safetensors file {path}")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
    out = {}
    for name, info in header.items():
        dt = _DTYPES.get(info["dtype"])
        if dt is None:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        if end > data.shape[0]:
            raise ValueError(f"corrupt or truncated safetensors file {path}")
        a = data[start:end].view(dt).reshape(info["shape"])
        if info["dtype"] == "BF16":  # bf16 is the top half of a float32
            a = (a.astype(np.uint32) << 16).view(np.float32)
        out[name] = np.asarray(a, dtype=np.float32)
    return out


def config_from_hf(cfg: dict) -> LlamaConfig:
    arch = cfg.get("model_type", "llama")
    if arch not in SUPPORTED:
        raise ValueError(f"unsupported model_type {arch!r} (supported: {', '.join(SUPPORTED)})")
    # transformers 5 writes rope_parameters (theta inside); earlier versions rope_scaling beside rope_theta
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
    heads = cfg["num_attention_heads"]
    return LlamaConfig(
        vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"], num_layers=cfg["num_hidden_layers"],
        num_heads=heads, num_kv_heads=cfg.get("num_key_value_heads") or heads,
        head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
        max_position_embeddings=cfg.get("max_position_embeddings", 2048),
        rms_norm_eps=cfg.get("rms_norm_eps", 1e-6), rope_theta=theta, rope_scaling=rope_scaling_from_hf(rope),
        # HF's default is untied for these model types; configs that tie say so
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        attention_bias=bool(cfg.get("attention_bias", arch == "qwen2")),
        architecture=arch,
    )


def _token_text(v):
    return v.get("content") if isinstance(v, dict) else v


def _chat_template(tc: dict):
    t = tc.get("chat_template")
    if isinstance(t, list):  # [{"name": "default", "template": ...}, ...]
        named = {d.get("name"): d.get("template") for d in t}
        t = named.get("default") or next(iter(named.values()), None)
    return t


def _end_tokens(path: Path, cfg: dict, tokenizer_json: str) -> list:
    """Texts of the tokens that end generation as the model's config says: generation_config.json's
    eos_token_id (an id or a list, e.g. Qwen2.5-Instruct's [<|im_end|>, <|endoftext|>]), else config.json's."""
    from tokenizers import Tokenizer

    ids = None
    if (path / "generation_config.json").is_file():
        ids = json.loads((path / "generation_config.json").read_text()).get("eos_token_id")
    if ids is None:
        ids = cfg.get("eos_token_id")
    ids = [] if ids is None else ids if isinstance(ids, list) else [ids]
    tok = Tokenizer.from_str(tokenizer_json)
    texts = [tok.id_to_token(int(i)) for i in ids]
    if None in texts:
        raise ValueError(f"{path}: eos_token_id {ids} names ids outside the tokenizer's vocabulary")
    return texts


def load_hf_folder(path, name: str | None = None) -> SourceModel:
    path = Path(path)
    if not path.exists() and "/" in str(path) and not str(path).startswith((".", "/")):
        path = _snapshot(str(path))
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a Hugging Face model folder (no config.json)")
    cfg = json.loads((path / "config.json").read_text())
    config = config_from_hf(cfg)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path} has no *.safetensors weights")
    tensors = {}
    for f in files:
        tensors.update(read_safetensors(f))
    tensors = {k: v for k, v in tensors.items() if not k.endswith("rotary_emb.inv_freq")}
    if config.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)
    elif "lm_head.weight" not in tensors:  # some configs omit tie_word_embeddings yet ship no lm_head
        config.tie_word_embeddings = True

    tok_file = path / "tokenizer.json"
    if not tok_file.is_file():
        raise FileNotFoundError(f"{path} has no tokenizer.json")
    tc = {}
    if (path / "tokenizer_config.json").is_file():
        tc = json.loads((path / "tokenizer_config.json").read_text())
    specials = {k: _token_text(tc.get(f"{k}_token")) for k in ("bos", "eos", "pad", "unk")}
    tokenizer_json = tok_file.read_text(encoding="utf-8")
    specials["eog"] = _end_tokens(path, cfg, tokenizer_json)
    return SourceModel(
        config=config, tensors=tensors, tokenizer_json=tokenizer_json,
        chat_template=_chat_template(tc), special_tokens=specials,
        source={"path": str(path.resolve()), "format": "hf", "sha256": _folder_digest(files),
                "name": name or cfg.get("_name_or_path") or path.name},
    )


def _folder_digest(files) -> str:
    """One digest for a multi-file checkpoint: sha256 over the per-file digests, in name order."""
    from .gguf_source import file_sha256
    import hashlib

    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}:{file_sha256(f)}\n".encode())
    return h.hexdigest()


def _snapshot(repo_id: str) -> Path:
    """A hub id, downloaded with huggingface_hub when it is installed and the hub is reachable."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise FileNotFoundError(f"{repo_id} is not a folder, and huggingface_hub is not installed "
                                f"to download it") from exc
    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "tokenizer*"]))
    except Exception as exc:
        raise FileNotFoundError(f"could not download {repo_id} from the Hugging Face hub: {exc}") from exc
