"""Index files from the outside world: forged files (a valid checksum over bad content) raise ValueError before
hnswlib reads a byte, leftovers of killed saves are cleaned, and NaN/inf queries are named."""
import hashlib
import json
import os
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

from edgeai.retrieval.index import MAGIC, VectorIndex, clean_leftovers


def small_index(n=40, dim=8, deleted=3):
    rng = np.random.default_rng(0)
    ix = VectorIndex(dim, M=4, ef_construction=20)
    ix.add(rng.standard_normal((n, dim)), metadata=[{"i": i} for i in range(n)])
    ix.delete([str(i) for i in range(deleted)])
    return ix


def split(path):
    """(header dict, graph bytes, table dict) of a saved index."""
    data = path.read_bytes()
    hlen = struct.unpack("<Q", data[12:20])[0]
    body = data[52:]
    header = json.loads(body[:hlen])
    payload = body[hlen:]
    glen = struct.unpack("<Q", payload[:8])[0]
    return header, payload[8:8 + glen], json.loads(payload[8 + glen:])


def forge(path, header, graph, table, raw_table=None):
    """Write a file with a correct checksum around whatever content: what a forger (or a buggy writer) makes."""
    payload = struct.pack("<Q", len(graph)) + graph + (raw_table if raw_table is not None else
                                                       json.dumps(table).encode())
    header = dict(header, payload_len=len(payload)) if isinstance(header, dict) else header
    hbytes = json.dumps(header).encode()
    body = hbytes + payload
    path.write_bytes(MAGIC + struct.pack("<IQ", 1, len(hbytes)) + hashlib.sha256(body).digest() + body)


@pytest.fixture
def saved(tmp_path):
    ix = small_index()
    ix.save(tmp_path / "v.vidx")
    return tmp_path / "v.vidx", ix


def test_roundtrip_still_loads(saved):
    path, ix = saved
    back = VectorIndex.load(path)
    q = np.random.default_rng(1).standard_normal(8)
    assert [h.id for h in back.search(q, k=5)] == [h.id for h in ix.search(q, k=5)]
    assert len(back) == len(ix) == 37


def test_empty_and_all_deleted_indexes_load(tmp_path):
    ix = VectorIndex(8)
    ix.save(tmp_path / "e.vidx")
    assert len(VectorIndex.load(tmp_path / "e.vidx")) == 0
    ix.add(np.ones((3, 8)))
    ix.delete(["0", "1", "2"])
    ix.save(tmp_path / "e.vidx")
    back = VectorIndex.load(tmp_path / "e.vidx")
    assert len(back) == 0 and back.search(np.ones(8), k=2) == []
    back.add(np.ones((2, 8)))
    assert len(back.search(np.ones(8), k=2)) == 2


def _graph_header(graph):
    return list(struct.unpack_from("<6QiI3QdQ", graph))


def _set_header(graph, fields):
    g = bytearray(graph)
    struct.pack_into("<6QiI3QdQ", g, 0, *fields)
    return bytes(g)


FORGERIES = {
    "no params": lambda h, g, t: ({k: v for k, v in h.items() if k != "params"}, g, t),
    "header not an object": lambda h, g, t: ([1, 2], g, t),
    "dim as text": lambda h, g, t: (dict(h, params=dict(h["params"], dim="8")), g, t),
    "M zero": lambda h, g, t: (dict(h, params=dict(h["params"], M=0)), g, t),
    "M one": lambda h, g, t: (dict(h, params=dict(h["params"], M=1)), g, t),
    "unknown space": lambda h, g, t: (dict(h, params=dict(h["params"], space="hamming")), g, t),
    "other M": lambda h, g, t: (dict(h, params=dict(h["params"], M=5)), g, t),
    "other dim": lambda h, g, t: (dict(h, params=dict(h["params"], dim=4)), g, t),
    "label out of range": lambda h, g, t: (h, g, dict(t, labels=[10 ** 6] + t["labels"][1:])),
    "labels repeated": lambda h, g, t: (h, g, dict(t, labels=[t["labels"][1]] + t["labels"][1:])),
    "ids short": lambda h, g, t: (h, g, dict(t, ids=t["ids"][1:])),
    "table a list": lambda h, g, t: (h, g, [1, 2, 3]),
    "graph truncated": lambda h, g, t: (h, g[:-7], t),
    "graph empty": lambda h, g, t: (h, b"", t),
    "count too large": lambda h, g, t: (h, _set_header(g, _graph_header(g)[:2] + [10 ** 9] + _graph_header(g)[3:]), t),
    "entry point out of range": lambda h, g, t: (h, _set_header(g, _graph_header(g)[:7] + [10 ** 6] +
                                                                _graph_header(g)[8:]), t),
}


@pytest.mark.parametrize("name", sorted(FORGERIES))
def test_forged_file_is_a_clear_error(saved, name):
    path, _ = saved
    forge(path, *FORGERIES[name](*split(path)))
    with pytest.raises(ValueError, match="not a valid edgeai vector index"):
        VectorIndex.load(path)


def test_stated_capacity_is_not_allocated(saved):
    """hnswlib allocates the capacity a file states (2**62 elements here): the loader sets it to the count."""
    path, ix = saved
    header, graph, table = split(path)
    forge(path, header, _set_header(graph, [0, 2 ** 62] + _graph_header(graph)[2:]), table)
    back = VectorIndex.load(path)
    assert len(back) == 37 and len(back.search(np.ones(8), k=3)) == 3
    back.add(np.ones((50, 8)))  # grows as usual
    assert len(back) == 87


def test_forged_neighbour_id_is_caught(saved):
    """A neighbour id past the element count would send hnswlib's search out of bounds."""
    path, _ = saved
    header, graph, table = split(path)
    g = bytearray(graph)
    first = 96  # level-0 block of element 0: u32 count, then neighbour ids
    struct.pack_into("<II", g, first, 1, 10 ** 6)
    forge(path, header, bytes(g), table)
    with pytest.raises(ValueError, match="neighbour id out of range"):
        VectorIndex.load(path)


def test_forged_nan_vector_is_caught(saved):
    path, _ = saved
    header, graph, table = split(path)
    g = bytearray(graph)
    per = _graph_header(graph)[3]
    struct.pack_into("<f", g, 96 + per * 5 + 4 + 4 * 8, float("nan"))  # element 5, first float (M=4: 8 links)
    forge(path, header, bytes(g), table)
    with pytest.raises(ValueError, match="NaN or inf vector"):
        VectorIndex.load(path)


def test_rag_rebuilds_from_a_forged_index(tiny_embed_model, tmp_path):
    from edgeai.retrieval.embedder import Embedder
    from edgeai.retrieval.rag import INDEX_FILE, RAG

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# Heap\n\nheapq push and pop\n\n# Files\n\nopen read write\n")
    rag = RAG(None, Embedder(tiny_embed_model), tmp_path / "idx")
    rag.add([docs])
    path = tmp_path / "idx" / INDEX_FILE
    header, graph, table = split(path)
    forge(path, {k: v for k, v in header.items() if k != "params"}, graph, table)  # KeyError before
    with pytest.warns(UserWarning, match="not a valid edgeai vector index.*rebuilding"):
        again = RAG(None, Embedder(tiny_embed_model), tmp_path / "idx")
    assert sorted(again.index.ids()) == sorted(rag.index.ids())


def test_nan_or_inf_query_is_rejected(saved):
    _, ix = saved
    for bad in (float("nan"), float("inf")):
        q = np.zeros(8, np.float32)
        q[3] = bad
        with pytest.raises(ValueError, match="NaN or inf"):
            ix.search(q, k=3)
        with pytest.raises(ValueError, match="NaN or inf"):
            ix.search(np.stack([q, q]), k=3)
        with pytest.raises(ValueError, match="NaN or inf"):
            ix.search(q, k=3, filter={"i": 5})


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_leftovers_of_killed_saves_are_cleaned(saved):
    path, ix = saved
    folder = path.parent
    dead = folder / f"{path.name}.{_dead_pid()}.abc123.tmp"
    dead.write_bytes(b"x" * 100)
    mine = folder / f"{path.name}.{os.getpid()}.live.tmp"  # a save in flight in a live process: kept
    mine.write_bytes(b"y")
    legacy_file = folder / f"{path.name}.k3j2h1g0.tmp"  # earlier versions: no pid, removed once an hour old
    legacy_file.write_bytes(b"z")
    legacy_dir = folder / "tmpq8w7e6r5"
    legacy_dir.mkdir()
    (legacy_dir / "graph.bin").write_bytes(b"g")
    fresh_dir = folder / "tmpfresh000"
    fresh_dir.mkdir()
    (fresh_dir / "graph.bin").write_bytes(b"g")
    other = folder / "tmpnotours"
    other.mkdir()
    (other / "data.csv").write_text("1")
    old = time.time() - 7200
    for p in (legacy_file, legacy_dir, other):
        os.utime(p, (old, old))
    VectorIndex.load(path)
    assert not dead.exists() and not legacy_file.exists() and not legacy_dir.exists()
    assert mine.exists() and fresh_dir.exists() and other.exists()
    mine.unlink()
    ix.save(path)
    assert sorted(p.name for p in folder.iterdir()) == sorted([path.name, fresh_dir.name, other.name])
    assert clean_leftovers(path) == 0


def test_stamp_roundtrip(tmp_path):
    """The owner of the data records which state of it a saved file holds (RAG: the store's generation)."""
    ix = small_index()
    ix.save(tmp_path / "a.vidx", stamp={"store_generation": 7})
    assert VectorIndex.load(tmp_path / "a.vidx").stamp == {"store_generation": 7}
    ix.save(tmp_path / "b.vidx")
    assert VectorIndex.load(tmp_path / "b.vidx").stamp == {}
    with pytest.raises(TypeError):
        ix.save(tmp_path / "c.vidx", stamp=[1])
