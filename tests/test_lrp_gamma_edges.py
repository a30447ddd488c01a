"""The gamma rule against zennit's Gamma on one dense layer: its default gamma, and an output that is exactly zero
while its contributions are not (zennit's strict y > 0 / y < 0 masks pass it nothing; the ledger must then book
that output's whole relevance, or conservation breaks)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import helper
from zennit.rules import Gamma as ZennitGamma  # conftest makes zennit's torchvision import work

from onnxplain.lrp import rules
from onnxplain.ops import op_class

WEIGHT = np.array([[1.0, -1.0, 0.5],      # with x = (1, 1, 0): y = 0 exactly, contributions (1, -1, 0)
                   [0.3, 0.8, -0.6],
                   [-0.7, 0.2, 0.4],
                   [0.5, -0.9, 0.1]], dtype=np.float32)
BIAS = np.array([0.0, 0.2, -0.1, 0.05], dtype=np.float32)
X = np.array([[1.0, 1.0, 0.0], [0.4, -0.8, 0.6]], dtype=np.float32)
RELEVANCE = np.array([[2.0, 0.5, -1.0, 0.7], [0.3, -0.4, 1.2, 0.9]], dtype=np.float32)


def gemm_layer() -> rules.Layer:
    """The rules' view of a registry Gemm y = x W^T + b."""
    node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="dense", transB=1)
    constants = {1: torch.from_numpy(WEIGHT), 2: torch.from_numpy(BIAS)}
    return op_class("", "Gemm", 13)(node, 13, constants).layer([None, constants[1], constants[2]])


def ours(rule: rules.Rule):
    """(input relevance, bias term, stabiliser term) of `rule` on the layer, RELEVANCE at its outputs."""
    x = torch.from_numpy(X).requires_grad_(True)
    out, leak = rule(x, gemm_layer())
    (grad,) = torch.autograd.grad(out, x, torch.from_numpy(RELEVANCE))
    bias, stabiliser = leak.terms(torch.from_numpy(RELEVANCE))
    return grad.double().numpy(), bias.numpy(), stabiliser.numpy()


def zennits(rule) -> np.ndarray:
    linear = torch.nn.Linear(3, 4)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(WEIGHT))
        linear.bias.copy_(torch.from_numpy(BIAS))
    handle = rule.register(linear)
    x = torch.from_numpy(X).requires_grad_(True)
    linear(x).backward(torch.from_numpy(RELEVANCE))
    handle.remove()
    return x.grad.double().numpy()


@pytest.mark.parametrize("gamma", [None, 0.5], ids=["defaults", "gamma 0.5"])
def test_gamma_equals_zennit_where_an_output_is_exactly_zero(gamma):
    assert float(torch.from_numpy(X[:1]) @ torch.from_numpy(WEIGHT[0])) == 0.0   # the case this test is about
    given = {} if gamma is None else {"gamma": gamma}
    relevance, _, _ = ours(rules.Gamma(**given))
    np.testing.assert_allclose(relevance, zennits(ZennitGamma(**given)), rtol=1e-5, atol=1e-6)


def test_the_ledger_books_the_relevance_of_an_exactly_zero_output():
    relevance, bias, stabiliser = ours(rules.Gamma())
    received = RELEVANCE.astype(np.float64).sum(axis=1)
    np.testing.assert_allclose(relevance.sum(axis=1) + bias + stabiliser, received, rtol=1e-5, atol=1e-6)
    assert stabiliser[0] == pytest.approx(RELEVANCE[0, 0], rel=1e-4)   # output 0 of sample 0 passes nothing
