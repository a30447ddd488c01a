"""`--hold NAME=FILE.npy` on the commands that load a model: the held run equals the API's, inspect describes a
model of several inputs without it, and every refusal is one line on stderr, exit code 2, no file written."""
from __future__ import annotations

import json

import numpy as np
import pytest
from cli_runner import run

import onnxplain
from onnxplain.lrp import LRP

from hold_graphs import META, concat_model, mask_model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The concat model (image explained, meta held), a batch of images and the held sample as .npy files."""
    folder = tmp_path_factory.mktemp("hold")
    concat_model(folder / "concat.onnx")
    x = np.random.default_rng(0).random((3, 1, 8, 8), np.float32)
    np.save(folder / "x.npy", x)
    np.save(folder / "meta.npy", META)
    return folder, x


def test_explain_and_predict_with_a_held_input(files):
    folder, x = files
    out = folder / "relevance.npy"
    result = run("explain", folder / "concat.onnx", folder / "x.npy", "--hold", f"meta={folder / 'meta.npy'}",
                 "--method", "lrp", "--save-npy", out, "--json", "--quiet")
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    expected = LRP(progress=False).explain(onnxplain.load(folder / "concat.onnx", hold={"meta": META}), x)
    for i, record in enumerate(records):
        relevance = np.load(folder / f"relevance_x_{i}.npy")
        np.testing.assert_allclose(relevance, expected.relevance[i], rtol=1e-6)
        assert record["diagnostics"]["held_relevance"] == pytest.approx(expected.diagnostics["held_relevance"][i])
    predicted = run("predict", folder / "concat.onnx", folder / "x.npy", "--hold", f"meta={folder / 'meta.npy'}",
                    "--json")
    assert predicted.exit_code == 0, predicted.output
    assert [row["top"][0]["index"] for row in json.loads(predicted.stdout)] == expected.target.tolist()


def test_evaluate_with_a_held_input(files):
    folder, _ = files
    result = run("evaluate", folder / "concat.onnx", folder / "x.npy", "--hold", f"meta={folder / 'meta.npy'}",
                 "--methods", "gradient", "--metrics", "aopc", "--region", "2", "--steps", "4", "--json",
                 "--quiet")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["inputs"] == 3


def test_inspect_lists_every_input_and_which_need_hold(files):
    folder, _ = files
    result = run("inspect", folder / "concat.onnx")
    assert result.exit_code == 0, result.output
    assert "  meta                     float32    Nx3              unheld\n" in result.stdout
    assert "hold: explain one of image, meta and hold the others (--hold NAME=FILE.npy each)" in result.stdout
    assert "class scores:" not in result.stdout
    info = json.loads(run("inspect", folder / "concat.onnx", "--json").stdout)
    assert [row["role"] for row in info["inputs"]] == ["unheld", "unheld"] and info["hold_needed"] == ["image", "meta"]
    held = json.loads(run("inspect", folder / "concat.onnx", "--hold", f"meta={folder / 'meta.npy'}", "--json").stdout)
    assert [row["role"] for row in held["inputs"]] == ["explained", "held"] and held["hold_needed"] == []
    assert held["class_scores"]["output"] == "logits" and held["parameters"] == info["parameters"]


@pytest.mark.parametrize("hold, message", [
    ([], "this model has 2 inputs (image, meta): onnxplain explains one, with the others held at given values; "
         "hold all of image, meta but the one to explain"),
    (["meta"], "--hold takes NAME=FILE.npy (an input's name and an .npy file), not 'meta'"),
    (["=meta.npy"], "--hold takes NAME=FILE.npy"),
    (["meta=meta.txt"], "--hold meta: {folder}/meta.txt is no .npy file"),
    (["meta=missing.npy"], "--hold meta: file not found: {folder}/missing.npy"),
    (["meta=pickled.npy"], "pickled.npy is not a readable .npy array"),
    (["metadata=meta.npy"], "cannot hold 'metadata': not an input of this model (its inputs: image, meta)"),
    (["meta=meta.npy", "meta=meta.npy"], "--hold meta is given twice"),
    (["meta=meta.npy", "image=image.npy"], "every input is held (image, meta)"),
    (["meta=wide.npy"], "held input 'meta': shape 4 does not fit the model's one sample of 3"),
    (["meta=nan.npy"], "held input 'meta' holds NaN or infinite values"),
])
def test_refusals_are_one_line_and_write_nothing(files, hold, message):
    folder, _ = files
    np.save(folder / "wide.npy", np.ones(4, np.float32))
    np.save(folder / "nan.npy", np.array([1, np.nan, 0], np.float32))
    np.save(folder / "image.npy", np.ones((1, 8, 8), np.float32))
    np.save(folder / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (folder / "meta.txt").write_text("0.5 -1 2\n")
    pairs = [item for pair in hold for item in ("--hold", pair.replace("=", f"={folder}/", 1)
                                                if "=" in pair[1:] else pair)]
    out, model, x = folder / "refused.npy", folder / "concat.onnx", folder / "x.npy"
    commands = [["explain", model, x, "--save-npy", out], ["predict", model, x], ["evaluate", model, x],
                ["contrast", model, x, "--generator", folder / "generator.onnx", "--save-npy", out]]
    for command in commands + ([["inspect", model]] if hold else []):   # inspect describes the model unheld
        result = run(*command, *pairs)
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert len(lines) == 1 and message.format(folder=folder) in lines[0], lines
    assert not list(folder.glob("refused*"))


def test_inspect_checks_held_values_while_others_are_unheld(tmp_path):
    """With two inputs of the mask model still unheld, a held value that cannot fit (strings, a wrong shape) was
    listed as held and inspect exited 0."""
    path = mask_model(tmp_path / "mask.onnx")
    np.save(tmp_path / "words.npy", np.array(["a", "b"]))
    np.save(tmp_path / "short.npy", np.ones(3, np.float32))
    np.save(tmp_path / "mask.npy", np.ones((1, 10), np.float32))
    assert run("inspect", path, "--hold", f"mask={tmp_path / 'mask.npy'}").exit_code == 0
    for bad in ("words", "short"):
        result = run("inspect", path, "--hold", f"mask={tmp_path / f'{bad}.npy'}")
        assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
        assert "held input 'mask'" in result.stderr
