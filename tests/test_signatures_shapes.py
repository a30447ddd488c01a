"""Input shapes the model declares loosely: free height and width on a graph that takes one size only (a Flatten
into a dense layer, exported by torch's TorchScript exporter with dynamic H and W)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain.cli.main import cli
from onnxplain.lrp import LRP
from onnxplain.methods.gradients import Gradient
from onnxplain.methods.occlusion import Occlusion

RNG = np.random.default_rng(3)
KERNEL, BIAS = RNG.normal(size=(2, 1, 3, 3)).astype(np.float32), RNG.normal(size=2).astype(np.float32) * 0.1
DENSE, DENSE_BIAS = RNG.normal(size=(72, 3)).astype(np.float32) * 0.2, RNG.normal(size=3).astype(np.float32) * 0.1


@pytest.fixture(scope="module")
def loose(tmp_path_factory):
    """Conv-Relu-Flatten-Gemm on an input declared N x 1 x H x W that only 6 x 6 fits."""
    path = tmp_path_factory.mktemp("loose") / "loose.onnx"
    weights = [numpy_helper.from_array(a, n) for a, n in ((KERNEL, "k"), (BIAS, "b"), (DENSE, "w"), (DENSE_BIAS, "c"))]
    graph = helper.make_graph([helper.make_node("Conv", ["x", "k", "b"], ["conv"], pads=[1, 1, 1, 1]),
                               helper.make_node("Relu", ["conv"], ["relu"]),
                               helper.make_node("Flatten", ["relu"], ["flat"]),
                               helper.make_node("Gemm", ["flat", "w", "c"], ["y"])], "loose",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, "H", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


def torch_gradient(x: np.ndarray, classes: np.ndarray) -> np.ndarray:
    t = torch.tensor(x, requires_grad=True)
    h = torch.relu(torch.nn.functional.conv2d(t, torch.tensor(KERNEL), torch.tensor(BIAS), padding=1))
    logits = h.flatten(1) @ torch.tensor(DENSE) + torch.tensor(DENSE_BIAS)
    logits[torch.arange(len(x)), torch.as_tensor(classes)].sum().backward()
    return t.grad.numpy()


def test_torch_methods_run_on_the_one_size_the_graph_takes(loose):
    """The executor's probes (free sizes set to 8 and 7) fit no size this graph takes: it is checked on the
    first input instead. Before, every torch method failed with onnxruntime's error on the probe."""
    model = onnxplain.load(loose)
    x = RNG.random((2, 1, 6, 6)).astype(np.float32)
    gradient = Gradient(progress=False).explain(model, x)
    np.testing.assert_allclose(gradient.relevance, torch_gradient(x, gradient.target), rtol=1e-5, atol=1e-7)
    lrp = LRP(progress=False).explain(model, x)
    assert np.abs(lrp.diagnostics["conservation_error"]).max() < 1e-5
    occlusion = Occlusion(window=2, device="cpu", progress=False).explain(model, x)
    reference = Occlusion(window=2, progress=False).explain(model, x)
    np.testing.assert_allclose(occlusion.relevance, reference.relevance, rtol=1e-4, atol=1e-6)


def test_another_size_is_one_line(loose, tmp_path):
    np.save(tmp_path / "x.npy", RNG.random((1, 8, 8)).astype(np.float32))
    result = CliRunner().invoke(cli, ["explain", str(loose), str(tmp_path / "x.npy"), "--method", "gradient",
                                      "--quiet", "--out", str(tmp_path / "r.png")])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
    assert "Gemm" in result.stderr and not (tmp_path / "r.png").exists()


def test_a_size_the_graph_refuses_leaves_the_check_for_the_next_input(loose, monkeypatch):
    """The first input's size (8 x 8) fails in onnxruntime: the executor stays unchecked, so the next input's size
    (6 x 6) is compared with onnxruntime before the executor's numbers are used (they were used unchecked)."""
    from onnxplain.executor import TorchExecutor

    executor = onnxplain.load(loose).torch()
    compared, original = [], TorchExecutor._error

    def recorded(self, probes, names):
        compared.append(probes[0][0].shape)
        return original(self, probes, names)

    monkeypatch.setattr(TorchExecutor, "_error", recorded)
    with pytest.raises(onnxplain.OnnxplainError):
        executor.run(RNG.random((1, 1, 8, 8)).astype(np.float32))
    executor.run(RNG.random((1, 1, 6, 6)).astype(np.float32))
    assert compared == [(1, 1, 6, 6)]


def test_windows_over_samples_of_one_number_name_both_methods(tmp_path):
    """An (N,) input, one number per sample: occlusion's refusal named prediction difference alone."""
    weights = [numpy_helper.from_array(np.array([1], np.int64), "axis"),
               numpy_helper.from_array(RNG.normal(size=(1, 3)).astype(np.float32), "w")]
    graph = helper.make_graph([helper.make_node("Unsqueeze", ["x", "axis"], ["column"]),
                               helper.make_node("MatMul", ["column", "w"], ["y"])], "scalar",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "scalar.onnx")
    np.save(tmp_path / "x.npy", np.array([0.5, -1.0], np.float32))
    for method in ("occlusion", "pda"):
        result = CliRunner().invoke(cli, ["explain", str(tmp_path / "scalar.onnx"), str(tmp_path / "x.npy"),
                                          "--method", method, "--reference", str(tmp_path / "x.npy")])
        assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
        assert "occlusion and prediction difference slide windows" in result.stderr
        assert "a single number each" in result.stderr
