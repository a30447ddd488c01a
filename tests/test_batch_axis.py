"""Loading frees the batch axis: Squeezes without axes keep a batch of one, exports of a fixed batch take any batch,
and what cannot be freed is a one-line error (`onnxplain/batch_axis.py`)."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain.errors import OnnxplainError


@pytest.mark.parametrize("dynamic", [True, False], ids=["batch N", "batch fixed at 1"])
def test_a_squeeze_without_axes_keeps_the_batch_of_one(dynamic, tmp_path):
    """torch's `pool(x).squeeze()` exports as a Squeeze without axes: a batch of one lost its batch axis (scores
    read as 4 classes of one sample became one class of 4 samples; with the batch fixed at 1 the model did not
    even load). Normalised, one sample gives the torch net's scores, and LRP, gradient (torch executor) and
    occlusion (onnxruntime) give it the map it gets inside a batch of two."""
    import torch

    from onnxplain.methods import make_method

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)

        def forward(self, x):
            return torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 1).squeeze()

    torch.manual_seed(0)
    net = Net().eval()
    path = tmp_path / "squeeze.onnx"
    axes = {"dynamic_axes": {"x": {0: "N"}, "logits": {0: "N"}}} if dynamic else {}
    torch.onnx.export(net, torch.rand(2 if dynamic else 1, 1, 8, 8), str(path), input_names=["x"],
                      output_names=["logits"], dynamo=False, **axes)
    assert [n.op_type for n in onnx.load(path).graph.node if n.op_type == "Squeeze"] == ["Squeeze"]
    model = onnxplain.load(path)
    assert not model.fixed_batch and any("Squeeze without axes" in note for note in model.notes)
    x = np.random.default_rng(0).random((2, 1, 8, 8)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.scores(x[:1]), want[:1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.scores(x), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.torch().logits(x[:1]).cpu().numpy(), want[:1], rtol=1e-5, atol=1e-6)
    for name in ("lrp", "gradient", "occlusion"):
        method = make_method(name, progress=False)
        one, two = method.explain(model, x[:1]), method.explain(model, x)
        assert one.relevance.shape == x[:1].shape and one.target[0] == want[0].argmax()
        assert np.abs(two.relevance[0]).max() > 0
        np.testing.assert_allclose(one.relevance[0], two.relevance[0], rtol=1e-5, atol=1e-7)
    gradient = torch.from_numpy(x[:1]).requires_grad_(True)
    net(gradient)[want[0].argmax()].backward()
    np.testing.assert_allclose(make_method("gradient", progress=False).explain(model, x[:1]).relevance,
                               gradient.grad.numpy(), rtol=1e-4, atol=1e-6)


def _squeeze_graph(case: str) -> onnx.ModelProto:
    """Squeezes without axes that hold no batch: a constant weight's (1, 4, 2); the (1,) slice [N] of a shape in a
    written-out flatten (both models fixed at batch 1); and, with the batch unnamed, a (K, 1) tensor whose K counts
    the inputs above 0.2 (NonZero): for K = 1 the original squeezes K away too."""
    def ints(name, values):
        return numpy_helper.from_array(np.array(values, np.int64), name)

    weight = np.random.default_rng(0).normal(size=(1, 4, 2)).astype(np.float32)
    if case == "constant":
        nodes = [helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(weight)),
                 helper.make_node("Squeeze", ["w"], ["w2"]), helper.make_node("MatMul", ["x", "w2"], ["logits"])]
        return _squeeze_model(nodes, [], [1, 4], [1, 2])
    if case == "shape":
        nodes = [helper.make_node("Shape", ["x"], ["shape"]),
                 helper.make_node("Slice", ["shape", "zero", "one"], ["n1"]),
                 helper.make_node("Squeeze", ["n1"], ["n"]), helper.make_node("Unsqueeze", ["n", "zero"], ["nu"]),
                 helper.make_node("Concat", ["nu", "minus"], ["target"], axis=0),
                 helper.make_node("Reshape", ["x", "target"], ["flat"]),
                 helper.make_node("MatMul", ["flat", "w"], ["logits"])]
        return _squeeze_model(nodes, [ints("zero", [0]), ints("one", [1]), ints("minus", [-1]),
                                      numpy_helper.from_array(weight.reshape(4, 2), "w")], [1, 2, 2], [1, 2])
    nodes = [helper.make_node("Greater", ["x", "low"], ["c"]), helper.make_node("NonZero", ["c"], ["nz"]),
             helper.make_node("Transpose", ["nz"], ["tr"], perm=[1, 0]),
             helper.make_node("Cast", ["tr"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("ReduceSum", ["f", "one"], ["s"], keepdims=1), helper.make_node("Squeeze", ["s"], ["q"]),
             helper.make_node("Shape", ["q"], ["sh"]), helper.make_node("Size", ["sh"], ["rank"]),
             helper.make_node("Cast", ["rank"], ["rf"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["rf", "unit"], ["k"]), helper.make_node("Mul", ["x", "k"], ["logits"])]
    return _squeeze_model(nodes, [numpy_helper.from_array(np.array(0.2, np.float32), "low"), ints("one", [1]),
                                  numpy_helper.from_array(np.array(1.0, np.float32), "unit")], [None, 4], [None, 4])


def _squeeze_model(nodes, weights, x_shape, y_shape) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, y_shape)], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


@pytest.mark.parametrize("case", ["constant", "shape", "unnamed batch"])
def test_squeezes_of_no_batch_stay_as_they_are(case, tmp_path):
    """Only a Squeeze of an activation holding the input's batch first gets axes: the fixed-batch models still get
    a dynamic batch (each row as the original computes it alone), the data-dependent count keeps the original's
    numbers."""
    path = tmp_path / f"{case.split()[0]}.onnx"
    onnx.save(_squeeze_graph(case), path)
    model = onnxplain.load(path)
    assert not any("Squeeze" in note for note in model.notes)
    original = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    if case == "unnamed batch":
        x = np.array([[0.9, 0.1, 0.1, 0.1]], np.float32)         # one entry above 0.2: the count K is 1
        np.testing.assert_allclose(model.scores(x), original.run(None, {"x": x})[0], rtol=1e-6)
        return
    assert not model.fixed_batch
    x = np.random.default_rng(1).normal(size=(3, 2, 2) if case == "shape" else (3, 4)).astype(np.float32)
    alone = np.concatenate([original.run(None, {"x": row[None]})[0] for row in x])
    np.testing.assert_allclose(model.scores(x), alone, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "legacy opset 13"])
def test_an_export_of_a_batch_of_two_takes_any_batch(dynamo, tmp_path):
    """`torch.onnx.export(net, (x,))` with a batch of 2 and no dynamic axes fixes the batch at 2, the flattens'
    Reshapes too (dynamo writes them with allowzero=1, two reading one shape constant). The batch is freed: 5
    samples (and 1) give the torch net's outputs, and LRP runs on them."""
    import warnings

    import torch

    from onnxplain.methods import make_method

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.norm, self.fc = torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(144, 5)
            self.side = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x):
            flat = torch.relu(self.norm(self.conv(x))).view(x.shape[0], -1)
            return self.fc(flat + torch.relu(self.side(x)).view(x.shape[0], -1))

    torch.manual_seed(0)
    net, path = Net().eval(), tmp_path / "batch2.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.rand(2, 3, 8, 8),), str(path), dynamo=dynamo,
                          **({} if dynamo else {"opset_version": 13}))
    assert onnx.load(path).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    model = onnxplain.load(path)
    assert model.input_shape[0] is None and "batch axis (fixed at 2) made dynamic" in model.notes
    x = np.random.default_rng(0).random((5, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.logits(x), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.logits(x[:1]), want[:1], rtol=1e-5, atol=1e-6)
    assert make_method("lrp", progress=False).attribute(model, x).shape == x.shape


def test_a_batch_that_cannot_be_freed_is_a_one_line_error(tmp_path):
    """A constant holding the batch of 2 (added to the input) ties the graph to batches of exactly 2: refused at
    load with a message that says what to do, before any work."""
    constant = numpy_helper.from_array(np.ones((2, 4), np.float32), "c")
    weight = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    nodes = [helper.make_node("Add", ["x", "c"], ["h"]), helper.make_node("MatMul", ["h", "w"], ["y"])]
    graph = helper.make_graph(nodes, "tied", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], [constant, weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "tied.onnx")
    with pytest.raises(OnnxplainError, match="exported for batches of exactly 2 .* dynamic batch axis"):
        onnxplain.load(tmp_path / "tied.onnx")


@pytest.mark.parametrize("batch", [1, 3])
def test_a_fixed_batch_classifier_with_string_labels_loads(batch, tmp_path):
    """skl2onnx with initial_types [B, 4] and named classes: the batch check compares the string labels as strings
    (it read them as numbers and failed with a raw ValueError)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.random((60, 4)).astype(np.float32)
    classifier = LogisticRegression(max_iter=500).fit(x, np.array(["a", "b", "c"])[rng.integers(0, 3, 60)])
    proto = convert_sklearn(classifier, initial_types=[("x", FloatTensorType([batch, 4]))], target_opset=13)
    onnx.save(proto, tmp_path / "named.onnx")
    model = onnxplain.load(tmp_path / "named.onnx")
    assert model.input_shape == (None, 4) and model.labels == ["a", "b", "c"]
    np.testing.assert_allclose(model.scores(x[:5]), classifier.predict_proba(x[:5]), rtol=1e-4, atol=1e-5)
    numbered = LogisticRegression(max_iter=500).fit(x, rng.integers(1, 4, 60))   # classes 1, 2, 3: no labels, so
    proto = convert_sklearn(numbered, initial_types=[("x", FloatTensorType([batch, 4]))], target_opset=13)
    onnx.save(proto, tmp_path / "numbered.onnx")                                 # 1 stays the index of column 1
    assert onnxplain.load(tmp_path / "numbered.onnx").labels is None


@pytest.mark.parametrize("batch", ["N", 1, 2])
def test_two_inputs_are_refused_unless_one_is_held_whatever_their_batch(batch, tmp_path):
    weight = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    nodes = [helper.make_node("Add", ["a", "b"], ["h"]), helper.make_node("MatMul", ["h", "w"], ["y"])]
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch, 4]) for name in "ab"]
    graph = helper.make_graph(nodes, "two", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])],
                              [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "two.onnx")
    with pytest.raises(OnnxplainError, match=r"this model has 2 inputs \(a, b\): onnxplain explains one, with the "
                                             r"others held"):
        onnxplain.load(tmp_path / "two.onnx")
    held = np.array([1, -2, 3, 0.5], np.float32)   # b held: a batch of any size explained in a
    x = np.random.default_rng(0).random((3, 4), np.float32)
    model = onnxplain.load(tmp_path / "two.onnx", hold={"b": held})
    np.testing.assert_allclose(model.scores(x), (x + held).sum(1, keepdims=True).repeat(3, 1), rtol=1e-6)
