"""Models with several float outputs and no softmax to mark the classes: the commands that read class scores say
which output they read, since graph order alone chose it."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from onnxplain.cli.main import cli

NOTE = "note: class scores read from output 'aux', the first of the float outputs (aux, logits); --scores names another"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """(N, 4) -> aux (N, 1), an auxiliary head exported first, and logits (N, 5); one input as .npy."""
    folder = tmp_path_factory.mktemp("heads")
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.normal(size=(4, 1)).astype(np.float32), "v"),
               numpy_helper.from_array(rng.normal(size=(4, 5)).astype(np.float32), "w")]
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "v"], ["aux"]),
                               helper.make_node("MatMul", ["x", "w"], ["logits"])], "heads",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("aux", TensorProto.FLOAT, ["N", 1]),
                               helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), folder / "heads.onnx")
    np.save(folder / "x.npy", rng.normal(size=(2, 4)).astype(np.float32))
    return folder / "heads.onnx", folder / "x.npy"


@pytest.mark.parametrize("command", [["predict"], ["explain", "--method", "gradient", "--quiet"],
                                     ["evaluate", "--methods", "gradient", "--metrics", "aopc", "--quiet"]])
def test_the_commands_name_the_output_graph_order_chose(files, command):
    model, x = files
    result = CliRunner().invoke(cli, [command[0], str(model), str(x), *command[1:]])
    assert result.exit_code == 0, result.output
    assert NOTE in result.stderr
    named = CliRunner().invoke(cli, [command[0], str(model), str(x), *command[1:], "--scores", "logits"])
    assert named.exit_code == 0 and "class scores read from" not in named.stderr, named.output


def test_no_note_for_a_hidden_target(files):
    model, x = files
    result = CliRunner().invoke(cli, ["explain", str(model), str(x), "--method", "gradient", "--layer", "logits",
                                      "--target", "1", "--quiet"])
    assert result.exit_code == 0 and not result.stderr, result.output


def test_contrast_refuses_scores_of_one_class_and_takes_the_output_named(files, tmp_path):
    """The first float output here has one column: 'why A and not B?' has no B (an IndexError escaped)."""
    model, x = files
    latent = numpy_helper.from_array(np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32), "g")
    generator = helper.make_graph([helper.make_node("MatMul", ["z", "g"], ["x"])], "generator",
                                  [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 3])],
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])], [latent])
    onnx.save(helper.make_model(generator, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "g.onnx")
    np.save(tmp_path / "one.npy", np.load(x)[:1])
    command = ["contrast", str(model), str(tmp_path / "one.npy"), "--generator", str(tmp_path / "g.onnx"), "--quiet"]
    refused = CliRunner().invoke(cli, command)
    assert refused.exit_code == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.output
    assert "needs two classes or more; the class scores ('aux') have 1" in refused.stderr
    named = CliRunner().invoke(cli, [*command, "--scores", "logits"])
    assert named.exit_code == 0, named.output


def test_contrast_names_the_output_graph_order_chose(tmp_path):
    """Two heads of two and five classes: contrast explains the first, and says so, as the other commands do."""
    rng = np.random.default_rng(2)
    weights = [numpy_helper.from_array(rng.normal(size=(4, 2)).astype(np.float32), "v"),
               numpy_helper.from_array(rng.normal(size=(4, 5)).astype(np.float32), "w"),
               numpy_helper.from_array(rng.normal(size=(3, 4)).astype(np.float32), "g")]
    heads = helper.make_graph([helper.make_node("MatMul", ["x", "v"], ["aux"]),
                               helper.make_node("MatMul", ["x", "w"], ["logits"])], "heads",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("aux", TensorProto.FLOAT, ["N", 2]),
                               helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])], weights[:2])
    generator = helper.make_graph([helper.make_node("MatMul", ["z", "g"], ["x"])], "generator",
                                  [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 3])],
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])], weights[2:])
    for name, graph in (("two.onnx", heads), ("g.onnx", generator)):
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / name)
    np.save(tmp_path / "one.npy", rng.normal(size=(1, 4)).astype(np.float32))
    result = CliRunner().invoke(cli, ["contrast", str(tmp_path / "two.onnx"), str(tmp_path / "one.npy"),
                                      "--generator", str(tmp_path / "g.onnx"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "class scores read from output 'aux', the first of the float outputs (aux, logits)" in result.stderr
