"""Reference data of integer pixels (uint8): prediction difference's conditional sampler fits it as the real numbers
it holds (centred in uint8 it wrapped around) and draws whole pixel values, the nearest to its Gaussian draws; an
occlusion's reference mean is rounded to whole pixels. Token ids keep being refused both."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain.errors import OnnxplainError
from onnxplain.methods import make_method
from onnxplain.methods.pda import PredictionDifference
from onnxplain.methods.samplers import ConditionalSampler
from onnxplain.methods.windows import WindowGrid

RNG = np.random.default_rng(21)
REFERENCE = RNG.integers(0, 256, (30, 3, 8, 8)).astype(np.uint8)
X = RNG.integers(0, 256, (3, 8, 8)).astype(np.uint8)


def test_the_conditional_fit_of_uint8_pixels_is_that_of_their_values():
    grid = WindowGrid((8, 8), 2)
    pixels = ConditionalSampler(1, cache=False).fit(REFERENCE, grid)
    reals = ConditionalSampler(1, cache=False).fit(REFERENCE.astype(np.float64), grid)
    for name in ("mean_in", "mean_out", "gain", "factor"):
        for ours, reference in zip(getattr(pixels, name), getattr(reals, name)):
            np.testing.assert_allclose(ours, reference, rtol=1e-9, atol=1e-9)
    windows = np.arange(len(grid))
    draws = pixels.sample(X, windows, 6, seed=2)
    real_draws = reals.sample(X.astype(np.float64), windows, 6, seed=2)
    assert draws.dtype == np.uint8
    np.testing.assert_array_equal(draws, np.rint(real_draws).astype(np.uint8))
    unclipped = ConditionalSampler(1, clip=None, cache=False).fit(REFERENCE, grid).sample(X, windows, 6, seed=2)
    wide = np.rint(ConditionalSampler(1, clip=None, cache=False).fit(REFERENCE.astype(np.float64), grid).sample(
        X.astype(np.float64), windows, 6, seed=2))
    assert wide.min() < 0 or wide.max() > 255      # Gaussian draws beyond the type: kept at its ends, not wrapped
    np.testing.assert_array_equal(unclipped, np.clip(wide, 0, 255).astype(np.uint8))


def model(tmp_path, element):
    """x -> Cast to float (uint8 pixels) or Gather from a table (int64 ids) -> ... -> 4 classes."""
    if element == TensorProto.UINT8:
        front = [helper.make_node("Cast", ["x"], ["f"], to=TensorProto.FLOAT)]
        weights = []
    else:
        front = [helper.make_node("Gather", ["table", "x"], ["g"]),
                 helper.make_node("ReduceSum", ["g", "last"], ["f"], keepdims=0)]
        weights = [numpy_helper.from_array(RNG.normal(size=(256, 2)).astype(np.float32), "table"),
                   numpy_helper.from_array(np.array([-1], np.int64), "last")]
    nodes = front + [helper.make_node("Conv", ["f", "w"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
                     helper.make_node("GlobalAveragePool", ["r"], ["p"]), helper.make_node("Flatten", ["p"], ["y"])]
    weights.append(numpy_helper.from_array((RNG.normal(size=(4, 3, 3, 3)) / 255).astype(np.float32), "w"))
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", element, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], weights)
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return onnxplain.load(path)


def test_pda_and_occlusion_take_uint8_references(tmp_path):
    """PDA's conditional sampler runs (it was refused for uint8 pixels); occlusion fills each window with the
    reference's mean rounded to whole pixels (refused as fractional), against a loop over onnxruntime."""
    pixels = model(tmp_path, TensorProto.UINT8)
    pda = PredictionDifference(window=2, padding=1, samples=4, reference=REFERENCE, progress=False).explain(
        pixels, X[None])
    assert pda.relevance.shape == (1, 3, 8, 8) and np.abs(pda.relevance).max() > 0
    occlusion = make_method("occlusion", window=4, stride=4, reference=REFERENCE, progress=False).explain(pixels,
                                                                                                     X[None])
    mean = np.rint(REFERENCE.mean(axis=0)).astype(np.uint8)
    rows = np.repeat(X[None], 4, axis=0)
    for row, (i, j) in enumerate([(0, 0), (0, 4), (4, 0), (4, 4)]):
        rows[row, :, i:i + 4, j:j + 4] = mean[:, i:i + 4, j:j + 4]
    scores = pixels.run(X[None])["y"][0]
    top = int(np.argmax(scores))
    drops = scores[top] - pixels.run(rows)["y"][:, top]
    expected = np.zeros((3, 8, 8))
    for row, (i, j) in enumerate([(0, 0), (0, 4), (4, 0), (4, 4)]):
        expected[:, i:i + 4, j:j + 4] = drops[row] / 3         # shared by the 3 channels
    np.testing.assert_allclose(occlusion.relevance[0], expected, rtol=1e-4, atol=1e-7)


def test_token_ids_are_still_refused(tmp_path):
    ids = model(tmp_path, TensorProto.INT64)
    reference = RNG.integers(0, 256, (10, 3, 8, 8))
    with pytest.raises(OnnxplainError, match="token ids, categories"):
        PredictionDifference(window=2, samples=2, reference=reference, progress=False).explain(ids, reference[:1])
    with pytest.raises(OnnxplainError, match="the reference mean has fractional values"):
        make_method("occlusion", reference=reference[:3] + np.array([0, 0, 1])[:, None, None, None],
                    progress=False).explain(ids, reference[:1])
