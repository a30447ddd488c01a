"""scikit-learn -> ONNX through skl2onnx: a classifier's probability tensor (ZipMap left out unless asked for), or
the decision scores of one without probabilities (LinearSVC, RidgeClassifier, SGDClassifier's hinge loss)."""
from __future__ import annotations

import os

import numpy as np

from onnxplain.errors import OnnxplainError

from .common import ConversionReport, embed_metadata, sample_batch, verify_and_write


def _final_step(estimator):
    """The last estimator of a Pipeline (where the probability output comes from), else the estimator."""
    steps = getattr(estimator, "steps", None)
    return _final_step(steps[-1][1]) if steps else estimator


def convert_sklearn(estimator, path: str | os.PathLike, *, samples: np.ndarray | None = None,
                    n_features: int | None = None, zipmap: bool = False, opset: int | None = None,
                    input_name: str = "input", preprocess=None, labels: list | None = None,
                    atol: float = 1e-4) -> ConversionReport:
    """Export a fitted classifier (or Pipeline ending in one) with `predict_proba` or `decision_function` to `path`.

    samples: float inputs (N, F) to verify on; default 8 seeded random inputs of `n_features`
    (or the estimator's `n_features_in_`). labels default to the estimator's `classes_`.
    """
    try:
        from skl2onnx import to_onnx
        from skl2onnx.common.data_types import FloatTensorType
    except ImportError:
        raise OnnxplainError("converting scikit-learn models needs skl2onnx (pip install skl2onnx)") from None
    scored = hasattr(estimator, "predict_proba")
    if not scored and not (hasattr(estimator, "decision_function") and hasattr(estimator, "classes_")):
        raise OnnxplainError(f"{type(estimator).__name__} has no predict_proba or decision_function: onnxplain "
                             "explains classifiers")
    if zipmap and not scored:
        raise OnnxplainError(f"{type(estimator).__name__} has no probabilities for a ZipMap: leave out --zipmap")
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    try:
        check_is_fitted(estimator)
    except NotFittedError:
        raise OnnxplainError(f"this {type(estimator).__name__} is not fitted: fit it before converting") from None
    except TypeError:  # not a scikit-learn estimator: skl2onnx says what it can convert
        pass
    features = n_features or getattr(estimator, "n_features_in_", None)
    if features is None and samples is None:
        raise OnnxplainError("give sample inputs or the number of features")
    batch = sample_batch(samples, (int(features or np.shape(samples)[1]),), preprocess)
    final = _final_step(estimator)
    # an option named for the final step: in a Pipeline, skl2onnx would otherwise give it zipmap, which a
    # classifier without probabilities refuses
    options = {"zipmap": zipmap} if scored else {"nocl": False}
    try:
        proto = to_onnx(estimator, initial_types=[(input_name, FloatTensorType([None, batch.shape[1]]))],
                        options={id(final): options}, target_opset=opset)
    except Exception as error:  # skl2onnx raises RuntimeError, NotImplementedError, ... for unsupported models
        raise OnnxplainError(f"skl2onnx cannot convert {type(estimator).__name__}: "
                             f"{str(error).splitlines()[0][:300]}") from None
    classes = getattr(final, "classes_", None)
    embed_metadata(proto, preprocess, labels if labels is not None else
                   (None if classes is None else [str(c) for c in classes]))
    if scored:
        expected = estimator.predict_proba(batch)
    else:   # two classes: d of the positive one, read as the classes [-d, d]
        decision = estimator.decision_function(batch)
        expected = np.stack([-decision, decision], 1) if decision.ndim == 1 else decision
    return verify_and_write(proto, path, batch, expected, exporter=f"skl2onnx, zipmap={zipmap}", atol=atol)
