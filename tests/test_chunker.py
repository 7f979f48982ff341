"""Chunker: sections never mixed, token budget kept, overlap, long paragraphs windowed, exact offsets."""
import pytest

from edgeai.retrieval.chunker import Chunker
from edgeai.retrieval.loaders import Document, parse_markdown


def _doc(text):
    return Document("doc.md", text, parse_markdown(text))


def _para(i, words=10):
    return " ".join(f"w{i}_{j}" for j in range(words))


def test_sections_and_offsets():
    text = "# A\n\n" + _para(1) + "\n\n## B\n\n" + _para(2) + "\n\n# C\n\n" + _para(3) + "\n"
    chunks = Chunker(max_tokens=50, overlap_tokens=0, min_section_tokens=0).split(_doc(text))
    assert [c.section for c in chunks] == [("A",), ("A", "B"), ("C",)]
    for c in chunks:
        assert text[c.start:c.end] == c.text
    assert chunks[1].text.startswith("## B") and chunks[1].embed_text.startswith("A > B\n")


def test_tiny_sections_fold_into_their_parent():
    # csv-like: a module with a long section, then three one-line helper classes, then a long one
    text = ("# csv\n\n" + _para(0, 30) + "\n\n## reader\n\n" + _para(1, 40) + "\n\n## excel\n\n" + _para(2, 5)
            + "\n\n## excel_tab\n\n" + _para(3, 5) + "\n\n### excel_tab.x\n\n" + _para(4, 3)
            + "\n\n## unix_dialect\n\n" + _para(5, 5) + "\n\n## writer\n\n" + _para(6, 40) + "\n")
    chunks = Chunker(max_tokens=60, overlap_tokens=0, min_section_tokens=24).split(_doc(text))
    assert [c.section for c in chunks] == [("csv",), ("csv", "reader"), ("csv",), ("csv", "excel_tab"),
                                           ("csv",), ("csv", "writer")]
    tiny = chunks[2]  # excel + excel_tab's heading and text, filed under the parent
    assert "## excel\n" in tiny.text and "## excel_tab" in tiny.text and tiny.text == text[tiny.start:tiny.end]
    assert "excel_tab.x" in chunks[3].text and "## unix_dialect" in chunks[4].text
    joined = " ".join(c.text for c in chunks)
    assert all(_para(i, n) in joined for i, n in [(0, 30), (1, 40), (2, 5), (3, 5), (4, 3), (5, 5), (6, 40)])
    # the module's own text is never folded: only sections below another
    assert Chunker(max_tokens=60, overlap_tokens=0).split(_doc("# top\n\nshort\n"))[0].section == ("top",)
    with pytest.raises(ValueError):
        Chunker(min_section_tokens=-1)


def test_budget_and_overlap():
    text = "# S\n\n" + "\n\n".join(_para(i) for i in range(12))
    chunks = Chunker(max_tokens=35, overlap_tokens=10).split(_doc(text))
    assert len(chunks) > 3
    assert all(c.n_tokens <= 35 for c in chunks)
    assert all(len(c.text.split()) <= 35 for c in chunks)  # whitespace counting by default
    for a, b in zip(chunks, chunks[1:]):  # consecutive chunks share the last paragraph
        assert b.start < a.end
    joined = " ".join(c.text for c in chunks)
    assert all(_para(i) in joined for i in range(12))  # nothing lost


def test_long_paragraph_windows():
    text = "# S\n\n" + _para(0, 100)
    chunks = Chunker(max_tokens=30, overlap_tokens=5).split(_doc(text))
    assert all(c.n_tokens <= 30 for c in chunks) and len(chunks) >= 4
    assert chunks[0].text.split()[0] == "w0_0" and chunks[-1].text.split()[-1] == "w0_99"
    assert chunks[1].text.split()[0] == "w0_25"  # stride = 30 - 5
    assert all(c.section == ("S",) for c in chunks)


def test_with_embedder_tokenizer(tiny_embed_model):
    from edgeai.retrieval.embedder import Embedder
    emb = Embedder(tiny_embed_model)
    ch = Chunker.for_embedder(emb, max_tokens=16, overlap_tokens=4)
    text = "# Heap\n\n" + "the heap push item " * 20 + "\n\nopen a file"
    chunks = ch.split(_doc(text))
    counts = emb.count_tokens([c.text for c in chunks])
    assert max(counts) <= 16
    assert all(text[c.start:c.end] == c.text for c in chunks)
    assert chunks[-1].text.endswith("open a file")


def test_text_without_headings_and_empty():
    assert Chunker().split(Document("x.txt", "", [])) == []
    from edgeai.retrieval.loaders import parse_plain
    t = "one two\n\nthree"
    chunks = Chunker().split(Document("x.txt", t, parse_plain(t)))
    assert len(chunks) == 1 and chunks[0].section == () and chunks[0].text == t


SPHINX_PAGE = """<html><head><title>csv</title></head><body>
<div class="body"><section id="csv"><h1>csv \u2014 CSV File Reading and Writing<a class="headerlink" href="#csv">\u00b6</a></h1>
<p>The csv module implements classes to read and write tabular data.</p>
<section id="module-contents"><h2>Module Contents<a class="headerlink" href="#mc">\u00b6</a></h2>
<dl class="py function"><dt id="csv.reader">csv.reader(csvfile, dialect='excel')<a class="headerlink" href="#r">\u00b6</a></dt>
<dd><p>Return a reader object which will iterate over lines in the given csvfile.</p></dd></dl>
<dl class="py function"><dt id="csv.writer">csv.writer(csvfile)<a class="headerlink" href="#w">\u00b6</a></dt>
<dd><p>Return a writer object. This paragraph ends with a pilcrow\u00b6 but is long text, """ + "word " * 80 + """</p></dd></dl>
</section></section></div>
<div class="sphinxsidebar"><h3>Table of Contents</h3><ul><li>csv \u2014 CSV File Reading</li><li>Module Contents</li></ul>
<h4>Previous topic</h4><p>Data Compression</p><h3>Navigation</h3><ul><li>index</li></ul></div></body></html>"""


def test_sphinx_html_sections(tmp_path):
    from edgeai.retrieval.loaders import load_file
    from edgeai.retrieval.sphinx import refine

    page = tmp_path / "csv.html"
    page.write_text(SPHINX_PAGE, encoding="utf-8")
    raw = load_file(page)
    doc = refine(raw)
    titles = [(b.level, b.title) for b in doc.blocks if b.level]
    assert titles == [(1, "csv \u2014 CSV File Reading and Writing"), (2, "Module Contents"),
                      (3, "csv.reader(csvfile, dialect='excel')"), (3, "csv.writer(csvfile)")]
    text = " ".join(doc.text[b.start:b.end] for b in doc.blocks)
    assert "Data Compression" not in text and "Navigation" not in text  # sidebars dropped
    assert "long text" in text  # a long paragraph ending in the mark stays text
    chunks = Chunker(max_tokens=200, min_section_tokens=0).split(doc)
    reader = [c for c in chunks if "reader object" in c.text]
    assert reader and reader[0].section[-1] == "csv.reader(csvfile, dialect='excel')"
    assert all(doc.text[c.start:c.end] == c.text for c in chunks)
    plain = tmp_path / "plain.html"
    plain.write_text("<h1>Title</h1><p>No permalinks here.</p>")
    assert refine(load_file(plain)).blocks == load_file(plain).blocks  # not Sphinx: unchanged
