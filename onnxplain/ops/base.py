"""What every op shares: parsed attributes, a torch `forward`, and its LRP role (`kind`, plus a hook per kind).

LRP kinds (how relevance crosses the node; see `Op.relevance`):

- ``linear``  a layer with parameters: the composite's rule applies to `layer(inputs)` (Conv, Gemm, BatchNorm, ...)
- ``pool``    a parameter-free linear map (average pooling, ReduceMean): z-rule by default
- ``share``   sums (residual Add, Sum, Sub): each operand by its contribution
- ``pass``    elementwise (activations, scaling by a constant, LRN): relevance passes unchanged
- ``gate``    a product of two activations, or a division by one: relevance goes to the signal, the gate (the
              divisor) is held constant
- ``route``   the plain gradient routes relevance exactly (reshapes, concat, slices, max-pooling)
- ``data``    integer/shape tensors: no relevance flows
- ``None``    LRP cannot pass this node (e.g. a Softmax inside the network)
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from onnx import helper

from ..lrp import relevance, rules

# torch's functions by spatial rank (1-D, 2-D, 3-D), for the ops whose ONNX form covers all three
CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


class Op(ABC):
    """One ONNX node: attributes parsed once, `forward(*inputs)` in torch, and its LRP behaviour."""

    kind: str | None = "route"
    category: str | None = None  # for linear kinds: 'conv', 'dense' or 'affine' (what composites map rules onto)

    def __init__(self, node, opset: int, constants: dict[int, torch.Tensor]):
        self.node = node
        self.op_type = node.op_type
        self.name = node.name or node.output[0]
        self.opset = opset
        self.attrs = {a.name: _attribute_value(a) for a in node.attribute}
        self.constants = constants  # input position -> constant tensor (weights, shapes, ...)
        self.setup()

    def setup(self) -> None:
        """Read attributes and constant inputs once (override where useful)."""

    def link(self, producers: dict) -> None:
        """See the graph around the node (gate detection); `producers` maps tensor name -> producing Op."""

    def attr(self, name: str, default=None):
        return self.attrs.get(name, default)

    @abstractmethod
    def forward(self, *inputs):
        """The node's outputs (a tensor, or a tuple for several) from its inputs (None for absent ones)."""

    data_input = 0  # the input a layer's rule takes (LinearOp), or that relevance passes to

    def relevance_inputs(self) -> list[int]:
        """Positions of the inputs that receive relevance: the data input (shapes, pads, sizes, bounds and slopes
        receive none; nor does a gate, nor integer data). Sums, and ops LRP cannot pass (so they are named), take
        every run-time input. The walker runs what feeds only the others as constants, so ops there (a softmax, a
        norm, shape arithmetic) need no rule."""
        if self.kind == "data":
            return []
        dynamic = [i for i, name in enumerate(self.node.input) if name and i not in self.constants]
        return dynamic if self.kind in ("share", None) else [i for i in dynamic if i == self.data_input]

    def relevance(self, inputs: list, rule) -> tuple:
        """LRP-mode forward: (outputs, leak). Outputs carry the true values and, as their gradient, relevance.

        The default ('route') is the plain forward: the gradient of a reshape, slice or max-pool routes relevance.
        """
        return self.forward(*inputs), None


class Elementwise(Op):
    """An elementwise map of its first input: relevance passes unchanged (zennit's Pass)."""

    kind = "pass"

    def relevance(self, inputs, rule):
        return relevance.passthrough(self.forward(*inputs), inputs[0]), None


class LinearOp(Op):
    """A layer whose rule is chosen by the composite: defines `layer(inputs) -> rules.Layer`."""

    kind = "linear"
    weight_out_axis = 0  # the axis of the weight that indexes output channels (for merging BatchNorm)

    @abstractmethod
    def layer(self, inputs) -> rules.Layer:
        """This node as a linear map with weight and bias, for the rules."""

    def relevance(self, inputs, rule):
        return rule(inputs[self.data_input], self.layer(inputs))

    @property
    def derived(self) -> dict:
        """Where the rules keep what they make from this layer's weight (w+, ...), across calls."""
        return self.__dict__.setdefault("_derived", {})

    def channel_shape(self, inputs, channels: int) -> tuple[int, ...]:
        """Shape that broadcasts a per-output-channel vector over the output (channels on axis 1 by default)."""
        return (1, channels) + (1,) * (inputs[0].ndim - 2)

    def mergeable(self) -> bool:
        """Whether a following per-channel affine map can be folded into this layer's weight and bias."""
        return True


def _attribute_value(attribute):
    value = helper.get_attribute_value(attribute)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode() for v in value]
    return value


def ints(tensor) -> list[int]:
    """An integer tensor (shape, axes, pads) as a Python list."""
    return [int(v) for v in torch.as_tensor(tensor).reshape(-1).tolist()]


def normalise_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def pad_pairs(pads: list[int], spatial: int) -> list[tuple[int, int]]:
    """ONNX pads [b1, b2, ..., e1, e2, ...] -> [(b1, e1), (b2, e2), ...]."""
    pads = list(pads) if pads else [0] * (2 * spatial)
    return list(zip(pads[:spatial], pads[spatial:]))


def torch_pad(pairs: list[tuple[int, int]]) -> list[int]:
    """[(b1, e1), (b2, e2)] over the trailing dims -> torch.nn.functional.pad's order (last dim first)."""
    flat = []
    for begin, end in reversed(pairs):
        flat += [begin, end]
    return flat


def auto_pads(mode: str, sizes, kernel, strides, dilations) -> list[tuple[int, int]]:
    """auto_pad SAME_UPPER / SAME_LOWER / VALID -> per-dim (begin, end) pads."""
    pairs = []
    for size, k, s, d in zip(sizes, kernel, strides, dilations):
        if mode == "VALID":
            pairs.append((0, 0))
            continue
        total = max(0, (-(-size // s) - 1) * s + (k - 1) * d + 1 - size)
        small, large = total // 2, total - total // 2
        pairs.append((small, large) if mode == "SAME_UPPER" else (large, small))
    return pairs
