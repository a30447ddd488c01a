"""Small dense ONNX graphs for the LRP tests, written with onnx.helper and loaded."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import onnxplain


def graph_model(path, nodes, weights) -> onnxplain.Model:
    """(N, 6) -> `nodes` (over the initializers `weights`) -> logits (N, 3), opset 18."""
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8), path)
    return onnxplain.load(path)


def dense_graph(tmp_path, name, middle: list, source: str, constants=()) -> onnxplain.Model:
    """x -> `middle` nodes -> (their output `source`) MatMul -> Relu -> MatMul -> logits."""
    rng = np.random.default_rng(2)
    weights = [numpy_helper.from_array(rng.normal(size=(6, 6)).astype(np.float32), "w1"),
               numpy_helper.from_array(rng.normal(size=(6, 3)).astype(np.float32), "w2"), *constants]
    nodes = middle + [helper.make_node("MatMul", [source, "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
                      helper.make_node("MatMul", ["r", "w2"], ["logits"])]
    return graph_model(tmp_path / f"{name}.onnx", nodes, weights)
