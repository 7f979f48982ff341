"""Model quality evaluation (perplexity on ONNX graphs built by edgeai.convert.builder)."""
from .perplexity import perplexity

__all__ = ["perplexity"]
