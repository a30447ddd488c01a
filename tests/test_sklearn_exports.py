"""scikit-learn classifiers on feature vectors as skl2onnx writes them (float and double inputs, named classes,
decision scores, one-vs-rest probabilities), checked against the estimators' own closed forms."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import onnxplain
from onnxplain.lrp import LRP
from onnxplain.methods.gradients import Gradient
from onnxplain.targets import Target


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
        explanation = LRP(progress=False).explain(model, x[:8], Target(index=c))
        np.testing.assert_allclose(explanation.score, svm.decision_function(x[:8])[:, c], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(explanation.relevance, svm.coef_[c] * x[:8], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", ["sgd float", "sgd double", "logistic double", "one-vs-rest"])
def test_normalised_one_vs_rest_scores_are_probabilities(case, table, tmp_path):
    """skl2onnx writes these probabilities as T / sum(T) over the classes (SGDClassifier's log loss: sigmoids written
    as 1 / (1 + exp(-z)); a binary LogisticRegression on doubles: Sigmoid, then an L1 norm): they are read as
    probabilities (the log-likelihood is their log, with a finite gradient where exp(-z) overflows), and the
    gradient explains z under the sigmoids, the estimator's
    decision function; OneVsRestClassifier's normalised vote of LinearClassifiers has no z of its own: the gradient
    explains the probability itself."""
    from sklearn.linear_model import LogisticRegression, SGDClassifier
    from sklearn.multiclass import OneVsRestClassifier

    x, names = table
    double = "double" in case
    if case.startswith("sgd"):
        estimator = fitted(SGDClassifier(loss="log_loss", random_state=0), x, names)
    elif case == "logistic double":
        estimator = fitted(LogisticRegression(max_iter=1000), x, np.where(names == "cat", "cat", "dog"))
    else:
        estimator = fitted(OneVsRestClassifier(LogisticRegression(max_iter=1000)), x, names)
    rows = x[:8].astype(np.float64 if double else np.float32)
    model = exported(estimator, rows[:1], tmp_path / "ovr.onnx", options={"zipmap": False})
    want = estimator.predict_proba(rows)
    assert model.score_kind == "probabilities", model.score_reason
    np.testing.assert_allclose(model.scores(rows), want, rtol=1e-4, atol=1e-6)
    got = model.torch().log_likelihood(torch.from_numpy(rows)).detach().double().numpy()
    np.testing.assert_allclose(np.exp(got), want, rtol=1e-4, atol=1e-6)
    far = torch.from_numpy(rows * 100).requires_grad_()   # exp(-z) overflows: APEM's loss gradient stays finite
    model.torch().log_likelihood(far)[:, 0].sum().backward()
    assert torch.isfinite(far.grad).all()
    explanation = Gradient(progress=False).explain(model, rows, Target(index=1))
    if case == "one-vs-rest":
        assert explanation.diagnostics["score_kind"] == "probabilities"
        np.testing.assert_allclose(explanation.score, want[:, 1], rtol=1e-5)
        return
    decision = estimator.decision_function(rows)
    z, w = (decision[:, 1], estimator.coef_[1]) if decision.ndim == 2 else (decision, estimator.coef_[0])
    assert explanation.diagnostics["score_kind"] == "logits"
    np.testing.assert_allclose(explanation.score, z, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(explanation.relevance, np.broadcast_to(w, rows.shape), rtol=1e-5)


@pytest.mark.parametrize("kind", ["LinearSVC", "RidgeClassifier", "SVC"])
def test_binary_decision_scores_are_two_classes_in_label_order(kind, table, tmp_path):
    """Two classes without probabilities: skl2onnx's LinearSVC and RidgeClassifier output the positive class's
    decision score d alone (one column), onnxruntime's SVMClassifier writes [d, -d], against the labels it predicts;
    both become the classes [-d, d] (logits), so top-1 is the predicted class and class 1's LRP is w_i x_i."""
    from sklearn.linear_model import RidgeClassifier
    from sklearn.svm import SVC, LinearSVC

    x, names = table
    binary = np.where(names == "cat", "cat", "dog")
    estimator = fitted({"LinearSVC": LinearSVC(), "RidgeClassifier": RidgeClassifier(),
                        "SVC": SVC(kernel="linear")}[kind], x, binary)
    model = exported(estimator, x[:1], tmp_path / "binary.onnx", options={"zipmap": False} if kind == "SVC" else None)
    d = estimator.decision_function(x)
    assert (model.score_kind, model.labels) == ("logits", ["cat", "dog"]), model.score_reason
    np.testing.assert_allclose(model.scores(x), np.stack([-d, d], 1), atol=1e-3 * np.abs(d).max())   # float32 kernels
    assert (np.array(model.labels)[model.scores(x).argmax(1)] == estimator.predict(x)).all()
    if kind != "SVC":   # an SVMClassifier has no torch forward: pda and occlusion explain it
        explanation = LRP(progress=False).explain(model, x[:8], "dog")
        np.testing.assert_allclose(explanation.relevance, estimator.coef_.reshape(-1) * x[:8], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("classes", [2, 3])
def test_convert_takes_classifiers_without_probabilities(classes, table, tmp_path):
    """`convert sklearn` exports a Pipeline ending in a LinearSVC (skl2onnx alone refuses it, defaulting its final
    step to a ZipMap) and verifies its decision scores: two classes as [-d, d]."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    from onnxplain.converters import convert_sklearn
    from onnxplain.errors import OnnxplainError

    x, names = table
    names = names if classes == 3 else np.where(names == "cat", "cat", "dog")
    pipeline = fitted(make_pipeline(StandardScaler(), LinearSVC()), x, names)
    report = convert_sklearn(pipeline, tmp_path / "svm.onnx", samples=x)
    model = onnxplain.load(tmp_path / "svm.onnx")
    d = pipeline.decision_function(x)
    assert report.score_kind == "logits" and model.labels == sorted(set(names))
    np.testing.assert_allclose(model.scores(x), d if classes == 3 else np.stack([-d, d], 1), rtol=1e-4, atol=1e-4)
    with pytest.raises(OnnxplainError, match="no probabilities for a ZipMap"):
        convert_sklearn(pipeline, tmp_path / "zipped.onnx", samples=x, zipmap=True)


@pytest.mark.parametrize("method", ["sigmoid", "isotonic"])
def test_calibrated_classifiers_are_probabilities(method, table, tmp_path):
    """CalibratedClassifierCV averages its folds' normalised probabilities: read as probabilities (prediction
    difference then takes weights of evidence). Sigmoid calibration is smooth: the gradient explains the probability
    itself, equal to predict_proba's central differences. Isotonic calibration is a table lookup (ArgMin): no
    gradient reaches the input, and gradient methods and APEM say so in one error naming the lookup, while
    occlusion works."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.svm import LinearSVC

    from onnxplain.errors import OnnxplainError
    from onnxplain.metrics.apem import loss_gradient
    from onnxplain.methods.occlusion import Occlusion

    x, names = table
    estimator = fitted(CalibratedClassifierCV(LinearSVC(), method=method, cv=3), x, names)
    model = exported(estimator, x[:1], tmp_path / "calibrated.onnx", options={"zipmap": False})
    rows = x[:6]
    assert model.score_kind == "probabilities", model.score_reason
    assert "mean of 3" in model.score_reason
    if method == "sigmoid":   # skl2onnx's isotonic lookup differs from scikit-learn's interpolation on some rows
        np.testing.assert_allclose(model.scores(rows), estimator.predict_proba(rows), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model.scores(rows).sum(axis=1), 1, rtol=1e-5)
    occlusion = Occlusion(progress=False, window=1).explain(model, rows, Target(index=2))
    assert occlusion.relevance.shape == rows.shape and np.abs(occlusion.relevance).sum() > 0
    if method == "isotonic":
        with pytest.raises(OnnxplainError, match=r"does not depend differentiably .*ArgMin"):
            Gradient(progress=False).explain(model, rows, Target(index=2))
        with pytest.raises(OnnxplainError, match=r"ArgMin.*use AOPC alone"):
            loss_gradient(model, rows, np.zeros(len(rows), dtype=np.int64))
        return
    explanation = Gradient(progress=False).explain(model, rows, Target(index=2))
    assert explanation.diagnostics["score_kind"] == "probabilities"
    step = 1e-3 * np.abs(rows).max(axis=0)
    want = np.stack([(estimator.predict_proba(rows + np.eye(5)[i] * step[i])[:, 2]
                      - estimator.predict_proba(rows - np.eye(5)[i] * step[i])[:, 2]) / (2 * step[i])
                     for i in range(5)], axis=1)
    np.testing.assert_allclose(explanation.relevance, want, rtol=2e-2, atol=1e-3 * np.abs(want).max())
