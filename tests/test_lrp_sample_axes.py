"""LRP's per-sample ledger: where each tensor holds its samples (read off shapes, or found by a two-batch probe),
batches of one squeezed away, samples folded behind tokens, and hidden targets that must hold the batch first."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain.errors import OnnxplainError
from onnxplain.lrp import LRP
from onnxplain.targets import Target

from lrp_graphs import dense_graph, graph_model


def test_a_batch_of_one_squeezed_away_and_targets_off_the_batch_axis(tmp_path):
    """x.squeeze() exported: the batch axis vanishes for one sample; explain still takes batches of several. A
    hidden target must hold the batch on its first axis."""
    rng = np.random.default_rng(10)
    middle = [helper.make_node("Unsqueeze", ["x", "two"], ["column"]),
              helper.make_node("Squeeze", ["column"], ["back"])]
    model = dense_graph(tmp_path, "squeezed", middle, "back",
                         [numpy_helper.from_array(np.array([2], np.int64), "two")])
    report = LRP(progress=False).explain(model, rng.normal(size=(3, 6)).astype(np.float32), Target()).diagnostics
    assert np.abs(report["conservation_error"]).max() <= 1e-5
    folded = [helper.make_node("Reshape", ["x", "flat"], ["folded"]), helper.make_node("Reshape", ["folded", "rows"],
                                                                                       ["back"])]
    model = dense_graph(tmp_path, "folded", folded, "back",
                         [numpy_helper.from_array(np.array([-1], np.int64), "flat"),
                          numpy_helper.from_array(np.array([-1, 6], np.int64), "rows")])
    with pytest.raises(OnnxplainError, match="does not hold the batch on its first axis"):
        LRP(progress=False).explain(model, rng.normal(size=(3, 6)).astype(np.float32), Target(layer="folded", index=0))


def _each_sample_alone(method, model, x: np.ndarray, report: dict) -> None:
    """Each sample's ledger in the batch equals that sample's own (explained alone)."""
    for i in range(len(x)):
        alone = method.explain(model, x[i:i + 1], Target()).diagnostics["layers"][0]
        for got, own in zip(report["layers"][i], alone):
            assert got["relevance"] == pytest.approx(own["relevance"], rel=1e-4, abs=1e-6), got["node"]
            assert got["bias"] == pytest.approx(own["bias"], rel=1e-4, abs=1e-6), got["node"]


def test_sample_axes_read_off_shapes_without_a_probe(monkeypatch, digits_cnn_model, tmp_path):
    """A conv net whose every tensor has the batch symbol first (and nowhere else), through sample-wise ops: the
    ledger's axes come from shape inference and the two-batch probe never runs. A cumulative sum over the batch
    keeps the batch symbol first but mixes samples: the probe decides there, and finds no sample axis (the pair it
    checks runs between two other samples, so a sum over the samples before it shows)."""
    from onnxplain.lrp.walker import Walker

    def no_probe(*args):
        raise AssertionError("the probe ran")

    x = np.random.default_rng(4).random((3, 1, 28, 28), dtype=np.float32)
    method = LRP(progress=False)
    with monkeypatch.context() as patch:
        patch.setattr(Walker, "_sample_axes", no_probe)
        report = method.explain(digits_cnn_model, x, Target()).diagnostics
    assert set(method._walker._batch_axes[("logits", x.shape[1:])].values()) == {(0, 1)}
    assert np.abs(report["conservation_error"]).max() <= 1e-5
    _each_sample_alone(method, digits_cnn_model, x, report)

    axis = numpy_helper.from_array(np.array(0, np.int64), "zero")
    model = dense_graph(tmp_path, "cumsum", [helper.make_node("CumSum", ["x", "zero"], ["running"])], "running",
                         [axis])
    x = np.random.default_rng(5).normal(size=(3, 6)).astype(np.float32)
    method = LRP("lrp-0", stabilizer=1e-9, progress=False)
    report = method.explain(model, x, Target()).diagnostics
    assert method._walker._batch_axes[("logits", x.shape[1:])] is None       # one sample per pass
    assert np.abs(report["conservation_error"]).max() <= 1e-5


def _tokens_outside_samples(path) -> onnxplain.Model:
    """(N, T, 6) -> transpose to (T, N, 6) -> fold to (T*N, 6), tokens outside and samples inside -> dense ReLU layer
    (bias -0.5) -> dense layer -> (T, N, 3) -> mean over tokens: sequence-first layouts, any token count."""
    rng = np.random.default_rng(7)
    arrays = {"w1": rng.normal(size=(6, 8)), "b1": np.full(8, -0.5), "w2": rng.normal(size=(8, 3)),
              "rows": np.array([-1, 6]), "zero": np.array([0]), "tail": np.array([3]), "minus": np.array([-1]),
              "first": np.array([0])}
    weights = [numpy_helper.from_array(v.astype(np.int64 if v.dtype.kind == "i" else np.float32), k)
               for k, v in arrays.items()]
    nodes = [helper.make_node("Transpose", ["x"], ["tokens_first"], perm=[1, 0, 2]),
             helper.make_node("Reshape", ["tokens_first", "rows"], ["folded"]),
             helper.make_node("MatMul", ["folded", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["hb"]),
             helper.make_node("Relu", ["hb"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["y"]),
             helper.make_node("Shape", ["x"], ["shape"]), helper.make_node("Gather", ["shape", "first"], ["n"]),
             helper.make_node("Concat", ["minus", "n", "tail"], ["unfold"], axis=0),
             helper.make_node("Reshape", ["y", "unfold"], ["per_token"]),
             helper.make_node("ReduceMean", ["per_token", "zero"], ["logits"], keepdims=0)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T", 6])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8), path)
    return onnxplain.load(path)


def test_folded_samples_found_for_each_token_count_and_a_blank_first_sample(tmp_path):
    """Tokens folded outside the samples: the probe finds the fold afresh for another token count (the fold's
    outer size is the token count), and is not fooled by a first sample that leaves a layer alike for every probe
    input (all its ReLUs off). A tensor holding its samples second cannot be a hidden target, even when the batch
    size equals the token count."""
    model = _tokens_outside_samples(tmp_path / "folded.onnx")
    method = LRP("lrp-0", stabilizer=1e-9, progress=False)
    rng = np.random.default_rng(8)
    for tokens in (4, 8):
        x = rng.normal(size=(4, tokens, 6)).astype(np.float32) * 4
        x[0] = 0.0
        report = method.explain(model, x, Target()).diagnostics
        assert ("hb", (0, tokens)) in method._walker._batch_axes[("logits", x.shape[1:])].items()
        assert np.abs(report["conservation_error"]).max() <= 1e-5
        _each_sample_alone(method, model, x, report)
    x = rng.normal(size=(5, 5, 6)).astype(np.float32)
    from onnxplain.methods import make_method

    for explainer in (method, make_method("gradient", progress=False)):
        with pytest.raises(OnnxplainError, match="does not hold the batch on its first axis"):
            explainer.attribute(model, x, Target(layer="tokens_first", index=0))


def test_a_layer_norm_over_a_batch_of_scalars_is_refused(tmp_path):
    """LayerNormalization's default axis (-1) over an (N,) tensor normalises across the samples: the shapes alone
    (batch symbol first) do not show it, but a sample's scores change with its batch, so the model is refused on
    loading (before, LRP's probe ran each sample alone, where the normalisation of one value gives a constant)."""
    rng = np.random.default_rng(11)
    weights = [numpy_helper.from_array(rng.normal(size=(6, 1)).astype(np.float32), "w1"),
               numpy_helper.from_array(np.array([1], np.int64), "one"),
               numpy_helper.from_array(np.array([1.5], np.float32), "scale"),
               numpy_helper.from_array(np.array([0.1], np.float32), "shift"),
               numpy_helper.from_array(rng.normal(size=(1, 3)).astype(np.float32), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Squeeze", ["h", "one"], ["flat"]),
             helper.make_node("LayerNormalization", ["flat", "scale", "shift"], ["normed"]),
             helper.make_node("Unsqueeze", ["normed", "one"], ["column"]),
             helper.make_node("MatMul", ["column", "w2"], ["logits"])]
    with pytest.raises(OnnxplainError, match="depends on the other samples of its batch"):
        graph_model(tmp_path / "scalar_norm.onnx", nodes, weights)
