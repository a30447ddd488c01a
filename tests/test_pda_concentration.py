"""Conditional vs marginal sampling where the truly relevant region is known (Zintgraf et al. §3.1, §4.1).

A synthetic task from scikit-learn digits: each 8x8 digit sits in a fixed 8x8 box of a 24x24 canvas whose
background is a smooth random field (class-independent, and easily predictable from neighbouring pixels).
The class information lies only inside the box. A linear discriminant is trained on it and exported with
skl2onnx. Conditional sampling should put more of the relevance into the box than marginal sampling, since
it downweights pixels that the neighbourhood predicts; conditioning on location too (the paper's MRI option)
helps further, because the background and the box have different statistics.

`pytest tests/test_pda_concentration.py -s` prints the table quoted in docs/pda.md.
"""
from __future__ import annotations

import numpy as np
import pytest

import onnxplain
from onnxplain.methods.pda import PredictionDifference

CANVAS, BOX = 24, (8, 8)     # box top-left corner; the box is 8x8


pytestmark = pytest.mark.usefixtures("private_cache")  # fitted samplers are cached in a folder of the test's own


def planted_digits(seed: int = 0):
    """(images (n, 24*24) float32 in [0, 1], labels): digits in the box over a smooth random background."""
    from scipy.ndimage import gaussian_filter
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    field = gaussian_filter(rng.normal(size=(len(digits.images), CANVAS, CANVAS)), sigma=(0, 2, 2), mode="wrap")
    low, span = field.min(axis=(1, 2), keepdims=True), np.ptp(field, axis=(1, 2), keepdims=True)
    images = 0.5 * (field - low) / span
    box = (slice(None), slice(BOX[0], BOX[0] + 8), slice(BOX[1], BOX[1] + 8))
    images[box] = np.maximum(images[box], digits.images / 16)
    return images.reshape(len(images), -1).astype(np.float32), digits.target


@pytest.fixture(scope="module")
def planted_model(tmp_path_factory):
    from skl2onnx import to_onnx
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    images, labels = planted_digits()
    classifier = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(images[:1000], labels[:1000])
    accuracy = classifier.score(images[1400:], labels[1400:])
    path = tmp_path_factory.mktemp("planted") / "planted_lda.onnx"
    path.write_bytes(to_onnx(classifier, images[:1], options={id(classifier): {"zipmap": False}}).SerializeToString())
    return onnxplain.load(path), images, labels, accuracy


def share_in_box(relevance: np.ndarray) -> float:
    """Fraction of all |relevance| (pooled over the explained images) that lies inside the box."""
    maps = np.abs(relevance.reshape(len(relevance), CANVAS, CANVAS))
    return float(maps[:, BOX[0]:BOX[0] + 8, BOX[1]:BOX[1] + 8].sum() / maps.sum())


def test_conditional_sampling_concentrates_relevance_in_the_known_region(planted_model):
    model, images, labels, accuracy = planted_model
    assert accuracy > 0.8
    reference, explained = images[1000:1100], images[1400:1410]
    shares = {}
    for name, params in (("marginal", dict(sampler="marginal")),
                         ("conditional", dict(sampler="conditional", padding=2)),
                         ("conditional + location", dict(sampler="conditional", padding=2, location_grid=4))):
        method = PredictionDifference(window=2, samples=10, reference=reference,
                                      volume_shape=(CANVAS, CANVAS), progress=False, **params)
        shares[name] = share_in_box(method.explain(model, explained).relevance)
    print(f"\nplanted digits, LDA (test accuracy {accuracy:.3f}), k=2, l=6, S=10, 10 images; box = "
          f"{64 / CANVAS ** 2:.1%} of the canvas; share of |relevance| in the box:")
    for name, share in shares.items():
        print(f"  {name:24s} {share:.3f}")
    assert shares["conditional"] > shares["marginal"] + 0.03
    assert shares["conditional + location"] > shares["conditional"] + 0.03
