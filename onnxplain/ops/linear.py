"""Dense layers: Gemm and MatMul with a constant weight.

LRP: linear layers of category 'dense' (epsilon in zennit's composites). A MatMul or Gemm of two activations
(attention) is no layer: LRP reports it as unsupported.
"""
from __future__ import annotations

import torch

from ..lrp import rules
from . import register
from .base import LinearOp


def dense_transpose(q, x, weight):
    """x @ weight's input gradient at q (weight: (in, out))."""
    return torch.matmul(q, weight.mT)


@register("Gemm")
class Gemm(LinearOp):
    """Y = alpha * A' @ B' + beta * C, with A' = A^T when transA, B' = B^T when transB."""

    category = "dense"
    weight_out_axis = 1   # the layer weight is alpha * B' of shape (in, out)

    def channel_shape(self, inputs, channels):
        return (channels,)

    def setup(self):
        self.alpha = float(self.attr("alpha", 1.0))
        self.beta = float(self.attr("beta", 1.0))
        self.trans_a = bool(self.attr("transA", 0))
        self.trans_b = bool(self.attr("transB", 0))
        self.kind = "linear" if 1 in self.constants and 0 not in self.constants and not self.trans_a else None

    def forward(self, a, b, c=None):
        a = a.transpose(0, 1) if self.trans_a else a
        b = b.transpose(0, 1) if self.trans_b else b
        if c is None:
            y = a @ b
            return y * self.alpha if self.alpha != 1 else y
        return torch.addmm(c, a, b, beta=self.beta, alpha=self.alpha)

    def layer(self, inputs):
        b = inputs[1].transpose(0, 1) if self.trans_b else inputs[1]  # a view: matmul reads it transposed
        bias = inputs[2] if len(inputs) > 2 else None
        if bias is not None and self.beta != 1:
            bias = bias * self.beta
        return rules.Layer(lambda x, w: x @ w, b * self.alpha if self.alpha != 1 else b, bias, stack_axes=(-1, 0),
                           transpose=dense_transpose)


@register("MatMul")
class MatMul(LinearOp):
    """numpy-style matmul; a constant 2-D right operand makes it a dense layer (x @ W)."""

    category = "dense"
    weight_out_axis = 1

    def channel_shape(self, inputs, channels):
        return (channels,)

    def setup(self):
        weight = self.constants.get(1)
        self.kind = "linear" if weight is not None and weight.ndim == 2 and 0 not in self.constants else None

    def forward(self, a, b):
        return torch.matmul(a, b)

    def layer(self, inputs):
        return rules.Layer(lambda x, w: torch.matmul(x, w), inputs[1], None, stack_axes=(-1, 0),
                           transpose=dense_transpose)
