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
only adds integers; that keeps chunking far cheaper than embedding. Chunks are made lazily (`iter_split`), so
indexing a huge file never holds all of its chunks.

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


def _whitespace_tokens(texts: Sequence[str]) -> List[int]:
    return [len(t.split()) for t in texts]


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
        """The chunks of `doc`, in order, made as they are consumed: besides the document itself, only its
        block list and one token count per block are held, so a huge file does not hold all its chunks."""
        text = doc.text
        path: List[Tuple[int, str]] = []  # (level, title) stack
        sections: List[Tuple[Tuple[str, ...], List[int]]] = []  # (heading path, indices into doc.blocks)
        for i, b in enumerate(doc.blocks):
            if b.level:
                while path and path[-1][0] >= b.level:
                    path.pop()
                path.append((b.level, b.title))
                sections.append((tuple(t for _, t in path), [i]))  # the heading opens its section's text
            else:
                if not sections:
                    sections.append(((), []))
                sections[-1][1].append(i)
        blocks = doc.blocks
        counts: List[int] = []
        for a in range(0, len(blocks), COUNT_SLICE):  # a bounded slice of paragraph copies at a time
            counts += self.count_tokens([text[b.start:b.end] for b in blocks[a:a + COUNT_SLICE]])
        sections = self._merge_tiny(sections, blocks, counts)

        def chunk(section, s, e, n):
            return Chunk(doc.source, section, s, e, text[s:e], n)

        for section, members in sections:
            cur: List[int] = []
            cur_n = 0
            for i in members:
                n = counts[i]
                if n > self.max_tokens:  # too long on its own: flush, then window it
                    if cur and not all(blocks[x].level for x in cur):
                        yield chunk(section, blocks[cur[0]].start, blocks[cur[-1]].end, cur_n)
                    for s, e, k in self._windows(text, blocks[i].start, blocks[i].end):
                        yield chunk(section, s, e, k)
                    cur, cur_n = [], 0
                    continue
                if cur and (cur_n + n > self.max_tokens or blocks[i].end - blocks[cur[0]].start > self.max_chars):
                    yield chunk(section, blocks[cur[0]].start, blocks[cur[-1]].end, cur_n)
                    keep: List[int] = []  # overlap: trailing paragraphs of the chunk just emitted
                    kn = 0
                    for x in reversed(cur):
                        if kn + counts[x] > self.overlap or kn + counts[x] + n > self.max_tokens \
                                or blocks[i].end - blocks[x].start > self.max_chars:
                            break
                        keep.insert(0, x)
                        kn += counts[x]
                    cur, cur_n = keep, kn
                cur.append(i)
                cur_n += n
            # A section that is only a heading still yields a chunk: the title alone is searchable.
            if cur:
                yield chunk(section, blocks[cur[0]].start, blocks[cur[-1]].end, cur_n)

    def _merge_tiny(self, sections, blocks: List[Block], counts: List[int]):
        """Fold each tiny section into the section before it when that one is its parent (or an earlier tiny
        sibling already folded there), so spans stay contiguous; the result is filed under the parent."""
        out: List[Tuple[Tuple[str, ...], List[int]]] = []
        for path, members in sections:
            body = sum(counts[i] for i in members if not blocks[i].level)
            if len(path) > 1 and body < self.min_section_tokens:
                parent = path[:-1]
                if out and out[-1][0] == parent:
                    out[-1][1].extend(members)
                else:
                    out.append((parent, list(members)))
                continue
            out.append((path, list(members)))
        return out

    def split_all(self, docs: Iterable[Document]) -> Iterator[Chunk]:
        for d in docs:
            yield from self.iter_split(d)
