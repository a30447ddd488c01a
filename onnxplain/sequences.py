"""Whether a model's 2-D samples are sequences (channels along positions) or gray images, read off the graph.

A (N, A, B) input is a sequence when it reaches its first convolution as (N, channels, positions): through ops
that keep the axes in place, Transposes, and Unsqueezes that add unit axes. That covers a torch Conv1d net fed
(C, L) samples, the same net fed Keras's (L, C) order through a Transpose, and tf2onnx's Keras Conv1D (an Unsqueeze
to (N, 1, L, C), a Transpose to (N, C, 1, L) and a 2-D convolution whose kernel is 1 along the unit axis).
"""
from __future__ import annotations

import onnx
from onnx import numpy_helper

KEEP_AXES = {"Identity", "Cast", "Add", "Sub", "Mul", "Div", "Pad", "Relu", "Clip", "BatchNormalization",
             "InstanceNormalization"}   # keep every axis where it is, on the way to a first convolution
FIRST, SECOND, UNIT = "first", "second", "unit"   # the sample's two axes, and an axis an Unsqueeze added


def sequence_layout(proto: onnx.ModelProto, input_name: str) -> str | None:
    """'channels_first' when the sample's first axis becomes the first convolution's channels, 'channels_last' when
    its second does, None when the graph does not show a 1-D convolution over the other axis (a gray image)."""
    graph = proto.graph
    shapes = {t.name: list(t.dims) for t in graph.initializer}
    values = {t.name: t for t in graph.initializer}
    for node in graph.node:
        for attribute in node.attribute:
            if node.op_type == "Constant" and attribute.name == "value":
                shapes[node.output[0]], values[node.output[0]] = list(attribute.t.dims), attribute.t
    nodes = list(graph.node)   # one wrapper per node: protobuf may make a new one (and reuse ids) per access
    frontier, seen = [(input_name, ("batch", FIRST, SECOND))], set()
    while frontier:
        name, axes = frontier.pop()
        for index, node in enumerate(nodes):
            if name not in node.input or index in seen:
                continue
            seen.add(index)
            if node.op_type == "Conv" and node.input[0] == name:
                return _convolved(axes, shapes.get(node.input[1]))
            moved = _moved(node, axes, values)
            if moved is not None:
                frontier.append((node.output[0], moved))
    return None


def _moved(node: onnx.NodeProto, axes: tuple[str, ...], values: dict) -> tuple[str, ...] | None:
    """The axes of `node`'s output, or None when the node does more than keep, permute or add unit axes."""
    if node.op_type in KEEP_AXES:
        return axes
    if node.op_type == "Transpose":
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        return tuple(axes[i] for i in perm) if perm and sorted(perm) == list(range(len(axes))) else None
    if node.op_type == "Unsqueeze":
        inserted = next((list(a.ints) for a in node.attribute if a.name == "axes"), None)
        if inserted is None and len(node.input) > 1 and node.input[1] in values:
            inserted = numpy_helper.to_array(values[node.input[1]]).astype(int).ravel().tolist()
        if not inserted:
            return None
        rank = len(axes) + len(inserted)
        positions = sorted(i % rank for i in inserted)
        out = list(axes)
        for position in positions:
            out.insert(position, UNIT)
        return tuple(out)
    return None


def _convolved(axes: tuple[str, ...], kernel: list[int] | None) -> str | None:
    """The layout when a convolution over `axes` (batch, channels, spatial...) reads one sample axis as channels and
    the other as its only spatial axis of extent (unit axes under a kernel of size 1)."""
    if kernel is None or len(kernel) != len(axes) or axes[0] != "batch" or axes[1] not in (FIRST, SECOND):
        return None
    spatial = list(zip(axes[2:], kernel[2:]))
    positions = SECOND if axes[1] == FIRST else FIRST
    if [a for a, _ in spatial if a != UNIT] != [positions] or any(k != 1 for a, k in spatial if a == UNIT):
        return None
    return "channels_first" if axes[1] == FIRST else "channels_last"
