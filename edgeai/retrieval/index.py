"""`VectorIndex`: a persistent HNSW index (hnswlib) with string ids, metadata, filters, deletes and safe files.

Ids: strings. Ints are accepted and stored as their decimal string (`add(v, ids=[7])` is found as "7"), so
one index never mixes two id types. hnswlib's integer labels are internal and never leave this class.

Adding an id that already exists replaces its vector and metadata (upsert) by default;
`add(..., on_duplicate="error")` raises KeyError instead and adds nothing.

Scores: higher is better. space "cosine"/"ip": 1 - hnswlib distance (= cosine / inner product);
space "l2": minus the squared L2 distance.

File format (`save`): b"EDGEVIDX" | u32 version | u64 header length | sha256 of everything after it |
header JSON (params, count, payload length) | payload = u64 length + hnswlib graph bytes, then JSON of ids
and metadata. Written to a temp file, fsynced, renamed over the target, then the directory fsynced: a crash leaves the old or the new file,
never half of one. `load` checks magic, version, lengths and the sha256 before hnswlib sees a byte, so a
truncated or damaged file raises ValueError.

Thread safety: any number of searches run together; add/delete/resize take the lock exclusively
(hnswlib does not support search concurrent with add/resize).
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from contextlib import contextmanager
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Union

import hnswlib
import numpy as np

from .._core import ReadWriteLock, SingleSearch, build_hits
from ..durable import fsync_path

MAGIC = b"EDGEVIDX"
FORMAT_VERSION = 1
SPACES = ("cosine", "ip", "l2")
_EMPTY = MappingProxyType({})  # metadata of items added without any: one shared read-only mapping, not n dicts


class Hit(NamedTuple):
    id: str
    score: float
    metadata: dict


class RWLock:
    """Many readers or one writer, writers first (a stream of searches cannot starve an add). The lock itself is
    native (`_core.ReadWriteLock`): a search takes only tens of microseconds, and a Python lock built from three
    plain locks cost 1.5-2 us of it. It waits with the GIL released. Not recursive: never nest these."""

    def __init__(self):
        self.native = native = ReadWriteLock()
        self.acquire_read, self.release_read = native.acquire_read, native.release
        self._acquire_write, self._release = native.acquire_write, native.release

    @contextmanager
    def read(self):
        self.acquire_read()
        try:
            yield
        finally:
            self.release_read()

    @contextmanager
    def write(self):
        self._acquire_write()
        try:
            yield
        finally:
            self._release()


def fsync_replace(tmp: Path, target: Path) -> None:
    """Rename an already-fsynced temp file over target, then fsync the directory so the rename is durable."""
    os.replace(tmp, target)
    fsync_path(target.parent)


def _check_hnsw_params(M, ef_construction, ef_search) -> None:
    """hnswlib does not check these: M=0 crashes it, M=1 divides by log(1) and reports "Not enough memory"."""
    for name, value, lo, hi in (("M", M, 2, 2048), ("ef_construction", ef_construction, 1, 2 ** 31 - 1),
                                ("ef_search", ef_search, 1, 2 ** 31 - 1)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or not lo <= value <= hi:
            raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")


class VectorIndex:
    def __init__(self, dim: int, space: str = "cosine", M: int = 16, ef_construction: int = 200,
                 ef_search: int = 64, capacity: int = 1024, threads: int = 1, seed: int = 100):
        if space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}")
        if dim < 1:
            raise ValueError("dim must be >= 1")
        _check_hnsw_params(M, ef_construction, ef_search)
        self.dim, self.space, self.M = int(dim), space, int(M)
        self.ef_construction, self.ef_search, self.seed = int(ef_construction), int(ef_search), int(seed)
        self.threads = threads
        self._index = hnswlib.Index(space=space, dim=self.dim)
        self._index.init_index(max_elements=max(int(capacity), 16), M=self.M, ef_construction=self.ef_construction,
                               random_seed=self.seed, allow_replace_deleted=True)
        self._index.set_ef(self.ef_search)
        self._index.set_num_threads(threads)
        self._label: Dict[str, int] = {}     # id -> label
        # label -> id / metadata as lists indexed by label (None once deleted): labels are dense, and a list
        # index is far cheaper than a dict probe when a search turns 10 random labels into hits.
        self._id: List[Optional[str]] = []
        self._meta: List[Optional[dict]] = []
        self._deleted = 0                    # slots marked deleted and reusable
        self._next_label = 0
        self._lock = RWLock()
        self._bind_single_search()

    def _bind_single_search(self) -> None:
        """The native one-query path (see csrc/bind_index.cpp) holds the hnswlib index, the label tables and
        the lock: rebind it whenever one of those objects is replaced."""
        self._single = SingleSearch(self._index.knn_query, Hit, self._id, self._meta, self._label,
                                    self._lock.native, self.dim, self.space == "l2")

    # --- basics ------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._label)

    def __contains__(self, id_) -> bool:
        return str(id_) in self._label

    @property
    def params(self) -> dict:
        return {"dim": self.dim, "space": self.space, "M": self.M, "ef_construction": self.ef_construction,
                "ef_search": self.ef_search, "seed": self.seed}

    def ids(self) -> List[str]:
        return list(self._label)

    def get_metadata(self, id_) -> dict:
        return dict(self._meta[self._label[str(id_)]])  # a copy: callers may change it freely

    def get_vector(self, id_) -> np.ndarray:
        with self._lock.read():
            return np.asarray(self._index.get_items([self._label[str(id_)]])[0], np.float32)

    def set_ef(self, ef: int) -> None:
        _check_hnsw_params(self.M, self.ef_construction, ef)
        with self._lock.write():
            self.ef_search = int(ef)
            self._index.set_ef(self.ef_search)

    # --- writes ------------------------------------------------------------------------------------------------
    def _check_vectors(self, vectors) -> np.ndarray:
        v = np.asarray(vectors, dtype=np.float32)
        if v.ndim == 1:
            v = v[None, :]
        if v.ndim != 2 or v.shape[1] != self.dim:
            raise ValueError(f"vectors must have shape [n, {self.dim}], got {np.shape(vectors)}")
        if not np.isfinite(v).all():
            raise ValueError("vectors contain NaN or inf")
        return np.ascontiguousarray(v)

    def add(self, vectors, ids: Optional[Sequence[Union[str, int]]] = None,
            metadata: Optional[Sequence[Optional[dict]]] = None, on_duplicate: str = "replace") -> List[str]:
        """Add vectors; returns their ids. Without ids, ids are the next free integers (as strings)."""
        v = self._check_vectors(vectors)
        n = len(v)
        if on_duplicate not in ("replace", "error"):
            raise ValueError("on_duplicate must be 'replace' or 'error'")
        if metadata is not None and len(metadata) != n:
            raise ValueError(f"{n} vectors but {len(metadata)} metadata entries")
        metas = [dict(m) if m else _EMPTY for m in (metadata or [None] * n)]
        for m in metas:
            if m is not _EMPTY:
                json.dumps(m)  # metadata must survive save/load; fail now, not at save time
        with self._lock.write():
            if ids is None:
                ids = []
                k = self._next_label
                while len(ids) < n:
                    if str(k) not in self._label:
                        ids.append(str(k))
                    k += 1
            else:
                if len(ids) != n:
                    raise ValueError(f"{n} vectors but {len(ids)} ids")
                for i in ids:
                    if not isinstance(i, (str, int)) or isinstance(i, bool):
                        raise TypeError(f"ids must be str or int, got {type(i).__name__}")
                ids = [str(i) for i in ids]
                if len(set(ids)) != n:
                    raise ValueError("duplicate ids within one add() call")
            dup = [i for i in ids if i in self._label]
            if dup and on_duplicate == "error":
                raise KeyError(f"id {dup[0]!r} already in the index (on_duplicate='error')")
            for i in dup:  # upsert: retire the old slot, hnswlib will reuse it
                self._remove(i)
            # Grow geometrically; deleted slots are reused first (replace_deleted) so they count as free.
            free = self._index.get_max_elements() - self._index.get_current_count() + self._deleted
            if n > free:
                need = self._index.get_max_elements() + (n - free)
                self._index.resize_index(max(need, 2 * self._index.get_max_elements()))
            labels = np.arange(self._next_label, self._next_label + n, dtype=np.uint64)
            self._next_label += n
            reuse = min(self._deleted, n)
            if reuse:
                self._index.add_items(v[:reuse], labels[:reuse], replace_deleted=True)
                self._deleted -= reuse
            if reuse < n:
                self._index.add_items(v[reuse:], labels[reuse:])
            for i, lab, m in zip(ids, labels.tolist(), metas):
                self._label[i] = lab
                self._id.append(i)  # labels are handed out in order, so label == list position
                self._meta.append(m)
        return ids

    def _remove(self, id_: str) -> None:
        lab = self._label.pop(id_)
        self._id[lab] = None
        self._meta[lab] = None
        self._index.mark_deleted(lab)
        self._deleted += 1

    def delete(self, ids) -> int:
        """Delete ids; unknown ids are ignored. Returns how many were deleted."""
        if isinstance(ids, (str, int)):
            ids = [ids]
        with self._lock.write():
            found = [str(i) for i in ids if str(i) in self._label]
            for i in found:
                self._remove(i)
        return len(found)

    # --- search ------------------------------------------------------------------------------------------------
    def _predicate(self, filter) -> Optional[Callable[[int], bool]]:
        if filter is None:
            return None
        meta = self._meta
        if callable(filter):
            return lambda lab: meta[lab] is not None and bool(filter(meta[lab]))  # None: deleted
        if isinstance(filter, dict):
            want = list(filter.items())
            return lambda lab: meta[lab] is not None and all(meta[lab].get(k) == v for k, v in want)
        raise TypeError("filter must be a dict (metadata equality) or a callable(metadata) -> bool")

    def search(self, query, k: int = 10, filter=None) -> Union[List[Hit], List[List[Hit]]]:
        """Nearest neighbours of one query ([dim] -> list of Hit) or many ([n, dim] -> list of lists).
        Hit.metadata is the stored mapping itself (not a copy, to keep searches cheap): treat it as read-only."""
        if filter is None:  # the common case, natively; None means "decide here" (see _bind_single_search)
            hits = self._single(query, k)
            if hits is not None:
                return hits
        q = np.asarray(query, dtype=np.float32)
        single = q.ndim == 1
        if single:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"query must have shape [{self.dim}] or [n, {self.dim}], got {np.shape(query)}")
        if k < 1:
            raise ValueError("k must be >= 1")
        pred = None if filter is None else self._predicate(filter)
        lock = self._lock
        lock.acquire_read()
        try:
            live = len(self._label)
            if live == 0:
                return [] if single else [[] for _ in range(len(q))]
            k = min(k, live)
            try:
                # hnswlib searches with max(ef, k) itself, so ef never has to be raised (shared state stays put).
                labels, dists = self._index.knn_query(q, k, -1, pred)  # positional: pybind11 kwargs cost ~0.3 us
            except RuntimeError:
                # hnswlib raises when fewer than k elements pass the filter (or are reachable after many
                # deletes). Then the candidates are few or the graph is thin: score them exactly instead.
                cand = [lab for lab, i in enumerate(self._id) if i is not None and (pred is None or pred(lab))]
                labels, dists = self._brute(q, k, cand)
            hits = build_hits(Hit, labels, dists, self._id, self._meta, self.space == "l2")
        finally:
            lock.release_read()
        return hits[0] if single else hits

    def _brute(self, q, k, labels):
        if not labels:
            return np.zeros((len(q), 0), np.uint64), np.zeros((len(q), 0), np.float32)
        v = np.asarray(self._index.get_items(labels), np.float32)
        if self.space == "l2":
            d = ((q[:, None, :] - v[None, :, :]) ** 2).sum(-1)
        else:
            qq = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-30) if self.space == "cosine" else q
            d = 1.0 - qq @ v.T
        order = np.argsort(d, axis=1, kind="stable")[:, :k]
        lab = np.asarray(labels)
        return lab[order].astype(np.uint64), np.take_along_axis(d, order, 1).astype(np.float32)

    # --- persistence -------------------------------------------------------------------------------------------
    def save(self, path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock.read():
            with tempfile.TemporaryDirectory(dir=path.parent) as td:
                graph_file = Path(td) / "graph.bin"
                self._index.save_index(str(graph_file))
                graph = graph_file.read_bytes()
            live = [lab for lab, i in enumerate(self._id) if i is not None]
            table = {"labels": live, "ids": [self._id[lab] for lab in live],
                     "metadata": [dict(self._meta[lab]) for lab in live], "next_label": self._next_label,
                     "deleted": self._deleted}
        payload = struct.pack("<Q", len(graph)) + graph + json.dumps(table, separators=(",", ":")).encode()
        header = json.dumps({"params": self.params, "count": len(table["ids"]),
                             "payload_len": len(payload)}).encode()
        digest = hashlib.sha256(header + payload).digest()  # covers params too, not just the graph
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(MAGIC + struct.pack("<IQ", FORMAT_VERSION, len(header)) + digest + header)
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            fsync_replace(Path(tmp), path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path, threads: int = 1) -> "VectorIndex":
        path = Path(path)
        data = path.read_bytes()
        fixed = len(MAGIC) + 12 + 32
        if len(data) < fixed or data[:len(MAGIC)] != MAGIC:
            raise ValueError(f"{path} is not an edgeai vector index (bad magic or truncated)")
        version, hlen = struct.unpack("<IQ", data[len(MAGIC):len(MAGIC) + 12])
        if version != FORMAT_VERSION:
            raise ValueError(f"{path}: index format version {version}, this edgeai reads {FORMAT_VERSION}")
        body = data[fixed:]
        if hashlib.sha256(body).digest() != data[fixed - 32:fixed]:
            raise ValueError(f"{path}: index file is truncated or corrupted (checksum mismatch); rebuild it")
        try:
            header = json.loads(body[:hlen])
            payload = body[hlen:]
            if len(payload) != header["payload_len"]:
                raise ValueError("payload length")
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: corrupted index header ({exc})") from None
        p = header["params"]
        (glen,) = struct.unpack("<Q", payload[:8])
        table = json.loads(payload[8 + glen:])
        self = cls(p["dim"], p["space"], p["M"], p["ef_construction"], p["ef_search"], capacity=16,
                   threads=threads, seed=p.get("seed", 100))
        with tempfile.TemporaryDirectory(dir=path.parent) as td:
            graph_file = Path(td) / "graph.bin"
            graph_file.write_bytes(payload[8:8 + glen])
            self._index = hnswlib.Index(space=p["space"], dim=p["dim"])
            self._index.load_index(str(graph_file), allow_replace_deleted=True)
        self._index.set_ef(self.ef_search)
        self._index.set_num_threads(threads)
        labels = [int(x) for x in table["labels"]]
        self._next_label = int(table["next_label"])
        self._id = [None] * self._next_label
        self._meta = [None] * self._next_label
        for lab, i, m in zip(labels, table["ids"], table["metadata"]):
            self._id[lab], self._meta[lab] = i, (m or _EMPTY)
        self._label = {i: lab for lab, i in zip(labels, table["ids"])}
        self._next_label = int(table["next_label"])
        self._deleted = int(table["deleted"])
        self._bind_single_search()
        return self
