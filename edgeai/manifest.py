"""The model folder manifest `edgeai.json`: what the engine needs to know beyond the ONNX graph.

A model folder holds model.onnx, model.onnx.data, tokenizer.json and edgeai.json. The manifest records the
architecture, KV-cache layout, graph I/O, quantization, tokenizer specials and chat template, where the weights
came from, and a sha256 of every file, so a damaged or mismatched folder is caught before it runs.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

FORMAT_VERSION = 1
MANIFEST_NAME = "edgeai.json"
REQUIRED_FILES = ("model.onnx", "tokenizer.json")


class ManifestError(ValueError):
    """A model folder that cannot be used as it is."""


def sha256_file(path, chunk: int = 1 << 20, progress: str | None = None) -> str:
    """sha256 of a file, read in chunks; `progress` names a tqdm bar (shown only on a terminal)."""
    import hashlib  # here, not at import: hashlib loads OpenSSL (3.5 MB resident) and loading a model never hashes

    h = hashlib.sha256()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=os.path.getsize(path), unit="B", unit_scale=True, leave=False, disable=None,
                   desc=f"{progress} {os.path.basename(path)}")
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(chunk), b""):
            h.update(b)
            if bar is not None:
                bar.update(len(b))
    if bar is not None:
        bar.close()
    return h.hexdigest()


def file_digests(folder) -> dict:
    """{relative path: sha256} of every file in the folder except the manifest itself."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): sha256_file(p)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST_NAME}


def tool_versions() -> dict:
    from importlib import metadata

    out = {}
    for dist in ("edgeai", "onnx", "onnxruntime", "gguf", "numpy", "tokenizers"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def write_manifest(folder, data: dict) -> dict:
    """Complete `data` with format version, digests, tool versions and time; write edgeai.json."""
    folder = Path(folder)
    m = {"format_version": FORMAT_VERSION, **data}
    m["files"] = file_digests(folder)
    m.setdefault("tool_versions", tool_versions())
    m.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    tmp = folder / (MANIFEST_NAME + ".tmp")
    tmp.write_text(json.dumps(m, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(folder / MANIFEST_NAME)
    return m


def is_model_folder(folder) -> bool:
    return (Path(folder) / MANIFEST_NAME).is_file()


def load_manifest(folder, verify_digests: bool = False) -> dict:
    """Read and check a model folder's manifest; raise ManifestError / FileNotFoundError saying what is wrong."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist")
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"model folder {folder} has no {MANIFEST_NAME} (not converted by edgeai?)")
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"model folder {folder}: {MANIFEST_NAME} is malformed: {exc}") from exc
    if not isinstance(m, dict):
        raise ManifestError(f"model folder {folder}: {MANIFEST_NAME} is not a JSON object")
    version = m.get("format_version")
    if not isinstance(version, int):
        raise ManifestError(f"model folder {folder}: {MANIFEST_NAME} has no integer format_version")
    if version > FORMAT_VERSION:
        raise ManifestError(f"model folder {folder} uses manifest format {version}, newer than this edgeai "
                            f"supports ({FORMAT_VERSION}); upgrade edgeai or re-convert the model")
    if m.get("kind", "llm") == "llm":
        missing = [k for k in ("config", "graph", "tokenizer") if not isinstance(m.get(k), dict)]
        if missing:
            raise ManifestError(f"model folder {folder}: {MANIFEST_NAME} lacks {', '.join(missing)}")
    files = m.get("files") or {}
    for name in sorted(set(REQUIRED_FILES) | set(files)):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"model folder {folder} has no {name}")
    if verify_digests:
        for name, digest in files.items():
            if sha256_file(folder / name) != digest:
                raise ManifestError(f"model folder {folder}: {name} does not match its sha256 in "
                                    f"{MANIFEST_NAME} (file changed or damaged; re-convert the model)")
    return m
