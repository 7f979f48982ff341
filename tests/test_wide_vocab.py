"""The engine and sampling at Qwen's 151,936-token vocabulary: a tiny random Qwen2-shaped model (q/k/v biases,
untied head) with a Qwen-shaped byte-level vocabulary, converted by the real converter, through greedy, the
top-k/top-p/min-p chain with penalties, beam search, prompt lookup, the stop tokens and streaming."""
import numpy as np
import pytest

import edgeai
from edgeai.convert.pipeline import convert
from edgeai.convert.tiny import make_tiny_source
from edgeai.sampling import Sampler, SamplingParams
from edgeai.tokenizer import Tokenizer
from helpers.reference import ReferenceLlama
from helpers.sampling_ref import reference_filters
from helpers.wide_vocab import (ENDOFTEXT, IM_END, IM_START, QWEN_SPECIALS, QWEN_VOCAB, fragment_ids,
                                make_wide_tokenizer_json)
from test_llm import reference_greedy

PROMPT = "The cat sat on the mat. The cat sat on the"


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    src = make_tiny_source(vocab=QWEN_VOCAB, seed=4, attention_bias=True, tie_word_embeddings=False, max_pos=256)
    src.tokenizer_json = make_wide_tokenizer_json()
    src.special_tokens = dict(QWEN_SPECIALS)
    src.source = {"format": "tiny", "name": "wide"}
    folder = convert(src, tmp_path_factory.mktemp("wide") / "model", quant="fp32", progress=False)
    with edgeai.LLM(folder, threads=1, context_length=256, prompt_cache=False) as llm:
        yield src, llm


def test_vocabulary_and_stop_tokens(wide):
    src, llm = wide
    assert llm.tokenizer.vocab_size == QWEN_VOCAB and src.config.vocab_size == QWEN_VOCAB
    assert llm.eos_token_ids == [IM_END, ENDOFTEXT]  # <|im_start|> opens a turn: not an end
    g = llm.generate(PROMPT, max_new_tokens=5, logit_bias={ENDOFTEXT: 1e4})
    assert g.token_ids == [ENDOFTEXT] and g.finish_reason == "stop" and g.text == ""
    g = llm.generate(PROMPT, max_new_tokens=3, logit_bias={IM_START: 1e4})
    assert g.token_ids == [IM_START] * 3 and g.finish_reason == "length"


def test_greedy_matches_reference(wide):
    src, llm = wide
    ids = llm.tokenizer.encode(PROMPT)
    ref = reference_greedy(src, ids, 24, llm.eos_token_ids)
    assert max(ref) > 65535  # the model's choices use the whole id range
    for k in (0, 8):
        assert llm.generate(ids, max_new_tokens=24, prompt_lookup=k).token_ids == ref, k


def test_prompt_lookup_matches_reference(wide):
    """Multi-token steps (drafts checked against 151,936 logits per row): biasing two tokens makes the text
    repeat itself, so drafts are proposed and accepted; the model still picks which of the two comes next."""
    src, llm = wide
    ids = llm.tokenizer.encode(PROMPT)
    pair = [ids[1], ids[2]]
    bias = {t: 100.0 for t in pair}
    ref, r = [], ReferenceLlama(src)
    logits = r.forward(ids)[-1]
    for _ in range(40):
        ref.append(pair[int(np.argmax(logits[pair]))])
        logits = r.forward([ref[-1]])[-1]
    for k in (0, 8):
        g = llm.generate(ids, max_new_tokens=40, prompt_lookup=k, logit_bias=bias)
        assert g.token_ids == ref, k
    assert g.timings["draft_accepted"] > 0 and g.timings["draft_proposed"] > g.timings["draft_accepted"] - 1


def test_sampler_chain_at_full_vocabulary():
    x = (3 * np.random.default_rng(2).standard_normal(QWEN_VOCAB)).astype(np.float32)
    hist = np.random.default_rng(3).integers(0, QWEN_VOCAB, 300).astype(np.int32)
    kw = dict(temperature=0.8, top_k=4000, top_p=0.9, min_p=0.01, repetition_penalty=1.3, presence_penalty=0.4,
              frequency_penalty=0.2, penalty_last_n=200)
    s = Sampler(SamplingParams(seed=1, **kw))
    ids, p = s.candidates(x, hist)
    ref_ids, ref_p = reference_filters(x, hist, repetition=1.3, presence=0.4, frequency=0.2, last_n=200,
                                       temperature=0.8, top_k=4000, top_p=0.9, min_p=0.01)
    order, ref_order = np.argsort(ids), np.argsort(ref_ids)
    assert len(ids) > 10 and np.array_equal(np.asarray(ids)[order], ref_ids[ref_order])
    np.testing.assert_allclose(np.asarray(p)[order], ref_p[ref_order], rtol=1e-4, atol=1e-7)
    assert s(x, hist) in set(ref_ids.tolist())


def test_sampled_tokens_pass_the_reference_filters(wide):
    """Every sampled token survives the NumPy chain's filters on the reference logits of its own history
    (the prompt and what came before), filters loosened a hair for float32/float64 rounding at the edges."""
    src, llm = wide
    ids = llm.tokenizer.encode(PROMPT)
    kw = dict(temperature=1.5, top_k=50, top_p=0.9, min_p=0.05, repetition_penalty=1.3, presence_penalty=0.5,
              frequency_penalty=0.2)
    g = llm.generate(ids, max_new_tokens=16, seed=3, logit_bias={IM_END: -1e4, ENDOFTEXT: -1e4}, **kw)
    assert len(g.token_ids) == 16
    assert llm.generate(ids, max_new_tokens=16, seed=3, logit_bias={IM_END: -1e4, ENDOFTEXT: -1e4},
                        **kw).token_ids == g.token_ids
    ref = ReferenceLlama(src)
    logits, hist = ref.forward(ids)[-1], list(ids)
    for t in g.token_ids:
        kept, _ = reference_filters(logits, np.array(hist), bias={IM_END: -1e4, ENDOFTEXT: -1e4},
                                    repetition=1.3, presence=0.5, frequency=0.2, temperature=1.5, top_k=50,
                                    top_p=0.92, min_p=0.045)
        assert t in set(kept.tolist())
        hist.append(t)
        logits = ref.forward([t])[-1]


def test_beam_search_scores_match_reference(wide):
    src, llm = wide
    ids = llm.tokenizer.encode(PROMPT)
    g = llm.generate(ids, num_beams=4, num_return_sequences=3, max_new_tokens=6, length_penalty=1.0,
                     logit_bias={IM_END: -1e4, ENDOFTEXT: -1e4})
    beams = [g] + g.alternatives
    assert len(beams) == 3 and [b.score for b in beams] == sorted([b.score for b in beams], reverse=True)
    ref = ReferenceLlama(src)
    for b in beams:  # score = sum of log-probabilities / generated length (transformers', length_penalty 1)
        logits = ref.forward(list(ids) + b.token_ids, 0)[len(ids) - 1:-1]
        logits = logits - logits.max(-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        total = logp[np.arange(len(b.token_ids)), b.token_ids].sum()
        assert abs(b.score - total / len(b.token_ids)) < 1e-4, b.token_ids


def test_stream_never_splits_a_character(wide):
    src, llm = wide
    tok = llm.tokenizer
    vocab = {tok.id_to_token(i): i for i in range(QWEN_VOCAB)}
    # "東" (e6 9d b1) as a two-byte fragment then a byte, "😀" (f0 9f 98 80) as three bytes then a byte
    ids = [fragment_ids(vocab, b"\xe6\x9d"), fragment_ids(vocab, b"\xb1"), fragment_ids(vocab, b"\xf0\x9f\x98"),
           fragment_ids(vocab, b"\x80"), fragment_ids(vocab, b"!")]
    assert ids[0] > 255 and ids[2] > 65535 + 256
    s = tok.decode_stream()
    assert [s.step(i) for i in ids] + [s.flush()] == ["", "東", "", "😀", "!", ""]
    # sampled text over the whole vocabulary: the stream equals the full decode, piece by piece
    pieces = list(llm.stream(PROMPT, max_new_tokens=60, temperature=2.0, seed=7,
                             logit_bias={IM_END: -1e4, ENDOFTEXT: -1e4}))
    g = llm.generate(PROMPT, max_new_tokens=60, temperature=2.0, seed=7, logit_bias={IM_END: -1e4, ENDOFTEXT: -1e4})
    assert "".join(pieces) == g.text == tok.decode(g.token_ids, skip_special_tokens=True)


def test_tokenizer_round_trip_at_high_ids():
    tok = Tokenizer(make_wide_tokenizer_json(), None, QWEN_SPECIALS)
    text = "東京 😀 naïve <|im_start|>x<|im_end|>"
    ids = tok.encode(text)
    assert ids[-1] == IM_END and IM_START in ids and tok.decode(ids) == text
    assert tok.eos_token_ids == [IM_END, ENDOFTEXT]
