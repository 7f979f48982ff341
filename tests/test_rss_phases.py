"""bench/rss_phases.py's child: the phase marks of one process (the session build and the tokenizer load marked
inside LLM()), and a digest of every step's logits that another process reproduces (what its A/B compares)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "rss_phases.py"


def run_child(folder, prompts):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run([sys.executable, str(SCRIPT), "--child", "--model", str(folder), "--prompts", str(prompts),
                        "--new", "6", "--threads", "1"], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(next(ln for ln in p.stdout.splitlines() if ln.startswith("RESULT "))[7:])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_child_marks_each_phase_and_its_logits_digest_repeats(tmp_path):
    from conftest import build_tiny_llm_folder

    _, folder = build_tiny_llm_folder(tmp_path / "m", seed=3, quant="q4")
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"warm": list(range(3, 20)), "ttft": {"40": list(range(5, 45))},
                                   "decode": {"12": list(range(50, 62))}}))
    a, b = run_child(folder, prompts), run_child(folder, prompts)
    names = [name for name, _ in a["marks"]]
    assert names == ["start", "imports", "session built", "tokenizer loaded", "LLM() returned", "40-token prompt",
                     "6 new tokens"]
    hwm = [m["VmHWM"] for _, m in a["marks"]]
    # the kernel's RSS counters are per-CPU approximations: a few pages either way
    assert all(later > earlier - 0.5 for earlier, later in zip(hwm, hwm[1:])) and hwm[-1] > hwm[1] > hwm[0]
    assert all(m["VmHWM"] > m["VmRSS"] - 0.5 and m["VmRSS"] > 0 for _, m in a["marks"])
    assert all(abs(m["RssAnon"] + m["RssFile"] - m["VmRSS"]) < 2 for _, m in a["marks"])  # + RssShmem, ~0
    assert len(a["tokens"]) == 6 and a["ttft_s"] > 0 and a["decode_tps"] > 0
    assert len(a["logits_crc"][1]) == 16 and a["logits_crc"] == b["logits_crc"]  # another process: same logits
