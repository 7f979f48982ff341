"""Smoke test for a built wheel (cibuildwheel's test-command, and the fresh-venv check in docs/packaging.md):
imports the core and generates with a tiny random-weight model converted on the spot. Needs no download."""
import sys
import tempfile
from pathlib import Path

import edgeai
from edgeai import _core
from edgeai.convert.pipeline import convert
from edgeai.convert.tiny import make_tiny_source
from edgeai.convert.tokenizer_build import make_tiny_tokenizer_json


def main() -> int:
    print("edgeai", edgeai.__version__, "core", _core.__version__, "from", Path(_core.__file__).name)
    src = make_tiny_source(vocab=320, seed=1)
    src.tokenizer_json = make_tiny_tokenizer_json(320)
    src.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    src.special_tokens = {"bos": None, "eos": "<|im_end|>", "pad": "<|im_end|>", "unk": "<|endoftext|>"}
    src.source = {"format": "tiny", "name": "tiny"}
    with tempfile.TemporaryDirectory() as td:
        folder = convert(src, Path(td) / "tiny", quant="q4", progress=False)
        with edgeai.LLM(folder, threads=1, context_length=128) as llm:
            g = llm.generate("hello wheel", max_new_tokens=8)
            again = llm.generate("hello wheel", max_new_tokens=8)
    print("generated", len(g.token_ids), "tokens:", g.token_ids)
    return 0 if g.token_ids and g.token_ids == again.token_ids else 1


if __name__ == "__main__":
    sys.exit(main())
