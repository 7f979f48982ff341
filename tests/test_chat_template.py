"""Chat templates: the model's own Jinja template, byte-identical to transformers' apply_chat_template.

Always run: templates whose output is derived by hand below (trim_blocks/lstrip_blocks, tojson, loop controls,
the generation tag, namespaces, dropped None keys, special-token variables) and the errors. Marked
`transformers`: the same templates plus SmolLM2's against transformers itself (Qwen2.5's is in
test_qwen_tokenizer.py, as it needs the real file).
"""
import json

import pytest

from conftest import SMOLLM2_TEMPLATE
from edgeai.chat_template import ChatTemplate, ChatTemplateError
from edgeai.convert.tokenizer_build import make_tiny_tokenizer_json
from edgeai.tokenizer import Tokenizer

SPECIALS = {"bos": None, "eos": "<|im_end|>", "pad": "<|im_end|>", "unk": "<|endoftext|>"}

# Exercises what differs between a naive render and transformers': block-tag whitespace, tojson without HTML
# escaping, {% break %}, {% generation %}, namespace(), dropped None-valued keys, which specials are defined.
FEATURES_TEMPLATE = (
    "{% set ns = namespace(n=0) %}\n"
    "{% for m in messages %}\n"
    "  {% if m.role == 'stop' %}{% break %}{% endif %}\n"
    "  {% set ns.n = ns.n + 1 %}\n"
    "[{{ m.role }}] {% generation %}{{ m.content }}{% endgeneration %}\n"
    "{% if m.meta is defined %}meta={{ m.meta | tojson }}\n{% endif %}\n"
    "{% endfor %}\n"
    "{% if add_generation_prompt %}[assistant] {% endif %}\n"
    "n={{ ns.n }} bos={{ bos_token is defined }} eos={{ eos_token }} tools={{ tools is none }}")

FEATURES_MESSAGES = [{"role": "user", "content": "hi", "meta": {"a": "<b>&é"}},
                     {"role": "assistant", "content": "yo", "meta": None},
                     {"role": "stop", "content": "x"}, {"role": "user", "content": "never"}]

CONVERSATIONS = [
    [{"role": "user", "content": "Hi!"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "What is 2+2?"},
     {"role": "assistant", "content": "4."}, {"role": "user", "content": "And 3+3?"},
     {"role": "assistant", "content": "6."}, {"role": "user", "content": "Thanks! 東京 😀 <b>"}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}],
]


@pytest.fixture(scope="module")
def tiny_json():
    return make_tiny_tokenizer_json(400)


def test_smollm2_template_by_hand(tiny_json):
    tok = Tokenizer(tiny_json, SMOLLM2_TEMPLATE, SPECIALS)
    # no system message: the template adds its own default one
    assert tok.apply_chat_template([{"role": "user", "content": "Hi!"}]) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n")
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"}]
    assert tok.apply_chat_template(msgs, add_generation_prompt=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n")


def test_template_features_by_hand(tiny_json):
    tok = Tokenizer(tiny_json, FEATURES_TEMPLATE, SPECIALS)
    # trim_blocks drops the newline after each block tag (so "hi" runs into "meta=") but not after {{ }} or
    # inside a string; lstrip_blocks drops the indentation before {% %}; tojson keeps <, & and é as they are;
    # the assistant's meta=None is dropped (not defined); {% break %} stops at "stop"; bos is not defined.
    assert tok.apply_chat_template(FEATURES_MESSAGES) == (
        '[user] himeta={"a": "<b>&é"}\n[assistant] yo[assistant] n=2 bos=False eos=<|im_end|> tools=True')
    assert tok.apply_chat_template(FEATURES_MESSAGES[:1], add_generation_prompt=False) == (
        '[user] himeta={"a": "<b>&é"}\nn=1 bos=False eos=<|im_end|> tools=True')


def test_no_template_falls_back_to_chatml_only_with_chatml_tokens(tiny_json):
    tok = Tokenizer(tiny_json, None, SPECIALS)
    assert tok.apply_chat_template([{"role": "user", "content": "x"}]) == \
        "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n"
    other = make_tiny_tokenizer_json(256).replace("<|im_start|>", "<|start|>")
    with pytest.raises(ChatTemplateError, match="no chat template"):
        Tokenizer(other, None, SPECIALS).apply_chat_template([{"role": "user", "content": "x"}])


@pytest.mark.parametrize("template, match", [
    ("{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversations must start with the user') }}"
     "{% endif %}ok", "refused these messages: Conversations must start with the user"),
    ("{% for m in messages %}{{ m['content'] }", "does not parse"),
    ("{{ messages[0]['content'] + 1 }}", "failed on these messages: TypeError"),
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "refused"),  # the sandbox
    ("{{ messages.append(1) }}", "refused"),  # immutable
    ("{% set ns = namespace() %}{% set ns._x = 1 %}", "refused"),
])
def test_template_errors_are_clear(tiny_json, template, match):
    tok = Tokenizer(tiny_json, template, SPECIALS)
    with pytest.raises(ChatTemplateError, match=match):
        tok.apply_chat_template([{"role": "system", "content": "s"}])
    assert issubclass(ChatTemplateError, ValueError)  # callers that catch ValueError keep working


def test_bad_messages(tiny_json):
    tok = Tokenizer(tiny_json, SMOLLM2_TEMPLATE, SPECIALS)
    with pytest.raises(ChatTemplateError, match="no messages"):
        tok.apply_chat_template([])
    with pytest.raises(ChatTemplateError, match="must be dicts"):
        tok.apply_chat_template(["hi"])
    with pytest.raises(ChatTemplateError, match="empty"):
        ChatTemplate("")


def test_strftime_now_and_variables():
    out = ChatTemplate("{{ strftime_now('%Y') }} {{ date_string | default('none') }} {{ extra }}").render(
        [{"role": "user", "content": "x"}], extra="v")
    assert out[:4].isdigit() and out[4:] == " none v"


# --- against transformers --------------------------------------------------------------------------------

def hf_tokenizer(tokenizer_json, template, specials):
    """transformers' own tokenizer object over the same vocabulary and template."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer as RawTokenizer

    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=RawTokenizer.from_str(tokenizer_json), chat_template=template,
        **{f"{k}_token": v for k, v in specials.items() if k in ("bos", "eos", "pad", "unk") and v is not None})


def assert_same_as_transformers(ours: Tokenizer, theirs, conversations, **kw):
    for msgs in conversations:
        for gen in (True, False):
            expected = theirs.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen, **kw)
            assert ours.apply_chat_template(msgs, add_generation_prompt=gen, **kw) == expected, (msgs, gen)


@pytest.mark.transformers
@pytest.mark.parametrize("template", [SMOLLM2_TEMPLATE, FEATURES_TEMPLATE], ids=["smollm2", "features"])
def test_matches_transformers(tiny_json, template):
    theirs = hf_tokenizer(tiny_json, template, SPECIALS)
    ours = Tokenizer(tiny_json, template, SPECIALS)
    assert_same_as_transformers(ours, theirs, CONVERSATIONS + [FEATURES_MESSAGES])


@pytest.mark.transformers
@pytest.mark.smollm2
def test_real_smollm2_template_matches_transformers(smollm2_source):
    s = smollm2_source
    theirs = hf_tokenizer(s.tokenizer_json, s.chat_template, s.special_tokens)
    assert_same_as_transformers(Tokenizer(s.tokenizer_json, s.chat_template, s.special_tokens), theirs,
                                CONVERSATIONS)


def test_tojson_is_plain_json():
    out = ChatTemplate("{{ messages | tojson }}|{{ messages[0] | tojson(indent=2) }}").render(
        [{"role": "user", "content": "<a href='x'>é</a>"}])
    first, second = out.split("|", 1)
    assert json.loads(first) == [{"role": "user", "content": "<a href='x'>é</a>"}] and "\\u" not in first
    assert second == json.dumps({"role": "user", "content": "<a href='x'>é</a>"}, indent=2, ensure_ascii=False)
