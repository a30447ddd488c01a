"""Shape ops: Reshape, Flatten, Transpose, DepthToSpace, SpaceToDepth, (Un)Squeeze, Concat, Split, Slice, Pad,
Cast, Gather, Expand, Tile, and the shape arithmetic ops (Shape, Size, Constant, ConstantOfShape, Range), which the
executor folds to constants wherever their inputs are constant.

LRP: all of them move values without changing them, so their gradient routes relevance exactly (kind 'route');
a constant Pad absorbs the relevance landing on its padding (reported like a bias). Integer tensors carry none.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper

from ..lrp import relevance
from . import register
from .base import Op, ints, normalise_axis, torch_pad


def to_torch(tensor_proto) -> torch.Tensor:
    """An ONNX TensorProto as a torch tensor (a copy)."""
    return torch.from_numpy(np.array(numpy_helper.to_array(tensor_proto)))


def torch_dtype(onnx_type: int) -> torch.dtype:
    return torch.from_numpy(np.zeros(0, dtype=helper.tensor_dtype_to_np_dtype(onnx_type))).dtype


@register("Reshape")
class Reshape(Op):
    def forward(self, x, shape=None):
        target = ints(shape) if shape is not None else list(self.attr("shape"))
        if not self.attr("allowzero", 0):
            target = [x.shape[i] if d == 0 else d for i, d in enumerate(target)]
        return x.reshape(target)


@register("Flatten")
class Flatten(Op):
    def forward(self, x):
        axis = normalise_axis(int(self.attr("axis", 1)), x.ndim)
        return x.reshape(int(math.prod(x.shape[:axis])), int(math.prod(x.shape[axis:])))


@register("Transpose")
class Transpose(Op):
    def forward(self, x):
        perm = self.attr("perm") or list(range(x.ndim))[::-1]
        return x.permute(*perm)


@register("DepthToSpace")
class DepthToSpace(Op):
    """(N, C·b², H, W) -> (N, C, H·b, W·b): blocks taken depth-column-row (DCR, the default) or column-row-depth
    (CRD, as PixelShuffle)."""

    def forward(self, x):
        n, c, h, w = x.shape
        b = int(self.attr("blocksize"))
        if self.attr("mode", "DCR") == "CRD":
            return x.reshape(n, c // (b * b), b, b, h, w).permute(0, 1, 4, 2, 5, 3).reshape(n, c // (b * b), h * b,
                                                                                            w * b)
        return x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2).reshape(n, c // (b * b), h * b, w * b)


@register("SpaceToDepth")
class SpaceToDepth(Op):
    """(N, C, H·b, W·b) -> (N, C·b², H, W), the inverse of DepthToSpace in DCR mode."""

    def forward(self, x):
        n, c, h, w = x.shape
        b = int(self.attr("blocksize"))
        return x.reshape(n, c, h // b, b, w // b, b).permute(0, 3, 5, 1, 2, 4).reshape(n, c * b * b, h // b, w // b)


@register("Squeeze")
class Squeeze(Op):
    def forward(self, x, axes=None):
        axes = self.attr("axes") if axes is None else ints(axes)
        if not axes:
            return x.reshape([d for d in x.shape if d != 1])
        drop = {normalise_axis(a, x.ndim) for a in axes}
        return x.reshape([d for i, d in enumerate(x.shape) if i not in drop])


@register("Unsqueeze")
class Unsqueeze(Op):
    def forward(self, x, axes=None):
        axes = self.attr("axes") if axes is None else ints(axes)
        rank = x.ndim + len(axes)
        shape = list(x.shape)
        for axis in sorted(normalise_axis(a, rank) for a in axes):
            shape.insert(axis, 1)
        return x.reshape(shape)


@register("Concat")
class Concat(Op):
    """Joins its operands: each gets its part of the relevance; a part that carries none (a constant such as a
    transformer's class token) keeps its share, reported like a bias."""

    def relevance_inputs(self):
        return [i for i, name in enumerate(self.node.input) if name and i not in self.constants]

    def forward(self, *parts):
        return torch.cat([p for p in parts if p is not None], dim=int(self.attr("axis")))

    def relevance(self, inputs, rule):
        y = self.forward(*inputs)
        parts = [p for p in inputs if p is not None]
        if all(p.requires_grad for p in parts):
            return y, None
        mask = torch.cat([torch.zeros_like(p) if p.requires_grad else torch.ones_like(p) for p in parts],
                         dim=int(self.attr("axis")))
        return y, relevance.MaskLeak(mask)


@register("Split")
class Split(Op):
    def forward(self, x, split=None):
        axis = normalise_axis(int(self.attr("axis", 0)), x.ndim)
        sizes = self.attr("split") if split is None else ints(split)
        count = len(self.node.output)
        if not sizes:
            chunk = -(-x.shape[axis] // int(self.attr("num_outputs", count)))
            sizes = [min(chunk, x.shape[axis] - i * chunk) for i in range(count)]
        return tuple(torch.split(x, list(sizes), dim=axis))


@register("Slice")
class Slice(Op):
    """starts/ends/axes as attributes up to opset 9, as inputs (with steps) from opset 10."""

    def forward(self, x, starts=None, ends=None, axes=None, steps=None):
        starts = self.attr("starts") if starts is None else ints(starts)
        ends = self.attr("ends") if ends is None else ints(ends)
        axes = list(range(len(starts))) if axes is None and self.attr("axes") is None else (
            self.attr("axes") if axes is None else ints(axes))
        steps = [1] * len(starts) if steps is None else ints(steps)
        for start, end, axis, step in zip(starts, ends, axes, steps):
            axis = normalise_axis(axis, x.ndim)
            size = x.shape[axis]
            start, end = start + size if start < 0 else start, end + size if end < 0 else end
            if step > 0:
                start, end = min(max(start, 0), size), min(max(end, 0), size)
                x = x.narrow(axis, start, max(0, end - start))[(slice(None),) * axis + (slice(None, None, step),)]
            else:
                start, end = min(max(start, 0), size - 1), min(max(end, -1), size - 1)
                index = torch.arange(start, end, step, device=x.device)
                x = x.index_select(axis, index)
        return x


@register("Pad")
class Pad(Op):
    """modes constant (negative pads crop), reflect, edge, wrap; pads/value attributes up to opset 10."""

    def setup(self):
        self.mode = self.attr("mode", "constant")

    def pairs(self, x, pads, axes) -> list[tuple[int, int]]:
        pads = list(self.attr("pads")) if pads is None else ints(pads)
        axes = list(range(x.ndim)) if axes is None else [normalise_axis(a, x.ndim) for a in ints(axes)]
        pairs = [(0, 0)] * x.ndim
        for i, axis in enumerate(axes):
            pairs[axis] = (pads[i], pads[i + len(axes)])
        return pairs

    def forward(self, x, pads=None, value=None, axes=None):
        pairs = self.pairs(x, pads, axes)
        if self.mode == "constant":
            fill = float(self.attr("value", 0.0)) if value is None or value.numel() == 0 else float(value)
            return F.pad(x, torch_pad(pairs), value=fill)
        for axis, (begin, end) in enumerate(pairs):
            if begin or end:
                size = x.shape[axis]
                index = torch.arange(-begin, size + end, device=x.device)
                if self.mode == "edge":
                    index = index.clamp(0, size - 1)
                elif self.mode == "wrap":
                    index = index % size
                else:  # reflect
                    period = 2 * (size - 1)
                    index = index.abs() % period
                    index = torch.where(index >= size, period - index, index)
                x = x.index_select(axis, index)
        return x

    def relevance(self, inputs, rule):
        y = self.forward(*inputs)
        if self.mode != "constant" or not y.is_floating_point():
            return y, None
        x, pads, axes = inputs[0], inputs[1] if len(inputs) > 1 else None, inputs[3] if len(inputs) > 3 else None
        mask = F.pad(torch.zeros_like(x), torch_pad(self.pairs(x, pads, axes)), value=1.0)
        return y, relevance.MaskLeak(mask)


@register("Cast")
class Cast(Op):
    """A cast to a floating type routes relevance; one to an integer or boolean type makes data (none flows)."""

    def setup(self):
        if not torch_dtype(int(self.attr("to"))).is_floating_point:
            self.kind = "data"

    def forward(self, x):
        return x.to(torch_dtype(int(self.attr("to"))))


@register("Gather")
class Gather(Op):
    def forward(self, x, indices):
        axis = normalise_axis(int(self.attr("axis", 0)), x.ndim)
        index = indices.long()
        index = torch.where(index < 0, index + x.shape[axis], index)
        picked = x.index_select(axis, index.reshape(-1))
        return picked.reshape(x.shape[:axis] + index.shape + x.shape[axis + 1:])


@register("GatherElements", opsets=(11, 22))
class GatherElements(Op):
    """out[i][j] = x[index[i][j]][j] along `axis` (torch.gather; negative indices count from the end)."""

    def forward(self, x, indices):
        axis = normalise_axis(int(self.attr("axis", 0)), x.ndim)
        index = indices.long()
        return torch.gather(x, axis, torch.where(index < 0, index + x.shape[axis], index))


@register("Expand")
class Expand(Op):
    def forward(self, x, shape):
        return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(ints(shape))))


@register("Tile")
class Tile(Op):
    def forward(self, x, repeats):
        return x.repeat(*ints(repeats))


@register("Shape")
class Shape(Op):
    kind = "data"

    def forward(self, x):
        dims = list(x.shape)
        start, end = self.attr("start", 0), self.attr("end", len(dims))
        return torch.tensor(dims[start:end], dtype=torch.int64, device=x.device)


@register("Size")
class Size(Op):
    kind = "data"

    def forward(self, x):
        return torch.tensor(x.numel(), dtype=torch.int64, device=x.device)


@register("Constant")
class Constant(Op):
    kind = "data"

    def forward(self):
        for key in ("value_float", "value_int"):
            if key in self.attrs:
                return torch.tensor(self.attrs[key], dtype=torch.float32 if key == "value_float" else torch.int64)
        for key in ("value_floats", "value_ints"):
            if key in self.attrs:
                return torch.tensor(self.attrs[key], dtype=torch.float32 if key == "value_floats" else torch.int64)
        if "value" in self.attrs:
            return to_torch(self.attrs["value"])
        raise ValueError(f"Constant {self.name!r}: unsupported value attribute {sorted(self.attrs)}")


@register("ConstantOfShape")
class ConstantOfShape(Op):
    kind = "data"

    def forward(self, shape):
        value = self.attrs.get("value")
        fill = (to_torch(value) if value is not None else torch.zeros(1, dtype=torch.float32)).to(shape.device)
        return fill.reshape(-1)[:1].expand(ints(shape)).clone() if ints(shape) else fill.reshape(())


@register("Range")
class Range(Op):
    kind = "data"

    def forward(self, start, limit, delta):
        return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype, device=start.device)
