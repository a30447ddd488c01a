"""Keras / TensorFlow -> ONNX through tf2onnx, or Keras 3's own `model.export(format="onnx")`; neither is a
dependency of onnxplain, so a missing one is reported by name."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from onnxplain.errors import OnnxplainError

from .common import ConversionReport, embed_metadata, rename_io, sample_batch, verify_and_write

MISSING = ("converting a Keras model needs tf2onnx (pip install tf2onnx tensorflow) or Keras 3 with ONNX export "
           "(pip install 'keras>=3.6' onnx); neither is installed")


def installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def use_torch_backend_without_tensorflow() -> None:
    """Keras 3 defaults to the TensorFlow backend; without TensorFlow, run it on torch (before keras is imported).
    With TensorFlow, keep its C++ start-up notices off the user's terminal (warnings and errors still show)."""
    if not installed("tensorflow"):
        os.environ.setdefault("KERAS_BACKEND", "torch")
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")


def _is_keras3(model) -> bool:
    """A Keras 3 model (any backend), as opposed to a tf.keras / tf_keras (Keras 2) one."""
    if not installed("keras"):
        return False
    import keras

    return int(keras.__version__.split(".")[0]) >= 3 and isinstance(model, keras.Model)


def _export(model, batch: np.ndarray, opset: int | None, input_name: str):
    """(ModelProto, exporter description). Keras 3 models go through Keras's own ONNX export (tf2onnx's
    `from_keras` does not understand them); Keras 2 (tf.keras) models through tf2onnx."""
    if _is_keras3(model):
        return _keras_export(model, batch, opset)
    if installed("tf2onnx") and installed("tensorflow"):
        import tensorflow as tf
        import tf2onnx

        signature = (tf.TensorSpec((None, *batch.shape[1:]), tf.float32, name=input_name),)
        proto, _ = _exporting("tf2onnx", lambda: tf2onnx.convert.from_keras(model, input_signature=signature,
                                                                            opset=opset))
        return proto, f"tf2onnx {tf2onnx.__version__}"
    raise OnnxplainError(MISSING)


def _keras_export(model, batch: np.ndarray, opset: int | None):
    import keras
    import onnx

    with tempfile.TemporaryDirectory(prefix="onnxplain-keras-") as folder:
        target = Path(folder) / "model.onnx"
        model.predict(batch[:2], verbose=0)  # Keras exports only a model that has been called
        _exporting("Keras", lambda: model.export(str(target), format="onnx", verbose=False, opset_version=opset))
        return onnx.load(target), f"keras {keras.__version__} export ({keras.backend.backend()} backend)"


def _exporting(exporter: str, export):
    """Run an exporter; its failure (any exception: exporters have no common error type) becomes one line."""
    try:
        return export()
    except ImportError as error:
        raise OnnxplainError(f"{exporter} export needs a missing package: {error}") from None
    except Exception as error:
        text = str(error).strip().splitlines()
        raise OnnxplainError(f"{exporter} cannot export this model to ONNX: {type(error).__name__}"
                             f"{': ' + text[0] if text else ''}") from None


def convert_keras(model, path: str | os.PathLike, *, samples: np.ndarray | None = None,
                  input_shape: tuple[int, ...] | None = None, opset: int | None = None, input_name: str = "input",
                  output_name: str = "output", preprocess=None, labels: list | None = None,
                  atol: float = 1e-4) -> ConversionReport:
    """Export a Keras model with one input and one output of class scores to `path`; the graph's input and output
    are named `input_name` and `output_name` (the exporters' own names, such as '23', say nothing)."""
    if input_shape is None and samples is None:
        shape = tuple(getattr(model, "input_shape", (None,))[1:])
        if not shape or None in shape:
            raise OnnxplainError("give the input shape (without the batch axis) or sample inputs")
        input_shape = shape
    shape = tuple(input_shape) if input_shape is not None else tuple(np.shape(samples)[1:])
    integer = "int" in str(getattr(getattr(model, "inputs", [None])[0], "dtype", ""))
    batch = sample_batch(samples, shape, preprocess, integer=integer)
    proto, exporter = _export(model, batch, opset, input_name)
    expected = np.asarray(model.predict(batch, verbose=0))
    embed_metadata(rename_io(proto, input_name, output_name), preprocess, labels)
    return verify_and_write(proto, path, batch, expected, exporter=exporter, output=output_name, atol=atol)
