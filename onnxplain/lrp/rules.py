"""LRP rules: how a linear layer hands the relevance of its outputs down to its input. They know nothing of ONNX.

Relevance travels as the *gradient* of a modified forward pass (zennit's idea, done in the forward): a rule
returns a tensor whose value is the layer's true output and whose gradient map, in autograd's backward, is the
rule's relevance map. Fan-out sums, max-pool routing and reshapes then come from autograd for free, and one
backward pass computes the whole explanation.

Each rule also returns a `Leak`: what its denominator holds besides the input contributions (bias, stabiliser),
so the conservation ledger can report the relevance they absorb as separate terms.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
import copy
import math
from typing import Callable

import torch


# ---------------------------------------------------------------- autograd helpers
class Division:
    """R / denominator, computed once per backward pass: the ledger's hook sees R first and keeps its quotient
    for the attached output's backward, which otherwise divides itself."""

    def __init__(self, denominator: torch.Tensor):
        self.denominator = denominator
        self._kept: tuple[torch.Tensor, torch.Tensor] | None = None  # (R, R / denominator)

    def __call__(self, relevance: torch.Tensor, keep: bool = False) -> torch.Tensor:
        kept, self._kept = self._kept, None
        if kept is not None and _same_tensor(kept[0], relevance):
            return kept[1]
        quotient = relevance / self.denominator
        if keep:
            self._kept = (relevance, quotient)
        return quotient


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()
            and a.dtype == b.dtype and a.device == b.device)


class _Attach(torch.autograd.Function):
    """Forward: `value`. Backward: the incoming gradient (divided by `division`) goes to `graph` instead."""

    @staticmethod
    def forward(ctx, value, graph, division):
        ctx.division = division
        return value.view_as(value)

    @staticmethod
    def backward(ctx, grad):
        return None, grad if ctx.division is None else ctx.division(grad), None


class _Relay(torch.autograd.Function):
    """Forward: `value` (a modified copy of `source`). Backward: gradient times `value` goes to `source`."""

    @staticmethod
    def forward(ctx, source, value):
        ctx.save_for_backward(value)
        return value.view_as(value)

    @staticmethod
    def backward(ctx, grad):
        (value,) = ctx.saved_tensors
        return grad * value, None


def attach(value: torch.Tensor, graph: torch.Tensor, division: Division | None = None) -> torch.Tensor:
    """`value`, whose gradient (divided by `division`'s denominator) flows into `graph`: a true output carrying
    relevance."""
    return _Attach.apply(value.detach(), graph, division)


def relay(source: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """`value` (same shape as `source`), whose gradient g reaches `source` as g * value: R_i = value_i * c_i."""
    value = value.detach()
    if value.shape != source.shape:
        value = value.expand(source.shape)  # a broadcast view: backward's product broadcasts, no copy needed
    return _Relay.apply(source, value)


def passthrough(output: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """`output`, whose relevance goes unchanged to `source` (summed where `source` was broadcast)."""
    return attach(output, source.expand(output.shape) if source.shape != output.shape else source)


def stabilize(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    """z + epsilon * sign(z), with sign(+0) = +1 (zennit's convention); one pass and one new tensor."""
    return torch.copysign(torch.tensor(epsilon, dtype=z.dtype, device=z.device), z).add_(z)


# ---------------------------------------------------------------- leaks (the conservation ledger's inputs)
@dataclass
class Branch:
    """One term of a rule: relevance share `coef` of R_j spread over numerator z - bias, divided by the
    denominator z + epsilon sign(z) (so what the stabiliser keeps is R_j coef epsilon / |denominator|)."""

    coef: float | torch.Tensor
    denominator: torch.Tensor    # the stabilised z (detached), shaped like the output
    bias: torch.Tensor | None    # the bias part of z (broadcastable to the output)
    epsilon: float               # the stabiliser
    division: Division | None = None  # the attached output's R / denominator, shared with it (coef 1 only)


class Leak(ABC):
    """Relevance a node does not pass to its inputs, as (bias, stabiliser) sums per sample given R at its output."""

    @abstractmethod
    def terms(self, relevance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(bias term, stabiliser term), each (N,) float64."""


class BranchLeak(Leak):
    """The leak of a rule made of branches (one for z-rules, two for alpha-beta and gamma).

    Per branch one pass makes share = coef R / denominator; the bias term sums it over the axes the bias is
    broadcast along before weighting by the bias, and the stabiliser term is epsilon sum |share| sign(coef R)
    (= share (denominator - z), without reading z)."""

    def __init__(self, branches: list[Branch]):
        self.branches = branches

    def terms(self, relevance):
        relevance = relevance.detach()
        n = len(relevance)
        bias = stabiliser = torch.zeros(n, dtype=torch.float64, device=relevance.device)
        kept = 0
        for branch in self.branches:
            weighted = relevance if _is_one(branch.coef) else relevance * branch.coef
            share = weighted / branch.denominator if branch.division is None else branch.division(weighted, True)
            if branch.bias is not None:
                bias = bias + _bias_term(share, branch.bias)
            stabiliser = stabiliser + branch.epsilon * _per_sample(torch.copysign(share, weighted))
            kept = kept + branch.coef
        if not _is_one(kept):  # e.g. gamma's outputs that are exactly zero
            stabiliser = stabiliser + _per_sample(relevance * (1 - kept))
        return bias, stabiliser


class MaskLeak(Leak):
    """Relevance landing on constant positions (padding) is absorbed like a bias."""

    def __init__(self, mask: torch.Tensor):
        self.mask = mask

    def terms(self, relevance):
        return _per_sample(relevance * self.mask), torch.zeros(len(relevance), dtype=torch.float64,
                                                                device=relevance.device)


def _is_one(coef) -> bool:
    return not isinstance(coef, torch.Tensor) and coef == 1


def _per_sample(values: torch.Tensor) -> torch.Tensor:
    """(N,) float64 per-sample sums."""
    return _sum_last(values.detach().reshape(len(values), 1, -1))[:, 0]


def _sum_last(values: torch.Tensor, block: int = 256) -> torch.Tensor:
    """Sums over the last axis of (N, M, L), float64-accurate: float32 sums of blocks of up to `block` values
    (accurate to ~1e-7 of their magnitude), then float64 across blocks. Converting whole tensors to float64
    first would cost a copy twice their size: most of the ledger's time."""
    n, m, length = values.shape
    size = math.gcd(length, block) or 1
    return values.reshape(n, m, length // size, size).sum(3).double().sum(2)


def _bias_term(share: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """sum(share * bias) per sample, float64: share summed over the trailing axes the bias is constant along
    (a conv's spatial axes), then weighted by the bias."""
    n = len(share)
    bias = bias.detach().reshape((1,) * (share.ndim - bias.ndim) + tuple(bias.shape))
    split = share.ndim
    while split > 1 and bias.shape[split - 1] == 1:
        split -= 1
    head = share.shape[1:split]
    if share.numel() == 0:
        return torch.zeros(n, dtype=torch.float64, device=share.device)
    sums = _sum_last(share.reshape(n, math.prod(head), -1))
    weights = bias[(...,) + (0,) * (share.ndim - split)].expand((bias.shape[0],) + tuple(head))
    weights = weights.reshape(bias.shape[0], -1).double()
    return (sums * weights).sum(1)


# ---------------------------------------------------------------- the layer a rule sees
@dataclass
class Layer:
    """A linear map out = fn(x, weight) + bias. `weight` None: parameter-free (pooling, sums)."""

    fn: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
    weight: torch.Tensor | None
    bias: torch.Tensor | None   # broadcastable to the output

    def __call__(self, x, weight=None, bias=None, use_bias=True):
        out = self.fn(x, self.weight if weight is None else weight)
        b = self.bias if bias is None else bias
        return out + b if use_bias and b is not None else out

    def output(self, x):
        with torch.no_grad():
            return self(x)

    def needs_weight(self, rule: str):
        if self.weight is None:
            raise ValueError(f"rule {rule} needs weights; this layer has none")


def _pos(t):
    return None if t is None else t.clamp(min=0)


def _neg(t):
    return None if t is None else t.clamp(max=0)


# ---------------------------------------------------------------- rules
class Rule(ABC):
    """A relevance rule for a linear layer: `rule(x, layer) -> (output, leak)`."""

    name = "rule"
    nonnegative_input = False  # set, on a copy, by the walker where the plan proves the input >= 0

    def for_nonnegative_input(self) -> "Rule":
        """This rule for an input known to be >= 0 (skips the per-call check for negative inputs)."""
        rule = copy.copy(self)
        rule.nonnegative_input = True
        return rule

    @abstractmethod
    def __call__(self, x: torch.Tensor, layer: Layer) -> tuple[torch.Tensor, Leak | None]:
        """The layer's output at x, carrying this rule's relevance map as its gradient; and its leak."""


class Epsilon(Rule):
    """R_i = x_i w_ij / (z_j + eps sign z_j) R_j (LRP-epsilon; eps only a stabiliser for LRP-0)."""

    name = "epsilon"

    def __init__(self, epsilon: float = 1e-6):
        self.epsilon = float(epsilon)

    def __call__(self, x, layer):
        z = layer(relay(x, x))
        division, leak = _divided(stabilize(z.detach(), self.epsilon), layer.bias, self.epsilon)
        return attach(z, z, division), leak


class Z(Epsilon):
    """LRP-0: R_i = x_i w_ij / z_j R_j (with a tiny stabiliser against division by zero)."""

    name = "z"

    def __init__(self, stabilizer: float = 1e-6):
        super().__init__(stabilizer)


class ZPlus(Rule):
    """z+ = alpha1-beta0: only positive contributions x_i w_ij > 0 (and positive biases) share R_j."""

    name = "zplus"

    def __init__(self, stabilizer: float = 1e-6):
        self.stabilizer = float(stabilizer)

    def __call__(self, x, layer):
        layer.needs_weight(self.name)
        bias = _pos(layer.bias)
        z = _signed_part(x, layer, True, bias, self.nonnegative_input)
        # z >= 0 here (non-negative contributions), so stabilize() would add +epsilon: one pass instead of two
        division, leak = _divided(z.detach() + self.stabilizer, bias, self.stabilizer)
        return attach(layer.output(x), z, division), leak


def _has_negative(x: torch.Tensor, nonnegative: bool) -> bool:
    return not nonnegative and bool((x < 0).any())


def _signed_part(x, layer, positive: bool, bias, nonnegative: bool):
    """Sum of the contributions of one sign: x+ w+ + x- w- (positive) or x+ w- + x- w+ (negative), plus `bias`."""
    w_for_pos, w_for_neg = (_pos, _neg) if positive else (_neg, _pos)
    has_negative = _has_negative(x, nonnegative)
    x_pos = x.clamp(min=0) if has_negative else x
    z = layer(relay(x, x_pos), w_for_pos(layer.weight), bias, use_bias=bias is not None)
    if has_negative:
        z = z + layer(relay(x, x.clamp(max=0)), w_for_neg(layer.weight), use_bias=False)
    return z


class AlphaBeta(Rule):
    """alpha * (positive shares) - beta * (negative shares), alpha - beta = 1.

    A neuron whose contributions all have one sign gives that sign all of its relevance (alpha-beta conserves
    relevance only where both signs occur; zennit would pass alpha * R_j down there).
    """

    name = "alphabeta"

    def __init__(self, alpha: float = 2.0, beta: float = 1.0, stabilizer: float = 1e-6):
        if alpha < 0 or beta < 0 or abs(alpha - beta - 1) > 1e-9:
            raise ValueError(f"alpha-beta needs alpha, beta >= 0 and alpha - beta = 1, got {alpha}, {beta}")
        self.alpha, self.beta, self.stabilizer = float(alpha), float(beta), float(stabilizer)

    def __call__(self, x, layer):
        layer.needs_weight(self.name)
        pos_bias, neg_bias = _pos(layer.bias), _neg(layer.bias)
        positive = _signed_part(x, layer, True, pos_bias, self.nonnegative_input)
        negative = _signed_part(x, layer, False, neg_bias, self.nonnegative_input)
        has_pos, has_neg = positive.detach() > self.stabilizer, negative.detach() < -self.stabilizer
        both = has_pos & has_neg
        pos_coef = torch.where(both, self.alpha, has_pos.to(x.dtype)).to(x.dtype)
        neg_coef = torch.where(both, -self.beta, has_neg.to(x.dtype)).to(x.dtype)
        pos_den = stabilize(positive.detach(), self.stabilizer)
        neg_den = stabilize(negative.detach(), self.stabilizer)
        graph = positive * (pos_coef / pos_den) + negative * (neg_coef / neg_den)
        leak = BranchLeak([Branch(pos_coef, pos_den, pos_bias, self.stabilizer),
                           Branch(neg_coef, neg_den, neg_bias, self.stabilizer)])
        return attach(layer.output(x), graph), leak


class Gamma(Rule):
    """Generalised gamma rule (zennit's): positive outputs favour w + gamma w+, negative ones w + gamma w-."""

    name = "gamma"

    def __init__(self, gamma: float = 0.25, stabilizer: float = 1e-6):
        self.gamma, self.stabilizer = float(gamma), float(stabilizer)

    def __call__(self, x, layer):
        layer.needs_weight(self.name)
        w, b, g = layer.weight, layer.bias, self.gamma
        up_w, down_w = w + g * w.clamp(min=0), w + g * w.clamp(max=0)
        up_b = None if b is None else b + g * b.clamp(min=0)
        down_b = None if b is None else b + g * b.clamp(max=0)
        has_neg = _has_negative(x, self.nonnegative_input)
        x_pos, x_neg = (x.clamp(min=0), x.clamp(max=0)) if has_neg else (x, None)
        y = layer.output(x)
        branches, graph = [], 0
        for mask, w_pos, w_neg, bias in (((y > 0), up_w, down_w, up_b), ((y < 0), down_w, up_w, down_b)):
            z = layer(relay(x, x_pos), w_pos, bias, use_bias=bias is not None)
            if has_neg:
                z = z + layer(relay(x, x_neg), w_neg, use_bias=False)
            coef = mask.to(y.dtype)
            denominator = stabilize(z.detach(), self.stabilizer)
            graph = graph + z * (coef / denominator)
            branches.append(Branch(coef, denominator, bias, self.stabilizer))
        return attach(y, graph), BranchLeak(branches)


class ZBox(Rule):
    """z^B for inputs in a box [low, high]: R_i = (x_i w_ij - l_i w+_ij - h_i w-_ij) / sum_i(...) R_j."""

    name = "zb"

    def __init__(self, low, high, stabilizer: float = 1e-6):
        self.low, self.high, self.stabilizer = low, high, float(stabilizer)

    def __call__(self, x, layer):
        layer.needs_weight(self.name)
        low = torch.as_tensor(self.low, dtype=x.dtype, device=x.device).expand(x.shape)
        high = torch.as_tensor(self.high, dtype=x.dtype, device=x.device).expand(x.shape)
        w = layer.weight
        z = (layer(relay(x, x), w, use_bias=False) - layer(relay(x, low), w.clamp(min=0), use_bias=False)
             - layer(relay(x, high), w.clamp(max=0), use_bias=False))
        division, leak = _divided(stabilize(z.detach(), self.stabilizer), None, self.stabilizer)
        return attach(layer.output(x), z, division), leak


class WSquare(Rule):
    """w^2: R_i = w_ij^2 / sum_i w_ij^2 R_j (unbounded inputs; independent of x)."""

    name = "w2"

    def __init__(self, stabilizer: float = 1e-6):
        self.stabilizer = float(stabilizer)

    def __call__(self, x, layer):
        layer.needs_weight(self.name)
        return _uniform_input(x, layer, layer.weight ** 2, self.stabilizer)


class Flat(Rule):
    """flat: like w^2 with all weights one: R_j spread evenly over its receptive field."""

    name = "flat"

    def __init__(self, stabilizer: float = 1e-6):
        self.stabilizer = float(stabilizer)

    def __call__(self, x, layer):
        weight = None if layer.weight is None else torch.ones_like(layer.weight)
        return _uniform_input(x, layer, weight, self.stabilizer)


def _uniform_input(x, layer, weight, stabilizer):
    z = layer(relay(x, torch.ones_like(x)), weight, use_bias=False)
    division, leak = _divided(stabilize(z.detach(), stabilizer), None, stabilizer)
    return attach(layer.output(x), z, division), leak


def _divided(denominator: torch.Tensor, bias, epsilon: float) -> tuple[Division, BranchLeak]:
    """The division of a one-branch rule and its leak, sharing R / denominator."""
    division = Division(denominator)
    return division, BranchLeak([Branch(1.0, denominator, bias, epsilon, division)])


class Pass(Rule):
    """Relevance passes unchanged (layers whose output has the input's shape)."""

    name = "pass"

    def __call__(self, x, layer):
        y = layer.output(x)
        if y.shape != x.shape:
            raise ValueError("the pass rule needs a layer whose output has its input's shape")
        return passthrough(y, x), None


def share(output: torch.Tensor, terms: list[tuple[torch.Tensor, float]], constant: torch.Tensor | None,
          stabilizer: float) -> tuple[torch.Tensor, Leak]:
    """Sums (residual Add, Sum, Sub): each operand gets R in proportion to its contribution sign * x_k.

    A constant operand keeps its share, reported as a bias term.
    """
    graph = None
    for tensor, sign in terms:
        term = relay(tensor, tensor if sign == 1 else sign * tensor.detach())
        graph = term if graph is None else graph + term
    division, leak = _divided(stabilize(output.detach(), stabilizer), constant, stabilizer)
    return attach(output, graph if graph.shape == output.shape else graph.expand(output.shape), division), leak
