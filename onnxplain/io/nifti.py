"""Volumes back out: a model input (or its relevance) as a 3-D volume on the input's grid, written as NIfTI.

The inverse of `inputs.volume_to_tensor`: channels summed, a flat vector reshaped to the spec's crop box, and the
crop box placed back into the full volume (zeros outside), so the result lines up with the input in any viewer.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import OnnxplainError


def is_volume_input(model) -> bool:
    """True when one model input is a 3-D volume: a crop box in the spec, or a (D, H, W) / (C, D, H, W) tensor
    that is not an image layout (by the spec, or by the convolution it feeds: `Model.image_layout`)."""
    spec = model.preprocess
    if spec is not None and spec.crop is not None:
        return True
    dims = len(model.input_shape) - 1
    return dims == 4 or (dims == 3 and (spec is None or spec.layout == "flat")
                         and getattr(model, "image_layout", None) is None)


def sample_to_volume(sample: np.ndarray, model, full_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """One input (or relevance shaped like it, no batch axis) -> a 3-D volume; with `full_shape`, the crop box
    is placed back into a zero volume of that shape."""
    spec = model.preprocess
    array = np.asarray(sample, dtype=np.float64)
    crop = spec.crop if spec is not None else None
    if array.ndim == 4:   # channels summed: (C, D, H, W), or (D, H, W, C) where a Conv3d reads them last
        array = array.sum(axis=-1 if getattr(model, "image_layout", None) == "channels_last" else 0)
    box_shape = tuple(b - a for a, b in crop) if crop is not None else full_shape
    if array.ndim == 1:
        if box_shape is None or int(np.prod(box_shape)) != array.size:
            raise OnnxplainError(f"cannot lay {array.size} features out as a volume: the preprocessing spec needs "
                                 "a 'crop' box (or give the input as NIfTI of the right size)")
        array = array.reshape(box_shape)
    if array.ndim != 3:
        raise OnnxplainError(f"an input of shape {tuple(np.shape(sample))} is not a volume")
    if full_shape is None or crop is None:
        return array
    volume = np.zeros(full_shape, dtype=np.float64)
    volume[tuple(slice(a, b) for a, b in crop)] = array
    return volume


def write_nifti(path: str | os.PathLike, volume: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Write a 3-D float32 volume with `affine` (identity when None); .nii or .nii.gz by the file name."""
    import nibabel

    path = Path(path)
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        raise OnnxplainError(f"a NIfTI file name must end in .nii or .nii.gz: {path}")
    image = nibabel.Nifti1Image(np.asarray(volume, dtype=np.float32), np.eye(4) if affine is None else affine)
    nibabel.save(image, str(path))
    return path
