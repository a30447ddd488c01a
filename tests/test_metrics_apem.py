"""APEM against closed forms on a linear model, the paper's stages and filter written out literally, and the batched
epsilon search against the integer linear scan on the digits CNN (same answers, >= 10x fewer forward passes)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from metrics_fixtures import Counting, linear_onnx

import onnxplain
from onnxplain.errors import OnnxplainError
from onnxplain.methods import make_method
from onnxplain.metrics import APEM, APEMResult, bracket_search, directions, linear_search, loss_gradient, stage_maps
from onnxplain.metrics.layout import InputLayout
from onnxplain.targets import Target

IMAGE_SPEC = json.dumps({"layout": "NCHW", "size": [4, 4], "color": "rgb", "scale": 1 / 255})


@pytest.fixture(scope="module")
def two_class(tmp_path_factory):
    rng = np.random.default_rng(0)
    weights, bias = rng.normal(size=(16, 2)), np.array([0.5, -0.5])
    model = linear_onnx(tmp_path_factory.mktemp("m") / "two.onnx", weights, bias, (16,))
    x = rng.normal(size=(10, 16)).astype(np.float32)
    return model, weights, bias, x


def closed_form_steps(x, maps, weights, bias, classes, step):
    """k* = floor(m0 / (step * s)) + 1: the margin of a linear model falls by s = sum R|dw| / ||R||_1 per unit eps
    along R/||R||_1 * sign(grad J), with sign(grad J) = -sign(w_y - w_other) for two classes."""
    out = []
    for xi, r, y in zip(x.astype(np.float64), maps, classes):
        dw = weights[:, y] - weights[:, 1 - y]
        m0 = xi @ dw + bias[y] - bias[1 - y]
        s = (r * np.abs(dw)).sum() / np.abs(r).sum()
        out.append(int(np.floor(m0 / (step * s))) + 1)
    return np.array(out)


def loss_gradient_two_class(x, weights, bias, classes):
    logits = x.astype(np.float64) @ weights + bias
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(x)), classes] -= 1.0
    return p @ weights.T


@pytest.mark.parametrize("search", ["bracket", "linear"])
def test_epsilons_match_closed_form_on_linear_model(two_class, search):
    model, weights, bias, x = two_class
    classes = np.argmax(model.logits(x), axis=1)
    relevance = np.random.default_rng(1).normal(size=x.shape)
    gradient = loss_gradient_two_class(x, weights, bias, classes)
    result = APEM(stage=1, step=0.01, shuffles=0, search=search, progress=False).evaluate(
        model, x, relevance, classes, gradient=gradient)
    maps = np.abs(relevance)
    maps = (maps - maps.min(1, keepdims=True)) / (maps.max(1, keepdims=True) - maps.min(1, keepdims=True))
    np.testing.assert_allclose(result.eps_minus, 0.01 * closed_form_steps(x, maps, weights, bias, classes, 0.01))
    np.testing.assert_allclose(result.eps_plus, 0.01 * closed_form_steps(x, 1 - maps, weights, bias, classes, 0.01))
    np.testing.assert_allclose(result.scores, result.eps_plus - result.eps_minus)
    assert not result.censored.any()


def test_cases_that_never_flip_are_censored(two_class):
    model, weights, bias, x = two_class
    classes = np.argmax(model.logits(x), axis=1)
    d = directions(np.ones((len(x), 16)), -loss_gradient_two_class(x, weights, bias, classes),
                   InputLayout.of(model, (16,)))  # down the loss: the prediction only gets surer
    for search in (linear_search, bracket_search):
        np.testing.assert_array_equal(search(model, x, d, classes, max_steps=50), 51)


def test_stages_follow_the_paper_literally():
    model = onnxplain.Model.__new__(onnxplain.Model)  # only the preprocessing spec is read
    model.preprocess = onnxplain.io.PreprocessSpec.from_json(IMAGE_SPEC)
    rng = np.random.default_rng(2)
    relevance, x = rng.normal(size=(2, 3, 4, 4)), rng.uniform(0, 1, size=(2, 3, 4, 4))
    layout = InputLayout.of(model, (3, 4, 4))

    def minmax(a):
        return (a - a.min()) / (a.max() - a.min())

    for i in range(2):
        magnitude = np.abs(relevance[i])
        clamped = np.minimum(magnitude, np.percentile(magnitude, 99))
        np.testing.assert_allclose(stage_maps(relevance, x, 1, layout)[i], minmax(magnitude))
        np.testing.assert_allclose(stage_maps(relevance, x, 2, layout)[i], minmax(clamped.sum(0)))
        np.testing.assert_allclose(stage_maps(relevance, x, 3, layout)[i], minmax((clamped * x[i]).sum(0)))
    assert np.all(stage_maps(np.ones((1, 3, 4, 4)), x[:1], 2, layout) == 0.5)  # no information: flat 0.5


def test_directions_are_l1_normalised_and_repeat_over_channels():
    model = onnxplain.Model.__new__(onnxplain.Model)
    model.preprocess = onnxplain.io.PreprocessSpec.from_json(IMAGE_SPEC)
    layout = InputLayout.of(model, (3, 4, 4))
    rng = np.random.default_rng(3)
    maps, sign = rng.uniform(size=(2, 4, 4)), rng.choice([-1.0, 1.0], size=(2, 3, 4, 4))
    d = directions(maps, sign, layout)
    np.testing.assert_allclose(np.abs(d).sum(axis=(1, 2, 3)), 1.0)
    np.testing.assert_allclose(d[:, 1] / sign[:, 1], maps / (3 * maps.sum(axis=(1, 2), keepdims=True)))


def finite_difference_gradients(model, x, classes, h=1e-3):
    """Central differences, through model.run, of the class logit and of the cross-entropy loss."""
    n, size = len(x), x[0].size
    flat = x.reshape(n, size).astype(np.float64)
    eye = np.eye(size) * h
    batch = np.concatenate([(flat[:, None] + eye).reshape(-1, size), (flat[:, None] - eye).reshape(-1, size)])
    logits = model.logits(batch.reshape(-1, *x.shape[1:]).astype(np.float32)).reshape(2, n, size, -1)
    logit = np.take_along_axis(logits, classes[None, :, None, None], -1)[..., 0]
    loss = np.log(np.exp(logits).sum(-1)) - logit
    return [((v[0] - v[1]) / (2 * h)).reshape(x.shape) for v in (logit, loss)]


@pytest.fixture(scope="module")
def digits(digits_cnn):
    model = onnxplain.load(digits_cnn)
    x = np.load(digits_cnn.parent / "samples" / "digits_test100_cnn.npy")[:12]
    classes = np.argmax(model.logits(x), axis=1)
    sensitivity, loss_gradient = finite_difference_gradients(model, x, classes)
    return model, x, classes, sensitivity, np.sign(loss_gradient)


def test_bracketing_finds_the_linear_scan_epsilon_with_ten_times_fewer_passes(digits):
    model, x, classes, sensitivity, sign = digits
    layout = InputLayout.of(model, x.shape[1:])
    maps = stage_maps(sensitivity, x, 2, layout)
    both = np.concatenate([maps, 1 - maps])  # 24 cases: relevance and irrelevance of 12 digits
    cases_x, cases_classes = np.concatenate([x, x]), np.concatenate([classes, classes])
    d = directions(both, np.concatenate([sign, sign]), layout).astype(np.float32)
    counter = Counting(model)
    reference = linear_search(model, cases_x, d, cases_classes, max_steps=5000)
    linear_passes = counter.reset()
    found = bracket_search(model, cases_x, d, cases_classes, max_steps=5000)
    bracket_passes = counter.reset()
    model.run = counter._run
    np.testing.assert_array_equal(found, reference)
    assert len(reference) >= 20 and reference.min() > 0 and reference.max() <= 5000
    assert linear_passes == (reference + 1).sum()
    assert linear_passes >= 10 * bracket_passes, (linear_passes, bracket_passes)


@pytest.mark.parametrize("method", ["gradient", "lrp"])
def test_shuffled_maps_score_about_zero_and_real_maps_clearly_above(digits, method):
    model, x, classes, _, _ = digits
    relevance = make_method(method, progress=False).explain(model, x, Target()).relevance
    result = APEM(stage=2, shuffles=10, baseline=True, progress=False).evaluate(model, x, relevance)
    np.testing.assert_array_equal(result.classes, classes)
    assert abs(np.median(result.shuffled.normalized)) <= 0.05
    assert np.median(result.normalized) > 0.3
    assert np.median(result.scores) > 5 * max(1.0, abs(np.median(result.shuffled.scores)))


def test_loss_gradient_from_the_torch_executor(two_class, digits_logreg):
    model, weights, bias, x = two_class
    classes = np.argmax(model.logits(x), axis=1)
    np.testing.assert_allclose(loss_gradient(model, x, classes), loss_gradient_two_class(x, weights, bias, classes),
                               rtol=1e-4, atol=1e-6)
    logreg = onnxplain.load(digits_logreg)  # probabilities only (LinearClassifier + Normalizer): -log p_y
    x = np.load(digits_logreg.parent / "samples" / "digits_test100_logreg.npy")[:3].astype(np.float64)
    classes = np.argsort(logreg.scores(x.astype(np.float32)), axis=1)[:, -2]  # runner-up: a loss float32 resolves
    h, eye = 1e-2, np.eye(64)
    loss = [-np.log(logreg.scores((x[i] + s * h * eye).astype(np.float32))[:, classes[i]]) for i in range(3)
            for s in (1, -1)]
    numeric = np.stack([(loss[2 * i] - loss[2 * i + 1]) / (2 * h) for i in range(3)])
    np.testing.assert_allclose(loss_gradient(logreg, x.astype(np.float32), classes), numeric, rtol=1e-2, atol=3e-4)


def test_censored_cases_are_left_out_of_the_means():
    """A search that never flips (eps = limit + step) would dominate the mean: aggregates skip it, NaN when all do."""
    result = APEMResult(np.array([1.0, 2.0, 3.0]), np.array([5.0, 101.0, 7.0]), np.zeros(3, int),
                        np.array([False, True, False]), np.array([2.0, 2.0, 101.0]), np.array([10.0, 10.0, 10.0]),
                        limit=100.0)
    assert result.mean == pytest.approx(((5 - 1) + (7 - 3)) / 2)
    # case 1 is censored, case 2's shuffles never flipped within the limit: no reference, so APEM_norm is NaN
    np.testing.assert_allclose(result.normalized, [5 / 10 - 1 / 2, 101 / 10 - 2 / 2, np.nan])
    assert result.norm_mean == pytest.approx(5 / 10 - 1 / 2)
    everything = APEMResult(np.ones(2), np.full(2, 101.0), np.zeros(2, int), np.ones(2, bool), limit=100.0)
    assert np.isnan(everything.mean)


def test_apem_needs_two_classes(tmp_path):
    rng = np.random.default_rng(0)
    model = linear_onnx(tmp_path / "one.onnx", rng.normal(size=(16, 1)), np.zeros(1), (16,))
    x = rng.normal(size=(3, 16)).astype(np.float32)
    for target in (None, 0):
        with pytest.raises(OnnxplainError, match="at least two classes: the decision of a one-column score"):
            APEM(progress=False).evaluate(model, x, np.ones(x.shape), target)


def test_an_image_gets_the_same_numbers_in_any_batch(two_class):
    """Shuffles come from the seed alone, not from a stream shared by the batch."""
    model, _, _, x = two_class
    relevance = np.random.default_rng(3).normal(size=x.shape)
    apem = APEM(stage=1, step=0.05, shuffles=4, baseline=True, progress=False)
    alone, batch = (apem.evaluate(model, x[rows], relevance[rows]) for rows in ([0], [5, 2, 0]))
    for name in ("eps_minus", "eps_plus", "shuffle_minus", "shuffle_plus"):
        assert getattr(alone, name)[0] == getattr(batch, name)[2], name
    assert alone.shuffled.shuffle_plus[0] == batch.shuffled.shuffle_plus[2]


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_relevance_is_an_error(two_class, bad):
    model, _, _, x = two_class
    relevance = np.ones(x.shape)
    relevance[1, 3] = bad
    with pytest.raises(OnnxplainError, match=r"relevance is not finite \(NaN or inf\) for input\(s\) 1"):
        APEM(progress=False).evaluate(model, x, relevance)


@pytest.mark.parametrize("params, message", [(dict(seed=-1), "seed must be at least 0"),
                                             (dict(seed=2**64), "seed must be at most"),
                                             (dict(seed=1.5), "seed must be an integer"),
                                             (dict(shuffles=2.5), "shuffles must be an integer"),
                                             (dict(max_steps=0), "max_steps must be at least 1")])
def test_metric_settings_are_checked_like_the_methods(params, message):
    """Seeds and counts of the metrics' Python API are checked as the methods' are (numpy raised on a negative
    seed, a float count was truncated)."""
    from onnxplain.metrics.evaluation import Evaluation

    with pytest.raises(OnnxplainError, match=message):
        APEM(**params)
    if "seed" in params:
        with pytest.raises(OnnxplainError, match=message):
            Evaluation(**params)
