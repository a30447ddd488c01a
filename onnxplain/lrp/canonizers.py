"""Canonizers: rewrites of the executor's steps that keep the function but give LRP clean layers.

`merge_affine` folds the per-channel affine maps right after a Conv/Gemm/MatMul (BatchNormalization, Mul/Div/Add/Sub
by a per-channel constant) into the layer's weight and bias, like zennit's MergeBatchNorm canonizer; a MatMul then
an Add of a constant becomes one dense layer with a bias.
"""
from __future__ import annotations

import torch

from ..ops.base import LinearOp
from ..ops.graph import Step
from . import rules


class MergedLinear(LinearOp):
    """A linear op whose output is then scaled and shifted per channel: y = base(x) * factor + shift."""

    def __init__(self, base: LinearOp, factor: torch.Tensor, shift: torch.Tensor):
        self.base, self.factor, self.shift = base, factor, shift
        self.node, self.op_type, self.name, self.constants = base.node, base.op_type, base.name, base.constants
        self.category, self.kind, self.weight_out_axis = base.category, "linear", base.weight_out_axis
        self._merged: dict[tuple, rules.Layer] = {}  # the merged parameters, computed once per input kind

    def layer(self, inputs):
        x = inputs[0]
        key = (x.ndim, x.dtype, x.device, tuple(id(t) for t in inputs[1:]))
        if key not in self._merged:
            self._merged[key] = self._merge(inputs)
        return self._merged[key]

    def _merge(self, inputs):
        layer = self.base.layer(inputs)
        view = [1] * layer.weight.ndim
        view[self.weight_out_axis] = -1
        shape = self.base.channel_shape(inputs, self.factor.numel())
        factor, shift = self.factor.to(layer.weight), self.shift.to(layer.weight)
        bias = shift.reshape(shape) if layer.bias is None else layer.bias * factor.reshape(shape) + shift.reshape(shape)
        return rules.Layer(layer.fn, layer.weight * factor.reshape(view), bias, layer.with_bias, layer.stack_axes,
                           layer.transpose, layer.stacks_outputs, {})

    def channel_shape(self, inputs, channels):
        return self.base.channel_shape(inputs, channels)

    def forward(self, *inputs):
        return self.layer(list(inputs))(inputs[0])


def merge_affine(steps: list[Step], keep: set[str], ranks: dict[str, int]) -> list[Step]:
    """Steps with per-channel affine maps folded into the linear layer before them.

    `keep`: tensors that must stay visible (the explained tensor); `ranks`: known tensor ranks.
    """
    consumers: dict[str, list[Step]] = {}
    for step in steps:
        for name in step.inputs:
            consumers.setdefault(name, []).append(step)
    absorbed, result = set(), []
    for step in steps:
        if id(step) in absorbed:
            continue
        op = step.op
        channels = out_channels(op) if isinstance(op, LinearOp) and op.kind == "linear" and op.mergeable() else None
        if channels is None:
            result.append(step)
            continue
        factor, shift = torch.ones(channels, dtype=torch.float64), torch.zeros(channels, dtype=torch.float64)
        out, axis_rank, moved = step.outputs[0], _channel_axis(op, ranks.get(step.outputs[0])), None
        while out not in keep and len(consumers.get(out, [])) == 1 and len([o for o in step.outputs if o]) == 1:
            follower = consumers[out][0]
            if moved is None and _moves_channels(follower, axis_rank):   # channels first -> last (Keras on torch)
                ahead = consumers.get(follower.outputs[0], [])
                perm = follower.op.attr("perm")
                after = (perm.index(axis_rank[0]), axis_rank[1])
                if follower.outputs[0] in keep or len(ahead) != 1 or \
                        per_channel_affine(ahead[0], follower.outputs[0], channels, after) is None:
                    break
                moved, axis_rank, out = follower, after, follower.outputs[0]
                absorbed.add(id(follower))
                continue
            affine = per_channel_affine(follower, out, channels, axis_rank)
            if affine is None:
                break
            factor, shift = factor * affine[0], shift * affine[0] + affine[1]
            absorbed.add(id(follower))
            out = follower.outputs[0]
        if out == step.outputs[0]:
            result.append(step)
            continue
        dtype = op.constants[1].dtype if 1 in op.constants else torch.float32
        merged = MergedLinear(op, factor.to(dtype), shift.to(dtype))
        if moved is None:
            result.append(Step(merged, step.inputs, [out], step.node))
        else:   # the layer with the affine maps folded in, then the Transpose, which now ends the chain
            result += [Step(merged, step.inputs, [step.outputs[0]], step.node),
                       Step(moved.op, [step.outputs[0]], [out], moved.node)]
    return result


def _moves_channels(step: Step, axis_rank) -> bool:
    """A Transpose of a layer's output with a known rank (the channel axis moves; per-channel maps may follow)."""
    axis, rank = axis_rank
    perm = step.op.attr("perm") if step.op is not None and step.op.op_type == "Transpose" else None
    return rank is not None and bool(perm) and sorted(perm) == list(range(rank)) and 0 <= axis < rank \
        and perm[0] == 0


def out_channels(op: LinearOp) -> int | None:
    """Number of output channels of a linear op (from its constant weight), None when unknown."""
    weight = op.constants.get(1)
    if op.op_type == "Conv" and weight is not None:
        return weight.shape[0]
    if op.op_type == "ConvTranspose" and weight is not None:
        return weight.shape[1] * op.groups
    if op.op_type == "Gemm" and weight is not None:
        return weight.shape[0] if op.trans_b else weight.shape[1]
    if op.op_type == "MatMul" and weight is not None:
        return weight.shape[-1]
    if op.op_type == "BatchNormalization" and weight is not None:
        return weight.numel()
    if op.op_type == "LinearClassifier":
        return op.weight.shape[1]
    return None


def _channel_axis(op: LinearOp, rank: int | None) -> tuple[int, int | None]:
    """(channel axis, output rank) of the op's output; the rank may be unknown (None)."""
    if op.op_type in ("Gemm", "LinearClassifier"):
        return -1, 2
    if op.op_type == "MatMul":
        return -1, rank
    if op.op_type in ("Conv", "ConvTranspose"):
        return 1, op.constants[1].ndim
    return 1, rank


def per_channel_affine(step: Step, source: str, channels: int, axis_rank) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(factor, shift) per channel when `step` maps `source` by a per-channel affine function, else None."""
    op, (axis, rank) = step.op, axis_rank
    if op is None or len([o for o in step.outputs if o]) != 1:
        return None
    if op.op_type == "BatchNormalization" and op.kind == "linear" and step.inputs[0] == source and \
            (rank is None or axis % rank == 1):   # its channels are axis 1, wherever a Transpose put the layer's
        factor, shift = (_vector(v, channels, axis, rank, True)
                         for v in op.affine([None] + [op.constants[i] for i in (1, 2, 3, 4)]))
        return None if factor is None or shift is None else (factor, shift)   # statistics per value (spatial=0)
    if op.op_type not in ("Mul", "Div", "Add", "Sub") or len(op.constants) != 1 or source not in step.inputs[:2]:
        return None
    (position, constant), = op.constants.items()
    if step.inputs[1 - position] != source or (position == 0 and op.op_type in ("Div", "Sub")):
        return None
    vector = _vector(constant, channels, axis, rank, False)
    if vector is None:
        return None
    ones, zeros = torch.ones_like(vector), torch.zeros_like(vector)
    maps = {"Mul": (vector, zeros), "Div": (1 / vector, zeros), "Add": (ones, vector), "Sub": (ones, -vector)}
    return maps[op.op_type]


def _vector(constant: torch.Tensor, channels: int, axis: int, rank: int | None, flat: bool) -> torch.Tensor | None:
    """A constant that varies only along the channel axis, as a float64 vector of `channels` values.

    Folded on the CPU, wherever the graph's constants live: `MergedLinear` moves the result to the weight's device.
    """
    c = constant.detach().to("cpu", torch.float64)
    if c.numel() == 1:
        return c.reshape(1).expand(channels).clone()
    if flat and c.ndim == 1 and c.numel() == channels:
        return c
    if axis == -1 and c.shape[-1] == channels and c.numel() == channels:
        return c.reshape(-1)
    if rank is None or c.ndim > rank:
        return None
    shape = (1,) * (rank - c.ndim) + tuple(c.shape)
    if shape[axis] == channels and all(d == 1 for i, d in enumerate(shape) if i != axis % rank):
        return c.reshape(-1)
    return None
