"""Window methods on a 3-channel image: a window covers all channels, and a pixel's relevance is shared equally by its
channels, so the channel sum is the pixel's value. Occlusion against captum's Occlusion (which gives every channel
the whole drop, C times as much), prediction difference against a literal Algorithm 1 (Zintgraf et al. 2017)."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from captum.attr import Occlusion as CaptumOcclusion
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain.methods import make_method
from onnxplain.methods.pda import PredictionDifference
from onnxplain.targets import Target

RNG = np.random.default_rng(6)
SHAPE = (3, 6, 6)


@pytest.fixture(scope="module")
def rgb(tmp_path_factory):
    """x (N, 3, 6, 6) -> Conv(3 -> 4) -> Relu -> GlobalAveragePool -> Flatten -> logits (4 classes)."""
    inits = [numpy_helper.from_array(RNG.normal(size=(4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(RNG.normal(size=4).astype(np.float32) * 0.1, "b")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["y"], ["h"]), helper.make_node("GlobalAveragePool", ["h"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["logits"])]
    graph = helper.make_graph(nodes, "rgb", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *SHAPE])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    path = tmp_path_factory.mktemp("rgb") / "rgb.onnx"
    onnx.save(proto, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return onnxplain.load(path), lambda batch: session.run(None, {"x": np.asarray(batch, np.float32)})[0]


def test_occlusion_is_captums_divided_among_the_channels(rgb):
    model, logits = rgb
    x = RNG.uniform(0, 1, size=(1, *SHAPE)).astype(np.float32)
    ours = make_method("occlusion", window=2, stride=2, progress=False).explain(model, x)
    forward = lambda t: torch.from_numpy(logits(t.detach().numpy()))  # noqa: E731 - black-box forward
    theirs = CaptumOcclusion(forward).attribute(torch.from_numpy(x), sliding_window_shapes=(3, 2, 2), strides=(3, 2, 2),
                                                baselines=0.0, target=int(ours.target[0])).numpy()
    np.testing.assert_allclose(ours.relevance * 3, theirs, rtol=1e-4, atol=1e-5)


def test_prediction_difference_channel_sum_is_the_literal_pixel_map(rgb):
    model, logits = rgb
    reference = RNG.uniform(0, 1, size=(5, *SHAPE)).astype(np.float32)
    x = RNG.uniform(0, 1, size=(1, *SHAPE)).astype(np.float32)
    k, target = 3, 2
    explanation = PredictionDifference(window=k, sampler="marginal", samples=len(reference), reference=reference,
                                       progress=False).explain(model, x, Target(index=target))
    value_x = logits(x)[0, target]
    total, counts = np.zeros(SHAPE[1:]), np.zeros(SHAPE[1:])
    for i in range(SHAPE[1] - k + 1):
        for j in range(SHAPE[2] - k + 1):
            replaced = np.repeat(x, len(reference), axis=0)
            replaced[:, :, i:i + k, j:j + k] = reference[:, :, i:i + k, j:j + k]
            total[i:i + k, j:j + k] += value_x - logits(replaced)[:, target].mean()
            counts[i:i + k, j:j + k] += 1
    pixel_map = total / counts
    assert np.abs(pixel_map).max() > 1e-3
    np.testing.assert_allclose(explanation.relevance[0].sum(axis=0), pixel_map, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(explanation.relevance[0], np.broadcast_to(pixel_map / 3, SHAPE), rtol=1e-4, atol=1e-6)
