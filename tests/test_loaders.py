"""Loaders: headings and paragraphs with offsets for .txt/.md/.rst/.html; bad files skipped, never a crash."""
import pytest

from edgeai.retrieval.loaders import SkippedFile, load_file, load_paths, parse_html, parse_markdown, parse_rst

MD = """Intro paragraph.

# Title

First para
continues.

## Sub

```
# a comment in code, not a heading
```

Setext heading
--------------

Last para.
"""

RST = """=========
 Top
=========

Hello world.

Section
-------

Body text.

Deeper
~~~~~~

x = 1
"""


def _headings(text, blocks):
    return [(b.level, b.title) for b in blocks if b.level]


def test_markdown():
    blocks = parse_markdown(MD)
    assert _headings(MD, blocks) == [(1, "Title"), (2, "Sub"), (2, "Setext heading")]
    paras = [MD[b.start:b.end] for b in blocks if not b.level]
    assert paras == ["Intro paragraph.", "First para\ncontinues.", "```\n# a comment in code, not a heading\n```",
                     "Last para."]


def test_rst():
    blocks = parse_rst(RST)
    assert _headings(RST, blocks) == [(1, "Top"), (2, "Section"), (3, "Deeper")]
    assert [RST[b.start:b.end] for b in blocks if not b.level] == ["Hello world.", "Body text.", "x = 1"]


def test_html_drops_script_and_style():
    text, blocks = parse_html("<html><head><title>T</title><style>p{color:red}</style></head><body>"
                              "<h1>Big &amp; bold</h1><p>Hello <b>you</b>\n there</p><script>alert(1)</script>"
                              "<h2>Small</h2><ul><li>one</li><li>two</li></ul><pre>a  b\n  c</pre></body></html>")
    assert "alert" not in text and "color" not in text
    assert _headings(text, blocks) == [(1, "Big & bold"), (2, "Small")]
    assert [text[b.start:b.end] for b in blocks if not b.level] == ["Hello you there", "one", "two", "a  b\n  c"]


def test_folder_walk_skips_bad_files(tmp_path, caplog):
    (tmp_path / "a.md").write_text(MD)
    (tmp_path / "b.txt").write_text("plain text\n\nsecond")
    (tmp_path / "c.rst").write_text(RST)
    (tmp_path / "d.html").write_text("<p>hi</p>")
    (tmp_path / "bin.txt").write_bytes(b"\x00\x01\x02binary")
    (tmp_path / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "image.png").write_bytes(b"\x89PNG")  # unsupported type: counted in one line
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.md").write_text("# secret")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "e.md").write_text("# E\n\ntext")
    with caplog.at_level("WARNING", logger="edgeai.retrieval"):
        docs = list(load_paths([tmp_path]))
    assert sorted(p.name for p in map(lambda d: __import__("pathlib").Path(d.source), docs)) == \
        ["a.md", "b.txt", "c.rst", "d.html", "e.md"]
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 3  # one line per undecodable file, one for the unsupported ones
    assert any("bin.txt" in m and "binary" in m for m in msgs) and any("latin.txt" in m for m in msgs)
    assert any("1 file of unsupported types (.png)" in m for m in msgs)
    txt = next(d for d in docs if d.source.endswith("b.txt"))
    assert [txt.text[b.start:b.end] for b in txt.blocks] == ["plain text", "second"]


def test_explicit_bad_files_raise(tmp_path):
    (tmp_path / "bin.txt").write_bytes(b"\x00\x00")
    (tmp_path / "x.pdf").write_bytes(b"%PDF")
    with pytest.raises(ValueError, match="binary"):
        list(load_paths([tmp_path / "bin.txt"]))
    with pytest.raises(SkippedFile, match="unsupported"):
        load_file(tmp_path / "x.pdf")
    with pytest.raises(FileNotFoundError):
        list(load_paths([tmp_path / "missing.md"]))


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no loadable documents"):
        list(load_paths([tmp_path]))


def test_utf8_bom_and_utf16(tmp_path):
    (tmp_path / "a.txt").write_bytes("\ufeffhello".encode("utf-8"))
    (tmp_path / "b.txt").write_bytes("hello16".encode("utf-16"))
    assert load_file(tmp_path / "a.txt").text == "hello"
    assert load_file(tmp_path / "b.txt").text == "hello16"


SQLITE_STYLE = """<html><head><title>CREATE TABLE</title></head><body>
<div class=nosearch><div class="tagline">Small. Fast. Reliable.<br>Choose any three.</div>
<div class="menu"><ul><li><a href="index.html">Home</a><li><a href="docs.html">Documentation</a></ul></div></div>
<div class=fancy><div class=nosearch><div class="fancy_title">CREATE TABLE</div>
<div class="fancy_toc"><div><a href="#syntax">1. Syntax</a></div><div><a href="#cmd">2. The command</a></div></div>
</div>
<h1 id="syntax">1. Syntax</h1><p>create-table-stmt</p>
<h1 id="cmd">2. The command</h1><p>The "CREATE TABLE" command creates a table.</p>
<h2>2.1. IF NOT EXISTS</h2><p>No error if it exists.</p>
<a name="pragma_x"></a><h _id=pragma_x style="display:none"> PRAGMA x</h><p>About x.</p>
</div></body></html>"""


def test_html_skips_nosearch_and_files_sections_under_the_page_title():
    # SQLite's docs: menu, tagline and table of contents sit in class=nosearch on every page, the page's title
    # is only in <title>, and several <h1> are its numbered sections; hidden <h> elements mark sub-sections.
    text, blocks = parse_html(SQLITE_STYLE)
    assert "Small. Fast" not in text and "Home" not in text and "Documentation" not in text
    assert _headings(text, blocks) == [(1, "CREATE TABLE"), (2, "1. Syntax"), (2, "2. The command"),
                                       (3, "2.1. IF NOT EXISTS"), (4, "PRAGMA x")]
    assert [text[b.start:b.end] for b in blocks if not b.level] == [
        "create-table-stmt", 'The "CREATE TABLE" command creates a table.', "No error if it exists.", "About x."]


def test_html_page_title_kept_out_when_the_body_has_it():
    # One <h1> is the page's own title; a body heading that starts like the title is it too.
    one_h1 = "<title>Python docs: csv</title><h1>csv</h1><p>a</p><h2>reader</h2><p>b</p>"
    _, blocks = parse_html(one_h1)
    assert [(b.level, b.title) for b in blocks if b.level] == [(1, "csv"), (2, "reader")]
    said = "<title>Opening A New Database Connection</title><h2>Opening a new database connection</h2><p>x</p>"
    _, blocks = parse_html(said)
    assert [(b.level, b.title) for b in blocks if b.level] == [(2, "Opening a new database connection")]
    # nested elements of the skipped element's own tag do not end the skip early
    nested = "<div class='x nosearch'><div>menu</div>still menu</div><p>body</p>"
    text, _ = parse_html(nested)
    assert text == "body"
