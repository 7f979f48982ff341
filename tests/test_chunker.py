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
