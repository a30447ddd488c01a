"""BatchNormalization and the per-channel maps exporters write out around convolutions: merged into the
convolution where they scale its channels (also across a Transpose), kept as an affine layer of their own where
they do not (another axis, statistics per value), and LRP conserves either way."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain.lrp import LRP


def test_a_bias_and_batchnorm_behind_a_transpose_merge_into_the_convolution(tmp_path):
    """Keras on torch (onnxplain convert keras) writes Conv -> Transpose to channels last -> bias Add -> BatchNorm
    written out (Sub, Mul, Add) -> Relu -> Transpose back. The per-channel maps merge into the convolution across
    the Transpose, so LRP equals that of the same net with them folded into the convolution's weights (as
    tf2onnx's export of the same Keras model has them), not a z-rule share per written-out op."""
    rng = np.random.default_rng(0)
    weight, bias = rng.normal(size=(2, 1, 3, 3)).astype(np.float32), rng.normal(size=2).astype(np.float32)
    mean, scale, shift = (rng.normal(size=2).astype(np.float32) for _ in range(3))
    dense = rng.normal(size=(32, 3)).astype(np.float32)

    def save(name, nodes, initializers):
        graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 6, 6])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                                  [numpy_helper.from_array(v, k) for k, v in initializers.items()])
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        proto.ir_version = 8
        onnx.save(proto, tmp_path / f"{name}.onnx")
        return onnxplain.load(tmp_path / f"{name}.onnx")

    head = [helper.make_node("Relu", ["h"], ["r"]), helper.make_node("Flatten", ["r"], ["f"]),
            helper.make_node("MatMul", ["f", "d"], ["y"])]
    written = save("written", [helper.make_node("Conv", ["x", "w"], ["c"]),
                               helper.make_node("Transpose", ["c"], ["t"], perm=[0, 2, 3, 1]),
                               helper.make_node("Add", ["t", "b"], ["a"]), helper.make_node("Sub", ["a", "m"], ["s"]),
                               helper.make_node("Mul", ["s", "k"], ["p"]), helper.make_node("Add", ["p", "o"], ["q"]),
                               helper.make_node("Transpose", ["q"], ["h"], perm=[0, 3, 1, 2])] + head,
                   {"w": weight, "b": bias, "m": mean, "k": scale, "o": shift, "d": dense})
    folded = save("folded", [helper.make_node("Conv", ["x", "w", "b"], ["h"])] + head,
                  {"w": weight * scale[:, None, None, None], "b": (bias - mean) * scale + shift, "d": dense})
    x = rng.random((4, 1, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(written.logits(x), folded.logits(x), rtol=1e-5, atol=1e-6)
    for composite in ("epsilon-plus", "lrp-0", "epsilon-gamma-box"):
        box = {"low": 0.0, "high": 1.0} if composite == "epsilon-gamma-box" else {}
        ours = LRP(composite, progress=False, **box).explain(written, x)
        want = LRP(composite, progress=False, **box).explain(folded, x)
        np.testing.assert_allclose(ours.relevance, want.relevance, rtol=1e-4, atol=1e-6 * np.abs(want.relevance).max())
        assert [layer["op"] for layer in ours.diagnostics["layers"][0]] == ["Conv", "MatMul"]


def test_a_batchnorm_behind_a_transpose_keeps_its_own_axis(tmp_path):
    """ONNX BatchNormalization normalises axis 1: behind a Transpose to channels last that is a spatial axis, not
    the convolution's channels (here both 4 long), so it must not merge into the convolution (LRP then explained
    another value than the model's logit)."""
    rng = np.random.default_rng(0)
    stats = {k: rng.uniform(0.5, 1.5, 4).astype(np.float32) for k in ("g", "bb", "mu", "var")}
    initializers = {"w": rng.normal(size=(4, 1, 3, 3)).astype(np.float32), **stats,
                    "d": rng.normal(size=(64, 3)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Transpose", ["c"], ["t"], perm=[0, 2, 3, 1]),
             helper.make_node("BatchNormalization", ["t", "g", "bb", "mu", "var"], ["n"]),
             helper.make_node("Transpose", ["n"], ["h"], perm=[0, 3, 1, 2]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]), helper.make_node("MatMul", ["f", "d"], ["y"])]
    graph = helper.make_graph(nodes, "bn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                              [numpy_helper.from_array(v, k) for k, v in initializers.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    onnx.save(proto, tmp_path / "bn.onnx")
    model = onnxplain.load(tmp_path / "bn.onnx")
    x = rng.random((3, 1, 4, 4)).astype(np.float32)
    explanation = LRP(progress=False).explain(model, x)
    logits = model.logits(x)
    np.testing.assert_allclose(explanation.score, logits[np.arange(3), explanation.target], rtol=1e-5)
    assert np.abs(explanation.diagnostics["conservation_error"]).max() < 1e-5


@pytest.mark.parametrize("after_conv", [True, False])
def test_a_batchnorm_with_statistics_per_value_is_no_per_channel_map(tmp_path, after_conv):
    """BatchNormalization at opset 7 with spatial=0 has statistics per (channel, position), and the version converter
    cannot upgrade it. Merging it into the convolution before it crashed (no per-channel vector to fold), on its own
    its layer broadcast the values along the channel axis, and the scaling after it could not fold into it; it stays
    an affine layer of its own shape, and the scaling passes relevance."""
    rng = np.random.default_rng(0)
    statistics = {"s": rng.uniform(0.5, 1.5, (2, 4, 4)), "o": rng.normal(size=(2, 4, 4)),
                  "m": rng.normal(size=(2, 4, 4)), "v": rng.uniform(0.5, 1.5, (2, 4, 4))}
    initializers = {**statistics, "two": 2.0, "w": rng.normal(size=(2, 1, 3, 3)), "d": rng.normal(size=(32, 3))}
    first = helper.make_node("Conv", ["x", "w"], ["h"]) if after_conv else helper.make_node("Relu", ["x"], ["h"])
    nodes = [first, helper.make_node("BatchNormalization", ["h", "s", "o", "m", "v"], ["n"], spatial=0),
             helper.make_node("Mul", ["n", "two"], ["scaled"]), helper.make_node("Flatten", ["scaled"], ["f"]),
             helper.make_node("MatMul", ["f", "d"], ["y"])]
    shape = ["N", 1, 6, 6] if after_conv else ["N", 2, 4, 4]
    graph = helper.make_graph(nodes, "bn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                              [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in initializers.items()
                               if after_conv or k != "w"])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 7)], ir_version=4), tmp_path / "b.onnx")
    model = onnxplain.load(tmp_path / "b.onnx")
    x = rng.normal(size=(3, *shape[1:])).astype(np.float32)
    for composite in ("lrp-0", "epsilon-plus"):
        explanation = LRP(composite, progress=False).explain(model, x)
        assert "BatchNormalization" in [layer["op"] for layer in explanation.diagnostics["layers"][0]]
        assert np.abs(explanation.diagnostics["conservation_error"]).max() < 1e-5
