"""What an explanation explains: a class of the score output, or a hidden tensor's unit or feature map.

Shared by every method so that `--target` and `--layer` mean the same everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import OnnxplainError
from .numbers import whole_number


CHANNELS_AT_1 = {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool",
                 "GlobalLpPool", "BatchNormalization", "InstanceNormalization", "LRN", "DepthToSpace",
                 "SpaceToDepth", "MaxUnpool", "MaxRoiPool", "RoiAlign"}   # ONNX puts their channels at axis 1
KEEP_LAYOUT = {"Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
               "Clip", "Softplus", "Softsign", "Gelu", "Erf", "Mish", "Identity", "Dropout", "Cast", "Neg", "Abs",
               "Sqrt", "Exp", "Log", "Reciprocal", "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean",
               "Pad", "Resize", "Upsample", "Concat", "Where", "LayerNormalization"}   # outputs hold their inputs' axes


@dataclass(frozen=True)
class Target:
    """`layer` None: class `index` of the class scores (None = each sample's top-1).
    `layer` set: a hidden tensor; `index` is a channel (the whole feature map) and `unit`, when given, one unit
    named channel first (C, *position). `axis`: the tensor's channel axis (samples at axis 0); None reads it off the
    graph (`tensor_channel_axis`): 1, or where a Transpose moved a convolution's channels (a channels-last tensor)."""

    layer: str | None = None
    index: int | None = None
    unit: tuple[int, ...] | None = None
    axis: int | None = None

    def __post_init__(self):
        """Indices are integers from 0 (a class label is the methods' `target='name'`, read with the model)."""
        if self.layer is not None and not isinstance(self.layer, str):
            raise OnnxplainError(f"Target layer must be a tensor name (str), not {self.layer!r}")
        if isinstance(self.index, str):
            raise OnnxplainError(f"Target index must be an integer, not {self.index!r} (a class label or a string "
                                 "of digits goes to the method's target argument: explain(model, x, target='3'))")
        if self.index is not None:
            object.__setattr__(self, "index", whole_number("Target index", self.index, 0))
        if self.layer is None:
            return
        if self.unit is not None:
            unit = tuple(whole_number("Target unit", u, 0) for u in np.ravel(self.unit))
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

    @property
    def channel_axis(self) -> int:
        return 1 if self.axis is None else self.axis


def tensor_channel_axis(model, layer: str) -> int:
    """The axis holding tensor `layer`'s channels: traced back through ops that keep their inputs' axes (a MatMul
    its data's: ConvNeXt's dense layers over channels-last maps), and through Transposes, to an op that puts
    channels at axis 1 (a convolution, pooling, normalisation); 1 where the graph does not say (dense layers on
    features, reshapes, the input)."""
    producers = {name: node for node in model.proto.graph.node for name in node.output}
    known: dict[str, int | None] = {}

    def traced(name: str, depth: int) -> int | None:
        node = producers.get(name)
        if name in known or node is None or depth > 200:
            return known.get(name)
        axis = None
        if node.op_type in CHANNELS_AT_1:
            axis = 1
        elif node.op_type == "Transpose":
            source = traced(node.input[0], depth + 1)
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), [])
            axis = perm.index(source) if source in perm else None
        elif node.op_type in KEEP_LAYOUT:
            axis = next((a for a in (traced(i, depth + 1) for i in node.input if i) if a is not None), None)
        elif node.op_type == "MatMul":   # x W: a dense layer's features replace x's channels on the same axis
            axis = traced(node.input[0], depth + 1)
        known[name] = axis
        return axis

    found = traced(layer, 0)
    return 1 if found is None else found


def channels_first(values, target: Target):
    """(N, ...) numpy or torch values of a hidden target's tensor with its channel axis at 1 (a view)."""
    axis = target.channel_axis
    if axis == 1:
        return values
    if not 1 <= axis < values.ndim:
        raise OnnxplainError(f"channel axis {axis} is out of range for tensor {target.layer!r} of shape "
                             f"{tuple(values.shape[1:])} (axis 0 holds the samples)")
    return values.movedim(axis, 1) if hasattr(values, "movedim") else np.moveaxis(values, axis, 1)


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
        return Target(layer, values[0], values if len(values) > 1 else None, tensor_channel_axis(model, layer))
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
            layer = check_layer(model, target.layer)
            axis = tensor_channel_axis(model, layer) if target.axis is None else target.axis
            return Target(layer, target.index, target.unit, axis)
        return target or Target()
    if np.ndim(target) == 0 and hasattr(target, "item"):   # a 0-d array or tensor
        target = target.item()
    if isinstance(target, (int, np.integer, str)) and not isinstance(target, (bool, np.bool_)):
        return parse_target(model, target if isinstance(target, str) else int(target))
    raise OnnxplainError(f"target must be a Target, a class index or a class label, not {type(target).__name__} "
                         "(one class per sample: attribute(model, x, target=[...]))")


def class_indices(scores: np.ndarray, target: Target) -> np.ndarray:
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
    values = channels_first(values, target) if values.ndim >= 2 else values
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
    return np.array([class_indices(scores[i:i + 1], t)[0] for i, t in enumerate(chosen)], dtype=np.int64)
