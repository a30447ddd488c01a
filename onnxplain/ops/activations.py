"""Elementwise activations, Dropout/Identity, and Softmax.

LRP: activations pass relevance unchanged (zennit's Pass); Softmax/LogSoftmax end the explained network
(relevance starts at the pre-softmax logit), so inside a network LRP cannot cross them.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import register
from .base import Elementwise, Op


@register("Relu")
class Relu(Elementwise):
    def forward(self, x):
        return torch.relu(x)


@register("LeakyRelu")
class LeakyRelu(Elementwise):
    def forward(self, x):
        return F.leaky_relu(x, float(self.attr("alpha", 0.01)))


@register("PRelu")
class PRelu(Elementwise):
    def forward(self, x, slope):
        return torch.where(x >= 0, x, x * slope)


@register("Elu")
class Elu(Elementwise):
    def forward(self, x):
        return F.elu(x, float(self.attr("alpha", 1.0)))


@register("Selu")
class Selu(Elementwise):
    def forward(self, x):
        alpha = float(self.attr("alpha", 1.67326319217681884765625))
        gamma = float(self.attr("gamma", 1.05070102214813232421875))
        return gamma * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))


@register("Sigmoid")
class Sigmoid(Elementwise):
    gate_strength = 2  # how gate-like its output is when it multiplies another activation (see arith.Mul)

    def forward(self, x):
        return torch.sigmoid(x)


@register("Tanh")
class Tanh(Elementwise):
    gate_strength = 1

    def forward(self, x):
        return torch.tanh(x)


@register("HardSigmoid")
class HardSigmoid(Elementwise):
    gate_strength = 2

    def forward(self, x):
        return torch.clamp(float(self.attr("alpha", 0.2)) * x + float(self.attr("beta", 0.5)), 0, 1)


@register("HardSwish")
class HardSwish(Elementwise):
    def forward(self, x):
        return x * torch.clamp(x / 6 + 0.5, 0, 1)


@register("Clip")
class Clip(Elementwise):
    """min/max are attributes up to opset 10 and optional inputs from opset 11."""

    gate_strength = 1

    def forward(self, x, low=None, high=None):
        low = self.attr("min") if low is None else low
        high = self.attr("max") if high is None else high
        if low is not None:
            x = torch.clamp(x, min=float(low))
        if high is not None:
            x = torch.clamp(x, max=float(high))
        return x


@register("Softplus")
class Softplus(Elementwise):
    def forward(self, x):
        return F.softplus(x)


@register("Softsign")
class Softsign(Elementwise):
    def forward(self, x):
        return x / (1 + x.abs())


@register("Gelu", opsets=(20, 22))
class Gelu(Elementwise):
    def forward(self, x):
        return F.gelu(x, approximate="tanh" if self.attr("approximate", "none") == "tanh" else "none")


@register("Mish", opsets=(18, 22))
class Mish(Elementwise):
    def forward(self, x):
        return F.mish(x)


@register("Erf")
class Erf(Elementwise):
    gate_strength = 1  # 1 + erf(x / sqrt 2) is GELU written out: the gate of x * ...

    def forward(self, x):
        return torch.erf(x)


@register("Dropout")
class Dropout(Elementwise):
    """Inference: the identity (and an all-true mask when asked for)."""

    def forward(self, x, *unused):
        if len(self.node.output) > 1 and self.node.output[1]:
            return x, torch.ones_like(x, dtype=torch.bool)
        return x

    def relevance(self, inputs, rule):
        outputs = self.forward(*inputs)
        return (inputs[0] if not isinstance(outputs, tuple) else (inputs[0],) + outputs[1:]), None


@register("Identity")
class Identity(Op):
    kind = "route"

    def forward(self, x):
        return x


class _Softmax(Op):
    """axis: a single axis from opset 13; before that, the input is coerced to 2-D at `axis` (default 1)."""

    kind = None
    gate_strength = 2

    def forward(self, x):
        if self.opset >= 13:
            return self.apply(x, int(self.attr("axis", -1)))
        axis = int(self.attr("axis", 1)) % max(x.ndim, 1)
        flat = x.reshape(int(math.prod(x.shape[:axis])), -1)
        return self.apply(flat, 1).reshape(x.shape)


@register("Softmax")
class Softmax(_Softmax):
    def apply(self, x, axis):
        return torch.softmax(x, axis)


@register("LogSoftmax")
class LogSoftmax(_Softmax):
    def apply(self, x, axis):
        return torch.log_softmax(x, axis)
