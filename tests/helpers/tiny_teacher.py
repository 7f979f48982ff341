"""A tiny teacher for the distillation tests: a random 4-layer Llama written as a Hugging Face folder and
converted with all logits (fp32), so it has a source on disk (for `layers:N`) and a scoring graph."""
from __future__ import annotations

from pathlib import Path

TEXT = ("The heapq module provides an implementation of the heap queue algorithm, also known as the priority "
        "queue algorithm. Heaps are binary trees for which every parent node has a value less than or equal to "
        "any of its children. To read a file, open it with open() and call read(); close it when done. ") * 4


def make_teacher(root, seed: int = 0, num_layers: int = 4, vocab: int = 320):
    """(teacher model folder, its SourceModel)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest import SMOLLM2_TEMPLATE, write_hf_folder

    from edgeai.convert.pipeline import convert
    from edgeai.convert.tiny import make_tiny_source
    from edgeai.convert.tokenizer_build import make_tiny_tokenizer_json

    root = Path(root)
    src = make_tiny_source(num_layers=num_layers, vocab=vocab, max_pos=256, seed=seed)
    src.tokenizer_json = make_tiny_tokenizer_json(vocab)
    src.chat_template = SMOLLM2_TEMPLATE
    src.special_tokens = {"bos": None, "eos": "<|im_end|>", "pad": "<|im_end|>", "unk": "<|endoftext|>"}
    write_hf_folder(root / "teacher-hf", src)
    folder = convert(root / "teacher-hf", root / "teacher", quant="fp32", all_logits=True, progress=False)
    return folder, src
