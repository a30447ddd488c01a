"""What an explanation explains: a class of the score output, or a hidden tensor's unit or feature map.

Shared by every method so that `--target` and `--layer` mean the same everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import OnnxplainError


@dataclass(frozen=True)
class Target:
    """`layer` None: class `index` of the class scores (None = each sample's top-1).
    `layer` set: a hidden tensor; `index` is a channel (the whole feature map, axis 1) and `unit`,
    when given, one position inside a sample's tensor (channel first)."""

    layer: str | None = None
    index: int | None = None
    unit: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.layer is None:
            return
        if self.unit is not None:
            unit = tuple(int(u) for u in np.ravel(self.unit))
            if not unit or (self.index is not None and self.index != unit[0]):
                raise OnnxplainError(f"channel {self.index} and unit {unit} disagree: a unit's first index is its "
                                     "channel")
            object.__setattr__(self, "unit", unit)
            object.__setattr__(self, "index", unit[0])
        if self.index is None:
            raise OnnxplainError(f"a target in layer {self.layer!r} needs a channel (index) or a unit")

    @property
    def hidden(self) -> bool:
        return self.layer is not None


def parse_target(model, target: str | int | None = None, layer: str | None = None) -> Target:
    """From CLI/API values: target 'top1' | index | label, or for a layer 'C' (channel) or 'C,Y,X' (unit)."""
    if layer is not None:
        layer = check_layer(model, layer)
        if target is None or target == "top1":
            raise OnnxplainError("a --layer target needs --target CHANNEL or --target C,Y,X (a unit)")
        parts = [p for p in str(target).split(",") if p != ""]
        if not all(p.strip().isdecimal() for p in parts):
            raise OnnxplainError(f"--target for a layer must be non-negative integers, got {target!r}")
        values = tuple(int(p) for p in parts)
        return Target(layer, values[0], values if len(values) > 1 else None)
    if target is None or target == "top1":
        return Target()
    index = model.class_index(target)
    return Target(None, index)


def check_layer(model, layer: str) -> str:
    """The tensor `layer` names (a removed no-op Cast's output names its input), or a one-line error."""
    layer = getattr(model, "aliases", {}).get(layer, layer)
    if layer not in model.tensor_names and layer not in model.output_names:
        raise OnnxplainError(f"no tensor named {layer!r} in this model (`onnxplain inspect --tensors` lists them)")
    return layer


def as_target(model, target) -> Target:
    """A method's `target` argument as a Target: a Target, None (top-1), a class index or a class label."""
    if target is None or isinstance(target, Target):
        if target is not None and target.hidden:
            return Target(check_layer(model, target.layer), target.index, target.unit)
        return target or Target()
    if np.ndim(target) == 0 and hasattr(target, "item"):   # a 0-d array or tensor
        target = target.item()
    if isinstance(target, (int, np.integer, str)) and not isinstance(target, (bool, np.bool_)):
        return parse_target(model, target if isinstance(target, str) else int(target))
    raise OnnxplainError(f"target must be a Target, a class index or a class label, not {type(target).__name__} "
                         "(one class per sample: attribute(model, x, target=[...]))")


def class_indices(model, scores: np.ndarray, target: Target) -> np.ndarray:
    """Per-sample class index: the fixed one, or each sample's top-1; -1 for hidden targets."""
    n = len(scores)
    if target.hidden:
        return np.full(n, -1)
    if target.index is None:
        return np.argmax(scores, axis=1)
    if not 0 <= target.index < scores.shape[1]:
        raise OnnxplainError(f"class {target.index} is out of range: the model has {scores.shape[1]} classes")
    return np.full(n, target.index)


def hidden_values(values: np.ndarray, target: Target) -> np.ndarray:
    """(N, ...) activations of `target.layer` -> (N,) explained value: one unit, or a channel's mean."""
    if values.ndim < 2 or not 0 <= target.index < values.shape[1]:
        raise OnnxplainError(f"channel {target.index} is out of range for tensor {target.layer!r} "
                             f"of shape {tuple(values.shape[1:])}")
    if target.unit is not None:
        shape = tuple(values.shape[1:])
        if len(target.unit) != len(shape):
            raise OnnxplainError(f"unit {target.unit} needs {len(shape)} indices for {target.layer!r}")
        if not all(0 <= u < n for u, n in zip(target.unit, shape)):
            raise OnnxplainError(f"unit {target.unit} is out of range for tensor {target.layer!r} of shape {shape}")
        return values[(slice(None),) + tuple(target.unit)]
    return values[:, target.index].reshape(len(values), -1).mean(axis=1)


def metric_classes(model, x: np.ndarray, target, scores: np.ndarray | None = None) -> np.ndarray:
    """(N,) class per input for a metric: None (top-1), a Target, a class index or label for all inputs, or one
    of those per input; hidden-tensor targets and classes out of range are refused in one line."""
    scores = model.scores(x) if scores is None else scores
    if target is None or isinstance(target, Target) or np.ndim(target) == 0:
        chosen = [as_target(model, target)] * len(x)
    else:
        values = target.tolist() if hasattr(target, "tolist") else list(target)
        chosen = [as_target(model, t) for t in values]
        if len(chosen) != len(x):
            raise OnnxplainError(f"{len(chosen)} targets for {len(x)} inputs: give one class per input")
    if any(t.hidden for t in chosen):
        raise OnnxplainError("this metric explains classes; hidden-tensor targets are not supported")
    return np.array([class_indices(model, scores[i:i + 1], t)[0] for i, t in enumerate(chosen)], dtype=np.int64)
