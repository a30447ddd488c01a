"""Composites: which rule each layer gets, by zennit's names and meanings, plus per-node overrides.

| composite                  | first layer            | other convolutions | dense layers | unmerged affine |
| -------------------------- | ---------------------- | ------------------ | ------------ | --------------- |
| epsilon-plus (default)     |                        | z+                 | epsilon      | epsilon         |
| epsilon-gamma-box          | z^B (first conv)       | gamma              | epsilon      | epsilon         |
| epsilon-alpha2-beta1       |                        | alpha2-beta1       | epsilon      | epsilon         |
| epsilon-plus-flat          | flat (first linear)    | z+                 | epsilon      | epsilon         |
| epsilon-alpha2-beta1-flat  | flat (first linear)    | alpha2-beta1       | epsilon      | epsilon         |
| deep-taylor                | z^B, or w^2 if unbounded | z+               | z+           | z+              |
| lrp-0                      |                        | z                  | z            | z               |

Sums and average pooling use the z-rule (zennit's Norm), activations pass relevance, max-pooling routes it to
the winner. Overrides: `{'Conv': 'epsilon', 'conv1*': 'zb'}` by op type or node-name glob; a rule spec is a name
with optional parameters: `epsilon:0.25`, `gamma:0.5`, `alpha2beta1`, `alphabeta:3,2`, `zplus`, `zb`, `w2`, ...
"""
from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass

from ..errors import OnnxplainError
from . import rules


@dataclass(frozen=True)
class Params:
    """Numbers the rules take (zennit's defaults)."""

    epsilon: float = 1e-6
    gamma: float = 0.25
    stabilizer: float = 1e-6


@dataclass(frozen=True)
class Composite:
    conv: str
    dense: str
    affine: str
    first: str | None = None        # rule for the first layer(s)
    first_of: str = "linear"        # 'linear': first conv or dense layer; 'conv': first convolution


COMPOSITES = {
    "epsilon-plus": Composite("zplus", "epsilon", "epsilon"),
    "epsilon-gamma-box": Composite("gamma", "epsilon", "epsilon", first="zb", first_of="conv"),
    "epsilon-alpha2-beta1": Composite("alpha2beta1", "epsilon", "epsilon"),
    "epsilon-plus-flat": Composite("zplus", "epsilon", "epsilon", first="flat"),
    "epsilon-alpha2-beta1-flat": Composite("alpha2beta1", "epsilon", "epsilon", first="flat"),
    "deep-taylor": Composite("zplus", "zplus", "zplus", first="zb-or-w2"),
    "lrp-0": Composite("z", "z", "z"),
}

RULE_NAMES = ("z", "epsilon", "gamma", "alphabeta", "alpha2beta1", "alpha1beta0", "zplus", "zb", "w2", "flat", "pass")
ALIASES = {"lrp-0": "z", "lrp0": "z", "eps": "epsilon", "z+": "zplus", "zbox": "zb", "z^b": "zb", "wsquare": "w2",
           "w^2": "w2", "w²": "w2", "alpha-beta": "alphabeta"}
WEIGHTLESS_OK = {"z", "epsilon", "flat"}  # rules that work on parameter-free maps (pooling)


def make_rule(spec: str, params: Params = Params()) -> rules.Rule:
    """A rule from its spec: 'epsilon', 'epsilon:0.25', 'gamma:0.5', 'alpha2beta1', 'alphabeta:3,2', ..."""
    name, _, args = str(spec).strip().lower().partition(":")
    name = ALIASES.get(name, name)
    try:
        values = [float(v) for v in args.split(",")] if args else []
    except ValueError:
        raise OnnxplainError(f"rule {spec!r}: parameters must be numbers") from None
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise OnnxplainError(f"rule {spec!r}: parameters must be non-negative numbers")
    match = re.fullmatch(r"alpha([\d.]+)beta([\d.]+)", name)
    if match:
        name, values = "alphabeta", [float(match.group(1)), float(match.group(2))]
    try:
        if name == "z":
            return rules.Z(*(values or [params.stabilizer]))
        if name == "epsilon":
            return rules.Epsilon(*(values or [params.epsilon]))
        if name == "gamma":
            return rules.Gamma(*(values or [params.gamma]), stabilizer=params.stabilizer)
        if name == "alphabeta":
            return rules.AlphaBeta(*(values or [2.0, 1.0]), stabilizer=params.stabilizer)
        if name == "zplus":
            return rules.ZPlus(params.stabilizer)
        if name == "zb":
            return rules.ZBox(None, None, params.stabilizer)  # bounds are filled in per batch by the walker
        if name == "w2":
            return rules.WSquare(params.stabilizer)
        if name == "flat":
            return rules.Flat(params.stabilizer)
        if name == "pass":
            return rules.Pass()
    except (TypeError, ValueError) as error:
        raise OnnxplainError(f"rule {spec!r}: {error}") from None
    raise OnnxplainError(f"unknown LRP rule {spec!r}; choose one of {', '.join(RULE_NAMES)}")


def rule_spec(rule: rules.Rule) -> str:
    """The spec `make_rule` reads back as this rule's numbers: 'epsilon:1e-09', 'gamma:0.25', 'alphabeta:2,1', 'zplus'
    (the stabiliser of gamma, alpha-beta, z+, z^B, w^2 and flat is `Params.stabilizer`, reported on its own)."""
    fields = {"z": ("epsilon",), "epsilon": ("epsilon",), "gamma": ("gamma",), "alphabeta": ("alpha", "beta")}
    values = [repr(float(getattr(rule, field))).removesuffix(".0") for field in fields.get(rule.name, ())]
    return rule.name + (":" + ",".join(values) if values else "")


def params_used(applied: list[rules.Rule], params: Params) -> dict[str, float]:
    """The `Params` numbers some applied rule ran with: epsilon by an epsilon rule, gamma by a gamma rule, the
    stabiliser by any other rule that takes one (z's is its epsilon)."""
    used = {}
    for rule in applied:
        if rule.name == "epsilon" and rule.epsilon == params.epsilon:
            used["epsilon"] = params.epsilon
        if rule.name == "gamma" and rule.gamma == params.gamma:
            used["gamma"] = params.gamma
        if getattr(rule, "stabilizer", None if rule.name != "z" else rule.epsilon) == params.stabilizer:
            used["stabilizer"] = params.stabilizer
    return dict(sorted(used.items()))


def _takes(kind: str | None, rule: rules.Rule) -> bool:
    """Whether a node of LRP `kind` can take `rule`: layers any rule, pooling and sums the weightless ones."""
    if kind == "linear":
        return True
    if kind in ("pool", "share"):
        return rule.name in WEIGHTLESS_OK - ({"flat"} if kind == "share" else set())
    return False


def composite_key(name: str) -> str:
    """A composite's name here, given that or zennit's class name (EpsilonPlus is epsilon-plus)."""
    spelled = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", str(name)).lower()
    if spelled not in COMPOSITES:
        raise OnnxplainError(f"unknown composite {name!r}; choose one of {', '.join(COMPOSITES)}")
    return spelled


def composite_named(name: str) -> Composite:
    return COMPOSITES[composite_key(name)]


class RuleMap:
    """Assigns each LRP step its rule: overrides (a glob of the node's name or of a tensor it writes first, then
    its op type), else the composite's."""

    def __init__(self, composite: str = "epsilon-plus", overrides: dict[str, str] | None = None,
                 params: Params = Params(), bounded: bool = True):
        self.name = composite
        self.composite = composite_named(composite)
        self.params = params
        self.bounded = bounded  # whether input bounds are known (deep-taylor then picks z^B over w^2)
        self.overrides = {key: make_rule(spec, params) for key, spec in (overrides or {}).items()}
        self.used: set[str] = set()

    @property
    def uses_box(self) -> bool:
        """Whether some node may take z^B (whose box bounds come from the input's range)."""
        return self.composite.first in ("zb", "zb-or-w2") or any(r.name == "zb" for r in self.overrides.values())

    def rule_for(self, op, first_linear: bool, first_conv: bool) -> rules.Rule | None:
        override = self._override(op)
        kind = op.kind
        if kind == "linear":
            return override or self._default(op.category, first_linear, first_conv)
        if kind in ("pool", "share"):
            if override is not None and not _takes(kind, override):
                raise OnnxplainError(f"rule {override.name} does not apply to {op.op_type} node {op.name!r} "
                                     f"(use z or epsilon)")
            if override is None and first_linear and getattr(op, "offset", False):
                return rules.Pass()   # input-side preprocessing (x - mean): R maps to the same pixel, no bias share
            return override or rules.Z(self.params.stabilizer)
        if override is not None:
            how = "it moves relevance with the values it passes on (max pooling: to each window's winner), no rule " \
                "to choose" if kind == "route" else "it takes no rule"
            raise OnnxplainError(f"rule {override.name} does not apply to {op.op_type} node {op.name!r}: {how}; "
                                 "layers (Conv, Gemm, MatMul, ...), average pooling and sums take rules")
        return None

    def _override(self, op) -> rules.Rule | None:
        names = [op.name] + [name for name in op.node.output if name]   # the node's name or a tensor it writes
        for key, rule in self.overrides.items():
            if key != op.op_type and any(fnmatch.fnmatchcase(name, key) for name in names):
                if key not in names and not _takes(op.kind, rule):
                    continue   # a pattern passes over the nodes its rule cannot take (activations, ...)
                self.used.add(key)
                return rule
        if op.op_type in self.overrides:
            self.used.add(op.op_type)
            return self.overrides[op.op_type]
        return None

    def _default(self, category: str, first_linear: bool, first_conv: bool) -> rules.Rule:
        composite = self.composite
        first = first_conv if composite.first_of == "conv" else first_linear
        if composite.first and first and (category == "conv" or composite.first_of == "linear"):
            spec = composite.first
            if spec == "zb-or-w2":
                spec = "zb" if self.bounded else "w2"
            return make_rule(spec, self.params)
        spec = {"conv": composite.conv, "dense": composite.dense}.get(category, composite.affine)
        return make_rule(spec, self.params)

    def check_used(self) -> None:
        unused = [key for key in self.overrides if key not in self.used]
        if unused:
            raise OnnxplainError(f"--rule {', '.join(unused)} matches no layer, pooling or sum node of this model")
