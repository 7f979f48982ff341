"""Fuzzing (Hypothesis) of what reads outside data: the vector-index file loader and the GGUF reader on truncated
and mutated files, the tokenizer and the streaming detokenizer on arbitrary text and token ids.

Every case must end in a result or a ValueError: never another exception, never a crash. The runs are
derandomized (the same cases every time); `HYPOTHESIS_PROFILE=fuzz pytest tests/test_fuzz.py` runs 2000 cases
per test, new random draws each time.
"""
import hashlib
import os
import json
import struct

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from conftest import SMOLLM2_TEMPLATE, write_tiny_gguf  # noqa: E402
from edgeai.retrieval.index import MAGIC, VectorIndex  # noqa: E402

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "default")
FUZZ_EXAMPLES = int(os.environ.get("EDGEAI_FUZZ_EXAMPLES", 2000))  # per test, HYPOTHESIS_PROFILE=fuzz
settings.register_profile("default", derandomize=True, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.register_profile("fuzz", deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.load_profile(PROFILE)


def _examples(n):
    """n cases per test in the suite (a few seconds in all), FUZZ_EXAMPLES when fuzzing."""
    return settings(max_examples=FUZZ_EXAMPLES if PROFILE == "fuzz" else n)


# --- vector index files ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def index_bytes(tmp_path_factory):
    rng = np.random.default_rng(0)
    ix = VectorIndex(6, M=4, ef_construction=16)
    ix.add(rng.standard_normal((60, 6)), metadata=[{"n": i} for i in range(60)])
    ix.delete([str(i) for i in range(0, 60, 7)])
    path = tmp_path_factory.mktemp("fuzz_index") / "v.vidx"
    ix.save(path)
    return path.read_bytes()


def _write(tmp_path, data):
    path = tmp_path / "case.vidx"
    path.write_bytes(data)
    return path


def _load(tmp_path, data):
    try:
        ix = VectorIndex.load(_write(tmp_path, data))
    except ValueError:
        return None
    # Whatever loads must be usable: a search over it returns hits with known ids.
    hits = ix.search(np.ones(ix.dim, np.float32), k=5)
    assert all(h.id in ix for h in hits)
    return ix


def _reseal(data: bytes) -> bytes:
    """Recompute the checksum, as a forger would: the mutation then reaches the parser and hnswlib's data."""
    body = data[52:]
    return data[:20] + hashlib.sha256(body).digest() + body


mutations = st.lists(st.tuples(st.integers(0, 2 ** 31), st.integers(0, 255)), min_size=1, max_size=8)


def _mutate(data: bytes, muts, start: int = 0) -> bytes:
    b = bytearray(data)
    for pos, val in muts:
        b[start + pos % (len(b) - start)] = val
    return bytes(b)


@_examples(150)
@given(cut=st.integers(0, 2 ** 31))
def test_index_truncated(index_bytes, tmp_path, cut):
    data = index_bytes[:cut % len(index_bytes)]
    with pytest.raises(ValueError):
        VectorIndex.load(_write(tmp_path, data))


@_examples(150)
@given(muts=mutations)
def test_index_mutated(index_bytes, tmp_path, muts):
    data = _mutate(index_bytes, muts)
    ix = _load(tmp_path, data)
    assert ix is None or data[20:] == index_bytes[20:]  # only a change to the header's length may still load


@_examples(300)
@given(muts=mutations, where=st.sampled_from(["header", "graph", "table", "anywhere"]))
def test_index_forged(index_bytes, tmp_path, muts, where):
    """Mutations under a valid checksum: the loader's own checks stand between them and hnswlib."""
    hlen = struct.unpack("<Q", index_bytes[12:20])[0]
    payload = 52 + hlen
    glen = struct.unpack("<Q", index_bytes[payload:payload + 8])[0]
    start = {"header": 52, "graph": payload + 8, "table": payload + 8 + glen, "anywhere": 52}[where]
    _load(tmp_path, _reseal(_mutate(index_bytes, muts, start)))


@_examples(100)
@given(table=st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                          lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                          max_leaves=12),
       key=st.sampled_from(["labels", "ids", "metadata", "next_label", "deleted", None]))
def test_index_forged_table(index_bytes, tmp_path, table, key):
    """Any JSON in place of the id table, or of one of its fields."""
    hlen = struct.unpack("<Q", index_bytes[12:20])[0]
    header = json.loads(index_bytes[52:52 + hlen])
    payload = index_bytes[52 + hlen:]
    glen = struct.unpack("<Q", payload[:8])[0]
    old = json.loads(payload[8 + glen:])
    new = table if key is None else dict(old, **{key: table})
    payload = payload[:8 + glen] + json.dumps(new).encode()
    header["payload_len"] = len(payload)
    hb = json.dumps(header).encode()
    body = hb + payload
    data = MAGIC + struct.pack("<IQ", 1, len(hb)) + hashlib.sha256(body).digest() + body
    _load(tmp_path, data)


# --- GGUF files -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gguf_bytes(tmp_path_factory):
    from edgeai.convert.tiny import make_tiny_source
    from edgeai.convert.tokenizer_build import make_tiny_tokenizer_json

    s = make_tiny_source(vocab=320, seed=0)
    s.tokenizer_json = make_tiny_tokenizer_json(320)
    s.chat_template = SMOLLM2_TEMPLATE
    s.special_tokens = {"bos": None, "eos": "<|im_end|>", "pad": "<|im_end|>", "unk": "<|endoftext|>"}
    s.source = {"format": "tiny", "name": "tiny"}
    path = tmp_path_factory.mktemp("fuzz_gguf") / "tiny.gguf"
    write_tiny_gguf(path, s)
    return path.read_bytes()


def _load_gguf(tmp_path, data):
    from edgeai.convert.gguf_source import load_gguf

    path = tmp_path / "case.gguf"
    path.write_bytes(data)
    try:
        return load_gguf(path, with_sha256=False)
    except ValueError:
        return None


@_examples(60)
@given(cut=st.integers(0, 2 ** 31))
def test_gguf_truncated(gguf_bytes, tmp_path, cut):
    assert _load_gguf(tmp_path, gguf_bytes[:cut % len(gguf_bytes)]) is None


@_examples(120)
@given(muts=mutations, head=st.booleans())
def test_gguf_mutated(gguf_bytes, tmp_path, muts, head):
    """Mutations anywhere, or (half the cases) in the first 4 KB, where the metadata and tensor table live."""
    data = bytearray(gguf_bytes)
    for pos, val in muts:
        data[pos % (4096 if head else len(data))] = val
    _load_gguf(tmp_path, bytes(data))


# --- tokenizer and detokenizer -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tok():
    from edgeai.convert.tokenizer_build import make_tiny_tokenizer_json
    from edgeai.tokenizer import Tokenizer

    return Tokenizer(make_tiny_tokenizer_json(320), SMOLLM2_TEMPLATE, {"eos": "<|im_end|>"})


def _stream(tok, ids, skip=True):
    ds = tok.decode_stream(skip_special_tokens=skip)
    pieces = [ds.step(i) for i in ids] + [ds.flush()]
    return pieces


@_examples(300)
@given(text=st.text(max_size=200))
def test_encode_decode_round_trip(tok, text):
    """Byte-level BPE: any text (Hypothesis' text never holds lone surrogates) comes back exactly, whole and
    streamed token by token."""
    ids = tok.encode(text, add_special_tokens=False)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
    assert "".join(_stream(tok, ids, skip=False)) == text


@_examples(300)
@given(ids=st.lists(st.integers(0, 2 ** 31), max_size=60))
def test_detokenize_arbitrary_ids(tok, ids):
    """Any id sequence (invalid UTF-8 byte runs included) decodes to valid text; streaming it gives the same
    text and never half a character (every piece encodes as UTF-8)."""
    ids = [i % tok.vocab_size for i in ids]
    whole = tok.decode(ids, skip_special_tokens=True)
    whole.encode("utf-8")
    pieces = _stream(tok, ids)
    for p in pieces:
        p.encode("utf-8")
    assert "".join(pieces).replace("\ufffd", "") == whole.replace("\ufffd", "")


@_examples(300)
@given(data=st.binary(max_size=200))
def test_encode_arbitrary_bytes(tok, data):
    """Bytes decoded as a program would (errors='replace' or 'surrogateescape'): the first encodes and round-trips;
    the second holds lone surrogates, which raise a ValueError or TypeError, never anything else."""
    text = data.decode("utf-8", errors="replace")
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    escaped = data.decode("utf-8", errors="surrogateescape")
    try:
        assert tok.decode(tok.encode(escaped, add_special_tokens=False)) == escaped
    except (ValueError, TypeError):
        assert escaped != text
