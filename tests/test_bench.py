"""edgeai.bench: statistics, busy-core maths, bandwidth, weight bytes, the child runner on a tiny model."""
import json
import sys

import pytest

from edgeai import bench
from edgeai.bench import memory


def test_spread():
    assert bench.spread([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    assert bench.spread([4.0, 1.0, 2.0, 10.0])["median"] == 3.0
    assert bench.spread([None, 5.0]) == {"median": 5.0, "min": 5.0, "max": 5.0, "n": 1}
    assert bench.spread([]) == {}


def _run(tps, busy, error=None):
    r = {"load_s": 0.5, "ttft_s": {"32": 0.1}, "decode": {"32": {"tokens_per_s": tps}}, "foreign_cores": busy,
         "peak_rss_mb": 100.0}
    if error:
        r["error"] = error
    return r


def test_summarize_uses_quiet_runs():
    s = bench.summarize([_run(10, 0.0), _run(30, 0.1), _run(1, 1.5), _run(0, 0.0, error="boom")], max_busy=0.25)
    m = s["metrics"]
    assert m["tps@32"] == {"median": 20.0, "min": 10, "max": 30, "n": 2}
    assert m["ttft_ms@32"]["median"] == pytest.approx(100.0)
    assert (s["runs_ok"], s["runs_quiet"], s["runs_used"], s["noisy"]) == (3, 2, 2, False)
    assert s["errors"] == ["boom"]
    noisy = bench.summarize([_run(5, 0.9), _run(7, 1.1)], max_busy=0.25)
    assert noisy["noisy"] and noisy["metrics"]["tps@32"]["n"] == 2
    assert noisy["busy_cores"]["max"] == 1.1


def test_run_order_puts_every_config_in_every_slot():
    configs = ["a", "b", "c"]
    orders = [bench.run_order(configs, rep) for rep in range(3)]
    assert orders[0] == configs and all(sorted(o) == configs for o in orders)
    for slot in range(3):
        assert sorted(o[slot] for o in orders) == configs
    assert bench.run_order(configs, 4) == orders[1] and bench.run_order([], 2) == []


def test_foreign_cores_math():
    a = {"busy_s": 100.0, "steal_s": 1.0, "t": 10.0}
    b = {"busy_s": 106.0, "steal_s": 1.5, "t": 12.0}  # 6 busy CPU-seconds in 2 s
    assert memory.foreign_cores(a, b, own_cpu_s=4.0) == pytest.approx(1.0)  # we used 2 cores, others 1
    assert memory.foreign_cores(a, b, own_cpu_s=6.0) == 0.0
    assert memory.foreign_cores(a, b, own_cpu_s=9.0) == 0.0  # never negative
    assert memory.steal_cores(a, b) == pytest.approx(0.25)
    assert memory.foreign_cores(a, a, 0.0) == 0.0
    t = memory.cpu_times()
    assert t["busy_s"] > 0
    assert memory.busy_now(0.05) >= 0.0


def test_read_bandwidth_positive():
    for threads in (1, 2):
        r = memory.read_bandwidth(size_mb=16, reps=2, threads=threads)
        assert r["gbps"] > 0 and r["threads"] == threads and len(r["all_gbps"]) == 2
    assert memory.peak_rss_mb() > 10 and memory.current_rss_mb() > 10


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from edgeai.convert.pipeline import convert
    from edgeai.convert.tiny import make_tiny_source
    from edgeai.convert.tokenizer_build import make_tiny_tokenizer_json

    s = make_tiny_source(vocab=320, max_pos=256)
    s.tokenizer_json = make_tiny_tokenizer_json(320)
    s.special_tokens = {"bos": None, "eos": "<|im_end|>", "pad": "<|im_end|>", "unk": "<|endoftext|>"}
    s.source = {"format": "tiny", "name": "tiny"}
    return convert(s, tmp_path_factory.mktemp("bench") / "tiny-q4", quant="q4", progress=False)


def test_weight_bytes_per_token(tiny_folder, tmp_path):
    import onnx

    from edgeai.convert.builder import build_onnx
    from edgeai.convert.tiny import make_tiny_source

    src = make_tiny_source(vocab=320, hidden=64, intermediate=128, num_layers=2)
    build_onnx(src, tmp_path, "fp32")
    r = bench.onnx_weight_bytes_per_token(tmp_path / "model.onnx")
    c = src.config
    proj = c.num_layers * 4 * (c.hidden_size * (c.num_heads + 2 * c.num_kv_heads) * c.head_dim
                               + c.num_heads * c.head_dim * c.hidden_size + 3 * c.hidden_size * c.intermediate_size)
    head = c.vocab_size * c.hidden_size * 4  # tied head reads the whole embedding table (Gemm)
    assert r["matmul_bytes"] == proj + head
    assert r["gather_row_bytes"] == 0  # the gathered table is read whole by the head already
    assert r["bytes_per_token"] <= r["all_initializer_bytes"]
    q = bench.onnx_weight_bytes_per_token(tiny_folder / "model.onnx")
    assert 0 < q["bytes_per_token"] < r["bytes_per_token"]
    onnx.load(str(tiny_folder / "model.onnx"), load_external_data=False)  # untouched


def test_prompts_exact_lengths(tiny_folder):
    p = bench.make_prompts(tiny_folder, lengths=(8, 32), contexts=(16,))
    assert [len(p["ttft"][k]) for k in ("8", "32")] == [8, 32]
    assert len(p["decode"]["16"]) == 16 and len(p["warm"]) == 24
    assert p["ttft"]["8"] == p["ttft"]["32"][:8]
    assert p["decode"]["16"] != p["ttft"]["32"][:16]
    w = bench.make_prompts(tiny_folder, lengths=(8,), contexts=(16,), windows=3)
    assert list(w["decode"]) == ["16", "16#2", "16#3"] and w["decode"]["16"] == p["decode"]["16"]
    assert all(len(v) == 16 for v in w["decode"].values())
    assert len({tuple(v) for v in w["decode"].values()}) == 3  # three different places in the text


def _llm_or_skip():
    try:
        from edgeai import LLM  # noqa: F401 - the import is the check
    except (ImportError, AttributeError) as exc:
        pytest.skip(f"edgeai.LLM not importable yet: {exc}")


def test_runner_json_fields(tiny_folder, tmp_path):
    _llm_or_skip()
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps(bench.make_prompts(tiny_folder, lengths=(8, 16), contexts=(8,))))
    cfg = bench.edgeai_config(str(tiny_folder))
    r = bench.run_once(cfg, prompts, new=6, threads=1, timeout=300)
    assert not r.get("error"), r
    for k in ("load_s", "peak_rss_mb", "rss_after_load_mb", "ttft_s", "decode", "foreign_cores", "wall_s",
              "child_cpu_s", "warmup_s"):
        assert k in r, k
    assert set(r["ttft_s"]) == {"8", "16"} and all(v > 0 for v in r["ttft_s"].values())
    d = r["decode"]["8"]
    assert d["prompt_tokens"] == 8 and d["new_tokens"] == 6  # EOS suppressed: exactly 6
    assert d["tokens_per_s"] > 0 and d["forward_ms_per_token"] > 0 and d["overhead_ms_per_token"] >= 0
    assert r["peak_rss_mb"] >= r["rss_after_load_mb"] > 0
    f = bench.flatten(r)
    assert {"load_s", "ttft_ms@8", "ttft_ms@16", "tps@8", "fwd_ms@8", "other_ms@8", "peak_rss_mb"} <= set(f)


def test_run_bench_table_json_plot(tiny_folder, tmp_path, capsys):
    _llm_or_skip()
    from edgeai.cli import main

    out, png = tmp_path / "b.json", tmp_path / "b.png"
    peers = json.dumps({"genai": {"model": str(tmp_path / "nope")},
                        "optimum": {"model": str(tiny_folder), "python": sys.executable}})
    rc = main(["bench", str(tiny_folder), "--reps", "2", "--new", "4", "--prompt-lengths", "8,16",
               "--contexts", "8", "--bw-mb", "8", "--quiet-wait", "0", "--max-reruns", "0", "--threads", "1",
               "--peer-config", peers, "--json", str(out), "--plot", str(png)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "TTFT@8 ms" in text and "decode@8 tok/s" in text and "read bandwidth" in text
    assert "model not found" in text  # genai: no model
    res = json.loads(out.read_text())
    edge = res["configs"][0]
    assert edge["installed"] and edge["runs_ok"] == 2 and edge["metrics"]["tps@8"]["n"] >= 1
    assert edge["bandwidth_bound"]["8"]["bound_tps"] > 0
    assert edge["size_bytes"] > 0 and res["bandwidth_gbps"] > 0
    assert len(res["runs"][edge["label"]]) == 2
    assert edge["greedy_prefix_match"] == {"8": 4}
    assert main(["bench", str(tiny_folder), "--reps", "1", "--new", "4", "--prompt-lengths", "8",
                 "--contexts", "8", "--bw-mb", "8", "--quiet-wait", "0", "--threads", "1",
                 "--compare", str(out)]) == 0
    assert "compared with" in capsys.readouterr().out
    by_kind = {c["kind"]: c for c in res["configs"]}
    assert not by_kind["genai"]["installed"]
    if by_kind["optimum"]["installed"] is False:  # optimum is normally absent from edgeai's venv
        assert "optimum" in by_kind["optimum"]["note"] or by_kind["optimum"]["note"]
    try:
        import matplotlib  # noqa: F401
        assert png.stat().st_size > 1000
    except ImportError:
        assert not png.exists()


def test_peer_config_flags(tmp_path):
    from edgeai.commands.bench import _peer_spec

    class A:
        peer_config = json.dumps({"genai": {"model": "/m", "python": "/p"}})
        peers = True
        peer_model = ["llamacpp=/x.gguf"]
        peer_python = ["/venv/bin/python"]
        only_peers = None
    spec = _peer_spec(A)
    assert spec == {"genai": {"model": "/m", "python": "/venv/bin/python"},
                    "llamacpp": {"model": "/x.gguf", "python": "/venv/bin/python"}}
    cfgs = bench.peer_configs(spec)
    assert [c.kv_dtype_bytes for c in cfgs] == [4, 2]
    with pytest.raises(ValueError):
        bench.peer_configs({"vllm": {}})


def test_retrieval_section_small():
    r = bench.retrieval_section(n=2000, dim=16, queries=50, threads=1)
    assert r["n"] == 2000 and r["by_ef"] and all(0 <= row["vi_recall@10"] <= 1 for row in r["by_ef"])
    assert "recall@10" in bench.format_retrieval(r)
