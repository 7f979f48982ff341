"""Streamed loading (`loaders.stream_file`, what `RAG.add` reads files with): the blocks and chunks of a file read
in pieces are those of the file loaded whole, whatever the piece boundaries; a large file is never held whole;
skipped files are skipped before any of them is indexed, with the same messages."""
import hashlib
import random
import tracemalloc

import pytest

from edgeai.retrieval import chunker as chunker_mod
from edgeai.retrieval import loaders
from edgeai.retrieval.chunker import Chunker
from edgeai.retrieval.loaders import (LONG_LINE, Document, SkippedFile, StreamText, load_file, load_paths,
                                      parse_markdown, parse_plain, parse_rst, stream_file)

PARSE = {"text": parse_plain, "markdown": parse_markdown, "rst": parse_rst}
STREAM = {"text": loaders._plain_blocks, "markdown": loaders._markdown_blocks, "rst": loaders._rst_blocks}
SUFFIX = {"text": ".txt", "markdown": ".md", "rst": ".rst"}

# Pieces that make headings (ATX, setext, reST over/underlines), code fences, blank lines with spaces, every
# kind of line break str.splitlines knows, non-ASCII text and whitespace.
ATOMS = ["word", "alpha beta", "#", "## Sub", "# Title", "====", "----", "~~~~", "^^^^", "```", "```py",
         "~~~", " ", "  ", "\t", "\n", "\n", "\n\n", "\r\n", "\r\n\r\n", "\r", "\x0c", "\u2028", "\x85", "\xa0",
         "é", "日本", "x" * 60, "\n   \n", "\n \t\n", ".. note::"]


def _synthetic(rng: random.Random, n: int) -> str:
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.02:  # long lines: a run without spaces, words, whitespace (none starts a heading)
            out.append(rng.choice(["w" * rng.randint(3000, 9000), "word " * rng.randint(700, 2000),
                                   " " * rng.randint(3000, 6000)]))
        elif r < 0.1:
            out.append(f"\n{rng.choice(['Heading', 'A title'])}\n{rng.choice('=-~^*') * rng.randint(2, 20)}\n")
        elif r < 0.15:
            c = rng.choice("=-~#*")
            out.append(f"\n{c * 8}\nOver Title\n{c * 8}\n")
        else:
            out.append(rng.choice(ATOMS))
        out.append(rng.choice([" ", " ", "\n", ""]))
    return "".join(out)


def _in_pieces(text: str, rng: random.Random, longest: int):
    i = 0
    while i < len(text):
        n = rng.randint(1, longest)
        yield text[i:i + n]
        i += n


def _chunks(chunks):
    return [(c.section, c.start, c.end, c.text, c.n_tokens) for c in chunks]


@pytest.mark.parametrize("seed", range(6))
def test_blocks_and_chunks_do_not_depend_on_the_pieces(seed):
    rng = random.Random(seed)
    text = _synthetic(rng, rng.randint(50, 250))
    for kind in PARSE:
        whole = PARSE[kind](text)
        chunker = Chunker(max_tokens=24, overlap_tokens=6, min_section_tokens=6, max_chars=300)
        want = _chunks(chunker.split(Document("f", text, whole)))
        for longest in (2, 61, 5000):
            t = StreamText(_in_pieces(text, rng, longest))
            assert list(STREAM[kind](StreamText(_in_pieces(text, rng, longest)))) == whole, (kind, longest)
            assert _chunks(chunker.iter_split(Document("f", t, STREAM[kind](t)))) == want, (kind, longest)


def test_long_lines_are_body_text_never_headings():
    """A minified Markdown file starting with '#' was one heading holding the whole file as its title."""
    long_title = "# " + "word " * LONG_LINE
    blocks = parse_markdown(f"# Short\n\nText.\n\n{long_title}\n\nAfter.\n")
    assert [b.title for b in blocks if b.level] == ["Short"]
    assert max(b.end - b.start for b in blocks) <= loaders.MAX_BLOCK_CHARS and len(blocks) > 3
    rst = parse_rst("Title\n" + "=" * (LONG_LINE + 1) + "\n\nBody.\n\nShort\n=====\n")
    assert [b.title for b in rst if b.level] == ["Short"]


@pytest.mark.parametrize("read_bytes", [13, 1 << 16])
def test_streamed_files_chunk_as_whole_files(tmp_path, monkeypatch, read_bytes):
    """Real documentation (pydoc pages) and synthetic files with CRLF, headings, code fences and long lines:
    the chunks of the streamed file are those of the file loaded whole; the digest is the file's sha256."""
    from edgeai.retrieval.pydoc_corpus import build_corpus

    files = sorted(build_corpus(tmp_path / "corpus", modules=["heapq", "json", "csv"]).glob("*.md"))
    rng = random.Random(read_bytes)
    for kind, suffix in SUFFIX.items():
        f = tmp_path / f"synthetic{suffix}"
        f.write_bytes(b"\xef\xbb\xbf" + _synthetic(rng, 3000).encode())  # a BOM too
        crlf = tmp_path / f"crlf{suffix}"
        crlf.write_bytes(f.read_bytes()[3:].replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
        files += [f, crlf]
    monkeypatch.setattr(loaders, "READ_BYTES", read_bytes)
    monkeypatch.setattr(loaders, "SCAN_CHARS", 100)
    chunker = Chunker(max_tokens=64, overlap_tokens=8)
    for f in files:
        doc = stream_file(f)
        assert doc.digest == hashlib.sha256(f.read_bytes()).hexdigest() and doc.size == f.stat().st_size
        assert _chunks(chunker.iter_split(doc)) == _chunks(chunker.split(load_file(f))), f.name


def test_a_large_file_is_not_held_whole(tmp_path, monkeypatch):
    """2 MB of Markdown (sections and a 1 MB line) are chunked through a bounded window: Python's allocations
    peak far below the file's size (~0.3 MB here), and the text window holds a few pieces only."""
    rng = random.Random(1)
    sections = [f"## Part {i}\n\n" + " ".join(rng.choice(ATOMS[:2]) for _ in range(rng.randint(20, 200))) + "\n\n"
                for i in range(1400)]
    text = "# Big\n\n" + "".join(sections[:700]) + "word " * 200_000 + "\n\n" + "".join(sections[700:])
    text = text[:2_000_000]
    f = tmp_path / "big.md"
    f.write_text(text)
    monkeypatch.setattr(chunker_mod, "COUNT_SLICE", 16)
    monkeypatch.setattr(loaders, "READ_BYTES", 8192)
    chunker = Chunker(max_tokens=200, overlap_tokens=40)
    want = hashlib.sha256()
    for c in chunker.split(load_file(f)):
        want.update(repr(_chunks([c])).encode())
    doc = stream_file(f)
    widest = 0
    got = hashlib.sha256()
    tracemalloc.start()
    try:
        for c in chunker.iter_split(doc):
            got.update(repr(_chunks([c])).encode())
            widest = max(widest, len(doc.text._buf))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got.hexdigest() == want.hexdigest()
    # what the chunker holds (a slice of blocks to count) and a few pieces read ahead, whatever the file's size
    assert widest < chunker_mod.COUNT_SLICE * loaders.MAX_BLOCK_CHARS + 4 * loaders.READ_BYTES, widest
    assert peak < len(text) / 4, peak


def test_skipped_files_fail_before_any_block_with_the_whole_file_messages(tmp_path, monkeypatch):
    monkeypatch.setattr(loaders, "READ_BYTES", 64)  # errors far past the first piece
    body = ("line of text\n" * 2000).encode()
    cases = {"late.txt": body + b"\xff" + body, "bom.md": b"\xef\xbb\xbf" + body + b"\xe2\x82" + body,
             "cut.rst": body + b"\xe2\x82", "nul.txt": b"ab\x00cd" + body,
             "odd16.txt": "hello".encode("utf-16") + b"\x00"}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(SkippedFile) as whole:
            load_file(tmp_path / name)
        with pytest.raises(SkippedFile) as streamed:
            stream_file(tmp_path / name)  # raised here, before any block is asked for
        assert str(streamed.value) == str(whole.value), name
    with pytest.raises(SkippedFile, match=r"byte 26000: invalid start byte"):
        stream_file(tmp_path / "late.txt")
    (tmp_path / "u16.md").write_text("# Title\n\nText.\n", encoding="utf-16")
    doc = stream_file(tmp_path / "u16.md")
    assert [b.title for b in doc.blocks if b.level] == ["Title"]


def test_html_is_loaded_whole_and_capped(tmp_path, monkeypatch, caplog):
    (tmp_path / "page.html").write_text("<h1>Page</h1><p>" + "text " * 100 + "</p>")
    (tmp_path / "notes.md").write_text("# Notes\n\nSome text.\n")
    doc = stream_file(tmp_path / "page.html")
    assert isinstance(doc.text, str) and doc.blocks[0].title == "Page"
    assert doc.digest == hashlib.sha256((tmp_path / "page.html").read_bytes()).hexdigest()
    monkeypatch.setattr(loaders, "MAX_HTML_BYTES", 100)
    with pytest.raises(SkippedFile, match="pages are read whole"):
        stream_file(tmp_path / "page.html")
    with caplog.at_level("WARNING", logger="edgeai.retrieval"):
        docs = list(load_paths([tmp_path], stream=True))
    assert [d.source for d in docs] == [str(tmp_path / "notes.md")] and "pages are read whole" in caplog.text
