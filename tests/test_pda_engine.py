"""Prediction difference engine vs a literal, per-window implementation of Algorithm 1 (Zintgraf et al. 2017).

The literal loop below runs one window at a time through a plain onnxruntime session, accumulates
WE[window] += difference and counts[window] += 1, and divides at the end. Given the same samples the engine
(windows × samples packed into big batches through Model.run) must give the same map within 1e-6.
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import onnxplain
from onnxplain.methods import make_method
from onnxplain.methods.pda import PredictionDifference
from onnxplain.targets import Target

REFERENCE_COUNT = 12  # S = number of reference images: marginal sampling is then deterministic




@pytest.fixture(scope="module")
def data(digits_cnn):
    samples = digits_cnn.parent / "samples"
    reference = np.load(samples / "digits_reference_cnn.npy")[:REFERENCE_COUNT]
    return np.load(samples / "digit3_cnn.npy")[None], reference


pytestmark = pytest.mark.usefixtures("private_cache")  # fitted samplers are cached in a folder of the test's own


def plain_logits(path):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda batch: session.run(["logits"], {"image": batch.astype(np.float32)})[0].astype(np.float64)


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def weight_of_evidence(p_x, p_without, n, k):
    def log_odds(p):
        p = (p * n + 1) / (n + k)
        return np.log2(p / (1 - p))
    return log_odds(p_x) - log_odds(p_without)


def algorithm_1(evaluate, x, k, stride, draw, difference):
    """Literal Algorithm 1 on one (C, H, W) input: `draw(window_number, i, j)` gives the (S, C, k, k) samples."""
    _, height, width = x.shape
    relevance, counts = np.zeros((height, width)), np.zeros((height, width))
    value_x = evaluate(x[None])[0]
    rows, cols = range(0, height - k + 1, stride), range(0, width - k + 1, stride)
    number = 0
    for i in rows:
        for j in cols:
            samples = draw(number, i, j)
            changed = np.repeat(x[None], len(samples), axis=0)
            changed[:, :, i:i + k, j:j + k] = samples
            relevance[i:i + k, j:j + k] += difference(value_x, evaluate(changed).mean(axis=0))
            counts[i:i + k, j:j + k] += 1
            number += 1
    return relevance / counts


@pytest.mark.parametrize("score", ["auto", "probability"])
def test_marginal_engine_equals_literal_algorithm(digits_cnn_model, data, digits_cnn, score):
    x, reference = data
    k, target = 4, 3
    method = PredictionDifference(window=k, sampler="marginal", samples=REFERENCE_COUNT, reference=reference,
                                  score=score, progress=False)
    explanation = method.explain(digits_cnn_model, x, Target(index=target))
    logits = plain_logits(digits_cnn)
    if score == "auto":  # logits model: activation difference of the logit
        evaluate, difference = (lambda b: logits(b)[:, target]), (lambda a, b: a - b)
    else:
        evaluate = lambda b: softmax(logits(b))[:, target]  # noqa: E731
        difference = lambda a, b: weight_of_evidence(a, b, REFERENCE_COUNT, 10)  # noqa: E731
    draw = lambda n, i, j: reference[:, :, i:i + k, j:j + k]  # noqa: E731
    expected = algorithm_1(evaluate, x[0], k, 1, draw, difference)
    assert explanation.relevance.shape == x.shape
    np.testing.assert_allclose(explanation.relevance[0, 0], expected, atol=1e-6)
    assert np.abs(expected).max() > 0.1  # the map is not trivially zero
    assert explanation.diagnostics["score"] == ("activation difference" if score == "auto" else "weight of evidence")


def test_conditional_engine_equals_literal_algorithm_with_fixed_seed(digits_cnn_model, data, digits_cnn):
    x, reference = data
    k, samples, seed, target = 3, 6, 11, 3
    method = PredictionDifference(window=k, padding=2, sampler="conditional", samples=samples, seed=seed,
                                  reference=reference, progress=False)
    explanation = method.explain(digits_cnn_model, x, Target(index=target))
    sampler = method.prepare(digits_cnn_model, x.shape[1:]).sampler
    logits = plain_logits(digits_cnn)
    draw = lambda n, i, j: sampler.sample(x[0], [n], samples, seed)[0]  # noqa: E731
    expected = algorithm_1(lambda b: logits(b)[:, target], x[0], k, 1, draw, lambda a, b: a - b)
    np.testing.assert_allclose(explanation.relevance[0, 0], expected, atol=1e-6)
    again = PredictionDifference(window=k, padding=2, samples=samples, seed=seed, reference=reference,
                                 batch_size=25, progress=False).explain(digits_cnn_model, x, Target(index=target))
    np.testing.assert_allclose(again.relevance, explanation.relevance, atol=1e-9)  # chunking does not matter
    other = PredictionDifference(window=k, padding=2, samples=samples, seed=seed + 1, reference=reference,
                                 progress=False).explain(digits_cnn_model, x, Target(index=target))
    assert np.abs(other.relevance - explanation.relevance).max() > 1e-4  # the seed is really used


def test_hidden_feature_map_target_equals_literal(digits_cnn_model, data):
    x, reference = data
    k, stride, layer, channel = 4, 3, "relu_1", 5
    method = PredictionDifference(window=k, stride=stride, sampler="marginal", samples=REFERENCE_COUNT,
                                  reference=reference, progress=False)
    explanation = method.explain(digits_cnn_model, x, Target(layer=layer, index=channel))

    def evaluate(batch):
        return digits_cnn_model.run(batch, [layer])[layer][:, channel].reshape(len(batch), -1).mean(axis=1)

    draw = lambda n, i, j: reference[:, :, i:i + k, j:j + k]  # noqa: E731
    expected = algorithm_1(evaluate, x[0], k, stride, draw, lambda a, b: a - b)
    np.testing.assert_allclose(explanation.relevance[0, 0], expected, atol=1e-6)
    assert explanation.target[0] == -1 and explanation.diagnostics["score"] == "activation difference"
    unit = method.explain(digits_cnn_model, x, Target(layer=layer, index=channel, unit=(channel, 3, 3)))
    assert not np.allclose(unit.relevance, explanation.relevance)


def test_all_classes_from_one_pass_match_separate_runs(digits_cnn_model, data):
    x, reference = data
    params = dict(window=5, stride=2, sampler="marginal", samples=REFERENCE_COUNT, reference=reference,
                  score="probability", progress=False)
    together = PredictionDifference(all_classes=True, **params).explain(digits_cnn_model, x)
    maps = together.diagnostics["all_classes"]
    assert maps.shape == (1, 10, 1, 28, 28) and together.diagnostics["all_classes_index"] == tuple(range(10))
    np.testing.assert_allclose(maps[0, together.target[0]], together.relevance[0], atol=1e-12)
    for c in (0, 7):
        alone = PredictionDifference(**params).explain(digits_cnn_model, x, Target(index=c))
        np.testing.assert_allclose(maps[0, c], alone.relevance[0], atol=1e-9)
    chosen = PredictionDifference(all_classes=[2, 8], **params).explain(digits_cnn_model, x)
    np.testing.assert_allclose(chosen.diagnostics["all_classes"][0], maps[0, [2, 8]], atol=1e-12)


def test_batch_of_inputs_and_registry(digits_cnn_model, data, digits_cnn):
    x, reference = data
    batch = np.concatenate([x, np.load(digits_cnn.parent / "samples" / "digit7_cnn.npy")[None]])
    method = make_method("pda", window=6, stride=4, sampler="marginal", samples=REFERENCE_COUNT,
                         reference=reference, progress=False)
    both = method.explain(digits_cnn_model, batch)
    assert list(both.target) == [3, 7]
    second = method.explain(digits_cnn_model, batch[1:])
    np.testing.assert_allclose(both.relevance[1], second.relevance[0], atol=1e-9)
    all_pairs = both.diagnostics["windows"] * REFERENCE_COUNT
    assert 2 + 0.9 * 2 * all_pairs < both.diagnostics["forward_passes"] <= 2 * (1 + all_pairs)


def test_samples_equal_to_the_input_are_not_run_again(digits_cnn_model, data):
    x, reference = data
    with_x = np.concatenate([reference, x])          # one reference image is x itself: its samples change nothing
    params = dict(window=4, stride=3, sampler="marginal", samples=len(with_x), progress=False)
    explanation = PredictionDifference(reference=with_x, **params).explain(digits_cnn_model, x)
    windows = explanation.diagnostics["windows"]
    assert explanation.diagnostics["forward_passes"] <= 1 + windows * REFERENCE_COUNT
    logits = digits_cnn_model.logits(x)[0, 3]
    grid = PredictionDifference(reference=with_x, **params).prepare(digits_cnn_model, x.shape[1:]).grid
    expected = []
    for w in range(windows):                          # the mean includes f(x) once: S = R + 1 samples
        changed = np.repeat(x, REFERENCE_COUNT, axis=0)
        box = (slice(None), slice(None)) + grid.slices(w)
        changed[box] = reference[box]
        expected.append(logits - (digits_cnn_model.logits(changed)[:, 3].sum() + logits) / len(with_x))
    np.testing.assert_allclose(explanation.relevance[0, 0], grid.average(np.array(expected)[:, None])[0], atol=1e-5)


def test_user_errors(digits_cnn_model, data, digits_logreg):
    x, reference = data
    with pytest.raises(onnxplain.OnnxplainError, match="reference"):
        PredictionDifference()
    with pytest.raises(onnxplain.OnnxplainError, match="sampler"):
        PredictionDifference(reference=reference, sampler="gibbs")
    with pytest.raises(onnxplain.OnnxplainError, match="does not fit"):
        PredictionDifference(reference=reference[:, :, :20], progress=False).explain(digits_cnn_model, x)
    logreg = onnxplain.load(digits_logreg)
    ref64 = np.load(digits_logreg.parent / "samples" / "digits_reference_logreg.npy")
    with pytest.raises(onnxplain.OnnxplainError, match="pre-softmax"):
        PredictionDifference(reference=ref64, score="logit", progress=False).explain(logreg, ref64[:1])
    with pytest.raises(onnxplain.OnnxplainError, match="hidden"):
        PredictionDifference(reference=reference, all_classes=True, progress=False).explain(
            digits_cnn_model, x, Target(layer="relu_1", index=0))
