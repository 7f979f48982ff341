"""edgeai.evaluate.golden: checks, case files, regressions against a saved run, the shipped SmolLM2 set."""
import json
from types import SimpleNamespace

import pytest

from edgeai.evaluate.golden import (SMOLLM2_GOLDEN, check, compare_golden, format_report, load_cases,
                                    run_golden)
from helpers.fakes import BagOfWordsEmbedder


@pytest.mark.parametrize("expect,text,ok", [
    ({"exact": "Paris"}, "  Paris\n", True),
    ({"exact": "Paris"}, "Paris.", False),
    ({"exact": "paris", "ignore_case": True}, "Paris", True),
    ({"regex": r"\b(7|seven)\b"}, "A week has 7 days.", True),
    ({"regex": r"\b(7|seven)\b"}, "A week has 17 days.", False),
    ({"regex": "SEVEN", "ignore_case": True}, "seven", True),
    ({"contains": "Berlin"}, "The capital is Berlin.", True),
    ({"contains": "Berlin"}, "The capital is berlin.", False),
    ({"contains": "berlin", "ignore_case": True}, "BERLIN", True),
    ({"contains": ["H2O", "water"]}, "water is H2O", True),
    ({"contains": ["H2O", "water"]}, "H2O", False),
    ({"contains_any": ["7", "seven"]}, "seven days", True),
    ({"contains_any": ["7", "seven"]}, "six days", False),
    ({"contains": "Paris", "not_contains": "London"}, "Paris, not London", False),
])
def test_check(expect, text, ok):
    passed, why = check(expect, text)
    assert passed is ok
    assert (not why) is ok


def _write(path, cases):
    path.write_text("\n".join(json.dumps(c) for c in cases) + "\n")
    return path


def test_load_cases_validates(tmp_path):
    good = _write(tmp_path / "g.jsonl", [{"prompt": "x", "expect": {"contains": "y"}}])
    assert load_cases(good)[0]["id"] == "case-1"
    with pytest.raises(ValueError, match="prompt"):
        load_cases(_write(tmp_path / "a.jsonl", [{"expect": {"contains": "y"}}]))
    with pytest.raises(ValueError, match="expect"):
        load_cases(_write(tmp_path / "b.jsonl", [{"prompt": "x", "expect": {"startswith": "y"}}]))
    with pytest.raises(ValueError, match="duplicate"):
        load_cases(_write(tmp_path / "c.jsonl", [{"id": "a", "prompt": "x", "expect": {"exact": "y"}}] * 2))
    (tmp_path / "d.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match="not JSON"):
        load_cases(tmp_path / "d.jsonl")


class FakeLLM:
    """Answers from a table; records the generation arguments; renders chat as 'role: content' lines."""

    def __init__(self, answers):
        self.answers, self.calls, self.model_dir = answers, [], "fake"
        self.tokenizer = SimpleNamespace(apply_chat_template=lambda msgs, add_generation_prompt=True:
                                         "\n".join(f"{m['role']}: {m['content']}" for m in msgs) + "\nassistant:")

    def generate(self, prompt, **kw):
        self.calls.append((prompt, kw))
        text = next((v for k, v in self.answers.items() if k in prompt), "")
        return SimpleNamespace(text=text, token_ids=[1] * len(text.split()), finish_reason="stop")


CASES = [
    {"id": "capital", "messages": [{"role": "user", "content": "capital of Germany?"}],
     "expect": {"contains": "Berlin"}, "max_new_tokens": 16},
    {"id": "sum", "prompt": "2 + 2 =", "expect": {"regex": r"\b4\b"}},
    {"id": "exact", "prompt": "say yes", "expect": {"exact": "yes"}},
]


def test_run_and_compare(tmp_path):
    cases = load_cases(_write(tmp_path / "c.jsonl", CASES))
    llm = FakeLLM({"Germany": "It is Berlin.", "2 + 2": " 4", "say yes": "yes"})
    before = run_golden(cases, llm)
    assert (before["passed"], before["failed"], before["total"]) == (3, 0, 3)
    prompt, kw = llm.calls[0]
    assert prompt.startswith("user: capital of Germany?") and kw["temperature"] == 0.0 and kw["max_new_tokens"] == 16
    assert llm.calls[1][1]["max_new_tokens"] == 48  # default

    after = run_golden(cases, FakeLLM({"Germany": "It is Bonn.", "2 + 2": " 4", "say yes": "no"}))
    assert after["passed"] == 1
    cmp = compare_golden(before, after)
    assert cmp["regressions"] == ["capital", "exact"] and cmp["fixed"] == []
    assert set(cmp["output_changed"]) == {"capital", "exact"}
    assert compare_golden(after, before)["fixed"] == ["capital", "exact"]
    text = format_report(after, cmp)
    assert "REGRESSIONS" in text and "FAIL  capital" in text


def test_shipped_smollm2_set():
    cases = load_cases(SMOLLM2_GOLDEN)
    assert 8 <= len(cases) <= 16
    assert all(c.get("max_new_tokens") for c in cases)


def test_cli_golden_compare(tmp_path, monkeypatch, capsys):
    import edgeai.evaluate.golden as g
    from edgeai.cli import main

    cases = _write(tmp_path / "c.jsonl", CASES)
    answers = {"Germany": "Berlin", "2 + 2": "4", "say yes": "yes"}
    monkeypatch.setattr(g, "golden", lambda path, model, threads=None: g.run_golden(load_cases(path),
                                                                                    FakeLLM(answers)))
    old = tmp_path / "old.json"
    assert main(["eval", "golden", str(cases), "--json", str(old)]) == 0
    answers["Germany"] = "Bonn"
    assert main(["eval", "golden", str(cases), "--compare", str(old)]) == 1  # a regression fails the command
    out = capsys.readouterr().out
    assert "REGRESSIONS (passed before, fail now): capital" in out


def test_golden_on_a_real_tiny_llm(tmp_path, tiny_llm):
    """The whole path with edgeai.LLM on a tiny random model (answers are nonsense; the regex accepts any)."""
    pytest.importorskip("edgeai.llm")
    from edgeai import LLM
    from edgeai.convert.pipeline import convert

    folder = convert(tiny_llm(), tmp_path / "m", quant="fp32", progress=False)
    cases = load_cases(_write(tmp_path / "c.jsonl", [
        {"id": "any", "messages": [{"role": "user", "content": "hi"}], "expect": {"regex": "(?s).*"},
         "max_new_tokens": 4},
        {"id": "raw", "prompt": "hello", "expect": {"regex": "(?s).*"}, "max_new_tokens": 4}]))
    with LLM(folder) as llm:
        r1 = run_golden(cases, llm)
        r2 = run_golden(cases, llm)
    assert r1["passed"] == 2
    assert [c["output"] for c in r1["cases"]] == [c["output"] for c in r2["cases"]]  # greedy: reproducible


# --- retrieval evaluation (edgeai.evaluate.retrieval_eval) -----------------------------------------------------

def test_retrieval_scores():
    from edgeai.evaluate.retrieval_eval import rank_of_first_relevant, score

    files = ["/d/a/heap.md", "/d/b/files.md"]
    assert rank_of_first_relevant(files, ["files.md"]) == 2
    assert rank_of_first_relevant(files, ["b/files.md"]) == 2
    assert rank_of_first_relevant(files, ["iles.md"]) is None  # whole path components only
    assert rank_of_first_relevant(files, ["/d/a/heap.md"]) == 1
    s = score([1, 2, None, 5], ks=(1, 5))
    assert s["recall@1"] == 0.25 and s["recall@5"] == 0.75
    assert s["mrr"] == pytest.approx((1 + 0.5 + 0 + 0.2) / 4)


def test_retrieval_eval_on_an_index(tmp_path, capsys):
    from edgeai.evaluate.retrieval_eval import retrieval_eval
    from edgeai.retrieval.rag import RAG

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "heap.md").write_text("# heapq\n\nA heap queue. Push an item onto the heap with heappush.\n")
    (docs / "files.md").write_text("# Files\n\nOpen a file for reading or writing with open.\n")
    (docs / "socket.md").write_text("# Sockets\n\nConnect a socket to a server and send data.\n")
    RAG(None, BagOfWordsEmbedder("bow-golden-test"), tmp_path / "idx").add([docs])
    qs = _write(tmp_path / "q.jsonl", [
        {"question": "how do I push an item onto a heap", "source": "heap.md"},
        {"question": "open a file for writing", "sources": ["files.md", "other.md"]},
        {"id": "miss", "question": "connect socket server", "source": "nothere.md"}])
    r = retrieval_eval(tmp_path / "idx", qs, ks=(1, 3), embedder=BagOfWordsEmbedder("bow-golden-test"))
    assert r["questions"] == 3
    assert r["recall@1"] == pytest.approx(2 / 3) and r["recall@3"] == pytest.approx(2 / 3)
    assert r["mrr"] == pytest.approx(2 / 3)
    assert [p["rank"] for p in r["per_question"]] == [1, 1, None]
    with pytest.raises(ValueError, match="source"):
        retrieval_eval(tmp_path / "idx", _write(tmp_path / "bad.jsonl", [{"question": "x"}]),
                       embedder=BagOfWordsEmbedder("bow-golden-test"))


def test_cli_retrieval(tmp_path, monkeypatch, capsys):
    import edgeai.retrieval.embedder as emb_mod
    from edgeai.cli import main
    from edgeai.retrieval.rag import RAG

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "heap.md").write_text("# heapq\n\nPush an item onto the heap with heappush.\n")
    (docs / "files.md").write_text("# Files\n\nOpen a file for reading or writing.\n")
    RAG(None, BagOfWordsEmbedder("bow-golden-test"), tmp_path / "idx").add([docs])
    monkeypatch.setattr(emb_mod, "Embedder", lambda *a, **k: BagOfWordsEmbedder("bow-golden-test"))
    qs = _write(tmp_path / "q.jsonl", [{"question": "push an item onto the heap", "source": "heap.md"}])
    out = tmp_path / "r.json"
    assert main(["eval", "retrieval", "--index", str(tmp_path / "idx"), "--questions", str(qs), "-k", "1", "2",
                 "--json", str(out)]) == 0
    assert "recall@1 1.000" in capsys.readouterr().out
    assert json.loads(out.read_text())["mrr"] == 1.0
