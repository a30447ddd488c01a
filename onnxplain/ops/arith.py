"""Arithmetic: Add/Sub/Sum (sums), Mul/Div (scaling or gates), Neg, Max/Min, Sqrt/Pow/Mod, elementary functions
(exp, log, |x|, 1/x, trigonometric and hyperbolic ones), roundings (Sign/Floor/Ceil/Round), comparisons and boolean
logic, Where.

LRP: sums share relevance by contribution (a constant operand keeps its share, like a bias), except an offset
before the first layer (a mean subtracted inside the model: preprocessing, like the scaling around it), which
passes relevance; scaling by a constant passes relevance; a product of two activations is a gate: the signal takes
all relevance, the gate (the operand coming from a sigmoid-like op) is held constant. Elementary functions have no
rule (LRP names them as unsupported; gradients pass); roundings, comparisons and logic give integer or boolean
values through which no relevance flows (kind 'data').
"""
from __future__ import annotations

import torch

from ..lrp import relevance, rules
from . import register
from .base import Elementwise, Op

TRANSPARENT = {"Reshape", "Unsqueeze", "Squeeze", "Flatten", "Expand", "Identity", "Transpose", "Cast", "Dropout",
               "Gather", "Slice"}


def _dynamic(op: Op, count: int) -> list[int]:
    return [i for i in range(count) if i not in op.constants]


class _Sum(Op):
    """Sums of operands with signs; `signs` gives each operand's sign."""

    kind = "share"
    stabilizer = 1e-6

    def signs(self, count: int) -> list[float]:
        return [1.0] * count

    @property
    def offset(self) -> bool:
        """One operand shifted by constants: x + c, x - c, c - x (a mean subtracted inside the model)."""
        return bool(self.constants) and len(_dynamic(self, len(self.node.input))) == 1

    def relevance(self, inputs, rule):
        """Operands that carry no relevance (constants, integer data such as floor(x)) keep their share as a bias;
        under the pass rule (an offset before the first layer) the one operand takes it all."""
        y = self.forward(*inputs)
        if isinstance(rule, rules.Pass):
            return relevance.passthrough(y, inputs[_dynamic(self, len(inputs))[0]]), None
        signs = self.signs(len(inputs))
        carried = [i not in self.constants and inputs[i].requires_grad for i in range(len(inputs))]
        terms = [(t, s) for t, s, c in zip(inputs, signs, carried) if c]
        constants = [s * t.detach() for t, s, c in zip(inputs, signs, carried) if not c]
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
    """x * constant: scaling (relevance passes); activation * activation: a gate when one operand is more gate-like
    (`gate_strength`) than the other, else no rule (named, like a MatMul of two activations: which operand would
    take the relevance is no choice the graph makes)."""

    def setup(self):
        dynamic = _dynamic(self, 2)
        self.kind = "pass" if len(dynamic) == 1 else "gate"
        self.signal = dynamic[0] if len(dynamic) == 1 else 0

    def link(self, producers):
        if self.kind == "gate":
            strengths = [gate_strength(name, producers) for name in self.node.input[:2]]
            if strengths[0] == strengths[1]:
                self.kind = None
            self.signal = 0 if strengths[0] <= strengths[1] else 1

    def forward(self, a, b):
        return a * b

    def relevance_inputs(self):
        return [self.signal] if self.kind else super().relevance_inputs()

    def relevance(self, inputs, rule):
        return relevance.passthrough(self.forward(*inputs), inputs[self.signal]), None


@register("Div")
class Div(Op):
    """x / constant scales (relevance passes); x / activation is a gate held constant, relevance passing to x (the
    LN-rule of Ali et al. 2022, which holds a normalisation's standard deviation constant). Integer division
    truncates."""

    def setup(self):
        dynamic = _dynamic(self, 2)
        self.kind = "pass" if dynamic == [0] else "gate" if dynamic == [0, 1] else None

    def link(self, producers):
        if self.kind == "gate" and gate_strength(self.node.input[0], producers) == 3:
            self.kind = None  # integer data over an activation: a reciprocal, no gate

    def relevance_inputs(self):
        return [0] if self.kind else super().relevance_inputs()

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


def held_by_constants(op: Op, inputs: list, candidates: list[int]):
    """`op`'s output and, where operands among `candidates` carry no relevance (constants, integer data), a MaskLeak
    of the share the gradient routes to them (a bias term); else no leak."""
    y = op.forward(*inputs)
    held = [i for i in candidates if inputs[i] is not None and not inputs[i].requires_grad]
    if not held:
        return y, None
    with torch.enable_grad():
        copies = [t.detach().expand(y.shape).clone().requires_grad_(True) if i in held else t.detach()
                  for i, t in enumerate(inputs)]
        shares = torch.autograd.grad(op.forward(*copies).sum(), [copies[i] for i in held])
    return y, relevance.MaskLeak(sum(shares[1:], shares[0]))


@register("Max")
class Max(Op):
    """Elementwise maximum: the winner takes the relevance (its gradient); a winning constant keeps it (bias)."""

    def relevance_inputs(self):
        return [i for i, name in enumerate(self.node.input) if name and i not in self.constants]

    def relevance(self, inputs, rule):
        return held_by_constants(self, inputs, list(range(len(inputs))))

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


@register("Mod", opsets=(10, 22))
class Mod(_Nonlinear):
    """Remainder of a / b: with the dividend's sign when fmod=1 (C's fmod), else the divisor's (Python's %)."""

    def forward(self, a, b):
        return torch.fmod(a, b) if self.attr("fmod", 0) else torch.remainder(a, b)


ELEMENTARY = {"Exp": torch.exp, "Log": torch.log, "Abs": torch.abs, "Reciprocal": torch.reciprocal,
              "Sin": torch.sin, "Cos": torch.cos, "Tan": torch.tan, "Asin": torch.asin, "Acos": torch.acos,
              "Atan": torch.atan, "Sinh": torch.sinh, "Cosh": torch.cosh, "Asinh": torch.asinh, "Acosh": torch.acosh,
              "Atanh": torch.atanh}


@register(*ELEMENTARY)
class Elementary(_Nonlinear):
    """exp, log, |x|, 1/x, trigonometric and hyperbolic functions and their inverses: forward and gradients; LRP has
    no rule for them (inside norms, log-sums or periodic features they are no activation)."""

    def forward(self, x):
        return ELEMENTARY[self.op_type](x)


ROUNDINGS = {"Sign": lambda x: torch.where(torch.isnan(x), x, torch.sign(x)),  # NaN stays NaN, as in onnxruntime
              "Floor": torch.floor, "Ceil": torch.ceil, "Round": torch.round}


@register(*ROUNDINGS)
class Rounding(Op):
    """sign, floor, ceil, round (half to even, as ONNX and torch): integer-valued steps with a zero gradient, so no
    relevance flows (kind 'data')."""

    kind = "data"

    def forward(self, x):
        return ROUNDINGS[self.op_type](x)


@register("Equal")
class Equal(Op):
    kind = "data"

    def forward(self, a, b):
        return a == b


COMPARISONS = {"Less": torch.lt, "Greater": torch.gt, "LessOrEqual": torch.le, "GreaterOrEqual": torch.ge,
               "And": torch.logical_and, "Or": torch.logical_or, "Xor": torch.logical_xor}


@register(*COMPARISONS, opsets=(7, 22))
class Comparison(Op):
    """Comparisons and boolean logic with numpy broadcasting (from opset 7: before, a `broadcast` attribute aligned
    operands differently); boolean outputs carry no relevance (kind 'data')."""

    kind = "data"

    def forward(self, a, b):
        return COMPARISONS[self.op_type](a, b)


@register("Not")
class Not(Op):
    kind = "data"

    def forward(self, x):
        return torch.logical_not(x)


@register("IsNaN", opsets=(9, 22))
class IsNaN(Op):
    kind = "data"

    def forward(self, x):
        return torch.isnan(x)


@register("IsInf", opsets=(10, 22))
class IsInf(Op):
    """+inf and/or -inf, as detect_positive / detect_negative say (both by default)."""

    kind = "data"

    def forward(self, x):
        positive = torch.isposinf(x) if self.attr("detect_positive", 1) else torch.zeros_like(x, dtype=torch.bool)
        return (positive | torch.isneginf(x)) if self.attr("detect_negative", 1) else positive


@register("Where")
class Where(Op):
    """Selection by a condition: relevance follows the chosen values (the gradient)."""

    def relevance_inputs(self):
        return [i for i in (1, 2) if i < len(self.node.input) and i not in self.constants]

    def relevance(self, inputs, rule):
        return held_by_constants(self, inputs, [1, 2])

    def forward(self, condition, a, b):
        return torch.where(condition.bool(), a, b)


def data_derived(name: str, producers: dict) -> bool:
    """Whether tensor `name` is computed from integer or boolean data (a shape, a comparison) and constants alone,
    whatever the ops on the way (sqrt(width), a mask cast to float, the sum of two held inputs: `onnxplain.hold`):
    a constant as far as relevance goes. Walked without recursion; the first operand that reaches anything else
    (the input) decides. Each op keeps its answer (`data_only`), so a graph's gates cost one walk in all."""
    stack = [name]
    while stack:
        op = producers.get(stack[-1])
        if _data_only(op) is not None:
            stack.pop()
            continue
        operands = [op.node.input[i] for i in _dynamic(op, len(op.node.input))]
        known = [_data_only(producers.get(operand)) for operand in operands]
        if False in known or None not in known:
            op.data_only = bool(operands) and all(known)
            stack.pop()
        else:
            stack.append(operands[known.index(None)])
    return bool(_data_only(producers.get(name)))


def _data_only(op) -> bool | None:
    """An op's known answer for `data_derived`: False for a graph input (no op), True for a data op, else what
    was found (None: not yet)."""
    if op is None or op.kind == "data":
        return op is not None
    return getattr(op, "data_only", None)


def gate_strength(name: str, producers: dict) -> int:
    """How gate-like the tensor `name` is: 3 behind integer or boolean data (a mask), 2 behind a sigmoid/softmax,
    1 behind clip/tanh, else 0.

    Shape ops and scaling/shifting by constants are looked through (hard-swish's clip(x + 3, 0, 6) / 6).
    """
    if data_derived(name, producers):
        return 3
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
