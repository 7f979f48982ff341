"""The models a server answers with, loaded once at start and named by id.

`--model` takes a catalogue name (`smollm2-135m`, `smollm2-135m-q8`; pulled if missing), a model folder, or
ID=either to choose the id clients use. Requests name models only by these ids: a path in a request is
just an unknown id (404), so a client can never make the server open a file.
"""
from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional


def folder_digest(folder) -> str:
    """A short digest naming a model folder's exact files (its manifest's per-file sha256s)."""
    m = json.loads((Path(folder) / "edgeai.json").read_text(encoding="utf-8"))
    files = m.get("files") or m.get("model_files") or m.get("source") or {}
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]


def split_spec(spec: str):
    """"ID=NAME_OR_FOLDER" -> (ID, NAME_OR_FOLDER); a plain name is its own id; a folder's id is its name."""
    ident, sep, target = spec.partition("=")
    if sep and ident and target:
        return ident, target
    p = Path(spec).expanduser()
    return (p.name if p.is_dir() else spec), spec


@dataclass
class ServedLLM:
    id: str
    llm: object
    digest: str
    threads: Optional[int] = None
    _scorer: object = field(default=None, repr=False)
    _scorer_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def context_length(self) -> int:
        return self.llm.context_length

    def scorer(self):
        """The logprobs scorer (a second session of the same graph), loaded on first use."""
        with self._scorer_lock:
            if self._scorer is None:
                from .logprobs import TokenScorer
                self._scorer = TokenScorer(self.llm.model_dir, self.threads)
            return self._scorer


@dataclass
class ServedEmbedder:
    id: str
    embedder: object
    digest: str


def load_llms(specs, threads=None, context_length=None, max_batch=1, batch_invariant=False, draft=None,
              prompt_cache_mb=64) -> dict:
    """draft: a model every served model decodes speculatively with (loaded once, shared; requests then take
    the one-at-a-time engine, which is where speculation runs). prompt_cache_mb: each model's prefix cache
    (0: none)."""
    from ..llm import LLM

    out = {}
    if draft is not None:
        draft = LLM(draft, threads=threads, context_length=context_length, prompt_lookup=0, _no_spin=True)
    for spec in specs:
        ident, target = split_spec(spec)
        if ident in out:
            raise ValueError(f"two --model entries are both named {ident!r}: name one ID=FOLDER")
        llm = LLM(target, threads=threads, context_length=context_length, max_batch=max_batch,
                  batch_invariant=batch_invariant, draft=draft, prompt_cache=prompt_cache_mb > 0,
                  prompt_cache_mb=prompt_cache_mb)
        out[ident] = ServedLLM(ident, llm, folder_digest(llm.model_dir), threads)
    return out


def load_embedder(spec, threads=None) -> ServedEmbedder:
    from ..retrieval.embedder import Embedder

    ident, target = split_spec(spec)
    emb = Embedder(target, threads=threads)
    return ServedEmbedder(ident, emb, hashlib.sha256(emb.model_id.encode()).hexdigest()[:16])
