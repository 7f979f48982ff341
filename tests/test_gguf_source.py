"""GGUF reader: weights come back exactly (quantized blocks, un-permuted q/k), bad files fail clearly."""
import numpy as np
import pytest

from conftest import write_tiny_gguf
from edgeai.convert.gguf_source import llama_permutation, llama_unpermutation, load_gguf
from edgeai.convert.weights import BlockQuantized, as_float


@pytest.mark.parametrize("rows,heads", [(64, 4), (32, 2), (576, 9), (192, 3)])
def test_unpermutation_inverts_llama_cpp_permutation(rows, heads):
    w = np.arange(rows)
    assert np.array_equal(w[llama_permutation(rows, heads)][llama_unpermutation(rows, heads)], w)
    # llama.cpp's own formula (convert_hf_to_gguf.py LlamaModel.permute)
    ref = w.reshape(heads, 2, rows // heads // 2).swapaxes(1, 2).reshape(rows)
    assert np.array_equal(w[llama_permutation(rows, heads)], ref)


@pytest.mark.parametrize("weights", ["q4_1", "q8_0", "f16", "f32"])
def test_tiny_gguf_round_trip(tiny_gguf, weights):
    path, expected, src = tiny_gguf(weights=weights)
    got = load_gguf(path)
    assert got.config.to_dict() == src.config.to_dict()
    assert set(got.tensors) == set(expected)
    for name, want in expected.items():
        np.testing.assert_array_equal(as_float(got.tensors[name]), want, err_msg=name)
    q = got.tensors["model.layers.0.self_attn.q_proj.weight"]
    if weights in ("q4_1", "q8_0"):
        assert isinstance(q, BlockQuantized) and q.kind == weights
        assert got.tensors["model.embed_tokens.weight"].kind == "q8_0"
    # the un-permuted weights are close to the original HF-layout weights (quantization error only)
    orig = as_float(src.tensors["model.layers.0.self_attn.q_proj.weight"])
    err = np.abs(as_float(q) - orig).max()
    wrong = np.abs(as_float(q)[llama_permutation(orig.shape[0], src.config.num_heads)] - orig).max()
    assert err < 0.25 * wrong
    assert got.source["format"] == "gguf" and len(got.source["sha256"]) == 64
    assert got.chat_template == src.chat_template
    assert got.special_tokens["eos"] == "<|im_end|>"


def test_qwen2_biases_not_permuted(tiny_gguf):
    path, expected, src = tiny_gguf(arch="qwen2", attention_bias=True)
    got = load_gguf(path)
    assert got.config.architecture == "qwen2" and got.config.attention_bias
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.k_proj.bias"):
        np.testing.assert_array_equal(as_float(got.tensors[name]), expected[name])


@pytest.mark.parametrize("arch", ["mamba", "bert"])
def test_unsupported_architecture(tiny_llm, tmp_path, arch):
    path = tmp_path / f"{arch}.gguf"
    write_tiny_gguf(path, tiny_llm(), arch=arch, permute=False)
    with pytest.raises(ValueError, match=arch):
        load_gguf(path)


@pytest.mark.parametrize("keep", [0.3, 0.9, 0.999])
def test_truncated_gguf(tiny_gguf, keep):
    path, _, _ = tiny_gguf()
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ValueError, match="corrupt or truncated GGUF"):
        load_gguf(path)


def test_not_a_gguf(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"PK\x03\x04 not a gguf at all")
    with pytest.raises(ValueError, match="not a GGUF"):
        load_gguf(p)
    with pytest.raises(FileNotFoundError):
        load_gguf(tmp_path / "missing.gguf")


def test_tokenizer_from_gguf_matches_source(tiny_gguf):
    from tokenizers import Tokenizer

    path, _, src = tiny_gguf()
    a, b = Tokenizer.from_str(src.tokenizer_json), Tokenizer.from_str(load_gguf(path).tokenizer_json)
    for text in ["Hello world 12345", "<|im_start|>user\nhi<|im_end|>", "déjà vu 東京 😀\t\n  x"]:
        assert a.encode(text).ids == b.encode(text).ids


@pytest.mark.smollm2
def test_smollm2_metadata(smollm2_source):
    s = smollm2_source
    c = s.config
    assert (c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim) == (30, 576, 9, 3, 64)
    assert (c.vocab_size, c.intermediate_size, c.rope_theta, c.tie_word_embeddings) == (49152, 1536, 100000.0, True)
    assert s.tensors["model.layers.0.mlp.down_proj.weight"].kind == "q4_1"
    assert s.tensors["model.embed_tokens.weight"].kind == "q8_0"
    assert s.special_tokens["eos"] == "<|im_end|>"
    assert "You are a helpful AI assistant named SmolLM" in s.chat_template
    assert s.source["sha256"] == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


@pytest.mark.smollm2
@pytest.mark.slow
def test_smollm2_numpy_forward_is_sensible(smollm2_source):
    """With q/k un-permuted correctly, a plain NumPy forward predicts well (a wrong layout gives nonsense)."""
    from tokenizers import Tokenizer

    from helpers.reference import ReferenceLlama

    s = smollm2_source
    tok = Tokenizer.from_str(s.tokenizer_json)
    ids = tok.encode("The capital of France is Paris. The capital of Germany is Berlin. "
                     "One, two, three, four, five, six, seven").ids
    logits = ReferenceLlama(s).forward(np.array(ids), 0)
    lp = logits - logits.max(-1, keepdims=True)
    lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
    ppl = float(np.exp(-lp[np.arange(len(ids) - 1), ids[1:]].mean()))
    assert ppl < 10, ppl
    assert tok.decode([int(logits[-1].argmax())]) == ","


def _write_minimal(path, extra_tensor=None, **meta):
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_embedding_length(32)
    w.add_feed_forward_length(64)
    w.add_head_count(2)
    w.add_context_length(64)
    for k, v in meta.items():
        w.add_string(k, v)
    w.add_token_list(["a", "b"])
    w.add_tensor("token_embd.weight", np.zeros((2, 32), np.float32))
    if extra_tensor:
        w.add_tensor(extra_tensor, np.zeros(32, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_unknown_tensors_and_rope_scaling_refused(tmp_path):
    """Tensors we would drop, or rope scaling the graph does not model, would give a silently wrong model."""
    _write_minimal(tmp_path / "u.gguf", "blk.0.attn_q_norm.weight")
    with pytest.raises(ValueError, match="attn_q_norm"):
        load_gguf(tmp_path / "u.gguf")
    _write_minimal(tmp_path / "f.gguf", "rope_freqs.weight")
    with pytest.raises(ValueError, match="rope scaling"):
        load_gguf(tmp_path / "f.gguf")
    _write_minimal(tmp_path / "y.gguf", **{"llama.rope.scaling.type": "yarn"})
    with pytest.raises(ValueError, match="rope scaling"):
        load_gguf(tmp_path / "y.gguf")
