"""A document collection that every Python install carries: the standard library's own docstrings.

`build_corpus()` writes one Markdown file per module (module docstring, then a heading per public class,
method and function with its signature), so the chunker sees real section structure. Output is cached in
`edgeai.paths.cache_dir()/corpus/pydoc-<python version>-v<corpus version>`; building takes a few seconds, once.

The rendering is a pure function of the installed modules, identical from one build (and process) to the next:
- default values whose repr names a memory address (`<built-in method match of re.Pattern object at 0x7f..>`)
  or is long process state (`environ=environ({...})` would put the user's environment in the corpus) are
  written as `...`, and sets, whose order follows per-process string hashing, are sorted;
- members come in sorted order;
- headings written inside docstrings (`Older API` underlined with `===`) stay inside their docstring: in a
  module docstring they become level-2 headings, so the next function's heading closes them instead of
  nesting under them (`subprocess.run` was filed under "Older API"); elsewhere they become plain lines;
- docstrings are kept whole, doctest examples (`>>>`) included.
"""
from __future__ import annotations

import importlib
import inspect
import io
import os
import re
import sys
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Iterable, List, Optional

CORPUS_VERSION = 4  # bump when the rendering changes, so cached corpora are rebuilt

# Modules with import side effects (open a browser, print, start GUIs) or that are not documentation.
_SKIP = {"antigravity", "this", "idlelib", "turtledemo", "tkinter", "turtle", "lib2to3", "test", "pydoc_data",
         "ensurepip", "venv", "xxsubtype", "xxlimited", "xxlimited_35", "msilib", "winreg", "winsound",
         "msvcrt", "_winapi", "nt", "__hello__", "__phello__"}
# Submodules worth their own page.
_EXTRA = ["os.path", "collections.abc", "concurrent.futures", "email.message", "email.utils", "http.client",
          "http.server", "http.cookies", "importlib.metadata", "importlib.resources", "json.decoder",
          "logging.handlers", "logging.config", "unittest.mock", "urllib.parse", "urllib.request",
          "xml.etree.ElementTree", "xml.dom.minidom", "multiprocessing.pool", "asyncio.tasks",
          "asyncio.queues", "asyncio.subprocess", "sqlite3.dbapi2", "dbm.sqlite3", "wsgiref.simple_server"]


def default_modules() -> List[str]:
    names = getattr(sys, "stdlib_module_names", None) or sys.builtin_module_names
    return sorted(n for n in names if not n.startswith("_") and n not in _SKIP) + _EXTRA


_ADDRESS_REPR = re.compile(r" at 0x[0-9a-fA-F]+")
_SETEXT = re.compile(r"(?m)^(?P<title>[^\n]*\S[^\n]*)\n[ \t]*(?:=+|-{3,})[ \t]*$")
MAX_DEFAULT_REPR = 40  # longer default values are elided: they are state (os.environ), not documentation


class _Shown:
    """Stands in for a parameter default so that the signature prints `text` for it."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self):
        return self.text


def _stable_default(value):
    if isinstance(value, (set, frozenset)):  # element order follows per-process string hashing
        body = "{" + ", ".join(sorted(repr(v) for v in value)) + "}"
        text = body if isinstance(value, set) else f"frozenset({body})"
    else:
        text = repr(value)
    if len(text) > MAX_DEFAULT_REPR or _ADDRESS_REPR.search(text):
        return _Shown("...")
    return _Shown(text) if isinstance(value, (set, frozenset)) else value


def _sig(obj) -> str:
    """The signature as the same text in every process: defaults that hold memory addresses or process state
    (`environ=environ({...})`, `<function <lambda> at 0x7f..>`) are written as `...`, sets sorted."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return "(...)"
    params = [p.replace(default=_stable_default(p.default)) if p.default is not p.empty else p
              for p in sig.parameters.values()]
    return _ADDRESS_REPR.sub("", str(sig.replace(parameters=params)))


def _md(doc: str, heading_level: int = 0) -> str:
    """A docstring as Markdown body text. A line starting with '#' is a code comment, not a heading: escape it
    the Markdown way. An underlined title becomes a heading of `heading_level`, or a plain line when 0."""
    doc = re.sub(r"(?m)^( {0,3})#", r"\1\\#", doc or "")
    head = (lambda m: f"{'#' * heading_level} {m.group('title').strip()}") if heading_level else \
        (lambda m: m.group("title").rstrip())
    # Docstrings are fixed text, except generated ones (dataclasses print their fields' defaults).
    return re.sub(r"<[^<>]*? at 0x[0-9a-fA-F]+>", "<...>", _SETEXT.sub(head, doc))


def _defined_here(obj, name: str, pages=()) -> bool:
    """Is obj part of module `name`'s own API: defined in it, in its C accelerator (_name), or in one of its
    submodules (concurrent.futures.thread, tomllib._parser) that has no page of its own (`pages`), rather
    than re-exported from elsewhere?"""
    where = getattr(obj, "__module__", None)
    return where is None or where in (name, "_" + name.split(".")[-1]) or \
        (where.startswith(name + ".") and where not in pages)


def _class_members(cls, name: str) -> dict:
    """Public members (and __init__) of cls and of its bases from the same module, the nearest first:
    argparse.ArgumentParser.add_argument lives in a private base class, yet users call it on the parser."""
    members: dict = {}
    for klass in cls.__mro__:
        if klass is object or not _defined_here(klass, name):
            continue
        for m, member in vars(klass).items():
            if not m.startswith("_") or m == "__init__":
                members.setdefault(m, member)
    return members


def render_module(mod, pages=()) -> str:
    """Markdown for one module: its public classes (with their methods) and functions that are defined in it
    (not re-exports). Functions and methods without a docstring still get their signature heading, so their
    names can be found."""
    name = mod.__name__
    out = [f"# {name}", "", _md(inspect.cleandoc(mod.__doc__ or f"The {name} module."), heading_level=2), ""]
    public = getattr(mod, "__all__", None) or [n for n in dir(mod) if not n.startswith("_")]
    for attr in sorted(set(public)):
        obj = getattr(mod, attr, None)
        if obj is None or not _defined_here(obj, name, pages):
            continue
        doc = _md(inspect.getdoc(obj))
        if inspect.isclass(obj):
            out += [f"## class {name}.{attr}{_sig(obj)}", "", doc or "", ""]
            for m, member in sorted(_class_members(obj, name).items()):
                fn = member.__func__ if isinstance(member, (classmethod, staticmethod)) else member
                if not (callable(fn) or isinstance(member, property)):
                    continue
                mdoc = _md(inspect.getdoc(fn))
                if mdoc or (inspect.isroutine(fn) and m != "__init__"):
                    out += [f"### {attr}.{m}{_sig(fn) if callable(fn) else ''}", ""] + ([mdoc, ""] if mdoc else [])
        elif inspect.isroutine(obj):
            out += [f"## {name}.{attr}{_sig(obj)}", ""] + ([doc, ""] if doc else [])
    return "\n".join(out).rstrip() + "\n"


def build_corpus(out_dir: Optional[Path] = None, modules: Optional[Iterable[str]] = None,
                 force: bool = False) -> Path:
    """Write <module>.md files; returns the folder. Cached: a finished folder is reused unless force=True."""
    if out_dir is None:
        from edgeai.paths import cache_dir
        py = f"{sys.version_info.major}.{sys.version_info.minor}"
        out_dir = cache_dir() / "corpus" / f"pydoc-{py}-v{CORPUS_VERSION}"
    out_dir = Path(out_dir)
    done = out_dir / ".complete"
    if done.exists() and not force:
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    n = 0
    modules = list(modules or default_modules())
    for name in modules:
        try:
            with warnings.catch_warnings(), redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
                warnings.simplefilter("ignore")
                mod = importlib.import_module(name)
            text = render_module(mod, pages=set(modules))
        except Exception:  # noqa: BLE001 - a module that cannot import here (platform-specific) is just left out
            continue
        tmp = out_dir / f".{name}.md.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out_dir / f"{name}.md")
        n += 1
    if n == 0:
        raise RuntimeError("no standard-library module could be documented")
    done.write_text(str(n))
    return out_dir
