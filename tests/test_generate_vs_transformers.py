"""Greedy and beam-search generation against Hugging Face transformers on the same weights."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import edgeai  # noqa: E402
from conftest import build_tiny_llm_folder  # noqa: E402
from edgeai.convert.pipeline import convert  # noqa: E402
from test_vs_transformers import hf_model  # noqa: E402

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    src, folder = build_tiny_llm_folder(tmp_path_factory.mktemp("tiny") / "model", seed=21)
    llm = edgeai.LLM(folder, threads=1, context_length=128, prompt_cache=False)
    yield src, llm, hf_model(src)
    llm.close()


def hf_generate(model, ids, eos, **kw):
    with torch.no_grad():
        return model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                              eos_token_id=eos, pad_token_id=eos[0], do_sample=False, **kw)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tiny_greedy_matches_transformers(tiny, seed):
    src, llm, hf = tiny
    ids = np.random.default_rng(seed).integers(3, 320, 12).tolist()
    ours = llm.generate(ids, max_new_tokens=24)
    theirs = hf_generate(hf, ids, llm.eos_token_ids, max_new_tokens=24)[0, len(ids):].tolist()
    assert ours.token_ids == theirs


@pytest.mark.parametrize("seed, length_penalty", [(0, 1.0), (1, 0.5), (2, 2.0)])
def test_tiny_beam_search_matches_transformers(tiny, seed, length_penalty):
    src, llm, hf = tiny
    ids = np.random.default_rng(seed).integers(3, 320, 10).tolist()
    # Make some beams end: use a token the model likes as an extra end-of-sequence id.
    eos = llm.eos_token_ids + [llm.generate(ids, max_new_tokens=3).token_ids[-1]]
    llm.eos_token_ids = eos
    try:
        ours = llm.generate(ids, num_beams=4, num_return_sequences=4, max_new_tokens=12,
                            length_penalty=length_penalty)
    finally:
        llm.eos_token_ids = eos[:-1]
    out = hf_generate(hf, ids, eos, num_beams=4, num_return_sequences=4, max_new_tokens=12,
                      length_penalty=length_penalty, early_stopping=False, output_scores=True,
                      return_dict_in_generate=True)
    theirs = [[t for t in row[len(ids):].tolist()] for row in out.sequences]
    ours_all = [ours] + ours.alternatives
    for g, seq in zip(ours_all, theirs):
        # transformers pads shorter finished sequences; strip the padding after the first eos
        cut = next((i + 1 for i, t in enumerate(seq) if t in eos), len(seq))
        assert g.token_ids == seq[:cut]
    assert np.allclose([g.score for g in ours_all], out.sequences_scores.numpy(), atol=1e-4)


@pytest.mark.smollm2
@pytest.mark.slow
def test_default_model_fp32_greedy_matches_transformers(smollm2_source, tmp_path):
    folder = tmp_path / "smollm2-fp32"
    convert(smollm2_source, folder, quant="fp32")
    hf = hf_model(smollm2_source)
    with edgeai.LLM(folder, context_length=512, prompt_cache=False) as llm:
        for q in ["What is the capital of France?", "Write a haiku about the sea.", "List three prime numbers."]:
            ids = llm.tokenizer.encode(llm.tokenizer.apply_chat_template([{"role": "user", "content": q}]))
            ours = llm.generate(ids, max_new_tokens=32)
            theirs = hf_generate(hf, ids, llm.eos_token_ids, max_new_tokens=32)[0, len(ids):].tolist()
            assert ours.token_ids == theirs, q
