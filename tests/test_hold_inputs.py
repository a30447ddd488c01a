"""Models of several inputs: one explained, the others held at given values (`onnxplain.hold`), against
onnxruntime fed every input, torch autograd and zennit with the held values fixed, and hand-written LRP shares."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper

import onnxplain
from onnxplain.errors import OnnxplainError
from onnxplain.lrp import LRP
from onnxplain.methods import make_method
from onnxplain.targets import Target

from hold_graphs import CONCAT, MASKED, META, MIXED, MIXED_HOLD, concat_model, mask_model, mixed_model


def concat_torch(x: torch.Tensor, meta: np.ndarray) -> torch.Tensor:
    """The concat model in torch, meta fixed."""
    w = {name: torch.from_numpy(value) for name, value in CONCAT.items()}
    features = F.relu(F.conv2d(x, w["w"], w["b"])).flatten(1)
    joined = torch.cat([features, torch.from_numpy(meta).expand(len(x), -1)], 1)
    return joined @ w["g"] + w["gb"]


def reference_scores(path, x: np.ndarray, name: str, held: dict) -> np.ndarray:
    """onnxruntime on the original graph fed every input, a sample at a time (a graph exported for batches of 1
    takes no more): per-sample held values given their batch axis."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    declared = {value.name: len(value.shape) for value in session.get_inputs()}
    feed = {key: value[None] if 0 < np.ndim(value) < declared[key] else np.asarray(value)
            for key, value in held.items()}
    return np.concatenate([session.run(None, feed | {name: x[i:i + 1]})[0] for i in range(len(x))])


# ---------------------------------------------------------------- forward passes
@pytest.mark.parametrize("batch", ["N", 1])
@pytest.mark.parametrize("rows", [1, 3])
def test_scores_equal_onnxruntime_fed_both_inputs(tmp_path, batch, rows):
    path = concat_model(tmp_path / "concat.onnx", batch)
    model = onnxplain.load(path, hold={"meta": META})
    assert model.input_name == "image" and model.input_shape == (None, 1, 8, 8)
    x = np.random.default_rng(rows).random((rows, 1, 8, 8), np.float32)
    np.testing.assert_allclose(model.scores(x), reference_scores(path, x, "image", {"meta": META}), rtol=1e-6)
    with_batch = onnxplain.load(path, hold={"meta": META[None]})   # the sample with its batch axis of 1
    np.testing.assert_array_equal(with_batch.scores(x), model.scores(x))


def test_inputs_of_fixed_size_rank_zero_integers_and_booleans(tmp_path):
    """A held (3,) without batch axis and a rank-0 temperature are taken whole; int64 ids and boolean flags are
    held per sample; all in the input's own type."""
    path = mixed_model(tmp_path / "mixed.onnx")
    model = onnxplain.load(path, hold=MIXED_HOLD)
    x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    np.testing.assert_allclose(model.scores(x), reference_scores(path, x, "x", MIXED_HOLD), rtol=1e-6)
    assert {name: held.batched for name, held in model.held.items()} == {
        "scale": False, "t": False, "category": True, "flag": True}
    gradient, _ = model.torch().gradient(x, Target(index=1))   # x scaled and read twice: x_0 at column 5 too
    expected = MIXED_HOLD["scale"] / MIXED_HOLD["t"] * (MIXED["g"][:3, 1] + np.r_[MIXED["g"][5, 1], 0, 0])
    np.testing.assert_allclose(gradient, np.broadcast_to(expected, x.shape), rtol=1e-5)


def test_verification_feeds_the_held_values_to_the_original(tmp_path, monkeypatch):
    """The normalised graph is checked against the original fed the same held values: a rewrite that held another
    value is caught on loading."""
    import onnxplain.model as model_module
    from onnxplain.hold import Held, hold_inputs

    path = concat_model(tmp_path / "concat.onnx")
    onnxplain.load(path, hold={"meta": META})
    monkeypatch.setattr(model_module, "hold_inputs", lambda model, held: hold_inputs(
        model, {name: Held(name, item.value + 1, item.batched) for name, item in held.items()}))
    with pytest.raises(OnnxplainError, match="normalising this model changed output 'logits'"):
        onnxplain.load(path, hold={"meta": META})


def test_an_input_no_node_reads_needs_no_hold(tmp_path):
    """An input no node reads is left out on loading, as with one input: only meta needs holding (holding the unread
    one too does nothing); inspect names its role."""
    import json

    from click.testing import CliRunner

    from onnxplain.cli.main import cli

    proto = onnx.load(concat_model(tmp_path / "concat.onnx"))
    proto.graph.input.append(helper.make_tensor_value_info("spare", TensorProto.FLOAT, ["N", 2]))
    onnx.save(proto, tmp_path / "spare.onnx")
    x = np.random.default_rng(0).random((2, 1, 8, 8), np.float32)
    model = onnxplain.load(tmp_path / "spare.onnx", hold={"meta": META})
    assert "graph input(s) 'spare' read by no node: left out" in model.notes
    also = onnxplain.load(tmp_path / "spare.onnx", hold={"meta": META, "spare": np.zeros(2, np.float32)})
    np.testing.assert_array_equal(also.scores(x), model.scores(x))
    info = json.loads(CliRunner().invoke(cli, ["inspect", str(tmp_path / "spare.onnx"), "--json"]).stdout)
    assert [row["role"] for row in info["inputs"]] == ["unheld", "unheld", "unused"]
    assert info["hold_needed"] == ["image", "meta"]


# ---------------------------------------------------------------- refusals
@pytest.mark.parametrize("hold, message", [
    ({"metadata": META}, r"cannot hold 'metadata': not an input of this model \(its inputs: image, meta\)"),
    (None, r"this model has 2 inputs \(image, meta\): onnxplain explains one, with the others held at given values; "
           r"hold all of image, meta but the one to explain"),
    ({"meta": META, "image": np.zeros((1, 8, 8), np.float32)}, r"every input is held \(image, meta\)"),
    ({"meta": META[:2]}, r"held input 'meta': shape 2 does not fit the model's one sample of 3 \(with or without"),
    ({"meta": np.stack([META, META])}, r"held input 'meta': shape 2x3 does not fit"),
    ({"meta": np.array([0.5, np.nan, 1], np.float32)}, r"held input 'meta' holds NaN or infinite values"),
    ({"meta": np.array([0.5, np.inf, 1])}, r"held input 'meta' holds NaN or infinite values"),
    ({"meta": np.array([1e39, 0, 1])}, r"held input 'meta': its values \(0 to 1e\+39\) do not all fit the model's "
                                       "float32"),
    ({"meta": META.astype(np.complex64)}, r"held input 'meta': dtype complex64 does not fit the model's float32"),
    ({"meta": np.array(["a", "b", "c"])}, r"held input 'meta': dtype <U1 does not fit the model's float32"),
    ("meta", r"hold must map input names to arrays"),
])
def test_refusals(tmp_path, hold, message):
    path = concat_model(tmp_path / "concat.onnx")
    with pytest.raises(OnnxplainError, match=message):
        onnxplain.load(path, hold=hold)


def test_refusals_of_values_that_change_in_the_input_type(tmp_path):
    path = mixed_model(tmp_path / "mixed.onnx")
    for name, value, message in [("category", np.array([2.5]), r"do not all fit the model's int64 \(fractions"),
                                 ("flag", np.array([2]), "do not all fit the model's bool"),
                                 ("scale", np.ones((1, 3), np.float32), r"shape 1x3 does not fit the model's 3$"),
                                 ("t", np.ones(1, np.float32), "shape 1 does not fit the model's a single number")]:
        with pytest.raises(OnnxplainError, match=message):
            onnxplain.load(path, hold=MIXED_HOLD | {name: value})
    held = onnxplain.load(path, hold=MIXED_HOLD | {"category": np.array([3.0]), "scale": [1.0, 2.0, -0.5]}).held
    assert held["category"].value.dtype == np.int64 and held["scale"].value.dtype == np.float32


def test_old_opsets_no_inputs_and_torch_values(tmp_path):
    """Opset 7 has no Expand: holding is refused in one line; a graph without inputs keeps its own message; a held
    value may be a torch tensor."""
    path = concat_model(tmp_path / "concat.onnx")
    proto = onnx.load(path)
    proto.opset_import[0].version = 7
    onnx.save(proto, tmp_path / "old.onnx")
    with pytest.raises(OnnxplainError, match="holding inputs needs opset 8 or later .*this model has opset 7"):
        onnxplain.load(tmp_path / "old.onnx", hold={"meta": META})
    graph = helper.make_graph([helper.make_node("Identity", ["c"], ["y"])], "none", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
                              [onnx.numpy_helper.from_array(np.ones((1, 2), np.float32), "c")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "none.onnx")
    with pytest.raises(OnnxplainError, match="onnxplain explains models with one input; this one has 0"):
        onnxplain.load(tmp_path / "none.onnx")
    held = onnxplain.load(path, hold={"meta": torch.from_numpy(META).requires_grad_(True)}).held["meta"]
    np.testing.assert_array_equal(held.value, META[None])


# ---------------------------------------------------------------- gradients and LRP
def test_gradient_equals_torch_autograd_with_meta_fixed(tmp_path):
    model = onnxplain.load(concat_model(tmp_path / "concat.onnx"), hold={"meta": META})
    x = np.random.default_rng(0).random((3, 1, 8, 8), np.float32)
    explanation = make_method("gradient", progress=False).explain(model, x)
    inputs = torch.from_numpy(x).requires_grad_(True)
    logits = concat_torch(inputs, META)
    chosen = logits[torch.arange(3), torch.as_tensor(explanation.target)]
    (expected,) = torch.autograd.grad(chosen.sum(), inputs)
    np.testing.assert_allclose(explanation.relevance, expected.numpy(), rtol=1e-5, atol=1e-6)


class ConcatNet(torch.nn.Module):
    """The concat model as a torch module of two inputs (for zennit)."""

    def __init__(self):
        super().__init__()
        self.conv, self.dense = torch.nn.Conv2d(1, 4, 3), torch.nn.Linear(4 * 6 * 6 + 3, 5)
        for parameter, value in ((self.conv.weight, CONCAT["w"]), (self.conv.bias, CONCAT["b"]),
                                 (self.dense.weight, CONCAT["g"].T), (self.dense.bias, CONCAT["gb"])):
            parameter.data = torch.from_numpy(value.copy())

    def forward(self, image, meta):
        return self.dense(torch.cat([torch.relu(self.conv(image)).flatten(1), meta], 1))


def zennit_relevance(x: np.ndarray, meta: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """zennit's EpsilonPlus relevance of the image, and the relevance summed over the meta entries."""
    from zennit.composites import EpsilonPlus

    image = torch.from_numpy(x).requires_grad_(True)
    held = torch.from_numpy(meta).expand(len(x), -1).clone().requires_grad_(True)
    with EpsilonPlus().context(ConcatNet().eval()) as net:
        logits = net(image, held)
        seed = torch.eye(logits.shape[1])[torch.as_tensor(classes)] * logits.detach()
        at_image, at_held = torch.autograd.grad(logits, [image, held], seed)
    return at_image.numpy(), at_held.sum(1).double().numpy()


def test_lrp_equals_zennit_and_reports_the_held_share(tmp_path):
    """epsilon-plus as zennit computes it on the torch twin with meta as a second input: the image's relevance,
    and what reaches meta (its share of the Gemm, meta . g[:, c] up to epsilon), reported as held_relevance;
    input + bias + stabiliser + held = f(x)."""
    model = onnxplain.load(concat_model(tmp_path / "concat.onnx"), hold={"meta": META})
    x = np.random.default_rng(0).random((3, 1, 8, 8), np.float32)
    explanation = LRP(progress=False).explain(model, x)
    report, classes = explanation.diagnostics, explanation.target
    image, held = zennit_relevance(x, META, classes)
    np.testing.assert_allclose(explanation.relevance, image, rtol=1e-4, atol=1e-4 * np.abs(image).max())
    np.testing.assert_allclose(report["held_relevance"], held, rtol=1e-4)
    np.testing.assert_allclose(held, META @ CONCAT["g"][144:, classes], rtol=1e-4)
    total = np.add(report["input_relevance"], report["bias_relevance"]) + report["stabiliser_relevance"]
    np.testing.assert_allclose(total + report["held_relevance"], explanation.score, rtol=1e-5)
    assert np.abs(report["conservation_error"]).max() < 1e-5
    one = LRP(progress=False).explain(model, x[1:2]).diagnostics   # alone: the same share
    np.testing.assert_allclose(one["held_relevance"], report["held_relevance"][1:2], rtol=1e-6)


def test_lrp_through_a_held_mask_and_a_held_branch_without_rules(tmp_path):
    """A held mask multiplies the input (a gate: relevance passes to x, none to masked positions); a held vector
    passes a Softmax, which has no LRP rule but runs as a constant, and is added to the logits, keeping its share
    softmax(meta) @ m of class c."""
    mask = (np.arange(10) < 7).astype(np.float32)[None]
    meta = np.array([0.3, -0.2], np.float32)
    model = onnxplain.load(mask_model(tmp_path / "mask.onnx"), hold={"mask": mask, "meta": meta})
    x = np.random.default_rng(1).normal(size=(3, 2, 10)).astype(np.float32)
    np.testing.assert_allclose(model.scores(x), reference_scores(tmp_path / "mask.onnx", x, "seq",
                                                                 {"mask": mask, "meta": meta}), rtol=1e-5)
    for composite in ("epsilon-plus", "lrp-0"):
        explanation = LRP(composite, progress=False).explain(model, x)
        report = explanation.diagnostics
        assert np.abs(report["conservation_error"]).max() < 1e-5
        assert not explanation.relevance[:, :, 7:].any()
        softmax = np.exp(meta) / np.exp(meta).sum()
        held = (softmax @ MASKED["m"])[explanation.target]
        np.testing.assert_allclose(report["held_relevance"], held * explanation.score /
                                   (explanation.score + 1e-6 * np.sign(explanation.score)), rtol=1e-5)
        assert report["bias_relevance"] == [0.0, 0.0, 0.0]


def test_lrp_report_has_no_held_term_without_held_inputs(digits_cnn_model):
    x = np.random.default_rng(0).random((1, 1, 28, 28), np.float32)
    assert "held_relevance" not in LRP(progress=False).explain(digits_cnn_model, x).diagnostics


# ---------------------------------------------------------------- window methods
def test_occlusion_equals_a_loop_over_onnxruntime_fed_both(tmp_path):
    path = concat_model(tmp_path / "concat.onnx")
    model = onnxplain.load(path, hold={"meta": META})
    x = np.random.default_rng(2).random((1, 1, 8, 8), np.float32)
    explanation = make_method("occlusion", window=4, stride=4, progress=False).explain(model, x, Target(index=2))
    base = reference_scores(path, x, "image", {"meta": META})[0, 2]
    expected = np.zeros_like(x)
    for top in (0, 4):
        for left in (0, 4):
            covered = x.copy()
            covered[..., top:top + 4, left:left + 4] = 0
            drop = base - reference_scores(path, covered, "image", {"meta": META})[0, 2]
            expected[..., top:top + 4, left:left + 4] = drop
    np.testing.assert_allclose(explanation.relevance, expected, rtol=1e-4, atol=1e-5)


def test_pda_incremental_equals_onnxruntime_and_keeps_held_models_apart(tmp_path, private_cache, monkeypatch):
    """PDA's incremental torch passes give onnxruntime's numbers; the held input's batch is read off the rows' crop
    without building their whole input; the conditional sampler fitted (and cached) for one held value serves
    another only as the input distribution it models: each model's own scores decide its map."""
    from onnxplain.incremental import WindowRunner
    from onnxplain.methods.samplers import ConditionalSampler

    path = concat_model(tmp_path / "concat.onnx")
    model = onnxplain.load(path, hold={"meta": META})
    x = np.random.default_rng(3).random((1, 1, 8, 8), np.float32)
    reference = np.random.default_rng(4).random((12, 1, 8, 8), np.float32)
    made_whole = []
    original_whole = WindowRunner._whole
    monkeypatch.setattr(WindowRunner, "_whole", lambda self, name, crop, rows: (
        made_whole.append(name), original_whole(self, name, crop, rows))[1])
    params = dict(window=2, samples=4, reference=reference, progress=False)
    onnx_passes = make_method("pda", **params).explain(model, x)
    incremental = make_method("pda", device="cpu", **params).explain(model, x)
    np.testing.assert_allclose(incremental.relevance, onnx_passes.relevance, rtol=1e-4, atol=1e-5)
    assert made_whole and "image" not in made_whole   # the Shape of the input read its size alone
    other = onnxplain.load(path, hold={"meta": -META})
    cached = make_method("pda", **params).explain(other, x)
    assert cached.diagnostics["sampler_cache"] is True
    fresh = make_method("pda", sampler=ConditionalSampler(padding=2, cache=False), **params).explain(other, x)
    np.testing.assert_allclose(cached.relevance, fresh.relevance, rtol=1e-6)
    assert np.abs(cached.relevance - onnx_passes.relevance).max() > 1e-3


# ---------------------------------------------------------------- a torch export of two inputs
class ImageMeta(torch.nn.Module):
    """A small CNN whose dense layers also read a metadata vector."""

    def __init__(self):
        super().__init__()
        self.conv, self.pool = torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.MaxPool2d(2)
        self.dense, self.head = torch.nn.Linear(4 * 4 * 4 + 3, 8), torch.nn.Linear(8, 5)

    def forward(self, image, meta):
        features = self.pool(torch.relu(self.conv(image))).flatten(1)
        return self.head(torch.relu(self.dense(torch.cat([features, meta], 1))))


def test_a_torch_export_of_two_inputs(tmp_path):
    """torch.onnx.export (legacy) with two arguments: scores, gradients (torch autograd with meta fixed) and
    epsilon-plus LRP (zennit, meta a second input) of the image, meta held."""
    import warnings

    from zennit.composites import EpsilonPlus

    torch.manual_seed(0)
    net = ImageMeta().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.rand(2, 1, 8, 8), torch.rand(2, 3)), str(tmp_path / "two.onnx"), dynamo=False,
                          opset_version=13, input_names=["image", "meta"], output_names=["y"],
                          dynamic_axes={"image": {0: "N"}, "meta": {0: "N"}, "y": {0: "N"}})
    model = onnxplain.load(tmp_path / "two.onnx", hold={"meta": META})
    x = np.random.default_rng(5).random((4, 1, 8, 8), np.float32)
    image, held = torch.from_numpy(x).requires_grad_(True), torch.from_numpy(META).expand(4, -1)
    logits = net(image, held)
    np.testing.assert_allclose(model.scores(x), logits.detach().numpy(), rtol=1e-5, atol=1e-6)
    gradient = make_method("gradient", progress=False).explain(model, x, Target(index=3))
    (expected,) = torch.autograd.grad(logits[:, 3].sum(), image)
    np.testing.assert_allclose(gradient.relevance, expected.numpy(), rtol=1e-4, atol=1e-6)
    explanation = LRP(progress=False).explain(model, x)
    held = held.clone().requires_grad_(True)
    with EpsilonPlus().context(net) as modified:
        out = modified(image, held)
        seed = torch.eye(5)[torch.as_tensor(explanation.target)] * out.detach()
        at_image, at_held = torch.autograd.grad(out, [image, held], seed)
    scale = np.abs(at_image.numpy()).max()
    np.testing.assert_allclose(explanation.relevance, at_image.numpy(), rtol=1e-4, atol=1e-4 * scale)
    np.testing.assert_allclose(explanation.diagnostics["held_relevance"], at_held.sum(1).numpy(), rtol=1e-4,
                               atol=1e-6)
    assert np.abs(explanation.diagnostics["conservation_error"]).max() < 1e-5
