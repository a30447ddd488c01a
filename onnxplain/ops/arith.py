"""Arithmetic: Add/Sub/Sum (sums), Mul/Div (scaling or gates), Neg, Max/Min, Sqrt/Pow/Exp/Log/Abs, and a few
ops of shape arithmetic.

LRP: sums share relevance by contribution (a constant operand keeps its share, like a bias); scaling by a
constant passes relevance; a product of two activations is a gate: the signal takes all relevance, the gate
(the operand coming from a sigmoid-like op) is held constant.
"""
from __future__ import annotations

import torch

from ..lrp import relevance, rules
from . import register
from .base import Elementwise, Op

TRANSPARENT = {"Reshape", "Unsqueeze", "Squeeze", "Flatten", "Expand", "Identity", "Transpose", "Cast"}


def _dynamic(op: Op, count: int) -> list[int]:
    return [i for i in range(count) if i not in op.constants]


class _Sum(Op):
    """Sums of operands with signs; `signs` gives each operand's sign."""

    kind = "share"
    stabilizer = 1e-6

    def signs(self, count: int) -> list[float]:
        return [1.0] * count

    def relevance(self, inputs, rule):
        y = self.forward(*inputs)
        signs = self.signs(len(inputs))
        terms = [(t, s) for i, (t, s) in enumerate(zip(inputs, signs)) if i not in self.constants]
        constants = [s * t for i, (t, s) in enumerate(zip(inputs, signs)) if i in self.constants]
        constant = sum(constants[1:], constants[0]) if constants else None
        stabilizer = getattr(rule, "epsilon", self.stabilizer)
        return rules.share(y, terms, constant, stabilizer)


@register("Add")
class Add(_Sum):
    def forward(self, a, b):
        return a + b


@register("Sum")
class Sum(_Sum):
    def forward(self, *operands):
        total = operands[0]
        for operand in operands[1:]:
            total = total + operand
        return total


@register("Sub")
class Sub(_Sum):
    def signs(self, count):
        return [1.0, -1.0]

    def forward(self, a, b):
        return a - b


@register("Mul")
class Mul(Op):
    """x * constant: scaling (relevance passes); activation * activation: a gate."""

    def setup(self):
        dynamic = _dynamic(self, 2)
        self.kind = "pass" if len(dynamic) == 1 else "gate"
        self.signal = dynamic[0] if len(dynamic) == 1 else 0

    def link(self, producers):
        if self.kind == "gate":
            strengths = [gate_strength(name, producers) for name in self.node.input[:2]]
            self.signal = 0 if strengths[0] < strengths[1] else 1 if strengths[0] > strengths[1] else 0

    def forward(self, a, b):
        return a * b

    def relevance(self, inputs, rule):
        return relevance.passthrough(self.forward(*inputs), inputs[self.signal]), None


@register("Div")
class Div(Op):
    """x / constant scales (relevance passes); other divisions have no LRP rule. Integer division truncates."""

    def setup(self):
        self.kind = "pass" if _dynamic(self, 2) == [0] else None

    def forward(self, a, b):
        if not a.is_floating_point() and not b.is_floating_point():
            return torch.div(a, b, rounding_mode="trunc")
        return a / b

    def relevance(self, inputs, rule):
        return relevance.passthrough(self.forward(*inputs), inputs[0]), None


@register("Neg")
class Neg(Elementwise):
    def forward(self, x):
        return -x


@register("Max")
class Max(Op):
    """Elementwise maximum: the winner takes the relevance (its gradient)."""

    def forward(self, *operands):
        out = operands[0]
        for operand in operands[1:]:
            out = torch.maximum(out, operand)
        return out


@register("Min")
class Min(Max):
    def forward(self, *operands):
        out = operands[0]
        for operand in operands[1:]:
            out = torch.minimum(out, operand)
        return out


class _Nonlinear(Op):
    kind = None


@register("Sqrt")
class Sqrt(_Nonlinear):
    def forward(self, x):
        return torch.sqrt(x)


@register("Pow")
class Pow(_Nonlinear):
    def forward(self, x, exponent):
        return torch.pow(x, exponent)


@register("Exp", "Log", "Abs")
class Elementary(_Nonlinear):
    """exp, log, |x|: forward and gradients; LRP has no rule for them (inside norms and log-sums they are no
    activation)."""

    def forward(self, x):
        return {"Exp": torch.exp, "Log": torch.log, "Abs": torch.abs}[self.op_type](x)


@register("Equal")
class Equal(Op):
    kind = "data"

    def forward(self, a, b):
        return a == b


@register("Where")
class Where(Op):
    """Selection by a condition: relevance follows the chosen values (the gradient)."""

    def forward(self, condition, a, b):
        return torch.where(condition.bool(), a, b)


def gate_strength(name: str, producers: dict) -> int:
    """How gate-like the tensor `name` is: 2 behind a sigmoid/softmax, 1 behind clip/tanh, else 0.

    Shape ops and scaling/shifting by constants are looked through (hard-swish's clip(x + 3, 0, 6) / 6).
    """
    op = producers.get(name)
    while op is not None:
        strength = getattr(op, "gate_strength", 0)
        if strength:
            return strength
        dynamic = _dynamic(op, len(op.node.input))
        scaling = op.op_type in ("Mul", "Div", "Add", "Sub") and len(dynamic) == 1
        if not (op.op_type in TRANSPARENT or scaling):
            return 0
        op = producers.get(op.node.input[dynamic[0]]) if dynamic else None
    return 0
