"""Load .txt, .md, .rst and .html files into `Document`s: plain text plus its headings and paragraphs.

Every block carries character offsets into `Document.text`. For .txt/.md/.rst that text is the file
itself (decoded), so offsets point into the file; for .html it is the extracted visible text.
Binary or non-UTF-8 files, and anything that is not a regular file (a FIFO would block a read forever), are
skipped with one line each on the `edgeai.retrieval` logger when met in a folder walk, and raise ValueError
when named explicitly; files of unsupported types are counted in one line per walk.

A paragraph longer than MAX_BLOCK_CHARS (one huge line, a minified file) is cut into blocks at whitespace, so
no later stage has to hold or tokenize it whole.

Streaming (`stream_file`, `load_paths(..., stream=True)`: what `RAG.add` uses): a .txt/.md/.rst file is read
twice in READ_BYTES pieces, never whole. The first pass hashes its bytes and checks that it decodes (so a file
that is skipped is skipped before any of it is indexed); the second, run only if the file is indexed, yields
its blocks as they are found while `Document.text` (a `StreamText`) holds only the text its reader has not
released. The blocks are those of the whole-file parsers (which run the same code over one piece), with one
deliberate difference: a line longer than LONG_LINE characters is body text, never a heading, title,
adornment or underline (a 20 MB minified Markdown file starting with "#" was one heading whose title went into
every chunk). HTML pages are parsed whole (the page title's placement depends on the whole body), so they
are capped at MAX_HTML_BYTES.
"""
from __future__ import annotations

import codecs
import logging
import os
import re
import stat
from collections import Counter, deque
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Tuple, Union

log = logging.getLogger("edgeai.retrieval")
# What the loaders (and sphinx.refine) extract from a file: bump when that changes, so that RAG.add re-chunks
# files an index holds from an older extraction (2: HTML skips class=nosearch, <title> heading, <h> markers).
EXTRACT_VERSION = 3  # 3: lines over LONG_LINE characters are never headings
MAX_BLOCK_CHARS = 4000  # ~1000 tokens of prose: far above any chunk, far below what would strain memory
LONG_LINE = MAX_BLOCK_CHARS  # longer lines are body text (see the module docstring): no heading holds more
READ_BYTES = 1 << 16  # a streamed file is read this many bytes at a time
SCAN_CHARS = 1 << 14  # Markdown/reST body text is searched for paragraphs once this much more of it is known
MAX_HTML_BYTES = 32 << 20  # an HTML page is parsed whole: larger ones are skipped rather than held in memory
SUFFIXES = {".txt": "text", ".text": "text", ".md": "markdown", ".markdown": "markdown", ".rst": "rst",
            ".html": "html", ".htm": "html"}


@dataclass
class Block:
    start: int
    end: int
    level: int = 0  # 0 = paragraph; 1.. = heading level
    title: str = ""  # heading text (headings only)


@dataclass
class Document:
    source: str
    text: Union[str, "StreamText"]  # a StreamText, and `blocks` an iterator to read once, when streamed
    blocks: Iterable[Block] = field(default_factory=list)
    digest: Optional[str] = None  # sha256 of the file's bytes and their count (streamed files)
    size: Optional[int] = None


class SkippedFile(ValueError):
    """A file that is not readable text (binary, undecodable, unsupported type)."""


def _open(path: Path):
    """The file opened for binary reading; SkippedFile for anything but a regular file. Opened non-blocking and
    checked on the open descriptor, so a FIFO (or a file swapped for one after a directory walk) never blocks."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SkippedFile(f"{path}: not a regular file (a FIFO, socket or device)")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: Path) -> bytes:
    """The file's bytes; SkippedFile for anything but a regular file."""
    with _open(path) as f:
        return f.read()


_BOM8 = codecs.BOM_UTF8


def _decoded(f, path) -> Iterator[str]:
    """The text of an open binary file, READ_BYTES at a time, decoded as `read_text` decodes a whole file and
    failing with the same SkippedFile (a UTF-8 error names its byte as read_text does: counted after a BOM)."""
    data = f.read(max(READ_BYTES, 8192))
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        dec, utf16 = codecs.getincrementaldecoder("utf-16")(), True
    else:
        if b"\x00" in data[:8192]:
            raise SkippedFile(f"{path}: looks binary (NUL bytes)")
        if data.startswith(_BOM8):
            data = data[len(_BOM8):]
        dec, utf16 = codecs.getincrementaldecoder("utf-8")(), False
    fed = 0  # bytes given to the decoder before `data`
    while True:
        held = len(dec.getstate()[0])  # the start of an unfinished character, kept from the last piece
        try:
            piece = dec.decode(data, final=not data)
        except UnicodeDecodeError as exc:
            if utf16:
                raise SkippedFile(f"{path}: not decodable as UTF-16 ({exc.reason})") from None
            raise SkippedFile(f"{path}: not UTF-8 text (byte {fed - held + exc.start}: {exc.reason})") from None
        if piece:
            yield piece
        if not data:
            return
        fed += len(data)
        data = f.read(READ_BYTES)


def read_text(path: Path) -> str:
    with _open(path) as f:
        return "".join(_decoded(f, path))


class _Hashing:
    """A binary file that hashes and counts what is read from it."""

    def __init__(self, f):
        import hashlib  # here, not at import: hashlib loads OpenSSL (see manifest.sha256_file)

        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def read(self, n):
        data = self.f.read(n)
        self.sha.update(data)
        self.size += len(data)
        return data


def _check_and_hash(path: Path) -> Tuple[str, int]:
    """(sha256, size) of a file that decodes as text; SkippedFile (read_text's) otherwise. Reads it through."""
    with _open(path) as f:
        h = _Hashing(f)
        for _ in _decoded(h, path):
            pass
        return h.sha.hexdigest(), h.size


class StreamText:
    """The text of a file, read as it is needed: sliced with offsets into the whole text (`text[s:e]`), it holds
    only what lies after the point its reader has passed (`release`). Slicing below that point raises."""

    def __init__(self, pieces: Iterable[str]):
        self._pieces = iter(pieces)
        self._buf = ""
        self._base = 0  # offset of _buf[0] in the whole text
        self._keep = 0  # what the reader released: nothing before it is needed
        self.eof = False

    @classmethod
    def of(cls, text: str) -> "StreamText":
        return cls([text])

    @property
    def end(self) -> int:
        """Offset just past the text read so far."""
        return self._base + len(self._buf)

    def more(self) -> bool:
        """Read the next piece (dropping released text first); False at the end of the file."""
        piece = next(self._pieces, None)
        if piece is None:
            self.eof = True
            return False
        buf, self._buf = self._buf, ""
        drop = min(self._keep - self._base, len(buf))
        if drop > 0 and drop * 2 >= len(buf):  # copy the live tail only when it is at most half the buffer
            buf, self._base = buf[drop:], self._keep
        buf += piece  # `buf` is the only reference: CPython appends in place
        self._buf = buf
        return True

    def release(self, upto: int) -> None:
        self._keep = max(self._keep, upto)

    def view(self, start: int) -> Tuple[str, int]:
        """(buffer, offset of its first character), for a search from `start`."""
        if start < self._base:
            raise IndexError(f"offset {start} was released (text kept from {self._base})")
        return self._buf, self._base

    def __getitem__(self, k: slice) -> str:
        buf, base = self.view(k.start)
        return buf[k.start - base:k.stop - base]


_EOL = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"  # where str.splitlines breaks lines


@dataclass
class _Line:
    off: int  # offset of its first character
    end: int  # offset past its line break
    text: Optional[str]  # without its "\r"/"\n" line break; None when the line is long (or a piece of one)
    blank: bool  # nothing but whitespace (a piece of a long line: nothing but whitespace up to its end)
    first: bool = True  # starts a line (False: a later piece of a long line)
    head: str = ""  # a long line's first characters: enough to tell a code fence


class _LineReader:
    """The lines of a StreamText in order (`next`), with lookahead (`peek(k)`); None past the last. Lines are
    those of str.splitlines. A line longer than LONG_LINE comes as pieces as it is read, so it is never held
    whole (the parsers treat it as body text)."""

    def __init__(self, text: "StreamText"):
        self.text = text
        self.pos = 0  # start of the text not made into lines yet
        self.ready: deque = deque()
        self.long: Optional[bool] = None  # inside a long line: whether it is blank so far

    def peek(self, k: int = 0) -> Optional[_Line]:
        while len(self.ready) <= k:
            if not self._split():
                return None
        return self.ready[k]

    def next(self) -> Optional[_Line]:
        line = self.peek()
        if line is not None:
            self.ready.popleft()
        return line

    def _split(self) -> bool:
        """Read on and make lines of what was read; False once everything has been."""
        t = self.text
        if not t.more() and t.end == self.pos:
            return False
        seg = t[self.pos:t.end]
        parts = seg.splitlines(keepends=True)
        # The last line is unfinished unless it ends in a line break ("\r" may be the start of "\r\n").
        tail = parts.pop() if parts and not t.eof and (parts[-1][-1] not in _EOL or parts[-1][-1] == "\r") else None
        off = self.pos
        for part in parts:
            self._finished(off, part)
            off += len(part)
        if tail is not None:
            body = tail[:-1] if tail[-1] == "\r" else tail
            if body and (self.long is not None or len(body) > LONG_LINE):  # long already: pass on what there is
                first = self.long is None
                self.long = (first or self.long) and not body.strip()
                self.ready.append(_Line(off, off + len(body), None, self.long, first, body[:8]))
                off += len(body)
        self.pos = off
        return True

    def _finished(self, off: int, part: str) -> None:
        text = part.rstrip("\r\n")
        if self.long is not None:  # the rest of a long line
            self.ready.append(_Line(off, off + len(part), None, self.long and not text.strip(), False))
            self.long = None
        elif len(text) > LONG_LINE:
            self.ready.append(_Line(off, off + len(part), None, not text.strip(), True, text[:8]))
        else:
            self.ready.append(_Line(off, off + len(part), text, not text.strip()))


_WS = re.compile(r"\s")
_NONSPACE = re.compile(r"\S")
# Where a paragraph can end: after a non-space character followed by a blank line or by only whitespace to the
# end of its span. A paragraph ends at the first such place after its second character (at its first character
# only when no other non-space follows): that is how the regex `\S(?:.*?\S)?(?=\n[ \t]*\n|\s*\Z)` the loader
# used finds paragraphs (its optional group is tried first), and the blocks must stay what they were.
_PARA_END = re.compile(r"\S(?=\n[ \t]*\n|\s*\Z)")


def _cut(text: str, start: int, end: int, out: List[Block], limit: int = MAX_BLOCK_CHARS, base: int = 0,
         final: bool = True) -> int:
    """Blocks of at most `limit` characters covering [start, end) (offsets in the whole text, which `text`
    holds from offset `base`), cut after the last whitespace before the limit (or at the limit, in a run without
    any) and trimmed of the whitespace at the cut. final=False: the paragraph goes on past `end` (not known
    yet), so only the cuts already certain are made. Returns where the uncut rest starts."""
    while end - start > limit:
        cut = start + limit
        ws = None
        for m in _WS.finditer(text, max(start, cut - limit // 4) - base, cut - base):  # look back a quarter at most
            ws = m.start() + base
        piece_end = ws if ws is not None and ws > start else cut
        out.append(Block(start, piece_end))
        start = piece_end
        while start < end and text[start - base].isspace():
            start += 1
    if final and end > start:
        out.append(Block(start, end))
    return start


class _Paragraphs:
    """Blank-line separated paragraphs of one span of a StreamText, long ones cut (see _cut), found as the
    span's text becomes known: `scan(upto)` yields those that text after `upto` cannot change any more,
    `scan(end, final=True)` the rest, the span ending at `end`."""

    def __init__(self, text: "StreamText", start: int):
        self.text, self.pos, self.known = text, start, start
        self.open: Optional[List[int]] = None  # a paragraph not ended yet: [its start, its uncut rest, look from]

    def scan(self, upto: int, final: bool = False) -> Iterator[Block]:
        self.known = upto
        while True:
            if self.open is None:
                buf, base = self.text.view(self.pos)
                m = _NONSPACE.search(buf, self.pos - base, upto - base)
                if m is None:  # only whitespace left
                    self.pos = max(self.pos, upto)
                    return
                s = m.start() + base
                self.open = [s, s, s + 1]
            s, start, look = self.open
            buf, base = self.text.view(start)
            m = _PARA_END.search(buf, look - base, upto - base)  # `\Z` matches at upto
            e = m.end() + base if m else s + 1
            out: List[Block] = []
            # Certain unless only whitespace follows so far (then more text may continue the paragraph: it ends
            # at e or later, and the search goes on from e's last character).
            if final or (m and _NONSPACE.search(buf, e - base, upto - base)):
                _cut(buf, start, e, out, base=base)
                self.open, self.pos = None, e
                yield from out
                continue
            self.open = [s, _cut(buf, start, e, out, base=base, final=False), e - 1 if m else look]
            yield from out
            return


def _plain_blocks(t: "StreamText") -> Iterator[Block]:
    para = _Paragraphs(t, 0)
    while t.more():
        yield from para.scan(t.end)
    yield from para.scan(t.end, final=True)


def parse_plain(text: str) -> List[Block]:
    return list(_plain_blocks(StreamText.of(text)))


_ATX = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)[ \t#]*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_SETEXT = re.compile(r" {0,3}(=+|-+)[ \t]*")


def _markdown_blocks(t: "StreamText") -> Iterator[Block]:
    """ATX (# ...) and setext (=== / ---) headings; '#' lines inside code fences are code, not headings."""
    lines = _LineReader(t)
    para = _Paragraphs(t, 0)  # the body text since the last heading
    in_fence, fence = False, ""
    prev_blank = True  # the line before the first one counts as blank
    while True:
        ln = lines.next()
        if ln is None:
            break
        f = _FENCE.match(ln.head if ln.text is None else ln.text) if ln.first else None
        if f:
            if not in_fence:
                in_fence, fence = True, f.group(1)
            elif f.group(1) == fence:
                in_fence = False
        elif not in_fence and ln.text is not None:
            m = _ATX.match(ln.text)
            nxt = None if m else lines.peek()
            if m:
                yield from para.scan(ln.off, final=True)
                end = ln.off + len(ln.text)
                yield Block(ln.off, end, len(m.group(1)), m.group(2).strip())
                para = _Paragraphs(t, end)
            elif ln.text.strip() and prev_blank and nxt is not None and nxt.text is not None \
                    and _SETEXT.fullmatch(nxt.text):
                yield from para.scan(ln.off, final=True)
                end = nxt.off + len(nxt.text)
                yield Block(ln.off, end, 1 if nxt.text.strip()[0] == "=" else 2, ln.text.strip())
                para = _Paragraphs(t, end)
                ln = lines.next()  # the underline
        prev_blank = ln.blank
        if ln.end - para.known >= SCAN_CHARS:
            yield from para.scan(ln.end)
    yield from para.scan(t.end, final=True)


def parse_markdown(text: str) -> List[Block]:
    return list(_markdown_blocks(StreamText.of(text)))


_RST_ADORN = re.compile(r"^([=\-`:'\"~^_*+#<>.!$%&(),/;?@\[\\\]{|}])\1{2,}[ \t]*$")


def _rst_blocks(t: "StreamText") -> Iterator[Block]:
    """Section titles: a line underlined (optionally also overlined) by a repeated punctuation character.
    Levels follow the order in which adornment styles first appear, as docutils does."""
    lines = _LineReader(t)
    para = _Paragraphs(t, 0)
    styles: List[Tuple[str, bool]] = []
    prev_blank = True
    while True:
        ln = lines.next()
        if ln is None:
            break
        line, title = ln.text, None
        if line is not None:
            n1, n2 = lines.peek(0), lines.peek(1)
            t1 = n1.text if n1 is not None else None
            t2 = n2.text if n2 is not None else None
            if _RST_ADORN.match(line) and t2 is not None and _RST_ADORN.match(t2) and t1 is not None \
                    and t1.strip() and line[0] == t2[0]:
                title, style, last = t1, (line[0], True), n2
            elif line.strip() and not _RST_ADORN.match(line) and t1 is not None and _RST_ADORN.match(t1) \
                    and len(t1.rstrip()) >= len(line.rstrip()) and prev_blank:
                title, style, last = line, (t1[0], False), n1
        if title is not None:
            if style not in styles:
                styles.append(style)
            yield from para.scan(ln.off, final=True)
            end = last.off + len(last.text)
            yield Block(ln.off, end, styles.index(style) + 1, title.strip())
            para = _Paragraphs(t, end)
            while ln is not last:
                ln = lines.next()
        prev_blank = ln.blank
        if ln.end - para.known >= SCAN_CHARS:
            yield from para.scan(ln.end)
    yield from para.scan(t.end, final=True)


def parse_rst(text: str) -> List[Block]:
    return list(_rst_blocks(StreamText.of(text)))


class _HTMLText(HTMLParser):
    """Visible text of an HTML page; block elements become paragraph breaks, h1-h6 become headings.

    Elements whose class says they are not for search (`nosearch`: SQLite's and Fossil's docs put the site menu,
    the logo's tagline and the page's table of contents in them, repeated on every page) are skipped with
    everything inside them: otherwise every page's first chunk opens with the same ~40 tokens of menu.
    SQLite's pages also mark sections for their search with a hidden `<h>` element (pragma.html: one per PRAGMA,
    74 in one 80 kB page); each becomes a heading one level below the heading it sits under."""

    SKIP = {"script", "style", "noscript", "template", "head", "svg"}
    BLOCK = {"p", "div", "li", "ul", "ol", "pre", "table", "tr", "section", "article", "blockquote", "dd", "dt",
             "dl", "br", "hr", "header", "footer", "nav", "main", "aside", "figure", "figcaption", "form"}
    SKIP_CLASSES = {"nosearch"}
    VOID = {"br", "hr", "img", "input", "meta", "link", "area", "base", "col", "embed", "source", "track", "wbr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.items: List[Tuple[int, str]] = []  # (heading level or 0, text)
        self.title = ""
        self._in_title = False
        self._buf: List[str] = []
        self._skip = 0
        self._skip_el: List[List] = []  # [tag, depth] of each open element skipped for its class
        self._heading = 0
        self._level = 0  # level of the last h1-h6, for `<h>` markers
        self._pre = 0

    def _flush(self):
        raw = "".join(self._buf)
        txt = raw.strip("\n") if self._pre else re.sub(r"\s+", " ", raw).strip()
        if txt.strip():
            self.items.append((self._heading, txt))
        self._buf = []

    def handle_starttag(self, tag, attrs):
        if self._skip_el:
            if tag == self._skip_el[-1][0]:
                self._skip_el[-1][1] += 1
            return
        classes = set(next((v or "" for k, v in attrs if k == "class"), "").split())
        if classes & self.SKIP_CLASSES and tag not in self.VOID:
            self._flush()
            self._skip_el.append([tag, 1])
        elif tag == "title":
            self._in_title = True
        elif tag in self.SKIP:
            self._skip += 1
        elif re.fullmatch(r"h[1-6]", tag):
            self._flush()
            self._heading = self._level = int(tag[1])
        elif tag == "h":
            self._flush()
            self._heading = min(self._level + 1, 6)
        elif tag in self.BLOCK:
            self._flush()
            self._pre += tag == "pre"

    def handle_endtag(self, tag):
        if self._skip_el:
            if tag == self._skip_el[-1][0]:
                self._skip_el[-1][1] -= 1
                if not self._skip_el[-1][1]:
                    self._skip_el.pop()
            return
        if tag == "title":
            self._in_title = False
        elif tag in self.SKIP:
            self._skip = max(0, self._skip - 1)
        elif re.fullmatch(r"h[1-6]?", tag):
            self._flush()
            self._heading = 0
        elif tag in self.BLOCK:
            self._flush()
            if tag == "pre":
                self._pre = max(0, self._pre - 1)

    def handle_startendtag(self, tag, attrs):
        if tag in ("br", "hr") and not self._skip_el:
            self._flush()

    def handle_data(self, data):
        if self._in_title:
            self.title += data
        elif not self._skip and not self._skip_el:
            self._buf.append(data)


def _norm_title(t: str) -> str:
    return re.sub(r"\s+", " ", t).strip().rstrip("\u00b6").strip().casefold()


def _page_title_heading(title: str, items: List[Tuple[int, str]]) -> List[Tuple[int, str]]:
    """Put the page's <title> above its body as a level-1 heading (the body's headings one level lower) when
    the body does not carry the title itself: pages that use several <h1> for their numbered sections
    ("1. Syntax", "2. The CREATE TABLE command") or start below <h1> would otherwise file every chunk under a
    section name alone, without the page it belongs to. A body with exactly one <h1> already has its title;
    so does one with a heading that says the title (equal, or one starting with the other, ignoring case)."""
    t = _norm_title(title)
    heads = [_norm_title(txt) for level, txt in items if level]
    if not t or sum(level == 1 for level, _ in items) == 1 or any(
            h and (h.startswith(t) or t.startswith(h)) for h in heads):
        return items
    return [(1, re.sub(r"\s+", " ", title).strip())] + [(min(level + 1, 6) if level else 0, txt)
                                                       for level, txt in items]


def parse_html(html: str) -> Tuple[str, List[Block]]:
    p = _HTMLText()
    p.feed(html)
    p.close()
    p._flush()
    spans, pos = [], 0
    for level, txt in _page_title_heading(p.title, p.items):
        pos += 2 if spans else 0  # the "\n\n" joining items
        spans.append((pos, pos + len(txt), level, txt))
        pos += len(txt)
    text = "\n\n".join(txt for _, _, _, txt in spans)
    blocks: List[Block] = []
    for s, e, level, txt in spans:
        if level:
            blocks.append(Block(s, e, level, txt))
        else:
            _cut(text, s, e, blocks)
    return text, blocks


def _kind(path: Path) -> str:
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise SkippedFile(f"{path}: unsupported file type (supported: {', '.join(sorted(SUFFIXES))})")
    if kind == "html" and path.stat().st_size > MAX_HTML_BYTES:
        raise SkippedFile(f"{path}: HTML page of {path.stat().st_size / 1e6:.0f} MB; pages are read whole, so at "
                          f"most {MAX_HTML_BYTES / 1e6:.0f} MB are indexed")
    return kind


def load_file(path) -> Document:
    """Load one file whole; raises SkippedFile (a ValueError) when it is binary, undecodable or unsupported."""
    path = Path(path)
    kind = _kind(path)
    text = read_text(path)
    if kind == "html":
        text, blocks = parse_html(text)
    else:
        blocks = {"text": parse_plain, "markdown": parse_markdown, "rst": parse_rst}[kind](text)
    return Document(str(path), text, blocks)


def _pieces(path: Path) -> Iterator[str]:
    with _open(path) as f:  # opened when the first piece is asked for
        yield from _decoded(f, path)


def stream_file(path) -> Document:
    """One file as a Document whose blocks are read once, as they are needed (see the module docstring), with
    the file's digest and size. SkippedFile as load_file, raised before any block: the file is read through
    once first, hashed and decoded. An HTML page is loaded whole."""
    path = Path(path)
    kind = _kind(path)
    if kind == "html":
        doc = load_file(path)
        doc.digest, doc.size = _check_and_hash(path)
        return doc
    digest, size = _check_and_hash(path)
    text = StreamText(_pieces(path))
    blocks = {"text": _plain_blocks, "markdown": _markdown_blocks, "rst": _rst_blocks}[kind](text)
    return Document(str(path), text, blocks, digest, size)


def iter_files(paths: Iterable, skipped: List[Tuple[Path, str]] | None = None) -> Iterator[Tuple[Path, bool]]:
    """(file, named_explicitly) for each supported file under the given files/folders, sorted, hidden skipped.
    Walked entries that are not loaded go to `skipped` as (path, "unsupported" | reason)."""
    def skip(path, why):
        if skipped is not None:
            skipped.append((path, why))

    for p in paths:
        p = Path(p)
        if p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for f in sorted(files):
                    if f.startswith("."):
                        continue
                    path = Path(root) / f
                    if path.suffix.lower() not in SUFFIXES:
                        skip(path, "unsupported")
                        continue
                    try:
                        regular = stat.S_ISREG(path.stat().st_mode)
                    except OSError as exc:  # a dangling link, a file gone since the walk listed it
                        skip(path, f"{path}: {exc.strerror or exc}")
                        continue
                    if not regular:
                        skip(path, f"{path}: not a regular file (a FIFO, socket or device)")
                        continue
                    yield path, False
        elif p.exists():
            yield p, True  # read_bytes says what is wrong with a FIFO or device named explicitly
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")


def _report_unsupported(items: List[Path]) -> None:
    if not items:
        return
    kinds = Counter(f.suffix.lower() or "(no suffix)" for f in items)
    top = ", ".join(f"{k} x{n}" if n > 1 else k for k, n in kinds.most_common(6))
    more = ", ..." if len(kinds) > 6 else ""
    log.warning("skipped %d file%s of unsupported types (%s%s); edgeai indexes %s", len(items),
                "s" if len(items) > 1 else "", top, more, " ".join(sorted(SUFFIXES)))


def load_paths(paths, strict_explicit: bool = True, stream: bool = False) -> Iterator[Document]:
    """Documents under files/folders. Folder contents that are not text are skipped, one line each on the
    `edgeai.retrieval` logger (unsupported types: one line in all); a file named explicitly that is not
    loadable raises (unless strict_explicit=False). stream=True: `stream_file` documents (read once, in
    pieces), else whole ones."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    n = 0
    skipped: List[Tuple[Path, str]] = []
    unsupported: List[Path] = []

    def drain():  # report what the walk passed over so far, in walk order
        for path, why in skipped:
            if why == "unsupported":
                unsupported.append(path)
            else:
                log.warning("skipping %s", why)
        skipped.clear()

    for f, explicit in iter_files(paths, skipped):
        drain()
        try:
            doc = stream_file(f) if stream else load_file(f)
        except (SkippedFile, OSError) as exc:
            if explicit and strict_explicit:
                raise
            log.warning("skipping %s", exc if isinstance(exc, SkippedFile) else f"{f}: {exc.strerror or exc}")
            continue
        n += 1
        yield doc
    drain()
    _report_unsupported(unsupported)
    if n == 0:
        raise ValueError(f"no loadable documents ({', '.join(sorted(SUFFIXES))}) found in "
                         f"{', '.join(str(p) for p in paths)}")
