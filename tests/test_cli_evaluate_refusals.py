"""`onnxplain evaluate`: user errors (unknown or mistyped methods and metrics, options that do not apply, regions
larger than the input, missing labels, empty or repeated list items) and non-finite numbers, each one line."""
from __future__ import annotations

import numpy as np
import pytest
from cli_runner import run

from onnxplain.methods import make_method

from conftest import QUICK_EVALUATION


@pytest.mark.parametrize("spec, message", [
    ("smoothgrad:samples=abc", "method smoothgrad: parameter samples must be an integer, got 'abc'"),
    ("smoothgrad:sigma=abc", "method smoothgrad: parameter sigma must be a number, got 'abc'"),
    ("occlusion:window=abc", "method occlusion: parameter window must be an integer, got 'abc'"),
    ("pda:window=abc", "method pda: parameter window must be an integer, got 'abc'"),
    ("lrp:epsilon=abc", "method lrp: parameter epsilon must be a number, got 'abc'"),
    ("integrated-gradients:steps=1.5", "method integrated-gradients: parameter steps must be an integer, got '1.5'"),
    ("lrp:report=maybe", "method lrp: parameter report must be true or false, got 'maybe'"),
])
def test_method_parameter_of_the_wrong_type_is_one_line(digits_cnn, digit_batch, spec, message):
    folder, _, _ = digit_batch
    result = run("evaluate", digits_cnn, folder / "batch.npy", *QUICK_EVALUATION, "--methods", spec)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [f"onnxplain: error: {message}"]


@pytest.mark.parametrize("extra, message", [
    (["--methods", "no-such-method"], "unknown method"),
    (["--metrics", "aopc,beauty"], "unknown metric"),
    (["--labels", "missing.csv"], "labels file not found"),
    (["--methods", "occlusion:window"], "not key=value"),
    (["--region", "0"], "'--region': 0 is not in the range x>=1"),
    (["--steps", "0"], "'--steps': 0 is not in the range x>=1"),
    (["--shuffles", "0"], "'--shuffles': 0 is not in the range x>=1"),
    (["--epsilon-step", "0"], "'--epsilon-step': 0.0 is not in the range x>0"),
    (["--device", "gpu0"], "device 'gpu0' is not a torch device name"),
    (["--metrics", "aopc", "--stage", "3"], "option(s) --stage, --shuffles do not apply to --metrics aopc"),
    (["--metrics", "apem", "--max-steps", "5"], "option(s) --region, --steps do not apply to --metrics apem"),
    (["--methods", "gradient", "--reference", "x.npy"], "option(s) --reference do not apply to --methods gradient: "
                                                        "none of them reads reference data (pda and occlusion do)"),
])
def test_user_errors_exit_2(digits_cnn, digit_batch, extra, message):
    folder, _, _ = digit_batch
    result = run("evaluate", digits_cnn, folder / "batch.npy", *QUICK_EVALUATION, *extra)
    assert result.exit_code == 2 and message in result.output, result.output


def test_reference_data_no_default_method_reads_is_refused_naming_the_defaults(digits_cnn, digit_batch):
    folder, _, _ = digit_batch
    result = run("evaluate", digits_cnn, folder / "batch.npy", "--reference", folder / "batch.npy", "--quiet")
    assert result.exit_code == 2 and "do not apply to the default methods (lrp, gradient, sensitivity, smoothgrad): " \
        "none of them reads reference data" in result.output, result.output


def test_a_region_larger_than_the_input_is_refused_naming_its_size(digits_cnn, digit_batch):
    """--region 100 on 28 x 28 inputs made one region (1 step) and went on; 28 still tiles the input."""
    folder, _, _ = digit_batch
    occlusion = ["--methods", "occlusion", "--steps", "20"]
    result = run("evaluate", digits_cnn, folder / "batch.npy", *occlusion, "--region", "100", "--metrics", "aopc")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert result.stderr.strip().splitlines() == [
        "onnxplain: error: region 100 is larger than the input, whose spatial size is 28x28: give a region of at "
        "most 28"]
    assert run("evaluate", digits_cnn, folder / "batch.npy", *occlusion, "--region", "28", "--metrics", "aopc",
               "--steps", "1").exit_code == 0


def test_labels_missing_an_input_is_a_user_error(digits_cnn, digit_batch, tmp_path):
    folder, _, _ = digit_batch
    (tmp_path / "partial.csv").write_text("batch.npy[0],3\n")
    result = run("evaluate", digits_cnn, folder / "batch.npy", "--labels", tmp_path / "partial.csv", *QUICK_EVALUATION)
    assert result.exit_code == 2 and "no label for input batch.npy[1]" in result.output


@pytest.mark.parametrize("extra, message", [
    (["--methods", ","], "--methods ',' has an empty item"),
    (["--methods", "gradient,,occlusion"], "--methods 'gradient,,occlusion' has an empty item"),
    (["--methods", "gradient, gradient"], "--methods lists the same one more than once: gradient"),
    (["--methods", "occlusion:window=7,occlusion: window=7"],
     "--methods lists the same one more than once: occlusion:window=7, occlusion: window=7"),
    (["--metrics", ""], "--metrics '' has an empty item"),
    (["--metrics", "aopc,aopc"], "--metrics lists the same one more than once: aopc"),
])
def test_empty_or_repeated_list_items_are_one_line(digits_cnn, digit_batch, extra, message):
    folder, _, _ = digit_batch
    result = run("evaluate", digits_cnn, folder / "batch.npy", *QUICK_EVALUATION, *extra)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"onnxplain: error: {message}"), lines


def test_a_method_giving_non_finite_relevance_is_named(digits_cnn_model):
    from types import SimpleNamespace

    from onnxplain.errors import OnnxplainError
    from onnxplain.metrics import Evaluation

    class Broken:
        def explain(self, model, x, target):
            return SimpleNamespace(relevance=np.full(x.shape, np.nan))

    x = np.zeros((2, 1, 28, 28), dtype=np.float32)
    with pytest.raises(OnnxplainError, match="broken's relevance is not finite"):
        Evaluation(["aopc"], progress=False).run(digits_cnn_model, x, {"broken": Broken()})


def test_inputs_scored_nan_are_named_by_the_evaluation(digits_cnn_model):
    from onnxplain.errors import OnnxplainError
    from onnxplain.metrics import Evaluation

    x = np.zeros((3, 1, 28, 28), dtype=np.float32)
    x[1] = 3e38   # finite, but the network's sums overflow
    with pytest.raises(OnnxplainError, match="the model's scores for input 1 are NaN or infinite"):
        Evaluation(["aopc"], progress=False).run(digits_cnn_model, x, {"gradient": make_method("gradient")})
