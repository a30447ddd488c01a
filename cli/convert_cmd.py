"""`onnxplain convert`: PyTorch, scikit-learn and Keras models into ONNX, verified against the source before writing.

What is trusted, and how:
  * pytorch: `MODULE:FACTORY` names Python code (a .py file or an importable module) that builds the network; it
    runs like any script you start, so name only code you trust. Weights come from a state_dict file read with
    `torch.load(weights_only=True)`, which never unpickles arbitrary objects.
  * sklearn: scikit-learn models are pickles, and unpickling runs code hidden in the file: the command refuses
    unless `--trust-pickle` says you trust the file's source.
  * keras: `.keras` files are loaded with Keras's safe mode on (no deserialised Python lambdas).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import click
import onnx
import numpy as np

from onnxplain.errors import OnnxplainError
from onnxplain.io import read_npy
from onnxplain.io.preprocess import PreprocessSpec

from .common import NonEmptyPath, read_labels
from .outputs import check_output

out_option = click.option("--out", type=NonEmptyPath(dir_okay=False), required=True,
                          help="The .onnx file to write (only after verification passed).")
samples_option = click.option("--samples", type=NonEmptyPath(dir_okay=False),
                              help=".npy batch of model inputs to verify on (default: 8 random inputs).")
spec_option = click.option("--preprocess", type=NonEmptyPath(dir_okay=False),
                           help="Preprocessing spec (JSON) to embed in the model's metadata.")
labels_option = click.option("--labels", type=NonEmptyPath(dir_okay=False),
                             help="Class names, one per line, to embed.")
atol_option = click.option("--atol", type=click.FloatRange(min=0), default=1e-4, show_default=True,
                           help="Largest output difference accepted between the source model and ONNX.")


CONVERT_EXTRA = "or install onnxplain with its [convert] extra"
DYNAMO_NEEDS_ONNXSCRIPT = f"the dynamo exporter needs onnxscript, which is not installed (pip install onnxscript, " \
                          f"{CONVERT_EXTRA})"
SKLEARN_PACKAGES = {"joblib": "joblib", "sklearn": "scikit-learn", "skl2onnx": "skl2onnx"}  # module: pip name


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def check_sklearn_installed() -> None:
    """Before any work: the packages that read the pickle and convert it, named for pip when missing."""
    missing = [package for module, package in SKLEARN_PACKAGES.items() if not has_module(module)]
    if missing:
        listed = " and ".join([", ".join(missing[:-1]), missing[-1]] if len(missing) > 1 else missing)
        raise OnnxplainError(f"converting a scikit-learn model needs {listed}, not installed: "
                             f"pip install {' '.join(missing)} ({CONVERT_EXTRA})")


def without_onnxscript(error: OnnxplainError) -> OnnxplainError:
    """An export failure where onnxscript is missing: the dynamo exporter could not run at all, so say that, and
    what the TorchScript exporter said."""
    _, found, torchscript = str(error).partition("; TorchScript exporter: ")
    if not found or has_module("onnxscript"):
        return error
    return OnnxplainError(f"{DYNAMO_NEEDS_ONNXSCRIPT}; the TorchScript exporter, tried instead, failed: {torchscript}")


def check_out(out: Path) -> None:
    """Before any conversion work: `--out` names an .onnx file that can be written."""
    if out.suffix.lower() != ".onnx":
        raise OnnxplainError(f"--out must name an .onnx file, not {out}")
    check_output(out, "file")


def read_spec(path: Path | None) -> PreprocessSpec | None:
    return None if path is None else PreprocessSpec.from_file(path)


def read_samples(path: Path | None) -> np.ndarray | None:
    if path is None:
        return None
    if not path.is_file():
        raise OnnxplainError(f"samples file not found: {path}")
    return read_npy(path)


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        raise OnnxplainError(f"--input-shape expects sizes like 1,28,28, got {text!r}") from None
    if not shape or min(shape) < 1:
        raise OnnxplainError(f"--input-shape expects positive sizes like 1,28,28, got {text!r}")
    return shape


def echo_report(report) -> None:
    click.echo(f"wrote {report.path} ({report.exporter}); class scores {report.score_output!r} "
               f"({report.score_kind}) match the source model to {report.max_abs_diff:.2g} "
               f"on {report.samples} inputs")


def load_factory(spec: str):
    """`path/to/file.py:factory` or `package.module:factory` -> the callable."""
    if ":" not in spec:
        raise OnnxplainError(f"expected MODULE:FACTORY (e.g. net.py:make_model), got {spec!r}")
    where, name = spec.rsplit(":", 1)
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise OnnxplainError(f"module file not found: {path}")
        module_spec = importlib.util.spec_from_file_location(f"onnxplain_user_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        sys.path.insert(0, str(path.parent.resolve()))
        try:
            module_spec.loader.exec_module(module)
        finally:
            sys.path.pop(0)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as error:
            raise OnnxplainError(f"cannot import {where}: {error}") from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise OnnxplainError(f"{where} has no callable {name!r}")
    return factory


def load_state_dict(module, weights: Path) -> None:
    import torch

    if not weights.is_file():
        raise OnnxplainError(f"weights file not found: {weights}")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, ... for unsafe or bad files
        raise OnnxplainError(f"{weights} is not a plain state_dict (read with weights_only=True): "
                             f"{str(error).splitlines()[0][:200]}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise OnnxplainError(f"{weights} holds a {type(state).__name__}, not a state_dict")
    try:
        module.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as error:
        # torch's message is a header line and then one indented line per problem: keep the first problem
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = " ".join(lines[:2])[:300]
        raise OnnxplainError(f"{weights} does not fit the network: {detail}") from None


@click.group("convert")
def convert_group():
    """Convert a PyTorch, scikit-learn or Keras classifier into ONNX (verified before it is written)."""


@convert_group.command("pytorch")
@click.argument("factory")
@click.option("--weights", type=NonEmptyPath(dir_okay=False),
              help="state_dict file (torch.save(model.state_dict())), read with weights_only=True.")
@click.option("--input-shape", "input_shape", help="One input's shape without the batch axis, e.g. 1,28,28.")
@click.option("--opset", type=click.IntRange(7, onnx.defs.onnx_opset_version()), default=18, show_default=True,
              help="ONNX opset to export (the dynamo exporter writes 18+; older opsets are converted, or exported by "
                   "the TorchScript exporter).")
@click.option("--input-name", default="input", show_default=True)
@click.option("--output-name", default="output", show_default=True)
@out_option
@samples_option
@spec_option
@labels_option
@atol_option
def pytorch_command(factory, weights, input_shape, opset, input_name, output_name, out, samples, preprocess,
                    labels, atol):
    """A PyTorch network into ONNX.

    FACTORY is file.py:function (or module:function) returning the torch.nn.Module; that code is run."""
    import torch

    from onnxplain.converters import convert_pytorch

    check_out(out)
    shape, batch, spec, names = parse_shape(input_shape), read_samples(samples), read_spec(preprocess), \
        read_labels(labels)
    build = load_factory(factory)
    try:
        module = build()
    except Exception as error:  # the user's code: report its failure in one line
        raise OnnxplainError(f"{factory}() failed: {type(error).__name__}: {str(error).splitlines()[0][:200]}") \
            from None
    if not isinstance(module, torch.nn.Module):
        raise OnnxplainError(f"{factory} returned {type(module).__name__}, not a torch.nn.Module")
    if weights is not None:
        load_state_dict(module, weights)
    with native_output_silenced():   # the exporter's C++ logging; failures arrive as exceptions
        try:
            report = convert_pytorch(module, out, input_shape=shape, samples=batch, opset=opset,
                                     input_name=input_name, output_name=output_name, preprocess=spec,
                                     labels=names, atol=atol)
        except OnnxplainError as error:
            raise without_onnxscript(error) from None
    echo_report(report)
    if weights is None:   # a factory may load trained weights itself: say what was exported, not that it is untrained
        click.echo(f"note: no --weights given: exported the weights {factory}() returned (freshly initialised "
                   "ones, unless it loads trained weights itself)", err=True)
    if not has_module("onnxscript"):
        click.echo(f"note: written by the TorchScript exporter: {DYNAMO_NEEDS_ONNXSCRIPT}", err=True)


@convert_group.command("sklearn")
@click.argument("model", type=NonEmptyPath(dir_okay=False))
@click.option("--trust-pickle", is_flag=True, help="Unpickle MODEL: only for files from a source you trust.")
@click.option("--zipmap", is_flag=True, help="Keep skl2onnx's ZipMap output (a list of dicts) as well.")
@click.option("--features", type=int, default=None, help="Number of input features (if the model does not say).")
@click.option("--opset", type=int, default=None, help="ONNX opset (default: skl2onnx's choice).")
@click.option("--input-name", default="input", show_default=True)
@out_option
@samples_option
@spec_option
@labels_option
@atol_option
def sklearn_command(model, trust_pickle, zipmap, features, opset, input_name, out, samples, preprocess, labels,
                    atol):
    """A scikit-learn classifier into ONNX.

    MODEL is a pickled (or joblib) fitted classifier; reading it needs --trust-pickle."""
    from onnxplain.converters import convert_sklearn

    check_out(out)
    check_sklearn_installed()
    if not model.is_file():
        raise OnnxplainError(f"model file not found: {model}")
    if not trust_pickle:
        raise OnnxplainError(f"refusing to unpickle {model}: a pickle can run any code when loaded; "
                             "pass --trust-pickle if you trust where it came from")
    import joblib

    try:
        estimator = joblib.load(model)
    except ModuleNotFoundError as error:  # the pickled classes live in a package this install lacks
        raise OnnxplainError(f"{model} could not be unpickled: it needs the module {error.name!r}, which is not "
                             "installed") from None
    except Exception as error:  # a corrupt pickle raises almost anything
        raise OnnxplainError(f"{model} could not be unpickled: {type(error).__name__}") from None
    echo_report(convert_sklearn(estimator, out, samples=read_samples(samples), n_features=features, zipmap=zipmap,
                                opset=opset, input_name=input_name, preprocess=read_spec(preprocess),
                                labels=read_labels(labels), atol=atol))


@convert_group.command("keras")
@click.argument("model", type=NonEmptyPath(dir_okay=False))
@click.option("--input-shape", "input_shape", help="One input's shape without the batch axis, if not fixed.")
@click.option("--opset", type=int, default=None, help="ONNX opset (tf2onnx).")
@click.option("--input-name", default="input", show_default=True)
@click.option("--output-name", default="output", show_default=True)
@out_option
@samples_option
@spec_option
@labels_option
@atol_option
def keras_command(model, input_shape, opset, input_name, output_name, out, samples, preprocess, labels, atol):
    """A Keras model into ONNX.

    MODEL is a .keras (or .h5) file; needs tf2onnx + tensorflow, or Keras 3 (on torch without TensorFlow)."""
    from onnxplain.converters import convert_keras
    from onnxplain.converters.keras import MISSING, installed, use_torch_backend_without_tensorflow

    check_out(out)
    if not model.is_file():
        raise OnnxplainError(f"model file not found: {model}")
    if not installed("keras"):
        raise OnnxplainError(MISSING)
    use_torch_backend_without_tensorflow()
    with native_output_silenced():
        try:
            import keras
        except ImportError as error:  # KERAS_BACKEND names a framework that is not installed
            raise OnnxplainError(f"keras cannot load its backend ({error}): install it, or set "
                                 "KERAS_BACKEND=torch") from None

        try:
            network = keras.models.load_model(model, safe_mode=True)
        except Exception as error:  # keras raises many types for bad files
            raise OnnxplainError(f"{model} is not a loadable Keras model: {str(error).splitlines()[0][:200]}") from None
        report = convert_keras(network, out, samples=read_samples(samples), input_shape=parse_shape(input_shape),
                               opset=opset, input_name=input_name, output_name=output_name,
                               preprocess=read_spec(preprocess), labels=read_labels(labels), atol=atol)
    echo_report(report)


@contextmanager
def native_output_silenced():
    """TensorFlow's and torch's exporters write notices (CUDA probing, oneDNN, unsupported-attribute logs, tracer
    warnings, the TorchScript exporter's graph dump on failure) straight to file descriptors 1 and 2, past Python
    and past TF_CPP_MIN_LOG_LEVEL; hide both while they load and run. Failures still arrive as exceptions, reported
    once the descriptors are restored."""
    descriptors = (1, 2)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(fd) for fd in descriptors]
    try:
        with open(os.devnull, "w") as devnull:
            for fd in descriptors:
                os.dup2(devnull.fileno(), fd)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in zip(descriptors, saved):
            os.dup2(copy, fd)
            os.close(copy)
