"""Pooling and reductions: MaxPool (winner takes all), AveragePool, GlobalAverage/MaxPool, ReduceMean/Sum/Max/Min,
the nonlinear reductions (ReduceL1/L2/SumSquare/LogSum/LogSumExp/Prod), and ops along one axis: CumSum, TopK,
ArgMax/ArgMin.

LRP: max-pooling, max/min reductions and TopK's values route relevance to the winners (their gradient); averages,
sums and running sums are parameter-free linear maps under the z-rule (kind 'pool'); norms, log-sums and products
have no rule (LRP names them as unsupported; gradients pass); indices carry no relevance.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..lrp import rules
from . import register
from .base import AVG_POOL, CONV, MAX_POOL, Op, auto_pads, ints, normalise_axis, pad_pairs, torch_pad



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

    def padded(self, pairs) -> bool:
        """Whether some window may reach into padding (explicit, automatic or ceil mode's)."""
        return self.ceil or any(b or e for b, e in pairs)

    def forward(self, x):
        pairs = self.pads(x)
        padding = self.simple_padding(pairs)
        padded = padding is None or self.ceil
        if padded:
            extra = self.ceil_extra(x, pairs)
            x = F.pad(x, torch_pad([(b, e + x2) for (b, e), x2 in zip(pairs, extra)]), value=float("-inf"))
            padding = 0
        if not (len(self.node.output) > 1 and self.node.output[1]):
            return lowest_for_padding(MAX_POOL[self.spatial](x, self.kernel, self.strides, padding, self.dilations),
                                      self.padded(pairs))
        if padded or self.attr("storage_order", 0):
            raise ValueError("MaxPool indices with explicit padding, ceil mode or column-major order")
        values, indices = MAX_POOL[self.spatial](x, self.kernel, self.strides, padding, self.dilations,
                                                 return_indices=True)
        values = lowest_for_padding(values, self.padded(pairs))
        n, c = values.shape[:2]
        plane = int(torch.tensor(x.shape[2:]).prod())
        offsets = torch.arange(n * c, device=x.device).reshape(n, c, *([1] * self.spatial)) * plane
        return values, indices + offsets


def lowest_for_padding(values: torch.Tensor, padded: bool) -> torch.Tensor:
    """Max pooling's values as onnxruntime gives them: a window that covers only padding (or only -inf) holds the
    type's lowest finite value, not -inf."""
    if not padded or not values.dtype.is_floating_point:
        return values
    return values.clamp(min=torch.finfo(values.dtype).min)


@register("AveragePool")
class AveragePool(_Window):
    kind = "pool"

    def forward(self, x):
        pairs = self.pads(x)
        include_pad = bool(self.attr("count_include_pad", 0))
        padding = self.simple_padding(pairs)
        fits = all(n >= k for n, k in zip(x.shape[2:], self.kernel))   # torch's 3-D kernel refuses smaller maps
        if padding is not None and not self.ceil and set(self.dilations) == {1} and fits:
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
            return self.unreduced(x)
        return self.reduce(x, tuple(dims), bool(self.attr("keepdims", 1)))

    def unreduced(self, x):
        """The result over an empty set of axes (noop_with_empty_axes): the reduction's elementwise part, as in
        onnxruntime (the input itself for sums, means, extrema and products)."""
        return x


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


class _NonlinearReduce(_Reduce):
    """Reductions LRP has no rule for: forward and gradients only."""

    kind = None


@register("ReduceL1")
class ReduceL1(_NonlinearReduce):
    def reduce(self, x, dims, keep):
        return x.abs().sum(dim=dims, keepdim=keep, dtype=x.dtype)

    def unreduced(self, x):
        return x.abs()


@register("ReduceL2")
class ReduceL2(_NonlinearReduce):
    def reduce(self, x, dims, keep):
        return torch.linalg.vector_norm(x, 2, dim=dims, keepdim=keep)

    def unreduced(self, x):
        return x.abs()


@register("ReduceSumSquare")
class ReduceSumSquare(_NonlinearReduce):
    def reduce(self, x, dims, keep):
        return (x * x).sum(dim=dims, keepdim=keep, dtype=x.dtype)

    def unreduced(self, x):
        return x * x


@register("ReduceLogSum")
class ReduceLogSum(_NonlinearReduce):
    def reduce(self, x, dims, keep):
        return torch.log(x.sum(dim=dims, keepdim=keep))

    def unreduced(self, x):
        return torch.log(x)


@register("ReduceLogSumExp")
class ReduceLogSumExp(_NonlinearReduce):
    def reduce(self, x, dims, keep):
        return torch.logsumexp(x, dim=dims, keepdim=keep)


@register("ReduceProd")
class ReduceProd(_NonlinearReduce):
    def reduce(self, x, dims, keep):
        for dim in sorted(dims, reverse=True):  # torch multiplies along one axis at a time
            x = x.prod(dim=dim, keepdim=keep, dtype=x.dtype)
        return x


@register("CumSum", opsets=(11, 22))
class CumSum(Op):
    """Running sums along `axis` (a 0-d or 1-element tensor input); `exclusive` leaves each element out of its own
    sum, `reverse` sums from the end. LRP: a parameter-free linear map, z-rule by default (kind 'pool')."""

    kind = "pool"

    def forward(self, x, axis):
        dim = normalise_axis(ints(axis)[0], x.ndim)
        reverse = bool(self.attr("reverse", 0))
        y = torch.cumsum(x.flip(dim) if reverse else x, dim, dtype=x.dtype)
        if self.attr("exclusive", 0):  # shifted by one, as onnxruntime sums (not cumsum - x, which rounds apart)
            y = torch.cat([torch.zeros_like(y.narrow(dim, 0, 1)), y.narrow(dim, 0, y.shape[dim] - 1)], dim)
        return y.flip(dim) if reverse else y

    def relevance(self, inputs, rule):
        return rule(inputs[0], rules.Layer(lambda t, w: self.forward(t, inputs[1]), None, None))


@register("TopK")
class TopK(Op):
    """The k largest (`largest`=0: smallest) values along `axis` and their int64 indices; of equal values the lower
    index comes first (a stable sort, as ONNX specifies). k: attribute up to opset 9, input from opset 10. With
    sorted=0 ONNX leaves the order open: it is the sorted one here (onnxruntime's heap order is not reproduced).
    LRP: the values route relevance to the selected elements, like max-pooling (kind 'route')."""

    def forward(self, x, k=None):
        count = int(self.attr("k")) if k is None else ints(k)[0]
        axis = normalise_axis(int(self.attr("axis", -1)), x.ndim)
        values, indices = torch.sort(x, dim=axis, descending=bool(self.attr("largest", 1)), stable=True)
        return values.narrow(axis, 0, count), indices.narrow(axis, 0, count)


@register("ArgMax", "ArgMin")
class ArgExtremum(Op):
    """The int64 index of the largest (ArgMax) or smallest (ArgMin) element along `axis`: the first of equal ones,
    the last with select_last_index (opset 12). Indices carry no relevance (kind 'data')."""

    kind = "data"

    def forward(self, x):
        axis = normalise_axis(int(self.attr("axis", 0)), x.ndim)
        keep = bool(self.attr("keepdims", 1))
        find = torch.argmax if self.op_type == "ArgMax" else torch.argmin
        if self.attr("select_last_index", 0):
            return x.shape[axis] - 1 - find(x.flip(axis), axis, keepdim=keep)
        return find(x, axis, keepdim=keep)
