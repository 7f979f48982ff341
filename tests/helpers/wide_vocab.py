"""A Qwen-shaped byte-level BPE vocabulary of 151,936 tokens for tiny random models (no download).

Ids 0..255 are the single bytes; then every two-byte sequence, the CJK characters, the emoji's first three
bytes and random three-byte sequences, so most ids decode to fragments of UTF-8 characters (a stream over
them splits characters all the time); Qwen's
specials sit where Qwen has them (<|endoftext|> 151643, <|im_start|> 151644, <|im_end|> 151645) and the
top ids are "[PAD...]" placeholders, as in the real file. No merges: text encodes byte by byte.
"""
from __future__ import annotations

import functools
import json

import numpy as np

from edgeai.convert.tokenizer_build import _byte_alphabet

QWEN_VOCAB = 151936
ENDOFTEXT, IM_START, IM_END = 151643, 151644, 151645
QWEN_SPECIALS = {"bos": "<|endoftext|>", "eos": "<|im_end|>", "pad": "<|endoftext|>", "unk": None}


def fragment_ids(vocab: dict, data: bytes) -> int:
    """The id of the token that stands for exactly these bytes."""
    a = _byte_alphabet()
    return vocab["".join(a[b] for b in data)]


@functools.lru_cache(maxsize=2)
def make_wide_tokenizer_json(seed: int = 0) -> str:
    a = _byte_alphabet()
    pieces = list(a) + [a[x] + a[y] for x in range(256) for y in range(256)]
    # whole CJK characters (as Qwen has them) and the first three bytes of the emoji
    pieces += ["".join(a[b] for b in chr(c).encode()) for c in range(0x4E00, 0xA000)]
    pieces += ["".join(a[b] for b in bytes([0xF0, 0x9F, x])) for x in range(0x80, 0xC0)]
    seen = set(pieces)
    rng = np.random.default_rng(seed)
    while len(pieces) < ENDOFTEXT:
        p = "".join(a[b] for b in rng.integers(0, 256, 3))
        if p not in seen:
            seen.add(p)
            pieces.append(p)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    pieces += specials + [f"[PAD{i}]" for i in range(ENDOFTEXT + 3, QWEN_VOCAB)]
    assert len(pieces) == QWEN_VOCAB
    return json.dumps({
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": ENDOFTEXT + i, "content": t, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True} for i, t in enumerate(specials)],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(pieces)}, "merges": []},
    }, ensure_ascii=False)
