"""How relevance rides on autograd, and what the conservation ledger counts.

A rule's output carries its relevance as a gradient (`attach`, `relay`, `passthrough`, or `explicit` for a
backward written out by hand); `stabilize` is the shared denominator guard. A `Leak` records what a denominator
holds besides the input contributions (bias, stabiliser), so the ledger can report the relevance they absorb as
separate terms.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
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


class _Share(torch.autograd.Function):
    """Forward: `value`. Backward: the incoming gradient, divided by `division`, times each operand's contribution
    goes to that operand (summed over the axes it was broadcast along)."""

    @staticmethod
    def forward(ctx, value, division, contributions, *operands):
        ctx.division, ctx.contributions = division, contributions
        ctx.shapes = [operand.shape for operand in operands]
        return value.view_as(value)

    @staticmethod
    def backward(ctx, grad):
        quotient = ctx.division(grad)
        grads = [(quotient * contribution).sum_to_size(shape) if needed else None
                 for contribution, shape, needed in zip(ctx.contributions, ctx.shapes, ctx.needs_input_grad[3:])]
        return (None, None, None, *grads)


class _Explicit(torch.autograd.Function):
    """Forward: `value`. Backward: `backward(incoming gradient)` goes to `source` instead (a division on its way
    into a graph, or a rule's whole relevance map computed by hand)."""

    @staticmethod
    def forward(ctx, value, source, backward):
        ctx.backward = backward
        return value.view_as(value)

    @staticmethod
    def backward(ctx, grad):
        return None, ctx.backward(grad), None


def explicit(value: torch.Tensor, source: torch.Tensor, backward) -> torch.Tensor:
    """`value`, whose gradient g reaches `source` as backward(g)."""
    return _Explicit.apply(value.detach(), source, backward)


def _unchanged(grad: torch.Tensor) -> torch.Tensor:
    return grad


def distribute(value: torch.Tensor, division: Division, operands: list[tuple[torch.Tensor, float]]) -> torch.Tensor:
    """`value` (a sum of sign_k * operand_k), whose relevance R goes to each operand as sign_k operand_k R / z."""
    contributions = [operand.detach() if sign == 1 else sign * operand.detach() for operand, sign in operands]
    return _Share.apply(value.detach(), division, contributions, *[operand for operand, _ in operands])


def attach(value: torch.Tensor, graph: torch.Tensor, division: Division | None = None) -> torch.Tensor:
    """`value`, whose gradient (divided by `division`'s denominator) flows into `graph`: a true output carrying
    relevance."""
    return explicit(value, graph, division if division is not None else _unchanged)


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
    """z + epsilon * sign(z), with sign(+0) = +1 (zennit's convention); one pass and one new tensor. With epsilon 0
    a zero z becomes infinite: R / z is then 0 there (0 / 0 would fill the map with NaN)."""
    if epsilon == 0:
        return z.masked_fill(z == 0, float("inf"))
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
    positive: bool = False       # denominator > 0 everywhere (z+): the stabiliser term comes from the bias's sums


class Leak(ABC):
    """Relevance a node does not pass to its inputs, as (bias, stabiliser) sums per sample given R at its output."""

    @abstractmethod
    def terms(self, relevance: torch.Tensor, axis: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(bias term, stabiliser term), each (N,) float64, N the length of the output's batch `axis`."""


class BranchLeak(Leak):
    """The leak of a rule made of branches (one for z-rules, two for alpha-beta and gamma).

    Per branch one pass makes share = coef R / denominator; the bias term sums it over the axes the bias is
    broadcast along before weighting by the bias, and the stabiliser term is epsilon sum |share| sign(coef R)
    (= share (denominator - z), without reading z; = epsilon sum share when the denominator is positive, which
    reuses the bias term's sums)."""

    def __init__(self, branches: list[Branch]):
        self.branches = branches

    def terms(self, relevance, axis=0):
        relevance = relevance.detach()
        n = relevance.shape[axis]
        bias = stabiliser = torch.zeros(n, dtype=torch.float64, device=relevance.device)
        kept = 0
        for branch in self.branches:
            weighted = relevance if _is_one(branch.coef) else relevance * branch.coef
            share = weighted / branch.denominator if branch.division is None else branch.division(weighted, True)
            if branch.positive:
                share = _sum_along_bias(share, branch.bias, axis)
                stabiliser = stabiliser + branch.epsilon * per_sample(share, axis)
            else:
                stabiliser = stabiliser + branch.epsilon * per_sample(torch.copysign(share, weighted), axis)
            if branch.bias is not None:
                bias = bias + per_sample(_sum_along_bias(share, branch.bias, axis).double() * branch.bias.double(),
                                          axis)
            kept = kept + branch.coef
        if not _is_one(kept):  # e.g. gamma's outputs that are exactly zero
            stabiliser = stabiliser + per_sample(relevance * (1 - kept), axis)
        return bias, stabiliser


class MaskLeak(Leak):
    """Relevance landing on constant positions (padding) is absorbed like a bias."""

    def __init__(self, mask: torch.Tensor):
        self.mask = mask

    def terms(self, relevance, axis=0):
        return per_sample(relevance * self.mask, axis), torch.zeros(relevance.shape[axis], dtype=torch.float64,
                                                                      device=relevance.device)


def _is_one(coef) -> bool:
    return not isinstance(coef, torch.Tensor) and coef == 1


def per_sample(values: torch.Tensor, axis: int = 0) -> torch.Tensor:
    """(N,) float64 sums over all axes but the batch `axis`. torch's float32 reductions sum in cascades (accurate
    to ~1e-7 of the values' magnitude) and read any memory layout in place; converting whole tensors to float64
    first would cost a copy twice their size, most of the ledger's time."""
    values = values.detach()
    if values.ndim == 1:
        return values.double()
    return values.sum(dim=tuple(a for a in range(values.ndim) if a != axis)).double()


def _sum_along_bias(values: torch.Tensor, bias: torch.Tensor | None, axis: int = 0) -> torch.Tensor:
    """`values` summed (kept as size-1 axes) over the axes the bias is constant along (a conv's spatial axes);
    without a bias, over all axes but the batch `axis`."""
    others = [a for a in range(values.ndim) if a != axis]
    if bias is None:
        return values.sum(dim=tuple(others), keepdim=True) if others else values
    shape = (1,) * (values.ndim - bias.ndim) + tuple(bias.shape)
    axes = tuple(a for a in others if shape[a] == 1 and values.shape[a] != 1)
    return values.sum(dim=axes, keepdim=True) if axes else values
