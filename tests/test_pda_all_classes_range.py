"""`all_classes` names classes 0..K-1: K itself is refused as a user error (not an index error after the passes),
and K-1 is the last class kept."""
from __future__ import annotations

import numpy as np
import pytest

import onnxplain
from onnxplain.errors import OnnxplainError
from onnxplain.methods.pda import PredictionDifference


def test_all_classes_stops_at_the_last_class(digits_logreg):
    model = onnxplain.load(digits_logreg)
    samples = digits_logreg.parent / "samples"
    reference = np.load(samples / "digits_reference_logreg.npy")[:10]
    x = np.load(samples / "digit3_logreg.npy")[None]
    make = lambda classes: PredictionDifference(window=4, sampler="marginal", samples=10,  # noqa: E731
                                                reference=reference, all_classes=classes, progress=False)
    with pytest.raises(OnnxplainError, match=r"all_classes lists a class outside 0\.\.9"):
        make([10]).explain(model, x)
    last = make([9]).explain(model, x)
    assert last.diagnostics["all_classes_index"] == (9,) and last.diagnostics["all_classes"].shape == (1, 1, 64)
