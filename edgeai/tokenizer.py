"""Run-time tokenizer: encode/decode with the `tokenizers` library, chat templates, streaming detokenization.

Chat templates are the model's own Jinja templates, rendered exactly as transformers does (edgeai.chat_template).
"""
from __future__ import annotations

import json
from pathlib import Path

# Tokens that end a turn, by their text: llama.cpp's end-of-generation list (llama-vocab.cpp). They end
# generation when the vocabulary has them as special tokens, besides the ones the source names itself.
END_OF_GENERATION_TOKENS = ("<|eot_id|>", "<|eom_id|>", "<|im_end|>", "<|end|>", "<|endoftext|>",
                            "<|end_of_text|>", "<end_of_turn>", "<|return|>", "<|call|>", "<EOT>", "</s>")


def check_text(text) -> str:
    """`text` if it is a str of valid Unicode; ValueError naming a lone surrogate (what bytes decoded with
    errors="surrogateescape", or a bad JSON escape, leave behind), which the tokenizers library rejects with an
    unclear TypeError."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, not {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"text holds a lone surrogate (U+{ord(text[exc.start]):04X} at index {exc.start}), which "
                         "is not valid Unicode; decode bytes with errors='replace'") from None
    return text


class Tokenizer:
    """special_tokens: {"bos", "eos", "pad", "unk": token text or None, and optionally "eog": [token texts]}, where
    "eog" lists the tokens the source itself names as ends of generation (a GGUF's eot/eom ids, an HF folder's
    generation_config.json eos_token_id). eos_token_ids (a model folder's manifest) overrides the derived list.
    tokenizer_json: the JSON text, or the Path of a tokenizer.json file."""

    def __init__(self, tokenizer_json: str | Path, chat_template: str | None = None, special_tokens: dict | None = None,
                 eos_token_ids=None):
        from tokenizers import Tokenizer as _Tok

        # A file is parsed by the library straight from disk: no Python copy of the text (5 MB for Qwen's
        # 151,936-token vocabulary) and a lower parse peak (Qwen: +64 MB instead of +76 MB over the steady 38 MB).
        self._tok = _Tok.from_file(str(tokenizer_json)) if isinstance(tokenizer_json, Path) else \
            _Tok.from_str(tokenizer_json)
        self.chat_template = chat_template
        self._compiled = None
        sp = special_tokens or {}
        self.bos_token, self.eos_token = sp.get("bos"), sp.get("eos")
        self.pad_token, self.unk_token = sp.get("pad"), sp.get("unk")
        self.eos_token_ids = list(eos_token_ids) if eos_token_ids else self._default_eos_ids(sp.get("eog"))

    @classmethod
    def from_folder(cls, folder) -> "Tokenizer":
        """Load tokenizer.json plus the `tokenizer` section of edgeai.json (chat template, specials)."""
        folder = Path(folder)
        tj = folder / "tokenizer.json"
        if not tj.is_file():
            raise FileNotFoundError(f"model folder {folder} has no tokenizer.json")
        info = {}
        if (folder / "edgeai.json").is_file():
            info = json.loads((folder / "edgeai.json").read_text(encoding="utf-8")).get("tokenizer", {})
        try:
            return cls(tj, info.get("chat_template"),
                       {k: info.get(f"{k}_token") for k in ("bos", "eos", "pad", "unk")}, info.get("eos_token_ids"))
        except Exception as exc:  # the library raises a bare Exception that names neither the file nor the kind
            raise ValueError(f"cannot read the tokenizer {tj} (corrupt model folder? re-run `edgeai convert` or "
                             f"`edgeai pull --force`): {exc}") from exc

    def _default_eos_ids(self, eog=None) -> list:
        """The eos token, then the tokens the source names as ends (eog), then the special tokens whose text
        says "end of turn" (as llama.cpp does). Only *special* tokens count by text: Qwen's vocabulary also
        has "</s>" as ordinary text (an HTML tag), which must not end generation."""
        special = {t.content for t in self._tok.get_added_tokens_decoder().values() if t.special}
        named = [t for t in END_OF_GENERATION_TOKENS if t in special]
        ids = []
        for t in [self.eos_token, *(eog or ()), *named]:
            i = self.token_to_id(t) if t else None
            if i is not None and i not in ids:
                ids.append(i)
        return ids

    # --- basics ---------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str):
        return self._tok.token_to_id(token)

    def id_to_token(self, i: int):
        return self._tok.id_to_token(int(i))

    @property
    def bos_token_id(self):
        return self.token_to_id(self.bos_token) if self.bos_token else None

    @property
    def pad_token_id(self):
        return self.token_to_id(self.pad_token) if self.pad_token else None

    def encode(self, text: str, add_special_tokens: bool = True) -> list:
        """Token ids. Special-token text (e.g. "<|im_start|>") maps to its id; BOS only if the model adds one."""
        return self._tok.encode(check_text(text), add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts, add_special_tokens: bool = True) -> list:
        texts = [check_text(t) for t in texts]
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=add_special_tokens)]

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def decode_stream(self, skip_special_tokens: bool = True) -> "DecodeStream":
        return DecodeStream(self, skip_special_tokens)

    # --- chat -----------------------------------------------------------------------------------------
    def apply_chat_template(self, messages, add_generation_prompt: bool = True, tools=None, documents=None,
                            **variables) -> str:
        """[{"role", "content"}, ...] -> prompt text, byte-identical to transformers' apply_chat_template(...,
        tokenize=False). Raises ChatTemplateError (a ValueError) naming what the template refused."""
        # imported here: jinja2 pulls in hashlib (OpenSSL, 3.5 MB resident), which plain generation never needs
        from .chat_template import CHATML_TEMPLATE, ChatTemplate, ChatTemplateError

        if self._compiled is None:
            template = self.chat_template
            if template is None:
                if self.token_to_id("<|im_start|>") is None or self.token_to_id("<|im_end|>") is None:
                    raise ChatTemplateError("this model has no chat template")
                template = CHATML_TEMPLATE
            self._compiled = ChatTemplate(template)
        specials = {f"{k}_token": v for k, v in (("bos", self.bos_token), ("eos", self.eos_token),
                                                 ("unk", self.unk_token), ("pad", self.pad_token)) if v is not None}
        return self._compiled.render(messages, add_generation_prompt, tools=tools, documents=documents,
                                     **{**specials, **variables})


class DecodeStream:
    """Incremental detokenizer: feed ids one by one, get back only complete text.

    Byte-level BPE tokens can end inside a multi-byte UTF-8 character; decoding then ends in U+FFFD. We keep
    a short window of ids (prefix..read) and emit only the new text once it no longer ends in U+FFFD."""

    _MAX_PENDING = 8  # a character is at most 4 bytes; beyond this the bytes are really invalid: emit them

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True):
        self.tok = tokenizer
        self.skip = skip_special_tokens
        self.ids: list = []
        self.prefix = 0  # start of the context window used to decode
        self.read = 0  # ids up to here have been emitted

    def step(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        return self._emit(final=False)

    def flush(self) -> str:
        """Whatever is still pending (e.g. an incomplete character at the end of generation)."""
        return self._emit(final=True)

    def _emit(self, final: bool) -> str:
        prev = self.tok.decode(self.ids[self.prefix:self.read], self.skip)
        text = self.tok.decode(self.ids[self.prefix:], self.skip)
        pending = len(self.ids) - self.read
        if len(text) > len(prev) and (final or not text.endswith("\ufffd") or pending > self._MAX_PENDING):
            self.prefix, self.read = self.read, len(self.ids)
            return text[len(prev):]
        if final:
            self.prefix = self.read = len(self.ids)
        return ""
