"""Using APEM scores: the explanation filter (do Valle, Algorithm 2), pairwise comparison of methods, and the
Spearman correlation of APEM with the model's loss (§5.4)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import OnnxplainError
from ..numbers import number_array


def explanation_filter(apem, model, x: np.ndarray, maps: np.ndarray, classes: np.ndarray, sign: np.ndarray,
                       max_rounds: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Zero each map's smallest positive value, again and again, while its APEM (eps+ - eps-) does not drop.

    apem: an `APEM` (its stage, step and search are used; shuffles are not). maps: (N, ...) in [0, 1], e.g. from
    `stage_maps`. Returns (filtered maps, their APEM, rounds kept per image); all open images share a round's
    batched searches, and each search starts from the image's previous eps."""
    best = np.array(maps, dtype=np.float64, copy=True)
    minus, plus = apem.gaps(model, x, best, classes, sign)
    best_score = plus - minus
    probes = np.stack([minus, plus], axis=1) / apem.step
    rounds = np.zeros(len(x), dtype=np.int64)
    active = np.flatnonzero(_has_positive(best))
    done = 0
    while active.size and (max_rounds is None or done < max_rounds):
        done += 1
        candidate = _zero_smallest(best[active])
        minus, plus = apem.gaps(model, x[active], candidate, classes[active], sign[active],
                                first_probe=np.maximum(probes[active], 1))
        keep = plus - minus >= best_score[active]
        kept = active[keep]
        best[kept], best_score[kept] = candidate[keep], (plus - minus)[keep]
        probes[kept] = np.stack([minus, plus], axis=1)[keep] / apem.step
        rounds[kept] += 1
        active = kept[_has_positive(best[kept])]
    return best, best_score, rounds


def _has_positive(maps: np.ndarray) -> np.ndarray:
    return (maps.reshape(len(maps), int(np.prod(maps.shape[1:]))) > 0).any(axis=1)


def _zero_smallest(maps: np.ndarray) -> np.ndarray:
    """Each map with every occurrence of its smallest positive value set to 0."""
    flat = maps.reshape(len(maps), -1)
    smallest = np.where(flat > 0, flat, np.inf).min(axis=1, keepdims=True)
    return np.where(flat == smallest, 0.0, flat).reshape(maps.shape)


@dataclass(frozen=True)
class Pairwise:
    """Fractions of images where method `first` scores higher, equally, lower than `second`."""

    first: str
    second: str
    better: float
    equal: float
    worse: float


def pairwise(scores: dict[str, np.ndarray]) -> list[Pairwise]:
    """Every pair of methods (in the given order, each pair once) compared image by image (§4.3, Fig. 4.4), over
    the images where both scores are numbers (a censored score is NaN); NaN fractions when there are none."""
    names = list(scores)
    lengths = {len(np.asarray(v)) for v in scores.values()}
    if len(lengths) > 1:
        raise OnnxplainError("pairwise comparison needs the same images for every method")
    rows = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            first, second = np.asarray(scores[a], float), np.asarray(scores[b], float)
            both = ~(np.isnan(first) | np.isnan(second))
            first, second = first[both], second[both]
            fractions = [float(np.mean(c)) if both.any() else float("nan")
                         for c in (first > second, first == second, first < second)]
            rows.append(Pairwise(a, b, *fractions))
    return rows


def cross_entropy(model, x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N,) loss -log p(label | x) from the model's scores (softmax of the logits when it has them, sigmoid of a
    binary classifier's log-odds)."""
    return logits_loss(model, model.logits(x), labels)


def logits_loss(model, logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """`cross_entropy` from `model.logits` of the inputs (their class scores when the graph has no logits), for a
    caller that has them already."""
    labels = np.asarray(labels, dtype=np.int64)
    if model.binary:   # log-odds [-z, z]: log sigmoid of each is log [1 - p, p]
        log_p = -np.logaddexp(0.0, -logits)
    elif model.logits_output is not None:
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    else:
        log_p = np.log(np.clip(logits, 1e-30, None))
    if labels.min() < 0 or labels.max() >= log_p.shape[1]:
        raise OnnxplainError(f"labels must be class indices 0..{log_p.shape[1] - 1}")
    return -log_p[np.arange(len(labels)), labels]


def loss_correlation(values: np.ndarray, loss: np.ndarray) -> tuple[float, float]:
    """Spearman's rank correlation (rho, two-sided p-value) of per-image APEM (or confidence) with the loss."""
    from scipy.stats import spearmanr

    values, loss = number_array("values", values), number_array("loss", loss)
    if values.ndim != 1 or values.shape != loss.shape:
        raise OnnxplainError(f"values and loss must be 1-D arrays of the same length (one per image), got shapes "
                             f"{values.shape} and {loss.shape}")
    keep = np.isfinite(values) & np.isfinite(loss)
    if keep.sum() < 3:
        return float("nan"), float("nan")
    result = spearmanr(values[keep], loss[keep])
    return float(result.statistic), float(result.pvalue)
