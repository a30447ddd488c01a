"""LRP through attention and normalisations: the attention and a normalisation's scale are held constant
(Ali et al. 2022, AH- and LN-rules), so what computes them (softmax, q k^T, the standard deviation) needs no rule.

Reference: with zero biases and ReLU activations, LRP-0 of such a net equals gradient x input of the same torch net
with the attention and the standard deviation detached (each layer's R_j / z_j is then the gradient at z_j).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain.errors import OnnxplainError
from onnxplain.lrp import LRP, unsupported_ops
from onnxplain.targets import Target

from lrp_graphs import dense_graph, graph_model

TOKENS, WIDTH, CLASSES = 5, 8, 3


class Attention(nn.Module):
    """One attention head, an output projection with ReLU, LayerNorm, mean over tokens, a linear head; no biases.
    `detached`: the attention and LayerNorm's standard deviation held constant (the reference)."""

    def __init__(self, detached: bool = False):
        super().__init__()
        self.q, self.k, self.v, self.out = (nn.Linear(WIDTH, WIDTH, bias=False) for _ in range(4))
        self.norm = nn.LayerNorm(WIDTH, bias=False)
        self.head = nn.Linear(WIDTH, CLASSES, bias=False)
        self.detached = detached

    def forward(self, x):
        scores = self.q(x) @ self.k(x).transpose(-1, -2) / math.sqrt(WIDTH)
        attention = torch.softmax(scores, -1)
        h = torch.relu(self.out((attention.detach() if self.detached else attention) @ self.v(x)))
        if self.detached:
            spread = torch.sqrt(h.var(-1, unbiased=False, keepdim=True) + self.norm.eps).detach()
            h = (h - h.mean(-1, keepdim=True)) / spread * self.norm.weight
        else:
            h = self.norm(h)
        return self.head(h.mean(1))


def _export(net: nn.Module, path, dynamo: bool) -> onnxplain.Model:
    x = torch.randn(2, TOKENS, WIDTH)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:  # LayerNormalization as one op
            torch.onnx.export(net, (x,), str(path), dynamo=True, opset_version=18, input_names=["x"],
                              output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("N")},), verbose=False)
        else:       # LayerNorm written out: ReduceMean, Sub, Pow, Sqrt, Div
            torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=14, input_names=["x"],
                              output_names=["logits"], dynamic_axes={"x": {0: "N"}})
    return onnxplain.load(path)


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    net = Attention().eval()
    with torch.no_grad():
        net.norm.weight.uniform_(0.5, 1.5)
    reference = Attention(detached=True).eval()
    reference.load_state_dict(net.state_dict())
    return net, reference


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo-opset18", "legacy-opset14"])
def test_attention_and_layer_norm_held_constant(tmp_path, nets, dynamo):
    net, reference = nets
    model = _export(net, tmp_path / "attention.onnx", dynamo)
    ops = {step.node.op_type for step in model.torch().graph.steps}
    assert {"Softmax", "MatMul"} <= ops and ("LayerNormalization" in ops) == dynamo
    assert unsupported_ops(model) == []
    x = torch.randn(6, TOKENS, WIDTH)
    explanation = LRP("lrp-0", stabilizer=1e-9, progress=False).explain(model, x.numpy(), Target())
    leaf = x.clone().requires_grad_(True)
    scores = reference(leaf)[torch.arange(len(x)), torch.as_tensor(explanation.target)]
    (gradient,) = torch.autograd.grad(scores.sum(), leaf)
    want = (x * gradient).numpy()
    assert np.abs(explanation.relevance - want).max() <= 1e-5 * np.abs(want).max()
    for composite in ("lrp-0", "epsilon-plus", "epsilon-alpha2-beta1"):
        report = LRP(composite, progress=False).explain(model, x.numpy(), Target()).diagnostics
        assert np.abs(report["conservation_error"]).max() <= 1e-5, composite


def test_division_by_a_norm_holds_the_norm_constant(tmp_path):
    """x / ||x||_2 then a dense layer: relevance reaches x through the numerator; ReduceL2 (no rule) computes only
    the divisor, so LRP passes."""
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(6, 3)).astype(np.float32)
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    nodes = [helper.make_node("ReduceL2", ["x", "axes"], ["norm"], keepdims=1),
             helper.make_node("Div", ["x", "norm"], ["unit"]),
             helper.make_node("MatMul", ["unit", "w"], ["logits"])]
    model = graph_model(tmp_path / "normalised.onnx", nodes, [numpy_helper.from_array(weight, "w"), axes])
    assert unsupported_ops(model) == []
    x = rng.normal(size=(4, 6)).astype(np.float32)
    explanation = LRP("lrp-0", stabilizer=1e-9, progress=False).explain(model, x, Target())
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    want = unit * weight[:, explanation.target].T   # the z-rule on unit @ w, passed to x unchanged
    np.testing.assert_allclose(explanation.relevance, want, rtol=1e-4, atol=1e-6)


def test_a_product_of_two_activations_without_a_softmax_stays_unsupported(tmp_path):
    """An outer product (x W1) x^T, a MatMul of two activations with no softmax or sigmoid behind either: no rule,
    and named."""
    rng = np.random.default_rng(1)
    w1 = numpy_helper.from_array(rng.normal(size=(6, 6)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(size=(6, 3)).astype(np.float32), "w2")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]),
             helper.make_node("Unsqueeze", ["h", "one"], ["column"]),
             helper.make_node("Unsqueeze", ["x", "two"], ["row"]),
             helper.make_node("MatMul", ["column", "row"], ["outer"], name="outer_product"),
             helper.make_node("ReduceSum", ["outer", "one"], ["summed"], keepdims=0),
             helper.make_node("MatMul", ["summed", "w2"], ["logits"])]
    constants = [numpy_helper.from_array(np.array([2], np.int64), "one"),
                 numpy_helper.from_array(np.array([1], np.int64), "two")]
    model = graph_model(tmp_path / "outer.onnx", nodes, [w1, w2] + constants)
    assert unsupported_ops(model) == ["MatMul (outer_product), a product of two activations"]
    with pytest.raises(OnnxplainError, match="outer_product"):
        LRP(progress=False).explain(model, rng.normal(size=(2, 6)).astype(np.float32), Target())



@pytest.mark.parametrize("operands", [("a", "b"), ("b", "a"), ("a", "a")])
def test_an_elementwise_product_of_two_plain_activations_is_named(operands, tmp_path):
    """(x W1) * (x W2), either order, and (x W1) * (x W1): neither operand is a gate, so no operand is the signal.
    Before, the first operand took all the relevance: the two orders differed by 0.9 of max |R|, and both ledgers
    balanced."""
    rng = np.random.default_rng(3)
    weights = [numpy_helper.from_array(rng.normal(size=(6, 6)).astype(np.float32), name) for name in ("w1", "w2")]
    weights.append(numpy_helper.from_array(rng.normal(size=(6, 3)).astype(np.float32), "w3"))
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["a"]), helper.make_node("MatMul", ["x", "w2"], ["b"]),
             helper.make_node("Mul", list(operands), ["product"], name="bilinear"),
             helper.make_node("MatMul", ["product", "w3"], ["logits"])]
    model = graph_model(tmp_path / "bilinear.onnx", nodes, weights)
    assert unsupported_ops(model) == ["Mul (bilinear), a product of two activations"]
    with pytest.raises(OnnxplainError, match="bilinear"):
        LRP(progress=False).explain(model, rng.normal(size=(2, 6)).astype(np.float32), Target())


def test_a_mask_multiplies_as_the_gate_in_either_order(tmp_path):
    """x * (x > 0.5) and (x > 0.5) * x: the boolean mask is held constant, relevance goes to x."""
    x = np.random.default_rng(3).normal(size=(4, 6)).astype(np.float32)
    results = []
    for order in (["x", "m"], ["m", "x"]):
        middle = [helper.make_node("Greater", ["x", "half"], ["b"]), helper.make_node("Cast", ["b"], ["m"], to=1),
                  helper.make_node("Mul", order, ["masked"])]
        model = dense_graph(tmp_path, "mask" + order[0], middle, "masked",
                             [numpy_helper.from_array(np.array(0.5, np.float32), "half")])
        assert unsupported_ops(model) == []
        explanation = LRP("lrp-0", progress=False).explain(model, x, Target())
        assert np.abs(explanation.diagnostics["conservation_error"]).max() <= 1e-5
        results.append(explanation.relevance)
    np.testing.assert_allclose(results[0], results[1], rtol=1e-6, atol=1e-7)
    assert np.all(results[0][x <= 0.5] == 0)


def test_relevance_stopped_by_integer_data_is_named(tmp_path):
    model = dense_graph(tmp_path, "rounded", [helper.make_node("Round", ["x"], ["rounded"], name="to_int")],
                         "rounded")
    assert unsupported_ops(model) == ["Round (to_int)"]
    with pytest.raises(OnnxplainError, match=r"no relevance reaches the input .*Round \(to_int\)"):
        LRP(progress=False).explain(model, np.ones((2, 6), np.float32), Target())


def test_a_sum_keeps_the_share_of_an_operand_made_of_integer_data(tmp_path):
    """x - floor(x): floor(x)'s share stays with it, booked like a constant's (bias term); conservation holds."""
    middle = [helper.make_node("Floor", ["x"], ["whole"]), helper.make_node("Sub", ["x", "whole"], ["fraction"])]
    model = dense_graph(tmp_path, "fraction", middle, "fraction")
    rng = np.random.default_rng(4)  # fractions away from 0: no sum that nearly cancels
    x = (rng.integers(-3, 4, size=(8, 6)) + rng.uniform(0.2, 0.8, size=(8, 6))).astype(np.float32)
    report = LRP("lrp-0", progress=False).explain(model, x, Target()).diagnostics
    assert np.abs(report["conservation_error"]).max() <= 1e-5
    assert np.abs(report["bias_relevance"]).max() > 0


def test_einsum_that_moves_the_batch_axis_is_no_layer(tmp_path):
    rng = np.random.default_rng(5)
    weights = [numpy_helper.from_array(rng.normal(size=(6, 3)).astype(np.float32), "w")]
    nodes = [helper.make_node("Einsum", ["x", "w"], ["t"], equation="bi,ih->hb", name="moved"),
             helper.make_node("Transpose", ["t"], ["logits"], perm=[1, 0])]
    model = graph_model(tmp_path / "moved.onnx", nodes, weights)
    assert unsupported_ops(model) == ["Einsum (moved)"]


class Heads(nn.Module):
    """torch's nn.MultiheadAttention (2 heads, batch first; inside, it runs sequence first and folds the heads into
    the batch), then ReLU, mean over tokens and a linear head; no biases."""

    def __init__(self):
        super().__init__()
        self.attention = nn.MultiheadAttention(WIDTH, 2, bias=False, batch_first=True)
        self.head = nn.Linear(WIDTH, CLASSES, bias=False)

    def forward(self, x):
        h, _ = self.attention(x, x, x, need_weights=False)
        return self.head(torch.relu(h).mean(1))

    def detached(self, x):
        """The same function with the attention held constant, written out."""
        n, t, heads = len(x), x.shape[1], self.attention.num_heads
        q, k, v = (x @ w.T for w in self.attention.in_proj_weight.chunk(3))
        split = [part.reshape(n, t, heads, -1).transpose(1, 2) for part in (q, k, v)]
        weights = torch.softmax(split[0] @ split[1].transpose(-1, -2) / math.sqrt(WIDTH // heads), -1)
        mixed = (weights.detach() @ split[2]).transpose(1, 2).reshape(n, t, WIDTH)
        return self.head(torch.relu(mixed @ self.attention.out_proj.weight.T).mean(1))


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo-opset18", "legacy-opset14"])
@pytest.mark.parametrize("batch", [4, TOKENS])   # TOKENS: sequence-first axes the batch divides
def test_multihead_attention_with_a_per_sample_ledger(tmp_path, dynamo, batch):
    """Layers whose tensors put the sequence first, or fold tokens and samples into one axis: the ledger sums each
    layer's terms along the samples' own axis, for the whole batch in one pass (each layer's terms equal the
    sample's own explanation's), the relevance is unchanged."""
    torch.manual_seed(1)
    net = Heads().eval()
    model = _export(net, tmp_path / "heads.onnx", dynamo)
    x = torch.randn(batch, TOKENS, WIDTH)
    method = LRP("lrp-0", stabilizer=1e-9, progress=False)
    explanation = method.explain(model, x.numpy(), Target())
    leaf = x.clone().requires_grad_(True)
    scores = net.detached(leaf)[torch.arange(len(x)), torch.as_tensor(explanation.target)]
    (gradient,) = torch.autograd.grad(scores.sum(), leaf)
    want = (x * gradient).numpy()
    assert np.abs(explanation.relevance - want).max() <= 1e-5 * np.abs(want).max()
    report = explanation.diagnostics
    assert np.abs(report["conservation_error"]).max() <= 1e-5
    assert all(np.isfinite(layer["relevance"]) for sample in report["layers"] for layer in sample)
    axes = set(method._walker._batch_axes[(model.torch().logits_name, tuple(x.shape[1:]))].values())
    assert (1, 1) in axes and any(outer > 1 for _, outer in axes)   # sequence first; tokens folded outside
    batched = method.attribute(model, x.numpy(), Target())   # no ledger
    assert np.abs(batched - explanation.relevance).max() <= 1e-6 * np.abs(want).max()
    for i in (0, batch - 1):
        alone = method.explain(model, x[i:i + 1].numpy(), Target()).diagnostics["layers"][0]
        for got, own in zip(report["layers"][i], alone):
            assert got["relevance"] == pytest.approx(own["relevance"], rel=1e-4, abs=1e-7), got["node"]


def test_the_shipped_digits_transformer(tmp_path):
    """models/digits_vit.onnx (models/build_transformer.py): runs in the registry, classifies the sample digits,
    LRP covers every op and conserves; the CLI writes its heatmap."""
    from pathlib import Path

    from click.testing import CliRunner

    from onnxplain.cli.main import cli

    models = Path(__file__).resolve().parents[1] / "models"
    model = onnxplain.load(models / "digits_vit.onnx")
    digits = [0, 3, 7, 8]
    x = np.stack([np.load(models / "samples" / f"digit{d}_cnn.npy") for d in digits])
    assert model.torch().graph is not None and unsupported_ops(model) == []
    assert model.scores(x).argmax(1).tolist() == digits
    report = LRP(progress=False).explain(model, x, Target()).diagnostics
    assert np.abs(report["conservation_error"]).max() <= 1e-5
    result = CliRunner().invoke(cli, ["explain", str(models / "digits_vit.onnx"),
                                      str(models / "samples" / "digit3.png"), "--out", str(tmp_path / "vit.png")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "vit.png").stat().st_size > 0


def test_shape_arithmetic_needs_no_rule(tmp_path):
    """Pads computed from the input's shape (Shape, Gather, Mod): shape arithmetic receives no relevance, so Mod,
    which has no rule, does not stop LRP."""
    rng = np.random.default_rng(6)
    weights = [numpy_helper.from_array(rng.normal(size=(6, 6)).astype(np.float32), "w1"),
               numpy_helper.from_array(rng.normal(size=(8, 3)).astype(np.float32), "w2"),
               numpy_helper.from_array(np.array([1], np.int64), "one"),
               numpy_helper.from_array(np.array([4], np.int64), "four"),
               numpy_helper.from_array(np.zeros(3, np.int64), "zeros")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Shape", ["h"], ["shape"]),
             helper.make_node("Gather", ["shape", "one"], ["width"]),
             helper.make_node("Mod", ["width", "four"], ["extra"], name="remainder"),
             helper.make_node("Concat", ["zeros", "extra"], ["pads"], axis=0),
             helper.make_node("Pad", ["h", "pads"], ["padded"]),
             helper.make_node("MatMul", ["padded", "w2"], ["logits"])]
    model = graph_model(tmp_path / "padded.onnx", nodes, weights)
    assert unsupported_ops(model) == []
    report = LRP(progress=False).explain(model, rng.normal(size=(3, 6)).astype(np.float32), Target()).diagnostics
    assert np.abs(report["conservation_error"]).max() <= 1e-5


def test_a_constant_joined_by_concat_keeps_its_share(tmp_path):
    """A class token (a constant, expanded over the batch) joined to the token by Concat: its share of relevance
    is reported as a bias."""
    rng = np.random.default_rng(7)
    weights = [numpy_helper.from_array(rng.uniform(0.5, 1, size=(1, 1, 6)).astype(np.float32), "token"),
               numpy_helper.from_array(rng.uniform(-0.5, 1, size=(6, 3)).astype(np.float32), "w"),
               numpy_helper.from_array(np.array([0], np.int64), "first"),
               numpy_helper.from_array(np.array([1], np.int64), "second"),
               numpy_helper.from_array(np.array([1, 6], np.int64), "rest")]
    nodes = [helper.make_node("Shape", ["x"], ["shape"]), helper.make_node("Gather", ["shape", "first"], ["n"]),
             helper.make_node("Concat", ["n", "rest"], ["size"], axis=0),
             helper.make_node("Expand", ["token", "size"], ["tokens"]),
             helper.make_node("Unsqueeze", ["x", "second"], ["row"]),
             helper.make_node("Concat", ["tokens", "row"], ["joined"], axis=1, name="with_token"),
             helper.make_node("MatMul", ["joined", "w"], ["z"]), helper.make_node("Relu", ["z"], ["r"]),
             helper.make_node("ReduceSum", ["r", "second"], ["logits"], keepdims=0)]
    model = graph_model(tmp_path / "token.onnx", nodes, weights)
    x = rng.uniform(0.5, 1, size=(3, 6)).astype(np.float32)
    report = LRP("lrp-0", progress=False).explain(model, x, Target()).diagnostics
    assert np.abs(report["conservation_error"]).max() <= 1e-5
    assert min(report["bias_relevance"]) > 0


@pytest.mark.parametrize("op, order", [("Where", ["positive", "c", "g"]), ("Where", ["positive", "g", "c"]),
                                        ("Max", ["c", "g"]), ("Min", ["g", "c"])])
def test_a_constant_operand_of_a_selection_keeps_its_share(tmp_path, op, order):
    """Where / Max / Min with a constant operand: the positions the constant takes keep their relevance as a bias."""
    rng = np.random.default_rng(8)
    middle = [helper.make_node("Greater", ["x", "zero"], ["positive"]), helper.make_node(op, order, ["picked"])]
    constants = [numpy_helper.from_array(np.float32(0.3).reshape(()), "c"),
                 numpy_helper.from_array(np.float32(0).reshape(()), "zero")]
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["g"])] + middle
    model = dense_graph(tmp_path, f"{op}{order[0]}", nodes, "picked",
                         constants + [numpy_helper.from_array(rng.normal(size=(6, 6)).astype(np.float32), "w0")])
    report = LRP("lrp-0", progress=False).explain(model, rng.normal(size=(5, 6)).astype(np.float32),
                                                   Target()).diagnostics
    assert np.abs(report["conservation_error"]).max() <= 1e-5
    assert np.abs(report["bias_relevance"]).max() > 0


def test_integer_casts_stop_relevance_and_shape_scales_are_gates(tmp_path):
    cast = [helper.make_node("Cast", ["x"], ["whole"], to=TensorProto.INT32, name="to_int"),
            helper.make_node("Cast", ["whole"], ["back"], to=TensorProto.FLOAT)]
    assert unsupported_ops(dense_graph(tmp_path, "cast", cast, "back")) == ["Cast (to_int)"]
    x = np.random.default_rng(9).normal(size=(3, 6)).astype(np.float32)
    maps = []
    for order in (["scale", "x"], ["x", "scale"]):   # x * sqrt(width), the scale first or second
        middle = [helper.make_node("Shape", ["x"], ["shape"]), helper.make_node("Gather", ["shape", "one"], ["width"]),
                  helper.make_node("Cast", ["width"], ["float_width"], to=TensorProto.FLOAT),
                  helper.make_node("Sqrt", ["float_width"], ["scale"]), helper.make_node("Mul", order, ["scaled"])]
        model = dense_graph(tmp_path, "scaled" + order[0], middle, "scaled",
                             [numpy_helper.from_array(np.array(1, np.int64), "one")])
        explanation = LRP("lrp-0", progress=False).explain(model, x, Target())
        assert np.abs(explanation.diagnostics["conservation_error"]).max() <= 1e-5
        maps.append(explanation.relevance)
    np.testing.assert_allclose(maps[0], maps[1], rtol=1e-6, atol=1e-7)
