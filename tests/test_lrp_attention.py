"""LRP through attention and normalisations: the attention and a normalisation's scale are held constant
(Ali et al. 2022, AH- and LN-rules), so what computes them (softmax, q k^T, the standard deviation) needs no rule.

Reference: with zero biases and ReLU activations, LRP-0 of such a net equals gradient x input of the same torch net
with the attention and the standard deviation detached (each layer's R_j / z_j is then the gradient at z_j).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain.errors import OnnxplainError
from onnxplain.lrp import LRP, unsupported_ops
from onnxplain.targets import Target

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


def _graph_model(path, nodes, weights) -> onnxplain.Model:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8), path)
    return onnxplain.load(path)


def test_division_by_a_norm_holds_the_norm_constant(tmp_path):
    """x / ||x||_2 then a dense layer: relevance reaches x through the numerator; ReduceL2 (no rule) computes only
    the divisor, so LRP passes."""
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(6, 3)).astype(np.float32)
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    nodes = [helper.make_node("ReduceL2", ["x", "axes"], ["norm"], keepdims=1),
             helper.make_node("Div", ["x", "norm"], ["unit"]),
             helper.make_node("MatMul", ["unit", "w"], ["logits"])]
    model = _graph_model(tmp_path / "normalised.onnx", nodes, [numpy_helper.from_array(weight, "w"), axes])
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
    model = _graph_model(tmp_path / "outer.onnx", nodes, [w1, w2] + constants)
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
    model = _graph_model(tmp_path / "bilinear.onnx", nodes, weights)
    assert unsupported_ops(model) == ["Mul (bilinear), a product of two activations"]
    with pytest.raises(OnnxplainError, match="bilinear"):
        LRP(progress=False).explain(model, rng.normal(size=(2, 6)).astype(np.float32), Target())


def _dense_graph(tmp_path, name, middle: list, source: str, constants=()) -> onnxplain.Model:
    """x -> `middle` nodes -> (their output `source`) MatMul -> Relu -> MatMul -> logits."""
    rng = np.random.default_rng(2)
    weights = [numpy_helper.from_array(rng.normal(size=(6, 6)).astype(np.float32), "w1"),
               numpy_helper.from_array(rng.normal(size=(6, 3)).astype(np.float32), "w2"), *constants]
    nodes = middle + [helper.make_node("MatMul", [source, "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
                      helper.make_node("MatMul", ["r", "w2"], ["logits"])]
    return _graph_model(tmp_path / f"{name}.onnx", nodes, weights)


def test_a_mask_multiplies_as_the_gate_in_either_order(tmp_path):
    """x * (x > 0.5) and (x > 0.5) * x: the boolean mask is held constant, relevance goes to x."""
    x = np.random.default_rng(3).normal(size=(4, 6)).astype(np.float32)
    results = []
    for order in (["x", "m"], ["m", "x"]):
        middle = [helper.make_node("Greater", ["x", "half"], ["b"]), helper.make_node("Cast", ["b"], ["m"], to=1),
                  helper.make_node("Mul", order, ["masked"])]
        model = _dense_graph(tmp_path, "mask" + order[0], middle, "masked",
                             [numpy_helper.from_array(np.array(0.5, np.float32), "half")])
        assert unsupported_ops(model) == []
        explanation = LRP("lrp-0", progress=False).explain(model, x, Target())
        assert np.abs(explanation.diagnostics["conservation_error"]).max() <= 1e-5
        results.append(explanation.relevance)
    np.testing.assert_allclose(results[0], results[1], rtol=1e-6, atol=1e-7)
    assert np.all(results[0][x <= 0.5] == 0)


def test_relevance_stopped_by_integer_data_is_named(tmp_path):
    model = _dense_graph(tmp_path, "rounded", [helper.make_node("Round", ["x"], ["rounded"], name="to_int")],
                         "rounded")
    assert unsupported_ops(model) == ["Round (to_int)"]
    with pytest.raises(OnnxplainError, match=r"no relevance reaches the input .*Round \(to_int\)"):
        LRP(progress=False).explain(model, np.ones((2, 6), np.float32), Target())


def test_a_sum_keeps_the_share_of_an_operand_made_of_integer_data(tmp_path):
    """x - floor(x): floor(x)'s share stays with it, booked like a constant's (bias term); conservation holds."""
    middle = [helper.make_node("Floor", ["x"], ["whole"]), helper.make_node("Sub", ["x", "whole"], ["fraction"])]
    model = _dense_graph(tmp_path, "fraction", middle, "fraction")
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
    model = _graph_model(tmp_path / "moved.onnx", nodes, weights)
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
    model = _graph_model(tmp_path / "padded.onnx", nodes, weights)
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
    model = _graph_model(tmp_path / "token.onnx", nodes, weights)
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
    model = _dense_graph(tmp_path, f"{op}{order[0]}", nodes, "picked",
                         constants + [numpy_helper.from_array(rng.normal(size=(6, 6)).astype(np.float32), "w0")])
    report = LRP("lrp-0", progress=False).explain(model, rng.normal(size=(5, 6)).astype(np.float32),
                                                   Target()).diagnostics
    assert np.abs(report["conservation_error"]).max() <= 1e-5
    assert np.abs(report["bias_relevance"]).max() > 0


def test_integer_casts_stop_relevance_and_shape_scales_are_gates(tmp_path):
    cast = [helper.make_node("Cast", ["x"], ["whole"], to=TensorProto.INT32, name="to_int"),
            helper.make_node("Cast", ["whole"], ["back"], to=TensorProto.FLOAT)]
    assert unsupported_ops(_dense_graph(tmp_path, "cast", cast, "back")) == ["Cast (to_int)"]
    x = np.random.default_rng(9).normal(size=(3, 6)).astype(np.float32)
    maps = []
    for order in (["scale", "x"], ["x", "scale"]):   # x * sqrt(width), the scale first or second
        middle = [helper.make_node("Shape", ["x"], ["shape"]), helper.make_node("Gather", ["shape", "one"], ["width"]),
                  helper.make_node("Cast", ["width"], ["float_width"], to=TensorProto.FLOAT),
                  helper.make_node("Sqrt", ["float_width"], ["scale"]), helper.make_node("Mul", order, ["scaled"])]
        model = _dense_graph(tmp_path, "scaled" + order[0], middle, "scaled",
                             [numpy_helper.from_array(np.array(1, np.int64), "one")])
        explanation = LRP("lrp-0", progress=False).explain(model, x, Target())
        assert np.abs(explanation.diagnostics["conservation_error"]).max() <= 1e-5
        maps.append(explanation.relevance)
    np.testing.assert_allclose(maps[0], maps[1], rtol=1e-6, atol=1e-7)


def test_a_batch_of_one_squeezed_away_and_targets_off_the_batch_axis(tmp_path):
    """x.squeeze() exported: the batch axis vanishes for one sample; explain still takes batches of several. A
    hidden target must hold the batch on its first axis."""
    rng = np.random.default_rng(10)
    middle = [helper.make_node("Unsqueeze", ["x", "two"], ["column"]),
              helper.make_node("Squeeze", ["column"], ["back"])]
    model = _dense_graph(tmp_path, "squeezed", middle, "back",
                         [numpy_helper.from_array(np.array([2], np.int64), "two")])
    report = LRP(progress=False).explain(model, rng.normal(size=(3, 6)).astype(np.float32), Target()).diagnostics
    assert np.abs(report["conservation_error"]).max() <= 1e-5
    folded = [helper.make_node("Reshape", ["x", "flat"], ["folded"]), helper.make_node("Reshape", ["folded", "rows"],
                                                                                       ["back"])]
    model = _dense_graph(tmp_path, "folded", folded, "back",
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
    model = _dense_graph(tmp_path, "cumsum", [helper.make_node("CumSum", ["x", "zero"], ["running"])], "running",
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


def test_a_layer_norm_over_a_batch_of_scalars_goes_to_the_probe(tmp_path):
    """LayerNormalization's default axis (-1) over an (N,) tensor normalises across the samples: the shapes alone
    (batch symbol first) do not settle the layout, the probe does, and the ledger still conserves."""
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
    model = _graph_model(tmp_path / "scalar_norm.onnx", nodes, weights)
    from onnxplain.lrp.layout import shape_sample_axes

    method = LRP("lrp-0", stabilizer=1e-9, progress=False)
    x = rng.normal(size=(3, 6)).astype(np.float32)
    report = method.explain(model, x, Target(index=1)).diagnostics
    walker = method._walker
    assert shape_sample_axes(model.proto, model.input_name, walker.plan("logits")) is None
    assert np.abs(report["conservation_error"]).max() <= 1e-5
