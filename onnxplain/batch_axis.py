"""A batch axis an export fixed (torch.onnx.export of one example batch without dynamic axes), made free again.

`Model` runs the freed graph only where its outputs match the original's; else the model keeps its fixed batch
and every method goes one sample at a time.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import OnnxplainError
from .loading import default_opset
from .normalize import infer_shapes
from .runtime import random_feed, tolerance
from .scores import FLOAT_TYPES


def fixed_batch(model: onnx.ModelProto, skip=()) -> int | None:
    """The batch size every graph input (but those named in `skip`) fixes (torch.onnx.export of a batch without
    dynamic axes), else None."""
    sizes = {_first_dim(i) for i in model.graph.input if i.name not in skip}
    size = sizes.pop() if len(sizes) == 1 else None
    return size if isinstance(size, int) and size >= 1 else None


def one_at_a_time(session, proto: onnx.ModelProto, output: str, fixed: bool) -> str | None:
    """Why a graph that declares a free batch axis must run one sample at a time (it runs batches of one only: a
    Reshape to a fixed batch of 1), or None. Raises where `output` does not hold one row per sample, or where a
    sample's row depends on the other samples of its batch (a statistic over the batch): such a model gives no
    sample scores of its own, alone or beside others."""
    batch = 1 if fixed else 2
    feed = random_feed(session, batch)
    try:
        (scores,) = session.run([output], feed)
    except Exception:  # the probe's free sizes may not suit the graph either: real inputs will tell
        if not fixed and _runs(session, output, random_feed(session, 1)):
            return "the batch axis is free, but the graph runs batches of 1 only: one sample at a time"
        return None
    if np.ndim(scores) == 0 or len(scores) != batch:
        raise OnnxplainError(f"output {output!r} must keep the batch axis (one row of scores per sample), but a "
                             f"batch of {batch} gives shape {np.shape(scores)}")
    if batch > 1 and np.asarray(scores).dtype.kind == "f":
        (name, values), = feed.items()
        (alone,) = session.run([output], {name: values[:1]})
        alone, beside = np.asarray(alone, np.float64), np.asarray(scores[:1], np.float64)
        if alone.shape != beside.shape:   # a sample alone loses an axis: the normalised graph's squeezes say more
            return None
        scale = max(np.abs(beside[np.isfinite(beside)]).max(initial=0), 1e-6)
        if not np.allclose(alone, beside, rtol=0, atol=tolerance(proto) * scale, equal_nan=True):
            raise OnnxplainError(f"output {output!r} of a sample depends on the other samples of its batch (a "
                                 "statistic over the batch, as a normalisation in training mode takes): no score is "
                                 "a sample's own; export the model for inference")
    return None


def _runs(session, output: str, feed: dict) -> bool:
    try:
        session.run([output], feed)
    except Exception:
        return False
    return True


def make_batch_dynamic(model: onnx.ModelProto) -> tuple[onnx.ModelProto, bool, int]:
    """A batch axis fixed to B becomes 'N'; Reshape targets that hard-code it copy it instead (0), Squeezes without
    axes keep it (B = 1). Returns (model, whether it changed, how many Squeezes were given axes)."""
    graph = model.graph
    batch = fixed_batch(model)
    if batch is None:
        return model, False, 0
    batched = _tensors_with_batch(model, batch)
    constants = {t.name: t for t in graph.initializer}
    constant_nodes = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    readers: dict[str, list[onnx.NodeProto]] = {}   # shape constant -> the Reshapes reading it (dynamo shares them)
    for node in graph.node:
        if node.op_type == "Reshape" and len(node.input) > 1 and node.input[1] in constants.keys() | constant_nodes:
            readers.setdefault(node.input[1], []).append(node)
    for source, nodes in readers.items():
        tensor = constants[source] if source in constants else \
            next((a.t for a in constant_nodes[source].attribute if a.name == "value"), None)
        if tensor is None:   # a Constant written with value_ints: left as it is
            continue
        shape = numpy_helper.to_array(tensor)
        allowzero = [a for node in nodes for a in node.attribute if a.name == "allowzero" and a.i]
        if not shape.size or shape[0] != batch or any(node.input[0] not in batched for node in nodes) \
                or (allowzero and (shape == 0).any()):
            continue
        tensor.CopyFrom(numpy_helper.from_array(np.concatenate([[0], shape[1:]]).astype(np.int64), tensor.name))
        for attribute in allowzero:   # allowzero=1 (dynamo writes it) would read the 0 as a size; no other is 0
            attribute.i = 0
    squeezes = keep_batch_in_squeezes(model, batched) if batch == 1 else 0
    if squeezes:   # their outputs now keep the batch: let inference redo the shapes
        for value in graph.output:
            if value.name not in batched:
                value.type.tensor_type.ClearField("shape")
    for value in list(graph.input) + list(graph.output):
        dims = value.type.tensor_type.shape.dim
        if len(dims) and dims[0].HasField("dim_value") and dims[0].dim_value == batch:
            dims[0].dim_param = "N"
    del graph.value_info[:]
    return model, True, squeezes


def keep_batch_in_squeezes(model: onnx.ModelProto, batch_one: set[str] | None = None) -> int:
    """A Squeeze without axes drops every axis of size 1, the batch too for a batch of one (torch's `x.squeeze()`):
    give it the axes of size 1 after axis 0, where its input's axis 0 is the batch (free, or in `batch_one`: fixed
    at 1 by the exporter) and every other size is known. Returns how many Squeezes were rewritten."""
    graph = model.graph
    shapes = {v.name: v.type.tensor_type.shape for v in list(graph.input) + list(graph.value_info)
              if v.type.tensor_type.HasField("shape")}
    symbol = _first_dim(graph.input[0]) if len(graph.input) == 1 else None   # the batch's name ('N'), if any
    activations, count = _input_activations(graph), 0
    for node in graph.node:
        if node.op_type != "Squeeze" or node.domain not in ("", "ai.onnx") or any(node.input[1:]) \
                or any(a.name == "axes" for a in node.attribute) or node.input[0] not in activations \
                or not shapes.get(node.input[0], onnx.TensorShapeProto()).dim:
            continue
        first, *rest = shapes[node.input[0]].dim
        if batch_one is not None:
            batch = node.input[0] in batch_one
        else:   # a batch named by the input (not an unnamed or data-dependent size: a NonZero count)
            batch = isinstance(symbol, str) and bool(symbol) and first.dim_param == symbol
        if not batch or not all(d.HasField("dim_value") for d in rest):
            continue
        axes = [i for i, d in enumerate(rest, 1) if d.dim_value == 1]
        del node.input[1:]
        if not axes:
            node.op_type = "Identity"
        elif default_opset(model) >= 13:
            name = f"{node.output[0]}__squeeze_axes"
            graph.initializer.append(numpy_helper.from_array(np.array(axes, np.int64), name))
            node.input.append(name)
        else:
            node.attribute.append(helper.make_attribute("axes", axes))
        count += 1
    return count


def _input_activations(graph: onnx.GraphProto) -> set[str]:
    """Float tensors computed from the graph's inputs (not from their shapes or sizes, not from constants alone):
    the tensors that can hold a batch axis."""
    values = list(graph.input) + list(graph.value_info) + list(graph.output)
    types = {v.name: v.type.tensor_type.elem_type for v in values}
    reached = {i.name for i in graph.input} - {t.name for t in graph.initializer}
    for node in graph.node:
        if node.op_type not in ("Shape", "Size") and any(name in reached for name in node.input):
            reached.update(name for name in node.output if types.get(name) in FLOAT_TYPES)
    return reached


def _first_dim(value: onnx.ValueInfoProto):
    dims = value.type.tensor_type.shape.dim
    if not dims:
        return None
    return dims[0].dim_value if dims[0].HasField("dim_value") else dims[0].dim_param


def _tensors_with_batch(model: onnx.ModelProto, batch: int) -> set[str]:
    inferred = infer_shapes(model).graph
    values = list(inferred.input) + list(inferred.value_info) + list(inferred.output)
    return {v.name for v in values if _first_dim(v) == batch}
