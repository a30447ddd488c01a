"""The op registry: for each ONNX op (domain, type, opset range) one class with its torch forward and LRP role.

One module per op family (conv, linear, pooling, resize, activations, arith, shape, normalization, ml). To add an op,
write a small `Op` subclass in its family's module and decorate it with `@register("Type")`.
"""
from __future__ import annotations

from .base import Op

REGISTRY: dict[tuple[str, str], type[Op]] = {}
OPSETS: dict[tuple[str, str], tuple[int, int]] = {}


def register(*op_types: str, domain: str = "", opsets: tuple[int, int] = (1, 22)):
    """Class decorator: this class runs `op_types` of `domain` at opset versions `opsets` (inclusive)."""

    def wrap(cls: type[Op]) -> type[Op]:
        for op_type in op_types:
            REGISTRY[(domain, op_type)] = cls
            OPSETS[(domain, op_type)] = opsets
        return cls

    return wrap


def op_class(domain: str, op_type: str, opset: int) -> type[Op] | None:
    """The class for this op at this opset, or None when the registry does not cover it."""
    key = ("" if domain == "ai.onnx" else domain, op_type)
    if key not in REGISTRY:
        return None
    low, high = OPSETS[key]
    return REGISTRY[key] if low <= opset <= high else None


# the op families fill REGISTRY as they are imported
from . import activations, arith, conv, linear, ml, normalization, pooling, resize, shape  # noqa: E402,F401
