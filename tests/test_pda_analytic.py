"""Marginal prediction difference on logistic regression against the value computed from the weights.

For a linear softmax classifier p(c|x) = softmax(Wx + b)_c and marginal sampling over the whole reference set
(S = R), p(c | x without window w) is exactly mean_r softmax(W x_r,w + b), x_r,w = x with w taken from reference r.
Computed here in float64 numpy from the LinearClassifier's coefficients, independent of onnxruntime.
"""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import onnxplain
from onnxplain.methods.pda import PredictionDifference
from onnxplain.targets import Target


def linear_classifier_weights(model):
    (node,) = [n for n in model.proto.graph.node if n.op_type == "LinearClassifier"]
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    intercepts = np.asarray(attributes["intercepts"], dtype=np.float64)
    weights = np.asarray(attributes["coefficients"], dtype=np.float64).reshape(len(intercepts), -1)
    assert attributes["post_transform"] == b"SOFTMAX"
    return weights, intercepts


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def analytic_pda(weights, intercepts, x, reference, shape, k, target, n, classes):
    """WE map of a linear softmax model, from the weights: every k×k window of the `shape` grid, all references."""
    image, refs = x.reshape(shape), reference.reshape(len(reference), *shape)
    log_odds = lambda p: np.log2((p * n + 1) / (n + classes)) - np.log2(1 - (p * n + 1) / (n + classes))  # noqa
    p_x = softmax(weights @ x + intercepts)[target]
    total, counts = np.zeros(shape), np.zeros(shape)
    for i in range(shape[0] - k + 1):
        for j in range(shape[1] - k + 1):
            replaced = np.repeat(image[None], len(refs), axis=0)
            replaced[:, i:i + k, j:j + k] = refs[:, i:i + k, j:j + k]
            p_without = softmax(replaced.reshape(len(refs), -1) @ weights.T + intercepts)[:, target].mean()
            total[i:i + k, j:j + k] += log_odds(p_x) - log_odds(p_without)
            counts[i:i + k, j:j + k] += 1
    return (total / counts).reshape(-1)


@pytest.mark.parametrize("target", [None, 5])
def test_marginal_pda_of_logistic_regression_matches_weights(digits_logreg, target):
    model = onnxplain.load(digits_logreg)
    samples = digits_logreg.parent / "samples"
    reference = np.load(samples / "digits_reference_logreg.npy").astype(np.float64)
    x = np.load(samples / "digit3_logreg.npy")
    weights, intercepts = linear_classifier_weights(model)
    method = PredictionDifference(window=2, sampler="marginal", samples=len(reference), reference=reference,
                                  training_size=1000, progress=False)
    explanation = method.explain(model, x[None].astype(np.float32), Target(index=target))
    explained = int(explanation.target[0])
    assert explained == (3 if target is None else target)
    expected = analytic_pda(weights, intercepts, x.astype(np.float64), reference, (8, 8), 2, explained, 1000, 10)
    assert explanation.relevance.shape == (1, 64)
    np.testing.assert_allclose(explanation.relevance[0], expected, atol=2e-4)
    assert np.abs(expected).max() > 0.5
    assert explanation.diagnostics["laplace_training_size"] == 1000
