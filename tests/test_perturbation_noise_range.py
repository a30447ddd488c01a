"""Region perturbation's noise on a mean/std-normalised RGB input: each channel's replaced values are uniform over that
channel's own valid range [(0 - m) / s, (1 - m) / s], whose low end is negative (a range starting at 0 would not
tell low + (high - low) u from low + high u)."""
from __future__ import annotations

import json

import numpy as np
from metrics_fixtures import linear_onnx
from scipy import stats

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
