"""Training text for distillation: files -> documents -> one token stream -> fixed-length sequences.

Accepted files (the format is chosen per file by its suffix):
  - `.jsonl`: one JSON object per line, any of
      {"prompt": "...", "completion": "..."}   a user turn and the assistant's answer
      {"messages": [{"role": ..., "content": ...}, ...]}   a whole chat
      {"text": "..."}   plain text
    other keys (ids, ratings, timestamps that `edgeai feedback export` adds) are ignored. A prompt without a
    completion, or messages that end on a user turn, are prompts: `--generate` has the teacher answer them,
    otherwise they are trained on as they are. Chats are rendered with the teacher's chat template.
  - anything else: UTF-8 plain text, one document per file.
Documents are tokenized without added special tokens, joined with the end-of-text token between them and cut
into sequences of `seq_len` tokens (the last partial one is dropped), each trained on from position 0.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Document:
    """One training example. `messages` is None for plain text; `needs_answer` marks a chat ending on a user turn."""

    text: str | None = None
    messages: list | None = None
    source: str = ""

    @property
    def needs_answer(self) -> bool:
        return bool(self.messages) and self.messages[-1].get("role") != "assistant"


def _messages(obj, where: str) -> list:
    if "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not msgs or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in msgs):
            raise ValueError(f"{where}: \"messages\" must be a non-empty list of "
                             f"{{\"role\": str, \"content\": str}} objects")
        return [{"role": m["role"], "content": m["content"]} for m in msgs]
    prompt, completion = obj.get("prompt"), obj.get("completion")
    if not isinstance(prompt, str) or (completion is not None and not isinstance(completion, str)):
        raise ValueError(f"{where}: \"prompt\" (and \"completion\", when given) must be strings")
    msgs = [{"role": "user", "content": prompt}]
    if completion is not None:
        msgs.append({"role": "assistant", "content": completion})
    return msgs


def read_documents(files) -> list:
    """Documents from text and JSONL files, in the order given; a bad line raises naming file and line."""
    docs = []
    for f in files:
        path = Path(f)
        if not path.is_file():
            raise FileNotFoundError(f"no such data file: {path}")
        try:
            content = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path} is not UTF-8 text: {exc}") from exc
        if path.suffix != ".jsonl":
            if content.strip():
                docs.append(Document(text=content, source=str(path)))
            continue
        for n, line in enumerate(content.splitlines(), 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: not valid JSON ({exc.msg})") from exc
            if not isinstance(obj, dict):
                raise ValueError(f"{where}: expected a JSON object")
            if isinstance(obj.get("text"), str) and "messages" not in obj and "prompt" not in obj:
                docs.append(Document(text=obj["text"], source=where))
            elif "messages" in obj or "prompt" in obj:
                docs.append(Document(messages=_messages(obj, where), source=where))
            else:
                raise ValueError(f"{where}: expected \"prompt\"/\"completion\", \"messages\" or \"text\"")
    if not docs:
        raise ValueError("the data files hold no text")
    return docs


def data_digest(files) -> str:
    """sha256 over the data files' names and contents, in the order given (recorded in the manifest)."""
    h = hashlib.sha256()
    for f in files:
        h.update(Path(f).name.encode() + b"\0")
        h.update(hashlib.sha256(Path(f).read_bytes()).digest())
    return h.hexdigest()


def render(doc: Document, tokenizer) -> str:
    if doc.messages is None:
        return doc.text
    try:
        return tokenizer.apply_chat_template(doc.messages, add_generation_prompt=False)
    except Exception as exc:  # noqa: BLE001 - a template error names the bad document rather than crashing
        raise ValueError(f"{doc.source}: the teacher's chat template cannot render these messages: {exc}") \
            from exc


def token_sequences(docs, tokenizer, seq_len: int) -> np.ndarray:
    """int32 [n, seq_len]: the documents' tokens joined by the end-of-text token and cut into sequences."""
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, not {seq_len}")
    sep = tokenizer.eos_token_ids[:1]
    stream = []
    for ids in tokenizer.encode_batch([render(d, tokenizer) for d in docs], add_special_tokens=False):
        stream.extend(ids)
        stream.extend(sep)
    n = len(stream) // seq_len
    if n == 0:
        raise ValueError(f"the data gives {len(stream)} tokens, fewer than one sequence of {seq_len} "
                         f"(use a smaller --seq-len or more data)")
    return np.asarray(stream[:n * seq_len], np.int32).reshape(n, seq_len)
