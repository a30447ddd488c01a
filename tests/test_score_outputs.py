"""Which output holds the class scores: log-probabilities (LogSoftmax) read as probabilities through their exp; several
outputs; softmaxes that are no class scores (binary classifiers: tests/test_score_binary.py)."""
from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

import onnxplain
from onnxplain.cli.main import cli
from onnxplain.methods import make_method
from onnxplain.metrics.perturbation import explained_scores
from onnxplain.targets import Target

from legacy_export import export


class Net(torch.nn.Module):
    """(N, 6) -> 3 logits, then log-softmax or softmax."""

    def __init__(self, last):
        super().__init__()
        torch.manual_seed(0)
        self.hidden, self.out, self.last = torch.nn.Linear(6, 8), torch.nn.Linear(8, 3), last

    def logits(self, x):
        return self.out(torch.relu(self.hidden(x)))

    def forward(self, x):
        return self.last(self.logits(x), dim=1)


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """The same net ending in log_softmax and in softmax, exported, with a batch of inputs."""
    folder = tmp_path_factory.mktemp("twins")
    log_net, soft_net = Net(torch.log_softmax), Net(torch.softmax)
    x = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)
    return log_net, export(log_net, folder / "log.onnx"), export(soft_net, folder / "soft.onnx"), x


def test_log_softmax_output_is_read_through_its_exp(twins):
    net, log_path, _, x = twins
    model = onnxplain.load(log_path)
    with torch.no_grad():
        logits = net.logits(torch.from_numpy(x)).double().numpy()
        log_p = torch.log_softmax(torch.from_numpy(logits), 1).numpy()
    assert model.score_kind == "probabilities" and model.score_output != "y"
    assert "LogSoftmax" in model.score_reason and any("log-probabilities" in note for note in model.notes)
    np.testing.assert_allclose(model.scores(x), np.exp(log_p), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(model.scores(x).sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(model.run(x, ["y"])["y"], log_p, rtol=1e-5, atol=1e-6)   # the original output stays
    np.testing.assert_allclose(model.logits(x), logits, rtol=1e-5, atol=1e-6)
    classes = np.argmax(logits, 1)
    np.testing.assert_allclose(explained_scores(model, x, classes, "probability"),
                               np.exp(log_p)[np.arange(4), classes], rtol=1e-5)
    assert onnxplain.load(log_path, scores="y").score_output == model.score_output   # named by its own output
    with pytest.raises(onnxplain.OnnxplainError, match="'y_probabilities' is not an output of this model"):
        onnxplain.load(log_path, scores="y_probabilities")


def test_pda_on_log_softmax_equals_its_softmax_twin(twins):
    _, log_path, soft_path, x = twins
    reference = np.random.default_rng(1).normal(size=(20, 6)).astype(np.float32)
    method = make_method("pda", sampler="marginal", samples=5, reference=reference, progress=False)
    got = method.explain(onnxplain.load(log_path), x, Target(index=1))
    want = method.explain(onnxplain.load(soft_path), x, Target(index=1))
    assert np.isfinite(got.relevance).all() and np.abs(got.relevance).max() > 0
    assert got.diagnostics["score"] == want.diagnostics["score"] == "weight of evidence"
    np.testing.assert_allclose(got.relevance, want.relevance, rtol=1e-3, atol=1e-5)


def test_gradient_explains_the_logit_before_log_softmax(twins):
    net, log_path, _, x = twins
    batch = torch.from_numpy(x).requires_grad_(True)
    net.logits(batch)[:, 2].sum().backward()
    explanation = make_method("gradient", progress=False).explain(onnxplain.load(log_path), x, Target(index=2))
    np.testing.assert_allclose(explanation.relevance, batch.grad.numpy(), rtol=1e-4, atol=1e-6)
    assert explanation.diagnostics["score_kind"] == "logits"


def test_contrastive_log_likelihood_is_the_log_softmax(twins):

    net, log_path, _, x = twins
    model = onnxplain.load(log_path)
    got = model.torch().log_likelihood(torch.from_numpy(x)).detach().double().numpy()
    with torch.no_grad():
        np.testing.assert_allclose(got, net(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-5)


def test_predict_shows_probabilities_of_a_log_softmax_model(twins, tmp_path):
    net, log_path, _, x = twins
    np.save(tmp_path / "x.npy", x[:1])
    result = CliRunner().invoke(cli, ["predict", str(log_path), str(tmp_path / "x.npy"), "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    with torch.no_grad():
        want = torch.softmax(net.logits(torch.from_numpy(x[:1])), 1)[0].numpy()
    assert row["kind"] == "probabilities"
    np.testing.assert_allclose(sorted(r["score"] for r in row["top"]), sorted(want), rtol=1e-5)


def two_heads(path, softmax_on_aux=False):
    """x (N, 4) -> logits (N, 10) first, aux (N, 2) second (through a Softmax if asked), and an int64 argmax."""
    from onnx import TensorProto, helper, numpy_helper
    import onnx

    rng = np.random.default_rng(3)
    aux = "aux_raw" if softmax_on_aux else "aux"
    nodes = [helper.make_node("Gemm", ["x", "w"], ["logits"]), helper.make_node("Gemm", ["x", "v"], [aux]),
             helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0)]
    nodes += [helper.make_node("Softmax", ["aux_raw"], ["aux"], axis=1)] if softmax_on_aux else []
    weights = [numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), name)
               for name, shape in (("w", (4, 10)), ("v", (4, 2)))]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10]),
               helper.make_tensor_value_info("aux", TensorProto.FLOAT, ["N", 2]),
               helper.make_tensor_value_info("label", TensorProto.INT64, ["N"])]
    graph = helper.make_graph(nodes, "heads", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              outputs, weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path, {w.name: numpy_helper.to_array(w) for w in weights}


def test_several_float_outputs_default_to_the_first_and_scores_picks_one(tmp_path):
    path, weights = two_heads(tmp_path / "heads.onnx")
    x = np.random.default_rng(4).normal(size=(3, 4)).astype(np.float32)
    model = onnxplain.load(path)
    assert model.score_output == "logits" and model.class_count() == 10
    assert "first of the float outputs (logits, aux)" in model.score_reason
    np.testing.assert_allclose(model.scores(x), x @ weights["w"], rtol=1e-5)
    chosen = onnxplain.load(path, scores="aux")
    assert chosen.score_output == "aux" and chosen.class_count() == 2 and "chosen by name" in chosen.score_reason
    np.testing.assert_allclose(chosen.scores(x), x @ weights["v"], rtol=1e-5)
    for name, problem in (("nope", "is not an output of this model"), ("label", "is not a floating-point output")):
        with pytest.raises(onnxplain.OnnxplainError, match=f"{problem}; class scores can come from: logits, aux"):
            onnxplain.load(path, scores=name)
    softmax_path, _ = two_heads(tmp_path / "softmax.onnx", softmax_on_aux=True)
    assert onnxplain.load(softmax_path).score_output == "aux"   # a probability op still wins
    assert onnxplain.load(softmax_path, scores="logits").score_kind == "logits"


def test_scores_option_on_the_commands(tmp_path):
    path, weights = two_heads(tmp_path / "heads.onnx")
    x = np.random.default_rng(5).normal(size=(1, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    described = CliRunner().invoke(cli, ["inspect", str(path), "--scores", "aux", "--json"])
    assert described.exit_code == 0 and json.loads(described.stdout)["class_scores"]["output"] == "aux"
    predicted = CliRunner().invoke(cli, ["predict", str(path), str(tmp_path / "x.npy"), "--scores", "aux", "--json"])
    (row,) = json.loads(predicted.stdout)
    np.testing.assert_allclose(sorted(r["score"] for r in row["top"]), sorted((x @ weights["v"])[0]), rtol=1e-5)
    explained = CliRunner().invoke(cli, ["explain", str(path), str(tmp_path / "x.npy"), "--scores", "aux", "--method",
                                         "gradient", "--target", "1", "--save-npy", str(tmp_path / "r.npy"), "--quiet"])
    assert explained.exit_code == 0, explained.output
    np.testing.assert_allclose(np.load(tmp_path / "r.npy").reshape(-1), weights["v"][:, 1], rtol=1e-5)
    for command in ("inspect", "predict", "explain", "evaluate"):
        failed = CliRunner().invoke(cli, [command, str(path)] + ([str(tmp_path / "x.npy")] if command != "inspect"
                                                                  else []) + ["--scores", "label"])
        assert failed.exit_code == 2 and len(failed.stderr.strip().splitlines()) == 1, failed.output
        assert "'label' is not a floating-point output; class scores can come from: logits, aux" in failed.stderr


class Attending(torch.nn.Module):
    """(N, 5, 4) tokens -> logits (N, 3) and the attention map softmax(q k^T) (N, 5, 5); or a log-softmax over the
    batch axis as the only output."""

    def __init__(self, over_batch=False):
        super().__init__()
        torch.manual_seed(2)
        self.out, self.over_batch = torch.nn.Linear(4, 3), over_batch

    def forward(self, x):
        logits = self.out(x.mean(1))
        if self.over_batch:
            return torch.log_softmax(logits, dim=0)
        return logits, torch.softmax(x @ x.transpose(1, 2), dim=-1)


def test_softmaxes_that_are_no_class_scores(tmp_path):
    """A softmax is read as class probabilities only over the last axis of an (N, K) output: an attention map output
    after the logits leaves the logits as the class scores; a log-softmax over the batch mixes the samples, and such a
    model is refused."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Attending().eval(), (torch.rand(2, 5, 4),), str(tmp_path / "att.onnx"), dynamo=False,
                          opset_version=13, input_names=["x"], output_names=["logits", "attention"],
                          dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}, "attention": {0: "N"}})
    model = onnxplain.load(tmp_path / "att.onnx")
    assert (model.score_output, model.score_kind, model.class_count()) == ("logits", "logits", 3)
    with pytest.raises(onnxplain.OnnxplainError, match="depends on the other samples of its batch"):
        onnxplain.load(export(Attending(over_batch=True), tmp_path / "batch.onnx", shape=(2, 5, 4)))


def test_scores_takes_a_zipmap_output_by_its_name(tmp_path):
    """A scikit-learn model's probabilities behind a ZipMap (read from the tensor under it): --scores takes the
    name the model declares."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(3)
    x = rng.normal(size=(30, 4)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        estimator = LogisticRegression().fit(x, rng.integers(0, 3, 30))
    path = tmp_path / "zipped.onnx"
    path.write_bytes(to_onnx(estimator, x[:1]).SerializeToString())
    assert "ZipMap" in {node.op_type for node in onnx.load(path).graph.node}
    model = onnxplain.load(path, scores="output_probability")
    np.testing.assert_allclose(model.scores(x), estimator.predict_proba(x), rtol=1e-4, atol=1e-6)


class Headed(torch.nn.Module):
    """Softmax over the class axis of an (N, K, 1, 1) head, then flattened; or a log-softmax over (N, K) logits,
    then reshaped (torch writes no shapes, so the op's own rank is unknown before inference); or, at opset 11, a
    softmax over the batch axis."""

    def __init__(self, kind):
        super().__init__()
        torch.manual_seed(4)
        self.kind, self.conv, self.fc = kind, torch.nn.Conv2d(6, 5, 1), torch.nn.Linear(6, 5)

    def forward(self, x):
        if self.kind == "head":
            return torch.softmax(self.conv(x[:, :, None, None]), dim=1).flatten(1)
        if self.kind == "log":
            return torch.log_softmax(self.fc(x), dim=1).view(-1, 5)
        return torch.softmax(self.fc(x), dim=0)


@pytest.mark.parametrize("kind, probabilities", [("head", True), ("log", True), ("batch", False)])
def test_softmax_heads_behind_reshapes(kind, probabilities, tmp_path):
    path = tmp_path / f"{kind}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Headed(kind).eval(), (torch.rand(2, 6),), str(path), dynamo=False,
                          opset_version=11 if kind == "batch" else 13, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    if kind == "batch":   # a softmax across the samples: no score is a sample's own
        with pytest.raises(onnxplain.OnnxplainError, match="depends on the other samples of its batch"):
            onnxplain.load(path)
        return
    model = onnxplain.load(path)
    x = np.random.default_rng(2).normal(size=(3, 6)).astype(np.float32)
    assert (model.score_kind == "probabilities") == probabilities, model.score_reason
    if probabilities:
        np.testing.assert_allclose(model.scores(x).sum(1), 1.0, rtol=1e-5)


def test_logits_that_are_the_input_itself(tmp_path):
    """A graph that only squashes its input (x -> Sigmoid -> Flatten): the logits are the input, which
    onnxruntime cannot return as an output; `run` answers it with the input (was: 'no tensor named x')."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Flatten", ["s"], ["y"])],
                              "squash", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])])
    onnx.save(helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)]), tmp_path / "squash.onnx")
    model = onnxplain.load(tmp_path / "squash.onnx")
    x = np.random.default_rng(0).random((2, 3)).astype(np.float32)
    assert model.logits_output == "x"
    np.testing.assert_array_equal(model.logits(x), x.astype(np.float64))
    gradient = make_method("gradient", progress=False).explain(model, x)
    np.testing.assert_allclose(gradient.score, x.max(axis=1), rtol=1e-6)
    np.testing.assert_array_equal(gradient.relevance, np.eye(3, dtype=np.float32)[x.argmax(axis=1)])


def test_a_map_output_is_named_a_map_of_flattened_scores(tmp_path):
    """A segmentation net's (N, 3, 4, 4) output is read as 48 scores, flattened: inspect said only 'logits', and
    predict and explain listed 'class 37' with no word that it is one unit of the map."""
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.random.default_rng(0).normal(size=(3, 2, 1, 1)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["seg"])], "segmenter",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 4, 4])],
                              [helper.make_tensor_value_info("seg", TensorProto.FLOAT, ["N", 3, 4, 4])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "seg.onnx")
    np.save(tmp_path / "x.npy", np.ones((2, 4, 4), np.float32))
    note = "output 'seg' holds a 3×4×4 map per sample, read as 48 class scores"
    described = CliRunner().invoke(cli, ["inspect", str(tmp_path / "seg.onnx")])
    assert described.exit_code == 0 and "a 3×4×4 map per sample, read flattened as 48 scores" in described.stdout
    for command in (["predict"], ["explain", "--method", "gradient", "--quiet"]):
        result = CliRunner().invoke(cli, [command[0], str(tmp_path / "seg.onnx"), str(tmp_path / "x.npy"),
                                          *command[1:]])
        assert result.exit_code == 0 and note in result.stderr, result.output
    hidden = CliRunner().invoke(cli, ["explain", str(tmp_path / "seg.onnx"), str(tmp_path / "x.npy"), "--method",
                                      "gradient", "--layer", "seg", "--target", "1", "--quiet"])
    assert hidden.exit_code == 0 and not hidden.stderr, hidden.output
