"""onnxplain: explanations (LRP, deep Taylor, prediction difference, gradients, contrastive) for ONNX classifiers."""
from .errors import OnnxplainError
from .explanation import Explanation, Method
from .model import Model, load

__all__ = ["Explanation", "Method", "Model", "OnnxplainError", "load"]
__version__ = "0.1.0"
