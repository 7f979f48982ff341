"""`RAG.add` streams: chunks are embedded and written EMBED_BATCH at a time, a file spanning several batches is
still replaced in one transaction, a failure rolls back only the file being written (store and index), and the
built index does not depend on the batch size or the run."""
import numpy as np
import pytest

from edgeai.retrieval import rag as rag_mod
from edgeai.retrieval.chunker import Chunker
from edgeai.retrieval.embedder import Embedder
from edgeai.retrieval.index import VectorIndex
from edgeai.retrieval.loaders import Document, parse_plain
from edgeai.retrieval.rag import INDEX_FILE, RAG

WORDS = "heap queue file read write open socket thread lock parse json csv path string bytes encode".split()


def _corpus(folder, seed=0, files=6, paragraphs=9):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for f in range(files):
        parts = [f"# Page {f}"]
        for p in range(paragraphs):
            parts.append(f"## Part {p}\n\n" + " ".join(rng.choice(WORDS, rng.integers(8, 30))) + ".")
        (folder / f"p{f}.md").write_text("\n\n".join(parts) + "\n")
    return folder


def _contents(rag):
    ids = sorted(rag.store.chunk_ids())
    chunks = rag.store.get_chunks(ids)
    vecs = {i: v for ids_, _, vs in rag.store.vectors() for i, v in zip(ids_, vs)}
    return [(i, chunks[i]["text"], chunks[i]["section"]) for i in ids], vecs


def _index_matches_store(rag):
    want = {i: v for ids, _, vs in rag.store.vectors() for i, v in zip(ids, vs)}
    assert set(rag.index.ids()) == set(want)
    for i, v in want.items():
        assert np.allclose(rag.index.get_vector(i), v / np.linalg.norm(v), atol=1e-5)


def test_batch_size_does_not_change_what_is_indexed(tiny_embed_model, tmp_path, monkeypatch):
    docs = _corpus(tmp_path / "docs")
    emb = Embedder(tiny_embed_model)
    whole = RAG(None, emb, tmp_path / "whole")
    whole.add([docs])
    monkeypatch.setattr(rag_mod, "EMBED_BATCH", 4)  # files now span several batches, batches span files
    small = RAG(None, Embedder(tiny_embed_model), tmp_path / "small")
    stats = small.add([docs])
    (a, va), (b, vb) = _contents(whole), _contents(small)
    assert a == b and stats["chunks"] == len(b) > 4 * 6
    assert all(np.allclose(va[i], vb[i], atol=1e-5) for i in va)
    _index_matches_store(small)


def test_same_corpus_gives_the_same_index_file(tiny_embed_model, tmp_path, monkeypatch):
    """Determinism of the built index: two builds of one corpus (fresh embedders, no shared cache) write
    byte-identical index files."""
    monkeypatch.setattr(rag_mod, "EMBED_BATCH", 16)
    docs = _corpus(tmp_path / "docs")
    for name in ("one", "two"):
        RAG(None, Embedder(tiny_embed_model), tmp_path / name).add([docs])
    assert (tmp_path / "one" / INDEX_FILE).read_bytes() == (tmp_path / "two" / INDEX_FILE).read_bytes()


def test_failure_rolls_back_only_the_open_file(tiny_embed_model, tmp_path, monkeypatch):
    docs = _corpus(tmp_path / "docs", files=3)
    emb = Embedder(tiny_embed_model)
    rag = RAG(None, emb, tmp_path / "idx")
    rag.add([docs])
    before, _ = _contents(rag)
    gen = rag.store.generation()
    _corpus(tmp_path / "docs", seed=1, files=3)  # every file changes: same chunk ids, new text
    monkeypatch.setattr(rag_mod, "EMBED_BATCH", 4)
    calls = {"n": 0}
    real = Embedder.encode

    def failing(self, texts, **kw):
        calls["n"] += all(t.startswith("Page 1") for t in texts)
        if calls["n"] == 2:  # the second batch of only p1.md's chunks: p0.md is done, p1.md is open
            raise RuntimeError("embedding failed")
        return real(self, texts, **kw)

    monkeypatch.setattr(Embedder, "encode", failing)
    with pytest.raises(RuntimeError, match="embedding failed"):
        rag.add([docs])
    after, _ = _contents(rag)
    old = {p: [c for c in before if c[0].startswith(str((docs / p).resolve()) + "#")] for p in ("p0.md", "p1.md", "p2.md")}
    new = {p: [c for c in after if c[0].startswith(str((docs / p).resolve()) + "#")] for p in ("p0.md", "p1.md", "p2.md")}
    assert new["p0.md"] != old["p0.md"]                       # finished before the failure: kept
    assert new["p1.md"] == old["p1.md"] and new["p2.md"] == old["p2.md"]  # open / not reached: as before
    assert rag.store.generation() == gen + 1
    _index_matches_store(rag)  # the index in memory follows the store
    on_disk = VectorIndex.load(tmp_path / "idx" / INDEX_FILE)  # and the file was saved before raising
    assert on_disk.stamp["store_generation"] == rag.store.generation() and len(on_disk) == rag.store.count()
    monkeypatch.setattr(Embedder, "encode", real)
    stats = rag.add([docs])  # the rest is picked up by the next add
    assert stats["updated"] == 2 and stats["unchanged"] == 1
    _index_matches_store(rag)


def test_store_transaction_is_exclusive(tmp_path):
    from edgeai.retrieval.docstore import DocStore

    store = DocStore(tmp_path / "s.sqlite")
    store.begin_file("a")
    with pytest.raises(RuntimeError, match="still being written"):
        store.begin_file("b")
    with pytest.raises(RuntimeError, match="outside begin_file"):
        store.add_chunks("b", [], np.zeros((0, 4), np.float32))
    store.add_chunks("a", [{"id": "a#0", "section": ["S"], "start": 0, "end": 1, "text": "x"}],
                     np.ones((1, 4), np.float32))
    store.rollback_file()
    assert store.count() == 0 and store.files() == []
    store.replace_file("a", "d", 1, [{"id": "a#0", "section": [], "start": 0, "end": 1, "text": "x"}],
                       np.ones((1, 4), np.float32))
    assert store.count() == 1 and store.file_digest("a") == "d"


def test_chunks_are_made_lazily_and_capped_in_characters():
    # Runs without spaces are few tokens per character (one [UNK] per long word): without a character cap,
    # the token budget would pack many 4000-character blocks into one chunk.
    text = "\n\n".join("x" * 3000 for _ in range(12))
    doc = Document("f.txt", text, parse_plain(text))
    ch = Chunker(max_tokens=200, overlap_tokens=40, count_tokens=lambda ts: [1] * len(ts))
    it = ch.iter_split(doc)
    first = next(it)  # a generator: the first chunk comes before the others are made
    chunks = [first] + list(it)
    assert max(len(c.text) for c in chunks) <= ch.max_chars and len(chunks) == 12
    assert [c.text for c in chunks] == [c.text for c in ch.split(doc)]


def test_files_from_an_older_extraction_are_rechunked(tiny_embed_model, tmp_path, monkeypatch):
    """An index built by an older loader/chunker is re-chunked when its files are added again, even though the
    files did not change; the store records the new setting only once every file it holds has been redone."""
    docs = _corpus(tmp_path / "docs", files=3)
    rag = RAG(None, Embedder(tiny_embed_model), tmp_path / "ix")
    assert rag.add([docs])["added"] == 3
    current = rag.chunking_id()
    assert rag.store.get_meta("chunking") == current
    assert rag.add([docs])["unchanged"] == 3  # same setting: nothing redone

    rag.store.set_meta("chunking", "extract 1; older")
    assert rag.add([docs / "p0.md"])["updated"] == 1  # one file redone: the others are still old
    assert rag.store.get_meta("chunking") == "extract 1; older"
    stats = rag.add([docs])
    assert stats["updated"] == 3 and stats["unchanged"] == 0
    assert rag.store.get_meta("chunking") == current
    assert rag.add([docs])["unchanged"] == 3
    _index_matches_store(rag)

    # A changed chunker setting is a different chunking too.
    other = RAG(None, Embedder(tiny_embed_model), tmp_path / "ix", chunker=Chunker(max_tokens=64, overlap_tokens=8))
    assert other.chunking_id() != current and other.add([docs])["updated"] == 3


def test_capacity_grows_boundedly_and_does_not_change_the_saved_file(tmp_path):
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((3000, 8)).astype(np.float32)
    small, large = VectorIndex(8, capacity=16), VectorIndex(8, capacity=5000)
    for a in range(0, len(vecs), 100):
        ids = [f"v{i}" for i in range(a, a + 100)]
        small.add(vecs[a:a + 100], ids)
        large.add(vecs[a:a + 100], ids)
        assert small._index.get_max_elements() <= max(16, int(1.5 * (a + 100)) + 100)
    small.delete(["v3", "v7"])
    large.delete(["v3", "v7"])
    small.save(tmp_path / "small.vidx")
    large.save(tmp_path / "large.vidx")
    assert (tmp_path / "small.vidx").read_bytes() == (tmp_path / "large.vidx").read_bytes()
    again = VectorIndex.load(tmp_path / "small.vidx")
    again.save(tmp_path / "again.vidx")
    assert (tmp_path / "again.vidx").read_bytes() == (tmp_path / "small.vidx").read_bytes()


def test_add_hashes_while_streaming_and_skips_unchanged_files_unparsed(tiny_embed_model, tmp_path, monkeypatch):
    import hashlib

    from edgeai.retrieval import loaders

    docs = _corpus(tmp_path / "docs", files=3)
    rag = RAG(None, Embedder(tiny_embed_model), tmp_path / "idx")
    rag.add([docs])
    for f in sorted(docs.iterdir()):
        assert rag.store.file_digest(str(f.resolve())) == hashlib.sha256(f.read_bytes()).hexdigest()

    def no_parse(text):
        raise AssertionError("an unchanged file was parsed")
        yield

    monkeypatch.setattr(loaders, "_markdown_blocks", no_parse)
    assert rag.add([docs])["unchanged"] == 3


def test_a_read_failing_inside_a_streamed_file_rolls_back_only_that_file(tiny_embed_model, tmp_path, monkeypatch):
    """The file's text is read while its chunks are written (several batches here): a read error part-way
    through rolls back that file alone, in the store and in the index."""
    from edgeai.retrieval import loaders

    docs = _corpus(tmp_path / "docs", files=3, paragraphs=120)
    rag = RAG(None, Embedder(tiny_embed_model), tmp_path / "idx")
    rag.add([docs])
    before, _ = _contents(rag)
    _corpus(tmp_path / "docs", seed=1, files=3, paragraphs=120)
    monkeypatch.setattr(rag_mod, "EMBED_BATCH", 8)
    monkeypatch.setattr(loaders, "READ_BYTES", 200)
    real = loaders._pieces

    def failing(path):
        for i, piece in enumerate(real(path)):
            if path.name == "p1.md" and i == 8:
                raise OSError(5, "Input/output error")
            yield piece

    monkeypatch.setattr(loaders, "_pieces", failing)
    with pytest.raises(OSError, match="Input/output error"):
        rag.add([docs])
    after, _ = _contents(rag)

    def of(rows, name):
        return [c for c in rows if c[0].startswith(str((docs / name).resolve()) + "#")]

    assert of(after, "p0.md") != of(before, "p0.md")  # finished before the failure: kept
    assert of(after, "p1.md") == of(before, "p1.md") and of(after, "p2.md") == of(before, "p2.md")
    _index_matches_store(rag)
