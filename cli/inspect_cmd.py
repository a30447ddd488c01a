"""`onnxplain inspect`: what the model is and how onnxplain will read it."""
from __future__ import annotations

import json
from collections import Counter

import click
import numpy as np
from onnx import TensorProto, helper

from .common import echo_json, load_model, model_argument, preprocess_option


FLOATING = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}
ML_WEIGHTS = ("coefficients", "intercepts", "nodes_values", "class_weights", "target_weights", "support_vectors",
              "rho", "scale", "offset")


def count_parameters(proto) -> int:
    """Floating-point weights: initializers, `Constant` nodes (paddle2onnx keeps weights there) and the
    attributes in which ai.onnx.ml ops keep theirs. Integer tensors (shapes, axes) are not parameters."""
    tensors = [t for t in proto.graph.initializer if t.data_type in FLOATING]
    tensors += [a.t for n in proto.graph.node if n.op_type == "Constant" and n.domain in ("", "ai.onnx")
                for a in n.attribute if a.name == "value" and a.t.data_type in FLOATING]
    return sum(int(np.prod(t.dims)) for t in tensors) + sum(
        len(a.floats) + len(a.ints) for n in proto.graph.node if n.domain == "ai.onnx.ml" for a in n.attribute
        if a.name in ML_WEIGHTS)


def why_scores(model) -> str:
    """How the class scores were found; a ZipMap's probability tensor is named as the one under that output."""
    for node in model.original.graph.node:
        if node.op_type == "ZipMap" and node.input[0] == model.score_output:
            return f"{model.score_reason}; the tensor under ZipMap output {node.output[0]!r}"
    return model.score_reason


def describe(model) -> dict:
    proto, original = model.proto, model.original
    ops = Counter(f"{n.domain + '.' if n.domain else ''}{n.op_type}" for n in original.graph.node)
    weights = {t.name for t in proto.graph.initializer}
    parameters = count_parameters(proto)

    def values(items, skip=()):
        rows = []
        for value in items:
            if value.name in skip:
                continue
            kind = value.type.WhichOneof("value")
            if kind == "tensor_type":
                tensor = value.type.tensor_type
                dims = ["N" if d.dim_param else (d.dim_value if d.HasField("dim_value") else "?")
                        for d in tensor.shape.dim]
                rows.append({"name": value.name, "type": helper.tensor_dtype_to_string(tensor.elem_type), "shape": dims})
            else:
                rows.append({"name": value.name, "type": kind, "shape": None})
        return rows

    return {
        "path": str(model.path),
        "producer": f"{original.producer_name} {original.producer_version}".strip(),
        "ir_version": original.ir_version,
        "opsets": {o.domain or "ai.onnx": o.version for o in original.opset_import},
        "inputs": values(original.graph.input, skip=weights | {t.name for t in original.graph.initializer}),
        "outputs": values(original.graph.output),
        "operators": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        "parameters": parameters,
        "class_scores": {"output": model.score_output, "kind": model.score_kind, "why": why_scores(model),
                         "logits": model.logits_output},
        "normalisation": model.notes,
        "preprocess": None if model.preprocess is None else json.loads(model.preprocess.to_json()),
        "labels": model.labels,
    }


@click.command("inspect")
@model_argument
@preprocess_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def inspect_command(model, preprocess, as_json):
    """Inputs, outputs, opsets, operators, parameters, and which output holds the class scores."""
    info = describe(load_model(model, preprocess))
    if as_json:
        echo_json(info)
        return
    click.echo(f"{info['path']}  (producer: {info['producer'] or 'unknown'}, IR {info['ir_version']}, "
               f"opsets {', '.join(f'{k} {v}' for k, v in info['opsets'].items())})")
    for title in ("inputs", "outputs"):
        click.echo(f"{title}:")
        for row in info[title]:
            shape = "x".join(map(str, row["shape"])) if row["shape"] is not None else "-"
            click.echo(f"  {row['name']:<24} {row['type']:<10} {shape}")
    click.echo(f"parameters: {info['parameters']:,}")
    click.echo("operators: " + ", ".join(f"{k}×{v}" for k, v in info["operators"].items()))
    scores = info["class_scores"]
    click.echo(f"class scores: {scores['output']} ({scores['kind']}: {scores['why']})")
    if info["normalisation"]:
        click.echo("normalised: " + "; ".join(info["normalisation"]))
    click.echo(f"preprocess: {json.dumps(info['preprocess']) if info['preprocess'] else 'none (give --preprocess or .npy inputs)'}")
