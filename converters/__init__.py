"""Converters into ONNX (PyTorch, scikit-learn, Keras): each embeds the preprocessing spec and labels in the
model's metadata and checks the ONNX model against the source model on sample inputs before writing it."""
from .common import ConversionReport, embed_metadata
from .keras import convert_keras
from .pytorch import convert_pytorch
from .sklearn import convert_sklearn

__all__ = ["ConversionReport", "convert_keras", "convert_pytorch", "convert_sklearn", "embed_metadata"]
