"""`onnxplain evaluate`: files written, numbers that agree with the Python API, labels read by name, default methods
and what the report says (user errors: `test_cli_evaluate_refusals.py`)."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from cli_runner import run
from PIL import Image

import onnxplain
from onnxplain.methods import make_method
from onnxplain.metrics import aopc, region_perturbation
from onnxplain.targets import Target

from conftest import DIGIT_BATCH, QUICK_EVALUATION


def test_evaluate_writes_tables_and_plots(digits_cnn, digit_batch):
    folder, x, labels = digit_batch
    out = folder / "out"
    result = run("evaluate", digits_cnn, folder / "batch.npy", "--labels", folder / "labels.csv", "--out", out,
                 "--json", *QUICK_EVALUATION)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    rows = {row["method"]: row for row in data["summary"]}
    assert set(rows) == {"occlusion", "shuffled occlusion", "random order"}
    assert data["inputs"] == DIGIT_BATCH and len(data["per_image"]) == DIGIT_BATCH

    model = onnxplain.load(digits_cnn)
    predicted = np.argmax(model.scores(x), axis=1)
    assert data["accuracy"] == pytest.approx(np.mean(predicted == labels))
    assert [row["label"] for row in data["per_image"]] == labels.tolist()

    relevance = make_method("occlusion", progress=False).explain(model, x, Target()).relevance
    for order in ("morf", "lerf"):
        curves = region_perturbation(model, x, relevance, predicted, region=4, steps=20, order=order)
        assert rows["occlusion"][f"aopc_{order}"] == pytest.approx(aopc(curves), rel=1e-6)
    apem = [row["occlusion_apem"] for row in data["per_image"]]
    assert rows["occlusion"]["apem_mean"] == pytest.approx(np.mean(apem))
    assert "confidence" in data["loss_correlation"] and "occlusion" in data["loss_correlation"]

    for name in ("results.md", "results.csv", "results.json", "per_image.csv"):
        assert (out / name).stat().st_size > 100
    assert "| occlusion |" in (out / "results.md").read_text()
    assert (out / "results.csv").read_text().splitlines()[0].startswith("method,aopc_morf,aopc_lerf,apem_mean")
    for name in ("perturbation_curves.png", "apem_boxplot.png"):
        with Image.open(out / name) as image:
            assert image.size[0] > 300


def test_markdown_to_stdout_and_npy_labels(digits_cnn, digit_batch, tmp_path):
    folder, _, labels = digit_batch
    np.save(tmp_path / "labels.npy", labels)
    result = run("evaluate", digits_cnn, folder / "batch.npy", "--labels", tmp_path / "labels.npy",
                 "--metrics", "aopc", *QUICK_EVALUATION[:-3], "--quiet")
    assert result.exit_code == 0, result.output
    assert "| occlusion |" in result.stdout and "| random order |" in result.stdout and "APEM" not in result.stdout


def test_method_parameters_in_the_spec(digits_cnn, digit_batch):
    folder, x, _ = digit_batch
    result = run("evaluate", digits_cnn, folder / "batch.npy", "--methods", "occlusion:window=7:stride=7",
                 "--metrics", "aopc", "--steps", "5", "--json", "--quiet")
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)["summary"][0]
    model = onnxplain.load(digits_cnn)
    relevance = make_method("occlusion", window=7, stride=7, progress=False).explain(model, x, Target()).relevance
    assert row["method"] == "occlusion:window=7:stride=7"
    assert row["aopc_morf"] == pytest.approx(aopc(region_perturbation(model, x, relevance, steps=5)), rel=1e-6)


def test_device_reaches_the_methods_and_the_loss_gradient(digits_cnn, digit_batch, monkeypatch):
    """--device goes to every method that takes one (occlusion then runs in the torch executor) unless its spec
    names its own, and to APEM's loss gradient."""
    from onnxplain.cli import evaluate_cmd
    from onnxplain.metrics import apem

    seen = {}

    def loss_gradient(model, x, classes, device="cpu"):
        seen["apem"] = device
        return np.ones_like(x)

    monkeypatch.setattr(apem, "loss_gradient", loss_gradient)
    methods = evaluate_cmd.build_methods(["occlusion", "gradient:device=cpu"], False, {"device": "cuda:3"})
    assert methods["occlusion"].device == "cuda:3" and methods["gradient:device=cpu"].device == "cpu"
    folder, _, _ = digit_batch
    result = run("evaluate", digits_cnn, folder / "batch.npy", "--methods", "gradient", "--device", "cpu",
                 "--steps", "3", "--shuffles", "1", "--max-steps", "20", "--quiet")
    assert result.exit_code == 0, result.output
    assert seen == {"apem": "cpu"}


def test_method_specs_read_values_as_the_method_types_them():
    from onnxplain.cli.evaluate_cmd import parse_method

    assert parse_method("lrp:report=false:epsilon=0.25:composite=lrp-0") == \
        ("lrp", {"report": False, "epsilon": 0.25, "composite": "lrp-0"})
    assert parse_method("occlusion:window=7:stride=7") == ("occlusion", {"window": 7, "stride": 7})
    _, params = parse_method("smoothgrad:sigma=1:samples=3")
    assert type(params["sigma"]) is float and type(params["samples"]) is int
    assert parse_method("integrated-gradients:baseline=0") == ("integrated-gradients", {"baseline": "0"})  # str
    assert parse_method("lrp:low=-1:high=1.5") == ("lrp", {"low": -1, "high": 1.5})  # untyped: read as numbers


def test_default_methods_leave_out_lrp_where_it_does_not_cover_the_model(digits_cnn_model, tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    from onnxplain.cli.evaluate_cmd import default_methods

    assert default_methods(digits_cnn_model) == ("lrp,gradient,sensitivity,smoothgrad", None)
    nodes = [helper.make_node("Unsqueeze", ["x", "axis"], ["x3"]),
             helper.make_node("Sin", ["x3"], ["h"]),  # the registry runs it, LRP cannot pass it
             helper.make_node("Flatten", ["h"], ["flat"]), helper.make_node("Gemm", ["flat", "w"], ["logits"])]
    constants = [numpy_helper.from_array(np.array([1], np.int64), "axis"),
                 numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32), "w")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])], constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "sin.onnx")
    np.save(tmp_path / "x.npy", np.random.default_rng(1).normal(size=(4, 4)).astype(np.float32))
    result = run("evaluate", tmp_path / "sin.onnx", tmp_path / "x.npy", "--metrics", "aopc", "--steps", "3",
                 "--json", "--quiet")
    assert result.exit_code == 0, result.output
    assert "LRP does not cover" in result.stderr and "Sin" in result.stderr
    methods = [row["method"] for row in json.loads(result.stdout)["summary"]]
    assert methods[:3] == ["gradient", "sensitivity", "smoothgrad"] and not any("lrp" in m for m in methods)
    failed = run("evaluate", tmp_path / "sin.onnx", tmp_path / "missing.npy", "--quiet")
    assert failed.exit_code == 2 and len(failed.stderr.strip().splitlines()) == 1   # the error alone, no note


def test_apem_on_token_ids_is_a_one_line_error_and_aopc_runs(tmp_path):
    """int64 token ids have no input gradient, which APEM needs: asked for, one line, exit 2, from the CLI and the
    library; by default such a model is evaluated by AOPC alone with occlusion, each said in a note."""
    from onnx import TensorProto, helper, numpy_helper

    from onnxplain.errors import OnnxplainError
    from onnxplain.metrics import APEM, Evaluation

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Gather", ["table", "x"], ["vectors"]),
             helper.make_node("Flatten", ["vectors"], ["flat"]),
             helper.make_node("Gemm", ["flat", "w"], ["logits"])]
    constants = [numpy_helper.from_array(rng.normal(size=(10, 3)).astype(np.float32), "table"),
                 numpy_helper.from_array(rng.normal(size=(12, 4)).astype(np.float32), "w")]
    graph = helper.make_graph(nodes, "tokens", [helper.make_tensor_value_info("x", TensorProto.INT64, ["N", 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "tokens.onnx")
    tokens = rng.integers(0, 10, size=(3, 4))
    np.save(tmp_path / "ids.npy", tokens)
    for metrics in (["--metrics", "apem"], ["--metrics", "aopc,apem"]):
        result = run("evaluate", tmp_path / "tokens.onnx", tmp_path / "ids.npy", "--methods", "occlusion",
                     "--out", tmp_path / "out", "--quiet", *metrics)
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert len(result.stderr.strip().splitlines()) == 1 and "APEM needs the loss gradient" in result.stderr
        assert "int64" in result.stderr and not (tmp_path / "out").exists()
    loaded = onnxplain.load(tmp_path / "tokens.onnx")
    with pytest.raises(OnnxplainError, match="int64"):
        Evaluation(["apem"], progress=False).run(loaded, tokens, {"occlusion": make_method("occlusion")})
    with pytest.raises(OnnxplainError, match="APEM needs"):
        APEM(progress=False).evaluate(loaded, tokens, np.ones(tokens.shape))
    result = run("evaluate", tmp_path / "tokens.onnx", tmp_path / "ids.npy", "--steps", "3", "--json", "--quiet")
    assert result.exit_code == 0, result.output
    assert "evaluated occlusion" in result.stderr and "evaluated aopc" in result.stderr
    assert json.loads(result.stdout)["settings"]["metrics"] == ["aopc"]
    assert "evaluated occlusion" in result.stderr
    assert [row["method"] for row in json.loads(result.stdout)["summary"]][0] == "occlusion"


def test_censored_searches_are_flagged_and_left_out_of_the_means(digits_cnn, digit_batch):
    folder, _, _ = digit_batch
    result = run("evaluate", digits_cnn, folder / "batch.npy", "--methods", "gradient", "--max-steps", "60",
                 "--steps", "3", "--shuffles", "2", "--json", "--quiet")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    rows = data["per_image"]
    censored = [row["gradient_censored"] for row in rows]
    assert 0 < sum(censored) < DIGIT_BATCH, censored   # ε⁺ of the digits is about 90 (docs/evaluate.md)
    kept = [row["gradient_apem"] for row in rows if not row["gradient_censored"]]
    summary = data["summary"][0]
    assert summary["censored"] == sum(censored)
    assert summary["apem_mean"] == pytest.approx(np.mean(kept))
    assert summary["apem_median"] == pytest.approx(np.median(kept))
    note = f"note: {sum(censored)} of {DIGIT_BATCH} APEM cases (method x input) never flipped within --max-steps 60"
    assert note in result.stderr and "left out of the means" in result.stderr


def test_apem_on_a_single_score_column(tmp_path):
    """One score column: asked for, APEM is one line and exit 2 (nothing written); by default, AOPC with a note."""
    from metrics_fixtures import linear_onnx

    rng = np.random.default_rng(0)
    linear_onnx(tmp_path / "one.onnx", rng.normal(size=(16, 1)), np.zeros(1), (16,))
    np.save(tmp_path / "x.npy", rng.normal(size=(3, 16)).astype(np.float32))
    asked = run("evaluate", tmp_path / "one.onnx", tmp_path / "x.npy", "--methods", "gradient", "--metrics", "apem",
                "--out", tmp_path / "out", "--quiet")
    assert asked.exit_code == 2, asked.output
    assert asked.stderr.strip().splitlines() == [
        "onnxplain: error: APEM needs at least two classes: the decision of a one-column score cannot flip"]
    assert not (tmp_path / "out").exists()
    default = run("evaluate", tmp_path / "one.onnx", tmp_path / "x.npy", "--methods", "gradient", "--steps", "3",
                  "--json", "--quiet")
    assert default.exit_code == 0, default.output
    assert json.loads(default.stdout)["settings"]["metrics"] == ["aopc"]
    assert "APEM needs at least two classes" in default.stderr and "evaluated aopc" in default.stderr


def test_settings_say_the_score_and_steps_actually_used(digits_cnn, digits_logreg, digit_batch):
    """A probability-only model tracks the probability under --score logit; L is capped at the region count."""
    x = np.load(digits_logreg.parent / "samples" / "digits_test100_logreg.npy")[:3]
    np.save(digit_batch[0] / "logreg.npy", x)
    result = run("evaluate", digits_logreg, digit_batch[0] / "logreg.npy", "--methods", "gradient", "--metrics", "aopc",
                 "--steps", "4", "--quiet")
    assert result.exit_code == 0, result.output
    assert "4 steps, probability score (the graph has no logits)" in result.stdout
    assert "note: the graph has no logits" in result.stderr
    folder, _, _ = digit_batch
    result = run("evaluate", digits_cnn, folder / "batch.npy", "--methods", "gradient", "--metrics", "aopc",
                 "--region", "14", "--steps", "50", "--quiet")
    assert result.exit_code == 0, result.output
    assert "14-wide regions, 4 steps (every region; 50 asked), logit score" in result.stdout
    assert "no logits" not in result.stderr
    data = json.loads(run("evaluate", digits_cnn, folder / "batch.npy", "--methods", "gradient", "--metrics", "aopc",
                          "--region", "14", "--steps", "50", "--json", "--quiet").stdout)
    assert (data["settings"]["steps"], data["settings"]["steps_asked"]) == (4, 50)


def test_the_inputs_are_scored_once(digits_cnn, digit_batch, monkeypatch):
    """The NaN check, the explained classes, the confidences, the loss and every perturbation curve's targets share
    one forward pass over the unperturbed inputs (the methods' own passes, to pick their targets, are theirs)."""
    from onnxplain.methods.gradients import Gradient
    from onnxplain.model import Model

    folder, x, _ = digit_batch
    rows, passes, inside = {row.tobytes() for row in x}, [], []
    run_model, attribute = Model.run, Gradient.attribute

    def counted(self, batch, *args, **kwargs):
        if not inside and len(batch) <= len(x) and all(row.tobytes() in rows for row in np.asarray(batch)):
            passes.append(len(batch))
        return run_model(self, batch, *args, **kwargs)

    def method(self, *args, **kwargs):
        inside.append(True)
        try:
            return attribute(self, *args, **kwargs)
        finally:
            inside.pop()

    monkeypatch.setattr(Model, "run", counted)
    monkeypatch.setattr(Gradient, "attribute", method)
    result = run("evaluate", digits_cnn, folder / "batch.npy", "--labels", folder / "labels.csv", "--methods",
                 "gradient", "--steps", "3", "--shuffles", "1", "--max-steps", "20", "--quiet")
    assert result.exit_code == 0, result.output
    assert passes == [DIGIT_BATCH]


def test_a_model_torch_cannot_run_is_evaluated_by_occlusion_and_aopc(tmp_path):
    """Shrink is outside the op registry and onnx2torch: no input gradient, so by default evaluate runs occlusion
    and AOPC, each said in a note that names why (was: the torch error, after the user had asked for nothing that
    needs torch but APEM)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Shrink", ["x"], ["h"], lambd=0.5, name="the_node"),
             helper.make_node("Gemm", ["h", "w"], ["logits"])]
    graph = helper.make_graph(nodes, "shrink", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
                              [numpy_helper.from_array(rng.normal(size=(4, 3)).astype(np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "shrink.onnx")
    np.save(tmp_path / "x.npy", rng.normal(size=(4, 4)).astype(np.float32))
    result = run("evaluate", tmp_path / "shrink.onnx", tmp_path / "x.npy", "--steps", "3", "--json", "--quiet")
    assert result.exit_code == 0, result.output
    assert "Shrink (the_node)" in result.stderr
    assert "evaluated occlusion" in result.stderr and "APEM needs input gradients" in result.stderr
    report = json.loads(result.stdout)
    assert report["settings"]["metrics"] == ["aopc"]
    assert [row["method"] for row in report["summary"]][0] == "occlusion"
