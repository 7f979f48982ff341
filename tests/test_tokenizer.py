"""Tokenizer: lossless round trips, per-digit splits, no BOS, specials, chat templates, streaming decode."""
import json

import numpy as np
import pytest

from conftest import SMOLLM2_TEMPLATE
from edgeai.convert.tokenizer_build import make_tiny_tokenizer_json
from edgeai.tokenizer import DecodeStream, Tokenizer

CORPUS = [
    "Hello, world!",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "\tindented\twith\ttabs\n\n\nand blank lines",
    "numbers 12345 3.14159 -42 1e-9 0x1F 2026-11-27",
    "whitespace   runs      and trailing   ",
    "  leading spaces",
    "Ünïcödé: naïve café, Straße, Ελληνικά, русский, עברית, العربية",
    "CJK: 東京は日本の首都です。中文测试。한국어 텍스트",
    "emoji: 😀👍🏽👨‍👩‍👧‍👦 🇫🇷 ✨",
    "mixed\r\nline endings\rhere",
    "<html><body class=\"x\">{\"json\": [1, 2, {\"a\": null}]}</body></html>",
    "",
    " ",
    "a" * 300,
]
SPECIALS = {"bos": None, "eos": "<|im_end|>", "pad": "<|im_end|>", "unk": "<|endoftext|>"}


@pytest.fixture(scope="module")
def tiny_tok():
    return Tokenizer(make_tiny_tokenizer_json(400), SMOLLM2_TEMPLATE, SPECIALS)


@pytest.fixture(scope="module")
def real_tok(smollm2_source):
    s = smollm2_source
    return Tokenizer(s.tokenizer_json, s.chat_template, s.special_tokens)


def _check_round_trip(tok):
    for text in CORPUS:
        ids = tok.encode(text)
        assert tok.decode(ids) == text, text


def _check_digits_and_bos(tok):
    ids = tok.encode("12345")
    assert len(ids) == 5 and [tok.decode([i]) for i in ids] == list("12345")
    assert tok.encode("hi")[0] != tok.token_to_id("<|im_start|>")
    assert tok.encode("") == []  # nothing added: no BOS, no EOS


def _check_specials(tok):
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == tok.token_to_id("<|im_start|>") and ids[-1] == tok.token_to_id("<|im_end|>")
    assert tok.token_to_id("<|im_end|>") in tok.eos_token_ids
    assert tok.decode(ids, skip_special_tokens=True) == "user\nhi"


def _check_stream(tok):
    for text in CORPUS:
        ids = tok.encode(text)
        stream = tok.decode_stream(skip_special_tokens=False)
        pieces = [stream.step(i) for i in ids] + [stream.flush()]
        assert "".join(pieces) == text
        assert not any("\ufffd" in p for p in pieces)


def test_tiny_round_trip(tiny_tok):
    _check_round_trip(tiny_tok)


def test_tiny_digits_no_bos(tiny_tok):
    _check_digits_and_bos(tiny_tok)


def test_tiny_specials(tiny_tok):
    _check_specials(tiny_tok)
    assert tiny_tok.eos_token_ids[0] == 2


def test_tiny_stream(tiny_tok):
    _check_stream(tiny_tok)


def test_stream_holds_partial_characters():
    """A byte-by-byte vocabulary splits every multi-byte character: nothing may come out half."""
    tok = Tokenizer(make_tiny_tokenizer_json(259), None, SPECIALS)
    text = "é東😀x"
    ids = tok.encode(text)
    assert len(ids) == 2 + 3 + 4 + 1
    stream = DecodeStream(tok)
    out = [stream.step(i) for i in ids]
    assert out == ["", "é", "", "", "東", "", "", "", "😀", "x"]


def test_small_vocab_tiny_tokenizer():
    tok = Tokenizer(make_tiny_tokenizer_json(256), None, SPECIALS)
    assert tok.vocab_size == 256
    assert tok.decode(tok.encode("plain ascii 123\n")) == "plain ascii 123\n"


def test_from_folder(tmp_path):
    (tmp_path / "tokenizer.json").write_text(make_tiny_tokenizer_json(300))
    (tmp_path / "edgeai.json").write_text(json.dumps({"tokenizer": {
        "chat_template": SMOLLM2_TEMPLATE, "eos_token": "<|im_end|>", "eos_token_ids": [2, 0]}}))
    tok = Tokenizer.from_folder(tmp_path)
    assert tok.eos_token_ids == [2, 0] and tok.chat_template == SMOLLM2_TEMPLATE
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        Tokenizer.from_folder(tmp_path / "nope")


def test_a_file_path_parses_to_the_same_tokenizer_as_its_text(tmp_path):
    """from_folder hands the library the file's path (no Python copy of a 5 MB JSON, a lower parse peak): the
    tokenizer must be the one its text gives, ids, specials and decoding alike."""
    text = make_tiny_tokenizer_json(300)
    (tmp_path / "tokenizer.json").write_text(text)
    a, b = Tokenizer(text, None, SPECIALS), Tokenizer(tmp_path / "tokenizer.json", None, SPECIALS)
    for s in ("plain ascii 123\n", "<|im_start|>user\nhé 東 😀<|im_end|>", "  spaces\t\ttabs  ", ""):
        assert b.encode(s) == a.encode(s)
        assert b.decode(b.encode(s)) == a.decode(a.encode(s))
    assert (b.vocab_size, b.eos_token_ids) == (a.vocab_size, a.eos_token_ids)
    assert Tokenizer.from_folder(tmp_path).encode("plain ascii 123") == a.encode("plain ascii 123")


@pytest.mark.parametrize("content", [b'{"model": ', b"\xff\xfe not utf-8", b"{}"])
def test_from_folder_names_an_unreadable_tokenizer_file(tmp_path, content):
    (tmp_path / "tokenizer.json").write_bytes(content)
    with pytest.raises(ValueError, match="cannot read the tokenizer .*tokenizer.json"):
        Tokenizer.from_folder(tmp_path)


@pytest.mark.smollm2
def test_real_round_trip(real_tok):
    _check_round_trip(real_tok)


@pytest.mark.smollm2
def test_real_digits_no_bos(real_tok):
    _check_digits_and_bos(real_tok)
    assert real_tok.vocab_size == 49152


@pytest.mark.smollm2
def test_real_specials_and_template(real_tok):
    _check_specials(real_tok)
    assert real_tok.token_to_id("<|im_end|>") == 2 and real_tok.eos_token_ids[0] == 2
    prompt = real_tok.apply_chat_template([{"role": "user", "content": "What is 2+2?"}])
    assert prompt.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert prompt.endswith("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    ids = real_tok.encode(prompt)
    assert ids[0] == 1 and ids.count(1) == 3 and ids.count(2) == 2


@pytest.mark.smollm2
def test_real_stream(real_tok):
    _check_stream(real_tok)
    rng = np.random.default_rng(0)  # random ids: whatever bytes come out, the stream equals the full decode
    ids = [int(i) for i in rng.integers(17, 49152, 200)]
    s = real_tok.decode_stream()
    assert "".join([s.step(i) for i in ids] + [s.flush()]) == real_tok.decode(ids)


def test_sentencepiece_style_vocab():
    """llama-style GGUF vocab (scores, <0xXX> byte tokens, ▁ for spaces): merges rebuilt from scores, BOS added."""
    from edgeai.convert.tokenizer_build import BYTE, CONTROL, NORMAL, UNKNOWN, spm_bpe_json

    pieces = ["\u2581", "h", "e", "l", "o", "w", "r", "d", "he", "ll", "\u2581he", "llo", "\u2581hello",
              "\u2581w", "or", "\u2581wor", "ld", "\u2581world"]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces
    types = [UNKNOWN, CONTROL, CONTROL] + [BYTE] * 256 + [NORMAL] * len(pieces)
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))]
    # a merge's rank follows the score of the piece it makes: "▁hello" (score -12) beats "▁world" (-17)
    tok = Tokenizer(json.dumps(spm_bpe_json(tokens, types, scores, add_bos=True, bos_id=1, unk_id=0)), None,
                    {"bos": "<s>", "eos": "</s>"})
    ids = tok.encode("hello world")
    assert [tok.id_to_token(i) for i in ids] == ["<s>", "\u2581hello", "\u2581world"]
    assert tok.decode(ids, skip_special_tokens=True) == "hello world"
    ids = tok.encode("héllo 東")  # characters outside the vocabulary fall back to bytes
    assert tok.id_to_token(ids[3]) == "<0xC3>"
    assert tok.decode(ids, skip_special_tokens=True) == "héllo 東"
    assert tok.eos_token_ids[0] == 2
    stream = tok.decode_stream()
    assert "".join(stream.step(i) for i in tok.encode("hello world héllo")) + stream.flush() == "hello world héllo"
