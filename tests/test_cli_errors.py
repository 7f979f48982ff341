"""The command line answers bad input with one clear line and a non-zero exit code, never a traceback, and
never quietly does something else than what was asked."""
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from edgeai.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def _one_clear_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("edgeai: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_generate_empty_prompt_is_an_error(tmp_path, capsys):
    # The model is never loaded: the prompt is checked first, as the API checks it.
    assert main(["generate", "", "--model", str(tmp_path / "no-model")]) == 1
    assert "prompt is empty" in _one_clear_line(capsys.readouterr().err)


def test_ask_with_a_mistyped_index_does_not_build_one(tmp_path, capsys):
    typo = tmp_path / "idnex"
    assert main(["ask", "what is a heap?", "--index", str(typo)]) == 1
    line = _one_clear_line(capsys.readouterr().err)
    assert "is not an edgeai index" in line and "edgeai index" in line
    assert not typo.exists()


def test_ask_docs_keeps_the_question():
    a = build_parser().parse_args(["ask", "--docs", "notes.md", "How do I read a CSV file?"])
    assert a.docs == ["notes.md"] and a.question == "How do I read a CSV file?"
    a = build_parser().parse_args(["ask", "q?", "--docs", "a.md", "--docs", "b/"])
    assert a.docs == ["a.md", "b/"] and a.question == "q?"


def test_unexpected_exceptions_are_one_line(monkeypatch, capsys):
    import edgeai.commands.models as models

    for exc in (KeyError("eos_token"), TypeError("bad type"), AttributeError("no attribute")):
        def boom(args, exc=exc):
            raise exc
        monkeypatch.setattr(models, "_models", boom)
        assert main(["models"]) == 1
        line = _one_clear_line(capsys.readouterr().err)
        assert type(exc).__name__ in line and str(exc) in line


def test_malformed_questions_file_is_one_line(tmp_path, capsys):
    """A real case that used to end in an AttributeError traceback: a JSONL line that is not an object."""
    qs = tmp_path / "q.jsonl"
    qs.write_text("[1, 2]\n")
    (tmp_path / "idx").mkdir()
    assert main(["eval", "retrieval", "--index", str(tmp_path / "idx"), "--questions", str(qs)]) == 1
    _one_clear_line(capsys.readouterr().err)


def test_debug_env_shows_the_traceback(monkeypatch):
    import edgeai.commands.models as models

    monkeypatch.setattr(models, "_models", lambda a: {}["x"])
    monkeypatch.setenv("EDGEAI_DEBUG", "1")
    with pytest.raises(KeyError):
        main(["models"])


def test_arguments_that_are_not_utf8(capsys):
    # Undecodable argv bytes reach Python as lone surrogates ("\udcff"); no tokenizer takes those.
    assert main(["generate", "caf\udce9"]) == 1
    assert "not valid UTF-8" in _one_clear_line(capsys.readouterr().err)


def test_hints_name_only_real_extras():
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    named = set()
    for f in (ROOT / "edgeai").rglob("*.py"):
        named |= set(re.findall(r"edgeai\[(\w+)\]", f.read_text(encoding="utf-8")))
    assert named and named <= extras, f"hints name extras that do not exist: {sorted(named - extras)}"


# --- indexing from the command line -------------------------------------------------------------------------

def _index(args, timeout=180):
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONWARNINGS="default")
    return subprocess.run([sys.executable, "-m", "edgeai.cli", "index", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_index_reports_skipped_files_in_one_line_each(tiny_embed_model, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# Heap\n\nheapq push and pop\n")
    (docs / "latin.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    (docs / "logo.png").write_bytes(b"\x89PNG")
    (docs / "tool.py").write_text("print(1)")
    r = _index([str(docs), "--index", str(tmp_path / "idx"), "--model", str(tiny_embed_model)])
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("skip")]
    assert len(lines) == 2, r.stderr
    assert any("latin.txt" in ln and "not UTF-8" in ln for ln in lines)
    assert any("2 files of unsupported types" in ln and ".png" in ln and ".py" in ln for ln in lines)
    assert "Warning" not in r.stderr and "warn(" not in r.stderr and "Traceback" not in r.stderr


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_in_an_indexed_folder_does_not_hang(tiny_embed_model, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# Heap\n\nheapq push and pop\n")
    os.mkfifo(docs / "pipe.txt")
    try:
        r = _index([str(docs), "--index", str(tmp_path / "idx"), "--model", str(tiny_embed_model)], timeout=120)
    except subprocess.TimeoutExpired:
        threading.Thread(target=lambda: open(docs / "pipe.txt", "w").close(), daemon=True).start()  # unblock
        pytest.fail("edgeai index blocked on a FIFO")
    assert r.returncode == 0, r.stderr
    assert "pipe.txt: not a regular file" in r.stderr and "indexed 1 new" in r.stderr


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_named_explicitly_is_an_error_not_a_hang(tmp_path):
    from edgeai.retrieval.loaders import SkippedFile, load_paths

    os.mkfifo(tmp_path / "pipe.md")
    with pytest.raises(SkippedFile, match="not a regular file"):
        list(load_paths([tmp_path / "pipe.md"]))


def test_long_lines_are_cut_into_blocks():
    from edgeai.retrieval.loaders import MAX_BLOCK_CHARS, parse_html, parse_plain

    text = "intro\n\n" + ("word " * 300_000) + "\n\n" + "x" * 50_000 + "\n\nend"
    blocks = parse_plain(text)
    assert max(b.end - b.start for b in blocks) <= MAX_BLOCK_CHARS
    assert text[blocks[0].start:blocks[0].end] == "intro" and text[blocks[-1].start:blocks[-1].end] == "end"
    # Nothing is lost: the blocks cover every non-space character, in order.
    assert "".join(text[b.start:b.end] for b in blocks).replace(" ", "") == text.replace(" ", "").replace("\n", "")
    words = [b for b in blocks if text[b.start:b.end].startswith("word")]
    assert all(text[b.start:b.end].endswith("word") for b in words)  # cut at whitespace, not inside a word
    html_text, hb = parse_html("<p>" + "a " * 10_000 + "</p>")
    assert len(hb) > 1 and max(b.end - b.start for b in hb) <= MAX_BLOCK_CHARS
