"""edgeai.LLM on a tiny random model folder built by the real converter: agreement with the NumPy
reference, streaming, stop strings, prompt cache, cancellation, threads and bad input."""
import shutil
import threading

import numpy as np
import pytest

import edgeai
from conftest import build_tiny_llm_folder
from helpers.reference import ReferenceLlama
from helpers.prefix_rule import reusable_prefix


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return build_tiny_llm_folder(tmp_path_factory.mktemp("tiny") / "model", seed=3)


@pytest.fixture(scope="module")
def llm(tiny_model):
    with edgeai.LLM(tiny_model[1], threads=1, context_length=128) as m:
        yield m


def reference_greedy(source, prompt_ids, n, eos):
    ref = ReferenceLlama(source)
    logits = ref.forward(prompt_ids)
    out = []
    for _ in range(n):
        t = int(np.argmax(logits[-1]))
        out.append(t)
        if t in eos:
            break
        logits = ref.forward([t])
    return out


@pytest.mark.parametrize("text", ["hello world", "abc 123 xyz", "the cat sat on the mat"])
def test_greedy_matches_numpy_reference(llm, tiny_model, text):
    ids = llm.tokenizer.encode(text)
    g = llm.generate(ids, max_new_tokens=20)
    assert g.token_ids == reference_greedy(tiny_model[0], ids, 20, llm.eos_token_ids)


def test_stream_equals_generate_and_seed_is_reproducible(llm):
    kw = dict(max_new_tokens=30, temperature=3.0, top_p=0.99, seed=11, use_prompt_cache=False)
    full = llm.generate("hello there", **kw).text
    assert "".join(llm.stream("hello there", **kw)) == full
    assert llm.generate("hello there", **kw).text == full
    assert llm.generate("hello there", **dict(kw, seed=12)).text != full


def test_stop_string_is_caught_across_tokens_and_never_returned(llm):
    kw = dict(max_new_tokens=40, temperature=3.0, seed=5)
    base = llm.generate("stop me", **kw)
    ids = base.token_ids
    # A stop string that starts inside one token's text and ends inside the next one.
    pieces = [llm.tokenizer.decode([t]) for t in ids]
    k = next(i for i in range(2, len(pieces) - 1) if pieces[i] and pieces[i + 1])
    start = sum(len(p) for p in pieces[:k]) + len(pieces[k]) - 1
    stop = base.text[start:start + 2]
    assert len(stop) == 2
    g = llm.generate("stop me", stop=[stop], **kw)
    assert g.text == base.text[:base.text.index(stop)]
    assert stop not in g.text and g.finish_reason == "stop"
    assert "".join(llm.stream("stop me", stop=stop, **kw)) == g.text


def test_prompt_cache_reuses_the_shared_prefix(tiny_model):
    # Only positions computed as a fresh prefill computes them are reused (what keeps results identical with
    # the cache off), chunks of 8 here: the shared prefix ends mid-chunk and the rest of that chunk has >= 2 rows.
    with edgeai.LLM(tiny_model[1], threads=1, context_length=128, prefill_chunk=8) as cached, \
            edgeai.LLM(tiny_model[1], threads=1, context_length=128, prompt_cache=False) as plain:
        system = "you are careful and brief. "
        first, second = (cached.tokenizer.encode(system + q) for q in ("first question", "second one"))
        shared = next(i for i, (a, b) in enumerate(zip(first, second)) if a != b)
        assert shared >= len(cached.tokenizer.encode(system)) - 2 >= 16
        cached.generate(first, max_new_tokens=5)
        g = cached.generate(second, max_new_tokens=10)
        assert shared % 8 and g.timings["reused_prompt_tokens"] == reusable_prefix(shared, len(second), 8) == shared
        assert g.token_ids == plain.generate(second, max_new_tokens=10).token_ids


def test_chat_applies_the_template(llm):
    messages = [{"role": "user", "content": "hi"}]
    g = llm.chat(messages, max_new_tokens=5)
    ids = llm.tokenizer.encode(llm.tokenizer.apply_chat_template(messages))
    assert g.token_ids == llm.generate(ids, max_new_tokens=5).token_ids
    assert "".join(llm.chat(messages, stream=True, max_new_tokens=5)) == g.text


def test_batched_prompts_return_a_list(llm):
    out = llm.generate(["one", "two"], max_new_tokens=4)
    assert [g.text for g in out] == [llm.generate(p, max_new_tokens=4).text for p in ("one", "two")]


def test_beam_search_returns_ranked_sequences(llm):
    g = llm.generate("beam me", num_beams=4, num_return_sequences=3, max_new_tokens=8)
    scores = [g.score] + [a.score for a in g.alternatives]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    with pytest.raises(ValueError, match="num_return_sequences"):
        llm.generate("x", num_beams=2, num_return_sequences=3)


def test_cancellation_from_another_thread(tiny_model):
    with edgeai.LLM(tiny_model[1], threads=1, context_length=256) as m:
        started = threading.Event()
        pieces = []
        stream = m.stream("go on", max_new_tokens=250, logit_bias={t: -float("inf") for t in m.eos_token_ids})
        def consume():
            for p in stream:
                pieces.append(p)
                started.set()
        t = threading.Thread(target=consume)
        t.start()
        assert started.wait(10)
        m.cancel()
        t.join(10)
        assert not t.is_alive()
        assert stream.generation.finish_reason == "cancelled"
        assert len(stream.generation.token_ids) < 250


def test_many_threads_share_one_llm(llm):
    prompts = [f"thread {i} says" for i in range(8)]
    expected = [llm.generate(p, max_new_tokens=12, use_prompt_cache=False).token_ids for p in prompts]
    results = [None] * 8
    def work(i):
        results[i] = llm.generate(prompts[i], max_new_tokens=12).token_ids
    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == expected


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(prompt=""), ValueError, "empty"),
    (dict(prompt=[]), ValueError, "empty"),
    (dict(prompt=42), TypeError, "prompt"),
    (dict(prompt=["a", 3]), TypeError, "list of ints"),
    (dict(prompt="x", top_p=1.5), ValueError, "top_p"),
    (dict(prompt="x", temperature=-1), ValueError, "temperature"),
    (dict(prompt="x", max_new_tokens=0), ValueError, "max_new_tokens"),
    (dict(prompt="x", stop=[""]), ValueError, "stop"),
    (dict(prompt="x", bogus=1), ValueError, "bogus"),
    (dict(prompt=[10_000]), ValueError, "vocabulary"),
    (dict(prompt="x", prompt_lookup=-1), ValueError, "prompt_lookup"),
    (dict(prompt="x", prompt_lookup=99), ValueError, "prompt_lookup"),
])
def test_bad_inputs_raise_clear_errors(llm, kwargs, err, match):
    prompt = kwargs.pop("prompt")
    with pytest.raises(err, match=match):
        llm.generate(prompt, **kwargs)


def test_prompt_longer_than_context(llm):
    long = list(range(5, 200))
    with pytest.raises(ValueError, match="context"):
        llm.generate(long, max_new_tokens=4)
    g = llm.generate(long, max_new_tokens=4, truncate="left")
    assert g.prompt_tokens == 128 - 4


def test_model_folder_deleted_while_loaded(tiny_model, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(tiny_model[1], folder)
    m = edgeai.LLM(folder, threads=1, context_length=64)
    before = m.generate("still here", max_new_tokens=5).token_ids
    shutil.rmtree(folder)
    assert m.generate("still here", max_new_tokens=5).token_ids == before  # weights are already in memory
    m.close()
    with pytest.raises(RuntimeError, match="closed"):
        m.generate("x")
    with pytest.raises((FileNotFoundError, ValueError)):
        edgeai.LLM(folder)


def test_closing_a_stream_early_ends_only_that_generation(llm):
    ban_eos = {t: -float("inf") for t in llm.eos_token_ids}
    it = llm.stream("go on", max_new_tokens=120, logit_bias=ban_eos)
    next(it)
    it.close()  # returns once the worker has stopped
    other = llm.generate("go on", max_new_tokens=8, logit_bias=ban_eos)
    assert other.finish_reason == "length" and len(other.token_ids) == 8


def test_corrupt_graph_gives_a_clear_error(tiny_model, tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(tiny_model[1], folder)
    data = (folder / "model.onnx").read_bytes()
    (folder / "model.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model.onnx has .* bytes, not the .* recorded"):
        edgeai.LLM(folder)  # the manifest check sees it first
    from edgeai.manifest import load_manifest, write_manifest

    m = load_manifest(folder, verify="none")
    write_manifest(folder, {k: v for k, v in m.items() if k not in ("files", "file_checks")})  # agrees again
    with pytest.raises(ValueError, match="cannot load the model graph"):
        edgeai.LLM(folder)


@pytest.mark.parametrize("text", ["hello world hello world hello", "the cat sat on the mat, the cat sat"])
def test_prompt_lookup_drafts_change_nothing_but_the_step_count(llm, tiny_model, text):
    """Draft tokens run through ONNX Runtime as multi-row steps (num_logits > 1 on a cached prefix): the
    tokens must stay those of the NumPy reference, with fewer forward steps once drafts are confirmed."""
    ids = llm.tokenizer.encode(text)
    ref = reference_greedy(tiny_model[0], ids, 40, llm.eos_token_ids)
    plain = llm.generate(ids, max_new_tokens=40, use_prompt_cache=False)
    fast = llm.generate(ids, max_new_tokens=40, prompt_lookup=4, use_prompt_cache=False)
    assert plain.token_ids == fast.token_ids == ref
    t = fast.timings
    assert t["draft_proposed"] > 0
    assert t["decode_steps"] + t["draft_accepted"] == len(ref) - 1 or fast.finish_reason == "stop"
    seeded = dict(max_new_tokens=40, temperature=1.5, top_k=8, seed=5, use_prompt_cache=False)
    assert llm.generate(ids, **seeded).token_ids == llm.generate(ids, prompt_lookup=3, **seeded).token_ids
