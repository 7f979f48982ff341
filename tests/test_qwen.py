"""The real Qwen2.5-Coder-0.5B-Instruct Q4_K_M file (marked `qwen`: skipped unless the file is at hand).

Looked for in $EDGEAI_QWEN_GGUF and edgeai's cache (what `edgeai pull qwen2.5-coder-0.5b` keeps).
transformers' own GGUF reader dequantizes the file independently of ours, so greedy parity checks our block
unpacking, our graph and our tokenizer together.
"""
import numpy as np
import pytest

pytestmark = pytest.mark.qwen
SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"


def test_qwen05_reads_exactly(qwen05_gguf):
    """Metadata as the model card says; every block tensor decodes bit for bit like gguf's own dequantization."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    from edgeai.convert.gguf_source import hf_name, load_gguf
    from edgeai.convert.weights import BlockQuantized

    s = load_gguf(qwen05_gguf, with_sha256=False)
    c = s.config
    assert (c.architecture, c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.vocab_size) == \
        ("qwen2", 24, 896, 14, 2, 151936)
    assert c.attention_bias and not c.tie_word_embeddings and c.rope_theta == 1e6
    kinds = {}
    reader = GGUFReader(str(qwen05_gguf), "r")
    for t in sorted(reader.tensors, key=lambda t: int(t.n_elements)):  # the smallest tensor of each kind
        if len(t.shape) != 2 or t.tensor_type.name in kinds:
            continue
        ours = s.tensors[hf_name(t.name)]
        assert isinstance(ours, BlockQuantized)
        want = dequantize(np.asarray(t.data), t.tensor_type).reshape(ours.shape).astype(np.float32)
        assert np.array_equal(ours.dequantize().view(np.uint32), want.view(np.uint32)), t.name
        kinds[t.tensor_type.name] = ours.kind
    assert kinds == {"Q8_0": "q8_0", "Q5_0": "q5_0", "Q6_K": "q6_k", "Q4_K": "q4_k"}


@pytest.mark.torch
@pytest.mark.slow
def test_qwen05_fp32_greedy_matches_transformers(qwen05_gguf, tmp_path):
    """Greedy tokens of our fp32 folder equal transformers' on the same GGUF (its own reader), chat prompts."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    import edgeai
    from edgeai.convert.pipeline import convert

    folder = convert(qwen05_gguf, tmp_path / "fp32", quant="fp32", max_seq_len=512, progress=False)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(qwen05_gguf.parent), gguf_file=qwen05_gguf.name,
                                                           torch_dtype=torch.float32).eval()
    with edgeai.LLM(folder, threads=2, prompt_cache=False) as llm:
        for q in ["Write a Python function that reverses a string.", "What does `os.path.join` do?",
                  "Explain list comprehensions in one sentence."]:
            ids = llm.tokenizer.encode(llm.tokenizer.apply_chat_template([{"role": "user", "content": q}]))
            ours = llm.generate(ids, max_new_tokens=32, prompt_lookup=0).token_ids
            with torch.no_grad():
                out = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                  do_sample=False, max_new_tokens=32, eos_token_id=llm.eos_token_ids,
                                  pad_token_id=llm.eos_token_ids[0])
            theirs = out[0, len(ids):].tolist()
            cut = next((i + 1 for i, t in enumerate(theirs) if t in llm.eos_token_ids), len(theirs))
            assert ours == theirs[:cut], q
