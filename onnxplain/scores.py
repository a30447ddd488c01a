"""Which graph output holds the class scores, what kind they are (probabilities or logits) and why."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import OnnxplainError, named_list
from .loading import default_opset

SHAPE_ONLY_OPS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Cast"}
PROBABILITY_OPS = {"Softmax", "Sigmoid"}
ML_PROBABILITY_TRANSFORMS = {"SOFTMAX", "LOGISTIC", "SOFTMAX_ZERO"}
FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, K) scores (shifted by each row's maximum: no overflow)."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def finite_scores(scores: np.ndarray, names: list[str]) -> np.ndarray:
    """The (N, K) class scores, if no row holds NaN or +inf; else a user error naming those inputs (`names`, one per
    row): their values lie far outside those the model takes, or its weights are NaN."""
    broken = [name for name, row in zip(names, scores) if np.isnan(row).any() or np.isposinf(row).any()]
    if broken:
        raise OnnxplainError(f"the model's scores for {named_list(broken)} are NaN or infinite: input values far "
                             "outside those it takes, or NaN weights")
    return scores


@dataclass(frozen=True)
class ScoreChoice:
    output: str            # the graph output read as class scores
    kind: str              # "probabilities" | "logits"
    reason: str            # why, in words (inspect shows it)
    logits: str | None     # the pre-softmax tensor, when the graph has one
    raw: str | None = None  # z of probabilities that normalise sigmoid(z) (one-vs-rest): what LRP and gradients explain
    others: tuple[str, ...] = ()  # the other float outputs, where graph order alone chose among them


@dataclass(frozen=True)
class Exposed:
    """Class scores added for an output that is not quite them (see `normalize.expose_probabilities`)."""

    output: str            # the added graph output
    logits: str            # the tensor explained as the classes' logits
    what: str              # what the original output holds, in words
    binary: bool = False   # a binary classifier's [1 - p, p]: its logits are the log-odds [-z, z], not softmax's
    kind: str = "probabilities"   # or "logits": a binary classifier's decision scores, one column per class


def producing_op(producers: dict[str, onnx.NodeProto], name: str) -> onnx.NodeProto | None:
    """The node making tensor `name`, looking through shape-only ops (Softmax -> Reshape from a version converter)."""
    node = producers.get(name)
    while node is not None and node.op_type in SHAPE_ONLY_OPS:
        node = producers.get(node.input[0])
    return node


def class_shaped(proto: onnx.ModelProto, node: onnx.NodeProto, output: onnx.ValueInfoProto) -> bool:
    """Whether probability op `node`, read at graph output `output`, gives one row of class scores per sample: the
    op's own output has its batch axis first (not folded by a Flatten) and one class axis besides it (others of
    size 1, as Caffe's (N, K, 1, 1)), and it normalises along that axis (a softmax over the batch, or over one axis
    of a map such as an attention's, is no class distribution). Where the op's own shape is unknown (no shape
    inference yet), the output's is read, with the axis the exporters write for classes (1 or -1). A sigmoid: an
    (N, K) or (N,) output (one probability per sample)."""
    dims = output.type.tensor_type.shape.dim
    if node.op_type == "Sigmoid":
        return len(dims) in (1, 2)
    opset = default_opset(proto)
    axis = _attribute(node, "axis", 1 if opset < 13 else -1)
    shapes = {v.name: v.type.tensor_type.shape.dim for v in list(proto.graph.value_info) + list(proto.graph.output)
              if v.type.tensor_type.HasField("shape")}
    own = shapes.get(node.output[0])
    if own is None or not own:
        return len(_class_axes(dims)) == 1 and axis in ((1,) if opset < 13 else (1, -1))
    if own[0].dim_value == 1 and not (dims and dims[0].dim_value == 1):
        return False      # the batch folded away before the op (a version converter's Flatten(axis=0))
    classes = _class_axes(own)
    if len(classes) != 1:
        return False
    if opset < 13 and axis == 1:
        return True       # opsets before 13 normalise over all axes from `axis` on: all but the batch
    return axis % len(own) == classes[0]


def score_map(output: onnx.ValueInfoProto) -> tuple[str | None, str]:
    """('3×32×32', '3,072') where an output holds several axes of values per sample (a segmentation net's
    N × C × H × W), read as class scores only flattened; (None, '') for one row of scores."""
    dims = output.type.tensor_type.shape.dim
    if len(_class_axes(dims)) < 2:
        return None, ""
    sizes = [d.dim_value or None for d in dims[1:]]
    count = f"{int(np.prod(sizes)):,}" if None not in sizes else "all its"
    return "×".join(str(size or "?") for size in sizes), count


def _class_axes(dims) -> list[int]:
    """The axes after the batch that are not of size 1 (unknown sizes count)."""
    return [axis for axis in range(1, len(dims)) if dims[axis].dim_value != 1]


def find_scores(proto: onnx.ModelProto, exposed: dict[str, Exposed], chosen: str | None = None) -> ScoreChoice:
    """The class-score output: `chosen` by name, else the first float output a probability op (or a classifier)
    makes, else the first float output in graph order. `exposed` maps an output to the probabilities normalisation
    added for it (a LogSoftmax's exp, a binary sigmoid's two classes); the user names the former."""
    producers = {out: node for node in proto.graph.node for out in node.output}
    added = {e.output for e in exposed.values()}
    floats = [o.name for o in proto.graph.output
              if o.type.tensor_type.elem_type in FLOAT_TYPES and o.name not in added]
    if not floats:
        raise OnnxplainError("no floating-point output to treat as class scores")
    if chosen is not None:
        if chosen not in floats:
            known = {o.name for o in proto.graph.output} - added
            problem = "is not a floating-point output" if chosen in known else "is not an output of this model"
            raise OnnxplainError(f"{chosen!r} {problem}; class scores can come from: {', '.join(floats)}")
        floats = [chosen]
    outputs = {o.name: o for o in proto.graph.output}
    found = next(filter(None, (_classified(proto, outputs[name], producing_op(producers, name), exposed)
                               or _normalised_rows(proto, producers, outputs[name])
                               or _averaged_rows(proto, producers, outputs[name]) for name in floats)), None)
    if found is None:
        name, node = floats[0], producing_op(producers, floats[0])
        why = f"output {name!r} comes from {node.op_type if node is not None else 'the input'}, no softmax after it"
        shape, count = score_map(outputs[name])
        if shape:
            why += (f"; a {shape} map per sample, read flattened as {count} scores (--layer {name} --target C or "
                    "C,Y,X explains one channel's map or one unit)")
        if len(floats) > 1:
            why += f"; the first of the float outputs ({', '.join(floats)}): --scores or scores= picks another"
        found = ScoreChoice(name, "logits", why, name, others=tuple(floats[1:]))
    return replace(found, reason=f"{found.reason}; chosen by name") if chosen is not None else found


def _classified(proto: onnx.ModelProto, output: onnx.ValueInfoProto, node: onnx.NodeProto | None,
                exposed: dict[str, Exposed]) -> ScoreChoice | None:
    """Probabilities (a softmax over classes, those exposed for a LogSoftmax or a binary sigmoid, a classifier's
    post-transform) or a LinearClassifier's raw scores; None for any other op."""
    name = output.name
    if node is None:
        return None
    if name in exposed:
        found = exposed[name]
        return ScoreChoice(found.output, found.kind, f"output {name!r} holds {found.what}, as output {found.output!r}",
                           found.logits)
    if node.op_type in PROBABILITY_OPS and class_shaped(proto, node, output):
        return ScoreChoice(name, "probabilities", f"output {name!r} comes from {node.op_type}", node.input[0])
    if node.op_type in ("TreeEnsembleClassifier", "TreeEnsemble"):
        transform = _transform_name(_attribute(node, "post_transform", b"NONE"))
        what = "vote shares" if transform == "NONE" else f"{transform} post-transform"
        return ScoreChoice(name, "probabilities", f"output {name!r} comes from {node.op_type} ({what})", None)
    if node.op_type == "SVMClassifier":
        platt = bool(_attribute(node, "prob_a", None))
        transform = _transform_name(_attribute(node, "post_transform", b"NONE"))
        if platt or transform in ML_PROBABILITY_TRANSFORMS:
            what = "Platt-scaled probabilities" if platt else f"{transform} post-transform"
            return ScoreChoice(name, "probabilities", f"output {name!r} comes from SVMClassifier ({what})", None)
    if node.op_type in ("LinearClassifier", "Normalizer"):
        transform = _transform_name(_attribute(node, "post_transform", b"NONE"))
        if node.op_type == "Normalizer" or transform in ML_PROBABILITY_TRANSFORMS:
            norm = _attribute(node, "norm", transform.encode()).decode()
            return ScoreChoice(name, "probabilities", f"output {name!r} comes from {node.op_type} ({norm} "
                               "normalisation)", None)
        return ScoreChoice(name, "logits", f"output {name!r} is a LinearClassifier's raw scores", name)
    return None


def _averaged_rows(proto: onnx.ModelProto, producers: dict, output: onnx.ValueInfoProto) -> ScoreChoice | None:
    """Probabilities averaged over models: (P_1 + ... + P_n) / n with each P_i rows normalised as
    `_normalised_rows` reads them (CalibratedClassifierCV's mean over its cross-validation folds). No logit lies
    under an average of normalisations: LRP and the gradients explain the probability itself."""
    node = producing_op(producers, output.name)
    if node is None or node.op_type != "Div" or len(output.type.tensor_type.shape.dim) != 2:
        return None
    total, count = producers.get(node.input[0]), constant_values(proto).get(node.input[1])
    if total is None or total.op_type != "Sum" or count is None or count.size != 1 or \
            float(count.reshape(-1)[0]) != len(total.input):
        return None
    if not all(_normalised_rows(proto, producers, onnx.helper.make_tensor_value_info(name, 1, [None, None]))
               for name in total.input):
        return None
    return ScoreChoice(output.name, "probabilities", f"output {output.name!r} is the mean of {len(total.input)} "
                       "row-normalised probabilities", None)


def _normalised_rows(proto: onnx.ModelProto, producers: dict, output: onnx.ValueInfoProto) -> ScoreChoice | None:
    """Probabilities written out as T / sum(|T|) over the classes (skl2onnx's one-vs-rest normalisations: a
    double-precision binary LogisticRegression, SGDClassifier's log and modified Huber losses, OneVsRestClassifier),
    also with skl2onnx's guard for all-zero rows, (T + g) / (sum(T) + K g); where T is sigmoid(z), LRP and the
    gradients explain z."""
    node = producing_op(producers, output.name)
    if node is None or node.op_type != "Div" or len(output.type.tensor_type.shape.dim) != 2:
        return None
    numerator, total = producers.get(node.input[0]), producers.get(node.input[1])
    shares = {node.input[0]} | ({numerator.input[0]} if numerator is not None and numerator.op_type == "Add" else set())
    if total is not None and total.op_type == "Add":
        total = producers.get(total.input[0])
    constants = constant_values(proto)
    if total is None or total.op_type != "ReduceSum":
        return None
    axes = _attribute(total, "axes", constants.get(total.input[1]) if len(total.input) > 1 else None)
    summed = producers.get(total.input[0])
    shared = summed.input[0] if summed is not None and summed.op_type == "Abs" else total.input[0]
    if axes is None or list(np.reshape(axes, -1)) not in ([1], [-1]) or shared not in shares:
        return None
    return ScoreChoice(output.name, "probabilities", f"output {output.name!r} divides {shared!r} by its sum over the "
                       "classes", None, _sigmoid_argument(producers, constants, shared))


def _sigmoid_argument(producers: dict, constants: dict, name: str) -> str | None:
    """z where tensor `name` is sigmoid(z): a Sigmoid, or 1 / (1 + exp(-z)) written out; else None."""
    node = producing_op(producers, name)
    if node is not None and node.op_type == "Sigmoid":
        return node.input[0]
    chain = [node]
    for op_type in ("Reciprocal", "Add", "Exp"):
        if chain[-1] is None or chain[-1].op_type != op_type:
            return None
        chain.append(producers.get(chain[-1].input[0]))
    negated, one = chain[-1], constants.get(chain[1].input[1])
    if negated is None or one is None or not (one == 1).all():
        return None
    minus_one = constants.get(negated.input[1]) if negated.op_type == "Mul" else None
    if negated.op_type == "Neg" or (minus_one is not None and (minus_one == -1).all()):
        return negated.input[0]
    return None


def constant_values(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The graph's initializers and Constant nodes' tensors, by name."""
    values = {t.name: t for t in proto.graph.initializer}
    values.update({n.output[0]: a.t for n in proto.graph.node if n.op_type == "Constant"
                   for a in n.attribute if a.name == "value"})
    return {name: numpy_helper.to_array(tensor) for name, tensor in values.items()
            if tensor.data_type != TensorProto.STRING}


def _transform_name(value) -> str:
    """A post_transform attribute as its name: text (most ai.onnx.ml ops) or an enum (TreeEnsemble, opset 5)."""
    if isinstance(value, int):
        return ("NONE", "SOFTMAX", "LOGISTIC", "SOFTMAX_ZERO", "PROBIT")[value]
    return value.decode()


def _attribute(node: onnx.NodeProto, name: str, default):
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def classifier_labels(model: onnx.ModelProto, classes: int | None) -> list[str] | None:
    """The class names of the graph's one ai.onnx.ml classifier, or of the one string table an ArrayFeatureExtractor
    picks the predicted label from (skl2onnx's MLPClassifier, SGDClassifier and double-precision exports), when they
    count the score columns. Integer classes give none: a label "1" for column 0 would make `--target 1` mean
    another class than index 1."""
    found = [[v.decode() if isinstance(v, bytes) else str(v) for v in helper.get_attribute_value(a)]
             for node in model.graph.node if node.domain == "ai.onnx.ml" and node.op_type.endswith("Classifier")
             for a in node.attribute if a.name == "classlabels_strings"]
    tables = {t.name: t for t in model.graph.initializer if t.data_type == onnx.TensorProto.STRING}
    found += [[v.decode() for v in tables[node.input[0]].string_data] for node in model.graph.node
              if node.op_type == "ArrayFeatureExtractor" and node.input[0] in tables]
    return found[0] if len(found) == 1 and classes is not None and len(found[0]) == classes else None
