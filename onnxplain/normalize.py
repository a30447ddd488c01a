"""Bringing legacy graphs into the one form later stages expect (files are read and checked by `loading`).

Each step is small and named; `Model` checks the result against the original graph's outputs.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import OnnxplainError
from .loading import default_opset
from .scores import FLOAT_TYPES, Exposed, class_shaped, constant_values, producing_op

MIN_OPSET = 13  # older default-domain opsets are upgraded to this one when onnx.version_converter can


def unused_inputs(model: onnx.ModelProto) -> list[str]:
    """Graph inputs that no node reads, also inside If/Loop bodies (Keras's Normalization through tf2onnx can leave
    its mean and variance so); none when every input is unread (nothing would be left to explain)."""
    read = _names_read(model.graph) | {o.name for o in model.graph.output}
    weights = {t.name for t in model.graph.initializer}
    unused = [i.name for i in model.graph.input if i.name not in read and i.name not in weights]
    return unused if len(unused) < len([i for i in model.graph.input if i.name not in weights]) else []


def _names_read(graph: onnx.GraphProto) -> set[str]:
    names = set()
    for node in graph.node:
        names.update(node.input)
        for attribute in node.attribute:
            for body in ([attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else attribute.graphs):
                names |= _names_read(body)
    return names


def drop_extra_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Keep only the inputs the model needs (and an IR version onnxruntime reads): IR < 4 lists every weight as a
    graph input too, and some exporters leave inputs that no node reads (`unused_inputs`)."""
    weights = {t.name for t in model.graph.initializer} | set(unused_inputs(model))
    real = [i for i in model.graph.input if i.name not in weights]
    if len(real) != len(model.graph.input):
        del model.graph.input[:]
        model.graph.input.extend(real)
    model.ir_version = min(max(model.ir_version, 4), runtime_max_ir_version())
    return model


_RUNTIME_MAX_IR: int | None = None


def runtime_max_ir_version() -> int:
    """The newest IR version onnxruntime reads (onnx's helpers can write a newer one than it knows).

    onnxruntime has no API for it; its refusal of a tiny model with an absurd IR version names it."""
    global _RUNTIME_MAX_IR
    if _RUNTIME_MAX_IR is None:
        import re

        import onnxruntime as ort

        graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
        probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        probe.ir_version = 999
        try:
            ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
            _RUNTIME_MAX_IR = 999
        except Exception as error:  # "Unsupported model IR version: 999, max supported IR version: 13"
            found = re.search(r"max supported IR version: (\d+)", str(error))
            _RUNTIME_MAX_IR = int(found.group(1)) if found else onnx.IR_VERSION
    return _RUNTIME_MAX_IR


def upgrade_opset(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """Convert old default-domain opsets to MIN_OPSET; returns (model, note). The original stays where conversion
    fails, and where the converted graph fails shape inference that the original passes: ONNX counts a ceil-mode
    pooling window that onnxruntime drops, and only at the new opset does the Gemm after it object (onnxruntime,
    inferring shapes too, then refused a graph it runs at its own opset)."""
    version = default_opset(model)
    if version >= MIN_OPSET:
        return model, None
    try:
        from onnx import version_converter

        converted = version_converter.convert_version(model, MIN_OPSET)
    except Exception as error:
        return model, f"opset {version} kept (version converter: {type(error).__name__})"
    if not _infers_strictly(converted) and _infers_strictly(model):
        return model, f"opset {version} kept (shape inference fails at opset {MIN_OPSET})"
    return converted, f"opset {version} -> {MIN_OPSET}"


def _infers_strictly(model: onnx.ModelProto) -> bool:
    try:
        onnx.shape_inference.infer_shapes(model, strict_mode=True)
        return True
    except Exception:   # onnx raises InferenceError, ValidationError and others
        return False


def unzip_classifier(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace skl2onnx's ZipMap (a sequence of maps) by the probability tensor underneath it."""
    graph = model.graph
    for node in list(graph.node):
        if node.op_type != "ZipMap":
            continue
        outputs = [o for o in graph.output if o.name != node.output[0]]
        labels = [a for a in node.attribute if a.name in ("classlabels_int64s", "classlabels_strings")]
        classes = len(labels[0].ints or labels[0].strings) if labels else 0
        probabilities = helper.make_tensor_value_info(node.input[0], TensorProto.FLOAT, ["N", classes] if classes
                                                      else None)
        graph.node.remove(node)
        del graph.output[:]
        graph.output.extend(outputs + [probabilities])
    return model


def expose_probabilities(model: onnx.ModelProto) -> dict[str, Exposed]:
    """Class probabilities for outputs that are not quite them, added as one more output each (the original outputs
    stay): the exp of a LogSoftmax output (log-probabilities); [1 - p, p] = sigmoid([-z, z]) for a single sigmoid
    column p = sigmoid(z) of shape (N, 1) or (N,) (a binary classifier), or for [1 - p, p] written out, with the
    log-odds [-z, z] as its logits.
    Returns {original output: Exposed}."""
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    taken = set(producers) | {v.name for v in graph.input} | {t.name for t in graph.initializer}
    added = {}
    for output in list(graph.output):
        node = producing_op(producers, output.name)
        tensor = output.type.tensor_type
        if node is None or tensor.elem_type not in FLOAT_TYPES:
            continue
        dims = tensor.shape.dim
        complemented, what = _complemented_sigmoid(producers, node), "one Sigmoid probability p (a binary classifier)"
        if complemented is not None:   # [1 - p, p] written out (scikit-learn's binary MLPClassifier): z as log-odds
            node, what = complemented, "[1 - p, p] of one Sigmoid p (a binary classifier)"
        if node.op_type == "LogSoftmax" and class_shaped(model, node, output):
            name = unused_name(f"{output.name}_probabilities", taken)
            graph.node.append(helper.make_node("Exp", [output.name], [name], name=name))
            added[output.name] = Exposed(name, node.input[0], "LogSoftmax (log-probabilities): its exp")
        elif node.op_type == "Sigmoid" and (complemented is not None or (len(dims) == 2 and dims[1].dim_value == 1) or (
                len(dims) == 1 and (dims[0].dim_param or dims[0].dim_value == 1))):   # (N, 1), or (N,) squeezed
            pair, negative, log_odds, sigmoid, name = (unused_name(f"{output.name}_{suffix}", taken) for suffix in
                                                       ("pair_shape", "negative", "log_odds", "sigmoid", "classes"))
            graph.initializer.append(numpy_helper.from_array(np.array([-1, 1], np.int64), pair))
            graph.node.extend([helper.make_node("Reshape", [node.input[0], pair], [f"{pair}_z"], name=pair),
                               helper.make_node("Neg", [f"{pair}_z"], [negative], name=negative),
                               helper.make_node("Concat", [negative, f"{pair}_z"], [log_odds], axis=1, name=log_odds),
                               helper.make_node("Sigmoid", [log_odds], [sigmoid], name=sigmoid),
                               helper.make_node("Cast", [sigmoid], [name], to=tensor.elem_type, name=name)])
            added[output.name] = Exposed(name, log_odds, f"{what}: classes [1 - p, p], class 1 the positive one, "
                                         "log-odds [-z, z]", binary=True)
        elif _binary_decision(model, producers, node):
            name = unused_name(f"{output.name}_classes", taken)
            if node.op_type == "SVMClassifier":   # onnxruntime writes [d, -d], against its own labels: negated
                graph.node.append(helper.make_node("Neg", [output.name], [name], name=name))
            else:   # d of class 1, picked from the classifier's [-d, d]: both columns again
                negative = unused_name(f"{output.name}_negative", taken)
                graph.node.extend([helper.make_node("Neg", [output.name], [negative], name=negative),
                                   helper.make_node("Concat", [negative, output.name], [name], axis=1, name=name)])
            added[output.name] = Exposed(name, name, "a binary classifier's decision score d: classes [-d, d], class 1 "
                                         "the positive one", kind="logits")
        else:
            continue
        probabilities = onnx.ValueInfoProto()
        probabilities.CopyFrom(output)
        probabilities.name = added[output.name].output
        if (node.op_type == "Sigmoid" and complemented is None) or node.op_type == "ArrayFeatureExtractor":
            shape = probabilities.type.tensor_type.shape
            (shape.dim.add() if len(shape.dim) == 1 else shape.dim[1]).dim_value = 2
        graph.output.append(probabilities)
    return added


def _complemented_sigmoid(producers: dict, node: onnx.NodeProto) -> onnx.NodeProto | None:
    """The Sigmoid s of Concat([1 - s, s], axis 1) (a binary classifier's two classes, written out), else None."""
    if node.op_type != "Concat" or len(node.input) != 2 or _attribute_int(node, "axis") not in (1, -1):
        return None
    positive, negative = producing_op(producers, node.input[1]), producers.get(node.input[0])
    if positive is None or positive.op_type != "Sigmoid" or negative is None or negative.op_type != "Sub" \
            or negative.input[1] != node.input[1]:
        return None
    return positive


def _binary_decision(model: onnx.ModelProto, producers: dict, node: onnx.NodeProto) -> bool:
    """Whether `node` makes a two-class linear or SVM classifier's decision scores (no post-transform, no
    probabilities): an SVMClassifier's two columns, or the (N, 1) column 1 an ArrayFeatureExtractor picks from a
    LinearClassifier's scores (skl2onnx's LinearSVC, RidgeClassifier; the shape it declares may say 2 columns)."""
    if node.op_type == "ArrayFeatureExtractor":
        index = constant_values(model).get(node.input[1])
        node = producers.get(node.input[0])
        if index is None or index.reshape(-1).tolist() != [1] or node is None or node.op_type != "LinearClassifier":
            return False
    elif node.op_type != "SVMClassifier" or any(a.name == "prob_a" and a.floats for a in node.attribute):
        return False
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    labels = attributes.get("classlabels_strings") or attributes.get("classlabels_ints") or []
    return len(labels) == 2 and attributes.get("post_transform", b"NONE") == b"NONE"


def _attribute_int(node: onnx.NodeProto, name: str) -> int | None:
    return next((a.i for a in node.attribute if a.name == name), None)


def unused_name(name: str, taken: set[str]) -> str:
    """`name`, or `name_1`, `name_2`, ... : the first not in `taken` (which then holds it)."""
    candidate, count = name, 1
    while candidate in taken:
        candidate, count = f"{name}_{count}", count + 1
    taken.add(candidate)
    return candidate


WEIGHT_FIELDS = ("raw_data", "float_data", "double_data", "int32_data", "int64_data", "uint64_data")


def set_weights_aside(model: onnx.ModelProto, min_bytes: int = 4096) -> dict[str, TensorProto]:
    """Empty the large initializers (keeping name, type and dims) and return their full copies.

    Version conversion, shape inference and graph edits read shapes, never weight bytes; serialising
    hundreds of megabytes for each of them made loading VGG-sized models take minutes."""
    aside = {}
    for tensor in model.graph.initializer:
        if tensor.data_location != TensorProto.EXTERNAL and tensor.ByteSize() > min_bytes:
            aside[tensor.name] = TensorProto()
            aside[tensor.name].CopyFrom(tensor)
            for name in WEIGHT_FIELDS:
                tensor.ClearField(name)
    return aside


def restore_weights(model: onnx.ModelProto, aside: dict[str, TensorProto]) -> None:
    """Put the weights set aside back into (a rewritten copy of) the model."""
    for tensor in model.graph.initializer:
        if tensor.name in aside:
            tensor.CopyFrom(aside[tensor.name])


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model)
    except Exception:  # inference is a help, not a requirement
        return model


def drop_noops(model: onnx.ModelProto) -> dict[str, str]:
    """Nodes that copy their input go: Identity, inference-mode Dropout, and Casts to the type their input already
    has (Keras's torch backend writes float-to-float ones, tf2onnx and Paddle write Identity); their readers read
    the input. They would otherwise stand between a layer and its bias or BatchNorm, which LRP merges into the
    layer. Returns {a removed node's output: the tensor its readers now read}, names to keep answering."""
    graph = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        return {}   # a subgraph may read a copy's output by name
    types = {v.name: v.type.tensor_type.elem_type for v in list(graph.input) + list(graph.value_info)
             if v.type.HasField("tensor_type")}
    types.update({t.name: t.data_type for t in graph.initializer})
    outputs, renamed, kept = {o.name for o in graph.output}, {}, []
    # a copy of an input or a weight stays: its output is the one computed tensor that names the value
    sources = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    for node in graph.node:
        node.input[:] = [renamed.get(name, name) for name in node.input]
        if _copies_input(node, types) and node.output[0] not in outputs and node.input[0] not in outputs \
                and node.input[0] not in sources:
            renamed[node.output[0]] = node.input[0]
            continue
        kept.append(node)
    if renamed:
        del graph.node[:]
        graph.node.extend(kept)
        values = [v for v in graph.value_info if v.name not in renamed]
        del graph.value_info[:]
        graph.value_info.extend(values)
    return renamed


def _copies_input(node: onnx.NodeProto, types: dict[str, int]) -> bool:
    """Identity; Dropout with no mask and no training_mode input (inference: a copy); a Cast to its input's own
    type."""
    if node.domain not in ("", "ai.onnx") or not node.input or not node.input[0]:
        return False
    if node.op_type == "Identity":
        return True
    if node.op_type == "Dropout":
        return not any(node.output[1:]) and not any(node.input[2:]) and \
            not any(a.name == "is_test" and a.i == 0 for a in node.attribute)
    target = next((a.i for a in node.attribute if a.name == "to"), None)
    return node.op_type == "Cast" and target is not None and types.get(node.input[0]) == target


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A deep copy (rewrites work on copies; the original stays the reference)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy whose graph outputs are exactly `names` (intermediate tensors included)."""
    copy = copy_model(model)
    known = {v.name: v for v in list(copy.graph.output) + list(copy.graph.value_info)}
    del copy.graph.output[:]
    for name in names:
        if name in known:
            copy.graph.output.append(known[name])
        else:
            copy.graph.output.append(helper.make_empty_tensor_value_info(name))
    return copy


def one_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    """The graph's one input, a tensor with a batch axis; more inputs (named), or another kind, are refused."""
    inputs = list(model.graph.input)
    if len(inputs) != 1:
        names = ", ".join(value.name for value in inputs)
        raise OnnxplainError(f"onnxplain explains models with one input; this one has {len(inputs)}"
                             + (f": {names}" if names else ""))
    value = inputs[0]
    if not value.type.HasField("tensor_type"):
        raise OnnxplainError(f"input {value.name!r} is not a tensor ({value.type.WhichOneof('value')}): onnxplain "
                             "explains models that take one tensor")
    if value.type.tensor_type.HasField("shape") and not value.type.tensor_type.shape.dim:
        raise OnnxplainError(f"input {value.name!r} is a single number (rank 0): it has no batch axis")
    return value
