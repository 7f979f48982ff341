"""The real Qwen2.5-Coder GGUF's tokenizer as edgeai builds it (tokenizer.ggml.pre = "qwen2"): the same ids as
transformers' Qwen2 tokenizer over the same vocabulary and merges, the chat prompt byte-identical to transformers'
apply_chat_template with the file's own template, generation ending on <|im_end|> and <|endoftext|> only, and
streaming that never splits a UTF-8 character.

Needs the file (marked `qwen`; $EDGEAI_QWEN_GGUF or edgeai's cache); the transformers comparisons are also
marked `transformers`. Reading the file's 151,936-token vocabulary takes a while, so it is read once here.
"""

import numpy as np
import pytest

from edgeai.tokenizer import Tokenizer

pytestmark = pytest.mark.qwen

TEXTS = [
    "Hello, world!",
    "def fib(n: int) -> int:\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n\n\nprint(fib(30))",
    "numbers 1234567890 3.14159 -42 1e-9 0x1F 2026-11-27 1,000,000",
    "\tindented\twith\ttabs\n\n  and   runs    of   spaces   ",
    "CJK: 東京は日本の首都です。中文测试：你好，世界！한국어 텍스트",
    "emoji 😀👍🏽👨‍👩‍👧‍👦 🇫🇷 ✨ and combining e\u0301 (NFC makes it é)",
    "It's, we're, I'LL, they'd've — contractions; «quotes» “curly” ‘single’",
    "<html><body class=\"x\">{\"json\": [1, 2, {\"a\": null}]}</body></html> </s> </s>",
    "mixed\r\nline endings\rhere\n",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<tool_call>x</tool_call><|endoftext|>",
    "",
]


@pytest.fixture(scope="module")
def qwen(qwen05_gguf):
    """(tokenizer.json text, specials, chat template, tokens, merges, token types) read from the real file."""
    path = qwen05_gguf
    from gguf import GGUFReader

    from edgeai.convert.tokenizer_build import tokenizer_from_gguf_reader

    r = GGUFReader(str(path), "r")
    tok_json, specials = tokenizer_from_gguf_reader(r)

    def field(k):
        return r.fields[k].contents()

    return dict(json=tok_json, specials=specials, template=field("tokenizer.chat_template"),
                tokens=field("tokenizer.ggml.tokens"), merges=field("tokenizer.ggml.merges"),
                types=field("tokenizer.ggml.token_type"), pre=field("tokenizer.ggml.pre"))


@pytest.fixture(scope="module")
def tok(qwen):
    return Tokenizer(qwen["json"], qwen["template"], qwen["specials"])


def test_generation_ends_on_im_end_and_endoftext(qwen, tok):
    assert qwen["pre"] == "qwen2"
    assert tok.eos_token_ids == [151645, 151643]  # <|im_end|> (the file's eos), <|endoftext|>
    # "</s>" is ordinary text in Qwen's vocabulary (an HTML tag), not an end of generation
    assert tok.token_to_id("</s>") == 128247 and 128247 not in tok.eos_token_ids


def test_known_ids(tok):
    """Ids of the real Qwen2 tokenizer (the same in its Hugging Face tokenizer.json)."""
    assert tok.encode("Hello, world!") == [9707, 11, 1879, 0]
    assert tok.encode("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n") == \
        [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198]
    assert tok.encode("12345") == [16, 17, 18, 19, 20]  # digits one by one


def test_round_trip_and_stream(tok):
    for text in TEXTS:
        ids = tok.encode(text)
        assert tok.decode(ids) == text.replace("e\u0301", "\u00e9"), text  # NFC normalizer
        s = tok.decode_stream(skip_special_tokens=False)
        pieces = [s.step(i) for i in ids] + [s.flush()]
        assert "".join(pieces) == tok.decode(ids) and not any("\ufffd" in p for p in pieces)
    # the texts do split characters across tokens (rare CJK, emoji sequences), so the check above bites
    split = [i for t in TEXTS for i in tok.encode(t) if "\ufffd" in tok.decode([i])]
    assert len(split) >= 4
    rng = np.random.default_rng(0)  # random ids: whatever bytes come out, the stream equals the full decode
    seq = [int(i) for i in rng.integers(0, 151665, 300)]
    s = tok.decode_stream()
    assert "".join([s.step(i) for i in seq] + [s.flush()]) == tok.decode(seq, skip_special_tokens=True)


@pytest.mark.transformers
def test_ids_match_transformers_qwen2_tokenizer(qwen, tok):
    """transformers' Qwen2Tokenizer builds its own pipeline (regex, NFC, byte level) from vocab and merges."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import AddedToken

    vocab = {t: i for i, t in enumerate(qwen["tokens"])}  # added tokens below then keep their ids
    merges = [tuple(m.split(" ", 1)) for m in qwen["merges"]]
    theirs = transformers.Qwen2Tokenizer(vocab=vocab, merges=merges, eos_token="<|im_end|>")
    added = [AddedToken(t, special=qwen["types"][i] == 3, normalized=False)
             for i, t in enumerate(qwen["tokens"]) if qwen["types"][i] in (3, 4)]
    theirs.add_tokens(added)
    for text in TEXTS:
        assert tok.encode(text) == theirs.encode(text, add_special_tokens=False), text
    rng = np.random.default_rng(1)
    pool = "".join(TEXTS)
    for _ in range(50):  # random slices: pre-tokenizer boundaries land everywhere
        a, b = sorted(rng.integers(0, len(pool), 2))
        assert tok.encode(pool[a:b]) == theirs.encode(pool[a:b], add_special_tokens=False), pool[a:b]


@pytest.mark.transformers
def test_chat_template_matches_transformers(qwen, tok):
    from test_chat_template import CONVERSATIONS, assert_same_as_transformers, hf_tokenizer

    theirs = hf_tokenizer(qwen["json"], qwen["template"], qwen["specials"])
    assert_same_as_transformers(tok, theirs, CONVERSATIONS)  # with and without a system message, several turns
    tools = [{"type": "function", "function": {"name": "get_time", "description": "Time <now> in a city",
                                               "parameters": {"type": "object",
                                                              "properties": {"city": {"type": "string"}}}}}]
    calls = [{"role": "user", "content": "Time in Zürich?"},
             {"role": "assistant", "content": "",
              "tool_calls": [{"type": "function", "function": {"name": "get_time", "arguments": {"city": "Zürich"}}}]},
             {"role": "tool", "content": "12:00"}]
    assert_same_as_transformers(tok, theirs, [calls], tools=tools)
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert prompt == ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
                      "<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
