"""ONNX files as other frameworks export them, committed with the source network's own outputs (made by
models/build_paddle.py and models/build_keras_tf.py, which need those frameworks; the tests need only the files):

* PaddlePaddle 3.3 via paddle2onnx: weights in Constant nodes, IR 7, a shape subgraph before the Reshape,
  MatMul + Add, a softmax output;
* Keras 3 on TensorFlow 2.21 via tf2onnx: channels-last (NHWC) input with a Transpose before the convolutions,
  MatMul + Add, the softmax output behind an Identity name.
"""
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
EXPORTS = {  # name: (score output, weights counted by hand, Constant nodes)
    "digits_paddle": ("fetch_name_0", 80 + 32 + 1168 + 7850, 16),   # conv, batch norm, conv, linear
    "digits_keras_tf": ("Identity:0", 80 + 1168 + 25120 + 330, 0),  # conv, conv, dense, dense
}


@pytest.fixture(scope="module", params=EXPORTS)
def export(request):
    model = onnxplain.load(MODELS / f"{request.param}.onnx")
    check = np.load(MODELS / "samples" / f"{request.param}_check.npz")
    return request.param, model, check["inputs"], check["probabilities"], check["labels"]


def test_onnxruntime_and_the_torch_executor_reproduce_the_source(export):
    name, model, x, probabilities, labels = export
    assert model.score_output == EXPORTS[name][0] and model.score_kind == "probabilities"
    np.testing.assert_allclose(model.scores(x), probabilities, atol=1e-5)
    executor = model.torch()
    assert executor.graph is not None, executor.problem  # the op registry, not the onnx2torch fallback
    assert relative_error(executor(x).detach().numpy(), probabilities) < 1e-4
    assert (model.scores(x).argmax(1) == labels).all()


def test_lrp_starts_at_the_logit_and_conserves(export):
    _, model, x, _, labels = export
    explanation = LRP(progress=False).explain(model, x)
    assert explanation.relevance.shape == x.shape and (explanation.target == labels).all()
    np.testing.assert_allclose(explanation.score, model.logits(x)[np.arange(len(x)), labels], rtol=1e-4)
    assert np.abs(explanation.diagnostics["conservation_error"]).max() < 1e-5
    assert np.abs(Gradient(progress=False).explain(model, x).relevance).max() > 0


def test_explain_reads_a_png_through_the_embedded_spec(export, tmp_path):
    """The shipped digit image, laid out as each model wants it (NCHW for Paddle, NHWC for TensorFlow)."""
    name, model, _, _, _ = export
    result = CliRunner().invoke(cli, ["explain", str(MODELS / f"{name}.onnx"), str(MODELS / "samples" / "digit3.png"),
                                      "--json", "--quiet", "--save-npy", str(tmp_path / "r.npy")])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)[0]
    assert record["target"]["index"] == 3 and record["score_kind"] == "logits"  # LRP explains the pre-softmax logit
    assert np.load(tmp_path / "r.npy").shape == tuple(model.input_shape[1:])


def test_inspect_counts_the_weights(export):
    name, _, _, _, _ = export
    result = CliRunner().invoke(cli, ["inspect", str(MODELS / f"{name}.onnx"), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["parameters"] == EXPORTS[name][1]
    assert info["operators"].get("Constant", 0) == EXPORTS[name][2]
