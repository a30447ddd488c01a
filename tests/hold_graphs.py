"""Small ONNX graphs of several inputs for the tests of holding inputs (`onnxplain.hold`)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

META = np.array([0.5, -1.0, 2.0], np.float32)
OPSET = [helper.make_opsetid("", 13)]


def weights(seed: int, **shapes) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: (rng.normal(size=shape) * 0.3).astype(np.float32) for name, shape in shapes.items()}


def save(nodes, inputs, outputs, constants: dict, path):
    graph = helper.make_graph(nodes, "held", inputs, outputs,
                              [numpy_helper.from_array(value, name) for name, value in constants.items()])
    model = helper.make_model(graph, opset_imports=OPSET)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


CONCAT = weights(0, w=(4, 1, 3, 3), b=(4,), g=(4 * 6 * 6 + 3, 5), gb=(5,))


def concat_model(path, batch="N"):
    """image (N, 1, 8, 8) -> Conv -> Relu -> Flatten, Concat with meta (N, 3), Gemm -> logits (N, 5)."""
    nodes = [helper.make_node("Conv", ["image", "w", "b"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]), helper.make_node("Concat", ["f", "meta"], ["j"], axis=1),
             helper.make_node("Gemm", ["j", "g", "gb"], ["logits"])]
    inputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 1, 8, 8]),
              helper.make_tensor_value_info("meta", TensorProto.FLOAT, [batch, 3])]
    return save(nodes, inputs, [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 5])], CONCAT, path)


MASKED = weights(1, w=(3, 2, 3), g=(3 * 8, 4), m=(2, 4))


def mask_model(path):
    """seq (N, 2, 10) * mask (N, 1, 10) -> Conv1d -> Relu -> Flatten -> MatMul, plus softmax(meta) @ m added to the
    logits: a held mask multiplies the input, a held vector passes a Softmax (no LRP rule) and is added."""
    nodes = [helper.make_node("Mul", ["seq", "mask"], ["masked"]), helper.make_node("Conv", ["masked", "w"], ["c"]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("MatMul", ["f", "g"], ["h"]), helper.make_node("Softmax", ["meta"], ["sm"], axis=1),
             helper.make_node("MatMul", ["sm", "m"], ["mb"]), helper.make_node("Add", ["h", "mb"], ["logits"])]
    inputs = [helper.make_tensor_value_info("seq", TensorProto.FLOAT, ["N", 2, 10]),
              helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", 1, 10]),
              helper.make_tensor_value_info("meta", TensorProto.FLOAT, ["N", 2])]
    return save(nodes, inputs, [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], MASKED, path)


MIXED = weights(2, e=(5, 2), g=(6, 3))


def mixed_model(path):
    """x (N, 3) times a fixed scale (3,) (no batch axis), over a rank-0 temperature t, joined to the embedding of
    an int64 category (N, 1) and to its own first column; MatMul -> (N, 3); a boolean flag (N, 1) adds 1 where
    set."""
    nodes = [helper.make_node("Mul", ["x", "scale"], ["scaled"]), helper.make_node("Div", ["scaled", "t"], ["xt"]),
             helper.make_node("Gather", ["e", "category"], ["embedded"]),
             helper.make_node("Flatten", ["embedded"], ["ef"]),
             helper.make_node("Slice", ["xt", "zero", "one", "one"], ["first"]),
             helper.make_node("Concat", ["xt", "ef", "first"], ["j"], axis=1),
             helper.make_node("MatMul", ["j", "g"], ["h"]),
             helper.make_node("Cast", ["flag"], ["ff"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["h", "ff"], ["logits"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3]),
              helper.make_tensor_value_info("scale", TensorProto.FLOAT, [3]),
              helper.make_tensor_value_info("t", TensorProto.FLOAT, []),
              helper.make_tensor_value_info("category", TensorProto.INT64, ["N", 1]),
              helper.make_tensor_value_info("flag", TensorProto.BOOL, ["N", 1])]
    indices = {"zero": np.array([0]), "one": np.array([1])}
    return save(nodes, inputs, [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])], MIXED | indices,
                path)


MIXED_HOLD = {"scale": np.array([1.0, 2.0, -0.5], np.float32), "t": np.float32(2.0),
              "category": np.array([3]), "flag": np.array([True])}
