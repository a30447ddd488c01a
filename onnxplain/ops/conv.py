"""Convolutions (1-D/2-D/3-D, groups, dilations, strides, pads, auto_pad) and transposed convolutions.

LRP: linear layers of category 'conv' (the composite picks z+, alpha-beta, gamma, z^B, ...).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..lrp import rules
from . import register
from .base import CONV, CONV_T, LinearOp, auto_pads, pad_pairs, torch_pad



class _ConvBase(LinearOp):
    category = "conv"
    weight_in_axis = 1  # the weight axis of input channels
    transpose = None    # (q, x, weight) -> the input gradient at q, for the rules' explicit backward

    def setup(self):
        weight = self.constants.get(1)
        self.spatial = (weight.ndim - 2) if weight is not None else len(self.attr("kernel_shape", []))
        ones = [1] * self.spatial
        self.strides = self.attr("strides", ones)
        self.dilations = self.attr("dilations", ones)
        self.groups = self.attr("group", 1)
        self.auto_pad = self.attr("auto_pad", "NOTSET")
        self.kind = "linear" if 1 in self.constants else None  # a weight computed at run time is not a layer

    def kernel(self, weight) -> list[int]:
        return self.attr("kernel_shape", list(weight.shape[2:]))

    def layer(self, inputs):
        weight = inputs[1]
        bias = inputs[2] if len(inputs) > 2 else None
        shape = (1, -1) + (1,) * self.spatial
        return rules.Layer(lambda t, w: self.apply(t, w, None), weight, None if bias is None else bias.reshape(shape),
                           lambda t, w, b: self.apply(t, w, self.bias_vector(b, w)),
                           (1, self.weight_in_axis) if self.groups == 1 else None, self.transpose,
                           self.groups == 1 and self.weight_out_axis == 0, self.derived)

    def bias_vector(self, bias, weight):
        """A bias broadcastable to the output (per channel, or one value) as the vector the convolution adds."""
        channels = weight.shape[0] if self.weight_out_axis == 0 else weight.shape[1] * self.groups
        bias = bias.reshape(-1)
        return bias.expand(channels) if bias.numel() == 1 else bias


@register("Conv")
class Conv(_ConvBase):
    def pads(self, x, weight) -> list[tuple[int, int]]:
        if self.auto_pad not in ("NOTSET", ""):
            return auto_pads(self.auto_pad, x.shape[2:], self.kernel(weight), self.strides, self.dilations)
        return pad_pairs(self.attr("pads"), self.spatial)

    def apply(self, x, weight, bias):
        pairs = self.pads(x, weight)
        if all(b == e for b, e in pairs):
            padding = [b for b, _ in pairs]
        else:
            x, padding = F.pad(x, torch_pad(pairs)), 0
        return CONV[self.spatial](x, weight, bias, self.strides, padding, self.dilations, self.groups)

    def forward(self, x, weight, bias=None):
        return self.apply(x, weight, bias)

    def transpose(self, q, x, weight):
        """The convolution's input gradient at `q`, shaped like `x` (the kernel autograd runs; with uneven pads, the
        transposed convolution of the padded input, cropped)."""
        pairs = self.pads(x, weight)
        if all(b == e for b, e in pairs):
            return torch.ops.aten.convolution_backward(q, x, weight, None, self.strides, [b for b, _ in pairs],
                                                       self.dilations, False, [0] * self.spatial, self.groups,
                                                       [True, False, False])[0]
        kernel, sizes = self.kernel(weight), x.shape[2:]
        extra = [size + b + e - ((o - 1) * s + d * (k - 1) + 1)
                 for size, (b, e), o, s, d, k in zip(sizes, pairs, q.shape[2:], self.strides, self.dilations, kernel)]
        full = CONV_T[self.spatial](q, weight, None, self.strides, 0, extra, self.groups, self.dilations)
        return full[(slice(None), slice(None)) + tuple(slice(b, b + n) for (b, _), n in zip(pairs, sizes))]


@register("ConvTranspose")
class ConvTranspose(_ConvBase):
    weight_out_axis, weight_in_axis = 1, 0

    def mergeable(self):
        return self.groups == 1

    def pads(self, x, weight) -> tuple[list[tuple[int, int]], list[int]]:
        """(begin, end) crops of the full transposed convolution, and output padding, per ONNX's rules."""
        kernel = self.kernel(weight)
        extra = self.attr("output_padding", [0] * self.spatial)
        sizes = x.shape[2:]
        full = [s * (n - 1) + e + (k - 1) * d + 1 for n, s, e, k, d in zip(sizes, self.strides, extra, kernel,
                                                                            self.dilations)]
        wanted = self.attr("output_shape")
        if wanted is None and self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            wanted = [n * s for n, s in zip(sizes, self.strides)]
        if wanted is None:
            return pad_pairs(self.attr("pads"), self.spatial), extra
        wanted = list(wanted)[-self.spatial:]
        pairs = []
        for size, target in zip(full, wanted):
            total = size - target
            half = total // 2
            pairs.append((half, total - half) if self.auto_pad == "SAME_UPPER" else (total - half, half))
        return pairs, extra

    def apply(self, x, weight, bias):
        pairs, extra = self.pads(x, weight)
        y = CONV_T[self.spatial](x, weight, None, self.strides, 0, 0, self.groups, self.dilations)
        if any(extra):
            y = F.pad(y, torch_pad([(0, e) for e in extra]))
        if any(b or e for b, e in pairs):
            index = [slice(None), slice(None)] + [slice(b, y.shape[2 + i] - e) for i, (b, e) in enumerate(pairs)]
            y = y[tuple(index)]
        if bias is not None:
            y = y + bias.reshape((1, -1) + (1,) * self.spatial)
        return y

    def forward(self, x, weight, bias=None):
        return self.apply(x, weight, bias)
