"""Op by op against onnxruntime, at the opset revisions where attributes moved to inputs (7 to 22).

Each case is a one-node (or few-node) graph run by the executor's `Graph` straight from the proto (no
normalisation, so old opsets keep their attribute forms) and by an onnxruntime session on the same proto.
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from devices import DEVICE, on_device, to_numpy
from onnxplain.ops.graph import Graph

RNG = np.random.default_rng(0)
X4 = RNG.normal(size=(2, 4, 7, 6)).astype(np.float32)
X3 = RNG.normal(size=(2, 6, 5)).astype(np.float32)
X2 = RNG.normal(size=(3, 6)).astype(np.float32)


def const(name, value, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def run_both(nodes, x, opset, initializers=(), outputs=("y",), domain_opsets=()):
    graph = helper.make_graph(nodes, "case", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_empty_tensor_value_info(o) for o in outputs], list(initializers))
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in domain_opsets]
    proto = helper.make_model(graph, opset_imports=opsets)
    proto.ir_version = 8
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    want = session.run(list(outputs), {"x": x})
    got = Graph(proto, DEVICE).run({"x": on_device(x)}, list(outputs))
    return [got[o] for o in outputs], want


def check(nodes, x, opset, initializers=(), outputs=("y",), **kwargs):
    got, want = run_both(nodes, x, opset, initializers, outputs, **kwargs)
    for g, w in zip(got, want):
        g = to_numpy(g)
        assert g.shape == w.shape, (g.shape, w.shape)
        if np.issubdtype(w.dtype, np.floating):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
        else:
            np.testing.assert_array_equal(g, w)


def node(op, inputs=("x",), outputs=("y",), **attributes):
    return helper.make_node(op, list(inputs), list(outputs), **attributes)


W = const("w", RNG.normal(size=(6, 2, 3, 3)))
B = const("b", RNG.normal(size=6))


@pytest.mark.parametrize("attributes", [
    dict(auto_pad="SAME_UPPER", strides=[2, 2]), dict(auto_pad="SAME_LOWER", strides=[2, 1]),
    dict(auto_pad="VALID", dilations=[2, 1]), dict(pads=[0, 1, 2, 1], strides=[1, 2]), dict(pads=[1, 1, 1, 1]),
])
def test_conv(attributes):
    check([node("Conv", ["x", "w", "b"], group=2, **attributes)], X4, 11, [W, B])


@pytest.mark.parametrize("attributes", [
    dict(strides=[2, 2], pads=[1, 0, 0, 1], output_padding=[1, 0]), dict(strides=[2, 3], output_shape=[15, 17]),
    dict(strides=[2, 2], auto_pad="SAME_UPPER"), dict(strides=[2, 2], auto_pad="SAME_LOWER", dilations=[2, 1]),
])
def test_conv_transpose(attributes):
    weight = const("wt", RNG.normal(size=(4, 3, 3, 3)))
    check([node("ConvTranspose", ["x", "wt", "b3"], group=2, **attributes)], X4, 13,
          [weight, const("b3", RNG.normal(size=6))])


@pytest.mark.parametrize("attributes", [
    dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1), dict(kernel_shape=[2, 3], pads=[1, 0, 0, 2]),
    dict(kernel_shape=[3, 2], dilations=[2, 1], strides=[1, 2]), dict(kernel_shape=[3, 3], auto_pad="SAME_UPPER"),
])
def test_max_pool(attributes):
    check([node("MaxPool", **attributes)], X4, 12)


def test_max_pool_indices():
    check([node("MaxPool", outputs=["y", "i"], kernel_shape=[2, 2], strides=[2, 2])], X4, 12, outputs=("y", "i"))


@pytest.mark.parametrize("attributes", [
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1),
    dict(kernel_shape=[2, 3], pads=[0, 2, 1, 0]), dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
    dict(kernel_shape=[2, 2], auto_pad="SAME_LOWER", count_include_pad=1),
])
def test_average_pool(attributes):
    check([node("AveragePool", **attributes)], X4, 11)


def test_average_pool_dilations_opset19():
    check([node("AveragePool", kernel_shape=[2, 2], dilations=[2, 2], pads=[1, 0, 1, 1])], X4, 19)


@pytest.mark.parametrize("op, opset, attributes, extra", [
    ("ReduceMean", 13, dict(axes=[2, 3]), []), ("ReduceMean", 18, dict(keepdims=0), [const("a", [-1], np.int64)]),
    ("ReduceSum", 13, dict(), [const("a", [1], np.int64)]), ("ReduceMax", 13, dict(axes=[1], keepdims=0), []),
    ("ReduceMin", 18, dict(), []), ("GlobalAveragePool", 13, dict(), []), ("GlobalMaxPool", 13, dict(), []),
])
def test_reductions(op, opset, attributes, extra):
    inputs = ["x"] + [t.name for t in extra]
    check([node(op, inputs, **attributes)], X4, opset, extra)


@pytest.mark.parametrize("nodes, opset, extra", [
    ([node("Slice", starts=[1, -3], ends=[100, -1], axes=[1, 3])], 9, []),
    ([node("Slice", ["x", "s", "e", "a", "t"])], 13,
     [const("s", [-1, 5], np.int64), const("e", [-100, 0], np.int64), const("a", [1, 2], np.int64),
      const("t", [-2, -2], np.int64)]),
    ([node("Pad", mode="reflect", pads=[0, 0, 1, 2, 0, 0, 2, 1])], 2, []),
    ([node("Pad", ["x", "p", "v"], mode="constant")], 11,
     [const("p", [0, 1, -1, 0, 0, 0, 2, 1], np.int64), const("v", 0.5)]),
    ([node("Pad", ["x", "p", "", "a"], mode="edge")], 18, [const("p", [1, 2, 0, 3], np.int64),
                                                          const("a", [2, 3], np.int64)]),
    ([node("Pad", ["x", "p"], mode="wrap")], 19, [const("p", [0, 0, 1, 2, 0, 0, 2, 1], np.int64)]),
    ([node("Split", outputs=["y", "z"], axis=1, split=[1, 3])], 11, []),
    ([node("Split", ["x", "s"], outputs=["y", "z"], axis=3)], 13, [const("s", [4, 2], np.int64)]),
    ([node("Split", outputs=["y", "z", "u"], axis=2, num_outputs=3)], 18, []),
    ([node("Unsqueeze", ["x"], ["u"], axes=[-1, 0]), node("Squeeze", ["u"], ["s"], axes=[0]),
      node("Squeeze", ["s"])], 11, []),
    ([node("Unsqueeze", ["x", "a"], ["u"]), node("Squeeze", ["u", "b"])], 13,
     [const("a", [1, -1], np.int64), const("b", [-1], np.int64)]),
    ([node("Flatten", axis=-1)], 13, []), ([node("Flatten", axis=0)], 13, []),
    ([node("Transpose", perm=[0, 2, 3, 1])], 13, []), ([node("Transpose")], 13, []),
    ([node("Reshape", ["x", "r"])], 5, [const("r", [0, -1, 3], np.int64)]),
    ([node("Shape", ["x"], ["s"]), node("Reshape", ["x", "s"])], 14, []),
    ([node("Shape", ["x"], ["s"], start=2, end=4), node("ConstantOfShape", ["s"], ["c"], value=const("v", [2.0])),
      node("Mul", ["x", "c"])], 15, []),
    ([node("Gather", ["x", "i"], axis=1)], 13, [const("i", [[-1, 0], [2, 2]], np.int64)]),
    ([node("Gather", ["x", "i"], axis=3)], 13, [const("i", 1, np.int64)]),
    ([node("Expand", ["x", "s"])], 13, [const("s", [3, 1, 1, 1, 1], np.int64)]),
    ([node("Tile", ["x", "r"])], 13, [const("r", [1, 2, 1, 3], np.int64)]),
    ([node("Concat", ["x", "x"], axis=-2)], 13, []),
    ([node("Cast", ["x"], ["i"], to=TensorProto.INT32), node("Cast", ["i"], to=TensorProto.DOUBLE)], 13, []),
    ([node("Range", ["a", "b", "c"], ["r"]), node("Cast", ["r"], ["f"], to=TensorProto.FLOAT),
      node("Add", ["x", "f"])], 13, [const("a", 0.0), const("b", 6.0), const("c", 1.0)]),
    ([node("Equal", ["x", "x"], ["e"]), node("Where", ["e", "x", "z"])], 13, [const("z", 0.0)]),
    ([node("Abs", ["x"], ["a"]), node("Log", ["a"])], 13, []),
    ([node("DepthToSpace", blocksize=2)], 13, []), ([node("DepthToSpace", blocksize=2, mode="CRD")], 13, []),
    ([node("Tile", ["x", "r"], ["t"]), node("SpaceToDepth", ["t"], blocksize=2)], 13,
     [const("r", [1, 1, 2, 2], np.int64)]),
])
def test_shape_ops(nodes, opset, extra):
    outputs = tuple(o for o in nodes[-1].output)
    check(nodes, X4, opset, extra, outputs=outputs)


@pytest.mark.parametrize("op, opset, attributes, extra", [
    ("Relu", 13, {}, []), ("LeakyRelu", 13, dict(alpha=0.2), []), ("Elu", 13, dict(alpha=0.7), []),
    ("Selu", 13, {}, []), ("Sigmoid", 13, {}, []), ("Tanh", 13, {}, []), ("Softplus", 13, {}, []),
    ("Softsign", 13, {}, []), ("HardSigmoid", 13, dict(alpha=0.3, beta=0.4), []), ("HardSwish", 14, {}, []),
    ("Gelu", 20, dict(approximate="tanh"), []), ("Mish", 18, {}, []), ("Erf", 13, {}, []), ("Neg", 13, {}, []),
    ("Clip", 6, dict(min=-0.5, max=0.7), []), ("Clip", 13, {}, ["", "hi"]), ("Dropout", 12, {}, []),
    ("Identity", 13, {}, []), ("Softmax", 11, dict(axis=2), []), ("Softmax", 13, dict(axis=2), []),
    ("LogSoftmax", 11, {}, []), ("LRN", 13, dict(size=3, alpha=0.01, beta=0.6, bias=2.0), []),
    ("LRN", 13, dict(size=5), []), ("PRelu", 13, {}, ["slope"]), ("Abs", 13, {}, []),
    ("LayerNormalization", 17, {}, ["ln_scale", "ln_bias"]), ("LayerNormalization", 17, dict(axis=1), ["one"]),
])
def test_activations(op, opset, attributes, extra):
    inits = [const("hi", 0.3), const("slope", RNG.uniform(size=(4, 1, 1))), const("ln_scale", RNG.uniform(size=6)),
             const("ln_bias", RNG.normal(size=6)), const("one", 1.5)]
    check([node(op, ["x"] + extra, **attributes)], X4, opset, inits)


@pytest.mark.parametrize("nodes, extra", [
    ([node("Sum", ["x", "x", "c"])], [const("c", RNG.normal(size=(7, 1)))]),
    ([node("Sub", ["c", "x"])], [const("c", RNG.normal(size=(6,)))]),
    ([node("Div", ["x", "c"])], [const("c", [2.0, -4.0, 0.5, 1.0, 3.0, 8.0])]),
    ([node("Max", ["x", "c"], ["m"]), node("Min", ["m", "x", "x"])], [const("c", 0.1)]),
    ([node("Sqrt", ["x"], ["s"]), node("Exp", ["x"], ["e"]), node("Pow", ["e", "c"], ["p"]), node("Add", ["p", "s"])],
     [const("c", 2.0)]),
    ([node("Cast", ["x"], ["i"], to=TensorProto.INT64), node("Div", ["i", "d"], ["q"]),
      node("Cast", ["q"], to=TensorProto.FLOAT)], [const("d", -2, np.int64)]),
])
def test_arithmetic(nodes, extra):
    x = np.abs(X4) * 5 if "Sqrt" in [n.op_type for n in nodes] else X4 * 5
    check(nodes, x, 13, extra)


@pytest.mark.parametrize("attributes, c_shape", [
    (dict(transB=1), (4,)), (dict(transA=1, alpha=0.5, beta=2.0), (1, 4)), (dict(), (3, 4)), (dict(), None),
])
def test_gemm(attributes, c_shape):
    trans_a, trans_b = attributes.get("transA", 0), attributes.get("transB", 0)
    x = X2.T.copy() if trans_a else X2
    weight = const("w", RNG.normal(size=(4, 6) if trans_b else (6, 4)))
    inits = [weight] + ([const("c", RNG.normal(size=c_shape))] if c_shape else [])
    check([node("Gemm", ["x", "w"] + (["c"] if c_shape else []), **attributes)], x, 13, inits)


def test_matmul_batched():
    check([node("MatMul", ["x", "w"])], X3, 13, [const("w", RNG.normal(size=(5, 3)))])


@pytest.mark.parametrize("opset", [7, 15])
def test_batch_normalization(opset):
    inits = [const(n, RNG.uniform(0.5, 1.5, size=4)) for n in ("s", "b", "m", "v")]
    check([node("BatchNormalization", ["x", "s", "b", "m", "v"], epsilon=1e-3)], X4, opset, inits)


@pytest.mark.parametrize("opset, outputs, attributes", [(9, ["y", "mean", "var", "saved_mean", "saved_var"], {}),
                                                       (15, ["y", "mean", "var"], {"training_mode": 1})])
def test_batch_normalization_in_training_mode_is_refused(opset, outputs, attributes):
    """With its training outputs (before opset 14) or training_mode=1, onnxruntime normalises by the batch's own
    statistics; the registry normalised by the running ones whatever the mode (other numbers): it refuses the node."""
    inits = [const(n, RNG.uniform(0.5, 1.5, size=4)) for n in ("s", "b", "m", "v")]
    with pytest.raises(ValueError, match="training mode"):
        check([node("BatchNormalization", ["x", "s", "b", "m", "v"], outputs, **attributes)], X4, opset, inits)


@pytest.mark.parametrize("transform, classes", [("NONE", 3), ("SOFTMAX", 3), ("LOGISTIC", 1), ("SOFTMAX_ZERO", 3),
                                                ("PROBIT", 3), ("LOGISTIC", 3)])
def test_linear_classifier(transform, classes):
    x = np.abs(X2) / 10 if transform == "PROBIT" else X2
    coefficients = RNG.normal(size=classes * 6) * (0.05 if transform == "PROBIT" else 1.0)
    intercepts = RNG.normal(size=classes) * (0.01 if transform == "PROBIT" else 1.0)
    labels = [0, 1] if classes == 1 else [3, 5, 7]
    nodes = [helper.make_node("LinearClassifier", ["x"], ["label", "scores"], domain="ai.onnx.ml",
                              coefficients=coefficients.tolist(), intercepts=intercepts.tolist(),
                              classlabels_ints=labels, post_transform=transform),
             helper.make_node("Normalizer", ["scores"], ["y"], domain="ai.onnx.ml", norm="L2")]
    check(nodes, x, 13, outputs=("label", "scores", "y"), domain_opsets=[("ai.onnx.ml", 1)])


def test_pooling_windows_beyond_the_map():
    """A max-pooling window that covers only padding holds the type's lowest value, as onnxruntime gives it (not
    -inf); a 3-D average pooling over a map smaller than its kernel, made to fit by padding, runs."""
    x1 = RNG.normal(size=(2, 3, 1)).astype(np.float32)
    check([node("MaxPool", kernel_shape=[2], dilations=[2], pads=[1, 1])], x1, 12)
    x3 = RNG.normal(size=(2, 1, 1, 3, 3)).astype(np.float32)
    check([node("AveragePool", kernel_shape=[5, 1, 1], pads=[2, 0, 0, 2, 0, 0], count_include_pad=1)], x3, 11)
