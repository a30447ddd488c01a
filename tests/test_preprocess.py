"""Preprocessing specs: image -> tensor for each layout and colour order, and the inverse for display."""
from __future__ import annotations

import numpy as np
import pytest

from onnxplain.errors import OnnxplainError
from onnxplain.io.preprocess import PreprocessSpec


def test_caffe_bgr_mean_subtraction_and_inverse():
    spec = PreprocessSpec(layout="NCHW", size=(4, 6), color="bgr", scale=1.0, mean=(104.0, 117.0, 123.0))
    pixels = np.random.default_rng(0).integers(0, 256, (4, 6, 3)).astype(np.uint8)
    tensor = spec.image_to_tensor(pixels)
    assert tensor.shape == (3, 4, 6)
    np.testing.assert_allclose(tensor[0], pixels[:, :, 2] - 104.0)  # channel 0 is blue
    np.testing.assert_allclose(spec.tensor_to_image(tensor), pixels / 255.0, atol=1e-6)


def test_nhwc_std_and_value_range():
    spec = PreprocessSpec(layout="NHWC", size=(2, 2), color="rgb", mean=(0.5,), std=(0.25,))
    tensor = spec.image_to_tensor(np.full((2, 2, 3), 255, np.uint8))
    np.testing.assert_allclose(tensor, 2.0)
    low, high = spec.value_range()
    np.testing.assert_allclose(low, -2.0)
    np.testing.assert_allclose(high, 2.0)


def test_flat_gray_resize_and_relevance_map():
    spec = PreprocessSpec(layout="flat", size=(8, 8), color="gray", scale=16 / 255)
    tensor = spec.image_to_tensor(np.full((28, 28), 255, np.uint8))
    assert tensor.shape == (64,)
    np.testing.assert_allclose(tensor, 16.0, rtol=1e-6)
    assert spec.relevance_to_map(np.arange(64.0)).shape == (8, 8)


def test_shorter_side_crop_keeps_aspect():
    spec = PreprocessSpec(layout="NCHW", size=(4, 4), resize="shorter-side-crop")
    pixels = np.zeros((4, 8, 3), np.uint8)
    pixels[:, 2:6] = 255  # the centre 4 columns are white
    np.testing.assert_allclose(spec.image_to_tensor(pixels), 1.0, atol=1e-6)


def test_bad_specs_are_user_errors():
    with pytest.raises(OnnxplainError, match="layout"):
        PreprocessSpec.from_json('{"layout": "CHW"}')
    with pytest.raises(OnnxplainError, match="unknown field"):
        PreprocessSpec.from_json('{"layout": "NCHW", "colour": "rgb"}')
    with pytest.raises(OnnxplainError, match="JSON"):
        PreprocessSpec.from_json("{nope")
