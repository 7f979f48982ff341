"""The weight file ONNX Runtime maps: pages of pre-packed weights are released, row-gathered tables are
marked for row-by-row faulting (ort_forward.release_mapped_weights)."""
import re
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgeai.convert.builder import build_onnx
from edgeai.convert.tiny import make_tiny_source
from edgeai.durable import fsync_tree
from edgeai.ort_forward import paged_out_while_loading, release_mapped_weights, session_options


def _external_ranges(model_path):
    m = onnx.load(str(model_path), load_external_data=False)
    out = {}
    for t in m.graph.initializer:
        d = {e.key: e.value for e in t.external_data}
        if "offset" in d:
            out[t.name] = [int(d["offset"]), int(d["length"])]
    return out


@pytest.mark.parametrize("quant", ["q4", "q8"])
@pytest.mark.parametrize("gguf_like", [False, True])
def test_graph_info_names_the_gathered_tables(tmp_path, quant, gguf_like):
    info = build_onnx(make_tiny_source(vocab=512, quantized_like_gguf=gguf_like), tmp_path, quant, max_seq_len=64)
    ranges = _external_ranges(tmp_path / "model.onnx")
    # a Q8_0 table needs no offsets (zp 128) and its float16 scales gather exactly as float16
    names = (("embed_tokens.qweight", "embed_tokens.row_scales") if gguf_like else
             ("embed_tokens.qweight", "embed_tokens.scales", "embed_tokens.offset"))
    assert info["gathered_ranges"] == [ranges[n] for n in names]


def test_fp32_gathers_no_separate_table(tmp_path):
    # the fp32 table is also the tied head's weight, read whole every step: nothing to fault row by row
    assert build_onnx(make_tiny_source(), tmp_path, "fp32", max_seq_len=64)["gathered_ranges"] == []


def _mapped_rss_kb(data_path, only_at=None):
    """Resident KB of our mappings of data_path (only those starting at the addresses `only_at`, if given)."""
    rss, current = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                parts = line.split()
                current = len(parts) >= 6 and parts[5] == str(data_path) and (
                    only_at is None or int(parts[0].split("-")[0], 16) in only_at)
            elif current and line.startswith("Rss:"):
                rss += int(line.split()[1])
    return rss


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux smaps and madvise")
def test_release_leaves_no_resident_weight_pages_and_the_model_still_runs(tmp_path):
    info = build_onnx(make_tiny_source(vocab=512), tmp_path, "q4", max_seq_len=64)
    fsync_tree(tmp_path)  # as `edgeai convert` does: pages not yet written back are dirty and stay resident
    data = (tmp_path / "model.onnx.data").resolve()
    sess = ort.InferenceSession(str(tmp_path / "model.onnx"), session_options(1), providers=["CPUExecutionProvider"])
    feeds = {"input_ids": np.array([[3, 7, 11]], np.int64), "seqlens_k": np.array([2], np.int32),
             "total_sequence_length": np.array([3], np.int32)}
    for i in sess.get_inputs():
        if i.name.startswith("past_"):
            feeds[i.name] = np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32)
    before = sess.run(["logits"], feeds)[0]
    released = release_mapped_weights(str(data), info["gathered_ranges"])
    if not released:
        pytest.skip("this ONNX Runtime build does not memory-map external data")
    assert _mapped_rss_kb(data) == 0
    np.testing.assert_array_equal(sess.run(["logits"], feeds)[0], before)  # rows fault back in from the file


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux smaps and madvise")
def test_pages_read_while_loading_are_paged_out_and_written_pages_keep_their_data(tmp_path):
    import ctypes
    import mmap
    import time

    probe = mmap.mmap(-1, 4096)
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.c_char.from_buffer(probe)
    supported = libc.madvise(ctypes.c_void_p(ctypes.addressof(buf)), ctypes.c_size_t(4096), 21) == 0
    del buf
    probe.close()
    if not supported:
        pytest.skip("this kernel has no MADV_PAGEOUT (Linux 5.4+): loading then keeps the pages until it ends")
    data = tmp_path / "model.onnx.data"
    data.write_bytes(np.arange(4 << 20, dtype=np.uint8).tobytes())  # 4 MB of known bytes
    fsync_tree(tmp_path)
    with open(data, "r+b") as f:
        m = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE)
    view = np.frombuffer(m, np.uint8)
    view[5] = 99  # a private write (ONNX Runtime never writes its initializers; PAGEOUT must keep it anyway)
    assert int(view[::4096].astype(np.int64).sum()) >= 0  # touch every page, as pre-packing reads them
    assert _mapped_rss_kb(data) >= 4000
    with paged_out_while_loading(str(data), every=0.01):
        deadline = time.monotonic() + 5
        while _mapped_rss_kb(data) > 64 and time.monotonic() < deadline:
            time.sleep(0.02)
    assert _mapped_rss_kb(data) <= 64  # only pages touched since the last pass may stay
    assert view[5] == 99  # the written page stayed (or came back) with our write
    np.testing.assert_array_equal(view[6:1 << 20], np.arange(6, 1 << 20, dtype=np.int64).astype(np.uint8))
    del view
    m.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux smaps and madvise")
def test_llm_drops_embedding_pages_every_64_tokens(tmp_path):
    """After a forward that brings the tokens fed past OrtForward.DROP_EVERY, none of the embedding table's
    pages stay in our resident set; the next forward maps back only what it reads, and results are unchanged."""
    import edgeai
    from conftest import build_tiny_llm_folder

    _, folder = build_tiny_llm_folder(tmp_path / "m", seed=5, quant="q4")
    with edgeai.LLM(folder, threads=1, context_length=200, prompt_cache=False) as llm:
        if not llm._forward._row_spans:
            pytest.skip("this ONNX Runtime build does not memory-map external data")
        data = (folder / "model.onnx.data").resolve()
        ids = list(range(3, 3 + llm._forward.DROP_EVERY + 6))  # one prefill forward past the threshold
        tables = {start for start, _ in llm._forward._row_spans}
        first = llm.generate(ids, max_new_tokens=1, prompt_lookup=0).token_ids
        assert _mapped_rss_kb(data, tables) == 0
        llm.generate(ids[:8], max_new_tokens=1, prompt_lookup=0, use_prompt_cache=False)
        assert _mapped_rss_kb(data, tables) > 0  # below the threshold the rows stay mapped
        again = llm.generate(ids, max_new_tokens=1, prompt_lookup=0, use_prompt_cache=False).token_ids
        assert again == first


def test_the_session_returns_its_freed_heap_before_the_tokenizer_loads(tmp_path, monkeypatch):
    """The load peak (docs/models.md): building the session frees ~16 MB of temporaries (0.5B) that glibc keeps,
    and the tokenizer's parse (+64 MB at Qwen's vocabulary) would sit on top of them; the heap goes back between
    the two, and once more when LLM() has finished loading."""
    import edgeai
    from conftest import build_tiny_llm_folder
    from edgeai import ort_forward, tokenizer

    _, folder = build_tiny_llm_folder(tmp_path / "m", seed=5, quant="q4")
    events, from_folder = [], tokenizer.Tokenizer.from_folder.__func__
    monkeypatch.setattr(ort_forward, "return_free_heap", lambda: events.append("heap returned"))
    monkeypatch.setattr(tokenizer.Tokenizer, "from_folder",
                        classmethod(lambda cls, f: events.append("tokenizer") or from_folder(cls, f)))
    with edgeai.LLM(folder, threads=1, context_length=64) as llm:
        assert llm.generate("hello", max_new_tokens=2).token_ids
    assert events == ["heap returned", "tokenizer", "heap returned"]


def test_loading_and_running_a_model_does_not_load_openssl(tmp_path):
    """hashlib initialises OpenSSL (3.5 MB resident) and only hashing needs it: loading a model must not."""
    import subprocess

    from conftest import build_tiny_llm_folder

    _, folder = build_tiny_llm_folder(tmp_path / "m", seed=5, quant="q4")
    code = ("import sys, edgeai\n"
            f"with edgeai.LLM({str(folder)!r}, threads=1, context_length=64) as llm:\n"
            "    llm.generate([3, 4, 5], max_new_tokens=2)\n"
            "print('hashlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
