"""edgeai: small language models and local retrieval, fully offline.

Heavy pieces (ONNX Runtime sessions, the converter) load lazily, so `import edgeai` stays fast.
"""
from ._core import __version__  # one source: pyproject.toml's version, compiled into the core by setup.py
from .sampling import Sampler, SamplingParams

_LAZY = {
    "LLM": ("edgeai.llm", "LLM"),
    "Embedder": ("edgeai.retrieval.embedder", "Embedder"),
    "VectorIndex": ("edgeai.retrieval.index", "VectorIndex"),
    "RAG": ("edgeai.retrieval.rag", "RAG"),
    "convert": ("edgeai.convert.pipeline", "convert"),
    "pull": ("edgeai.pull", "pull"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'edgeai' has no attribute {name!r}")


__all__ = ["Sampler", "SamplingParams", "__version__", *_LAZY]
