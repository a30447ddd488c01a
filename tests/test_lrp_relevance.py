"""The relevance plumbing under the rules: stacked layer calls, sums that share relevance, and the ledger's terms."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from onnx import helper

from onnxplain.allocator import reuse_freed_memory
from onnxplain.lrp import relevance, rules
from onnxplain.ops import op_class

RNG = np.random.default_rng(3)


def _layer(op_type: str, weight: np.ndarray, bias: np.ndarray, **attrs) -> rules.Layer:
    """The rules' view of one registry op with constant weight and bias."""
    node = helper.make_node(op_type, ["x", "w", "b"], ["y"], name="layer", **attrs)
    constants = {1: torch.from_numpy(weight), 2: torch.from_numpy(bias)}
    op = op_class("", op_type, 13)(node, 13, constants)
    return op.layer([None, constants[1], constants[2]])


CASES = {
    "conv": (lambda: _layer("Conv", RNG.normal(size=(5, 3, 3, 3)).astype(np.float32),
                            RNG.normal(size=5).astype(np.float32), pads=[1, 1, 1, 1], strides=[2, 1]), (2, 3, 8, 7)),
    "grouped conv": (lambda: _layer("Conv", RNG.normal(size=(4, 2, 3, 3)).astype(np.float32),
                                    RNG.normal(size=4).astype(np.float32), group=2), (2, 4, 6, 6)),
    "conv transpose": (lambda: _layer("ConvTranspose", RNG.normal(size=(3, 4, 2, 2)).astype(np.float32),
                                      RNG.normal(size=4).astype(np.float32), strides=[2, 2]), (2, 3, 5, 4)),
    "gemm": (lambda: _layer("Gemm", RNG.normal(size=(6, 5)).astype(np.float32),
                            RNG.normal(size=6).astype(np.float32), transB=1), (4, 5)),
}


@pytest.mark.parametrize("case", CASES)
def test_stacked_terms_equal_one_call_per_term(case):
    make, shape = CASES[case]
    layer = make()
    x = torch.from_numpy(RNG.normal(size=shape).astype(np.float32))
    terms = [(x.clamp(min=0), layer.weight.clamp(min=0)), (x.clamp(max=0), layer.weight.clamp(max=0)),
             (torch.full_like(x, 0.5), -layer.weight)]
    bias = layer.bias.clamp(min=0) + 1e-3
    got = layer.sum_of(terms, bias)
    want = sum(layer(t, w, use_bias=False) for t, w in terms) + bias
    assert (layer.stack_axes is None) == (case == "grouped conv")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def _weighted(op_type: str, weight_shape, channels: int, **attrs) -> rules.Layer:
    return _layer(op_type, RNG.normal(size=weight_shape).astype(np.float32),
                  RNG.normal(size=channels).astype(np.float32), **attrs)


TRANSPOSED = {  # layers whose op gives the rules its transpose, and an input shape
    "conv, even pads, stride 2": (lambda: CASES["conv"][0](), (2, 3, 8, 7)),
    "conv, uneven pads": (lambda: _weighted("Conv", (4, 3, 3, 2), 4, pads=[0, 1, 2, 0], strides=[2, 3]), (2, 3, 9, 8)),
    "conv, SAME_UPPER, stride 2": (lambda: _weighted("Conv", (4, 3, 2, 2), 4, auto_pad="SAME_UPPER", strides=[2, 2]),
                                   (1, 3, 6, 7)),
    "conv, dilated": (lambda: _weighted("Conv", (4, 3, 3, 3), 4, dilations=[2, 1], pads=[2, 1, 2, 1]), (2, 3, 7, 6)),
    "grouped conv": (lambda: CASES["grouped conv"][0](), (2, 4, 6, 6)),
    "conv 1-D": (lambda: _weighted("Conv", (4, 3, 3), 4, pads=[1, 0]), (2, 3, 10)),
    "conv 3-D": (lambda: _weighted("Conv", (2, 3, 2, 2, 2), 2, strides=[1, 2, 1]), (1, 3, 4, 5, 3)),
    "gemm": (lambda: CASES["gemm"][0](), (4, 5)),
    "gemm, alpha": (lambda: _weighted("Gemm", (5, 6), 6, alpha=0.5), (3, 5)),
    "matmul, 3-D input": (lambda: _weighted("MatMul", (5, 6), 6), (2, 4, 5)),
}


@pytest.mark.parametrize("case", TRANSPOSED)
def test_transpose_is_the_input_gradient(case):
    make, shape = TRANSPOSED[case]
    layer = make()
    x = torch.from_numpy(RNG.normal(size=shape).astype(np.float32)).requires_grad_(True)
    y = layer.fn(x, layer.weight)
    q = torch.from_numpy(RNG.normal(size=y.shape).astype(np.float32))
    (want,) = torch.autograd.grad(y, x, q)
    torch.testing.assert_close(layer.transpose(q, x.detach(), layer.weight), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rule", [rules.Epsilon(0.25), rules.ZPlus(), rules.ZPlus().for_nonnegative_input()],
                         ids=["epsilon", "zplus", "zplus, input >= 0"])
@pytest.mark.parametrize("case", TRANSPOSED)
@pytest.mark.parametrize("batch", [1, 2])
def test_rules_by_hand_equal_the_autograd_route(rule, case, batch):
    """The one-branch rules' own backward (with the op's transpose; z+ on one sample: one convolution over both
    weights) gives autograd's relevance, output and ledger terms."""
    make, shape = TRANSPOSED[case]
    layer = make()
    x = torch.from_numpy(RNG.normal(size=(batch,) + shape[1:]).astype(np.float32))
    if rule.nonnegative_input:
        x = x.clamp(min=0)
    results = []
    for current in (layer, dataclasses.replace(layer, transpose=None)):
        leaf = x.clone().requires_grad_(True)
        out, leak = rule(leaf, current)
        r = torch.from_numpy(RNG.normal(size=out.shape).astype(np.float32)) if not results else results[0][3]
        (grad,) = torch.autograd.grad(out, leaf, r)
        results.append((out.detach(), grad, leak.terms(r), r))
    (out, grad, terms, _), (want_out, want_grad, want_terms, _) = results
    torch.testing.assert_close(out, want_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, want_grad, rtol=1e-4, atol=1e-5)
    for got, want in zip(terms, want_terms):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_fused_bias_equals_the_added_bias():
    layer, shape = CASES["conv"][0](), CASES["conv"][1]
    x = torch.from_numpy(RNG.normal(size=shape).astype(np.float32))
    torch.testing.assert_close(layer(x), layer.fn(x, layer.weight) + layer.bias, rtol=1e-5, atol=1e-5)
    scalar = torch.tensor(0.25)  # one value for every channel (a stabiliser on a layer without bias)
    torch.testing.assert_close(layer(x, bias=scalar), layer.fn(x, layer.weight) + 0.25, rtol=1e-5, atol=1e-5)


def test_distribute_shares_relevance_by_contribution_with_broadcast_operands():
    a = torch.from_numpy(RNG.normal(size=(2, 3, 4, 4))).requires_grad_(True)
    b = torch.from_numpy(RNG.normal(size=(2, 3, 1, 1))).requires_grad_(True)
    out = a - b
    division = relevance.Division(relevance.stabilize(out.detach(), 1e-6))
    shared = relevance.distribute(out, division, [(a, 1.0), (b, -1.0)])
    r = torch.from_numpy(RNG.normal(size=out.shape))
    grad_a, grad_b = torch.autograd.grad(shared, (a, b), r)
    quotient = r / (out + 1e-6 * torch.where(out >= 0, 1.0, -1.0)).detach()
    torch.testing.assert_close(shared, out)
    torch.testing.assert_close(grad_a, a.detach() * quotient)
    torch.testing.assert_close(grad_b, (-b.detach() * quotient).sum(dim=(2, 3), keepdim=True))
    absorbed = (1e-6 * r / division.denominator.abs()).sum()  # what the stabiliser keeps
    torch.testing.assert_close(grad_a.sum() + grad_b.sum() + absorbed, r.sum())


@pytest.mark.parametrize("with_bias", [True, False])
def test_positive_branch_ledger_matches_the_general_formula(with_bias):
    """With a positive denominator the stabiliser term is read off the bias's sums: same numbers as the general
    epsilon * sum(copysign(share, R))."""
    denominator = torch.from_numpy(RNG.uniform(0.1, 2.0, size=(3, 4, 5, 5)))
    bias = torch.from_numpy(RNG.uniform(0, 1, size=(1, 4, 1, 1))) if with_bias else None
    r = torch.from_numpy(RNG.normal(size=(3, 4, 5, 5)))
    fast = relevance.BranchLeak([relevance.Branch(1.0, denominator, bias, 1e-3, positive=True)]).terms(r)
    general = relevance.BranchLeak([relevance.Branch(1.0, denominator, bias, 1e-3)]).terms(r)
    for got, want in zip(fast, general):
        torch.testing.assert_close(got, want)
    share = r / denominator
    torch.testing.assert_close(fast[1], 1e-3 * share.sum(dim=(1, 2, 3)))
    if with_bias:
        torch.testing.assert_close(fast[0], (share * bias).sum(dim=(1, 2, 3)))


def test_reuse_freed_memory_applies_on_glibc():
    import platform

    applied = reuse_freed_memory()
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert applied
