"""Where a model graph's time goes, per operator type, from ONNX Runtime's own profiler.

Drives the model folder's graph the way the engine does (KV buffers bound once as shared past/present,
prompt fed in chunks of --chunk tokens, then one token per step) with profiling on, and prints each operator
type's share of kernel time for the prefill and for the decode steps separately. The profiler adds a fixed
cost per node, so small nodes look dearer than they are: read shares, not absolute times, and compare graphs
under the same settings.

--split NAME counts the nodes whose name contains NAME apart: graphs converted since the builder names its
nodes after what they compute ("lm_head", "layers.3.qkv_proj", "layers.3.qkv_proj.block_sums",
"layers.3.attention"), so `--split lm_head --split block_sums` gives the LM head's and the Q4_1 offsets'
shares.

    python bench/profile_graph.py [MODEL] [--prompt 512] [--chunk 128] [--decode 64] [--threads 2] [--split NAME]
"""
import argparse
import collections
import json
import os

import numpy as np
import onnxruntime as ort

from edgeai.ort_forward import session_options
from edgeai.pull import resolve_model


def kv_session(folder, threads, context, profile=False):
    """(session, I/O binding, buffers to keep alive) with every layer's KV buffer bound as both past and present,
    as the engine binds them."""
    graph = json.loads((folder / "edgeai.json").read_text())["graph"]
    so = session_options(threads)
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(os.environ.get("TMPDIR", "/tmp"), "edgeai-profile")
    sess = ort.InferenceSession(str(folder / "model.onnx"), so, providers=["CPUExecutionProvider"])
    shape = [1, graph["num_kv_heads"], context, graph["head_dim"]]
    binding = sess.io_binding()
    kv = []
    for i in range(graph["num_layers"]):
        for kind in ("key", "value"):
            buf = np.zeros(shape, np.float32)
            kv.append(buf)
            binding.bind_input(f"past_{kind}_{i}", "cpu", 0, np.float32, shape, buf.ctypes.data)
            binding.bind_output(f"present_{kind}_{i}", "cpu", 0, np.float32, shape, buf.ctypes.data)
    logits = np.zeros((1, 1, graph["vocab_size"]), np.float32)
    binding.bind_output("logits", "cpu", 0, np.float32, list(logits.shape), logits.ctypes.data)
    return sess, binding, (kv, logits)


def step(sess, binding, ids, past):
    n = ids.shape[1]
    binding.bind_cpu_input("input_ids", np.ascontiguousarray(ids))
    binding.bind_cpu_input("seqlens_k", np.array([past + n - 1], np.int32))
    binding.bind_cpu_input("total_sequence_length", np.array([past + n], np.int32))
    sess.run_with_iobinding(binding)


def feed_prompt(sess, binding, ids, prompt, chunk):
    """The first `prompt` tokens of ids, `chunk` at a time, as the engine's prefill feeds them."""
    for pos in range(0, prompt, chunk):
        step(sess, binding, ids[:, pos:pos + chunk], pos)


def phase_shares(events, first_run, n_runs, split=()):
    """Kernel time per operator type (µs) and node count over runs first_run .. first_run+n_runs-1 (in the
    order they ran), each run being the span of one of the profiler's "model_run" events. Nodes whose name
    contains one of `split` are counted apart, as "OpType [name part]"."""
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
    spans = runs[first_run:first_run + n_runs]
    time_by, count_by = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and \
                any(a <= e["ts"] < b for a, b in spans):
            op = e["args"].get("op_name", "?")
            op += "".join(f" [{part}]" for part in split if part in e["name"])
            time_by[op] += e["dur"]
            count_by[op] += 1
    return time_by, count_by


def report(title, time_by, count_by, runs):
    total = sum(time_by.values())
    print(f"{title}: kernel time {total / runs / 1000:.2f} ms per run ({runs} runs)")
    for op, t in time_by.most_common():
        print(f"  {op:36s} {100 * t / total:5.1f}%   {count_by[op] // runs:4d} nodes per run")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default="smollm2-135m-q4")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--chunk", type=int, default=128)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--reps", type=int, default=2, help="prefills profiled (after one warm-up)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kv-length", type=int, default=4096,
                    help="KV buffer positions, as the engine's context_length (default 4096, edgeai.LLM's)")
    ap.add_argument("--split", action="append", default=[],
                    help="count nodes whose name contains this apart (e.g. lm_head); repeatable")
    args = ap.parse_args()

    folder = resolve_model(args.model)
    context = args.prompt + args.decode + 1
    sess, binding, _keep = kv_session(folder, args.threads, max(context, args.kv_length), profile=True)
    ids = np.random.default_rng(0).integers(100, 1000, (1, context)).astype(np.int64)

    for _ in range(1 + args.reps):  # the first is a warm-up: first-run allocations stay out of the figures
        feed_prompt(sess, binding, ids, args.prompt, args.chunk)
    for t in range(args.decode):
        step(sess, binding, ids[:, args.prompt + t:args.prompt + t + 1], args.prompt + t)
    path = sess.end_profiling()
    events = json.loads(open(path).read())
    os.remove(path)
    chunks = -(-args.prompt // args.chunk)
    report(f"prefill of {args.prompt} tokens in chunks of {args.chunk}",
           *phase_shares(events, chunks, chunks * args.reps, args.split), args.reps)
    report(f"decode, one token per step after {args.prompt}",
           *phase_shares(events, chunks * (args.reps + 1), args.decode, args.split), args.decode)


if __name__ == "__main__":
    main()
