"""Done-when 1 (example models and freshly exported torch nets): the torch executor reproduces onnxruntime and
its gradients match torch autograd on the source net (ops outside the registry: tests/test_executor_fallback.py)."""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain.errors import OnnxplainError
from onnxplain.executor import relative_error
from onnxplain.lrp import LRP, unsupported_ops
from onnxplain.targets import Target

TOLERANCE = 1e-4
SAMPLES = "models/samples"


# ---------------------------------------------------------------- example models
def _digits_cnn_in_torch(path):
    """The example CNN written out in torch from its ONNX weights: an independent reference for gradients."""
    w = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in onnx.load(path).graph.initializer}

    def net(x):
        x = F.max_pool2d(F.relu(F.conv2d(x, w["0.weight"], w["0.bias"], padding=1)), 2)
        x = F.max_pool2d(F.relu(F.conv2d(x, w["3.weight"], w["3.bias"], padding=1)), 2)
        x = F.relu(F.linear(x.reshape(len(x), -1), w["7.weight"], w["7.bias"]))
        return F.linear(x, w["9.weight"], w["9.bias"])
    return net


def test_digits_cnn_matches_onnxruntime(digits_cnn):
    model = onnxplain.load(digits_cnn)
    executor = model.torch()
    assert executor.graph is not None and executor.logits_name == "logits"
    x = np.load(digits_cnn.parent / "samples" / "digits_reference_cnn.npy")
    assert relative_error(executor(x).detach().numpy(), model.scores(x)) <= TOLERANCE
    grad, values = executor.gradient(x[:8], Target(index=3))
    np.testing.assert_allclose(values, model.logits(x[:8])[:, 3], rtol=1e-5)
    source = torch.from_numpy(x[:8]).requires_grad_(True)
    _digits_cnn_in_torch(digits_cnn)(source)[:, 3].sum().backward()
    assert relative_error(grad, source.grad.numpy()) <= TOLERANCE


def test_digits_logreg_matches_onnxruntime_and_its_gradient_is_the_coefficients(digits_logreg):
    model = onnxplain.load(digits_logreg)
    executor = model.torch()
    x = np.load(digits_logreg.parent / "samples" / "digits_reference_logreg.npy")
    assert relative_error(executor(x).detach().numpy(), model.scores(x)) <= TOLERANCE
    # the raw (pre-softmax) scores are the explained logits: softmax of them gives the probabilities
    logits = executor.logits(x).detach().double()
    np.testing.assert_allclose(torch.softmax(logits, 1).numpy(), model.scores(x), rtol=1e-4, atol=1e-6)
    node = next(n for n in onnx.load(digits_logreg).graph.node if n.op_type == "LinearClassifier")
    coefficients = np.array(helper.get_attribute_value(next(a for a in node.attribute if a.name == "coefficients")))
    grad, _ = executor.gradient(x[:3], Target(index=7))
    np.testing.assert_allclose(grad, np.tile(coefficients.reshape(10, 64)[7], (3, 1)), rtol=1e-6)


# ---------------------------------------------------------------- nets exported from torch
class SqueezeExcite(torch.nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.reduce, self.expand = torch.nn.Conv2d(channels, 4, 1), torch.nn.Conv2d(4, channels, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.expand(torch.relu(self.reduce(x.mean((2, 3), keepdim=True)))))


class ManyOps2d(torch.nn.Module):
    """hard-swish (both spellings), squeeze-excitation, PReLU, LeakyReLU, ELU, Tanh, Sigmoid, Clip, Pad, pooling,
    grouped and dilated convolutions, ConvTranspose, Split, Slice, Concat, BatchNorm, Gemm."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8)
        self.se = SqueezeExcite(8)
        self.grouped = torch.nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=4)
        self.prelu = torch.nn.PReLU(8)
        self.up = torch.nn.ConvTranspose2d(8, 6, 3, stride=2, padding=1, output_padding=1)
        self.fc = torch.nn.Linear(6 * 4 * 4, 5)

    def forward(self, x):
        x = F.hardswish(self.bn(self.conv1(x)))
        x = x * torch.clamp(x + 3, 0, 6) / 6
        x = F.avg_pool2d(F.pad(x, (1, 1, 1, 1)), 2)
        x = self.prelu(self.grouped(self.se(x)))
        a, b = torch.split(x, 4, dim=1)
        x = torch.cat([F.leaky_relu(a, 0.1), F.elu(b)], 1)
        x = torch.clamp(x, 0, 6) + torch.tanh(x) + torch.sigmoid(x)
        x = F.max_pool2d(x, 3, stride=1, padding=1)
        x = self.up(x)[:, :, 1:5, 2:6]
        return self.fc(x.flatten(1))


class ManyOps1d(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv1d(2, 6, 5, stride=2, padding=2)
        self.conv2 = torch.nn.Conv1d(6, 6, 3, groups=3, dilation=2)
        self.fc = torch.nn.Linear(6 * 3, 4)

    def forward(self, x):
        x = F.relu6(self.conv1(x))
        x = F.avg_pool1d(self.conv2(x), 2, count_include_pad=False)
        x = F.max_pool1d(torch.sigmoid(x), 2, ceil_mode=True)
        return self.fc(x.flatten(1))


class ManyOps3d(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 4, 3, padding=1)
        self.up = torch.nn.ConvTranspose3d(4, 2, 2, stride=2)
        self.fc = torch.nn.Linear(2 * 4 * 4 * 4, 3)

    def forward(self, x):
        x = F.max_pool3d(torch.tanh(self.conv(x)), 2)
        return self.fc(F.silu(self.up(x)).flatten(1))


NETS = {"2d": (ManyOps2d, (2, 3, 8, 8)), "1d": (ManyOps1d, (2, 2, 32)), "3d": (ManyOps3d, (2, 1, 4, 4, 4))}


def _export(net, shape, path, dynamo: bool) -> None:
    x = torch.rand(shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(net, (x,), str(path), dynamo=True, opset_version=18, input_names=["x"],
                              output_names=["y"], dynamic_shapes=({0: torch.export.Dim("N")},), verbose=False)
        else:
            torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=13, input_names=["x"],
                              output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo-opset18", "legacy-opset13"])
@pytest.mark.parametrize("which", sorted(NETS))
def test_exported_net(tmp_path, which, dynamo):
    torch.manual_seed(0)
    cls, shape = NETS[which]
    net = cls().eval()
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    path = tmp_path / f"{which}.onnx"
    _export(net, shape, path, dynamo)
    opset = next(o.version for o in onnx.load(path).opset_import if o.domain in ("", "ai.onnx"))
    assert opset == (18 if dynamo else 13)
    model = onnxplain.load(path)
    executor = model.torch()
    assert executor.graph is not None, executor.problem  # the registry ran it, not the fallback
    x = torch.rand((5,) + shape[1:], generator=torch.Generator().manual_seed(1))
    ours = executor(x.numpy()).detach().numpy()
    assert relative_error(ours, model.scores(x.numpy())) <= TOLERANCE
    assert relative_error(ours, net(x).detach().numpy()) <= TOLERANCE
    grad, values = executor.gradient(x.numpy(), Target(index=1))
    source = x.clone().requires_grad_(True)
    net(source)[:, 1].sum().backward()
    assert relative_error(grad, source.grad.numpy()) <= TOLERANCE
    # LRP passes every op of these nets (gates, hard-swish, ConvTranspose, ...) and conserves relevance
    assert unsupported_ops(model) == []
    explanation = LRP(progress=False).explain(model, x.numpy())
    assert np.abs(explanation.diagnostics["conservation_error"]).max() < 1e-5


def test_scikit_learn_scaler_runs_in_the_registry_with_its_analytic_gradient(tmp_path):
    """StandardScaler + LogisticRegression arrive as ai.onnx.ml Scaler + LinearClassifier: both in the registry, so
    gradients are the closed form coef / scale and LRP conserves f(x) with the scaler as an affine layer."""
    from sklearn.datasets import load_wine
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from onnxplain.converters import convert_sklearn
    from onnxplain.lrp import LRP

    X, y = load_wine(return_X_y=True)
    X = X.astype(np.float32)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(X, y)
    convert_sklearn(pipeline, tmp_path / "wine.onnx", samples=X[:20])
    model = onnxplain.load(tmp_path / "wine.onnx")
    assert "Scaler" in [node.op_type for node in model.proto.graph.node]
    executor = model.torch()
    assert executor.graph is not None, executor.problem
    grad, _ = executor.gradient(X[:6], Target(index=2))
    expected = pipeline[-1].coef_[2] / pipeline[0].scale_
    assert np.abs(grad - expected).max() <= 1e-5 * np.abs(expected).max()
    explanation = LRP(composite="lrp-0", progress=False).explain(model, X[:6], Target(index=2))
    assert np.abs(explanation.diagnostics["conservation_error"]).max() < 1e-5


def _upsampling_net(mode: str, **options) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Upsample(mode=mode, **options), torch.nn.Conv2d(4, 4, 3, stride=2, padding=1),
                               torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(4, 3)).eval()


def _export_both_ways(net: torch.nn.Module, folder) -> list:
    paths = []
    for dynamo, opset in ((True, 18), (False, 13)):
        path = folder / f"net{opset}.onnx"
        height, width = torch.export.Dim("H", min=4), torch.export.Dim("W", min=4)
        shapes = {"dynamic_shapes": ({0: torch.export.Dim("N"), 2: height, 3: width},)} if dynamo else \
            {"dynamic_axes": {"x": {0: "N", 2: "H", 3: "W"}}}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (torch.rand(2, 3, 8, 8),), str(path), dynamo=dynamo, opset_version=opset,
                              input_names=["x"], output_names=["y"], **shapes)
        paths.append(path)
    return paths


@pytest.mark.parametrize("mode, options", [("nearest", {"scale_factor": 2}), ("nearest", {"size": (20, 20)}),
                                           ("bilinear", {"scale_factor": 2, "align_corners": False}),
                                           ("bilinear", {"scale_factor": 2, "align_corners": True}),
                                           ("bilinear", {"scale_factor": 1.5, "align_corners": False})])
def test_resize_runs_in_the_registry_with_gradients_and_lrp(tmp_path, mode, options):
    """nn.Upsample as ONNX Resize (dynamo, opset 18; legacy, opset 13): the registry runs it (checked against
    onnxruntime on building), gradients equal torch autograd and LRP (the z-rule on Resize) conserves; scales are
    applied as given, so a fractional scaled size (8 x 1.5 here; 7 x 1.5 below) still matches."""
    from onnxplain.lrp import LRP

    net = _upsampling_net(mode, **options)
    x = np.random.default_rng(0).random((4, 3, 8, 8)).astype(np.float32)
    inputs = torch.from_numpy(x).requires_grad_(True)
    net(inputs)[:, 0].sum().backward()
    for path in _export_both_ways(net, tmp_path):
        model = onnxplain.load(path)
        executor = model.torch()
        assert executor.graph is not None, executor.problem
        grad, _ = executor.gradient(x, Target(index=0))
        assert relative_error(grad, inputs.grad.numpy()) <= TOLERANCE
        errors = LRP(progress=False).explain(model, x).diagnostics["conservation_error"]
        assert np.abs(errors).max() < 1e-5
        odd = np.random.default_rng(1).random((2, 3, 7, 9)).astype(np.float32)   # a size the check did not probe
        with torch.no_grad():
            assert relative_error(executor(odd).numpy(), net(torch.from_numpy(odd)).numpy()) <= TOLERANCE


def test_resize_mode_torch_cannot_match_falls_back(tmp_path):
    """Bicubic Resize has no exact torch counterpart here: the registry refuses it when the graph is built."""
    net = _upsampling_net("bicubic", scale_factor=2, align_corners=False)
    model = onnxplain.load(_export_both_ways(net, tmp_path)[1])
    try:
        executor = model.torch()
    except OnnxplainError as error:   # onnx2torch may refuse it too: then one error names the node
        assert "Resize" in str(error)
        return
    assert executor.graph is None and "Resize" in executor.problem


NORMALISED_NETS = {  # (layers, the ONNX op they become)
    "LayerNorm": (lambda: [torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LayerNorm(144),
                           torch.nn.Linear(144, 16), torch.nn.ReLU(), torch.nn.LayerNorm(16), torch.nn.Linear(16, 3)],
                  "LayerNormalization"),
    "InstanceNorm": (lambda: [torch.nn.Conv2d(1, 4, 3), torch.nn.InstanceNorm2d(4, affine=True), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(144, 3)], "InstanceNormalization"),
    "GroupNorm": (lambda: [torch.nn.Conv2d(1, 4, 3), torch.nn.GroupNorm(2, 4), torch.nn.ReLU(), torch.nn.Flatten(),
                           torch.nn.Linear(144, 3)], "InstanceNormalization"),
}


@pytest.mark.parametrize("which", NORMALISED_NETS)
def test_normalisation_layers_run_in_the_registry_with_gradients_and_lrp(tmp_path, which):
    """nn.LayerNorm (LayerNormalization, opset 17+), nn.InstanceNorm2d and nn.GroupNorm (InstanceNormalization
    with reshapes): gradients equal torch autograd; LRP holds the standard deviation constant, so the map is linear
    and relevance is conserved."""
    from onnxplain.lrp import LRP

    layers, op_type = NORMALISED_NETS[which]
    torch.manual_seed(0)
    net = torch.nn.Sequential(*layers()).eval()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, (torch.nn.LayerNorm, torch.nn.InstanceNorm2d, torch.nn.GroupNorm)):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    path = tmp_path / "normalised.onnx"
    _export(net, (2, 1, 8, 8), path, dynamo=True)
    model = onnxplain.load(path)
    assert op_type in [node.op_type for node in model.proto.graph.node]
    executor = model.torch()
    assert executor.graph is not None, executor.problem
    x = np.random.default_rng(1).random((5, 1, 8, 8)).astype(np.float32)
    grad, _ = executor.gradient(x, Target(index=1))
    inputs = torch.from_numpy(x).requires_grad_(True)
    net(inputs)[:, 1].sum().backward()
    assert relative_error(grad, inputs.grad.numpy()) <= TOLERANCE
    for composite in ("epsilon-plus", "lrp-0"):
        explanation = LRP(composite=composite, progress=False).explain(model, x)
        assert np.abs(explanation.diagnostics["conservation_error"]).max() < 1e-5
        assert op_type in {layer["op"] for layer in explanation.diagnostics["layers"][0]}
    with pytest.raises(OnnxplainError, match="use z or epsilon"):   # flat would spread relevance over the centring
        LRP(rules={op_type: "flat"}, progress=False).explain(model, x)


def test_the_check_probes_a_second_size_where_the_input_leaves_sizes_open(tmp_path, monkeypatch):
    """An op exact at the first probe size (8) but wrong at others is caught by the second (7): here a Resize that
    turns its scales into a size (exact where 8 x 1.5 is whole, not at 7 x 1.5) falls back."""
    import math

    import onnxplain.ops.resize as resize

    exact = resize.Resize._target

    def rounded(self, x, rest):
        size, factors = exact(self, x, rest)
        return (size, None) if size is not None else ([math.floor(n * f) for n, f in zip(x.shape[2:], factors)], None)

    net = _upsampling_net("bilinear", scale_factor=1.5, align_corners=False)
    path = _export_both_ways(net, tmp_path)[1]
    assert onnxplain.load(path).torch().graph is not None
    monkeypatch.setattr(resize.Resize, "_target", rounded)
    executor = onnxplain.load(path).torch()
    assert executor.graph is None and "differs from onnxruntime" in executor.problem


def test_the_same_non_finite_values_agree():
    """A graph that computes NaN where onnxruntime does too (a sqrt of a negative probe value) is run by the registry
    graph: before, NaN - NaN made the check's error NaN, the graph was taken for a wrong executor, and without
    onnx2torch the model could not run in torch at all."""
    nan, inf = float("nan"), float("inf")
    assert relative_error(np.array([1.0, nan, inf]), np.array([1.0, nan, inf])) == 0
    assert relative_error(np.array([1.5, nan]), np.array([1.0, nan])) == pytest.approx(0.5)
    assert relative_error(np.array([1.0, nan]), np.array([1.0, 2.0])) == inf
    assert relative_error(np.array([inf, 1.0]), np.array([-inf, 1.0])) == inf
    assert relative_error(np.array([nan]), np.array([nan])) == 0
    nodes = [helper.make_node("Abs", ["x"], ["a"]), helper.make_node("Neg", ["a"], ["n"]),
             helper.make_node("Sub", ["n", "one"], ["negative"]), helper.make_node("Sqrt", ["negative"], ["y"])]
    graph = helper.make_graph(nodes, "sqrt", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])],
                              [numpy_helper.from_array(np.array(1.0, np.float32), "one")])
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = f"{folder}/sqrt.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)
        executor = onnxplain.load(path).torch()
    assert executor.graph is not None and executor.problem is None


def test_tiny_sigmoid_probabilities_do_not_fail_the_check(tmp_path):
    """A binary classifier whose probe probabilities are ~1e-7: onnxruntime's sigmoid is approximate there (3% off),
    which divided by the output's own size refused the model in torch. Probabilities are measured against their
    range (1) and the logits under them against theirs: the executor runs the registry graph, and the gradient of
    the log-odds is the weight vector. A real difference in probabilities still counts against that range."""
    weight, bias = np.full((4, 1), 0.5, np.float32), np.array([-18.0], np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["z"]), helper.make_node("Sigmoid", ["z"], ["p"])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 1])],
                              [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    path = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)
    model = onnxplain.load(path)
    executor = model.torch()
    assert executor.graph is not None, executor.problem
    x = np.array([[1, 2, 3, 4]], np.float32)
    grad, value = executor.gradient(x, Target(index=1))
    np.testing.assert_allclose(value, [-13.0], rtol=1e-6)
    np.testing.assert_allclose(grad, weight.T, rtol=1e-6)
    assert relative_error(np.array([1e-7 + 1e-3]), np.array([1e-7]), 1.0) > 1e-4
