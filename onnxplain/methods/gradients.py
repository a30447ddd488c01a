"""Gradient methods on the torch executor: gradient, sensitivity, gradient x input, SmoothGrad, integrated gradients.

All share one batched gradient call (`batched_gradient`): the explained value f is the target class's logit
(pre-softmax, as for LRP) or a hidden unit / feature map (`onnxplain.targets`). With no class given, each sample's
top-1 class on the *clean* input is explained, also for the noisy (SmoothGrad) and path (integrated gradients) points.
"""
from __future__ import annotations

from abc import abstractmethod

import numpy as np
import torch

from ..errors import OnnxplainError
from ..bounds import input_bounds, spec_range_rows
from ..explanation import Explanation, Method, relevance_dtype, require_model
from ..metrics.layout import InputLayout
from ..runtime import progress_bar
from ..targets import Target, as_target, class_indices
from ..numbers import optional_whole_number, real_number, seed_number, whole_number
from ..pixels import real_input


def batched_gradient(executor, x: np.ndarray, target: Target, classes: np.ndarray,
                     batch_size: int, bar=None, grad: bool = True) -> tuple[np.ndarray | None, np.ndarray]:
    """(df/dx like x, f(x) (N,)) where row i explains `classes[i]` (class targets) or `target` (hidden ones);
    grad=False: f(x) alone, from forward passes (None for the gradient)."""
    grads, values = (np.empty_like(x) if grad else None), np.empty(len(x))
    for start in range(0, len(x), batch_size):
        rows = np.arange(start, min(start + batch_size, len(x)))
        groups = [(rows, target)] if target.hidden else \
            [(rows[classes[rows] == c], Target(index=int(c))) for c in np.unique(classes[rows])]
        for group, goal in groups:
            grads_of_group, values[group] = executor.gradient(x[group], goal, batch_size=len(group), grad=grad)
            if grad:
                grads[group] = grads_of_group
        if bar is not None:
            bar.update(len(rows))
    return grads, values


def packed(pieces, size: int):
    """(owner per row, rows, weight per row) batches of at most `size` rows (a larger piece goes alone) from
    pieces (input index, rows, weights) in order, so that S copies of a large input never sit in one batch."""
    batch = []
    for piece in pieces:
        if batch and sum(len(rows) for _, rows, _ in batch) + len(piece[1]) > size:
            yield _concatenated(batch)
            batch = []
        batch.append(piece)
    if batch:
        yield _concatenated(batch)


def _concatenated(batch: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    owners = np.concatenate([np.full(len(rows), i) for i, rows, _ in batch])
    return owners, np.concatenate([rows for _, rows, _ in batch]), np.concatenate([w for _, _, w in batch])


class GradientMethod(Method):
    """Shared set-up: the executor, the per-sample classes, batching, the progress bar and the Explanation; each
    method says in `relevance_map` what it makes of the gradients."""

    def __init__(self, device: str = "cpu", batch_size: int | None = None, progress: bool = True):
        self.device, self.progress = device, progress
        self.batch_size = optional_whole_number("batch_size", batch_size, 1)

    @property
    def params(self) -> dict:
        return {}

    def explain(self, model, x: np.ndarray, target: Target | None = None) -> Explanation:
        require_model(model)
        target = as_target(model, target)
        x = model.check_input(x)
        real = real_input(model, x)   # integer pixels as real numbers (the graph after their Cast)
        executor = model.torch(self.device)
        classes = class_indices(model.scores(x), target)
        relevance, score, diagnostics = self.relevance_map(executor, model, real, target, classes)
        return Explanation(relevance.astype(relevance_dtype(real.dtype), copy=False), classes, score, self.name,
                           self.params, {"score_kind": executor.explained_kind(target), **diagnostics})

    @abstractmethod
    def relevance_map(self, executor, model, x, target, classes):
        """(relevance like x, f(x) (N,), diagnostics)."""

    def rows(self, executor, x: np.ndarray) -> int:
        """Rows per gradient batch: `batch_size`, else the memory budget for samples shaped like x's."""
        return self.batch_size or executor.batch_size(x.shape[1:])

    def gradient(self, executor, x, target, classes, total: int):
        with self.bar(total) as bar:
            return batched_gradient(executor, x, target, classes, self.rows(executor, x), bar)

    def weighted_sum(self, executor, x, target, classes, pieces, total: int) -> np.ndarray:
        """sum_j w_j df/dx (points_j) per input (float64, shaped like x) over pieces (input, points, weights) of
        its points, run in budget-sized batches."""
        summed = np.zeros(x.shape, np.float64)
        with self.bar(total) as bar:
            for owners, points, weights in packed(pieces, self.rows(executor, x)):
                grads, _ = batched_gradient(executor, points, target, classes[owners], len(points), bar)
                for i in np.unique(owners):
                    mine = owners == i
                    summed[i] += np.tensordot(weights[mine], grads[mine], axes=1)
        return summed

    def bar(self, total: int):
        return progress_bar(total=total, desc=self.name, unit="sample", disable=not self.progress)


class Gradient(GradientMethod):
    """Signed gradient df/dx (Simonyan et al. 2013, before taking magnitudes)."""

    name = "gradient"

    def relevance_map(self, executor, model, x, target, classes):
        grads, values = self.gradient(executor, x, target, classes, total=len(x))
        return grads, values, {}


class Sensitivity(GradientMethod):
    """Sensitivity analysis (Samek et al. 2017, eq. 1): R_i = ||df/dx_i||, the gradient's norm at each input position.

    Where the input has channels (images, volumes and sequences, as `metrics.layout.InputLayout` reads them: the
    spec's layout, else the first convolution's), the 2-norm runs over the channels of a position and is shared
    equally among them, so the channel sum (what heatmaps show) is the norm; otherwise R_i = |df/dx_i|.
    """

    name = "sensitivity"

    def relevance_map(self, executor, model, x, target, classes):
        grads, values = self.gradient(executor, x, target, classes, total=len(x))
        layout = InputLayout.of(model, x.shape[1:])
        same = layout.view_shape == layout.sample_shape        # a flat input viewed as an image keeps |df/dx_i|
        axis = layout.channel_axis + 1 if layout.channel_axis is not None and same else None
        if axis is None:
            return np.abs(grads), values, {}
        norm = np.sqrt((grads.astype(np.float64) ** 2).sum(axis=axis, keepdims=True))
        return np.broadcast_to(norm / grads.shape[axis], grads.shape).copy(), values, {}


class GradientXInput(GradientMethod):
    """x * df/dx (Shrikumar et al. 2016)."""

    name = "gradient-x-input"

    def relevance_map(self, executor, model, x, target, classes):
        grads, values = self.gradient(executor, x, target, classes, total=len(x))
        return grads.astype(relevance_dtype(x.dtype)) * x, values, {}


class SmoothGrad(GradientMethod):
    """SmoothGrad (Smilkov et al. 2017): the mean gradient over `samples` noisy copies x + N(0, s^2).

    s = sigma * (high - low): `sigma` is a fraction of the input range, taken per channel from the preprocessing
    spec's `value_range()` (integer pixels without a spec: their type's, 0..255 for uint8), or from each sample's own
    (max - min) when the model has no spec (or only a guessed one that the inputs fall outside: `input_bounds`).
    Noisy copies of integer pixels are real points, explained through the graph after their Cast. Each sample's noise,
    (samples, *input), is drawn from a torch generator seeded with `seed`: every input gets the same standard
    normal draws, scaled by its own s, so a sample's map depends on the seed and that sample alone (not on the batch
    size, nor on the other inputs of the call), and matches Captum's NoiseTunnel on that sample after
    `torch.manual_seed(seed)`.
    """

    name = "smoothgrad"

    def __init__(self, samples: int = 25, sigma: float = 0.15, seed: int = 0, device: str = "cpu",
                 batch_size: int | None = None, progress: bool = True):
        super().__init__(device, batch_size, progress)
        self.samples, self.seed = whole_number("samples", samples, 1), seed_number(seed)
        self.sigma = real_number("sigma (a fraction of the input range)", sigma, 0)

    @property
    def params(self) -> dict:
        return {"samples": self.samples, "sigma": self.sigma, "seed": self.seed}

    def noise_scale(self, model, x: np.ndarray) -> np.ndarray:
        """(N, *input) standard deviation of the noise: sigma times the input range."""
        flat = x.reshape(len(x), -1).astype(np.float64)
        spread = np.broadcast_to((flat.max(axis=1) - flat.min(axis=1)).reshape((-1,) + (1,) * (x.ndim - 1)), x.shape)
        bounds = input_bounds(model, x.shape)
        if bounds is None:
            return self.sigma * spread
        rows = spec_range_rows(model, x).reshape((-1,) + (1,) * (x.ndim - 1))
        return self.sigma * np.where(rows, bounds[1] - bounds[0], spread)

    def relevance_map(self, executor, model, x, target, classes):
        scale = self.noise_scale(model, x)
        pieces = ((i, (x[i] + noise).astype(x.dtype, copy=False), np.full(len(noise), 1 / self.samples))
                  for i in range(len(x)) for noise in self._noise(scale[i], self.rows(executor, x)))
        summed = self.weighted_sum(executor, x, target, classes, pieces, len(x) * self.samples)
        _, values = batched_gradient(executor, x, target, classes, self.rows(executor, x), grad=False)
        return summed.astype(relevance_dtype(x.dtype)), values, {"noise_std": scale.reshape(len(x), -1).mean(axis=1)}

    def _noise(self, scale: np.ndarray, rows: int):
        """One sample's noise, (samples, *input), from its own stream from `seed`, in chunks of about `rows`
        copies: each but the last a multiple of 16 values and the last at least 16 (or all), where torch's
        normal draws cut into chunks equal the one draw of them all."""
        generator, size = torch.Generator().manual_seed(self.seed), scale.size
        step = 16 // np.gcd(size, 16)
        count, done = max(step, rows // step * step), 0
        while done < self.samples:
            take = min(count, self.samples - done)
            if 0 < (self.samples - done - take) * size < 16:
                take = self.samples - done
            noise = torch.randn((take,) + scale.shape, generator=generator, dtype=torch.float32)
            yield noise.numpy() * scale.astype(np.float32)
            done += take


class IntegratedGradients(GradientMethod):
    """Integrated gradients (Sundararajan et al. 2017): (x - x') * integral_0^1 df/dx (x' + a (x - x')) da.

    steps: quadrature points; rule: "gausslegendre" (Captum's default), or a Riemann sum with Captum's names:
    "riemann_middle" (midpoints), "riemann_left", "riemann_right", "riemann_trapezoid" (the trapezoid rule: n
    points from 0 to 1 weighted 1/(n-1), ends halved; Captum weights them 1/n, which is (n-1)/n of this).
    baseline: "min" (default: the lowest valid input per channel from `input_bounds` - a black image -, zeros when
    the model has no spec), "zeros", a number, or an array shaped like one input or the batch. The path between
    integer pixels runs through real points, explained through the graph after their Cast.
    diagnostics["completeness_gap"] = sum(relevance) - (f(x) - f(x')), the quadrature error.
    """

    name = "integrated-gradients"
    RULES = ("gausslegendre", "riemann_middle", "riemann_left", "riemann_right", "riemann_trapezoid")

    def __init__(self, steps: int = 50, baseline="min", rule: str = "gausslegendre", device: str = "cpu",
                 batch_size: int | None = None, progress: bool = True):
        super().__init__(device, batch_size, progress)
        steps = whole_number("steps", steps, 2)
        if rule not in self.RULES:
            raise OnnxplainError(f"integration rule must be one of {', '.join(self.RULES)}, not {rule!r}")
        self.steps, self.baseline, self.rule = steps, baseline, rule

    @property
    def params(self) -> dict:
        baseline = self.baseline if isinstance(self.baseline, (str, int, float)) else "array"
        return {"steps": self.steps, "baseline": baseline, "rule": self.rule}

    def quadrature(self) -> tuple[np.ndarray, np.ndarray]:
        """(alphas, weights) on [0, 1]."""
        n = self.steps
        if self.rule == "gausslegendre":
            nodes, weights = np.polynomial.legendre.leggauss(n)
            return 0.5 * (nodes + 1), 0.5 * weights
        if self.rule == "riemann_trapezoid":   # n points from 0 to 1, the two ends weighted half
            weights = np.full(n, 1.0 / (n - 1))
            weights[[0, -1]] /= 2
            return np.linspace(0.0, 1.0, n), weights
        offset = {"riemann_left": 0.0, "riemann_middle": 0.5, "riemann_right": 1.0}[self.rule]
        return (np.arange(n) + offset) / n, np.full(n, 1.0 / n)

    def baseline_batch(self, model, x: np.ndarray) -> np.ndarray:
        value = self.baseline
        if isinstance(value, str):
            if value == "min":
                bounds = input_bounds(model, x.shape)
                if bounds is None:
                    return np.zeros_like(x)
                rows = spec_range_rows(model, x).reshape((-1,) + (1,) * (x.ndim - 1))
                return np.where(rows, bounds[0], 0.0).astype(x.dtype)
            if value == "zeros":
                return np.zeros_like(x)
            try:
                value = float(value)
            except ValueError:
                raise OnnxplainError(f"baseline must be 'min', 'zeros', a number or an array, not {value!r}") from None
        array = np.asarray(value, dtype=x.dtype)
        if not np.isfinite(array).all():
            raise OnnxplainError("the integrated-gradients baseline contains NaN or Inf values")
        try:
            return np.broadcast_to(array, x.shape).copy()
        except ValueError:
            raise OnnxplainError(f"baseline of shape {array.shape} does not fit inputs of shape {x.shape}") from None

    def relevance_map(self, executor, model, x, target, classes):
        baseline = self.baseline_batch(model, x)
        alphas, weights = self.quadrature()
        size = self.rows(executor, x)
        difference = x.astype(np.float64) - baseline

        def pieces():
            for i in range(len(x)):
                for start in range(0, self.steps, size):
                    a = alphas[start:start + size].reshape((-1,) + (1,) * (x.ndim - 1))
                    yield i, (baseline[i] + a * difference[i]).astype(x.dtype), weights[start:start + size]

        summed = self.weighted_sum(executor, x, target, classes, pieces(), len(x) * self.steps)
        relevance = (difference * summed).astype(relevance_dtype(x.dtype))
        _, values = batched_gradient(executor, x, target, classes, size, grad=False)
        _, at_baseline = batched_gradient(executor, baseline, target, classes, size, grad=False)
        gap = relevance.reshape(len(x), -1).sum(axis=1) - (values - at_baseline)
        return relevance, values, {"completeness_gap": gap, "baseline_score": at_baseline}
