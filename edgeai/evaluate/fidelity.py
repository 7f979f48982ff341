"""How far a candidate model's next-token distributions are from a reference's (a quantization check).

For every position of a text: KL(reference || candidate), whether both pick the same top-1 token, and the
perplexity of each. The reference can be a model folder or a saved `.npz` (made once with
`save_reference`), so a float reference need not be re-run for every candidate.

Memory: full log-probs for 2048 positions x 49152 tokens are 400 MB per model, so the text runs through
the graph in chunks on top of the KV cache (exact: the same positions and cache as one pass) and the
reference keeps, per position, only its top-k log-probs plus the log of the remaining mass ("rest").
KL is computed over those k+1 bins: exact when k >= vocab, otherwise a lower bound on the full KL (merging
tokens can only lower a KL) that is tight when the top-k hold nearly all the mass; `ref_topk_mass`
reports how much they hold. Live and saved references give identical numbers.

Perplexity and KL need logits at every position: a model folder whose graph returns only the last position
gets an `all_logits` twin built once from the manifest's source (cached under cache_dir()/eval/).
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from .. import paths

DEFAULT_TOPK = 256
CHUNK = 256


# ---------------------------------------------------------------------------------------------- model folders
def resolve(model) -> Path:
    p = Path(str(model)).expanduser()
    if p.is_dir() or p.is_file():
        return p
    from ..pull import resolve_model

    return resolve_model(model)


def ensure_all_logits(model, build: bool = True, progress: bool = True) -> Path:
    """A model folder whose graph returns logits for every position: `model` itself if it does, else a
    twin converted from the manifest's source (same quantization) into cache_dir()/eval/ (built once)."""
    from ..manifest import load_manifest

    folder = resolve(model)
    if folder.is_file():  # a bare .onnx: use as is
        return folder
    m = load_manifest(folder)
    graph = m.get("graph") or {}
    if graph.get("all_logits"):
        return folder
    if not build:
        return folder
    src = (m.get("source") or {}).get("path")
    quant = (m.get("quantization") or {}).get("mode") or (graph.get("quant") or {}).get("mode") or "fp32"
    zero_points = (graph.get("quant") or {}).get("zero_points") or "default"
    if not src or not Path(src).exists():
        raise FileNotFoundError(f"{folder} returns last-position logits only and its source ({src}) is not here "
                                f"to build an all-logits twin; convert one with `edgeai convert SRC OUT "
                                f"--quant {quant} --all-logits`")
    # The folder's own graph and weight digests are in the key: a re-converted model (new builder, or new
    # weights in the same graph) gets a new twin.
    files = m.get("files") or {}
    key = hashlib.sha256(json.dumps([(m.get("source") or {}).get("sha256") or str(src), quant, zero_points,
                                     graph.get("max_seq_len"), graph.get("accuracy_level"),
                                     files.get("model.onnx"), files.get("model.onnx.data")],
                                    sort_keys=True).encode()).hexdigest()[:10]
    out = paths.cache_dir() / "eval" / f"{folder.name}-all-logits-{key}"
    if (out / "edgeai.json").is_file():
        return out
    from ..convert.pipeline import convert

    if progress:
        print(f"building an all-logits twin of {folder.name} ({quant}) in {out} (once) ...", file=sys.stderr)
    convert(src, out, quant=quant, all_logits=True, max_seq_len=graph.get("max_seq_len"), progress=progress,
            zero_points=zero_points)
    return out


def _onnx_path(folder: Path) -> Path:
    return folder / "model.onnx" if folder.is_dir() else folder


def tokenize_text(model_folder, text: str, max_tokens: int | None) -> list:
    """Raw text -> ids with the model's tokenizer, no special tokens (like peers' perplexity runs)."""
    from ..tokenizer import Tokenizer

    tok = Tokenizer.from_folder(model_folder)
    ids = tok.encode(text, add_special_tokens=False)
    return ids[:max_tokens] if max_tokens else ids


def open_session(model_folder, threads=None):
    """An ONNX Runtime session on the folder's graph, for reuse across many chunked_logits calls."""
    from .perplexity import _Session

    return _Session(_onnx_path(Path(model_folder)), threads)


def chunked_logits(model_folder, ids, threads=None, chunk: int = CHUNK, session=None):
    """Yield (start, float32 logits [c, vocab]) for positions start..start+c-1 of ids, one chunk per run on
    top of the KV cache of the previous chunks. `session` (from open_session) skips loading the graph."""
    sess = session or open_session(model_folder, threads)
    if not sess.all_logits:
        raise ValueError(f"{model_folder}: the graph returns last-position logits only "
                         f"(use ensure_all_logits or convert with --all-logits)")
    past, done = sess.empty(), 0
    while done < len(ids):
        piece = ids[done:done + chunk]
        logits, past = sess.run(piece, past, done)
        yield done, np.asarray(logits, np.float32)
        done += len(piece)


def _log_softmax64(x):
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _log1mexp(lse):
    """log(1 - exp(lse)) for lse <= 0, clamped so an all-covered distribution gives a tiny rest."""
    s = np.clip(np.exp(lse), 0.0, 1.0)
    return np.log(np.maximum(1.0 - s, 1e-30))


# ---------------------------------------------------------------------------------------------- reference
def topk_with_rest(lp, topk: int):
    """Per row of log-probs [n, vocab]: the top-k token ids (int32, most likely first), their log-probs
    (float32) and the log of the mass outside them (float64). The form both the fidelity reference and the
    distillation targets keep."""
    k = min(topk, lp.shape[1])
    idx = np.argpartition(-lp, k - 1, axis=1)[:, :k] if k < lp.shape[1] else np.tile(
        np.arange(lp.shape[1]), (len(lp), 1))
    top = np.take_along_axis(lp, idx, 1)
    order = np.argsort(-top, axis=1, kind="stable")
    idx, top = np.take_along_axis(idx, order, 1), np.take_along_axis(top, order, 1)
    rest = _log1mexp(np.logaddexp.reduce(top, axis=1))
    return idx.astype(np.int32), top.astype(np.float32), rest


class Reference:
    """Per position t (predicting ids[t+1]): top-k token ids and log-probs, log of the rest mass, the
    log-prob of the true next token."""

    def __init__(self, ids, topk_idx, topk_lp, rest_lp, target_lp, meta):
        self.ids = np.asarray(ids, np.int64)
        self.topk_idx, self.topk_lp = topk_idx, topk_lp
        self.rest_lp, self.target_lp = rest_lp, target_lp
        self.meta = meta

    @property
    def positions(self) -> int:
        return len(self.target_lp)

    @classmethod
    def from_model(cls, model, ids, topk=DEFAULT_TOPK, threads=None, chunk=CHUNK, label=None):
        folder = Path(model)
        ids = np.asarray(ids, np.int64)
        n = len(ids) - 1  # scored positions
        if n < 1:
            raise ValueError("need at least 2 tokens")
        t0 = time.perf_counter()
        idx_parts, lp_parts, rest_parts, tgt_parts = [], [], [], []
        for start, lg in chunked_logits(folder, ids, threads, chunk):
            lg = lg[: max(0, min(len(lg), n - start))]
            if not len(lg):
                continue
            lp = _log_softmax64(lg)
            idx, top, rest = topk_with_rest(lp, topk)
            idx_parts.append(idx)
            lp_parts.append(top)
            rest_parts.append(rest)
            tgt_parts.append(lp[np.arange(len(lp)), ids[start + 1:start + 1 + len(lp)]])
        meta = {"model": str(label or folder), "topk": int(idx_parts[0].shape[1]), "positions": n,
                "vocab": int(lp.shape[1]), "seconds": round(time.perf_counter() - t0, 3),
                "ids_sha256": hashlib.sha256(ids.tobytes()).hexdigest()}
        return cls(ids, np.concatenate(idx_parts), np.concatenate(lp_parts), np.concatenate(rest_parts),
                   np.concatenate(tgt_parts), meta)

    def save(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, ids=self.ids, topk_idx=self.topk_idx, topk_lp=self.topk_lp,
                            rest_lp=self.rest_lp, target_lp=self.target_lp,
                            meta=np.array(json.dumps(self.meta)))
        return path

    @classmethod
    def load(cls, path):
        with np.load(path, allow_pickle=False) as z:
            return cls(z["ids"], z["topk_idx"], z["topk_lp"], z["rest_lp"], z["target_lp"],
                       json.loads(str(z["meta"])))


def _stats(x) -> dict:
    x = np.asarray(x, np.float64)
    return {"mean": float(x.mean()), "median": float(np.median(x)), "p95": float(np.percentile(x, 95)),
            "p99": float(np.percentile(x, 99)), "max": float(x.max())}


def compare_to_reference(ref: Reference, candidate, threads=None, chunk=CHUNK) -> dict:
    """KL(ref || candidate) per position over the reference's top-k + rest bins, top-1 agreement, ppl."""
    return compare_logits(ref, chunked_logits(Path(candidate), ref.ids, threads, chunk))


def compare_logits(ref: Reference, chunks) -> dict:
    """compare_to_reference on the candidate's logits given as (start, float logits [c, vocab]) chunks over
    ref.ids, in order (chunked_logits' form; another runtime's graph can yield them too)."""
    n = ref.positions
    kl, agree, tgt = [], [], []
    t0 = time.perf_counter()
    vocab = None
    for start, lg in chunks:
        lg = lg[: max(0, min(len(lg), n - start))]
        if not len(lg):
            continue
        vocab = lg.shape[1]
        sl = slice(start, start + len(lg))
        lp = _log_softmax64(lg)
        a_lp = ref.topk_lp[sl].astype(np.float64)
        a_rest = ref.rest_lp[sl].astype(np.float64)
        b_lp = np.take_along_axis(lp, ref.topk_idx[sl].astype(np.int64), 1)
        b_rest = _log1mexp(np.logaddexp.reduce(b_lp, axis=1))
        pa, pa_rest = np.exp(a_lp), np.exp(a_rest)
        k = (pa * (a_lp - b_lp)).sum(1) + np.where(pa_rest > 1e-12, pa_rest * (a_rest - b_rest), 0.0)
        kl.append(np.maximum(k, 0.0))
        agree.append(lp.argmax(1) == ref.topk_idx[sl, 0])
        tgt.append(lp[np.arange(len(lp)), ref.ids[start + 1:start + 1 + len(lp)]])
    kl, agree, tgt = np.concatenate(kl), np.concatenate(agree), np.concatenate(tgt)
    if ref.meta.get("vocab") and vocab != ref.meta["vocab"]:
        raise ValueError(f"vocabulary sizes differ: reference {ref.meta['vocab']}, candidate {vocab}")
    ppl_ref = float(np.exp(-ref.target_lp.mean()))
    ppl_cand = float(np.exp(-tgt.mean()))
    exact = ref.meta["topk"] >= (vocab or 0)
    return {
        "tokens_scored": int(n),
        "kl": _stats(kl),
        "kl_method": "exact" if exact else f"top-{ref.meta['topk']} + rest bin (lower bound of the full KL)",
        "ref_topk_mass": float(np.exp(np.logaddexp.reduce(ref.topk_lp.astype(np.float64), axis=1)).mean()),
        "top1_agreement": float(agree.mean()),
        "ppl_reference": ppl_ref,
        "ppl_candidate": ppl_cand,
        "ppl_ratio": ppl_cand / ppl_ref,
        "candidate_seconds": round(time.perf_counter() - t0, 3),
    }


def fidelity(reference, candidate, text: str | None = None, token_ids=None, max_tokens: int | None = 2048,
             topk: int = DEFAULT_TOPK, threads: int | None = None, save_reference=None, chunk: int = CHUNK,
             build: bool = True, progress: bool = True) -> dict:
    """Compare `candidate` (model folder or name) against `reference` (model folder/name or saved .npz).

    The text is tokenized with the reference model's tokenizer (raw, no BOS), cut to max_tokens. With a
    saved reference its token ids are used (a given text must tokenize to the same ids)."""
    from .report import run_meta

    cand = ensure_all_logits(candidate, build=build, progress=progress)
    ref_path = Path(str(reference))
    if ref_path.suffix == ".npz" and ref_path.is_file():
        ref = Reference.load(ref_path)
        if token_ids is None and text is not None:
            ids = tokenize_text(cand, text, max_tokens)
            if list(ids) != ref.ids.tolist():
                raise ValueError(f"the saved reference {ref_path} was made on different tokens "
                                 f"({len(ref.ids)} ids) than this text gives ({len(ids)}); "
                                 f"omit --text or use the same text and --max-tokens")
        ref_desc = {"reference_file": str(ref_path), **ref.meta}
    else:
        ref_folder = ensure_all_logits(reference, build=build, progress=progress)
        token_ids = _scored_tokens(ref_folder, text, token_ids, max_tokens)
        ref = Reference.from_model(ref_folder, token_ids, topk=topk, threads=threads, chunk=chunk,
                                   label=str(reference))
        if save_reference:
            ref.save(save_reference)
        ref_desc = dict(ref.meta)
        ref_desc["scored_graph"] = str(ref_folder)
    r = compare_to_reference(ref, cand, threads=threads, chunk=chunk)
    return {"meta": run_meta(command="eval fidelity"), "reference": ref_desc,
            "candidate": {"model": str(candidate), "scored_graph": str(cand)}, **r}


def _scored_tokens(folder, text, token_ids, max_tokens):
    """The token ids to score: given ones (cut to max_tokens) or the tokenized text."""
    if token_ids is None:
        if text is None:
            raise ValueError("give a text (or token ids) to score")
        return tokenize_text(folder, text, max_tokens)
    return list(token_ids)[:max_tokens] if max_tokens else token_ids


# ---------------------------------------------------------------------------------------------- perplexity
def perplexity_eval(model, text: str | None = None, token_ids=None, max_tokens: int | None = None,
                    window: int | None = None, stride: int | None = None, threads: int | None = None,
                    build: bool = True, progress: bool = True) -> dict:
    """edgeai.evaluate.perplexity on a model folder or name, building an all-logits twin when needed
    (without one, perplexity still works but runs one token per call)."""
    from .perplexity import perplexity
    from .report import run_meta

    folder = ensure_all_logits(model, build=build, progress=progress)
    token_ids = _scored_tokens(folder, text, token_ids, max_tokens)
    r = perplexity(folder, token_ids, window=window, stride=stride, threads=threads)
    return {"meta": run_meta(command="eval perplexity"), "model": str(model), "scored_graph": str(folder),
            "tokens_in_text": len(token_ids), **r}
