"""Integer pixels cast to float inside the graph (uint8 images: a Cast, then the model's own scaling).

Gradient methods and LRP explain such a model with respect to the pixel values as real numbers: the torch executor
is fed the values as the Cast's float type, which makes the Cast the identity. Between pixel values (SmoothGrad's
noisy copies, integrated gradients' path) the model is the graph after the Cast, evaluated at real values. An integer
input read any other way (token ids into a Gather) has no gradient: it is refused, naming the op that reads it.
"""
from __future__ import annotations

import numpy as np
from onnx import helper

from .errors import OnnxplainError

SHAPE_ONLY = {"Identity", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Slice", "DepthToSpace",
              "SpaceToDepth"}   # move the values of their first input, unchanged: pixels may pass them before the Cast
SHAPE_READERS = {"Shape", "Size"}   # read only the input's shape
RANGED_BITS = 16   # integer types this wide or narrower (uint8, uint16, int8, int16) span their data: z^B's box


def integer_reader(model) -> str | None:
    """None where gradients reach the input (a float input, or integers that only pass shape-only ops into Casts to
    a float type); else the node that reads the integers otherwise, named."""
    return None if np.issubdtype(model.input_dtype, np.floating) else _casts(model)[1]


def _casts(model) -> tuple[list[np.dtype], str | None]:
    """(the float types the integer input is cast to, the first node that reads it any other way or None)."""
    readers: dict[str, list] = {}
    for node in model.proto.graph.node:
        for position, name in enumerate(node.input):
            readers.setdefault(name, []).append((node, position))
    types, pending = [], [model.input_name]
    while pending:
        for node, position in readers.get(pending.pop(), []):
            label = f"{node.op_type} ({node.name or node.output[0]})"
            if node.op_type == "Cast":
                to = np.dtype(helper.tensor_dtype_to_np_dtype(next(a.i for a in node.attribute if a.name == "to")))
                if not np.issubdtype(to, np.floating):
                    return types, f"{label}, a cast to {to}"
                types.append(to)
            elif node.op_type in SHAPE_ONLY and position == 0:
                pending.extend(name for name in node.output if name)
            elif node.op_type not in SHAPE_READERS:
                return types, label
    return types, (None if types else "no Cast to a float type")


def real_dtype(model, what: str = "gradients need") -> np.dtype:
    """The float type gradients and LRP feed the input as: the model's own, or for integer pixels the widest type
    they are cast to; an OnnxplainError for other integer inputs, saying `what` needs a float one."""
    if np.issubdtype(model.input_dtype, np.floating):
        return model.input_dtype
    types, reader = _casts(model)
    if reader is not None:
        raise OnnxplainError(f"{what} a floating-point input, or integer pixels cast to float; this model's "
                             f"{model.input_dtype} input {model.input_name!r} goes into {reader}")
    return np.result_type(*types)


def real_input(model, x, what: str = "gradients need", required: bool = True) -> np.ndarray:
    """The batch x as real numbers of `real_dtype`: a float model's checked input; for integer pixels, a checked
    integer batch, or float points between pixel values (noisy copies, points on a path) as they are. With
    required=False, an integer input without a gradient comes back as its checked integers (forward passes)."""
    if not required and integer_reader(model) is not None:
        return model.check_input(x)
    dtype = real_dtype(model, what)
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    if np.issubdtype(model.input_dtype, np.floating) or not (isinstance(x, np.ndarray) and x.ndim
                                                              and np.issubdtype(x.dtype, np.floating)):
        return model.check_input(x).astype(dtype, copy=False)
    model.check_input(np.zeros((min(len(x), 1), *x.shape[1:]), model.input_dtype))   # rank, sizes, an empty batch
    if not np.isfinite(x).all():
        raise OnnxplainError("input contains NaN or Inf values")
    return np.ascontiguousarray(x, dtype=dtype)


def data_range(model) -> tuple[float, float] | None:
    """(low, high) of an integer pixel input of at most `RANGED_BITS` bits (0..255 for uint8): the range its type
    holds, for a model with no preprocessing spec to say; None otherwise."""
    dtype = model.input_dtype
    if not np.issubdtype(dtype, np.integer) or dtype.itemsize * 8 > RANGED_BITS or integer_reader(model) is not None:
        return None
    info = np.iinfo(dtype)
    return float(info.min), float(info.max)
