"""ai.onnx.ml: Scaler, LinearClassifier (+ its post-transform), Normalizer and ArrayFeatureExtractor.

The executor splits a LinearClassifier into the linear scores and a `PostTransform` node (`split_classifier`),
so relevance starts at the raw, pre-transform score like at a pre-softmax logit. LRP: a dense layer; the
ArrayFeatureExtractor gathers, so its gradient routes relevance.
"""
from __future__ import annotations

import torch
from onnx import helper

from ..lrp import rules
from . import register
from .base import LinearOp, Op

ML = "ai.onnx.ml"
INTERNAL = "onnxplain"  # domain of nodes the executor adds itself


@register("LinearClassifier", domain=ML, opsets=(1, 5))
class LinearClassifier(LinearOp):
    """scores = x @ coefficients^T + intercepts; a single score column with two labels becomes [-s, s]."""

    category = "dense"
    weight_out_axis = 1

    def setup(self):
        labels = self.attr("classlabels_ints") or self.attr("classlabels_strings") or []
        coefficients = torch.tensor(self.attr("coefficients"), dtype=torch.float32)
        intercepts = torch.tensor(self.attr("intercepts", []), dtype=torch.float32)
        classes = max(len(intercepts), 1) if len(intercepts) else len(labels)
        weight = coefficients.reshape(classes, -1).T
        bias = intercepts if len(intercepts) else torch.zeros(classes)
        if classes == 1 and len(labels) == 2:
            weight, bias = torch.cat([-weight, weight], 1), torch.cat([-bias, bias])
        self.weight, self.bias = weight, bias
        self._moved: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}   # (device, dtype) -> (weight, bias)

    def _parameters(self, x) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight and bias on x's device and dtype, copied there once (not at every forward pass)."""
        key = (x.device, x.dtype)
        if key not in self._moved:
            self._moved[key] = (self.weight.to(x), self.bias.to(x))
        return self._moved[key]

    def channel_shape(self, inputs, channels):
        return (channels,)

    def forward(self, x):
        weight, bias = self._parameters(x)
        scores = x @ weight + bias
        if len(self.node.output) > 1 and self.node.output[0]:
            return PostTransform.transform(scores, self.attr("post_transform", "NONE"), self.label_values())
        return scores

    def label_values(self):
        return self.attr("classlabels_ints") or list(range(len(self.attr("classlabels_strings") or [])))

    def layer(self, inputs):
        x = inputs[0]
        return rules.Layer(lambda t, w: t @ w, *self._parameters(x), stack_axes=(-1, 0))


@register("Scaler", domain=ML, opsets=(1, 5))
class Scaler(LinearOp):
    """y = (x - offset) * scale per feature (scikit-learn's StandardScaler, MinMaxScaler, ...). LRP: an affine layer
    under the composite's rule for BatchNormalization-like maps (relevance measured from raw zero: the offset acts
    as a bias and absorbs its share)."""

    category = "affine"

    def forward(self, x):
        factor, shift = self._affine(x)
        return x * factor + shift

    def _affine(self, x) -> tuple[torch.Tensor, torch.Tensor]:
        """(factor, shift) per feature: one value broadcasts to every feature."""
        scale = torch.tensor(self.attr("scale", [1.0]), dtype=x.dtype, device=x.device)
        offset = torch.tensor(self.attr("offset", [0.0]), dtype=x.dtype, device=x.device)
        return scale, -offset * scale

    def layer(self, inputs):
        factor, shift = self._affine(inputs[0])
        features = inputs[0].shape[-1]
        factor, shift = factor.expand(features), shift.expand(features)
        return rules.Layer(lambda t, w: t * w, factor, shift)

    def mergeable(self) -> bool:
        return False


@register("PostTransform", domain=INTERNAL)
class PostTransform(Op):
    """The post-transform of a LinearClassifier (NONE, SOFTMAX, LOGISTIC, SOFTMAX_ZERO, PROBIT) and its labels. LRP:
    NONE (a linear SVM's decision scores) is the identity, which the gradient routes; the others have no rule."""

    kind = None

    def setup(self):
        if self.attr("post_transform") == "NONE":
            self.kind = "route"

    def forward(self, scores):
        return self.transform(scores, self.attr("post_transform"), self.attr("labels"))

    @staticmethod
    def transform(raw, name, labels):
        """(labels, transformed scores); labels come from the raw scores' argmax, as in onnxruntime."""
        if name == "LOGISTIC":
            scores = torch.sigmoid(raw)
        elif name == "SOFTMAX":
            scores = torch.softmax(raw, 1)
        elif name == "SOFTMAX_ZERO":
            nonzero = raw.abs() > 1e-7
            top = raw.max(1, keepdim=True).values
            values = torch.where(nonzero, torch.exp(raw - top), raw * torch.exp(-top))
            total = values.sum(1, keepdim=True)
            scores = torch.where(total == 0, torch.full_like(values, 0.5), values / total)
        elif name == "PROBIT":
            scores = 1.41421356 * _erf_inv(2 * raw - 1)
        elif name == "NONE":
            scores = raw
        else:
            raise ValueError(f"unknown post_transform {name!r}")
        if raw.shape[1] > 1:
            index = raw.argmax(1)
        else:
            index = (scores >= (0 if name == "NONE" else 0.5)).long().reshape(-1)
        table = torch.tensor(labels or list(range(max(raw.shape[1], 2))), dtype=torch.int64, device=raw.device)
        return table[index], scores


def _erf_inv(x):
    """The approximation of erf^-1 onnxruntime uses (Winitzki, a = 0.147), so probits match it."""
    sign = torch.where(x < 0, -1.0, 1.0).to(x)
    log = torch.log((1 - x) * (1 + x))
    v = 2 / (torch.pi * 0.147) + 0.5 * log
    return sign * torch.sqrt(-v + torch.sqrt(v * v - log / 0.147))


@register("Normalizer", domain=ML, opsets=(1, 5))
class Normalizer(Op):
    kind = None

    def forward(self, x):
        norm = self.attr("norm", "MAX")
        if norm == "MAX":
            scale = x.abs().amax(1, keepdim=True)
        elif norm == "L1":
            scale = x.abs().sum(1, keepdim=True)
        else:
            scale = x.square().sum(1, keepdim=True).sqrt()
        return x / scale.clamp(min=1e-30)


@register("ArrayFeatureExtractor", domain=ML, opsets=(1, 5))
class ArrayFeatureExtractor(Op):
    """X[..., Y]: the entries at indices Y (flattened) of the last axis; a 1-D X gives shape (1, len(Y)), as in
    onnxruntime (converters pick class labels or features with it). LRP: a gather (kind 'route')."""

    def forward(self, x, indices):
        picked = x.index_select(x.ndim - 1, indices.reshape(-1).long())
        return picked.reshape(1, -1) if x.ndim == 1 else picked


def split_classifier(node) -> list:
    """LinearClassifier -> [linear scores, PostTransform]: the raw scores become a tensor of their own."""
    if node.op_type != "LinearClassifier" or node.domain != ML or len(node.output) < 2:
        return [node]
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    label, probabilities = node.output[0], node.output[1]
    raw = raw_scores_name(probabilities)
    linear = helper.make_node("LinearClassifier", [node.input[0]], [raw], name=node.name or raw, domain=ML,
                              **{k: v for k, v in attributes.items() if k != "post_transform"})
    extra = {"post_transform": attributes.get("post_transform", b"NONE").decode()}
    labels = attributes.get("classlabels_ints") or list(range(len(attributes.get("classlabels_strings") or [])))
    if labels:
        extra["labels"] = list(labels)
    transform = helper.make_node("PostTransform", [raw], [label, probabilities], name=f"{linear.name}/post_transform",
                                 domain=INTERNAL, **extra)
    return [linear, transform]


def raw_scores_name(probabilities: str) -> str:
    return f"{probabilities}/raw_scores"
