"""Region perturbation and AOPC against literal reference computations."""
from __future__ import annotations

import json

import numpy as np
import pytest
from metrics_fixtures import linear_onnx

import onnxplain
from onnxplain.errors import OnnxplainError
from onnxplain.metrics import aopc, region_perturbation
from onnxplain.metrics.perturbation import tracked_score

IMAGE_SPEC = json.dumps({"layout": "NCHW", "size": [6, 6], "color": "gray", "scale": 1 / 255})


def test_aopc_formula_on_literal_curves():
    curves = np.array([[4.0, 3.0, 1.0], [2.0, 2.0, 0.0]])
    # image 1: (0 + 1 + 3) / 3, image 2: (0 + 0 + 2) / 3
    assert aopc(curves, per_image=True) == pytest.approx([4 / 3, 2 / 3])
    assert aopc(curves) == pytest.approx(1.0)


@pytest.fixture(scope="module")
def linear_vector(tmp_path_factory):
    rng = np.random.default_rng(0)
    weights, bias = rng.normal(size=(12, 3)), rng.normal(size=3)
    model = linear_onnx(tmp_path_factory.mktemp("m") / "linear.onnx", weights, bias, (12,))
    return model, weights, bias


def literal_curve(x, relevance, weights, bias, cls, order, baseline=0.0):
    """Delete features one at a time in relevance order (stable), recording the class logit."""
    ranked = sorted(range(len(x)), key=lambda i: -relevance[i] if order == "morf" else relevance[i])
    current, values = x.astype(np.float64).copy(), []
    for k in range(len(x) + 1):
        values.append(current @ weights[:, cls] + bias[cls])
        if k < len(x):
            current[ranked[k]] = baseline
    return np.array(values)


@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_feature_deletion_matches_literal_loop(linear_vector, order):
    model, weights, bias = linear_vector
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 12)).astype(np.float32)
    classes = np.array([0, 1, 2, 0, 1])
    relevance = rng.normal(size=x.shape)
    curves = region_perturbation(model, x, relevance, classes, order=order, steps=100)
    assert curves.shape == (5, 13)  # steps are capped at the 12 features
    for i in range(5):
        np.testing.assert_allclose(curves[i], literal_curve(x[i], relevance[i], weights, bias, classes[i], order),
                                   rtol=1e-5, atol=1e-4)


def test_exact_contributions_make_morf_the_best_order(linear_vector):
    """For a linear model, deleting by exact contributions w_c * x greedily is the best possible order."""
    model, weights, _ = linear_vector
    rng = np.random.default_rng(2)
    x = rng.normal(size=(8, 12)).astype(np.float32)
    classes = np.argmax(model.logits(x), axis=1)
    contributions = x * weights[:, classes].T
    morf = aopc(region_perturbation(model, x, contributions, classes, order="morf"), per_image=True)
    lerf = aopc(region_perturbation(model, x, contributions, classes, order="lerf"), per_image=True)
    for seed in range(10):
        shuffled = aopc(region_perturbation(model, x, contributions, classes, order="random", seed=seed),
                        per_image=True)
        assert np.all(morf >= shuffled - 1e-5) and np.all(lerf <= shuffled + 1e-5)
    assert morf.mean() > lerf.mean() + 1.0


def test_image_regions_are_replaced_cumulatively_with_noise_in_range(tmp_path):
    rng = np.random.default_rng(3)
    model = linear_onnx(tmp_path / "image.onnx", rng.normal(size=(36, 2)), np.zeros(2), (1, 6, 6), IMAGE_SPEC)
    seen = []
    run = model.run
    model.run = lambda batch, *a, **k: (seen.append(np.array(batch)), run(batch, *a, **k))[1]
    x = rng.uniform(0.2, 0.4, size=(2, 1, 6, 6)).astype(np.float32)
    relevance = rng.normal(size=x.shape)
    curves = region_perturbation(model, x, relevance, 0, region=3, steps=10, order="morf", seed=7)
    assert curves.shape == (2, 5)  # a 6x6 image holds 4 regions of 3x3
    batch = seen[-1].reshape(2, 5, 6, 6)
    for i in range(2):
        sums = {(r, c): relevance[i, 0, 3 * r:3 * r + 3, 3 * c:3 * c + 3].sum() for r in range(2) for c in range(2)}
        ranked = sorted(sums, key=lambda rc: -sums[rc])
        expected = np.zeros((6, 6), dtype=bool)
        for k in range(5):
            changed = batch[i, k] != x[i, 0]
            np.testing.assert_array_equal(changed, expected)
            if k:
                np.testing.assert_array_equal(batch[i, k][expected], batch[i, 4][expected])  # noise kept
            if k < 4:
                r, c = ranked[k]
                expected[3 * r:3 * r + 3, 3 * c:3 * c + 3] = True
        assert batch[i, 4].min() >= 0.0 and batch[i, 4].max() <= 1.0  # uniform over the spec's valid range
    again = region_perturbation(model, x, relevance, 0, region=3, steps=10, order="morf", seed=7)
    np.testing.assert_array_equal(curves, again)


def test_digits_cnn_default_regions_and_probability_score(digits_cnn):
    model = onnxplain.load(digits_cnn)
    x = np.load(digits_cnn.parent / "samples" / "digits_test100_cnn.npy")[:4]
    curves = region_perturbation(model, x, x, order="morf", score="probability")
    assert curves.shape == (4, 101)  # default region 28 // 8 = 3: 10 x 10 regions (edge ones partial)
    assert region_perturbation(model, x, x, region=9).shape == (4, 17)  # 4 x 4 regions of 9 x 9
    logits = model.logits(x)
    softmax = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(curves[:, 0], softmax.max(axis=1), rtol=1e-5)
    assert np.all((curves >= 0) & (curves <= 1))


def test_user_errors(linear_vector):
    model, _, _ = linear_vector
    x = np.zeros((2, 12), dtype=np.float32)
    with pytest.raises(OnnxplainError, match="does not match"):
        region_perturbation(model, x, np.zeros((2, 11)))
    with pytest.raises(OnnxplainError, match="order"):
        region_perturbation(model, x, x, order="best")
    with pytest.raises(OnnxplainError, match="score"):
        region_perturbation(model, x, x, score="loss")
    with pytest.raises(OnnxplainError, match="region 13 is larger than the input, whose spatial size is 12"):
        region_perturbation(model, x, x, region=13)
    assert region_perturbation(model, x, x, region=12).shape == (2, 2)   # the whole vector: one region, one step


@pytest.mark.parametrize("order", ["morf", "random"])
def test_an_image_gets_the_same_curve_in_any_batch(tmp_path, order):
    """Noise comes from the seed alone, the random order from the seed and the image's values: image 0's curve is
    the same alone or with others, and (random order) distinct images get distinct orders."""
    rng = np.random.default_rng(2)
    model = linear_onnx(tmp_path / "image.onnx", rng.normal(size=(36, 2)), np.zeros(2), (1, 6, 6), IMAGE_SPEC)
    x = rng.uniform(0.0, 1.0, size=(3, 1, 6, 6)).astype(np.float32)
    relevance = rng.normal(size=x.shape)
    alone = region_perturbation(model, x[:1], relevance[:1], 0, region=2, steps=6, order=order)
    batch = region_perturbation(model, x[::-1], relevance[::-1], 0, region=2, steps=6, order=order)
    np.testing.assert_array_equal(alone[0], batch[2])
    if order == "random":   # one order per distinct image: the baseline averages over several orders
        from onnxplain.metrics.layout import InputLayout
        from onnxplain.metrics.perturbation import region_ranks
        from onnxplain.numbers import image_generators

        ranks = region_ranks(relevance, InputLayout.of(model, x.shape[1:]), 2, "random", image_generators(x, 0))
        assert not np.array_equal(ranks[0], ranks[1]) and not np.array_equal(ranks[1], ranks[2])


def test_logit_score_of_a_model_without_logits_is_the_probability(digits_logreg, digits_cnn):
    assert tracked_score(onnxplain.load(digits_logreg), "logit") == "probability"
    assert tracked_score(onnxplain.load(digits_cnn), "logit") == "logit"


@pytest.mark.parametrize("bad", [np.nan, -np.inf])
def test_non_finite_relevance_is_an_error(linear_vector, bad):
    model, _, _ = linear_vector
    x = np.ones((2, 12), dtype=np.float32)
    relevance = np.ones(x.shape)
    relevance[0, 5] = bad
    with pytest.raises(OnnxplainError, match=r"relevance is not finite \(NaN or inf\) for input\(s\) 0"):
        region_perturbation(model, x, relevance)
