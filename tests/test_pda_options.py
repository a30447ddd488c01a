"""Prediction difference's options checked before any work: seeds, whole numbers, the Laplace correction's N and
K, windows and strides that leave no pixel uncovered, and a conditional-sampler cache that is damaged or cannot
be written."""
from __future__ import annotations

import json

import numpy as np
import pytest
from cli_runner import run

import onnxplain
from onnxplain.zoo import cache_root
from onnxplain.errors import OnnxplainError
from onnxplain.methods import make_method
from onnxplain.methods.pda import PredictionDifference
from onnxplain.methods.samplers import ConditionalSampler, MarginalSampler
from onnxplain.methods.windows import WindowGrid

pytestmark = pytest.mark.usefixtures("private_cache")  # fitted samplers are cached in a folder of the test's own


@pytest.fixture(scope="module")
def logreg(digits_logreg):
    """(model, x (1, 64), reference (100, 64), paths) of the shipped 8x8 logistic regression."""
    samples = digits_logreg.parent / "samples"
    paths = {"model": digits_logreg, "x": samples / "digit3_logreg.npy",
             "reference": samples / "digits_reference_logreg.npy"}
    return onnxplain.load(digits_logreg), np.load(paths["x"])[None], np.load(paths["reference"]), paths


def one_error_line(result, *words):
    """The CLI refused: exit 2, one line on stderr that holds every word, no traceback."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.stderr
    assert all(word in lines[0] for word in words), lines[0]


@pytest.mark.parametrize("sampler", ["marginal", "conditional"])
def test_a_negative_seed_is_refused_by_every_sampler(logreg, sampler):
    _, _, reference, paths = logreg
    with pytest.raises(OnnxplainError, match="seed must be at least 0"):
        PredictionDifference(sampler=sampler, reference=reference, seed=-1)
    result = run("explain", paths["model"], paths["x"], "--method", "pda", "--sampler", sampler,
                 "--reference", paths["reference"], "--seed", -1, "--quiet")
    one_error_line(result, "--seed", "-1")


def test_seeds_of_the_other_methods_follow_the_same_rule(logreg):
    _, _, reference, paths = logreg
    with pytest.raises(OnnxplainError, match="seed"):
        make_method("smoothgrad", seed=-3)
    with pytest.raises(OnnxplainError, match="seed"):
        make_method("smoothgrad", seed=1.5)
    with pytest.raises(OnnxplainError, match="seed"):
        ConditionalSampler(1).fit(reference.reshape(-1, 1, 8, 8), WindowGrid((8, 8), 2), seed=-1)
    result = run("explain", paths["model"], paths["x"], "--method", "smoothgrad", "--seed", -1, "--quiet")
    one_error_line(result, "--seed")


@pytest.mark.parametrize("options, message", [
    (dict(training_size=-5), "training_size must be at least 1"),
    (dict(training_size=0), "training_size must be at least 1"),
    (dict(classes=1), "classes must be at least 2"),
    (dict(classes=0), "classes must be at least 2"),
    (dict(samples=2.7), "samples must be an integer"),
    (dict(stride=1.5), "stride must be an integer"),
    (dict(padding=1.5), "padding must be an integer"),
    (dict(window=2.5), "window must be an integer"),
    (dict(window=(2, 2.5)), "window must be an integer"),
    (dict(samples="10"), "samples must be an integer"),
    (dict(samples=True), "samples must be an integer"),
    (dict(training_size=100.0), "training_size must be an integer"),
    (dict(location_grid="a", sampler="conditional"), "location_grid must be an integer"),
    (dict(location_grid=2), "location_grid applies only to the conditional sampler"),
    (dict(sampler=object()), "sampler must be"),
])
def test_options_are_checked_on_construction(logreg, options, message):
    _, _, reference, _ = logreg
    settings = dict(sampler="marginal", reference=reference, progress=False) | options
    with pytest.raises(OnnxplainError, match=message):
        PredictionDifference(**settings)


def test_the_laplace_correction_uses_the_given_n_and_k(logreg):
    model, x, reference, _ = logreg
    explanation = PredictionDifference(window=2, sampler="marginal", samples=100, reference=reference,
                                       training_size=1, classes=2, progress=False).explain(model, x)
    assert explanation.diagnostics["laplace_training_size"] == 1 and explanation.diagnostics["laplace_classes"] == 2
    assert np.isfinite(explanation.relevance).all()
    numpy_integers = PredictionDifference(window=np.int64(2), sampler="marginal", samples=np.int32(100),
                                          reference=reference, progress=False).explain(model, x)
    assert numpy_integers.diagnostics["window"] == (2, 2)


def test_a_stride_larger_than_the_window_is_refused():
    with pytest.raises(OnnxplainError, match="stride 7 is larger than the window 3x3"):
        WindowGrid((28, 28), 3, 7)
    assert (WindowGrid((28, 28), 3, 3).counts() >= 1).all()                   # stride = window: tiled
    sparse = WindowGrid((28, 28), 3, 7, allow_gaps=True)   # the benchmarks' subsets of windows, timed
    assert sparse.axis_starts[0] == [0, 7, 14, 21, 25] and (sparse.counts() == 0).any()
    assert (WindowGrid((12, 28), (12, 3), 3).counts() >= 1).all()             # an axis one window covers
    with pytest.raises(OnnxplainError, match="stride 4 is larger than the window 12x3"):
        WindowGrid((12, 28), (12, 3), 4)


def test_a_stride_larger_than_the_window_is_a_cli_error(logreg):
    _, _, _, paths = logreg
    result = run("explain", paths["model"], paths["x"], "--method", "pda", "--sampler", "marginal", "--window", 2,
                 "--stride", 3, "--reference", paths["reference"], "--quiet", "--json")
    one_error_line(result, "stride 3", "window 2x2")
    assert result.stdout == ""


def test_a_window_larger_than_the_input_is_refused(logreg):
    _, _, _, paths = logreg
    with pytest.raises(OnnxplainError, match="window 13x13x13 is larger than the input's 12x109x91"):
        WindowGrid((12, 109, 91), 13)
    assert WindowGrid((12, 109, 91), (12, 13, 13), 13).size == (12, 13, 13)
    result = run("explain", paths["model"], paths["x"], "--method", "pda", "--window", 9,
                 "--reference", paths["reference"], "--quiet", "--json")
    one_error_line(result, "window 9x9", "8x8")


def test_a_padding_past_the_input_is_cut_to_it_and_reported(logreg):
    model, x, reference, _ = logreg
    explanation = PredictionDifference(window=2, padding=10, samples=4, reference=reference,
                                       progress=False).explain(model, x)
    assert explanation.params["padding"] == 10 and explanation.diagnostics["patch"] == (8, 8)
    assert PredictionDifference(window=2, padding=1, samples=4, reference=reference,
                                progress=False).explain(model, x).diagnostics["patch"] == (4, 4)


@pytest.mark.parametrize("sampler", ["marginal", MarginalSampler()])
def test_marginal_sampling_reports_no_padding(logreg, sampler):
    """Marginal sampling draws the window alone: its explanation reports padding 0, not the conditional default."""
    model, x, reference, _ = logreg
    explanation = PredictionDifference(window=2, samples=4, sampler=sampler, reference=reference,
                                       progress=False).explain(model, x)
    assert explanation.params["padding"] == 0


def conditional_map(model, x, reference):
    explanation = PredictionDifference(window=2, padding=1, samples=4, seed=3, reference=reference,
                                       progress=False).explain(model, x)
    return explanation.relevance, explanation.diagnostics


@pytest.mark.parametrize("damage", ["incomplete", "other shapes", "not a zip"])
def test_a_damaged_cache_entry_is_refitted_and_rewritten(logreg, damage):
    model, x, reference, _ = logreg
    expected, first = conditional_map(model, x, reference)
    (entry,) = list((cache_root() / "pda").glob("*.npz"))
    if damage == "incomplete":
        np.savez(entry, gain0=np.zeros(3))
    elif damage == "other shapes":
        with np.load(entry) as stored:
            arrays = {name: stored[name] for name in stored.files}
        np.savez(entry, **(arrays | {"factor0": arrays["factor0"][:, :1]}))
    else:
        entry.write_bytes(b"\x93NUMPY not a zip at all")
    relevance, diagnostics = conditional_map(model, x, reference)
    assert not first["sampler_cache"] and not diagnostics["sampler_cache"]
    assert "damaged" in diagnostics["sampler_cache_note"]
    np.testing.assert_array_equal(relevance, expected)
    relevance, diagnostics = conditional_map(model, x, reference)                # rewritten: read back whole
    assert diagnostics["sampler_cache"] and "sampler_cache_note" not in diagnostics
    np.testing.assert_array_equal(relevance, expected)


def test_a_cache_that_cannot_be_written_is_skipped_with_a_note(logreg, tmp_path, monkeypatch):
    model, x, reference, paths = logreg
    expected, _ = conditional_map(model, x, reference)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("ONNXPLAIN_CACHE", str(blocker / "cache"))
    relevance, diagnostics = conditional_map(model, x, reference)
    np.testing.assert_array_equal(relevance, expected)
    assert "not cached" in diagnostics["sampler_cache_note"]
    result = run("explain", paths["model"], paths["x"], "--method", "pda", "--window", 2, "--padding", 1,
                 "--samples", 4, "--reference", paths["reference"], "--quiet")
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("note: the fitted sampler was not cached") and "Traceback" not in result.stderr


def test_cli_location_grid_training_size_and_channels_match_the_library(logreg, tmp_path):
    model, x, reference, paths = logreg
    out = tmp_path / "r.npy"
    result = run("explain", paths["model"], paths["x"], "--method", "pda", "--window", 2, "--padding", 1,
                 "--samples", 4, "--reference", paths["reference"], "--location-grid", "2,2", "--channels", "joint",
                 "--training-size", 1000, "--save-npy", out, "--json", "--quiet")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["options"]["location_grid"] == [2, 2] and row["diagnostics"]["laplace_training_size"] == 1000
    expected = PredictionDifference(window=2, padding=1, samples=4, reference=reference, location_grid=(2, 2),
                                    channels="joint", training_size=1000, progress=False).explain(model, x)
    np.testing.assert_allclose(np.load(out), expected.relevance[0], atol=1e-6)
    result = run("explain", paths["model"], paths["x"], "--method", "pda", "--sampler", "marginal",
                 "--reference", paths["reference"], "--location-grid", 2, "--quiet")
    one_error_line(result, "location_grid", "conditional")
    result = run("explain", paths["model"], paths["x"], "--method", "pda", "--reference", paths["reference"],
                 "--location-grid", "2,x", "--quiet")
    one_error_line(result, "--location-grid")



def test_cli_pda_score_explains_the_pre_softmax_tensor(digits_cnn, tmp_path):
    samples = digits_cnn.parent / "samples"
    np.save(tmp_path / "x.npy", np.load(samples / "digit3_cnn.npy").transpose(1, 2, 0))        # NHWC
    np.save(tmp_path / "reference.npy", np.load(samples / "digits_reference_cnn.npy")[:10].transpose(0, 2, 3, 1))
    common = ["explain", digits_cnn.parent / "digits_keras_tf.onnx", tmp_path / "x.npy", "--method", "pda",
              "--sampler", "marginal", "--window", 7, "--stride", 7, "--reference", tmp_path / "reference.npy",
              "--json", "--quiet"]
    scores = {}
    for kind in ("auto", "logit"):
        result = run(*common, "--pda-score", kind)
        assert result.exit_code == 0, result.output
        (row,) = json.loads(result.stdout)
        scores[kind] = (row["diagnostics"]["score"], row["options"]["output"])
    assert scores["auto"] == ("weight of evidence", "Identity:0")
    assert scores["logit"] == ("activation difference", "sequential_1/dense_1_2/BiasAdd:0")


def test_settings_that_would_be_ignored_are_refused(digits_cnn):
    """The joint-channel model belongs to the conditional sampler, and the Laplace correction's N and K to the weight
    of evidence: given where nothing reads them (marginal sampling; logits, whose score is the activation
    difference), they were silently ignored."""
    model = onnxplain.load(digits_cnn)
    x = np.load(digits_cnn.parent / "samples" / "digit3_cnn.npy")[None]
    reference = np.load(digits_cnn.parent / "samples" / "digits_reference_cnn.npy")[:4]
    with pytest.raises(OnnxplainError, match="channels applies only to the conditional sampler"):
        PredictionDifference(reference=reference, sampler="marginal", channels="joint")
    for setting in (dict(training_size=50), dict(classes=10)):
        method = PredictionDifference(window=7, stride=7, samples=4, sampler="marginal", reference=reference,
                                      progress=False, **setting)
        with pytest.raises(OnnxplainError, match="Laplace correction of the weight of evidence; here the score is "
                                                 "the activation difference"):
            method.explain(model, x)
        assert PredictionDifference(window=7, stride=7, samples=4, sampler="marginal", reference=reference,
                                    score="probability", progress=False, **setting).explain(model, x).relevance.any()
