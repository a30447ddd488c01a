"""Reading inputs and the preprocessing specs that turn them into model tensors."""
from .inputs import load_inputs, read_image, read_nifti, read_npy
from .preprocess import PreprocessSpec

__all__ = ["load_inputs", "read_image", "read_nifti", "read_npy", "PreprocessSpec"]
