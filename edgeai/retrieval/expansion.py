"""Query expansion from the model's own code sketch: the APIs a question is about, named by the LLM.

Questions describe what they want in words ("serialize an object to bytes", "make a deep copy"), and the
section that answers is named by an identifier (`pickle.dumps`, `copy.deepcopy`) that the question never
says. The small embedder (MiniLM) often misses that step; a code model does not: asked to write the code,
Qwen2.5-Coder-0.5B writes `return pickle.dumps(obj)` for the first and `hashlib.sha256(data)` for "the
SHA-256 digest of some bytes". So before retrieving, the RAG pipeline asks its LLM for a short sketch (greedy,
so the same question always gives the same sketch), takes the APIs it calls (`names`), and searches the
index's lexical side for them (`terms`; fused with the other rankings in `RAG.retrieve`).

This is the sketch as evidence for *where to look*, never as an answer: the sketch is not shown, and a name
it invents (`icalendar.Calendar`) is dropped unless the indexed documents mention it (RAG.retrieve), so a
sketch for documents that are not about Python adds nothing. Measured on the shipped set (docs/retrieval.md):
section recall@3 0.815 -> 0.923, for about 20 generated tokens (0.7 s on a 2-core box) per question.

Generation stops once the sketch has used an API past its imports and definitions (`names`: a dotted name or a
call, not a builtin such as `open(`): at the end of that line, or at the "(" of the call. That is where the API
almost always is. Otherwise it stops at MAX_TOKENS.
"""
from __future__ import annotations

import builtins
import re
from typing import Iterable, List, Optional

SYSTEM = "You are an expert Python programmer."
USER = ("Write the Python code that does this with the standard library, in at most two lines.\n"
        "Question: {question}")
# The assistant's turn is started for the model: a code block whose first line is an import, so the sketch
# names its module first and spends no tokens on prose.
PREFIX = "```python\nimport "
MAX_TOKENS = 28
STOP = ["```"]

_KEYWORDS = frozenset("""and as assert async await break class continue def del elif else except finally for
from global if import in is lambda nonlocal not or pass raise return try while with yield None True False
self cls""".split())
_BUILTINS = frozenset(dir(builtins))
_COMMENT = re.compile(r"#[^\n]*")
_STRING = re.compile(r"('''|\"\"\")[\s\S]*?(?:\1|$)|[rbfu]{0,2}(['\"])(?:\\.|(?!\2)[^\\\n])*(?:\2|$)", re.I)
_NAME = re.compile(r"(?<![\w.])([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)(\s*\()?")


def messages(question: str) -> List[dict]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER.format(question=question.strip())}]


def complete(pieces: Iterable[str]) -> str:
    """Read a streamed sketch until it has used an API past the imports and definitions: the end of a line that
    names one, or the "(" of a call to one (the caller closes its iterator there: the rest is not generated)."""
    text = ""
    for piece in pieces:
        text += piece
        lines = text.split("\n")
        own = _own(text)
        for i, ln in enumerate(lines[1:], 1):  # after the first line: the import the prefix started
            s = ln.strip()
            if i == len(lines) - 1:  # the line being written: up to its last "(" only
                s = s[:s.rfind("(") + 1]
            if s and not s.startswith(("import ", "from ", "def ", "class ", "@")) and names(s, own):
                return text
    return text


def _own(code: str) -> set:
    return set(re.findall(r"\b(?:def|class)\s+(\w+)", code))


def names(code: str, own: Optional[set] = None) -> List[str]:
    """The APIs a code sketch uses: dotted names (`json.dumps`, `decimal.getcontext`) and called names
    (`deepcopy(x)` after `from copy import deepcopy`), in order, without the names the sketch defines itself,
    builtins, keywords, comments and string contents. own: the names defined (default: those `code` defines)."""
    code = _STRING.sub(" ", _COMMENT.sub(" ", code))
    own = _own(code) if own is None else own
    out = []
    for m in _NAME.finditer(code):
        name, called = m.group(1), m.group(2)
        first = name.split(".")[0]
        if ("." not in name and not called) or first in own or name in _BUILTINS or first in _KEYWORDS:
            continue
        out.append(name)
    return list(dict.fromkeys(out))


def terms(api_names: Iterable[str], whole: bool = False) -> List[str]:
    """Lexical terms for the names (lexical.py's forms): a dotted name whole (`json_dumps`, rare, so bm25
    weighs it high) and its last part (`dumps`, which finds `pickle.dumps` under a `pickle` heading)."""
    out = []
    for n in api_names:
        parts = [p.lower() for p in n.split(".") if p]
        if len(parts) > 1:
            out.append("_".join(parts))
        if len(parts[-1]) > 1 and not whole:
            out.append(parts[-1])
    return list(dict.fromkeys(out))
