"""Lexical terms for SQLite FTS5: words, plus code identifiers both whole and split into their parts.

Documentation questions name APIs (`add_subparsers`, `os.path.join`, `ArgumentParser`). A plain word
tokenizer splits `add_subparsers` into "add" + "subparsers", and then "add" matches half the corpus; an
identifier-only tokenizer never matches "subparsers" on its own. So every identifier is indexed three ways:
whole ("add_subparsers", "os_path_join"), as its parts ("add", "subparsers"; "os", "path", "join"), and a
camelCase name also split at case changes ("ArgumentParser" -> "argumentparser", "argument", "parser").
Questions go through the same function, so a question naming the identifier matches the whole term (rare,
so bm25 weighs it high) and a question describing it in words still matches the parts.

The FTS5 table uses `unicode61 tokenchars '_'`, so a whole identifier written with '_' joins stays one token;
dots become '_' here for the same reason. Plain English stopwords are dropped from queries only (documents
keep them: bm25 already gives them little weight, and phrases stay intact).
"""
from __future__ import annotations

import re
from typing import List

FTS_TOKENIZE = "unicode61 tokenchars '_' remove_diacritics 2"

# An identifier: letters/digits/underscores, optionally dotted (os.path.join), at least one letter.
_IDENT = re.compile(r"[^\W\d]\w*(?:\.[^\W\d]\w*)*")
_CAMEL = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")

STOPWORDS = frozenset("""
a about after all also an and any are as at be been before being between both but by can could did do does
doing done each for from get gets getting give given has have having how i if in into is it its just let like
make makes many me more most much my need needs no not now of on one only or other our out over own same
should so some such than that the their them then there these they this those through to too under until up
us use used uses using very want was way we were what when where which while who why will with within would
you your yours
""".split())


def terms(text: str) -> List[str]:
    """Index terms of a text, lower-cased, in order (whole identifiers followed by their parts)."""
    out: List[str] = []
    for m in _IDENT.finditer(text):
        word = m.group(0).strip("_.")
        if not word:
            continue
        parts = [p for p in re.split(r"[._]+", word) if p]
        pieces = []
        for p in parts:
            sub = _CAMEL.findall(p)
            pieces += [s.lower() for s in sub] if len(sub) > 1 else [p.lower()]
        whole = "_".join(p.lower() for p in parts)
        if len(parts) > 1 or len(pieces) > 1:
            out.append(whole)
            if len(parts) > 1:  # camelCase parts of a dotted name: keep each part whole too
                out += [p.lower() for p in parts if len(_CAMEL.findall(p)) > 1]
        out += pieces
    # Numbers on their own (error codes, versions) are worth matching too.
    out += re.findall(r"(?<![\w.])[0-9]+(?!\w)", text)
    return out


def index_text(text: str) -> str:
    """The text FTS5 stores for a chunk: its terms joined by spaces."""
    return " ".join(terms(text))


def query_terms(question: str) -> List[str]:
    """Distinct terms of a question worth searching for (stopwords dropped, order kept)."""
    seen = dict.fromkeys(t for t in terms(question) if t not in STOPWORDS and len(t) > 1)
    return list(seen)


def match_expression(question: str) -> str:
    """An FTS5 MATCH expression: any of the question's terms (bm25 ranks documents holding more/rarer ones
    first). Every term is quoted, so FTS5 syntax characters in a question are inert."""
    return " OR ".join(f'"{t}"' for t in query_terms(question))
