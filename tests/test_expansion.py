"""Query expansion from the LLM's code sketch (edgeai/retrieval/expansion.py and RAG.retrieve's third list)."""
from types import SimpleNamespace

from edgeai.retrieval import expansion
from edgeai.retrieval.index import VectorIndex
from edgeai.retrieval.rag import RAG
from helpers.fakes import BagOfWordsEmbedder


def test_names_are_the_apis_a_sketch_uses():
    code = (" pickle\n\ndef serialize(obj):\n    # json.dumps would not do: bytes wanted\n"
            "    return pickle.dumps(obj)  # 'not.this'\n"
            "s = \"os.path.join(a)\"\nwith open(path) as f:\n    print(len(f.read()))\n"
            "from copy import deepcopy\ny = deepcopy(x)\nserialize(y)\nself.method()\n")
    # dotted and called names; not comments, strings, builtins, keywords or what the sketch defines itself
    assert expansion.names(code) == ["pickle.dumps", "f.read", "deepcopy"]
    assert expansion.names("decimal.getcontext().prec = 10") == ["decimal.getcontext"]
    assert expansion.names("") == [] and expansion.names("x = 1\nprint(x)") == []


def test_terms_are_whole_names_and_last_parts():
    assert expansion.terms(["pickle.dumps", "deepcopy", "os.path.join"]) == [
        "pickle_dumps", "dumps", "deepcopy", "os_path_join", "join"]
    assert expansion.terms(["pickle.dumps", "deepcopy"], whole=True) == ["pickle_dumps"]


class Pieces:
    """A streamed sketch that records how far it was read and whether it was closed."""

    def __init__(self, text):
        self.pieces, self.read, self.closed = [p + "\n" for p in text.split("\n")], 0, False

    def __iter__(self):
        return self

    def __next__(self):
        if self.read == len(self.pieces):
            raise StopIteration
        self.read += 1
        return self.pieces[self.read - 1]

    def close(self):
        self.closed = True


def test_complete_stops_after_the_first_line_using_an_api():
    p = Pieces(" csv\n\nwith open(name) as f:\n    rows = csv.reader(f)\n    for row in rows:\n        more()")
    text = expansion.complete(p)
    assert text.endswith("rows = csv.reader(f)\n") and p.read == 4  # `open(` is a builtin: read on
    # a helper the sketch defines itself is not an API either
    p = Pieces(" copy\n\ndef deep(x):\n    return [deep(i) for i in x]\ny = copy.deepcopy(x)\nz = 1")
    assert expansion.complete(p).endswith("y = copy.deepcopy(x)\n")
    assert expansion.complete(Pieces(" uuid")) == " uuid\n"  # nothing past the import: the whole text


class SketchLLM:
    """Writes `sketch` when asked for code (expansion.USER), `answer` otherwise; counts both."""
    context_length = 2048

    def __init__(self, sketch, answer="It is pickle.dumps [1]."):
        self.sketch, self.answer = sketch, answer
        self.sketches, self.answers, self.streams = 0, 0, []
        self.tokenizer = SimpleNamespace(encode=lambda s: s.split())

    def chat(self, messages, stream=False, **kw):
        if messages[-1]["content"].startswith(expansion.USER.split("{")[0]):
            self.sketches += 1
            assert kw["max_new_tokens"] == expansion.MAX_TOKENS and kw["temperature"] == 0.0
            self.streams.append(Pieces(self.sketch))
            return self.streams[-1]
        self.answers += 1
        return iter([self.answer]) if stream else SimpleNamespace(text=self.answer)


def _docs(tmp_path):
    """The answering section shares no word with the question; five others share several."""
    d = tmp_path / "docs"
    d.mkdir()
    (d / "pickle.md").write_text("# pickle\n\n## pickle.dumps(obj)\n\nReturn the pickled representation of obj.\n")
    for i, name in enumerate(["struct", "codecs", "io", "array", "marshal"]):
        (d / f"{name}.md").write_text(f"# {name}\n\n## {name}.thing{i}\n\nTurn a Python value into a byte "
                                      f"string for storage or sending, with {name} rules.\n")
    return d


QUESTION = "How do I turn any Python value into a byte string for storage?"


def test_sketch_finds_the_section_the_question_does_not_name(tmp_path):
    docs = _docs(tmp_path)
    top = lambda rag: [c["path"].rsplit("/", 1)[-1] for c, _ in rag.retrieve(QUESTION, k=3)]  # noqa: E731
    llm = SketchLLM(" pickle\n\ndata = pickle.dumps(value)\nprint(data)\nmore = 1")
    plain = RAG(llm, BagOfWordsEmbedder(), VectorIndex(256))  # expand=False: the library default
    plain.add([docs])
    assert "pickle.md" not in top(plain) and llm.sketches == 0  # words alone miss it
    rag = RAG(llm, BagOfWordsEmbedder(), VectorIndex(256), expand=True)
    rag.add([docs])
    assert top(rag)[0] == "pickle.md"
    assert llm.sketches == 1 and llm.streams[0].closed and llm.streams[0].read == 3  # stopped at the API line
    assert rag.retrieve(QUESTION, k=3, mode="dense") and llm.sketches == 1  # dense alone asks no sketch
    ans = rag.ask(QUESTION, k=3)  # one sketch per question, whatever retrieves it
    assert llm.sketches == 1 and llm.answers == 1 and ans.sources[0][1].endswith("pickle.md")
    rag.forget_sketches()
    rag.retrieve(QUESTION, k=3)
    assert llm.sketches == 2
    rag.llm = None  # no LLM: no sketch, and retrieval still works
    assert len(rag.retrieve(QUESTION, k=3)) == 3


def test_a_sketch_naming_nothing_changes_nothing(tmp_path):
    docs = _docs(tmp_path)
    plain = RAG(None, BagOfWordsEmbedder(), VectorIndex(256))
    plain.add([docs])
    rag = RAG(SketchLLM(" os\n\nx = 1\n"), BagOfWordsEmbedder(), VectorIndex(256), expand=True)
    rag.add([docs])
    assert [c["id"] for c, _ in rag.retrieve(QUESTION, k=6)] == [c["id"] for c, _ in plain.retrieve(QUESTION, k=6)]


def test_sketch_on_a_tiny_real_llm(tmp_path):
    """The token-id path: the chat prompt plus the code-block prefix, greedy, so the same sketch every time."""
    from conftest import build_tiny_llm_folder
    from edgeai import LLM

    _, folder = build_tiny_llm_folder(tmp_path / "m", seed=3, max_pos=1024)
    with LLM(str(folder)) as llm:
        rag = RAG(llm, BagOfWordsEmbedder(), VectorIndex(256), expand=True)
        rag.add([_docs(tmp_path)])
        seen = []
        real_stream = llm.stream
        llm.stream = lambda ids, **kw: (seen.append(ids), real_stream(ids, **kw))[1]
        first = rag.sketch(QUESTION)
        rag.forget_sketches()
        assert rag.sketch(QUESTION) == first and len(seen) == 2 and seen[0] == seen[1]
        prefix = llm.tokenizer.encode(expansion.PREFIX)
        assert seen[0][-len(prefix):] == list(prefix)  # the assistant's turn starts as a code block
        assert len(rag.retrieve(QUESTION, k=3)) == 3
