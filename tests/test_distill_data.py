"""edgeai distill without torch: data files, teacher targets (shards, resume, checks), student layer choice,
teacher answers (sequence-level)."""
import json

import numpy as np
import pytest

from edgeai.distill.data import Document, read_documents, token_sequences
from edgeai.distill.student import (check_same_tokenizer, keep_layers, kept_layers, parse_layer_list,
                                    student_source)
from edgeai.distill.targets import MANIFEST, Targets, build_targets
from edgeai.evaluate.fidelity import Reference
from edgeai.tokenizer import Tokenizer
from helpers.tiny_teacher import TEXT, make_teacher


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return make_teacher(tmp_path_factory.mktemp("distill_teacher"))


# ---------------------------------------------------------------------------------------------- data files
def test_reads_text_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("plain text")
    (tmp_path / "b.jsonl").write_text(
        '{"prompt": "p1", "completion": "c1", "rating": 1}\n\n'
        '{"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}\n'
        '{"prompt": "only a prompt"}\n{"text": "t"}\n')
    docs = read_documents([tmp_path / "a.txt", tmp_path / "b.jsonl"])
    assert [d.text for d in docs] == ["plain text", None, None, None, "t"]
    assert docs[1].messages == [{"role": "user", "content": "p1"}, {"role": "assistant", "content": "c1"}]
    assert docs[2].messages[-1] == {"role": "assistant", "content": "a"}
    assert docs[3].needs_answer and not docs[1].needs_answer


@pytest.mark.parametrize("line, msg", [
    ("{not json", "b.jsonl:2: not valid JSON"),
    ('["a"]', "b.jsonl:2: expected a JSON object"),
    ('{"foo": 1}', "b.jsonl:2: expected \"prompt\""),
    ('{"messages": [{"role": "user"}]}', "b.jsonl:2: \"messages\" must be"),
    ('{"prompt": 3}', "b.jsonl:2: \"prompt\""),
])
def test_bad_jsonl_lines_name_file_and_line(tmp_path, line, msg):
    (tmp_path / "b.jsonl").write_text('{"text": "ok"}\n' + line + "\n")
    with pytest.raises(ValueError, match=msg.replace("(", r"\(")):
        read_documents([tmp_path / "b.jsonl"])


def test_missing_or_empty_data(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such data file"):
        read_documents([tmp_path / "nope.txt"])
    (tmp_path / "e.txt").write_text("  \n")
    with pytest.raises(ValueError, match="no text"):
        read_documents([tmp_path / "e.txt"])


def test_sequences_join_documents_with_end_of_text(teacher):
    folder, _ = teacher
    tok = Tokenizer.from_folder(folder)
    docs = [Document(text="hello world " * 5), Document(messages=[{"role": "user", "content": "hi"},
                                                                  {"role": "assistant", "content": "yo"}])]
    ids = token_sequences(docs, tok, 8)
    stream = tok.encode("hello world " * 5, add_special_tokens=False) + tok.eos_token_ids[:1]
    chat = tok.apply_chat_template(docs[1].messages, add_generation_prompt=False)
    stream += tok.encode(chat, add_special_tokens=False) + tok.eos_token_ids[:1]
    assert ids.shape == (len(stream) // 8, 8) and ids.dtype == np.int32
    assert ids.reshape(-1).tolist() == stream[:ids.size]
    with pytest.raises(ValueError, match="fewer than one sequence"):
        token_sequences([Document(text="hi")], tok, 64)


# ---------------------------------------------------------------------------------------------- targets
def _ids(folder, n_seq=5, seq_len=24):
    tok = Tokenizer.from_folder(folder)
    return token_sequences([Document(text=TEXT)], tok, seq_len)[:n_seq]


def test_targets_match_the_fidelity_reference(teacher, tmp_path):
    """Each sequence's targets are what `eval fidelity` keeps for it: same top-k ids, log-probs and rest."""
    folder, _ = teacher
    ids = _ids(folder)
    build_targets(folder, ids, tmp_path / "t", topk=16, shard_size=2, progress=False)
    t = Targets.load(tmp_path / "t", folder, ids, 16, 2)
    assert t.topk_idx.shape == (5, 23, 16) and t.rest_lp.shape == (5, 23)
    for i in (0, 4):
        ref = Reference.from_model(folder, ids[i], topk=16)
        np.testing.assert_array_equal(t.topk_idx[i], ref.topk_idx)
        np.testing.assert_allclose(t.topk_lp[i], ref.topk_lp, rtol=0, atol=1e-6)
        np.testing.assert_allclose(t.rest_lp[i], ref.rest_lp, rtol=0, atol=1e-5)
    # a distribution: the k bins and the rest add up to one
    total = np.logaddexp(np.logaddexp.reduce(t.topk_lp.astype(np.float64), -1), t.rest_lp)
    np.testing.assert_allclose(total, 0.0, atol=1e-4)


def test_targets_resume_and_checks(teacher, tmp_path):
    folder, _ = teacher
    ids = _ids(folder)
    out = tmp_path / "t"
    build_targets(folder, ids, out, topk=8, shard_size=2, progress=False)
    state = json.loads((out / MANIFEST).read_text())
    assert sorted(state["shards"]) == ["shard-00000.npz", "shard-00001.npz", "shard-00002.npz"]
    # an interrupted run: the last shard never got recorded (and its file is gone)
    del state["shards"]["shard-00002.npz"]
    (out / MANIFEST).write_text(json.dumps(state))
    (out / "shard-00002.npz").unlink()
    kept = {s: (out / s).stat().st_mtime_ns for s in state["shards"]}
    with pytest.raises(ValueError, match="1 of 3 target shards are not built"):
        Targets.load(out, folder, ids, 8, 2)
    build_targets(folder, ids, out, topk=8, shard_size=2, progress=False)
    assert {s: (out / s).stat().st_mtime_ns for s in kept} == kept  # finished shards were not redone
    whole = tmp_path / "whole"
    build_targets(folder, ids, whole, topk=8, shard_size=2, progress=False)
    a, b = Targets.load(out, folder, ids, 8, 2), Targets.load(whole, folder, ids, 8, 2)
    np.testing.assert_array_equal(a.topk_lp, b.topk_lp)
    np.testing.assert_array_equal(a.topk_idx, b.topk_idx)
    # other data (or top-k) in the same folder is refused, not mixed
    with pytest.raises(ValueError, match="different ids_sha256"):
        build_targets(folder, ids[:4], out, topk=8, shard_size=2, progress=False)
    with pytest.raises(ValueError, match="different topk"):
        Targets.load(out, folder, ids, 4, 2)
    # a damaged shard is caught by its digest
    raw = bytearray((out / "shard-00001.npz").read_bytes())
    raw[-100] ^= 0xFF
    (out / "shard-00001.npz").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="shard-00001.npz is missing or does not match its sha256"):
        Targets.load(out, folder, ids, 8, 2)


# ---------------------------------------------------------------------------------------------- students
def test_kept_layers():
    assert kept_layers(30, 8) == [0, 4, 8, 12, 17, 21, 25, 29]
    assert kept_layers(4, 2) == [0, 3] and kept_layers(4, 4) == [0, 1, 2, 3] and kept_layers(5, 1) == [0]
    for bad in (0, 31):
        with pytest.raises(ValueError, match="between 1 and the teacher's 30 layers"):
            kept_layers(30, bad)


def test_layers_student_copies_the_teacher(teacher):
    folder, src = teacher
    s, desc = student_source("layers:2", folder)
    assert desc["layers"] == [0, 3] and s.config.num_layers == 2 and src.config.num_layers == 4
    np.testing.assert_array_equal(s.tensors["model.layers.1.mlp.up_proj.weight"],
                                  src.tensors["model.layers.3.mlp.up_proj.weight"])
    assert not any(k.startswith("model.layers.2.") for k in s.tensors)
    with pytest.raises(ValueError, match="write layers:N"):
        student_source("layers:x", folder)
    s, desc = student_source("layers:0-1,3", folder)  # an explicit list: the ends kept whole
    assert desc["layers"] == [0, 1, 3] and s.config.num_layers == 3
    np.testing.assert_array_equal(s.tensors["model.layers.2.self_attn.q_proj.weight"],
                                  src.tensors["model.layers.3.self_attn.q_proj.weight"])
    with pytest.raises(ValueError, match="has layers 0-3"):
        student_source("layers:0,4", folder)


def test_parse_layer_list():
    assert parse_layer_list("0-6,15,23-29", 30) == [0, 1, 2, 3, 4, 5, 6, 15, 23, 24, 25, 26, 27, 28, 29]
    assert parse_layer_list("2", 4) == [2] and parse_layer_list(" 0 , 2-3", 4) == [0, 2, 3]
    for bad, msg in (("", "write indices and ranges"), ("0,,2", "write indices"), ("3-1", "end is below"),
                     ("0-2,2", "each layer once"), ("2,1", "ascending"), ("0,30", "layers 0-29"),
                     ("-1", "write indices")):
        with pytest.raises(ValueError, match=msg):
            parse_layer_list(bad, 30)


def test_student_must_share_the_tokenizer(teacher, tiny_llm):
    folder, src = teacher
    other = tiny_llm(vocab=300)
    with pytest.raises(ValueError, match="tokenizer differs"):
        check_same_tokenizer(src.tokenizer_json, other, 320)
    small = keep_layers(src, [0])
    small.config.vocab_size = 100
    with pytest.raises(ValueError, match="smaller than the teacher's"):
        check_same_tokenizer(src.tokenizer_json, small, 320)


# ---------------------------------------------------------------------------------------------- --generate
def test_teacher_answers_resume(teacher, tmp_path):
    from edgeai.distill.generate import ANSWERS, teacher_answers

    folder, _ = teacher
    docs = [Document(text="plain"), Document(messages=[{"role": "user", "content": "What is a heap?"}]),
            Document(messages=[{"role": "user", "content": "Sort?"}, {"role": "assistant", "content": "old"}]),
            Document(messages=[{"role": "user", "content": "third"}])]
    out = teacher_answers(folder, docs, 2, tmp_path, max_new_tokens=6, progress=False)
    assert out[0] is docs[0] and out[3] is docs[3]  # beyond N, and plain text: unchanged
    assert out[1].messages[-1]["role"] == "assistant" and out[2].messages[-2:-1] == docs[2].messages[:1]
    assert out[2].messages[-1]["content"] != "old" and len(out[2].messages) == 2
    lines = (tmp_path / ANSWERS).read_text().splitlines()
    assert len(lines) == 2
    # a torn last line (crash mid-write) is dropped and that answer made again; the other is reused
    (tmp_path / ANSWERS).write_text(lines[0] + "\n" + lines[1][:10])
    again = teacher_answers(folder, docs, 2, tmp_path, max_new_tokens=6, progress=False)
    assert [d.messages for d in again[1:3]] == [d.messages for d in out[1:3]]
    assert (tmp_path / ANSWERS).read_text().splitlines() == lines
    with pytest.raises(ValueError, match="needs prompts"):
        teacher_answers(folder, [Document(text="x")], 1, tmp_path / "x", progress=False)


def test_command_without_torch_says_what_to_install(tmp_path, monkeypatch, capsys):
    import sys

    from edgeai.cli import main

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    (tmp_path / "a.txt").write_text("text")
    assert main(["distill", "smollm2-135m", "layers:4", str(tmp_path / "out"), "--data", str(tmp_path / "a.txt")]) == 1
    assert "pip install 'edgeai[distill]'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_layer_screen_candidates():
    """bench/layer_screen.py's layer sets: the sizes they say, each layer once, ascending, within the teacher."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    from layer_screen import candidates, ends

    assert ends(30, 7, 15) == parse_layer_list("0-6,15,23-29", 30)
    assert ends(30, 10, 20) == parse_layer_list("0-9,20-29", 30)
    sets = candidates(30)
    assert [len(v) for v in sets.values()] == [8, 15, 15, 15, 15, 15, 20, 20]
    for n in (6, 30):
        for name, layers in candidates(n).items():
            assert layers == sorted(set(layers)) and layers[0] == 0 and layers[-1] == n - 1, (n, name, layers)
