"""Request bodies of the OpenAI API, checked and turned into edgeai generation parameters.

Every check raises APIError 400 naming the parameter (`param`), as OpenAI's API does. Parameters a local
model cannot honour (tools, response_format, audio, ...) are refused by name instead of silently ignored;
bookkeeping fields that change nothing about the answer (user, metadata, store, ...) are accepted.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional

from .errors import bad_param

MAX_N = 8                # choices per request (each is a full generation)
MAX_TOP_LOGPROBS = 20    # OpenAI's own bound for chat; completions allow up to 5
MAX_STOP = 4             # OpenAI's bound on stop sequences
_IGNORED = {"user", "metadata", "store", "service_tier", "prompt_cache_key", "safety_identifier",
            "parallel_tool_calls"}
_SAMPLING = {"temperature", "top_p", "presence_penalty", "frequency_penalty", "logit_bias", "seed", "stop", "n",
             "stream", "stream_options", "logprobs", "model"}
CHAT_FIELDS = _SAMPLING | _IGNORED | {"messages", "max_tokens", "max_completion_tokens", "top_logprobs"}
COMPLETION_FIELDS = _SAMPLING | _IGNORED | {"prompt", "max_tokens", "echo", "best_of", "suffix"}
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


@dataclass
class GenRequest:
    """One chat or completion request, checked. Prompt token ids are filled in once the model is known."""
    kind: str                          # "chat" | "completion"
    model: str
    prompts: list                      # chat: [messages]; completion: [str | [int]] (one per prompt)
    n: int = 1
    max_tokens: Optional[int] = None   # None: what the context leaves
    stop: List[str] = field(default_factory=list)
    seed: Optional[int] = None
    temperature: float = 1.0
    top_p: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict = field(default_factory=dict)
    stream: bool = False
    include_usage: bool = False
    logprobs: bool = False
    top_logprobs: int = 0
    echo: bool = False
    user: Optional[str] = None

    @property
    def deterministic(self) -> bool:
        """Same request, same answer: greedy, or sampling with a fixed seed (the engine's generator is
        platform-independent, so a seed fixes the tokens)."""
        return self.temperature == 0.0 or self.seed is not None

    def sampling_kwargs(self, choice: int) -> dict:
        """edgeai.LLM keyword arguments for choice `choice` (0-based). With a seed, choice i samples with
        seed + i, so the n choices differ from each other and the whole response is reproducible."""
        kw = {"temperature": self.temperature, "top_p": self.top_p, "presence_penalty": self.presence_penalty,
              "frequency_penalty": self.frequency_penalty, "logit_bias": dict(self.logit_bias)}
        if self.temperature > 0 and self.seed is not None:
            kw["seed"] = self.seed + choice
        if self.stop:
            kw["stop"] = list(self.stop)
        return kw

    def cache_key_params(self) -> dict:
        return {"n": self.n, "max_tokens": self.max_tokens, "stop": self.stop, "seed": self.seed,
                "temperature": self.temperature, "top_p": self.top_p, "presence_penalty": self.presence_penalty,
                "frequency_penalty": self.frequency_penalty,
                "logit_bias": sorted(self.logit_bias.items()), "logprobs": self.logprobs,
                "top_logprobs": self.top_logprobs, "echo": self.echo}


def _number(body, name, default, lo, hi):
    v = body.get(name, default)
    if v is None:
        return default
    if not isinstance(v, (int, float)) or isinstance(v, bool) or math.isnan(v) or not lo <= v <= hi:
        raise bad_param(name, f"{name} must be a number between {lo} and {hi}, got {v!r}")
    return float(v)


def _integer(body, name, lo, hi=None, default=None):
    v = body.get(name, default)
    if v is None:
        return default
    if not isinstance(v, int) or isinstance(v, bool) or v < lo or (hi is not None and v > hi):
        bound = f">= {lo}" if hi is None else f"between {lo} and {hi}"
        raise bad_param(name, f"{name} must be an integer {bound}, got {v!r}")
    return v


def _boolean(body, name, default=False):
    v = body.get(name, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise bad_param(name, f"{name} must be true or false, got {v!r}")
    return v


def _check_fields(body, allowed):
    if not isinstance(body, dict):
        raise bad_param(None, "the request body must be a JSON object")
    for k in body:
        if k not in allowed:
            raise bad_param(k, f"Unrecognized or unsupported request argument: {k}", code="unsupported_parameter")


def _common(body, kind) -> GenRequest:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_param("model", "model is required: a model name from GET /v1/models")
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > MAX_STOP:
        raise bad_param("stop", f"stop must be a non-empty string or a list of at most {MAX_STOP} of them")
    bias = body.get("logit_bias") or {}
    if not isinstance(bias, dict):
        raise bad_param("logit_bias", "logit_bias must be an object {token id: bias}")
    logit_bias = {}
    for k, v in bias.items():
        try:
            tok = int(k)
        except (TypeError, ValueError):
            raise bad_param("logit_bias", f"logit_bias keys must be token ids, got {k!r}") from None
        if tok < 0 or not isinstance(v, (int, float)) or isinstance(v, bool) or not -100 <= v <= 100:
            raise bad_param("logit_bias", f"logit_bias[{k}] must be a number between -100 and 100, got {v!r}")
        logit_bias[tok] = float(v)
    opts = body.get("stream_options")
    if opts is not None and (not isinstance(opts, dict) or set(opts) - {"include_usage", "include_obfuscation"}):
        raise bad_param("stream_options", "stream_options takes only include_usage")
    stream = _boolean(body, "stream")
    if opts and not stream:
        raise bad_param("stream_options", "stream_options is only allowed with stream=true")
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0.0:
        raise bad_param("top_p", "top_p must be > 0 (use temperature 0 for greedy decoding)")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise bad_param("user", "user must be a string")
    return GenRequest(kind=kind, model=model, prompts=[], n=_integer(body, "n", 1, MAX_N, default=1), stop=stop,
                      seed=_integer(body, "seed", 0, 2**63 - 1), temperature=temperature, top_p=top_p,
                      presence_penalty=_number(body, "presence_penalty", 0.0, -2.0, 2.0),
                      frequency_penalty=_number(body, "frequency_penalty", 0.0, -2.0, 2.0),
                      logit_bias=logit_bias, stream=stream, include_usage=bool(opts and opts.get("include_usage")),
                      user=user)


def _message_text(i, content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: only text can reach a text-only model
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad_param(f"messages[{i}].content", "only text content parts are supported")
            texts.append(part["text"])
        return "".join(texts)
    raise bad_param(f"messages[{i}].content", "content must be a string or a list of text parts")


def parse_chat(body) -> GenRequest:
    _check_fields(body, CHAT_FIELDS)
    req = _common(body, "chat")
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise bad_param("messages", "messages must be a non-empty list")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in _ROLES:
            raise bad_param(f"messages[{i}].role", f"role must be one of {', '.join(_ROLES)}")
        out.append({"role": _ROLES[m["role"]], "content": _message_text(i, m.get("content"))})
    req.prompts = [out]
    req.max_tokens = _integer(body, "max_completion_tokens", 1, default=None)
    if req.max_tokens is None:
        req.max_tokens = _integer(body, "max_tokens", 1, default=None)
    req.logprobs = _boolean(body, "logprobs")
    req.top_logprobs = _integer(body, "top_logprobs", 0, MAX_TOP_LOGPROBS, default=0)
    if req.top_logprobs and not req.logprobs:
        raise bad_param("top_logprobs", "top_logprobs needs logprobs=true")
    return req


def parse_completion(body) -> GenRequest:
    _check_fields(body, COMPLETION_FIELDS)
    req = _common(body, "completion")
    p = body.get("prompt")
    if isinstance(p, str) or (isinstance(p, list) and p and all(isinstance(t, int) for t in p)):
        prompts = [p]
    elif isinstance(p, list) and p and all(isinstance(x, str) or (isinstance(x, list) and x and all(
            isinstance(t, int) and not isinstance(t, bool) for t in x)) for x in p):
        prompts = list(p)
    else:
        raise bad_param("prompt", "prompt must be a string, a list of strings, a list of token ids or a list "
                                  "of such lists")
    if any(x == "" for x in prompts):
        raise bad_param("prompt", "prompt must not be empty")
    if len(prompts) * req.n > MAX_N * 4:
        raise bad_param("prompt", f"at most {MAX_N * 4} prompts x n per request")
    req.prompts = prompts
    req.max_tokens = _integer(body, "max_tokens", 1, default=16)  # the legacy API's own default
    lp = _integer(body, "logprobs", 0, 5, default=None)
    req.logprobs, req.top_logprobs = lp is not None, lp or 0
    req.echo = _boolean(body, "echo")
    if req.echo and req.logprobs:
        raise bad_param("echo", "echo with logprobs is not supported (prompt tokens are not scored)")
    if body.get("suffix") is not None:
        raise bad_param("suffix", "suffix (fill-in-the-middle) is not supported")
    best_of = _integer(body, "best_of", 1, MAX_N, default=None)
    if best_of is not None and best_of != req.n:
        raise bad_param("best_of", "best_of other than n is not supported")
    return req
