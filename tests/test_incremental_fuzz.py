"""Random conv graphs: `WindowRunner` gives onnxruntime's outputs for windowed batches, and leaves the caller's
window values as they are.

Each seed draws a small opset-13 graph on a 1-D, 2-D or 3-D input of odd sizes (some larger): convolutions
(kernels 1-5, strides 1-3, dilations 1-2, asymmetric or automatic pads, groups), max poolings (ceil mode, pads,
dilations, kernels of more than 16 positions) and average poolings (padding counted or not), pointwise ops,
constant and reflect Pads, branches joined by Add/Concat/Mul/Max (a long one keeps the other alive across its
steps, so that rows cannot be reordered), a Relu on the input or on a Pad of it, squeeze-and-excitation gates,
and a head (Flatten or Reshape to rows, then Gemm or MatMul, perhaps two; or global pooling first); a quarter take
their samples channels last and move them first with a Transpose (the runner then starts there). Batches of 1,
a few and a few hundred rows, 1-4 rows per window, shuffled, windows at corners, edges and anywhere, go through
the runner itself (prediction difference runs whole samples when the runner raises, which would hide its
failures) and through onnxruntime; sometimes a tensor inside the graph is an output too. Where the two differ by
more than 1e-5 (relative), the runner must be no further from a float64 run than 4 times the further of
onnxruntime and torch's whole pass: outputs small beside the terms they sum (a Relu before the last layer, a mean
of values of both signs) round that much in float32.
`ONNXPLAIN_FUZZ_SEEDS=first:stop` runs other seeds (default: the first 60).
"""
from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from fuzz_graphs import Builder
from onnxplain.crops import Crop, window_index, write
from onnxplain.incremental import WindowRunner
from onnxplain.methods.passes import channels_first_entry
from onnxplain.ops.graph import Graph

FIRST, STOP = (int(v) for v in os.environ.get("ONNXPLAIN_FUZZ_SEEDS", "0:60").split(":"))
TOLERANCE = 1e-5
ort.set_default_logger_severity(3)


def draw_model(seed: int) -> tuple[onnx.ModelProto, tuple[int, ...], bool]:
    """A random conv graph (opset 13) from `seed`, its sample shape (C, *spatial), and whether the graph takes the
    samples channels last (*spatial, C), moving them first with a Transpose (tf2onnx's Keras exports)."""
    rng = np.random.default_rng(seed)
    d = int(rng.choice([1, 2, 2, 3]))
    high = {1: 61, 2: 25, 3: 13}[d] if rng.random() < 0.8 else {1: 151, 2: 49, 3: 19}[d]   # some larger maps
    shape = (int(rng.integers(1, 5)), *(int(v) for v in 2 * rng.integers(2, high // 2 + 1, d) + 1))
    g = Builder(rng, shape)
    channels_last = bool(np.random.default_rng(20_000 + seed).random() < 0.25)   # a stream of its own: the
    t, start = "x", rng.random()                                                  # other draws stay as they were
    if channels_last:
        g.nodes.append(helper.make_node("Transpose", ["x"], ["x_first"], perm=[0, d + 1, *range(1, d + 1)]))
        g.shapes["x_first"], t = shape, "x_first"
    if start < 0.15:
        t = g.pointwise(t, "Relu")
    elif start < 0.3:
        t = g.pad(t)
        t = g.pointwise(t, "Relu") if rng.random() < 0.7 else t
    for _ in range(int(rng.integers(1, 6))):
        kind = rng.choice(["conv", "conv", "conv", "MaxPool", "AveragePool", "pointwise", "pad", "fork", "fork",
                           "gate"], p=[0.16, 0.16, 0.16, 0.1, 0.08, 0.1, 0.07, 0.08, 0.07, 0.02])
        if kind == "conv":
            t = g.conv(t)
        elif kind in ("MaxPool", "AveragePool"):
            t = g.pool(t, str(kind))
        elif kind == "pointwise":
            t = g.pointwise(t)
        elif kind == "pad":
            t = g.pad(t)
        elif kind == "fork":
            t = g.fork(t)
        else:
            t = g.gate(t)
    if not any(node.op_type == "Conv" for node in g.nodes):   # a graph without weights is no classifier
        t = g.conv(t)
    g.head(t)
    classes = g.shapes["logits"][0]
    taken = [*shape[1:], shape[0]] if channels_last else list(shape)
    graph = helper.make_graph(g.nodes, f"fuzz{seed}",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, *taken])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, classes])], g.weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), shape, channels_last


def draw_batches(rng: np.random.Generator, spatial: tuple[int, ...], size: tuple[int, ...]) -> list[np.ndarray]:
    """Window starts: one row; a few rows; a few hundred; windows at corners, on edges and anywhere, each sent
    1-4 times, rows shuffled."""
    last = np.array(spatial) - np.array(size)
    corners = np.array(np.meshgrid(*[[0, n] for n in last], indexing="ij")).reshape(len(spatial), -1).T

    def anywhere(count: int) -> np.ndarray:
        starts = np.stack([rng.integers(0, n + 1, count) for n in last], axis=1)
        edge = rng.random((count, len(spatial))) < 0.3                 # some coordinates on the map's edge
        return np.where(edge, rng.integers(0, 2, (count, len(spatial))) * last, starts)

    def rows(windows: np.ndarray) -> np.ndarray:
        starts = np.repeat(windows, rng.integers(1, 5, len(windows)), axis=0)
        return starts[rng.permutation(len(starts))]

    one = np.concatenate([corners, anywhere(2)])[rng.integers(0, len(corners) + 2)][None]
    few = rows(np.concatenate([corners[rng.permutation(len(corners))[:2]], anywhere(2)]))
    many = rows(np.concatenate([corners, anywhere(int(rng.integers(60, 120)))]))
    return [one, few, many]


def caller_values(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Window values (R, C, *k) as a caller may hold them, and the tensor that owns their memory: their own, rows
    of a larger buffer (prediction difference's chunks), or a permuted view (channels elsewhere in memory)."""
    layout = rng.integers(0, 3)
    if layout == 0:
        values = torch.from_numpy(rng.normal(0, 1.5, shape).astype(np.float32))
        return values, values
    if layout == 1:
        owner = torch.from_numpy(rng.normal(0, 1.5, (shape[0] + 5, *shape[1:])).astype(np.float32))
        return owner[2:2 + shape[0]], owner
    owner = torch.from_numpy(rng.normal(0, 1.5, (*shape[2:], shape[1], shape[0])).astype(np.float32))
    return owner.permute(-1, -2, *range(len(shape) - 2)), owner


def float64_outputs(proto: onnx.ModelProto, batch: torch.Tensor, name: str) -> np.ndarray:
    """The graph's tensor `name` in float64 (the registry's ops): a reference whose rounding is negligible, to
    tell float32 rounding (onnxruntime's shows the output's conditioning) from a wrong number."""
    wide = onnx.ModelProto()
    wide.CopyFrom(proto)
    for tensor in wide.graph.initializer:
        if tensor.data_type == TensorProto.FLOAT:
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float64), tensor.name))
    return Graph(wide).run({"x": batch.double()}, [name])[name].numpy()


def onnxruntime_session(proto: onnx.ModelProto, probe: np.ndarray):
    """An onnxruntime session that runs `probe`, or None where onnxruntime rejects the graph (a shape the draw got
    wrong, a combination it refuses)."""
    try:
        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        session.run(None, {"x": probe})
    except Exception:   # onnxruntime has no public exception hierarchy
        return None
    return session


def fuzz_case(seed: int, tmp_path) -> str:
    """Run seed's graph and batches through the runner and onnxruntime ('logits', and sometimes a tensor inside
    the graph too); 'skipped' when onnxruntime rejects the graph, else 'passed' (assertions raise)."""
    proto, shape, channels_last = draw_model(seed)
    taken = (lambda batch: batch.movedim(1, -1).contiguous()) if channels_last else (lambda batch: batch)
    path = tmp_path / f"fuzz{seed}.onnx"
    onnx.save(proto, path)
    rng = np.random.default_rng(10_000 + seed)
    inner = [name for node in proto.graph.node for name in node.output if name != "logits"]
    outputs = ["logits"] + ([str(rng.choice(inner))] if inner and rng.random() < 0.3 else [])
    proto.graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs[1:])
    session = onnxruntime_session(proto, taken(torch.zeros((1, *shape))).numpy())
    if session is None:
        return "skipped"
    executor = onnxplain.load(path).torch()
    assert executor.graph is not None, executor.problem
    outputs = [name for name in outputs if name in executor.graph.producers]   # not one loading dropped
    x = torch.from_numpy(rng.normal(0, 1, (1, *shape)).astype(np.float32))
    x_kept = x.clone()
    entry = channels_first_entry(executor.graph, "x", tuple(taken(x)[0].shape)) if channels_last else None
    assert entry is not None or not channels_last
    runner = WindowRunner(executor, taken(x), outputs, entry)
    size = tuple(int(v) for v in np.minimum(rng.integers(1, 5, len(shape) - 1), shape[1:]))
    for starts in draw_batches(rng, shape[1:], size):
        values, owner = caller_values(rng, (len(starts), shape[0], *size))
        owner_kept, starts_kept = owner.clone(), starts.copy()
        got = runner(values, starts)
        assert torch.equal(owner, owner_kept) and np.array_equal(starts, starts_kept) and torch.equal(x, x_kept)
        batch = x.expand(len(starts), *shape).clone()
        batch[tuple(torch.as_tensor(i) for i in window_index(starts, size, shape[0]))] = values
        wanted = dict(zip(["logits"] + [o.name for o in proto.graph.output[1:]],
                          session.run(None, {"x": taken(batch).numpy()})))
        for name in outputs:
            have, want = got[name].numpy(), wanted[name]
            assert have.shape == want.shape, (name, have.shape, want.shape)
            scale = max(np.abs(want).max(), 1e-12)
            error = np.abs(have - want).max() / scale
            where = f"seed {seed}, {name}: {len(starts)} rows, window {size}, error {error:.2g}"
            if error > TOLERANCE:   # float32 rounding, where the outputs are small beside the terms they sum
                exact = float64_outputs(proto, taken(batch), name)
                whole = executor.run(taken(batch), [name])[name].numpy()
                ours, theirs = (np.abs(v - exact).max() for v in (have, np.stack([want, whole])))
                assert ours <= 4 * theirs, f"{where}: {ours:.2g} from float64, whole passes {theirs:.2g}"
    return "passed"


@pytest.mark.parametrize("seed", range(FIRST, STOP))
def test_random_graphs_match_onnxruntime(seed, tmp_path):
    if fuzz_case(seed, tmp_path) == "skipped":
        pytest.skip("onnxruntime rejects this draw")


@pytest.mark.parametrize("seed", range(40))
def test_writes_put_each_box_in_place(seed):
    """`crops.write` in each of its ways (slices per run of rows, indexed copies per offset, element by element
    for many offsets), rows in order or not, boxes partly or wholly outside the target: what a loop writes."""
    rng = np.random.default_rng(seed)
    d = int(rng.integers(1, 4))
    span, size = rng.integers(3, 12, d), rng.integers(1, 5, d)
    count, rows = int(rng.choice([1, 3, 70, 300])), int(rng.choice([1, 5, 80, 400]))
    low = np.where(rng.random() < 0.5, 1 - size, 0)                # some boxes start before the target
    offsets = np.unique(np.stack([rng.integers(lo, n, count) for lo, n in zip(low, span)], axis=1), axis=0)
    row_site = rng.integers(0, len(offsets), rows)
    row_site = np.sort(row_site) if rng.random() < 0.5 else row_site
    values = torch.from_numpy(rng.normal(0, 1, (rows, 2, *size)).astype(np.float32))
    got, want = torch.zeros((rows, 2, *span)), torch.zeros((rows, 2, *span))
    write(got, offsets, Crop(values, offsets, row_site))
    for r, offset in enumerate(offsets[row_site]):
        start, stop = np.maximum(offset, 0), np.minimum(offset + size, span)
        if (stop > start).all():
            want[(r, slice(None)) + tuple(slice(a, b) for a, b in zip(start, stop))] = \
                values[(r, slice(None)) + tuple(slice(a - o, b - o) for a, b, o in zip(start, stop, offset))]
    assert torch.equal(got, want)


def test_most_draws_run_rather_than_skip():
    """A draw onnxruntime rejects is skipped: were most of them, the seeds above would test little."""
    rejected = 0
    for seed in range(FIRST, STOP):
        proto, shape, channels_last = draw_model(seed)
        probe = np.zeros((1, *shape), np.float32)
        rejected += onnxruntime_session(proto, np.moveaxis(probe, 1, -1).copy() if channels_last else probe) is None
    assert rejected <= 0.2 * (STOP - FIRST), f"{rejected} of {STOP - FIRST} draws rejected by onnxruntime"
