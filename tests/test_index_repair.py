"""An add killed between the store's commit and the index save leaves an index file older than the store: the
next open rebuilds it from the store once and saves it, and later opens load it as it is."""
import warnings

import numpy as np
import pytest

from edgeai.retrieval.embedder import Embedder
from edgeai.retrieval.index import VectorIndex
from edgeai.retrieval.rag import INDEX_FILE, RAG


def _open(emb, folder):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        rag = RAG(None, emb, folder)
    return rag, [str(w.message) for w in rec if "rebuilding" in str(w.message)]


def test_stale_index_is_repaired_once(tiny_embed_model, tmp_path, monkeypatch):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# Heap\n\nheapq push and pop\n\n# Files\n\nopen read write\n")
    emb = Embedder(tiny_embed_model)
    RAG(None, emb, tmp_path / "idx").add([docs])
    # The same paragraphs with other words: the same chunk ids, new vectors (a count or id check cannot see it).
    (docs / "a.md").write_text("# Heap\n\nsorted list of tuples\n\n# Files\n\ncsv json path\n")
    monkeypatch.setattr(RAG, "save", lambda self: None)  # the kill: the store committed, the save never ran
    RAG(None, emb, tmp_path / "idx").add([docs])
    monkeypatch.undo()
    rag, rebuilt = _open(emb, tmp_path / "idx")
    assert len(rebuilt) == 1 and "older than" in rebuilt[0]
    on_disk = VectorIndex.load(tmp_path / "idx" / INDEX_FILE)
    for ids, _, vecs in rag.store.vectors():
        for i, v in zip(ids, vecs):
            assert np.allclose(on_disk.get_vector(i), v / np.linalg.norm(v), atol=1e-5)
    assert _open(emb, tmp_path / "idx")[1] == []  # repaired on disk: no rebuild on the next open
