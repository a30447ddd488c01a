"""Small models with known answers for the metric tests: a linear classifier written as ONNX (logits = x W + b)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import onnxplain


def linear_onnx(path, weights: np.ndarray, bias: np.ndarray, sample_shape: tuple[int, ...], spec: str | None = None):
    """An ONNX model: input 'x' (N, *sample_shape) -> Flatten -> Gemm -> 'logits' (N, K); optional preprocess spec."""
    features, classes = weights.shape
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["flat"], axis=1),
         helper.make_node("Gemm", ["flat", "W", "b"], ["logits"])],
        "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, *sample_shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, classes])],
        initializer=[numpy_helper.from_array(weights.astype(np.float32), "W"),
                     numpy_helper.from_array(bias.astype(np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if spec is not None:
        entry = model.metadata_props.add()
        entry.key, entry.value = "onnxplain.preprocess", spec
    onnx.save(model, str(path))
    return onnxplain.load(path)


class Counting:
    """Wraps `model.run` to count the samples (forward passes) it is asked for."""

    def __init__(self, model):
        self.model, self.passes, self._run = model, 0, model.run
        model.run = self

    def __call__(self, x, *args, **kwargs):
        self.passes += len(x)
        return self._run(x, *args, **kwargs)

    def reset(self) -> int:
        passes, self.passes = self.passes, 0
        return passes
