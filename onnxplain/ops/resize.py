"""Resize and Upsample: nearest and (bi/tri)linear interpolation, a parameter-free linear map.

LRP: like average pooling (`kind = "pool"`, z-rule by default): an output's relevance goes to the inputs it was
interpolated from, in proportion to their contributions. Covered exactly: nearest with every coordinate transform
but crop-and-resize and every rounding (asymmetric + floor, what torch exports, and half-pixel + ties up run as
torch's own modes; the others gather the source indices ONNX's formulas give, in float32 as onnxruntime computes
them), linear with half-pixel or aligned-corner coordinates; sizes from `sizes`, or `scales` applied as given (as
onnxruntime does, also where the scaled size is fractional). Every other mode (cubic, other linear coordinates,
crop-and-resize, antialiasing, axes, aspect-ratio policies, resizing the batch or channel axis) is refused when
the node is set up, so the model falls back to onnx2torch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..lrp import rules
from . import register
from .base import Op

LINEAR = {1: "linear", 2: "bilinear", 3: "trilinear"}
ROUNDING = {"floor": torch.floor, "ceil": torch.ceil, "round_prefer_floor": lambda v: torch.ceil(v - 0.5),
            "round_prefer_ceil": lambda v: torch.floor(v + 0.5)}
NEAREST_COORDINATES = ("asymmetric", "half_pixel", "align_corners", "pytorch_half_pixel", "tf_half_pixel_for_nn")


@register("Resize", "Upsample")
class Resize(Op):
    """Y = interpolate(X) to `sizes`, or to floor(input size × `scales`) (scales of 1 on the batch and channel
    axes)."""

    kind = "pool"

    def setup(self):
        self.mode = self.attr("mode", "nearest")
        transform = self.attr("coordinate_transformation_mode",
                              "asymmetric" if self.op_type == "Upsample" or self.opset < 11 else "half_pixel")
        rounding = self.attr("nearest_mode", "round_prefer_floor" if self.opset >= 11 else "floor")
        if self.attr("antialias", 0) or self.attr("axes") is not None or \
                self.attr("keep_aspect_ratio_policy", "stretch") != "stretch":
            raise ValueError(f"Resize node {self.name!r}: antialias, axes and aspect-ratio policies are not supported")
        if self.mode == "nearest" and (transform, rounding) == ("asymmetric", "floor"):
            self.torch_mode, self.align_corners = "nearest", None
        elif self.mode == "nearest" and (transform, rounding) == ("half_pixel", "round_prefer_ceil"):
            self.torch_mode, self.align_corners = "nearest-exact", None   # floor(x + 0.5): ties go up
        elif self.mode == "nearest" and transform in NEAREST_COORDINATES and rounding in ROUNDING:
            self.torch_mode, self.align_corners = "gather", None
            self.transform, self.rounding = transform, ROUNDING[rounding]
        elif self.mode == "linear" and transform in ("half_pixel", "align_corners"):
            self.torch_mode, self.align_corners = "linear", transform == "align_corners"
        else:
            raise ValueError(f"Resize node {self.name!r}: mode {self.mode!r} with {transform!r} coordinates is not "
                             "supported")

    def forward(self, x, *rest):
        mode = LINEAR[x.ndim - 2] if self.torch_mode == "linear" else self.torch_mode
        size, factors = self._target(x, rest)
        if self.torch_mode == "gather":
            return self._gathered(x, size, factors)
        if size is not None:
            return F.interpolate(x, size=size, mode=mode, align_corners=self.align_corners)
        return F.interpolate(x, scale_factor=factors, mode=mode, align_corners=self.align_corners,
                             recompute_scale_factor=False)

    def _gathered(self, x, size, factors):
        """Nearest neighbours along each spatial axis: out[i] = in[round(coordinate(i))], clamped to the input. An axis
        of scale 1 stays as it is, as onnxruntime leaves it (tf_half_pixel_for_nn's (i + 0.5) / 1, rounded up, would
        shift it by one)."""
        for axis in range(2, x.ndim):
            n = x.shape[axis]
            scale = factors[axis - 2] if size is None else size[axis - 2] / n
            if scale == 1:
                continue
            out = size[axis - 2] if size is not None else int(n * scale)
            i = torch.arange(out, dtype=torch.float32, device=x.device)
            scale = torch.tensor(scale, dtype=torch.float32)
            if self.transform == "asymmetric":
                source = i / scale
            elif self.transform == "align_corners":
                source = i * ((n - 1) / (out - 1)) if out > 1 else torch.zeros_like(i)
            elif self.transform == "tf_half_pixel_for_nn":
                source = (i + 0.5) / scale
            elif self.transform == "pytorch_half_pixel" and out == 1:
                source = torch.zeros_like(i)
            else:
                source = (i + 0.5) / scale - 0.5
            index = self.rounding(source).clamp(0, n - 1).long()
            x = x.index_select(axis, index)
        return x

    def _target(self, x, rest) -> tuple[list[int] | None, list[float] | None]:
        """(spatial output size, None) from `sizes`, or (None, spatial scale factors) from `scales` (opset 7-9: the
        `scales` attribute); the batch and channel axes must keep their size."""
        if self.op_type == "Upsample" or self.opset < 11:
            scales, sizes = (rest[0] if rest else self.attr("scales")), None
        else:
            scales = rest[1] if len(rest) > 1 else None
            sizes = rest[2] if len(rest) > 2 else None
        if sizes is not None and len(sizes):
            wanted = [int(s) for s in sizes.tolist()]
            if wanted[:2] != list(x.shape[:2]):
                raise ValueError(f"Resize node {self.name!r} resizes the batch or channel axis")
            return wanted[2:], None
        factors = [float(s) for s in (scales.tolist() if hasattr(scales, "tolist") else scales)]
        if factors[:2] != [1.0, 1.0]:
            raise ValueError(f"Resize node {self.name!r} scales the batch or channel axis")
        return None, factors[2:]

    def relevance(self, inputs, rule):
        rest = inputs[1:]
        return rule(inputs[0], rules.Layer(lambda t, w: self.forward(t, *rest), None, None))
