"""The two-digit detector (models/two_digits.py) and a reduced run of the deep Taylor experiment on it.

The committed model is used as it is (training takes minutes). Independent references: deep Taylor (z^B then z+)
and the gradient of this two-layer ReLU network written out in numpy from the ONNX initializers.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

MODELS = Path(__file__).resolve().parents[1] / "models"
MODEL = MODELS / "two_digits.onnx"
POSITIVES, NEGATIVES = 20, 10


def _experiment():
    spec = importlib.util.spec_from_file_location("two_digits_experiment", MODELS / "two_digits_experiment.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


EXPERIMENT = _experiment()


# ---------------------------------------------------------------------------------------------------- numpy reference

def gemm_layers() -> list[tuple[np.ndarray, np.ndarray]]:
    """(W, b) of each Gemm in graph order, float64; b is zero for the sum-pooling layers."""
    graph = onnx.load(MODEL).graph
    values = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in graph.initializer}
    layers = []
    for node in graph.node:
        if node.op_type == "Gemm":
            weight = values[node.input[1]]
            bias = values[node.input[2]] if len(node.input) > 2 else np.zeros(len(weight))
            layers.append((weight, bias))
    return layers


def activations(layers, x: np.ndarray) -> list[np.ndarray]:
    """Inputs of each layer and the output: detectors (layers 0 and 2) are ReLUs, poolings are linear."""
    values = [x.reshape(len(x), -1).astype(np.float64)]
    for k, (weight, bias) in enumerate(layers):
        z = values[-1] @ weight.T + bias
        values.append(np.maximum(z, 0) if k % 2 == 0 else z)
    return values


def deep_taylor_reference(layers, x: np.ndarray, low: float, high: float) -> np.ndarray:
    """z^B (bounds low, high) on the first layer, z+ on every layer above, starting from R = f(x)."""
    values = activations(layers, x)
    relevance = values[-1]
    for k in range(len(layers) - 1, -1, -1):
        weight, a = layers[k][0], values[k]
        plus, minus = np.clip(weight, 0, None), np.clip(weight, None, 0)
        if k == 0:
            z = a @ weight.T - low * plus.sum(axis=1) - high * minus.sum(axis=1)
            s = relevance / np.where(z == 0, 1, z)
            relevance = a * (s @ weight) - low * (s @ plus) - high * (s @ minus)
        else:
            z = a @ plus.T
            relevance = a * ((relevance / np.where(z == 0, 1, z)) @ plus)
    return relevance.reshape(x.shape)


def gradient_reference(layers, x: np.ndarray) -> np.ndarray:
    """df/dx of the network, by the chain rule through the ReLU masks."""
    values = activations(layers, x)
    grad = np.ones((len(x), 1))
    for k in range(len(layers) - 1, -1, -1):
        weight = layers[k][0]
        if k % 2 == 0:
            grad = grad * (values[k + 1] > 0)
        grad = grad @ weight
    return grad.reshape(x.shape)


# ---------------------------------------------------------------------------------------------------- tests

@pytest.fixture(scope="module")
def reduced():
    """The experiment on 20 positive and 10 negative test images, sensitivity and deep Taylor."""
    return EXPERIMENT.run(POSITIVES, NEGATIVES, methods=("sensitivity", "deep-taylor"))


def test_model_is_the_papers_network():
    import onnxplain

    onnx.checker.check_model(onnx.load(MODEL), full_check=True)
    model = onnxplain.load(MODEL)
    assert model.input_shape == (None, 1, 28, 56)
    assert model.score_kind == "logits" and model.labels == ["digit 0-3 present"]
    low, high = model.preprocess.value_range()
    assert np.allclose(low, -0.5) and np.allclose(high, 1.5)  # the paper's pixel coding and z^B bounds
    (w1, b1), (p1, _), (w2, b2), (p2, _) = gemm_layers()
    assert w1.shape == (400, 28 * 56) and w2.shape == (400, 100)
    assert np.array_equal(p1, np.kron(np.eye(100), np.ones((1, 4)))) and np.array_equal(p2, np.ones((1, 400)))
    assert b1.max() <= 0 and b2.max() <= 0  # biases constrained to be non-positive, as in the paper


def test_detector_separates_the_test_pairs(reduced):
    assert reduced.score[reduced.sides >= 0].min() > 50 > reduced.score[reduced.sides < 0].max()


def test_deep_taylor_matches_numpy_reference(reduced):
    low, high = (float(v[0]) for v in reduced.model.preprocess.value_range())
    expected = deep_taylor_reference(gemm_layers(), reduced.x, low, high)
    assert np.abs(reduced.relevances["deep-taylor"] - expected).max() <= 1e-4 * np.abs(expected).max()


def test_sensitivity_is_the_squared_gradient(reduced):
    expected = gradient_reference(gemm_layers(), reduced.x) ** 2
    assert np.abs(reduced.relevances["sensitivity"] - expected).max() <= 1e-4 * expected.max()


def test_deep_taylor_is_positive_and_conservative(reduced):
    relevance, score = reduced.relevances["deep-taylor"], reduced.score
    assert relevance.min() >= 0 and reduced.results["deep-taylor"]["negative_fraction"] == 0
    totals = relevance.reshape(len(relevance), -1).sum(axis=1)
    assert np.allclose(totals, score, rtol=1e-4, atol=1e-4 * score.max())
    assert np.allclose(reduced.sums["deep-taylor"], totals, rtol=1e-5)  # the conservation report agrees


def test_deep_taylor_puts_most_relevance_on_the_target_digit(reduced):
    result = reduced.results["deep-taylor"]
    assert result["share_mean"] > 0.55 and result["share_over_half"] >= 0.9


def test_deep_taylor_is_balanced_across_images_unlike_sensitivity(reduced):
    """The paper's Fig. 6 point: deep Taylor's ΣR follows f(x) (about 100 on every positive image); sensitivity's
    ΣR does not, some images reacting strongly and others weakly."""
    assert reduced.results["deep-taylor"]["sum_spread"] < 0.5 * reduced.results["sensitivity"]["sum_spread"]


def test_target_half_share_counts_the_right_half():
    relevance = np.zeros((2, 1, 28, 56))
    relevance[0, 0, :, :28] = 3.0   # all on the left
    relevance[1, 0, :, :28] = 1.0
    relevance[1, 0, :, 28:] = 3.0   # three quarters on the right
    relevance[1, 0, 0, 0] = -50.0   # negative relevance does not count
    share = EXPERIMENT.target_half_share(relevance, np.array([0, 1]))
    assert share[0] == 1.0 and share[1] == pytest.approx(0.75, abs=1e-3)
