"""Incremental forward passes (`onnxplain.incremental.WindowRunner`) give the full forward pass's outputs.

Small graphs built here exercise every spatial rule at the borders: strided, dilated and asymmetrically padded
convolutions (a strided op reads no part of some crops' edges), ceil-mode max pooling, branches of different reach
joined by Concat and Add, averages that count their padding, a gate computed from the whole map (must fall back),
1-D and 3-D inputs. Each is checked against onnxruntime on the same windowed batch; the zoo graphs are checked in
`test_lrp_zoo.py`.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain.crops import window_index
from onnxplain.incremental import WindowRunner


def conv(name, source, cin, cout, kernel, rng, **attributes):
    weight = rng.normal(0, 0.3, (cout, cin, *kernel)).astype(np.float32)
    bias = rng.normal(0, 0.1, cout).astype(np.float32)
    node = helper.make_node("Conv", [source, f"{name}_w", f"{name}_b"], [name], kernel_shape=list(kernel),
                            **attributes)
    return node, [numpy_helper.from_array(weight, f"{name}_w"), numpy_helper.from_array(bias, f"{name}_b")]


def image_graph(gate: bool, rng) -> tuple[list, list]:
    nodes, weights = [], []
    for node, w in (conv("c1", "x", 3, 6, (3, 3), rng, strides=[2, 2], pads=[1, 0, 2, 1]),
                    conv("c2", "r1", 6, 8, (3, 3), rng, dilations=[2, 2], pads=[2, 2, 2, 2]),
                    conv("b1", "p1", 8, 4, (1, 1), rng),
                    conv("b2", "p1", 8, 4, (5, 5), rng, pads=[2, 2, 2, 2]),
                    conv("b3", "p1", 8, 8, (3, 3), rng, strides=[1, 1], pads=[1, 1, 1, 1])):
        nodes.append(node)
        weights += w
    nodes[1:1] = [helper.make_node("Relu", ["c1"], ["r1"])]
    nodes[3:3] = [helper.make_node("MaxPool", ["c2"], ["p1"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                                   ceil_mode=1)]
    scale = numpy_helper.from_array(rng.uniform(0.5, 1.5, (1, 8, 1, 1)).astype(np.float32), "scale")
    nodes += [helper.make_node("Concat", ["b1", "b2"], ["cat"], axis=1),
              helper.make_node("Add", ["cat", "b3"], ["sum"]),
              helper.make_node("Mul", ["sum", "scale"], ["scaled"]),
              helper.make_node("AveragePool", ["scaled"], ["avg"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                               count_include_pad=1)]
    last = "avg"
    if gate:  # squeeze-and-excitation: a gate from the whole map multiplies every position
        nodes += [helper.make_node("GlobalAveragePool", ["avg"], ["pooled"]),
                  helper.make_node("Sigmoid", ["pooled"], ["gate"]),
                  helper.make_node("Mul", ["avg", "gate"], ["gated"])]
        last = "gated"
    nodes += [helper.make_node("Flatten", [last], ["flat"])]
    return nodes, weights + [scale]


def volume_graph(spatial: int, rng) -> tuple[list, list]:
    kernel = (3,) * spatial
    first, w1 = conv("c1", "x", 2, 4, kernel, rng, strides=[2] * spatial, pads=[1] * (2 * spatial))
    second, w2 = conv("c2", "r1", 4, 3, kernel, rng, pads=[1] * (2 * spatial))
    pool = helper.make_node("MaxPool", ["c2"], ["p1"], kernel_shape=[2] * spatial, strides=[2] * spatial)
    return [first, helper.make_node("Relu", ["c1"], ["r1"]), second, pool,
            helper.make_node("Flatten", ["p1"], ["flat"])], w1 + w2


def model_file(tmp_path, nodes, weights, shape, name):
    features = tmp_path / "probe.onnx"
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, *shape])],
                              [helper.make_tensor_value_info("flat", TensorProto.FLOAT, None)], weights)
    probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.save(probe, features)
    size = ort.InferenceSession(str(features), providers=["CPUExecutionProvider"]).run(
        None, {"x": np.zeros((1, *shape), np.float32)})[0].shape[1]
    head = np.random.default_rng(1).normal(0, 0.1, (size, 5)).astype(np.float32)
    nodes = nodes + [helper.make_node("MatMul", ["flat", "head"], ["logits"])]
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, *shape])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 5])],
                              weights + [numpy_helper.from_array(head, "head")])
    path = tmp_path / f"{name}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)
    return path


def windows_everywhere(spatial: tuple[int, ...], k: int, rng) -> np.ndarray:
    """Window starts at every corner and edge, plus random ones."""
    corners = np.array(np.meshgrid(*[[0, n - k] for n in spatial], indexing="ij")).reshape(len(spatial), -1).T
    random = np.stack([rng.integers(0, n - k + 1, 6) for n in spatial], axis=1)
    return np.concatenate([corners, random])


def check(path, shape, k, rng, cropped_ops=()):
    model = onnxplain.load(path)
    executor = model.torch()
    x = rng.random((1, *shape)).astype(np.float32)
    starts = windows_everywhere(shape[1:], k, rng)
    values = rng.random((len(starts), shape[0]) + (k,) * (len(shape) - 1)).astype(np.float32)
    runner = WindowRunner(executor, torch.from_numpy(x), ["logits"])
    seen = []
    cropped = runner._cropped

    def spy(step, inputs):
        result = cropped(step, inputs)
        if result is not None:
            seen.append(step.node.op_type)
        return result

    runner._cropped = spy
    got = runner(torch.from_numpy(values), starts)["logits"].numpy()
    batch = np.repeat(x, len(starts), axis=0)
    batch[window_index(starts, (k,) * (len(shape) - 1), shape[0])] = values
    want = model.run(batch, ["logits"])["logits"]
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    assert set(cropped_ops) <= set(seen), seen
    return seen


def test_image_graph_at_every_border(tmp_path):
    rng = np.random.default_rng(0)
    nodes, weights = image_graph(gate=False, rng=rng)
    path = model_file(tmp_path, nodes, weights, (3, 97, 89), "image")
    check(path, (3, 97, 89), 4, rng, cropped_ops=("Conv", "Relu", "MaxPool", "Concat", "Add", "Mul", "AveragePool"))


def test_a_gate_from_the_whole_map_falls_back(tmp_path):
    rng = np.random.default_rng(1)
    nodes, weights = image_graph(gate=True, rng=rng)
    path = model_file(tmp_path, nodes, weights, (3, 97, 89), "gated")
    seen = check(path, (3, 97, 89), 3, rng)
    assert "Sigmoid" not in seen and seen.count("Mul") == 1   # the gate and its product run on whole maps


@pytest.mark.parametrize("spatial, size", [(1, (50,)), (3, (11, 12, 10))])
def test_one_and_three_spatial_axes(tmp_path, spatial, size):
    rng = np.random.default_rng(2)
    nodes, weights = volume_graph(spatial, rng)
    path = model_file(tmp_path, nodes, weights, (2, *size), f"conv{spatial}d")
    check(path, (2, *size), 3, rng, cropped_ops=("Conv", "Relu"))


def test_elementary_functions_run_on_crops(tmp_path):
    rng = np.random.default_rng(6)
    first, weights = conv("c1", "x", 3, 4, (3, 3), rng, pads=[1, 1, 1, 1])
    chain = ["Sin", "Atan", "Abs", "Cos", "Reciprocal", "Log", "Tanh"]
    names = ["c1"] + [f"e{i}" for i in range(len(chain))]
    nodes = [first] + [helper.make_node(op, [a], [b]) for op, a, b in zip(chain, names, names[1:])]
    nodes.append(helper.make_node("Flatten", [names[-1]], ["flat"]))
    path = model_file(tmp_path, nodes, weights, (3, 15, 13), "elementary")
    check(path, (3, 15, 13), 3, rng, cropped_ops=("Conv", *chain))


def runner_errors(path, shape, k, batches, rng):
    """Relative error of WindowRunner against onnxruntime for each batch of window starts, run as given."""
    model = onnxplain.load(path)
    x = rng.random((1, *shape)).astype(np.float32)
    runner = WindowRunner(model.torch(), torch.from_numpy(x), ["logits"])
    size = (k,) * (len(shape) - 1)
    errors = []
    for starts in batches:
        starts = np.array(starts)
        values = rng.random((len(starts), shape[0], *size)).astype(np.float32)
        batch = np.repeat(x, len(starts), axis=0)
        batch[window_index(starts, size, shape[0])] = values
        want = model.run(batch, ["logits"])["logits"]
        got = runner(torch.from_numpy(values), starts)["logits"].numpy()
        errors.append(float(np.abs(got - want).max() / np.abs(want).max()))
    return errors


def test_windows_no_output_reads(tmp_path):
    """A 4x4 stride-4 stem on 30x30 never reads rows and columns 28-29; a stride-3 1x1 conv skips two of three."""
    rng = np.random.default_rng(4)
    stem, w1 = conv("c1", "x", 3, 4, (4, 4), rng, strides=[4, 4])
    second, w2 = conv("c2", "c1", 4, 4, (3, 3), rng, pads=[1, 1, 1, 1])
    nodes = [stem, second, helper.make_node("Relu", ["c2"], ["r2"]), helper.make_node("Flatten", ["r2"], ["flat"])]
    path = model_file(tmp_path, nodes, w1 + w2, (3, 30, 30), "patchify")
    batches = [[[28, 28]], [[0, 28]], [[28, 0], [28, 10]], [[5, 5], [28, 28]]]
    assert max(runner_errors(path, (3, 30, 30), 2, batches, rng)) <= 1e-5
    gap, w3 = conv("g", "x", 3, 4, (1, 1), rng, strides=[3, 3])
    nodes = [gap, helper.make_node("Flatten", ["g"], ["flat"])]
    path = model_file(tmp_path, nodes, w3, (3, 23, 19), "gaps")
    assert max(runner_errors(path, (3, 23, 19), 1, [[[1, 0]], [[0, 1]], [[1, 1], [3, 5]]], rng)) <= 1e-5


def test_operands_broadcast_over_space(tmp_path):
    """A map of height 1 added to a full one, a (W,) constant, a slope computed by another branch."""
    rng = np.random.default_rng(5)
    column, w1 = conv("col", "x", 2, 4, (4, 13), rng, pads=[0, 6, 0, 6])           # (N, 4, 1, 20)
    full, w2 = conv("full", "x", 2, 4, (1, 1), rng)                                  # (N, 4, 4, 20)
    nodes = [column, full, helper.make_node("Add", ["full", "col"], ["sum"]),
             helper.make_node("Flatten", ["sum"], ["flat"])]
    path = model_file(tmp_path, nodes, w1 + w2, (2, 4, 20), "broadcast")
    assert max(runner_errors(path, (2, 4, 20), 1, [[[0, 0], [0, 1], [0, 2]], [[3, 7]]], rng)) <= 1e-5

    first, w3 = conv("c1", "x", 3, 4, (3, 3), rng, pads=[1, 1, 1, 1])
    row = numpy_helper.from_array(rng.uniform(0.5, 1.5, 19).astype(np.float32), "row")
    nodes = [first, helper.make_node("Mul", ["c1", "row"], ["m"]), helper.make_node("Flatten", ["m"], ["flat"])]
    path = model_file(tmp_path, nodes, w3 + [row], (3, 23, 19), "vector")
    assert max(runner_errors(path, (3, 23, 19), 1, [[[4, 5]], [[0, 18], [22, 0]]], rng)) <= 1e-5

    signal, w4 = conv("a", "x", 3, 4, (3, 3), rng, pads=[1, 1, 1, 1])
    slope, w5 = conv("b", "x", 3, 4, (3, 3), rng, pads=[0, 0, 2, 2])
    nodes = [signal, slope, helper.make_node("PRelu", ["a", "b"], ["p"]),
             helper.make_node("Flatten", ["p"], ["flat"])]
    path = model_file(tmp_path, nodes, w4 + w5, (3, 23, 19), "slope")
    for k in (1, 4):
        assert max(runner_errors(path, (3, 23, 19), k, [[[3, 3], [10, 2]], [[0, 0]]], rng)) <= 1e-5


def test_rows_that_share_windows_in_any_order(tmp_path):
    """Prediction difference sends S rows per window: rows share sites, arrive in any order, and max poolings run
    as strided maxima (3x3, 2x2) or, with large kernels, as pooling kernels (5x5)."""
    rng = np.random.default_rng(6)
    nodes, weights = image_graph(gate=False, rng=rng)
    path = model_file(tmp_path, nodes, weights, (3, 97, 89), "shared")
    sites = windows_everywhere((97, 89), 4, rng)
    starts = np.repeat(sites, 3, axis=0)[rng.permutation(3 * len(sites))]
    assert max(runner_errors(path, (3, 97, 89), 4, [starts], rng)) <= 1e-5

    first, w1 = conv("c1", "x", 2, 4, (3, 3), rng, pads=[1, 1, 1, 1])
    nodes = [first, helper.make_node("MaxPool", ["c1"], ["p"], kernel_shape=[5, 5], strides=[2, 2]),
             helper.make_node("Flatten", ["p"], ["flat"])]
    path = model_file(tmp_path, nodes, w1, (2, 40, 41), "wide_pool")
    starts = np.repeat(windows_everywhere((40, 41), 3, rng), 2, axis=0)
    assert max(runner_errors(path, (2, 40, 41), 3, [starts], rng)) <= 1e-5


def test_a_constant_pad_moves_the_crop(tmp_path):
    """A Pad node before a convolution (Keras's ZeroPadding2D, tf2onnx's explicit pads) keeps the rows on crops:
    constant pads move the crop's sites by the begin pads; other modes read mirrored positions and run whole."""
    rng = np.random.default_rng(7)
    pads = numpy_helper.from_array(np.array([0, 0, 2, 1, 0, 0, 1, 3], np.int64), "pads")
    fill = numpy_helper.from_array(np.array(0.5, np.float32), "fill")
    first, weights = conv("c1", "padded", 3, 4, (3, 3), rng, strides=[2, 2])
    for mode, inputs in (("constant", ["x", "pads", "fill"]), ("reflect", ["x", "pads"])):
        nodes = [helper.make_node("Pad", inputs, ["padded"], mode=mode), first,
                 helper.make_node("Relu", ["c1"], ["r1"]), helper.make_node("Flatten", ["r1"], ["flat"])]
        path = model_file(tmp_path, nodes, weights + [pads, fill], (3, 21, 18), f"pad_{mode}")
        seen = check(path, (3, 21, 18), 3, rng)
        assert ("Pad" in seen and "Conv" in seen) == (mode == "constant"), (mode, seen)


def test_integer_inputs_run_incrementally(tmp_path):
    """A uint8 image model (Cast, scaling inside the graph): the probe that checks the runner draws whole-number
    windows in the type's range (a float noise scale of a uint8 tensor raised, and every sample ran whole)."""
    from onnxplain.methods.passes import forward_passes

    rng = np.random.default_rng(8)
    first, weights = conv("c1", "scaled", 3, 4, (3, 3), rng, pads=[1, 1, 1, 1])
    scale = numpy_helper.from_array(np.array(1 / 255, np.float32), "scale")
    nodes = [helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["xf", "scale"], ["scaled"]), first,
             helper.make_node("Relu", ["c1"], ["r1"]), helper.make_node("Flatten", ["r1"], ["flat"]),
             helper.make_node("MatMul", ["flat", "head"], ["logits"])]
    head = numpy_helper.from_array(rng.normal(0, 0.1, (4 * 12 * 10, 5)).astype(np.float32), "head")
    graph = helper.make_graph(nodes, "uint8", [helper.make_tensor_value_info("x", TensorProto.UINT8,
                                                                             [None, 3, 12, 10])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 5])],
                              weights + [scale, head])
    path = tmp_path / "uint8.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)
    model = onnxplain.load(path)
    x = rng.integers(0, 256, (3, 12, 10)).astype(np.uint8)
    passes = forward_passes(model, "cpu")
    assert passes.window_runner(x, "logits", (3, 3), 16) is not None


def test_dense_layers_read_only_the_crop(tmp_path):
    """Flatten or Reshape to rows, then Gemm (transposed B, alpha, beta, bias) or MatMul, perhaps after a pointwise
    op: the product runs on each row's change inside its box; a reshape that keeps spatial axes runs whole."""
    rng = np.random.default_rng(9)
    first, w1 = conv("c1", "x", 2, 4, (3, 3), rng, strides=[2, 2], pads=[1, 1, 1, 1])   # (N, 4, 10, 9)
    weight = numpy_helper.from_array(rng.normal(0, 0.1, (6, 4 * 10 * 9)).astype(np.float32), "w")
    bias = numpy_helper.from_array(rng.normal(0, 0.1, 6).astype(np.float32), "b")
    shape = numpy_helper.from_array(np.array([0, -1], np.int64), "shape")
    gemm = helper.make_node("Gemm", ["rows", "w", "b"], ["flat"], transB=1, alpha=0.5, beta=2.0)
    for flatten, extra in ((helper.make_node("Flatten", ["c1"], ["rows"]), []),
                           (helper.make_node("Reshape", ["c1", "shape"], ["rows"]), [shape])):
        path = model_file(tmp_path, [first, flatten, gemm], w1 + [weight, bias] + extra, (2, 19, 17), "gemm")
        check(path, (2, 19, 17), 3, rng, cropped_ops=("Conv", flatten.op_type, "Gemm"))
    nodes = [first, helper.make_node("Flatten", ["c1"], ["rows"]), helper.make_node("Tanh", ["rows"], ["t"]),
             helper.make_node("Gemm", ["t", "w", "b"], ["flat"], transB=1)]
    path = model_file(tmp_path, nodes, w1 + [weight, bias], (2, 19, 17), "tanh_gemm")
    check(path, (2, 19, 17), 3, rng, cropped_ops=("Flatten", "Tanh", "Gemm"))
    planes = numpy_helper.from_array(np.array([0, 4, -1], np.int64), "planes")
    nodes = [first, helper.make_node("Reshape", ["c1", "planes"], ["p"]), helper.make_node("Flatten", ["p"], ["flat"])]
    path = model_file(tmp_path, nodes, w1 + [planes], (2, 19, 17), "planes")
    assert "Reshape" not in check(path, (2, 19, 17), 3, rng)


def test_the_callers_windows_stay_as_they_are(tmp_path):
    """A Relu runs in place on crops no one else holds; a Pad right after the input holds the caller's windows
    themselves, which must not change."""
    rng = np.random.default_rng(10)
    pads = numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads")
    first, weights = conv("c1", "r0", 2, 4, (3, 3), rng)
    nodes = [helper.make_node("Pad", ["x", "pads"], ["padded"]), helper.make_node("Relu", ["padded"], ["r0"]),
             first, helper.make_node("Relu", ["c1"], ["r1"]), helper.make_node("Flatten", ["r1"], ["flat"])]
    path = model_file(tmp_path, nodes, weights + [pads], (2, 15, 14), "pad_relu")
    model = onnxplain.load(path)
    x = torch.from_numpy(rng.random((1, 2, 15, 14)).astype(np.float32))
    starts = np.repeat(windows_everywhere((15, 14), 3, rng), 2, axis=0)
    values = torch.from_numpy(rng.normal(size=(len(starts), 2, 3, 3)).astype(np.float32))
    kept = values.clone()
    got = WindowRunner(model.torch(), x, ["logits"])(values, starts)["logits"]
    assert torch.equal(values, kept)
    batch = x.expand(len(starts), -1, -1, -1).clone()
    batch[tuple(torch.as_tensor(i) for i in window_index(starts, (3, 3), 2))] = kept
    want = torch.as_tensor(model.run(batch.numpy(), ["logits"])["logits"])
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()


@pytest.mark.parametrize("kernel, strides, dilations", [((2,), (2,), (1,)), ((3, 2), (2, 1), (1, 2)),
                                                        ((2, 2), (2, 2), (1, 1)), ((3, 3), (1, 2), (2, 1)),
                                                        ((2, 1, 3), (1, 2, 2), (1, 1, 2))])
def test_max_pooling_as_slices_equals_the_pooling_kernel(kernel, strides, dilations):
    from onnxplain.crops import max_pool_slices

    d = len(kernel)
    patch = torch.randn((5, 3) + (11,) * d, generator=torch.Generator().manual_seed(d))
    want = getattr(torch.nn.functional, f"max_pool{d}d")(patch, kernel, strides, 0, dilations)
    got = max_pool_slices(patch, np.array(kernel), np.array(strides), np.array(dilations), tuple(want.shape[2:]))
    assert torch.equal(got, want) and got.data_ptr() != patch.data_ptr()
