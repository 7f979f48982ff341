"""edgeai: small language models and local retrieval, fully offline.

Heavy pieces (ONNX Runtime sessions, the converter) load lazily, so `import edgeai` stays fast.
"""
from .sampling import Sampler, SamplingParams

__version__ = "0.1.0"

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
