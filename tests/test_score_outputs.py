"""Which output holds the class scores: log-probabilities (LogSoftmax) read as probabilities through their exp."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import onnxplain
from cli.main import cli
from onnxplain.methods import make_method
from onnxplain.metrics.perturbation import explained_scores
from onnxplain.targets import Target


class Net(torch.nn.Module):
    """(N, 6) -> 3 logits, then log-softmax or softmax."""

    def __init__(self, last):
        super().__init__()
        torch.manual_seed(0)
        self.hidden, self.out, self.last = torch.nn.Linear(6, 8), torch.nn.Linear(8, 3), last

    def logits(self, x):
        return self.out(torch.relu(self.hidden(x)))

    def forward(self, x):
        return self.last(self.logits(x), dim=1)


def export(net, path, shape=(2, 6)):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), (torch.rand(shape),), str(path), dynamo=False, opset_version=13,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    return path


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """The same net ending in log_softmax and in softmax, exported, with a batch of inputs."""
    folder = tmp_path_factory.mktemp("twins")
    log_net, soft_net = Net(torch.log_softmax), Net(torch.softmax)
    x = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)
    return log_net, export(log_net, folder / "log.onnx"), export(soft_net, folder / "soft.onnx"), x


def test_log_softmax_output_is_read_through_its_exp(twins):
    net, log_path, _, x = twins
    model = onnxplain.load(log_path)
    with torch.no_grad():
        logits = net.logits(torch.from_numpy(x)).double().numpy()
        log_p = torch.log_softmax(torch.from_numpy(logits), 1).numpy()
    assert model.score_kind == "probabilities" and model.score_output != "y"
    assert "LogSoftmax" in model.score_reason and any("log-probabilities" in note for note in model.notes)
    np.testing.assert_allclose(model.scores(x), np.exp(log_p), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(model.scores(x).sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(model.run(x, ["y"])["y"], log_p, rtol=1e-5, atol=1e-6)   # the original output stays
    np.testing.assert_allclose(model.logits(x), logits, rtol=1e-5, atol=1e-6)
    classes = np.argmax(logits, 1)
    np.testing.assert_allclose(explained_scores(model, x, classes, "probability"),
                               np.exp(log_p)[np.arange(4), classes], rtol=1e-5)


def test_pda_on_log_softmax_equals_its_softmax_twin(twins):
    _, log_path, soft_path, x = twins
    reference = np.random.default_rng(1).normal(size=(20, 6)).astype(np.float32)
    method = make_method("pda", sampler="marginal", samples=5, reference=reference, progress=False)
    got = method.explain(onnxplain.load(log_path), x, Target(index=1))
    want = method.explain(onnxplain.load(soft_path), x, Target(index=1))
    assert np.isfinite(got.relevance).all() and np.abs(got.relevance).max() > 0
    assert got.diagnostics["score"] == want.diagnostics["score"] == "weight of evidence"
    np.testing.assert_allclose(got.relevance, want.relevance, rtol=1e-3, atol=1e-5)


def test_gradient_explains_the_logit_before_log_softmax(twins):
    net, log_path, _, x = twins
    batch = torch.from_numpy(x).requires_grad_(True)
    net.logits(batch)[:, 2].sum().backward()
    explanation = make_method("gradient", progress=False).explain(onnxplain.load(log_path), x, Target(index=2))
    np.testing.assert_allclose(explanation.relevance, batch.grad.numpy(), rtol=1e-4, atol=1e-6)
    assert explanation.diagnostics["score_kind"] == "logits"


def test_contrastive_log_likelihood_is_the_log_softmax(twins):
    from onnxplain.methods.contrastive import log_likelihood

    net, log_path, _, x = twins
    model = onnxplain.load(log_path)
    got = log_likelihood(model.torch(), model, torch.from_numpy(x)).detach().double().numpy()
    with torch.no_grad():
        np.testing.assert_allclose(got, net(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-5)


def test_predict_shows_probabilities_of_a_log_softmax_model(twins, tmp_path):
    net, log_path, _, x = twins
    np.save(tmp_path / "x.npy", x[:1])
    result = CliRunner().invoke(cli, ["predict", str(log_path), str(tmp_path / "x.npy"), "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    with torch.no_grad():
        want = torch.softmax(net.logits(torch.from_numpy(x[:1])), 1)[0].numpy()
    assert row["kind"] == "probabilities"
    np.testing.assert_allclose(sorted(r["score"] for r in row["top"]), sorted(want), rtol=1e-5)
