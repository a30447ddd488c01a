"""What loading changes in a graph, and what it must leave: a first Mul that rescales pixels (the guessed spec keeps
them raw), unused inputs dropped but subgraph inputs kept, nodes that only copy their input removed (outputs and
names unchanged), value_ints constants, and an old opset kept where its upgrade fails shape inference."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxplain


@pytest.mark.parametrize("rescales", [True, False])
def test_a_graph_that_rescales_pixels_itself_gets_them_raw(rescales, tmp_path):
    """Keras's Rescaling(1/255) exports as a first Mul: the spec guessed for such a channels-last image model keeps
    pixels at 0..255 (it divided them by 255 twice). An input no node reads (Keras's Normalization through tf2onnx
    leaves its mean so) is left out with a note instead of making a second input."""
    weight = numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32), "w")
    scale = numpy_helper.from_array(np.array(1 / 255, np.float32), "s")
    nodes = [helper.make_node("Mul", ["x", "s"], ["scaled"])] if rescales else \
        [helper.make_node("Identity", ["x"], ["scaled"])]
    nodes += [helper.make_node("Transpose", ["scaled"], ["t"], perm=[0, 3, 1, 2]),
              helper.make_node("Conv", ["t", "w"], ["c"]), helper.make_node("Flatten", ["c"], ["y"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 8, 1]),
              helper.make_tensor_value_info("mean", TensorProto.FLOAT, [1])]
    graph = helper.make_graph(nodes, "rescaling", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                                                        ["N", 72])], [weight, scale])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "rescaling.onnx")
    loaded = onnxplain.load(tmp_path / "rescaling.onnx")
    assert loaded.preprocess_source == "guessed" and loaded.preprocess.layout == "NHWC"
    assert loaded.preprocess.scale == (1.0 if rescales else pytest.approx(1 / 255))
    assert "graph input(s) 'mean' read by no node: left out" in loaded.notes and loaded.input_name == "x"


COPIES = {"Cast": dict(to=TensorProto.FLOAT), "Identity": {}, "Dropout": {}}


@pytest.mark.parametrize("copy", sorted(COPIES))
def test_nodes_that_copy_their_input_go(copy, tmp_path):
    """Keras's torch backend writes float-to-float Casts between a MatMul and its bias Add, tf2onnx and Paddle
    Identity, older exports Dropout: they go at load, so LRP merges the bias into the layer as it does without
    them (same map and ledger), outputs are unchanged and their names still work."""
    from onnxplain.lrp import LRP

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.normal(size=(6, 4)).astype(np.float32), "w"),
               numpy_helper.from_array(rng.normal(size=(4,)).astype(np.float32), "b")]

    def graph(cast: bool) -> onnxplain.Model:
        nodes = [helper.make_node("MatMul", ["x", "w"], ["m"])]
        nodes += [helper.make_node(copy, ["m"], ["c"], **COPIES[copy])] if cast else []
        nodes += [helper.make_node("Add", ["c" if cast else "m", "b"], ["y"])]
        proto = helper.make_model(helper.make_graph(
            nodes, "cast", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], weights),
            opset_imports=[helper.make_opsetid("", 13)])
        proto.ir_version = 8
        onnx.save(proto, tmp_path / f"cast_{cast}.onnx")
        return onnxplain.load(tmp_path / f"cast_{cast}.onnx")

    with_cast, without = graph(True), graph(False)
    assert copy not in [n.op_type for n in with_cast.proto.graph.node]
    x = rng.normal(size=(3, 6)).astype(np.float32)
    np.testing.assert_array_equal(with_cast.logits(x), without.logits(x))
    ours, want = (LRP(progress=False).explain(m, x) for m in (with_cast, without))
    np.testing.assert_allclose(ours.relevance, want.relevance, rtol=1e-6)
    assert [layer["op"] for layer in ours.diagnostics["layers"][0]] == ["MatMul"]   # the bias merged, no Add
    np.testing.assert_array_equal(with_cast.run(x, ["c"])["c"], without.run(x, ["m"])["m"])   # the name still works
    from onnxplain.targets import Target

    np.testing.assert_allclose(LRP(progress=False).attribute(with_cast, x, Target("c", 2)),
                               LRP(progress=False).attribute(without, x, Target("m", 2)), rtol=1e-6)
    from click.testing import CliRunner

    from onnxplain.cli.main import cli

    np.save(tmp_path / "x.npy", x[0])
    result = CliRunner().invoke(cli, ["explain", str(tmp_path / "cast_True.onnx"), str(tmp_path / "x.npy"),
                                      "--layer", "c", "--target", "2", "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    (record,) = json.loads(result.stdout)
    assert record["target"] == {"layer": "c", "channel": 2, "tensor": "m"}   # as asked, and what it names
    proto = onnx.load(tmp_path / "cast_True.onnx")   # a copy of the input itself stays: its output names x
    proto.graph.node.insert(0, helper.make_node(copy, ["x"], ["x_float"], **COPIES[copy]))
    proto.graph.node[1].input[0] = "x_float"
    onnx.save(proto, tmp_path / "cast_input.onnx")
    cast_input = onnxplain.load(tmp_path / "cast_input.onnx")
    np.testing.assert_array_equal(cast_input.run(x, ["x_float"])["x_float"], x)


def test_an_input_read_only_inside_a_subgraph_is_kept(tmp_path):
    """An input an If branch reads is used: it stays (a model whose only input is read there loaded before the
    unused-input pass and must still)."""
    then = helper.make_graph([helper.make_node("Identity", ["x"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, ["N", 3])])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, ["N", 3])])
    condition = numpy_helper.from_array(np.array(True), "cond")
    graph = helper.make_graph([helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)], "if",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [condition])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "if.onnx")
    loaded = onnxplain.load(tmp_path / "if.onnx")
    assert loaded.input_name == "x" and not any("read by no node" in n for n in loaded.notes)


def test_a_shape_from_a_value_ints_constant_loads(tmp_path):
    """A Reshape whose shape is a Constant written with value_ints (not value) left the batch rewrite with nothing
    to read: a StopIteration escaped at load."""
    weight = numpy_helper.from_array(np.arange(4, dtype=np.float32).reshape(2, 2), "w")
    nodes = [helper.make_node("Constant", [], ["shape"], value_ints=[4, 1]),
             helper.make_node("Reshape", ["w", "shape"], ["column"]),
             helper.make_node("MatMul", ["x", "column"], ["y"])]
    graph = helper.make_graph(nodes, "ints", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "ints.onnx")
    loaded = onnxplain.load(tmp_path / "ints.onnx")
    np.testing.assert_allclose(loaded.run(np.ones((3, 4), np.float32))["y"], np.full((3, 1), 6.0))


def test_an_old_opset_whose_conversion_fails_shape_inference_is_kept(tmp_path):
    """A ceil-mode MaxPool whose last window would start past the input (5 positions, kernel 1, stride 3): onnxruntime
    drops that window (2 positions), ONNX's shape inference before opset 22 counts it (3). At opset 11 onnxruntime
    runs the graph, but converted to opset 13 the 3 positions contradict the Gemm after them and onnxruntime refused
    the converted graph, so a model it runs failed to load. The original opset stays, and the registry runs it."""
    nodes = [helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[1], strides=[3], ceil_mode=1),
             helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("Gemm", ["f", "w"], ["y"])]
    weight = numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32), "w")
    graph = helper.make_graph(nodes, "ceil", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [weight])
    path = tmp_path / "ceil.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], ir_version=6), path)
    model = onnxplain.load(path)
    assert "opset 11 kept (shape inference fails at opset 13)" in model.notes
    x = np.random.default_rng(1).normal(size=(3, 2, 5)).astype(np.float32)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(model.scores(x), want, rtol=1e-6)
    executor = model.torch()
    assert executor.graph is not None, executor.problem
    np.testing.assert_allclose(executor(x).numpy(), want, rtol=1e-5, atol=1e-6)
