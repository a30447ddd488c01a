"""Binary classifiers: a single sigmoid column (also squeezed to (N,)) read as two classes with log-odds ±z as
their logits, and scikit-learn's binary classifiers (MLP writing [1 - p, p] out, a logistic LinearClassifier)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import onnxplain
from onnxplain.methods import make_method
from onnxplain.targets import Target

from legacy_export import export


class Binary(torch.nn.Module):
    """(N, 6) -> sigmoid(z) of shape (N, 1): a binary classifier."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.hidden, self.out = torch.nn.Linear(6, 8), torch.nn.Linear(8, 1)

    def log_odds(self, x):
        return self.out(torch.relu(self.hidden(x)))[:, 0]

    def forward(self, x):
        return torch.sigmoid(self.out(torch.relu(self.hidden(x))))


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    net = Binary()
    path = export(net, tmp_path_factory.mktemp("binary") / "binary.onnx")
    x = np.random.default_rng(6).normal(size=(8, 6)).astype(np.float32) * 3
    with torch.no_grad():
        z = net.log_odds(torch.from_numpy(x)).double().numpy()
    assert 0 < (z > 0).sum() < len(z)   # both classes among the inputs
    return net, path, x, z


def test_binary_sigmoid_is_two_classes(binary):
    net, path, x, z = binary
    model = onnxplain.load(path)
    p = 1 / (1 + np.exp(-z))
    assert model.binary and model.score_kind == "probabilities" and model.class_count() == 2
    assert "binary classifier" in model.score_reason
    np.testing.assert_allclose(model.scores(x), np.stack([1 - p, p], 1), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(model.logits(x), np.stack([-z, z], 1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.run(x, ["y"])["y"][:, 0], p, rtol=1e-5)   # the original output stays
    from onnxplain.metrics.compare import cross_entropy

    labels = (z > 0).astype(np.int64)[::-1].copy()
    want = -np.log(np.where(labels == 1, p, 1 - p))
    np.testing.assert_allclose(cross_entropy(model, x, labels), want, rtol=1e-4)
    from onnxplain.metrics.apem import loss_gradient

    batch = torch.from_numpy(x).requires_grad_(True)
    signs = torch.from_numpy(np.where(labels == 1, 1.0, -1.0).astype(np.float32))
    (-torch.nn.functional.logsigmoid(signs * net.log_odds(batch))).sum().backward()
    np.testing.assert_allclose(loss_gradient(model, x, labels), batch.grad.numpy(), rtol=1e-4, atol=1e-6)
    got = model.torch().log_likelihood(torch.from_numpy(x)).detach().double().numpy()
    np.testing.assert_allclose(got, np.log(np.stack([1 - p, p], 1)), rtol=1e-4, atol=1e-6)


def test_binary_gradient_explains_z_for_class_1_and_minus_z_for_class_0(binary):
    net, path, x, z = binary
    model = onnxplain.load(path)
    batch = torch.from_numpy(x).requires_grad_(True)
    net.log_odds(batch).sum().backward()
    for target, sign in ((1, 1.0), (0, -1.0)):
        explanation = make_method("gradient", progress=False).explain(model, x, Target(index=target))
        np.testing.assert_allclose(explanation.relevance, sign * batch.grad.numpy(), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(explanation.score, sign * z, rtol=1e-5, atol=1e-6)
    top = make_method("gradient", progress=False).explain(model, x)
    np.testing.assert_array_equal(top.target, (z > 0).astype(int))
    lrp = make_method("lrp", progress=False)
    np.testing.assert_allclose(lrp.attribute(model, x, Target(index=0)), -lrp.attribute(model, x, Target(index=1)),
                               rtol=1e-5, atol=1e-6)


def test_binary_pda_laplace_uses_two_classes(binary):
    """Weight of evidence of class 1 by hand: each feature replaced by every reference's value in turn (marginal
    sampling with S = all references), p <- (p N + 1) / (N + 2), WE = log2 odds(x) - log2 odds(x without i)."""
    net, path, x, _ = binary
    reference = np.random.default_rng(7).normal(size=(20, 6)).astype(np.float32)
    explanation = make_method("pda", sampler="marginal", samples=len(reference), reference=reference,
                              progress=False).explain(onnxplain.load(path), x[:2], Target(index=1))
    assert explanation.diagnostics["laplace_classes"] == 2
    n = explanation.diagnostics["laplace_training_size"]
    assert n == len(reference)

    def log_odds(p):
        p = (p * n + 1) / (n + 2)
        return np.log2(p / (1 - p))

    def probability(rows):
        return torch.sigmoid(net.log_odds(torch.from_numpy(rows))).double().numpy()

    with torch.no_grad():
        for sample, relevance in zip(x[:2], explanation.relevance):
            expected = []
            for i in range(6):
                replaced = np.repeat(sample[None], len(reference), axis=0)
                replaced[:, i] = reference[:, i]
                expected.append(log_odds(probability(sample[None])[0]) - log_odds(probability(replaced).mean()))
            np.testing.assert_allclose(relevance, expected, rtol=1e-4, atol=1e-5)


class Squeezed(Binary):
    """The same binary classifier trained with BCE on an (N,) output: sigmoid(z).squeeze(1)."""

    def forward(self, x):
        return super().forward(x).squeeze(1)


def test_a_squeezed_binary_sigmoid_is_two_classes_too(binary, tmp_path):
    _, _, x, z = binary
    model = onnxplain.load(export(Squeezed(), tmp_path / "squeezed.onnx"))
    p = 1 / (1 + np.exp(-z))
    assert model.binary and model.class_count() == 2
    np.testing.assert_allclose(model.scores(x), np.stack([1 - p, p], 1), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(model.logits(x), np.stack([-z, z], 1), rtol=1e-5, atol=1e-6)


def test_scikit_learn_binary_classifiers(tmp_path):
    """skl2onnx's binary MLPClassifier writes [1 - p, p] out (Sigmoid, Sub, Concat): a binary classifier with the
    sigmoid's input as log-odds; a binary LogisticRegression is a LinearClassifier with a logistic post-transform,
    whose class log-likelihoods are the log of its probabilities (not a softmax of its raw scores)."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier


    rng = np.random.default_rng(9)
    x = rng.normal(size=(80, 4)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp = MLPClassifier(hidden_layer_sizes=(6,), max_iter=400, random_state=0).fit(x, y)
        logistic = LogisticRegression().fit(x, y)
    for estimator in (mlp, logistic):
        path = tmp_path / f"{type(estimator).__name__}.onnx"
        path.write_bytes(to_onnx(estimator, x[:1], options={"zipmap": False}).SerializeToString())
        model = onnxplain.load(path)
        want = estimator.predict_proba(x)
        assert model.score_kind == "probabilities" and model.class_count() == 2
        np.testing.assert_allclose(model.scores(x), want, rtol=1e-4, atol=1e-6)
        got = model.torch().log_likelihood(torch.from_numpy(x)).detach().double().numpy()
        np.testing.assert_allclose(got, np.log(want), rtol=1e-4, atol=1e-5)
    model = onnxplain.load(tmp_path / "MLPClassifier.onnx")
    z = np.log(mlp.predict_proba(x)[:, 1]) - np.log(mlp.predict_proba(x)[:, 0])
    assert model.binary
    np.testing.assert_allclose(model.logits(x), np.stack([-z, z], 1), rtol=1e-3, atol=1e-4)
