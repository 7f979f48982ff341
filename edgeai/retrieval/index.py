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
never half of one. Temp files are named `<index name>.<pid>.<random>.tmp` beside the index, so the next save or
load removes those a killed process left (its pid is gone). `load` checks magic, version, lengths and the
sha256 before hnswlib sees a byte, so a truncated or damaged file raises ValueError; and since a checksum only
proves the file is what some writer wrote, it also checks the hnswlib graph's header, neighbour lists and labels
against the table (`_check_graph`), so a forged file raises ValueError too instead of crashing hnswlib.

Thread safety: any number of searches run together; add/delete/resize take the lock exclusively
(hnswlib does not support search concurrent with add/resize).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import struct
import tempfile
import time
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
# What a loaded file may state (a forged one could state anything): hnswlib keeps a neighbour count in 16 bits
# (level 0 holds 2*M), M=1 makes its level multiplier 1/log(1) = inf and M=0 crashes it.
_FILE_PARAMS = {"dim": (1, 1 << 16), "M": (2, 2048), "ef_construction": (1, 1 << 20), "ef_search": (1, 1 << 20),
                "seed": (0, 2 ** 63 - 1)}
LEGACY_TEMP_AGE_S = 3600  # temp files of earlier versions carry no pid: removed once this old
_EMPTY = MappingProxyType({})  # metadata of items added without any: one shared read-only mapping, not n dicts
# Capacity growth when an add does not fit. Unused capacity costs little memory: hnswlib reallocs its vector and
# link table (untouched pages are not resident, and a large realloc is a remap, not old + new during a copy),
# so an empty slot costs its lock, level and visited-list entries only (~46 bytes). Measured on 41,567 random
# 384-d vectors: peak 113.9 MB at a 65,536-slot capacity (x2 growth), 113.3 MB at 52,488 (x1.5), 111.1 MB exact;
# resize_index itself added nothing to the peak. 1.5 keeps the table within 1.5x of the need.
GROWTH = 1.5


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


def _temp_file(path: Path) -> Path:
    """A new empty temp file beside `path`, named so that clean_leftovers can tell whose it is."""
    fd, tmp = tempfile.mkstemp(prefix=f"{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def _pid_alive(pid: int) -> bool:
    if os.name != "posix":  # no cheap, safe liveness probe: keep it (the age rule below still applies)
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, as another user
        return True
    return True


def clean_leftovers(path) -> int:
    """Remove the temp files that saves and loads of the index at `path` left when their process was killed:
    `<name>.<pid>.*.tmp` whose pid is gone, and (from earlier versions, which named them without a pid)
    `<name>.*.tmp` files and `tmp*/graph.bin` folders older than an hour. Returns how many were removed."""
    import shutil

    path = Path(path)
    removed = 0
    now = time.time()
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return 0
    for e in entries:
        try:
            old = now - e.lstat().st_mtime > LEGACY_TEMP_AGE_S
            if e.name.startswith(path.name + ".") and e.name.endswith(".tmp") and e.is_file():
                pid = e.name[len(path.name) + 1:].split(".", 1)[0]
                if (pid.isdigit() and not _pid_alive(int(pid))) or (old and (not pid.isdigit() or os.name != "posix")):
                    e.unlink()
                    removed += 1
            elif e.name.startswith("tmp") and e.is_dir() and old and \
                    {c.name for c in e.iterdir()} <= {"graph.bin"}:
                shutil.rmtree(e)
                removed += 1
        except OSError:  # another process removed it first, or it is not ours to remove
            continue
    return removed


_GRAPH_HEADER = struct.Struct("<6QiI3QdQ")  # hnswlib 0.8 HierarchicalNSW::saveIndex, field by field


def _check_graph(blob, dim: int, M: int, labels_live, n_deleted: int) -> bytearray:
    """Check hnswlib graph bytes before hnswlib reads them: it trusts its file, and a wrong size, neighbour id
    or label would make it read out of bounds. ValueError saying what is wrong. Returns the bytes with the
    capacity set to the element count (_capacity_is_count)."""
    if len(blob) < _GRAPH_HEADER.size:
        raise ValueError("graph shorter than its header")
    (off0, max_el, count, per_el, label_off, data_off, maxlevel, entry, maxM, maxM0, m, mult,
     _efc) = _GRAPH_HEADER.unpack_from(blob)
    links0 = maxM0 * 4 + 4
    links = maxM * 4 + 4
    if (m, maxM, maxM0) != (M, M, 2 * M) or off0 != 0 or data_off != links0 or label_off != links0 + 4 * dim \
            or per_el != links0 + 4 * dim + 8 or count > max_el or not mult > 0:
        raise ValueError("graph header does not match the index parameters")
    end0 = _GRAPH_HEADER.size + count * per_el
    if end0 + 4 * count > len(blob):
        raise ValueError("graph shorter than its element table")
    def field(offset, dtype, width):  # one field of every level-0 element: a strided view, no copy
        if not count:
            return np.zeros((0, width), dtype)
        return np.ndarray((count, width), dtype, blob, _GRAPH_HEADER.size + offset, (per_el, np.dtype(dtype).itemsize))

    head = field(0, np.uint32, 1)[:, 0]
    n_links, flags = head & 0xFFFF, (head >> 16) & 0xFF
    if (n_links > maxM0).any() or (head >> 24).any() or (flags & ~np.uint32(1)).any():
        raise ValueError("graph has a malformed neighbour list")
    nbr = field(4, np.uint32, maxM0)
    if count and (nbr[np.arange(maxM0)[None, :] < n_links[:, None]] >= count).any():
        raise ValueError("graph has a neighbour id out of range")
    if not np.isfinite(field(data_off, np.float32, dim)).all():
        raise ValueError("graph holds a NaN or inf vector")
    lab = field(label_off, np.uint64, 1)[:, 0]
    deleted = (flags & 1).astype(bool)
    live = lab[~deleted]
    if int(deleted.sum()) != n_deleted or len(live) != len(labels_live) or len(np.unique(live)) != len(live) \
            or not np.array_equal(np.sort(live), np.sort(np.asarray(labels_live, np.uint64))):
        raise ValueError("graph labels do not match the id table")
    pos = end0
    level = np.zeros(count, np.int64)
    upper = []  # (element, its upper-level lists) for elements above level 0: variable size per element
    for i in range(count):
        (size,) = struct.unpack_from("<I", blob, pos)
        pos += 4
        if size % links or pos + size > len(blob):
            raise ValueError("graph has a malformed upper-level list")
        if size:
            level[i] = size // links
            upper.append((i, np.frombuffer(blob, np.uint32, size // 4, pos).reshape(size // links, maxM + 1)))
        pos += size
    if pos != len(blob):
        raise ValueError("graph has trailing bytes")
    for i, up in upper:
        n_up = up[:, 0] & 0xFFFF
        if (n_up > maxM).any() or (up[:, 0] >> 16).any():
            raise ValueError("graph has a malformed upper-level list")
        mask = np.arange(maxM)[None, :] < n_up[:, None]
        nb = up[:, 1:]
        if (nb[mask] >= count).any():
            raise ValueError("graph has a neighbour id out of range")
        # A link at level l must reach an element that has level l, or hnswlib reads past that one's lists.
        need = np.broadcast_to(np.arange(1, len(up) + 1)[:, None], nb.shape)[mask]
        if (level[nb[mask]] < need).any():
            raise ValueError("graph links to an element above its level")
    top = int(level.max()) if count else -1
    if count and (maxlevel != top or entry >= count or level[entry] != top) or not count and maxlevel != -1:
        raise ValueError("graph entry point or level is out of range")
    return _capacity_is_count(bytearray(blob))


def _capacity_is_count(graph: bytearray) -> bytearray:
    """The graph bytes (at least their header) with the capacity hnswlib states set to the element count (16 at
    least): hnswlib allocates the capacity a file states, and add() grows it anyway; and a saved index does not
    depend on how its capacity grew."""
    (count,) = struct.unpack_from("<Q", graph, 16)
    struct.pack_into("<Q", graph, 8, max(count, 16))
    return graph


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
        self.stamp: dict = {}  # what `save(stamp=...)` recorded, after a load
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
                self._index.resize_index(max(need, int(GROWTH * self._index.get_max_elements())))
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
                # Stored vectors are finite, so a non-finite best score means a NaN/inf query: one float check
                # here instead of a scan of every query on the fast path.
                if hits and not np.isfinite(hits[0].score):
                    raise ValueError("query contains NaN or inf")
                return hits
        q = np.asarray(query, dtype=np.float32)
        single = q.ndim == 1
        if single:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"query must have shape [{self.dim}] or [n, {self.dim}], got {np.shape(query)}")
        if not np.isfinite(q).all():
            raise ValueError("query contains NaN or inf")
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
    def save(self, path, stamp: Optional[dict] = None) -> None:
        """Write the index atomically. `stamp` (JSON) is kept in the header and comes back as `.stamp` on load:
        the owner of the data behind the index records there which state of it the file holds."""
        if stamp is not None:
            json.dumps(stamp)
            if not isinstance(stamp, dict):
                raise TypeError("stamp must be a dict")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_leftovers(path)
        graph_file = _temp_file(path)
        tmp = None
        try:
            with self._lock.read():
                self._index.save_index(str(graph_file))
                live = [lab for lab, i in enumerate(self._id) if i is not None]
                table = {"labels": live, "ids": [self._id[lab] for lab in live],
                         "metadata": [dict(self._meta[lab]) for lab in live], "next_label": self._next_label,
                         "deleted": self._deleted}
            table_json = json.dumps(table, separators=(",", ":")).encode()
            del table
            glen = graph_file.stat().st_size
            header = json.dumps({"params": self.params, "count": len(live), "payload_len": 8 + glen + len(table_json),
                                 **({"stamp": stamp} if stamp else {})}).encode()
            # Streamed from the graph file in pieces, hashed as written, the digest filled in last: a save holds
            # one piece of the graph, not three copies of it.
            digest = hashlib.sha256(header)  # covers params too, not just the graph
            tmp = _temp_file(path)
            with open(tmp, "wb") as f, open(graph_file, "rb") as g:
                f.write(MAGIC + struct.pack("<IQ", FORMAT_VERSION, len(header)) + bytes(32) + header)
                first = bytes(_capacity_is_count(bytearray(g.read(1 << 20))))  # holds the graph's header
                for piece in itertools.chain([struct.pack("<Q", glen), first], iter(lambda: g.read(1 << 20), b""),
                                             [table_json]):
                    digest.update(piece)
                    f.write(piece)
                f.seek(len(MAGIC) + 12)
                f.write(digest.digest())
                f.flush()
                os.fsync(f.fileno())
            fsync_replace(Path(tmp), path)
        except BaseException:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)
            raise
        finally:
            graph_file.unlink(missing_ok=True)

    @classmethod
    def load(cls, path, threads: int = 1) -> "VectorIndex":
        path = Path(path)
        clean_leftovers(path)
        data = path.read_bytes()
        fixed = len(MAGIC) + 12 + 32
        if len(data) < fixed or data[:len(MAGIC)] != MAGIC:
            raise ValueError(f"{path} is not an edgeai vector index (bad magic or truncated)")
        version, hlen = struct.unpack("<IQ", data[len(MAGIC):len(MAGIC) + 12])
        if version != FORMAT_VERSION:
            raise ValueError(f"{path}: index format version {version}, this edgeai reads {FORMAT_VERSION}")
        body = memoryview(data)[fixed:]  # views, not copies: the graph is most of the file
        if hashlib.sha256(body).digest() != data[fixed - 32:fixed]:
            raise ValueError(f"{path}: index file is truncated or corrupted (checksum mismatch); rebuild it")
        try:
            return cls._from_body(path, body, hlen, threads)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError, struct.error, OverflowError,
                RecursionError, RuntimeError) as exc:
            # The checksum matched, so a writer made this file as it is: a forged or foreign one.
            raise ValueError(f"{path}: not a valid edgeai vector index ({type(exc).__name__}: {exc}); "
                             "rebuild it") from None

    @classmethod
    def _from_body(cls, path: Path, body: bytes, hlen: int, threads: int) -> "VectorIndex":
        header = json.loads(bytes(body[:hlen]))
        payload = body[hlen:]
        if len(payload) != header["payload_len"] or len(payload) < 8:
            raise ValueError("payload length")
        p = header["params"]
        for name, (lo, hi) in _FILE_PARAMS.items():
            v = p.get(name, 100) if name == "seed" else p[name]
            if type(v) is not int or not lo <= v <= hi:
                raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {v!r}")
        if p["space"] not in SPACES:
            raise ValueError(f"unknown space {p['space']!r}")
        (glen,) = struct.unpack("<Q", payload[:8])
        if glen > len(payload) - 8:
            raise ValueError("graph length")
        table = json.loads(bytes(payload[8 + glen:]))
        self = cls(p["dim"], p["space"], p["M"], p["ef_construction"], p["ef_search"], capacity=16,
                   threads=threads, seed=p.get("seed", 100))
        labels, ids, metas = table["labels"], table["ids"], table["metadata"]
        next_label, deleted = table["next_label"], table["deleted"]
        if not (isinstance(labels, list) and isinstance(ids, list) and isinstance(metas, list)
                and len(labels) == len(ids) == len(metas) == header["count"]):
            raise ValueError("id table lengths differ")
        if not (type(next_label) is int and type(deleted) is int and 0 <= deleted <= next_label <= 1 << 40):
            raise ValueError("next_label / deleted out of range")
        if not all(type(x) is int and 0 <= x < next_label for x in labels) or len(set(labels)) != len(labels):
            raise ValueError("labels out of range or repeated")
        if not all(isinstance(i, str) for i in ids) or len(set(ids)) != len(ids):
            raise ValueError("ids must be distinct strings")
        if not all(m is None or isinstance(m, dict) for m in metas):
            raise ValueError("metadata must be objects")
        stamp = header.get("stamp") or {}
        if not isinstance(stamp, dict):
            raise ValueError("stamp must be an object")
        graph = _check_graph(payload[8:8 + glen], self.dim, self.M, labels, deleted)
        graph_file = _temp_file(path)
        try:
            graph_file.write_bytes(graph)
            self._index = hnswlib.Index(space=self.space, dim=self.dim)
            self._index.load_index(str(graph_file), allow_replace_deleted=True)
        finally:
            graph_file.unlink(missing_ok=True)
        self._index.set_ef(self.ef_search)
        self._index.set_num_threads(threads)
        self._next_label = next_label
        self._id = [None] * next_label
        self._meta = [None] * next_label
        for lab, i, m in zip(labels, ids, metas):
            self._id[lab], self._meta[lab] = i, (m or _EMPTY)
        self._label = {i: lab for lab, i in zip(labels, ids)}
        self._deleted = deleted
        self.stamp = stamp
        self._bind_single_search()
        return self
