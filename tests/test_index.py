"""VectorIndex: ids, upserts, deletes with slot reuse, growth, filters, safe files, concurrent readers."""
import threading

import numpy as np
import pytest

from edgeai.retrieval.index import MAGIC, Hit, VectorIndex


def _unit(rng, n, d=16):
    v = rng.standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_add_search_exact_and_recall(rng):
    v = _unit(rng, 500)
    ix = VectorIndex(16, capacity=16)  # grows from a tiny capacity
    ids = ix.add(v)
    assert ids[:3] == ["0", "1", "2"] and len(ix) == 500
    hits = ix.search(v[42], k=5)
    assert hits[0].id == "42" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    q = _unit(rng, 50)
    truth = np.argsort(-(q @ v.T), axis=1)[:, :10]
    got = ix.search(q, k=10)
    recall = np.mean([len({int(h.id) for h in g} & set(t.tolist())) / 10 for g, t in zip(got, truth)])
    assert recall >= 0.95


def test_string_and_int_ids(rng):
    ix = VectorIndex(16)
    ix.add(_unit(rng, 2), ids=["doc-a", 7], metadata=[{"x": 1}, None])
    assert "7" in ix and 7 in ix and "doc-a" in ix
    assert ix.get_metadata(7) == {}
    assert ix.search(ix.get_vector("doc-a"), k=1)[0] == ("doc-a", pytest.approx(1.0, abs=1e-5), {"x": 1})
    with pytest.raises(TypeError):
        ix.add(_unit(rng, 1), ids=[1.5])
    with pytest.raises(ValueError):
        ix.add(_unit(rng, 2), ids=["x", "x"])
    with pytest.raises(ValueError):
        ix.add(np.ones((1, 8), np.float32))
    with pytest.raises(ValueError):
        ix.add(np.full((1, 16), np.nan, np.float32))


def test_duplicate_id_replaces_or_errors(rng):
    ix = VectorIndex(16)
    a, b = _unit(rng, 2)
    ix.add([a], ids=["x"], metadata=[{"v": 1}])
    ix.add([b], ids=["x"], metadata=[{"v": 2}])  # default: replace
    assert len(ix) == 1 and ix.get_metadata("x") == {"v": 2}
    assert np.allclose(ix.get_vector("x"), b, atol=1e-6)
    with pytest.raises(KeyError):
        ix.add([a], ids=["x"], on_duplicate="error")
    assert ix.get_metadata("x") == {"v": 2}


def test_delete_reuses_slots(rng):
    v = _unit(rng, 100)
    ix = VectorIndex(16, capacity=100)
    ix.add(v)
    assert ix.delete(["3", "4", "nope"]) == 2 and len(ix) == 98
    assert all(h.id not in ("3", "4") for h in ix.search(v[3], k=10))
    ix.add(_unit(rng, 2), ids=["n1", "n2"])
    assert ix._index.get_current_count() == 100 and ix._index.get_max_elements() == 100  # slots reused
    ix.add(_unit(rng, 1), ids=["n3"])  # now it must grow
    assert ix._index.get_max_elements() > 100 and len(ix) == 101


def test_filters(rng):
    v = _unit(rng, 300)
    ix = VectorIndex(16)
    ix.add(v, metadata=[{"lang": "en" if i % 3 else "de", "i": i} for i in range(300)])
    hits = ix.search(v[0], k=10, filter={"lang": "de"})
    assert len(hits) == 10 and all(h.metadata["lang"] == "de" for h in hits) and hits[0].id == "0"
    hits = ix.search(v[0], k=10, filter=lambda m: m["i"] < 3)
    assert sorted(h.id for h in hits) == ["0", "1", "2"]  # fewer matches than k: no error
    assert ix.search(v[0], k=5, filter={"lang": "fr"}) == []
    with pytest.raises(TypeError):
        ix.search(v[0], filter="lang=de")


def test_empty_and_k_larger_than_size(rng):
    ix = VectorIndex(16)
    assert ix.search(_unit(rng, 1)[0]) == []
    ix.add(_unit(rng, 3))
    assert len(ix.search(_unit(rng, 1)[0], k=50)) == 3


def test_save_load_roundtrip(rng, tmp_path):
    v = _unit(rng, 200)
    ix = VectorIndex(16, space="ip", M=8, ef_construction=50, ef_search=33)
    ix.add(v, ids=[f"d{i}" for i in range(200)], metadata=[{"i": i} for i in range(200)])
    ix.delete(["d5"])
    path = tmp_path / "sub" / "x.vidx"
    ix.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["x.vidx"]  # no temp files left
    j = VectorIndex.load(path)
    assert j.params == ix.params and len(j) == 199 and "d5" not in j
    q = _unit(rng, 5)
    assert [[h.id for h in r] for r in j.search(q, k=5)] == [[h.id for h in r] for r in ix.search(q, k=5)]
    assert j.get_metadata("d9") == {"i": 9}
    j.add(_unit(rng, 1), ids=["new"])  # the deleted slot is reusable after load
    assert j._index.get_current_count() == 200


def test_damaged_files_raise_value_error(rng, tmp_path):
    ix = VectorIndex(16)
    ix.add(_unit(rng, 50))
    path = tmp_path / "x.vidx"
    ix.save(path)
    data = path.read_bytes()
    cases = {"truncated": data[: len(data) // 2], "tiny": data[:5], "empty": b"", "bad magic": b"X" + data[1:],
             "flipped": data[:-100] + bytes([data[-100] ^ 1]) + data[-99:],
             "version": data[:len(MAGIC)] + (99).to_bytes(4, "little") + data[len(MAGIC) + 4:],
             "header": data[:len(MAGIC) + 44] + b"[" + data[len(MAGIC) + 45:],
             "hlen": data[:len(MAGIC) + 4] + (10 ** 9).to_bytes(8, "little") + data[len(MAGIC) + 12:]}
    for name, blob in cases.items():
        path.write_bytes(blob)
        with pytest.raises(ValueError):
            VectorIndex.load(path)
            pytest.fail(name)


def test_concurrent_readers_and_writer(rng):
    ix = VectorIndex(16, capacity=64)
    ix.add(_unit(rng, 200))
    new = _unit(rng, 2000)
    errors = []
    stop = threading.Event()

    def reader(seed):
        r = np.random.default_rng(seed)
        try:
            while not stop.is_set():
                hits = ix.search(_unit(r, 4), k=5, filter=(lambda m: True) if seed % 2 else None)
                assert all(len(h) == 5 for h in hits)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for i in range(0, 2000, 50):  # forces several resizes while readers run
        ix.add(new[i:i + 50], ids=[f"n{j}" for j in range(i, i + 50)])
        if i % 200 == 0:
            ix.delete([f"n{i}"])
    stop.set()
    for t in threads:
        t.join()
    assert not errors and len(ix) == 2200 - 10
    assert ix.search(new[1999], k=1)[0].id == "n1999"


def test_waiting_writer_is_not_starved_and_readers_wait_for_it():
    from edgeai.retrieval.index import RWLock
    lock, order = RWLock(), []
    lock.acquire_read()
    writer = threading.Thread(target=lambda: (lock._acquire_write(), order.append("write"), lock._release()))
    writer.start()
    writer.join(0.2)
    assert writer.is_alive()  # blocked by the reader, with the GIL released (this thread still runs)

    def late_reader():
        with lock.read():
            order.append("read")
    reader = threading.Thread(target=late_reader)
    reader.start()
    reader.join(0.2)
    assert reader.is_alive()  # queued behind the waiting writer
    lock.release_read()
    writer.join(5)
    reader.join(5)
    assert order == ["write", "read"]


def test_build_hits_checks_its_inputs():
    from edgeai._core import build_hits
    from edgeai.retrieval.index import Hit
    ids, metas = ["a", None, "c"], [{}, None, {"x": 1}]
    hits = build_hits(Hit, np.array([[2, 0]], np.uint64), np.array([[0.25, 0.5]], np.float32), ids, metas, False)
    assert hits == [[Hit("c", 0.75, {"x": 1}), Hit("a", 0.5, {})]] and type(hits[0][0]) is Hit
    assert build_hits(Hit, np.array([[0]], np.uint64), np.array([[4.0]], np.float32), ids, metas, True)[0][0].score == -4
    with pytest.raises(TypeError, match="labels"):
        build_hits(Hit, np.array([[0]], np.int64), np.array([[0.5]], np.float32), ids, metas, False)
    with pytest.raises(ValueError, match="shape"):
        build_hits(Hit, np.array([[0, 2]], np.uint64), np.array([[0.5]], np.float32), ids, metas, False)
    with pytest.raises(IndexError, match="unknown label"):
        build_hits(Hit, np.array([[7]], np.uint64), np.array([[0.5]], np.float32), ids, metas, False)
    with pytest.raises(RuntimeError, match="deleted"):
        build_hits(Hit, np.array([[1]], np.uint64), np.array([[0.5]], np.float32), ids, metas, False)


def test_native_single_query_path_matches_the_python_path(rng, tmp_path):
    ix = VectorIndex(16, capacity=64, space="l2")
    data = _unit(rng, 300)
    ix.add(data, metadata=[{"i": i} for i in range(300)])
    ix.delete(["5", "17"])

    def both(index, q, k):
        fast = index.search(q, k=k)                           # float32 vector: the native path
        slow = index.search([float(x) for x in q], k=np.int64(k))  # a list and a numpy k: the Python path
        assert fast == slow and all(type(h) is Hit for h in fast)
        return fast

    hits = both(ix, data[17], 5)
    assert "17" not in [h.id for h in hits] and hits[0].score <= 0 and hits[0].metadata == {"i": int(hits[0].id)}
    ix.save(tmp_path / "x.vidx")
    again = VectorIndex.load(tmp_path / "x.vidx")  # load rebinds the native path to the new tables
    assert both(again, data[3], 7) == both(ix, data[3], 7)
    again.add(data[:1] + 5.0, ids=["far"])
    assert both(again, data[0] + 5.0, 1)[0].id == "far"
    assert again.search(data[0], k=1000)[-1:] and len(again.search(data[0], k=1000)) == len(again)
    with pytest.raises(ValueError, match="k must be"):
        again.search(data[0], k=0)
    with pytest.raises(ValueError, match="shape"):
        again.search(data[0][:8])
