"""Per-channel affine maps after a convolution (y / constant, y - constant), folded into it by the canonizer: LRP
equals LRP of the same net with the map folded into the convolution by hand in numpy (zennit's MergeBatchNorm
idea). z+ reads the sign of each folded weight and bias, so a wrong fold shows in the map. constant - y is not
folded; folded as y - constant it would change the explained score itself."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain.lrp import LRP

RNG = np.random.default_rng(4)
WEIGHT, BIAS = RNG.normal(size=(4, 2, 3, 3)), RNG.normal(size=4) * 0.3
CONSTANT = np.array([0.5, 2.0, 1.5, 0.8]).reshape(1, 4, 1, 1)

FOLDS = {  # the follower op, its inputs, and the (weight, bias) of the convolution with it folded in
    "divide by a constant": ("Div", ["y", "c"], (WEIGHT / CONSTANT.reshape(4, 1, 1, 1), BIAS / CONSTANT.ravel())),
    "y minus a constant": ("Sub", ["y", "c"], (WEIGHT, BIAS - CONSTANT.ravel())),
}


def conv_net(path, weight, bias, follower=None) -> onnxplain.Model:
    """x -> Conv [-> follower(y, c)] -> GlobalAveragePool -> Flatten -> logits (4 classes)."""
    inits = [numpy_helper.from_array(weight.astype(np.float32), "w"),
             numpy_helper.from_array(bias.astype(np.float32), "b"),
             numpy_helper.from_array(CONSTANT.astype(np.float32), "c")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    features = "y"
    if follower is not None:
        op_type, inputs = follower
        nodes.append(helper.make_node(op_type, inputs, ["affine"], name="affine"))
        features = "affine"
    nodes += [helper.make_node("GlobalAveragePool", [features], ["pooled"]),
              helper.make_node("Flatten", ["pooled"], ["logits"])]
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 5, 5])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return onnxplain.load(path)


@pytest.mark.parametrize("fold", FOLDS)
def test_lrp_of_a_folded_affine_map_equals_the_hand_folded_convolution(fold, tmp_path):
    op_type, inputs, (weight, bias) = FOLDS[fold]
    model = conv_net(tmp_path / "net.onnx", WEIGHT, BIAS, (op_type, inputs))
    folded = conv_net(tmp_path / "folded.onnx", weight, bias)
    x = RNG.uniform(-1, 1, size=(3, 2, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(model.logits(x), folded.logits(x), rtol=1e-5, atol=1e-5)   # the fold keeps f
    lrp = LRP("lrp-0", rules={"Conv": "zplus"}, progress=False)
    got, want = lrp.explain(model, x), lrp.explain(folded, x)
    np.testing.assert_array_equal(got.target, want.target)
    np.testing.assert_allclose(got.score, want.score, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got.relevance, want.relevance, rtol=1e-4, atol=1e-5 * np.abs(want.relevance).max())


def test_constant_minus_y_explains_the_models_own_score(tmp_path):
    model = conv_net(tmp_path / "net.onnx", WEIGHT, BIAS, ("Sub", ["c", "y"]))
    x = RNG.uniform(-1, 1, size=(3, 2, 5, 5)).astype(np.float32)
    explanation = LRP("lrp-0", rules={"Conv": "zplus"}, progress=False).explain(model, x)
    logits = model.logits(x)
    np.testing.assert_array_equal(explanation.target, logits.argmax(axis=1))
    np.testing.assert_allclose(explanation.score, logits.max(axis=1), rtol=1e-5, atol=1e-5)
