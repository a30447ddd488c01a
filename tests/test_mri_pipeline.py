"""The MRI demo's path (models/mri_demo.py) on a reduced cohort: skl2onnx's default export taken as is, the NIfTI
crop path, recovery of the planted regions, 3-D prediction difference checked against a closed form, and the whole
run writing its NIfTI volumes, figures and results."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import onnxplain
from onnxplain.io import load_inputs
from onnxplain.targets import Target

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
import mri_data as data  # noqa: E402
import mri_demo as demo  # noqa: E402

SMALL = data.CohortSpec(shape=(30, 36, 30), n_patients=24, n_controls=16, effect=0.3)
TINY = data.CohortSpec(shape=(23, 28, 23), n_patients=12, n_controls=10, effect=0.3)


pytestmark = pytest.mark.usefixtures("private_cache")  # fitted samplers are cached in a folder of the test's own


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    slab, labels = data.cohort_slab(SMALL, cache=False)
    subset = demo.balanced_subset(SMALL)
    features = slab.reshape(len(slab), -1)
    classifier = demo.train(features[subset], labels[subset])
    crop = data.scaled_crop(SMALL)
    path = demo.export(classifier, tmp_path_factory.mktemp("mri") / "mri_logreg.onnx", crop, SMALL.shape)
    return classifier, path, features, labels, subset, crop


def test_balanced_subset_takes_the_first_patients():
    subset = demo.balanced_subset(data.CohortSpec())
    assert len(subset) == 140 and list(subset[:70]) == list(range(70)) and list(subset[70:]) == list(range(100, 170))


def test_default_skl2onnx_export_is_taken_as_is(trained):
    classifier, path, features, _, subset, crop = trained
    model = onnxplain.load(path)
    assert [n.op_type for n in model.original.graph.node] == ["LinearClassifier", "Cast", "ZipMap"]
    assert model.score_kind == "probabilities"
    assert model.input_shape == (None, features.shape[1])
    assert model.preprocess.layout == "flat" and model.preprocess.crop == crop
    assert model.labels == data.LABELS
    scores = model.scores(features[subset])
    assert np.allclose(scores, classifier.predict_proba(features[subset]), atol=1e-5)


def test_nifti_volume_goes_through_the_crop(trained, tmp_path):
    _, path, features, _, _, _ = trained
    model = onnxplain.load(path)
    files = [data.write_nifti(data.subject_volume(SMALL, i), tmp_path / f"s{i}.nii.gz", SMALL) for i in (2, 30)]
    x, sources = load_inputs(files, model)
    assert x.shape == (2, features.shape[1]) and sources == files
    assert np.array_equal(x, features[[2, 30]])


def test_weight_map_recovers_the_planted_regions(trained):
    classifier, _, _, _, _, crop = trained
    box = tuple(slice(a, b) for a, b in crop)
    planted, brain = data.planted_mask(SMALL)[box], data.brain_mask(SMALL)[box]
    weights = demo.weight_map(classifier, crop)
    assert weights[planted].mean() < 0                               # reduced FA = evidence for 'patient'
    found = demo.recovery(weights, planted, brain)
    assert found["auc"] > 0.9 and found["top_precision"] > 0.5
    chance = demo.recovery(np.random.default_rng(0).normal(size=weights.shape), planted, brain)
    assert abs(chance["auc"] - 0.5) < 0.1


def test_recovery_scores():
    planted = np.zeros((4, 5, 6), bool)
    planted[1, 2, 2:4] = True
    brain = np.ones_like(planted)
    assert demo.recovery(planted * -3.0, planted, brain) == {"auc": 1.0, "top_precision": 1.0}
    assert demo.recovery(~planted * 1.0, planted, brain)["auc"] == 0.0


def _closed_form_marginal(classifier, x, reference, crop, window, n, target):
    """Weight of evidence of every k×k×k window, marginalised over every reference volume, by direct algebra."""
    shape = tuple(b - a for a, b in crop)
    w, b = classifier.coef_[0].reshape(shape), classifier.intercept_[0]
    volume, refs = x.reshape(shape).astype(np.float64), reference.reshape(-1, *shape).astype(np.float64)
    logit = float((w * volume).sum() + b)

    def log_odds(p):
        p = (p if target == 1 else 1 - p) * n + 1
        p = p / (n + 2)
        return np.log2(p) - np.log2(1 - p)

    total, counts = np.zeros(shape), np.zeros(shape)
    for start in np.ndindex(*[s - window + 1 for s in shape]):
        box = tuple(slice(s, s + window) for s in start)
        change = ((refs[(slice(None), *box)] - volume[box]) * w[box]).reshape(len(refs), -1).sum(axis=1)
        p = np.mean(1 / (1 + np.exp(-(logit + change))))
        total[box] += log_odds(1 / (1 + np.exp(-logit))) - log_odds(p)
        counts[box] += 1
    return total / counts


def test_pda_3d_matches_the_closed_form(trained):
    classifier, path, features, labels, subset, crop = trained
    model = onnxplain.load(path)
    reference = features[subset]
    settings = demo.Settings(samples=len(reference), stride=1)   # every reference: the exact expectation
    method = demo.pda_methods(settings, reference, crop)["pda-marginal"]
    method.progress = False
    explanation = method.explain(model, features[[0]], Target(index=1))
    expected = _closed_form_marginal(classifier, features[0], reference, crop, 3, len(reference), 1)
    got = explanation.relevance[0].reshape(expected.shape)
    assert np.abs(expected).max() > 1e-3
    assert np.allclose(got, expected, atol=2e-4 * np.abs(expected).max() + 1e-6)
    box = tuple(slice(a, b) for a, b in crop)
    found = demo.recovery(got, data.planted_mask(SMALL)[box], data.brain_mask(SMALL)[box])
    assert found["auc"] > 0.8                                          # the planted regions stand out


def test_location_conditioned_pda_is_local_and_reproducible(trained):
    _, path, features, _, subset, crop = trained
    model = onnxplain.load(path)
    settings = demo.Settings(samples=4, stride=2, location_cell=12)
    assert demo.location_cells(crop, 12) == (1, 3, 3)
    method = demo.pda_methods(settings, features[subset], crop)["pda-location"]
    method.progress = False
    first = method.explain(model, features[[1]]).relevance[0]
    assert np.array_equal(first, method.explain(model, features[[1]]).relevance[0])
    shape = tuple(b - a for a, b in crop)
    varying = features[subset].reshape(-1, *shape).std(axis=0) > 0
    from scipy import ndimage
    reach = ndimage.distance_transform_edt(~varying) <= 2 * np.sqrt(3)   # within one 3x3x3 window of the brain
    relevance = first.reshape(shape)
    assert np.isfinite(relevance).all() and np.abs(relevance[varying]).max() > 0
    assert (relevance[~reach] == 0).all()                                # background windows are never changed


def test_lrp_on_the_linear_classifier_is_weight_times_input(trained):
    classifier, path, features, _, _, _ = trained
    from onnxplain.methods import make_method

    model = onnxplain.load(path)
    explanation = make_method("lrp", composite="epsilon-plus", progress=False).explain(
        model, features[[0, 30]], Target(index=1))
    expected = classifier.coef_[0] * features[[0, 30]]
    assert np.allclose(explanation.relevance, expected, atol=1e-4 * np.abs(expected).max())


def test_the_demo_runs_end_to_end(tmp_path):
    import nibabel

    settings = demo.Settings(stride=3, samples=3, per_class=1, location_cell=12, max_patches=2000)
    results = demo.run(tmp_path, settings, TINY, methods=["pda-marginal", "pda-location", "lrp"])
    assert set(results["recovery"]) == {"pda-marginal", "pda-location", "lrp", "weights"}
    assert 0 <= results["accuracy"]["cv_mean"] <= 1 and len(results["accuracy"]["folds"]) == 10
    assert results["export"]["max_abs_diff"] < 1e-5
    stored = json.loads((tmp_path / "results.json").read_text())
    assert stored["subjects"] == results["subjects"] and len(stored["subjects"]) == 2
    volumes = sorted(tmp_path.glob("relevance_*.nii.gz"))
    assert len(volumes) == 2 * 4
    image = nibabel.load(str(volumes[0]))
    assert image.shape == TINY.shape
    outside = np.ones(TINY.shape, bool)
    outside[tuple(slice(a, b) for a, b in data.scaled_crop(TINY))] = False
    assert (np.asarray(image.get_fdata())[outside] == 0).all()
    pictures = {p.name for p in tmp_path.glob("*.png")}
    assert {"fig10_pda-marginal.png", "fig10_weights.png"} <= pictures
    assert len([p for p in pictures if p.startswith("fig9_")]) == 2
    assert len([p for p in pictures if p.startswith("montage_")]) == 2 * 4
    assert "| mean |" in demo.table(results)
