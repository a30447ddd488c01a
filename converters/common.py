"""What every converter shares: metadata embedding, and "verify against the source, then write" as one step."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from onnxplain.errors import OnnxplainError
from onnxplain.io.preprocess import LABELS_KEY, METADATA_KEY, PreprocessSpec


@dataclass
class ConversionReport:
    """What was written and how closely it matches the source model."""

    path: Path
    exporter: str
    samples: int
    max_abs_diff: float
    tolerance: float
    score_output: str
    score_kind: str


def embed_metadata(proto: onnx.ModelProto, preprocess: PreprocessSpec | dict | None = None,
                   labels: list | None = None) -> onnx.ModelProto:
    """Store the preprocessing spec (JSON) and class labels (JSON list) in `metadata_props`, replacing old entries."""
    entries = {}
    if preprocess is not None:
        spec = preprocess if isinstance(preprocess, PreprocessSpec) else PreprocessSpec.from_dict(dict(preprocess))
        entries[METADATA_KEY] = spec.to_json()
    if labels is not None:
        entries[LABELS_KEY] = json.dumps([str(label) for label in labels])
    kept = [p for p in proto.metadata_props if p.key not in entries]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in entries.items():
        proto.metadata_props.add(key=key, value=value)
    return proto


def rename_io(proto: onnx.ModelProto, input_name: str, output_name: str) -> onnx.ModelProto:
    """Give the graph's one input and first output the names asked for (exporters pick names such as
    'keras_tensor' or '23'), everywhere they are read or written, subgraphs included."""
    if input_name == output_name:
        raise OnnxplainError(f"the input and the output cannot both be named {input_name!r}")
    graph = proto.graph
    initializers = {t.name for t in graph.initializer}
    feeds = [v for v in graph.input if v.name not in initializers]
    renames = {old: new for old, new in ((feeds[0].name, input_name), (graph.output[0].name, output_name))
               if old != new}
    taken = _tensor_names(graph) - set(renames)
    clash = [new for new in renames.values() if new in taken]
    if clash:
        raise OnnxplainError(f"the exported graph already has a tensor named {clash[0]!r}: choose another name")
    _rename(graph, renames)
    return proto


def _tensor_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name the graph uses, its subgraphs' included."""
    names = {v.name for v in (*graph.input, *graph.output, *graph.value_info)}
    names |= {t.name for t in graph.initializer}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
        for body in _subgraphs(node):
            names |= _tensor_names(body)
    return names


def _rename(graph: onnx.GraphProto, renames: dict[str, str]) -> None:
    for value in (*graph.input, *graph.output, *graph.value_info):
        value.name = renames.get(value.name, value.name)
    for node in graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.output[:] = [renames.get(name, name) for name in node.output]
        for body in _subgraphs(node):
            _rename(body, renames)


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The bodies of an If, Loop or Scan node."""
    return [body for attribute in node.attribute
            for body in (*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs)]


def verify_and_write(proto: onnx.ModelProto, path: str | os.PathLike, samples: np.ndarray, expected: np.ndarray, *,
                     exporter: str, output: str | None = None, atol: float = 1e-4) -> ConversionReport:
    """Load `proto` as onnxplain would, compare its output on `samples` with the source model's `expected`
    (the named `output`, else the class scores onnxplain picks), and only then write it to `path`."""
    import onnxplain

    path = Path(path)
    expected = np.asarray(expected, dtype=np.float64).reshape(len(samples), -1)
    with tempfile.TemporaryDirectory(prefix="onnxplain-convert-") as folder:
        staged = Path(folder) / "model.onnx"
        onnx.save(proto, staged)
        model = onnxplain.load(staged)
        _check_spec_fits(model)
        count = model.class_count()
        if model.labels is not None and count is not None and len(model.labels) != count:
            raise OnnxplainError(f"{len(model.labels)} labels for a model with {count} classes; not written")
        got = model.run(samples, [output])[output] if output else model.scores(samples)
        got = np.asarray(got, dtype=np.float64).reshape(len(samples), -1)
        if got.shape != expected.shape:
            raise OnnxplainError(f"the ONNX model gives outputs of shape {got.shape[1:]}, the source model "
                                 f"{expected.shape[1:]}; not written")
        diff = float(np.max(np.abs(got - expected)))
        if not diff <= atol:
            raise OnnxplainError(f"the ONNX model differs from the source model by {diff:.3g} (> {atol:g}) on "
                                 f"{len(samples)} sample inputs; not written")
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")   # beside it: the rename cannot half-happen
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(staged), str(partial))   # a copy when /tmp is another file system
            os.replace(partial, path)
        except OSError as error:
            raise OnnxplainError(f"cannot write {path}: {error.strerror or error}") from None
        finally:   # a failed copy or an interrupt leaves no partial file behind
            partial.unlink(missing_ok=True)
    return ConversionReport(path=path, exporter=exporter, samples=len(samples), max_abs_diff=diff, tolerance=atol,
                            score_output=output or model.score_output, score_kind=model.score_kind)


def _check_spec_fits(model) -> None:
    """An embedded image spec with a size must turn an image into the model's input shape."""
    spec = model.preprocess
    if spec is None or spec.size is None or spec.crop is not None:
        return
    shape = spec.image_to_tensor(np.zeros((8, 8, 3), np.uint8)).shape
    expected = tuple(model.input_shape[1:])
    if len(shape) != len(expected) or any(e is not None and e != s for e, s in zip(expected, shape)):
        shown = "x".join("N" if d is None else str(d) for d in model.input_shape)
        raise OnnxplainError(f"the preprocessing spec makes inputs of shape {'x'.join(map(str, shape))}; the model "
                             f"takes {shown}; not written")


def sample_batch(samples: np.ndarray | None, shape: tuple[int, ...], preprocess=None, count: int = 8,
                 seed: int = 0, integer: bool = False) -> np.ndarray:
    """The given samples as float32, or `count` seeded random inputs of `shape` (no batch axis) spread over the
    preprocessing spec's value range ([0, 1] without a spec); for an `integer` input (token ids, categories), ids 0
    and 1, which every vocabulary has."""
    if samples is not None:
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim == len(shape):
            samples = samples[None]
        if samples.shape[1:] != tuple(shape):
            raise OnnxplainError(f"sample inputs of shape {samples.shape[1:]} do not fit the input shape {shape}")
        if not np.isfinite(samples).all():
            raise OnnxplainError("sample inputs contain NaN or Inf values")
        return samples
    low, high = 0.0, 1.0
    if preprocess is not None:
        spec = preprocess if isinstance(preprocess, PreprocessSpec) else PreprocessSpec.from_dict(dict(preprocess))
        lows, highs = spec.value_range()
        low, high = float(np.min(lows)), float(np.max(highs))
    rng = np.random.default_rng(seed)
    if integer:
        return rng.integers(0, 2, size=(count, *shape)).astype(np.float32)
    return rng.uniform(low, high, size=(count, *shape)).astype(np.float32)
