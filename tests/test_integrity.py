"""Model folders are checked against their manifest: sizes and sampled digests on every load, every byte with
`edgeai verify`, and no manifest entry may point outside its folder."""
import json
import os
import shutil

import numpy as np
import pytest

from conftest import build_tiny_llm_folder
from edgeai import manifest as mf
from edgeai.cli import main

BIG = 12 * 1024 * 1024  # larger than the samples (64 x 64 KiB), so loading checks samples, not the whole file


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return build_tiny_llm_folder(tmp_path_factory.mktemp("integrity") / "m")[1]


@pytest.fixture
def big_folder(tmp_path):
    """A folder with a 12 MB data file and a manifest written by the shared writer."""
    d = tmp_path / "big"
    d.mkdir()
    (d / "model.onnx").write_bytes(b"graph")
    (d / "tokenizer.json").write_text("{}")
    (d / "model.onnx.data").write_bytes(np.random.default_rng(0).bytes(BIG))
    mf.write_manifest(d, {"kind": "test"})
    return d


def overwrite(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_manifest_records_sizes_and_samples(big_folder):
    m = mf.load_manifest(big_folder, verify="full")
    assert m["file_checks"]["model.onnx.data"]["size"] == BIG
    assert m["file_checks"]["model.onnx.data"]["sampled_crc32"] == mf.sampled_crc32(big_folder / "model.onnx.data")


def test_same_size_corruption_fails_the_load(big_folder):
    """The issue's case: 2 MB of random bytes written over the middle of the data file, size unchanged."""
    overwrite(big_folder / "model.onnx.data", BIG // 2, np.random.default_rng(1).bytes(2 * 1024 * 1024))
    with pytest.raises(mf.ManifestError, match=r"model\.onnx\.data does not match its sampled CRC-32.*edgeai pull "
                                                r"--force"):
        mf.load_manifest(big_folder)


def test_size_change_fails_the_load(big_folder):
    with open(big_folder / "model.onnx.data", "ab") as f:
        f.write(b"x")
    with pytest.raises(mf.ManifestError, match=f"has {BIG + 1} bytes, not the {BIG} recorded"):
        mf.load_manifest(big_folder)


def test_verify_checks_every_byte(big_folder, capsys):
    """One flipped byte between two samples passes the quick check on load; `edgeai verify` finds it."""
    gap = (BIG - mf.SAMPLE_BLOCK) // (mf.SAMPLE_COUNT - 1)
    off = gap + mf.SAMPLE_BLOCK + 10  # after the second sample's block, before the third's
    assert off + 1 < 2 * gap
    with open(big_folder / "model.onnx.data", "r+b") as f:
        f.seek(off)
        b = f.read(1)
        f.seek(off)
        f.write(bytes([b[0] ^ 0xFF]))
    mf.load_manifest(big_folder)
    assert main(["verify", str(big_folder)]) == 1
    err = capsys.readouterr().err
    assert "model.onnx.data does not match its sha256" in err and "Traceback" not in err


def test_verify_passes_a_good_folder(tiny_folder, capsys):
    assert main(["verify", str(tiny_folder)]) == 0
    assert "files match their sha256" in capsys.readouterr().out


def test_corrupt_llm_folder_does_not_load(tiny_folder, tmp_path, capsys):
    from edgeai import LLM

    d = tmp_path / "m"
    shutil.copytree(tiny_folder, d)
    size = (d / "model.onnx.data").stat().st_size
    overwrite(d / "model.onnx.data", size // 3, np.random.default_rng(2).bytes(size // 3))
    with pytest.raises(mf.ManifestError, match=r"model\.onnx\.data does not match .*edgeai pull --force"):
        LLM(d)
    assert main(["generate", "--model", str(d), "hello"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("edgeai: error:") and "model.onnx.data" in err and "Traceback" not in err


def test_repair_hint_names_the_cached_model(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEAI_HOME", str(tmp_path))
    assert "edgeai pull --force smollm2-135m --quant q4" in mf.repair_hint(tmp_path / "models" / "smollm2-135m-q4")


# --- paths outside the folder ----------------------------------------------------------------------------------

def _rewrite(folder, **changes):
    m = json.loads((folder / "edgeai.json").read_text())
    for key, fn in changes.items():
        m[key] = fn(m[key])
    (folder / "edgeai.json").write_text(json.dumps(m))


@pytest.mark.parametrize("name", ["../outside.bin", "/etc/hostname", "sub/../../outside.bin", "..\\outside.bin",
                                  "C:/outside.bin"])
def test_files_entry_outside_the_folder(tiny_folder, tmp_path, name):
    d = tmp_path / "m"
    shutil.copytree(tiny_folder, d)
    (tmp_path / "outside.bin").write_bytes(b"secret")
    _rewrite(d, files=lambda f: {**f, name: "0" * 64})
    for verify in mf.VERIFY_MODES:
        with pytest.raises(mf.ManifestError, match="outside the folder"):
            mf.load_manifest(d, verify=verify)


def test_symlink_out_of_the_folder(tiny_folder, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny_folder, d)
    (tmp_path / "outside.json").write_text((d / "tokenizer.json").read_text())
    os.replace(d / "tokenizer.json", tmp_path / "moved.json")
    os.symlink(tmp_path / "outside.json", d / "tokenizer.json")
    with pytest.raises(mf.ManifestError, match="tokenizer.json is a link to .*outside the folder"):
        mf.load_manifest(d)


def test_symlink_inside_the_folder_is_fine(tiny_folder, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny_folder, d)
    (d / "sub").mkdir()
    os.replace(d / "tokenizer.json", d / "sub" / "tokenizer.json")
    os.symlink("sub/tokenizer.json", d / "tokenizer.json")
    mf.load_manifest(d)


@pytest.mark.parametrize("name", ["../x.onnx", "ABS", "sub/../../x.onnx"])
def test_embedder_model_files_outside_the_folder(tiny_embed_model, tmp_path, name):
    from edgeai.retrieval.embedder import Embedder

    d = tmp_path / "emb"
    shutil.copytree(tiny_embed_model, d)
    shutil.copy(d / "model.onnx", tmp_path / "x.onnx")
    name = str(tmp_path / "x.onnx") if name == "ABS" else name
    _rewrite(d, model_files=lambda f: {**f, "fp32": name})
    with pytest.raises(mf.ManifestError, match="outside the folder"):
        Embedder(d)


def test_corrupt_embedder_does_not_load(tiny_embed_model, tmp_path):
    from edgeai.retrieval.embedder import Embedder

    d = tmp_path / "emb"
    shutil.copytree(tiny_embed_model, d)
    overwrite(d / "model.onnx", 200, b"\x00" * 64)
    with pytest.raises(mf.ManifestError, match="model.onnx does not match"):
        Embedder(d)
