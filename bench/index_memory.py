"""Peak memory of `edgeai index` against the size of the text, measured with `/usr/bin/time -v`.

    python bench/index_memory.py --source DOCS [--mb 1 5 20] [--layouts folder file line] [--code DIR ...]

Text: real documentation (--source: a folder of .rst/.md/.txt files, e.g. the Python docs' reST sources from
Debian's python3.11-doc, or edgeai's pydoc corpus), repeated until each size is reached, laid out three ways:
  folder  N MB as many files (each source file once per pass, renamed per pass so each is a distinct file);
  file    N MB in one file (the source files one after the other);
  line    N MB in one file with no line breaks (a minified dump: the loader must cut it).
Embedder: MiniLM (from the edgeai cache, or --minilm-src) without its transformer layers (--layers 0: token
embeddings, LayerNorm, mean pooling): the real tokenizer, vocabulary and 384 dimensions, so chunks, token
counts, vectors and the HNSW index are those of the default embedder, while embedding costs next to nothing.
The indexing pipeline is what is measured; the embedder's own working memory (ORT's buffers for one batch of
32 x 256 tokens, ~0.2-0.3 GB for the real MiniLM) is a fixed cost on top: `--layers 6` measures with it.

Each run is `/usr/bin/time -v python -m edgeai.cli index PATH --index NEW --model THIN` in its own process, with
the edgeai of each --code checkout (default: this one), runs interleaved. Reported: the peak RSS, the peak
RSS of indexing a 1 KB file (imports, ORT session, empty index: the fixed part), and (peak - fixed) / MB of text.
--timeout / --max-mb stop a run that takes too long or too much memory (the box is shared): it is reported
with "stopped" and the largest resident size seen.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUFFIXES = (".rst", ".md", ".txt")


def build_thin_minilm(src: Path, out: Path, layers: int) -> Path:
    """MiniLM's first `layers` layers only: same tokenizer, vocabulary, width."""
    from safetensors.numpy import load_file, save_file

    from edgeai.retrieval.embed_convert import _find_model_dir, convert_folder

    if (out / "edgeai.json").is_file():
        return out
    src = _find_model_dir(src)
    thin = out.parent / (out.name + "-src")
    shutil.copytree(src, thin, dirs_exist_ok=True)
    w = load_file(str(src / "model.safetensors"))
    keep = {}
    for k, v in w.items():
        m = re.search(r"encoder\.layer\.(\d+)\.", k)
        if m and int(m.group(1)) >= layers:
            continue
        keep[k] = v
    save_file(keep, str(thin / "model.safetensors"))
    cfg = json.loads((thin / "config.json").read_text())
    cfg.update(num_hidden_layers=layers)
    (thin / "config.json").write_text(json.dumps(cfg))
    convert_folder(thin, out, "fp32")
    shutil.rmtree(thin)
    return out


def source_texts(source: Path) -> list:
    files = sorted(p for p in source.rglob("*") if p.suffix in SUFFIXES and p.is_file())
    if not files:
        raise SystemExit(f"no {'/'.join(SUFFIXES)} files under {source}")
    return files


def make_corpus(files: list, mb: float, layout: str, dest: Path) -> Path:
    """N MB (of UTF-8 bytes) of the source files, laid out as `layout` under dest."""
    want = int(mb * 1e6)
    dest.mkdir(parents=True)
    suffix = files[0].suffix
    if layout == "folder":
        written, rnd = 0, 0
        while written < want:
            for f in files:
                data = f.read_bytes()[: want - written]
                out = dest / f"p{rnd}_{f.parent.name}_{f.name}"
                out.write_bytes(data)
                written += len(data)
                if written >= want:
                    break
            rnd += 1
        return dest
    out = dest / f"big{suffix}"
    written = 0
    with open(out, "wb") as w:
        while written < want:
            for f in files:
                data = f.read_bytes()
                if layout == "line":
                    data = b" ".join(data.split()) + b" "
                else:
                    data += b"\n\n"
                data = data[: want - written]
                w.write(data)
                written += len(data)
                if written >= want:
                    break
    if layout == "line":  # a cut may have split a UTF-8 sequence at the end
        text = out.read_bytes().decode("utf-8", "ignore")
        out.write_text(text, encoding="utf-8")
    return out


def _group_rss_mb(pgid: int) -> float:
    """Resident memory of the processes in a process group (the run), from /proc."""
    total = 0
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == pgid:
                    total += int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
            except (OSError, IndexError, ValueError):
                pass
    return total / 2 ** 20


def run_index(code: Path, path: Path, model: Path, work: Path, timeout: float = 0, max_mb: float = 0) -> dict:
    """One `edgeai index` run; with timeout / max_mb, a run past either is killed and reported as stopped (its
    peak is then the largest resident size seen, sampled every 0.5 s): the box is shared."""
    idx = Path(tempfile.mkdtemp(dir=work, prefix="idx"))
    env = dict(os.environ, PYTHONPATH=str(code), OMP_NUM_THREADS="1")
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "edgeai.cli", "index", str(path), "--index", str(idx),
           "--model", str(model)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=tempfile.gettempdir(), start_new_session=True)
    start, seen, stopped = time.monotonic(), 0.0, None
    while True:
        try:
            _, err = proc.communicate(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            seen = max(seen, _group_rss_mb(proc.pid))
            if timeout and time.monotonic() - start > timeout:
                stopped = f"stopped after {timeout:g} s"
            elif max_mb and seen > max_mb:
                stopped = f"stopped above {max_mb:g} MB"
            if stopped:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
                shutil.rmtree(idx)
                return {"peak_mb": round(seen, 1), "wall_s": round(time.monotonic() - start, 1), "chunks": None,
                        "stopped": stopped}
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", err).group(1)) / 1024
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", err).group(1)
    secs = sum(float(x) * 60 ** i for i, x in enumerate(reversed(wall.split(":"))))
    chunks = re.search(r"\((\d+) chunks\)", err)
    shutil.rmtree(idx)
    return {"peak_mb": round(rss, 1), "wall_s": round(secs, 1), "chunks": int(chunks.group(1)) if chunks else None}


def default_minilm_src() -> Path:
    from edgeai.paths import cache_dir

    p = cache_dir() / "sources" / "minilm-l6"
    if not p.exists():
        raise SystemExit(f"no MiniLM source at {p}: `edgeai pull minilm-l6`, or pass --minilm-src")
    return p


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, required=True, help="folder of real .rst/.md/.txt documentation")
    ap.add_argument("--mb", type=float, nargs="+", default=[1, 5, 20])
    ap.add_argument("--layouts", nargs="+", choices=("folder", "file", "line"), default=["folder", "file"])
    ap.add_argument("--code", type=Path, nargs="+", default=[ROOT], help="checkouts whose edgeai to run")
    ap.add_argument("--minilm-src", type=Path, default=None)
    ap.add_argument("--layers", type=int, default=0, help="MiniLM layers kept (0-6)")
    ap.add_argument("--work", type=Path, default=None, help="where the embedder and corpora go (kept)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--timeout", type=float, default=0, help="stop a run after this many seconds (0: never)")
    ap.add_argument("--max-mb", type=float, default=0, help="stop a run whose resident size passes this (0: never)")
    a = ap.parse_args(argv)
    a.code = [c.resolve() for c in a.code]  # runs start in the temp folder: a relative path would import another edgeai
    work = a.work or Path(tempfile.mkdtemp(prefix="index_memory"))
    work.mkdir(parents=True, exist_ok=True)
    model = build_thin_minilm(a.minilm_src or default_minilm_src(), work / f"minilm-{a.layers}layers", a.layers)
    files = source_texts(a.source)
    rows = []
    tiny = work / "tiny"
    if not tiny.exists():
        tiny.mkdir()
        (tiny / "one.md").write_text("# One\n\n" + "A small file: the fixed cost of indexing. " * 20)
    fixed = {str(c): run_index(c, tiny, model, work)["peak_mb"] for c in a.code}
    print(json.dumps({"fixed_peak_mb": fixed}), flush=True)
    for mb in a.mb:
        for layout in a.layouts:
            corpus = work / f"{layout}-{mb:g}mb"
            if not corpus.exists():
                make_corpus(files, mb, layout, corpus)
            target = corpus if layout == "folder" else next(corpus.iterdir())
            for c in a.code:  # interleaved: each size and layout runs every checkout before the next one
                r = run_index(c, target, model, work, a.timeout, a.max_mb)
                r.update(code=str(c), layout=layout, text_mb=mb,
                         mb_per_text_mb=None if "stopped" in r else round((r["peak_mb"] - fixed[str(c)]) / mb, 2))
                rows.append(r)
                print(json.dumps(r), flush=True)
    if a.json:
        a.json.write_text(json.dumps({"fixed_peak_mb": fixed, "runs": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
