"""Preprocessing specs: how a picture becomes the model's input tensor, and back again for display.

A spec travels inside the ONNX file (``metadata_props['onnxplain.preprocess']``, JSON) or comes from
``--preprocess spec.json``. Fields (all optional but ``layout``)::

    layout  "NCHW" | "NHWC" | "flat"       where the channel axis goes; "flat" = one feature vector
    size    [H, W]                         the model's spatial size
    color   "gray" | "rgb" | "bgr"         channel order (Caffe models are BGR)
    resize  "stretch" | "shorter-side-crop"
    scale   float                          multiplies 0..255 pixel values
    mean    [per channel]                  subtracted after scaling
    std     [per channel]                  divided after subtracting
    crop    [[start, stop], ...]           for volumes: the box kept before flattening
    scan_shape  [D, H, W]                  for volumes: the grid of the scans the crop box is cut from (checked
                                           on reading a volume; specs without it take any grid the box fits)
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import OnnxplainError

METADATA_KEY = "onnxplain.preprocess"
LABELS_KEY = "onnxplain.labels"


@dataclass(frozen=True)
class PreprocessSpec:
    layout: str = "NCHW"
    size: tuple[int, int] | None = None
    color: str = "rgb"
    resize: str = "stretch"
    scale: float = 1 / 255
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    crop: tuple[tuple[int, int], ...] | None = field(default=None)
    scan_shape: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.layout not in ("NCHW", "NHWC", "flat"):
            raise OnnxplainError(f"preprocessing spec: layout must be NCHW, NHWC or flat, not {self.layout!r}")
        if self.color not in ("gray", "rgb", "bgr"):
            raise OnnxplainError(f"preprocessing spec: color must be gray, rgb or bgr, not {self.color!r}")
        if self.resize not in ("stretch", "shorter-side-crop"):
            raise OnnxplainError("preprocessing spec: resize must be stretch or shorter-side-crop, not "
                                 f"{self.resize!r}")
        _check_numbers("size", self.size, "two positive whole numbers [H, W]", whole=True, positive=True,
                       counts=(2,))
        _check_numbers("scale", (self.scale,), "a finite number", shown=repr(self.scale))
        for name in ("mean", "std"):
            _check_numbers(name, getattr(self, name), f"a list of 1 or {self.channels} finite numbers",
                           counts=(1, self.channels))
        if any(s == 0 for s in self.std):
            raise OnnxplainError("preprocessing spec: std must not contain 0")
        for pair in self.crop or ():
            _check_numbers("crop", pair, "[start, stop] pairs of whole numbers, 0 <= start < stop", whole=True,
                           counts=(2,), shown=repr(self.crop))
            if not 0 <= pair[0] < pair[1]:
                raise OnnxplainError(f"preprocessing spec: crop box {box_text(self.crop)} has an empty or negative "
                                     "range")
        _check_numbers("scan_shape", self.scan_shape, "positive whole numbers [D, H, W]", whole=True, positive=True)
        if self.scan_shape is not None:
            if self.crop is None or len(self.scan_shape) != len(self.crop):
                raise OnnxplainError("preprocessing spec: scan_shape needs a crop box with one [start, stop] per axis")
            if any(not 0 <= a < b <= n for (a, b), n in zip(self.crop, self.scan_shape)):
                raise OnnxplainError(f"preprocessing spec: the crop box {box_text(self.crop)} does not lie inside "
                                     f"scan_shape {'x'.join(map(str, self.scan_shape))}")

    @property
    def channels(self) -> int:
        return 1 if self.color == "gray" else 3

    @classmethod
    def from_dict(cls, data: dict) -> "PreprocessSpec":
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise OnnxplainError(f"preprocessing spec: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
        values = dict(data)
        try:
            for key in ("size", "mean", "std", "scan_shape"):
                if isinstance(values.get(key), list):
                    values[key] = tuple(values[key])
            if isinstance(values.get("crop"), list):
                values["crop"] = tuple(tuple(pair) if isinstance(pair, list) else pair for pair in values["crop"])
            return cls(**values)
        except TypeError as error:
            raise OnnxplainError(f"preprocessing spec: {error}") from None

    @classmethod
    def from_json(cls, text: str) -> "PreprocessSpec":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise OnnxplainError(f"preprocessing spec is not valid JSON: {error}") from None
        if not isinstance(data, dict):
            raise OnnxplainError("preprocessing spec must be a JSON object")
        return cls.from_dict(data)

    @classmethod
    def given(cls, value) -> "PreprocessSpec":
        """A spec given to `load`: a PreprocessSpec, a dict of its fields (a JSON spec's content) or a JSON path."""
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            return cls.from_dict(dict(value))
        if isinstance(value, (str, os.PathLike)):
            return cls.from_file(value)
        raise OnnxplainError("preprocess must be a PreprocessSpec, a dict of its fields (the JSON spec's content) "
                             f"or the path of a JSON spec, not {type(value).__name__}")

    @classmethod
    def from_file(cls, path) -> "PreprocessSpec":
        """A spec from a JSON file (`--preprocess spec.json`)."""
        from .text import read_text

        return cls.from_json(read_text(path, "preprocessing spec"))

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v is not None})

    def _per_channel(self, values: tuple[float, ...]) -> np.ndarray:
        array = np.asarray(values, dtype=np.float32)
        return np.broadcast_to(array, (self.channels,)) if array.size == 1 else array

    def value_range(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (low, high) of model-input values that pixels 0..255 map to (z^B bounds, noise ranges)."""
        mean, std = self._per_channel(self.mean), self._per_channel(self.std)
        low, high = (0 * self.scale - mean) / std, (255 * self.scale - mean) / std
        return np.minimum(low, high), np.maximum(low, high)

    def image_to_tensor(self, pixels: np.ndarray) -> np.ndarray:
        """HxW or HxWxC uint8 RGB pixels -> one model input (no batch axis), float32."""
        from PIL import Image

        image = Image.fromarray(pixels).convert("L" if self.color == "gray" else "RGB")
        if self.size is not None:
            image = self._resize(image, tuple(self.size))
        array = np.asarray(image, dtype=np.float32)
        if array.ndim == 2:
            array = array[:, :, None]
        if self.color == "bgr":
            array = array[:, :, ::-1]
        array = (array * self.scale - self._per_channel(self.mean)) / self._per_channel(self.std)
        if self.layout == "NCHW":
            array = array.transpose(2, 0, 1)
        elif self.layout == "flat":
            array = array.reshape(-1) if self.channels > 1 else array[:, :, 0].reshape(-1)
        return np.ascontiguousarray(array, dtype=np.float32)

    def _resize(self, image, size: tuple[int, int]):
        from PIL import Image

        height, width = size
        if self.resize == "shorter-side-crop":
            factor = max(height / image.height, width / image.width)
            image = image.resize((max(width, round(image.width * factor)), max(height, round(image.height * factor))),
                                 Image.BILINEAR)
            left, top = (image.width - width) // 2, (image.height - height) // 2
            return image.crop((left, top, left + width, top + height))
        return image.resize((width, height), Image.BILINEAR)

    def tensor_to_image(self, tensor: np.ndarray) -> np.ndarray:
        """One model input (no batch axis) -> HxW or HxWx3 float image in [0, 1] for display (the inverse map)."""
        array = np.asarray(tensor, dtype=np.float32)
        if self.layout == "NCHW":
            array = array.transpose(1, 2, 0)
        elif self.layout == "flat":
            if self.size is None:
                raise OnnxplainError("a flat input needs 'size' in its preprocessing spec to be shown as an image")
            array = array.reshape(*self.size, self.channels)
        array = (array * self._per_channel(self.std) + self._per_channel(self.mean)) / self.scale
        if self.color == "bgr":
            array = array[:, :, ::-1]
        image = np.clip(array / 255.0, 0.0, 1.0)
        return image[:, :, 0] if image.shape[2] == 1 else image

    def relevance_to_map(self, relevance: np.ndarray) -> np.ndarray:
        """Relevance shaped like one input -> HxW map (channels summed), for heatmaps."""
        array = np.asarray(relevance, dtype=np.float64)
        if self.layout == "NCHW":
            return array.sum(axis=0)
        if self.layout == "NHWC":
            return array.sum(axis=-1)
        if self.size is None:
            raise OnnxplainError("a flat input needs 'size' in its preprocessing spec to be shown as an image")
        return array.reshape(*self.size, self.channels).sum(axis=-1)


def _check_numbers(name: str, values, expected: str, *, whole: bool = False, positive: bool = False,
                   counts: tuple[int, ...] | None = None, shown: str | None = None) -> None:
    """Refuse spec field `name` unless it is None or a list of finite numbers (whole, positive where asked) of one
    of the lengths `counts`; the message says what was `expected` and what was given (`shown`, else `values`)."""
    kinds = (int, np.integer) if whole else (int, float, np.integer, np.floating)
    if values is None:
        return
    if not (isinstance(values, (list, tuple)) and (counts is None or len(values) in counts)
            and all(isinstance(v, kinds) and not isinstance(v, bool) and np.isfinite(v) and (v > 0 or not positive)
                    for v in values)):
        raise OnnxplainError(f"preprocessing spec: {name} must be {expected}, not {shown or repr(values)}")


def box_text(crop) -> str:
    """A crop box as [29:41, 0:109, 0:91]."""
    return "[" + ", ".join(f"{a}:{b}" for a, b in crop) + "]"


def default_spec(input_shape: tuple, scale: float = 1 / 255) -> PreprocessSpec | None:
    """A plain spec guessed from an image-like input shape (N, C, H, W) or (N, H, W, C); None otherwise."""
    dims = tuple(input_shape[1:])
    if len(dims) == 3 and dims[0] in (1, 3) and all(isinstance(d, int) for d in dims[1:]):
        return PreprocessSpec(layout="NCHW", size=(dims[1], dims[2]), color="gray" if dims[0] == 1 else "rgb",
                              scale=scale)
    if len(dims) == 3 and dims[2] in (1, 3) and all(isinstance(d, int) for d in dims[:2]):
        return PreprocessSpec(layout="NHWC", size=(dims[0], dims[1]), color="gray" if dims[2] == 1 else "rgb",
                              scale=scale)
    return None


def pixel_scale(model: onnx.ModelProto, input_name: str) -> float:
    """The scale a guessed spec gives pixels: 1 when the graph rescales raw 0..255 values itself (its input is an
    integer type, which cannot hold 0..1 values, or its first arithmetic is a Mul by 1/255 or 1/127.5, or a Div by
    255 or 127.5, as Keras's Rescaling layer exports), else 1/255."""
    element = {value.name: value.type.tensor_type.elem_type for value in model.graph.input}.get(input_name)
    if element and np.issubdtype(helper.tensor_dtype_to_np_dtype(element), np.integer):
        return 1.0
    values = {t.name: t for t in model.graph.initializer}
    values.update({n.output[0]: a.t for n in model.graph.node if n.op_type == "Constant" for a in n.attribute
                   if a.name == "value"})
    name = input_name
    for node in model.graph.node:
        if name not in node.input:
            continue
        if node.op_type in ("Cast", "Transpose", "Identity"):
            name = node.output[0]
            continue
        other = [i for i in node.input if i != name]
        if node.op_type in ("Mul", "Div") and len(other) == 1 and other[0] in values:
            constant = numpy_helper.to_array(values[other[0]]).astype(np.float64)
            if constant.size == 1:
                divisor = float(1 / constant.item()) if node.op_type == "Mul" and constant.item() else \
                    float(constant.item())
                if 127 <= divisor <= 256:
                    return 1.0
        break
    return 1 / 255
