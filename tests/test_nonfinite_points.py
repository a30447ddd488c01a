"""A model whose score is NaN at points a method builds (integrated gradients' path from an all-zero baseline
across a band where a square root's argument is negative; in a trial, an all-padding attention mask): the map is
refused in one line naming the inputs, in the API and on the command line (exit 2, no file written). It was written
full of NaN, with exit code 0."""
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
    """sqrt((x - 1)^2 - 1/4) (N, 4), then a dense layer: NaN wherever a feature lies between 0.5 and 1.5."""
    nodes = [helper.make_node("Sub", ["x", "one"], ["shifted"]),
             helper.make_node("Mul", ["shifted", "shifted"], ["sq"]),
             helper.make_node("Sub", ["sq", "quarter"], ["d"]), helper.make_node("Sqrt", ["d"], ["root"]),
             helper.make_node("MatMul", ["root", "w"], ["y"])]
    weights = [numpy_helper.from_array(np.array(1, np.float32), "one"),
               numpy_helper.from_array(np.array(0.25, np.float32), "quarter"),
               numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32), "w")]
    graph = helper.make_graph(nodes, "shares", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], weights)
    path = tmp_path_factory.mktemp("nan") / "shares.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


def test_a_nan_map_is_refused_naming_the_input(normalised):
    model = onnxplain.load(normalised)
    x = np.array([[2, 2, 3, 4], [3, 2, 2, 2]], np.float32)
    with pytest.raises(OnnxplainError, match=r"integrated-gradients: the relevance of input\(s\) 0, 1 is not finite"):
        make_method("integrated-gradients", baseline="zeros", progress=False).explain(model, x)
    finite = make_method("integrated-gradients", baseline=1.75, progress=False).explain(model, x)
    assert np.isfinite(finite.relevance).all()


def test_the_cli_names_the_file_and_writes_nothing(normalised, tmp_path):
    """Inputs explained two by two from a baseline of 0: the third file's path crosses the NaN band, the first two
    stay below it; the message names the third file, not its place in its batch of one (input 0)."""
    for name, value in (("a", 0.25), ("b", 0.4), ("c", 2.0)):
        np.save(tmp_path / f"{name}.npy", np.full(4, value, np.float32))
    result = run("explain", normalised, *(tmp_path / f"{n}.npy" for n in "abc"), "--method", "integrated-gradients",
                 "--baseline", "0", "--batch", "2", "--save-npy", tmp_path / "r.npy", "--out", tmp_path / "r.png",
                 "--quiet")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert f"the relevance of input(s) {tmp_path / 'c.npy'} is not finite (NaN or infinity)" in result.stderr
    assert not list(tmp_path.glob("r*"))
