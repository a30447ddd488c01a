"""Layer-wise relevance propagation and deep Taylor decomposition on any ONNX graph.

`LRP(composite=...).explain(model, x, target)`, `DeepTaylor()`, and `unsupported_ops(model)` (empty when LRP
covers every op between the input and the explained logits). Rules live in `rules`, composites in `composites`,
the graph traversal in `walker`. Names load lazily: the op registry imports `rules` without the rest.
"""
from __future__ import annotations

import importlib

_EXPORTS = {"LRP": "method", "DeepTaylor": "method", "unsupported_ops": "method", "COMPOSITES": "composites",
            "make_rule": "composites"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
