"""Text that is not valid Unicode (lone surrogates) is a clear ValueError wherever text enters."""
import pytest

from edgeai.convert.tokenizer_build import make_tiny_tokenizer_json
from edgeai.tokenizer import Tokenizer


def test_lone_surrogates_are_a_value_error():
    tok = Tokenizer(make_tiny_tokenizer_json(320))
    for bad in ("caf\udce9", "\ud800", "ok \udfff end"):
        with pytest.raises(ValueError, match="lone surrogate"):
            tok.encode(bad)
        with pytest.raises(ValueError, match="lone surrogate"):
            tok.encode_batch(["fine", bad])
    assert tok.decode(tok.encode("caf\u00e9 \U0001F600", add_special_tokens=False)) == "caf\u00e9 \U0001F600"
