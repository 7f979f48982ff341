"""Bytes a decoder reads per generated token: the weights of every matrix product (and one embedding row),
from an ONNX graph or a GGUF file, plus the KV cache at a given context length. Divided into the measured
read bandwidth this gives the memory-bandwidth bound on decode speed."""
from __future__ import annotations

from pathlib import Path

_MATMUL_OPS = {"MatMul", "Gemm", "MatMulNBits", "MatMulInteger", "DynamicQuantizeMatMul", "FusedMatMul",
               "MatMulIntegerToFloat", "QLinearMatMul", "QMoE"}
_GATHER_OPS = {"Gather", "GatherBlockQuantized"}
_PASS_OPS = {"Transpose", "Cast", "DequantizeLinear", "Reshape", "Identity"}


def _onnx_init_bytes(model):
    from onnx import helper

    sizes, dims = {}, {}
    for t in model.graph.initializer:
        ext = {e.key: e.value for e in t.external_data}
        if "length" in ext:
            n = int(ext["length"])
        elif t.raw_data:
            n = len(t.raw_data)
        else:
            import numpy as np

            count = int(np.prod(t.dims)) if len(t.dims) else 1
            n = count * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        sizes[t.name], dims[t.name] = n, list(t.dims)
    return sizes, dims


def onnx_weight_bytes_per_token(onnx_path) -> dict:
    """Bytes of initializers one decode step reads: every initializer feeding a matrix product (through
    Transpose/Cast/DequantizeLinear too), once each, plus one row of each gathered table that no matrix
    product reads whole."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    sizes, dims = _onnx_init_bytes(model)
    producer = {o: n for n in model.graph.node for o in n.output}

    def sources(name, depth=0):
        if name in sizes:
            return {name}
        n = producer.get(name)
        if n is None or depth > 3 or n.op_type not in _PASS_OPS:
            return set()
        out = set()
        for i in (n.input if n.op_type == "DequantizeLinear" else n.input[:1]):  # not Reshape's shape
            out |= sources(i, depth + 1)
        return out

    mm, gathered = set(), set()
    for n in model.graph.node:
        if n.op_type in _MATMUL_OPS:
            for i in n.input:
                mm |= sources(i)
        elif n.op_type in _GATHER_OPS and n.input and n.input[0] in sizes:
            gathered.add(n.input[0])
            if n.op_type == "GatherBlockQuantized":
                gathered |= {i for i in n.input[1:] if i in sizes}
    rows = sum(sizes[g] // max(1, dims[g][0] if dims[g] else 1) for g in gathered - mm)
    total = sum(sizes.values())
    return {"matmul_bytes": sum(sizes[i] for i in mm), "gather_row_bytes": rows,
            "bytes_per_token": sum(sizes[i] for i in mm) + rows, "all_initializer_bytes": total}


def gguf_weight_bytes_per_token(path) -> dict:
    from gguf import GGUFReader

    r = GGUFReader(str(path))
    sizes = {t.name: int(t.n_bytes) for t in r.tensors}
    emb = sizes.get("token_embd.weight", 0)
    tied = "output.weight" not in sizes
    rows = 0
    if not tied and emb:
        t = next(t for t in r.tensors if t.name == "token_embd.weight")
        rows = emb // max(1, int(t.shape[-1]))
    per = sum(sizes.values()) - (0 if tied else emb) + rows
    return {"bytes_per_token": per, "all_initializer_bytes": sum(sizes.values()), "tied_embedding": tied}


def weight_bytes_per_token(cfg) -> dict | None:
    try:
        p = Path(cfg.model)
        if p.suffix == ".gguf":
            return gguf_weight_bytes_per_token(p)
        onnx_path = p / "model.onnx" if p.is_dir() else p
        if not onnx_path.exists():
            cands = sorted(p.glob("*.onnx")) if p.is_dir() else []
            if not cands:
                return None
            onnx_path = cands[0]
        return onnx_weight_bytes_per_token(onnx_path)
    except Exception as exc:  # a peer format we cannot read: no bound for it
        return {"error": f"{type(exc).__name__}: {exc}"}


def model_size_bytes(path) -> int:
    """Weight files only (.gguf, .onnx + external data, .safetensors, .bin); tokenizer files excluded."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    exts = (".gguf", ".onnx", ".data", ".onnx_data", ".safetensors", ".bin")
    return sum(f.stat().st_size for f in p.iterdir() if f.is_file() and f.name.endswith(exts))


def kv_bytes_per_position(arch: dict, dtype_bytes=4) -> int:
    return 2 * arch["num_layers"] * arch["num_kv_heads"] * arch["head_dim"] * dtype_bytes


