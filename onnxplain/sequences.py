"""Which axis of a model's samples holds the channels, read off the graph where no preprocessing spec says.

A (N, A, B) input is a sequence when it reaches its first convolution as (N, channels, positions): through ops
that keep the axes in place, Transposes, and Unsqueezes that add unit axes. That covers a torch Conv1d net fed
(C, L) samples, the same net fed Keras's (L, C) order through a Transpose, and tf2onnx's Keras Conv1D (an Unsqueeze
to (N, 1, L, C), a Transpose to (N, C, 1, L) and a 2-D convolution whose kernel is 1 along the unit axis). A
(N, A, B, C) input the same way is an image of any channel count (RGBA, multispectral: the spec guessed from the
shape knows only 1 or 3) rather than a volume, when a 2-D convolution reads A or C as its channels.
"""
from __future__ import annotations

import onnx
from onnx import numpy_helper

KEEP_AXES = {"Identity", "Cast", "Dropout", "Add", "Sub", "Mul", "Div", "Neg", "Pad", "Relu", "LeakyRelu", "PRelu",
             "Elu", "Selu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Softplus", "Softsign", "Gelu", "Mish",
             "Erf", "Clip", "BatchNormalization", "InstanceNormalization", "LRN"}   # keep every axis where it is
UNIT = "unit"   # an axis an Unsqueeze added


def sample_channel_axis(model, sample_shape: tuple[int, ...]) -> int | None:
    """The channel axis of one sample (no batch axis), or None: a 2-D sample's by its sequence layout (else a gray
    image), a 3-D sample's by the convolution it feeds or the spec's layout (else a (D, H, W) volume), a volume's
    with channels by that convolution (else its first axis). Feature vectors have none."""
    rank = len(sample_shape)
    if rank == 2:
        layout = getattr(model, "sequence_layout", None)
    elif rank >= 3:
        layout = getattr(model, "image_layout", None)   # set only where no spec says
        spec = getattr(model, "preprocess", None)
        if layout is None and rank == 3:
            layout = {"NCHW": "channels_first", "NHWC": "channels_last"}.get(getattr(spec, "layout", None))
        elif layout is None:
            layout = "channels_first"
    else:
        layout = None
    return {"channels_first": 0, "channels_last": rank - 1}.get(layout)


def sequence_layout(proto: onnx.ModelProto, input_name: str) -> str | None:
    """'channels_first' when a 2-D sample's first axis becomes the first convolution's channels, 'channels_last'
    when its second does, None when the graph does not show a 1-D convolution over the other axis (a gray image)."""
    return channel_layout(proto, input_name, 2)


def channel_layout(proto: onnx.ModelProto, input_name: str, rank: int) -> str | None:
    """'channels_first' / 'channels_last' when the first convolution reads the sample's first / last axis as its
    channels and the other `rank - 1` axes, in order, as its only spatial axes of extent; else None."""
    graph = proto.graph
    shapes = {t.name: list(t.dims) for t in graph.initializer}
    values = {t.name: t for t in graph.initializer}
    for node in graph.node:
        for attribute in node.attribute:
            if node.op_type == "Constant" and attribute.name == "value":
                shapes[node.output[0]], values[node.output[0]] = list(attribute.t.dims), attribute.t
    sample = tuple(range(rank))   # the sample's axes by position
    nodes = list(graph.node)   # one wrapper per node: protobuf may make a new one (and reuse ids) per access
    frontier, seen = [(input_name, ("batch",) + sample)], set()
    while frontier:
        name, axes = frontier.pop()
        for index, node in enumerate(nodes):
            if name not in node.input or index in seen:
                continue
            seen.add(index)
            if node.op_type == "Conv" and node.input[0] == name:
                return _convolved(axes, shapes.get(node.input[1]), sample)
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


def _convolved(axes: tuple, kernel: list[int] | None, sample: tuple[int, ...]) -> str | None:
    """The layout when a convolution over `axes` (batch, channels, spatial...) reads the sample's first or last axis
    as channels and the others, in order, as its spatial axes of extent (unit axes under a kernel of size 1)."""
    if kernel is None or len(kernel) != len(axes) or axes[0] != "batch" or axes[1] not in (sample[0], sample[-1]):
        return None
    spatial = list(zip(axes[2:], kernel[2:]))
    others = [a for a in sample if a != axes[1]]
    if [a for a, _ in spatial if a != UNIT] != others or any(k != 1 for a, k in spatial if a == UNIT):
        return None
    return "channels_first" if axes[1] == sample[0] else "channels_last"
