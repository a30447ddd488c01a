"""Each rule against its formula written out in numpy; gates; zero-bias conservation; overrides and errors."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain.errors import OnnxplainError
from onnxplain.lrp import LRP, DeepTaylor, unsupported_ops

STAB = 1e-6


def _dense_model(path, layers: list[tuple[np.ndarray, np.ndarray]], gate: bool = False) -> onnxplain.Model:
    """x -> Gemm (-> Relu -> Gemm ...) -> logits; with `gate`, h * sigmoid(Gemm(h)) after the first layer."""
    nodes, inits, current = [], [], "x"
    for i, (weight, bias) in enumerate(layers):
        inits += [numpy_helper.from_array(weight.astype(np.float32), f"w{i}"),
                  numpy_helper.from_array(bias.astype(np.float32), f"b{i}")]
        out = "logits" if i == len(layers) - 1 else f"z{i}"
        nodes.append(helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [out], name=f"dense{i}", transB=1))
        current = out
        if i < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [out], [f"h{i}"], name=f"relu{i}"))
            current = f"h{i}"
            if gate and i == 0:
                size = weight.shape[0]
                inits += [numpy_helper.from_array(np.eye(size, dtype=np.float32)[::-1] * 2, "wg"),
                          numpy_helper.from_array(np.zeros(size, np.float32), "bg")]
                nodes += [helper.make_node("Gemm", [current, "wg", "bg"], ["gz"], name="gate_dense", transB=1),
                          helper.make_node("Sigmoid", ["gz"], ["g"], name="gate"),
                          helper.make_node("Mul", [current, "g"], ["gated"], name="product")]
                current = "gated"
    features = layers[0][0].shape[1]
    classes = layers[-1][0].shape[0]
    graph = helper.make_graph(nodes, "dense", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return onnxplain.load(path)


def _stab(z):
    return z + STAB * np.where(z >= 0, 1.0, -1.0)


def reference(rule: str, x, w, b, relevance, low=-1.0, high=1.0):
    """R_i for one dense layer y = x w^T + b, output relevance (N, K): the rules' formulas in numpy."""
    xp, xn, wp, wn = np.maximum(x, 0), np.minimum(x, 0), np.maximum(w, 0), np.minimum(w, 0)
    contributions = x[:, None, :] * w[None]                                  # (N, K, F)
    z = contributions.sum(2) + b
    if rule in ("z", "epsilon"):
        eps = STAB if rule == "z" else 0.5
        denominator = z + eps * np.where(z >= 0, 1.0, -1.0)
        return (contributions * (relevance / denominator)[:, :, None]).sum(1)
    positive = xp[:, None, :] * wp[None] + xn[:, None, :] * wn[None]
    negative = xp[:, None, :] * wn[None] + xn[:, None, :] * wp[None]
    if rule == "zplus":
        return (positive * (relevance / _stab(positive.sum(2) + np.maximum(b, 0)))[:, :, None]).sum(1)
    if rule == "alpha3beta2":
        up = positive * (relevance / _stab(positive.sum(2) + np.maximum(b, 0)))[:, :, None]
        down = negative * (relevance / _stab(negative.sum(2) + np.minimum(b, 0)))[:, :, None]
        return (3 * up - 2 * down).sum(1)
    if rule == "gamma":
        g = 0.25
        up = xp[:, None, :] * (w + g * wp)[None] + xn[:, None, :] * (w + g * wn)[None]
        down = xp[:, None, :] * (w + g * wn)[None] + xn[:, None, :] * (w + g * wp)[None]
        up_z = up.sum(2) + b + g * np.maximum(b, 0)
        down_z = down.sum(2) + b + g * np.minimum(b, 0)
        share = np.where((z > 0)[:, :, None], up / _stab(up_z)[:, :, None], 0) + \
            np.where((z < 0)[:, :, None], down / _stab(down_z)[:, :, None], 0)
        return (share * relevance[:, :, None]).sum(1)
    if rule == "zb":
        q = contributions - low * wp[None] - high * wn[None]
        return (q * (relevance / _stab(q.sum(2)))[:, :, None]).sum(1)
    if rule in ("w2", "flat"):
        q = np.broadcast_to((w ** 2 if rule == "w2" else np.ones_like(w))[None], contributions.shape)
        return (q * (relevance / _stab(q.sum(2)))[:, :, None]).sum(1)
    raise ValueError(rule)


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(5, 6)), rng.normal(size=5) * 0.5
    model = _dense_model(tmp_path_factory.mktemp("dense") / "dense.onnx", [(w, b)])
    x = rng.uniform(-1, 1, size=(7, 6)).astype(np.float32)
    return model, x, w.astype(np.float32).astype(np.float64), b.astype(np.float32).astype(np.float64)


@pytest.mark.parametrize("rule, spec", [("z", "z"), ("epsilon", "epsilon:0.5"), ("zplus", "zplus"),
                                        ("alpha3beta2", "alphabeta:3,2"), ("gamma", "gamma"), ("zb", "zb"),
                                        ("w2", "w2"), ("flat", "flat")])
def test_rule_matches_its_formula(dense, rule, spec):
    model, x, w, b = dense
    box = {"low": -1.0, "high": 1.0} if rule == "zb" else {}
    explanation = LRP("lrp-0", rules={"Gemm": spec}, **box, progress=False).explain(model, x)
    logits = x.astype(np.float64) @ w.T + b
    top = logits.argmax(1)
    relevance = np.zeros_like(logits)
    relevance[np.arange(len(x)), top] = logits[np.arange(len(x)), top]
    expected = reference(rule, x.astype(np.float64), w, b, relevance)
    np.testing.assert_allclose(explanation.relevance, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    assert np.abs(explanation.diagnostics["conservation_error"]).max() < 1e-5


def test_gate_holds_the_gate_constant(tmp_path):
    rng = np.random.default_rng(1)
    w0, b0, w1, b1 = rng.normal(size=(4, 3)), rng.normal(size=4) * 0.1, rng.normal(size=(2, 4)), rng.normal(size=2)
    model = _dense_model(tmp_path / "gated.onnx", [(w0, b0), (w1, b1)], gate=True)
    assert unsupported_ops(model) == []
    x = rng.uniform(0, 1, size=(5, 3)).astype(np.float32)
    explanation = LRP("lrp-0", progress=False).explain(model, x)
    x64 = x.astype(np.float64)
    h = np.maximum(x64 @ w0.T + b0, 0)
    gated = h * (1 / (1 + np.exp(-(h @ (np.eye(4)[::-1] * 2).T))))
    logits = gated @ w1.T + b1
    top = logits.argmax(1)
    relevance = np.zeros_like(logits)
    relevance[np.arange(5), top] = logits[np.arange(5), top]
    at_signal = reference("z", gated, w1, b1, relevance)            # relevance of the product = of the signal h
    expected = reference("z", x64, w0, b0, at_signal)               # the gate's own branch receives nothing
    np.testing.assert_allclose(explanation.relevance, expected, rtol=1e-4, atol=1e-6)


def _zero_biases(source, target) -> onnxplain.Model:
    model = onnx.load(source)
    for tensor in model.graph.initializer:
        if tensor.name.endswith("bias"):
            tensor.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(tensor)), tensor.name))
    onnx.save(model, target)
    return onnxplain.load(target)


@pytest.mark.parametrize("rule", ["z", "zplus", "alpha2beta1", "alphabeta:3,2", "w2", "flat"])
def test_conservative_rules_conserve_exactly_without_biases(digits_cnn, tmp_path, rule):
    """With zero biases only the stabiliser can absorb relevance; made negligible here (1e-9), the input
    relevance alone sums to f(x). (With the default 1e-6 the ledger reports the stabiliser's share.)"""
    model = _zero_biases(digits_cnn, tmp_path / "nobias.onnx")
    x = np.load(digits_cnn.parent / "samples" / "digits_reference_cnn.npy")[:20]
    first = {"node_conv2d": "zb"} if rule == "z" else {}
    explanation = LRP("lrp-0", rules={"Conv": rule, "Gemm": rule, **first}, stabilizer=1e-9,
                      progress=False).explain(model, x)
    total = explanation.relevance.reshape(len(x), -1).sum(1)
    np.testing.assert_allclose(total, explanation.score, rtol=1e-5)
    assert np.abs(explanation.diagnostics["bias_relevance"]).max() == 0


def test_deep_taylor_gives_no_negative_relevance_on_a_relu_net(digits_cnn):
    model = onnxplain.load(digits_cnn)
    x = np.load(digits_cnn.parent / "samples" / "digits_reference_cnn.npy")
    explanation = DeepTaylor(progress=False).explain(model, x)
    assert (explanation.score > 0).all()
    assert explanation.relevance.min() >= 0 and explanation.relevance.max() > 0
    assert max(explanation.diagnostics["negative_fraction"]) == 0
    rules = {layer["rule"] for layer in explanation.diagnostics["layers"][0]}
    assert rules == {"zb", "zplus"}
    # the same net explained by epsilon-alpha2-beta1 does have negative relevance (the statistic can fail)
    contrast = LRP("epsilon-alpha2-beta1", progress=False).explain(model, x[:10])
    assert max(contrast.diagnostics["negative_fraction"]) > 0


def test_relevance_without_the_report_is_the_same(digits_cnn):
    """attribute() and report=False skip the conservation ledger: same relevance, no report, positivity kept."""
    model = onnxplain.load(digits_cnn)
    x = np.load(digits_cnn.parent / "samples" / "digits_reference_cnn.npy")[:8]
    full = LRP(progress=False).explain(model, x)
    assert "conservation_error" in full.diagnostics
    bare = LRP(progress=False, report=False).explain(model, x)
    assert "conservation_error" not in bare.diagnostics and "layers" not in bare.diagnostics
    assert bare.diagnostics["negative_fraction"] == full.diagnostics["negative_fraction"]
    np.testing.assert_array_equal(bare.relevance, full.relevance)
    np.testing.assert_array_equal(LRP(progress=False).attribute(model, x), full.relevance)


def test_deep_taylor_without_bounds_uses_w2(tmp_path):
    rng = np.random.default_rng(2)
    model = _dense_model(tmp_path / "mlp.onnx", [(rng.normal(size=(4, 3)), np.zeros(4)), (rng.normal(size=(2, 4)),
                                                                                           np.zeros(2))])
    assert model.preprocess is None
    explanation = DeepTaylor(progress=False).explain(model, rng.uniform(size=(3, 3)).astype(np.float32))
    assert [layer["rule"] for layer in explanation.diagnostics["layers"][0]] == ["w2", "zplus"]


def test_composites_by_zennit_class_names():
    assert LRP("EpsilonAlpha2Beta1Flat").composite == "epsilon-alpha2-beta1-flat"
    assert LRP("EpsilonGammaBox").composite == "epsilon-gamma-box" and LRP("epsilon-plus").composite == "epsilon-plus"
    with pytest.raises(OnnxplainError, match="unknown composite 'EpsilonMinus'"):
        LRP("EpsilonMinus")


def test_overrides_by_op_type_and_name_glob(digits_cnn):
    model = onnxplain.load(digits_cnn)
    x = np.load(digits_cnn.parent / "samples" / "digits_reference_cnn.npy")[:5]
    plus = LRP("epsilon-plus", progress=False).explain(model, x).relevance
    by_type = LRP("lrp-0", rules={"Conv": "zplus", "Gemm": "epsilon"}, progress=False).explain(model, x).relevance
    np.testing.assert_array_equal(plus, by_type)
    flat = LRP("epsilon-plus-flat", progress=False).explain(model, x).relevance
    by_name = LRP("epsilon-plus", rules={"node_conv2d": "flat"}, progress=False).explain(model, x).relevance
    np.testing.assert_array_equal(flat, by_name)
    assert not np.allclose(plus, flat)
    glob = LRP("epsilon-plus", rules={"node_conv2d*": "epsilon"}, progress=False).explain(model, x)
    assert {layer["rule"] for layer in glob.diagnostics["layers"][0] if layer["op"] == "Conv"} == {"epsilon"}
    # a pattern that also matches activations and max-pooling applies to the layers and passes over the rest
    broad = LRP("epsilon-plus", rules={"node_*": "zplus"}, progress=False).explain(model, x)
    assert {layer["rule"] for layer in broad.diagnostics["layers"][0]} == {"zplus"}
    with pytest.raises(OnnxplainError, match="does not apply to Relu node 'node_relu': it takes no rule"):
        LRP("epsilon-plus", rules={"node_relu": "zplus"}, progress=False).explain(model, x)   # exact names checked
    with pytest.raises(OnnxplainError, match=r"MaxPool node .*each window's winner\), no rule to choose"):
        LRP("epsilon-plus", rules={"MaxPool": "z"}, progress=False).explain(model, x)
    # the tensor a node writes names it too (dynamo's node names, node_Conv_79, say little)
    by_tensor = LRP("epsilon-plus", rules={"conv2d": "flat"}, progress=False).explain(model, x).relevance
    np.testing.assert_array_equal(flat, by_tensor)
    tensors = LRP("epsilon-plus", rules={"conv2d*": "epsilon"}, progress=False).explain(model, x)
    assert {layer["rule"] for layer in tensors.diagnostics["layers"][0] if layer["op"] == "Conv"} == {"epsilon"}
    with pytest.raises(OnnxplainError, match="does not apply to Relu node 'node_relu'"):
        LRP("epsilon-plus", rules={"relu": "zplus"}, progress=False).explain(model, x)


@pytest.mark.parametrize("params, message", [
    (dict(composite="nope"), "unknown composite"),
    (dict(rules={"Conv": "magic"}), "unknown LRP rule"),
    (dict(rules={"Conv": "alphabeta:2,2"}), "alpha - beta = 1"),
])
def test_bad_parameters_are_user_errors(params, message):
    with pytest.raises(OnnxplainError, match=message):
        LRP(**params)


@pytest.mark.parametrize("rules, message", [
    ({"no_such_node": "epsilon"}, "matches no"),
    ({"Relu": "epsilon"}, "does not apply"),
    ({"node_linear_1": "zb"}, "first layers"),
    ({"Gemm": "pass"}, "input's shape"),
])
def test_rules_that_cannot_apply_are_user_errors(digits_cnn, rules, message):
    model = onnxplain.load(digits_cnn)
    x = np.load(digits_cnn.parent / "samples" / "digits_reference_cnn.npy")[:2]
    with pytest.raises(OnnxplainError, match=message):
        LRP(rules=rules, progress=False).explain(model, x)
    if "zb" in rules.values():   # given input bounds are no box of a hidden layer's input either
        with pytest.raises(OnnxplainError, match=message):
            LRP(rules=rules, low=0.0, high=1.0, progress=False).explain(model, x)


def test_positivity_statistics_match_a_per_sample_numpy_reference():
    """The negative share and the histogram of negative relevance (scaled by max |R|), computed for all samples
    at once in torch, against np.histogram sample by sample, values on and beside every bin edge included."""
    import torch

    from onnxplain.lrp.method import HISTOGRAM_BINS, positivity

    edges = np.linspace(-1.0, 0.0, HISTOGRAM_BINS + 1)
    on_edges = np.concatenate([edges, np.nextafter(edges, 1), np.nextafter(edges, -1), [-1e-300, 0.5, 1.0]])
    rng = np.random.default_rng(0)
    cases = [rng.standard_normal((5, 3, 8, 8)), np.stack([on_edges, np.zeros_like(on_edges)]),
             rng.integers(-10, 10, (6, 40)) / 10, -np.ones((2, 5)),
             np.array([[1e300, -1e-30]])]   # a ratio that underflows to -0.0 still counts as negative
    for relevance in cases:
        found = positivity(torch.from_numpy(relevance))
        for row, fraction, histogram in zip(relevance.reshape(len(relevance), -1), found["negative_fraction"],
                                            found["negative_histogram"]):
            counts, bins = np.histogram(row[row < 0] / np.abs(row).max(), bins=HISTOGRAM_BINS, range=(-1.0, 0.0))
            assert histogram["counts"] == counts.tolist() and histogram["edges"] == bins.round(3).tolist()
            assert fraction == pytest.approx(-row[row < 0].sum() / max(np.abs(row).sum(), 1e-300), rel=1e-12)


def test_an_offset_before_the_first_layer_is_preprocessing(tmp_path):
    """A net that normalises its raw input itself ((x / 255 - mean) / std, as Keras's Rescaling and Normalization
    export) gives each pixel the relevance the same net gets for that pixel when normalised outside it: the offset
    passes relevance on like the scalings around it (before, it shared R by contribution, x' / (x' - mean), which
    blew up near the mean), and deep Taylor's box follows the normalisation."""
    import warnings

    import torch

    mean, std = 0.3, 0.2

    class Body(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv, self.fc = torch.nn.Conv2d(1, 4, 3), torch.nn.Linear(4 * 6 * 6, 3)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).flatten(1))

    class Normalising(torch.nn.Module):
        def __init__(self, body):
            super().__init__()
            self.body = body

        def forward(self, x):
            return self.body((x / 255 - mean) / std)

    body = Body().eval()
    paths = {}
    for name, net in (("inside", Normalising(body)), ("outside", body)):
        paths[name] = tmp_path / f"{name}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (torch.rand(2, 1, 8, 8),), str(paths[name]), dynamo=False, opset_version=13,
                              input_names=["x"], dynamic_axes={"x": {0: "N"}})
    inside, outside = onnxplain.load(paths["inside"]), onnxplain.load(paths["outside"])
    raw = np.random.default_rng(0).integers(0, 256, size=(3, 1, 8, 8)).astype(np.float32)
    normalised = (raw / 255 - mean) / std
    low, high = (0 - mean) / std, (1 - mean) / std
    for method, given, box in ((LRP, {}, {}), (LRP, {"composite": "lrp-0"}, {}),
                               (DeepTaylor, {"low": 0.0, "high": 255.0}, {"low": low, "high": high})):
        ours = method(progress=False, **given).explain(inside, raw)
        want = method(progress=False, **{k: v for k, v in given.items() if k == "composite"}, **box).explain(
            outside, normalised)
        np.testing.assert_allclose(ours.relevance, want.relevance, rtol=1e-4, atol=1e-6 * np.abs(want.relevance).max())
        assert np.abs(ours.diagnostics["conservation_error"]).max() < 1e-5


def test_a_zero_stabiliser_gives_zero_where_a_sum_is_zero(tmp_path):
    """z:0 over a global average pool whose channel is dead (all zero) divided 0 by 0: the whole map turned NaN.
    There a zero sum now passes no relevance, and the map is what a tiny stabiliser gives."""
    import warnings

    import torch

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 3, 3)
    with torch.no_grad():
        conv.bias[1] = -100.0   # channel 1 never fires
        conv.weight[1].clamp_(max=0)   # and has no positive part: z+ = 0 there
    net = torch.nn.Sequential(conv, torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(3, 2)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.rand(2, 1, 8, 8),), str(tmp_path / "dead.onnx"), dynamo=False, opset_version=13,
                          input_names=["x"], dynamic_axes={"x": {0: "N"}})
    model = onnxplain.load(tmp_path / "dead.onnx")
    x = np.random.default_rng(0).random((2, 1, 8, 8)).astype(np.float32)
    exact = LRP("lrp-0", rules={"*": "z:0"}, progress=False).explain(model, x)
    tiny = LRP("lrp-0", rules={"*": "z:1e-12"}, progress=False).explain(model, x)
    assert np.isfinite(exact.relevance).all()
    np.testing.assert_allclose(exact.relevance, tiny.relevance, rtol=1e-5, atol=1e-9)
    for batch in (x, x[:1]):   # z+ on the dead channel: no positive part, no stabiliser (both of its code paths)
        plus = LRP(stabilizer=0, progress=False).explain(model, batch)
        assert np.isfinite(plus.relevance).all() and np.isfinite(plus.diagnostics["conservation_error"]).all()


def test_zb_passes_no_relevance_to_a_constant_padding(tmp_path):
    """z^B on a convolution after a Pad with a fill of 0.7: there the box is the one point x = low = high, whose
    contributions x w - l w+ - h w- are zero. Computed as three products, float32 left a residue that R / (z + eps)
    magnified (windows over the padding alone have z = 0): conservation was off by 150%. As (x - l) w+ + (x - h) w-
    they are exactly zero, and such a window's relevance goes to the stabiliser, as the ledger says."""
    rng = np.random.default_rng(0)
    initializers = {"p": np.array([0, 0, 3, 3, 0, 0, 3, 3], np.int64), "v": np.array(0.7, np.float32),
                    "w": rng.normal(size=(4, 2, 3, 3)).astype(np.float32),
                    "b": rng.normal(0, 0.1, size=4).astype(np.float32),
                    "d": rng.normal(size=(4 * 10 * 10, 3)).astype(np.float32)}
    nodes = [helper.make_node("Pad", ["x", "p", "v"], ["padded"]),
             helper.make_node("Conv", ["padded", "w", "b"], ["c"]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("MatMul", ["f", "d"], ["y"])]
    graph = helper.make_graph(nodes, "pad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                              [numpy_helper.from_array(v, k) for k, v in initializers.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), tmp_path / "p.onnx")
    model = onnxplain.load(tmp_path / "p.onnx")
    x = rng.uniform(-1, 1, (4, 2, 6, 6)).astype(np.float32)
    explanation = LRP("epsilon-gamma-box", low=-1.0, high=1.0, progress=False).explain(model, x)
    assert explanation.diagnostics["layers"][0][1]["rule"] == "zb"
    assert np.abs(explanation.diagnostics["conservation_error"]).max() < 1e-5
