"""`onnxplain evaluate`: files written, numbers that agree with the Python API, labels read by name, user errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import onnxplain
from onnxplain.cli.main import cli
from onnxplain.methods import make_method
from onnxplain.metrics import aopc, region_perturbation
from onnxplain.targets import Target

COUNT = 6


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def inputs(digits_cnn, tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval")
    samples = digits_cnn.parent / "samples"
    x = np.load(samples / "digits_test100_cnn.npy")[:COUNT]
    labels = np.load(samples / "digits_test100_labels.npy")[:COUNT]
    np.save(folder / "batch.npy", x)
    rows = ["input,label"] + [f"batch.npy[{i}],{label}" for i, label in enumerate(labels)]
    (folder / "labels.csv").write_text("input,label\n" + "\n".join(rows[1:][::-1]) + "\n")  # any row order
    return folder, x, labels


COMMON = ["--methods", "occlusion", "--region", "4", "--steps", "20", "--shuffles", "3", "--quiet"]


def test_evaluate_writes_tables_and_plots(digits_cnn, inputs):
    folder, x, labels = inputs
    out = folder / "out"
    result = run("evaluate", digits_cnn, folder / "batch.npy", "--labels", folder / "labels.csv", "--out", out,
                 "--json", *COMMON)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    rows = {row["method"]: row for row in data["summary"]}
    assert set(rows) == {"occlusion", "shuffled occlusion", "random order"}
    assert data["inputs"] == COUNT and len(data["per_image"]) == COUNT

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


def test_markdown_to_stdout_and_npy_labels(digits_cnn, inputs, tmp_path):
    folder, _, labels = inputs
    np.save(tmp_path / "labels.npy", labels)
    result = run("evaluate", digits_cnn, folder / "batch.npy", "--labels", tmp_path / "labels.npy",
                 "--metrics", "aopc", *COMMON)
    assert result.exit_code == 0, result.output
    assert "| occlusion |" in result.stdout and "| random order |" in result.stdout and "APEM" not in result.stdout


def test_method_parameters_in_the_spec(digits_cnn, inputs):
    folder, x, _ = inputs
    result = run("evaluate", digits_cnn, folder / "batch.npy", "--methods", "occlusion:window=7:stride=7",
                 "--metrics", "aopc", "--steps", "5", "--json", "--quiet")
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)["summary"][0]
    model = onnxplain.load(digits_cnn)
    relevance = make_method("occlusion", window=7, stride=7, progress=False).explain(model, x, Target()).relevance
    assert row["method"] == "occlusion:window=7:stride=7"
    assert row["aopc_morf"] == pytest.approx(aopc(region_perturbation(model, x, relevance, steps=5)), rel=1e-6)


def test_method_specs_read_numbers_and_booleans():
    from onnxplain.cli.evaluate_cmd import parse_method

    assert parse_method("lrp:report=false:epsilon=0.25:composite=lrp-0") == \
        ("lrp", {"report": False, "epsilon": 0.25, "composite": "lrp-0"})
    assert parse_method("occlusion:window=7:stride=7") == ("occlusion", {"window": 7, "stride": 7})


@pytest.mark.parametrize("extra, message", [
    (["--methods", "no-such-method"], "unknown method"),
    (["--metrics", "aopc,beauty"], "unknown metric"),
    (["--labels", "missing.csv"], "labels file not found"),
    (["--methods", "occlusion:window"], "not key=value"),
])
def test_user_errors_exit_2(digits_cnn, inputs, extra, message):
    folder, _, _ = inputs
    result = run("evaluate", digits_cnn, folder / "batch.npy", *COMMON, *extra)
    assert result.exit_code == 2 and message in result.output, result.output


def test_labels_missing_an_input_is_a_user_error(digits_cnn, inputs, tmp_path):
    folder, _, _ = inputs
    (tmp_path / "partial.csv").write_text("batch.npy[0],3\n")
    result = run("evaluate", digits_cnn, folder / "batch.npy", "--labels", tmp_path / "partial.csv", *COMMON)
    assert result.exit_code == 2 and "no label for input batch.npy[1]" in result.output
