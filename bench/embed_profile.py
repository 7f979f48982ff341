"""Where embedding time goes when a real documentation folder is indexed, and what int8 graphs would buy.

  python bench/embed_profile.py --docs DIR [--sample 96] [--rounds 3] [--variants fp32 dyn-int8 ...]

Part 1 (no model run): the folder is loaded and chunked exactly as `edgeai index` does (loaders, Sphinx refine,
Chunker.for_embedder) and the texts that would be embedded (`Chunk.embed_text`, deduplicated) are measured:
wordpieces per text against the model's max_length (is anything tokenized past it and cut?), the share of
heading lines, the overlap (tokens embedded beyond the documents' own paragraph tokens), and the padding of the
batches `Embedder.encode` would run (EMBED_BATCH writer batches, 64 x batch_size tokenizer slices,
length-sorted batches of batch_size).

Part 2: a random sample of those texts (seed 0) through graph variants of the same weights, interleaved in
rounds (order rotated each round), medians; cosine of each variant's vectors to the first variant's.
  fp32        the shipped graph (fused Attention / SkipLayerNormalization / BiasGelu contrib ops)
  plain       the same encoder in standard ONNX ops only (what the fused ops save)
  q8-nbits    dense layers as MatMulNBits 8-bit, block 32, int8 compute (embed_convert's q8)
  q4-nbits    dense layers as MatMulNBits 4-bit, block 32, asymmetric, int8 compute
  dyn-int8    onnxruntime.quantization.quantize_dynamic, per-channel int8 weights, MatMul only (Attention fp32)
  dyn-int8-keepdown   the same without the FFN down projections (their GELU input has the widest range)
Note: dynamic quantization scales activations per tensor, i.e. over the whole padded batch, so a text's vector
from a dyn-int8 graph depends on the other texts batched with it (not shippable as is: docs/indexing.md).
Speed figures need a quiet box: the load average is printed with them.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VARIANTS = ("fp32", "plain", "q8-nbits", "q4-nbits", "dyn-int8", "dyn-int8-keepdown")


def embed_texts(docs: Path, embedder) -> tuple:
    """(distinct embed texts in indexing order, paragraph tokens of the documents themselves)."""
    from edgeai.retrieval.chunker import Chunker
    from edgeai.retrieval.loaders import load_paths
    from edgeai.retrieval.sphinx import refine

    chunker = Chunker.for_embedder(embedder)
    texts, doc_tokens = [], 0
    for doc in map(refine, load_paths([docs])):
        texts += [c.embed_text for c in chunker.iter_split(doc)]
        paras = [doc.text[b.start:b.end] for b in doc.blocks if not b.level]
        doc_tokens += sum(embedder.count_tokens(paras)) if paras else 0
    return list(dict.fromkeys(texts)), len(texts), doc_tokens


def padding_share(lengths, batch_size: int) -> float:
    """Real tokens / padded tokens for the batches RAG.add + Embedder.encode would run over `lengths`."""
    from edgeai.retrieval.rag import EMBED_BATCH
    real = padded = 0
    for w in range(0, len(lengths), EMBED_BATCH):
        part = lengths[w:w + EMBED_BATCH]
        for a in range(0, len(part), 64 * batch_size):
            s = np.sort(part[a:a + 64 * batch_size])
            for b in range(0, len(s), batch_size):
                real += int(s[b:b + batch_size].sum())
                padded += int(s[b:b + batch_size].max()) * len(s[b:b + batch_size])
    return real / padded


def token_profile(texts, n_chunks, doc_tokens, embedder, batch_size) -> dict:
    full = np.array(embedder.count_tokens(texts)) + 2  # [CLS] ... [SEP], untruncated
    cut = np.minimum(full, embedder.max_length)
    heads = [t.split("\n", 1)[0] for t in texts if "\n" in t]
    head_tokens = int(sum(embedder.count_tokens(heads))) if heads else 0
    body = int(full.sum()) - 2 * len(texts) - head_tokens
    return {"chunks": n_chunks, "distinct_texts": len(texts), "tokens": int(cut.sum()),
            "tokens_mean": round(float(full.mean()), 1), "tokens_median": float(np.median(full)),
            "tokens_p99": float(np.percentile(full, 99)), "max_length": embedder.max_length,
            "texts_over_max_length": int((full > embedder.max_length).sum()),
            "tokens_cut_by_truncation": int((full - cut).sum()),
            "heading_token_share": round(head_tokens / cut.sum(), 3),
            "special_token_share": round(2 * len(texts) / cut.sum(), 3),
            "overlap_token_share": round(max(0, body - doc_tokens) / cut.sum(), 3),
            "real_token_share_of_padded": round(padding_share(cut, batch_size), 4)}


def build_variants(embedder, source: Path, names, out: Path) -> dict:
    """name -> .onnx path; the fp32 graph is the model folder's, the others are built from the Hugging Face
    weights in `source` (the folder `edgeai pull` downloaded them to)."""
    import onnx

    paths = {"fp32": embedder.model_dir / embedder.manifest.get("model_files", {}).get("fp32", "model.onnx")}
    need = [n for n in names if n != "fp32"]
    if not need:
        return paths
    from safetensors.numpy import load_file

    from edgeai.retrieval.bert_graph import BertConfig, build_bert_graph
    from edgeai.retrieval.embed_convert import _find_model_dir
    try:
        src = _find_model_dir(source)
    except FileNotFoundError as exc:
        raise SystemExit(f"variants other than fp32 need the model's source weights: {exc} (--source)")
    cfg = BertConfig.from_hf(json.loads((src / "config.json").read_text()))
    w = load_file(str(src / "model.safetensors"))
    for n in need:
        p = out / f"{n}.onnx"
        if n == "plain":
            onnx.save_model(build_bert_graph(cfg, w, fused=False), str(p))
        elif n == "q8-nbits":
            onnx.save_model(build_bert_graph(cfg, w, fused=True, q8=True), str(p))
        elif n == "q4-nbits":
            onnx.save_model(_nbits4(onnx.load(str(paths["fp32"]))), str(p))
        elif n.startswith("dyn-int8"):
            from onnxruntime.quantization import QuantType, quantize_dynamic
            m = onnx.load(str(paths["fp32"]), load_external_data=False)
            keep = [x.name for x in m.graph.node if x.op_type == "MatMul"
                    and any(i.startswith("ffn_out_w") for i in x.input)] if n.endswith("keepdown") else []
            quantize_dynamic(str(paths["fp32"]), str(p), per_channel=True, op_types_to_quantize=["MatMul"],
                             weight_type=QuantType.QInt8, nodes_to_exclude=keep,
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        else:
            raise SystemExit(f"unknown variant {n!r} (have {', '.join(VARIANTS)})")
        paths[n] = p
    return paths


def _nbits4(m):
    """Every MatMul with a constant weight -> MatMulNBits 4-bit (edgeai.convert.quantize's round-to-nearest)."""
    from onnx import helper, numpy_helper

    from edgeai.convert.quantize import quantize_rtn
    inits = {i.name: i for i in m.graph.initializer}
    nodes = []
    for node in m.graph.node:
        if node.op_type != "MatMul" or node.input[1] not in inits:
            nodes.append(node)
            continue
        W = numpy_helper.to_array(inits[node.input[1]])
        q = quantize_rtn(W.T, 4)
        base = node.input[1]
        m.graph.initializer.remove(inits[base])
        m.graph.initializer.extend([numpy_helper.from_array(q.packed_b(), base + "_q"),
                                    numpy_helper.from_array(q.scales, base + "_s"),
                                    numpy_helper.from_array(q.packed_zero_points(), base + "_z")])
        nodes.append(helper.make_node("MatMulNBits", [node.input[0], base + "_q", base + "_s", base + "_z"],
                                      list(node.output), name=node.name, domain="com.microsoft", K=W.shape[0],
                                      N=W.shape[1], bits=4, block_size=32, accuracy_level=4))
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return m


def time_variants(paths: dict, texts, embedder, rounds: int, batch_size: int, threads: int) -> list:
    import onnxruntime as ort
    encs = embedder.tokenizer.encode_batch(texts)  # truncated at max_length, as Embedder.encode does
    order = sorted(range(len(encs)), key=lambda j: len(encs[j].ids))
    n_tok = sum(len(e.ids) for e in encs)
    sessions = {}
    for n, p in paths.items():
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
        sessions[n] = ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])

    def run(sess):
        out = np.empty((len(texts), embedder.dims), np.float32)
        for a in range(0, len(order), batch_size):
            sel = [encs[j] for j in order[a:a + batch_size]]
            out[order[a:a + batch_size]] = embedder._run(sel, sess)
        return out

    names = list(paths)
    times = {n: [] for n in names}
    vecs = {}
    for r in range(rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            t = time.perf_counter()
            vecs[n] = run(sessions[n])
            times[n].append(time.perf_counter() - t)
    base = names[0]
    rows = []
    for n in names:
        med = statistics.median(times[n])
        cos = (vecs[n] * vecs[base]).sum(1)
        rows.append({"variant": n, "texts": len(texts), "tokens": n_tok, "seconds_median": round(med, 2),
                     "tokens_per_s": round(n_tok / med), "speed_vs_first": round(statistics.median(times[base]) / med, 3),
                     "cosine_min": round(float(cos.min()), 4), "cosine_mean": round(float(cos.mean()), 5),
                     "seconds_all": [round(x, 2) for x in times[n]]})
    return rows


def op_shares(graph: Path, texts, embedder, batch_size: int, threads: int) -> dict:
    """Kernel time per operator type (ONNX Runtime's profiler) for one pass of `texts` through `graph`."""
    import collections

    import onnxruntime as ort
    with tempfile.TemporaryDirectory() as td:
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
        so.enable_profiling, so.profile_file_prefix = True, str(Path(td) / "ort")
        sess = ort.InferenceSession(str(graph), so, providers=["CPUExecutionProvider"])
        encs = sorted(embedder.tokenizer.encode_batch(texts), key=lambda e: len(e.ids))
        for a in range(0, len(encs), batch_size):
            embedder._run(encs[a:a + batch_size], sess)
        events = json.loads(Path(sess.end_profiling()).read_text())
    per_op = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"]
    total = sum(per_op.values())
    return {op: round(us / total, 4) for op, us in per_op.most_common()}


def main(argv=None) -> int:
    from edgeai.retrieval.embedder import Embedder

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=Path, required=True, help="documentation folder, chunked as `edgeai index` does")
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--source", type=Path, default=None,
                    help="Hugging Face folder of the model's weights (default: where `edgeai pull MODEL` put them)")
    ap.add_argument("--sample", type=int, default=96, help="texts timed per variant (0: token profile only)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--variants", nargs="+", default=["fp32", "dyn-int8", "dyn-int8-keepdown", "q8-nbits"],
                    choices=VARIANTS)
    ap.add_argument("--ort-profile", action="store_true",
                    help="also report the fp32 graph's kernel time per operator type on the sample")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if not args.docs.is_dir():
        raise SystemExit(f"--docs {args.docs}: not a folder")
    emb = Embedder(args.model)
    t = time.perf_counter()
    texts, n_chunks, doc_tokens = embed_texts(args.docs, emb)
    prof = token_profile(texts, n_chunks, doc_tokens, emb, args.batch)
    prof["load_and_chunk_seconds"] = round(time.perf_counter() - t, 1)
    print(json.dumps(prof, indent=1))
    result = {"docs": str(args.docs), "profile": prof, "load_before": os.getloadavg()}
    if args.sample:
        sample = random.Random(0).sample(texts, min(args.sample, len(texts)))
        with tempfile.TemporaryDirectory() as td:
            from edgeai.pull import source_dir
            paths = build_variants(emb, args.source or source_dir(str(args.model)), args.variants, Path(td))
            rows = time_variants(paths, sample, emb, args.rounds, args.batch, args.threads)
            if args.ort_profile:
                result["fp32_op_shares"] = op_shares(paths["fp32"], sample, emb, args.batch, args.threads)
                print("fp32 kernel time by operator:", ", ".join(
                    f"{op} {100 * v:.1f}%" for op, v in result["fp32_op_shares"].items() if v >= 0.001))
        result["variants"] = rows
        print(f"{len(sample)} texts, {rows[0]['tokens']} tokens, {args.rounds} interleaved rounds, batch {args.batch},"
              f" load average before {result['load_before'][0]:.1f}, after {os.getloadavg()[0]:.1f}")
        print(f"{'variant':20} {'s (median)':>10} {'tokens/s':>9} {'x first':>8} {'cos min':>8} {'cos mean':>9}")
        for r in rows:
            print(f"{r['variant']:20} {r['seconds_median']:10.2f} {r['tokens_per_s']:9d} {r['speed_vs_first']:8.2f} "
                  f"{r['cosine_min']:8.4f} {r['cosine_mean']:9.5f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
