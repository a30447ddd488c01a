"""The documented default windows of the window methods are the ones that run: prediction difference on an image
(window 4, conditional ring padding 2) and occlusion (window about 1/8 of the smallest axis, stride half of it)."""
from __future__ import annotations

import numpy as np
import pytest

import onnxplain
from onnxplain.methods import make_method
from onnxplain.methods.pda import PredictionDifference

pytestmark = pytest.mark.usefixtures("private_cache")  # fitted samplers are cached in a folder of the test's own


def test_prediction_difference_defaults_on_an_image(digits_logreg):
    """The logistic regression's flat input is an 8x8 image (its spec's size): image defaults apply."""
    model = onnxplain.load(digits_logreg)
    samples = digits_logreg.parent / "samples"
    reference = np.load(samples / "digits_reference_logreg.npy")[:30]
    x = np.load(samples / "digit3_logreg.npy")[None]
    default = PredictionDifference(reference=reference, samples=3, progress=False).explain(model, x)
    explicit = PredictionDifference(reference=reference, samples=3, window=4, padding=2,
                                    progress=False).explain(model, x)
    assert (default.params["window"], default.params["padding"]) == (4, 2)
    assert default.diagnostics["window"] == (4, 4)
    np.testing.assert_array_equal(default.relevance, explicit.relevance)


def test_occlusion_defaults_on_a_28_pixel_image(digits_cnn_model, digits_cnn):
    x = np.load(digits_cnn.parent / "samples" / "digit3_cnn.npy")[None]
    default = make_method("occlusion", progress=False).explain(digits_cnn_model, x)
    assert (default.params["window"], default.params["stride"]) == (4, 2)   # round(28 / 8), 4 // 2
    explicit = make_method("occlusion", window=4, stride=2, progress=False).explain(digits_cnn_model, x)
    np.testing.assert_array_equal(default.relevance, explicit.relevance)
