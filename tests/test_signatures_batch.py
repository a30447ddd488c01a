"""Batch axes declared free that are not: a Reshape to a batch of 1 (exported with dynamic_axes all the same), and
a graph that mixes the samples of its batch. The first runs one sample at a time; the second is refused, since no
score of it is a sample's own."""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain.lrp import LRP
from onnxplain.methods.gradients import Gradient
from onnxplain.methods.occlusion import Occlusion

RNG = np.random.default_rng(11)
W = RNG.normal(size=(12, 3)).astype(np.float32)


def save(path, nodes, extra=()):
    """(N, 3, 4) -> ... -> y (N, 3), the nodes writing y from x."""
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                              [numpy_helper.from_array(W, "w"), *extra])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


@pytest.fixture
def one_only(tmp_path):
    """Reshape to (1, 12): a batch of two fails in onnxruntime (the Gemm sees 24 features)."""
    return save(tmp_path / "one.onnx", [helper.make_node("Relu", ["x"], ["r"]),
                                        helper.make_node("Reshape", ["r", "shape"], ["flat"]),
                                        helper.make_node("Gemm", ["flat", "w"], ["y"])],
                [numpy_helper.from_array(np.array([1, -1], np.int64), "shape")])


def test_a_batch_of_one_only_runs_sample_by_sample(one_only):
    """Before, every method failed on two inputs with onnxruntime's Gemm error."""
    model = onnxplain.load(one_only)
    assert model.fixed_batch and any("runs batches of 1 only" in note for note in model.notes)
    x = RNG.normal(size=(3, 3, 4)).astype(np.float32)
    session = ort.InferenceSession(str(one_only), providers=["CPUExecutionProvider"])
    alone = np.concatenate([session.run(None, {"x": x[i:i + 1]})[0] for i in range(3)])
    np.testing.assert_allclose(model.scores(x), alone, rtol=1e-6)
    gradient = Gradient(progress=False).explain(model, x)
    expected = (x > 0) * W[:, gradient.target].T.reshape(3, 3, 4)
    np.testing.assert_allclose(gradient.relevance, expected, rtol=1e-6)
    assert np.abs(LRP(progress=False).explain(model, x).diagnostics["conservation_error"]).max() < 1e-5
    occlusion = Occlusion(window=1, progress=False).explain(model, x)
    np.testing.assert_allclose(occlusion.score, alone[np.arange(3), occlusion.target], rtol=1e-6)


def test_a_graph_mixing_its_samples_is_refused(tmp_path):
    """y = xW - mean over the batch of xW: beside another sample a row changes, alone it is 0, so no score is the
    sample's own (occlusion's windowed batches and the scores of a batch gave rows that were no sample's)."""
    path = save(tmp_path / "mix.onnx", [helper.make_node("Flatten", ["x"], ["flat"]),
                                        helper.make_node("MatMul", ["flat", "w"], ["z"]),
                                        helper.make_node("ReduceMean", ["z"], ["mean"], axes=[0], keepdims=1),
                                        helper.make_node("Sub", ["z", "mean"], ["y"])])
    with pytest.raises(onnxplain.OnnxplainError, match="depends on the other samples of its batch"):
        onnxplain.load(path)


def test_infinite_scores_equal_alone_and_beside_others(tmp_path):
    """log(relu(x |W| * (1, -1, 1))): the middle class is -inf, alone and in a batch alike, which is no mixing
    (inf - inf had read as a difference: the model ran one sample at a time, with a RuntimeWarning)."""
    sign = numpy_helper.from_array(np.array([1, -1, 1], np.float32), "sign")
    path = save(tmp_path / "log.onnx", [helper.make_node("Flatten", ["x"], ["flat"]),
                                        helper.make_node("Abs", ["w"], ["positive"]),
                                        helper.make_node("MatMul", ["flat", "positive"], ["z"]),
                                        helper.make_node("Mul", ["z", "sign"], ["signed"]),
                                        helper.make_node("Relu", ["signed"], ["r"]),
                                        helper.make_node("Log", ["r"], ["y"])], [sign])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = onnxplain.load(path)
    assert np.isneginf(model.run(RNG.random((2, 3, 4), dtype=np.float32))["y"][:, 1]).all()
    assert not model.fixed_batch and not any("samples of its batch" in n for n in model.notes)
