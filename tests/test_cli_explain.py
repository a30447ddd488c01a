"""`onnxplain explain` as a user runs it: the default method, every registered method, pictures checked by their
pixels, the naming scheme for several inputs, volumes (PNG + NIfTI), feature bars, JSON, and bad input."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from cli_runner import run
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from onnxplain import viz
from onnxplain.io.preprocess import METADATA_KEY
from onnxplain.methods import method_names


@pytest.fixture(scope="module")
def samples(digits_cnn):
    return digits_cnn.parent / "samples"


def red(pixels):
    return (pixels[..., 0] > 0.7) & (pixels[..., 2] < 0.45)


def blue(pixels):
    return (pixels[..., 2] > 0.7) & (pixels[..., 0] < 0.45)


def reddish(pixels):
    return pixels[..., 0] - pixels[..., 2] > 0.2


def bluish(pixels):
    return pixels[..., 2] - pixels[..., 0] > 0.2


def centres(panel: np.ndarray, size: int) -> np.ndarray:
    """The pixel at the centre of each of size x size cells of a panel showing a size x size map."""
    rows = ((np.arange(size) + 0.5) * panel.shape[0] / size).astype(int)
    cols = ((np.arange(size) + 0.5) * panel.shape[1] / size).astype(int)
    return panel[rows][:, cols]


def test_default_explain_of_a_shipped_digit_shows_its_strokes(tmp_path, digits_cnn, samples):
    """Done-when 1: `onnxplain explain models/digits_cnn.onnx models/samples/digit3.png --out x.png`."""
    result = run("explain", digits_cnn, samples / "digit3.png", "--out", tmp_path / "x.png",
                 "--save-npy", tmp_path / "r.npy", "--quiet")
    assert result.exit_code == 0, result.output
    relevance = np.load(tmp_path / "r.npy")[0]
    ink = np.load(samples / "digit3_cnn.npy")[0] > 0.3
    positive = np.clip(relevance, 0, None)
    assert positive[ink].sum() > 0.7 * positive.sum()  # the evidence sits on the strokes

    pixels = np.asarray(Image.open(tmp_path / "x.png").convert("RGB"), dtype=np.float64) / 255
    assert pixels.std() > 0.1  # not blank
    heat = centres(viz.read_panel(tmp_path / "x.png", 28, 28, 1), 28)
    strong = relevance > 0.25 * np.abs(relevance).max()
    assert strong.sum() >= 10 and reddish(heat[strong]).all()  # red where relevance is positive
    assert not reddish(heat[relevance <= 0]).any()
    assert reddish(heat[ink]).sum() > reddish(heat[~ink]).sum()


def test_occlusion_png_is_red_where_relevance_is_positive(tmp_path, digits_cnn, samples):
    result = run("explain", digits_cnn, samples / "digit7.png", "--method", "occlusion", "--window", "4",
                 "--stride", "2", "--out", tmp_path / "o.png", "--save-npy", tmp_path / "o.npy", "--quiet")
    assert result.exit_code == 0, result.output
    relevance = np.load(tmp_path / "o.npy")[0]
    heat = centres(viz.read_panel(tmp_path / "o.png", 28, 28, 1), 28)
    v = np.abs(relevance).max()
    assert (relevance > 0.4 * v).any() and reddish(heat[relevance > 0.4 * v]).all()
    assert bluish(heat[relevance < -0.4 * v]).all() and not reddish(heat[relevance < 0]).any()


TINY = {
    "occlusion": ["--window", "7", "--stride", "7"],
    "pda": ["--window", "7", "--stride", "7", "--samples", "2", "--padding", "0", "--sampler", "marginal"],
    "smoothgrad": ["--samples", "2"],
    "integrated-gradients": ["--steps", "4"],
}


@pytest.mark.parametrize("method", method_names())
def test_every_method_is_reachable(method, tmp_path, digits_cnn, samples):
    options = list(TINY.get(method, []))
    if method == "pda":
        np.save(tmp_path / "ref.npy", np.load(samples / "digits_reference_cnn.npy")[:10])
        options += ["--reference", tmp_path / "ref.npy"]
    result = run("explain", digits_cnn, samples / "digit3_cnn.npy", "--method", method, *options,
                 "--save-npy", tmp_path / "r.npy", "--json", "--quiet")
    assert result.exit_code == 0, result.output
    relevance = np.load(tmp_path / "r.npy")
    assert relevance.shape == (1, 28, 28) and np.isfinite(relevance).all() and np.abs(relevance).max() > 0
    (row,) = json.loads(result.stdout)
    assert row["relevance_sum"] == pytest.approx(float(relevance.sum(dtype=np.float64)), rel=1e-4, abs=1e-6)
    assert row["target"] == {"index": 3, "label": "3"} and row["top"][0]["index"] == 3
    assert row["score"] == pytest.approx(row["top"][0]["score"], rel=1e-4)
    assert set(row["timings"]) >= {"load_s", "explain_s", "render_s", "total_s"}


def test_several_inputs_one_output_each(tmp_path, digits_cnn, samples):
    batch = np.load(samples / "digits_reference_cnn.npy")[:2]
    np.save(tmp_path / "pair.npy", batch)
    (tmp_path / "other").mkdir()
    np.save(tmp_path / "other" / "digit3.npy", np.load(samples / "digit3_cnn.npy"))
    inputs = [samples / "digit3.png", tmp_path / "other" / "digit3.npy", tmp_path / "pair.npy"]
    result = run("explain", digits_cnn, *inputs, "--method", "occlusion", "--window", "7", "--target", "8",
                 "--out", tmp_path / "pictures", "--save-npy", tmp_path / "rel.npy", "--json", "--quiet",
                 "--batch", "2")
    assert result.exit_code == 0, result.output
    names = ["digit3_png", "digit3_npy", "pair_0", "pair_1"]
    assert sorted(p.name for p in (tmp_path / "pictures").iterdir()) == sorted(f"{n}.png" for n in names)
    rows = json.loads(result.stdout)
    assert [r["input"] for r in rows] == [str(inputs[0]), str(inputs[1]), str(tmp_path / "pair.npy[0]"),
                                          str(tmp_path / "pair.npy[1]")]
    for name, row in zip(names, rows):
        saved = np.load(tmp_path / f"rel_{name}.npy")
        assert saved.shape == (1, 28, 28) and row["outputs"]["npy"] == str(tmp_path / f"rel_{name}.npy")
        assert row["target"] == {"index": 8, "label": "8"}
    # the two copies of digit 3 (PNG and .npy) give the same relevance
    np.testing.assert_allclose(np.load(tmp_path / "rel_digit3_png.npy"), np.load(tmp_path / "rel_digit3_npy.npy"),
                               atol=0.02)  # the PNG holds 8-bit pixels


def test_threshold_display_whitens_small_relevance(tmp_path, digits_cnn, samples):
    args = ["explain", digits_cnn, samples / "digit0.png", "--method", "occlusion", "--window", "3", "--quiet",
            "--save-npy", tmp_path / "r.npy"]
    assert run(*args, "--out", tmp_path / "t.png", "--threshold").exit_code == 0  # 0.15 when given bare
    relevance = np.load(tmp_path / "r.npy")[0]
    heat = centres(viz.read_panel(tmp_path / "t.png", 28, 28, 1), 28)
    small = (np.abs(relevance) < 0.1 * np.abs(relevance).max())
    assert small.any() and (heat[small] > 0.97).all()
    assert run(*args, "--out", tmp_path / "u.png", "--threshold", "1.5").exit_code == 2


def linear_onnx(path, weights: np.ndarray, input_name="x", metadata: dict | None = None):
    """A tiny ONNX classifier x @ W (logits) with an optional metadata entry."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", [input_name, "W"], ["logits"])], "linear",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [None, weights.shape[0]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, weights.shape[1]])],
        [numpy_helper.from_array(weights.astype(np.float32), "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, path)
    return path


def test_volume_gives_montage_and_nifti_on_the_input_grid(tmp_path):
    nibabel = pytest.importorskip("nibabel")
    crop = [[1, 5], [0, 5], [2, 5]]
    weights = np.zeros((4 * 5 * 3, 2))
    weights[:30, 0], weights[30:, 0] = 1.0, -1.0  # class 0: the first half of the crop for, the second against
    spec = json.dumps({"layout": "flat", "crop": crop})
    model = linear_onnx(tmp_path / "vol.onnx", weights, metadata={METADATA_KEY: spec})
    affine = np.array([[-2.0, 0, 0, 10], [0, 2, 0, -20], [0, 0, 2, 5], [0, 0, 0, 1]])
    volume = np.random.default_rng(0).random((6, 5, 7)).astype(np.float32) + 0.5
    nibabel.save(nibabel.Nifti1Image(volume, affine), str(tmp_path / "subject.nii.gz"))
    result = run("explain", model, tmp_path / "subject.nii.gz", "--method", "occlusion", "--window", "1",
                 "--target", "0", "--out", tmp_path / "s.png", "--save-npy", tmp_path / "s.npy", "--slice-axis", "2",
                 "--quiet")
    assert result.exit_code == 0, result.output   # --slice-axis applies to volumes (refused for images)
    written = nibabel.load(str(tmp_path / "s_relevance.nii.gz"))
    np.testing.assert_allclose(written.affine, affine)
    relevance = written.get_fdata()
    box = relevance[1:5, 0:5, 2:5]
    np.testing.assert_allclose(box.reshape(-1), np.load(tmp_path / "s.npy"), rtol=1e-5)
    np.testing.assert_allclose(box.reshape(-1), weights[:, 0] * volume[1:5, 0:5, 2:5].reshape(-1), rtol=1e-4)
    outside = np.ones(volume.shape, bool)
    outside[1:5, 0:5, 2:5] = False
    assert (relevance[outside] == 0).all()
    pixels = np.asarray(Image.open(tmp_path / "s.png").convert("RGB"), dtype=np.float64) / 255
    assert red(pixels).sum() > 50 and blue(pixels).sum() > 50


def test_feature_vector_gives_a_bar_chart(tmp_path):
    weights = np.array([[2.0, 0], [-1.0, 0], [0.5, 0], [0.0, 0], [-3.0, 0]])
    model = linear_onnx(tmp_path / "f.onnx", weights)
    np.save(tmp_path / "v.npy", np.ones(5, np.float32))
    result = run("explain", model, tmp_path / "v.npy", "--method", "occlusion", "--window", "1", "--target", "0",
                 "--out", tmp_path / "bars.png", "--json", "--quiet")
    assert result.exit_code == 0, result.output
    pixels = np.asarray(Image.open(tmp_path / "bars.png").convert("RGB"), dtype=np.float64) / 255
    assert red(pixels).sum() > 200 and blue(pixels).sum() > 200
    assert json.loads(result.stdout)[0]["relevance_sum"] == pytest.approx(-1.5, abs=1e-5)


def test_default_falls_back_to_prediction_difference_with_a_note(tmp_path, samples):
    from sklearn.datasets import load_digits
    from sklearn.tree import DecisionTreeClassifier

    from onnxplain.converters import convert_sklearn

    X, y = load_digits(return_X_y=True)
    tree = DecisionTreeClassifier(max_depth=6, random_state=0).fit(X, y)
    convert_sklearn(tree, tmp_path / "tree.onnx", samples=X[:20],
                    preprocess={"layout": "flat", "size": [8, 8], "color": "gray", "scale": 16 / 255})
    args = ["explain", tmp_path / "tree.onnx", samples / "digit3_logreg.npy", "--json", "--quiet"]
    missing = run(*args)
    assert missing.exit_code == 2 and "--reference" in missing.stderr
    result = run(*args, "--reference", samples / "digits_reference_logreg.npy", "--window", "2", "--samples", "2")
    assert result.exit_code == 0, result.output
    assert "prediction difference" in result.stderr and "TreeEnsembleClassifier" in result.stderr
    assert json.loads(result.stdout)[0]["method"] == "pda"


def sin_model() -> onnx.ModelProto:
    """A 28x28 classifier with a Sin node, which LRP has no rule for (the default method falls back to PDA)."""
    weight = numpy_helper.from_array(np.ones((784, 10), np.float32) / 784, "w")
    shape = numpy_helper.from_array(np.array([-1, 784], np.int64), "shape")
    nodes = [helper.make_node("Sin", ["x"], ["s"]), helper.make_node("Reshape", ["s", "shape"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w"], ["logits"])]
    graph = helper.make_graph(nodes, "sin", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1, 28, 28])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 10])],
                              [weight, shape])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def bad_cases(tmp_path, digits_cnn, samples):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"garbage" * 50)
    not_image = tmp_path / "photo.png"
    not_image.write_text("this is text, not a PNG")
    np.save(tmp_path / "wrong.npy", np.zeros((3, 28, 28), np.float32))
    onnx.save(sin_model(), tmp_path / "sin.onnx")
    np.save(tmp_path / "nan.npy", np.full((1, 28, 28), np.nan, np.float32))
    np.save(tmp_path / "flat.npy", np.zeros((3, 5), np.float32))
    np.save(tmp_path / "scalar.npy", np.float32(3.0))
    np.save(tmp_path / "complex.npy", np.zeros((1, 28, 28), np.complex64))
    (tmp_path / "text.npy").write_text("not an array")
    good = samples / "digit3_cnn.npy"
    occlusion = ["--method", "occlusion", "--window", "7"]
    pda = ["--method", "pda", "--window", "4", "--samples", "2"]
    return {
        "array of another rank": ([digits_cnn, good, tmp_path / "flat.npy", *occlusion],
                                  "flat.npy: an array of shape 3x5 is neither a batch"),
        "a single number": ([digits_cnn, good, tmp_path / "scalar.npy", *occlusion],
                            "scalar.npy: an array holding a single number (shape ()) is neither"),
        "reference of another shape": (
            [digits_cnn, good, *pda, "--reference", tmp_path / "wrong.npy"],
            f"--reference {tmp_path / 'wrong.npy'}: one sample of shape 3x28x28 does not fit"),
        "unknown composite": ([digits_cnn, good, "--composite", "nope"], "(method lrp: this model's default"),
        "corrupt model": ([corrupt, good, *occlusion], "not a readable ONNX model"),
        "missing input": ([digits_cnn, good, tmp_path / "none.png", *occlusion], "not found"),
        "not an image": ([digits_cnn, good, not_image, *occlusion], "not a readable image"),
        "wrong shape": ([digits_cnn, good, tmp_path / "wrong.npy", *occlusion], "does not fit"),
        "NaN": ([digits_cnn, good, tmp_path / "nan.npy", *occlusion], "NaN"),
        "complex numbers": ([digits_cnn, good, tmp_path / "complex.npy", *occlusion], "not a real number type"),
        "text as .npy": ([digits_cnn, good, tmp_path / "text.npy", *occlusion], "not a readable .npy array"),
        "unknown method": ([digits_cnn, good, "--method", "magic"], "unknown method 'magic'"),
        "option of another method": ([digits_cnn, good, *occlusion, "--steps", "3"], "--steps do not apply"),
        "unknown option": ([digits_cnn, good, *occlusion, "--bogus", "1"], "No such option"),
        "slice axis of an image": ([digits_cnn, samples / "digit3.png", *occlusion, "--slice-axis", "2"],
                                   "option(s) --slice-axis do not apply to inputs of shape 1x28x28, which are no "
                                   "3-D volumes"),
        "class out of range": ([digits_cnn, good, *occlusion, "--target", "42"], "out of range"),
        "unknown label": ([digits_cnn, good, *occlusion, "--target", "cat"], "unknown class 'cat'"),
        "unit out of range": ([digits_cnn, good, *occlusion, "--layer", "relu_1", "--target", "0,99,99"],
                              "unit (0, 99, 99) is out of range for tensor 'relu_1' of shape (16, 14, 14)"),
        "negative unit": ([digits_cnn, good, "--method", "gradient", "--layer", "relu_1", "--target", "0,-1,-1"],
                          "must be non-negative integers"),
        "fill that is not finite": ([digits_cnn, good, *occlusion, "--fill", "nan"], "fill must be a finite"),
        "fill and reference": ([digits_cnn, good, *occlusion, "--fill", "0.5", "--reference",
                                samples / "digits_reference_cnn.npy"], "not both"),
        "baseline that is not finite": ([digits_cnn, good, "--method", "integrated-gradients", "--baseline", "inf"],
                                        "baseline contains NaN or Inf"),
        "negative epsilon": ([digits_cnn, good, "--rule", "Gemm=epsilon:-1"], "non-negative numbers"),
        "PDA samples below 1": ([digits_cnn, good, *pda, "--samples", "0", "--reference",
                                 samples / "digits_reference_cnn.npy"],
                                "samples must be at least 1, got 0"),
        "missing input after a fallback": ([tmp_path / "sin.onnx", good, tmp_path / "none.png", "--reference",
                                            samples / "digits_reference_cnn.npy"], "not found"),
        "unknown composite after a fallback": (
            [tmp_path / "sin.onnx", good, "--composite", "nope"],
            "this model's default; LRP does not cover Sin"),
    }


@pytest.mark.parametrize("case", ["corrupt model", "missing input", "not an image", "wrong shape", "NaN",
                                  "complex numbers", "text as .npy",
                                  "array of another rank", "reference of another shape", "unknown composite",
                                  "unknown method", "option of another method", "unknown option",
                                  "slice axis of an image",
                                  "class out of range", "unknown label", "unit out of range", "negative unit",
                                  "fill that is not finite", "fill and reference", "baseline that is not finite",
                                  "negative epsilon",
                                  "PDA samples below 1", "unknown composite after a fallback",
                                  "missing input after a fallback"])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case, tmp_path, digits_cnn, samples):
    args, message = bad_cases(tmp_path, digits_cnn, samples)[case]
    result = run("explain", *args, "--out", tmp_path / "out", "--save-npy", tmp_path / "npy", "--quiet")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.output
    assert not (tmp_path / "out").exists() and not (tmp_path / "npy").exists()


def test_picture_options_without_a_picture_are_refused(tmp_path, digits_cnn, samples):
    """--threshold and --slice-axis shape the pictures --out writes: without --out they would do nothing, so they
    are refused (one line, exit 2, nothing written), as other options that do not apply are."""
    for given in (["--threshold", "0.2"], ["--slice-axis", "1"], ["--threshold"]):
        result = run("explain", digits_cnn, samples / "digit3_cnn.npy", "--method", "gradient", *given,
                     "--save-npy", tmp_path / "r.npy", "--quiet")
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and f"{given[0]} do not apply to a run that draws no pictures" in lines[0]
        assert not (tmp_path / "r.npy").exists()


def test_a_saturated_probability_gets_a_note_that_names_the_logits(tmp_path):
    """Softmax probabilities of 1 to float32 precision: no occluded window or PDA sample changes them, so the maps
    are zero everywhere. A note says so and names what to explain instead, which then gives a map."""
    weight = numpy_helper.from_array(np.array([[60.0, -60.0]] * 4, np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["logits"]), helper.make_node("Softmax", ["logits"], ["p"], axis=1)]
    graph = helper.make_graph(nodes, "saturated", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
                              [helper.make_tensor_value_info("p", TensorProto.FLOAT, [None, 2])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.save(model, tmp_path / "saturated.onnx")
    np.save(tmp_path / "x.npy", np.ones(4, np.float32))
    np.save(tmp_path / "reference.npy", np.random.default_rng(0).uniform(0.5, 1.5, (6, 4)).astype(np.float32))
    common = ["explain", tmp_path / "saturated.onnx", tmp_path / "x.npy", "--json", "--quiet"]
    pda = ["--method", "pda", "--reference", tmp_path / "reference.npy", "--sampler", "marginal", "--samples", "6"]
    for method, instead in ((["--method", "occlusion"], ["--layer", "logits", "--target", "0"]),
                            (pda, ["--pda-score", "logit"])):
        result = run(*common, *method)
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)[0]["relevance_sum"] == 0
        assert f"explain the logits instead ({' '.join(instead)})" in result.stderr
        again = run(*common, *method, *instead)
        assert again.exit_code == 0 and json.loads(again.stdout)[0]["relevance_sum"] != 0, again.output
        assert "zero everywhere" not in again.stderr


@pytest.mark.parametrize("command", ["explain", "evaluate"])
def test_a_seed_beyond_64_bits_is_one_line(command, tmp_path, digits_cnn, samples):
    result = run(command, digits_cnn, samples / "digit3_cnn.npy", "--seed", 2**64, "--quiet")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--seed" in lines[0] and "Traceback" not in result.output


def test_seeds_of_the_python_api_are_64_bit(digits_cnn_model, samples):
    from onnxplain.errors import OnnxplainError
    from onnxplain.methods import make_method
    from onnxplain.methods.pda import PredictionDifference

    x = np.load(samples / "digit3_cnn.npy")[None]
    with pytest.raises(OnnxplainError, match="seed must be at most 18446744073709551615"):
        make_method("smoothgrad", seed=2**64)
    with pytest.raises(OnnxplainError, match="seed must be at most"):
        PredictionDifference(reference=x, seed=2**64)
    widest = make_method("smoothgrad", seed=2**64 - 1, samples=2).explain(digits_cnn_model, x)
    assert np.isfinite(widest.relevance).all()
