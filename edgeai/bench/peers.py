"""Engines a benchmark child process can drive: edgeai itself and peers (llama.cpp through llama-cpp-python,
ONNX Runtime GenAI, optimum's ORTModelForCausalLM).

This module is imported inside the child (`runner.py`), which may run under a peer's own Python that does not
have edgeai installed: keep it stdlib-only at import time and import each engine inside its adapter.

Every adapter: `Engine(model, threads)` loads the model; `generate(ids, n)` greedily decodes exactly `n` new
tokens after the prompt ids (EOS suppressed where the engine allows) and returns
(token ids, seconds from the call to each new token, extra timings dict or None).
"""
from __future__ import annotations

import importlib.util
import time

KINDS = ("edgeai", "llamacpp", "genai", "optimum")
IMPORTS = {"edgeai": "edgeai", "llamacpp": "llama_cpp", "genai": "onnxruntime_genai", "optimum": "optimum.onnxruntime"}
DESCRIPTIONS = {"edgeai": "edgeai", "llamacpp": "llama.cpp (llama-cpp-python)", "genai": "ONNX Runtime GenAI",
                "optimum": "optimum ORTModelForCausalLM"}


def installed(kind: str) -> bool:
    name = IMPORTS[kind]
    try:
        return importlib.util.find_spec(name.split(".")[0]) is not None and (
            "." not in name or importlib.util.find_spec(name) is not None)
    except (ImportError, ValueError):
        return False


class EdgeAI:
    def __init__(self, model, threads, **options):
        import edgeai

        # options: LLM keyword arguments under test (prompt_lookup, prefill_chunk, ...)
        self.llm = edgeai.LLM(model, threads=threads, prompt_cache=False, **options)
        self.load_s = getattr(self.llm, "load_time_s", None)
        # a fixed number of new tokens: EOS gets a large negative logit bias (greedy stays greedy otherwise)
        self.no_eos = {int(t): -1e4 for t in getattr(self.llm, "eos_token_ids", []) or []}
        self.version = getattr(edgeai, "__version__", None)

    def generate(self, ids, n):
        t0 = time.perf_counter()
        g = self.llm.generate(list(ids), max_new_tokens=n, temperature=0.0, logit_bias=dict(self.no_eos),
                              use_prompt_cache=False)
        wall = time.perf_counter() - t0
        tm = dict(getattr(g, "timings", None) or {})
        toks = list(g.token_ids)
        ttft = tm.get("ttft_s")
        if ttft is None:
            ttft = wall / max(1, len(toks))
        times = [ttft]
        if len(toks) > 1:  # only the first and last times are used
            dec = tm.get("decode_s")
            times.append(ttft + dec if dec is not None else wall)
        tm["finish_reason"] = getattr(g, "finish_reason", None)
        tm["wall_s"] = wall
        return toks, times, tm

    def close(self):
        close = getattr(self.llm, "close", None)
        if close:
            close()


class LlamaCpp:
    def __init__(self, model, threads):
        import llama_cpp

        self.llm = llama_cpp.Llama(model_path=str(model), n_threads=threads, n_threads_batch=threads, n_ctx=2048,
                                   n_batch=512, n_ubatch=512, verbose=False, seed=0)
        self.version = getattr(llama_cpp, "__version__", None)

    def generate(self, ids, n):
        self.llm.reset()  # no prefix reuse: every run prefills fully
        out, times = [], []
        t0 = time.perf_counter()
        for tok in self.llm.generate(list(ids), top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0,
                                     reset=True):
            times.append(time.perf_counter() - t0)
            out.append(int(tok))
            if len(out) >= n:
                break
        return out, times, None


class Genai:
    def __init__(self, model, threads):
        import onnxruntime_genai as og

        self.og = og
        cfg = og.Config(str(model))
        cfg.clear_providers()
        self.model = og.Model(cfg)
        self.version = getattr(og, "__version__", None)

    def generate(self, ids, n):
        og = self.og
        p = og.GeneratorParams(self.model)
        p.set_search_options(do_sample=False, max_length=len(ids) + n, min_length=len(ids) + n, batch_size=1)
        gen = og.Generator(self.model, p)
        out, times = [], []
        t0 = time.perf_counter()
        gen.append_tokens(list(ids))
        while len(out) < n:
            gen.generate_next_token()
            out.append(int(gen.get_next_tokens()[0]))
            times.append(time.perf_counter() - t0)
        return out, times, None


class Optimum:
    def __init__(self, model, threads):
        import onnxruntime as ort
        from optimum.onnxruntime import ORTModelForCausalLM

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        self.model = ORTModelForCausalLM.from_pretrained(str(model), use_cache=True, session_options=so,
                                                         provider="CPUExecutionProvider")
        self.version = ort.__version__

    def generate(self, ids, n):
        import torch

        class Stream:  # put() gets the prompt first, then each new token
            def __init__(self):
                self.t0, self.times, self.first = time.perf_counter(), [], True

            def put(self, v):
                if self.first:
                    self.first = False
                else:
                    self.times.append(time.perf_counter() - self.t0)

            def end(self):
                pass

        x = torch.tensor([list(ids)], dtype=torch.long)
        st = Stream()
        with torch.inference_mode():
            y = self.model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=n,
                                    min_new_tokens=n, do_sample=False, num_beams=1, streamer=st,
                                    pad_token_id=0)
        return [int(t) for t in y[0, len(ids):]], st.times, None


ENGINES = {"edgeai": EdgeAI, "llamacpp": LlamaCpp, "genai": Genai, "optimum": Optimum}
