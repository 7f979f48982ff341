"""Llama 3.x rope scaling: HF folders (rope_scaling llama3 / linear) and GGUF files (rope_freqs.weight) convert,
and the graph matches the NumPy reference (always) and transformers (marked `torch`); other types are refused."""
import json

import gguf
import numpy as np
import pytest

from conftest import write_hf_folder, write_tiny_gguf
from edgeai.convert import calibrate
from edgeai.convert.builder import build_onnx
from edgeai.convert.gguf_source import load_gguf
from edgeai.convert.hf_source import load_hf_folder
from edgeai.convert.rope import inv_freq, rope_scaling_from_hf
from edgeai.convert.tiny import make_tiny_source
from edgeai.convert.tokenizer_build import make_tiny_tokenizer_json
from helpers import OrtLlama
from helpers.reference import ReferenceLlama

# head_dim 16, theta 1e4: wavelengths 6.3, 19.9 (kept: < 128/4), 62.8 (blended), 199 ... 19869 (divided: > 128)
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 128}
SEQ = 160  # past the original context, where the scaling matters most


def llama_cpp_rope_factors(scaling, head_dim, theta):
    """The divisors llama.cpp's convert_hf_to_gguf.py writes as rope_freqs.weight for a llama3 scaling."""
    freqs = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    f, lo, hi, old = (scaling[k] for k in ("factor", "low_freq_factor", "high_freq_factor",
                                           "original_max_position_embeddings"))
    out = []
    for freq in freqs:
        wavelen = 2 * np.pi / freq
        if wavelen < old / hi:
            out.append(1.0)
        elif wavelen > old / lo:
            out.append(f)
        else:
            smooth = (old / wavelen - lo) / (hi - lo)
            out.append(1 / ((1 - smooth) / f + smooth))
    return np.array(out, np.float32)


@pytest.fixture(scope="module")
def ids():
    return np.random.default_rng(5).integers(0, 256, SEQ)


def scaled_source(**scaling):
    src = make_tiny_source(seed=21, max_pos=256)
    src.config.rope_scaling = rope_scaling_from_hf(scaling or LLAMA3)
    return src


def test_llama3_frequencies():
    plain = inv_freq(make_tiny_source().config)
    scaled = inv_freq(scaled_source().config)
    np.testing.assert_array_equal(scaled[:2], plain[:2])  # short wavelengths kept
    np.testing.assert_allclose(scaled[3:], plain[3:] / 8, rtol=1e-15)  # long ones divided by the factor
    assert plain[2] / 8 < scaled[2] < plain[2]  # blended in between
    # llama.cpp's stored form (divisors, float32) gives the same frequencies
    cfg = make_tiny_source().config
    cfg.rope_freq_factors = llama_cpp_rope_factors(LLAMA3, 16, 1e4).tolist()
    np.testing.assert_allclose(inv_freq(cfg), scaled, rtol=1e-6)
    lin = inv_freq(scaled_source(rope_type="linear", factor=4.0).config)
    np.testing.assert_allclose(lin, plain / 4, rtol=1e-15)


def test_graph_matches_reference(tmp_path, ids):
    src = scaled_source()
    ref = ReferenceLlama(src).forward(ids, 0)
    unscaled = ReferenceLlama(make_tiny_source(seed=21, max_pos=256)).forward(ids, 0)
    assert np.abs(ref - unscaled)[-32:].max() > 0.05  # the scaling changes the logits: this test can fail
    info = build_onnx(src, tmp_path, "fp32", all_logits=True, max_seq_len=256)
    r = OrtLlama(tmp_path / "model.onnx", info)
    out = np.concatenate([r.step(ids[:100], 0)[0], r.step(ids[100:], 100)[0]])
    assert np.abs(out - ref).max() <= 1e-4


def test_calibration_rope_uses_the_scaling():
    cfg = scaled_source().config
    x = np.random.default_rng(0).standard_normal((2, SEQ, 16)).astype(np.float32)
    pos = np.arange(SEQ, dtype=np.float32)
    ref = ReferenceLlama(scaled_source())._rope(x.astype(np.float64), pos.astype(np.float64))
    assert np.abs(calibrate._rope(x, pos, cfg) - ref).max() < 1e-3  # float32 angles up to 160 rad


def write_llama3_folder(folder, src, scaling):
    write_hf_folder(folder, src)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["rope_scaling"] = scaling
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def test_hf_folder_reads_scaling_and_refuses_others(tmp_path):
    src = make_tiny_source(seed=21, max_pos=256)
    src.tokenizer_json = make_tiny_tokenizer_json(256)
    s = load_hf_folder(write_llama3_folder(tmp_path / "l3", src, LLAMA3))
    assert s.config.rope_scaling == LLAMA3 and s.config.to_dict()["rope_scaling"] == LLAMA3
    for bad, match in (({"rope_type": "yarn", "factor": 4.0}, "'yarn' is not supported"),
                       ({"type": "dynamic", "factor": 2.0}, "'dynamic' is not supported"),
                       ({"rope_type": "llama3", "factor": 8.0}, "lacks low_freq_factor"),
                       ({"rope_type": "linear", "factor": 0}, "factor must be positive")):
        with pytest.raises(ValueError, match=match):
            load_hf_folder(write_llama3_folder(tmp_path / "bad", src, bad))
    assert load_hf_folder(write_llama3_folder(tmp_path / "d", src, {"rope_type": "default"})).config.rope_scaling \
        is None


def write_gguf_with(path, src, monkeypatch, tensors=(), **kv):
    """write_tiny_gguf plus extra tensors / metadata (added just before the header is written)."""
    class Writer(gguf.GGUFWriter):
        def write_header_to_file(self, *a, **k):
            for name, value in tensors:
                self.add_tensor(name, value)
            for key, value in kv.items():
                getattr(self, f"add_{key}")(value)
            return super().write_header_to_file(*a, **k)

    monkeypatch.setattr(gguf, "GGUFWriter", Writer)
    write_tiny_gguf(path, src, arch="llama", weights="f32")
    monkeypatch.undo()
    return path


def test_gguf_rope_freqs(tmp_path, monkeypatch, ids, tiny_llm):
    src = tiny_llm(vocab=256, seed=21, max_pos=256)
    factors = llama_cpp_rope_factors(LLAMA3, 16, 1e4)
    path = write_gguf_with(tmp_path / "l3.gguf", src, monkeypatch, [("rope_freqs.weight", factors)])
    s = load_gguf(path)
    assert s.config.rope_freq_factors == factors.tolist() and "rope_freqs.weight" not in s.tensors
    ref = ReferenceLlama(scaled_source()).forward(ids, 0)  # the same model with the HF llama3 scaling
    info = build_onnx(s, tmp_path / "out", "fp32", all_logits=True, max_seq_len=256)
    out = OrtLlama(tmp_path / "out" / "model.onnx", info).step(ids, 0)[0]
    assert np.abs(out - ref).max() <= 1e-4

    bad = write_gguf_with(tmp_path / "bad.gguf", src, monkeypatch, [("rope_freqs.weight", factors[:4])])
    with pytest.raises(ValueError, match="rope_freqs.weight has 4 factors"):
        load_gguf(bad)
    lin = write_gguf_with(tmp_path / "lin.gguf", src, monkeypatch, rope_scaling_type=gguf.RopeScalingType.LINEAR,
                          rope_scaling_factor=4.0)
    assert load_gguf(lin).config.rope_scaling == {"rope_type": "linear", "factor": 4.0}
    yarn = write_gguf_with(tmp_path / "yarn.gguf", src, monkeypatch, rope_scaling_type=gguf.RopeScalingType.YARN,
                           rope_scaling_factor=4.0)
    with pytest.raises(ValueError, match="rope scaling 'yarn', which is not supported"):
        load_gguf(yarn)


@pytest.mark.torch
def test_matches_transformers(tmp_path, ids):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    src = make_tiny_source(seed=21, max_pos=256)
    src.tokenizer_json = make_tiny_tokenizer_json(256)
    folder = write_llama3_folder(tmp_path / "l3", src, LLAMA3)
    cfg = transformers.LlamaConfig.from_pretrained(folder, attn_implementation="eager")  # reads rope_scaling
    hf = transformers.LlamaForCausalLM(cfg).eval()
    sd = {k: torch.from_numpy(np.asarray(v, np.float32).copy()) for k, v in src.tensors.items()}
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"]  # tied
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    assert not unexpected and all("rotary" in m for m in missing), (missing, unexpected)
    theirs_inv, _ = ROPE_INIT_FUNCTIONS["llama3"](hf.config, "cpu")
    np.testing.assert_allclose(hf.model.rotary_emb.inv_freq.numpy(), theirs_inv.numpy())  # the model uses it
    s = load_hf_folder(folder)
    np.testing.assert_allclose(inv_freq(s.config), theirs_inv.double().numpy(), rtol=1e-6)
    with torch.no_grad():
        theirs = hf(torch.from_numpy(ids)[None]).logits[0].double().numpy()
    assert np.abs(ReferenceLlama(s).forward(ids, 0) - theirs).max() <= 1e-4
    info = build_onnx(s, tmp_path / "out", "fp32", all_logits=True, max_seq_len=256)
    out = OrtLlama(tmp_path / "out" / "model.onnx", info).step(ids, 0)[0]
    assert np.abs(out - theirs).max() <= 1e-4
