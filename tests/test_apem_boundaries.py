"""APEM at its edges, on a two-class linear model: a flip at exactly max_steps is a measurement, not censoring (only
`max_steps + 1`, no flip at all, is); and the shuffled baseline (§5.2, `baseline=True`) is normalised by a second
set of shuffles, not by the set it is made of, checked against the eps of every shuffled map written out here."""
from __future__ import annotations

import numpy as np
import pytest
from metrics_fixtures import linear_onnx

from onnxplain.metrics import APEM
from onnxplain.metrics.apem import permuted, stage_maps
from onnxplain.metrics.layout import InputLayout

STEP, SHUFFLES, SEED = 0.01, 3, 4


@pytest.fixture(scope="module")
def linear(tmp_path_factory):
    rng = np.random.default_rng(0)
    weights, bias = rng.normal(size=(16, 2)), np.array([0.5, -0.5])
    model = linear_onnx(tmp_path_factory.mktemp("m") / "two.onnx", weights, bias, (16,))
    x = rng.normal(size=(6, 16)).astype(np.float32)
    classes = model.logits(x).argmax(axis=1)
    logits = x.astype(np.float64) @ weights + bias
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(x)), classes] -= 1.0
    return model, x, rng.normal(size=x.shape), classes, p @ weights.T     # the cross-entropy's input gradient


def evaluate(linear, max_steps, **options):
    model, x, relevance, classes, gradient = linear
    apem = APEM(stage=1, step=STEP, max_steps=max_steps, shuffles=SHUFFLES, seed=SEED, search="linear",
                progress=False, **options)
    return apem.evaluate(model, x, relevance, classes, gradient=gradient)


def test_a_flip_at_exactly_max_steps_is_measured(linear):
    free = evaluate(linear, 10**4)
    assert not free.censored.any()
    steps = lambda eps: int(round(eps[0] / STEP))  # noqa: E731 - image 0's flip, in steps
    own = max(steps(free.eps_minus), steps(free.eps_plus))
    at_own = evaluate(linear, own)
    assert not at_own.censored[0] and at_own.scores[0] == pytest.approx(free.scores[0])
    assert evaluate(linear, own - 1).censored[0]
    shuffled = max(steps(free.shuffle_minus), steps(free.shuffle_plus))
    at_shuffled = evaluate(linear, shuffled)
    assert (at_shuffled.shuffle_minus[0], at_shuffled.shuffle_plus[0]) == (free.shuffle_minus[0], free.shuffle_plus[0])
    assert np.isfinite(at_shuffled.normalized[0])
    assert np.isnan(evaluate(linear, shuffled - 1).normalized[0])


def test_the_shuffled_baseline_is_normalised_by_a_second_set_of_shuffles(linear):
    model, x, relevance, classes, gradient = linear
    result = evaluate(linear, 10**4, baseline=True)
    maps = stage_maps(relevance, x, 1, InputLayout.of(model, x.shape[1:]))
    rng = np.random.default_rng(SEED)
    orders = [rng.permutation(maps[0].size) for _ in range(2 * SHUFFLES)]   # drawn from the seed alone, in order
    apem = APEM(stage=1, step=STEP, max_steps=10**4, shuffles=0, search="linear", progress=False)
    eps = np.stack([np.stack(apem.gaps(model, x, permuted(maps, order), classes, np.sign(gradient)), axis=1)
                    for order in orders], axis=1)                             # (N, shuffle, (eps-, eps+))
    first, second = eps[:, :SHUFFLES].min(axis=1), eps[:, SHUFFLES:].min(axis=1)
    np.testing.assert_allclose(np.stack([result.shuffle_minus, result.shuffle_plus], axis=1), first)
    shuffled = result.shuffled
    np.testing.assert_allclose(np.stack([shuffled.eps_minus, shuffled.eps_plus], axis=1), first)
    np.testing.assert_allclose(np.stack([shuffled.shuffle_minus, shuffled.shuffle_plus], axis=1), second)
    assert not np.array_equal(first, second)
