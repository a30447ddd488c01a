"""The smallest perturbation step that flips a prediction: k* = min{k >= 0 : argmax f(x + k*step*d) != y}.

`linear_search` is the reference (APEM's integer steps, one forward pass per k per case). `bracket_search`
finds the same k* from the class margin m(k) = f_y - max_{c != y} f_c, which is close to linear along a fixed
direction: it brackets the sign change by secant extrapolation (growth capped), then closes the bracket by
regula falsi with bisection as a safeguard, stopping when flip(k*) and not flip(k* - 1) are both observed.
Both evaluate all open cases of a round in one batched `model.run`. They agree whenever the prediction stays
flipped beyond k* along the direction (the margin changes sign once below k*); cases that never flip within
`max_steps` get `max_steps + 1` (censored).
"""
from __future__ import annotations

import numpy as np

from ..errors import OnnxplainError
from ..runtime import progress_bar
from .perturbation import has_logits

FIRST_PROBE = 16
GROWTH = 8  # an extrapolated probe is at most GROWTH times the last step that did not flip


def margins(model, x: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(margin, flipped) per input: f_y - max_{c != y} f_c on the pre-softmax scores (log-probabilities when the
    model has none: closer to linear than probabilities), and argmax != y."""
    logits = model.logits(x)
    if not has_logits(model):
        logits = np.log(np.clip(logits, 1e-300, None))
    rows = np.arange(len(logits))
    own = logits[rows, classes]
    others = logits.copy()
    others[rows, classes] = -np.inf
    return own - others.max(axis=1), np.argmax(logits, axis=1) != classes


def _check(x: np.ndarray, directions: np.ndarray, classes: np.ndarray, step: float, max_steps: int):
    if x.shape != directions.shape or len(classes) != len(x):
        raise OnnxplainError(f"{len(x)} inputs, {len(directions)} directions and {len(classes)} classes must match")
    if step <= 0 or max_steps < 1:
        raise OnnxplainError("the epsilon step must be positive and max_steps at least 1")


def _probe(model, x, directions, classes, cases: np.ndarray, k: np.ndarray, step: float):
    batch = x[cases] + (k * step).reshape(-1, *[1] * (x.ndim - 1)) * directions[cases]
    return margins(model, batch.astype(x.dtype, copy=False), classes[cases])


def linear_search(model, x: np.ndarray, directions: np.ndarray, classes: np.ndarray, *, step: float = 1.0,
                  max_steps: int = 1000, progress: bool = False) -> np.ndarray:
    """k* per case by trying k = 0, 1, 2, ... (the reference; costs k* + 1 forward passes per case)."""
    _check(x, directions, classes, step, max_steps)
    result = np.full(len(x), max_steps + 1)
    active = np.arange(len(x))
    bar = progress_bar(total=len(x), desc="epsilon (linear)", unit="case", disable=not progress)
    for k in range(max_steps + 1):
        if not active.size:
            break
        _, flipped = _probe(model, x, directions, classes, active, np.full(active.size, k), step)
        result[active[flipped]] = k
        active = active[~flipped]
        bar.update(int(flipped.sum()))
    bar.close()
    return result


def bracket_search(model, x: np.ndarray, directions: np.ndarray, classes: np.ndarray, *, step: float = 1.0,
                   max_steps: int = 1000, first_probe: int | np.ndarray = FIRST_PROBE,
                   progress: bool = False) -> np.ndarray:
    """The same k* as `linear_search`, in a handful of batched rounds (about 5 forward passes per case).

    first_probe: the first step tried after k = 0, per case or for all (a good guess saves rounds)."""
    _check(x, directions, classes, step, max_steps)
    n = len(x)
    result = np.full(n, max_steps + 1)
    lo, m_lo = np.zeros(n, dtype=np.int64), np.zeros(n)        # largest step seen not flipped
    hi, m_hi = np.full(n, -1, dtype=np.int64), np.zeros(n)     # smallest step seen flipped (-1: none yet)
    prev, m_prev = np.zeros(n, dtype=np.int64), np.zeros(n)    # the step before lo, for extrapolation
    moved = np.zeros(n, dtype=np.int8)                          # side moved last round: -1 lo, +1 hi
    bisect = np.zeros(n, dtype=bool)
    bar = progress_bar(total=n, desc="epsilon (bracketing)", unit="case", disable=not progress)

    m_lo[:], flipped = _probe(model, x, directions, classes, np.arange(n), np.zeros(n, dtype=np.int64), step)
    result[flipped] = 0
    active = np.flatnonzero(~flipped)
    bar.update(int(flipped.sum()))
    k = np.clip(np.broadcast_to(np.asarray(first_probe, dtype=np.int64), (n,))[active], 1, max_steps)
    while active.size:
        margin, flipped = _probe(model, x, directions, classes, active, k, step)
        side = np.where(flipped, 1, -1)
        bisect[active] = side == moved[active]  # Illinois-style safeguard: same side twice -> bisect next
        moved[active] = side
        up = active[flipped]
        hi[up], m_hi[up] = k[flipped], margin[flipped]
        down, k_down = active[~flipped], k[~flipped]
        prev[down], m_prev[down] = lo[down], m_lo[down]
        lo[down], m_lo[down] = k_down, margin[~flipped]

        closed = (hi[active] >= 0) & (hi[active] - lo[active] <= 1)
        censored = (hi[active] < 0) & (lo[active] >= max_steps)
        result[active[closed]] = hi[active[closed]]
        bar.update(int(closed.sum() + censored.sum()))
        active = active[~(closed | censored)]
        k = _next_probe(active, lo, m_lo, hi, m_hi, prev, m_prev, bisect, max_steps)
    bar.close()
    return result


def _next_probe(cases, lo, m_lo, hi, m_hi, prev, m_prev, bisect, max_steps: int) -> np.ndarray:
    """Next step to try per open case: extrapolate towards the flip while unbracketed, else interpolate."""
    lo, m_lo, hi, m_hi = lo[cases], m_lo[cases], hi[cases], m_hi[cases]
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = (m_prev[cases] - m_lo) / (lo - prev[cases])             # margin lost per step
        guess = np.where(slope > 0, lo + m_lo / slope, 2.0 * lo)
        reach = np.clip(np.ceil(np.nan_to_num(guess, posinf=max_steps)), lo + 1,
                        np.minimum(GROWTH * np.maximum(lo, 1), max_steps))
        root = lo + (hi - lo) * m_lo / (m_lo - m_hi)
    midpoint = (lo + hi) // 2
    usable = np.isfinite(root) & (m_lo > m_hi) & ~bisect[cases]
    inside = np.clip(np.where(usable, np.floor(np.nan_to_num(root)), midpoint), lo + 1, hi - 1)
    return np.where(hi >= 0, inside, reach).astype(np.int64)
