"""The student's starting weights: a smaller model that shares the teacher's tokenizer, or `layers:N`, a copy of
the teacher keeping N of its layers. Weights come from the edgeai source (GGUF / Hugging Face folder) as
float32 (`as_float` dequantizes GGUF blocks); no torch here.

Which layers `layers:N` keeps: the first, the last, and the others evenly spaced between them. The first
layer turns token embeddings into the features every later layer reads, and the last one maps the residual
stream into the space the (tied) output head expects; dropping either breaks the model far more than dropping
a middle layer (layer-pruning studies, e.g. Gromov et al. 2024 "The Unreasonable Ineffectiveness of the Deeper
Layers", find consecutive middle layers the most redundant). Even spacing keeps the depth-wise progression of
the residual stream, so each kept layer sees inputs like the ones it was trained on, and distillation has
less to repair.

`layers:0-6,15,23-29` names the kept layers instead (ranges and single indices, ascending). Measured on
SmolLM2-135M (30 layers, held-out pydoc text, untrained copies, docs/distill.md): keeping the ends whole starts
far closer to the teacher than even spacing at the same depth (15 layers: KL 4.9 with 0-6,15,23-29 against
11.3 evenly spaced), since the first and last few layers each do work no other layer repeats.
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import numpy as np

from ..convert.weights import SourceModel


def kept_layers(num_layers: int, n: int) -> list:
    """Indices of the n layers `layers:n` keeps out of num_layers (first, last, evenly spaced between)."""
    if not 1 <= n <= num_layers:
        raise ValueError(f"layers:{n} must keep between 1 and the teacher's {num_layers} layers")
    if n == 1:
        return [0]
    return [int(round(x)) for x in np.linspace(0, num_layers - 1, n)]


def parse_layer_list(text: str, num_layers: int) -> list:
    """The layer indices of an explicit list such as "0-6,15,23-29" (ascending, each in [0, num_layers))."""
    out = []
    for part in text.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part.strip())
        if m is None:
            raise ValueError(f"bad layer list {text!r}: write indices and ranges such as 0-6,15,23-29")
        lo, hi = int(m.group(1)), int(m.group(2) if m.group(2) is not None else m.group(1))
        if hi < lo:
            raise ValueError(f"bad layer range {part!r} in {text!r}: the end is below the start")
        out.extend(range(lo, hi + 1))
    if any(b <= a for a, b in zip(out, out[1:])):
        raise ValueError(f"layer list {text!r} must name each layer once, in ascending order")
    if out[-1] >= num_layers:
        raise ValueError(f"layer list {text!r} names layer {out[-1]}, but the teacher has layers 0-{num_layers - 1}")
    return out


def keep_layers(source: SourceModel, layers: list) -> SourceModel:
    """A copy of `source` with only the given decoder layers, renumbered 0..len-1 (tensors shared, not copied)."""
    tensors = {}
    new_index = {old: new for new, old in enumerate(layers)}
    for name, t in source.tensors.items():
        m = re.match(r"model\.layers\.(\d+)\.(.*)", name)
        if m is None:
            tensors[name] = t
        elif int(m.group(1)) in new_index:
            tensors[f"model.layers.{new_index[int(m.group(1))]}.{m.group(2)}"] = t
    config = copy.copy(source.config)
    config.num_layers = len(layers)
    return SourceModel(config=config, tensors=tensors, tokenizer_json=source.tokenizer_json,
                       chat_template=source.chat_template, special_tokens=dict(source.special_tokens or {}),
                       source=dict(source.source or {}))


def model_source(model) -> SourceModel:
    """The SourceModel behind a model: an edgeai model folder (its manifest's source), a .gguf file, a Hugging
    Face folder, or a model name."""
    from ..convert.pipeline import load_source

    p = Path(str(model)).expanduser()
    if p.is_dir() and (p / "edgeai.json").is_file():
        src = (json.loads((p / "edgeai.json").read_text(encoding="utf-8")).get("source") or {}).get("path")
        if not src or not Path(src).exists():
            raise FileNotFoundError(f"{p} was converted from {src}, which is not here: distillation starts "
                                    f"from the source weights (GGUF or Hugging Face folder)")
        return load_source(src)
    if p.exists():
        return load_source(p)
    from ..pull import resolve_model

    return model_source(resolve_model(str(model)))


def _vocab(tokenizer_json: str) -> dict:
    tj = json.loads(tokenizer_json)
    v = dict(tj.get("model", {}).get("vocab") or {})
    v.update({t["content"]: t["id"] for t in tj.get("added_tokens", [])})
    return v


def check_same_tokenizer(teacher_tokenizer_json: str, student: SourceModel, teacher_vocab_size: int):
    """Distillation compares distributions token by token: both must number tokens the same way."""
    if not student.tokenizer_json or _vocab(student.tokenizer_json) != _vocab(teacher_tokenizer_json):
        raise ValueError("the student's tokenizer differs from the teacher's: distillation needs both to map "
                         "text to the same token ids")
    if student.config.vocab_size < teacher_vocab_size:
        raise ValueError(f"the student's vocabulary ({student.config.vocab_size}) is smaller than the "
                         f"teacher's ({teacher_vocab_size})")


def student_source(spec: str, teacher) -> tuple:
    """(SourceModel, description dict) for STUDENT = `layers:N` or a model; `teacher` is its model folder."""
    from ..evaluate.fidelity import resolve

    teacher = resolve(teacher)
    m = re.fullmatch(r"layers:(\d+)", str(spec))
    listed = re.fullmatch(r"layers:([\d,\- ]*[,\-][\d,\- ]*)", str(spec))
    if m or listed:
        src = model_source(teacher)
        n = src.config.num_layers
        layers = kept_layers(n, int(m.group(1))) if m else parse_layer_list(listed.group(1), n)
        return keep_layers(src, layers), {"spec": spec, "from": "teacher", "layers": layers,
                                          "teacher_layers": src.config.num_layers}
    if str(spec).startswith("layers"):
        raise ValueError(f"bad student {spec!r}: write layers:N with N a number of teacher layers to keep, or layers:0-6,15,23-29 to name them")
    src = model_source(spec)
    t_cfg = json.loads((teacher / "edgeai.json").read_text(encoding="utf-8"))["config"]
    check_same_tokenizer((teacher / "tokenizer.json").read_text(encoding="utf-8"), src, t_cfg["vocab_size"])
    return src, {"spec": str(spec), "from": src.source.get("path") or str(spec)}
