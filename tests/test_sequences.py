"""A (C, L) sequence input into a Conv1d: windows of positions over all channels, not a C x L gray image."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import onnxplain
from onnxplain.methods import make_method
from onnxplain.methods.windows import Geometry
from onnxplain.metrics.layout import InputLayout
from onnxplain.metrics.perturbation import default_region
from onnxplain.targets import Target

CHANNELS, LENGTH = 3, 64


class Conv1dNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.fc = torch.nn.Conv1d(CHANNELS, 4, 5, padding=2), torch.nn.Linear(4 * LENGTH, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


class GrayMlp(torch.nn.Module):
    """(N, 8, 8) gray images into a plain MLP: stays an H x W image."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(64, 3)

    def forward(self, x):
        return self.fc(x.flatten(1))


def export(net, shape, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), (torch.rand(shape),), str(path), dynamo=False, opset_version=13,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    return onnxplain.load(path)


@pytest.fixture(scope="module")
def sequence(tmp_path_factory):
    net = Conv1dNet()
    model = export(net, (2, CHANNELS, LENGTH), tmp_path_factory.mktemp("seq") / "conv1d.onnx")
    x = np.random.default_rng(0).normal(size=(2, CHANNELS, LENGTH)).astype(np.float32)
    return net, model, x


def literal_occlusion(net, x, target, k, stride, fill):
    """Mean over the windows [i, i+k) covering each position of f(x) - f(x with positions [i, i+k) of every channel
    set to `fill`), the last window flush with the end, shared equally by the position's channels."""
    starts = sorted(set(range(0, LENGTH - k + 1, stride)) | {LENGTH - k})
    with torch.no_grad():
        score = net(torch.from_numpy(x))[:, target].double().numpy()
        total, count = np.zeros((len(x), LENGTH)), np.zeros(LENGTH)
        for i in starts:
            covered = x.copy()
            covered[:, :, i:i + k] = fill
            total[:, i:i + k] += (score - net(torch.from_numpy(covered))[:, target].double().numpy())[:, None]
            count[i:i + k] += 1
    return np.repeat((total / count)[:, None] / CHANNELS, CHANNELS, axis=1)


def test_conv1d_input_is_channels_along_positions(sequence, tmp_path):
    _, model, _ = sequence
    assert model.sequence_layout is not None
    geometry = Geometry.infer(model, (CHANNELS, LENGTH))
    assert (geometry.layout, geometry.channels, geometry.spatial) == ("channels_first", CHANNELS, (LENGTH,))
    layout = InputLayout.of(model, (CHANNELS, LENGTH))
    assert layout.channel_axis == 0 and layout.spatial_shape == (LENGTH,) and default_region(layout) == 8
    gray = export(GrayMlp(), (2, 8, 8), tmp_path / "gray.onnx")
    assert gray.sequence_layout is None
    assert Geometry.infer(gray, (8, 8)).spatial == (8, 8) and InputLayout.of(gray, (8, 8)).channel_axis is None


def test_sensitivity_takes_the_gradient_norm_over_a_positions_channels(sequence):
    """No preprocessing spec: the channels come from the Conv1d that reads the input, as for occlusion."""
    net, model, x = sequence
    relevance = make_method("sensitivity", progress=False).attribute(model, x, Target(index=2))
    inputs = torch.from_numpy(x).requires_grad_(True)
    (grad,) = torch.autograd.grad(net(inputs)[:, 2].sum(), inputs)
    norm = grad.double().norm(dim=1, keepdim=True).numpy()
    np.testing.assert_allclose(relevance, np.repeat(norm / CHANNELS, CHANNELS, axis=1), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("window, stride, fill", [(None, None, 0.0), (6, 4, 0.5), (1, 1, -1.0)])
def test_occlusion_covers_positions_of_every_channel(sequence, window, stride, fill):
    net, model, x = sequence
    explanation = make_method("occlusion", window=window, stride=stride, fill=fill, progress=False).explain(
        model, x, Target(index=2))
    k, step = explanation.params["window"], explanation.params["stride"]
    assert (k, step) == ((LENGTH // 8, LENGTH // 16) if window is None else (window, stride))
    np.testing.assert_allclose(explanation.relevance, literal_occlusion(net, x, 2, k, step, fill),
                               rtol=1e-4, atol=1e-4)


def test_pda_windows_span_every_channel(sequence):
    _, model, x = sequence
    reference = np.random.default_rng(1).normal(size=(12, CHANNELS, LENGTH)).astype(np.float32)
    for sampler in ("marginal", "conditional"):
        explanation = make_method("pda", sampler=sampler, samples=4, window=2, stride=2, reference=reference,
                                  progress=False).explain(model, x, Target(index=1))
        relevance = explanation.relevance
        assert explanation.diagnostics["windows"] == LENGTH // 2 and np.isfinite(relevance).all()
        np.testing.assert_array_equal(relevance, np.repeat(relevance[:, :1], CHANNELS, axis=1))


class StandardisedConv1d(Conv1dNet):
    """Per-sample standardisation before the Conv1d: the input fans out (Sub, ReduceMean, Shape, ...) on its way."""

    def forward(self, x):
        x = (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + 1e-5)
        return super().forward(x)


def test_a_conv1d_behind_elementwise_ops_that_fan_out_is_found(tmp_path):
    """Every consumer of the input is followed (not one in two, as when protobuf's per-access node wrappers reused
    an id a visited set held)."""
    model = export(StandardisedConv1d(), (2, CHANNELS, LENGTH), tmp_path / "standardised.onnx")
    assert model.sequence_layout is not None
    assert Geometry.infer(model, (CHANNELS, LENGTH)).layout == "channels_first"


class SquashedConv1d(Conv1dNet):
    """The Conv1d net behind activations of its raw input (a LeakyReLU, then a Tanh)."""

    def forward(self, x):
        return super().forward(torch.tanh(torch.nn.functional.leaky_relu(x, 0.1)))


def test_a_conv1d_behind_activations_is_found(tmp_path):
    """Activations keep every axis in place on the way to the first convolution, as the ops listed there do."""
    model = export(SquashedConv1d(), (2, CHANNELS, LENGTH), tmp_path / "squashed.onnx")
    assert {"LeakyRelu", "Tanh"} <= {node.op_type for node in model.proto.graph.node}
    assert model.sequence_layout == "channels_first"


def test_a_sequence_is_drawn_as_channels_over_a_heatmap(sequence, tmp_path):
    """The picture of a (C, L) explanation: the channels as lines, then a C x L heatmap of the relevance (not bars
    of flattened features); the CLI writes it."""
    from click.testing import CliRunner

    from onnxplain import viz
    from onnxplain.cli.main import cli

    _, model, x = sequence
    relevance = make_method("gradient-x-input", progress=False).attribute(model, x[:1], Target())[0]
    figure = viz.sample_figure(model, x[0], relevance)
    signal, heat = figure.axes
    assert len(signal.lines) == CHANNELS
    np.testing.assert_allclose(heat.images[0].get_array(), viz.heatmap_rgb(relevance))
    np.save(tmp_path / "x.npy", x[0])
    result = CliRunner().invoke(cli, ["explain", str(model.path), str(tmp_path / "x.npy"), "--method",
                                      "gradient-x-input", "--out", str(tmp_path / "seq.png"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "seq.png").stat().st_size > 0


class ChannelsLast(Conv1dNet):
    """(N, L, C) samples (the order Keras keeps sequences in), transposed to (N, C, L) for the Conv1d."""

    def forward(self, x):
        return super().forward(x.transpose(1, 2))


def test_channels_last_sequences_window_positions_over_all_channels(tmp_path):
    """(L, C) samples into a transposed Conv1d: occlusion windows cover positions of every channel, as the same
    net's (C, L) twin gives on the transposed input; the picture shows C channels."""
    from onnxplain import viz

    twin = export(Conv1dNet(), (2, CHANNELS, LENGTH), tmp_path / "first.onnx")
    model = export(ChannelsLast(), (2, LENGTH, CHANNELS), tmp_path / "last.onnx")
    assert model.sequence_layout == "channels_last" and twin.sequence_layout == "channels_first"
    assert Geometry.infer(model, (LENGTH, CHANNELS)).layout == "channels_last"
    x = np.random.default_rng(3).normal(size=(2, CHANNELS, LENGTH)).astype(np.float32)
    occlusion = make_method("occlusion", window=8, stride=4, progress=False)
    want = occlusion.attribute(twin, x, Target(index=1))
    got = occlusion.attribute(model, np.ascontiguousarray(x.transpose(0, 2, 1)), Target(index=1))
    np.testing.assert_allclose(got.transpose(0, 2, 1), want, rtol=1e-5, atol=1e-6)
    assert InputLayout.of(model, (LENGTH, CHANNELS)).channels == CHANNELS
    assert len(viz.sample_figure(model, x[0].T, got[0]).axes[0].lines) == CHANNELS


# ------------------------------------------------------------------ Keras Conv1D through tf2onnx (committed export)

@pytest.fixture(scope="module")
def keras_sequences():
    """The committed tf2onnx export (`models/build_keras_sequence.py`) and its held-out sequences with planted bumps."""
    models = Path(__file__).resolve().parents[1] / "models"
    check = np.load(models / "samples" / "sequence_keras_tf_check.npz")
    return onnxplain.load(models / "sequence_keras_tf.onnx"), check


def test_keras_conv1d_export_is_a_channels_last_sequence(keras_sequences):
    """tf2onnx writes Conv1D as Unsqueeze -> Transpose -> a 1 x k Conv: the (L, C) samples are sequences, and the
    graph reproduces Keras's probabilities."""
    model, check = keras_sequences
    ops = [node.op_type for node in model.proto.graph.node]
    assert ops[:3] == ["Unsqueeze", "Transpose", "Conv"] and "Conv1D" not in ops
    assert model.sequence_layout == "channels_last" and model.labels == ["ch0", "ch1", "ch2", "ch0+ch2"]
    np.testing.assert_allclose(model.scores(check["inputs"]), check["probabilities"], atol=1e-5)
    assert Geometry.infer(model, check["inputs"].shape[1:]).layout == "channels_last"


@pytest.mark.parametrize("method", ["lrp", "occlusion"])
def test_keras_sequence_explanations_land_on_the_planted_bumps(keras_sequences, method):
    """Each sequence's class is a bump planted at a known position: positive evidence there, over 9 of 48 positions
    (the bump and two on each side), is above 85% on average (19% by chance). Occlusion windows span every channel
    of their positions, so its relevance is alike across channels; LRP conserves through the Unsqueeze/Transpose."""
    model, check = keras_sequences
    x, classes = check["inputs"], check["labels"]
    explanation = make_method(method, progress=False).explain(model, x)
    relevance = explanation.relevance
    assert (model.scores(x).argmax(1) == classes).all()
    evidence = np.clip(relevance, 0, None).sum(2)
    share = [row[max(start - 2, 0):start + 7].sum() / row.sum() for row, start in zip(evidence, check["starts"])]
    assert np.mean(share) > 0.85 and np.min(share) > 0.5, share
    if method == "occlusion":
        np.testing.assert_array_equal(relevance[..., 0], relevance[..., 2])
    else:
        assert np.abs(explanation.diagnostics["conservation_error"]).max() < 1e-5


def test_sequence_layout_reads_unsqueeze_forms_and_kernels():
    """Opset-11 Unsqueeze (axes as an attribute, negative) into a 1 x k kernel: a sequence; a 3 x 3 kernel over the
    same axes, or a gray image unsqueezed to one channel, is no sequence."""
    from onnx import TensorProto, helper, numpy_helper

    from onnxplain.sequences import sequence_layout

    def graph(perm, kernel, axes=(-3,)):
        weight = numpy_helper.from_array(np.zeros((4, CHANNELS, *kernel), np.float32), "w")
        nodes = [helper.make_node("Unsqueeze", ["x"], ["u"], axes=list(axes)),
                 helper.make_node("Transpose", ["u"], ["t"], perm=list(perm)),
                 helper.make_node("Conv", ["t", "w"], ["y"])]
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", LENGTH, CHANNELS])]
        outputs = [helper.make_empty_tensor_value_info("y")]
        return helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, [weight]),
                                 opset_imports=[helper.make_opsetid("", 11)])

    assert sequence_layout(graph((0, 3, 1, 2), (1, 5)), "x") == "channels_last"
    assert sequence_layout(graph((0, 3, 1, 2), (3, 3)), "x") is None
    assert sequence_layout(graph((0, 1, 2, 3), (3, 3), axes=(1,)), "x") is None   # (N, 1, L, C): one gray channel
    assert sequence_layout(graph((0, 2, 1, 3), (1, 5), axes=(1,)), "x") == "channels_first"   # (N, L, 1, C)


class MultispectralNet(torch.nn.Module):
    """(N, 4, 12, 10) images (RGBA, multispectral) into a 2-D convolution; `channels_last` feeds (N, 12, 10, 4)."""

    def __init__(self, channels_last: bool):
        super().__init__()
        torch.manual_seed(1)
        self.channels_last = channels_last
        self.conv, self.fc = torch.nn.Conv2d(4, 6, 3, padding=1), torch.nn.Linear(6 * 12 * 10, 5)

    def forward(self, x):
        x = x.permute(0, 3, 1, 2) if self.channels_last else x
        return self.fc(torch.relu(self.conv(x)).flatten(1))


@pytest.mark.parametrize("channels_last", [False, True])
def test_an_image_of_four_channels_is_not_a_volume(channels_last, tmp_path):
    """No spec is guessed for 4 channels; the 2-D convolution the input feeds says which axis holds them. Before,
    the sample was a (D, H, W) volume: PDA slid k x k x k windows across the channels, occlusion's default window
    shrank to 1, the picture was a slice montage and the incremental engine was never used."""
    from onnxplain.io.nifti import is_volume_input
    from onnxplain.viz import sample_figure

    shape = (12, 10, 4) if channels_last else (4, 12, 10)
    model = export(MultispectralNet(channels_last), (2, *shape), tmp_path / "four.onnx")
    assert model.preprocess is None and model.image_layout == ("channels_last" if channels_last else "channels_first")
    geometry = Geometry.infer(model, shape)
    assert (geometry.channels, geometry.spatial) == (4, (12, 10)) and not is_volume_input(model)
    assert InputLayout.of(model, shape).channel_axis == (2 if channels_last else 0)
    rng = np.random.default_rng(0)
    x, reference = rng.random((1, *shape), np.float32), rng.random((3, *shape), np.float32)
    pda = make_method("pda", window=3, samples=3, sampler="marginal", reference=reference, progress=False,
                      device="cpu").explain(model, x)
    per_pixel = np.moveaxis(pda.relevance[0], -1, 0) if channels_last else pda.relevance[0]
    assert np.allclose(per_pixel, per_pixel[:1]) and np.abs(per_pixel).max() > 0   # all channels of a window
    assert pda.diagnostics["windows"] == 10 * 8
    # channels last: from the Transpose that makes them channels-first, as from the input otherwise
    assert pda.diagnostics["forward_passes_on"] == "torch (cpu), incremental"
    session = make_method("pda", window=3, samples=3, sampler="marginal", reference=reference,
                          progress=False).explain(model, x)
    np.testing.assert_allclose(pda.relevance, session.relevance, atol=1e-5 * np.abs(session.relevance).max())
    occlusion = make_method("occlusion", progress=False).explain(model, x)
    assert occlusion.params["window"] == 1 and occlusion.diagnostics["windows"] == 12 * 10
    titles = [axis.get_title() for axis in sample_figure(model, x[0], pda.relevance[0]).axes]
    assert titles[0] == "input"   # input | heatmap | overlay, not a slice montage


class ChannelsLastVolumeNet(torch.nn.Module):
    """(N, D, H, W, C) volumes permuted into a Conv3d (Keras's Conv3D order)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.conv, self.fc = torch.nn.Conv3d(2, 4, 3, padding=1), torch.nn.Linear(4 * 6 * 5 * 4, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x.permute(0, 4, 1, 2, 3))).flatten(1))


def test_a_channels_last_volume_keeps_its_channels_together(tmp_path):
    """(D, H, W, C) samples into a Conv3d: the channels are the last axis (read off the graph, or given by
    volume_shape), not D. Before, D was taken for the channels: windows slid across the real channel axis, and a
    3x3x3 window was refused as larger than the 'input' 5x4x2."""
    from onnxplain.io.nifti import sample_to_volume

    shape = (6, 5, 4, 2)
    model = export(ChannelsLastVolumeNet(), (2, *shape), tmp_path / "volume.onnx")
    assert model.image_layout == "channels_last"
    for geometry in (Geometry.infer(model, shape), Geometry.infer(model, shape, volume_shape=shape[:-1])):
        assert (geometry.layout, geometry.channels, geometry.spatial) == ("channels_last", 2, shape[:-1])
    rng = np.random.default_rng(0)
    x, reference = rng.random((1, *shape), np.float32), rng.random((3, *shape), np.float32)
    params = dict(window=3, samples=3, sampler="marginal", reference=reference, progress=False)
    session = make_method("pda", **params).explain(model, x)
    pda = make_method("pda", device="cpu", **params).explain(model, x)
    assert pda.diagnostics["forward_passes_on"] == "torch (cpu), incremental"
    np.testing.assert_allclose(pda.relevance, session.relevance, atol=1e-5 * np.abs(session.relevance).max())
    assert np.allclose(pda.relevance[0], pda.relevance[0, ..., :1])   # both channels of a voxel together
    np.testing.assert_allclose(sample_to_volume(pda.relevance[0], model), pda.relevance[0].sum(axis=-1))
