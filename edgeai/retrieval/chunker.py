"""Split `Document`s into chunks that respect headings and paragraphs, sized in embedding-model tokens.

A chunk never crosses a heading: each section (the text under one heading) is packed paragraph by paragraph
up to `max_tokens`. The next chunk of the same section starts with the last paragraphs of the previous one
(up to `overlap_tokens`), so a fact split across a boundary is still whole in one chunk. A paragraph longer
than `max_tokens` is cut into token windows (stride max_tokens - overlap_tokens) on token boundaries.
Each chunk is a contiguous span `text[start:end]` of its document, with the heading path it sits under.

Tiny sections (fewer than `min_section_tokens` of text under their heading, e.g. a one-line docstring of a
helper class) are merged into the section just before them when that is their parent or a group of their
tiny siblings, and are then filed under the parent's heading path. On its own such a section is nearly all
heading, so its embedding sits close to any question naming the topic and out-ranks the section that
actually answers (`csv.unix_dialect` above `csv.reader`); inside its parent it is still found by its words.
Token counts come from batched calls of the (Rust) tokenizer (COUNT_SLICE paragraphs each), so the Python loop
only adds integers; that keeps chunking far cheaper than embedding. Chunks are made lazily (`iter_split`) from
blocks as they come, so indexing a huge (streamed) file holds neither all of its chunks nor all of its blocks.

A chunk also spans at most `max_chars` characters: text with few tokens per character (a long run without
spaces is one [UNK] per 100 characters) would otherwise pack many paragraphs into one huge chunk.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple

from .loaders import MAX_BLOCK_CHARS, Block, Document


@dataclass
class Chunk:
    source: str
    section: Tuple[str, ...]  # heading path, outermost first
    start: int
    end: int
    text: str
    n_tokens: int

    @property
    def section_title(self) -> str:
        return " > ".join(self.section)

    @property
    def embed_text(self) -> str:
        """What gets embedded: the heading path gives a short paragraph its context."""
        return f"{self.section_title}\n{self.text}" if self.section else self.text


COUNT_SLICE = 512  # paragraphs whose token counts are taken in one tokenizer call
# ... and at most this many characters: 512 paragraphs of a minified file (4,000 characters each) made ~2 MB of
# copies and ~0.5 M tokens of Encodings (~100 bytes a token) at once
COUNT_CHARS = 1 << 17


def _whitespace_tokens(texts: Sequence[str]) -> List[int]:
    return [len(t.split()) for t in texts]


class _Pack:
    """Packs one section's blocks (tiny sections folded in) into chunks as they are added: paragraph by paragraph
    up to max_tokens / max_chars, the next chunk starting with the last paragraphs of the one before (overlap);
    a paragraph over max_tokens alone is cut into token windows."""

    def __init__(self, chunker: "Chunker", doc: Document, section: Tuple[str, ...]):
        self.c, self.doc, self.section = chunker, doc, section
        self.cur: List[Tuple[Block, int]] = []  # (block, tokens) of the chunk being filled
        self.n = 0

    def _chunk(self, s: int, e: int, n: int) -> Chunk:
        return Chunk(self.doc.source, self.section, s, e, self.doc.text[s:e], n)

    def add(self, b: Block, n: int) -> Iterator[Chunk]:
        c, cur = self.c, self.cur
        if n > c.max_tokens:  # too long on its own: flush, then window it
            if cur and not all(x.level for x, _ in cur):
                yield self._chunk(cur[0][0].start, cur[-1][0].end, self.n)
            for s, e, k in c._windows(self.doc.text, b.start, b.end):
                yield self._chunk(s, e, k)
            self.cur, self.n = [], 0
            return
        if cur and (self.n + n > c.max_tokens or b.end - cur[0][0].start > c.max_chars):
            yield self._chunk(cur[0][0].start, cur[-1][0].end, self.n)
            keep: List[Tuple[Block, int]] = []  # overlap: trailing paragraphs of the chunk just emitted
            kn = 0
            for x, xn in reversed(cur):
                if kn + xn > c.overlap or kn + xn + n > c.max_tokens or b.end - x.start > c.max_chars:
                    break
                keep.insert(0, (x, xn))
                kn += xn
            self.cur, self.n = keep, kn
        self.cur.append((b, n))
        self.n += n

    def finish(self) -> Iterator[Chunk]:
        # A section that is only a heading still yields a chunk: the title alone is searchable.
        if self.cur:
            yield self._chunk(self.cur[0][0].start, self.cur[-1][0].end, self.n)


class Chunker:
    def __init__(self, max_tokens: int = 200, overlap_tokens: int = 40,
                 count_tokens: Optional[Callable[[Sequence[str]], List[int]]] = None,
                 tokenizer=None, min_section_tokens: int = 24, max_chars: int = MAX_BLOCK_CHARS):
        """count_tokens(texts) -> counts (e.g. Embedder.count_tokens). `tokenizer` (a tokenizers.Tokenizer)
        additionally lets long paragraphs be cut on exact token boundaries; without either, words are used."""
        if max_tokens < 8:
            raise ValueError("max_tokens must be >= 8")
        if not 0 <= overlap_tokens < max_tokens // 2 + 1:
            raise ValueError("overlap_tokens must be >= 0 and at most half of max_tokens")
        if min_section_tokens < 0:
            raise ValueError("min_section_tokens must be >= 0")
        if max_chars < 1:
            raise ValueError("max_chars must be >= 1")
        self.max_chars = max_chars
        self.max_tokens, self.overlap = max_tokens, overlap_tokens
        self.min_section_tokens = min_section_tokens
        self.tokenizer = tokenizer
        self.count_tokens = count_tokens or _whitespace_tokens

    @classmethod
    def for_embedder(cls, embedder, max_tokens: Optional[int] = None, overlap_tokens: int = 40) -> "Chunker":
        # The heading line is embedded too: leave it room within the model's max_length (and [CLS]/[SEP]).
        mt = max_tokens or max(8, min(200, int(embedder.max_length * 0.8) - 2))
        overlap_tokens = min(overlap_tokens, mt // 4)
        return cls(mt, overlap_tokens, count_tokens=getattr(embedder, "count_tokens", None),
                   tokenizer=getattr(embedder, "_count_tok", None))

    def _windows(self, text: str, start: int, end: int) -> Iterator[Tuple[int, int, int]]:
        """Cut one long paragraph into (start, end, n_tokens) windows on token (or word) boundaries."""
        seg = text[start:end]
        if self.tokenizer is not None:
            offs = self.tokenizer.encode(seg, add_special_tokens=False).offsets
        else:
            import re
            offs = [(m.start(), m.end()) for m in re.finditer(r"\S+", seg)]
        step = self.max_tokens - self.overlap
        for i in range(0, len(offs), step):
            w = offs[i:i + self.max_tokens]
            yield start + w[0][0], start + w[-1][1], len(w)
            if i + self.max_tokens >= len(offs):
                break

    def split(self, doc: Document) -> List[Chunk]:
        return list(self.iter_split(doc))

    def iter_split(self, doc: Document) -> Iterator[Chunk]:
        """The chunks of `doc`, in order, made as they are consumed, from its blocks as they come: a section's
        chunks are made as its blocks arrive (a section that may be tiny waits until it has enough text or
        ends), so besides one slice of blocks (COUNT_SLICE, COUNT_CHARS), only the blocks of the chunk being
        filled are held. A streamed document's text (loaders.StreamText) is told what is no longer needed."""
        text = doc.text
        release = getattr(text, "release", None)
        heads: List[Tuple[int, str]] = []  # (level, title) stack
        pack: Optional[_Pack] = None  # the section being made into chunks (tiny sections folded in)
        sec: Optional[list] = None  # the section being read: [heading path, held (block, count)s, body tokens]

        def new_pack(section):
            nonlocal pack
            if pack is not None:
                yield from pack.finish()
            pack = _Pack(self, doc, section)

        def decide():  # `sec` is not tiny: it has its own chunks, and its later blocks go straight to them
            yield from new_pack(sec[0])
            for b, n in sec[1]:
                yield from pack.add(b, n)
            sec[1] = None

        def close():  # `sec` ends: undecided means tiny, folded into its parent's chunks (module docstring)
            if sec is not None and sec[1] is not None:
                if pack is None or pack.section != sec[0][:-1]:
                    yield from new_pack(sec[0][:-1])
                for b, n in sec[1]:
                    yield from pack.add(b, n)

        blocks = iter(doc.blocks)
        last = None
        while True:
            held, chars = [], 0  # a bounded slice of paragraph copies (and of the tokenizer's Encodings) at a time
            for b in blocks:
                held.append(b)
                chars += b.end - b.start
                if len(held) == COUNT_SLICE or chars >= COUNT_CHARS:
                    break
            if not held:
                break
            for b, n in zip(held, self.count_tokens([text[b.start:b.end] for b in held])):
                if b.level:
                    yield from close()
                    while heads and heads[-1][0] >= b.level:
                        heads.pop()
                    heads.append((b.level, b.title))
                    sec = [tuple(t for _, t in heads), [(b, n)], 0]  # the heading opens its section's text
                else:
                    if sec is None:
                        sec = [(), [], 0]
                    sec[2] += n
                    if sec[1] is None:
                        yield from pack.add(b, n)
                    else:
                        sec[1].append((b, n))
                if sec[1] is not None and (len(sec[0]) <= 1 or sec[2] >= self.min_section_tokens):
                    yield from decide()
            last = held[-1]
            if release is not None:
                release(min([x[0][0].start for x in (pack and pack.cur, sec and sec[1]) if x] or [last.end]))
        yield from close()
        if pack is not None:
            yield from pack.finish()

    def split_all(self, docs: Iterable[Document]) -> Iterator[Chunk]:
        for d in docs:
            yield from self.iter_split(d)
