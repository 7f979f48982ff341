"""bench/peers/gguf_to_hf.py: the fp32 Hugging Face folder the peers (onnxruntime-genai's model builder,
optimum) are built from must be the GGUF's own model, for Llama and Qwen2 files alike: transformers loads it
as the right architecture and its logits equal the NumPy reference on the reader's weights; its tokenizer and
chat template give edgeai's ids; its generation config ends where edgeai ends."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from edgeai.convert.gguf_source import load_gguf
from edgeai.tokenizer import Tokenizer
from helpers.reference import ReferenceLlama

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.torch

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "peers" / "gguf_to_hf.py"


def script():
    spec = importlib.util.spec_from_file_location("gguf_to_hf", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("arch,kw,cls", [
    ("qwen2", {"attention_bias": True, "tie_word_embeddings": False, "rope_theta": 1e6}, "Qwen2ForCausalLM"),
    ("llama", {}, "LlamaForCausalLM")])
def test_hf_folder_is_the_gguf_model(tmp_path, tiny_gguf, monkeypatch, arch, kw, cls):
    path, _, _ = tiny_gguf(arch=arch, weights="q8_0", **kw)
    mod = script()
    monkeypatch.setattr(mod, "SHARD_BYTES", 40_000)  # several shards and an index, as a 1.5B model gets
    out = tmp_path / "hf"
    mod.main(str(path), str(out))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == [cls] and (out / "model.safetensors.index.json").is_file()
    assert not list(tmp_path.glob("*.partial"))

    src = load_gguf(path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    assert type(hf).__name__ == cls
    ids = np.random.default_rng(5).integers(0, src.config.vocab_size, 20)
    with torch.no_grad():
        got = hf(torch.from_numpy(ids)[None]).logits[0].double().numpy()
    ref = ReferenceLlama(src).forward(ids, 0)
    assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())

    ours = Tokenizer(src.tokenizer_json, src.chat_template, src.special_tokens)
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    text = "def add(a, b):\n    return a + b  # 12345"
    assert tok.encode(text, add_special_tokens=False) == ours.encode(text, add_special_tokens=False)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi 42"}]
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == \
        ours.apply_chat_template(msgs)
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == ours.eos_token_ids and ours.eos_token_ids


def test_existing_output_is_refused(tmp_path, tiny_gguf):
    path, _, _ = tiny_gguf(arch="qwen2", weights="q8_0", attention_bias=True)
    (tmp_path / "hf").mkdir()
    with pytest.raises(SystemExit, match="exists"):
        script().main(str(path), str(tmp_path / "hf"))
