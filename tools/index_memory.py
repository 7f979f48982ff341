"""Peak memory of indexing one big text file, and the size of the largest chunk a very long line gives.

    python tools/index_memory.py [--mb 20] [--line-mb 5]

Each measurement runs `RAG.add` in its own process with a tiny random-weight BERT embedder built on the fly
(2 layers, width 32) that uses the real MiniLM tokenizer (from the edgeai cache, or --tokenizer), so chunks and
token counts are those of the default embedder while embedding costs little: the indexing pipeline is what is
measured. Reported: the peak RSS above the process's RSS just before `add` (imports and model loaded), per MB
of text, and the longest chunk.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, tempfile
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from conftest import make_tiny_bert_folder
from edgeai.retrieval.embed_convert import convert_folder
from edgeai.retrieval.embedder import Embedder
from edgeai.retrieval.rag import RAG

import numpy as np
from safetensors.numpy import load_file, save_file
work = Path(sys.argv[2]); doc = Path(sys.argv[3]); tokenizer = Path(sys.argv[4])
src = make_tiny_bert_folder(work / "bert_src", max_seq_length=256)
vocab = json.loads(tokenizer.read_text())["model"]["vocab"]
(src / "tokenizer.json").write_text(tokenizer.read_text())
w = load_file(str(src / "model.safetensors"))
rng = np.random.default_rng(0)
w["embeddings.word_embeddings.weight"] = (rng.standard_normal((len(vocab), 32)) * 0.2).astype(np.float32)
w["embeddings.position_embeddings.weight"] = (rng.standard_normal((512, 32)) * 0.2).astype(np.float32)
save_file(w, str(src / "model.safetensors"))
cfg = json.loads((src / "config.json").read_text())
cfg.update(vocab_size=len(vocab), max_position_embeddings=512)
(src / "config.json").write_text(json.dumps(cfg))
convert_folder(src, work / "bert", "fp32")
rag = RAG(None, Embedder(work / "bert", threads=1), work / "index")
def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
base = rss_mb()
stats = rag.add([doc])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
longest = max(len(c["text"]) for c in rag.store.get_chunks(rag.store.chunk_ids()).values())
print(json.dumps({"base_mb": base, "peak_mb": peak, "chunks": stats["chunks"], "longest_chunk_chars": longest}))
"""


def make_text(path: Path, mb: float, one_line: bool) -> None:
    gpl = Path("/usr/share/common-licenses/GPL-3")
    seed = gpl.read_text() if gpl.exists() else "The quick brown fox jumps over the lazy dog.\n\n" * 200
    if one_line:
        seed = " ".join(seed.split()) + " "
    n = int(mb * 1e6)
    with open(path, "w", encoding="utf-8") as f:
        written = 0
        while written < n:
            part = seed[: n - written]
            f.write(part)
            written += len(part)


def find_tokenizer() -> Path:
    from edgeai.paths import cache_dir

    found = sorted((cache_dir() / "models").glob("minilm-l6-*/tokenizer.json"))
    if not found:
        raise SystemExit("no MiniLM tokenizer in the edgeai cache: `edgeai pull minilm-l6`, or pass --tokenizer")
    return found[0]


def measure(mb: float, one_line: bool, tokenizer: Path) -> dict:
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        doc = td / "big.txt"
        make_text(doc, mb, one_line)
        env = dict(os.environ, OMP_NUM_THREADS="1")
        out = subprocess.run([sys.executable, "-c", CHILD, str(ROOT / "tests"), str(td), str(doc), str(tokenizer)],
                             capture_output=True, text=True, env=env, timeout=1800)
        if out.returncode:
            raise SystemExit(out.stderr[-3000:])
        r = json.loads(out.stdout.strip().splitlines()[-1])
    r["text_mb"] = mb
    r["one_line"] = one_line
    r["extra_mb_per_text_mb"] = round((r["peak_mb"] - r["base_mb"]) / mb, 1)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=20.0, help="size of the paragraph text file")
    ap.add_argument("--line-mb", type=float, default=5.0, help="size of the single-line file")
    ap.add_argument("--tokenizer", type=Path, default=None, help="a BERT WordPiece tokenizer.json")
    a = ap.parse_args()
    tok = a.tokenizer or find_tokenizer()
    for mb, one_line in ((a.mb, False), (a.line_mb, True)):
        r = measure(mb, one_line, tok)
        print(json.dumps(r))


if __name__ == "__main__":
    main()
