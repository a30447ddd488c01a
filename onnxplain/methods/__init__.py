"""The explanation methods by name. Each is a class (`onnxplain.Method`): parameters in `__init__`, one call
`explain(model, x, target)`, or `attribute(model, x, target)` for the relevance alone.

Methods are imported only when asked for, so a CLI call pays for the one it uses.
"""
from __future__ import annotations

import importlib
import inspect

from ..errors import OnnxplainError, not_applicable

# name -> "module:Class" (module relative to the onnxplain package); one line per method
REGISTRY: dict[str, str] = {}
REGISTRY["occlusion"] = ".methods.occlusion:Occlusion"
REGISTRY["pda"] = ".methods.pda:PredictionDifference"
REGISTRY["gradient"] = ".methods.gradients:Gradient"
REGISTRY["sensitivity"] = ".methods.gradients:Sensitivity"
REGISTRY["gradient-x-input"] = ".methods.gradients:GradientXInput"
REGISTRY["smoothgrad"] = ".methods.gradients:SmoothGrad"
REGISTRY["integrated-gradients"] = ".methods.gradients:IntegratedGradients"
REGISTRY["lrp"] = ".lrp.method:LRP"
REGISTRY["deep-taylor"] = ".lrp.method:DeepTaylor"


def method_names() -> list[str]:
    return sorted(REGISTRY)


def method_class(name: str):
    if name not in REGISTRY:
        raise OnnxplainError(f"unknown method {name!r}; choose one of {', '.join(method_names())}")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module, "onnxplain"), cls)


def make_method(name: str, **params):
    """The method `name` built with `params`; an option it does not take is a user error that names it."""
    cls = method_class(name)
    accepted = inspect.signature(cls.__init__).parameters
    unknown = [key for key in params if key not in accepted]
    if unknown:
        raise not_applicable(["--" + key.replace("_", "-") for key in unknown], f"--method {name}")
    return cls(**params)
