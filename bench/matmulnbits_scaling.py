"""What one decode step of a small quantized model costs in ONNX Runtime's MatMulNBits, and why.

Builds one graph of many independent MatMulNBits nodes with SmolLM2's gate/up shape (K=576, N=1536, block 32,
accuracy_level 4, random weights) and times them per node for 4- and 8-bit weights and 1, 2, 4, 8 rows:

  * with few nodes the weights stay in the last-level cache (the kernel's compute speed);
  * with enough nodes that the weights exceed it, every step streams them from memory, as a real decode
    step does (SmolLM2-135M at 4 bits is 80-110 MB of weights).

Read it as: per-node time with weights from memory divided by bytes = the bandwidth a decode step gets; the
cost of 2, 4 or 8 rows against 1 = what verifying several draft tokens in one step (speculative decoding)
would cost. Prints a table and the ratios.

--prefill adds what bounds a prompt's prefill: the compute speed of one 128-row product (weights in cache)
for the kernels ONNX Runtime offers on CPU: MatMulNBits with block 32 (the layout of GGUF's Q4_1/Q8_0, which
keeps the source exact), int8 weights with one scale per column (DynamicQuantizeMatMul: a faster kernel, but
not an exact form of block-scaled weights, and a second copy of them) and float32.

    python bench/matmulnbits_scaling.py [--threads 2] [--big-mb 110] [--prefill]
"""
import argparse
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

K, N, BLOCK = 576, 1536, 32


def session(bits: int, nodes: int, threads: int, rng) -> ort.InferenceSession:
    inits, graph_nodes, outputs = [], [], []
    for i in range(nodes):
        b = rng.integers(0, 256, (N, K // BLOCK, BLOCK * bits // 8), dtype=np.uint8)
        s = (rng.random((N, K // BLOCK), dtype=np.float32) * 0.01).astype(np.float32)
        inits += [numpy_helper.from_array(b, f"B{i}"), numpy_helper.from_array(s, f"S{i}")]
        graph_nodes.append(helper.make_node("MatMulNBits", ["x", f"B{i}", f"S{i}"], [f"y{i}"], domain="com.microsoft",
                                            K=K, N=N, bits=bits, block_size=BLOCK, accuracy_level=4))
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None))
    graph = helper.make_graph(graph_nodes, "matmulnbits", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                        ["M", K])], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def prefill_session(kind: str, threads: int, rng) -> ort.InferenceSession:
    """One K x N product of the given kind on a [M, K] input."""
    if kind.startswith("MatMulNBits"):
        bits = int(kind.split()[1][0])
        b = rng.integers(0, 256, (N, K // BLOCK, BLOCK * bits // 8), dtype=np.uint8)
        s = (rng.random((N, K // BLOCK), dtype=np.float32) * 0.01).astype(np.float32)
        inits = [numpy_helper.from_array(b, "B"), numpy_helper.from_array(s, "S")]
        node = helper.make_node("MatMulNBits", ["x", "B", "S"], ["y"], domain="com.microsoft", K=K, N=N, bits=bits,
                                block_size=BLOCK, accuracy_level=4)
    elif kind.startswith("DynamicQuantizeMatMul"):
        inits = [numpy_helper.from_array(rng.integers(-127, 128, (K, N), dtype=np.int8), "W"),
                 numpy_helper.from_array(np.full((N,), 0.01, np.float32), "S")]
        node = helper.make_node("DynamicQuantizeMatMul", ["x", "W", "S"], ["y"], domain="com.microsoft")
    else:
        inits = [numpy_helper.from_array(rng.standard_normal((K, N), dtype=np.float32), "W")]
        node = helper.make_node("MatMul", ["x", "W"], ["y"])
    graph = helper.make_graph([node], "prefill", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def prefill_table(threads: int, rng, rows: int = 128) -> None:
    print(f"\nprefill: one {rows} x {K} x {N} product, weights in cache, {threads} threads (best run)")
    for kind in ("MatMulNBits 4-bit block 32", "MatMulNBits 8-bit block 32", "DynamicQuantizeMatMul int8 per column",
                 "MatMul float32"):
        sess = prefill_session(kind, threads, rng)
        us = per_node_us(sess, rows, 1, rng)
        print(f"  {kind:40s} {us:8.0f} us  {2 * rows * K * N / (us * 1e-6) / 1e9:6.0f} GOPS")
        del sess  # one session at a time: an idle session's spinning threads would slow the next one


def per_node_us(sess, rows: int, nodes: int, rng, budget_s=1.5) -> float:
    x = rng.standard_normal((rows, K)).astype(np.float32)
    for _ in range(3):
        sess.run(None, {"x": x})
    best, spent = float("inf"), 0.0
    while spent < budget_s:
        t = time.perf_counter()
        sess.run(None, {"x": x})
        dt = time.perf_counter() - t
        best, spent = min(best, dt), spent + dt
    return 1e6 * best / nodes


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--big-mb", type=float, default=110, help="weights of the 'from memory' graph")
    ap.add_argument("--prefill", action="store_true", help="also time 128-row products (see above)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"MatMulNBits K={K} N={N} block {BLOCK}, accuracy_level 4, {args.threads} threads; us per node (best run)")
    print(f"{'bits':>4} {'weights':>14} {'MB/node':>8} {'M=1':>7} {'M=2':>7} {'M=4':>7} {'M=8':>7}  GB/s at M=1")
    for bits in (4, 8):
        node_mb = (N * K * bits / 8 + N * K // BLOCK * 4) / 2**20
        for label, nodes in (("in cache", 8), ("from memory", max(8, int(args.big_mb / node_mb)))):
            sess = session(bits, nodes, args.threads, rng)
            t = {m: per_node_us(sess, m, nodes, rng) for m in (1, 2, 4, 8)}
            print(f"{bits:4d} {label:>14} {node_mb:8.2f} " + " ".join(f"{t[m]:7.1f}" for m in (1, 2, 4, 8))
                  + f"  {node_mb * 2**20 / (t[1] * 1e-6) / 1e9:6.1f}   (M=2/M=1 x{t[2] / t[1]:.2f}, "
                  f"M=4/M=1 x{t[4] / t[1]:.2f})")
            del sess
    if args.prefill:
        prefill_table(args.threads, rng)


if __name__ == "__main__":
    main()
