"""Reading inputs: NIfTI volumes checked against the spec's crop box and scan grid (one line naming the file), and
folders whose non-input files are named in a note rather than skipped silently."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_runner import run
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain.errors import OnnxplainError
from onnxplain.io import PreprocessSpec, load_inputs
from onnxplain.io.inputs import skipped_files

pytestmark = pytest.mark.usefixtures("private_cache")

MODELS = Path(__file__).resolve().parents[1] / "models"
SCAN, CROP = (8, 7, 5), [[1, 7], [0, 7], [0, 5]]


def volume_model(path: Path, spec: dict) -> Path:
    """A flat logistic regression over the crop box of `spec`."""
    features = int(np.prod([b - a for a, b in spec["crop"]]))
    weights = np.linspace(-1, 1, features, dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["z"]), helper.make_node("Softmax", ["z"], ["p"], axis=1)], "vlr",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, features])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, [None, 2])],
        [numpy_helper.from_array(np.stack([-weights, weights], axis=1), "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    model.metadata_props.add(key="onnxplain.preprocess", value=json.dumps({"layout": "flat", "color": "gray"} | spec))
    onnx.save(model, str(path))
    return path


def nifti(path: Path, volume: np.ndarray) -> Path:
    import nibabel

    nibabel.save(nibabel.Nifti1Image(volume.astype(np.float32), np.eye(4)), str(path))
    return path


@pytest.fixture
def scans(tmp_path):
    """A scan on the model's grid, the same scan on a 2x finer grid, and one too small for the crop box."""
    volume = np.random.default_rng(0).random(SCAN)
    return {"right": nifti(tmp_path / "right.nii.gz", volume),
            "finer": nifti(tmp_path / "finer.nii.gz", np.kron(volume, np.ones((2, 2, 2)))),
            "small": nifti(tmp_path / "small.nii.gz", np.zeros((4, 4, 4)))}


def test_a_volume_that_misses_the_crop_box_names_file_box_and_shape(tmp_path, scans):
    model = onnxplain.load(volume_model(tmp_path / "m.onnx", {"crop": CROP}))
    with pytest.raises(OnnxplainError) as error:
        load_inputs([scans["small"]], model)
    message = str(error.value)
    assert str(scans["small"]) in message and "4x4x4" in message and "[1:7, 0:7, 0:5]" in message
    result = run("explain", tmp_path / "m.onnx", scans["small"], "--method", "occlusion", "--quiet")
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "small.nii.gz" in result.stderr and "[1:7, 0:7, 0:5]" in result.stderr


def test_a_volume_on_another_grid_than_the_specs_scan_shape_is_refused(tmp_path, scans):
    model = onnxplain.load(volume_model(tmp_path / "m.onnx", {"crop": CROP, "scan_shape": list(SCAN)}))
    assert load_inputs([scans["right"]], model)[0].shape == (1, 6 * 7 * 5)
    with pytest.raises(OnnxplainError, match=r"finer.nii.gz: a volume of shape 16x14x10 is not on the model's "
                                             r"scan grid 8x7x5"):
        load_inputs([scans["finer"]], model)
    result = run("explain", tmp_path / "m.onnx", scans["finer"], "--method", "occlusion", "--quiet",
                 "--out", tmp_path / "out")
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1 and "8x7x5" in result.stderr
    assert not (tmp_path / "out").exists()


def test_specs_without_a_scan_shape_take_any_grid_the_box_fits(tmp_path, scans):
    model = onnxplain.load(volume_model(tmp_path / "m.onnx", {"crop": CROP}))
    assert load_inputs([scans["finer"]], model)[0].shape == (1, 6 * 7 * 5)


def test_scan_shape_is_checked_against_the_crop_box():
    assert PreprocessSpec.from_dict({"layout": "flat", "crop": CROP, "scan_shape": SCAN}).scan_shape == SCAN
    with pytest.raises(OnnxplainError, match="does not lie inside scan_shape 5x7x5"):
        PreprocessSpec.from_dict({"layout": "flat", "crop": CROP, "scan_shape": [5, 7, 5]})
    with pytest.raises(OnnxplainError, match="scan_shape needs a crop box"):
        PreprocessSpec.from_dict({"layout": "flat", "scan_shape": SCAN})


def test_files_a_folder_holds_that_are_no_inputs_are_named_in_a_note(digits_cnn, tmp_path):
    samples = digits_cnn.parent / "samples"
    folder, references = tmp_path / "inputs", tmp_path / "references"
    folder.mkdir(), references.mkdir()
    (folder / "digit3_cnn.npy").write_bytes((samples / "digit3_cnn.npy").read_bytes())
    (folder / "notes.txt").write_text("not an input")
    np.save(references / "reference.npy", np.load(samples / "digits_reference_cnn.npy")[:20])
    (references / "labels.csv").write_text("3\n")
    assert skipped_files([folder, references]) == [folder / "notes.txt", references / "labels.csv"]
    result = run("explain", digits_cnn, folder, "--method", "pda", "--sampler", "marginal", "--reference",
                 references, "--window", 7, "--stride", 7, "--samples", 2, "--quiet")
    assert result.exit_code == 0, result.output
    assert result.stderr.strip().splitlines() == [
        f"note: skipped 2 file(s) that are not images, .npy or NIfTI: {folder / 'notes.txt'}, "
        f"{references / 'labels.csv'}"]


def test_the_mri_demo_writes_the_scan_grid_into_its_spec(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
    import mri_demo as demo
    from sklearn.linear_model import LogisticRegression

    crop = ((1, 3), (0, 4), (0, 3))
    features = np.random.default_rng(0).random((10, 2 * 4 * 3)).astype(np.float32)
    classifier = LogisticRegression().fit(features, np.arange(10) % 2)
    model = onnxplain.load(demo.export(classifier, tmp_path / "m.onnx", crop, (5, 4, 3)))
    assert model.preprocess.scan_shape == (5, 4, 3) and model.preprocess.crop == crop


def test_the_cohort_bar_stays_out_of_a_redirected_stderr(capfd):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
    import mri_data as data

    data.cohort_slab(data.CohortSpec(shape=(12, 14, 12), n_patients=3, n_controls=3), cache=False, progress=True)
    assert capfd.readouterr().err == ""


def folder_with_a_subfolder(digits_cnn, tmp_path) -> Path:
    """A folder holding one input, a file that is no input and a subfolder of inputs (not searched)."""
    folder = tmp_path / "f"
    (folder / "sub").mkdir(parents=True)
    np.save(folder / "digit3.npy", np.load(digits_cnn.parent / "samples" / "digit3_cnn.npy"))
    np.save(folder / "sub" / "digit7.npy", np.load(digits_cnn.parent / "samples" / "digit7_cnn.npy"))
    (folder / "notes.txt").write_text("not an input")
    return folder


def skipped_line(folder: Path) -> str:
    return (f"note: skipped 1 file(s) that are not images, .npy or NIfTI: {folder / 'notes.txt'}; skipped 1 "
            f"subfolder(s) (inputs are not searched for recursively; name a subfolder to read it): {folder / 'sub'}")


COMMANDS_READING_FOLDERS = {
    "explain": ["--method", "gradient", "--quiet"],
    "predict": ["--top", "1"],
    "evaluate": ["--methods", "gradient", "--metrics", "aopc", "--region", "7", "--steps", "3", "--quiet"],
    "contrast": ["--generator", MODELS / "digits_generator.onnx", "--restarts", "1", "--outer-steps", "1",
                 "--quiet"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS_READING_FOLDERS))
def test_every_command_names_skipped_files_and_subfolders(command, digits_cnn, tmp_path):
    """explain, predict, evaluate and contrast read the folder's own inputs only, and say what they left: the same
    note, once the work is done."""
    folder = folder_with_a_subfolder(digits_cnn, tmp_path)
    result = run(command, digits_cnn, folder, *COMMANDS_READING_FOLDERS[command])
    assert result.exit_code == 0, result.output
    assert result.stderr.strip().splitlines() == [skipped_line(folder)]
    read = "1 input;" if command == "evaluate" else str(folder / "digit3.npy")   # evaluate reports a count
    assert read in result.stdout and "digit7" not in result.stdout


def test_a_folder_whose_inputs_are_all_in_subfolders_says_so(digits_cnn, tmp_path):
    folder = folder_with_a_subfolder(digits_cnn, tmp_path)
    (folder / "digit3.npy").unlink()
    result = run("predict", digits_cnn, folder)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines() == [
        f"onnxplain: error: no inputs found in {folder} (folders are not searched recursively: {folder / 'sub'} not "
        "read)"]
