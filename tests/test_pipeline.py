"""convert(): complete model folders, atomic replace, refusal without force, clean failure; manifest checks."""
import json

import numpy as np
import pytest

from conftest import write_hf_folder
from edgeai import manifest as mf
from edgeai.convert.hf_source import load_hf_folder
from edgeai.convert.weights import as_float
from edgeai.cli import main as cli_main
from edgeai.convert import pipeline
from edgeai.convert.pipeline import ModelExistsError, convert
from edgeai.tokenizer import Tokenizer

FILES = {"model.onnx", "model.onnx.data", "tokenizer.json", "edgeai.json"}


def _leftovers(parent):
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


def test_folder_round_trip(tiny_llm, tmp_path):
    out = convert(tiny_llm(), tmp_path / "m", quant="q4", progress=False)
    assert {p.name for p in out.iterdir()} == FILES
    m = mf.load_manifest(out, verify_digests=True)
    assert m["format_version"] == mf.FORMAT_VERSION and m["architecture"] == "llama"
    assert m["config"]["num_layers"] == 2 and m["kv_cache"]["num_kv_heads"] == 2
    assert m["graph"]["inputs"][0]["name"] == "input_ids" and m["quantization"]["mode"] == "q4"
    assert set(m["files"]) == FILES - {"edgeai.json"}
    assert m["tokenizer"]["eos_token_id"] == 2 and 2 in m["tokenizer"]["eos_token_ids"]
    assert m["tokenizer"]["adds_bos"] is False
    assert {"edgeai", "onnx", "onnxruntime", "gguf", "numpy", "tokenizers"} <= set(m["tool_versions"])
    tok = Tokenizer.from_folder(out)
    assert tok.apply_chat_template([{"role": "user", "content": "x"}]).endswith("<|im_start|>assistant\n")
    assert _leftovers(tmp_path) == []


def test_from_gguf_file(tiny_gguf, tmp_path):
    path, _, _ = tiny_gguf()
    out = convert(path, tmp_path / "g", quant="q8", progress=False)
    m = mf.load_manifest(out, verify_digests=True)
    assert m["source"]["format"] == "gguf" and len(m["source"]["sha256"]) == 64
    assert m["quantization"]["source_weights"] == "Q4_1"
    assert m["tokenizer"]["chat_template"].startswith("{% for message in messages %}")


def test_from_hf_folder(tiny_llm, tmp_path):
    folder = write_hf_folder(tmp_path / "hf", tiny_llm())
    out = convert(folder, tmp_path / "h", quant="fp32", progress=False)
    m = mf.load_manifest(out, verify_digests=True)
    assert m["source"]["format"] == "hf" and m["tokenizer"]["eos_token"] == "<|im_end|>"


@pytest.mark.parametrize("bf16,shards", [(False, 1), (False, 3), (True, 2)])
def test_hf_reader(tiny_llm, tmp_path, bf16, shards):
    src = tiny_llm(tie_word_embeddings=False)
    folder = write_hf_folder(tmp_path / "hf", src, bf16=bf16, shards=shards)
    got = load_hf_folder(folder)
    assert got.config.to_dict() == src.config.to_dict()
    assert set(got.tensors) == set(src.tensors)
    for k, v in src.tensors.items():
        want = as_float(v)
        if bf16:
            want = ((want.view(np.uint32) >> 16) << 16).view(np.float32)
        np.testing.assert_array_equal(got.tensors[k], want, err_msg=k)
    assert got.chat_template == src.chat_template and got.special_tokens["eos"] == "<|im_end|>"
    assert got.tokenizer_json == src.tokenizer_json


def test_hf_reader_errors(tiny_llm, tmp_path):
    folder = write_hf_folder(tmp_path / "hf", tiny_llm())
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "model_type": "bert"}))
    with pytest.raises(ValueError, match="bert"):
        load_hf_folder(folder)
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_hf_folder(folder)


def test_refuses_existing_without_force(tiny_llm, tmp_path):
    out = convert(tiny_llm(), tmp_path / "m", quant="q4", progress=False)
    before = mf.load_manifest(out)
    with pytest.raises(ModelExistsError, match="force"):
        convert(tiny_llm(), out, quant="fp32", progress=False)
    assert mf.load_manifest(out, verify_digests=True) == before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ModelExistsError):
        convert(tiny_llm(), tmp_path / "other", progress=False)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
    (tmp_path / "empty").mkdir()  # an empty folder is fine
    convert(tiny_llm(), tmp_path / "empty", progress=False)


def test_force_replaces(tiny_llm, tmp_path):
    out = convert(tiny_llm(), tmp_path / "m", quant="q4", progress=False)
    (out / "stale.txt").write_text("old")
    convert(tiny_llm(), out, quant="fp32", force=True, progress=False)
    m = mf.load_manifest(out, verify_digests=True)
    assert m["quantization"]["mode"] == "fp32" and not (out / "stale.txt").exists()
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("exc", [RuntimeError("builder failed"), KeyboardInterrupt()])
def test_failure_leaves_nothing_behind(tiny_llm, tmp_path, monkeypatch, exc):
    out = convert(tiny_llm(), tmp_path / "m", quant="q4", progress=False)
    before = mf.load_manifest(out)

    def broken(source, out_dir, **kw):
        (out_dir / "model.onnx").write_bytes(b"half a graph")
        raise exc

    monkeypatch.setattr(pipeline, "build_onnx", broken)
    with pytest.raises(type(exc)):
        convert(tiny_llm(), tmp_path / "new", progress=False)
    assert not (tmp_path / "new").exists()
    with pytest.raises(type(exc)):
        convert(tiny_llm(), out, quant="fp32", force=True, progress=False)
    assert mf.load_manifest(out, verify_digests=True) == before  # the existing model is untouched
    assert _leftovers(tmp_path) == []


def test_truncated_gguf_is_clear(tiny_gguf, tmp_path):
    path, _, _ = tiny_gguf()
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ValueError, match="corrupt or truncated GGUF"):
        convert(path, tmp_path / "t", progress=False)
    assert not (tmp_path / "t").exists()


def test_bad_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such model source"):
        convert(tmp_path / "missing.gguf", tmp_path / "o", progress=False)
    with pytest.raises(ValueError, match="quant"):
        convert(tmp_path / "missing.gguf", tmp_path / "o", quant="q3", progress=False)


# --- manifest checks ------------------------------------------------------------------------------------

@pytest.fixture
def model(tiny_llm, tmp_path):
    return convert(tiny_llm(), tmp_path / "m", quant="q4", progress=False)


def test_missing_tokenizer(model):
    (model / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="has no tokenizer.json"):
        mf.load_manifest(model)


def test_missing_folder_and_manifest(model, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        mf.load_manifest(tmp_path / "nope")
    (model / "edgeai.json").unlink()
    with pytest.raises(FileNotFoundError, match="edgeai.json"):
        mf.load_manifest(model)


def test_bad_digest(model):
    with open(model / "model.onnx.data", "r+b") as f:
        f.seek(100)
        b = f.read(1)
        f.seek(100)
        f.write(bytes([b[0] ^ 0xFF]))
    mf.load_manifest(model, verify="none")  # existence only
    with pytest.raises(mf.ManifestError, match="model.onnx.data does not match"):
        mf.load_manifest(model, verify="full")
    with pytest.raises(mf.ManifestError, match="model.onnx.data does not match its sampled CRC-32"):
        mf.load_manifest(model)  # a file no larger than the samples is checked whole on every load
    with pytest.raises(mf.ManifestError, match="model.onnx.data does not match"):
        mf.load_manifest(model, verify_digests=True)


def test_unknown_format_version(model):
    m = json.loads((model / "edgeai.json").read_text())
    m["format_version"] = mf.FORMAT_VERSION + 1
    (model / "edgeai.json").write_text(json.dumps(m))
    with pytest.raises(mf.ManifestError, match="newer than this edgeai supports"):
        mf.load_manifest(model)


def test_malformed_manifest(model):
    (model / "edgeai.json").write_text("{not json")
    with pytest.raises(mf.ManifestError, match="malformed"):
        mf.load_manifest(model)


# --- CLI ------------------------------------------------------------------------------------------------

def test_cli_convert(tiny_gguf, tmp_path, capsys):
    path, _, _ = tiny_gguf()
    assert cli_main(["convert", str(path), str(tmp_path / "c"), "--quant", "q4"]) == 0
    out = capsys.readouterr().out
    assert "converted" in out and "MB" in out and "s," in out
    assert cli_main(["convert", str(path), str(tmp_path / "c")]) == 1
    assert "--force" in capsys.readouterr().err
    assert cli_main(["convert", str(path), str(tmp_path / "c"), "--force", "--all-logits"]) == 0
    assert mf.load_manifest(tmp_path / "c")["graph"]["all_logits"] is True
