#!/usr/bin/env python3
"""`edgeai eval fidelity` for an onnxruntime-genai model folder: its int4 build scored against edgeai's fp32
reference on the same tokens, with the same numbers (mean KL over the reference's top-k + rest bins, top-1
agreement, perplexity ratio; `edgeai.evaluate.fidelity.compare_logits`).

The genai folder's graph (model.onnx from its model builder) runs in plain ONNX Runtime with the session
options of its genai_config.json (the same kernels onnxruntime-genai runs), a chunk of tokens at a time on top
of its own KV cache, so logits for every position come out without holding them all. Run it with a Python
that has edgeai installed (ONNX Runtime is edgeai's own dependency; onnxruntime-genai is not needed).

    python bench/peers/genai_fidelity.py --reference REF.npz|FP32_FOLDER --candidate GENAI_DIR \\
        [--text /usr/share/common-licenses/GPL-3] [--max-tokens 2048] [--json OUT]

A saved reference (`edgeai eval fidelity ... --save-reference REF.npz`) carries its token ids; with an fp32
folder the text is tokenized with that folder's tokenizer.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np


class GenaiGraph:
    """The decoder graph of a genai folder: input_ids, attention_mask (and position_ids when the graph has
    it), past_key_values.N.key/value -> logits for every given position, present.N.key/value."""

    def __init__(self, folder, threads=None):
        import onnxruntime as ort

        folder = Path(folder)
        cfg = json.loads((folder / "genai_config.json").read_text())["model"]
        dec = cfg["decoder"]
        so = ort.SessionOptions()
        so.log_severity_level = 3
        opts = dec.get("session_options") or {}
        so.intra_op_num_threads = threads or opts.get("intra_op_num_threads", 0)
        so.inter_op_num_threads = opts.get("inter_op_num_threads", 0)
        self.sess = ort.InferenceSession(str(folder / dec["filename"]), so, providers=["CPUExecutionProvider"])
        self.inputs = {i.name: i for i in self.sess.get_inputs()}
        self.outputs = [o.name for o in self.sess.get_outputs()]
        self.kv = dec["num_key_value_heads"], dec["head_size"]
        self.past_names = [n for n in self.inputs if n.startswith("past_key_values.")]
        self.vocab = cfg.get("vocab_size")
        out = dict(zip(self.outputs, [o.shape for o in self.sess.get_outputs()]))
        if len(out.get("logits") or []) != 3:
            raise ValueError(f"{folder}: the graph's logits output is not [batch, sequence, vocab]")

    def chunks(self, ids, chunk=256):
        """Yield (start, float32 logits [c, vocab]) for ids, chunk by chunk on top of the cache."""
        ids = np.asarray(ids, np.int64)
        past = {n: np.zeros((1, *self.kv[:1], 0, self.kv[1]), np.float32) for n in self.past_names}
        done = 0
        while done < len(ids):
            piece = ids[done:done + chunk]
            total = done + len(piece)
            feeds = {"input_ids": piece[None], "attention_mask": np.ones((1, total), np.int64), **past}
            if "position_ids" in self.inputs:
                feeds["position_ids"] = np.arange(done, total, dtype=np.int64)[None]
            res = dict(zip(self.outputs, self.sess.run(None, feeds)))
            past = {n: res[n.replace("past_key_values.", "present.")] for n in self.past_names}
            yield done, np.asarray(res["logits"][0], np.float32)
            done = total


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", required=True, help="saved reference .npz or an edgeai fp32 model folder")
    ap.add_argument("--candidate", required=True, help="onnxruntime-genai model folder (genai_config.json)")
    ap.add_argument("--text", default="/usr/share/common-licenses/GPL-3")
    ap.add_argument("--max-tokens", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=None, help="default: the genai config's intra-op threads")
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--json")
    a = ap.parse_args(argv)

    from edgeai.evaluate.fidelity import (Reference, _scored_tokens, compare_logits, ensure_all_logits)
    from edgeai.evaluate.report import run_meta

    cand = Path(a.candidate)
    if not (cand / "genai_config.json").is_file():
        raise SystemExit(f"{cand} is not an onnxruntime-genai model folder (no genai_config.json)")
    ref_path = Path(a.reference)
    if ref_path.suffix == ".npz":
        if not ref_path.is_file():
            raise SystemExit(f"reference file not found: {ref_path}")
        ref = Reference.load(ref_path)
    else:
        folder = ensure_all_logits(ref_path)
        text = Path(a.text).read_text(encoding="utf-8", errors="replace")
        ref = Reference.from_model(folder, _scored_tokens(folder, text, None, a.max_tokens), label=str(ref_path))
    g = GenaiGraph(cand, a.threads)
    if g.vocab and ref.meta.get("vocab") and g.vocab != ref.meta["vocab"]:
        raise SystemExit(f"vocabulary sizes differ: reference {ref.meta['vocab']}, {cand} {g.vocab}")
    r = compare_logits(ref, g.chunks(ref.ids, a.chunk))
    out = {"meta": run_meta(command="genai_fidelity"), "reference": {"source": str(ref_path), **ref.meta},
           "candidate": {"model": str(cand), "runtime": "onnxruntime (the genai folder's graph)"}, **r}
    print(f"{cand.name} vs {ref.meta.get('model')}: {r['tokens_scored']} tokens, mean KL {r['kl']['mean']:.5f}, "
          f"top-1 agreement {r['top1_agreement']:.2%}, perplexity {r['ppl_candidate']:.4f} / "
          f"{r['ppl_reference']:.4f} = x{r['ppl_ratio']:.4f}")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
