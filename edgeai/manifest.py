"""The model folder manifest `edgeai.json`: what the engine needs to know beyond the ONNX graph.

A model folder holds model.onnx, model.onnx.data, tokenizer.json and edgeai.json. The manifest records the
architecture, KV-cache layout, graph I/O, quantization, tokenizer specials and chat template, where the weights
came from, and a sha256 of every file, so a damaged or mismatched folder is caught before it runs.

Integrity on load: every file's size, plus a CRC-32 of SAMPLE_COUNT blocks of SAMPLE_BLOCK bytes spread over
the file (of the whole file when it is no larger than those blocks). A full sha256 of SmolLM2 q4's 112 MB costs
10-23% of its load time on a 2-core box (`python bench/integrity_cost.py`), over the 5% a check on every load
may cost; the sampled check costs well under 1% and still catches any damage wider than the gap between two
samples (1.7 MB there). It uses zlib's CRC-32, not sha256: it looks for damage, not for forgery (the samples
could not stop that anyway), and hashlib would load OpenSSL (3.5 MB resident) into every process that loads a
model. `edgeai verify` (load_manifest(..., verify="full")) hashes every byte with sha256. Manifests written
before sizes and samples were recorded get the full sha256 on load.

Every file a manifest names must lie inside its folder: no absolute paths, no `..`, no symlink out.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

FORMAT_VERSION = 1
MANIFEST_NAME = "edgeai.json"
REQUIRED_FILES = ("model.onnx", "tokenizer.json")
SAMPLE_BLOCK = 64 * 1024
SAMPLE_COUNT = 64
VERIFY_MODES = ("none", "quick", "full")


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


def sampled_crc32(path) -> str:
    """CRC-32 (hex) over the file's size and SAMPLE_COUNT evenly spaced blocks (first and last included); over
    the whole file when it is no larger than those blocks. Cheap enough to run on every load."""
    import zlib

    size = os.path.getsize(path)
    crc = zlib.crc32(b"edgeai sampled crc32 v1 %d\n" % size)
    with open(path, "rb") as f:
        if size <= SAMPLE_BLOCK * SAMPLE_COUNT:
            crc = zlib.crc32(f.read(), crc)
        else:
            span = size - SAMPLE_BLOCK
            for i in range(SAMPLE_COUNT):
                f.seek(span * i // (SAMPLE_COUNT - 1))
                crc = zlib.crc32(f.read(SAMPLE_BLOCK), crc)
    return f"{crc:08x}"


def file_digests(folder) -> dict:
    """{relative path: sha256} of every file in the folder except the manifest itself."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): sha256_file(p)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST_NAME}


def file_checks(folder, names) -> dict:
    """{relative path: {"size", "sampled_crc32"}}: what loading checks (see the module docstring)."""
    folder = Path(folder)
    return {n: {"size": (folder / n).stat().st_size, "sampled_crc32": sampled_crc32(folder / n)} for n in names}


def member_path(folder, name) -> Path:
    """folder/name, for a file a manifest names; ManifestError if the name could reach outside the folder
    (absolute, drive letter, `..`, backslashes, or a symlink whose target lies outside)."""
    from pathlib import PurePosixPath, PureWindowsPath

    folder = Path(folder)
    if not isinstance(name, str) or not name or "\x00" in name:
        raise ManifestError(f"model folder {folder}: {MANIFEST_NAME} names an invalid file {name!r}")
    posix, win = PurePosixPath(name), PureWindowsPath(name)
    if posix.is_absolute() or win.is_absolute() or win.drive or "\\" in name or ".." in posix.parts:
        raise ManifestError(f"model folder {folder}: {MANIFEST_NAME} names {name!r}, a path outside the folder; "
                            "a manifest may only name files inside its own folder")
    path = folder / name
    root = folder.resolve()
    if not path.resolve().is_relative_to(root):
        raise ManifestError(f"model folder {folder}: {name} is a link to {path.resolve()}, outside the folder; "
                            "a manifest may only name files inside its own folder")
    return path


def repair_hint(folder) -> str:
    """How to get a good copy of a model folder: `edgeai pull --force` for one in the cache."""
    folder = Path(folder)
    try:
        from .paths import cache_dir

        if folder.resolve().parent == (cache_dir() / "models").resolve():
            name, _, quant = folder.name.rpartition("-")
            return f"run `edgeai pull --force {name} --quant {quant}` to fetch and convert it again"
    except (OSError, ValueError):
        pass
    return ("run `edgeai pull --force NAME` to fetch and convert it again (or `edgeai convert SRC "
            f"{folder} --force` for a model you converted yourself)")


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
    m["file_checks"] = file_checks(folder, m["files"])
    m.setdefault("tool_versions", tool_versions())
    m.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    tmp = folder / (MANIFEST_NAME + ".tmp")
    tmp.write_text(json.dumps(m, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(folder / MANIFEST_NAME)
    return m


def is_model_folder(folder) -> bool:
    return (Path(folder) / MANIFEST_NAME).is_file()


def load_manifest(folder, verify: str = "quick", verify_digests: bool | None = None) -> dict:
    """Read and check a model folder's manifest; raise ManifestError / FileNotFoundError saying what is wrong.

    verify: "quick" (default) checks each file's size and sampled CRC-32, "full" its whole sha256, "none"
    only that it exists. verify_digests=True/False is the older spelling of "full"/"quick"."""
    if verify_digests is not None:
        verify = "full" if verify_digests else "quick"
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {VERIFY_MODES}, not {verify!r}")
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
    checks = m.get("file_checks") or {}
    if not isinstance(files, dict) or not isinstance(checks, dict) \
            or not all(isinstance(v, str) for v in files.values()):
        raise ManifestError(f"model folder {folder}: {MANIFEST_NAME} has a malformed files table")
    for name in sorted(set(REQUIRED_FILES) | set(files) | set(checks)):
        if not member_path(folder, name).is_file():
            raise FileNotFoundError(f"model folder {folder} has no {name}; {repair_hint(folder)}")
    for name, digest in files.items():
        if verify != "none":
            check_file(folder, name, digest, checks.get(name), full=verify == "full")
    return m


def check_file(folder, name: str, sha256: str, check, full: bool = False) -> None:
    """One file against its manifest entry: size, then the sampled CRC-32 (the full sha256 where the manifest
    records no sample, or with `full`). ManifestError naming the file and the repair."""
    folder = Path(folder)
    path = member_path(folder, name)

    def bad(what):
        return ManifestError(f"model folder {folder}: {name} {what} in {MANIFEST_NAME}: the file is damaged or "
                             f"was changed; {repair_hint(folder)}")

    size = path.stat().st_size
    if isinstance(check, dict):
        if check.get("size") != size:
            raise bad(f"has {size} bytes, not the {check.get('size')} recorded")
        if not full and isinstance(check.get("sampled_crc32"), str):
            if sampled_crc32(path) != check["sampled_crc32"]:
                raise bad("does not match its sampled CRC-32")
            return
    if sha256_file(path, progress="verify" if full else None) != sha256:
        raise bad("does not match its sha256")
