"""Run-time tokenizer: encode/decode with the `tokenizers` library, chat templates, streaming detokenization.

Chat templates are Jinja; we render them with jinja2 when it is installed (exact), else with a small built-in
ChatML renderer that covers SmolLM2-style templates (including the template's default system prompt), so
jinja2 is not a hard dependency.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

_CHATML_SYSTEM = re.compile(r"<\|im_start\|>system(?:\n|\\n)(.*?)<\|im_end\|>", re.S)
# Tokens that end a turn in common chat formats; included in eos_token_ids when the vocabulary has them.
_STOP_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>", "</s>")


class Tokenizer:
    def __init__(self, tokenizer_json: str, chat_template: str | None = None, special_tokens: dict | None = None,
                 eos_token_ids=None):
        from tokenizers import Tokenizer as _Tok

        self._tok = _Tok.from_str(tokenizer_json)
        self.chat_template = chat_template
        sp = special_tokens or {}
        self.bos_token, self.eos_token = sp.get("bos"), sp.get("eos")
        self.pad_token, self.unk_token = sp.get("pad"), sp.get("unk")
        self.eos_token_ids = list(eos_token_ids) if eos_token_ids else self._default_eos_ids()

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
        return cls(tj.read_text(encoding="utf-8"), info.get("chat_template"),
                   {k: info.get(f"{k}_token") for k in ("bos", "eos", "pad", "unk")}, info.get("eos_token_ids"))

    def _default_eos_ids(self) -> list:
        ids = []
        for t in ((self.eos_token,) + _STOP_TOKENS):
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
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts, add_special_tokens: bool = True) -> list:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=add_special_tokens)]

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def decode_stream(self, skip_special_tokens: bool = True) -> "DecodeStream":
        return DecodeStream(self, skip_special_tokens)

    # --- chat -----------------------------------------------------------------------------------------
    def apply_chat_template(self, messages, add_generation_prompt: bool = True, renderer: str = "auto",
                            **kwargs) -> str:
        """Render [{"role", "content"}, ...] to prompt text. renderer: "auto" (jinja2 if installed),
        "jinja2" or "builtin" (ChatML only)."""
        messages = [dict(m) for m in messages]
        if renderer in ("auto", "jinja2") and self.chat_template:
            try:
                import jinja2  # noqa: F401
            except ImportError:
                if renderer == "jinja2":
                    raise
            else:
                return self._render_jinja(messages, add_generation_prompt, **kwargs)
        return self._render_chatml(messages, add_generation_prompt)

    def _render_jinja(self, messages, add_generation_prompt, **kwargs) -> str:
        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(msg):
            raise TemplateError(msg)

        # Same environment settings as transformers, so templates render identically.
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
        return env.from_string(self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "", eos_token=self.eos_token or "", **kwargs)

    def _render_chatml(self, messages, add_generation_prompt) -> str:
        t = self.chat_template
        if t is not None and "<|im_start|>" not in t:
            raise ValueError("this model's chat template is not ChatML; rendering it needs jinja2 "
                             "(pip install jinja2)")
        if t is None and self.token_to_id("<|im_start|>") is None:
            raise ValueError("this model has no chat template")
        out = []
        # A template that injects a system turn when the first message is not one (SmolLM2) does so here too.
        m = _CHATML_SYSTEM.search(t or "")
        if m and "messages[0]['role'] != 'system'" in t.replace('"', "'") and \
                (not messages or messages[0].get("role") != "system"):
            out.append(f"<|im_start|>system\n{m.group(1).replace(chr(92) + 'n', chr(10))}<|im_end|>\n")
        for msg in messages:
            out.append(f"<|im_start|>{msg['role']}\n{msg['content']}<|im_end|>\n")
        if add_generation_prompt:
            out.append("<|im_start|>assistant\n")
        return "".join(out)


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
