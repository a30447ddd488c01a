"""Dense layers: Gemm, MatMul and Einsum with a constant weight.

LRP: linear layers of category 'dense' (epsilon in zennit's composites). A MatMul, Gemm or Einsum of two
activations (attention) is no layer: LRP reports it as unsupported.
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


@register("Einsum", opsets=(12, 22))
class Einsum(LinearOp):
    """torch.einsum, which reads ONNX's equations alike (implicit output in label order, '...', spaces). Data first
    and a constant second: a linear map of the data, so a dense layer with the constant as weight. Otherwise no rule:
    two activations, or the constant first (the walker takes a layer's input, and its z^B bounds, from input 0)."""

    category = "dense"

    def setup(self):
        self.equation = self.attr("equation")
        dense = len(self.node.input) == 2 and 1 in self.constants and 0 not in self.constants
        self.kind = "linear" if dense else None

    def forward(self, *operands):
        return torch.einsum(self.equation, *operands)

    def layer(self, inputs):
        return rules.Layer(lambda x, w: torch.einsum(self.equation, x, w), inputs[1], None)

    def mergeable(self) -> bool:
        """No: the output axis a per-channel factor would scale depends on the equation."""
        return False
