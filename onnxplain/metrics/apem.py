"""APEM, the adversarial perturbation explanation metric (do Valle 2019).

A relevance map R in [0, 1] (after one of the visualisation stages of §4.2) is turned into a perturbation
direction R_dir = R / ||R||_1 * sign(grad_x J(x, y)) with J the cross-entropy of the explained class y.
eps- is the smallest eps = k * step that flips the prediction of x + eps * R_dir; eps+ the same for the
irrelevance 1 - R. APEM = mean(eps+ - eps-): a faithful map flips the model fast along R and slowly along 1 - R.
APEM_norm divides each eps by the one reached by shuffled copies of the map (§5.2), so a map no better than its
own shuffles scores about 0. A search that never flips within max_steps is censored (its eps only a lower bound):
means and medians leave such cases out.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import OnnxplainError
from ..numbers import real_number, seed_number, whole_number
from ..targets import metric_classes
from .layout import InputLayout, checked_relevance
from .search import bracket_search, linear_search

STAGES = {1: "|R|, channels kept", 2: "|R| clamped at the 99th percentile, channels summed",
          3: "stage 2 times the input intensity"}
SEARCHES = ("bracket", "linear")
CASE_BYTES = 256 * 2**20  # perturbation directions held at once


def stage_maps(relevance: np.ndarray, x: np.ndarray, stage: int, layout: InputLayout) -> np.ndarray:
    """Relevance -> maps in [0, 1] (per image min-max; a constant map becomes 0.5 everywhere).

    stage 1: |R| with its channels (shaped like the input's view); 2: |R| clamped at its 99th percentile and summed
    over channels; 3: the clamped |R| times the input intensity (the input rescaled to [0, 1] by its valid range),
    summed over channels (one value per spatial position)."""
    if stage not in STAGES:
        raise OnnxplainError(f"APEM stage must be 1, 2 or 3, not {stage!r}")
    values = np.abs(layout.view(np.asarray(relevance, dtype=np.float64)))
    if stage > 1:
        flat = values.reshape(len(values), -1)
        ceiling = np.percentile(flat, 99, axis=1).reshape(-1, *[1] * (values.ndim - 1))
        values = np.minimum(values, ceiling)
        if stage == 3:
            values = values * layout.intensity(x)
        values = layout.sum_channels(values)
    flat = values.reshape(len(values), -1)
    low, high = flat.min(axis=1, keepdims=True), flat.max(axis=1, keepdims=True)
    span = high - low
    scaled = np.where(span > 0, (flat - low) / np.where(span > 0, span, 1.0), 0.5)
    return scaled.reshape(values.shape)


def expand_maps(maps: np.ndarray, layout: InputLayout) -> np.ndarray:
    """Maps of any stage -> (N, *sample_shape)."""
    if maps.shape[1:] == layout.view_shape:
        return layout.unview(maps)
    return layout.expand(maps)


def directions(maps: np.ndarray, sign: np.ndarray, layout: InputLayout) -> np.ndarray:
    """R_dir = R / ||R||_1 * sign: the L1-normalised map (repeated over channels) pointing up the loss."""
    expanded = expand_maps(maps, layout)
    norm = np.abs(expanded).reshape(len(expanded), -1).sum(axis=1).reshape(-1, *[1] * (expanded.ndim - 1))
    return np.where(norm > 0, expanded / np.where(norm > 0, norm, 1.0), 0.0) * np.sign(sign)


def loss_gradient(model, x: np.ndarray, classes: np.ndarray, device: str = "cpu") -> np.ndarray:
    """grad_x of the cross-entropy of class `classes[i]` (from the torch executor on `device`), shaped like x."""
    import torch

    if not np.issubdtype(model.input_dtype, np.floating):
        raise OnnxplainError(f"APEM needs the loss gradient with respect to the input and steps along it by real "
                             f"amounts, and this model takes {model.input_dtype} (token ids, categories, pixels), "
                             "which has none or holds whole values only: use AOPC alone (--metrics aopc)")
    executor = model.torch(device)
    executor.require_gradient(executor.logits_name, "APEM needs its loss gradient: use AOPC alone (--metrics aopc)")
    grads = []
    size = 1 if model.fixed_batch else executor.batch_size(np.shape(x)[1:])
    for start in range(0, len(x), size):
        batch = executor.tensor(np.asarray(x[start:start + size])).requires_grad_(True)
        target = torch.as_tensor(classes[start:start + size], dtype=torch.long, device=batch.device)
        loss = -executor.log_likelihood(batch)[torch.arange(len(batch), device=batch.device), target].sum()
        grads.append(torch.autograd.grad(loss, batch)[0].detach().cpu().numpy())
    return np.concatenate(grads)


@dataclass
class APEMResult:
    """Per-image eps (in input units: steps times the step size) for a set of relevance maps."""

    eps_minus: np.ndarray
    eps_plus: np.ndarray
    classes: np.ndarray
    censored: np.ndarray                 # (N,) eps- or eps+ hit max_steps without a flip (then only a lower bound)
    shuffle_minus: np.ndarray | None = None
    shuffle_plus: np.ndarray | None = None
    stage: int = 2
    shuffled: "APEMResult | None" = None  # the same metric for shuffled copies of the maps (random baseline)
    limit: float = np.inf                # the largest eps searched (max_steps * step): beyond it, censored

    @property
    def scores(self) -> np.ndarray:
        """Per-image APEM: eps+ - eps-."""
        return self.eps_plus - self.eps_minus

    @property
    def mean(self) -> float:
        """Mean APEM over the uncensored cases (NaN when every case is censored)."""
        return _mean(self.uncensored(self.scores))

    @property
    def normalized(self) -> np.ndarray:
        """Per-image APEM_norm: eps+/eps_shuffle+ - eps-/eps_shuffle- (NaN where the shuffles flipped at eps 0 or
        never flipped: no reference to divide by)."""
        if self.shuffle_minus is None:
            raise OnnxplainError("APEM_norm needs shuffles > 0")
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = self.eps_plus / self.shuffle_plus - self.eps_minus / self.shuffle_minus
        measured = (self.shuffle_plus > 0) & (self.shuffle_minus > 0) & \
            (np.maximum(self.shuffle_plus, self.shuffle_minus) <= self.limit)
        return np.where(measured, ratio, np.nan)

    @property
    def norm_mean(self) -> float:
        """Mean APEM_norm over the uncensored cases where it is defined (NaN when there are none)."""
        return _mean(self.uncensored(self.normalized))

    def uncensored(self, values: np.ndarray) -> np.ndarray:
        """The per-image `values` of the cases whose searches both flipped, NaN left out: what aggregates use."""
        kept = np.asarray(values, dtype=np.float64)[~self.censored]
        return kept[~np.isnan(kept)]


class APEM:
    """APEM and APEM_norm of relevance maps from any source.

    stage: visualisation stage 1, 2 or 3 (see `STAGES`). step: eps grid (eps = k * step, k = 0, 1, ...).
    max_steps: k beyond which a case counts as never flipping. shuffles: shuffled maps per image for APEM_norm
    (0 = none). baseline: also score shuffled maps as if they were a method, each normalised by a second,
    independent set of shuffles (their APEM_norm should be about 0: `result.shuffled`).
    search: 'bracket' (batched bracketing) or 'linear' (the paper's scan; same answer, slower). device: the torch
    device of the loss gradient that signs the perturbation.
    """

    def __init__(self, stage: int = 2, step: float = 1.0, max_steps: int = 100_000, shuffles: int = 10,
                 baseline: bool = False, seed: int = 0, search: str = "bracket", device: str = "cpu",
                 progress: bool = True):
        if isinstance(stage, (bool, np.bool_)) or stage not in STAGES or not isinstance(stage, (int, np.integer)):
            raise OnnxplainError(f"APEM stage must be 1, 2 or 3, not {stage!r}")
        if search not in SEARCHES:
            raise OnnxplainError(f"search must be one of {', '.join(SEARCHES)}, not {search!r}")
        self.stage, self.step = stage, real_number("step", step, 0, exclusive=True)
        self.max_steps, self.shuffles = whole_number("max_steps", max_steps, 1), whole_number("shuffles", shuffles, 0)
        self.baseline, self.seed = baseline, seed_number(seed)
        self.search, self.device, self.progress = search, device, progress

    def evaluate(self, model, x: np.ndarray, relevance: np.ndarray, target=None,
                 gradient: np.ndarray | None = None) -> APEMResult:
        """APEM of relevance (shaped like x) for class `target` ((N,), an int, or None: top-1); `gradient` is
        grad_x of the loss (computed with the torch executor when None)."""
        x = model.check_input(x)
        relevance = checked_relevance(relevance, x)
        layout = InputLayout.of(model, x.shape[1:])
        classes = self.classes(model, x, target)
        sign = self.sign(model, x, classes, gradient)
        return self.evaluate_maps(model, x, stage_maps(relevance, x, self.stage, layout), classes, sign)

    def filter(self, model, x: np.ndarray, relevance: np.ndarray, target=None, gradient: np.ndarray | None = None,
               max_rounds: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The explanation filter (Algorithm 2, `compare.explanation_filter`) on relevance shaped like x, taken to
        this APEM's stage: (filtered maps, their APEM, rounds kept per image)."""
        from .compare import explanation_filter

        x = model.check_input(x)
        relevance = checked_relevance(relevance, x)
        classes = self.classes(model, x, target)
        maps = stage_maps(relevance, x, self.stage, InputLayout.of(model, x.shape[1:]))
        return explanation_filter(self, model, x, maps, classes, self.sign(model, x, classes, gradient), max_rounds)

    def evaluate_maps(self, model, x: np.ndarray, maps: np.ndarray, classes: np.ndarray,
                      sign: np.ndarray) -> APEMResult:
        """APEM of maps already in [0, 1] (the output of `stage_maps`, or shuffled / filtered ones).

        Every image is shuffled by the same permutations, drawn from `seed` alone, so an image's numbers do not
        depend on the other images evaluated with it."""
        groups = 2 if self.shuffles and self.baseline else 1 if self.shuffles else 0
        per_image = 1 + groups * self.shuffles
        rng = np.random.default_rng(self.seed)
        permutations = [rng.permutation(int(np.prod(maps.shape[1:]))) for _ in range(per_image - 1)]
        per_chunk = max(1, CASE_BYTES // (2 * per_image * x[0].nbytes))
        steps = []
        for start in range(0, len(x), per_chunk):
            part = slice(start, start + per_chunk)
            variants = [maps[part]] + [permuted(maps[part], order) for order in permutations]
            steps.append(self._epsilons(model, x[part], np.stack(variants, axis=1), classes[part], sign[part]))
        eps = np.concatenate(steps) * self.step  # (N, variants, 2): eps for (relevance, irrelevance)
        limit = self.max_steps * self.step
        result = APEMResult(eps[:, 0, 0], eps[:, 0, 1], classes, eps[:, 0].max(axis=1) > limit, stage=self.stage,
                            limit=limit)
        if self.shuffles:  # §5.2: the first eps at which any of the shuffled maps flips the prediction
            first = eps[:, 1:1 + self.shuffles].min(axis=1)
            result.shuffle_minus, result.shuffle_plus = first[:, 0], first[:, 1]
        if groups == 2:  # shuffled maps scored like a method, normalised by an independent set of shuffles
            second = eps[:, 1 + self.shuffles:].min(axis=1)
            result.shuffled = APEMResult(first[:, 0], first[:, 1], classes, first.max(axis=1) > limit,
                                         second[:, 0], second[:, 1], self.stage, limit=limit)
        return result

    def gaps(self, model, x: np.ndarray, maps: np.ndarray, classes: np.ndarray, sign: np.ndarray,
             first_probe=None) -> tuple[np.ndarray, np.ndarray]:
        """(eps-, eps+) per image of maps in [0, 1], without shuffles (for the explanation filter)."""
        steps = self._epsilons(model, x, maps[:, None], classes, sign, first_probe)
        return steps[:, 0, 0] * self.step, steps[:, 0, 1] * self.step

    def classes(self, model, x: np.ndarray, target) -> np.ndarray:
        return metric_classes(model, x, target, check_classes(model.scores(x)))

    def sign(self, model, x: np.ndarray, classes: np.ndarray, gradient: np.ndarray | None) -> np.ndarray:
        if gradient is None:
            gradient = loss_gradient(model, x, classes, self.device)
        gradient = np.asarray(gradient)
        if gradient.shape != x.shape:
            raise OnnxplainError(f"loss gradient shape {gradient.shape} does not match the inputs {x.shape}")
        return np.sign(gradient)

    def _epsilons(self, model, x, variants, classes, sign, first_probe=None) -> np.ndarray:
        """variants (n, V, *map_shape) -> steps k (n, V, 2) for each map and its irrelevance."""
        n, count = variants.shape[:2]
        layout = InputLayout.of(model, x.shape[1:])
        maps = variants.reshape(n * count, *variants.shape[2:])
        both = np.concatenate([maps, 1.0 - maps])
        repeat = np.tile(np.repeat(np.arange(n), count), 2)
        cases_x = x[repeat]
        dirs = directions(both, sign[repeat], layout).astype(x.dtype)
        options = {"step": self.step, "max_steps": self.max_steps, "progress": self.progress}
        if self.search == "linear":
            steps = linear_search(model, cases_x, dirs, classes[repeat], **options)
        else:
            if first_probe is not None:
                options["first_probe"] = np.asarray(first_probe).reshape(n, 1, 2).repeat(count, 1)\
                    .transpose(2, 0, 1).reshape(-1)
            steps = bracket_search(model, cases_x, dirs, classes[repeat], **options)
        return steps.reshape(2, n, count).transpose(1, 2, 0)


def check_classes(scores: np.ndarray) -> np.ndarray:
    """The (N, K) scores, if K >= 2: with one column the argmax never changes, so APEM has nothing to find."""
    if scores.shape[1] < 2:
        raise OnnxplainError("APEM needs at least two classes: the decision of a one-column score cannot flip")
    return scores


def permuted(maps: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Every map with its (flattened) values taken in `order`."""
    return maps.reshape(len(maps), -1)[:, order].reshape(maps.shape)


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")
