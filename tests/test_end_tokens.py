"""Which tokens end generation, as each source says: a GGUF's eos/eot/eom ids, an HF folder's
generation_config.json (or config.json) eos_token_id, plus end-of-turn *special* tokens by their text."""
import json

import pytest

from conftest import SMOLLM2_TEMPLATE, write_hf_folder, write_tiny_gguf
from edgeai.convert.gguf_source import load_gguf
from edgeai.convert.hf_source import load_hf_folder
from edgeai.convert.pipeline import tokenizer_section
from edgeai.convert.tokenizer_build import make_tiny_tokenizer_json
from edgeai.tokenizer import Tokenizer
from test_rope_scaling import write_gguf_with

# the tiny tokenizer: 0 <|endoftext|>, 1 <|im_start|>, 2 <|im_end|> (special)


def test_gguf_eos_and_end_of_turn_specials(tiny_llm, tmp_path):
    path = tmp_path / "q.gguf"
    write_tiny_gguf(path, tiny_llm(attention_bias=True, tie_word_embeddings=False), arch="qwen2", weights="f32")
    s = load_gguf(path)
    assert s.special_tokens["eos"] == "<|im_end|>" and s.special_tokens["eog"] == []
    assert tokenizer_section(s)["eos_token_ids"] == [2, 0]  # <|im_end|>, then <|endoftext|> by its text


def test_gguf_eot_and_eom_ids_end_generation(tiny_llm, tmp_path, monkeypatch):
    src = tiny_llm()
    path = write_gguf_with(tmp_path / "l3.gguf", src, monkeypatch, eot_token_id=1, eom_token_id=5)
    s = load_gguf(path)
    assert s.special_tokens["eog"] == ["<|im_start|>", Tokenizer(s.tokenizer_json).id_to_token(5)]
    assert tokenizer_section(s)["eos_token_ids"] == [2, 1, 5, 0]


def _hf(tmp_path, name, generation_config=None, **config):
    from edgeai.convert.tiny import make_tiny_source

    src = make_tiny_source(vocab=320)
    src.tokenizer_json = make_tiny_tokenizer_json(320)
    src.chat_template = SMOLLM2_TEMPLATE
    src.special_tokens = {"bos": None, "eos": "<|im_end|>", "pad": "<|im_end|>", "unk": "<|endoftext|>"}
    folder = write_hf_folder(tmp_path / name, src)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, **config}))
    if generation_config is not None:
        (folder / "generation_config.json").write_text(json.dumps(generation_config))
    return load_hf_folder(folder)


def test_hf_generation_config_eos_list(tmp_path):
    s = _hf(tmp_path, "g", {"eos_token_id": [2, 7]}, eos_token_id=0)
    assert s.special_tokens["eog"][0] == "<|im_end|>" and len(s.special_tokens["eog"]) == 2
    assert tokenizer_section(s)["eos_token_ids"] == [2, 7, 0]  # generation_config wins over config.json
    s = _hf(tmp_path, "c", None, eos_token_id=9)
    assert tokenizer_section(s)["eos_token_ids"] == [2, 9, 0]
    assert _hf(tmp_path, "n", {"do_sample": False}).special_tokens["eog"] == []
    with pytest.raises(ValueError, match="outside the tokenizer's vocabulary"):
        _hf(tmp_path, "bad", {"eos_token_id": 100000})


def test_only_special_tokens_end_by_their_text():
    """Qwen's vocabulary has "</s>" as plain text (an HTML tag): it must not stop generation."""
    from tokenizers import Tokenizer as Raw

    raw = Raw.from_str(make_tiny_tokenizer_json(300))
    raw.add_tokens(["</s>"])  # an ordinary added token, not special
    raw.add_special_tokens(["<|eot_id|>"])
    tok = Tokenizer(raw.to_str(), None, {"eos": "<|im_end|>"})
    assert tok.token_to_id("</s>") not in tok.eos_token_ids
    assert tok.eos_token_ids == [2, tok.token_to_id("<|eot_id|>"), 0]
