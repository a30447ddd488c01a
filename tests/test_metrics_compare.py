"""The explanation filter (Algorithm 2) against a literal one-image-at-a-time loop; pairwise fractions, Spearman
correlation and the cross-entropy against hand computations."""
from __future__ import annotations

import numpy as np
import pytest
from metrics_fixtures import linear_onnx

from onnxplain.metrics import APEM, cross_entropy, explanation_filter, loss_correlation, pairwise


@pytest.fixture(scope="module")
def linear(tmp_path_factory):
    rng = np.random.default_rng(0)
    weights, bias = rng.normal(size=(10, 3)), rng.normal(size=3)
    model = linear_onnx(tmp_path_factory.mktemp("m") / "lin.onnx", weights, bias, (10,))
    x = rng.normal(size=(4, 10)).astype(np.float32)
    classes = np.argmax(model.logits(x), axis=1)
    sign = np.sign(weights[:, (classes + 1) % 3].T - weights[:, classes].T)
    # roughly faithful maps (|w_y - w_other| plus noise), rounded so that positions share values
    faithful = sign * (weights[:, (classes + 1) % 3].T - weights[:, classes].T) + 0.5 * rng.uniform(size=(4, 10))
    maps = np.round((faithful - faithful.min(1, keepdims=True)) / np.ptp(faithful, axis=1, keepdims=True), 1)
    return model, x, classes, sign, maps


def literal_filter(apem, model, x, classes, sign, relevance_map):
    """Algorithm 2 as printed, for one image."""
    def score(m):
        minus, plus = apem.gaps(model, x[None], m[None], classes[None], sign[None])
        return (plus - minus)[0]

    current, value = relevance_map.copy(), score(relevance_map)
    while True:
        best_map, best_value = current, value
        if not (best_map > 0).any():
            return best_map
        smallest = best_map[best_map > 0].min()
        current = np.where(best_map == smallest, 0.0, best_map)
        value = score(current)
        if value < best_value:
            return best_map


def test_filter_matches_the_literal_algorithm(linear):
    model, x, classes, sign, maps = linear
    apem = APEM(step=0.01, shuffles=0, search="linear", progress=False)
    filtered, scores, rounds = explanation_filter(APEM(step=0.01, shuffles=0, progress=False), model, x, maps,
                                                  classes, sign)
    for i in range(len(x)):
        expected = literal_filter(apem, model, x[i], classes[i], sign[i], maps[i])
        np.testing.assert_array_equal(filtered[i], expected)
        distinct = [len(np.unique(m[m > 0])) for m in (maps[i], expected)]
        assert rounds[i] == distinct[0] - distinct[1]  # one distinct value zeroed per kept round
    minus, plus = apem.gaps(model, x, filtered, classes, sign)
    np.testing.assert_allclose(scores, plus - minus)
    # the method form: relevance taken to stage 1 (these maps already span [0, 1]), the sign from the gradient
    by_method = APEM(stage=1, step=0.01, shuffles=0, progress=False).filter(model, x, maps, classes, gradient=sign)
    np.testing.assert_array_equal(by_method[0], filtered)
    np.testing.assert_array_equal(by_method[2], rounds)
    original_minus, original_plus = apem.gaps(model, x, maps, classes, sign)
    assert np.all(scores >= original_plus - original_minus)
    assert rounds.max() >= 3


def test_pairwise_fractions():
    rows = pairwise({"a": np.array([3, 1, 2, 2]), "b": np.array([1, 1, 5, 0]), "c": np.array([3, 1, 2, 2])})
    assert [(r.first, r.second) for r in rows] == [("a", "b"), ("a", "c"), ("b", "c")]
    assert (rows[0].better, rows[0].equal, rows[0].worse) == (0.5, 0.25, 0.25)
    assert (rows[1].better, rows[1].equal, rows[1].worse) == (0.0, 1.0, 0.0)
    assert (rows[2].better, rows[2].equal, rows[2].worse) == (0.25, 0.25, 0.5)


def test_spearman_equals_pearson_of_ranks():
    rng = np.random.default_rng(1)
    values, loss = rng.normal(size=30), rng.normal(size=30)
    loss = loss - 0.8 * values
    ranks = [np.argsort(np.argsort(v)).astype(float) for v in (values, loss)]
    expected = np.corrcoef(*ranks)[0, 1]
    rho, p = loss_correlation(values, loss)
    assert rho == pytest.approx(expected) and rho < -0.3 and p < 0.05
    assert loss_correlation(values, -values)[0] == pytest.approx(-1.0)


def test_cross_entropy_is_minus_log_softmax(linear):
    model, x, _, _, _ = linear
    labels = np.array([0, 1, 2, 1])
    logits = model.logits(x)
    expected = -np.log(np.exp(logits[np.arange(4), labels]) / np.exp(logits).sum(axis=1))
    np.testing.assert_allclose(cross_entropy(model, x, labels), expected, rtol=1e-6)


def test_pairwise_leaves_out_censored_images():
    """Censored APEM comes as NaN: the fractions are over the images both methods measured."""
    rows = pairwise({"a": np.array([3.0, np.nan, 1.0, 2.0]), "b": np.array([1.0, 0.0, np.nan, 2.0])})
    assert (rows[0].better, rows[0].equal, rows[0].worse) == (0.5, 0.5, 0.0)
