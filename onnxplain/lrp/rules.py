"""LRP rules: how a linear layer hands the relevance of its outputs down to its input. They know nothing of ONNX.

Relevance travels as the *gradient* of a modified forward pass (zennit's idea, done in the forward): a rule
returns a tensor whose value is the layer's true output and whose gradient map, in autograd's backward, is the
rule's relevance map. Fan-out sums, max-pool routing and reshapes then come from autograd for free, and one
backward pass computes the whole explanation. Where the op gives its transpose (convolutions, dense layers), the
one-branch rules (z, epsilon, z+) write their backward out by hand instead: one autograd node per layer, z+'s
weights made once per convolution, and on one sample the true output and z+ from one convolution.

Each rule also returns a `Leak` (`relevance.py`): what its denominator holds besides the input contributions
(bias, stabiliser), so the conservation ledger can report the relevance they absorb as separate terms.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
import copy
from typing import Callable

import torch

from .relevance import (Branch, BranchLeak, Division, Leak, attach, distribute, explicit, passthrough, relay,
                        stabilize)


# ---------------------------------------------------------------- the layer a rule sees
@dataclass
class Layer:
    """A linear map out = fn(x, weight) + bias. `weight` None: parameter-free (pooling, sums). `with_bias`, when
    given, computes fn(x, weight) + bias in one call (a convolution's fused bias: one pass less over the output)."""

    fn: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
    weight: torch.Tensor | None
    bias: torch.Tensor | None   # broadcastable to the output
    with_bias: Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor], torch.Tensor] | None = None
    stack_axes: tuple[int, int] | None = None  # (input axis, weight axis) of the summed-over input features
    transpose: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    # transpose(q, x, w): fn(., w)'s transpose applied to q (fn's input gradient, shaped like x), where the op gives
    # one; single-branch rules then run their backward themselves (one autograd node, no graph through fn)
    stacks_outputs: bool = False  # fn(x, cat([w1, w2])) = cat([fn(x, w1), fn(x, w2)], 1): an ungrouped convolution
    cache: dict | None = None     # the op's store for tensors rules derive from its weight (kept across calls)

    def __call__(self, x, weight=None, bias=None, use_bias=True):
        weight = self.weight if weight is None else weight
        bias = (self.bias if bias is None else bias) if use_bias else None
        if bias is None:
            return self.fn(x, weight)
        if self.with_bias is not None:
            return self.with_bias(x, weight, bias)
        return self.fn(x, weight) + bias

    def output(self, x):
        with torch.no_grad():
            return self(x)

    def sum_of(self, terms: list[tuple[torch.Tensor, torch.Tensor]], bias=None) -> torch.Tensor:
        """Sum of fn(x_k, w_k) over `terms`, plus `bias`: one call on the inputs and weights stacked along
        `stack_axes` where the layer has them (a first layer's thin input makes that as cheap as one term), else
        one call per term."""
        (x, weight), *rest = self.stacked(terms)
        total = self(x, weight, bias, use_bias=bias is not None)
        for x, weight in rest:
            total = total + self(x, weight, use_bias=False)
        return total

    def stacked(self, terms: list[tuple[torch.Tensor, torch.Tensor]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """`terms` as one (inputs, weights) pair stacked along `stack_axes` where the layer has them."""
        if len(terms) < 2 or self.stack_axes is None:
            return terms
        x_axis, w_axis = self.stack_axes
        return [(torch.cat([x for x, _ in terms], x_axis), torch.cat([w for _, w in terms], w_axis))]

    def derived(self, what: str, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        """A tensor a rule makes from the weight (w+, stacked weights): made once per op, dtype and device."""
        if self.cache is None:
            return make()
        key = (what, self.weight.dtype, self.weight.device)
        kept = self.cache.get(key)
        if kept is None or kept[0] is not self.weight:  # made from this very weight tensor, or made again
            kept = self.cache[key] = (self.weight, make())
        return kept[1]

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
        if layer.transpose is not None and layer.weight is not None:
            z = layer.output(x)
            division, leak = _divided(stabilize(z, self.epsilon), layer.bias, self.epsilon)
            return _by_hand(z, x, layer, division, [(x, layer.weight)]), leak
        z = layer(relay(x, x))
        division, leak = _divided(stabilize(z.detach(), self.epsilon), layer.bias, self.epsilon)
        return attach(z, z, division), leak


class Z(Epsilon):
    """LRP-0: R_i = x_i w_ij / z_j R_j (with a tiny stabiliser against division by zero)."""

    name = "z"

    def __init__(self, stabilizer: float = 1e-6):
        super().__init__(stabilizer)


class ZPlus(Rule):
    """z+: only positive contributions x_i w_ij > 0 (and positive biases) share R_j (zennit's ZPlus, its
    AlphaBeta(1, 0)). onnxplain's alpha-beta 1/0 differs on a neuron whose contributions are all negative: it gives
    that neuron's relevance to them (`AlphaBeta`), where z+ passes none (its stabiliser keeps it)."""

    name = "zplus"

    def __init__(self, stabilizer: float = 1e-6):
        self.stabilizer = float(stabilizer)

    def __call__(self, x, layer):
        layer.needs_weight(self.name)
        bias = _pos(layer.bias)
        # z >= 0 (non-negative contributions), so stabilize() would add +epsilon: added with the bias instead, the
        # stabilised denominator comes out of the layer itself (the bias does not change z's gradient)
        shifted = torch.as_tensor(self.stabilizer if bias is None else bias + self.stabilizer, dtype=x.dtype,
                                  device=x.device)
        if layer.transpose is not None:
            return self._by_hand(x, layer, bias, shifted)
        z = _signed_part(x, layer, True, shifted, self.nonnegative_input)
        division, leak = _divided(z.detach(), bias, self.stabilizer, positive=True)
        return attach(layer.output(x), z, division), leak

    def _by_hand(self, x, layer, bias, shifted):
        """z+ with the layer's transpose. One sample with inputs >= 0 on a convolution: the true output and z+ come
        from one convolution over both weights stacked along the output channels (one kernel call instead of two;
        with several samples the halves would not be contiguous, and two calls measure faster)."""
        positive = layer.derived("w+", lambda: layer.weight.clamp(min=0))
        with torch.no_grad():
            if len(x) == 1 and layer.stacks_outputs and not _has_negative(x, self.nonnegative_input):
                both = layer.derived("w, w+", lambda: torch.cat([layer.weight, positive]))
                channels = len(positive)
                true_bias = torch.zeros(channels, dtype=x.dtype, device=x.device) if layer.bias is None else layer.bias
                biases = torch.cat([true_bias.reshape(-1), shifted.reshape(-1).expand(channels)])
                y, z = layer(x, both, biases.reshape((1, -1) + (1,) * (x.ndim - 2))).split(channels, 1)
                terms = stacked = [(x.detach(), positive)]
            else:
                terms = _signed_terms(x, layer.weight, positive, self.nonnegative_input)
                stacked = layer.stacked(terms)  # x+ w+ + x- w-: one call each way on the stacked parts
                y, z = layer(x), layer.sum_of(stacked, shifted)
        division, leak = _divided(z, bias, self.stabilizer, positive=True)
        return _by_hand(y, x, layer, division, stacked, len(terms) // len(stacked)), leak


def _has_negative(x: torch.Tensor, nonnegative: bool) -> bool:
    return not nonnegative and bool((x < 0).any())


def _signed_part(x, layer, positive: bool, bias, nonnegative: bool):
    """Sum of the contributions of one sign: x+ w+ + x- w- (positive) or x+ w- + x- w+ (negative), plus `bias`."""
    w_for_pos, w_for_neg = (_pos, _neg) if positive else (_neg, _pos)
    if not _has_negative(x, nonnegative):
        return layer.sum_of([(relay(x, x), w_for_pos(layer.weight))], bias)
    return layer.sum_of([(relay(x, x.clamp(min=0)), w_for_pos(layer.weight)),
                         (relay(x, x.clamp(max=0)), w_for_neg(layer.weight))], bias)


def _signed_terms(x, weight, positive, nonnegative: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(input part, weight part) pairs of the positive contributions, as `_signed_part` sums them (`positive`: w+)."""
    x = x.detach()
    if not _has_negative(x, nonnegative):
        return [(x, positive)]
    return [(x.clamp(min=0), positive), (x.clamp(max=0), weight.clamp(max=0))]


def _by_hand(value, x, layer: Layer, division: Division, terms, folds: int = 1) -> torch.Tensor:
    """`value`, whose relevance R reaches x as sum_k m_k * W_k^T (R / z): the one-branch rules' backward, run with
    the layer's transpose (in place where the temporaries allow) instead of autograd through the layer. `folds` > 1:
    `terms` is one pair stacked along the input axis (`Layer.stacked`), whose `folds` blocks are summed."""
    def backward(relevance):
        quotient = division(relevance)
        total = None
        for part, weight in terms:
            share = layer.transpose(quotient, part, weight).mul_(part)
            total = share if total is None else total.add_(share)
        if folds > 1:
            blocks = total.chunk(folds, layer.stack_axes[0])
            total = sum(blocks[1:], blocks[0])
        return total
    return explicit(value, x, backward)


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
            terms = [(relay(x, x_pos), w_pos)] + ([(relay(x, x_neg), w_neg)] if has_neg else [])
            z = layer.sum_of(terms, bias)
            coef = mask.to(y.dtype)
            denominator = stabilize(z.detach(), self.stabilizer)
            graph = graph + z * (coef / denominator)
            branches.append(Branch(coef, denominator, bias, self.stabilizer))
        return attach(y, graph), BranchLeak(branches)


class ZBox(Rule):
    """z^B for inputs in a box [low, high]: R_i = (x_i w_ij - l_i w+_ij - h_i w-_ij) / sum_i(...) R_j.

    The contributions are computed as (x_i - l_i) w+_ij + (x_i - h_i) w-_ij: where the box is one point (a constant
    padding, l = h = x) they are exactly zero, and z sums no large terms of opposite signs. Written as three
    products, float32 left a rounding residue there that R_j / (z_j + epsilon) magnified past R_j itself.
    """

    name = "zb"

    def __init__(self, low, high, stabilizer: float = 1e-6):
        self.low, self.high, self.stabilizer = low, high, float(stabilizer)

    def __call__(self, x, layer):
        layer.needs_weight(self.name)
        low = torch.as_tensor(self.low, dtype=x.dtype, device=x.device).expand(x.shape)
        high = torch.as_tensor(self.high, dtype=x.dtype, device=x.device).expand(x.shape)
        w = layer.weight
        z = layer.sum_of([(relay(x, x - low), w.clamp(min=0)), (relay(x, x - high), w.clamp(max=0))])
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


def _divided(denominator: torch.Tensor, bias, epsilon: float, positive: bool = False) -> tuple[Division, BranchLeak]:
    """The division of a one-branch rule and its leak, sharing R / denominator (a zero one, possible only with no
    stabiliser, passes nothing: 0 / 0 would fill the map with NaN)."""
    if epsilon == 0:
        denominator = denominator.masked_fill(denominator == 0, float("inf"))
    division = Division(denominator)
    return division, BranchLeak([Branch(1.0, denominator, bias, epsilon, division, positive)])


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
    division, leak = _divided(stabilize(output.detach(), stabilizer), constant, stabilizer)
    return distribute(output, division, terms), leak
