"""`onnxplain convert` on the command line: the trust rules (pickles, state_dicts), missing packages named, output
paths and opsets; nothing half-written on a refusal."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_runner import run

import onnxplain

from convert_cases import MEAN_SOURCE, NET_SOURCE, SignBranch, ort_run, small_net

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    return load_digits(return_X_y=True)


def test_cli_sklearn_needs_trust_pickle(tmp_path, digits):
    import joblib
    from sklearn.naive_bayes import GaussianNB

    X, y = digits
    joblib.dump(GaussianNB().fit(X, y), tmp_path / "nb.pkl")
    refused = run("convert", "sklearn", tmp_path / "nb.pkl", "--out", tmp_path / "nb.onnx")
    assert refused.exit_code == 2 and "--trust-pickle" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and not (tmp_path / "nb.onnx").exists()
    np.save(tmp_path / "x.npy", X[:30].astype(np.float32))
    done = run("convert", "sklearn", tmp_path / "nb.pkl", "--trust-pickle", "--samples", tmp_path / "x.npy",
                  "--out", tmp_path / "nb.onnx")
    assert done.exit_code == 0, done.output
    assert "match the source model" in done.stdout and (tmp_path / "nb.onnx").exists()


def test_cli_sklearn_names_the_extra_when_its_packages_are_missing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # as on an install without scikit-learn (and so joblib)
    monkeypatch.setitem(sys.modules, "joblib", None)
    monkeypatch.setitem(sys.modules, "skl2onnx", None)
    (tmp_path / "m.pkl").write_bytes(b"not read")
    result = run("convert", "sklearn", tmp_path / "m.pkl", "--trust-pickle", "--out", tmp_path / "m.onnx")
    assert result.exit_code == 2
    assert result.stderr.splitlines() == ["onnxplain: error: converting a scikit-learn model needs joblib, "
                                          "scikit-learn and skl2onnx, not installed: pip install joblib scikit-learn "
                                          "skl2onnx (or install onnxplain with its [convert] extra)"]


def test_cli_sklearn_pickle_of_a_missing_package_names_it(tmp_path):
    (tmp_path / "m.pkl").write_bytes(b"cmissing_package\nThing\n.")  # a pickled reference to missing_package.Thing
    result = run("convert", "sklearn", tmp_path / "m.pkl", "--trust-pickle", "--out", tmp_path / "m.onnx")
    assert result.exit_code == 2 and "needs the module 'missing_package', which is not installed" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_convert_extra_holds_what_the_messages_promise():
    tomllib = pytest.importorskip("tomllib")
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert pyproject["project"]["name"] == "onnxplain"
    extra = " ".join(pyproject["project"]["optional-dependencies"]["convert"])
    assert all(package in extra for package in ("scikit-learn", "skl2onnx", "onnxscript"))


FFT_SOURCE = """
import torch


class Spectrum(torch.nn.Module):
    def forward(self, x):
        return torch.fft.fft(x.flatten(1)).abs()  # the TorchScript exporter has no ONNX op for aten::fft_fft


def make():
    return Spectrum()
"""


NEEDS_ONNXSCRIPT = ("the dynamo exporter needs onnxscript, which is not installed (pip install onnxscript, or "
                    "install onnxplain with its [convert] extra)")


@pytest.fixture
def without_onnxscript(monkeypatch):
    """As on an install without onnxscript: the dynamo exporter fails to import it, the TorchScript one runs."""
    real_export = torch.onnx.export

    def export(*args, dynamo=True, **kwargs):
        if dynamo:
            raise ModuleNotFoundError("No module named 'onnxscript'", name="onnxscript")
        return real_export(*args, dynamo=False, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", export)
    monkeypatch.setitem(sys.modules, "onnxscript", None)


def test_cli_pytorch_without_onnxscript_says_so(tmp_path, without_onnxscript, capfd):
    (tmp_path / "fft.py").write_text(FFT_SOURCE)
    (tmp_path / "net.py").write_text(NET_SOURCE)
    failed = run("convert", "pytorch", f"{tmp_path / 'fft.py'}:make", "--input-shape", "1,3,3",
                    "--out", tmp_path / "fft.onnx")
    assert failed.exit_code == 2
    [line] = failed.stderr.strip().splitlines()
    assert line.startswith(f"onnxplain: error: {NEEDS_ONNXSCRIPT}; the TorchScript exporter, tried instead, "
                           "failed: UnsupportedOperatorError"), line
    assert "Torch IR graph" not in capfd.readouterr().out  # the exporter's graph dump stays off the terminal
    done = run("convert", "pytorch", f"{tmp_path / 'net.py'}:make", "--input-shape", "1,6,6",
                  "--out", tmp_path / "net.onnx")
    assert done.exit_code == 0 and "(TorchScript)" in done.stdout, done.output
    assert done.stderr.strip().splitlines() == [no_weights_note(tmp_path / "net.py"),
                                                f"note: written by the TorchScript exporter: {NEEDS_ONNXSCRIPT}"]


def no_weights_note(module) -> str:
    return (f"note: no --weights given: exported the weights {module}:make() returned (freshly initialised ones, "
            "unless it loads trained weights itself)")


def test_cli_pytorch_factory_and_state_dict(tmp_path):
    (tmp_path / "net.py").write_text(NET_SOURCE)
    trained = small_net()
    torch.save(trained.state_dict(), tmp_path / "w.pt")
    (tmp_path / "labels.txt").write_text("x\ny\nz\n")
    result = run("convert", "pytorch", f"{tmp_path / 'net.py'}:make", "--weights", tmp_path / "w.pt",
                    "--input-shape", "1,6,6", "--labels", tmp_path / "labels.txt", "--out", tmp_path / "n.onnx")
    assert result.exit_code == 0, result.output
    assert "--weights" not in result.stderr   # the no-weights note only where none were given
    x = np.random.default_rng(0).random((3, 1, 6, 6), dtype=np.float32)
    with torch.no_grad():
        expected = trained(torch.from_numpy(x)).numpy()  # the loaded weights, not make()'s fresh ones
    np.testing.assert_allclose(ort_run(tmp_path / "n.onnx", x)[0], expected, rtol=1e-5, atol=1e-5)
    assert onnxplain.load(tmp_path / "n.onnx").labels == ["x", "y", "z"]


def test_cli_pytorch_without_weights_says_which_were_exported(tmp_path):
    """No --weights: the note says the factory's own weights were exported (it may load trained ones itself)."""
    (tmp_path / "net.py").write_text(NET_SOURCE)
    result = run("convert", "pytorch", f"{tmp_path / 'net.py'}:make", "--input-shape", "1,6,6",
                    "--out", tmp_path / "n.onnx")
    assert result.exit_code == 0, result.output
    assert result.stderr.strip().splitlines()[0] == no_weights_note(tmp_path / "net.py")
    assert (tmp_path / "n.onnx").is_file()


def test_cli_pytorch_refuses_pickled_objects_as_weights(tmp_path):
    (tmp_path / "net.py").write_text(NET_SOURCE)
    torch.save({"weights": SignBranch()}, tmp_path / "evil.pt")  # a pickled module object, not tensors
    result = run("convert", "pytorch", f"{tmp_path / 'net.py'}:make", "--weights", tmp_path / "evil.pt",
                    "--input-shape", "1,6,6", "--out", tmp_path / "n.onnx")
    assert result.exit_code == 2 and "weights_only" in result.stderr
    assert not (tmp_path / "n.onnx").exists()


@pytest.mark.parametrize("args, message", [
    (["pytorch", "nofactory", "--input-shape", "3"], "MODULE:FACTORY"),
    (["pytorch", "missing.py:make", "--input-shape", "3"], "not found"),
    (["pytorch", "onnxplain.viz:limit", "--input-shape", "1,-2"], "--input-shape"),
    (["pytorch", "onnxplain.viz:limit", "--input-shape", "1,2"], "limit() failed"),
    (["sklearn", "missing.pkl", "--trust-pickle"], "not found"),
    (["pytorch", "onnxplain.viz:limit", "--input-shape", "3", "--atol", "-1"], "--atol"),
    (["pytorch", "onnxplain.viz:limit", "--input-shape", "3", "--opset", "5"], "--opset"),
])
def test_cli_convert_bad_arguments(tmp_path, args, message):
    result = run("convert", *args, "--out", tmp_path / "o.onnx")
    assert result.exit_code == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_cli_convert_output_paths_and_opset(tmp_path):
    """--out must be an .onnx path that can be written (checked before any work); an opset older than the dynamo
    exporter's is honoured; labels must match the classes."""
    (tmp_path / "net.py").write_text(NET_SOURCE)
    (tmp_path / "file").write_text("a file where a folder should be")
    (tmp_path / "two.txt").write_text("x\ny\n")
    factory = ["convert", "pytorch", f"{tmp_path / 'net.py'}:make", "--input-shape", "1,6,6"]
    for out, extra, message in ((tmp_path / "n.pt", [], "must name an .onnx file"),
                                (tmp_path / "file" / "n.onnx", [], "is a file, not a folder"),
                                (tmp_path / "n.onnx", ["--labels", tmp_path / "two.txt"],
                                 "2 labels for a model with 3")):
        result = run(*factory, *extra, "--out", out)
        assert result.exit_code == 2 and message in result.stderr, result.output
        assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()
    (tmp_path / "mean.py").write_text(MEAN_SOURCE)     # a mean over axes: the version converter's ReduceMean
    for opset in (13, 15):                             # at opset 14-17 is invalid: the TorchScript exporter runs
        made = run("convert", "pytorch", f"{tmp_path / 'mean.py'}:make", "--input-shape", "2,5,5", "--opset",
                      opset, "--out", tmp_path / f"m{opset}.onnx")
        assert made.exit_code == 0 and f"opset {opset}" in made.stdout, made.output
    done = run(*factory, "--opset", "13", "--out", tmp_path / "n13.onnx")
    assert done.exit_code == 0, done.output
    opsets = {o.domain: o.version for o in onnx.load(tmp_path / "n13.onnx").opset_import}
    assert opsets.get("", opsets.get("ai.onnx")) == 13
