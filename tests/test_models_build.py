"""The committed example models (built by models/build.py, not rebuilt here: too slow) and their sample inputs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from onnxplain.io.preprocess import PreprocessSpec

SAMPLES = Path(__file__).resolve().parents[1] / "models" / "samples"
DIGITS = sorted(int(p.name[len("digit"):-len("_cnn.npy")]) for p in SAMPLES.glob("digit[0-9]_cnn.npy"))
SPEC_FIELDS = {"layout", "size", "color", "resize", "scale", "mean", "std"}


def metadata(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(path).metadata_props}


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_samples_present():
    assert len(DIGITS) >= 4
    for digit in DIGITS:
        for suffix in ("_logreg.npy", ".png", "_8x8.png"):
            assert (SAMPLES / f"digit{digit}{suffix}").exists()
    assert np.load(SAMPLES / "digits_reference_cnn.npy").shape == (100, 1, 28, 28)
    assert np.load(SAMPLES / "digits_reference_logreg.npy").shape == (100, 64)


@pytest.mark.parametrize("name", ["digits_cnn", "digits_logreg"])
def test_models_pass_the_checker(name, request):
    path = request.getfixturevalue(name)
    onnx.checker.check_model(onnx.load(path), full_check=True)


@pytest.mark.parametrize("name, layout, size, scale", [
    ("digits_cnn", "NCHW", [28, 28], 1 / 255),
    ("digits_logreg", "flat", [8, 8], 16 / 255),
])
def test_metadata_spec_and_labels(name, layout, size, scale, request):
    props = metadata(request.getfixturevalue(name))
    spec = json.loads(props["onnxplain.preprocess"])
    assert set(spec) == SPEC_FIELDS
    assert (spec["layout"], spec["size"], spec["color"], spec["resize"]) == (layout, size, "gray", "stretch")
    assert spec["scale"] == pytest.approx(scale)
    assert (spec["mean"], spec["std"]) == ([0.0], [1.0])
    assert json.loads(props["onnxplain.labels"]) == [str(d) for d in range(10)]
    PreprocessSpec.from_json(props["onnxplain.preprocess"])  # the reader accepts it


def test_cnn_predicts_sample_digits(digits_cnn):
    sess = session(digits_cnn)
    assert [i.name for i in sess.get_inputs()] == ["image"]
    assert [o.name for o in sess.get_outputs()] == ["logits"]
    batch = np.stack([np.load(SAMPLES / f"digit{d}_cnn.npy") for d in DIGITS])
    assert batch.shape == (len(DIGITS), 1, 28, 28) and batch.dtype == np.float32
    (logits,) = sess.run(["logits"], {"image": batch})  # a batch of several: the batch axis is dynamic
    assert logits.shape == (len(DIGITS), 10)
    assert logits.argmax(1).tolist() == DIGITS


def test_logreg_predicts_sample_digits(digits_logreg):
    sess = session(digits_logreg)
    assert [i.name for i in sess.get_inputs()] == ["input"]
    batch = np.stack([np.load(SAMPLES / f"digit{d}_logreg.npy") for d in DIGITS])
    assert batch.shape == (len(DIGITS), 64) and batch.dtype == np.float32
    labels, probabilities = sess.run(None, {"input": batch})
    assert labels.tolist() == DIGITS
    assert [max(row, key=row.get) for row in probabilities] == DIGITS  # ZipMap: one {class: probability} per row


def test_sample_pngs_match_the_tensors_through_the_embedded_spec(digits_cnn, digits_logreg):
    for path, png, suffix, atol in ((digits_cnn, "{}.png", "_cnn.npy", 1 / 255),
                                    (digits_logreg, "{}_8x8.png", "_logreg.npy", 16 / 255)):
        spec = PreprocessSpec.from_json(metadata(path)["onnxplain.preprocess"])
        for digit in DIGITS:
            tensor = spec.image_to_tensor(np.asarray(Image.open(SAMPLES / png.format(f"digit{digit}"))))
            np.testing.assert_allclose(tensor, np.load(SAMPLES / f"digit{digit}{suffix}"), atol=atol)
