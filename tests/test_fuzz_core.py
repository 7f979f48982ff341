"""Property-based fuzzing (Hypothesis) of the native core's inputs: sampler-chain parameters and logits (NaN,
inf, -inf, huge vocabularies, out-of-range integers), beam-search inputs, and stop-string matching. The only
acceptable outcomes are a valid result or a ValueError/TypeError/IndexError that names the problem: never a
crash, a token outside the vocabulary, a banned token, or a stop string (or half of one) in the output.

EDGEAI_FUZZ_EXAMPLES scales the number of cases per property (default 200; the count is in the test ids'
output with `pytest -s`)."""
import math
import os

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from edgeai import _core  # noqa: E402
from edgeai.stop import StopMatcher  # noqa: E402

EXAMPLES = int(os.environ.get("EDGEAI_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
CLEAR = (ValueError, TypeError, IndexError, OverflowError)

SPECIAL = st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 3.4e38, -3.4e38, 1e-45, 1e30, -1e30])
INTS = st.one_of(st.integers(-3, 300), st.sampled_from([2 ** 31 - 1, 2 ** 31, 2 ** 32 + 5, 2 ** 63, 2 ** 64, 2 ** 70,
                                                        -2 ** 63, 10 ** 12]))


@st.composite
def logits(draw, max_vocab=400):
    n = draw(st.one_of(st.integers(0, max_vocab), st.sampled_from([1, 7, 8, 31, 32, 33, 65])))
    if draw(st.integers(0, 30)) == 0:
        n = draw(st.sampled_from([49152, 152064, 262144]))  # real vocabularies, and a huge one
    base = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1))).standard_normal(n).astype(np.float32)
    base *= np.float32(draw(st.sampled_from([1.0, 1e-3, 30.0, 1e30])))
    for _ in range(draw(st.integers(0, 4)) if n else 0):
        base[draw(st.integers(0, n - 1))] = draw(SPECIAL)
    if n and draw(st.integers(0, 10)) == 0:
        base[:] = -np.inf
    return base


SAMPLERS = st.lists(st.one_of(
    st.tuples(st.just("add_logit_bias"), st.dictionaries(INTS, st.one_of(SPECIAL, st.floats(-50, 50)), max_size=4)),
    st.tuples(st.just("add_penalties"), st.one_of(SPECIAL, st.floats(0.5, 2.0)), st.one_of(SPECIAL, st.floats(-2, 2)),
              st.one_of(SPECIAL, st.floats(-2, 2)), INTS),
    st.tuples(st.just("add_temperature"), st.one_of(SPECIAL, st.floats(0.01, 5))),
    st.tuples(st.just("add_top_k"), INTS),
    st.tuples(st.just("add_top_p"), st.one_of(SPECIAL, st.floats(0, 1))),
    st.tuples(st.just("add_min_p"), st.one_of(SPECIAL, st.floats(0, 1))),
), max_size=6)


def build_chain(samplers, chooser, seed):
    chain = _core.SamplerChain()
    for name, *args in samplers:
        try:
            getattr(chain, name)(*args)
        except CLEAR:
            pass  # a bad parameter is refused when the sampler is added
    try:
        chain.add_greedy() if chooser == "greedy" else chain.add_dist(seed)
    except CLEAR:
        chain.add_greedy()
    return chain


@FUZZ
@given(samplers=SAMPLERS, chooser=st.sampled_from(["greedy", "dist"]), seed=INTS, x=logits(),
       history=st.one_of(st.none(), st.lists(INTS, max_size=20)))
def test_sampler_chain_never_crashes_or_returns_a_bad_token(samplers, chooser, seed, x, history):
    chain = build_chain(samplers, chooser, seed)
    twin = build_chain(samplers, chooser, seed)
    try:
        tok = chain.sample(x, history)
    except CLEAR:
        return
    assert 0 <= tok < len(x)
    assert x[tok] != -np.inf or any(n == "add_logit_bias" for n, *_ in samplers)
    assert twin.sample(x, history) == tok  # same chain, same seed, same logits: same token
    ids, probs = chain.candidates(x, history)
    assert len(ids) == len(probs) and np.all(np.isfinite(probs)) and np.all(probs >= 0)


@FUZZ
@given(num_beams=INTS, n_vocab=st.one_of(st.integers(-1, 64), st.just(2 ** 40)), eos=st.lists(INTS, max_size=3),
       length_penalty=st.one_of(SPECIAL, st.floats(-2, 3)), early=st.sampled_from(list(_core.EarlyStopping.__members__)),
       max_new=INTS, steps=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 3), st.integers(0, 2 ** 32 - 1)),
                                    max_size=8))
def test_beam_search_never_crashes(num_beams, n_vocab, eos, length_penalty, early, max_new, steps):
    try:
        b = _core.BeamSearch(num_beams, n_vocab, eos, length_penalty, _core.EarlyStopping.__members__[early], max_new)
    except CLEAR:
        return
    for shape_kind, specials, seed in steps:
        if b.done:
            with pytest.raises(RuntimeError, match="already done"):
                b.step(np.zeros((num_beams, n_vocab), np.float32))
            break
        shape = [(num_beams, n_vocab), (num_beams, max(1, n_vocab - 1)), (num_beams + 1, n_vocab)][shape_kind]
        x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
        for k in range(specials):
            x.flat[(seed + 7919 * k) % x.size] = [np.nan, np.inf, -np.inf][k % 3]
        try:
            tokens, parents = b.step(x)
        except CLEAR:
            continue
        assert shape == (num_beams, n_vocab)
        assert np.all((0 <= tokens) & (tokens < n_vocab)) and np.all((0 <= parents) & (parents < num_beams))
    for tokens, score, finished in b.finalize(1):
        assert all(0 <= t < n_vocab for t in tokens) and not math.isnan(score)


@FUZZ
@given(stops=st.lists(st.text(min_size=1, max_size=4, alphabet="ab<|>\u00e9\U0001f600"), min_size=1, max_size=3),
       pieces=st.lists(st.text(max_size=5, alphabet="ab<|>\u00e9\U0001f600 "), max_size=20))
def test_stop_matching_never_leaks_a_stop_string(stops, pieces):
    m = StopMatcher(stops)
    out, hit = "", False
    for i, p in enumerate(pieces):
        safe, hit = m.feed(p, final=i == len(pieces) - 1)
        out += safe
        assert not any(s in out for s in stops)
        if hit:
            break
    full = "".join(pieces)
    first = min((full.find(s) for s in stops if s in full), default=-1)
    if first >= 0:
        assert hit and out == full[:first]
    elif pieces:
        assert out == full and not hit
    assert m.text == out
