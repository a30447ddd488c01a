"""The least work epsilon-plus LRP can do on `benchmarks/lrp.py`'s nets: a floor for the walker's speed.

`HandLRP` writes the rules out by hand for these two nets (conv/BatchNorm/ReLU/max-pool/residual/average-pool/
linear modules) with no autograd, no conservation ledger and temporaries reused in place where the arithmetic
allows. Per convolution it
does what the rule's arithmetic needs and nothing more: the true output and z+ = x w+ + b+ + epsilon (two
convolutions, biases added in the kernel), then R / z+ in place, one input-gradient convolution with w+, and the
product with x in place. A gradient does one forward convolution, one input-gradient convolution and one ReLU mask
per layer, so HandLRP / gradient is what LRP costs on this CPU before any bookkeeping. With `stacked`, the true
output and z+ come from one convolution over both weights stacked along the output channels (where the input is
>= 0): the same arithmetic in one kernel call, faster on some layers and batch sizes and slower on others.

It is a measuring stick, not a second implementation: `lrp.py` checks that it gives the walker's relevance.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

EPSILON = 1e-6  # epsilon-plus: the epsilon rule's and z+'s stabiliser, as onnxplain's and zennit's composites


def _stabilized(z: torch.Tensor) -> torch.Tensor:
    return torch.copysign(torch.tensor(EPSILON, dtype=z.dtype), z).add_(z)


class _Conv:
    """z+ on a convolution (its BatchNorm merged). Only the first layer's input can be negative (every later one
    follows a ReLU, as the walker's plan proves): there x+ w+ and x- w- run as one convolution over the stacked
    inputs."""

    def __init__(self, conv: nn.Conv2d, norm: nn.BatchNorm2d | None, stacked: bool, first: bool):
        if conv.groups != 1 or tuple(conv.dilation) != (1, 1) or isinstance(conv.padding, str):
            raise TypeError("HandLRP handles ungrouped, undilated convolutions with numeric padding only")
        weight = conv.weight.detach()
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros(weight.shape[0])
        if norm is not None:
            scale = (norm.weight / torch.sqrt(norm.running_var + norm.eps)).detach()
            weight = weight * scale.reshape(-1, 1, 1, 1)
            bias = (bias - norm.running_mean) * scale + norm.bias.detach()
        self.weight, self.bias = weight.contiguous(), bias
        self.positive, self.negative = weight.clamp(min=0), weight.clamp(max=0)
        self.signed_weights = torch.cat([self.positive, self.negative], 1)
        self.denominator_bias = bias.clamp(min=0) + EPSILON
        self.stride, self.padding = list(conv.stride), list(conv.padding)
        self.both = (torch.cat([self.weight, self.positive]), torch.cat([self.bias, self.denominator_bias])) \
            if stacked else None
        self.first = first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.two_signs = self.first and bool((x < 0).any())
        if self.both is not None and not self.two_signs:
            outputs = F.conv2d(x, *self.both, self.stride, self.padding)
            channels = self.weight.shape[0]
            self.saved = x, self.positive, outputs[:, channels:]
            return outputs[:, :channels]
        inputs, weight = (torch.cat([x.clamp(min=0), x.clamp(max=0)], 1), self.signed_weights) if self.two_signs \
            else (x, self.positive)
        self.saved = inputs, weight, F.conv2d(inputs, weight, self.denominator_bias, self.stride, self.padding)
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)

    def backward(self, relevance: torch.Tensor) -> torch.Tensor:
        (inputs, weight, denominator), self.saved = self.saved, None
        quotient = torch.div(relevance, denominator, out=denominator)
        share = torch.ops.aten.convolution_backward(quotient, inputs, weight, None, self.stride, self.padding, [1, 1],
                                                    False, [0, 0], 1, [True, False, False])[0]
        share.mul_(inputs)
        if self.two_signs:
            half = share.shape[1] // 2
            return share[:, :half] + share[:, half:]
        return share


class _Relu:
    def forward(self, x):
        return x.relu_()

    def backward(self, relevance):
        return relevance


class _MaxPool:
    """Winner takes all."""

    def __init__(self, pool: nn.MaxPool2d):
        self.pool = pool

    def forward(self, x):
        y, self.indices = F.max_pool2d(x, self.pool.kernel_size, self.pool.stride, return_indices=True)
        self.shape = x.shape[2:]
        return y

    def backward(self, relevance):
        return F.max_unpool2d(relevance, self.indices, self.pool.kernel_size, self.pool.stride, output_size=self.shape)


class _Mean:
    """Global average pooling: the z rule (R_i = x_i / sum x R)."""

    def forward(self, x):
        self.x = x
        self.z = x.mean((2, 3), keepdim=True)
        return self.z

    def backward(self, relevance):
        return (relevance / _stabilized(self.z)).div_(self.x.shape[2] * self.x.shape[3]) * self.x


class _Flatten:
    def forward(self, x):
        self.shape = x.shape
        return x.flatten(1)

    def backward(self, relevance):
        return relevance.reshape(self.shape)


class _Linear:
    """The epsilon rule."""

    def __init__(self, linear: nn.Linear):
        self.weight, self.bias = linear.weight.detach(), linear.bias.detach()

    def forward(self, x):
        self.x = x
        z = F.linear(x, self.weight, self.bias)
        self.denominator = _stabilized(z)  # now: a ReLU after this layer overwrites z in place
        return z

    def backward(self, relevance):
        return (relevance / self.denominator).matmul(self.weight).mul_(self.x)


class _Residual:
    """conv-BN-ReLU-conv-BN plus a shortcut, then ReLU: the sum shares R by contribution."""

    def __init__(self, block, stacked: bool):
        self.branch = [_Conv(block.conv1, block.bn1, stacked, False), _Relu(),
                       _Conv(block.conv2, block.bn2, stacked, False)]
        self.shortcut = _Conv(block.shortcut[0], block.shortcut[1], stacked, False) \
            if isinstance(block.shortcut, nn.Sequential) else None

    def forward(self, x):
        branch = x
        for layer in self.branch:
            branch = layer.forward(branch)
        shortcut = x if self.shortcut is None else self.shortcut.forward(x)
        total = branch + shortcut
        self.saved = branch, shortcut, _stabilized(total)
        return total.relu_()

    def backward(self, relevance):
        branch, shortcut, denominator = self.saved
        quotient = relevance.div_(denominator)
        to_branch = quotient * branch
        to_shortcut = quotient.mul_(shortcut)
        for layer in reversed(self.branch):
            to_branch = layer.backward(to_branch)
        return to_branch.add_(to_shortcut if self.shortcut is None else self.shortcut.backward(to_shortcut))


def _layers(net: nn.Sequential, stacked: bool) -> list:
    modules, layers = list(net), []
    for i, module in enumerate(modules):
        after = modules[i + 1] if i + 1 < len(modules) else None
        if isinstance(module, nn.Conv2d):
            layers.append(_Conv(module, after if isinstance(after, nn.BatchNorm2d) else None, stacked, not layers))
        elif isinstance(module, nn.ReLU):
            layers.append(_Relu())
        elif isinstance(module, nn.MaxPool2d):
            layers.append(_MaxPool(module))
        elif isinstance(module, nn.AdaptiveAvgPool2d):
            layers.append(_Mean())
        elif isinstance(module, nn.Flatten):
            layers.append(_Flatten())
        elif isinstance(module, nn.Linear):
            layers.append(_Linear(module))
        elif hasattr(module, "conv1"):
            layers.append(_Residual(module, stacked))
        elif not (isinstance(module, nn.BatchNorm2d) and i and isinstance(modules[i - 1], nn.Conv2d)):
            raise TypeError(f"HandLRP has no rule for {type(module).__name__} here")
    return layers


class HandLRP:
    """Epsilon-plus LRP of the top class, by hand, for `lrp.py`'s vgg- and resnet-style nets: numpy in, numpy out."""

    def __init__(self, net: nn.Sequential, stacked: bool = False):
        self.layers = _layers(net, stacked)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            h = torch.from_numpy(x)
            for layer in self.layers:
                h = layer.forward(h)
            rows = torch.arange(len(h))
            relevance = torch.zeros_like(h)
            top = h.argmax(1)
            relevance[rows, top] = h[rows, top]
            for layer in reversed(self.layers):
                relevance = layer.backward(relevance)
        return relevance.numpy()


def floors(rows: list[dict]) -> str:
    """'net, batch b: separate / gradient, stacked / gradient' for each row of `lrp.py`'s table."""
    return "; ".join(f"{r['net']}, batch {r['batch']}: {r['floor, separate'] / r['gradient']:.2f}x, "
                     f"{r['floor, stacked'] / r['gradient']:.2f}x" for r in rows)


def overheads(rows: list[dict]) -> str:
    """'net, batch b: attribute / floor' for each row of `lrp.py`'s table."""
    return "; ".join(f"{r['net']}, batch {r['batch']}: {r['lrp-no-report'] / r['floor']:.2f}x" for r in rows)
