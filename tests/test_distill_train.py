"""edgeai distill with torch: the torch student matches the NumPy reference, distillation lowers the KL to the
teacher, checkpoint/resume gives the same state, LoRA, and the exported student loads and generates."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgeai.convert.tiny import make_tiny_source  # noqa: E402
from edgeai.distill.data import Document, token_sequences  # noqa: E402
from edgeai.distill.loss import distill_loss, student_bins  # noqa: E402
from edgeai.distill.student import student_source  # noqa: E402
from edgeai.distill.targets import Targets, build_targets  # noqa: E402
from edgeai.distill.torch_llama import TorchLlama  # noqa: E402
from edgeai.distill.train import Trainer, TrainConfig, batch_indices  # noqa: E402
from edgeai.tokenizer import Tokenizer  # noqa: E402
from helpers.reference import ReferenceLlama  # noqa: E402
from helpers.tiny_teacher import TEXT, make_teacher  # noqa: E402

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Teacher folder, its source, training sequences and their targets (top-16 of a 320-token vocab)."""
    root = tmp_path_factory.mktemp("distill_train")
    folder, src = make_teacher(root)
    ids = token_sequences([Document(text=TEXT)], Tokenizer.from_folder(folder), 32)
    build_targets(folder, ids, root / "targets", topk=16, shard_size=4, progress=False)
    return folder, src, ids, Targets.load(root / "targets", folder, ids, 16, 4), root


@pytest.mark.parametrize("kw", [{}, {"attention_bias": True, "tie_word_embeddings": False, "kv_heads": 1}])
def test_torch_model_matches_numpy_reference(kw):
    src = make_tiny_source(num_layers=2, vocab=96, seed=3, **kw)
    ids = np.random.default_rng(0).integers(0, 96, 17)
    want = ReferenceLlama(src).forward(ids, 0)
    with torch.no_grad():
        got = TorchLlama.from_source(src)(torch.from_numpy(ids)[None]).double().numpy()[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-4 * np.abs(want).max())


def test_binned_kl_is_zero_for_the_teacher_itself(setup):
    """Student = teacher: the KL over the top-k + rest bins vanishes, and the student's bins sum to one."""
    folder, src, ids, t, _ = setup
    model = TorchLlama.from_source(src)
    x = torch.from_numpy(ids[:3].astype(np.int64))
    with torch.no_grad():
        logits = model(x)
        _, kl, ce = distill_loss(logits, x, *(torch.from_numpy(a[:3]) for a in (t.topk_idx, t.topk_lp, t.rest_lp)),
                                 temperature=2.0, alpha=1.0)
        bins = student_bins(logits[:, :-1].double(), torch.from_numpy(t.topk_idx[:3]).long())
    assert float(kl) < 1e-4 and float(ce) > 0
    np.testing.assert_allclose(bins.exp().sum(-1).numpy(), 1.0, atol=1e-9)


def _kl_on_targets(model, ids, t):
    with torch.no_grad():
        x = torch.from_numpy(ids.astype(np.int64))
        _, kl, _ = distill_loss(model(x), x, *(torch.from_numpy(a) for a in (t.topk_idx, t.topk_lp, t.rest_lp)),
                                alpha=1.0)
    return float(kl)


def test_distillation_lowers_kl_to_the_teacher(setup, tmp_path):
    folder, _, ids, t, _ = setup
    src, _ = student_source("layers:2", folder)
    tr = Trainer(src, ids, TrainConfig(steps=25, batch=4, lr=3e-3, alpha=1.0), tmp_path, targets=t)
    before = _kl_on_targets(tr.model, ids, t)
    tr.run(save_every=100, progress=False)
    after = _kl_on_targets(tr.model, ids, t)
    assert after < 0.5 * before, (before, after)


def test_batches_are_a_function_of_the_step():
    n = 7
    seen = np.concatenate([batch_indices(s, 3, n, 5) for s in range(7)])  # 21 slots = 3 passes
    for p in range(3):
        assert sorted(seen[p * n:(p + 1) * n]) == list(range(n))
    np.testing.assert_array_equal(batch_indices(4, 3, n, 5), batch_indices(4, 3, n, 5))
    assert not np.array_equal(batch_indices(0, 3, n, 5), batch_indices(0, 3, n, 6))


@pytest.mark.parametrize("lora", [0, 4])
def test_resume_gives_the_same_state(setup, tmp_path, lora):
    folder, _, ids, t, _ = setup
    src, _ = student_source("layers:2", folder)
    cfg = TrainConfig(steps=6, batch=3, lr=1e-3, alpha=0.5, temperature=2.0, lora=lora)
    whole = Trainer(src, ids, cfg, tmp_path / "whole", targets=t)
    whole.run(save_every=100, progress=False)
    part = Trainer(src, ids, cfg, tmp_path / "part", targets=t)
    part.run(save_every=2, progress=False, stop_after=3)   # interrupted after step 3 (checkpoint at 2 and 3)
    resumed = Trainer(src, ids, cfg, tmp_path / "part", targets=t)
    resumed.load()
    assert resumed.step == 3
    resumed.run(save_every=2, progress=False)
    assert resumed.step == 6
    for (n, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=n)
    assert [h["loss"] for h in whole.history] == [h["loss"] for h in resumed.history]
    sa, sb = whole.opt.state_dict()["state"], resumed.opt.state_dict()["state"]
    for k in sa:
        torch.testing.assert_close(sa[k]["exp_avg_sq"], sb[k]["exp_avg_sq"], rtol=0, atol=0)
    other = Trainer(src, ids, TrainConfig(steps=6, batch=3, lr=2e-3, lora=lora), tmp_path / "part", targets=t)
    with pytest.raises(ValueError, match="lr: 0.001 -> 0.002"):
        other.load()


def test_lora_trains_low_rank_updates_only(setup, tmp_path):
    folder, _, ids, t, _ = setup
    src, _ = student_source("layers:2", folder)
    tr = Trainer(src, ids, TrainConfig(steps=15, batch=4, lr=1e-2, alpha=1.0, lora=2), tmp_path, targets=t)
    assert all(".lora_" in n for n in tr.params) and len(tr.params) == 2 * 7 * 2
    before = _kl_on_targets(tr.model, ids, t)
    tr.run(save_every=100, progress=False)
    assert _kl_on_targets(tr.model, ids, t) < before
    merged = tr.model.merged_tensors()
    assert not any(".lora_" in k for k in merged)
    delta = merged["model.layers.1.mlp.up_proj.weight"] - src.tensors["model.layers.1.mlp.up_proj.weight"]
    s = np.linalg.svd(delta, compute_uv=False)
    assert s[0] > 1e-4 and s[2] < 1e-5 * s[0]  # a rank-2 update
    np.testing.assert_array_equal(merged["model.embed_tokens.weight"], src.tensors["model.embed_tokens.weight"])


def test_distill_command_exports_a_student_that_generates(setup, tmp_path):
    """The whole command: targets, training, HF export, conversion; the student loads, generates, scores closer
    to the teacher than the untrained `layers:2` copy, and its manifest says how it was made."""
    from edgeai import LLM
    from edgeai.cli import main
    from edgeai.distill.export import export_student
    from edgeai.evaluate.fidelity import fidelity

    folder, _, _, _, root = setup
    data = tmp_path / "train.txt"
    data.write_text(TEXT)
    out = tmp_path / "student"
    assert main(["distill", str(folder), "layers:2", str(out), "--data", str(data), "--steps", "25",
                 "--seq-len", "32", "--lr", "3e-3", "--alpha", "0.9", "--quant", "fp32", "--topk", "16",
                 "--json", str(tmp_path / "run.json")]) == 0
    m = json.loads((out / "edgeai.json").read_text())
    d = m["distill"]
    assert d["train"]["steps"] == 25 and d["student"]["layers"] == [0, 3] and m["config"]["num_layers"] == 2
    assert d["data"]["sha256"] and d["teacher"]["model"] == str(folder) and d["train"]["loss"] > 0
    assert json.loads((tmp_path / "run.json").read_text())["train"]["steps"] == 25
    with LLM(out, threads=1) as llm:
        g = llm.generate("The heapq module", max_new_tokens=8)
    assert len(g.token_ids) == 8 or g.finish_reason == "stop"
    src, _ = student_source("layers:2", folder)
    from edgeai.convert.weights import as_float
    base = export_student({k: as_float(v) for k, v in src.tensors.items()}, src, tmp_path / "base-hf",
                          tmp_path / "base", quant="fp32", progress=False)
    trained = fidelity(folder, out, text=TEXT, max_tokens=32, progress=False)
    untrained = fidelity(folder, base, text=TEXT, max_tokens=32, progress=False)
    assert trained["kl"]["mean"] < 0.7 * untrained["kl"]["mean"]
    # a second run on the same work folder refuses to overwrite its checkpoint; a bad student spec is an error
    assert main(["distill", str(folder), "layers:2", str(tmp_path / "s2"), "--data", str(data), "--steps", "25",
                 "--seq-len", "32", "--lr", "3e-3", "--alpha", "0.9", "--quant", "fp32", "--topk", "16",
                 "--work", str(tmp_path / "student.distill")]) == 1
    assert main(["distill", str(folder), "layers:x", str(tmp_path / "s3"), "--data", str(data)]) == 1
