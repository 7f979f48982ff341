"""Fault probing of index crash safety: `kill -9` at random moments, then check what is left.

    python tools/fault_probe.py [--index-kills 50] [--save-kills 50] [--seed 0] [--code DIR]

(--code: probe the edgeai of another checkout, e.g. the main branch's, to see what this guards against.)

Part 1 (`edgeai index`): a small corpus (markdown files) is indexed by `edgeai index` in a child process with a
tiny random-weight embedder built on the fly. Before each run some files are rewritten (same paragraph count,
so the same chunk ids with new vectors: the case an id comparison cannot see), added or removed; the child is
killed with SIGKILL after a random delay (uniform over 0.4..1.05 of an uninterrupted run: the first part of a
run is imports). Then:
  - leftovers: after one open of the index (RAG(...)), the folder holds only the index, the SQLite store and the
    embedding cache (with their -wal/-shm files): no temp files, no tmp* folders;
  - stale index: after that one open, the index FILE on disk holds exactly the store's chunks and vectors, and
    a second open does not rebuild it again;
  - nothing lost: a final uninterrupted `edgeai index` leaves every corpus file in the store with its current
    sha256, no removed file, and an index equal to the store.
Part 2 (index saves): a child loads a 20000-vector index, then changes a few vectors and saves it over and over;
it is killed at a random moment (uniform over 0..3 s after its load). The file must load (the old or the new version, never a broken one), and the next load cleans what the
killed save left.

Prints one JSON summary line; exit status 1 if any check failed.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CODE = ROOT  # the checkout whose edgeai is probed (--code)
EXPECTED = {"vectors.vidx", "docs.sqlite", "embcache.sqlite"}
WORDS = ("heap queue file read write open socket thread lock parse json csv path string bytes encode decode list "
         "dict set tuple sort key value index search vector model token chunk store cache graph node edge").split()


def expected_name(name: str) -> bool:
    return name in EXPECTED or any(name == e + s for e in EXPECTED for s in ("-wal", "-shm", "-journal"))


def write_doc(path: Path, rng: random.Random, paragraphs: int) -> None:
    parts = [f"# {path.stem}"]
    for _ in range(paragraphs):
        parts.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60))) + ".")
    path.write_text("\n\n".join(parts) + "\n", encoding="utf-8")


def build_embedder(work: Path) -> Path:
    sys.path.insert(0, str(CODE / "tests"))
    from conftest import make_tiny_bert_folder

    from edgeai.retrieval.embed_convert import convert_folder

    out = work / "embedder"
    convert_folder(make_tiny_bert_folder(work / "bert_src"), out, "fp32")
    return out


def index_cmd(corpus: Path, idx: Path, emb: Path) -> list:
    return [sys.executable, "-m", "edgeai.cli", "index", str(corpus), "--index", str(idx), "--model", str(emb)]


def child_env() -> dict:
    return dict(os.environ, PYTHONPATH=str(CODE), OMP_NUM_THREADS="1")


def child_cwd() -> str:
    # Not this checkout: `python -c`/`-m` put the working folder first on sys.path, before PYTHONPATH (--code).
    return tempfile.gettempdir()


def run_killed(cmd, delay: float, wait_ready: bool = False) -> bool:
    """Start cmd, SIGKILL it `delay` seconds after it starts (or after it prints a line, with wait_ready);
    True if it was still running when killed."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE if wait_ready else subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env=child_env(),
                         cwd=child_cwd())
    if wait_ready:
        run_killed.ready_line = p.stdout.readline().decode().strip()
    try:
        p.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGKILL)
        p.wait()
        return True
    finally:
        if p.stdout is not None:
            p.stdout.close()


def leftovers(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir() if not expected_name(p.name)) if folder.exists() else []


def index_file_matches_store(folder: Path) -> tuple:
    """(matches, why): the index file on disk holds exactly the store's chunk ids and vectors."""
    from edgeai.retrieval.docstore import DocStore
    from edgeai.retrieval.index import VectorIndex

    store = DocStore(folder / "docs.sqlite")
    try:
        want = {}
        for ids, _, vecs in store.vectors():
            want.update(zip(ids, vecs))
    finally:
        store.close()
    path = folder / "vectors.vidx"
    if not path.exists():
        return (not want), "no index file"
    ix = VectorIndex.load(path)
    if set(ix.ids()) != set(want):
        return False, f"ids differ ({len(ix)} in the index, {len(want)} in the store)"
    for i, v in want.items():
        v = v / max(np.linalg.norm(v), 1e-30)  # cosine space: hnswlib stores normalised vectors
        if not np.allclose(ix.get_vector(i), v, atol=1e-5):
            return False, f"vector of {i} differs from the store's"
    return True, ""


def open_rag(folder: Path, emb) -> bool:
    """Open the index as `edgeai ask` would; True if the open rebuilt it (warned)."""
    from edgeai.retrieval.rag import RAG

    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        rag = RAG(None, emb, folder)
        rag.store.close()
    return any("rebuild" in str(w.message) for w in rec)


def probe_index(work: Path, kills: int, rng: random.Random, emb_dir: Path, report: dict) -> None:
    from edgeai.manifest import sha256_file
    from edgeai.retrieval.docstore import DocStore
    from edgeai.retrieval.embedder import Embedder

    corpus, idx = work / "corpus", work / "idx"
    corpus.mkdir()
    shape = {}
    for i in range(24):
        shape[f"doc{i:02d}.md"] = rng.randint(4, 16)
        write_doc(corpus / f"doc{i:02d}.md", rng, shape[f"doc{i:02d}.md"])
    subprocess.run(index_cmd(corpus, idx, emb_dir), check=True, capture_output=True, env=child_env(),
                   cwd=child_cwd())
    for name in rng.sample(sorted(shape), 3):  # the kills land in runs like this one: a few files changed
        write_doc(corpus / name, rng, shape[name])
    t = time.time()
    subprocess.run(index_cmd(corpus, idx, emb_dir), check=True, capture_output=True, env=child_env(),
                   cwd=child_cwd())
    full = time.time() - t
    emb = Embedder(emb_dir, threads=1)
    r = report["index"] = {"kills": 0, "finished_before_kill": 0, "full_run_s": round(full, 2),
                           "left_store_ahead_of_index": 0, "leftovers_right_after_kill": 0,
                           "rebuilt_on_first_open": 0, "leftovers_after_open": 0, "stale_after_open": 0,
                           "rebuilt_again_on_second_open": 0, "lost_or_wrong_after_rerun": 0, "failures": []}
    for k in range(kills):
        for name in rng.sample(sorted(shape), rng.randint(1, 4)):  # same paragraph count: same chunk ids
            write_doc(corpus / name, rng, shape[name])
        if rng.random() < 0.2:
            gone = rng.choice(sorted(shape))
            (corpus / gone).unlink()
            del shape[gone]
        if rng.random() < 0.3:
            name = f"new{k:03d}.md"
            shape[name] = rng.randint(4, 16)
            write_doc(corpus / name, rng, shape[name])
        killed = run_killed(index_cmd(corpus, idx, emb_dir), rng.uniform(0.4 * full, 1.05 * full))
        r["kills" if killed else "finished_before_kill"] += 1
        r["leftovers_right_after_kill"] += bool(leftovers(idx))
        ok, _ = index_file_matches_store(idx)
        r["left_store_ahead_of_index"] += not ok
        if not (idx / "docs.sqlite").exists():
            continue  # killed before the first store was created: nothing to check yet
        r["rebuilt_on_first_open"] += open_rag(idx, emb)
        left = leftovers(idx)
        if left:
            r["leftovers_after_open"] += 1
            r["failures"].append(f"kill {k}: leftovers after open: {left}")
        ok, why = index_file_matches_store(idx)
        if not ok:
            r["stale_after_open"] += 1
            r["failures"].append(f"kill {k}: index file stale after one open: {why}")
        if open_rag(idx, emb):
            r["rebuilt_again_on_second_open"] += 1
            r["failures"].append(f"kill {k}: the second open rebuilt the index again")
        if k % 5 == 4 or k == kills - 1:  # nothing lost: a complete run brings store and index up to date
            subprocess.run(index_cmd(corpus, idx, emb_dir), check=True, capture_output=True,
                           env=child_env(), cwd=child_cwd())
            store = DocStore(idx / "docs.sqlite")
            try:
                have = {Path(f).name: store.file_digest(f) for f in store.files()}
            finally:
                store.close()
            want = {n: sha256_file(corpus / n) for n in shape}
            ok, why = index_file_matches_store(idx)
            if have != want or not ok or leftovers(idx):
                r["lost_or_wrong_after_rerun"] += 1
                r["failures"].append(f"kill {k}: after a complete run: store {'ok' if have == want else 'differs'}"
                                     f", index {why or 'ok'}, leftovers {leftovers(idx)}")


SAVER = r"""
import sys, numpy as np
from pathlib import Path
import edgeai
from edgeai.retrieval.index import VectorIndex
path = Path(sys.argv[1])
ix = VectorIndex.load(path)
rng = np.random.default_rng(int(sys.argv[2]))
print("ready", Path(edgeai.__file__).parent.parent, flush=True)
while True:  # mostly saving: a few changes, then a save of the whole index
    ix.add(rng.standard_normal((20, 64)).astype(np.float32))
    ix.delete(list(rng.choice(ix.ids(), 10, replace=False)))
    try:
        ix.save(path, stamp={"n": len(ix)})
    except TypeError:  # a version without stamps (--code)
        ix.save(path)
"""


def probe_saves(work: Path, kills: int, rng: random.Random, report: dict) -> None:
    from edgeai.retrieval.index import VectorIndex

    folder = work / "saves"
    folder.mkdir()
    path = folder / "vectors.vidx"
    ix = VectorIndex(64, ef_construction=40)
    ix.add(np.random.default_rng(0).standard_normal((20000, 64)).astype(np.float32))
    ix.save(path)
    t = time.time()
    ix.save(path)
    report["save_s"] = round(time.time() - t, 3)
    r = report["saves"] = {"kills": 0, "leftovers_right_after_kill": 0, "load_failures": 0,
                           "leftovers_after_load": 0, "count_mismatch": 0, "failures": []}
    for k in range(kills):
        if not run_killed([sys.executable, "-c", SAVER, str(path), str(k)], rng.uniform(0, 3.0), wait_ready=True):
            r["failures"].append(f"kill {k}: the saver ended by itself")
        r["kills"] += 1
        r["leftovers_right_after_kill"] += bool([p for p in folder.iterdir() if p.name != path.name])
        try:
            back = VectorIndex.load(path)
        except ValueError as exc:
            r["load_failures"] += 1
            r["failures"].append(f"kill {k}: {exc}")
            continue
        if getattr(back, "stamp", {}).get("n", len(back)) != len(back):
            r["count_mismatch"] += 1
        left = [p.name for p in folder.iterdir() if p.name != path.name]
        if left:
            r["leftovers_after_load"] += 1
            r["failures"].append(f"kill {k}: leftovers after load: {left}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index-kills", type=int, default=50)
    ap.add_argument("--save-kills", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--code", type=Path, default=ROOT, help="checkout whose edgeai to probe (default: this one)")
    a = ap.parse_args()
    global CODE
    CODE = a.code.resolve()
    sys.path.insert(0, str(CODE))
    rng = random.Random(a.seed)
    report: dict = {}
    t = time.time()
    with tempfile.TemporaryDirectory(prefix="edgeai-fault-") as td:
        work = Path(td)
        if a.index_kills:
            probe_index(work, a.index_kills, rng, build_embedder(work), report)
        if a.save_kills:
            probe_saves(work, a.save_kills, rng, report)
    import edgeai

    report["code"] = str(Path(edgeai.__file__).parent.parent)
    report["children_code"] = getattr(run_killed, "ready_line", "").removeprefix("ready ")
    report["seconds"] = round(time.time() - t, 1)
    print(json.dumps(report))
    failed = sum(len(v["failures"]) for v in report.values() if isinstance(v, dict))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
