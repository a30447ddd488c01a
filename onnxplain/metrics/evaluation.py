"""Scoring several explanation methods on one set of inputs: region-perturbation AOPC and APEM side by side.

`Evaluation(...).run(model, x, methods, labels)` explains the top-1 class of each input with each method, then
measures every map with the same noise, the same loss gradient and the same shuffles, and returns an
`EvaluationReport` (summary table, per-image values, pairwise comparison, correlation with the loss).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import OnnxplainError
from ..numbers import seed_number, whole_number
from ..scores import finite_scores, softmax
from ..targets import Target
from .apem import APEM, APEMResult, check_classes, stage_maps
from .compare import logits_loss, loss_correlation, pairwise
from .layout import InputLayout, checked_relevance
from .perturbation import aopc, checked_region, effective_steps, region_perturbation, tracked_score

METRICS = ("aopc", "apem")


@dataclass
class MethodResult:
    """One method's maps measured: AOPC per image for each order, curves, and APEM."""

    name: str
    seconds: float
    curves: dict[str, np.ndarray] = field(default_factory=dict)   # order -> (N, L+1)
    apem: APEMResult | None = None

    def aopc(self, order: str) -> np.ndarray | None:
        return aopc(self.curves[order], per_image=True) if order in self.curves else None


@dataclass
class EvaluationReport:
    """Everything an evaluation measured, with its settings; rendering lives in `report.py` and `plots.py`."""

    inputs: list[str]
    classes: np.ndarray                 # explained (top-1) class per input
    confidence: np.ndarray              # top-1 probability per input
    methods: list[MethodResult]
    random_curves: np.ndarray | None    # AOPC baseline: regions in random order (method-independent)
    settings: dict
    labels: np.ndarray | None = None
    loss: np.ndarray | None = None

    def apem_scores(self) -> dict[str, np.ndarray]:
        """Per-image APEM per method, NaN where censored (left out of the comparisons and correlations)."""
        return {m.name: np.where(m.apem.censored, np.nan, m.apem.scores) for m in self.methods if m.apem is not None}

    def pairwise(self):
        scores = self.apem_scores()
        return pairwise(scores) if len(scores) > 1 else []

    def correlations(self) -> dict[str, tuple[float, float]]:
        """Spearman (rho, p) of per-image APEM with the loss per method, and of the confidence (§5.4)."""
        if self.loss is None:
            return {}
        table = {name: loss_correlation(values, self.loss) for name, values in self.apem_scores().items()}
        table["confidence"] = loss_correlation(self.confidence, self.loss)
        return table

    @property
    def accuracy(self) -> float | None:
        return None if self.labels is None else float(np.mean(self.classes == self.labels))


class Evaluation:
    """Settings shared by every method's measurement.

    metrics: any of 'aopc', 'apem'. region, steps, score: region perturbation (see `region_perturbation`).
    stage, epsilon_step, max_steps, shuffles: APEM (see `APEM`); shuffled maps are also scored as a baseline.
    device: the torch device of APEM's loss gradient (the methods take their own).
    """

    def __init__(self, metrics=METRICS, *, region: int | None = None, steps: int = 100, score: str = "logit",
                 stage: int = 2, epsilon_step: float = 1.0, max_steps: int = 100_000, shuffles: int = 10,
                 seed: int = 0, device: str = "cpu", progress: bool = True):
        metrics = [metrics] if isinstance(metrics, str) else list(metrics)
        unknown = [m for m in metrics if m not in METRICS]
        if unknown or not metrics:
            raise OnnxplainError(f"unknown metric(s) {', '.join(unknown) or '(none)'}; "
                                 f"choose from {', '.join(METRICS)}")
        if len(set(metrics)) < len(metrics):
            raise OnnxplainError(f"metrics listed more than once: {', '.join(metrics)}")
        self.metrics = tuple(metrics)
        region = None if region is None else whole_number("region", region, 1)
        self.perturbation = {"region": region, "steps": whole_number("steps", steps, 1), "score": score,
                             "seed": seed_number(seed)}
        self.apem = APEM(stage=stage, step=epsilon_step, max_steps=max_steps, shuffles=shuffles,
                         baseline=shuffles > 0, seed=seed, device=device, progress=progress)
        self.progress = progress

    def run(self, model, x: np.ndarray, methods, labels=None, inputs: list[str] | None = None) -> EvaluationReport:
        """methods: {name: a Method, or any object with explain(model, x, target)}, or a list of methods named by
        their `name`; labels: true class per input, an index or a class name (optional). A method's time is that
        of its relevance alone (`attribute`: no diagnostics such as LRP's conservation report)."""
        methods = _named_methods(methods)
        x = model.check_input(x)
        scores, logits = _scores_and_logits(model, x)   # the one forward pass over the inputs: every use below
        finite_scores(scores, inputs or [f"input {i}" for i in range(len(x))])
        if "apem" in self.metrics:
            check_classes(scores)
        classes = np.argmax(scores, axis=1)
        probabilities = _probabilities(model, scores)
        labels = None if labels is None else _checked_labels(model, labels, len(x), scores.shape[1])
        sign = self.apem.sign(model, x, classes, None) if "apem" in self.metrics else None
        settings = self._settings(model, x)
        results = []
        for name, method in methods.items():
            start = time.perf_counter()
            relevance = checked_relevance(_relevance(method, model, x), x, f"{name}'s relevance")
            result = MethodResult(name, time.perf_counter() - start)
            if "aopc" in self.metrics:
                for order in ("morf", "lerf"):
                    result.curves[order] = region_perturbation(model, x, relevance, classes, order=order,
                                                               progress=self.progress, scores=scores,
                                                               **self.perturbation)
            if "apem" in self.metrics:
                result.apem = self._apem(model, x, relevance, classes, sign)
            results.append(result)
        random_curves = None
        if "aopc" in self.metrics:  # regions in random order: relevance is ignored
            random_curves = region_perturbation(model, x, np.zeros_like(x), classes, order="random",
                                                progress=self.progress, scores=scores, **self.perturbation)
        return EvaluationReport(inputs or [str(i) for i in range(len(x))], classes, probabilities, results,
                                random_curves, settings, labels,
                                None if labels is None else logits_loss(model, logits, labels))

    def _settings(self, model, x: np.ndarray) -> dict:
        """The settings as used: region, L (steps, capped at the number of regions) and the score actually tracked,
        next to the steps and score asked for."""
        layout = InputLayout.of(model, x.shape[1:])
        region = checked_region(layout, self.perturbation["region"])
        asked, score = self.perturbation["steps"], self.perturbation["score"]
        return {"metrics": list(self.metrics), **self.perturbation, "region": region,
                "steps": effective_steps(layout, region, asked), "steps_asked": asked,
                "score": tracked_score(model, score), "score_asked": score, "stage": self.apem.stage,
                "epsilon_step": self.apem.step, "max_steps": self.apem.max_steps, "shuffles": self.apem.shuffles}

    def _apem(self, model, x, relevance, classes, sign) -> APEMResult:
        maps = stage_maps(relevance, x, self.apem.stage, InputLayout.of(model, x.shape[1:]))
        return self.apem.evaluate_maps(model, x, maps, classes, sign)


def _named_methods(methods) -> dict:
    """{name: method} from a dict, or from a list or tuple of methods named by their `name` attribute."""
    given = methods
    if isinstance(methods, (list, tuple)):
        names = [getattr(method, "name", None) for method in methods]
        if not all(isinstance(name, str) for name in names):
            raise OnnxplainError("methods in a list need a `name` (str); give {name: method} instead")
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise OnnxplainError(f"methods named alike ({', '.join(repeated)}): give {{name: method}} to tell "
                                 "them apart")
        methods = dict(zip(names, methods))
    if not isinstance(methods, dict) or not methods:
        raise OnnxplainError(f"methods must be a non-empty dict {{name: method}} or list of methods, not {given!r}")
    for name, method in methods.items():
        if not any(callable(getattr(method, how, None)) for how in ("attribute", "explain")):
            raise OnnxplainError(f"method {name!r} has neither attribute(model, x, target) nor explain(...)")
    return methods


def _relevance(method, model, x: np.ndarray) -> np.ndarray:
    """Each input's top-1 map: `attribute` where the method has it, else `explain`'s relevance."""
    if hasattr(method, "attribute"):
        return method.attribute(model, x, Target())
    return method.explain(model, x, Target()).relevance


def _scores_and_logits(model, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, K) class scores and `model.logits` (the same for a logits model) of x, from one forward pass."""
    names = [model.score_output, model.logits_output or model.score_output]
    values = model.run(x, names, check=False)
    return tuple(values[name].reshape(len(x), -1).astype(np.float64) for name in names)


def _probabilities(model, scores: np.ndarray) -> np.ndarray:
    """Top-1 probability per input (softmax of the logits for a logits model)."""
    return (scores if model.score_kind == "probabilities" else softmax(scores)).max(axis=1)


def _checked_labels(model, labels, count: int, classes: int) -> np.ndarray:
    """One class index per input; class names (and strings of digits) read as the CLI's labels CSV reads them."""
    labels = np.asarray(labels)
    if labels.shape == (count,) and labels.dtype.kind in "USO":
        labels = np.array([model.class_index(label if isinstance(label, (int, np.integer)) else str(label))
                           for label in labels.tolist()], dtype=np.int64)
    if labels.shape != (count,) or not np.issubdtype(labels.dtype, np.integer):
        raise OnnxplainError(f"labels must be {count} class indices or class names, one per input")
    if labels.min() < 0 or labels.max() >= classes:
        raise OnnxplainError(f"labels must be class indices 0..{classes - 1}")
    return labels.astype(np.int64)
