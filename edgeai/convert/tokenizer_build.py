"""Build a `tokenizers`-library tokenizer.json from a GGUF vocabulary, and a tiny one for tests.

GGUF stores the vocabulary (tokens, token types, merges or scores) but not the pre-tokenizer; llama.cpp names
it in `tokenizer.ggml.pre`, and we map the names we know onto the equivalent tokenizers pipeline.
"""
from __future__ import annotations

import json
import warnings

# llama.cpp token types
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

_LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _byte_level(use_regex: bool) -> dict:
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": use_regex}


def _split(regex: str) -> dict:
    return {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}


def bpe_pre_tokenizer(pre: str | None) -> dict:
    """The pre-tokenizer for a llama.cpp `tokenizer.ggml.pre` name (byte-level BPE models)."""
    pre = (pre or "default").lower()
    if pre == "smollm":  # SmolLM/SmolLM2: digits one by one, then GPT-2's regex
        steps = [{"type": "Digits", "individual_digits": True}, _byte_level(True)]
    elif pre in ("llama-bpe", "llama3", "falcon3", "smaug-bpe"):
        steps = [_split(_LLAMA3_RE), _byte_level(False)]
    elif pre in ("qwen2", "deepseek-r1-qwen"):
        steps = [_split(_QWEN2_RE), _byte_level(False)]
    else:
        if pre not in ("default", "gpt2", "gpt-2"):
            warnings.warn(f"unknown GGUF pre-tokenizer {pre!r}; using GPT-2's")
        steps = [_byte_level(True)]
    return {"type": "Sequence", "pretokenizers": steps}


def _added(tokens, types) -> list:
    out = []
    for i, (tok, ty) in enumerate(zip(tokens, types)):
        if ty in (CONTROL, USER_DEFINED):
            out.append({"id": i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
                        "normalized": False, "special": ty == CONTROL})
    return out


def _bos_processor(bos: str, bos_id: int) -> dict:
    return {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}}}


def gpt2_bpe_json(tokens, types, merges, pre=None, add_bos=False, bos_id=None) -> dict:
    """Byte-level BPE (gpt2-style GGUF vocab): no normalizer, ByteLevel decoder."""
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": _added(tokens, types),
        "normalizer": {"type": "NFC"} if (pre or "").lower() == "qwen2" else None,
        "pre_tokenizer": bpe_pre_tokenizer(pre),
        "post_processor": _bos_processor(tokens[bos_id], bos_id) if add_bos and bos_id is not None else None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(tokens)},
                  "merges": list(merges)},  # "a b" strings: understood by every tokenizers version
    }


def spm_bpe_json(tokens, types, scores, add_bos=True, bos_id=1, unk_id=0, add_space_prefix=True) -> dict:
    """SentencePiece BPE (llama-style GGUF vocab, e.g. TinyLlama/Mistral): merges rebuilt from scores,
    the way transformers' converter does it (a merge ranks by the score of the piece it produces)."""
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = []
    for piece, pid in vocab.items():
        if types[pid] != NORMAL or len(piece) < 2:
            continue
        for k in range(1, len(piece)):
            a, b = piece[:k], piece[k:]
            if a in vocab and b in vocab:
                merges.append((-scores[pid], vocab[a], vocab[b], f"{a} {b}"))
    merges.sort()
    normalizer = [{"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]
    if add_space_prefix:
        normalizer.insert(0, {"type": "Prepend", "prepend": "\u2581"})
    decoder = [{"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
               {"type": "ByteFallback"}, {"type": "Fuse"}]
    if add_space_prefix:
        decoder.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": _added(tokens, types),
        "normalizer": {"type": "Sequence", "normalizers": normalizer},
        "pre_tokenizer": None,
        "post_processor": _bos_processor(tokens[bos_id], bos_id) if add_bos and bos_id is not None else None,
        "decoder": {"type": "Sequence", "decoders": decoder},
        "model": {"type": "BPE", "dropout": None, "unk_token": tokens[unk_id] if unk_id is not None else None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": True,
                  "byte_fallback": True, "ignore_merges": False, "vocab": vocab,
                  "merges": [m[3] for m in merges]},
    }


def tokenizer_from_gguf_reader(reader) -> tuple[str, dict]:
    """(tokenizer.json text, special tokens {bos, eos, pad, unk: text, eog: [texts]}) from an open GGUFReader."""
    def get(key, default=None):
        f = reader.fields.get(f"tokenizer.ggml.{key}")
        return default if f is None else f.contents()

    model = get("model")
    tokens = get("tokens")
    if not tokens:
        raise ValueError("GGUF file has no tokenizer vocabulary (tokenizer.ggml.tokens)")
    types = get("token_type") or [NORMAL] * len(tokens)
    bos_id, eos_id = get("bos_token_id"), get("eos_token_id")
    if model == "gpt2":
        data = gpt2_bpe_json(tokens, types, get("merges") or [], get("pre"),
                             add_bos=bool(get("add_bos_token", False)), bos_id=bos_id)
    elif model == "llama":
        data = spm_bpe_json(tokens, types, get("scores"), add_bos=bool(get("add_bos_token", True)),
                            bos_id=bos_id, unk_id=get("unknown_token_id", 0),
                            add_space_prefix=bool(get("add_space_prefix", True)))
    else:
        raise ValueError(f"unsupported GGUF tokenizer model {model!r} (supported: gpt2, llama)")

    def text(i):
        return tokens[int(i)] if i is not None and 0 <= int(i) < len(tokens) else None

    specials = {"bos": text(bos_id), "eos": text(eos_id), "pad": text(get("padding_token_id")),
                "unk": text(get("unknown_token_id")),
                # end-of-turn / end-of-message ids (Llama 3.x names <|eot_id|>, <|eom_id|> here)
                "eog": [t for t in (text(get("eot_token_id")), text(get("eom_token_id"))) if t]}
    return json.dumps(data, ensure_ascii=False), specials


# --- tiny tokenizer for tests -------------------------------------------------------------------------

TINY_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_TINY_CORPUS = """The quick brown fox jumps over the lazy dog. def main(): return 42
Hello world, this is a tiny tokenizer for tests. import numpy as np
Models run offline on small machines; the answer is in the documents.
<html><body>café naïve 東京 😀</body></html>  for i in range(10): print(i)
"""


def make_tiny_tokenizer_json(vocab_size: int) -> str:
    """A SmolLM2-style byte-level BPE (specials 0..2 = <|endoftext|>, <|im_start|>, <|im_end|>, per-digit
    pre-tokenizer, no BOS) with at most `vocab_size` tokens, so tiny random models get complete folders.
    Below 3 + 256 tokens not every byte fits: the vocabulary keeps the printable ASCII bytes first and
    maps the other bytes to <|endoftext|> (unk), so such a tokenizer round-trips plain ASCII only."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    pre = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                   pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    if vocab_size < len(TINY_SPECIALS) + 256:
        if vocab_size <= len(TINY_SPECIALS):
            raise ValueError(f"vocab_size {vocab_size} is too small for a tokenizer")
        alphabet = _byte_alphabet()
        order = sorted(range(256), key=lambda b: (not (32 <= b < 127 or b in (9, 10)), b))
        chars = [alphabet[b] for b in order[:vocab_size - len(TINY_SPECIALS)]]
        vocab = {t: i for i, t in enumerate(TINY_SPECIALS + chars)}
        tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=TINY_SPECIALS[0]))
        tok.add_special_tokens(TINY_SPECIALS)
    else:
        tok = Tokenizer(models.BPE())
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=TINY_SPECIALS, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.pre_tokenizer = pre
        tok.train_from_iterator(_TINY_CORPUS.splitlines() * 4, trainer=trainer)
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    return tok.to_str()


def _byte_alphabet() -> list:
    """GPT-2's byte -> printable character table (byte b is written as chr(table[b]))."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1)) + \
        list(range(ord("\u00ae"), ord("\u00ff") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs))
    return [chr(table[b]) for b in range(256)]
