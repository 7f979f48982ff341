"""Load .txt, .md, .rst and .html files into `Document`s: plain text plus its headings and paragraphs.

Every block carries character offsets into `Document.text`. For .txt/.md/.rst that text is the file
itself (decoded), so offsets point into the file; for .html it is the extracted visible text.
Binary or non-UTF-8 files, and anything that is not a regular file (a FIFO would block a read forever), are
skipped with one line each on the `edgeai.retrieval` logger when met in a folder walk, and raise ValueError
when named explicitly; files of unsupported types are counted in one line per walk.

A paragraph longer than MAX_BLOCK_CHARS (one huge line, a minified file) is cut into blocks at whitespace, so
no later stage has to hold or tokenize it whole.
"""
from __future__ import annotations

import logging
import os
import re
import stat
from collections import Counter
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Iterable, Iterator, List, Tuple

log = logging.getLogger("edgeai.retrieval")
# What the loaders (and sphinx.refine) extract from a file: bump when that changes, so that RAG.add re-chunks
# files an index holds from an older extraction (2: HTML skips class=nosearch, <title> heading, <h> markers).
EXTRACT_VERSION = 2
MAX_BLOCK_CHARS = 4000  # ~1000 tokens of prose: far above any chunk, far below what would strain memory
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
    text: str
    blocks: List[Block] = field(default_factory=list)


class SkippedFile(ValueError):
    """A file that is not readable text (binary, undecodable, unsupported type)."""


def read_bytes(path: Path) -> bytes:
    """The file's bytes; SkippedFile for anything but a regular file. Opened non-blocking and checked on the
    open descriptor, so a FIFO (or a file swapped for one after a directory walk) never blocks the read."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SkippedFile(f"{path}: not a regular file (a FIFO, socket or device)")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


def read_text(path: Path) -> str:
    data = read_bytes(path)
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise SkippedFile(f"{path}: not decodable as UTF-16 ({exc.reason})") from None
    if b"\x00" in data[:8192]:
        raise SkippedFile(f"{path}: looks binary (NUL bytes)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SkippedFile(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None


def _lines(text: str) -> Iterator[Tuple[int, str]]:
    """(offset, line without newline) for each line."""
    pos = 0
    for line in text.splitlines(keepends=True):
        yield pos, line.rstrip("\r\n")
        pos += len(line)


_WS = re.compile(r"\s")


def _cut(text: str, start: int, end: int, out: List[Block], limit: int = MAX_BLOCK_CHARS) -> None:
    """Blocks of at most `limit` characters covering text[start:end], cut after the last whitespace before the
    limit (or at the limit, in a run without any) and trimmed of the whitespace at the cut."""
    while end - start > limit:
        cut = start + limit
        ws = None
        for m in _WS.finditer(text, max(start, cut - limit // 4), cut):  # look back a quarter at most
            ws = m.start()
        piece_end = ws if ws is not None and ws > start else cut
        out.append(Block(start, piece_end))
        start = piece_end
        while start < end and text[start].isspace():
            start += 1
    if end > start:
        out.append(Block(start, end))


def _paragraphs(text: str, spans: List[Tuple[int, int]], out: List[Block]) -> None:
    """Blank-line separated paragraphs inside the given (start, end) spans, long ones cut (see _cut)."""
    for s, e in spans:
        for m in re.finditer(r"\S(?:.*?\S)?(?=\n[ \t]*\n|\s*\Z)", text[s:e], re.S):
            _cut(text, s + m.start(), s + m.end(), out)


def parse_plain(text: str) -> List[Block]:
    out: List[Block] = []
    _paragraphs(text, [(0, len(text))], out)
    return out


_ATX = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)[ \t#]*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")


def parse_markdown(text: str) -> List[Block]:
    """ATX (# ...) and setext (=== / ---) headings; '#' lines inside code fences are code, not headings."""
    blocks: List[Block] = []
    lines = list(_lines(text))
    body_start, in_fence, fence = 0, False, ""

    def flush(upto):
        if upto > body_start:
            _paragraphs(text, [(body_start, upto)], blocks)

    i = 0
    while i < len(lines):
        off, line = lines[i]
        f = _FENCE.match(line)
        if f:
            if not in_fence:
                in_fence, fence = True, f.group(1)
            elif f.group(1) == fence:
                in_fence = False
        elif not in_fence:
            m = _ATX.match(line)
            nxt = lines[i + 1][1] if i + 1 < len(lines) else ""
            if m:
                flush(off)
                blocks.append(Block(off, off + len(line), len(m.group(1)), m.group(2).strip()))
                body_start = off + len(line)
            elif line.strip() and re.fullmatch(r" {0,3}(=+|-+)[ \t]*", nxt) and \
                    (i == 0 or not lines[i - 1][1].strip()):
                flush(off)
                end = lines[i + 1][0] + len(nxt)
                blocks.append(Block(off, end, 1 if nxt.strip()[0] == "=" else 2, line.strip()))
                body_start = end
                i += 1
        i += 1
    flush(len(text))
    return blocks


_RST_ADORN = re.compile(r"^([=\-`:'\"~^_*+#<>.!$%&(),/;?@\[\\\]{|}])\1{2,}[ \t]*$")


def parse_rst(text: str) -> List[Block]:
    """Section titles: a line underlined (optionally also overlined) by a repeated punctuation character.
    Levels follow the order in which adornment styles first appear, as docutils does."""
    blocks: List[Block] = []
    lines = list(_lines(text))
    styles: List[Tuple[str, bool]] = []
    body_start = 0
    i = 0
    while i < len(lines):
        off, line = lines[i]
        title_i = None
        if _RST_ADORN.match(line) and i + 2 < len(lines) and _RST_ADORN.match(lines[i + 2][1]) \
                and lines[i + 1][1].strip() and line[0] == lines[i + 2][1][0]:
            title_i, style, end_i = i + 1, (line[0], True), i + 2
        elif line.strip() and not _RST_ADORN.match(line) and i + 1 < len(lines) \
                and _RST_ADORN.match(lines[i + 1][1]) and len(lines[i + 1][1].rstrip()) >= len(line.rstrip()) \
                and (i == 0 or not lines[i - 1][1].strip()):
            title_i, style, end_i = i, (lines[i + 1][1][0], False), i + 1
        if title_i is None:
            i += 1
            continue
        if style not in styles:
            styles.append(style)
        if off > body_start:
            _paragraphs(text, [(body_start, off)], blocks)
        end = lines[end_i][0] + len(lines[end_i][1])
        blocks.append(Block(off, end, styles.index(style) + 1, lines[title_i][1].strip()))
        body_start = end
        i = end_i + 1
    if len(text) > body_start:
        _paragraphs(text, [(body_start, len(text))], blocks)
    return blocks


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


def load_file(path) -> Document:
    """Load one file; raises SkippedFile (a ValueError) when it is binary, undecodable or unsupported."""
    path = Path(path)
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise SkippedFile(f"{path}: unsupported file type (supported: {', '.join(sorted(SUFFIXES))})")
    text = read_text(path)
    if kind == "html":
        text, blocks = parse_html(text)
    else:
        blocks = {"text": parse_plain, "markdown": parse_markdown, "rst": parse_rst}[kind](text)
    return Document(str(path), text, blocks)


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


def load_paths(paths, strict_explicit: bool = True) -> Iterator[Document]:
    """Documents under files/folders. Folder contents that are not text are skipped, one line each on the
    `edgeai.retrieval` logger (unsupported types: one line in all); a file named explicitly that is not
    loadable raises (unless strict_explicit=False)."""
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
            doc = load_file(f)
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
