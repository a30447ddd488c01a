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
    assert WindowGrid((3,), 3, 1).axis_starts[0] == [0]


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
    # where every window covering a pixel fills it with x's own values (the digit's black background), nothing
    # changed: its drop is exactly 0 on both engines (f(x) and the windows come from one engine, and unchanged
    # windows are not run; f(x) from onnxruntime against torch's windows left rounding noise there)
    background = session.relevance == 0
    assert background.sum() > 50 and (torch_run.relevance[background] == 0).all()


def test_fill_for_integer_inputs_must_be_a_whole_number(tmp_path):
    """Token ids (int64) into an embedding averaged over 4 positions: a fill of 2 replaces token i by token 2, so
    its relevance is (table[x_i] - table[2])[c] / 4; a fill of 2.5 (or one past int64) is refused on one line,
    never truncated to token 2."""
    import onnx
    from click.testing import CliRunner
    from onnx import TensorProto, helper, numpy_helper

    from onnxplain.cli.main import cli

    table = np.random.default_rng(3).normal(size=(10, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "x"], ["vectors"]),
         helper.make_node("ReduceMean", ["vectors"], ["logits"], axes=[1], keepdims=0)], "tokens",
        [helper.make_tensor_value_info("x", TensorProto.INT64, ["N", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(table, "table")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), tmp_path / "t.onnx")
    tokens = np.array([[1, 5, 7, 9]], np.int64)
    np.save(tmp_path / "x.npy", tokens)
    model = onnxplain.load(tmp_path / "t.onnx")
    explanation = make_method("occlusion", window=1, fill=2, progress=False).explain(model, tokens, Target(index=1))
    want = (table[tokens[0], 1] - table[2, 1]) / 4
    np.testing.assert_allclose(explanation.relevance[0], want, rtol=1e-5, atol=1e-7)
    assert np.abs(want).min() > 1e-3
    for fill, shown in (("2.5", "2.5 would be truncated"), ("1e19", "1e+19 would be out of range")):
        result = CliRunner().invoke(cli, ["explain", str(tmp_path / "t.onnx"), str(tmp_path / "x.npy"), "--method",
                                          "occlusion", "--fill", fill, "--save-npy", str(tmp_path / "r.npy"),
                                          "--quiet"])
        assert result.exit_code == 2 and "Traceback" not in result.output
        (line,) = result.stderr.strip().splitlines()
        assert f"fill {shown}: this model takes int64 inputs" in line and "whole number" in line
        assert not (tmp_path / "r.npy").exists()
    result = CliRunner().invoke(cli, ["explain", str(tmp_path / "t.onnx"), str(tmp_path / "x.npy"), "--method",
                                      "occlusion", "--window", "1", "--fill", "2", "--target", "1",
                                      "--save-npy", str(tmp_path / "r.npy"), "--quiet"])
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(np.load(tmp_path / "r.npy"), want, rtol=1e-5, atol=1e-7)
    with pytest.raises(OnnxplainError, match="reference mean has fractional values"):   # mean of ids 2 and 3
        make_method("occlusion", window=1, reference=np.array([[2] * 4, [3] * 4]),
                    progress=False).explain(model, tokens)
    same = make_method("occlusion", window=1, reference=np.array([[1] * 4, [3] * 4]), progress=False)
    np.testing.assert_allclose(same.explain(model, tokens, Target(index=1)).relevance[0],
                               (table[tokens[0], 1] - table[2, 1]) / 4, rtol=1e-5, atol=1e-7)   # mean: token 2
