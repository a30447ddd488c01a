"""`inspect` and `predict` from the command line, and the exit-code-2 contract for bad input."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from cli_runner import run
from click.testing import CliRunner

from onnxplain.cli.main import cli

from conftest import SAMPLES


def test_inspect_json_names_class_scores(digits_cnn):
    result = run("inspect", digits_cnn, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["class_scores"]["output"] == "logits" and info["class_scores"]["kind"] == "logits"
    assert info["inputs"][0]["shape"][1:] == [1, 28, 28]
    assert info["parameters"] > 1000 and "Conv" in info["operators"]


def test_inspect_zipmap_model(digits_logreg):
    result = run("inspect", digits_logreg, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["class_scores"]["kind"] == "probabilities"
    assert "ai.onnx.ml.ZipMap" in info["operators"] and "ai.onnx.ml.LinearClassifier" in info["operators"]


def test_inspect_names_element_types_as_numpy_does(digits_logreg):
    """float32, int64: numpy's names in the listing and in --json (was TensorProto.FLOAT)."""
    info = json.loads(run("inspect", digits_logreg, "--json").stdout)
    assert [(row["name"], row["type"]) for row in info["inputs"] + info["outputs"]] == [
        ("input", "float32"), ("output_label", "int64"), ("output_probability", "sequence_type")]
    plain = run("inspect", digits_logreg).stdout
    assert re.search(r"^  input +float32 +\?x64$", plain, re.MULTILINE), plain
    assert re.search(r"^  output_label +int64 +\?$", plain, re.MULTILINE) and "TensorProto" not in plain


def test_inspect_names_the_classes(tmp_path):
    """The class names also in the plain listing (only --json showed them)."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    x = np.random.default_rng(0).normal(size=(30, 3)).astype(np.float32)
    named = LogisticRegression().fit(x, np.array(["cat", "dog"])[(x[:, 0] > 0).astype(int)])
    (tmp_path / "named.onnx").write_bytes(to_onnx(named, x[:1]).SerializeToString())
    assert "labels: cat, dog\n" in run("inspect", tmp_path / "named.onnx").stdout


def test_inspect_lists_the_tensors_that_layer_takes(digits_cnn):
    import onnxplain

    info = json.loads(run("inspect", digits_cnn, "--json").stdout)
    assert [row["name"] for row in info["tensors"]] == onnxplain.load(digits_cnn).tensor_names
    relu = next(row for row in info["tensors"] if row["name"] == "relu_1")
    assert relu == {"name": "relu_1", "type": "float32", "shape": ["N", 16, 14, 14], "op": "Relu"}
    plain = run("inspect", digits_cnn)
    assert plain.exit_code == 0 and "tensors: 10 (inspect --tensors" in plain.stdout and "relu_1" not in plain.stdout
    listed = run("inspect", digits_cnn, "--tensors")
    assert listed.exit_code == 0 and re.search(r"^  relu_1 +Relu +Nx16x14x14$", listed.stdout, re.MULTILINE)


def test_inspect_tf2onnx_model_producer_and_unknown_sizes(digits_cnn):
    keras_tf = digits_cnn.parent / "digits_keras_tf.onnx"
    info = json.loads(run("inspect", keras_tf, "--json").stdout)
    assert info["producer"] == "tf2onnx 1.17.0"  # the file says '1.17.0 None'
    shapes = {row["name"]: row["shape"] for row in info["tensors"]}
    assert shapes["sequential_1/flatten_1/Reshape:0"] == ["N", "?"]  # a named size shape inference cannot tell
    assert "(producer: tf2onnx 1.17.0, IR 8" in run("inspect", keras_tf).stdout


def test_predict_agrees_with_plain_onnxruntime(digits_cnn):
    samples = digits_cnn.parent / "samples"
    files = sorted(samples.glob("digit?_cnn.npy"))
    result = run("predict", digits_cnn, *files, "--top", 3, "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    session = ort.InferenceSession(str(digits_cnn), providers=["CPUExecutionProvider"])
    for row, path in zip(rows, files):
        logits = session.run(None, {session.get_inputs()[0].name: np.load(path)[None]})[0][0]
        assert row["top"][0]["index"] == int(np.argmax(logits))
        assert row["top"][0]["score"] == pytest.approx(float(logits.max()), rel=1e-5)


def test_predict_png_gives_the_digit_in_the_name(digits_cnn):
    png = digits_cnn.parent / "samples" / "digit3.png"
    result = run("predict", digits_cnn, png, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["top"][0]["label"] == "3"


@pytest.mark.parametrize("name", ["squeezenet", "resnet50"])
def test_predict_zoo_agrees_with_plain_onnxruntime(name, zoo_path, tmp_path):
    path = zoo_path(name)
    x = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    result = run("predict", path, tmp_path / "x.npy", "--top", 1, "--json")
    assert result.exit_code == 0, result.output
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    scores = session.run(None, {session.get_inputs()[0].name: x})[0].reshape(-1)
    assert json.loads(result.stdout)[0]["top"][0]["index"] == int(np.argmax(scores))


def bad_inputs(tmp_path, digits_cnn):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"garbage" * 50)
    not_image = tmp_path / "photo.png"
    not_image.write_text("this is text, not a PNG")
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((3, 28, 28), np.float32))
    nan = tmp_path / "nan.npy"
    np.save(nan, np.full((1, 28, 28), np.nan, np.float32))
    good = digits_cnn.parent / "samples" / "digit3_cnn.npy"
    return {
        "missing model": ([tmp_path / "none.onnx", good], "not found"),
        "corrupt model": ([corrupt, good], "not a readable ONNX model"),
        "missing input": ([digits_cnn, tmp_path / "none.png"], "not found"),
        "not an image": ([digits_cnn, not_image], "not a readable image"),
        "wrong shape": ([digits_cnn, wrong], "does not fit"),
        "NaN": ([digits_cnn, nan], "NaN"),
    }


@pytest.mark.parametrize("case", ["missing model", "corrupt model", "missing input", "not an image",
                                  "wrong shape", "NaN"])
def test_bad_input_exits_2_with_one_line(case, tmp_path, digits_cnn):
    args, message = bad_inputs(tmp_path, digits_cnn)[case]
    result = run("predict", *args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.output


def test_console_script_exit_code_and_clean_stderr(tmp_path):
    """The installed entry point itself: one line, code 2, no traceback."""
    process = subprocess.run([sys.executable, "-m", "onnxplain.cli.main", "inspect", str(tmp_path / "no.onnx")],
                             capture_output=True, text=True)
    assert process.returncode == 2
    assert process.stderr.strip().splitlines() == [f"onnxplain: error: model file not found: {tmp_path / 'no.onnx'}"]


def test_custom_domain_and_escaping_external_data_exit_2(tmp_path):
    """Two model-level refusals, seen from the command line: one line naming the problem, code 2."""
    import onnx
    from onnx import helper

    from test_model import tiny_classifier

    custom = tiny_classifier()
    custom.graph.node.append(helper.make_node("Mystery", ["prob"], ["odd"], domain="com.example"))
    custom.opset_import.append(helper.make_opsetid("com.example", 1))
    onnx.save(custom, tmp_path / "custom.onnx")
    result = run("inspect", tmp_path / "custom.onnx")
    assert result.exit_code == 2 and "com.example" in result.stderr and len(result.stderr.strip().splitlines()) == 1

    folder = tmp_path / "model"
    folder.mkdir()
    escaping = tiny_classifier()
    onnx.save(escaping, folder / "m.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="w.bin", size_threshold=0)
    loaded = onnx.load(str(folder / "m.onnx"), load_external_data=False)
    for tensor in loaded.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "/etc/passwd"
    onnx.save(loaded, folder / "evil.onnx")
    result = run("inspect", folder / "evil.onnx")
    assert result.exit_code == 2 and "outside the model's folder" in result.stderr


def test_predict_options_are_checked(tmp_path, digits_cnn):
    """--top below 1 and a labels file whose length is not the number of classes are one-line errors."""
    digit = digits_cnn.parent / "samples" / "digit3_cnn.npy"
    (tmp_path / "two.txt").write_text("a\nb\n")
    for args, message in ((["--top", "0"], "--top"), (["--labels", tmp_path / "two.txt"], "names 2 classes")):
        result = run("predict", digits_cnn, digit, *args)
        assert result.exit_code == 2 and message in result.stderr, result.output
        assert len(result.stderr.strip().splitlines()) == 1


def test_a_guessed_preprocessing_spec_is_said_so(digits_cnn, tmp_path):
    """A model that stores no spec gets one guessed from its input shape: inspect marks it, and reading images
    through it adds a note (after the output), while a stored spec adds none."""
    import onnx

    bare = onnx.load(digits_cnn)
    del bare.metadata_props[:]
    onnx.save(bare, tmp_path / "bare.onnx")
    image = str(digits_cnn.parent / "samples" / "digit3.png")
    described = json.loads(CliRunner().invoke(cli, ["inspect", str(tmp_path / "bare.onnx"), "--json"]).stdout)
    assert described["preprocess_source"] == "guessed"
    stored = json.loads(CliRunner().invoke(cli, ["inspect", str(digits_cnn), "--json"]).stdout)
    assert stored["preprocess_source"] == "stored"
    guessed = CliRunner().invoke(cli, ["predict", str(tmp_path / "bare.onnx"), image, "--json"])
    assert guessed.exit_code == 0 and "stores no preprocessing spec" in guessed.stderr
    plain = CliRunner().invoke(cli, ["predict", str(digits_cnn), image, "--json"])
    assert plain.exit_code == 0 and plain.stderr == ""
    assert json.loads(guessed.stdout)[0]["top"] == json.loads(plain.stdout)[0]["top"]


@pytest.mark.parametrize("args, option", [
    (["explain", "{model}", "{sample}", "--out", ""], "'--out'"),
    (["explain", "{model}", "{sample}", "--save-npy", " "], "'--save-npy'"),
    (["explain", "{model}", "", "--method", "gradient"], "'INPUTS...'"),
    (["explain", "{model}", "{sample}", "--method", "occlusion", "--reference", ""], "'--reference'"),
    (["predict", "", "{sample}"], "'MODEL'"),
    (["evaluate", "{model}", "{sample}", "--out", ""], "'--out'"),
    (["contrast", "{model}", "{sample}", "--generator", "g.onnx", "--out", ""], "'--out'"),
    (["convert", "sklearn", "m.pkl", "--out", ""], "'--out'"),
])
def test_an_empty_path_is_a_one_line_error_not_the_current_folder(args, option, digits_cnn, tmp_path, monkeypatch):
    """`--out ""` (an unset shell variable) would be Path(""), the current folder: outputs would land there under
    the inputs' names. Every path option and argument refuses it, before any work, and nothing is written."""
    sample = digits_cnn.parent / "samples" / "digit3_cnn.npy"
    monkeypatch.chdir(tmp_path)
    result = run(*[a.format(model=digits_cnn, sample=sample) for a in args])
    assert result.exit_code == 2 and "Traceback" not in result.output
    (line,) = result.stderr.strip().splitlines()
    assert f"Invalid value for {option}: an empty path" in line
    assert list(tmp_path.iterdir()) == []


def test_json_output_is_strict():
    """NaN and infinities (a censored APEM mean, a score of an empty group) are null: strict parsers (jq, JSON.parse)
    refuse the NaN that json.dumps writes by default."""
    from pathlib import Path

    from onnxplain.cli.common import json_text

    data = {"mean": float("nan"), "limit": np.float32(np.inf), "rows": [np.int64(3), (1.5, -np.inf)],
            "array": np.array([1.0, np.nan]), "path": Path("a/b")}
    text = json_text(data)
    assert json.loads(text, parse_constant=lambda name: pytest.fail(f"non-strict {name}")) == {
        "mean": None, "limit": None, "rows": [3, [1.5, None]], "array": [1.0, None], "path": "a/b"}


def test_arrays_outside_the_stored_spec_and_placeholder_weights_get_notes(digits_cnn, tmp_path):
    """Raw 0..255 pixels in an .npy for a model whose stored spec gives 0..1 inputs: a note names the file and the
    range (arrays go to the model as they are); the same digit preprocessed gets none. A graph whose layer weights
    ConstantOfShape fills (the onnx wheel's test graphs) gets a note pointing to zoo.materialize, the runnable
    version none."""
    from PIL import Image

    from onnxplain import zoo

    digit = np.load(SAMPLES / "digit3_cnn.npy")
    np.save(tmp_path / "raw.npy", (digit * 255).round().astype(np.int64))
    np.save(tmp_path / "ok.npy", digit)
    result = run("predict", digits_cnn, tmp_path / "raw.npy", tmp_path / "ok.npy")
    assert result.exit_code == 0, result.output
    assert re.search(r"note: \S*raw\.npy: values 0\.\.2\d\d lie outside .*\(0\.\.1\)", result.stderr)
    assert "ok.npy" not in result.stderr
    assert "outside" not in run("predict", digits_cnn, tmp_path / "ok.npy").stderr
    Image.new("RGB", (224, 224), (120, 80, 40)).save(tmp_path / "flat.png")
    placeholders = run("predict", zoo.source_path("squeezenet"), tmp_path / "flat.png")
    assert placeholders.exit_code == 0 and "placeholders that ConstantOfShape fills" in placeholders.stderr
    assert "zoo.materialize" in placeholders.stderr
    assert zoo.placeholder_weights(onnx.load(zoo.materialize("squeezenet", folder=tmp_path))) == []


def test_predict_shows_a_bar_unless_quiet(digits_cnn, monkeypatch):
    """predict scores every input in one batched run, with a progress bar like every long command (a scripted
    --quiet was refused: no such option)."""
    from onnxplain.model import Model

    asked, run_model = [], Model.run

    def recorded(self, x, *args, progress=False, **kwargs):
        asked.append(progress)
        return run_model(self, x, *args, progress=progress, **kwargs)

    monkeypatch.setattr(Model, "run", recorded)
    for extra in ([], ["--quiet"]):
        asked.clear()
        result = run("predict", digits_cnn, SAMPLES / "digit3.png", *extra)
        assert result.exit_code == 0, result.output
        assert asked[-1] == ("predict" if not extra else False)
