"""Where input bounds come from (z^B's box, SmoothGrad's noise scale, integrated gradients' 'min' baseline): a
stored or given preprocessing spec; a spec guessed from the input's shape only for inputs inside its range."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

import onnxplain
from onnxplain.errors import OnnxplainError
from onnxplain.bounds import input_bounds, spec_range_rows
from onnxplain.methods import make_method


def export(net, shape, path):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), (torch.rand(shape),), str(path), dynamo=False, opset_version=13,
                          input_names=["x"], dynamic_axes={"x": {0: "N"}})
    return path


@pytest.fixture(scope="module")
def image_net(tmp_path_factory):
    """A (3, 8, 8) conv net with no stored spec: its spec is guessed (RGB in [0, 1])."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(144, 3))
    model = onnxplain.load(export(net, (2, 3, 8, 8), tmp_path_factory.mktemp("image") / "net.onnx"))
    assert model.preprocess_source == "guessed"
    return model


def test_a_guessed_range_holds_only_for_inputs_inside_it(image_net):
    """Normalised arrays (about -2..2) are not what the guessed spec reads images to: no range for them, so deep
    Taylor takes w^2, epsilon-gamma-box asks for bounds in one line, SmoothGrad scales its noise by each sample's own
    range, evaluate's noise spans the data's range and integrated gradients' 'min' baseline is zeros. Arrays inside
    [0, 1] keep the guessed range (and say so). Decided per input: in a batch that mixes both, each input gets what
    it gets alone, and z^B, which takes one box per batch, refuses the mix in one line."""
    rng = np.random.default_rng(0)
    normalised = rng.normal(size=(2, 3, 8, 8)).astype(np.float32)
    pixels = rng.random((2, 3, 8, 8)).astype(np.float32)
    mixed = np.concatenate([pixels[:1], normalised[:1]])
    assert not spec_range_rows(image_net, normalised).any() and spec_range_rows(image_net, pixels).all()
    assert spec_range_rows(image_net, mixed).tolist() == [True, False]
    taylor = make_method("deep-taylor", progress=False)
    options = taylor.explain(image_net, normalised).params
    assert "w2" in options["applied_rules"] and "box_bounds" not in options
    options = taylor.explain(image_net, pixels).params
    assert "zb" in options["applied_rules"] and options["box_bounds"] == "guessed preprocessing spec"
    with pytest.raises(OnnxplainError, match="mixes inputs inside and outside"):
        taylor.explain(image_net, mixed)
    make_method("lrp", progress=False).explain(image_net, mixed)   # epsilon-plus takes no box: no matter
    with pytest.raises(OnnxplainError, match="outside the range of the spec guessed"):
        make_method("lrp", composite="epsilon-gamma-box", progress=False).attribute(image_net, normalised)
    smooth = make_method("smoothgrad", sigma=0.1, progress=False)
    spread = np.ptp(normalised.reshape(2, -1), axis=1)
    np.testing.assert_allclose(smooth.noise_scale(image_net, normalised)[:, 0, 0, 0], 0.1 * spread)
    np.testing.assert_allclose(smooth.noise_scale(image_net, pixels), 0.1)
    np.testing.assert_allclose(smooth.noise_scale(image_net, mixed)[:, 0, 0, 0], [0.1, 0.1 * spread[0]])
    np.testing.assert_array_equal(smooth.attribute(image_net, mixed)[1], smooth.attribute(image_net, normalised[:1])[0])
    from onnxplain.metrics.layout import InputLayout   # evaluate's noise fill

    layout = InputLayout.of(image_net, (3, 8, 8))
    assert [float(np.max(v)) for v in layout.value_range(normalised)] == [normalised.min(), normalised.max()]
    assert [float(np.max(v)) for v in layout.value_range(pixels)] == [0.0, 1.0]
    low, high = layout.value_range(mixed)
    assert low[0].max() == 0 and high[0].min() == 1 and high[1].min() == mixed.max()
    ig = make_method("integrated-gradients", progress=False)
    assert not ig.baseline_batch(image_net, normalised).any() and not ig.baseline_batch(image_net, pixels).any()


def test_a_flat_spec_bounds_a_sequence(tmp_path):
    """A spec with one mean and std (its colour left at the default, RGB) gives a Conv1d net's (C, L) input one
    range for every channel: deep Taylor's first layer takes z^B with it."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv1d(3, 4, 5), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(48, 2))
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"layout": "flat", "scale": 6 / 255, "mean": [3.0], "std": [1.0]}))
    model = onnxplain.load(export(net, (2, 3, 16), tmp_path / "seq.onnx"), preprocess=spec)
    x = np.random.default_rng(0).uniform(-3, 3, size=(2, 3, 16)).astype(np.float32)
    low, high = input_bounds(model, x.shape)
    assert spec_range_rows(model, x).all()
    np.testing.assert_allclose([low.min(), low.max(), high.min(), high.max()], [-3, -3, 3, 3], rtol=1e-6)
    options = make_method("deep-taylor", progress=False).explain(model, x).params
    assert "zb" in options["applied_rules"] and options["box_bounds"] == "given preprocessing spec"
