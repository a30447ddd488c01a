"""Hostile input files (damaged .npy headers, binary text files, odd images, bad specs): one line, exit code 2."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from cli_runner import run
from PIL import Image

from onnxplain.io import read_image


def one_line_error(result, message: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert len(lines) == 1 and message in lines[0], lines


def test_a_damaged_npy_header_and_an_npz_named_npy(tmp_path, digits_cnn):
    damaged = tmp_path / "damaged.npy"
    damaged.write_bytes(b"\x93NUMPY\x01\x00\x20\x00{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }\n")
    one_line_error(run("predict", digits_cnn, damaged), "not a readable .npy array")
    archive = tmp_path / "archive.npy"
    with open(archive, "wb") as handle:
        np.savez(handle, x=np.zeros((1, 28, 28), np.float32))
    one_line_error(run("predict", digits_cnn, archive), "is an .npz archive, not an .npy array")


def test_binary_files_given_as_text(tmp_path, digits_cnn):
    binary = tmp_path / "binary.json"
    binary.write_bytes(bytes(range(128, 256)) * 4)
    image = digits_cnn.parent / "samples" / "digit3.png"
    one_line_error(run("predict", digits_cnn, image, "--preprocess", binary),
                   f"preprocessing spec {binary} is not a UTF-8 text file")
    one_line_error(run("predict", digits_cnn, image, "--labels", binary), f"labels file {binary} is not a UTF-8")
    one_line_error(run("evaluate", digits_cnn, image, "--methods", "gradient", "--metrics", "aopc", "--labels",
                       binary, "--quiet"), f"labels file {binary} is not a UTF-8 text file")


@pytest.mark.parametrize("spec, message", [
    ({"mean": "x"}, "mean must be a list of 1 or 3 finite numbers"),
    ({"mean": [1, 2]}, "mean must be a list of 1 or 3 finite numbers"),
    ({"size": [-1, 0]}, "size must be two positive whole numbers"),
    ({"size": 5}, "size must be two positive whole numbers"),
    ({"scale": "x"}, "scale must be a finite number"),
    ({"std": [1e400]}, "std must be a list of 1 or 3 finite numbers"),
    ({"crop": [1, 2]}, "crop must be [start, stop] pairs"),
    ({"crop": [[3, 2]]}, "crop box [3:2] has an empty or negative range"),
])
def test_spec_fields_of_the_wrong_kind(spec, message, tmp_path, digits_cnn):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    image = digits_cnn.parent / "samples" / "digit3.png"
    one_line_error(run("predict", digits_cnn, image, "--preprocess", path), f"preprocessing spec: {message}")


def test_a_spec_size_the_model_cannot_take_is_refused_before_resizing(tmp_path, digits_cnn):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"layout": "NCHW", "size": [3000, 3000], "color": "gray"}))
    one_line_error(run("predict", digits_cnn, digits_cnn.parent / "samples" / "digit3.png", "--preprocess", path),
                   "the preprocessing spec makes images of 3000x3000 pixels x 1 channel(s), which does not fit")


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.array([[0, 257 * 128, 65535]], dtype=np.uint16)).save(path)
    assert read_image(path).tolist() == [[0, 128, 255]]


def test_a_float_image_with_nan_exits_2(tmp_path, digits_cnn):
    path = tmp_path / "nan.tif"
    Image.fromarray(np.full((28, 28), np.nan, np.float32)).save(path)
    one_line_error(run("predict", digits_cnn, path), "has NaN or Inf pixel values")


def test_decompression_bombs(monkeypatch, digits_cnn):
    image = digits_cnn.parent / "samples" / "digit3.png"   # 784 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)    # past the warning size: read without a word
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_image(image).shape == (28, 28)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)    # past twice that: refused
    one_line_error(run("predict", digits_cnn, image), "is too large to read")


def test_values_beyond_the_input_type(tmp_path, digits_cnn):
    path = tmp_path / "big.npy"
    np.save(path, np.full((1, 1, 28, 28), 1e39))
    one_line_error(run("predict", digits_cnn, path), "beyond the range of float32")
    image = digits_cnn.parent / "samples" / "digit3.png"
    one_line_error(run("explain", digits_cnn, image, "--method", "occlusion", "--fill", "1e40", "--quiet"),
                   "fill 1e+40 would be out of range: this model takes float32 inputs; give a number")


def test_inputs_the_model_scores_nan_for_write_nothing(tmp_path, digits_cnn):
    path = tmp_path / "huge.npy"   # finite, but the network's sums overflow
    np.save(path, np.full((1, 1, 28, 28), 3e38, np.float32))
    generator = digits_cnn.parent / "digits_generator.onnx"
    for command, *options in (("predict",), ("explain", "--out", tmp_path / "x.png"),
                              ("contrast", "--generator", generator, "--out", tmp_path / "x.png"),
                              ("evaluate", "--methods", "gradient", "--out", tmp_path / "results")):
        named = path.name if command == "evaluate" else path   # evaluate names inputs as its report does
        one_line_error(run(command, digits_cnn, path, "--json", *options), f"the model's scores for {named} are NaN")
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "results").exists()
