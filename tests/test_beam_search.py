"""Beam-search scoring primitives on hand-worked cases (transformers' semantics)."""
import math

import numpy as np
import pytest

from edgeai import _core

ES = _core.EarlyStopping


def rows(*probs):
    """Logits whose log-softmax is log(probs) (one row per beam)."""
    return np.log(np.array(probs, dtype=np.float64)).astype(np.float32)


def test_log_softmax_matches_numpy():
    x = np.random.default_rng(0).standard_normal((3, 49152)).astype(np.float32) * 4
    ref = x - np.log(np.exp(x.astype(np.float64)).sum(-1, keepdims=True))
    assert np.abs(_core.log_softmax(x) - ref).max() < 1e-5


def test_log_softmax_rejects_nan():
    with pytest.raises(ValueError, match="NaN"):
        _core.log_softmax(np.array([0.0, np.nan], dtype=np.float32))


def test_hand_worked_two_beams():
    # vocab 4, eos = 3, two beams, length_penalty 1, at most 3 new tokens.
    b = _core.BeamSearch(2, 4, [3], 1.0, ES.HEURISTIC, 3)
    # Step 1: only beam 0 is live. Best: token 0 (.5), token 1 (.3); token 3 (eos) ranks 4th -> not finished.
    tok, par = b.step(rows([.5, .3, .1, .1], [.25, .25, .25, .25]))
    assert tok.tolist() == [0, 1] and par.tolist() == [0, 0]
    assert np.allclose(b.running_scores, [math.log(.5), math.log(.3)], atol=1e-6)
    # Step 2: beam [0] + eos scores .5*.6 = .30 (rank 0: finished, score log(.3)/2);
    # running: [1,0] (.3*.7 = .21) and [0,2] (.5*.2 = .10).
    tok, par = b.step(rows([.1, .1, .2, .6], [.7, .1, .1, .1]))
    assert tok.tolist() == [0, 2] and par.tolist() == [1, 0]
    assert not b.done
    # Step 3 reaches max_new_tokens: every continuation ends. The two best (.21 * .25, tokens 0 and 1 of
    # beam [1,0]) finish with score log(.0525)/3, below [0,3].
    b.step(rows([.25] * 4, [.25] * 4))
    assert b.done
    (s1, sc1, f1), (s2, sc2, f2) = b.finalize(2)
    assert s1 == [0, 3] and sc1 == pytest.approx(math.log(.3) / 2, abs=1e-5) and f1
    assert s2 == [1, 0, 0] and sc2 == pytest.approx(math.log(.21 * .25) / 3, abs=1e-5) and f2


def test_length_penalty_zero_scores_are_sums():
    b = _core.BeamSearch(2, 4, [3], 0.0, ES.HEURISTIC, 2)
    b.step(rows([.5, .3, .1, .1], [.25] * 4))
    b.step(rows([.1, .1, .2, .6], [.7, .1, .1, .1]))
    (seq, score, _), = b.finalize(1)
    assert seq == [0, 3] and score == pytest.approx(math.log(.3), abs=1e-5)


def _two_step(mode, max_new):
    b = _core.BeamSearch(2, 4, [3], 1.0, mode, max_new)
    # Step 1: tokens 0 and 3 tie at .45 -> 0 ranks first (lower id); eos at rank 1 finishes: [3], log(.45)/1.
    b.step(rows([.45, .05, .05, .45], [.25] * 4))
    # Step 2: [0] + eos = .315 finishes: log(.315)/2. Both finished slots are now full.
    b.step(rows([.1, .1, .1, .7], [.1, .1, .1, .7]))
    return b


def test_early_stopping_modes():
    # True: stop once num_beams hypotheses are finished.
    assert _two_step(ES.TRUE, 10).done
    # Heuristic: best running (.45*.1 = .045) / 2 is worse than the worst finished log(.45) -> stop.
    assert math.log(.045) / 2 < math.log(.45)
    assert _two_step(ES.HEURISTIC, 10).done
    # Never (length_penalty > 0): assume the running beam could reach max length: log(.045)/10 > log(.45).
    assert math.log(.045) / 10 > math.log(.45)
    b = _two_step(ES.NEVER, 10)
    assert not b.done
    scores = [h[1] for h in b.finalize(2)]
    assert scores == pytest.approx([math.log(.315) / 2, math.log(.45)], abs=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError):
        _core.BeamSearch(0, 10, [1], 1.0, ES.HEURISTIC, 5)
    b = _core.BeamSearch(2, 10, [1], 1.0, ES.HEURISTIC, 5)
    with pytest.raises(ValueError, match="shape"):
        b.step(np.zeros((3, 10), dtype=np.float32))
    with pytest.raises(ValueError, match="num_return_sequences"):
        b.finalize(3)
