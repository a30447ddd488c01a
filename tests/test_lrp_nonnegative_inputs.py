"""z+ after ops whose outputs can be negative, against the z+ formula in numpy.

The walker lets a rule skip its negative-input part where the plan proves the input >= 0 (after a Relu, or after
pooling, reshapes and concats of such tensors). Where that proof is wrong (a Tanh or LeakyRelu, a Concat with one
signed operand, a reshape of the signed input) z+ counts x- w+ as positive evidence: these nets pin that down, and
a test runs every op the walker lists as sign-keeping on inputs >= 0 through onnxruntime.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain.lrp import LRP
from onnxplain.lrp.walker import NONNEGATIVE_OUTPUT, SIGN_KEEPING

RNG = np.random.default_rng(5)
STAB = 1e-6
W0, B0 = RNG.normal(size=(5, 4)), RNG.normal(size=5) * 0.3
W1, B1 = RNG.normal(size=(3, 4)), RNG.normal(size=3) * 0.3
W2, B2 = RNG.normal(size=(3, 5)), RNG.normal(size=3) * 0.3      # after an activation of 5
WA, BA = RNG.normal(size=(4, 4)), RNG.normal(size=4) * 0.3      # the two operands of a Concat
WB, BB = RNG.normal(size=(4, 4)), RNG.normal(size=4) * 0.3
WC, BC = RNG.normal(size=(3, 8)), RNG.normal(size=3) * 0.3      # after Concat(relu(4 units), 4 signed units)


def zplus(x, w, b, relevance):
    """R_i = sum_j (x+ w+ + x- w-)_ij / (sum_i (...) + b+ + eps) R_j for y = x w^T + b, row by row."""
    positive = np.maximum(x, 0)[:, None] * np.maximum(w, 0) + np.minimum(x, 0)[:, None] * np.minimum(w, 0)
    z = positive.sum(axis=2) + np.maximum(b, 0) + STAB
    return (positive * (relevance / z)[:, :, None]).sum(axis=1)


def seed(logits):
    top = logits.argmax(axis=1)
    relevance = np.zeros_like(logits)
    relevance[np.arange(len(logits)), top] = logits[np.arange(len(logits)), top]
    return relevance


def gemm(name, x, out, weight, bias, inits):
    inits += [numpy_helper.from_array(weight.astype(np.float32), f"{name}_w"),
              numpy_helper.from_array(bias.astype(np.float32), f"{name}_b")]
    return helper.make_node("Gemm", [x, f"{name}_w", f"{name}_b"], [out], name=name, transB=1)


def save(path, nodes, inits, shape) -> onnxplain.Model:
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *shape])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return onnxplain.load(path)


def activation_net(path, op_type, **attrs):
    """x -> Gemm -> activation -> Gemm; the activation passes relevance on unchanged."""
    inits = []
    nodes = [gemm("first", "x", "z", W0, B0, inits), helper.make_node(op_type, ["z"], ["h"], **attrs),
             gemm("last", "h", "logits", W2, B2, inits)]
    act = {"Tanh": np.tanh, "LeakyRelu": lambda z: np.where(z > 0, z, 0.1 * z)}[op_type]

    def expected(x):
        h = act(x @ W0.T + B0)
        return zplus(x, W0, B0, zplus(h, W2, B2, seed(h @ W2.T + B2)))
    return save(path, nodes, inits, [4]), expected


def concat_net(path):
    """Concat(relu(Gemm(x)), Gemm(x)) -> Gemm: one operand >= 0, the other signed."""
    inits = []
    nodes = [gemm("a", "x", "za", WA, BA, inits), helper.make_node("Relu", ["za"], ["ha"]),
             gemm("b", "x", "zb", WB, BB, inits), helper.make_node("Concat", ["ha", "zb"], ["joined"], axis=1),
             gemm("last", "joined", "logits", WC, BC, inits)]

    def expected(x):
        joined = np.concatenate([np.maximum(x @ WA.T + BA, 0), x @ WB.T + BB], axis=1)
        at_joined = zplus(joined, WC, BC, seed(joined @ WC.T + BC))
        return zplus(x, WA, BA, at_joined[:, :4]) + zplus(x, WB, BB, at_joined[:, 4:])
    return save(path, nodes, inits, [4]), expected


def flatten_net(path):
    """Flatten of the (signed) input -> Gemm."""
    inits = []
    nodes = [helper.make_node("Flatten", ["x"], ["flat"]), gemm("last", "flat", "logits", W1, B1, inits)]

    def expected(x):
        flat = x.reshape(len(x), -1)
        return zplus(flat, W1, B1, seed(flat @ W1.T + B1)).reshape(x.shape)
    return save(path, nodes, inits, [2, 2]), expected


NETS = {"tanh": lambda p: activation_net(p, "Tanh"), "leaky relu": lambda p: activation_net(p, "LeakyRelu", alpha=0.1),
        "concat with a signed operand": concat_net, "flatten of the input": flatten_net}


@pytest.mark.parametrize("net", NETS)
def test_zplus_keeps_the_negative_inputs_of_signed_tensors(net, tmp_path):
    model, expected = NETS[net](tmp_path / "net.onnx")
    x = RNG.uniform(-1, 1, size=(6, *model.input_shape[1:])).astype(np.float32)
    explanation = LRP("lrp-0", rules={"Gemm": "zplus"}, progress=False).explain(model, x)
    want = expected(x.astype(np.float64))
    np.testing.assert_allclose(explanation.relevance, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def _ints(name: str, values: list[int]):
    return numpy_helper.from_array(np.array(values, np.int64), name)


POOLS = {"kernel_shape": [2, 2], "pads": [1, 0, 0, 1]}
ONE_NODE = {   # op type -> (extra inputs, as initializers; attributes) of one node on a (2, 3, 4, 4) input
    "MaxPool": ([], POOLS), "AveragePool": ([], POOLS), "GlobalMaxPool": ([], {}), "GlobalAveragePool": ([], {}),
    "Reshape": ([_ints("shape", [2, -1])], {}), "Flatten": ([], {}), "Squeeze": ([_ints("axes", [0])], {}),
    "Unsqueeze": ([_ints("axes", [1])], {}), "Transpose": ([], {"perm": [0, 2, 3, 1]}), "Identity": ([], {}),
    "Dropout": ([], {}), "Slice": ([_ints("starts", [1]), _ints("ends", [3]), _ints("axes", [2])], {}),
    "Split": ([], {"axis": 1, "num_outputs": 3}), "Relu": ([], {}), "Sigmoid": ([], {}), "Softmax": ([], {"axis": 1})}


@pytest.mark.parametrize("op_type", sorted(SIGN_KEEPING | NONNEGATIVE_OUTPUT))
def test_each_op_the_walker_trusts_to_keep_signs_gives_nonnegative_outputs(op_type):
    """The walker's lists of ops whose output is >= 0 for inputs >= 0 (or for any input): each, run by
    onnxruntime on such an input (an all-negative one for the second list), gives no negative value. An op wrongly
    listed would let z+ drop the negative part of a signed input unseen."""
    assert op_type in ONE_NODE, f"{op_type}: a new entry needs a case here"
    initializers, attributes = ONE_NODE[op_type]
    shape = [1, 3, 4, 4] if op_type == "Squeeze" else [2, 3, 4, 4]
    outputs = [f"y{i}" for i in range(3 if op_type == "Split" else 1)]
    node = helper.make_node(op_type, ["x"] + [t.name for t in initializers], outputs, **attributes)
    graph = helper.make_graph([node], "one", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs],
                              initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    magnitude = np.abs(RNG.normal(size=shape)).astype(np.float32) * 5
    x = -magnitude if op_type in NONNEGATIVE_OUTPUT else magnitude
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for value in session.run(None, {"x": x}):
        assert value.min() >= 0, op_type
