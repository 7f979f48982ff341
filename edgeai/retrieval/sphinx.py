"""Sphinx-built HTML documentation (the Python docs in Debian's python3.x-doc, most project docs) made into
sections that retrieval can use, from the text and blocks the HTML loader extracts.

Sphinx pages carry three things that hurt retrieval when read as plain HTML:
- navigation sidebars ("Table of Contents", "Previous topic", "Next topic", "This Page", "Navigation"), repeated
  on every page: they become sections of their own whose text is a list of titles, close to many questions;
- the "¶" permalink after each heading, which ends up in every heading path;
- API entries (`csv.reader(csvfile, dialect='excel', **fmtparams)¶`) are definition terms, not headings, so
  the whole "Module Contents" section (dozens of functions) is one section and its chunks are filed under it.

`refine(doc)` drops the navigation sections, strips the "¶" from titles, and turns each API entry (a short
paragraph ending in "¶") into a heading one level below the section it is in. Offsets into `doc.text` are
unchanged: the text stays as the loader extracted it. A document without Sphinx's "¶" marks is returned as is.
"""
from __future__ import annotations

from dataclasses import replace

from .loaders import Block, Document

PERMALINK = "¶"
NAV_TITLES = frozenset({"table of contents", "previous topic", "next topic", "this page", "navigation",
                        "quick search", "search", "related topics"})
MAX_ENTRY_CHARS = 300  # an API signature line; longer "¶"-ended paragraphs are text, not entries


def is_sphinx(doc: Document) -> bool:
    return doc.source.endswith((".html", ".htm")) and any(
        b.level and b.title.endswith(PERMALINK) for b in doc.blocks)


def refine(doc: Document) -> Document:
    if not is_sphinx(doc):
        return doc
    out = []
    in_nav = False
    level = 0  # level of the last real heading
    for b in doc.blocks:
        if b.level:
            title = b.title.rstrip(PERMALINK).strip()
            in_nav = title.lower() in NAV_TITLES
            if not in_nav:
                level = b.level
                out.append(Block(b.start, b.end, b.level, title))
            continue
        if in_nav:
            continue
        text = doc.text[b.start:b.end].strip()
        if text.endswith(PERMALINK) and len(text) <= MAX_ENTRY_CHARS and "\n" not in text:
            out.append(Block(b.start, b.end, min(level + 1, 6), text.rstrip(PERMALINK).strip()))
        else:
            out.append(b)
    return replace(doc, blocks=out)
