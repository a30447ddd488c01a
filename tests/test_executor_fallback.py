"""Ops outside the registry: the whole model falls back to onnx2torch (after onnx.version_converter, Gelu written
out first), checked against onnxruntime and torch autograd; an op neither supports is named with its node."""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain.errors import OnnxplainError
from onnxplain.executor import relative_error
from onnxplain.lrp import unsupported_ops
from onnxplain.targets import Target

TOLERANCE = 1e-4


def _single_op_model(path, op_type: str, **attributes) -> None:
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(size=(4, 3)).astype(np.float32), "w")
    inputs, extra = ["x"], []
    nodes = [helper.make_node("Unsqueeze", ["x", "axis"], ["x3"]),
             helper.make_node(op_type, inputs, ["h"], name="the_node", **attributes),
             helper.make_node("Flatten", ["h"], ["flat"]),
             helper.make_node("Gemm", ["flat", "w"], ["logits"])]
    axis = numpy_helper.from_array(np.array([1], np.int64), "axis")
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
                              [weight, axis] + extra)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)


def test_op_outside_registry_falls_back_to_onnx2torch(tmp_path):
    path = tmp_path / "celu.onnx"
    _single_op_model(path, "Celu", alpha=0.7)
    model = onnxplain.load(path)
    executor = model.torch()
    assert executor.graph is None and "Celu (the_node)" in executor.problem
    x = np.random.default_rng(1).normal(size=(6, 4)).astype(np.float32)
    assert relative_error(executor(x).detach().numpy(), model.scores(x)) <= TOLERANCE
    grad, _ = executor.gradient(x, Target(index=0))
    assert grad.shape == x.shape and np.isfinite(grad).all()
    assert unsupported_ops(model) and "Celu" in unsupported_ops(model)[0]


def _export_dynamo(net: torch.nn.Module, path, sample_shape: tuple[int, ...]):
    """torch.onnx.export with the dynamo exporter at opset 18, dynamic batch."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.rand(2, *sample_shape),), str(path), dynamo=True, opset_version=18,
                          input_names=["x"], output_names=["y"], dynamic_shapes=({0: torch.export.Dim("N")},))
    return path


def test_dynamo_export_with_an_op_outside_the_registry_falls_back_to_onnx2torch(tmp_path):
    """torch's dynamo exporter writes Reshape with allowzero=1, which onnx2torch does not implement; with a constant
    shape that holds no zero it means allowzero=0, so the fallback still runs (here for Celu)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.CELU(0.7),
                              torch.nn.Linear(4 * 6 * 6, 3)).eval()
    path = _export_dynamo(net, tmp_path / "celu.onnx", (1, 8, 8))
    proto = onnx.load(path)
    assert any(a.name == "allowzero" and a.i == 1 for n in proto.graph.node if n.op_type == "Reshape"
               for a in n.attribute)
    assert_fallback_gradient(path, net)


def test_dynamo_export_at_opset_20_with_gelu_falls_back_too(tmp_path):
    """Today's dynamo exporter writes opset 20, where GELU is one Gelu node: onnx.version_converter cannot take it
    below 20 and onnx2torch has no converter for it, so a ConvNeXt-style net with one op outside the registry (Celu
    here) had no torch run at all ('No Previous Version of Gelu exists'). The fallback writes Gelu out first."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.GELU(), torch.nn.Conv2d(4, 4, 3),
                              torch.nn.GELU(approximate="tanh"), torch.nn.Flatten(), torch.nn.CELU(0.7),
                              torch.nn.Linear(4 * 4 * 4, 3)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.rand(2, 1, 8, 8),), str(tmp_path / "gelu.onnx"), dynamo=True, opset_version=20,
                          input_names=["x"], output_names=["y"], dynamic_shapes=({0: torch.export.Dim("N")},))
    assert {"Gelu", "Celu"} <= {node.op_type for node in onnx.load(tmp_path / "gelu.onnx").graph.node}
    assert_fallback_gradient(tmp_path / "gelu.onnx", net)


def assert_fallback_gradient(path, net):
    """The model at `path` (with Celu, outside the registry) runs through onnx2torch, and its gradient of class 1
    equals torch autograd's on `net`, the network it was exported from."""
    executor = onnxplain.load(path).torch()
    assert executor.graph is None and "Celu" in executor.problem
    x = np.random.default_rng(1).random((5, 1, 8, 8)).astype(np.float32)
    grad, _ = executor.gradient(x, Target(index=1))
    inputs = torch.from_numpy(x).requires_grad_(True)
    net(inputs)[:, 1].sum().backward()
    assert relative_error(grad, inputs.grad.numpy()) <= TOLERANCE


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_written_out_keeps_a_half_precision_input_in_half_precision(approximate):
    """The written-out Gelu's constants take the type of its input, also where that input is an inner tensor whose
    type the graph does not record (float32 constants beside float16 data: onnxruntime refuses the graph)."""
    from onnxplain.executor import _write_out_gelu

    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Gelu", ["h"], ["y"],
                                                                             approximate=approximate)]
    weight = numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 3)).astype(np.float16), "w")
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [2, 3])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    x = np.random.default_rng(1).normal(size=(2, 4)).astype(np.float16)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    _write_out_gelu(model)
    assert "Gelu" not in {node.op_type for node in model.graph.node}
    got = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), atol=2e-2)


def test_op_nobody_supports_is_named_in_the_error(tmp_path):
    path = tmp_path / "shrink.onnx"
    _single_op_model(path, "Shrink", lambd=0.5)
    model = onnxplain.load(path)
    with pytest.raises(OnnxplainError, match=r"Shrink \(the_node\)"):
        model.torch()
