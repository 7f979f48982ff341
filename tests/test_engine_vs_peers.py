"""bench/engine_vs_peers.py's choice of peers: llama.cpp gets the folder's own source GGUF, --peer-model and
--peer-python override, and a genai build of another model is refused by name before anything runs."""
import argparse
import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "engine_vs_peers.py"


@pytest.fixture
def evp(monkeypatch):
    spec = importlib.util.spec_from_file_location("engine_vs_peers", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "default_peer_config", lambda: {"genai": {"python": "/p/py", "model": "/p/smollm2"}})
    return mod


def folder(tmp_path, name, **cfg):
    d = tmp_path / name
    d.mkdir()
    (d / "edgeai.json").write_text(json.dumps({"config": {"vocab_size": 151936, "hidden_size": 896,
                                                          "num_layers": 24, **cfg},
                                               "source": {"path": "/models/q.gguf"}}))
    return d


def genai(tmp_path, name, vocab, hidden, layers):
    d = tmp_path / name
    d.mkdir()
    (d / "genai_config.json").write_text(json.dumps({"model": {"vocab_size": vocab, "decoder": {
        "hidden_size": hidden, "num_hidden_layers": layers}}}))
    return d


def args(model, peer, peer_model=None, peer_python=None):
    return argparse.Namespace(model=str(model), peer=peer, peer_model=peer_model, peer_python=peer_python)


def test_peers_and_overrides(tmp_path, evp):
    m = folder(tmp_path, "ours")
    g = genai(tmp_path, "g05", 151936, 896, 24)
    spec = evp.peer_spec(args(m, ["genai", "llamacpp"], [f"genai={g}"], ["/venv/python"]))
    assert spec == {"genai": {"python": "/venv/python", "model": str(g)},
                    "llamacpp": {"python": "/venv/python", "model": "/models/q.gguf"}}


@pytest.mark.parametrize("dims", [(49152, 576, 30), (151936, 1536, 28)])  # SmolLM2; the other Qwen size
def test_genai_build_of_another_model_is_refused(tmp_path, evp, dims):
    m = folder(tmp_path, "ours")
    g = genai(tmp_path, "other", *dims)
    with pytest.raises(SystemExit, match="is not the model of"):
        evp.peer_spec(args(m, ["genai"], [f"genai={g}"]))
