"""Model pipeline: read a source model, build an ONNX graph with a KV cache, quantize, write a model folder."""
