"""Gradient methods against Captum on the same torch networks (exported to ONNX here, explained through onnxplain).

Captum runs on the torch module; onnxplain runs on the ONNX export through its torch executor. Agreement is
max |ours - captum| / max |captum| <= 1e-5 for every method, class targets (fixed and top-1) and hidden targets.
SmoothGrad is compared exactly, sample by sample: onnxplain draws each sample's noise from a torch generator seeded
with `seed`, the stream Captum's NoiseTunnel draws for that sample alone after `torch.manual_seed(seed)`.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import onnxplain
from onnxplain.errors import OnnxplainError
from onnxplain.methods import make_method, method_names
from onnxplain.methods.gradients import IntegratedGradients
from onnxplain.targets import Target

import legacy_export

captum_attr = pytest.importorskip("captum.attr")
pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")]
TOLERANCE = 1e-5
METHODS = ["gradient", "sensitivity", "gradient-x-input", "smoothgrad", "integrated-gradients"]


class SmallCNN(torch.nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, 4, 3, padding=1)
        self.relu = torch.nn.ReLU()
        self.pool = torch.nn.MaxPool2d(2)
        self.head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 16), torch.nn.Tanh(),
                                        torch.nn.Linear(16, 5))

    def forward(self, x):
        return self.head(self.pool(self.relu(self.conv(x))))


class SoftmaxMLP(torch.nn.Module):
    """Probabilities out; the explained value is the logit before the softmax."""

    def __init__(self):
        super().__init__()
        self.logits = torch.nn.Sequential(torch.nn.Linear(16, 12), torch.nn.ReLU(), torch.nn.Linear(12, 4))

    def forward(self, x):
        return torch.softmax(self.logits(x), dim=1)


def export(net: torch.nn.Module, example: torch.Tensor, path) -> onnxplain.Model:
    return onnxplain.load(legacy_export.export(net, path, tuple(example.shape), opset=17))


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    """(torch net, onnxplain model, batch): one gray channel, inputs in [0, 1] (the default spec's range)."""
    torch.manual_seed(0)
    net = SmallCNN(1).eval()
    x = torch.rand(3, 1, 8, 8)
    return net, export(net, x, tmp_path_factory.mktemp("grad") / "cnn.onnx"), x.numpy()


@pytest.fixture(scope="module")
def rgb_cnn(tmp_path_factory):
    torch.manual_seed(1)
    net = SmallCNN(3).eval()
    x = torch.rand(2, 3, 8, 8)
    return net, export(net, x, tmp_path_factory.mktemp("grad") / "rgb.onnx"), x.numpy()


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    torch.manual_seed(2)
    net = SoftmaxMLP().eval()
    x = torch.randn(4, 16)
    return net, export(net, x, tmp_path_factory.mktemp("grad") / "mlp.onnx"), x.numpy()


def relative(ours: np.ndarray, reference: torch.Tensor) -> float:
    reference = reference.detach().double().numpy()
    assert np.abs(reference).max() > 0, "a vacuous comparison: the reference is all zero"
    return float(np.abs(ours.astype(np.float64) - reference).max() / np.abs(reference).max())


def captum_targets(forward, x: np.ndarray, index: int | None) -> list[int]:
    with torch.no_grad():
        return forward(torch.from_numpy(x)).argmax(1).tolist() if index is None else [index] * len(x)


def test_registry_names():
    assert set(METHODS) <= set(method_names())


@pytest.mark.parametrize("index", [None, 2])
def test_gradient_and_gradient_x_input_match_captum(cnn, index):
    net, model, x = cnn
    targets = captum_targets(net, x, index)
    inputs = torch.from_numpy(x)
    ours = make_method("gradient", progress=False).explain(model, x, Target(index=index))
    assert ours.target.tolist() == targets
    assert relative(ours.relevance, captum_attr.Saliency(net).attribute(inputs, target=targets, abs=False)) < TOLERANCE
    with torch.no_grad():
        logits = net(inputs)[torch.arange(len(x)), targets].numpy()
    np.testing.assert_allclose(ours.score, logits, rtol=1e-5)
    ours = make_method("gradient-x-input", progress=False).explain(model, x, Target(index=index))
    assert relative(ours.relevance, captum_attr.InputXGradient(net).attribute(inputs, target=targets)) < TOLERANCE


def test_gradient_explains_the_logit_under_a_softmax(mlp):
    net, model, x = mlp
    assert model.score_kind == "probabilities"
    targets = captum_targets(net.logits, x, None)
    ours = make_method("gradient", progress=False).explain(model, x)
    reference = captum_attr.Saliency(net.logits).attribute(torch.from_numpy(x), target=targets, abs=False)
    assert relative(ours.relevance, reference) < TOLERANCE


def test_sensitivity_is_the_gradient_magnitude(cnn, mlp):
    for net, model, x in (cnn, (mlp[0].logits, mlp[1], mlp[2])):
        targets = captum_targets(net, x, None)
        ours = make_method("sensitivity", progress=False).explain(model, x)
        reference = captum_attr.Saliency(net).attribute(torch.from_numpy(x), target=targets, abs=True)
        assert relative(ours.relevance, reference) < TOLERANCE


def test_sensitivity_takes_the_norm_over_channels(rgb_cnn):
    net, model, x = rgb_cnn
    targets = captum_targets(net, x, None)
    grads = captum_attr.Saliency(net).attribute(torch.from_numpy(x), target=targets, abs=False)
    norm = grads.double().pow(2).sum(dim=1).sqrt()
    ours = make_method("sensitivity", progress=False).explain(model, x)
    assert relative(ours.relevance.sum(axis=1), norm) < TOLERANCE
    assert np.allclose(ours.relevance[:, 0], ours.relevance[:, 2])  # shared equally among the channels


@pytest.mark.parametrize("unit", [(1, 2, 3), None])
def test_hidden_unit_and_feature_map_targets(cnn, unit):
    net, model, x = cnn
    relu = next(node.output[0] for node in model.proto.graph.node if node.op_type == "Relu")
    channel = 1
    selector = unit if unit is not None else (lambda out: out[:, channel].mean(dim=(1, 2)))
    reference = captum_attr.NeuronGradient(net, net.relu).attribute(torch.from_numpy(x), neuron_selector=selector)
    for name, expected in (("gradient", reference), ("gradient-x-input", reference * torch.from_numpy(x))):
        ours = make_method(name, progress=False).explain(model, x, Target(relu, channel, unit))
        assert (ours.target == -1).all() and ours.diagnostics["score_kind"] == "hidden"
        assert relative(ours.relevance, expected) < TOLERANCE


@pytest.mark.parametrize("index", [None, 3])
def test_smoothgrad_matches_captum_noise_tunnel_with_the_same_seed(cnn, index):
    net, model, x = cnn
    targets = captum_targets(net, x, index)
    sigma, samples, seed = 0.2, 8, 7
    ours = make_method("smoothgrad", samples=samples, sigma=sigma, seed=seed, progress=False).explain(
        model, x, Target(index=index))
    tunnel = captum_attr.NoiseTunnel(captum_attr.Saliency(net))
    reference = []
    for i in range(len(x)):
        torch.manual_seed(seed)
        target = targets if isinstance(targets, int) else targets[i:i + 1]
        reference.append(tunnel.attribute(torch.from_numpy(x[i:i + 1]), nt_type="smoothgrad", nt_samples=samples,
                                          stdevs=sigma * 1.0, target=target, abs=False))  # the spec's range: [0, 1]
    assert relative(ours.relevance, torch.cat(reference)) < TOLERANCE
    assert np.allclose(ours.diagnostics["noise_std"], sigma)


def test_smoothgrad_is_reproducible_and_independent_of_batching(cnn):
    net, model, x = cnn
    make = lambda **kw: make_method("smoothgrad", samples=5, sigma=0.3, progress=False, **kw)  # noqa: E731
    one = make(seed=1).explain(model, x).relevance
    np.testing.assert_allclose(make(seed=1, batch_size=5).explain(model, x).relevance, one, rtol=1e-5, atol=1e-7)
    alone = np.concatenate([make(seed=1).explain(model, x[i:i + 1]).relevance for i in (2, 0)])
    np.testing.assert_allclose(alone, one[[2, 0]], rtol=1e-5, atol=1e-7)   # the other inputs change nothing
    assert not np.allclose(one, make(seed=2).explain(model, x).relevance)
    plain = make_method("gradient", progress=False).explain(model, x).relevance
    zero_noise = make_method("smoothgrad", samples=3, sigma=0.0, progress=False).explain(model, x).relevance
    np.testing.assert_allclose(zero_noise, plain, rtol=1e-6, atol=1e-7)


def test_smoothgrad_sigma_scales_with_the_data_range_without_a_spec(mlp):
    _, model, x = mlp
    assert model.preprocess is None
    ours = make_method("smoothgrad", samples=2, sigma=0.1, progress=False).explain(model, x)
    np.testing.assert_allclose(ours.diagnostics["noise_std"], 0.1 * (x.max(axis=1) - x.min(axis=1)), rtol=1e-6)


@pytest.mark.parametrize("rule, baseline", [("gausslegendre", "min"), ("riemann_middle", "zeros"),
                                            ("gausslegendre", 0.25), ("riemann_left", "zeros"),
                                            ("riemann_right", "min"), ("riemann_trapezoid", 0.25)])
def test_integrated_gradients_matches_captum(cnn, rule, baseline):
    """Captum's riemann_trapezoid weights its n points by 1/n (ends halved; the weights sum to (n-1)/n): the
    trapezoid rule's 1/(n-1) makes its attributions n/(n-1) times Captum's, and integrates a linear path exactly."""
    net, model, x = cnn
    targets = captum_targets(net, x, None)
    ours = IntegratedGradients(steps=20, baseline=baseline, rule=rule, progress=False).explain(model, x)
    value = 0.0 if baseline in ("min", "zeros") else baseline  # the default spec's range minimum is 0
    reference = captum_attr.IntegratedGradients(net).attribute(
        torch.from_numpy(x), baselines=value, target=targets, n_steps=20, method=rule)
    scale = 20 / 19 if rule == "riemann_trapezoid" else 1.0
    assert relative(ours.relevance, scale * reference) < TOLERANCE
    assert np.abs(ours.diagnostics["completeness_gap"]).max() < 0.05 * np.abs(ours.score).max()


def test_integrated_gradients_hidden_target_and_softmax_model(mlp, cnn):
    net, model, x = mlp
    targets = captum_targets(net.logits, x, None)
    ours = make_method("integrated-gradients", steps=16, progress=False).explain(model, x)
    reference = captum_attr.IntegratedGradients(net.logits).attribute(torch.from_numpy(x), target=targets,
                                                                     n_steps=16)
    assert relative(ours.relevance, reference) < TOLERANCE  # no spec: the "min" baseline falls back to zeros
    net, model, x = cnn
    relu = next(node.output[0] for node in model.proto.graph.node if node.op_type == "Relu")
    activations = model.run(x, [relu])[relu].min(axis=0)  # a unit active on every sample
    unit = tuple(int(i) for i in np.unravel_index(activations.argmax(), activations.shape))
    ours = make_method("integrated-gradients", steps=16, progress=False).explain(model, x, Target(relu, unit[0], unit))
    reference = captum_attr.NeuronIntegratedGradients(net, net.relu).attribute(torch.from_numpy(x), unit, n_steps=16)
    assert relative(ours.relevance, reference) < TOLERANCE


def test_bad_parameters_are_user_errors(cnn):
    _, model, x = cnn
    with pytest.raises(OnnxplainError):
        make_method("integrated-gradients", steps=1)
    with pytest.raises(OnnxplainError):
        make_method("smoothgrad", samples=0)
    with pytest.raises(OnnxplainError):
        make_method("integrated-gradients", baseline="black", progress=False).explain(model, x)
    with pytest.raises(OnnxplainError, match="do not apply"):
        make_method("gradient", window=3)


def test_cli_explains_with_gradient_methods(digits_cnn, tmp_path):
    from onnxplain.cli.main import cli

    sample = digits_cnn.parent / "samples" / "digit3_cnn.npy"
    runner = CliRunner()
    result = runner.invoke(cli, ["explain", str(digits_cnn), str(sample), "--method", "smoothgrad", "--samples",
                                 "4", "--sigma", "0.1", "--seed", "3", "--save-npy", str(tmp_path / "r.npy"),
                                 "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    model = onnxplain.load(digits_cnn)
    expected = make_method("smoothgrad", samples=4, sigma=0.1, seed=3, progress=False).explain(
        model, np.load(sample)[None]).relevance[0]
    np.testing.assert_allclose(np.load(tmp_path / "r.npy"), expected, rtol=1e-6)
    result = runner.invoke(cli, ["explain", str(digits_cnn), str(sample), "--method", "integrated-gradients",
                                 "--steps", "8", "--baseline", "zeros", "--quiet"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["explain", str(digits_cnn), str(sample), "--method", "gradient", "--steps", "8"])
    assert result.exit_code == 2 and "do not apply" in result.stderr


def _model_file(tmp_path, name, nodes, inits, input_type, shape, classes) -> onnxplain.Model:
    from onnx import TensorProto, helper, save

    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", input_type, shape)],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [shape[0], classes])],
                              inits)
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), tmp_path / name)
    return onnxplain.load(tmp_path / name)


def test_noisy_and_path_copies_respect_a_batch_fixed_at_one(tmp_path):
    """A graph that flattens its batch axis away (Flatten at axis 0) keeps its batch fixed at 1: SmoothGrad's and
    integrated gradients' copies go through it one at a time (a linear model: every gradient is the weight column)."""
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    nodes = [helper.make_node("Flatten", ["x"], ["flat"], axis=0),
             helper.make_node("MatMul", ["flat", "w"], ["logits"])]
    inits = [numpy_helper.from_array(weight, "w")]
    model = _model_file(tmp_path, "fixed.onnx", nodes, inits, TensorProto.FLOAT, [1, 6], 3)
    assert model.fixed_batch
    x = np.random.default_rng(1).normal(size=(2, 6)).astype(np.float32)
    for name in ("smoothgrad", "integrated-gradients"):
        explanation = make_method(name, progress=False).explain(model, x)
        column = weight[:, explanation.target].T
        want = column if name == "smoothgrad" else x * column   # IG's default baseline: zeros (no spec)
        np.testing.assert_allclose(explanation.relevance, want, rtol=1e-4, atol=1e-6)


def test_token_models_refuse_fractions_and_lrp(tmp_path):
    """An int64 input (token ids into an embedding): fractional values are refused rather than truncated, and LRP,
    which needs a floating-point input like the gradients, says so."""
    from onnx import TensorProto, helper, numpy_helper

    table = np.random.default_rng(2).normal(size=(10, 3)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["table", "x"], ["vectors"]),
             helper.make_node("ReduceMean", ["vectors"], ["logits"], axes=[1], keepdims=0)]
    model = _model_file(tmp_path, "tokens.onnx", nodes, [numpy_helper.from_array(table, "table")],
                        TensorProto.INT64, ["N", 4], 3)
    with pytest.raises(OnnxplainError, match="fractional values"):
        model.check_input(np.array([[1.5, 2, 3, 4]]))
    tokens = np.array([[1, 2, 3, 4]], np.int64)
    assert np.allclose(model.check_input(tokens.astype(np.float64)), tokens)
    with pytest.raises(OnnxplainError, match="LRP needs a floating-point input"):
        make_method("lrp", progress=False).explain(model, tokens)
    from onnxplain.lrp import unsupported_ops

    assert unsupported_ops(model) == ["the int64 input 'x', which goes into Gather (vectors) (LRP needs a "
                                      "floating-point input, or integer pixels cast to float)"]   # CLI: not default
