"""The HTTP application: OpenAI-compatible endpoints plus edgeai's own (ask, feedback, health, metrics).

Built on Starlette (ASGI); uvicorn serves it (edgeai/server/run.py). Every generation goes through the
scheduler (bounded queue, deadline, cancellation), and every request ends as one row of the request log,
written before the response's last bytes leave.
"""
from __future__ import annotations

import asyncio
import base64
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

from ..retrieval.rag import REFUSAL, STOP, chat_token_ids, penalty_kwargs, plain_copy
from .cache import OutputCache, cache_key
from .errors import APIError, bad_param, unknown_model
from .logprobs import token_bytes, token_text
from .metrics import server_metrics
from .params import GenRequest, parse_chat, parse_completion
from .requestlog import RATING_MAX, RATING_MIN, RequestLog
from .scheduler import Executor, Job, Scheduler

MAX_EMBED_INPUTS = 256
DISCONNECT_POLL_S = 0.1  # a non-streaming request checks this often whether its client is still there
ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "completion", "/v1/embeddings": "embeddings",
             "/v1/ask": "ask", "/v1/feedback": "feedback", "/v1/models": "models"}


@dataclass
class ServerConfig:
    api_key: Optional[str] = None
    max_body_bytes: int = 2 << 20
    max_queue: int = 16
    timeout_s: float = 300.0
    cache_entries: int = 0
    log_path: Optional[str] = None
    log_text: bool = False


@dataclass
class Choice:
    """One finished (or stopped) generation, as the response and the cache need it."""
    index: int
    text: str = ""
    token_ids: List[int] = field(default_factory=list)
    finish_reason: Optional[str] = None
    prompt_tokens: int = 0
    ttft_s: Optional[float] = None
    decode_tokens_per_s: Optional[float] = None
    logprobs: Optional[list] = None  # [(token id, logprob, [(id, logprob)])]


def _json_error(exc: APIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _read_json(request: Request):
    body = await request.body()
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None


class BodyLimit:
    """ASGI middleware: 413 for a request body over the limit, by Content-Length or as it streams in.

    The body is read in full (it is small: JSON) before the app runs, so an oversized chunked upload is
    refused before any handler sees it; the app then reads the body from memory, and later receive()
    calls (disconnect checks) go to the server as usual."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD"):
            return await self.app(scope, receive, send)
        too_big = _json_error(APIError(413, f"the request body is larger than the server's limit of {self.limit} "
                                            f"bytes", code="request_too_large"))
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await too_big(scope, receive, send)
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunks.append(msg.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await too_big(scope, receive, send)
            if not msg.get("more_body"):
                break
        pending = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay():
            return pending.pop() if pending else await receive()

        await self.app(scope, replay, send)


class EdgeServer:
    """State shared by the endpoints: models, scheduler, log, cache, metrics."""

    def __init__(self, llms: dict, config: ServerConfig, embedders: Optional[dict] = None, rag=None,
                 rag_model: Optional[str] = None):
        if not llms and not embedders:
            raise ValueError("nothing to serve: give at least one --model or --embedder")
        self.llms, self.embedders, self.config = llms, embedders or {}, config
        self.rag, self.rag_model = rag, rag_model
        self.metrics = server_metrics()
        self.scheduler = Scheduler({k: Executor(v.llm) for k, v in llms.items()}, config.max_queue,
                                   on_depth=lambda d: self.metrics.set("edgeai_queue_depth", d))
        self.metrics.set("edgeai_queue_depth", 0)
        self.metrics.set("edgeai_requests_in_flight", 0)
        self.log = RequestLog(config.log_path, config.log_text) if config.log_path else None
        self.cache = OutputCache(config.cache_entries)
        self.in_flight = 0
        self.background = set()
        self.created = int(time.time())

    def close(self) -> None:
        self.scheduler.close()
        if self.log is not None:
            self.log.close()

    # ------------------------------------------------------------------ bookkeeping

    def _served(self, name) -> object:
        if name in self.llms:
            return self.llms[name]
        raise unknown_model(name, list(self.llms))

    async def record(self, row: dict, status: int) -> None:
        """Count the request and commit its log row (off the event loop: SQLite blocks)."""
        self.metrics.inc("edgeai_requests_total", endpoint=row["endpoint"], model=row.get("model") or "",
                         status=str(status))
        if self.log is not None:
            row["status"] = status
            await asyncio.to_thread(self.log.write, row)

    # ------------------------------------------------------------------ routes

    def app(self) -> Starlette:
        routes = [Route("/v1/models", self.models, methods=["GET"]),
                  Route("/v1/models/{model:path}", self.model, methods=["GET"]),
                  Route("/v1/chat/completions", self.chat, methods=["POST"]),
                  Route("/v1/completions", self.completions, methods=["POST"]),
                  Route("/v1/embeddings", self.embeddings, methods=["POST"]),
                  Route("/v1/ask", self.ask, methods=["POST"]),
                  Route("/v1/feedback", self.feedback, methods=["POST"]),
                  Route("/health", self.health, methods=["GET"]),
                  Route("/metrics", self.prometheus, methods=["GET"])]
        app = Starlette(routes=routes, exception_handlers={404: self._not_found, 405: self._not_allowed,
                                                           APIError: self.on_api_error})
        app.add_middleware(_Guard, server=self)
        return BodyLimit(app, self.config.max_body_bytes)

    async def _not_found(self, request, exc):
        return _json_error(APIError(404, f"no such endpoint: {request.method} {request.url.path}",
                                    code="unknown_url"))

    async def _not_allowed(self, request, exc):
        return _json_error(APIError(405, f"{request.method} is not allowed on {request.url.path}",
                                    code="method_not_allowed"))

    async def models(self, request):
        data = [{"id": k, "object": "model", "created": self.created, "owned_by": "edgeai"}
                for k in list(self.llms) + list(self.embedders)]
        return JSONResponse({"object": "list", "data": data})

    async def model(self, request):
        name = request.path_params["model"]
        if name not in self.llms and name not in self.embedders:
            raise unknown_model(name, list(self.llms) + list(self.embedders))
        return JSONResponse({"id": name, "object": "model", "created": self.created, "owned_by": "edgeai"})

    async def health(self, request):
        ok = not self.scheduler.closed
        return JSONResponse({"status": "ok" if ok else "shutting_down", "models": list(self.llms),
                             "embedders": list(self.embedders), "queue_depth": self.scheduler.depth(),
                             "in_flight": self.in_flight}, status_code=200 if ok else 503)

    async def prometheus(self, request):
        for name, served in self.llms.items():
            stats = getattr(served.llm, "batch_stats", None)
            if stats:
                self.metrics.set("edgeai_batch_decode_steps_total", stats["decode_steps"], model=name)
                self.metrics.set("edgeai_batch_decode_rows_total", stats["decode_rows"], model=name)
                self.metrics.set("edgeai_batch_prefill_chunks_total", stats["prefill_chunks"], model=name)
                self.metrics.set("edgeai_batch_prompt_tokens_total", stats["prompt_tokens"], model=name)
                self.metrics.set("edgeai_batch_reused_prompt_tokens_total", stats["reused_prompt_tokens"],
                                 model=name)
                self.metrics.set("edgeai_batch_rows_running", stats["running"], model=name)
        return PlainTextResponse(self.metrics.render(), media_type="text/plain; version=0.0.4")

    async def chat(self, request):
        req = parse_chat(await _read_json(request))
        served = self._served(req.model)
        tok = served.llm.tokenizer
        try:
            text = tok.apply_chat_template(req.prompts[0], add_generation_prompt=True)
        except Exception as exc:  # noqa: BLE001 - a template that refuses these messages
            raise bad_param("messages", f"the model's chat template cannot render these messages: {exc}") from None
        ids = tok.encode(text)
        return await self._respond(request, self._run(req, served, [ids], "chat", json.dumps(req.prompts[0]),
                                                      param="messages"))

    async def completions(self, request):
        req = parse_completion(await _read_json(request))
        served = self._served(req.model)
        vocab = served.llm.tokenizer.vocab_size
        prompts = []
        for p in req.prompts:
            if isinstance(p, str):
                prompts.append(served.llm.tokenizer.encode(p))
            else:
                if any(not 0 <= t < vocab for t in p):
                    raise bad_param("prompt", f"token ids must be in [0, {vocab})")
                prompts.append(list(p))
        logged = json.dumps(req.prompts) if len(req.prompts) > 1 else (
            req.prompts[0] if isinstance(req.prompts[0], str) else json.dumps(req.prompts[0]))
        return await self._respond(request, self._run(req, served, prompts, "completion", logged, param="prompt"))

    async def ask(self, request):
        body = await _read_json(request)
        if self.rag is None:
            raise APIError(404, "this server has no document index: start it with --index FOLDER",
                           code="no_index")
        if not isinstance(body, dict) or set(body) - {"question", "k", "model", "max_tokens", "temperature",
                                                      "seed", "user"}:
            raise bad_param(None, "POST /v1/ask takes question, k, model, max_tokens, temperature, seed, user")
        q = body.get("question")
        if not isinstance(q, str) or not q.strip():
            raise bad_param("question", "question must be a non-empty string")
        k = body.get("k", 3)
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 20:
            raise bad_param("k", "k must be an integer between 1 and 20")
        chat_body = {"model": body.get("model", self.rag_model), "messages": [{"role": "user", "content": q}]}
        for name in ("max_tokens", "temperature", "seed", "user"):
            if name in body:
                chat_body[name] = body[name]
        req = parse_chat(chat_body)
        if req.model != self.rag_model:
            raise unknown_model(req.model, [self.rag_model])
        if "temperature" not in body:
            req.temperature = 0.0  # like `edgeai ask`: greedy, so an answer can be checked again
        served = self._served(req.model)
        max_new = req.max_tokens or 384
        t0 = time.monotonic()
        retrieved = await asyncio.to_thread(self.rag.retrieve, q, k)
        if self.rag.below_floor(retrieved):  # as `edgeai ask`: far from every source, the model is not asked
            rid = "ask-" + secrets.token_hex(12)
            await self.record({"id": rid, "endpoint": "ask", "model": req.model, "model_digest": served.digest,
                               "prompt_tokens": 0, "completion_tokens": 0, "finish_reason": "refused",
                               "total_s": time.monotonic() - t0, "user": req.user, "cached": 0,
                               "prompt_text": q, "completion_text": REFUSAL}, 200)
            return JSONResponse({"id": rid, "object": "edgeai.answer", "created": int(time.time()),
                                 "model": req.model, "answer": REFUSAL, "finish_reason": "refused", "refused": True,
                                 "attributed": False,
                                 "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
                                 "cached": False, "sources": []})
        messages, sources = self.rag.build_messages(q, retrieved, max_new)
        req.prompts, req.max_tokens = [messages], max_new
        tok = served.llm.tokenizer
        # retrieved text is plain text, never role tokens; the template's delimiters end the answer (as `edgeai ask`)
        ids = chat_token_ids(tok, messages, plain_copy(tok)) or tok.encode(
            tok.apply_chat_template(messages, add_generation_prompt=True))
        req.stop = list(req.stop) + [s for s in STOP if s not in req.stop]
        run = self._run(req, served, [ids], "ask", json.dumps(messages), param="question",
                        extra=penalty_kwargs(served.llm))
        await run.complete(request)
        c = run.choices[0]
        answer, line = c.text, ""
        if c.finish_reason in ("stop", "length"):  # as `edgeai ask`: an answer citing nothing gets its sources
            line = self.rag.citation_line(answer.strip(), retrieved[:len(sources)])
            answer = answer.strip() + line if line else answer
        return JSONResponse({"id": run.id, "object": "edgeai.answer", "created": run.created, "model": req.model,
                             "answer": answer, "finish_reason": c.finish_reason, "refused": False,
                             "attributed": bool(line),
                             "usage": run.usage(),
                             "cached": run.cache_state == "hit",
                             "sources": [{"n": n, "path": path, "section": section, "score": round(score, 4)}
                                         for n, path, section, score in sources]},
                            headers={"X-Edgeai-Cache": run.cache_state})

    async def feedback(self, request):
        body = await _read_json(request)
        if self.log is None:
            raise APIError(404, "this server keeps no request log (started with --no-log)", code="no_log")
        if not isinstance(body, dict) or set(body) - {"id", "rating", "comment"}:
            raise bad_param(None, "POST /v1/feedback takes id, rating and comment")
        rid, rating, comment = body.get("id"), body.get("rating"), body.get("comment")
        if not isinstance(rid, str) or not rid:
            raise bad_param("id", "id must be the id of a response from this server")
        if not isinstance(rating, int) or isinstance(rating, bool) or not RATING_MIN <= rating <= RATING_MAX:
            raise bad_param("rating", f"rating must be an integer between {RATING_MIN} and {RATING_MAX}")
        if comment is not None and (not isinstance(comment, str) or len(comment) > 10000):
            raise bad_param("comment", "comment must be a string of at most 10000 characters")
        try:
            fid = await asyncio.to_thread(self.log.add_feedback, rid, rating, comment)
        except KeyError:
            raise APIError(404, f"no logged response has id {rid!r}", param="id", code="unknown_response") from None
        return JSONResponse({"object": "edgeai.feedback", "id": fid, "response_id": rid, "rating": rating})

    async def embeddings(self, request):
        body = await _read_json(request)
        t0 = time.perf_counter()
        if not isinstance(body, dict) or set(body) - {"input", "model", "encoding_format", "dimensions", "user"}:
            raise bad_param(None, "POST /v1/embeddings takes input, model, encoding_format, dimensions, user")
        name = body.get("model")
        if name not in self.embedders:
            raise unknown_model(name, list(self.embedders))
        served = self.embedders[name]
        texts = body.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
            raise bad_param("input", "input must be a non-empty string or a list of them (token ids are not "
                                     "supported: the embedder has its own vocabulary)")
        if len(texts) > MAX_EMBED_INPUTS:
            raise bad_param("input", f"at most {MAX_EMBED_INPUTS} inputs per request")
        fmt = body.get("encoding_format") or "float"
        if fmt not in ("float", "base64"):
            raise bad_param("encoding_format", "encoding_format must be float or base64")
        dims = body.get("dimensions")
        if dims is not None and dims != served.embedder.dims:
            raise bad_param("dimensions", f"this model gives {served.embedder.dims} dimensions only")
        vecs = await asyncio.to_thread(served.embedder.encode, texts)
        counts = served.embedder.count_tokens(texts)
        used = sum(min(c + 2, served.embedder.max_length) for c in counts)  # [CLS] + text + [SEP], truncated
        data = []
        for i, v in enumerate(vecs):
            v = np.ascontiguousarray(v, "<f4")
            emb = base64.b64encode(v.tobytes()).decode() if fmt == "base64" else v.tolist()
            data.append({"object": "embedding", "index": i, "embedding": emb})
        rid = "emb-" + secrets.token_hex(12)
        await self.record({"id": rid, "endpoint": "embeddings", "model": name, "model_digest": served.digest,
                           "prompt_tokens": used, "completion_tokens": 0, "total_s": time.perf_counter() - t0,
                           "user": body.get("user")}, 200)
        return JSONResponse({"object": "list", "data": data, "model": name,
                             "usage": {"prompt_tokens": used, "total_tokens": used}})

    # ------------------------------------------------------------------ generation

    def _run(self, req: GenRequest, served, prompts: List[List[int]], endpoint: str, prompt_text: str,
             param: str, extra: Optional[dict] = None) -> "_Run":
        vocab = served.llm.tokenizer.vocab_size
        if req.logit_bias and max(req.logit_bias) >= vocab:
            raise bad_param("logit_bias", f"logit_bias names token {max(req.logit_bias)}, but this model's "
                                          f"vocabulary has {vocab} tokens")
        ctx = served.context_length
        budgets = []
        for ids in prompts:
            room = ctx - len(ids)
            if room < 1:
                raise APIError(400, f"This model's maximum context length is {ctx} tokens, but the prompt has "
                                    f"{len(ids)} tokens (at least one is needed for the answer). Shorten the "
                                    f"{param}.", param=param, code="context_length_exceeded")
            budgets.append(min(req.max_tokens or room, room))  # max_tokens capped by the context
        rid = {"chat": "chatcmpl-", "completion": "cmpl-", "ask": "ask-"}[endpoint] + secrets.token_hex(12)
        return _Run(self, req, served, prompts, budgets, endpoint, rid, prompt_text, extra or {})

    async def _respond(self, request, run: "_Run"):
        if run.req.stream:
            if not run.replay():
                run.start()
            return StreamingResponse(run.sse(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Edgeai-Cache": run.cache_state})
        await run.complete(request)
        return JSONResponse(run.response(), headers={"X-Edgeai-Cache": run.cache_state})

    async def on_api_error(self, request, exc: APIError):
        """Every refused request is counted and logged too (status, error, no tokens)."""
        endpoint = ENDPOINTS.get(request.url.path.rstrip("/"), request.url.path)
        await self.record({"id": "err-" + secrets.token_hex(12), "endpoint": endpoint, "error": exc.message}, exc.status)
        return _json_error(exc)


class _Guard:
    """API key check (all but /health) and the in-flight gauge."""

    def __init__(self, app, server: EdgeServer):
        self.app, self.server = app, server

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        key = self.server.config.api_key
        if key and scope["path"] != "/health":
            auth = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
            given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(given.encode(), key.encode()):
                what = "No API key provided" if not given else "Incorrect API key provided"
                err = APIError(401, f"{what}: pass it as 'Authorization: Bearer KEY' (the server's --api-key)",
                               code="invalid_api_key")
                s = self.server
                s.metrics.inc("edgeai_requests_total", endpoint=scope["path"], model="", status="401")
                return await _json_error(err)(scope, receive, send)
        s = self.server
        s.in_flight += 1
        s.metrics.set("edgeai_requests_in_flight", s.in_flight)
        try:
            await self.app(scope, receive, send)
        finally:
            s.in_flight -= 1
            s.metrics.set("edgeai_requests_in_flight", s.in_flight)


class _Run:
    """One request's generations: submit, gather events, build the response or the SSE stream, log."""

    def __init__(self, server: EdgeServer, req: GenRequest, served, prompts, budgets, endpoint, rid, prompt_text,
                 extra):
        self.s, self.req, self.served, self.prompts, self.budgets = server, req, served, prompts, budgets
        self.endpoint, self.id, self.prompt_text, self.extra = endpoint, rid, prompt_text, extra
        self.t0 = time.monotonic()
        self.created = int(time.time())
        self.choices = [Choice(p * req.n + j) for p in range(len(prompts)) for j in range(req.n)]
        self.jobs: List[Job] = []
        self.pending = 0
        self.sink: "asyncio.Queue" = asyncio.Queue()
        self.error: Optional[APIError] = None
        self.first_token_s: Optional[float] = None
        self.cache_state = "off" if not (server.cache.max_entries and req.deterministic) else "miss"
        self.key = None
        if self.cache_state == "miss":
            self.key = cache_key(served.digest, endpoint, prompts, {**req.cache_key_params(), **extra,
                                                                    "budgets": budgets})

    # --- cache
    def replay(self) -> bool:
        if self.key is None:
            return False
        hit = self.s.cache.get(self.key)
        if hit is None:
            return False
        self.choices = [Choice(**vars(c)) for c in hit]
        self.cache_state = "hit"
        self.first_token_s = 0.0
        self.s.metrics.inc("edgeai_cache_hits_total", model=self.req.model)
        return True

    # --- running
    def start(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + self.s.config.timeout_s
        for c in self.choices:
            p = c.index // self.req.n
            kw = dict(self.req.sampling_kwargs(c.index % self.req.n), max_new_tokens=self.budgets[p], **self.extra)
            self.jobs.append(Job(c.index, self.prompts[p], kw, deadline, self.sink, loop))
        self.s.scheduler.submit(self.req.model, self.jobs)
        self.pending = len(self.jobs)

    def cancel(self, reason="cancelled") -> None:
        for j in self.jobs:
            j.cancel(reason)

    async def next_event(self, timeout: Optional[float] = None):
        """The next (index, kind, value) of any job; updates self.choices (raises TimeoutError)."""
        idx, kind, value = await asyncio.wait_for(self.sink.get(), timeout)
        c = self.choices[idx]
        if kind == "text":
            if c.ttft_s is None:
                c.ttft_s = time.monotonic() - self.jobs[idx].submitted
                if self.first_token_s is None:
                    self.first_token_s = time.monotonic() - self.t0
                    self.s.metrics.observe("edgeai_ttft_seconds", self.first_token_s, model=self.req.model)
            c.text += value
        elif kind == "done":
            self.pending -= 1
            await self._finish_choice(c, value, self.jobs[idx])
        else:
            self.pending -= 1
            if self.error is None:
                self.error = value
                self.cancel()  # one choice failed: the response fails, stop the others
        return idx, kind, value

    async def _finish_choice(self, c: Choice, gen, job: Job) -> None:
        eos = set(self.served.llm.eos_token_ids)
        c.token_ids = [t for t in gen.token_ids if t not in eos]
        c.text = gen.text  # the stop matcher's final text (equal to the pieces joined)
        c.prompt_tokens = gen.prompt_tokens
        reason = gen.finish_reason
        if reason == "cancelled" and job.cancel_reason == "timeout":
            reason = "timeout"
        c.finish_reason = reason
        tps = gen.timings.get("decode_tokens_per_s") or None
        c.decode_tokens_per_s = tps
        if tps:
            self.s.metrics.observe("edgeai_decode_tokens_per_second", tps, model=self.req.model)
        if self.req.logprobs and c.token_ids and reason not in ("cancelled",):
            scored = await asyncio.to_thread(self.served.scorer().score, job.prompt_ids, c.token_ids,
                                             self.req.top_logprobs)
            c.logprobs = [(t, lp, alts) for t, (lp, alts) in zip(c.token_ids, scored)]

    async def complete(self, request: Request) -> None:
        """Non-streaming: replay from the cache or run every choice to its end; a client that goes away
        cancels them. Logs the request; raises the first choice's error."""
        if not self.replay():
            self.start()
            gone, checked = False, time.monotonic()
            while self.pending:
                try:
                    await self.next_event(timeout=DISCONNECT_POLL_S)
                except asyncio.TimeoutError:
                    pass
                if not gone and time.monotonic() - checked >= DISCONNECT_POLL_S:  # tokens may never pause
                    checked = time.monotonic()
                    if await request.is_disconnected():
                        gone = True
                        self.cancel()
            if gone:  # logged once, as the client's; nobody reads the response
                await self._log(status=499)
                return
        await self._log()
        if self.error is not None:
            raise self.error

    # --- results
    def usage(self) -> dict:
        prompt = sum(len(p) for p in self.prompts)
        completion = sum(len(c.token_ids) for c in self.choices)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def _logprobs_chat(self, c: Choice):
        if not self.req.logprobs or c.logprobs is None:
            return None
        tok = self.served.llm.tokenizer

        def entry(t, lp):
            return {"token": token_text(tok, t), "logprob": lp, "bytes": list(token_bytes(tok, t))}
        return {"content": [dict(entry(t, lp), top_logprobs=[entry(a, alp) for a, alp in alts])
                            for t, lp, alts in c.logprobs], "refusal": None}

    def _logprobs_legacy(self, c: Choice, offset0: int = 0):
        if not self.req.logprobs or c.logprobs is None:
            return None
        tok = self.served.llm.tokenizer
        tokens, offsets, pos = [], [], offset0
        for t, _, _ in c.logprobs:
            s = token_text(tok, t)
            tokens.append(s)
            offsets.append(pos)
            pos += len(s)
        return {"tokens": tokens, "token_logprobs": [lp for _, lp, _ in c.logprobs],
                "top_logprobs": [{token_text(tok, a): alp for a, alp in alts} if self.req.top_logprobs else None
                                 for _, _, alts in c.logprobs], "text_offset": offsets}

    def _prefix(self, c: Choice) -> str:
        if self.req.kind == "completion" and self.req.echo:
            p = self.req.prompts[c.index // self.req.n]
            return p if isinstance(p, str) else self.served.llm.tokenizer.decode(p)
        return ""

    def response(self) -> dict:
        base = {"id": self.id, "created": self.created, "model": self.req.model,
                "system_fingerprint": "edgeai-" + self.served.digest, "usage": self.usage()}
        if self.cache_state == "hit":
            base["cached"] = True
        if self.req.kind == "chat":
            choices = [{"index": c.index, "message": {"role": "assistant", "content": c.text, "refusal": None},
                        "logprobs": self._logprobs_chat(c), "finish_reason": c.finish_reason}
                       for c in self.choices]
            return {**base, "object": "chat.completion", "choices": choices}
        choices = [{"index": c.index, "text": self._prefix(c) + c.text, "logprobs": self._logprobs_legacy(c),
                    "finish_reason": c.finish_reason} for c in self.choices]
        return {**base, "object": "text_completion", "choices": choices}

    # --- streaming
    def _chunk(self, choices, usage=False) -> str:
        obj = {"id": self.id, "created": self.created, "model": self.req.model,
               "system_fingerprint": "edgeai-" + self.served.digest,
               "object": "chat.completion.chunk" if self.req.kind == "chat" else "text_completion",
               "choices": choices}
        if self.cache_state == "hit":
            obj["cached"] = True
        if self.req.include_usage:
            obj["usage"] = self.usage() if usage else None
        return f"data: {json.dumps(obj)}\n\n"

    def _piece(self, c: Choice, text=None, finish=None, first=False) -> dict:
        if self.req.kind == "chat":
            delta = {} if text is None else {"content": text}
            if first:
                delta["role"] = "assistant"
            return {"index": c.index, "delta": delta, "logprobs": self._logprobs_chat(c) if finish else None,
                    "finish_reason": finish}
        return {"index": c.index, "text": text or "", "logprobs": self._logprobs_legacy(c) if finish else None,
                "finish_reason": finish}

    async def sse(self):
        try:
            if self.cache_state == "hit":
                for c in self.choices:
                    yield self._chunk([self._piece(c, self._prefix(c) + c.text, first=True)])
                    yield self._chunk([self._piece(c, finish=c.finish_reason)])
            else:
                if self.req.kind == "chat":  # the role comes first, before any model work (as OpenAI does)
                    for c in self.choices:
                        yield self._chunk([self._piece(c, "", first=True)])
                elif self.req.echo:
                    for c in self.choices:
                        yield self._chunk([self._piece(c, self._prefix(c))])
                while self.pending:
                    idx, kind, value = await self.next_event()
                    c = self.choices[idx]
                    if kind == "text":
                        yield self._chunk([self._piece(c, value)])
                    elif kind == "done":
                        yield self._chunk([self._piece(c, finish=c.finish_reason)])
            if self.error is not None:
                self.cancel()
                while self.pending:  # the other choices stop at their next token
                    await self.next_event()
            await self._log()
            if self.error is not None:
                yield f"data: {json.dumps(self.error.body())}\n\n"
                return
            if self.req.include_usage:
                yield self._chunk([], usage=True)
            yield "data: [DONE]\n\n"
        finally:
            if not self.logged:  # the client went away mid-stream: stop its generations, log when they end
                self.cancel()
                task = asyncio.get_running_loop().create_task(self._drain_and_log())
                self.s.background.add(task)  # asyncio keeps only weak references to tasks
                task.add_done_callback(self.s.background.discard)

    async def _drain_and_log(self) -> None:
        while self.pending:
            await self.next_event()
        await self._log(status=499)  # nginx's "client closed request"

    # --- log
    logged = False

    async def _log(self, status: Optional[int] = None) -> None:
        if self.logged:
            return
        self.logged = True
        if self.cache_state == "miss" and self.error is None and all(
                c.finish_reason in ("stop", "length") for c in self.choices):
            self.s.cache.put(self.key, [Choice(**vars(c)) for c in self.choices])
        usage = self.usage()
        err = self.error
        status = status or (err.status if err else 200)
        for c in self.choices:
            if c.token_ids:
                self.s.metrics.inc("edgeai_completion_tokens_total", len(c.token_ids), model=self.req.model)
        if self.cache_state != "hit":
            self.s.metrics.inc("edgeai_prompt_tokens_total", usage["prompt_tokens"], model=self.req.model)
        hit = self.cache_state == "hit"  # a replay decodes nothing: no speed of its own
        speeds = [c.decode_tokens_per_s for c in self.choices if c.decode_tokens_per_s and not hit]
        reasons = sorted({c.finish_reason for c in self.choices if c.finish_reason})
        await self.s.record({
            "id": self.id, "endpoint": self.endpoint, "model": self.req.model, "model_digest": self.served.digest,
            "prompt_tokens": usage["prompt_tokens"], "completion_tokens": usage["completion_tokens"],
            "ttft_s": self.first_token_s, "decode_tokens_per_s": sum(speeds) / len(speeds) if speeds else None,
            "total_s": time.monotonic() - self.t0, "finish_reason": ",".join(reasons) or None,
            "error": err.message if err else None, "cached": int(self.cache_state == "hit"), "user": self.req.user,
            "params": {**self.req.cache_key_params(), "stream": self.req.stream},
            "prompt_text": self.prompt_text,
            "completion_text": self.choices[0].text if len(self.choices) == 1 else json.dumps(
                [c.text for c in self.choices])}, status)
