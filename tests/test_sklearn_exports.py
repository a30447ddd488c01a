"""scikit-learn classifiers on feature vectors as skl2onnx writes them (float and double inputs, named classes,
decision scores, one-vs-rest probabilities), checked against the estimators' own closed forms."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import onnxplain
from onnxplain.lrp import LRP
from onnxplain.methods.gradients import Gradient


@pytest.fixture(scope="module")
def table():
    """Three separable classes of 5 features on different scales, named, and the same rows as two classes."""
    rng = np.random.default_rng(5)
    y = np.repeat([0, 1, 2], 40)
    x = (rng.normal(size=(120, 5)) + 2 * np.eye(3, 5)[y]) * [1, 10, 0.1, 1, 5] + [0, 50, 0, 3, 0]
    return x.astype(np.float32), np.array(["cat", "dog", "eel"])[y]


def fitted(estimator, x, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return estimator.fit(x, y)


def exported(estimator, sample, path, **options):
    from skl2onnx import to_onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path.write_bytes(to_onnx(estimator, sample, **options).SerializeToString())
    return onnxplain.load(path)


def test_named_classes_in_a_string_table_label_the_scores_and_the_torch_executor_runs(table, tmp_path):
    """A binary MLPClassifier with named classes keeps them in a string initializer that ArrayFeatureExtractor reads
    (no classifier op): they are the labels, and the torch executor leaves them out (torch holds no strings), so the
    gradient runs and equals the network's own: d z / dx of the log-odds z, with the sign flipped for class 0."""
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, names = table
    binary = np.where(names == "cat", "cat", "dog")
    pipeline = fitted(make_pipeline(StandardScaler(), MLPClassifier((6,), max_iter=500, random_state=0)), x, binary)
    model = exported(pipeline, x[:1], tmp_path / "mlp.onnx", options={"zipmap": False})
    assert model.labels == ["cat", "dog"] and model.class_index("dog") == 1
    scaler, mlp = pipeline.steps[0][1], pipeline.steps[1][1]
    rows = x[:6].astype(np.float64)
    hidden = (rows - scaler.mean_) / scaler.scale_ @ mlp.coefs_[0] + mlp.intercepts_[0]
    want = ((hidden > 0) * mlp.coefs_[1][:, 0]) @ mlp.coefs_[0].T / scaler.scale_
    for target, sign in (("dog", 1), ("cat", -1)):
        grad = Gradient(progress=False).explain(model, x[:6], target).relevance
        np.testing.assert_allclose(grad, sign * want, rtol=1e-4, atol=1e-6)


def test_a_linear_svm_decision_score_gets_lrp(table, tmp_path):
    """LinearSVC's LinearClassifier has no post-transform (NONE): its scores are the logits, and LRP passes the
    identity to them; epsilon-LRP of a linear score is w_i x_i (the intercept takes the rest)."""
    from sklearn.svm import LinearSVC

    x, names = table
    svm = fitted(LinearSVC(), x, names)
    model = exported(svm, x[:1], tmp_path / "svm.onnx")
    assert model.score_kind == "logits" and model.labels == ["cat", "dog", "eel"]
    for c in range(3):
        explanation = LRP(progress=False).explain(model, x[:8], c)
        np.testing.assert_allclose(explanation.score, svm.decision_function(x[:8])[:, c], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(explanation.relevance, svm.coef_[c] * x[:8], rtol=1e-4, atol=1e-5)
