"""The graph the torch executor runs: registry ops in topological order, with constant subgraphs folded.

Everything computable from initializers and Constant nodes alone (shape arithmetic, Unsqueeze of weights, ...)
is computed once here; `Shape` of a run-time tensor stays a (cheap) run-time step.
"""
from __future__ import annotations

from dataclasses import dataclass

import onnx
import torch
from onnx import numpy_helper

from . import op_class
from .base import Op
from .ml import split_classifier


@dataclass
class Step:
    """One node to run: its op (None when the registry lacks it) and its tensor names ('' = absent)."""

    op: Op | None
    inputs: list[str]
    outputs: list[str]
    node: onnx.NodeProto

    @property
    def label(self) -> str:
        return f"{self.node.op_type} ({self.node.name or self.node.output[0]})"


class Graph:
    """Steps, constants and the plan of steps needed for a set of outputs."""

    def __init__(self, proto: onnx.ModelProto, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.opsets = {("" if o.domain == "ai.onnx" else o.domain): o.version for o in proto.opset_import}
        self.opsets.setdefault("onnxplain", 1)
        self.constants: dict[str, torch.Tensor] = {}
        for tensor in proto.graph.initializer:
            if tensor.data_type == onnx.TensorProto.STRING:   # class names: torch has no strings, scores need none
                continue
            array = numpy_helper.to_array(tensor)
            array = array if array.flags.writeable else array.copy()
            self.constants[tensor.name] = torch.from_numpy(array).to(self.device)
        self.steps: list[Step] = []
        nodes = [part for node in _topological(proto.graph) for part in split_classifier(node)]
        for node in nodes:
            self._add(node)
        self.producers = {name: step for step in self.steps for name in step.outputs if name}
        ops = {name: step.op for name, step in self.producers.items() if step.op is not None}
        for step in self.steps:
            if step.op is not None:
                step.op.link(ops)
        self._plans: dict[tuple, list[Step]] = {}
        self._releases: dict[tuple, list[tuple[str, ...]]] = {}

    def _add(self, node: onnx.NodeProto) -> None:
        cls = op_class(node.domain, node.op_type, self.opsets.get(node.domain, self.opsets.get("", 0)))
        inputs, outputs = list(node.input), list(node.output)
        if cls is None:
            self.steps.append(Step(None, inputs, outputs, node))
            return
        known = {i: self.constants[name] for i, name in enumerate(inputs) if name in self.constants}
        op = cls(node, self.opsets.get(node.domain, 0), known)
        present = [name for name in inputs if name]
        if all(name in self.constants for name in present):
            with torch.no_grad():
                values = op.forward(*[self.constants[name] if name else None for name in inputs])
            for name, value in zip(outputs, values if isinstance(values, tuple) else (values,)):
                if name:
                    self.constants[name] = value.to(self.device)
            return
        self.steps.append(Step(op, inputs, outputs, node))

    def plan(self, outputs: list[str], fed: tuple[str, ...]) -> list[Step]:
        """The steps that compute `outputs` from the tensors in `fed`, in order."""
        key = (tuple(outputs), tuple(sorted(fed)))
        if key not in self._plans:
            needed = {name for name in outputs if name not in fed and name not in self.constants}
            chosen = []
            for step in reversed(self.steps):
                if any(name in needed for name in step.outputs):
                    chosen.append(step)
                    needed.update(n for n in step.inputs if n and n not in fed and n not in self.constants)
            self._plans[key] = chosen[::-1]
        return self._plans[key]

    def data_cuts(self, name: str, source: str) -> list[str] | None:
        """None where a gradient reaches tensor `name` from `source`; else the integer or boolean data ops (ArgMin,
        Round, a comparison) that every way between them passes through, which stop it."""
        smooth, cuts = {source}, []
        for step in self.plan([name], (source,)):
            if not any(n in smooth for n in step.inputs if n):
                continue
            if step.op is not None and step.op.kind == "data":
                cuts.append(step.label)
            else:
                smooth.update(n for n in step.outputs if n)
        return None if name in smooth else cuts

    def missing(self, outputs: list[str], fed: tuple[str, ...]) -> list[str]:
        """Nodes the registry lacks among those needed for `outputs`."""
        return [step.label for step in self.plan(outputs, fed) if step.op is None]

    def releases(self, outputs: list[str], fed: tuple[str, ...]) -> list[tuple[str, ...]]:
        """Per step of the plan, the computed tensors no later step reads (dropped after it, so that a large
        batch holds only its live activations; autograd keeps what it saved)."""
        key = (tuple(outputs), tuple(sorted(fed)))
        if key not in self._releases:
            steps, kept = self.plan(outputs, fed), set(outputs) | set(fed) | set(self.constants)
            last = {name: i for i, step in enumerate(steps) for name in step.inputs + step.outputs if name}
            dropped = [[] for _ in steps]
            for name, i in last.items():
                if name not in kept:
                    dropped[i].append(name)
            self._releases[key] = [tuple(names) for names in dropped]
        return self._releases[key]

    def run(self, feeds: dict[str, torch.Tensor], outputs: list[str]) -> dict[str, torch.Tensor]:
        env = dict(self.constants)
        env.update(feeds)
        fed = tuple(feeds)
        for step, dropped in zip(self.plan(outputs, fed), self.releases(outputs, fed)):
            if step.op is None:
                raise KeyError(f"no torch forward for {step.label}")
            values = step.op.forward(*[env[name] if name else None for name in step.inputs])
            for name, value in zip(step.outputs, values if isinstance(values, tuple) else (values,)):
                if name:
                    env[name] = value
            for name in dropped:
                env.pop(name, None)
        return {name: env[name] for name in outputs}


def _topological(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Nodes in an order where every input is computed first (ONNX requires it; old exporters sometimes slip)."""
    available = {t.name for t in graph.initializer} | {i.name for i in graph.input} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        waiting = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                waiting.append(node)
        if len(waiting) == len(pending):
            return ordered + waiting  # a cycle or a dangling input: left for the runner to report
        pending = waiting
    return ordered
