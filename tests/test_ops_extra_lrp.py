"""The wider op registry's LRP roles: TopK routes relevance to the selected elements, CumSum and an Einsum with a
constant weight are linear maps (conserving; Einsum equal to MatMul under every rule), an Einsum of two activations
is no layer, and Sin and nonlinear reductions are named as unsupported while gradients pass (their forwards against
onnxruntime: `test_ops_extra.py`)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain.errors import OnnxplainError
from onnxplain.lrp import LRP, DeepTaylor, unsupported_ops
from onnxplain.targets import Target

RNG = np.random.default_rng(7)
STAB = 1e-6


def const(name, value, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def node(op, inputs=("x",), outputs=("y",), **attributes):
    return helper.make_node(op, list(inputs), list(outputs), **attributes)


def _save(tmp_path, nodes, inits, features, classes=3, name="model") -> onnxplain.Model:
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    onnx.save(proto, tmp_path / f"{name}.onnx")
    return onnxplain.load(tmp_path / f"{name}.onnx")


def _z_rule(x, w, b, relevance):
    """LRP-0 through y = x @ w + b in numpy: R_i = sum_j x_i w_ij / stab(y_j) R_j."""
    z = x @ w + b
    return x * ((relevance / (z + STAB * np.where(z >= 0, 1.0, -1.0))) @ w.T)


def _seed(logits):
    rows = np.arange(len(logits))
    relevance = np.zeros_like(logits)
    relevance[rows, logits.argmax(1)] = logits[rows, logits.argmax(1)]
    return relevance


W1, B1 = RNG.normal(size=(6, 8)), RNG.normal(size=8) * 0.3
W2, B2 = RNG.normal(size=(3, 3)), RNG.normal(size=3) * 0.3
XS = RNG.uniform(-1, 1, size=(7, 6)).astype(np.float32)
W_OUT = RNG.normal(size=(3, 8))


def test_topk_routes_relevance_to_the_selected_elements(tmp_path):
    """x -> Gemm -> TopK(3) values -> Gemm: the values' relevance goes to the three selected hidden units only."""
    nodes = [node("Gemm", ["x", "w1", "b1"], ["h"]), node("TopK", ["h", "k"], ["v", "i"]),
             node("Gemm", ["v", "w2", "b2"], ["logits"])]
    inits = [const("w1", W1), const("b1", B1), const("k", [3], np.int64), const("w2", W2), const("b2", B2)]
    model = _save(tmp_path, nodes, inits, 6)
    assert unsupported_ops(model) == []
    explanation = LRP("lrp-0", progress=False).explain(model, XS)
    assert np.abs(explanation.diagnostics["conservation_error"]).max() < 1e-5
    w1, w2 = W1.astype(np.float32).astype(np.float64), W2.astype(np.float32).astype(np.float64)
    b1, b2 = B1.astype(np.float32).astype(np.float64), B2.astype(np.float32).astype(np.float64)
    x = XS.astype(np.float64)
    h = x @ w1 + b1
    top = np.argsort(-h, 1, kind="stable")[:, :3]
    values = np.take_along_axis(h, top, 1)
    at_values = _z_rule(values, w2, b2, _seed(values @ w2 + b2))
    at_hidden = np.zeros_like(h)
    np.put_along_axis(at_hidden, top, at_values, 1)
    expected = _z_rule(x, w1, b1, at_hidden)
    np.testing.assert_allclose(explanation.relevance, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("attributes", [dict(), dict(exclusive=1, reverse=1)])
def test_cumsum_is_a_linear_map_under_the_z_rule(tmp_path, attributes):
    """Running sums pass relevance by the z-rule: R_i = x_i sum_{j sums i} R_j / z_j; conserving."""
    nodes = [node("CumSum", ["x", "a"], ["c"], **attributes), node("Gemm", ["c", "w", "b"], ["logits"])]
    rng = np.random.default_rng(5)
    w, b = rng.normal(size=(6, 3)), rng.normal(size=3) * 0.3
    model = _save(tmp_path, nodes, [const("a", 1, np.int64), const("w", w), const("b", b)], 6)
    assert unsupported_ops(model) == []
    explanation = LRP("lrp-0", progress=False).explain(model, XS)
    assert np.abs(explanation.diagnostics["conservation_error"]).max() < 1e-5
    assert "CumSum" in {layer["op"] for layer in explanation.diagnostics["layers"][0]}
    x = XS.astype(np.float64)
    sums = np.triu(np.ones((6, 6)))                              # c = x @ sums: c_j = sum_{i <= j} x_i
    if attributes:
        sums = np.tril(np.ones((6, 6)), -1)                      # exclusive, reversed: c_j = sum_{i > j} x_i
    w, b = w.astype(np.float32).astype(np.float64), b.astype(np.float32).astype(np.float64)
    at_sums = _z_rule(x @ sums, w, b, _seed(x @ sums @ w + b))
    np.testing.assert_allclose(explanation.relevance, _z_rule(x, sums, 0, at_sums), rtol=1e-4, atol=1e-6)


def _dense_pair(tmp_path, first: str) -> onnxplain.Model:
    """x -> (Einsum 'bi,ih->bh' | MatMul) with W1 -> Relu -> Gemm."""
    layer = node("Einsum", ["x", "w1"], ["h"], equation="bi,ih->bh") if first == "Einsum" else \
        node("MatMul", ["x", "w1"], ["h"])
    nodes = [layer, node("Relu", ["h"], ["r"]), node("Gemm", ["r", "w2", "b2"], ["logits"], transB=1)]
    return _save(tmp_path, nodes, [const("w1", W1), const("w2", W_OUT), const("b2", B2)], 6, name=first)


METHODS = {  # (Einsum model's method, MatMul model's method): the composites, and each rule on the layer itself
    "epsilon-plus": lambda op: LRP("epsilon-plus", progress=False),
    "lrp-0": lambda op: LRP("lrp-0", progress=False),
    "deep-taylor (w2 first)": lambda op: DeepTaylor(progress=False),
    "deep-taylor (zb first)": lambda op: DeepTaylor(low=-1.0, high=1.0, progress=False),
    **{rule: (lambda op, rule=rule: LRP("lrp-0", rules={op: rule}, progress=False))
       for rule in ("zplus", "alphabeta:2,1", "gamma", "flat", "epsilon:0.25")},
}


@pytest.mark.parametrize("method", METHODS)
def test_einsum_with_a_constant_weight_is_the_dense_layer_matmul_is(tmp_path, method):
    einsum, matmul = _dense_pair(tmp_path, "Einsum"), _dense_pair(tmp_path, "MatMul")
    assert unsupported_ops(einsum) == []
    got = METHODS[method]("Einsum").explain(einsum, XS)
    want = METHODS[method]("MatMul").explain(matmul, XS)
    np.testing.assert_allclose(got.relevance, want.relevance, rtol=1e-5, atol=1e-6 * np.abs(want.relevance).max())
    rules = [[layer["rule"] for layer in e.diagnostics["layers"][0]] for e in (got, want)]
    assert rules[0] == rules[1]
    if method == "lrp-0":
        assert np.abs(got.diagnostics["conservation_error"]).max() < 1e-5


def test_einsum_over_a_batched_weight_conserves(tmp_path):
    """'...i,ci->...c' on (N, 6) reshaped to (N, 2, 3) with a weight per output channel: relevance is conserved."""
    nodes = [node("Reshape", ["x", "s"], ["x3"]), node("Einsum", ["x3", "w"], ["e"], equation="...i,ci->...c"),
             node("Flatten", ["e"], ["f"]), node("Gemm", ["f", "w2"], ["logits"])]
    rng = np.random.default_rng(6)
    inits = [const("s", [-1, 2, 3], np.int64), const("w", rng.normal(size=(4, 3))),
             const("w2", rng.normal(size=(8, 3)))]
    model = _save(tmp_path, nodes, inits, 6, name="batched")
    explanation = LRP("lrp-0", progress=False).explain(model, XS)
    assert np.abs(explanation.diagnostics["conservation_error"]).max() < 1e-5
    total = explanation.relevance.sum(1) + np.array(explanation.diagnostics["stabiliser_relevance"])
    np.testing.assert_allclose(total, explanation.score, rtol=1e-5)


def test_einsum_of_two_activations_or_weight_first_is_no_layer(tmp_path):
    nodes = [node("Einsum", ["w", "x"], ["a"], equation="ih,bi->bh"), node("Einsum", ["a", "a"], ["h"],
                                                                           equation="bh,bh->bh"),
             node("Gemm", ["h", "w2"], ["logits"])]
    model = _save(tmp_path, nodes, [const("w", W1), const("w2", W_OUT.T)], 6, name="bilinear")
    assert unsupported_ops(model) == ["Einsum (a)", "Einsum (h), a product of two activations"]


def _through(tmp_path, op, **attributes) -> onnxplain.Model:
    """x (N, 4) -> Unsqueeze -> op (named the_node) -> Flatten -> Gemm: a node LRP has no rule for, mid-network."""
    nodes = [node("Unsqueeze", ["x", "axis"], ["x3"]), helper.make_node(op, ["x3"], ["h"], name="the_node",
                                                                         **attributes),
             node("Flatten", ["h"], ["flat"]), node("Gemm", ["flat", "w"], ["logits"])]
    inits = [const("axis", [1], np.int64), const("w", W1[:4, :3])]
    return _save(tmp_path, nodes, inits, 4, name=op)


def test_sin_is_named_unsupported_by_lrp_while_gradients_pass(tmp_path):
    model = _through(tmp_path, "Sin")
    executor = model.torch()
    assert executor.graph is not None, executor.problem
    assert unsupported_ops(model) == ["Sin (the_node)"]
    x = XS[:, :4] * 3
    grad, _ = executor.gradient(x, Target(index=2))
    weight = numpy_helper.to_array(next(t for t in model.proto.graph.initializer if t.name == "w"))
    np.testing.assert_allclose(grad, np.cos(x) * weight[:, 2], rtol=1e-5, atol=1e-6)
    with pytest.raises(OnnxplainError, match=r"LRP cannot pass Sin \(the_node\)"):
        LRP(progress=False).explain(model, x)


def test_nonlinear_reductions_are_named_unsupported_by_lrp(tmp_path):
    model = _through(tmp_path, "ReduceL2", axes=[1])
    assert model.torch().graph is not None
    assert unsupported_ops(model) == ["ReduceL2 (the_node)"]


def test_a_constant_left_operand_is_the_dense_layer_of_the_transposed_product(tmp_path):
    """W @ x (W constant) is a dense layer mixing x's rows: LRP equals that of the same map written as
    (x^T @ W^T)^T, for every composite (it was refused: no relevance rule), and conserves."""
    weight, head = RNG.normal(size=(5, 4)), RNG.normal(size=(15, 3))
    tail = [node("Relu", ["a"], ["r"]), node("Flatten", ["r"], ["f"]), node("MatMul", ["f", "g"], ["logits"])]

    def saved(name, nodes, inits):
        graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 3])],
                                  [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])], inits)
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / f"{name}.onnx")
        return onnxplain.load(tmp_path / f"{name}.onnx")

    left = saved("left", [node("MatMul", ["w", "x"], ["a"])] + tail, [const("w", weight), const("g", head)])
    right = saved("right", [node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]), node("MatMul", ["xt", "wt"], ["at"]),
                            node("Transpose", ["at"], ["a"], perm=[0, 2, 1])] + tail,
                  [const("wt", weight.T), const("g", head)])
    assert unsupported_ops(left) == []
    x = RNG.normal(size=(3, 4, 3)).astype(np.float32)
    for composite in ("lrp-0", "epsilon-plus", "epsilon-alpha2-beta1", "deep-taylor"):
        ours = LRP(composite=composite, progress=False).explain(left, x)
        reference = LRP(composite=composite, progress=False).explain(right, x)
        np.testing.assert_allclose(ours.relevance, reference.relevance, rtol=1e-5, atol=1e-7)
        assert np.abs(ours.diagnostics["conservation_error"]).max() < 1e-5
