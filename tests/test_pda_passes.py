"""Prediction difference through the torch executor (`device=`) vs through onnxruntime, and the GPU code paths.

On a GPU the engine runs every batch at the chunk's full size and draws the next chunk's samples in a thread
while the current one runs; those paths are forced here on the CPU, so that CI (which has no GPU) checks them.
"""
from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

import onnxplain
from onnxplain.cli.main import cli
from onnxplain.errors import OnnxplainError
from onnxplain.crops import window_index
from onnxplain.methods.pda import PredictionDifference
from onnxplain.targets import Target


pytestmark = pytest.mark.usefixtures("private_cache")  # fitted samplers are cached in a folder of the test's own




@pytest.fixture(scope="module")
def data(digits_cnn):
    samples = digits_cnn.parent / "samples"
    return np.load(samples / "digit3_cnn.npy")[None], np.load(samples / "digits_reference_cnn.npy")[:40]


def explain(model, x, reference, gpu_paths=False, **params):
    ring = {} if params.get("sampler") == "marginal" else {"padding": 2}   # a conditional sampler's ring
    method = PredictionDifference(window=4, samples=6, reference=reference, stride=2, batch_size=32,
                                  all_classes=True, progress=False, **ring, **params)
    if gpu_paths:
        passes = method.passes(model)
        passes.fixed_shape = passes.overlaps_host = True
    return method.explain(model, x, Target())


@pytest.mark.parametrize("sampler", ["marginal", "conditional"])
@pytest.mark.parametrize("gpu_paths", [False, True])
@pytest.mark.parametrize("incremental", [False, True])
def test_torch_executor_gives_the_onnxruntime_map(digits_cnn_model, data, sampler, gpu_paths, incremental):
    x, reference = data
    session = explain(digits_cnn_model, x, reference, sampler=sampler)
    torch_run = explain(digits_cnn_model, x, reference, gpu_paths, sampler=sampler, device="cpu",
                        incremental=incremental)
    assert torch_run.diagnostics["forward_passes_on"] == "torch (cpu)" + (", incremental" if incremental else "")
    assert session.diagnostics["forward_passes_on"] == "onnxruntime"
    assert torch_run.diagnostics["forward_passes"] == session.diagnostics["forward_passes"]
    # activation differences of logits (f(x) ~ 21): float32 rounding of the two runtimes, ~1e-6 of the logit
    tolerance = 1e-6 * abs(float(session.score[0]))
    assert np.abs(session.relevance).max() > 1000 * tolerance
    np.testing.assert_allclose(torch_run.relevance, session.relevance, atol=tolerance)
    np.testing.assert_allclose(torch_run.diagnostics["all_classes"], session.diagnostics["all_classes"],
                               atol=tolerance)


@pytest.mark.parametrize("size, layout", [((5,), "1-D"), ((2, 3), "2-D"), ((2, 3, 2), "3-D")])
def test_window_index_addresses_each_rows_window(size, layout):
    rng = np.random.default_rng(0)
    spatial = tuple(s + 4 for s in size)
    starts = np.stack([rng.integers(0, n - k + 1, 7) for n, k in zip(spatial, size)], axis=1)
    values = rng.random((7, 3, *size))
    vectorised, literal = np.zeros((7, 3, *spatial)), np.zeros((7, 3, *spatial))
    vectorised[window_index(starts, size, 3)] = values
    for row, start in enumerate(starts):
        literal[(row, slice(None)) + tuple(slice(s, s + k) for s, k in zip(start, size))] = values[row]
    np.testing.assert_array_equal(vectorised, literal)


def test_tf32_needs_a_cuda_device(digits_cnn_model, data):
    x, reference = data
    with pytest.raises(OnnxplainError, match="CUDA"):
        explain(digits_cnn_model, x, reference, precision="tf32")
    with pytest.raises(OnnxplainError, match="CUDA"):
        explain(digits_cnn_model, x, reference, precision="tf32", device="cpu")
    with pytest.raises(OnnxplainError, match="precision must be"):
        PredictionDifference(reference=reference, precision="fp16")


def test_cli_device_option(digits_cnn):
    samples = digits_cnn.parent / "samples"
    args = ["explain", str(digits_cnn), str(samples / "digit3_cnn.npy"), "--method", "pda", "--reference",
            str(samples / "digits_reference_cnn.npy"), "--window", "7", "--stride", "7", "--samples", "2", "--quiet"]
    result = CliRunner().invoke(cli, args + ["--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    assert '"forward_passes_on": "torch (cpu), incremental"' in result.stdout
    for device, message in [("nowhere", "device 'nowhere' is not a torch device name"),
                            ("cuda:x", "not a torch device")]:
        result = CliRunner().invoke(cli, args + ["--device", device])
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], result.output


@pytest.mark.parametrize("name, layout", [("digits_keras_tf", "NHWC image"), ("digits_logreg", "flat 8x8 features")])
def test_torch_executor_in_other_input_layouts(digits_cnn, name, layout):
    """Windows are written through the batch's (N, C, *spatial) view, which moves axes for these layouts; the
    Keras image (tf2onnx's Reshape of one channel to (N, 1, H, W) right after the input) runs incrementally from
    that Reshape's output, the flat vector whole."""
    samples = digits_cnn.parent / "samples"
    model = onnxplain.load(digits_cnn.parent / f"{name}.onnx")
    kind = "logreg" if name == "digits_logreg" else "cnn"
    x, reference = np.load(samples / f"digit3_{kind}.npy")[None], np.load(samples / f"digits_reference_{kind}.npy")
    if name == "digits_keras_tf":
        x, reference = np.moveaxis(x, 1, -1), np.moveaxis(reference, 1, -1)
    params = dict(window=2 if kind == "logreg" else 4, padding=1, samples=5, reference=reference, progress=False)
    session = PredictionDifference(**params).explain(model, x)
    torch_run = PredictionDifference(device="cpu", **params).explain(model, x)
    assert torch_run.diagnostics["forward_passes_on"] == "torch (cpu)" + (", incremental" if kind == "cnn" else "")
    scale = np.abs(session.relevance).max()
    assert scale > 0
    # weights of evidence of near-certain probabilities: float32 rounding of p near 1 shows at ~1e-3 of the map
    np.testing.assert_allclose(torch_run.relevance, session.relevance, atol=1e-2 * scale)


def test_an_incremental_runner_that_disagrees_is_not_used(digits_cnn_model, data, monkeypatch):
    """Like the executor against onnxruntime, the incremental runner is checked against whole samples first."""
    from onnxplain.incremental import WindowRunner

    x, reference = data
    session = explain(digits_cnn_model, x, reference, sampler="marginal")
    windowed = WindowRunner._windowed

    def wrong(self, step, inputs):
        crop = windowed(self, step, inputs)
        return None if crop is None else crop.moved(crop.values * 1.01)

    monkeypatch.setattr(WindowRunner, "_windowed", wrong)
    torch_run = explain(digits_cnn_model, x, reference, sampler="marginal", device="cpu")
    assert torch_run.diagnostics["forward_passes_on"] == "torch (cpu)"
    np.testing.assert_allclose(torch_run.relevance, session.relevance, atol=1e-6 * abs(float(session.score[0])))


def test_a_batch_the_incremental_runner_cannot_run_runs_whole(digits_cnn_model, data, monkeypatch):
    from onnxplain.incremental import WindowRunner

    x, reference = data
    session = explain(digits_cnn_model, x, reference, sampler="marginal")
    original = WindowRunner.__call__

    def fails_on_full_batches(self, values, starts):
        if len(values) == 32:          # the forward batch of `explain`; the probe batches are smaller
            raise RuntimeError("a crop shape no rule foresaw")
        return original(self, values, starts)

    monkeypatch.setattr(WindowRunner, "__call__", fails_on_full_batches)
    torch_run = explain(digits_cnn_model, x, reference, sampler="marginal", device="cpu")
    assert torch_run.diagnostics["forward_passes_on"] == "torch (cpu)"   # not all of it ran incrementally
    np.testing.assert_allclose(torch_run.relevance, session.relevance, atol=1e-6 * abs(float(session.score[0])))


def test_incremental_passes_are_checked_once_and_take_larger_batches(digits_cnn_model, data, monkeypatch):
    """The runner's check depends on shapes only: it runs for the first input, not for the next ones. Crops are
    small, so incremental batches grow past the whole-sample batch (unless the user chose a batch size); and
    f(x) comes from the same torch executor, so that no onnxruntime call precedes the torch work."""
    from onnxplain.incremental import WindowRunner
    from onnxplain.methods.passes import INCREMENTAL_ROWS, TorchPasses

    x, reference = data
    checks, calls = [], []
    check, run = WindowRunner.error, WindowRunner.__call__
    monkeypatch.setattr(WindowRunner, "error", lambda self, *a, **k: checks.append(1) or check(self, *a, **k))
    monkeypatch.setattr(WindowRunner, "__call__", lambda self, v, s: calls.append(len(v)) or run(self, v, s))
    method = PredictionDifference(window=4, samples=6, reference=reference, stride=2, progress=False,
                                  sampler="marginal", device="cpu")
    method.explain(digits_cnn_model, x, Target())
    sessions = []
    monkeypatch.setattr(type(digits_cnn_model), "run", lambda *a, **k: sessions.append(1) / 0)
    second = method.explain(digits_cnn_model, x[:, :, ::-1].copy(), Target())
    assert len(checks) == 1 and not sessions
    passes = method.passes(digits_cnn_model)
    assert isinstance(passes, TorchPasses)
    rows = second.diagnostics["forward_passes"] - 1                    # f(x) is one of the passes
    assert passes.batch_size(x[0]) < rows <= INCREMENTAL_ROWS and calls[-1] == rows   # one batch: all windows
    monkeypatch.undo()
    calls.clear()
    monkeypatch.setattr(WindowRunner, "__call__", lambda self, v, s: calls.append(len(v)) or run(self, v, s))
    PredictionDifference(window=4, samples=6, reference=reference, stride=2, progress=False,
                         sampler="marginal", device="cpu", batch_size=32).explain(digits_cnn_model, x, Target())
    assert max(calls[1:]) == 32                                           # after the probe: the user's batch


def test_incremental_batches_count_the_full_maps_they_build(tmp_path, monkeypatch):
    """A hidden target early in the net is a full map per row: the probe's per-row peak counts it (and the full
    maps built for steps without a crop rule), so the batch stays under the budget; a batch the runner cannot
    run goes whole in whole-sample batches, not in the larger incremental ones."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from onnxplain.incremental import WindowRunner
    from onnxplain.methods.passes import INCREMENTAL_SAFETY, TorchPasses
    from onnxplain.runtime import DEFAULT_BATCH_BYTES

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.normal(0, 0.3, (16, 2, 3, 3)).astype(np.float32), "w"),
               numpy_helper.from_array(rng.normal(0, 0.3, (3, 16)).astype(np.float32), "d")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "d"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "early",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2, 40, 40])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 3])], weights)
    path = tmp_path / "early.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)
    model = onnxplain.load(path)
    x = rng.random((2, 40, 40)).astype(np.float32)
    passes = TorchPasses(model, "cpu")
    for output in ("r", "logits"):          # the hidden map itself; a global pool reading the whole map
        run = passes.window_runner(x, output, (4, 4), batch=64)
        assert run is not None
        full_map = 16 * 40 * 40 * 4
        assert run.runner.peak_row_bytes >= full_map
        assert run.batch_size * INCREMENTAL_SAFETY * run.runner.peak_row_bytes <= DEFAULT_BATCH_BYTES
    sizes = []
    monkeypatch.setattr(WindowRunner, "__call__", lambda self, v, s: (_ for _ in ()).throw(RuntimeError("no")))
    graph_run = type(passes.executor.graph).run
    monkeypatch.setattr(type(passes.executor.graph), "run", lambda self, feeds, outputs: sizes.append(
        len(next(iter(feeds.values())))) or graph_run(self, feeds, outputs))
    run = passes.window_runner(x, "logits", (4, 4), batch=64)
    starts = np.zeros((300, 2), dtype=np.int64)
    got = run(rng.random((300, 2, 4, 4)).astype(np.float32), starts)
    assert got.shape == (300, 3) and max(sizes) <= 64
