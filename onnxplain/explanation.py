"""`Explanation`: what every method returns and every renderer and metric takes; `Method`: the calls every method
offers."""
from __future__ import annotations

import functools
import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from .errors import NotFinite, OnnxplainError


def require_model(model) -> None:
    """Methods take a loaded model; a path (Captum habits: the network itself) gets a one-line hint."""
    if not hasattr(model, "check_input"):
        raise OnnxplainError(f"model must be a loaded onnxplain model (onnxplain.load(path)), "
                             f"not {type(model).__name__}")


def relevance_dtype(dtype) -> np.dtype:
    """Relevance takes the float type of the inputs as the model takes them (float64 arrays given to a float32 model
    are converted, so float32), at least float32: a float16 model's relevance too (sums and averages of float16
    values would round to 1e-3), and that of integer inputs (token ids, uint8 images)."""
    return np.promote_types(dtype, np.float32) if np.issubdtype(dtype, np.floating) else np.dtype(np.float32)


PER_INPUT = "_per_input"                   # `<name>_per_input`: each input's own share of batch total `<name>`
BATCH_TOTALS = ("forward_passes", "seconds")  # diagnostics that count over the whole explained batch


def sample_values(values: dict, i: int, n: int) -> dict:
    """Sample i's values out of a batch of n's: lists and arrays of length n are indexed, the rest is shared."""
    return {key: value[i] if isinstance(value, (list, np.ndarray)) and np.ndim(value) and len(value) == n else value
            for key, value in values.items()}


@dataclass
class Explanation:
    """Relevance shaped like the input batch, for the explained output of each sample.

    diagnostics describe the batch: per-sample values are lists or arrays of length N; a count over the batch
    (`BATCH_TOTALS`) is the total, with each input's own share as `<name>_per_input` where it splits exactly
    (prediction difference and occlusion's `forward_passes`). `input_diagnostics(i)` gives one input's."""

    relevance: np.ndarray            # (N, *input_shape)
    target: np.ndarray               # (N,) class index, or -1 for a hidden-tensor target (CDeepEx: the probe class)
    score: np.ndarray                # (N,) the explained output value f(x) (its kind: diagnostics["score_kind"];
                                     # CDeepEx: log-likelihood of the true class minus the probe's)
    method: str
    params: dict = field(default_factory=dict)
    diagnostics: dict = field(default_factory=dict)

    def __post_init__(self):
        """A map with NaN or infinity says nothing: refused in one line naming the inputs (the model's scores at a
        point the method built are not finite: an all-padding mask as integrated gradients' baseline, say)."""
        self.relevance = np.asarray(self.relevance)
        self.target = np.asarray(self.target)
        self.score = np.asarray(self.score, dtype=np.float64)
        if self.relevance.dtype.kind == "f" and not np.isfinite(self.relevance).all():
            raise NotFinite(self.method, np.flatnonzero(~np.isfinite(self.relevance.reshape(len(self.relevance),
                                                                                          -1)).all(axis=1)))

    def input_diagnostics(self, i: int) -> dict:
        """Input i's diagnostics: its per-sample values, its own share of each batch total under the total's name,
        and a total that does not split by input as `batch_<name>` beside `batch_inputs` (the N it covers), so that
        no number for the whole batch reads as the input's own."""
        n, values, own = len(self.relevance), {}, {}
        for key, value in self.diagnostics.items():
            if key.endswith(PER_INPUT):
                own[key[:-len(PER_INPUT)]] = value
            elif key not in BATCH_TOTALS:
                own[key] = value
            elif key + PER_INPUT not in self.diagnostics:
                values.update({f"batch_{key}": value, "batch_inputs": n})
        return {**sample_values(own, i, n), **values}

    def __repr__(self) -> str:
        """One line: arrays by shape, the options, the diagnostics' names (their values can run to pages)."""
        targets = np.unique(self.target).tolist()
        shown = targets if len(targets) <= 5 else f"{len(targets)} classes"
        return (f"Explanation({self.method}, relevance {_short(self.relevance)}, target {shown}, "
                f"params {self.params}, diagnostics [{', '.join(self.diagnostics)}])")


class Method(ABC):
    """An explanation method: parameters in `__init__`, then `explain` (relevance with the explained target, score
    and diagnostics) or Captum-style `attribute` (the relevance alone).

    scikit-learn's convention: each constructor parameter is kept under its own name (LRP's numbers in `numbers`),
    `get_params()` returns them, and assigning one later (`lrp.rules = {...}`) remakes the method through its
    constructor: the new value is checked as at construction, and what was fitted or built for the old one (a
    sampler, a walker) is dropped."""

    name = "method"

    def __init_subclass__(cls, **kwargs):
        """Wrap each constructor so that the outermost one marks the method made (later assignments remake it)."""
        super().__init_subclass__(**kwargs)
        if "__init__" not in cls.__dict__:
            return
        original = cls.__init__

        @functools.wraps(original)
        def init(self, *args, **kwargs):
            original(self, *args, **kwargs)
            if type(self).__init__ is init:
                self.__dict__["_made"] = True

        cls.__init__ = init

    @classmethod
    def parameter_names(cls) -> list[str]:
        return [name for name, parameter in inspect.signature(cls.__init__).parameters.items()
                if name != "self" and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)]

    def get_params(self) -> dict:
        """The constructor's parameters as this method holds them."""
        numbers = getattr(self, "numbers", None)   # LRP's rule numbers (Params)
        missing = object()
        values = {}
        for name in self.parameter_names():
            value = self.__dict__.get(name, missing)
            values[name] = getattr(numbers, name) if value is missing else value
        return values

    def __setattr__(self, name: str, value) -> None:
        if not name.startswith("_") and self.__dict__.get("_made") and name in self.parameter_names():
            remade = type(self)(**(self.get_params() | {name: value}))
            self.__dict__.clear()
            self.__dict__.update(remade.__dict__)
            return
        object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        """Constructor style, with the parameters that differ from their defaults."""
        defaults = inspect.signature(type(self).__init__).parameters
        shown = [f"{name}={_short(value)}" for name, value in self.get_params().items()
                 if not _same(value, defaults[name].default)]
        return f"{type(self).__name__}({', '.join(shown)})"

    @abstractmethod
    def explain(self, model, x: np.ndarray, target=None) -> Explanation:
        """Explain each sample of the batch `x` (default target: its top-1 class)."""

    def attribute(self, model, x: np.ndarray, target=None) -> np.ndarray:
        """Relevance shaped like `x` (what `explain` returns as `relevance`), Captum-style: `target` is a Target, a
        class index or label, or one of those per sample (a list, array or tensor)."""
        from .targets import Target, as_target

        require_model(model)
        if isinstance(target, Target) or np.ndim(target) == 0:
            return self._attribute(model, x, as_target(model, target))
        x = model.check_input(x)
        values = target.tolist() if hasattr(target, "tolist") else list(target)   # numpy arrays, torch tensors
        targets = [as_target(model, t) for t in np.asarray(values, dtype=object).reshape(-1)]
        if len(targets) != len(x):
            raise OnnxplainError(f"{len(targets)} targets for {len(x)} samples: give one target per sample")
        relevance = None
        for chosen in dict.fromkeys(targets):   # each sample's map depends on that sample alone: target by target
            rows = np.flatnonzero([t == chosen for t in targets])
            part = self._attribute(model, x[rows], chosen)
            relevance = np.empty((len(x),) + part.shape[1:], dtype=part.dtype) if relevance is None else relevance
            relevance[rows] = part
        return relevance

    def _attribute(self, model, x: np.ndarray, target) -> np.ndarray:
        return self.explain(model, x, target).relevance


def _same(value, default) -> bool:
    """Whether a parameter holds its default (an empty dict or list kept for a default of None counts)."""
    if value is default or (default is None and isinstance(value, (dict, list, tuple)) and not value):
        return True
    if isinstance(value, np.ndarray) or isinstance(default, np.ndarray) or hasattr(value, "detach"):
        return False
    try:
        return bool(value == default)
    except (TypeError, ValueError):
        return False


def _short(value) -> str:
    """A parameter as the repr shows it: arrays by shape and type, not by their values."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"<{type(value).__name__} {'x'.join(map(str, value.shape))} {value.dtype}>"
    return repr(value)
