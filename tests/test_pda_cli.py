"""`onnxplain explain --method pda` from the command line: images, hidden-layer targets, NIfTI volumes."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from cli_runner import run
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain.methods import make_method
from onnxplain.methods.pda import PredictionDifference
from onnxplain.targets import Target


pytestmark = pytest.mark.usefixtures("private_cache")  # fitted samplers are cached in a folder of the test's own


def test_cli_pda_conditional_matches_the_library(digits_cnn, tmp_path):
    samples = digits_cnn.parent / "samples"
    reference = samples / "digits_reference_cnn.npy"
    out = tmp_path / "relevance.npy"
    result = run("explain", digits_cnn, samples / "digit3_cnn.npy", "--method", "pda", "--window", 4, "--padding", 2,
                 "--samples", 5, "--sampler", "conditional", "--reference", reference, "--stride", 2, "--seed", 7,
                 "--save-npy", out, "--json", "--quiet")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["method"] == "pda" and row["target"]["index"] == 3
    assert row["diagnostics"]["windows"] == 13 * 13 and row["diagnostics"]["samples_per_window"] == 5
    assert row["options"]["sampler"] == "conditional" and row["options"]["seed"] == 7
    saved = np.load(out)
    model = onnxplain.load(digits_cnn)
    expected = PredictionDifference(window=4, padding=2, samples=5, sampler="conditional", stride=2, seed=7,
                                    reference=np.load(reference), progress=False).explain(
        model, np.load(samples / "digit3_cnn.npy")[None])
    assert saved.shape == (1, 28, 28)
    np.testing.assert_allclose(saved, expected.relevance[0], atol=1e-6)


def test_cli_pda_hidden_layer_and_marginal(digits_cnn):
    samples = digits_cnn.parent / "samples"
    result = run("explain", digits_cnn, samples / "digit7_cnn.npy", "--method", "pda", "--sampler", "marginal",
                 "--reference", samples / "digits_reference_cnn.npy", "--layer", "relu_1", "--target", 2,
                 "--window", 5, "--stride", 3, "--samples", 4, "--json", "--quiet")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["target"] == {"layer": "relu_1", "channel": 2}
    assert row["diagnostics"]["score"] == "activation difference"


def test_cli_pda_user_errors(digits_cnn):
    sample = digits_cnn.parent / "samples" / "digit3_cnn.npy"
    result = run("explain", digits_cnn, sample, "--method", "pda")
    assert result.exit_code == 2 and "reference" in result.output
    result = run("explain", digits_cnn, sample, "--method", "pda", "--reference",
                 digits_cnn.parent / "samples" / "digits_reference_logreg.npy")
    assert result.exit_code == 2 and "Traceback" not in result.output


def volume_model(path, crop, weights):
    """A flat logistic regression over a cropped volume, with the crop stored as its preprocessing spec."""
    features = weights.size
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["z"]), helper.make_node("Softmax", ["z"], ["p"], axis=1)], "vlr",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, features])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, [None, 2])],
        [numpy_helper.from_array(np.stack([-weights, weights], axis=1).astype(np.float32), "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    spec = {"layout": "flat", "color": "gray", "scale": 1.0, "crop": crop}
    model.metadata_props.add(key="onnxplain.preprocess", value=json.dumps(spec))
    onnx.save(model, str(path))
    return path


def test_cli_pda_on_a_nifti_volume_writes_a_relevance_volume(tmp_path):
    import nibabel

    rng = np.random.default_rng(0)
    full, crop = (8, 7, 5), [[1, 7], [0, 7], [0, 5]]
    box = (6, 7, 5)
    weights = np.zeros(box)
    weights[2:4, 3:5, 1:3] = 2.0
    model_path = volume_model(tmp_path / "vlr.onnx", crop, weights.reshape(-1))
    volume = rng.random(full).astype(np.float32)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    nibabel.save(nibabel.Nifti1Image(volume, affine), str(tmp_path / "scan.nii.gz"))
    reference = rng.random((9, *box)).astype(np.float32).reshape(9, -1)
    np.save(tmp_path / "reference.npy", reference)
    result = run("explain", model_path, tmp_path / "scan.nii.gz", "--method", "pda", "--sampler", "marginal",
                 "--window", 2, "--samples", 9, "--reference", tmp_path / "reference.npy",
                 "--save-npy", tmp_path / "r.npy", "--out", tmp_path / "scan.png", "--json", "--quiet")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["diagnostics"]["window"] == [2, 2, 2] and row["diagnostics"]["windows"] == 5 * 6 * 4
    flat = volume[1:7].reshape(1, -1)
    expected = PredictionDifference(window=2, sampler="marginal", samples=9, reference=reference,
                                    progress=False).explain(onnxplain.load(model_path), flat, Target())
    np.testing.assert_allclose(np.load(tmp_path / "r.npy"), expected.relevance[0], atol=1e-6)
    written = nibabel.load(str(tmp_path / "scan_relevance.nii.gz"))
    assert written.shape == full
    np.testing.assert_allclose(written.get_fdata()[1:7], expected.relevance[0].reshape(box), atol=1e-6)
    relevance = expected.relevance[0].reshape(box)
    assert np.abs(relevance[2:4, 3:5, 1:3]).mean() > np.abs(relevance).mean()   # the weighted block matters


@pytest.mark.parametrize("quiet", [False, True])
def test_long_work_shows_a_bar_with_an_eta_unless_quiet(digits_cnn, monkeypatch, quiet):
    """Bars appear on a terminal once work has lasted PROGRESS_DELAY_S (set to 0 here, so even this short job counts
    as long)."""
    import onnxplain.runtime

    monkeypatch.setattr(onnxplain.runtime, "PROGRESS_DELAY_S", 0)
    monkeypatch.setattr(onnxplain.runtime, "bars_visible", lambda tqdm_class: True)   # stderr as a terminal
    samples = digits_cnn.parent / "samples"
    args = ["explain", digits_cnn, samples / "digit3_cnn.npy", "--method", "pda", "--window", 4, "--samples", 2,
            "--stride", 4, "--reference", samples / "digits_reference_cnn.npy", "--json"]
    result = run(*args, *(["--quiet"] if quiet else []))
    assert result.exit_code == 0, result.output
    shown = "prediction difference" in result.stderr and "<" in result.stderr  # tqdm's [elapsed<remaining]
    assert shown != quiet


def test_no_bars_where_stderr_is_no_terminal(digits_cnn, monkeypatch):
    """Redirected to a file or a pipe (here: the test runner's buffer), stderr gets no bar frames, --quiet or not."""
    import onnxplain.runtime

    monkeypatch.setattr(onnxplain.runtime, "PROGRESS_DELAY_S", 0)
    samples = digits_cnn.parent / "samples"
    result = run("explain", digits_cnn, samples / "digit3_cnn.npy", "--method", "pda", "--window", 4, "--samples", 2,
                 "--stride", 4, "--reference", samples / "digits_reference_cnn.npy", "--json")
    assert result.exit_code == 0 and result.stderr == "", result.stderr


def test_tabular_features_get_one_window_per_feature(tmp_path):
    """A plain feature vector (a scaled scikit-learn pipeline, no image size in any spec): PDA and occlusion window
    one feature at a time by default, PDA's conditional model without neighbours (padding 0); a feature the model
    ignores gets no relevance."""
    from sklearn.datasets import load_wine
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from onnxplain.converters import convert_sklearn

    X, y = load_wine(return_X_y=True)
    X = X.astype(np.float32)
    X[:, 4] = 7.0                                         # a constant feature: no model can use it
    convert_sklearn(make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(X, y),
                    tmp_path / "wine.onnx", samples=X[:20])
    np.save(tmp_path / "x.npy", X[:1])
    np.save(tmp_path / "reference.npy", X[::4])
    for method in ("pda", "occlusion"):
        result = run("explain", tmp_path / "wine.onnx", tmp_path / "x.npy", "--method", method, "--reference",
                     tmp_path / "reference.npy", "--save-npy", tmp_path / method, "--json", "--quiet")
        assert result.exit_code == 0, result.output
        (row,) = json.loads(result.stdout)
        assert row["diagnostics"]["windows"] == 13 and row["options"]["window"] == 1
        relevance = np.load(tmp_path / method / "x.npy")
        assert relevance.shape == (13,) and relevance[4] == 0 and np.abs(relevance).max() > 0
    assert row["options"]["fill"] == "reference mean"
    pda_row = json.loads(run("explain", tmp_path / "wine.onnx", tmp_path / "x.npy", "--method", "pda", "--reference",
                             tmp_path / "reference.npy", "--json", "--quiet").stdout)[0]
    assert pda_row["options"]["padding"] == 0
    # the conditional model is fitted per feature: each feature's samples stay inside that feature's own range
    import onnxplain
    from onnxplain.methods.pda import PredictionDifference

    reference = X[::4]
    setup = PredictionDifference(reference=reference, progress=False).prepare(onnxplain.load(tmp_path / "wine.onnx"),
                                                                             (13,))
    drawn = setup.sampler.sample(setup.geometry.to_grid(X[:1])[0], list(range(13)), 50, 0)   # (13, 50, 1, 1)
    drawn = drawn.reshape(13, 50)
    assert (drawn >= reference.min(0)[:, None] - 1e-4).all() and (drawn <= reference.max(0)[:, None] + 1e-4).all()


def test_reference_npy_may_be_one_sample_without_its_batch_axis(digits_cnn, tmp_path):
    """--reference x.npy holding one sample (1x28x28 for the CNN's Nx1x28x28) is that sample as a batch of one:
    occlusion fills with it, exactly as with the array given its batch axis; an array that is neither a batch nor
    one sample is one line and exit code 2."""
    samples = digits_cnn.parent / "samples"
    one = np.load(samples / "digits_reference_cnn.npy")[5]
    assert one.shape == (1, 28, 28)
    np.save(tmp_path / "one.npy", one)
    np.save(tmp_path / "batch.npy", one[None])
    np.save(tmp_path / "flat.npy", one[0])
    maps = {}
    for name in ("one", "batch"):
        result = run("explain", digits_cnn, samples / "digit3_cnn.npy", "--method", "occlusion", "--window", 7,
                     "--reference", tmp_path / f"{name}.npy", "--save-npy", tmp_path / f"{name}_r.npy", "--quiet")
        assert result.exit_code == 0, result.output
        maps[name] = np.load(tmp_path / f"{name}_r.npy")
    model = onnxplain.load(digits_cnn)
    from onnxplain.methods import make_method

    want = make_method("occlusion", window=7, reference=one[None], progress=False).explain(
        model, np.load(samples / "digit3_cnn.npy")[None]).relevance[0]
    np.testing.assert_array_equal(maps["one"], maps["batch"])
    np.testing.assert_allclose(maps["one"], want, rtol=1e-6, atol=1e-7)
    assert np.abs(want).max() > 0
    result = run("explain", digits_cnn, samples / "digit3_cnn.npy", "--method", "occlusion", "--reference",
                 tmp_path / "flat.npy", "--quiet")
    assert result.exit_code == 2 and "Traceback" not in result.output
    (line,) = result.stderr.strip().splitlines()
    assert f"--reference {tmp_path / 'flat.npy'}: an array of shape 28x28 is neither a batch" in line


PASS_COUNTING = {"pda": {"sampler": "marginal", "window": 4, "stride": 4, "samples": 3},
                 "occlusion": {"window": 4, "stride": 4}}


@pytest.mark.parametrize("method", sorted(PASS_COUNTING))
def test_json_records_count_each_inputs_own_forward_passes(digits_cnn, tmp_path, method):
    """Over several inputs a record's forward_passes are its input's own (as explaining it alone counts them) and a
    time spent on the whole batch is named as the batch's, not repeated as if it were each input's."""
    samples = digits_cnn.parent / "samples"
    x = np.load(samples / "digits_test100_cnn.npy")[:3]
    x[1, :, :, :14] = 0                       # fewer pixels to cover: fewer windows run than for its neighbours
    np.save(tmp_path / "x.npy", x)
    params = dict(PASS_COUNTING[method])
    options = [item for key, value in params.items() for item in (f"--{key}", value)]
    if method == "pda":
        params["reference"] = np.load(samples / "digits_reference_cnn.npy")
        options += ["--reference", samples / "digits_reference_cnn.npy"]
    result = run("explain", digits_cnn, tmp_path / "x.npy", "--method", method, *options, "--batch", 2, "--json",
                 "--quiet")
    assert result.exit_code == 0, result.output
    records = [row["diagnostics"] for row in json.loads(result.stdout)]
    model = onnxplain.load(digits_cnn)
    alone = [make_method(method, progress=False, **params).explain(model, x[i:i + 1]).diagnostics["forward_passes"]
             for i in range(3)]
    assert [r["forward_passes"] for r in records] == alone and len(set(alone)) > 1
    assert all("forward_passes_per_input" not in r and "seconds" not in r for r in records)
    if method == "pda":
        assert [r["batch_inputs"] for r in records] == [2, 2, 1] and all(r["batch_seconds"] > 0 for r in records)
    else:
        assert not any("batch_seconds" in r for r in records)
    batch = make_method(method, progress=False, **params).explain(model, x)
    assert batch.diagnostics["forward_passes_per_input"] == alone and batch.diagnostics["forward_passes"] == sum(alone)
