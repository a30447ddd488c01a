"""The calls every method offers (`onnxplain.explanation.Method`): `explain`, and Captum-style `attribute`, which
returns the same relevance, shaped like the input batch."""
from __future__ import annotations

import numpy as np
import pytest

import onnxplain
from onnxplain.explanation import Method
from onnxplain.methods import make_method, method_names
from onnxplain.targets import Target

SMALL = {  # keeps each method to a fraction of a second on the digits CNN
    "pda": {"window": 7, "stride": 7, "samples": 2, "padding": 0, "sampler": "marginal"},
    "occlusion": {"window": 7, "stride": 7},
    "smoothgrad": {"samples": 2},
    "integrated-gradients": {"steps": 4},
}


@pytest.mark.parametrize("name", method_names())
def test_attribute_returns_explains_relevance(name, digits_cnn):
    model = onnxplain.load(digits_cnn)
    samples = digits_cnn.parent / "samples"
    x = np.stack([np.load(samples / f"digit{d}_cnn.npy") for d in (3, 7)])
    options = dict(SMALL.get(name, {}))
    if name == "pda":
        options["reference"] = np.load(samples / "digits_reference_cnn.npy")[:10]
    method = make_method(name, progress=False, **options)
    assert isinstance(method, Method) and method.name == name
    target = Target(index=3)
    explanation = method.explain(model, x, target)
    relevance = method.attribute(model, x, target)
    assert relevance.shape == x.shape and np.abs(relevance).max() > 0
    np.testing.assert_array_equal(relevance, explanation.relevance)
    assert explanation.method == name
