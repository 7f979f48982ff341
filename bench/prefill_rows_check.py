"""Does a prompt position's result depend on the prefill chunk that computed it? The fact behind the exact
prefix reuse (csrc/prompt_cache.h: reusable_prefix).

Prefills one prompt with several --chunks sizes (prompt cache off), decodes greedily, and compares the bits of
the logits the sampler sees (after the last prefill chunk and at every decode step) with the first size's. With
int8 activations (q4/q8 folders) a chunk of >= 2 rows is expected to give identical bits whatever its size and
start, and a last chunk of 1 row (prompt length = 1 mod chunk) is expected to differ.

    python bench/prefill_rows_check.py [MODEL] [--chunks 128 17 6 2] [--new 12] [--threads 2]
"""
import argparse
import ctypes
import hashlib
import json

import numpy as np

import edgeai
from edgeai.ort_forward import OrtForward

PROMPT = ("You are Qwen, created by Alibaba Cloud. You are a helpful assistant. Explain how a hash map works, "
          "with an example in Python, and say when a list is better. ") * 2


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", nargs="?", default="qwen2.5-coder-0.5b")
    ap.add_argument("--chunks", type=int, nargs="+", default=[128, 17, 6, 2])
    ap.add_argument("--new", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    seen = []
    run = OrtForward.__call__

    def traced(self, batch, n_tokens, past_len, tokens_addr, logits_addr, kv_version, n_logits=1):
        run(self, batch, n_tokens, past_len, tokens_addr, logits_addr, kv_version, n_logits)
        buf = np.ctypeslib.as_array((ctypes.c_float * (batch * n_logits * self.vocab)).from_address(logits_addr))
        seen.append(hashlib.sha1(buf.tobytes()).hexdigest())

    OrtForward.__call__ = traced
    rows, first = [], None
    for chunk in args.chunks:
        with edgeai.LLM(args.model, threads=args.threads, prompt_cache=False, prefill_chunk=chunk) as llm:
            ids = llm.tokenizer.encode(PROMPT)
            del seen[:]
            g = llm.generate(ids, max_new_tokens=args.new, prompt_lookup=0)
            steps = seen[-len(g.token_ids):]  # the last prefill chunk's logits and each decode step's
        first = first or (steps, g.token_ids)
        last_rows = len(ids) % chunk or chunk
        rows.append(dict(chunk=chunk, prompt=len(ids), last_chunk_rows=last_rows,
                         identical_logits=sum(a == b for a, b in zip(steps, first[0])), steps=len(steps),
                         same_tokens=g.token_ids == first[1]))
        print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
