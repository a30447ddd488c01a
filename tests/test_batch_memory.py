"""Batches stay under the memory budget for what is explained: a fully convolutional model (free H, W) sizes them
from the sample's real shape, and SmoothGrad / integrated gradients run their copies of a large input a
budget-sized batch at a time (counted rows, not timings)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain.executor import TorchExecutor
from onnxplain.methods import make_method
from onnxplain.methods.passes import forward_passes
from onnxplain.runtime import batch_size_for

SHAPE = (3, 512, 512)                                 # 3 MiB: the 256 MiB budget at 32x holds 2 such samples


@pytest.fixture(scope="module")
def free_size_model(tmp_path_factory):
    """Conv 3->4 (3x3), ReLU, global average pooling: N x 3 x H x W -> N x 4, any H and W."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("GlobalAveragePool", ["r"], ["g"]), helper.make_node("Flatten", ["g"], ["logits"])],
        "fcn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w"),
         numpy_helper.from_array(np.zeros(4, np.float32), "b")])
    path = tmp_path_factory.mktemp("fcn") / "fcn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)
    return onnxplain.load(path)


def large(count: int = 1) -> np.ndarray:
    return np.random.default_rng(1).random((count, *SHAPE), dtype=np.float32)


def budget_rows() -> int:
    return batch_size_for(int(np.prod(SHAPE)) * 4)


def test_a_free_size_model_sizes_batches_from_the_sample_it_runs(free_size_model):
    model = free_size_model
    assert budget_rows() == 2 < model.batch_size()          # the declared shape, free axes counted as 1
    assert model.batch_size(sample_shape=SHAPE) == model.torch().batch_size(SHAPE) == budget_rows()
    session, rows = model.session(()), []

    class Counting:
        def run(self, names, feed):
            rows.append(len(next(iter(feed.values()))))
            return session.run(names, feed)

    model.session = lambda extra: Counting()
    model.run(large(5))
    assert rows == [2, 2, 1]
    del model.session


@pytest.mark.parametrize("name, params", [("gradient", {}), ("smoothgrad", {"samples": 5}),
                                          ("integrated-gradients", {"steps": 6}), ("lrp", {})])
def test_gradient_methods_run_copies_of_a_large_input_in_budget_sized_batches(free_size_model, monkeypatch, name,
                                                                             params):
    rows = []
    tensor = TorchExecutor.tensor
    monkeypatch.setattr(TorchExecutor, "tensor", lambda self, x: rows.append(len(x)) or tensor(self, x))
    explanation = make_method(name, progress=False, **params).explain(free_size_model, large())
    assert explanation.relevance.shape == (1, *SHAPE)
    assert rows and max(rows) <= budget_rows()


@pytest.mark.parametrize("device", [None, "cpu"])
def test_occlusion_and_pda_size_forward_batches_from_the_sample(free_size_model, device):
    assert forward_passes(free_size_model, device).batch_size(large()[0]) == budget_rows()


@pytest.mark.parametrize("shape", [(1, 5, 7), (3, 4, 4), (2,)])
@pytest.mark.parametrize("rows", [1, 3, 7, 100])
def test_smoothgrad_noise_drawn_in_chunks_is_the_noise_drawn_at_once(shape, rows):
    method = make_method("smoothgrad", samples=11, seed=3, progress=False)
    scale = np.linspace(0.1, 1.0, int(np.prod(shape)), dtype=np.float32).reshape(shape)
    chunks = list(method._noise(scale, rows))
    assert sum(map(len, chunks)) == 11
    if shape == (3, 4, 4):                   # 48 values a copy: chunks of `rows` copies (odd sizes take 16 or all)
        assert max(map(len, chunks)) == min(rows, 11)
    np.testing.assert_array_equal(np.concatenate(chunks), np.concatenate(list(method._noise(scale, 10**6))))


def test_explain_stages_each_batchs_outputs_before_explaining_the_next(digits_cnn, tmp_path, monkeypatch):
    """The CLI renders a batch's outputs as soon as it is explained and keeps no relevance maps: memory holds one
    batch of maps, not one per input (the files are still moved into place only once all succeeded)."""
    from click.testing import CliRunner

    from onnxplain.cli import explain_cmd
    from onnxplain.cli.main import cli
    from onnxplain.methods.gradients import Gradient

    events = []
    explain, save = Gradient.explain, explain_cmd.StagedFiles.save_npy
    monkeypatch.setattr(Gradient, "explain", lambda self, *a: events.append("explain") or explain(self, *a))
    monkeypatch.setattr(explain_cmd.StagedFiles, "save_npy",
                        lambda self, *a: events.append(f"save {len(list(tmp_path.iterdir()))}") or save(self, *a))
    samples = digits_cnn.parent / "samples"
    inputs = [samples / f"digit{d}_cnn.npy" for d in (0, 3, 7)]
    result = CliRunner().invoke(cli, ["explain", str(digits_cnn), *map(str, inputs), "--method", "gradient",
                                      "--batch", "2", "--save-npy", str(tmp_path), "--quiet"])
    assert result.exit_code == 0, result.output
    assert events == ["explain", "save 0", "save 0", "explain", "save 0"]     # staged, none in place yet
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digit0_cnn.npy", "digit3_cnn.npy", "digit7_cnn.npy"]


def test_inputs_are_joined_one_file_at_a_time_and_differing_sizes_are_a_clear_error(free_size_model, tmp_path):
    from onnxplain.errors import OnnxplainError
    from onnxplain.io.inputs import joined, load_inputs

    batches = [np.zeros((2, 3, 8, 8), np.float32), np.ones((1, 3, 8, 8), np.float32)]
    out = joined(batches)
    assert batches == [] and out.shape == (3, 3, 8, 8) and out[2].all() and not out[:2].any()
    np.save(tmp_path / "a.npy", np.zeros((3, 32, 32), np.float32))
    np.save(tmp_path / "b.npy", np.zeros((3, 48, 32), np.float32))
    with pytest.raises(OnnxplainError, match="b.npy: samples of shape 3x48x32 differ from .*a.npy's 3x32x32"):
        load_inputs([tmp_path], free_size_model)


def test_explain_shows_one_bar_over_all_inputs_when_they_take_several_batches(digits_cnn, monkeypatch):
    """The method's bars restart with each --batch; the CLI's own bar counts every input, for an ETA of the run."""
    from click.testing import CliRunner

    from onnxplain import runtime
    from onnxplain.cli.main import cli

    bars, real = [], runtime.progress_bar
    monkeypatch.setattr(runtime, "progress_bar", lambda *a, **options: bars.append(options) or real(*a, **options))
    samples = digits_cnn.parent / "samples"
    inputs = [str(samples / f"digit{d}_cnn.npy") for d in (0, 3, 7)]
    for batch, wanted in (("2", [{"total": 3, "desc": "inputs", "unit": "input"}]), ("3", [])):
        bars.clear()
        result = CliRunner().invoke(cli, ["explain", str(digits_cnn), *inputs, "--method", "occlusion", "--batch",
                                          batch])
        assert result.exit_code == 0, result.output
        assert [bar for bar in bars if bar.get("unit") == "input"] == wanted
