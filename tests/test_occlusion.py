"""Occlusion against a literal loop over windows, and against captum's Occlusion where the two definitions agree."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import onnxplain
from onnxplain.errors import OnnxplainError
from onnxplain.methods import make_method
from onnxplain.methods.windows import WindowGrid
from onnxplain.targets import Target


def literal_occlusion(score_fn, x: np.ndarray, cls: int, window: int, stride: int, fill) -> np.ndarray:
    """One sample (C, H, W): slide a window over H and W (last window flush with the edge), average score drops."""
    _, height, width = x.shape
    base = score_fn(x[None])[0, cls]
    total, count = np.zeros(x.shape), np.zeros(x.shape)
    rows = list(range(0, height - window + 1, stride))
    cols = list(range(0, width - window + 1, stride))
    rows += [height - window] if rows[-1] != height - window else []
    cols += [width - window] if cols[-1] != width - window else []
    for top in rows:
        for left in cols:
            covered = x.copy()
            covered[:, top:top + window, left:left + window] = fill if np.isscalar(fill) else \
                fill[:, top:top + window, left:left + window]
            total[:, top:top + window, left:left + window] += base - score_fn(covered[None])[0, cls]
            count[:, top:top + window, left:left + window] += 1
    return total / count


@pytest.fixture(scope="module")
def cnn(digits_cnn):
    model = onnxplain.load(digits_cnn)
    session = ort.InferenceSession(str(digits_cnn), providers=["CPUExecutionProvider"])
    return model, lambda batch: session.run(None, {"image": batch.astype(np.float32)})[0]


def test_window_starts_cover_the_edge():
    assert WindowGrid((28,), 5, 3).axis_starts[0] == [0, 3, 6, 9, 12, 15, 18, 21, 23]
    assert WindowGrid((8,), 2, 2).axis_starts[0] == [0, 2, 4, 6]
    assert WindowGrid((3,), 5, 1).axis_starts[0] == [0]


def test_cnn_matches_literal_loop(cnn, digits_cnn):
    model, score_fn = cnn
    x = np.stack([np.load(digits_cnn.parent / "samples" / f"digit{d}_cnn.npy") for d in (3, 7)])
    explanation = make_method("occlusion", window=5, stride=3, progress=False).explain(model, x)
    for i in range(2):
        cls = int(np.argmax(score_fn(x[i:i + 1])))
        assert explanation.target[i] == cls
        expected = literal_occlusion(score_fn, x[i], cls, 5, 3, 0.0)
        np.testing.assert_allclose(explanation.relevance[i], expected, rtol=1e-4, atol=1e-4)
    assert explanation.score == pytest.approx(score_fn(x)[np.arange(2), explanation.target], rel=1e-5)


def test_reference_mean_fill_and_fixed_class(cnn, digits_cnn):
    model, score_fn = cnn
    x = np.load(digits_cnn.parent / "samples" / "digit8_cnn.npy")[None]
    reference = np.load(digits_cnn.parent / "samples" / "digits_reference_cnn.npy")[:20]
    explanation = make_method("occlusion", window=7, stride=7, reference=reference,
                              progress=False).explain(model, x, Target(index=1))
    expected = literal_occlusion(score_fn, x[0], 1, 7, 7, reference.mean(axis=0))
    assert explanation.target[0] == 1
    np.testing.assert_allclose(explanation.relevance[0], expected, rtol=1e-4, atol=1e-4)


def test_agrees_with_captum_when_windows_tile_the_image(cnn, digits_cnn):
    torch = pytest.importorskip("torch")
    captum_attr = pytest.importorskip("captum.attr")
    model, score_fn = cnn
    x = np.load(digits_cnn.parent / "samples" / "digit0_cnn.npy")[None]
    ours = make_method("occlusion", window=4, stride=4, progress=False).explain(model, x)
    forward = lambda t: torch.from_numpy(score_fn(t.detach().numpy()))  # noqa: E731 - black-box forward
    theirs = captum_attr.Occlusion(forward).attribute(torch.from_numpy(x), sliding_window_shapes=(1, 4, 4),
                                                      strides=(1, 4, 4), baselines=0.0,
                                                      target=int(ours.target[0]))
    np.testing.assert_allclose(ours.relevance, theirs.numpy(), rtol=1e-4, atol=1e-4)


def test_flat_input_is_windowed_as_its_image(digits_logreg):
    model = onnxplain.load(digits_logreg)
    x = np.load(digits_logreg.parent / "samples" / "digit3_logreg.npy")[None]
    explanation = make_method("occlusion", window=2, stride=2, progress=False).explain(model, x)
    probabilities = lambda batch: model.scores(batch.reshape(len(batch), 64))  # noqa: E731
    cls = int(explanation.target[0])
    expected = literal_occlusion(probabilities, x.reshape(1, 8, 8), cls, 2, 2, 0.0).reshape(1, 64)
    np.testing.assert_allclose(explanation.relevance, expected, rtol=1e-4, atol=1e-6)
    # a 2x2 block of the 8x8 image shares one value: the window ran over the image, not over 2 features in a row
    grid = explanation.relevance.reshape(8, 8)
    assert np.allclose(grid[0::2, 0::2], grid[1::2, 1::2])


def test_hidden_unit_target(cnn, digits_cnn):
    model, _ = cnn
    layer = model.tensor_names[1]  # first ReLU output
    x = np.load(digits_cnn.parent / "samples" / "digit3_cnn.npy")[None]
    explanation = make_method("occlusion", window=4, stride=4, progress=False).explain(
        model, x, Target(layer=layer, index=2))
    assert explanation.target[0] == -1
    values = lambda batch: model.run(batch, [layer])[layer][:, 2].reshape(len(batch), -1).mean(1)  # noqa: E731
    assert explanation.score[0] == pytest.approx(values(x)[0], rel=1e-5)
    expected = literal_occlusion(lambda b: values(b)[:, None], x[0], 0, 4, 4, 0.0)
    np.testing.assert_allclose(explanation.relevance[0], expected, rtol=1e-4, atol=1e-5)


def test_bad_window_is_a_user_error():
    with pytest.raises(OnnxplainError, match="window"):
        make_method("occlusion", window=0)


def test_torch_executor_with_incremental_passes_gives_the_same_map(cnn, digits_cnn):
    model, _ = cnn
    x = np.load(digits_cnn.parent / "samples" / "digit3_cnn.npy")[None]
    session = make_method("occlusion", window=4, stride=2, progress=False).explain(model, x)
    torch_run = make_method("occlusion", window=4, stride=2, device="cpu", progress=False).explain(model, x)
    assert torch_run.diagnostics["forward_passes_on"] == "torch (cpu), incremental"
    assert np.abs(session.relevance).max() > 0.1
    np.testing.assert_allclose(torch_run.relevance, session.relevance, atol=1e-6 * abs(float(session.score[0])))
