"""`edgeai eval rag`: case loading, checks, citation precision, refusals, the shipped set, the CLI."""
import json
from types import SimpleNamespace

import pytest

from edgeai.evaluate.rag_eval import (PYDOC_CASES, check_answer, chunks_behind, citation_checks, is_relevant,
                                      load_cases, rag_eval)
from edgeai.retrieval.index import VectorIndex
from edgeai.retrieval.rag import RAG, REFUSAL
from helpers.fakes import BagOfWordsEmbedder

FILLER = " ".join(f"filler{j}" for j in range(30))


class ScriptedLLM:
    """Answers each question with a fixed text chosen by a word of the question (no model)."""
    context_length = 4096

    def __init__(self, replies):
        self.replies = replies
        self.tokenizer = SimpleNamespace(encode=lambda s: s.split())

    def chat(self, messages, stream=False, **kw):
        q = messages[-1]["content"].rsplit("Question:", 1)[1]
        reply = next((r for key, r in self.replies.items() if key in q), REFUSAL)
        return iter([w + " " for w in reply.split(" ")]) if stream else SimpleNamespace(text=reply)


def _docs(tmp_path):
    d = tmp_path / "docs"
    d.mkdir()
    (d / "csv.md").write_text(
        "# csv\n\nRead and write comma separated values files. " + FILLER + "\n\n"
        "## csv.reader(csvfile)\n\nReturn a reader object which iterates over lines in the given csvfile: "
        "each row read from the csv file is returned as a list of strings. " + FILLER + "\n\n"
        "## csv.writer(csvfile)\n\nReturn a writer object that converts the user's data into delimited "
        "strings on the given file; use writerow to write one row. " + FILLER + "\n")
    (d / "heapq.md").write_text("# heapq\n\n## heapq.heappush(heap, item)\n\nPush the value item onto the heap, "
                                "maintaining the heap invariant. " + FILLER + "\n")
    return d


def _cases(tmp_path):
    rows = [
        {"id": "reader", "question": "read rows from a csv file reader", "sources": ["csv.md"],
         "section": "csv.reader", "expect": {"contains": ["csv.reader"], "not_contains": ["pandas"]}},
        {"id": "writer", "question": "write one row to a csv file writer writerow", "sources": ["csv.md"],
         "section": "csv.writer", "expect": {"contains_any": ["writerow", "writer.write"], "regex": r"writerow\("}},
        {"id": "heap", "question": "push item onto the heap", "sources": ["heapq.md"],
         "expect": {"contains": ["heappush"]}},
        {"id": "none", "question": "quantum chromodynamics lattice", "answerable": False},
        {"id": "none2", "question": "push the chocolate cake onto the heap", "answerable": False},
    ]
    p = tmp_path / "cases.jsonl"
    p.write_text("# comment line\n" + "\n".join(json.dumps(r) for r in rows) + "\n")
    return p


def test_load_cases_validates(tmp_path):
    p = tmp_path / "bad.jsonl"
    for line, msg in [('{"question": ""}', "question"), ('{"question": "q"}', "sources"),
                      ('{"question": "q", "sources": ["a"], "expect": {"regex": "("}}', "bad regex"),
                      ('{"question": "q", "sources": ["a"]}', "expect"),
                      ('{"question": "q", "sources": ["a"], "section": [], "expect": {"contains": ["x"]}}', "section"),
                      ("not json", "not JSON"), ("", "no cases")]:
        p.write_text(line + "\n")
        with pytest.raises(ValueError, match=msg):
            load_cases(p)


def test_shipped_set_is_well_formed():
    cases = load_cases(PYDOC_CASES)
    assert len(cases) >= 60 and sum(not c["answerable"] for c in cases) >= 10
    assert len({c["id"] for c in cases}) == len(cases)
    assert all(c["section"] and c["expect"] for c in cases if c["answerable"])


def test_checks_relevance_and_citations():
    case = {"answerable": True, "sources": ["csv.md"], "section": "csv.reader",
            "expect": {"contains": ["csv.reader"], "contains_any": ["open(", "with "], "regex": r"reader\(",
                       "not_contains": ["pandas"]}}
    assert check_answer("Use csv.reader(f) inside with open(...) [1].", case) == []
    assert len(check_answer("Use pandas.read_csv [1].", case)) == 4
    reader = {"path": "/x/csv.md", "section": ["csv", "csv.reader(csvfile)"], "text": "Return a reader object."}
    folded = {"path": "/x/csv.md", "section": ["csv"], "text": "## csv.reader(csvfile)\n\nReturn a reader."}
    writer = {"path": "/x/csv.md", "section": ["csv", "csv.writer(csvfile)"], "text": "Return a writer object."}
    assert is_relevant(reader, case) and is_relevant(folded, case) and not is_relevant(writer, case)
    assert not is_relevant(dict(reader, path="/x/other.md"), case)
    either = dict(case, section=["csv.writer", "csv.DictReader"])  # several sections each answer
    assert is_relevant(writer, either) and not is_relevant(reader, either) and not is_relevant(folded, either)
    sources = [(1, "/x/csv.md", "csv > csv.reader(csvfile)", 0.6), (2, "/x/csv.md", "csv > csv.writer", 0.5)]
    chunks = {1: reader, 2: writer}
    # [1] holds csv.reader; [2] does not; [3] is no source; a sentence naming no identifier needs a relevant one
    text = "Call `csv.reader(f)` [1]. Also csv.reader() [2]. See [3]. It returns rows [1]. Rows again [2]."
    assert citation_checks(text, sources, chunks, case) == [True, False, False, True, False]
    code = "Use it:\n\n```python\ndata = [1, 2]\nrows = [2]\n```\n\nDone [1]."  # lists in code are not citations
    assert citation_checks(code, sources, chunks, case) == [True]
    # two windows of one long section are two sources, each checked against its own chunk
    second = dict(reader, text="More about the reader object.")
    twice = [(1, "/x/csv.md", "csv > csv.reader(csvfile)", 0.6), (2, "/x/csv.md", "csv > csv.writer(csvfile)", 0.5),
             (3, "/x/csv.md", "csv > csv.reader(csvfile)", 0.4)]
    behind = chunks_behind(twice, [(reader, 0.6), (writer, 0.5), (second, 0.4)])
    assert behind == {1: reader, 2: writer, 3: second}
    assert citation_checks("It returns rows [3].", twice, behind, case) == [True]
    assert chunks_behind(twice, [(writer, 0.6)]) == {}  # a chunk that is not the source is not used


def test_rag_eval_counts_everything(tmp_path):
    rag = RAG(None, BagOfWordsEmbedder(), VectorIndex(256), min_score=0.1)
    rag.add([_docs(tmp_path)])
    rag.llm = ScriptedLLM({
        "cake": "Mix flour and sugar.",                                        # answers an unanswerable case
        "reader": "Use csv.reader(f) [1] to read rows.",                     # correct, precise
        "writer": "Use `csv.writer(f)` and writerow [3].",  # fails its regex (no "writerow("); [3]: no source
        "heap": "Call heapq.heappush(heap, item) [1]. Also see heapq.heapify() [1].",  # 1 of 2 precise
    })
    r = rag_eval(_cases(tmp_path), rag, k=2, ks=(1, 2))
    per = {p["id"]: p for p in r["per_case"]}
    assert (r["cases"], r["answerable"], r["unanswerable"]) == (5, 3, 2)
    assert r["retrieval"]["recall@1"] == 1.0 and r["retrieval"]["mrr"] == 1.0
    assert per["reader"]["correct"] and per["heap"]["correct"]
    assert not per["writer"]["correct"] and per["writer"]["failed_checks"]
    assert per["none"]["refused"] and per["none"]["refused_by_floor"] and per["none"]["correct"]
    assert not per["none2"]["correct"]  # it answered instead of refusing
    a = r["answers"]
    assert a["correctness"] == pytest.approx(2 / 3) and a["refusal_unanswerable"] == 0.5
    assert per["writer"]["invalid_citations"] == [3] and not per["writer"]["refused"]
    # the writer answer cited no given source ([3] is none): the pipeline attributes the csv.writer section,
    # precise by the case's label; the cake answer shares no wording with any source: nothing attributed
    assert per["writer"]["attributed"] and per["writer"]["answer"].endswith("\n\nSource: [1]")
    assert not per["none2"]["attributed"] and not per["reader"]["attributed"] and a["answers_attributed"] == 1
    assert a["citations"] == 5 and a["citation_precision"] == pytest.approx(3 / 5)
    assert a["ttft_s"]["median"] is not None and a["total_s"]["p95"] >= a["total_s"]["median"]
    only = rag_eval(_cases(tmp_path), rag, k=2, answer=False)
    assert "answers" not in only and only["retrieval"]["floor_refuses_unanswerable"] == 0.5


def test_cli_eval_rag(tmp_path, tiny_embed_model, capsys, monkeypatch):
    from edgeai.cli import main
    from edgeai.commands import retrieval as cmd

    docs, cases, idx = _docs(tmp_path), _cases(tmp_path), tmp_path / "idx"
    base = ["eval", "rag", str(cases), "--index", str(idx), "--model", str(tiny_embed_model), "--docs", str(docs)]
    # retrieval only: without its LLM it retrieves without the code sketch, and says so
    monkeypatch.setattr(cmd, "_load_llm", lambda name: (None, "no such model"))
    assert main(base + ["--retrieval-only", "--json", str(tmp_path / "a.json")]) == 0
    out, err = capsys.readouterr()
    assert "5 cases (3 answerable, 2 not)" in out and "recall@1" in out and "without the LLM's code sketch" in err
    saved = json.loads((tmp_path / "a.json").read_text())
    assert saved["meta"]["command"] == "eval rag" and "answers" not in saved and saved["meta"]["expand"] is False
    monkeypatch.setattr(cmd, "_load_llm", lambda name: (ScriptedLLM({"reader": "csv.reader [1]"}), None))
    assert main(base + ["--retrieval-only", "--json", str(tmp_path / "s.json")]) == 0
    saved = json.loads((tmp_path / "s.json").read_text())
    assert saved["meta"]["expand"] is True and saved["per_case"][0]["sketch"] == "csv.reader [1] "
    assert main(base + ["--retrieval-only", "--no-expand", "--json", str(tmp_path / "n.json")]) == 0
    assert json.loads((tmp_path / "n.json").read_text())["meta"]["expand"] is False
    capsys.readouterr()
    monkeypatch.setattr(cmd, "_load_llm", lambda name: (ScriptedLLM({"reader": "csv.reader [1]"}), None))
    assert main(base + ["--min-score", "-1", "--compare", str(tmp_path / "a.json"), "--json",
                        str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert "citation precision" in out and "compared with" in out
    assert json.loads((tmp_path / "b.json").read_text())["answers"]["citations"] >= 1
    monkeypatch.setattr(cmd, "_load_llm", lambda name: (None, "no such model"))
    with pytest.raises(SystemExit, match="no such model"):
        main(base)


def test_eval_rag_on_a_tiny_real_llm(tmp_path, tiny_embed_model):
    """The whole path with a random-weight model: runs, times each answer, never crashes on its garbage."""
    from conftest import build_tiny_llm_folder
    from edgeai import LLM
    from edgeai.retrieval.embedder import Embedder

    _, folder = build_tiny_llm_folder(tmp_path / "m", seed=4, max_pos=1024)
    with LLM(str(folder)) as llm:
        rag = RAG(llm, Embedder(tiny_embed_model), VectorIndex(32), min_score=-1)
        rag.add([_docs(tmp_path)])
        r = rag_eval(_cases(tmp_path), rag, k=1, max_new_tokens=4)
    assert r["answers"]["total_s"]["median"] > 0 and len(r["per_case"]) == 5
    assert all(isinstance(p["answer"], str) for p in r["per_case"])
