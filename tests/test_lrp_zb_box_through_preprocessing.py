"""z^B's box carried through a model's own preprocessing that flips signs (x' = 1 - 2x), against the z^B formula.

The box [0, 1] of the raw input maps to [-1, 1] for the first layer, but its ends swap: the image of `low` is the
upper bound. Taking them unsorted would put l = 1 and h = -1 into R_i = (x_i w_ij - l_i w+_ij - h_i w-_ij) / z_j R_j.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain.lrp import DeepTaylor

STAB = 1e-6


def flipping_net(path, weight, bias) -> onnxplain.Model:
    """x -> Mul(-2) -> Add(1) -> Gemm -> logits."""
    inits = [numpy_helper.from_array(np.array(-2.0, np.float32), "scale"),
             numpy_helper.from_array(np.array(1.0, np.float32), "offset"),
             numpy_helper.from_array(weight.astype(np.float32), "w"),
             numpy_helper.from_array(bias.astype(np.float32), "b")]
    nodes = [helper.make_node("Mul", ["x", "scale"], ["scaled"]), helper.make_node("Add", ["scaled", "offset"], ["xn"]),
             helper.make_node("Gemm", ["xn", "w", "b"], ["logits"], name="dense", transB=1)]
    graph = helper.make_graph(nodes, "flip", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return onnxplain.load(path)


def zb(x, w, b, low, high):
    """z^B input relevance of y = x w^T + b, seeded with the top logit."""
    logits = x @ w.T + b
    top = logits.argmax(axis=1)
    relevance = np.zeros_like(logits)
    relevance[np.arange(len(x)), top] = logits[np.arange(len(x)), top]
    q = x[:, None] * w - low * np.maximum(w, 0) - high * np.minimum(w, 0)          # (N, K, F)
    z = q.sum(axis=2)
    return (q * (relevance / (z + STAB * np.where(z >= 0, 1.0, -1.0)))[:, :, None]).sum(axis=1)


def test_the_box_of_a_sign_flipping_normalisation_is_sorted(tmp_path):
    rng = np.random.default_rng(2)
    weight, bias = rng.normal(size=(4, 6)), rng.normal(size=4) * 0.2
    weight, bias = weight.astype(np.float32).astype(np.float64), bias.astype(np.float32).astype(np.float64)
    model = flipping_net(tmp_path / "flip.onnx", weight, bias)
    raw = rng.uniform(0, 1, size=(5, 6)).astype(np.float32)
    explanation = DeepTaylor(low=0.0, high=1.0, progress=False).explain(model, raw)
    want = zb(1 - 2 * raw.astype(np.float64), weight, bias, low=-1.0, high=1.0)   # relevance passes the scaling
    np.testing.assert_allclose(explanation.relevance, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
