"""Region perturbation (Samek et al. 2017) and the area over the perturbation curve (AOPC).

The input is tiled into non-overlapping regions of r x r (x r for volumes) over its spatial axes; regions are
ranked by summed relevance (all channels); step k replaces the k-th region of the order with uniform noise over
the valid input range (or, for plain feature vectors, sets it to a baseline) and keeps earlier replacements.
The tracked value is the explained class's score after every step; every step of every image goes through
`model.run` in large batches. Every image gets the same noise draws, from the seed alone, and (for the random
order) a permutation of regions drawn from the seed and the image's own values: an image's curve does not depend
on the other images, and the random baseline averages over as many orders as there are distinct images.
"""
from __future__ import annotations

import numpy as np

from ..errors import OnnxplainError
from ..numbers import image_generators, number_array, seed_number, whole_number
from ..runtime import progress_iter
from ..targets import metric_classes
from .layout import InputLayout, checked_relevance

ORDERS = ("morf", "lerf", "random")
SCORES = ("logit", "probability")
CHUNK_BYTES = 256 * 2**20  # perturbed inputs built at once


def has_logits(model) -> bool:
    """Whether the graph has pre-softmax scores (a probability-only model, e.g. scikit-learn's, has none)."""
    return model.logits_output is not None or model.score_kind != "probabilities"


def tracked_score(model, score: str) -> str:
    """The score actually tracked for `score`: 'logit' is the probability for a model without logits."""
    if score not in SCORES:
        raise OnnxplainError(f"score must be one of {', '.join(SCORES)}, not {score!r}")
    return score if score == "probability" or has_logits(model) else "probability"


def explained_scores(model, x: np.ndarray, classes: np.ndarray, score: str = "logit", **run) -> np.ndarray:
    """(N,) score of class `classes[i]` for each input: pre-softmax ('logit') or softmax ('probability'); see
    `tracked_score` for models without logits."""
    if tracked_score(model, score) == "logit":
        values = model.logits(x, **run)
    else:
        values = model.probabilities(x, **run)
    return values[np.arange(len(values)), classes]


def default_region(layout: InputLayout) -> int:
    """9 (Samek et al. on 224 x 224 images), smaller so every axis holds at least 8 regions; 1 for vectors."""
    if not layout.image_like:
        return 1
    return max(1, min(9, min(layout.spatial_shape) // 8))


def checked_region(layout: InputLayout, region: int | None) -> int:
    """The region edge to use: the default for None, else a whole number no larger than the input's largest spatial
    axis (a larger one makes the whole input one region: a single step, nothing ranked)."""
    if region is None:
        return default_region(layout)
    region = whole_number("region", region, 1)
    largest = max(layout.spatial_shape, default=1)
    if region > largest:
        size = "x".join(map(str, layout.spatial_shape))
        raise OnnxplainError(f"region {region} is larger than the input, whose spatial size is {size}: give a "
                             f"region of at most {largest}")
    return region


def region_ids(layout: InputLayout, region: int) -> np.ndarray:
    """(spatial_shape) int: the id of the non-overlapping r x r region each position belongs to."""
    blocks = [np.arange(size) // region for size in layout.spatial_shape]
    counts = [-(-size // region) for size in layout.spatial_shape]
    grid = np.meshgrid(*blocks, indexing="ij")
    return np.ravel_multi_index(grid, counts)


def effective_steps(layout: InputLayout, region: int, steps: int) -> int:
    """L: the steps asked for, capped at the number of regions."""
    return min(steps, int(np.prod([-(-size // region) for size in layout.spatial_shape])))


def region_ranks(relevance: np.ndarray, layout: InputLayout, region: int, order: str,
                 generators: list[np.random.Generator]) -> np.ndarray:
    """(N, *spatial_shape): the step (0-based) at which each position's region is perturbed ('random': a
    permutation drawn from each image's own generator, `image_generators`)."""
    ids = region_ids(layout, region)
    count = int(ids.max()) + 1
    per_position = layout.sum_channels(layout.view(np.asarray(relevance, dtype=np.float64)))
    flat = per_position.reshape(len(per_position), -1)
    sums = np.stack([np.bincount(ids.ravel(), weights=row, minlength=count) for row in flat])
    if order == "morf":
        ordered = np.argsort(-sums, axis=1, kind="stable")
    elif order == "lerf":
        ordered = np.argsort(sums, axis=1, kind="stable")
    else:
        ordered = np.stack([generator.permutation(count) for generator in generators])
    step_of_region = np.empty_like(ordered)
    np.put_along_axis(step_of_region, ordered, np.arange(count)[None].repeat(len(sums), 0), axis=1)
    return step_of_region[:, ids]


def region_perturbation(model, x: np.ndarray, relevance: np.ndarray, target=None, *, region: int | None = None,
                        steps: int = 100, order: str = "morf", seed: int = 0, score: str = "logit",
                        fill: str | None = None, baseline: float | np.ndarray = 0.0,
                        progress: bool = False, scores: np.ndarray | None = None) -> np.ndarray:
    """Perturbation curves (N, L+1): the explained score before (column 0) and after each of L steps.

    relevance: shaped like x, from any source. target: (N,) class indices, one int, or None (top-1 of x).
    region: edge of the square regions (default: 9, or less so that each axis holds 8 regions; 1 for vectors).
    steps: L, capped at the number of regions. order: 'morf' (most relevant first), 'lerf' or 'random'.
    score: 'logit' or 'probability' (a model without logits tracks the probability for both: `tracked_score`).
    fill: 'noise' (uniform over the valid input range; default for images) or 'baseline' (default for feature
    vectors). The same seed gives the same noise for every order, method and image, so their curves pair up.
    scores: the class scores of x when the caller has them (they give the top-1 classes): a forward pass fewer.
    """
    x = model.check_input(x)
    relevance = checked_relevance(relevance, x)
    seed, steps = seed_number(seed), whole_number("steps", steps, 1)
    if order not in ORDERS:
        raise OnnxplainError(f"order must be one of {', '.join(ORDERS)}, not {order!r}")
    layout = InputLayout.of(model, x.shape[1:])
    region = checked_region(layout, region)
    fill = fill or ("noise" if layout.image_like else "baseline")
    if fill not in ("noise", "baseline"):
        raise OnnxplainError(f"fill must be 'noise' or 'baseline', not {fill!r}")
    classes = metric_classes(model, x, target, scores)
    ranks = region_ranks(relevance, layout, region, order, image_generators(x, seed))
    steps = effective_steps(layout, region, steps)
    fills = _fills(layout, x, fill, baseline, np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[1]))

    per_chunk = max(1, CHUNK_BYTES // ((steps + 1) * x[0].nbytes))
    curves = []
    for start in progress_iter(range(0, len(x), per_chunk), progress and "region perturbation",
                               -(-len(x) // per_chunk), unit="chunk"):
        part = slice(start, start + per_chunk)
        batch = _perturbed(layout, x[part], ranks[part], fills[part], steps)
        values = explained_scores(model, batch, np.repeat(classes[part], steps + 1), score)
        curves.append(values.reshape(-1, steps + 1))
    return np.concatenate(curves)


def aopc(curves: np.ndarray, per_image: bool = False):
    """AOPC = 1/(L+1) * sum_k (f(x^0) - f(x^k)), averaged over images (or per image)."""
    curves = number_array("curves", curves)
    if curves.ndim != 2 or 0 in curves.shape:
        raise OnnxplainError(f"curves must be a 2-D array (images, steps + 1), as region_perturbation returns; got "
                             f"shape {curves.shape}")
    values = (curves[:, :1] - curves).mean(axis=1)
    return values if per_image else float(values.mean())


def _fills(layout: InputLayout, x: np.ndarray, fill: str, baseline, rng: np.random.Generator) -> np.ndarray:
    """(N, *view_shape): what each position becomes once its region is perturbed (the same draws for every image,
    scaled to its valid range)."""
    shape = (len(x), *layout.view_shape)
    if fill == "baseline":
        values = np.asarray(baseline, dtype=np.float64)
        if values.size == int(np.prod(layout.view_shape)):
            values = values.reshape(layout.view_shape)
        try:
            return np.broadcast_to(values, shape).astype(x.dtype)
        except ValueError:
            raise OnnxplainError(f"baseline of shape {values.shape} does not fit inputs {x.shape[1:]}") from None
    low, high = layout.value_range(x)
    unit = rng.uniform(0.0, 1.0, layout.view_shape)
    values = low + (high - low) * unit
    if np.issubdtype(x.dtype, np.integer):   # whole values, low..high each as likely (a cast would never draw high)
        values = np.minimum(np.floor(low + (high - low + 1) * unit), high)
        values = np.clip(values, np.iinfo(x.dtype).min, np.iinfo(x.dtype).max)   # a spec's range beyond the type
    return np.broadcast_to(values, shape).astype(x.dtype)


def _perturbed(layout: InputLayout, x: np.ndarray, ranks: np.ndarray, fills: np.ndarray, steps: int) -> np.ndarray:
    """(n * (steps + 1), *sample_shape): for each image, the inputs after 0..steps perturbation steps."""
    views = layout.view(x)
    covered = ranks[:, None] < np.arange(steps + 1).reshape(1, -1, *[1] * (ranks.ndim - 1))
    if layout.channel_axis is not None:
        covered = np.expand_dims(covered, layout.channel_axis + 2)
    batch = np.where(covered, fills[:, None], views[:, None])
    return batch.reshape(-1, *layout.sample_shape)
