"""Models whose weights and inputs are not float32: float16 (also behind a Cast inside a float32 graph) and
float64. Each loads, frees a fixed batch axis, runs in the torch executor and explains in its own precision."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain.lrp import LRP
from onnxplain.methods.gradients import Gradient
from onnxplain.methods.occlusion import Occlusion

RNG = np.random.default_rng(7)
CONV1, CONV2 = RNG.standard_normal((8, 1, 3, 3)) * 0.5, RNG.standard_normal((8, 8, 3, 3)) * 0.3
BIAS1, BIAS2 = RNG.standard_normal(8) * 0.1, RNG.standard_normal(8) * 0.1
DENSE, DENSE_BIAS = RNG.standard_normal((8, 4)) * 0.5, RNG.standard_normal(4) * 0.1


def conv_net(path, dtype, batch="N", cast_inside=False):
    """Conv-Relu-Conv-Relu-GlobalAveragePool-Gemm in `dtype`; with `cast_inside`, a float32 input and output around
    a float16 body (a mixed-precision export)."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    outer = TensorProto.FLOAT if cast_inside else elem
    weights = [numpy_helper.from_array(np.asarray(a, dtype), name) for a, name in
               [(CONV1, "w1"), (BIAS1, "b1"), (CONV2, "w2"), (BIAS2, "b2"), (DENSE, "wd"), (DENSE_BIAS, "bd")]]
    nodes = [helper.make_node("Conv", ["x16" if cast_inside else "x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "wd", "bd"], ["y16" if cast_inside else "y"])]
    if cast_inside:
        nodes = [helper.make_node("Cast", ["x"], ["x16"], to=elem)] + nodes + \
                [helper.make_node("Cast", ["y16"], ["y"], to=TensorProto.FLOAT)]
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", outer, [batch, 1, 12, 12])],
                              [helper.make_tensor_value_info("y", outer, [batch, 4])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def torch_net(x: np.ndarray, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """The same network in torch: (logits, input tensor requiring grad)."""
    t = torch.tensor(x, dtype=dtype, requires_grad=True)
    w1, b1, w2, b2, wd, bd = (torch.tensor(a, dtype=dtype) for a in (CONV1, BIAS1, CONV2, BIAS2, DENSE, DENSE_BIAS))
    h = torch.relu(torch.nn.functional.conv2d(t, w1, b1, padding=1))
    h = torch.relu(torch.nn.functional.conv2d(h, w2, b2, padding=1))
    return h.mean((2, 3)) @ wd + bd, t


@pytest.fixture(scope="module")
def inputs():
    return RNG.random((3, 1, 12, 12))


@pytest.mark.parametrize("batch", ["N", 1, 4])
def test_float16_model_loads_with_a_free_batch(tmp_path, inputs, batch):
    """A float16 model is probed with float16 inputs: its normalisation is verified and a fixed batch freed (the
    probes were float32, which onnxruntime refuses: batch 4 was refused, batch 1 kept fixed)."""
    model = onnxplain.load(conv_net(tmp_path / "half.onnx", np.float16, batch))
    assert not model.fixed_batch
    assert not any("not verified" in note for note in model.notes), model.notes
    want = torch_net(inputs)[0].detach().numpy()
    assert np.abs(model.scores(inputs) - want).max() < 1e-2 * np.abs(want).max()


@pytest.mark.parametrize("cast_inside", [False, True])
def test_float16_model_runs_in_torch(tmp_path, inputs, cast_inside):
    """The torch executor is checked against onnxruntime to float16's rounding (10 units of 2^-10), not
    float32's 1e-4: gradients and LRP run, in float16 arithmetic (the gradient is the float16 net's in torch)."""
    model = onnxplain.load(conv_net(tmp_path / "half.onnx", np.float16, cast_inside=cast_inside))
    logits, t = torch_net(inputs, torch.float16)
    classes = logits.argmax(1)
    logits[torch.arange(len(inputs)), classes].sum().backward()
    gradient = Gradient(progress=False).explain(model, inputs)
    assert (gradient.target == classes.numpy()).all()
    want = t.grad.double().numpy()
    assert np.abs(gradient.relevance - want).max() < 1e-2 * np.abs(want).max()
    lrp = LRP(progress=False).explain(model, inputs)
    assert np.abs(lrp.diagnostics["conservation_error"]).max() < 1e-2
    assert np.isfinite(lrp.relevance).all()


def test_float16_relevance_is_float32(tmp_path, inputs):
    """Relevance of a float16 model comes back in float32, from every method alike (sums and averages of
    float16 values would round to 1e-3)."""
    model = onnxplain.load(conv_net(tmp_path / "half.onnx", np.float16))
    for method in (LRP(progress=False), Gradient(progress=False), Occlusion(window=4, progress=False)):
        assert method.explain(model, inputs).relevance.dtype == np.float32, method


def test_float64_model_explains_in_float64(tmp_path):
    """A float64 model's LRP relevance stays float64 and conserves to float64 precision (it was cast to float32,
    which left a 1e-8 conservation error); its gradient equals the closed form of the dense layers."""
    w1, w2 = RNG.standard_normal((6, 8)), RNG.standard_normal((8, 3))
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["N", 6])],
                              [helper.make_tensor_value_info("y", TensorProto.DOUBLE, ["N", 3])],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "double.onnx")
    model = onnxplain.load(tmp_path / "double.onnx")
    x = RNG.standard_normal((4, 6))
    lrp = LRP(composite="lrp-0", progress=False).explain(model, x, 1)
    assert lrp.relevance.dtype == np.float64
    assert np.abs(lrp.diagnostics["conservation_error"]).max() < 1e-12
    gradient = Gradient(progress=False).explain(model, x, 1)
    expected = ((x @ w1 > 0) * w2[:, 1]) @ w1.T
    assert gradient.relevance.dtype == np.float64
    assert np.abs(gradient.relevance - expected).max() < 1e-12


def test_save_npy_keeps_a_float64_models_precision(tmp_path):
    """`explain --save-npy` wrote every map as float32, a float64 model's too."""
    from click.testing import CliRunner

    from onnxplain.cli.main import cli

    w = RNG.standard_normal((5, 2))
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "linear",
                              [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["N", 5])],
                              [helper.make_tensor_value_info("y", TensorProto.DOUBLE, ["N", 2])],
                              [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "double.onnx")
    x = RNG.standard_normal(5) / 3
    np.save(tmp_path / "x.npy", x)
    result = CliRunner().invoke(cli, ["explain", str(tmp_path / "double.onnx"), str(tmp_path / "x.npy"), "--method",
                                      "gradient-x-input", "--target", "1", "--save-npy", str(tmp_path / "r.npy")])
    assert result.exit_code == 0, result.output
    saved = np.load(tmp_path / "r.npy")
    assert saved.dtype == np.float64
    np.testing.assert_allclose(saved, x * w[:, 1], rtol=1e-15)


@pytest.mark.parametrize("classifier_type, generator_type", [(np.float16, np.float16), (np.float64, np.float32),
                                                             (np.float32, np.float16)])
def test_contrast_refuses_models_that_are_not_float32(tmp_path, classifier_type, generator_type):
    """CDeepEx's latent search runs in float32: a float16 generator met float32 latents in a torch matmul, and a
    RuntimeError escaped. Each model not in float32 is named in one line."""
    from onnxplain.methods.contrastive import CDeepEx

    def linear(name, size_in, size_out, dtype, source, target):
        element = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        graph = helper.make_graph([helper.make_node("MatMul", [source, "w"], [target])], name,
                                  [helper.make_tensor_value_info(source, element, ["N", size_in])],
                                  [helper.make_tensor_value_info(target, element, ["N", size_out])],
                                  [numpy_helper.from_array(RNG.normal(size=(size_in, size_out)).astype(dtype), "w")])
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / f"{name}.onnx")
        return tmp_path / f"{name}.onnx"

    classifier = onnxplain.load(linear("classifier", 4, 3, classifier_type, "x", "y"))
    generator = linear("generator", 3, 4, generator_type, "z", "x")
    x = RNG.normal(size=(1, 4)).astype(classifier_type)
    named = "classifier" if classifier_type != np.float32 else "generator"
    with pytest.raises(onnxplain.OnnxplainError, match=f"this {named} takes float"):
        CDeepEx(generator=generator, progress=False).explain(classifier, x)
