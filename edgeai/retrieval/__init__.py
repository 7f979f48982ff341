"""Local retrieval: embeddings, a persistent HNSW index, document loading and chunking, RAG.

Names are imported lazily so `import edgeai.retrieval` stays cheap (onnxruntime/hnswlib load on first use).
"""
_EXPORTS = {
    "Embedder": "embedder", "VectorIndex": "index", "Hit": "index", "Chunker": "chunker", "Chunk": "chunker",
    "Document": "loaders", "load_paths": "loaders", "load_file": "loaders", "DocStore": "docstore",
    "RAG": "rag", "Answer": "rag", "build_corpus": "pydoc_corpus",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
