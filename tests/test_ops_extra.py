"""The wider op registry: nonlinear reductions, CumSum, elementwise math, comparisons and logic, ArgMax/ArgMin, TopK,
ArrayFeatureExtractor, Einsum and nearest Resize against onnxruntime (at the opsets where their attributes moved),
and the op lists kept by type (their LRP roles: `test_ops_extra_lrp.py`)."""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from devices import DEVICE, on_device, to_numpy
import onnxplain
from onnxplain.lrp import LRP, unsupported_ops
from onnxplain.ops.graph import Graph

RNG = np.random.default_rng(7)
X4 = RNG.normal(size=(2, 3, 5, 4)).astype(np.float32)
TIES = np.round(RNG.normal(size=(3, 4, 6)) * 1.5).astype(np.float32)  # few distinct values: many ties


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
