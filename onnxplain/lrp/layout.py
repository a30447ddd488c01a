"""Where each tensor holds its samples, so that the conservation ledger can sum a layer's terms per sample.

Most graphs keep the batch on the first axis of every tensor; attention run sequence first puts it second, or folds
tokens outside and heads inside the samples on one axis. `shape_sample_axes` reads the first case off ONNX shape
inference with nothing run; `probe_sample_axes` finds any of them by running a few inputs.
"""
from __future__ import annotations

import torch

Axis = tuple[int, int]   # (axis, outer): the samples along `axis`, folded as (outer, samples, inner)

SAMPLEWISE = {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool",
              "LRN", "BatchNormalization", "InstanceNormalization", "LayerNormalization", "Gemm", "MatMul", "Add",
              "Sub", "Mul", "Div", "Sum", "Max", "Min", "Mean", "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu",
              "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Softplus", "Softsign", "Gelu", "Mish", "Erf", "Exp",
              "Sqrt", "Abs", "Neg", "Clip", "Dropout", "Identity", "Cast", "Flatten", "Reshape", "Transpose", "Squeeze",
              "Unsqueeze", "Concat", "Split", "Pad", "Resize", "Upsample", "Softmax", "LogSoftmax", "ReduceMean",
              "ReduceSum", "ReduceMax", "Where"}  # each sample apart, given an axis 0 that keeps its length
DEFAULT_AXIS = {"Softmax": -1, "LogSoftmax": -1, "LayerNormalization": -1, "Split": 0, "Flatten": 1}


def shape_sample_axes(proto, input_name: str, plan: list) -> dict[str, Axis] | None:
    """The sample axes read off shape inference, with nothing run: the first axis everywhere, where the input's
    batch size is a symbol that every tensor relevance crosses holds on its first axis and on no other, and every
    step on the way treats samples apart (`SAMPLEWISE`, none with an axis 0 of its own: a softmax over the batch
    keeps its length and mixes samples). None where that cannot be read; the probe (`probe_sample_axes`) then
    decides."""
    shapes, batch_first = _inferred(proto, input_name)
    if not batch_first(input_name):
        return None
    axes = {}
    for planned in plan:
        if not planned.carries:
            continue
        node = planned.step.node
        rank = len(shapes.get(node.input[0], ())) if node.input else 0
        axis = next((a.i for a in node.attribute if a.name == "axis"), DEFAULT_AXIS.get(node.op_type))
        if node.op_type not in SAMPLEWISE or (axis is not None and (not rank or axis % rank == 0)):
            return None   # an axis that may be the batch's (a softmax or a LayerNorm over a rank-1 batch too)
        for name in planned.step.outputs:
            if name:
                if not batch_first(name):
                    return None
                axes[name] = (0, 1)
    return axes


def samples_first(graph, proto, input_name: str, name: str, x: torch.Tensor) -> bool:
    """Whether tensor `name` holds x's samples on its first axis (a hidden target must): its inferred shape has the
    input's batch symbol first and nowhere else, or else the probe finds them there (or cannot run)."""
    if _inferred(proto, input_name)[1](name):
        return True
    axes = probe_sample_axes(graph, input_name, [name], x)
    return axes is not None and axes.get(name, (0, 1)) == (0, 1)


def _inferred(proto, input_name: str):
    """(inferred dims by tensor name, test): the test says whether a tensor's inferred shape holds the input's
    batch symbol first and nowhere else (always False when the input's batch has no symbol)."""
    values = list(proto.graph.input) + list(proto.graph.value_info) + list(proto.graph.output)
    shapes = {v.name: v.type.tensor_type.shape.dim for v in values if v.type.tensor_type.HasField("shape")}
    symbol = shapes[input_name][0].dim_param if len(shapes.get(input_name, ())) else ""

    def batch_first(name: str) -> bool:
        dims = shapes.get(name)
        return bool(symbol) and bool(dims) and dims[0].dim_param == symbol and \
            all(d.dim_param != symbol for d in dims[1:])

    return shapes, batch_first


def probe_sample_axes(graph, input_name: str, names: list[str], x: torch.Tensor) -> dict[str, Axis] | None:
    """(axis, outer) of each tensor `names` of `graph`, found by running it (`sample_axis`): a pair of inputs run
    between two others must give, in the middle of each sample block, the tensors of the pair run alone (pairs,
    not single samples: a graph may squeeze a batch of one; between others: a running sum over the batch mixes
    samples in either direction). None where a tensor has no such axis; a probe that fails to run keeps the first
    axis."""
    first = x[:1].detach()
    generator = torch.Generator(device="cpu").manual_seed(0)
    spread, nonnegative = float(x.detach().std()) or 1.0, float(x.min()) >= 0

    def varied() -> torch.Tensor:
        """x's first sample plus seeded noise at the batch's spread (of x's sign where it has one): no two probe
        inputs alike, nor a layer alike for all of them (a blank first sample would leave ReLUs off)."""
        noise = torch.randn(first.shape, generator=generator).to(first.device, first.dtype)
        return first + spread * (noise.abs() if nonnegative else noise)

    pair, other = torch.cat([varied(), varied()]), torch.cat([varied(), varied()])
    try:
        with torch.no_grad():
            alone = graph.run({input_name: pair}, names)
            between = graph.run({input_name: torch.cat([other, pair, other])}, names)
    except (RuntimeError, ValueError, IndexError):
        return {}
    axes = {}
    for name in names:
        axis = sample_axis(alone[name], between[name])
        if axis is None:
            return None
        axes[name] = axis
    return axes


def sample_axis(one: torch.Tensor, six: torch.Tensor) -> Axis | None:
    """(axis, outer): `six` (a tensor for six samples) is three times as long as `one` (for samples 3 and 4 of them)
    along `axis` and equal along the others, and that axis folds (outer, samples, inner) with the samples in the
    middle (outer = 1: samples outermost, as the batch alone or with attention heads inside; tokens x samples when
    attention runs sequence first). None if there is none, if several fit (a tensor alike for every sample
    cannot tell), or if the tensor is no float."""
    if not six.is_floating_point() or six.ndim == 0 or six.ndim != one.ndim:
        return None
    scale = float(one.abs().max()) if one.numel() else 0.0
    found = []
    for axis in range(six.ndim):
        length = one.shape[axis]
        if six.shape[axis] != 3 * length or any(six.shape[a] != one.shape[a] for a in range(six.ndim) if a != axis):
            continue
        for outer in (n for n in range(1, length // 2 + 1) if length % (2 * n) == 0):
            inner = length // (2 * outer)
            middle = six.unflatten(axis, (outer, 6, inner)).narrow(axis + 1, 2, 2)
            if torch.allclose(middle, one.unflatten(axis, (outer, 2, inner)), rtol=1e-4, atol=1e-6 * scale + 1e-30):
                found.append((axis, outer))
    return found[0] if len(found) == 1 else None


def by_sample(sums: torch.Tensor, samples: int, outer: int = 1) -> torch.Tensor:
    """Sums along a tensor's sample axis (folded as (outer, samples, inner)), per sample; one sample takes the whole
    sum. Tensors with no sample axis go one sample per pass (`probe_sample_axes`); a length the batch does not
    divide gives NaN, not a wrong split."""
    if len(sums) % (samples * outer) == 0:
        return sums.reshape(outer, samples, -1).sum((0, 2))
    return torch.full((samples,), float("nan"), dtype=sums.dtype, device=sums.device)
