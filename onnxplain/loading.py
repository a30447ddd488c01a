"""Reading an ONNX file safely (external data only from inside the model's folder) and refusing, in one line
each, what onnxplain cannot explain: custom operator domains, invalid graphs, training-mode normalisation."""
from __future__ import annotations

import os
from pathlib import Path

import onnx
from onnx import TensorProto

from .errors import OnnxplainError

ALLOWED_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")


def read_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Parse the file, then load external data only from inside the model's own folder."""
    path = Path(path)
    if not path.is_file():
        raise OnnxplainError(f"model file not found: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf raises DecodeError and others
        raise OnnxplainError(f"{path} is not a readable ONNX model ({type(error).__name__})") from None
    if not model.graph.node and not model.graph.output:
        raise OnnxplainError(f"{path} is not a readable ONNX model (empty graph)")
    graphs = [model.graph, *model.functions]   # onnx reads external data in functions' attributes too
    external = [t for graph in graphs for t in _all_tensors(graph) if t.data_location == TensorProto.EXTERNAL]
    if external:
        folder = path.resolve().parent
        for tensor in external:
            _check_external_location(tensor, folder)
        try:
            onnx.external_data_helper.load_external_data_for_model(model, str(folder))
        except Exception as error:
            raise OnnxplainError(f"cannot read the external data of {path}: {error}") from None
    return model


def read_checked(path: str | os.PathLike) -> onnx.ModelProto:
    """`read_model`, and the model refused where onnxplain cannot explain it (`check_domains`, `check_model`,
    `check_inference_mode`)."""
    model = read_model(path)
    check_domains(model)
    check_model(model)
    check_inference_mode(model)
    return model


def _all_tensors(graph: onnx.GraphProto | onnx.FunctionProto):
    """Every tensor `onnx.external_data_helper` may read data for: initializers, attribute tensors (whatever the
    attribute's declared type), in subgraphs too."""
    yield from getattr(graph, "initializer", ())
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            for subgraph in list(attribute.graphs) + ([attribute.g] if attribute.HasField("g") else []):
                yield from _all_tensors(subgraph)


def _check_external_location(tensor: TensorProto, folder: Path) -> None:
    location = next((entry.value for entry in tensor.external_data if entry.key == "location"), "")
    if "\0" in location:
        raise OnnxplainError(f"external data of tensor {tensor.name!r} has a location with a NUL character "
                             f"({location!r}); refused")
    target = (folder / location).resolve()
    if not location or os.path.isabs(location) or ".." in Path(location).parts or not target.is_relative_to(folder):
        linked = f", a link to {str(target)!r}" if location and (folder / location).is_symlink() else ""
        raise OnnxplainError(f"external data of tensor {tensor.name!r} points outside the model's folder "
                             f"({location!r}{linked}); refused")
    if not target.is_file():
        raise OnnxplainError(f"the model's external data file {location!r} is missing from {folder} (tensor "
                             f"{tensor.name!r}); keep it beside the .onnx file")


def check_domains(model: onnx.ModelProto) -> None:
    """Only the default domain and ai.onnx.ml: custom ops cannot be explained (or even run) here."""
    custom = sorted({node.domain for node in model.graph.node if node.domain not in ALLOWED_DOMAINS}
                    | {o.domain for o in model.opset_import if o.domain not in ALLOWED_DOMAINS})
    if custom:
        nodes = [f"{n.op_type} ({n.domain})" for n in model.graph.node if n.domain in custom][:5]
        raise OnnxplainError(f"custom operator domain(s) not supported: {', '.join(custom)}"
                             + (f"; nodes: {', '.join(nodes)}" if nodes else ""))


def default_opset(model: onnx.ModelProto) -> int:
    """The default domain's opset (0 for a graph of ai.onnx.ml ops alone)."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def check_inference_mode(model: onnx.ModelProto) -> None:
    """A BatchNormalization in training mode (training_mode=1, or before opset 14 its training outputs) normalises
    by each batch's own statistics: one sample's scores would depend on the samples run with it
    (torch.onnx.export with training=TrainingMode.TRAINING writes it)."""
    opset = default_opset(model)
    for node in model.graph.node:
        if node.op_type != "BatchNormalization":
            continue
        flag = any(a.name == "training_mode" and a.i for a in node.attribute)
        outputs = opset < 14 and len([name for name in node.output if name]) > 1
        if flag or outputs:
            raise OnnxplainError(f"BatchNormalization node {node.name or node.output[0]!r} is in training mode ("
                                 f"{'training_mode=1' if flag else 'it has the training outputs: running mean, ...'}"
                                 "): it normalises by each batch's own statistics, so a sample's scores depend on the "
                                 "others in its batch; export the model in eval mode (torch: model.eval() and "
                                 "training=torch.onnx.TrainingMode.EVAL)")


def check_model(model: onnx.ModelProto) -> None:
    """onnx.checker's verdict as one line: its message's lines joined, since the node it names (or the context
    after a blank line) sits on lines after the first."""
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as error:
        raise OnnxplainError(f"invalid ONNX model: {one_line(str(error))}") from None


def one_line(text: str, limit: int = 500) -> str:
    """`text` on one line: its lines joined and every run of whitespace one space, cut to `limit` characters."""
    joined = " ".join(text.split())
    return joined if len(joined) <= limit else joined[:limit - 3] + "..."
