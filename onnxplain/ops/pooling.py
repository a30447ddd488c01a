"""Pooling and reductions: MaxPool (winner takes all), AveragePool, GlobalAverage/MaxPool, ReduceMean/Sum/Max/Min.

LRP: max-pooling and max/min reductions route relevance to the winner (their gradient); averages and sums are
parameter-free linear maps under the z-rule (kind 'pool').
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..lrp import rules
from . import register
from .base import Op, auto_pads, ints, pad_pairs, torch_pad

MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


class _Window(Op):
    """Shared window geometry: kernel, strides, dilations, pads (explicit or auto), ceil mode."""

    def setup(self):
        self.kernel = list(self.attr("kernel_shape"))
        self.spatial = len(self.kernel)
        self.strides = self.attr("strides", [1] * self.spatial)
        self.dilations = self.attr("dilations", [1] * self.spatial)
        self.ceil = bool(self.attr("ceil_mode", 0))
        self.auto_pad = self.attr("auto_pad", "NOTSET")

    def pads(self, x) -> list[tuple[int, int]]:
        if self.auto_pad not in ("NOTSET", ""):
            return auto_pads(self.auto_pad, x.shape[2:], self.kernel, self.strides, self.dilations)
        return pad_pairs(self.attr("pads"), self.spatial)

    def simple_padding(self, pairs) -> list[int] | None:
        """Torch's own symmetric padding when it can express these pads, else None."""
        if all(b == e and 2 * b <= k for (b, e), k in zip(pairs, self.kernel)):
            return [b for b, _ in pairs]
        return None

    def ceil_extra(self, x, pairs) -> list[int]:
        """Extra end padding that makes ceil-mode windows fit (a window may not start in the end padding)."""
        extra = []
        for size, (b, e), k, s, d in zip(x.shape[2:], pairs, self.kernel, self.strides, self.dilations):
            span = (k - 1) * d + 1
            padded = size + b + e
            count = -(-(padded - span) // s) + 1 if self.ceil else (padded - span) // s + 1
            if self.ceil and (count - 1) * s >= size + b:
                count -= 1
            extra.append(max(0, (count - 1) * s + span - padded))
        return extra


@register("MaxPool")
class MaxPool(_Window):
    kind = "route"

    def forward(self, x):
        pairs = self.pads(x)
        padding = self.simple_padding(pairs)
        padded = padding is None or self.ceil
        if padded:
            extra = self.ceil_extra(x, pairs)
            x = F.pad(x, torch_pad([(b, e + x2) for (b, e), x2 in zip(pairs, extra)]), value=float("-inf"))
            padding = 0
        if not (len(self.node.output) > 1 and self.node.output[1]):
            return MAX_POOL[self.spatial](x, self.kernel, self.strides, padding, self.dilations)
        if padded or self.attr("storage_order", 0):
            raise ValueError("MaxPool indices with explicit padding, ceil mode or column-major order")
        values, indices = MAX_POOL[self.spatial](x, self.kernel, self.strides, padding, self.dilations,
                                                 return_indices=True)
        n, c = values.shape[:2]
        plane = int(torch.tensor(x.shape[2:]).prod())
        offsets = torch.arange(n * c, device=x.device).reshape(n, c, *([1] * self.spatial)) * plane
        return values, indices + offsets


@register("AveragePool")
class AveragePool(_Window):
    kind = "pool"

    def forward(self, x):
        pairs = self.pads(x)
        include_pad = bool(self.attr("count_include_pad", 0))
        padding = self.simple_padding(pairs)
        if padding is not None and not self.ceil and set(self.dilations) == {1}:
            return AVG_POOL[self.spatial](x, self.kernel, self.strides, padding, False, include_pad)
        return self.window_sums(x, pairs, include_pad)

    def window_sums(self, x, pairs, include_pad):
        """General case (asymmetric pads, ceil mode, dilations): window sums divided by counted positions."""
        extra = self.ceil_extra(x, pairs)
        full = [(b, e + x2) for (b, e), x2 in zip(pairs, extra)]
        padded = F.pad(x, torch_pad(full))
        mask = torch.ones((1, 1) + tuple(x.shape[2:]), dtype=x.dtype, device=x.device)
        mask = F.pad(mask, torch_pad(pairs), value=1.0 if include_pad else 0.0)
        mask = F.pad(mask, torch_pad([(0, x2) for x2 in extra]))
        channels = x.shape[1]
        ones = torch.ones((channels, 1) + tuple(self.kernel), dtype=x.dtype, device=x.device)
        conv = CONV[self.spatial]
        sums = conv(padded, ones, None, self.strides, 0, self.dilations, channels)
        counts = conv(mask, ones[:1], None, self.strides, 0, self.dilations, 1)
        return sums / counts.clamp(min=1)

    def relevance(self, inputs, rule):
        return rule(inputs[0], rules.Layer(lambda t, w: self.forward(t), None, None))


@register("GlobalAveragePool")
class GlobalAveragePool(Op):
    kind = "pool"

    def forward(self, x):
        return x.mean(dim=tuple(range(2, x.ndim)), keepdim=True)

    def relevance(self, inputs, rule):
        return rule(inputs[0], rules.Layer(lambda t, w: self.forward(t), None, None))


@register("GlobalMaxPool")
class GlobalMaxPool(Op):
    kind = "route"

    def forward(self, x):
        return x.amax(dim=tuple(range(2, x.ndim)), keepdim=True)


class _Reduce(Op):
    """Reductions over `axes` (attribute in older opsets, second input in newer ones)."""

    def axes(self, x, axes_input) -> list[int] | None:
        axes = self.attr("axes")
        if axes is None and axes_input is not None:
            axes = ints(axes_input)
        if not axes:
            return [] if self.attr("noop_with_empty_axes", 0) else list(range(x.ndim))
        return [a % x.ndim for a in axes]

    def forward(self, x, axes=None):
        dims = self.axes(x, axes)
        if not dims:
            return x
        return self.reduce(x, tuple(dims), bool(self.attr("keepdims", 1)))


@register("ReduceMean")
class ReduceMean(_Reduce):
    kind = "pool"

    def reduce(self, x, dims, keep):
        return x.mean(dim=dims, keepdim=keep)

    def relevance(self, inputs, rule):
        return rule(inputs[0], rules.Layer(lambda t, w: self.forward(t, *inputs[1:]), None, None))


@register("ReduceSum")
class ReduceSum(ReduceMean):
    def reduce(self, x, dims, keep):
        return x.sum(dim=dims, keepdim=keep)


@register("ReduceMax")
class ReduceMax(_Reduce):
    kind = "route"

    def reduce(self, x, dims, keep):
        return x.amax(dim=dims, keepdim=keep)


@register("ReduceMin")
class ReduceMin(_Reduce):
    kind = "route"

    def reduce(self, x, dims, keep):
        return x.amin(dim=dims, keepdim=keep)
