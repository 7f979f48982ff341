"""What checking a model folder against its manifest costs, next to loading the model.

    python bench/integrity_cost.py [MODEL] [--reps 5]

MODEL: a model folder or name (default smollm2-135m-q4, from the edgeai cache). A folder whose manifest predates
sizes and sampled digests is copied to a temp folder and its manifest rewritten, so the quick check is measured
as it runs for folders converted now. Each repetition runs in a fresh process and times, in an order that rotates
from one repetition to the next: reading the manifest alone (verify="none"), the quick check every load does
(sizes + sampled CRC-32, verify="quick"), the full sha256 of `edgeai verify` (verify="full"), and `LLM(MODEL)`
(which includes the quick check). Page cache warm: the model was just read. Prints medians and the two costs
as a share of the load without the check.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, time
from edgeai.manifest import load_manifest
folder, order = sys.argv[1], sys.argv[2].split(",")
out = {}
for what in order:
    t = time.perf_counter()
    if what == "llm":
        import edgeai
        edgeai.LLM(folder, threads=2).close()
    else:
        load_manifest(folder, verify=what)
    out[what] = time.perf_counter() - t
print(json.dumps(out))
"""


def resolve(model: str) -> Path:
    p = Path(model).expanduser()
    if p.is_dir():
        return p
    from edgeai.pull import resolve_model

    return Path(resolve_model(model))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default="smollm2-135m-q4")
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    from edgeai.manifest import MANIFEST_NAME, load_manifest, write_manifest

    folder = resolve(a.model)
    with tempfile.TemporaryDirectory() as td:
        m = load_manifest(folder, verify="none")
        if "file_checks" not in m:
            copy = Path(td) / folder.name
            shutil.copytree(folder, copy)
            m = json.loads((copy / MANIFEST_NAME).read_text())
            for k in ("files", "file_checks", "created"):
                m.pop(k, None)
            write_manifest(copy, m)
            folder = copy
        size = sum(p.stat().st_size for p in folder.iterdir())
        kinds = ["none", "quick", "full", "llm"]
        runs = {k: [] for k in kinds}
        for r in range(a.reps):
            order = kinds[r % 4:] + kinds[:r % 4]
            out = subprocess.run([sys.executable, "-c", CHILD, str(folder), ",".join(order)], check=True,
                                 capture_output=True, text=True)
            for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items():
                runs[k].append(v)
    med = {k: statistics.median(v) for k, v in runs.items()}
    quick = med["quick"] - med["none"]
    full = med["full"] - med["none"]
    load = med["llm"] - quick  # LLM() runs the quick check itself
    print(json.dumps({"model": a.model, "folder_mb": round(size / 1e6, 1), "reps": a.reps,
                      "median_s": {k: round(v, 4) for k, v in med.items()},
                      "quick_check_s": round(quick, 4), "full_sha256_s": round(full, 4),
                      "load_without_check_s": round(load, 3),
                      "quick_check_share_of_load": round(quick / load, 4),
                      "full_sha256_share_of_load": round(full / load, 4)}))


if __name__ == "__main__":
    main()
