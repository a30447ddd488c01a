"""The `lrp` and `deep-taylor` methods: relevance shaped like the input, with a conservation report.

    LRP(composite="epsilon-gamma-box", rules={"Gemm": "epsilon:0.25"}).explain(model, x, Target())
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

import numpy as np
import torch

from ..errors import OnnxplainError
from ..bounds import bounds_source, spec_range_rows
from ..numbers import optional_whole_number, real_number
from ..pixels import integer_reader, real_input
from ..explanation import Explanation, Method, relevance_dtype, require_model
from ..runtime import progress_iter
from ..targets import Target, as_target
from .composites import Params, RuleMap, composite_key, composite_named, make_rule, params_used, rule_spec
from .walker import Result, Walker, no_path_message, relevance_path, ruleless

HISTOGRAM_BINS = 10


class LRP(Method):
    """Layer-wise relevance propagation on the ONNX graph, rules chosen by a zennit-named composite.

    composite: epsilon-plus (default), epsilon-gamma-box, epsilon-alpha2-beta1, epsilon-plus-flat,
    epsilon-alpha2-beta1-flat, deep-taylor, lrp-0 (zennit's class names, EpsilonPlus..., name them too).
    rules: overrides {op type, or a glob of node or tensor names: rule spec}.
    epsilon/gamma/stabilizer: the rules' numbers (zennit's defaults), for the rules that take no number of their own
    (an override 'epsilon:0.25' keeps 0.25). low/high: z^B box bounds of the input (default: the preprocessing
    spec's value range). Relevance starts at the pre-softmax logit. The explanation's params name the rules the
    nodes ran with (`applied_rules`, spec: count) and only those numbers some node used.
    report: `explain` adds the conservation report (a per-layer ledger read during the backward pass) and the
    positivity statistics: 7-12% more time at batch 16 and 24-28% at batch 1 on benchmarks/lrp.py's nets;
    `attribute`, which returns relevance only, computes neither.
    """

    name = "lrp"

    def __init__(self, composite: str = "epsilon-plus", rules: dict[str, str] | None = None, epsilon: float = 1e-6,
                 gamma: float = 0.25, stabilizer: float = 1e-6, low=None, high=None, device: str = "cpu",
                 batch_size: int | None = None, progress: bool = True, report: bool = True):
        composite = composite_key(composite)
        chosen = composite_named(composite)
        self.numbers = Params(*(real_number(field, value, 0) for field, value in
                                (("epsilon", epsilon), ("gamma", gamma), ("stabilizer", stabilizer))))
        overrides = [make_rule(spec, self.numbers) for spec in checked_rules(rules).values()]
        for field, example in (("epsilon", "Gemm=epsilon"), ("gamma", "Conv=gamma")):   # a number no rule reads
            value = getattr(self.numbers, field)
            if value != getattr(Params, field) and field not in (chosen.conv, chosen.dense, chosen.affine) \
                    and not any(rule.name == field and getattr(rule, field) == value for rule in overrides):
                raise OnnxplainError(f"{field} {value:g} would change nothing: composite {composite!r} has no "
                                     f"{field} rule (give one by a rule, e.g. {example})")
        self.composite, self.rules = composite, checked_rules(rules)
        check_box(low, high)
        self.low, self.high = low, high
        self.device, self.progress, self.report = device, progress, report
        self.batch_size = optional_whole_number("batch_size", batch_size, 1)
        self._walker: Walker | None = None  # the last model's, with its plans (explaining it again skips planning)
        self._uses_box = RuleMap(composite, self.rules, self.numbers).uses_box
        if low is not None and not self._uses_box:
            raise OnnxplainError(f"low/high would change nothing: composite {composite!r} has no z^B rule, the only "
                                 "one that reads them (give one by a rule, e.g. rules={'Conv': 'zb'})")

    def walker(self, model, x: np.ndarray) -> Walker:
        """The walker of `model`, kept while the model, and whether the batch `x` has box bounds, stay the same."""
        executor = model.torch(self.device)
        executor.check_shape(x.shape[1:])   # before the walker takes its graph: the check may fall back
        bounded = True   # what z^B and deep Taylor's first layer need; no other rule reads it
        if self.low is None and self._uses_box:
            rows = spec_range_rows(model, x)
            if 0 < rows.sum() < len(rows):
                raise OnnxplainError("this batch mixes inputs inside and outside the range of the spec guessed from "
                                     "the input's shape, so z^B would get a box for some and none for others: "
                                     "explain them apart, or give a preprocessing spec (--preprocess) or low/high")
            bounded = bool(rows.all())
        if self._walker is None or self._walker.executor is not executor or self._walker.rule_map.bounded != bounded:
            rule_map = RuleMap(self.composite, self.rules, self.numbers, bounded=bounded)
            self._walker = Walker(executor, rule_map, self.low, self.high)
        return self._walker

    def explain(self, model, x: np.ndarray, target: Target | None = None) -> Explanation:
        return self._explain(model, x, target, self.report)

    def _walk(self, model, x: np.ndarray, target: Target, report: bool) -> tuple[Walker, list[Result]]:
        """The walker's results batch by batch (with the ledger when `report`)."""
        require_model(model)
        x = real_input(model, model.check_input(x), "LRP needs")   # integer pixels as real numbers
        if self.low is not None:
            check_box_fits(self.low, self.high, x.shape[1:])
        walker = self.walker(model, x)
        size = 1 if model.fixed_batch else (self.batch_size or max(1, walker.executor.batch_size(x.shape[1:]) // 4))
        results = []
        for start in progress_iter(range(0, len(x), size), self.progress and f"{self.name} ({self.composite})",
                               total=-(-len(x) // size)):
            batch = walker.executor.tensor(torch.from_numpy(x[start:start + size]))
            results.append(walker(batch, target, ledger=report))
        return walker, results

    def _explain(self, model, x: np.ndarray, target: Target | None, report: bool) -> Explanation:
        target = as_target(model, target)
        walker, results = self._walk(model, x, target, report)
        relevance = _relevance(results)
        values = np.concatenate([r.values.double().cpu().numpy() for r in results])
        classes = np.concatenate([r.classes for r in results])
        diagnostics = conservation_report(results, relevance, values) if report else {}
        diagnostics.update(positivity(torch.cat([r.relevance for r in results])))
        explained = target.layer or walker.executor.logits_name
        diagnostics.update(composite=self.composite, explained_tensor=explained,
                           score_kind=walker.executor.explained_kind(target))
        applied = [p.rule for p in walker.plan(explained) if p.carries and p.rule is not None]
        options = self.describe(applied)
        if any(rule.name == "zb" for rule in applied):   # where z^B's box came from
            options["box_bounds"] = "low/high" if self.low is not None else bounds_source(model)
        return Explanation(relevance, classes, values, self.name, options, diagnostics)

    def _attribute(self, model, x: np.ndarray, target: Target) -> np.ndarray:
        """Relevance alone: no conservation report, no positivity statistics."""
        return _relevance(self._walk(model, x, target, report=False)[1])

    def describe(self, applied: list) -> dict:
        """The options as applied: composite, overrides, each rule spec the nodes ran with and how often, and the
        numbers some node used."""
        options = {"composite": self.composite, "rules": self.rules}
        counts = Counter(rule_spec(rule) for rule in applied)
        return options | {"applied_rules": dict(sorted(counts.items()))} | params_used(applied, self.numbers)


class DeepTaylor(LRP):
    """Deep Taylor decomposition, training-free relevance model: z^B (w^2 when unbounded) first, z+ elsewhere."""

    name = "deep-taylor"

    def __init__(self, rules: dict[str, str] | None = None, stabilizer: float = 1e-6, low=None, high=None,
                 device: str = "cpu", batch_size: int | None = None, progress: bool = True, report: bool = True):
        super().__init__("deep-taylor", rules, stabilizer=stabilizer, low=low, high=high, device=device,
                         batch_size=batch_size, progress=progress, report=report)

    def describe(self, applied: list) -> dict:
        return {key: value for key, value in super().describe(applied).items() if key != "composite"}


def checked_rules(rules) -> dict[str, str]:
    """`rules` (None or a mapping of str to str) as a dict; anything else is refused here rather than deep in
    the rule map."""
    if rules is None:
        return {}
    if not isinstance(rules, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in rules.items()):
        raise OnnxplainError(f"rules must be a mapping of op type or node-name pattern (str) to rule spec (str), "
                             f"e.g. {{'Conv': 'zplus'}}; got {rules!r}")
    return dict(rules)


def _bound(name: str, value) -> np.ndarray:
    """One z^B bound as a float array of finite numbers, or a user error naming it."""
    try:
        array = np.asarray(value.detach().cpu() if hasattr(value, "detach") else value, dtype=np.float64)
    except (TypeError, ValueError):
        array = None
    if array is None or array.size == 0 or not np.isfinite(array).all():
        raise OnnxplainError(f"{name} must be a finite number or an array of them, not {value!r}")
    return array


def check_box(low, high) -> None:
    """z^B's box bounds: both or neither, finite, broadcasting together, low < high everywhere."""
    if low is None and high is None:
        return
    if low is None or high is None:
        raise OnnxplainError(f"low and high go together (z^B's box): {'low' if low is None else 'high'} is missing")
    low, high = _bound("low", low), _bound("high", high)
    try:
        below = np.all(low < high)
    except ValueError:
        raise OnnxplainError(f"low of shape {low.shape} and high of shape {high.shape} do not broadcast "
                             "together") from None
    if not below:
        raise OnnxplainError("low must be below high everywhere (z^B's box [low, high])")


def check_box_fits(low, high, sample_shape: tuple[int, ...]) -> None:
    """Refuse box bounds that do not broadcast against one input sample (with or without its batch axis)."""
    full = (1, *sample_shape)
    for name, value in (("low", low), ("high", high)):
        shape = np.shape(value.detach().cpu() if hasattr(value, "detach") else value)
        try:
            fits = np.broadcast_shapes(shape, full) == full
        except ValueError:
            fits = False
        if not fits:
            raise OnnxplainError(f"{name} of shape {shape} does not broadcast against one input sample of shape "
                                 f"{sample_shape}: give one number, one per channel (e.g. shape (C, 1, 1)) or the "
                                 "sample's shape")


def _relevance(results: list[Result]) -> np.ndarray:
    """The batches' relevance in `relevance_dtype` of the torch input's (float64 for a float64 model)."""
    relevance = np.concatenate([r.relevance.cpu().numpy() for r in results])
    return relevance.astype(relevance_dtype(relevance.dtype), copy=False)


def conservation_report(results: list[Result], relevance: np.ndarray, values: np.ndarray) -> dict:
    """Per sample: sum of input relevance, bias and stabiliser terms (and, for a model with held inputs, the
    relevance that reached them: `onnxplain.hold`), their error against f(x), per-layer sums."""
    n = len(relevance)
    layers = [[] for _ in range(n)]
    bias, stabiliser = np.zeros(n), np.zeros(n)
    offset = 0
    for result in results:
        rows = len(result.values)
        if result.layers:  # one transfer per batch: (layers, bias / stabiliser / relevance, samples)
            terms = torch.stack([torch.stack((record.bias, record.stabiliser, record.relevance))
                                 for record in result.layers]).cpu().numpy()
            bias[offset:offset + rows] += terms[:, 0].sum(0)
            stabiliser[offset:offset + rows] += terms[:, 1].sum(0)
            for record, (b, s, r) in zip(result.layers, terms.tolist()):
                for i in range(rows):
                    layers[offset + i].append({"node": record.node, "op": record.op, "rule": record.rule,
                                               "relevance": r[i], "bias": b[i], "stabiliser": s[i]})
        offset += rows
    total = relevance.reshape(n, -1).sum(1, dtype=np.float64)
    held = None if results[0].held is None else torch.cat([r.held for r in results]).numpy()
    error = (total + bias + stabiliser + (0 if held is None else held) - values) / np.maximum(np.abs(values), 1e-12)
    report = {"input_relevance": total.tolist(), "bias_relevance": bias.tolist(),
              "stabiliser_relevance": stabiliser.tolist()}
    if held is not None:
        report["held_relevance"] = held.tolist()
    return report | {"conservation_error": error.tolist(), "layers": layers}


def positivity(relevance: torch.Tensor) -> dict:
    """Per sample: the share of negative relevance (of sum |R|) and a histogram of the negative values (scaled
    by max |R|): the deep Taylor paper's diagnostics. Computed where the relevance is (a GPU too), all samples at
    once; bins [a, b) on numpy's edges, the last one closed, as `np.histogram` counts them."""
    flat = relevance.detach().reshape(len(relevance), -1).double()
    magnitude = flat.abs()
    scale = magnitude.amax(1, keepdim=True) if flat.shape[1] else torch.ones_like(flat[:, :1])
    scaled = flat / torch.where(scale > 0, scale, torch.ones_like(scale))
    negative = flat.clamp(max=0).sum(1).abs() / magnitude.sum(1).clamp(min=1e-300)
    edges = np.linspace(-1.0, 0.0, HISTOGRAM_BINS + 1)
    below = torch.stack([(scaled < edge).sum(1) for edge in edges[1:-1].tolist()] + [(flat < 0).sum(1)], 1)
    # values under each upper edge; the last bin holds every negative value (also one whose ratio rounds to -0)
    counts = torch.diff(below, dim=1, prepend=torch.zeros_like(below[:, :1])).cpu().tolist()
    return {"negative_fraction": negative.cpu().tolist(),
            "negative_histogram": [{"edges": edges.round(3).tolist(), "counts": row} for row in counts]}


def unsupported_ops(model) -> list[str]:
    """Ops on the way from the input to the explained logits that LRP cannot pass ([] when it covers them all)."""
    executor = model.torch()
    if executor.graph is None:   # ops outside the registry are named; another problem is the torch run's
        problem = executor.problem or "it does not run through the op registry"
        return [problem if problem.startswith("ops outside") else f"this model's torch run ({problem})"]
    reader = integer_reader(model)
    if reader is not None:
        return [f"the {model.input_dtype} input {model.input_name!r}, which goes into {reader} (LRP needs a "
                "floating-point input, or integer pixels cast to float)"]
    steps = executor.graph.plan([executor.logits_name], (model.input_name,))
    path = relevance_path(steps, executor.logits_name, model.input_name)
    if not path:  # relevance stops at integer data: name those ops
        return (executor.graph.data_cuts(executor.logits_name, model.input_name)
                or [no_path_message(executor.graph, executor.logits_name, model.input_name)])
    return [ruleless(step) for step in steps if id(step) in path and step.op.kind is None]
