"""Hostile models and settings (odd inputs and outputs, hidden external data, method specs, huge settings):
one line on stderr, exit code 2."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from cli_runner import run
from onnx import TensorProto, helper, numpy_helper

from test_cli_hostile_inputs import one_line_error


def save(path, nodes, inputs, outputs, weights=(), opset=18, functions=()):
    graph = helper.make_graph(nodes, "hostile", inputs, outputs, list(weights))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                    *[helper.make_opsetid(f.domain, 1) for f in functions]],
                              functions=list(functions))
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


WEIGHT = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3) / 12, "w")
SCORES = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])


def x_of(*shape):
    return helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))


@pytest.mark.parametrize("case", ["scalar", "summed over the batch"])
def test_class_scores_without_a_batch_axis(case, tmp_path):
    axes = numpy_helper.from_array(np.array([0] if case != "scalar" else [0, 1], np.int64), "axes")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["z"]), helper.make_node("ReduceSum", ["z", "axes"], ["y"],
                                                                             keepdims=0)]
    shape = [] if case == "scalar" else [3]
    path = save(tmp_path / "m.onnx", nodes, [x_of("N", 4)], [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                                                            shape)], [WEIGHT, axes])
    np.save(tmp_path / "x.npy", np.ones((3, 4), np.float32))
    one_line_error(run("predict", path, tmp_path / "x.npy"), "must keep the batch axis (one row of scores per sample)")


def test_inputs_that_are_no_batch_of_tensors(tmp_path):
    sequence = helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, None)
    index = numpy_helper.from_array(np.array(0, np.int64), "i")
    nodes = [helper.make_node("SequenceAt", ["s", "i"], ["x"]), helper.make_node("MatMul", ["x", "w"], ["y"])]
    path = save(tmp_path / "sequence.onnx", nodes, [sequence], [SCORES], [WEIGHT, index])
    one_line_error(run("inspect", path), "input 's' is not a tensor (sequence_type)")
    nodes = [helper.make_node("Mul", ["x", "w"], ["y"])]
    path = save(tmp_path / "scalar.onnx", nodes, [x_of()], [SCORES], [WEIGHT])
    one_line_error(run("inspect", path), "input 'x' is a single number (rank 0)")


def external(name: str, location: str) -> TensorProto:
    tensor = numpy_helper.from_array(np.ones((4, 3), np.float32), name)
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    return tensor


def test_external_data_hidden_where_the_loader_still_reads_it(tmp_path):
    """A NUL in the location, and locations in a TENSORS attribute or a function's Constant: refused by name."""
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "secret.bin").write_bytes(np.ones((4, 3), np.float32).tobytes())
    (folder / "w.bin").write_bytes(np.ones((4, 3), np.float32).tobytes())
    matmul = helper.make_node("MatMul", ["x", "w"], ["y"])
    path = save(folder / "nul.onnx", [matmul], [x_of("N", 4)], [SCORES], [external("w", "w.bin\0../secret.bin")])
    one_line_error(run("inspect", path), "external data of tensor 'w' has a location with a NUL character")
    hidden = matmul.attribute.add()
    hidden.name, hidden.type = "hidden", onnx.AttributeProto.TENSORS
    hidden.tensors.append(external("h", "../secret.bin"))
    path = save(folder / "attribute.onnx", [matmul], [x_of("N", 4)], [SCORES], [WEIGHT])
    one_line_error(run("inspect", path), "external data of tensor 'h' points outside the model's folder")
    function = helper.make_function("local", "F", [], ["c"], [helper.make_node(
        "Constant", [], ["c"], value=external("c", "../secret.bin"))], [helper.make_opsetid("", 18)])
    path = save(folder / "function.onnx", [helper.make_node("MatMul", ["x", "w"], ["y"])], [x_of("N", 4)],
                [SCORES], [WEIGHT], functions=[function])
    one_line_error(run("inspect", path), "external data of tensor 'c' points outside the model's folder")


@pytest.mark.parametrize("spec, message", [
    ("lrp:rules=x", "--rule expects OP=RULE, got 'x'"),
    ("lrp:progress=false", "method parameter progress cannot be given in 'lrp:progress=false': --quiet sets it"),
    ("occlusion:reference=3", "method parameter reference cannot be given"),
    ("pda:volume_shape=3", "method parameter volume_shape cannot be given"),
])
def test_method_specs_with_parameters_text_cannot_give(spec, message, digits_cnn):
    image = digits_cnn.parent / "samples" / "digit3.png"
    one_line_error(run("evaluate", digits_cnn, image, "--methods", spec, "--metrics", "aopc", "--quiet"), message)


def test_method_specs_give_lrp_rules(digits_cnn):
    image = digits_cnn.parent / "samples" / "digit3.png"
    result = run("evaluate", digits_cnn, image, "--methods", "lrp:rules=Conv=epsilon:rules=Gemm=z", "--metrics",
                 "aopc", "--steps", "5", "--quiet", "--json")
    assert result.exit_code == 0, result.output


def test_running_out_of_memory_is_one_line(digits_cnn):
    image = digits_cnn.parent / "samples" / "digit3.png"   # 10**8 Gauss-Legendre nodes: a 71 PiB matrix
    one_line_error(run("explain", digits_cnn, image, "--method", "integrated-gradients", "--steps", 10**8,
                       "--quiet"), "out of memory (Unable to allocate")


@pytest.mark.parametrize("stored", ["5", "null", '"abc"', '{"a": 1}'])
def test_stored_labels_that_are_no_list_of_names(stored, tmp_path):
    path = save(tmp_path / "m.onnx", [helper.make_node("MatMul", ["x", "w"], ["y"])], [x_of("N", 4)], [SCORES],
                [WEIGHT])
    model = onnx.load(path)
    model.metadata_props.add(key="onnxplain.labels", value=stored)
    onnx.save(model, path)
    one_line_error(run("inspect", path), "metadata onnxplain.labels is not a JSON list of class names")


@pytest.mark.parametrize("threads", ["abc", "-1", "1.5"])
def test_a_thread_count_that_is_no_whole_number_is_one_line(threads, digits_cnn, monkeypatch):
    """The variable is blamed, not the model (the error once came as 'onnxruntime cannot run this model: ...')."""
    image = digits_cnn.parent / "samples" / "digit3.png"
    monkeypatch.setenv("ONNXPLAIN_THREADS", threads)
    result = run("predict", digits_cnn, image)
    one_line_error(result, "onnxplain: error: ONNXPLAIN_THREADS must be a whole number of threads")
    assert "model" not in result.stderr
    monkeypatch.setenv("ONNXPLAIN_THREADS", "1")
    assert run("predict", digits_cnn, image).exit_code == 0


def test_an_invalid_model_names_the_node_in_one_line(tmp_path):
    """onnx.checker puts the node it blames on the lines after the first: they are joined, not cut."""
    path = save(tmp_path / "m.onnx", [helper.make_node("Add", ["x", "missing"], ["y"], name="add_1")], [x_of("N", 3)],
                [SCORES])
    one_line_error(run("inspect", path), "invalid ONNX model: Nodes in a graph must be topologically sorted, however "
                                         "input 'missing' of node: name: add_1 OpType: Add is not output of any "
                                         "previous nodes.")


@pytest.mark.parametrize("opset, outputs, why", [
    (18, ["n", "running_mean", "running_var"], "training_mode=1"),
    (9, ["n", "running_mean", "running_var", "saved_mean", "saved_var"], "it has the training outputs")])
def test_batchnorm_in_training_mode_is_refused_in_one_line(tmp_path, opset, outputs, why):
    """torch.onnx.export(..., training=TrainingMode.TRAINING) writes BatchNormalization with training_mode=1 (before
    opset 14: with its training outputs): onnxruntime then normalises by each batch's own statistics, so a sample's
    scores depend on its batch (predict and occlusion gave other numbers for it alone than in a batch, and the torch
    executor's check failed as a disagreement with onnxruntime)."""
    params = [numpy_helper.from_array(np.full(2, value, np.float32), name)
              for name, value in [("scale", 1.0), ("bias", 0.0), ("mean", 0.0), ("var", 1.0)]]
    norm = helper.make_node("BatchNormalization", ["x", "scale", "bias", "mean", "var"], outputs, name="bn_1",
                            **({"training_mode": 1} if opset >= 14 else {}))
    nodes = [norm, helper.make_node("Flatten", ["n"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["y"])]
    weight = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3) / 12, "w")
    path = save(tmp_path / "m.onnx", nodes, [x_of("N", 2, 2)], [SCORES], [weight, *params], opset=opset)
    np.save(tmp_path / "x.npy", np.arange(12, dtype=np.float32).reshape(3, 2, 2))
    for command in ("inspect", "predict", "explain"):
        args = [command, path] + ([tmp_path / "x.npy"] if command != "inspect" else [])
        one_line_error(run(*args), f"BatchNormalization node 'bn_1' is in training mode ({why}")
