"""Region perturbation's noise on a mean/std-normalised RGB input: each channel's replaced values are uniform over that
channel's own valid range [(0 - m) / s, (1 - m) / s], whose low end is negative (a range starting at 0 would not
tell low + (high - low) u from low + high u). On uint8 pixels the noise takes every whole value of the range, the
top one included, equally often."""
from __future__ import annotations

import json

import numpy as np
import onnx
from metrics_fixtures import linear_onnx
from onnx import TensorProto, helper, numpy_helper
from scipy import stats

import onnxplain
from onnxplain.metrics import region_perturbation

MEAN, STD = np.array([0.5, 0.4, 0.6]), np.array([0.25, 0.5, 0.2])
SPEC = json.dumps({"layout": "NCHW", "size": [12, 12], "color": "rgb", "scale": 1 / 255, "mean": MEAN.tolist(),
                   "std": STD.tolist()})


def test_noise_is_uniform_over_each_channels_normalised_range(tmp_path):
    rng = np.random.default_rng(8)
    model = linear_onnx(tmp_path / "rgb.onnx", rng.normal(size=(3 * 12 * 12, 2)), np.zeros(2), (3, 12, 12), SPEC)
    seen = []
    run = model.run
    model.run = lambda batch, *a, **k: (seen.append(np.array(batch)), run(batch, *a, **k))[1]
    x = ((rng.uniform(0, 1, size=(1, 3, 12, 12)) - MEAN[:, None, None]) / STD[:, None, None]).astype(np.float32)
    region_perturbation(model, x, rng.normal(size=x.shape), 0, region=3, steps=16, seed=2)
    replaced = seen[-1].reshape(17, 3, 12, 12)[-1]                     # after the last step: every region
    for channel, (m, s) in enumerate(zip(MEAN, STD)):
        low, high = (0 - m) / s, (1 - m) / s
        values = replaced[channel].ravel()
        assert low - 1e-6 <= values.min() and values.max() <= high + 1e-6
        assert stats.kstest(values, "uniform", args=(low, high - low)).pvalue > 1e-3


def uint8_linear(path, weights: np.ndarray, sample_shape: tuple[int, ...]):
    """uint8 pixels -> Cast -> Flatten -> MatMul: a model whose input is whole numbers."""
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["real"], to=TensorProto.FLOAT),
         helper.make_node("Flatten", ["real"], ["flat"], axis=1),
         helper.make_node("MatMul", ["flat", "W"], ["logits"])],
        "pixels", [helper.make_tensor_value_info("x", TensorProto.UINT8, [None, *sample_shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, weights.shape[1]])],
        initializer=[numpy_helper.from_array(weights.astype(np.float32), "W")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return onnxplain.load(path)


def test_noise_on_uint8_pixels_takes_every_value_of_the_range(tmp_path):
    rng = np.random.default_rng(3)
    model = uint8_linear(tmp_path / "pixels.onnx", rng.normal(size=(3 * 40 * 40, 2)), (3, 40, 40))
    seen = []
    run = model.run
    model.run = lambda batch, *a, **k: (seen.append(np.array(batch)), run(batch, *a, **k))[1]
    x = rng.integers(0, 256, size=(1, 3, 40, 40)).astype(np.uint8)
    x[0, 0, 0, :2] = 0, 255                                              # the data's range is the whole 0..255
    region_perturbation(model, x, rng.normal(size=x.shape), 0, region=5, steps=64, seed=4)
    replaced = seen[-1].reshape(65, 3, 40, 40)[-1]
    assert replaced.dtype == np.uint8
    counts = np.bincount(replaced.ravel(), minlength=256)
    assert counts[255] > 0 and counts[0] > 0
    assert stats.chisquare(counts).pvalue > 1e-3
