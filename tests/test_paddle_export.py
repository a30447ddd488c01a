"""A PaddlePaddle export as it comes from paddle2onnx (models/build_paddle.py): weights in Constant nodes, IR 7,
a shape subgraph before the Reshape, MatMul + Add, a softmax output. Checked against the Paddle network's own
outputs, stored beside the model when it was built."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import onnxplain
from onnxplain.cli.main import cli
from onnxplain.executor import relative_error
from onnxplain.lrp import LRP
from onnxplain.methods.gradients import Gradient

MODELS = Path(__file__).resolve().parents[1] / "models"


@pytest.fixture(scope="module")
def paddle():
    model = onnxplain.load(MODELS / "digits_paddle.onnx")
    check = np.load(MODELS / "samples" / "digits_paddle_check.npz")
    return model, check["inputs"], check["probabilities"], check["labels"]


def test_onnxruntime_and_the_torch_executor_reproduce_paddle(paddle):
    model, x, probabilities, labels = paddle
    assert model.score_output == "fetch_name_0" and model.score_kind == "probabilities"
    np.testing.assert_allclose(model.scores(x), probabilities, atol=1e-5)
    executor = model.torch()
    assert executor.graph is not None, executor.problem  # the op registry, not the onnx2torch fallback
    assert relative_error(executor(x).detach().numpy(), probabilities) < 1e-4
    assert (model.scores(x).argmax(1) == labels).all()


def test_lrp_starts_at_the_logit_and_conserves(paddle):
    model, x, _, labels = paddle
    explanation = LRP(progress=False).explain(model, x)
    assert (explanation.target == labels).all()
    np.testing.assert_allclose(explanation.score, model.logits(x)[np.arange(len(x)), labels], rtol=1e-4)
    assert np.abs(explanation.diagnostics["conservation_error"]).max() < 1e-5
    gradient = Gradient(progress=False).explain(model, x)
    assert np.abs(gradient.relevance).max() > 0


def test_inspect_counts_the_weights_in_constant_nodes():
    result = CliRunner().invoke(cli, ["inspect", str(MODELS / "digits_paddle.onnx"), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    # conv 8x1x3x3+8, batch norm 4x8, conv 16x8x3x3+16, linear 784x10+10
    assert info["parameters"] == 80 + 32 + 1168 + 7850
    assert info["operators"]["Constant"] == 16
