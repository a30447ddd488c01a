"""Keras / TensorFlow -> ONNX through tf2onnx, or Keras 3's own `model.export(format="onnx")`; neither is a
dependency of onnxplain, so a missing one is reported by name."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from onnxplain.errors import OnnxplainError

from .common import ConversionReport, embed_metadata, sample_batch, verify_and_write

MISSING = ("converting a Keras model needs tf2onnx (pip install tf2onnx tensorflow) or Keras 3 with ONNX export "
           "(pip install 'keras>=3.6' onnx); neither is installed")


def installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def use_torch_backend_without_tensorflow() -> None:
    """Keras 3 defaults to the TensorFlow backend; without TensorFlow, run it on torch (before keras is imported)."""
    if not installed("tensorflow"):
        os.environ.setdefault("KERAS_BACKEND", "torch")


def _export(model, batch: np.ndarray, opset: int | None, input_name: str):
    """(ModelProto, exporter description)."""
    import onnx

    if installed("tf2onnx") and installed("tensorflow"):
        import tensorflow as tf
        import tf2onnx

        signature = (tf.TensorSpec((None, *batch.shape[1:]), tf.float32, name=input_name),)
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=opset)
        return proto, f"tf2onnx {tf2onnx.__version__}"
    if installed("keras") and hasattr(model, "export"):
        with tempfile.TemporaryDirectory(prefix="onnxplain-keras-") as folder:
            target = Path(folder) / "model.onnx"
            try:
                model.predict(batch[:2], verbose=0)  # Keras exports only a model that has been called
                model.export(str(target), format="onnx", verbose=False)
            except (TypeError, ValueError) as error:
                raise OnnxplainError(f"Keras cannot export this model to ONNX: {str(error).splitlines()[0]}") from None
            import keras

            return onnx.load(target), f"keras {keras.__version__} export ({keras.backend.backend()} backend)"
    raise OnnxplainError(MISSING)


def convert_keras(model, path: str | os.PathLike, *, samples: np.ndarray | None = None,
                  input_shape: tuple[int, ...] | None = None, opset: int | None = None, input_name: str = "input",
                  preprocess=None, labels: list | None = None, atol: float = 1e-4) -> ConversionReport:
    """Export a Keras model with one input and one output of class scores to `path`."""
    if input_shape is None and samples is None:
        shape = tuple(getattr(model, "input_shape", (None,))[1:])
        if not shape or None in shape:
            raise OnnxplainError("give the input shape (without the batch axis) or sample inputs")
        input_shape = shape
    shape = tuple(input_shape) if input_shape is not None else tuple(np.shape(samples)[1:])
    batch = sample_batch(samples, shape, preprocess)
    proto, exporter = _export(model, batch, opset, input_name)
    expected = np.asarray(model.predict(batch, verbose=0))
    embed_metadata(proto, preprocess, labels)
    return verify_and_write(proto, path, batch, expected, exporter=exporter,
                            output=proto.graph.output[0].name, atol=atol)
