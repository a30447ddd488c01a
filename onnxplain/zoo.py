"""Runnable versions of the Caffe/Caffe2-origin graphs bundled in the onnx wheel (architecture fixtures).

The wheel's `backend/test/data/light/*.onnx` are the real graphs of AlexNet, GoogLeNet, VGG19, ... whose
weights are `ConstantOfShape` placeholders. We replace each placeholder by seeded random weights
(He-scaled for conv/linear weights, sane BatchNorm statistics) and cache the result on disk.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import OnnxplainError
from .numbers import seed_number

ZOO_NAMES = ("bvlc_alexnet", "inception_v1", "vgg19", "resnet50", "squeezenet", "densenet121",
             "inception_v2", "shufflenet", "zfnet512")


def source_path(name: str) -> Path:
    if name not in ZOO_NAMES:
        raise OnnxplainError(f"unknown zoo model {name!r}; choose one of {', '.join(ZOO_NAMES)}")
    return Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / f"light_{name}.onnx"


def cache_root() -> Path:
    """onnxplain's cache folder ($ONNXPLAIN_CACHE, else $XDG_CACHE_HOME/onnxplain): materialised zoo models under
    zoo/, fitted PDA samplers under pda/."""
    root = os.environ.get("ONNXPLAIN_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "onnxplain")
    return Path(root).expanduser()


def cache_dir() -> Path:
    """Where materialised zoo models are kept."""
    return cache_root() / "zoo"


def materialize(name: str, seed: int = 0, folder: Path | None = None) -> Path:
    """Path of the runnable model `name` with weights drawn from `seed`; built once, then read from the cache."""
    seed = seed_number(seed)
    target = (folder or cache_dir()) / f"{name}_seed{seed}.onnx"
    if target.is_file():
        return target
    model = onnx.load(str(source_path(name)))
    rng = np.random.default_rng(seed)
    _replace_placeholders(model, rng)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.partial")   # one per process: two building it at once each
    # write their own file, and the replace that lands last leaves a whole one
    try:
        onnx.save(model, str(partial))
        partial.replace(target)
    except BaseException:   # a full disk, an interrupt: no half-written file (VGG19's is ~550 MB) stays behind
        partial.unlink(missing_ok=True)
        raise
    return target


def placeholder_weights(model: onnx.ModelProto) -> list[str]:
    """The layer weights (Conv, Gemm, ConvTranspose) that a ConstantOfShape fills with one value: the wheel's test
    graphs' placeholders, which no trained model has. An explanation of such a graph says nothing of a trained
    network (`materialize` gives it seeded random weights, for fixtures)."""
    filled = {n.output[0] for n in model.graph.node if n.op_type == "ConstantOfShape"}
    return [name for name, role in _roles(model.graph).items() if role.startswith("weight") and name in filled]


def _replace_placeholders(model: onnx.ModelProto, rng: np.random.Generator) -> None:
    graph = model.graph
    shapes = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    roles = _roles(graph)
    placeholders = [n for n in graph.node if n.op_type == "ConstantOfShape" and n.input[0] in shapes]
    for node in placeholders:
        shape = tuple(int(d) for d in shapes[node.input[0]])
        name = node.output[0]
        graph.initializer.append(numpy_helper.from_array(_weights(roles.get(name, "other"), shape, rng), name))
        if model.ir_version < 4:  # IR 3 lists every initializer as a graph input too; keep the graph that way
            graph.input.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape))
        graph.node.remove(node)
    used = {i for n in graph.node for i in n.input}
    for tensor in list(graph.initializer):
        if tensor.name not in used:
            graph.initializer.remove(tensor)
    for value in list(graph.input):
        if value.name not in used:
            graph.input.remove(value)


def _roles(graph: onnx.GraphProto) -> dict[str, str]:
    """What each constant feeds: conv/gemm weight or bias, BatchNorm scale/bias/mean/var, a Mul/Add operand."""
    roles = {}
    for node in graph.node:
        if node.op_type in ("Conv", "Gemm", "ConvTranspose"):
            roles[node.input[1]] = "weight_t" if node.op_type == "Gemm" and _trans_b(node) else "weight"
            if len(node.input) > 2:
                roles[node.input[2]] = "bias"
        elif node.op_type == "BatchNormalization":
            for name, role in zip(node.input[1:], ("bn_scale", "bn_bias", "bn_mean", "bn_var")):
                roles[name] = role
        elif node.op_type in ("Mul", "Unsqueeze") and node.input:
            roles.setdefault(node.input[0] if node.op_type == "Unsqueeze" else node.input[1], "scale")
        elif node.op_type == "Add" and len(node.input) > 1:
            roles.setdefault(node.input[1], "bias")
    return roles


def _trans_b(node: onnx.NodeProto) -> bool:
    return any(a.name == "transB" and a.i == 1 for a in node.attribute)


def _weights(role: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if role in ("weight", "weight_t"):
        fan_in = int(np.prod(shape[1:])) if role == "weight" or len(shape) != 2 else shape[1]
        values = rng.normal(0.0, np.sqrt(2.0 / max(fan_in, 1)), shape)
    elif role in ("bias", "bn_bias", "bn_mean"):
        values = rng.normal(0.0, 0.05, shape)
    elif role in ("bn_scale", "scale"):
        values = rng.uniform(0.5, 1.5, shape)
    elif role == "bn_var":
        values = rng.uniform(0.5, 1.5, shape)
    else:
        values = rng.normal(0.0, 0.05, shape)
    return values.astype(np.float32)
