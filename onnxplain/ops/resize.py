"""Resize and Upsample: nearest and (bi/tri)linear interpolation, a parameter-free linear map.

LRP: like average pooling (`kind = "pool"`, z-rule by default): an output's relevance goes to the inputs it was
interpolated from, in proportion to their contributions. Modes torch has no exact match for (cubic, crop-and-resize,
antialiasing, aspect-ratio policies, other rounding) are refused when the node is set up, so the model falls back
to onnx2torch; the executor's check against onnxruntime guards the rest.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..lrp import rules
from . import register
from .base import Op

LINEAR = {1: "linear", 2: "bilinear", 3: "trilinear"}


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
        elif self.mode == "nearest" and transform in ("half_pixel", "pytorch_half_pixel") \
                and rounding in ("round_prefer_ceil", "round_prefer_floor"):
            self.torch_mode, self.align_corners = "nearest-exact", None  # equal away from ties (integer factors)
        elif self.mode == "linear" and transform in ("half_pixel", "pytorch_half_pixel", "align_corners"):
            self.torch_mode, self.align_corners = "linear", transform == "align_corners"
        else:
            raise ValueError(f"Resize node {self.name!r}: mode {self.mode!r} with {transform!r} coordinates is not "
                             "supported")

    def forward(self, x, *rest):
        size = self._size(x, rest)
        mode = LINEAR[x.ndim - 2] if self.torch_mode == "linear" else self.torch_mode
        return F.interpolate(x, size=size, mode=mode, align_corners=self.align_corners)

    def _size(self, x, rest) -> list[int]:
        """Output size of the spatial axes from `sizes` or `scales` (opset 7-9: the `scales` attribute)."""
        if self.op_type == "Upsample" or self.opset < 11:
            scales, sizes = (rest[0] if rest else self.attr("scales")), None
        else:
            scales = rest[1] if len(rest) > 1 else None
            sizes = rest[2] if len(rest) > 2 else None
        if sizes is not None and len(sizes):
            return [int(s) for s in sizes.tolist()[2:]]
        factors = [float(s) for s in (scales.tolist() if hasattr(scales, "tolist") else scales)]
        if factors[:2] != [1.0, 1.0]:
            raise ValueError(f"Resize node {self.name!r} scales the batch or channel axis")
        return [math.floor(n * f) for n, f in zip(x.shape[2:], factors[2:])]

    def relevance(self, inputs, rule):
        rest = inputs[1:]
        return rule(inputs[0], rules.Layer(lambda t, w: self.forward(t, *rest), None, None))
