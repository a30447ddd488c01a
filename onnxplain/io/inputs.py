"""Reading user inputs (images, .npy tensors, NIfTI volumes) into one model-input batch."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ..errors import OnnxplainError, named_list
from .preprocess import box_text

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
NIFTI_SUFFIXES = (".nii", ".nii.gz")


def expand_paths(paths) -> list[Path]:
    """Files as given; folders replaced by the inputs they hold (sorted; other files and subfolders are skipped, see
    `skipped_note`: folders are not searched recursively)."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(sorted(p for p in path.iterdir() if p.is_file() and _kind(p) != "unknown"))
        elif path.is_file():
            found.append(path)
        else:
            raise OnnxplainError(f"input not found: {path}")
    if not found:
        nested = skipped_folders(paths)
        hint = f" (folders are not searched recursively: {named_list(nested)} not read)" if nested else ""
        raise OnnxplainError("no inputs found in " + ", ".join(map(str, paths)) + hint)
    return found


def skipped_files(paths) -> list[Path]:
    """The files in the folders among `paths` that `expand_paths` skips (not images, .npy or NIfTI; sorted)."""
    return sorted(p for raw in paths if Path(raw).is_dir() for p in Path(raw).iterdir()
                  if p.is_file() and _kind(p) == "unknown")


def skipped_folders(paths) -> list[Path]:
    """The subfolders of the folders among `paths` (sorted): `expand_paths` does not look inside them."""
    return sorted(p for raw in paths if Path(raw).is_dir() for p in Path(raw).iterdir() if p.is_dir())


def skipped_note(paths, limit: int = 5) -> str | None:
    """One line naming what `expand_paths` skipped in the folders among `paths` (the first `limit` of each kind):
    files that are no inputs, and subfolders, whose inputs are not read (no recursive search)."""
    files, folders = skipped_files(paths), skipped_folders(paths)
    parts = []
    if files:
        parts.append(f"skipped {len(files)} file(s) that are not images, .npy or NIfTI: {named_list(files, limit)}")
    if folders:
        parts.append(f"skipped {len(folders)} subfolder(s) (inputs are not searched for recursively; name a "
                     f"subfolder to read it): {named_list(folders, limit)}")
    return "note: " + "; ".join(parts) if parts else None



def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if path.suffix.lower() == ".npy":
        return "npy"
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return "image"
    return "unknown"


def read_image(path: Path) -> np.ndarray:
    """Pixels (HxW or HxWx3 uint8) of an image file, 16-bit ones scaled to 8 bits; anything else (and an image
    past Pillow's decompression-bomb limit) is a clear error."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():   # images up to twice Pillow's warning size are read without a word
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                return _eight_bit(image, path)
    except Image.DecompressionBombError as error:
        raise OnnxplainError(f"{path} is too large to read: {error}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise OnnxplainError(f"{path} is not a readable image") from None


def _eight_bit(image, path: Path) -> np.ndarray:
    """L or RGB pixels of an open image: 16-bit gray (I;16, or I above 255) scaled to 0..255, not clipped; float
    and 32-bit images taken as they are when they hold 0..255."""
    if image.mode in ("L", "RGB"):
        return np.asarray(image)
    if image.mode not in ("I", "F") and not image.mode.startswith("I;16"):
        return np.asarray(image.convert("RGB"))
    values = np.asarray(image, dtype=np.float64)
    if not np.isfinite(values).all():
        raise OnnxplainError(f"{path} has NaN or Inf pixel values")
    low, high = values.min(initial=0), values.max(initial=0)
    top = 65535 if image.mode.startswith("I;16") or high > 255 else 255
    if low < 0 or high > top or (image.mode == "F" and top > 255):
        raise OnnxplainError(f"{path} holds {image.mode} pixel values from {low:g} to {high:g}, outside 0..255 and "
                             "not 16-bit: give the preprocessed tensor as .npy")
    return np.round(values * (255 / top)).astype(np.uint8)


def read_npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except Exception:  # a damaged header raises ValueError, SyntaxError, tokenize.TokenError, ...
        raise OnnxplainError(f"{path} is not a readable .npy array (not an .npy file, or one holding Python "
                             "objects, which are never unpickled)") from None
    if not isinstance(array, np.ndarray):   # np.load opens an .npz archive whatever its name
        array.close()
        raise OnnxplainError(f"{path} is an .npz archive, not an .npy array")
    return array


def read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(volume as float32, 4x4 affine) of a NIfTI file."""
    import nibabel

    try:
        image = nibabel.load(str(path))
        return np.asarray(image.get_fdata(dtype=np.float32)), np.asarray(image.affine)
    except Exception as error:  # nibabel raises several unrelated types for bad files
        raise OnnxplainError(f"{path} is not a readable NIfTI volume ({type(error).__name__})") from None


def volume_to_tensor(volume: np.ndarray, model, source: str = "volume") -> np.ndarray:
    """A 3-D volume -> one model input: the spec's crop, then flattened or given a channel axis. A volume on
    another grid than the spec's `scan_shape`, or one that does not hold the crop box, is a user error that
    names `source`."""
    spec = model.preprocess
    shape = "x".join(map(str, volume.shape))
    if spec is not None and spec.scan_shape is not None and tuple(volume.shape) != tuple(spec.scan_shape):
        raise OnnxplainError(f"{source}: a volume of shape {shape} is not on the model's scan grid "
                             f"{'x'.join(map(str, spec.scan_shape))} (its crop box {box_text(spec.crop)} is cut "
                             "from that grid); resample the scan to it")
    if spec is not None and spec.crop is not None:
        if volume.ndim != len(spec.crop) or any(b > n for (_, b), n in zip(spec.crop, volume.shape)):
            raise OnnxplainError(f"{source}: a volume of shape {shape} does not hold the model's crop box "
                                 f"{box_text(spec.crop)}")
        volume = volume[tuple(slice(a, b) for a, b in spec.crop)]
    size = int(np.prod([d for d in model.input_shape[1:] if d])) if all(model.input_shape[1:]) else None
    if len(model.input_shape) == 2:
        if size is not None and volume.size != size:
            cropped = f" (cropped to {'x'.join(map(str, volume.shape))})" if spec is not None and spec.crop else ""
            raise OnnxplainError(f"{source}: a volume of shape {shape}{cropped} has {volume.size} voxels, not the "
                                 f"model's {size} features")
        return volume.reshape(-1).astype(np.float32)
    return volume[None].astype(np.float32) if len(model.input_shape) == 5 else volume.astype(np.float32)


def as_batch(array: np.ndarray, model, what: str) -> np.ndarray:
    """An .npy array as a batch: as it is when it has the batch axis, with one added when it is one sample (its
    rank one less and its sizes the model's per sample); else a clear error that starts with `what`."""
    array = np.asarray(array)
    rank = len(model.input_shape)
    if array.ndim not in (rank, rank - 1):
        shown = "x".join("N" if d is None else str(d) for d in model.input_shape)
        given = f"of shape {'x'.join(map(str, array.shape))}" if array.ndim else "holding a single number (shape ())"
        raise OnnxplainError(f"{what}: an array {given} is neither a batch of this model's input ({shown}) nor one "
                             "sample of it")
    sample = model.input_shape[1:]
    if array.ndim == rank - 1 and any(d is not None and d != n for d, n in zip(sample, array.shape)):
        raise OnnxplainError(f"{what}: one sample of shape {'x'.join(map(str, array.shape))} does not fit the "
                             f"model's {'x'.join('?' if d is None else str(d) for d in sample)} per sample")
    return array if array.ndim == rank else array[None]


def to_model_inputs(path: Path, model) -> np.ndarray:
    """One input file -> a batch of model inputs: one sample, or all of an .npy that has the batch axis."""
    kind = _kind(path)
    if kind == "npy":
        return as_batch(read_npy(path), model, str(path))
    if kind == "nifti":
        return volume_to_tensor(read_nifti(path)[0], model, str(path))[None]
    if kind == "image":
        if model.preprocess is None:
            raise OnnxplainError(f"{path}: this model has no preprocessing spec for images; "
                                 "pass --preprocess spec.json, or a preprocessed .npy tensor")
        _check_spec_size(model, path)
        tensor = model.preprocess.image_to_tensor(read_image(path))
        _check_whole_pixels(model, tensor, path)
        return _flat_into_sample(tensor, model)[None]
    raise OnnxplainError(f"{path}: unknown input type (expected an image, .npy or .nii/.nii.gz)")


def _flat_into_sample(tensor: np.ndarray, model) -> np.ndarray:
    """A flat spec's row-major (H, W, C) values shaped as the model's sample where it is (H, W) gray or (H, W, C)
    of the spec's channels; any other sample (channels first, other sizes) gets them flat, for check_input to name."""
    spec, sample = model.preprocess, tuple(model.input_shape[1:])
    fits = (len(sample) == 2 and spec.channels == 1) or (len(sample) == 3 and sample[-1] == spec.channels)
    if spec.layout != "flat" or not all(sample) or not fits or tensor.size != int(np.prod(sample)):
        return tensor
    return tensor.reshape(sample)


def _check_whole_pixels(model, tensor: np.ndarray, path: Path) -> None:
    """A model taking integer pixels needs a spec that keeps them whole: one that scales them (by 1/255, or a
    mean/std) is named, rather than the fractions it makes."""
    if np.issubdtype(model.input_dtype, np.integer) and not np.array_equal(tensor, np.round(tensor)):
        spec = model.preprocess
        listed = lambda values: "[" + ", ".join(f"{v:g}" for v in np.ravel(values)) + "]"   # noqa: E731
        raise OnnxplainError(f"{path}: the {model.preprocess_source} preprocessing spec (scale {spec.scale:g}, mean "
                             f"{listed(spec.mean)}, std {listed(spec.std)}) makes fractions of the pixels, but this "
                             f"model takes {model.input_dtype} pixels: give a spec that keeps them whole (scale 1, "
                             "no mean/std)")


def _check_spec_size(model, path: Path) -> None:
    """Before resizing: a spec size that cannot give the model's (static) input is an error, not a huge resize."""
    spec, sample = model.preprocess, model.input_shape[1:]
    if spec.size is None or not all(sample):
        return
    values = int(np.prod(spec.size)) * spec.channels
    if values != int(np.prod(sample)):
        raise OnnxplainError(f"{path}: the preprocessing spec makes images of {'x'.join(map(str, spec.size))} "
                             f"pixels x {spec.channels} channel(s), which does not fit the model's input "
                             f"{'x'.join(map(str, sample))} per sample")


def load_inputs(paths, model) -> tuple[np.ndarray, list[Path]]:
    """Every input as one checked batch (N, *input_shape) plus, per sample, the file it came from
    (an .npy batch of n samples is listed as name[0] ... name[n-1])."""
    batches, sources = [], []
    for path in expand_paths(paths):
        batch = to_model_inputs(path, model)
        try:
            batches.append(model.check_input(batch))
        except OnnxplainError as error:
            raise OnnxplainError(f"{path}: {error}") from None
        if batch.shape[1:] != batches[0].shape[1:]:   # a model with free axes takes any size, but one at a time
            shape = "x".join(map(str, batches[0].shape[1:]))
            raise OnnxplainError(f"{path}: samples of shape {'x'.join(map(str, batch.shape[1:]))} differ from "
                                 f"{sources[0]}'s {shape}: inputs run together share one shape (run them "
                                 "separately, or resize them alike)")
        sources.extend([path] if len(batch) == 1 else [path.with_name(f"{path.name}[{i}]") for i in range(len(batch))])
    return joined(batches), sources


def joined(batches: list[np.ndarray]) -> np.ndarray:
    """The batches as one array, each dropped from the list once copied in: memory peaks near the total plus one
    file's inputs, not twice the total."""
    if len(batches) == 1:
        return batches.pop()
    out = np.empty((sum(map(len, batches)), *batches[0].shape[1:]), batches[0].dtype)
    start = 0
    while batches:
        batch = batches.pop(0)
        out[start:start + len(batch)] = batch
        start += len(batch)
    return out
