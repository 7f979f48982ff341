"""Shared pytest fixtures. Keep small: per-area fixtures live in their test files."""
import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# --- model sources (tests/test_gguf_source.py, test_tokenizer.py, test_pipeline.py, test_pull.py) ----------

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def find_smollm2_gguf():
    """The real SmolLM2 GGUF if present: $EDGEAI_SMOLLM2_GGUF, or the source in edgeai's own cache."""
    import os
    from pathlib import Path

    p = os.environ.get("EDGEAI_SMOLLM2_GGUF")
    if p and Path(p).is_file():
        return Path(p)
    found = find_real_source("smollm2-135m", wheels=False)
    return found[1] if found else None


def find_real_source(name, wheels=True):
    """Where the real source of recipe `name` can come from without a download, or None:
    ("wheels", folder) when $EDGEAI_WHEEL_DIR (the folder `edgeai pull` itself reads) holds every wheel the recipe
    needs; ("cached", path) when edgeai's own cache (paths.cache_dir(): $EDGEAI_HOME, ~/.cache/edgeai) holds the
    source and it is intact. A damaged cached source counts as absent: tests skip rather than fail on it."""
    import os
    from pathlib import Path

    from edgeai import pull as pl
    from edgeai.recipes import get_recipe

    recipe = get_recipe(name)
    folder = os.environ.get("EDGEAI_WHEEL_DIR")
    if wheels and folder:
        needed = recipe.parts or [recipe.source]
        if all(pl._find_wheel(Path(folder), p["package"], p["version"]) for p in needed):
            return "wheels", Path(folder)
    target, checked = pl._source_paths(recipe)
    if checked.is_file() and (pl._stamp_ok(checked, target.parent / ".verified.json", recipe.source["sha256"])
                              or pl._sha256(checked) == recipe.source["sha256"]):
        return "cached", target
    return None


def find_qwen05_gguf():
    """The real Qwen2.5-Coder-0.5B-Instruct GGUF if at hand: $EDGEAI_QWEN_GGUF, else edgeai's own cache (what
    `edgeai pull qwen2.5-coder-0.5b` keeps, checked like any cached source)."""
    import os
    from pathlib import Path

    p = os.environ.get("EDGEAI_QWEN_GGUF")
    if p and Path(p).is_file():
        return Path(p)
    found = find_real_source("qwen2.5-coder-0.5b", wheels=False)
    return found[1] if found else None


@pytest.fixture(scope="session")
def qwen05_gguf():
    p = find_qwen05_gguf()
    if p is None:
        pytest.skip("Qwen2.5-Coder-0.5B GGUF not found (set EDGEAI_QWEN_GGUF or `edgeai pull qwen2.5-coder-0.5b`)")
    return p


@pytest.fixture(scope="session")
def smollm2_gguf():
    p = find_smollm2_gguf()
    if p is None:
        pytest.skip("SmolLM2 GGUF not found (set EDGEAI_SMOLLM2_GGUF)")
    return p


@pytest.fixture(scope="session")
def smollm2_source(smollm2_gguf):
    """The real SmolLM2 SourceModel, read once per session (GGUFReader takes seconds on its 49k-token vocab)."""
    from edgeai.convert.gguf_source import load_gguf

    return load_gguf(smollm2_gguf)


@pytest.fixture
def tiny_llm():
    """Factory: a tiny random SourceModel with a complete (tiny byte-level BPE) tokenizer and chat template."""
    from edgeai.convert.tiny import make_tiny_source
    from edgeai.convert.tokenizer_build import make_tiny_tokenizer_json

    def make(vocab=320, **kw):
        s = make_tiny_source(vocab=vocab, **kw)
        s.tokenizer_json = make_tiny_tokenizer_json(vocab)
        s.chat_template = SMOLLM2_TEMPLATE
        s.special_tokens = {"bos": None, "eos": "<|im_end|>", "pad": "<|im_end|>", "unk": "<|endoftext|>"}
        s.source = {"format": "tiny", "name": "tiny"}
        return s
    return make


# Byte offsets of the float16 fields in one block of each ggml type, and the value each gets relative to
# s = 1/sqrt(cols) (so weights have a trained model's scale); every other byte of a random block is random.
_F16_FIELDS = {"Q4_0": [(0, 0.25)], "Q4_1": [(0, 0.25), (2, -1.9)], "Q5_0": [(0, 0.12)], "Q8_0": [(0, 0.016)],
               "Q4_K": [(0, 0.008), (2, 0.06)], "Q5_K": [(0, 0.004), (2, 0.06)], "Q6_K": [(208, 0.004)],
               "Q8_K": [(0, 0.016)]}


def random_blocks(qt, rows, cols, rng):
    """Raw bytes uint8 [rows, blocks * bytes] of random blocks of ggml type `qt` (codes and packed sub-block
    scales random, float16 super-scales near the values above, +-50%)."""
    import numpy as np
    from gguf.constants import GGML_QUANT_SIZES

    per, size = GGML_QUANT_SIZES[qt]
    nb = rows * cols // per
    raw = rng.integers(0, 256, (nb, size), dtype=np.uint8)
    for off, rel in _F16_FIELDS[qt.name]:
        v = (rel / np.sqrt(cols) * rng.uniform(0.5, 1.5, nb)).astype(np.float16)
        raw[:, off:off + 2] = v.view(np.uint8).reshape(nb, 2)
    return raw.reshape(rows, -1)


def write_tiny_gguf(path, source, arch="llama", weights="q4_1", permute=None, seed=0):
    """Write `source` as a llama.cpp-style GGUF: q/k rows permuted like convert_hf_to_gguf.py does (for llama),
    linear weights as Q4_1 (or f32/f16/q8_0), the embedding as Q8_0 when quantized, norms F32, and the tiny
    tokenizer's vocab/merges. `weights` may also map HF names to ggml type names ("q4_k", "q6_k", ...; others
    stay F32): types gguf cannot quantize (K-quants) get random blocks instead of the source's values.
    Returns {hf name: the float weights a reader should give back} (gguf's own dequantization)."""
    import json

    import gguf
    import numpy as np
    from gguf import GGMLQuantizationType as T
    from gguf.quants import dequantize, quantize

    from edgeai.convert.gguf_source import llama_permutation
    from edgeai.convert.weights import as_float

    c = source.config
    rng = np.random.default_rng(seed)
    permute = (arch == "llama") if permute is None else permute
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny")
    w.add_block_count(c.num_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_heads)
    w.add_head_count_kv(c.num_kv_heads)
    w.add_rope_freq_base(c.rope_theta)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    w.add_rope_dimension_count(c.head_dim)
    if source.tokenizer_json:
        tj = json.loads(source.tokenizer_json)
        vocab = tj["model"]["vocab"]
        for t in tj["added_tokens"]:
            vocab[t["content"]] = t["id"]
        tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
        special = {t["content"] for t in tj["added_tokens"] if t["special"]}
        merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("smollm")
        w.add_token_list(tokens)
        w.add_token_types([3 if t in special else 1 for t in tokens])
        w.add_token_merges(merges)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_pad_token_id(2)
        w.add_unk_token_id(0)
        w.add_add_bos_token(False)
        if source.chat_template:
            w.add_chat_template(source.chat_template)

    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    layer = {"input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
             "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
             "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
             "self_attn.q_proj.bias": "attn_q.bias", "self_attn.k_proj.bias": "attn_k.bias",
             "self_attn.v_proj.bias": "attn_v.bias", "mlp.gate_proj.weight": "ffn_gate.weight",
             "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight"}
    expected = {}
    for hf, t in source.tensors.items():
        if hf in names:
            gname = names[hf]
        else:
            i, rest = hf[len("model.layers."):].split(".", 1)
            gname = f"blk.{i}.{layer[rest]}"
        a = as_float(t)
        if permute and hf.endswith(("q_proj.weight", "k_proj.weight")):
            heads = c.num_heads if "q_proj" in hf else c.num_kv_heads
            idx = llama_permutation(a.shape[0], heads)
            inv = np.argsort(idx)
        else:
            idx = inv = np.arange(a.shape[0])
        a_g = a[idx] if a.ndim == 2 else a
        if isinstance(weights, dict):
            qt = T[weights[hf].upper()] if hf in weights else T.F32
        else:
            qt = {"q4_1": T.Q4_1, "q8_0": T.Q8_0, "f16": T.F16, "f32": T.F32}[weights]
        if a.ndim == 1:
            qt = T.F32
        elif hf == "model.embed_tokens.weight" and weights == "q4_1":
            qt = T.Q8_0  # like the real SmolLM2 file
        if qt.name in _F16_FIELDS and qt not in (T.Q4_0, T.Q4_1, T.Q5_0, T.Q8_0):  # gguf cannot quantize these
            raw = random_blocks(qt, *a_g.shape, rng)
            w.add_tensor(gname, raw, raw_shape=raw.shape, raw_dtype=qt)
            try:
                back = dequantize(raw, qt).reshape(a_g.shape)
            except NotImplementedError:  # a type edgeai must refuse: nothing to expect
                back = a_g
        elif qt in (T.Q4_0, T.Q4_1, T.Q5_0, T.Q8_0):
            raw = quantize(a_g, qt)
            w.add_tensor(gname, raw, raw_shape=raw.shape, raw_dtype=qt)
            back = dequantize(raw, qt).reshape(a_g.shape)
        elif qt == T.F16:
            w.add_tensor(gname, a_g.astype(np.float16))
            back = a_g.astype(np.float16).astype(np.float32)
        else:
            w.add_tensor(gname, a_g.astype(np.float32))
            back = a_g.astype(np.float32)
        expected[hf] = back[inv] if a.ndim == 2 else back
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expected


@pytest.fixture
def tiny_gguf(tiny_llm, tmp_path):
    """Factory: (path of a tiny GGUF, {hf name: expected float weights}, the SourceModel)."""
    def make(name="tiny.gguf", arch="llama", weights="q4_1", **kw):
        src = tiny_llm(**kw)
        path = tmp_path / name
        expected = write_tiny_gguf(path, src, arch=arch, weights=weights)
        return path, expected, src
    return make


def write_hf_folder(folder, source, bf16=False, shards=1):
    """Write `source` as a Hugging Face Llama folder: config.json, safetensors, tokenizer(.json/_config.json)."""
    import json
    from pathlib import Path

    import numpy as np
    from safetensors.numpy import save_file

    from edgeai.convert.weights import as_float

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    c = source.config
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": c.architecture, "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_layers, "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads, "max_position_embeddings": c.max_position_embeddings,
        "rms_norm_eps": c.rms_norm_eps, "rope_theta": c.rope_theta,
        "tie_word_embeddings": c.tie_word_embeddings, "torch_dtype": "bfloat16" if bf16 else "float32"}))
    tensors = {k: np.ascontiguousarray(as_float(v)) for k, v in source.tensors.items()}
    if bf16:  # store the top 16 bits (round toward zero), as raw uint16 reinterpreted by our header edit
        tensors = {k: (v.view(np.uint32) >> 16).astype(np.uint16) for k, v in tensors.items()}
    names = sorted(tensors)
    for s in range(shards):
        part = {k: tensors[k] for k in names[s::shards]}
        path = folder / f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        save_file(part, str(path))
        if bf16:  # safetensors' numpy API cannot write bf16: relabel the U16 tensors in the header
            raw = path.read_bytes()
            n = int.from_bytes(raw[:8], "little")
            header = raw[8:8 + n].replace(b'"U16"', b'"BF16"')
            header += b" " * (-len(header) % 8)
            path.write_bytes(len(header).to_bytes(8, "little") + header + raw[8 + n:])
    (folder / "tokenizer.json").write_text(source.tokenizer_json)
    sp = source.special_tokens or {}
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "chat_template": source.chat_template, "bos_token": sp.get("bos"),
        "eos_token": {"content": sp.get("eos"), "special": True}, "pad_token": sp.get("pad")}))
    return folder


# --- retrieval (tests/test_embedder.py, test_chunker.py, test_rag.py) ---------------------------------------

TINY_BERT_WORDS = ("the a of to and is in it for on with as how do i what file open read write heap push pop "
                   "item list python sort queue socket connect server data index search vector text model "
                   "error ignore previous instructions answer question").split()


def make_tiny_bert_folder(folder, seed=0, max_seq_length=24):
    """A random 2-layer BERT (hidden 32, 4 heads) with a WordPiece tokenizer, laid out like a
    sentence-transformers Hugging Face folder: config.json, model.safetensors, tokenizer.json, ..."""
    import json
    from pathlib import Path

    from safetensors.numpy import save_file
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(".,;:!?()[]'\"-_/<>=#") + list(letters)
    vocab += ["##" + c for c in letters] + TINY_BERT_WORDS
    vocab = list(dict.fromkeys(vocab))
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.decoder = decoders.WordPiece()
    tok.save(str(folder / "tokenizer.json"))

    H, I, L, heads, P = 32, 64, 2, 4, 64
    rng = np.random.default_rng(seed)
    r = lambda *s: (rng.standard_normal(s) * 0.2).astype(np.float32)  # noqa: E731
    w = {"embeddings.word_embeddings.weight": r(len(vocab), H), "embeddings.position_embeddings.weight": r(P, H),
         "embeddings.token_type_embeddings.weight": r(2, H),
         "embeddings.LayerNorm.weight": 1 + r(H), "embeddings.LayerNorm.bias": r(H)}
    for i in range(L):
        p = f"encoder.layer.{i}."
        for n in ("query", "key", "value"):
            w[p + f"attention.self.{n}.weight"], w[p + f"attention.self.{n}.bias"] = r(H, H), r(H)
        w[p + "attention.output.dense.weight"], w[p + "attention.output.dense.bias"] = r(H, H), r(H)
        w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"] = 1 + r(H), r(H)
        w[p + "intermediate.dense.weight"], w[p + "intermediate.dense.bias"] = r(I, H), r(I)
        w[p + "output.dense.weight"], w[p + "output.dense.bias"] = r(H, I), r(H)
        w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"] = 1 + r(H), r(H)
    save_file(w, str(folder / "model.safetensors"))
    cfg = {"architectures": ["BertModel"], "model_type": "bert", "hidden_act": "gelu", "hidden_size": H,
           "intermediate_size": I, "num_hidden_layers": L, "num_attention_heads": heads,
           "max_position_embeddings": P, "type_vocab_size": 2, "vocab_size": len(vocab),
           "layer_norm_eps": 1e-12, "position_embedding_type": "absolute", "_name_or_path": "tiny-bert"}
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length}))
    return folder


@pytest.fixture(scope="session")
def tiny_bert_src(tmp_path_factory):
    return make_tiny_bert_folder(tmp_path_factory.mktemp("tiny_bert_src"))


@pytest.fixture(scope="session")
def tiny_embed_model(tiny_bert_src, tmp_path_factory):
    """The tiny BERT converted by edgeai.retrieval.embed_convert (fp32)."""
    from edgeai.retrieval.embed_convert import convert_folder

    out = tmp_path_factory.mktemp("tiny_embed")
    convert_folder(tiny_bert_src, out, "fp32")
    return out


def build_tiny_llm_folder(folder, seed=0, vocab=320, max_pos=256, quant="fp32"):
    """A complete tiny model folder (random weights, tiny BPE tokenizer, ChatML template) via the real converter."""
    from edgeai.convert.pipeline import convert
    from edgeai.convert.tiny import make_tiny_source
    from edgeai.convert.tokenizer_build import make_tiny_tokenizer_json

    src = make_tiny_source(vocab=vocab, max_pos=max_pos, seed=seed)
    src.tokenizer_json = make_tiny_tokenizer_json(vocab)
    src.chat_template = SMOLLM2_TEMPLATE
    src.special_tokens = {"bos": None, "eos": "<|im_end|>", "pad": "<|im_end|>", "unk": "<|endoftext|>"}
    src.source = {"format": "tiny", "name": "tiny"}
    convert(src, folder, quant=quant, progress=False)
    return src, folder
