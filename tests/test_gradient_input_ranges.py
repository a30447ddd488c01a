"""Gradient methods on inputs that are not in [0, 1]: gradient x input on signed inputs against captum's
InputXGradient, and SmoothGrad's noise on a mean/std-normalised input, whose valid range [(0 - m) / s, (1 - m) / s]
has a negative low end (the noise is sigma times the range's width, per channel)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import InputXGradient

import onnxplain
from onnxplain.methods import make_method
from onnxplain.targets import Target

import legacy_export

pytestmark = pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")


def export(net: torch.nn.Module, example: torch.Tensor, path, **load) -> onnxplain.Model:
    return onnxplain.load(legacy_export.export(net, path, tuple(example.shape), opset=17), **load)


def test_gradient_x_input_matches_captum_on_signed_inputs(tmp_path):
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).eval()
    x = torch.randn(5, 6)
    assert (x < 0).any()
    model = export(net, x, tmp_path / "mlp.onnx")
    ours = make_method("gradient-x-input", progress=False).explain(model, x.numpy(), Target(index=1))
    theirs = InputXGradient(net).attribute(x, target=1).detach().numpy()
    np.testing.assert_allclose(ours.relevance, theirs, rtol=1e-5, atol=1e-6 * np.abs(theirs).max())


def test_smoothgrad_noise_is_sigma_times_the_width_of_a_normalised_range(tmp_path):
    torch.manual_seed(4)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.Flatten(), torch.nn.Linear(2 * 4 * 4, 3)).eval()
    mean, std = np.array([0.5, 0.4, 0.3]), np.array([0.25, 0.2, 0.5])
    spec = {"layout": "NCHW", "size": [6, 6], "color": "rgb", "scale": 1 / 255, "mean": mean.tolist(),
            "std": std.tolist()}
    pixels = np.random.default_rng(5).uniform(0, 1, size=(2, 3, 6, 6))
    x = ((pixels - mean[:, None, None]) / std[:, None, None]).astype(np.float32)
    model = export(net, torch.from_numpy(x), tmp_path / "cnn.onnx", preprocess=spec)
    sigma = 0.1
    explanation = make_method("smoothgrad", samples=2, sigma=sigma, progress=False).explain(model, x)
    low, high = (0 - mean) / std, (1 - mean) / std                       # low < 0 in every channel
    np.testing.assert_allclose(explanation.diagnostics["noise_std"], sigma * (high - low).mean(), rtol=1e-6)
