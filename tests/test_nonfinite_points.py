"""A model whose score is NaN at points a method builds (integrated gradients' path from an all-zero baseline into
a square root's negative side; in a trial, an all-padding attention mask): the map is refused in one line naming
the input, in the API and on the command line (exit 2, no file written). It was written full of NaN, exit 0."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from cli_runner import run
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain.errors import OnnxplainError
from onnxplain.methods import make_method


@pytest.fixture(scope="module")
def normalised(tmp_path_factory):
    """sqrt(x - 0.5) (N, 4), then a dense layer: NaN wherever a feature is below 0.5."""
    nodes = [helper.make_node("Sub", ["x", "half"], ["shifted"]), helper.make_node("Sqrt", ["shifted"], ["root"]),
             helper.make_node("MatMul", ["root", "w"], ["y"])]
    weights = [numpy_helper.from_array(np.array(0.5, np.float32), "half"),
               numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32), "w")]
    graph = helper.make_graph(nodes, "shares", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], weights)
    path = tmp_path_factory.mktemp("nan") / "shares.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


def test_a_nan_map_is_refused_naming_the_input(normalised):
    model = onnxplain.load(normalised)
    x = np.array([[1, 2, 3, 4], [2, 1, 1, 1]], np.float32)
    with pytest.raises(OnnxplainError, match=r"integrated-gradients: the relevance of input\(s\) 0, 1 is not finite"):
        make_method("integrated-gradients", baseline="zeros", progress=False).explain(model, x)
    finite = make_method("integrated-gradients", baseline=0.75, progress=False).explain(model, x)
    assert np.isfinite(finite.relevance).all()


def test_the_cli_writes_nothing_for_a_nan_map(normalised, tmp_path):
    np.save(tmp_path / "x.npy", np.array([1, 2, 3, 4], np.float32))
    result = run("explain", normalised, tmp_path / "x.npy", "--method", "integrated-gradients", "--baseline", "zeros",
                 "--save-npy", tmp_path / "r.npy", "--out", tmp_path / "r.png", "--quiet")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert "is not finite (NaN or infinity)" in result.stderr
    assert not (tmp_path / "r.npy").exists() and not (tmp_path / "r.png").exists()
