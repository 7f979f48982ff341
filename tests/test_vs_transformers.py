"""The tiny model through Hugging Face transformers (torch) vs our ONNX graph and the NumPy reference."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from edgeai.convert.builder import build_onnx  # noqa: E402
from edgeai.convert.tiny import make_tiny_source  # noqa: E402
from edgeai.convert.weights import as_float  # noqa: E402
from helpers import OrtLlama  # noqa: E402
from helpers.reference import ReferenceLlama  # noqa: E402

pytestmark = pytest.mark.torch


def hf_model(src):
    c = src.config
    cls, cfg_cls = ((transformers.Qwen2ForCausalLM, transformers.Qwen2Config) if c.attention_bias
                    else (transformers.LlamaForCausalLM, transformers.LlamaConfig))
    cfg = cfg_cls(vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
                  num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads, num_key_value_heads=c.num_kv_heads,
                  head_dim=c.head_dim, max_position_embeddings=c.max_position_embeddings, rms_norm_eps=c.rms_norm_eps,
                  rope_theta=c.rope_theta, tie_word_embeddings=c.tie_word_embeddings, attn_implementation="eager")
    if not c.attention_bias:
        cfg.attention_bias = False
        cfg.mlp_bias = False
    model = cls(cfg).eval()
    sd = {k: torch.from_numpy(as_float(v).copy()) for k, v in src.tensors.items()}
    if c.tie_word_embeddings:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and all("rotary" in m for m in missing), (missing, unexpected)
    return model


@pytest.mark.parametrize("kw", [{}, {"attention_bias": True}, {"tie_word_embeddings": False}])
def test_logits_match_transformers(tmp_path, kw):
    src = make_tiny_source(seed=11, **kw)
    ids = np.random.default_rng(3).integers(0, src.config.vocab_size, 24)
    with torch.no_grad():
        hf = hf_model(src)(torch.from_numpy(ids)[None]).logits[0].double().numpy()
    ref = ReferenceLlama(src).forward(ids, 0)
    assert np.abs(ref - hf).max() <= 1e-4
    info = build_onnx(src, tmp_path, "fp32", all_logits=True, max_seq_len=64)
    r = OrtLlama(tmp_path / "model.onnx", info)
    out = np.concatenate([r.step(ids[:10], 0)[0], r.step(ids[10:], 10)[0]])
    assert np.abs(out - hf).max() <= 1e-4
