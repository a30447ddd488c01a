"""`onnxplain inspect`: what the model is and how onnxplain will read it."""
from __future__ import annotations

import json
from collections import Counter

import click
import numpy as np
from onnx import TensorProto, helper

from onnxplain import Model
from onnxplain.hold import check_values, graph_inputs, unheld
from onnxplain.loading import read_checked
from onnxplain.normalize import infer_shapes, unused_inputs
from onnxplain.scores import FLOAT_TYPES

from .common import echo_json, hold_option, model_argument, preprocess_option, read_holds, scores_option


ML_WEIGHTS = ("coefficients", "intercepts", "nodes_values", "class_weights", "target_weights", "support_vectors",
              "rho", "scale", "offset")


def count_parameters(proto) -> int:
    """Floating-point weights: initializers, `Constant` nodes (paddle2onnx keeps weights there) and the
    attributes in which ai.onnx.ml ops keep theirs. Integer tensors (shapes, axes) are not parameters."""
    tensors = [t for t in proto.graph.initializer if t.data_type in FLOAT_TYPES]
    tensors += [a.t for n in proto.graph.node if n.op_type == "Constant" and n.domain in ("", "ai.onnx")
                for a in n.attribute if a.name == "value" and a.t.data_type in FLOAT_TYPES]
    return sum(int(np.prod(t.dims)) for t in tensors) + sum(
        len(a.floats) + len(a.ints) for n in proto.graph.node if n.domain == "ai.onnx.ml" for a in n.attribute
        if a.name in ML_WEIGHTS)


def why_scores(model) -> str:
    """How the class scores were found; a ZipMap's probability tensor is named as the one under that output."""
    for node in model.original.graph.node:
        if node.op_type == "ZipMap" and node.input[0] == model.score_output:
            return f"{model.score_reason}; the tensor under ZipMap output {node.output[0]!r}"
    return model.score_reason


def value_row(value) -> dict:
    """{name, type, shape} of a graph value; shape None where its rank is unknown, 'N' for a named batch axis and
    '?' for a size shape inference does not know."""
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        return {"name": value.name, "type": kind, "shape": None}
    tensor = value.type.tensor_type
    shape = None
    if tensor.HasField("shape"):
        shape = [d.dim_value if d.HasField("dim_value") else ("N" if d.dim_param and axis == 0 else "?")
                 for axis, d in enumerate(tensor.shape.dim)]
    return {"name": value.name, "type": element_type(tensor.elem_type), "shape": shape}


def element_type(elem_type: int) -> str:
    """A tensor element type as numpy names it (float32, int64, bfloat16, ...), not TensorProto.FLOAT; 'string'
    for text (numpy's object), and ONNX's own name, lower case, where numpy has none ('undefined')."""
    if elem_type == TensorProto.STRING:
        return "string"
    try:
        return helper.tensor_dtype_to_np_dtype(elem_type).name
    except (KeyError, ValueError, TypeError):
        names = {number: name.lower() for name, number in TensorProto.DataType.items()}
        return names.get(elem_type, f"type {elem_type}")


def tensors(proto) -> list[dict]:
    """Every tensor a forward pass computes (the names `--layer` takes), in graph order, with the op that makes it;
    type and shape where ONNX shape inference knows them."""
    known = {value.name: value for value in [*proto.graph.value_info, *proto.graph.output]}
    rows = []
    for node in proto.graph.node:
        for name in filter(None, node.output):
            row = value_row(known[name]) if name in known else {"name": name, "type": None, "shape": None}
            rows.append({**row, "op": node.op_type})
    return rows


def producer(proto) -> str:
    """'name version', less the word 'None' that tf2onnx writes into the version for an unknown git hash."""
    words = f"{proto.producer_name} {proto.producer_version}".split()
    return " ".join(word for word in words if word != "None")


def describe(model) -> dict:
    return describe_file(model.original, model.path, model.proto, model.held, [model.input_name]) | {
        "class_scores": {"output": model.score_output, "kind": model.score_kind, "why": why_scores(model),
                         "logits": model.logits_output},
        "normalisation": model.notes,
        "preprocess": None if model.preprocess is None else json.loads(model.preprocess.to_json()),
        "preprocess_source": model.preprocess_source,
        "labels": model.labels,
    }


def describe_file(original, path, proto, held, free: list[str]) -> dict:
    """What the file says, whether or not the model loads: each input with its role ('explained', 'held',
    'unheld': one of several to explain or hold, 'unused': read by no node), and `hold_needed`, the unheld inputs
    of a model of several inputs, all but one of which need --hold."""
    ops = Counter(f"{n.domain + '.' if n.domain else ''}{n.op_type}" for n in original.graph.node)
    unused = set(unused_inputs(original))
    roles = {name: "held" if name in held else "unused" if name in unused else
             "explained" if free == [name] else "unheld" for name in (v.name for v in graph_inputs(original))}
    return {
        "path": str(path),
        "producer": producer(original),
        "ir_version": original.ir_version,
        "opsets": {o.domain or "ai.onnx": o.version for o in original.opset_import},
        "inputs": [value_row(v) | {"role": roles[v.name]} for v in graph_inputs(original)],
        "hold_needed": free if len(free) > 1 else [],
        "outputs": [value_row(v) for v in original.graph.output],
        "tensors": tensors(proto),
        "operators": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        "parameters": count_parameters(original),   # the file's: no held value counts
    }


def shape_text(shape: list | None) -> str:
    return "x".join(map(str, shape)) if shape is not None else "-"


@click.command("inspect")
@model_argument
@preprocess_option
@scores_option
@hold_option
@click.option("--tensors", "list_tensors", is_flag=True,
              help="List every tensor the model computes (the names --layer takes; always in --json).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def inspect_command(model, preprocess, scores, hold, list_tensors, as_json):
    """Inputs, outputs, opsets, operators, parameters, and which output holds the class scores. A model of several
    inputs is described without --hold too: its inputs, and which need --hold to be explained."""
    original, held = read_checked(model), read_holds(hold) or {}
    free = unheld(original, held)
    known = {value.name for value in graph_inputs(original)}
    if len(free) > 1 and set(held) <= known:   # what the file says; the model loads once all but one are held
        check_values(original, held)
        loaded, info = None, describe_file(original, model, infer_shapes(original), held, free)
    else:
        loaded = Model(original, path=model, preprocess=preprocess, scores=scores, hold=held)
        info = describe(loaded)
    if as_json:
        echo_json(info)
        return
    click.echo(f"{info['path']}  (producer: {info['producer'] or 'unknown'}, IR {info['ir_version']}, "
               f"opsets {', '.join(f'{k} {v}' for k, v in info['opsets'].items())})")
    several = len(info["inputs"]) > 1   # their roles shown
    for title in ("inputs", "outputs"):
        click.echo(f"{title}:")
        for row in info[title]:
            role = row["role"] if several and title == "inputs" else ""
            click.echo(f"  {row['name']:<24} {row['type']:<10} {shape_text(row['shape']):<16} {role}".rstrip())
    if info["hold_needed"]:
        click.echo(f"hold: explain one of {', '.join(info['hold_needed'])} and hold the others (--hold NAME=FILE.npy "
                   "each) to read the class scores and explain")
    if list_tensors:
        click.echo("tensors (names for --layer):")
        names, ops = (max((len(row[key]) for row in info["tensors"]), default=0) for key in ("name", "op"))
        for row in info["tensors"]:
            click.echo(f"  {row['name']:<{names}}  {row['op']:<{ops}}  {shape_text(row['shape'])}")
    else:
        click.echo(f"tensors: {len(info['tensors'])} (inspect --tensors lists them: the names --layer takes)")
    click.echo(f"parameters: {info['parameters']:,}")
    click.echo("operators: " + ", ".join(f"{k}×{v}" for k, v in info["operators"].items()))
    if loaded is not None:
        echo_loaded(loaded, info)


def echo_loaded(model, info: dict) -> None:
    """The lines about how onnxplain reads the loaded model: class scores, labels, normalisation, preprocessing."""
    scores = info["class_scores"]
    click.echo(f"class scores: {scores['output']} ({scores['kind']}: {scores['why']})")
    if model.labels:
        click.echo(f"labels: {model.labels_text()}")
    if info["normalisation"]:
        click.echo("normalised: " + "; ".join(info["normalisation"]))
    if not info["preprocess"]:
        click.echo("preprocess: none (give --preprocess or .npy inputs)")
    else:
        guessed = " (guessed from the input shape, none stored: give --preprocess if the model expects other " \
                  "inputs)" if info["preprocess_source"] == "guessed" else ""
        click.echo(f"preprocess: {json.dumps(info['preprocess'])}{guessed}")
