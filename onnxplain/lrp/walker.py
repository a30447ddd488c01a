"""The walker: runs the executor's graph in LRP mode and reads relevance off one autograd backward pass.

Each step runs its op's `relevance` (the op registry says how relevance crosses it; rules handle the layers),
so outputs keep their true values while their gradient map is the relevance map. Seeding the backward pass
with f(x) at the explained unit gives the input relevance; tensor hooks collect the conservation ledger, summed
per sample along each tensor's sample axis (`layout`). Steps off the paths relevance takes (a gate's branch,
integer data: `relevance_path`) run as constants.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..bounds import input_bounds, spec_range_rows
from ..errors import OnnxplainError, named_list
from ..ops.graph import Step
from ..targets import Target, channels_first
from . import relevance, rules
from .canonizers import merge_affine
from .composites import RuleMap
from .layout import by_sample, probe_sample_axes, shape_sample_axes


@dataclass
class LayerRecord:
    node: str
    op: str
    rule: str
    relevance: torch.Tensor      # (N,) relevance the node received (at its output)
    bias: torch.Tensor           # (N,) absorbed by its bias / constants
    stabiliser: torch.Tensor     # (N,) absorbed by stabilisers (and outputs no rule could pass on)


@dataclass
class Result:
    relevance: torch.Tensor      # like x
    values: torch.Tensor         # (N,) f(x)
    classes: np.ndarray          # (N,) class or -1
    layers: list[LayerRecord] = field(default_factory=list)
    held: torch.Tensor | None = None   # (N,) relevance reaching the held inputs (`onnxplain.hold`), when any


@dataclass
class PlannedStep:
    step: Step
    rule: rules.Rule | None
    carries: bool = True   # on a path of relevance from the explained tensor to the input (else run as a constant)


class Walker:
    """LRP for one executor (registry graph) and one rule map; plans are cached per explained tensor."""

    def __init__(self, executor, rule_map: RuleMap, low=None, high=None):
        if executor.graph is None:
            raise OnnxplainError(f"LRP needs the op registry; this model runs through onnx2torch ({executor.problem})")
        self.executor, self.graph, self.model = executor, executor.graph, executor.model
        self.rule_map = rule_map
        self.low, self.high = low, high
        self._plans: dict[str, list[PlannedStep]] = {}
        self.held = held_tensors(self.graph.steps, self.model.held, self.graph.constants)
        self._batch_axes: dict[tuple, dict[str, tuple[int, int]] | None] = {}  # (start, sample shape) -> axes

    # ---------------------------------------------------------------- planning
    def plan(self, start: str) -> list[PlannedStep]:
        if start not in self._plans:
            steps = self.graph.plan([start], (self.model.input_name,))
            steps = merge_affine(steps, {start}, tensor_ranks(self.model.proto))
            carrying = relevance_path(steps, start, self.model.input_name)
            if not carrying:
                raise OnnxplainError(no_path_message(self.graph, start, self.model.input_name))
            planned = self._assign(steps, carrying)
            blocked = [ruleless(step) for step in steps if id(step) in carrying and step.op.kind is None]
            if blocked:
                raise OnnxplainError(f"LRP cannot pass {named_list(blocked, 6, '; ')}: no relevance rule for "
                                     f"{'this op' if len(blocked) == 1 else 'these ops'} here")
            self._plans[start] = planned
            self.rule_map.check_used()
        return self._plans[start]

    def _assign(self, steps: list[Step], carrying: set[int]) -> list[PlannedStep]:
        """Rules for the steps relevance crosses (`carrying`); 'first' layers are those with no conv/dense layer
        upstream."""
        after_linear, after_conv = {self.model.input_name: False}, {self.model.input_name: False}
        nonnegative: set[str] = set()
        planned = []
        for step in steps:
            inputs = [n for n in step.inputs if n]
            up_linear = any(after_linear.get(n, False) for n in inputs)
            up_conv = any(after_conv.get(n, False) for n in inputs)
            op = step.op
            if op is None:
                raise OnnxplainError(f"no torch forward for {step.label}")
            carries = id(step) in carrying
            rule = self.rule_map.rule_for(op, not up_linear, not up_conv) if carries and op.kind else None
            if isinstance(rule, rules.ZBox) and up_linear:   # the input's box says nothing of a hidden layer's
                raise OnnxplainError(f"z^B needs box bounds of its input: it applies to first layers (no conv or "
                                     f"dense layer before them), not to {step.label}")
            is_layer = op.kind == "linear" and op.category in ("conv", "dense")
            for name in step.outputs:
                after_linear[name] = up_linear or is_layer
                after_conv[name] = up_conv or (is_layer and op.category == "conv")
            if _keeps_sign(op.op_type, step.inputs, nonnegative):
                nonnegative.update(n for n in step.outputs if n)
            if rule is not None and step.inputs and step.inputs[op.data_input] in nonnegative:
                rule = rule.for_nonnegative_input()
            planned.append(PlannedStep(step, rule, carries))
        return planned

    # ---------------------------------------------------------------- running
    def __call__(self, x: torch.Tensor, target: Target, ledger: bool = True) -> Result:
        """Relevance for the batch x; with `ledger`, the conservation ledger per sample, each layer's terms summed
        along the axis that holds its samples. Where a layer's tensor has no such axis, the batch goes one sample at
        a time (for a hidden target, also without the ledger); a hidden target must hold its samples first."""
        start = target.layer if target.hidden else self.executor.logits_name
        if len(x) == 1 or not (ledger or target.hidden):
            return self._walk(x, target, ledger)
        axes = self._layout(x, start)
        if target.hidden and axes is not None and axes.get(start, (0, 1)) != (0, 1):
            raise OnnxplainError(f"tensor {start!r} does not hold the batch on its first axis (it holds the samples "
                                 f"along axis {axes[start][0]}): it cannot be a target")
        if axes is None:
            return merged([self._walk(x[i:i + 1], target, ledger) for i in range(len(x))])
        return self._walk(x, target, ledger, axes)

    def _layout(self, x: torch.Tensor, start: str) -> dict[str, tuple[int, int]] | None:
        """The sample axes for inputs shaped like x's samples (a fold of tokens and samples depends on the token
        count): read off the shapes where they say it, else probed; cached."""
        key = (start, tuple(x.shape[1:]))
        if key not in self._batch_axes:
            axes = shape_sample_axes(self.model.proto, self.model.input_name, self.plan(start))
            axes = axes if axes is not None else self._sample_axes(x, start)
            self._batch_axes[key] = self._with_held_axes(axes, x, start) if axes is not None and self.held else axes
        return self._batch_axes[key]

    def _with_held_axes(self, axes: dict[str, tuple[int, int]], x: torch.Tensor, start: str):
        """`axes` and those of the held tensors relevance may reach (the ledger's held term sums each per sample),
        probed; None (one sample at a time) where one has none: a value held whole is shared by the batch, and
        what reaches it cannot be told apart by sample."""
        leaves = sorted({planned.step.inputs[i] for planned in self.plan(start) if planned.carries
                         for i in planned.step.op.relevance_inputs()
                         if i < len(planned.step.inputs) and planned.step.inputs[i] in self.held})
        if not leaves:
            return axes
        found = probe_sample_axes(self.graph, self.model.input_name, leaves, x)
        return None if found is None or len(found) < len(leaves) else {**axes, **found}

    def _sample_axes(self, x: torch.Tensor, start: str) -> dict[str, tuple[int, int]] | None:
        """The sample axes of the tensors relevance crosses, probed (`layout.probe_sample_axes`)."""
        names = [p.step.outputs[0] for p in self.plan(start) if p.carries and p.step.outputs[0]]
        return probe_sample_axes(self.graph, self.model.input_name, names, x)

    def _walk(self, x: torch.Tensor, target: Target, ledger: bool,
              axes: dict[str, tuple[int, int]] | None = None) -> Result:
        start = target.layer if target.hidden else self.executor.logits_name
        x = x.detach().requires_grad_(True)
        env = dict(self.graph.constants)
        env[self.model.input_name] = x
        records: list[LayerRecord] = []
        leaves: dict[str, torch.Tensor] = {}   # held tensors where relevance reaches them, as leaves of their own
        for planned in self.plan(start):
            step = planned.step
            inputs = [env[name] if name else None for name in step.inputs]
            carries = planned.carries and any(isinstance(t, torch.Tensor) and t.requires_grad for t in inputs)
            if carries and self.held:
                self._held_leaves(step, inputs, env, leaves)
            if not carries:
                with torch.no_grad():
                    outputs, leak = step.op.forward(*inputs), None
            else:   # plan() refused any carrying step without a rule
                try:
                    outputs, leak = step.op.relevance(inputs, self._bounded(planned, x))
                except ValueError as error:  # a rule that cannot apply to this layer
                    raise OnnxplainError(f"{step.label}: {error}") from None
            outputs = outputs if isinstance(outputs, tuple) else (outputs,)
            for name, value in zip(step.outputs, outputs):
                if name:
                    env[name] = value
            if ledger and leak is not None and outputs[0].requires_grad:
                axis = (axes or {}).get(step.outputs[0], (0, 1))
                outputs[0].register_hook(self._recorder(records, planned, leak, len(x), *axis))
        values, classes = self.executor.explained(env[start], x, target)
        seed = seed_relevance(env[start], values, classes, target)
        relevance, *at_held = torch.autograd.grad(env[start], [x, *leaves.values()], seed, allow_unused=True)
        records.reverse()  # hooks fire from the output down; report in graph order
        held = held_sums(dict(zip(leaves, at_held)), len(x), axes or {}) if self.held and ledger else None
        return Result(relevance.detach(), values.detach(), classes, records, held)

    def _held_leaves(self, step: Step, inputs: list, env: dict, leaves: dict) -> None:
        """The held tensors a carrying step passes relevance to become leaves (in `inputs`, `env` and `leaves`):
        what reaches them is read off the backward pass as the held inputs' relevance, not lost as a constant's."""
        for i in step.op.relevance_inputs():
            name = step.inputs[i] if i < len(step.inputs) else ""
            value = inputs[i] if name else None
            if name in self.held and isinstance(value, torch.Tensor) and not value.requires_grad \
                    and value.is_floating_point():
                inputs[i] = env[name] = leaves[name] = value.detach().requires_grad_(True)

    def _bounded(self, planned: PlannedStep, x: torch.Tensor) -> rules.Rule | None:
        """The step's rule, with z^B's box bounds for this batch filled in."""
        rule = planned.rule
        if not isinstance(rule, rules.ZBox) or rule.low is not None:
            return rule
        low, high = self.bounds(planned.step.inputs[planned.step.op.data_input], x)
        return rules.ZBox(low, high, rule.stabilizer)

    def bounds(self, name: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Box bounds of tensor `name`: the input's (given low/high, else the spec's), carried through the steps
        before it (a normalisation inside the model, say)."""
        if self.low is not None and self.high is not None:
            low, high = (torch.as_tensor(b, dtype=x.dtype, device=x.device) for b in (self.low, self.high))
        else:
            bounds = input_bounds(self.model, tuple(x.shape))
            if bounds is None or not spec_range_rows(self.model, x).all():
                guessed = " (the inputs lie outside the range of the spec guessed from the input's shape)" \
                    if self.model.preprocess_source == "guessed" else ""
                raise OnnxplainError(f"the z^B rule needs input bounds{guessed}: give the model a preprocessing "
                                     "spec (--preprocess) or low/high, or use w2 for unbounded inputs")
            low, high = (torch.as_tensor(b, dtype=x.dtype, device=x.device) for b in bounds)
        if name == self.model.input_name:
            return low, high
        with torch.no_grad():
            at_low = self.graph.run({self.model.input_name: low.expand(x.shape)}, [name])[name]
            at_high = self.graph.run({self.model.input_name: high.expand(x.shape)}, [name])[name]
        return torch.minimum(at_low, at_high), torch.maximum(at_low, at_high)

    @staticmethod
    def _recorder(records: list, planned: PlannedStep, leak: relevance.Leak, samples: int, axis: int, outer: int):
        def record(grad):
            bias, stabiliser = leak.terms(grad, axis)
            rule = planned.rule.name if planned.rule is not None else planned.step.op.kind
            sums = (relevance.per_sample(grad, axis), bias, stabiliser)
            records.append(LayerRecord(planned.step.op.name, planned.step.op.op_type, rule,
                                       *(by_sample(s, samples, outer) for s in sums)))
        return record


def merged(results: list[Result]) -> Result:
    """One result from results of consecutive parts of a batch (same plan, so the same layers in order)."""
    layers = [LayerRecord(first.node, first.op, first.rule,
                          *(torch.cat([getattr(r.layers[i], name) for r in results])
                            for name in ("relevance", "bias", "stabiliser")))
              for i, first in enumerate(results[0].layers)]
    held = None if results[0].held is None else torch.cat([r.held for r in results])
    return Result(torch.cat([r.relevance for r in results]), torch.cat([r.values for r in results]),
                  np.concatenate([r.classes for r in results]), layers, held)


def relevance_path(steps: list[Step], start: str, source: str) -> set[int]:
    """ids of the steps relevance crosses from `start` down to `source`: a step whose output receives relevance
    and whose relevance inputs (`Op.relevance_inputs`) depend on `source`. The others (integer data, what feeds
    only a gate) run as constants. Empty when no relevance reaches `source`."""
    depends = {source} | {name for step in fed_by(steps, source) for name in step.outputs if name}
    receiving, path = {start}, set()
    for step in reversed(steps):
        if step.op is None or not any(name in receiving for name in step.outputs if name):
            continue
        inputs = [step.inputs[i] for i in step.op.relevance_inputs() if i < len(step.inputs)]
        inputs = [name for name in inputs if name in depends]
        if inputs:
            path.add(id(step))
            receiving.update(inputs)
    return path if source in receiving else set()


def ruleless(step: Step) -> str:
    """A step LRP cannot pass, named, with why where it is not the op type itself."""
    two_activations = (step.op.op_type in ("MatMul", "Gemm", "Einsum", "Mul") and not step.op.constants
                       and len([name for name in step.inputs if name]) > 1)
    return f"{step.label}, a product of two activations" if two_activations else step.label


def fed_by(steps: list[Step], source: str) -> list[Step]:
    """The steps whose values depend on tensor `source`, in order: not through integer data (a shape, a comparison:
    `Op.kind` 'data'), which carries no relevance (what is computed from x's shape alone runs as a constant)."""
    depends, fed = {source}, []
    for step in steps:
        if (step.op is None or step.op.kind != "data") and any(name in depends for name in step.inputs if name):
            depends.update(name for name in step.outputs if name)
            fed.append(step)
    return fed


def held_sums(grads: dict[str, torch.Tensor | None], samples: int, axes: dict) -> torch.Tensor:
    """(N,) relevance that reached the held tensors (their gradients `grads`), summed per sample along each one's
    sample axis."""
    total = torch.zeros(samples, dtype=torch.float64)
    for name, grad in grads.items():
        if grad is not None:
            total = total + by_sample(relevance.per_sample(grad, axes.get(name, (0, 1))[0]), samples,
                                      axes.get(name, (0, 1))[1]).cpu()
    return total


def held_tensors(steps: list[Step], held, constants) -> set[str]:
    """The tensors computed from the held inputs (`onnxplain.hold`: each named as its input, a step's output) and
    constants alone: a step that also reads anything else of x (Floor(x) + held) makes no held tensor."""
    names = set(held)
    for step in steps:
        present = [name for name in step.inputs if name]
        if any(name in names for name in present) and all(name in names or name in constants for name in present):
            names.update(name for name in step.outputs if name)
    return names if held else set()


def no_path_message(graph, start: str, source: str) -> str:
    """Why no relevance reaches `source` from `start`, naming the integer or boolean data ops (Round, Greater,
    ArgMax, ...) that cut every way between them (`Graph.data_cuts`)."""
    cuts = graph.data_cuts(start, source)
    through = f": its way passes only through integer or boolean data ({named_list(cuts, 6, '; ')})" if cuts else ""
    return f"no relevance reaches the input from {start}{through}"


NONNEGATIVE_OUTPUT = {"Relu", "Sigmoid", "Softmax"}
SIGN_KEEPING = {"MaxPool", "GlobalMaxPool", "AveragePool", "GlobalAveragePool", "Reshape", "Flatten", "Squeeze",
                "Unsqueeze", "Transpose", "Slice", "Split", "Identity", "Dropout"}  # >= 0 in, >= 0 out (data input 0)


def _keeps_sign(op_type: str, inputs: list[str], nonnegative: set[str]) -> bool:
    """Whether a step's outputs are >= 0 for every input: a non-negative activation, or a sign-keeping op
    (pooling, reshapes, slices; Concat with all operands) of tensors already known to be >= 0."""
    if op_type in NONNEGATIVE_OUTPUT:
        return True
    if op_type == "Concat":
        return all(name in nonnegative for name in inputs if name)
    return op_type in SIGN_KEEPING and bool(inputs) and inputs[0] in nonnegative


def seed_relevance(start: torch.Tensor, values: torch.Tensor, classes: np.ndarray, target: Target) -> torch.Tensor:
    """Relevance at the explained tensor: f(x) on the explained unit(s), zero elsewhere."""
    seed = torch.zeros_like(start)
    n = len(start)
    if not target.hidden:
        flat = seed.reshape(n, -1)
        index = torch.as_tensor(classes, device=seed.device)
        flat[torch.arange(n, device=seed.device), index] = values.detach().to(seed.dtype)
        return flat.reshape(start.shape)
    view, start = channels_first(seed, target), channels_first(start.detach(), target)   # seed written through view
    if target.unit is not None:
        view[(slice(None),) + tuple(target.unit)] = start[(slice(None),) + tuple(target.unit)]
        return seed
    channel = start[:, target.index]
    view[:, target.index] = channel / max(channel[0].numel(), 1)
    return seed


def tensor_ranks(proto) -> dict[str, int]:
    """Ranks of the tensors shape inference knows."""
    values = list(proto.graph.input) + list(proto.graph.value_info) + list(proto.graph.output)
    return {v.name: len(v.type.tensor_type.shape.dim) for v in values if v.type.tensor_type.HasField("shape")}
