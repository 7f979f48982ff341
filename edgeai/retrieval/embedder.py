"""Sentence embeddings with ONNX Runtime: `Embedder(model).encode(texts) -> float32 [n, dims]`.

Queries and passages go through the same model and the same code path (all-MiniLM-L6-v2 is symmetric).
Texts are tokenized once, sorted by length and batched so a batch carries little padding; ORT releases the
GIL while it runs, so other Python threads keep working. A cache keyed by sha256(model id + text) skips
texts already embedded: an in-memory LRU, plus an optional SQLite file (e.g. in the index folder) so that
re-indexing a changed file only embeds its changed chunks.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import threading
from collections import OrderedDict
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

DEFAULT_MODEL = "minilm-l6"
_NO_LOCK = contextlib.nullcontext()
PROGRESS_THRESHOLD = 256  # show a progress bar by default from this many texts to embed
CACHE_FLUSH = 512  # embeddings are written to the disk cache at least every this many texts


def resolve_model_dir(model) -> Path:
    """A folder holding edgeai.json, or a model name `edgeai pull` knows."""
    p = Path(os.path.expanduser(str(model)))
    if (p / "edgeai.json").is_file():
        return p
    try:
        from edgeai.pull import resolve_model
    except ImportError:
        resolve_model = None
    if resolve_model is not None:
        try:
            return Path(resolve_model(str(model)))
        except (KeyError, LookupError, FileNotFoundError) as exc:
            raise FileNotFoundError(f"embedding model {model!r} not found ({exc}); run `edgeai pull {model}`") from exc
    raise FileNotFoundError(f"{model!r} is not an embedding model folder (no edgeai.json) and `edgeai pull` "
                            "is not available to resolve it by name")


class _DiskCache:
    """sha256 key -> float32 vector bytes, in SQLite (one file, safe across processes, WAL for readers)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS emb (key TEXT PRIMARY KEY, vec BLOB NOT NULL)")
        self._lock = threading.Lock()

    def get_many(self, keys: List[str]) -> dict:
        out = {}
        with self._lock:
            for i in range(0, len(keys), 500):  # stay under SQLite's bound-parameter limit
                part = keys[i:i + 500]
                q = f"SELECT key, vec FROM emb WHERE key IN ({','.join('?' * len(part))})"
                out.update({k: np.frombuffer(v, np.float32) for k, v in self._db.execute(q, part)})
        return out

    def put_many(self, items) -> None:
        with self._lock, self._db:
            self._db.executemany("INSERT OR REPLACE INTO emb VALUES (?, ?)",
                                 [(k, np.ascontiguousarray(v, np.float32).tobytes()) for k, v in items])

    def close(self):
        with self._lock:
            self._db.close()


class Embedder:
    """Embed texts with an edgeai embedding model folder (see embed_convert.convert_folder)."""

    def __init__(self, model=DEFAULT_MODEL, quant: Optional[str] = None, threads: Optional[int] = None,
                 cache_size: int = 20000, cache_path=None):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.model_dir = resolve_model_dir(model)
        from edgeai.manifest import load_manifest, member_path

        self.manifest = load_manifest(self.model_dir)  # sizes and sampled digests, files inside the folder
        if self.manifest.get("kind") != "embedding":
            raise ValueError(f"{self.model_dir} is not an embedding model (kind={self.manifest.get('kind')!r})")
        files = self.manifest.get("model_files") or {"fp32": "model.onnx"}
        self.quant = quant or self.manifest.get("quant", "fp32")
        if self.quant not in files:
            raise ValueError(f"quant {self.quant!r} not in this model folder (have {sorted(files)})")
        graph_path = member_path(self.model_dir, files[self.quant])
        self.dims = int(self.manifest["dims"])
        self.max_length = int(self.manifest.get("max_length", 256))
        src = self.manifest.get("source", {})
        # The cache key covers the weights digest and the graph variant: another model never hits.
        self.model_id = f"{src.get('sha256', self.model_dir.name)}:{files[self.quant]}:{self.max_length}"

        self.tokenizer = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_length)
        self._pad_id = self.tokenizer.token_to_id("[PAD]") or 0
        self._count_tok = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))  # untruncated, for counting
        self._count_tok.no_padding()
        self._count_tok.no_truncation()
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or os.cpu_count() or 1
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        self._session = ort.InferenceSession(str(graph_path), so,
                                             providers=["CPUExecutionProvider"])
        self._lru: "OrderedDict[str, np.ndarray]" = OrderedDict()
        self._lru_size = cache_size
        self._lock = threading.Lock()
        self._disk = None
        if cache_path is not None:
            self.set_cache_path(cache_path)

    # --- cache -------------------------------------------------------------------------------------------------
    def set_cache_path(self, path) -> None:
        """Persist embeddings in a SQLite file (e.g. <index dir>/embcache.sqlite)."""
        if self._disk is not None:
            self._disk.close()
            self._disk = None
        try:
            self._disk = _DiskCache(Path(path))
        except sqlite3.DatabaseError as exc:  # a damaged cache only costs recomputation, never an error
            import warnings
            warnings.warn(f"embedding cache {path} unusable ({exc}); continuing without it", stacklevel=2)

    def _key(self, text: str) -> str:
        return hashlib.sha256(f"{self.model_id}\0{text}".encode("utf-8", "surrogatepass")).hexdigest()

    def _cache_get(self, keys: List[str], remember: bool = True) -> dict:
        found = {}
        with self._lock:
            for k in keys:
                v = self._lru.get(k)
                if v is not None:
                    self._lru.move_to_end(k)
                    found[k] = v
        missing = [k for k in keys if k not in found]
        if missing and self._disk is not None:
            disk = self._disk.get_many(missing)
            found.update(disk)
            if remember:
                self._cache_put(disk.items(), disk_too=False)
        return found

    def _cache_put(self, items, disk_too=True, remember=True) -> None:
        items = list(items)
        with self._lock if remember else _NO_LOCK:
            for k, v in (items if remember else ()):
                self._lru[k] = v
                self._lru.move_to_end(k)
            while remember and len(self._lru) > self._lru_size:
                self._lru.popitem(last=False)
        if disk_too and self._disk is not None and items:
            self._disk.put_many(items)

    # --- encoding ----------------------------------------------------------------------------------------------
    def count_tokens(self, texts: Sequence[str]) -> List[int]:
        """Token counts without [CLS]/[SEP] and without truncation (used by the chunker)."""
        texts = list(texts)
        out = []
        for i in range(0, len(texts), 512):  # a bounded batch of Encodings alive at a time
            out += [len(e.ids) for e in self._count_tok.encode_batch(texts[i:i + 512], add_special_tokens=False)]
        return out

    def _run(self, encodings, session=None) -> np.ndarray:
        """One padded batch through the model (or through `session`, another graph of it: bench/embed_profile)."""
        width = max(len(e.ids) for e in encodings)
        ids = np.full((len(encodings), width), self._pad_id, np.int64)
        mask = np.zeros((len(encodings), width), np.int64)
        for i, e in enumerate(encodings):
            ids[i, :len(e.ids)] = e.ids
            mask[i, :len(e.ids)] = 1
        return (session or self._session).run(None, {"input_ids": ids, "attention_mask": mask})[0]

    def encode(self, texts, batch_size: int = 32, show_progress: Optional[bool] = None,
               use_cache: bool = True, remember: bool = True) -> np.ndarray:
        """float32 [n, dims], L2-normalised. A single str gives [1, dims].
        remember=False: look texts up in the caches and write new vectors to the disk cache, but keep none in
        the in-memory LRU (bulk indexing: 20k chunks would fill it with ~30 MB nobody queries)."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts) if not isinstance(texts, list) else texts
        if not texts:
            raise ValueError("encode() needs at least one text")
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise TypeError(f"encode() takes str items; item {bad[0]} is {type(texts[bad[0]]).__name__}")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")

        out = np.empty((len(texts), self.dims), np.float32)
        keys = [self._key(t) for t in texts]
        cached = self._cache_get(list(set(keys)), remember) if use_cache else {}
        todo = {}  # key -> first index needing it (duplicates are embedded once)
        for i, k in enumerate(keys):
            if k in cached:
                out[i] = cached[k]
            elif k not in todo:
                todo[k] = i
        if todo:
            all_order = list(todo.values())
            if show_progress is None:
                show_progress = len(all_order) >= PROGRESS_THRESHOLD
            bar = None
            if show_progress:
                from tqdm import tqdm
                bar = tqdm(total=len(all_order), desc="embedding", unit="text")
            new = []
            slice_n = 64 * batch_size  # tokenize a slice at a time: Encodings cost ~100 bytes per token
            for a in range(0, len(all_order), slice_n):
                order = all_order[a:a + slice_n]
                encs = self.tokenizer.encode_batch([texts[i] for i in order])
                by_len = sorted(range(len(order)), key=lambda j: len(encs[j].ids))
                for s in range(0, len(by_len), batch_size):
                    sel = by_len[s:s + batch_size]
                    vecs = self._run([encs[j] for j in sel])
                    for j, v in zip(sel, vecs):
                        out[order[j]] = v
                        new.append((keys[order[j]], v.copy()))
                    if bar is not None:
                        bar.update(len(sel))
                    if use_cache and len(new) >= CACHE_FLUSH:
                        # Written as we go: an interrupted index of 20k chunks keeps what it embedded.
                        self._cache_put(new, remember=remember)
                        new = []
            if bar is not None:
                bar.close()
            if use_cache:
                self._cache_put(new, remember=remember)
            for i, k in enumerate(keys):  # fill duplicates of freshly embedded texts
                if k in todo and todo[k] != i:
                    out[i] = out[todo[k]]
        return out

    def __repr__(self):
        return f"Embedder({str(self.model_dir)!r}, quant={self.quant!r}, dims={self.dims})"
