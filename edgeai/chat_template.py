"""Chat templates: a model's own Jinja template, rendered the way transformers' `apply_chat_template` renders it.

A chat model was tuned on prompts made by its template; one byte off (a newline, a default system prompt) and
answers degrade. So we do not re-implement formats: we run the template itself, in the same environment as
transformers (sandboxed, trim_blocks/lstrip_blocks, loop controls, `raise_exception`, `strftime_now`, a
`tojson` that does not HTML-escape, the `{% generation %}` tag, the same guarded `dict`/`namespace`) and with
the same variables (messages with None-valued keys dropped, tools, documents, add_generation_prompt and the
special tokens the model has). tests/test_chat_template.py checks the output byte for byte against transformers.
"""
from __future__ import annotations

import json
from datetime import datetime

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

# The plain ChatML format, for a model that ships no template but whose vocabulary has ChatML's tokens
# (llama.cpp falls back to ChatML the same way). No default system prompt: the model never named one.
CHATML_TEMPLATE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
                   "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                   "{% endif %}")

# Names a message's reasoning goes under; templates read the first, gpt-oss ones read "thinking".
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class ChatTemplateError(ValueError):
    """The chat template does not parse, or refused / failed on the messages it was given."""


class _Generation(Extension):
    """`{% generation %}…{% endgeneration %}` marks the assistant's text for transformers' training masks;
    when rendering a prompt it is just its body. Templates that use it do not even parse without it."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    @staticmethod
    def _body(caller):
        return caller()


class _Dict:
    """`dict(...)` for templates, without the type object itself (no attribute access to break out with)."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


class _Namespace(jinja2.utils.Namespace):
    """jinja2's namespace, refusing underscore names (no way to reach CPython internals through it)."""

    def __init__(*args, **kwargs):  # same signature trick as jinja2's, so namespace(self=...) still works
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"chat templates cannot set underscore attributes ({name!r})")


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # jinja2's own tojson HTML-escapes (<, >, &, '): templates expect plain JSON
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now, dict=_Dict(),
                       namespace=_Namespace)
    return env


def _plain(value):
    """A copy made of plain JSON types only: the sandbox cannot see methods of the caller's objects."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _plain(value.item())
    return f"<{type(value).__name__}>"


def _messages(messages) -> list:
    out = []
    for m in messages:
        if not isinstance(m, dict):
            raise ChatTemplateError(f"chat messages must be dicts with 'role' and 'content', not {m!r}")
        m = _plain({k: v for k, v in m.items() if v is not None})  # templates handle a missing key, not None
        reasoning = next((m[k] for k in _REASONING_FIELDS if m.get(k) is not None), None)
        if reasoning is not None:
            m = {"thinking": reasoning, **m, "reasoning_content": reasoning}
        out.append(m)
    return out


class ChatTemplate:
    """One compiled template. `render(messages, add_generation_prompt, tools, documents, **variables)`."""

    def __init__(self, source: str):
        if not isinstance(source, str) or not source:
            raise ChatTemplateError("the chat template is empty")
        self.source = source
        try:
            self._template = _environment().from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise ChatTemplateError(f"the model's chat template does not parse (line {exc.lineno}): "
                                    f"{exc.message}") from exc

    def render(self, messages, add_generation_prompt: bool = True, tools=None, documents=None, **variables) -> str:
        msgs = _messages(messages)
        if not msgs:
            raise ChatTemplateError("no messages to render")
        if documents is not None and not all(isinstance(d, dict) for d in documents):
            raise ChatTemplateError("documents must be dicts (with 'title' and 'text')")
        try:
            return self._template.render(messages=msgs, tools=_plain(tools), documents=_plain(documents),
                                         add_generation_prompt=bool(add_generation_prompt),
                                         **_plain(variables))
        except jinja2.TemplateError as exc:  # raise_exception(...), undefined names, sandbox refusals
            raise ChatTemplateError(f"the model's chat template refused these messages: {exc}") from exc
        except Exception as exc:  # e.g. a TypeError from 'str' + a list where the template expects text
            raise ChatTemplateError(f"the model's chat template failed on these messages: "
                                    f"{type(exc).__name__}: {exc}") from exc
