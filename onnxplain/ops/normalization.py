"""Normalisation: BatchNormalization (inference), LayerNormalization, InstanceNormalization and LRN.

LRP: a BatchNormalization right after a Conv/Gemm is merged into it (zennit's canonizer, done by the LRP
canonizer); elsewhere it is an affine layer (category 'affine') under the composite's rule. Layer and instance
normalisation are linear once the standard deviation is held constant (Ali et al. 2022): a parameter-free map
under the z-rule. LRN passes relevance unchanged (the deep Taylor paper bypasses normalisation layers).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..lrp import rules
from . import register
from .base import Elementwise, LinearOp, Op


@register("BatchNormalization")
class BatchNormalization(LinearOp):
    """y = (x - mean) / sqrt(var + eps) * scale + bias, per channel (axis 1)."""

    category = "affine"

    def setup(self):
        self.epsilon = float(self.attr("epsilon", 1e-5))
        self.kind = "linear" if all(i in self.constants for i in (1, 2, 3, 4)) else None
        training = self.attr("training_mode", 0) if self.opset >= 14 else len([o for o in self.node.output if o]) > 1
        if training:   # onnxruntime then normalises by the batch's own statistics: no per-sample map
            raise ValueError(f"BatchNormalization node {self.name!r} is in training mode (batch statistics)")

    def forward(self, x, scale, bias, mean, var, *unused):
        if x.ndim == 2 or scale.ndim == 1:
            return F.batch_norm(x, mean, var, scale, bias, False, 0.0, self.epsilon)
        return (x - mean) / torch.sqrt(var + self.epsilon) * scale + bias  # opset < 9 with spatial = 0

    def affine(self, inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-channel factor, per-channel shift) of this normalisation."""
        _, scale, bias, mean, var = inputs[:5]
        factor = scale / torch.sqrt(var + self.epsilon)
        return factor, bias - mean * factor

    def layer(self, inputs):
        factor, shift = self.affine(inputs)
        shape = (1, *factor.shape) + (1,) * (inputs[0].ndim - 1 - factor.ndim)   # per channel, or per value
        return rules.Layer(lambda x, w: x * w.reshape(shape), factor.reshape(-1), shift.reshape(shape))

    def mergeable(self) -> bool:
        """Statistics per value (opset < 9, spatial=0) have no per-channel vector to fold a follower into."""
        return self.constants[1].ndim == 1


@register("LayerNormalization", opsets=(17, 22))
class LayerNormalization(Op):
    """y = (x - mean) / sqrt(var + epsilon) * scale + bias, statistics over the axes from `axis` on."""

    def setup(self):
        self.epsilon = float(self.attr("epsilon", 1e-5))
        self.kind = "pool" if not any(self.node.output[1:]) else None   # Mean / InvStdDev outputs: no rule

    def axes(self, x) -> tuple[int, ...]:
        axis = int(self.attr("axis", -1))
        return tuple(range(axis % x.ndim, x.ndim))

    def affine(self, x, scale, bias):
        """scale and bias as they broadcast over x (LayerNormalization: over the normalised axes already)."""
        return scale, bias

    def forward(self, x, scale, bias=None):
        axes = self.axes(x)
        scale, bias = self.affine(x, scale, bias)
        mean = x.mean(dim=axes, keepdim=True)
        inverse = torch.rsqrt(x.var(dim=axes, unbiased=False, keepdim=True) + self.epsilon)
        y = (x - mean) * inverse * scale + (0 if bias is None else bias)
        return (y, mean, inverse) if any(self.node.output[1:]) else y

    def relevance(self, inputs, rule):
        """The z-rule (or epsilon) on x -> (x - mean(x)) * scale / sigma with sigma held constant: relevance is
        conserved up to the bias's share."""
        if rule.name not in ("z", "epsilon"):   # flat and the like would spread relevance over the centring
            raise ValueError(f"rule {rule.name} does not apply to {self.op_type}: use z or epsilon")
        x = inputs[0]
        scale, bias = self.affine(x, inputs[1], inputs[2] if len(inputs) > 2 else None)
        axes = self.axes(x)
        inverse = torch.rsqrt(x.detach().var(dim=axes, unbiased=False, keepdim=True) + self.epsilon)
        centred = rules.Layer(lambda t, w: (t - t.mean(dim=axes, keepdim=True)) * inverse * scale, None, bias)
        return rule(x, centred)


@register("InstanceNormalization")
class InstanceNormalization(LayerNormalization):
    """y = (x - mean) / sqrt(var + epsilon) * scale + bias, statistics per sample and channel over the spatial axes,
    scale and bias per channel; LRP as LayerNormalization's."""

    def setup(self):
        self.epsilon = float(self.attr("epsilon", 1e-5))
        self.kind = "pool"

    def axes(self, x) -> tuple[int, ...]:
        return tuple(range(2, x.ndim))

    def affine(self, x, scale, bias):
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return scale.reshape(shape), bias.reshape(shape)


@register("LRN")
class LRN(Elementwise):
    """y = x / (bias + alpha / size * sum of x^2 over `size` neighbouring channels) ^ beta."""

    def forward(self, x):
        size = int(self.attr("size"))
        alpha, beta = float(self.attr("alpha", 1e-4)), float(self.attr("beta", 0.75))
        bias = float(self.attr("bias", 1.0))
        before, after = (size - 1) // 2, size - 1 - (size - 1) // 2
        # the channel window's mean of squares as one pooling over (N, 1, C, pixels): few passes over memory
        squares = (x * x).reshape(len(x), 1, x.shape[1], -1)
        mean = F.avg_pool2d(F.pad(squares, (0, 0, before, after)), (size, 1), stride=1).reshape(x.shape)
        base = torch.add(torch.tensor(bias, dtype=x.dtype, device=x.device), mean, alpha=alpha)
        return x * base.pow(-beta)
