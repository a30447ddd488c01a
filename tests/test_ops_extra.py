"""The wider op registry: nonlinear reductions, CumSum, elementwise math, comparisons and logic, ArgMax/ArgMin, TopK,
ArrayFeatureExtractor and Einsum against onnxruntime (at the opsets where their attributes moved), and their LRP
roles: TopK routes and CumSum and a constant-weight Einsum are linear maps (conserving; Einsum equal to MatMul),
while Sin and nonlinear reductions are named as unsupported and still give gradients."""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from devices import DEVICE, on_device, to_numpy
import onnxplain
from onnxplain.errors import OnnxplainError
from onnxplain.lrp import LRP, DeepTaylor, unsupported_ops
from onnxplain.ops.graph import Graph
from onnxplain.targets import Target

RNG = np.random.default_rng(7)
X4 = RNG.normal(size=(2, 3, 5, 4)).astype(np.float32)
TIES = np.round(RNG.normal(size=(3, 4, 6)) * 1.5).astype(np.float32)  # few distinct values: many ties
STAB = 1e-6


def const(name, value, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def node(op, inputs=("x",), outputs=("y",), **attributes):
    domain = "ai.onnx.ml" if op == "ArrayFeatureExtractor" else ""
    return helper.make_node(op, list(inputs), list(outputs), domain=domain, **attributes)


def check(nodes, x, opset, initializers=(), outputs=("y",), unordered_axis=None):
    """Run the nodes by the registry's `Graph` and by onnxruntime; floats to 1e-5, the rest exactly. With
    `unordered_axis`, outputs are compared after sorting both by the (last) index output along that axis."""
    graph = helper.make_graph(nodes, "case", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_empty_tensor_value_info(o) for o in outputs], list(initializers))
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                    helper.make_opsetid("ai.onnx.ml", 1)])
    proto.ir_version = 8
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    want = session.run(list(outputs), {"x": x})
    found = Graph(proto, DEVICE).run({"x": on_device(x)}, list(outputs))
    got = [to_numpy(found[o]) for o in outputs]
    if unordered_axis is not None:
        order = [np.argsort(got[-1], unordered_axis), np.argsort(want[-1], unordered_axis)]
        got = [np.take_along_axis(g, order[0], unordered_axis) for g in got]
        want = [np.take_along_axis(w, order[1], unordered_axis) for w in want]
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, w.shape, g.dtype, w.dtype)
        if np.issubdtype(w.dtype, np.floating):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
        else:
            np.testing.assert_array_equal(g, w)


# ---------------------------------------------------------------- forward against onnxruntime
REDUCTIONS = ["ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp", "ReduceProd"]


@pytest.mark.parametrize("op", REDUCTIONS)
@pytest.mark.parametrize("opset, attributes, axes", [
    (13, dict(axes=[1, -1]), None), (13, dict(axes=[2], keepdims=0), None), (11, dict(), None),
    (18, dict(), [-2, 0]), (18, dict(keepdims=0), [3]), (18, dict(), None),
    (18, dict(noop_with_empty_axes=1), []), (18, dict(noop_with_empty_axes=1), None), (18, dict(), []),
])
def test_reductions(op, opset, attributes, axes):
    x = np.abs(X4) + 0.5 if op == "ReduceLogSum" else X4
    extra = [] if axes is None else [const("a", axes, np.int64)]
    check([node(op, ["x"] + [t.name for t in extra], **attributes)], x, opset, extra)


@pytest.mark.parametrize("opset", [11, 14])
@pytest.mark.parametrize("axis, attributes", [
    (np.array(1, np.int64), dict()), (np.array([-1], np.int64), dict(exclusive=1)),
    (np.array(2, np.int32), dict(reverse=1)), (np.array([0], np.int32), dict(exclusive=1, reverse=1)),
])
def test_cumsum(opset, axis, attributes):
    check([node("CumSum", ["x", "a"], **attributes)], X4, opset, [numpy_helper.from_array(axis, "a")])


def test_cumsum_of_integers_keeps_their_type():
    nodes = [node("Cast", ["x"], ["i"], to=TensorProto.INT32), node("CumSum", ["i", "a"], exclusive=1)]
    check(nodes, X4 * 10, 14, [const("a", 2, np.int64)])


UNARY = {"Sin": X4 * 3, "Cos": X4 * 3, "Tan": X4, "Asin": np.tanh(X4), "Acos": np.tanh(X4), "Atan": X4 * 3,
         "Sinh": X4, "Cosh": X4, "Asinh": X4 * 3, "Acosh": np.abs(X4) + 1.01, "Atanh": np.tanh(X4) * 0.99,
         "Reciprocal": np.abs(X4) + 0.1, "Sign": np.round(X4), "Floor": X4 * 3, "Ceil": X4 * 3,
         "Round": np.concatenate([np.round(X4 * 2) / 2, X4 * 3]),  # halves round to even
         "Not": None, "IsNaN": None}


@pytest.mark.parametrize("op", UNARY)
@pytest.mark.parametrize("opset", [11, 13, 22])
def test_unary(op, opset):
    if op == "Not":
        check([node("Greater", ["x", "z"], ["b"]), node("Not", ["b"])], X4, opset, [const("z", 0.0)])
        return
    if op == "IsNaN":
        x = np.where(X4 > 1, np.nan, X4).astype(np.float32)
        check([node("IsNaN")], x, opset)
        return
    check([node(op)], UNARY[op].astype(np.float32), opset)


@pytest.mark.parametrize("opset, attributes", [(10, {}), (20, dict(detect_negative=0)),
                                               (20, dict(detect_positive=0)), (10, dict(detect_positive=0,
                                                                                       detect_negative=0))])
def test_isinf(opset, attributes):
    x = np.where(X4 > 1, np.inf, np.where(X4 < -1, -np.inf, X4)).astype(np.float32)
    check([node("IsInf", **attributes)], x, opset)


@pytest.mark.parametrize("opset", [10, 13])
def test_mod(opset):
    """fmod=1 on floats (onnxruntime refuses fmod=0 there before opset 28); integers both ways, signs mixed."""
    divisors = const("d", [2.5, -1.5, 0.75, -3.0])
    check([node("Mod", ["x", "d"], fmod=1)], X4 * 5, opset, [divisors])
    for fmod in (0, 1):
        nodes = [node("Cast", ["x"], ["i"], to=TensorProto.INT64), node("Mod", ["i", "n"], ["m"], fmod=fmod),
                 node("Cast", ["m"], to=TensorProto.FLOAT)]
        check(nodes, X4 * 20, opset, [const("n", [3, -4, 5, -7], np.int64)])


@pytest.mark.parametrize("opset", [7, 9, 13, 16])
@pytest.mark.parametrize("logic", ["And", "Or", "Xor"])
def test_comparisons_and_logic(opset, logic):
    compare = ["Less", "Greater"] + (["LessOrEqual", "GreaterOrEqual"] if opset >= 12 else [])
    x = np.round(X4)  # equal operands occur, so < and <= differ
    nodes = [node(op, ["x", "c"], [op]) for op in compare]
    nodes += [node(logic, ["Less", "Greater"], ["y"])]
    check(nodes, x, opset, [const("c", [[0.0], [1.0], [-1.0], [0.0], [2.0]])], outputs=("y", *compare))


@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("opset, attributes", [
    (11, dict()), (11, dict(axis=-1, keepdims=0)), (12, dict(axis=1, select_last_index=1)),
    (13, dict(axis=2, keepdims=0, select_last_index=1)), (13, dict(axis=-2, select_last_index=0)),
])
def test_arg_extrema_pick_among_ties_as_onnxruntime(op, opset, attributes):
    check([node(op, **attributes)], TIES, opset)


@pytest.mark.parametrize("opset, attributes, k", [
    (9, dict(k=3), None), (10, dict(axis=1), 2), (11, dict(largest=0), 4), (11, dict(axis=-3, largest=1), 3),
    (13, dict(axis=1, largest=0), 4), (13, dict(), 6),
])
def test_topk_orders_ties_by_index(opset, attributes, k):
    extra = [] if k is None else [const("k", [k], np.int64)]
    check([node("TopK", ["x"] + [t.name for t in extra], ["v", "i"], **attributes)], TIES, opset, extra,
          outputs=("v", "i"))


def test_topk_unsorted_selects_the_same_elements():
    """sorted=0 leaves the order open (onnxruntime returns heap order): the same elements, in some order."""
    x = np.random.default_rng(0).permutation(48).reshape(3, 4, 4).astype(np.float32)  # distinct: one selection
    check([node("TopK", ["x", "k"], ["v", "i"], axis=1, sorted=0)], x, 11, [const("k", [3], np.int64)],
          outputs=("v", "i"), unordered_axis=1)


@pytest.mark.parametrize("indices", [[3, 0, 3], [[1, 2]], 2])
def test_array_feature_extractor(indices):
    check([node("ArrayFeatureExtractor", ["x", "i"])], X4, 13, [const("i", indices, np.int64)])
    check([node("Reshape", ["x", "s"], ["flat"]), node("ArrayFeatureExtractor", ["flat", "i"])], X4, 13,
          [const("s", [-1], np.int64), const("i", indices, np.int64)])   # 1-D data: one row


@pytest.mark.parametrize("axis, shape", [(1, (2, 2, 5, 4)), (-1, (1, 3, 2, 6)), (0, (2, 3, 5, 1))])
def test_gather_elements(axis, shape):
    size = X4.shape[axis]
    index = np.random.default_rng(7).integers(-size, size, size=shape)   # negative indices count from the end
    check([node("GatherElements", ["x", "i"], axis=axis)], X4, 13, [const("i", index, np.int64)])


@pytest.mark.parametrize("equation, second", [
    ("bchw,wk->bchk", (4, 3)), ("b c h w , c d -> b d h w", (3, 2)), ("...w,wk", (4, 5)), ("...hw,hw->...", (5, 4)),
    ("bchw,ck->bkw", (3, 2)), ("bchw,bchw->bc", None), ("bchw,bcvw->bchv", None), ("bcii->bc", "one"),
])
def test_einsum(equation, second):
    if second is None:
        check([node("Einsum", ["x", "x"], equation=equation)], X4, 12)
    elif second == "one":
        check([node("Einsum", ["x"], equation=equation)], X4[:, :, :4, :4].copy(), 13)
    else:
        weight = np.random.default_rng(1).normal(size=second)
        check([node("Einsum", ["x", "w"], equation=equation)], X4, 13, [const("w", weight)])


def test_mlp_classifier_from_scikit_learn_runs_in_the_registry(tmp_path):
    """skl2onnx writes ArgMax and ArrayFeatureExtractor for the label: the model no longer needs onnx2torch, and its
    class scores get LRP."""
    from sklearn.datasets import load_iris
    from sklearn.neural_network import MLPClassifier

    from onnxplain.converters import convert_sklearn

    X, y = load_iris(return_X_y=True)
    X = X.astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        classifier = MLPClassifier(hidden_layer_sizes=(6,), max_iter=200, random_state=0).fit(X, y)
    convert_sklearn(classifier, tmp_path / "mlp.onnx", samples=X[:20])
    assert {"ArgMax", "ArrayFeatureExtractor"} <= {n.op_type for n in onnx.load(tmp_path / "mlp.onnx").graph.node}
    model = onnxplain.load(tmp_path / "mlp.onnx")
    executor = model.torch()
    assert executor.graph is not None, executor.problem
    assert unsupported_ops(model) == []
    explanation = LRP("lrp-0", progress=False).explain(model, X[::15])
    assert np.abs(explanation.diagnostics["conservation_error"]).max() < 1e-5


# ---------------------------------------------------------------- LRP roles
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


@pytest.mark.parametrize("transform", ["asymmetric", "half_pixel", "align_corners", "pytorch_half_pixel",
                                       "tf_half_pixel_for_nn"])
@pytest.mark.parametrize("rounding", ["floor", "ceil", "round_prefer_floor", "round_prefer_ceil"])
def test_nearest_resize_in_every_coordinate_and_rounding_mode(transform, rounding):
    attributes = dict(mode="nearest", coordinate_transformation_mode=transform, nearest_mode=rounding)
    for scales in ([1, 1, 2, 3], [1, 1, 1.5, 0.6], [1, 1, 0.5, 2.5], [1, 1, 1, 2]):   # scale 1: as it is
        check([node("Resize", ["x", "", "scales"], **attributes)], X4, 13, [const("scales", scales)])
    for sizes in ([2, 3, 7, 9], [2, 3, 5, 9]):
        check([node("Resize", ["x", "", "", "sizes"], **attributes)], X4, 13, [const("sizes", sizes, np.int64)])


def test_nearest_upsample_of_opset_7_runs_in_the_registry_and_lrp_passes_it(tmp_path):
    """Upsample at opset 7 is upgraded to a Resize with half-pixel coordinates and ties rounded down."""
    nodes = [node("Upsample", ["x"], ["up"], mode="nearest", scales=[1.0, 1.0, 2.0, 2.0]),
             node("Reshape", ["up", "shape"], ["flat"]), node("Gemm", ["flat", "w", "b"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "up", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 3, 3])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
                              [const("shape", [0, -1], np.int64), const("w", RNG.normal(size=(4, 72))),
                               const("b", np.zeros(4))])
    path = tmp_path / "upsample7.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 7)], ir_version=4), path)
    model = onnxplain.load(path)
    assert model.torch().graph is not None and unsupported_ops(model) == []
    report = LRP(progress=False).explain(model, RNG.normal(size=(3, 2, 3, 3)).astype(np.float32)).diagnostics
    assert np.abs(report["conservation_error"]).max() <= 1e-5


def test_every_elementwise_op_is_in_the_lists_that_name_ops_by_type():
    """The op lists kept by type (pointwise for incremental crops, samplewise for the ledger's batch axis, layout-
    keeping or channels-at-1 for hidden targets' channel axis, axis-keeping on the way to a sequence's first
    convolution) name every registered elementwise op: Mish, added to the registry alone, missed two of them and
    quietly took the slower generic paths."""
    from onnxplain.incremental import POINTWISE
    from onnxplain.lrp.layout import SAMPLEWISE
    from onnxplain.ops import REGISTRY
    from onnxplain.ops.activations import Elementwise
    from onnxplain.sequences import KEEP_AXES
    from onnxplain.targets import CHANNELS_AT_1, KEEP_LAYOUT

    elementwise = {op_type for (domain, op_type), op in REGISTRY.items()
                   if domain == "" and issubclass(op, Elementwise)}
    assert {"Relu", "Mish", "Gelu"} <= elementwise
    for listed in (POINTWISE, SAMPLEWISE, KEEP_LAYOUT | CHANNELS_AT_1, KEEP_AXES):   # LRN: channels at axis 1
        assert elementwise <= listed, sorted(elementwise - listed)
