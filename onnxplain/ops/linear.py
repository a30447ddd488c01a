"""Dense layers: Gemm, MatMul and Einsum with a constant weight.

LRP: linear layers of category 'dense' (epsilon in zennit's composites). Attention (a MatMul of a softmax's or
sigmoid's output and an activation) is a dense layer whose weight, the attention, is held constant; other products
of two activations are no layer: LRP reports them as unsupported.
"""
from __future__ import annotations

import torch

from ..lrp import rules
from . import register
from .arith import gate_strength
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
    """numpy-style matmul; a constant 2-D right operand makes it a dense layer (x @ W). Attention, a product of
    two activations one of which comes from a softmax or sigmoid (softmax(q k^T) @ v): a dense layer of the other
    operand whose weight, the attention, is held constant (the AH-rule of Ali et al. 2022); so is an operand
    computed from data and constants alone (a mask, a held input's matrix), and a constant left operand (W @ x)."""

    category = "dense"
    weight_out_axis = 1
    attention = None  # the position of the attention operand, for a product of two activations

    def channel_shape(self, inputs, channels):
        return (channels,)

    def setup(self):
        weight = self.constants.get(1)
        self.kind = "linear" if weight is not None and weight.ndim == 2 and 0 not in self.constants else None
        if self.kind is None and 0 in self.constants and 1 not in self.constants:   # W @ x: a weight held constant
            self.attention, self.kind, self.data_input = 0, "linear", 1

    def link(self, producers):
        if self.constants:
            return
        strengths = [gate_strength(name, producers) for name in self.node.input[:2]]
        if sorted(strengths) in ([0, 2], [0, 3]):
            self.attention, self.kind = 1 - strengths.index(0), "linear"
            self.data_input = 1 - self.attention

    def mergeable(self):
        return self.attention is None

    def forward(self, a, b):
        return torch.matmul(a, b)


    def layer(self, inputs):
        if self.attention == 0:  # attention @ x
            return rules.Layer(lambda x, w: torch.matmul(w, x), inputs[0].detach(), None,
                               transpose=lambda q, x, w: torch.matmul(w.mT, q).sum_to_size(x.shape))
        if self.attention == 1:  # x @ attention
            return rules.Layer(lambda x, w: torch.matmul(x, w), inputs[1].detach(), None,
                               transpose=lambda q, x, w: dense_transpose(q, x, w).sum_to_size(x.shape))
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
        self.kind = "linear" if dense and self._batch_first() else None

    def _batch_first(self) -> bool:
        """Whether the output keeps the data's first axis (the batch) first, as the conservation ledger reads it."""
        spec = self.equation.replace(" ", "")
        inputs, _, output = spec.partition("->")
        if not _:  # implicit output: '...' first, then the labels seen once, in alphabetical order
            labels = inputs.replace("...", "").replace(",", "")
            once = sorted(label for label in set(labels) if labels.count(label) == 1)
            output = ("..." if "..." in inputs else "") + "".join(once)
        data = inputs.split(",")[0]
        return output[:3] == data[:3] if data.startswith("...") else bool(output) and output[0] == data[0]

    def forward(self, *operands):
        return torch.einsum(self.equation, *operands)

    def layer(self, inputs):
        return rules.Layer(lambda x, w: torch.einsum(self.equation, x, w), inputs[1], None)

    def mergeable(self) -> bool:
        """No: the output axis a per-channel factor would scale depends on the equation."""
        return False
