"""How relevance rides on autograd, and what the conservation ledger counts.

A rule's output carries its relevance as a gradient (`attach`, `relay`, `passthrough`); `stabilize` is the
shared denominator guard. A `Leak` records what a denominator holds besides the input contributions (bias,
stabiliser), so the ledger can report the relevance they absorb as separate terms.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
import math

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
