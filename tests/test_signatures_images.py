"""Images into models whose input has no channel axis: an (N, H, W) gray model reads a picture through a `flat`
spec with its size, the pixels filling each sample row by row."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

import onnxplain
from onnxplain.cli.main import cli
from onnxplain.io import load_inputs

SPEC = {"layout": "flat", "size": [6, 5], "color": "gray", "scale": 1 / 255}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """An (N, 6, 5) model (Unsqueeze into a 3x3 convolution, then a dense head) and a 10 x 8 RGB picture."""
    folder = tmp_path_factory.mktemp("gray")
    rng = np.random.default_rng(2)
    weights = [numpy_helper.from_array(np.array([1], np.int64), "axis"),
               numpy_helper.from_array(rng.normal(size=(2, 1, 3, 3)).astype(np.float32), "k"),
               numpy_helper.from_array(rng.normal(size=(60, 3)).astype(np.float32), "w")]
    graph = helper.make_graph([helper.make_node("Unsqueeze", ["x", "axis"], ["x4"]),
                               helper.make_node("Conv", ["x4", "k"], ["conv"], pads=[1, 1, 1, 1]),
                               helper.make_node("Relu", ["conv"], ["relu"]),
                               helper.make_node("Flatten", ["relu"], ["flat"]),
                               helper.make_node("MatMul", ["flat", "w"], ["y"])], "gray",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), folder / "gray.onnx")
    Image.fromarray(rng.integers(0, 256, (10, 8, 3), dtype=np.uint8)).save(folder / "photo.png")
    (folder / "spec.json").write_text(json.dumps(SPEC))
    return folder


def test_a_flat_spec_reads_images_into_samples_of_height_and_width(files):
    """The picture, resized to 6 x 5 and made gray, is the sample: before, the spec made a vector of 30 values that
    no (N, 6, 5) model takes, while the size check had said they fit."""
    model = onnxplain.load(files / "gray.onnx", preprocess=SPEC)
    x, _ = load_inputs([files / "photo.png"], model)
    gray = np.asarray(Image.open(files / "photo.png").convert("L").resize((5, 6), Image.BILINEAR), np.float32) / 255
    assert x.shape == (1, 6, 5)
    np.testing.assert_allclose(x[0], gray, rtol=1e-6)


def test_explain_draws_the_gray_picture(files, tmp_path):
    result = CliRunner().invoke(cli, ["explain", str(files / "gray.onnx"), str(files / "photo.png"), "--preprocess",
                                      str(files / "spec.json"), "--quiet", "--json", "--out", str(tmp_path / "r.png"),
                                      "--save-npy", str(tmp_path / "r.npy")])
    assert result.exit_code == 0, result.output
    (record,) = json.loads(result.stdout)
    assert abs(record["conservation_error"]) < 1e-5
    assert np.load(tmp_path / "r.npy").shape == (6, 5) and (tmp_path / "r.png").stat().st_size > 0


@pytest.mark.parametrize("spec", [{"layout": "flat", "color": "gray"}, {"layout": "flat", "size": [2, 5],
                                                                         "color": "rgb"}])
def test_a_flat_spec_that_does_not_fill_the_sample_is_one_line(files, spec):
    """A spec without a size gives the picture's own 10 x 8 values (a reshape error escaped), and 2 x 5 RGB values
    are as many as the 6 x 5 gray sample holds but no gray picture: both stay flat, and the input check names the
    shapes in one line."""
    model = onnxplain.load(files / "gray.onnx", preprocess=spec)
    with pytest.raises(onnxplain.OnnxplainError, match="does not fit the model's"):
        load_inputs([files / "photo.png"], model)


def test_the_metrics_read_a_gray_samples_range_off_its_spec(files):
    """An (H, W) sample has no channel axis, but its spec's one range holds for it: region perturbation's noise
    and APEM take it, as z^B and SmoothGrad do (`input_bounds`), not the data's own range."""
    from onnxplain.bounds import input_bounds
    from onnxplain.metrics.layout import InputLayout

    model = onnxplain.load(files / "gray.onnx", preprocess={**SPEC, "mean": [0.5], "std": [0.25]})
    layout = InputLayout.of(model, (6, 5))
    low, high = input_bounds(model, (1, 6, 5))
    assert layout.low is not None and np.ravel(layout.low)[0] == low.min() == -2.0
    assert np.ravel(layout.high)[0] == high.max() == 2.0
