"""edgeai.evaluate.fidelity: KL / top-1 / perplexity ratio between tiny models, saved references, twins."""
import json

import numpy as np
import pytest

from edgeai.convert.pipeline import convert
from edgeai.convert.tiny import make_tiny_source
from edgeai.convert.tokenizer_build import make_tiny_tokenizer_json
from edgeai.evaluate.fidelity import (Reference, chunked_logits, ensure_all_logits, fidelity, perplexity_eval,
                                      tokenize_text)
from edgeai.evaluate.perplexity import _Session, perplexity

TEXT = ("This program is free software: you can redistribute it and/or modify it under the terms of the "
        "GNU General Public License as published by the Free Software Foundation, either version 3 of the "
        "License, or (at your option) any later version. ") * 3


def tiny(seed=0, vocab=320):
    s = make_tiny_source(vocab=vocab, seed=seed, max_pos=512)
    s.tokenizer_json = make_tiny_tokenizer_json(vocab)
    s.special_tokens = {"bos": None, "eos": "<|im_end|>", "pad": "<|im_end|>", "unk": "<|endoftext|>"}
    s.source = {"format": "tiny", "name": f"tiny{seed}"}
    return s


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("fid")
    return {"ref": convert(tiny(0), d / "ref", quant="fp32", all_logits=True, progress=False),
            "same": convert(tiny(0), d / "same", quant="fp32", all_logits=True, progress=False),
            "q4": convert(tiny(0), d / "q4", quant="q4", all_logits=True, progress=False),
            "other": convert(tiny(1), d / "other", quant="fp32", all_logits=True, progress=False)}


def test_identical_models(models):
    r = fidelity(models["ref"], models["same"], text=TEXT, max_tokens=200, chunk=64)
    assert r["tokens_scored"] == 199
    assert r["kl"]["mean"] < 1e-6 and r["kl"]["max"] < 1e-5
    assert r["top1_agreement"] == 1.0
    assert r["ppl_ratio"] == pytest.approx(1.0, abs=1e-6)


def test_perturbed_model(models):
    r = fidelity(models["ref"], models["q4"], text=TEXT, max_tokens=200)
    assert r["kl"]["mean"] > 1e-6
    assert r["kl"]["max"] >= r["kl"]["p95"] >= 0
    far = fidelity(models["ref"], models["other"], text=TEXT, max_tokens=200)
    assert far["kl"]["mean"] > r["kl"]["mean"]
    assert far["top1_agreement"] < 1.0


def _full_logits(folder, ids):
    s = _Session(folder / "model.onnx", None)
    return s.run(ids, s.empty(), 0)[0].astype(np.float64)


def test_exact_kl_with_full_topk(models):
    """topk >= vocab: the bins are the tokens, so the KL is exact; check against NumPy on full logits."""
    ids = tokenize_text(models["ref"], TEXT, 120)
    r = fidelity(models["ref"], models["other"], token_ids=ids, topk=10_000, chunk=50)
    assert r["kl_method"] == "exact"
    la, lb = _full_logits(models["ref"], ids)[:-1], _full_logits(models["other"], ids)[:-1]
    la -= np.logaddexp.reduce(la, axis=1, keepdims=True)
    lb -= np.logaddexp.reduce(lb, axis=1, keepdims=True)
    kl = (np.exp(la) * (la - lb)).sum(1)
    assert r["kl"]["mean"] == pytest.approx(kl.mean(), rel=1e-4)
    assert r["kl"]["max"] == pytest.approx(kl.max(), rel=1e-4)
    assert r["top1_agreement"] == pytest.approx((la.argmax(1) == lb.argmax(1)).mean())
    # a coarser reference only merges tokens: a lower bound
    r16 = fidelity(models["ref"], models["other"], token_ids=ids, topk=16)
    assert r16["kl"]["mean"] <= r["kl"]["mean"] + 1e-9
    assert r16["ppl_ratio"] == pytest.approx(r["ppl_ratio"])


def test_saved_reference_reuse(models, tmp_path):
    ref = tmp_path / "ref.npz"
    live = fidelity(models["ref"], models["q4"], text=TEXT, max_tokens=150, topk=32, save_reference=ref)
    again = fidelity(ref, models["q4"], text=TEXT, max_tokens=150)
    again_no_text = fidelity(ref, models["q4"])
    for r in (again, again_no_text):
        assert r["kl"] == live["kl"]
        assert r["top1_agreement"] == live["top1_agreement"]
        assert r["ppl_reference"] == live["ppl_reference"] and r["ppl_candidate"] == live["ppl_candidate"]
    loaded = Reference.load(ref)
    assert loaded.topk_idx.shape == (149, 32) and loaded.meta["topk"] == 32
    with pytest.raises(ValueError, match="different tokens"):
        fidelity(ref, models["q4"], text=TEXT, max_tokens=100)


def test_chunks_match_one_pass(models):
    ids = tokenize_text(models["ref"], TEXT, 90)
    full = _full_logits(models["ref"], ids)
    parts = np.concatenate([lg for _, lg in chunked_logits(models["ref"], ids, chunk=13)])
    np.testing.assert_allclose(parts, full, rtol=1e-4, atol=1e-4)


def test_perplexity_eval_matches_module(models):
    ids = tokenize_text(models["ref"], TEXT, 100)
    r = perplexity_eval(models["ref"], text=TEXT, max_tokens=100)
    assert r["tokens_scored"] == 99 and r["tokens_in_text"] == 100
    assert r["ppl"] == pytest.approx(perplexity(models["ref"], ids)["ppl"])
    lp = fidelity(models["ref"], models["same"], token_ids=ids)
    assert lp["ppl_reference"] == pytest.approx(r["ppl"], rel=1e-5)


def test_all_logits_twin(tiny_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEAI_HOME", str(tmp_path / "home"))
    gguf, _, _ = tiny_gguf()
    last = convert(gguf, tmp_path / "last", quant="q4", progress=False)
    assert not json.loads((last / "edgeai.json").read_text())["graph"]["all_logits"]
    twin = ensure_all_logits(last, progress=False)
    assert twin != last and str(twin).startswith(str(tmp_path / "home" / "eval"))
    m = json.loads((twin / "edgeai.json").read_text())
    assert m["graph"]["all_logits"] and m["quantization"]["mode"] == "q4"
    assert ensure_all_logits(last, progress=False) == twin  # built once
    assert ensure_all_logits(twin) == twin
    # new weights in the same graph (a re-conversion by a newer converter) get a new twin
    from edgeai.manifest import write_manifest

    data, manifest = (last / "model.onnx.data").read_bytes(), (last / "edgeai.json").read_bytes()
    (last / "model.onnx.data").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    mf = json.loads(manifest)
    write_manifest(last, {k: v for k, v in mf.items() if k not in ("files", "file_checks")})  # digests agree
    assert ensure_all_logits(last, progress=False) != twin
    (last / "model.onnx.data").write_bytes(data)
    (last / "edgeai.json").write_bytes(manifest)
    # the twin scores like the last-position graph does (one token per run)
    ids = tokenize_text(last, TEXT, 24)
    assert perplexity_eval(last, token_ids=ids)["ppl"] == pytest.approx(perplexity(last, ids)["ppl"], rel=1e-4)


def test_cli_fidelity_and_perplexity(models, tmp_path, capsys):
    from edgeai.cli import main

    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    out = tmp_path / "f.json"
    assert main(["eval", "fidelity", "--reference", str(models["ref"]), "--candidate", str(models["q4"]),
                 "--text", str(text), "--max-tokens", "64", "--json", str(out),
                 "--save-reference", str(tmp_path / "r.npz")]) == 0
    assert "top-1 agreement" in capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["tokens_scored"] == 63
    assert main(["eval", "fidelity", "--reference", str(tmp_path / "r.npz"), "--candidate", str(models["q4"]),
                 "--compare", str(out)]) == 0
    assert "no numeric differences" in capsys.readouterr().out
    assert main(["eval", "perplexity", str(models["ref"]), "--text", str(text), "--max-tokens", "50"]) == 0
    assert "over 49 scored tokens" in capsys.readouterr().out
