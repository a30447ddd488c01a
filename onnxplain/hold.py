"""Holding inputs fixed: a model of several graph inputs explained in one, the others held at given values (an
image explained, its metadata held).

Each held input becomes a constant of the graph before any other rewrite, so every method and rewrite still sees
one input, x. A per-sample input (its first axis free, or fixed at x's export batch) holds one sample, repeated
for each sample of x's batch: Expand(sample, Concat(Gather(Shape(x), [0]), ones)); any other input (no batch axis)
is taken whole: Expand(value, Concat(Gather(Shape(x), []), ones)), its own shape. Both read x's shape, so no
constant folding turns a held value into a weight: the torch executor computes them on every pass, and LRP treats
them as data that do not depend on x, as it treats a mask computed from x's shape: an operand of a sum or a
concatenation keeps its share of relevance (the held inputs' relevance, reported apart from the bias), a factor
(x * mask) is a gate that passes all relevance to x, and ops on them alone need no rule.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import OnnxplainError, named_list
from .loading import default_opset
from .normalize import unused_inputs, unused_name

MIN_OPSET = 8   # Expand


@dataclass(frozen=True)
class Held:
    """One held input: its value as the rewritten graph keeps it, and whether it is per sample (the value then
    holds one sample, batch axis of 1, repeated for every sample explained)."""

    name: str
    value: np.ndarray
    batched: bool

    def feed(self, batch: int) -> np.ndarray:
        """The value as the original graph takes it beside a batch of `batch` explained samples."""
        return np.repeat(self.value, batch, axis=0) if self.batched else self.value


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The graph inputs that are no weights (IR < 4 lists weights as inputs too)."""
    weights = {t.name for t in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in weights]


def unheld(model: onnx.ModelProto, names) -> list[str]:
    """The inputs of `model` that `names` leaves unheld, in graph order: no weights, none that no node reads (they
    are dropped on loading)."""
    dropped = set(names) | set(unused_inputs(model))
    return [value.name for value in graph_inputs(model) if value.name not in dropped]


def checked_hold(model: onnx.ModelProto, hold: Mapping | None) -> dict[str, Held]:
    """`hold` ({input name: array}) checked against the inputs of `model` (unused ones dropped, as on loading):
    every input but one held, each value fitting its input's declared type and shape, finite. One line each for
    what does not fit."""
    if hold is None:
        hold = {}
    if not isinstance(hold, Mapping):
        raise OnnxplainError(f"hold must map input names to arrays ({{'meta': array}}), not {type(hold).__name__}")
    inputs = {value.name: value for value in graph_inputs(model)}
    strange = [name for name in hold if name not in inputs]
    if strange:
        raise OnnxplainError(f"cannot hold {named_list(map(repr, strange))}: not an input of this model (its inputs: "
                             f"{named_list(inputs, 8)})")
    free = unheld(model, hold)
    if len(free) > 1:
        held = f"; {len(hold)} held" if hold else ""
        raise OnnxplainError(f"this model has {len(inputs)} inputs ({named_list(inputs, 8)}{held}): onnxplain "
                             "explains one, with the others held at given values; hold all of "
                             f"{named_list(free, 8)} but the one to explain (--hold NAME=FILE.npy; in Python "
                             "onnxplain.load(..., hold={name: array}))")
    if not hold:   # one input (or none at all: `normalize.one_input` says so)
        return {}
    if not free:
        raise OnnxplainError(f"every input is held ({named_list(inputs, 8)}): leave one unheld, the one to explain")
    if default_opset(model) < MIN_OPSET:
        raise OnnxplainError(f"holding inputs needs opset {MIN_OPSET} or later (Expand); this model has opset "
                             f"{default_opset(model)}: convert it first (onnx.version_converter)")
    explained = _dims(inputs[free[0]])
    apart = _symbols_apart(model, explained)
    return {name: _fitted(inputs[name], value, explained, apart) for name, value in hold.items()}


def check_values(model: onnx.ModelProto, hold: Mapping) -> None:
    """Each held value fits its input (type, shape, finite), before the one to explain is known (`inspect` of a
    model with several inputs still unheld): one line for the first that does not."""
    inputs = {value.name: value for value in graph_inputs(model)}
    for name, array in hold.items():
        _fitted(inputs[name], array, None, set())


def _dims(value: onnx.ValueInfoProto) -> list | None:
    """Declared sizes (int; where free, the symbol that names it, or None); None where the input declares no
    shape."""
    tensor = value.type.tensor_type
    if not value.type.HasField("tensor_type") or not tensor.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim]


def _symbols_apart(model: onnx.ModelProto, explained: list | None) -> set[str]:
    """The symbols that an output's shape names beside x's batch symbol (outputs (N, S): S is no batch)."""
    batch = (explained or [None])[0]
    outputs = [_dims(value) or [] for value in model.graph.output]
    return {d for dims in outputs if batch in dims for d in dims if isinstance(d, str) and d != batch}


def _fitted(value: onnx.ValueInfoProto, array, explained: list | None, apart: set[str]) -> Held:
    """The held array in its input's type and shape; per sample where the input's first axis is free or fixed at
    the explained input's (the export's batch), the array given with or without a batch axis of 1. A first axis
    named by a symbol that an output names beside x's batch (`apart`: S prototypes beside N inputs, scores (N, S)),
    or leading with more than one where x's batch has another name, is no batch: taken whole. Exporters that name
    each input's batch apart (tf2onnx's unk__1, unk__2) keep their inputs per sample."""
    name = value.name
    if not value.type.HasField("tensor_type"):
        raise OnnxplainError(f"input {name!r} is not a tensor ({value.type.WhichOneof('value')}): it cannot be held")
    dtype = _numeric_type(name, value.type.tensor_type.elem_type)
    array = _array(name, array, dtype)
    dims = _dims(value)
    if dims is None:   # no declared shape: the value as given, per sample where it leads with an axis of 1
        return Held(name, array, array.ndim > 0 and array.shape[0] == 1)
    batch = (explained or [None])[0]
    other_symbol = bool(dims) and isinstance(dims[0], str) and isinstance(batch, str) and dims[0] != batch and \
        (dims[0] in apart or (array.ndim == len(dims) and array.shape[0] != 1))
    batched = bool(dims) and not other_symbol and (not isinstance(dims[0], int) or dims[0] == batch)
    sample = dims[1:] if batched else dims
    if batched and array.ndim == len(dims) and array.shape[:1] == (1,):
        array = array[0]
    if array.ndim != len(sample) or any(isinstance(d, int) and d != s for d, s in zip(sample, array.shape)):
        shown = "x".join(str(d) if isinstance(d, int) else "?" for d in sample) or "a single number"
        how = f"one sample of {shown} (with or without a batch axis of 1)" if batched else shown
        raise OnnxplainError(f"held input {name!r}: shape {'x'.join(map(str, array.shape)) or '()'} does not fit "
                             f"the model's {how}")
    if array.size == 0:
        raise OnnxplainError(f"held input {name!r} is empty")
    return Held(name, np.ascontiguousarray(array[None] if batched else array), batched)


def _numeric_type(name: str, elem_type: int) -> np.dtype:
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, ValueError, TypeError):
        dtype = None
    if dtype is None or dtype.kind not in "biuf":
        raise OnnxplainError(f"input {name!r} takes {onnx.TensorProto.DataType.Name(elem_type).lower()}: onnxplain "
                             "holds inputs of numbers and booleans only")
    return dtype


def _array(name: str, array, dtype: np.dtype) -> np.ndarray:
    """`array` in `dtype`, if every value is finite and keeps its value there."""
    if hasattr(array, "detach"):   # a torch tensor
        array = array.detach().cpu().numpy()
    try:
        array = np.asarray(array)
    except ValueError:
        raise OnnxplainError(f"held input {name!r} is ragged: no array") from None
    if array.dtype.kind not in "biuf":
        raise OnnxplainError(f"held input {name!r}: dtype {array.dtype} does not fit the model's {dtype}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise OnnxplainError(f"held input {name!r} holds NaN or infinite values")
    with np.errstate(all="ignore"):
        converted = array.astype(dtype)
        same = np.isfinite(converted).all() if dtype.kind == "f" else bool((converted == array).all())
    if not same:
        raise OnnxplainError(f"held input {name!r}: its values ({array.min():g} to {array.max():g}) do not all fit "
                             f"the model's {dtype}" + (" (fractions, or values beyond its range)"
                                                       if dtype.kind in "iu" else ""))
    return converted


def hold_inputs(model: onnx.ModelProto, held: dict[str, Held]) -> None:
    """Rewrite `model` in place: each held input becomes a constant, broadcast to the batch of the one input left
    (see the module's docstring); its readers read it by its old name."""
    if not held:
        return
    graph = model.graph
    (explained,) = [v for v in graph_inputs(model) if v.name not in held]
    declared = {value.name: value for value in graph.input}
    taken = {t.name for t in graph.initializer} | {v.name for v in graph.input} | \
        {name for node in graph.node for name in [*node.input, *node.output]}

    def unique(name: str) -> str:
        return unused_name(name, taken)

    shape = unique(f"{explained.name}_shape")
    nodes = [helper.make_node("Shape", [explained.name], [shape], name=shape)]
    for item in held.values():
        if item.name not in declared:   # an input no node reads, dropped on loading
            continue
        value, lead = unique(f"{item.name}_held"), unique(f"{item.name}_held_lead")
        rank = item.value.ndim
        first = np.array([0] if item.batched else [], np.int64)
        constants = [numpy_helper.from_array(item.value, value), numpy_helper.from_array(first, unique(f"{lead}_at"))]
        nodes.append(helper.make_node("Gather", [shape, constants[1].name], [lead], name=lead))
        sizes = lead
        if rank > len(first):
            ones, sizes = unique(f"{item.name}_held_ones"), unique(f"{item.name}_held_shape")
            constants.append(numpy_helper.from_array(np.ones(rank - len(first), np.int64), ones))
            nodes.append(helper.make_node("Concat", [lead, ones], [sizes], axis=0, name=sizes))
        nodes.append(helper.make_node("Expand", [value, sizes], [item.name], name=unique(f"{item.name}_held_expand")))
        graph.initializer.extend(constants)
        graph.value_info.append(_value_info(item, declared[item.name], explained))
        graph.input.remove(declared[item.name])
    nodes += list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)


def _value_info(item: Held, value: onnx.ValueInfoProto, explained: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    """The held tensor's type and sizes, a per-sample one's batch axis as the explained input's (shape inference
    then sees the batch symbol through the tensors that meet it)."""
    elem_type = value.type.tensor_type.elem_type
    info = helper.make_tensor_value_info(item.name, elem_type, list(item.value.shape))
    dims, batch = info.type.tensor_type.shape.dim, explained.type.tensor_type.shape.dim
    if item.batched:
        dims[0].Clear()
        if len(batch):
            dims[0].CopyFrom(batch[0])
    return info


def held_feeds(held: dict[str, Held], model: onnx.ModelProto, batch: int) -> dict[str, np.ndarray]:
    """The held values that the inputs of `model` (the original graph) take beside a batch of `batch`."""
    names = {value.name for value in model.graph.input}
    return {name: item.feed(batch) for name, item in held.items() if name in names}


def shared_sizes(held: dict[str, Held], model: onnx.ModelProto) -> dict[int, int]:
    """{axis of x: size} for x's free axes (past the batch) named by a symbol that a held input's shape names too:
    a mask of length L beside a sequence of length L. The original graph is probed at these sizes."""
    inputs = {value.name: _dims(value) or [] for value in graph_inputs(model)}
    explained = unheld(model, held)
    sizes = {symbol: size for item in held.values()
             for symbol, size in zip(inputs.get(item.name, []), item.value.shape) if isinstance(symbol, str)}
    dims = inputs.get(explained[0], []) if len(explained) == 1 else []
    return {axis: sizes[symbol] for axis, symbol in enumerate(dims) if axis and symbol in sizes}

