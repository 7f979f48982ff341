"""The native core's edges: every binding checks shapes, dtypes, indices and integer ranges and raises a clear
ValueError/IndexError naming the field; state survives failed allocations; cancel reaches queued requests; the
read/write lock prefers writers and never throws from a destructor; the index validates hnswlib's parameters."""
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import edgeai
from edgeai import SamplingParams, _core
from edgeai.retrieval.index import Hit, VectorIndex

V = 97


def make_engine(**kw):
    fake = _core.FakeForward(V)
    return fake, _core.Engine(fake, 2, 2, 4, kw.pop("max_seq", 256), V, 8 << 20, kw.pop("chunk", 16))


def greedy_chain():
    return SamplingParams(temperature=0.0).make_chain()


# --- integers out of range: a ValueError naming the field, not pybind11's signature dump -------------------------

@pytest.mark.parametrize("call, field", [
    (lambda c: c.add_top_k(10 ** 12), "top_k"),
    (lambda c: c.add_dist(2 ** 70), "seed"),
    (lambda c: c.add_dist(-1), "seed"),
    (lambda c: c.reseed(2 ** 64), "seed"),
    (lambda c: c.add_penalties(1.1, 0.0, 0.0, 2 ** 40), "penalty_last_n"),
    (lambda c: c.add_logit_bias({2 ** 40: 1.0}), "logit_bias token id"),
])
def test_chain_rejects_out_of_range_integers_by_name(call, field):
    with pytest.raises(ValueError, match=field):
        call(_core.SamplerChain())


def test_chain_rejects_non_integers_and_bad_history():
    c = _core.SamplerChain()
    with pytest.raises(TypeError, match="top_k must be an integer"):
        c.add_top_k(2.5)
    c.add_greedy()
    logits = np.zeros(8, np.float32)
    with pytest.raises(ValueError, match="history token id"):
        c.sample(logits, np.array([2 ** 32 + 5], np.int64))  # a plain int32 cast would make it token 5
    with pytest.raises(ValueError, match="history token id"):
        c.sample(logits, [1, 2 ** 40])
    with pytest.raises(TypeError, match="integer token ids"):
        c.sample(logits, np.array([1.5]))


@pytest.mark.parametrize("kwargs, field", [
    (dict(prompt=[2 ** 40]), "prompt token id"),
    (dict(prompt=[1], max_new_tokens=2 ** 40), "max_new_tokens"),
    (dict(prompt=[1], num_beams=2 ** 40), "num_beams"),
    (dict(prompt=[1], eos_ids=[2 ** 40]), "eos token id"),
    (dict(prompt=[1], draft_tokens=2 ** 40), "draft_tokens"),
])
def test_engine_rejects_out_of_range_integers_by_name(kwargs, field):
    _, e = make_engine()
    prompt = kwargs.pop("prompt")
    with pytest.raises(ValueError, match=field):
        e.generate(prompt, greedy_chain(), **kwargs)


def test_sampling_params_name_over_range_fields():
    for kwargs, field in ((dict(top_k=10 ** 12), "top_k"), (dict(seed=2 ** 70), "seed"),
                          (dict(penalty_last_n=2 ** 40), "penalty_last_n"), (dict(temperature=1e-45), "temperature")):
        with pytest.raises(ValueError, match=field):
            SamplingParams(**kwargs)


# --- shapes and indices ------------------------------------------------------------------------------------------

def test_beam_search_rejects_beams_whose_double_overflows():
    """2 * num_beams used to overflow int, pass the vocabulary check and allocate 2**31 beams (fuzz + ASan)."""
    with pytest.raises(ValueError, match="vocabulary too small"):
        _core.BeamSearch(2 ** 31 - 1, 64, [])


def test_beam_step_checks_the_vocabulary_axis():
    b = _core.BeamSearch(2, 10, [])
    with pytest.raises(ValueError, match=r"\[2, 10\]"):
        b.step(np.zeros((2, 3), np.float32))  # used to read 2 x 10 floats from a 2 x 3 array
    with pytest.raises(ValueError, match="num_beams"):
        b.step(np.zeros((3, 10), np.float32))
    tokens, parents = b.step(np.zeros((2, 10), np.float32))
    assert len(tokens) == len(parents) == 2


def test_engine_views_check_the_layer_and_read_during_generation():
    _, e = make_engine()
    with pytest.raises(IndexError, match="layer"):
        e.kv_address(2, False)
    with pytest.raises(IndexError, match="layer"):
        e.kv_address(-1, True)
    seen = []
    # The callback runs while the engine holds its generate lock: the views must not need that lock.
    e.generate([1, 2, 3], greedy_chain(), max_new_tokens=3,
               on_token=lambda t: seen.append((e.kv_shape, e.cache_bytes, e.cache_entries)) or True)
    assert seen and seen[0][0] == (1, 2, 256, 4)


# --- failed allocations leave the engine usable ------------------------------------------------------------------

ALLOC_FAILURE = r"""
import sys
sys.path.insert(0, {tests!r})
from edgeai import SamplingParams, _core
V = 400_001
fake = _core.FakeForward(V)
# Each KV buffer holds 2 heads x 2**25 positions x 4 floats = 1 GiB per row (untouched, so nothing resident).
e = _core.Engine(fake, 1, 2, 4, 2 ** 25, V, 0, 16)
chain = lambda: SamplingParams(temperature=0.0).make_chain()
before = e.generate([1, 2, 3], chain(), max_new_tokens=4)["sequences"]
try:
    # 200000 rows of 1 GiB: more than any address space, so the allocation fails on every machine
    e.generate([1, 2, 3], None, max_new_tokens=4, num_beams=200_000)
    print("no error")
except MemoryError:
    pass
after = e.generate([1, 2, 3], chain(), max_new_tokens=4)["sequences"]
beams = e.generate([1, 2, 3], None, max_new_tokens=4, num_beams=2)
print("ok" if before == after and beams["sequences"] else "changed")
"""


@pytest.mark.skipif(bool(__import__("os").environ.get("EDGEAI_SANITIZED")),
                    reason="ASan reports an impossible allocation instead of throwing std::bad_alloc")
def test_failed_kv_allocation_keeps_the_old_buffers():
    """ensure_batch used to free the buffers before the allocation that threw: the next call crashed."""
    code = ALLOC_FAILURE.format(tests=str(__import__("pathlib").Path(__file__).parent))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"crashed ({res.returncode}): {res.stderr[-1500:]}"
    assert res.stdout.strip().splitlines()[-1] == "ok", res.stdout


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from conftest import build_tiny_llm_folder

    return build_tiny_llm_folder(tmp_path_factory.mktemp("hard") / "m", seed=2)[1]


def test_llm_too_many_beams_is_a_clear_error_and_changes_nothing(tiny):
    with edgeai.LLM(tiny, threads=1, context_length=128) as llm:
        before = llm.generate("hi there", max_new_tokens=6).token_ids
        with pytest.raises(ValueError, match="num_beams"):
            llm.generate("hi", max_new_tokens=4, num_beams=30000)
        assert llm.generate("hi there", max_new_tokens=6, num_beams=2).token_ids
        assert llm.generate("hi there", max_new_tokens=6).token_ids == before


def test_llm_token_id_and_truncate_errors(tiny):
    with edgeai.LLM(tiny, threads=1, context_length=64) as llm:
        with pytest.raises(ValueError, match="token id 1099511627776"):
            llm.generate([1, 2 ** 40])
        with pytest.raises(ValueError, match="top_k"):
            llm.generate("x", top_k=10 ** 12, temperature=1.0)
        with pytest.raises(ValueError, match="seed"):
            llm.generate("x", seed=2 ** 70, temperature=1.0)
        with pytest.raises(ValueError, match="no room for the prompt"):
            llm.generate("a long prompt " * 20, max_new_tokens=64, truncate="left")


# --- cancel and per-call results ---------------------------------------------------------------------------------

def test_cancel_reaches_a_request_waiting_in_the_queue():
    _, e = make_engine()
    started, results = threading.Event(), {}

    def slow(t):
        started.set()
        time.sleep(0.01)
        return True

    def run(name, cb):
        results[name] = e.generate([1, 2, 3], greedy_chain(), max_new_tokens=200, on_token=cb)

    first = threading.Thread(target=run, args=("first", slow))
    first.start()
    assert started.wait(10)
    queued = threading.Thread(target=run, args=("queued", None))
    queued.start()
    time.sleep(0.2)  # the second request now waits for the engine
    e.cancel()
    first.join(10)
    queued.join(10)
    assert results["first"]["finish_reason"] == "cancelled"
    assert results["queued"]["finish_reason"] == "cancelled"  # used to be lost: generate cleared the flag
    assert results["queued"]["sequences"] == [[]]
    later = e.generate([1, 2, 3], greedy_chain(), max_new_tokens=5)  # a cancel never reaches later requests
    assert later["finish_reason"] == "length" and len(later["sequences"][0]) == 5


def test_each_stream_carries_its_own_generation(tiny):
    with edgeai.LLM(tiny, threads=1, context_length=128) as llm:
        a = llm.stream("first", max_new_tokens=5)
        b = llm.stream("second prompt", max_new_tokens=7)
        text_b = "".join(b)
        text_a = "".join(a)
        assert a.generation.text == text_a and b.generation.text == text_b
        assert a.generation.prompt_tokens != b.generation.prompt_tokens
        assert llm.last_generation is a.generation  # per thread: the last stream this thread finished
        seen = []
        t = threading.Thread(target=lambda: seen.append(("".join(llm.stream("other", max_new_tokens=3)),
                                                          llm.last_generation)))
        t.start()
        t.join(30)
        assert seen[0][1] is not None and llm.last_generation is a.generation


# --- the read/write lock and the hit builder ---------------------------------------------------------------------

def test_read_write_lock_prefers_writers_and_checks_release():
    lock = _core.ReadWriteLock()
    with pytest.raises(RuntimeError, match="without a read or write hold"):
        lock.release()
    lock.acquire_read()
    order = []

    def writer():
        lock.acquire_write()
        order.append("write")
        lock.release()

    def reader():
        lock.acquire_read()
        order.append("read")
        lock.release()

    w = threading.Thread(target=writer)
    w.start()
    time.sleep(0.1)  # the writer now waits for our read hold
    r = threading.Thread(target=reader)
    r.start()
    time.sleep(0.1)  # a new reader must queue behind the waiting writer
    assert order == []
    lock.release()
    w.join(10)
    r.join(10)
    assert order == ["write", "read"]


def test_build_hits_checks_labels_and_types():
    ids, metas = ["a", None, "c"], [{}, None, {"k": 1}]
    dists = np.array([[0.1, 0.2]], np.float32)
    hits = _core.build_hits(Hit, np.array([[2, 0]], np.uint64), dists, ids, metas, False)
    assert hits == [[Hit("c", pytest.approx(0.9), {"k": 1}), Hit("a", pytest.approx(0.8), {})]]
    with pytest.raises(IndexError, match="unknown label"):
        _core.build_hits(Hit, np.array([[7, 0]], np.uint64), dists, ids, metas, False)
    with pytest.raises(RuntimeError, match="deleted label"):
        _core.build_hits(Hit, np.array([[1, 0]], np.uint64), dists, ids, metas, False)
    with pytest.raises(TypeError, match="lists"):
        _core.build_hits(Hit, np.array([[0, 0]], np.uint64), dists, tuple(ids), metas, False)


@pytest.mark.parametrize("kwargs, field", [(dict(M=0), "M"), (dict(M=1), "M"), (dict(M=2.5), "M"),
                                           (dict(ef_construction=0), "ef_construction"),
                                           (dict(ef_search=0), "ef_search")])
def test_vector_index_validates_hnsw_parameters(kwargs, field):
    """M=0 used to segfault inside hnswlib on the first add, and M=1 reported "Not enough memory"."""
    with pytest.raises(ValueError, match=field):
        VectorIndex(8, **kwargs)


def test_vector_index_with_the_smallest_m_works():
    idx = VectorIndex(8, M=2)
    vecs = np.random.default_rng(0).standard_normal((20, 8)).astype(np.float32)
    idx.add(vecs, ids=[str(i) for i in range(20)])
    assert idx.search(vecs[3], k=1)[0].id == "3"
    with pytest.raises(ValueError, match="ef_search"):
        idx.set_ef(0)
