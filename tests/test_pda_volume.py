"""3-D prediction difference: k×k×k windows on volumes (flat logistic-regression inputs and 5-D tensors),
checked against the weights, with a NIfTI relevance volume written and read back."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain.io.nifti import write_nifti
from onnxplain.methods.pda import PredictionDifference
from onnxplain.targets import Target

SHAPE = (8, 10, 9)                               # (D, H, W)
BLOB = (slice(2, 5), slice(3, 6), slice(4, 7))   # where patients differ


pytestmark = pytest.mark.usefixtures("private_cache")  # fitted samplers are cached in a folder of the test's own


def volumes(count: int, seed: int = 0):
    """Smooth random volumes in [0, 1]; class 1 has a darker blob (like reduced FA in patients)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, count)
    data = 0.5 + 0.15 * gaussian_filter(rng.normal(size=(count, *SHAPE)), sigma=(0, 1, 1, 1)) * 3
    data[(labels == 1, *BLOB)] -= 0.2
    return np.clip(data, 0, 1).astype(np.float32), labels


@pytest.fixture(scope="module")
def logreg(tmp_path_factory):
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    data, labels = volumes(240)
    flat = data.reshape(len(data), -1)
    classifier = LogisticRegression(C=0.05, max_iter=300).fit(flat[:160], labels[:160])
    assert classifier.score(flat[160:200], labels[160:200]) > 0.85
    folder = tmp_path_factory.mktemp("volume")
    path = folder / "volume_logreg.onnx"
    path.write_bytes(to_onnx(classifier, flat[:1], options={id(classifier): {"zipmap": False}}).SerializeToString())
    return path, classifier, data, labels, folder


def analytic_marginal(w, b, x, reference, k, target, n):
    """WE map of p(1|x) = sigmoid(w.x + b) with every k×k×k window marginalised over all references."""
    prob = lambda v: 1 / (1 + np.exp(-(v.reshape(len(v), -1) @ w + b)))  # noqa: E731
    log_odds = lambda p: np.log2((p * n + 1) / (n + 2)) - np.log2(1 - (p * n + 1) / (n + 2))  # noqa: E731
    p_x = prob(x[None])[0]
    p_x = p_x if target == 1 else 1 - p_x
    total, counts = np.zeros(SHAPE), np.zeros(SHAPE)
    for start in np.ndindex(*[s - k + 1 for s in SHAPE]):
        box = tuple(slice(s, s + k) for s in start)
        changed = np.repeat(x[None], len(reference), axis=0)
        changed[(slice(None), *box)] = reference[(slice(None), *box)]
        p = prob(changed).mean() if target == 1 else (1 - prob(changed)).mean()
        total[box] += log_odds(p_x) - log_odds(p)
        counts[box] += 1
    return total / counts


def test_flat_volume_marginal_matches_the_weights(logreg):
    path, classifier, data, labels, _ = logreg
    model = onnxplain.load(path)
    reference, x = data[200:230], data[230:232]
    method = PredictionDifference(window=3, sampler="marginal", samples=len(reference), volume_shape=SHAPE,
                                  reference=reference.reshape(len(reference), -1), progress=False)
    explanation = method.explain(model, x.reshape(len(x), -1))
    assert explanation.relevance.shape == (2, int(np.prod(SHAPE)))
    assert explanation.diagnostics["window"] == (3, 3, 3)
    w, b = classifier.coef_[0].astype(np.float64), float(classifier.intercept_[0])
    for i in range(2):
        expected = analytic_marginal(w, b, x[i].astype(np.float64), reference.astype(np.float64), 3,
                                     int(explanation.target[i]), len(reference))
        np.testing.assert_allclose(explanation.relevance[i].reshape(SHAPE), expected, atol=2e-4)


def five_d_copy(classifier, path):
    """The same logistic regression as an ONNX graph on [N, 1, D, H, W]: softmax([-z/2, z/2]) = [1-p, p]."""
    w = classifier.coef_[0].astype(np.float32)
    b = np.float32(classifier.intercept_[0])
    weights = np.stack([-w / 2, w / 2], axis=1)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["volume"], ["flat"], axis=1),
         helper.make_node("MatMul", ["flat", "W"], ["z"]),
         helper.make_node("Add", ["z", "B"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)], "volume_lr",
        [helper.make_tensor_value_info("volume", TensorProto.FLOAT, [None, 1, *SHAPE])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2])],
        [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(np.array([-b / 2, b / 2], np.float32), "B")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    return path


def test_conditional_location_volume_writes_nifti_and_finds_the_blob(logreg):
    import nibabel

    path, classifier, data, labels, folder = logreg
    flat_model = onnxplain.load(path)
    tensor_model = onnxplain.load(five_d_copy(classifier, folder / "volume_5d.onnx"))
    reference = data[:100]
    patient = data[200:240][labels[200:240] == 1][:1]
    params = dict(window=3, padding=1, samples=8, sampler="conditional", location_grid=(2, 2, 2), seed=4,
                  progress=False)
    flat = PredictionDifference(reference=reference.reshape(100, -1), volume_shape=SHAPE, **params).explain(
        flat_model, patient.reshape(1, -1), Target(index=1))
    tensor = PredictionDifference(reference=reference[:, None], **params).explain(
        tensor_model, patient[:, None], Target(index=1))
    assert tensor.relevance.shape == (1, 1, *SHAPE)
    np.testing.assert_allclose(tensor.relevance[0, 0], flat.relevance[0].reshape(SHAPE), atol=1e-5)

    relevance = flat.relevance[0].reshape(SHAPE)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    written = write_nifti(folder / "relevance.nii.gz", relevance, affine)
    image = nibabel.load(str(written))
    np.testing.assert_allclose(image.get_fdata(), relevance, atol=1e-6)
    np.testing.assert_allclose(image.affine, affine)
    inside = np.zeros(SHAPE, bool)
    inside[BLOB] = True
    assert relevance[inside].mean() > 5 * np.abs(relevance[~inside]).mean()   # evidence for "patient" at the blob


def test_penultimate_logit_score_is_the_linear_activation_difference(logreg):
    """score='logit' explains the pre-softmax tensor: for a linear logit z/2 = (w.x + b)/2 and marginal
    sampling over all references, each window's difference is exactly (w/2).(x_w - mean_r reference_r,w)."""
    path, classifier, data, labels, folder = logreg
    model = onnxplain.load(five_d_copy(classifier, folder / "volume_5d_logit.onnx"))
    assert model.score_kind == "probabilities" and model.logits_output == "logits"
    reference, x = data[:20, None], data[220:221, None]
    explanation = PredictionDifference(window=3, sampler="marginal", samples=20, reference=reference, score="logit",
                                       progress=False).explain(model, x, Target(index=1))
    assert explanation.diagnostics["score"] == "activation difference"
    half_w = classifier.coef_[0].reshape(SHAPE) / 2
    gap = x[0, 0].astype(np.float64) - reference[:, 0].astype(np.float64).mean(axis=0)
    total, counts = np.zeros(SHAPE), np.zeros(SHAPE)
    for start in np.ndindex(*[s - 2 for s in SHAPE]):
        box = tuple(slice(s, s + 3) for s in start)
        total[box] += (half_w[box] * gap[box]).sum()
        counts[box] += 1
    np.testing.assert_allclose(explanation.relevance[0, 0], total / counts, atol=1e-5)
    assert explanation.score[0] == pytest.approx((classifier.decision_function(x.reshape(1, -1))[0]) / 2, abs=1e-4)
