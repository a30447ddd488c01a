"""The valid range of a model's inputs, from its preprocessing spec (else, for integer pixels, their type's range:
`pixels.data_range`): z^B's box, SmoothGrad's noise scale, integrated gradients' `min` baseline, the executor's probe
batches and evaluate's noise read it here."""
from __future__ import annotations

import numpy as np

from .pixels import data_range
from .sequences import sample_channel_axis


def input_bounds(model, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-channel (low, high) of valid inputs from the preprocessing spec (else the data range of integer pixels),
    broadcast to `shape`; None if unknown.
    For a spec guessed from the input's shape, `spec_range_rows` says which inputs the range holds for."""
    ranges = _channel_ranges(model, shape)
    if ranges is None:
        return None
    return tuple(np.broadcast_to(r, shape).astype(np.float64) for r in ranges)


def _channel_ranges(model, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray] | None:
    """The spec's (low, high) shaped to broadcast against `shape` (one value, or one per channel), or None."""
    spec = model.preprocess
    if spec is None:
        pixels = data_range(model)
        return None if pixels is None else tuple(np.full([1] * len(shape), value) for value in pixels)
    low, high = spec.value_range()
    if np.ptp(low) == 0 and np.ptp(high) == 0:   # one range for every channel (a default colour of a flat spec)
        low, high = low[:1], high[:1]
    view = [1] * len(shape)
    if len(low) > 1:
        axis = sample_channel_axis(model, shape[1:])
        if axis is None or shape[axis + 1] != len(low):
            return None
        view[axis + 1] = -1
    return low.reshape(view).astype(np.float64), high.reshape(view).astype(np.float64)


def spec_range_rows(model, x) -> np.ndarray:
    """(N,) whether the spec's value range holds for each input of the batch x: every input for a stored or given
    spec; for one guessed from the input's shape, which says how onnxplain reads image files rather than how arrays
    were made, the inputs inside it (normalised arrays, -2.1..2.6 say, are not). Decided per input, so that an
    input's explanation does not depend on the others explained with it."""
    values = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x)
    ranges = _channel_ranges(model, values.shape)
    if ranges is None or model.preprocess_source != "guessed":
        return np.full(len(values), ranges is not None)
    return rows_inside(values, *ranges)


def rows_inside(values: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """(N,) whether each row of `values` lies within [low, high] (broadcastable; up to rounding)."""
    slack = 1e-6 * float(np.max(high - low))
    if np.size(low) == 1:   # one range for every channel: each row's min and max tell
        flat = values.reshape(len(values), -1)
        return (flat.min(axis=1) >= np.min(low) - slack) & (flat.max(axis=1) <= np.max(high) + slack)
    outside = (values < low - slack) | (values > high + slack)
    return ~outside.reshape(len(values), -1).any(axis=1)


def bounds_source(model) -> str:
    """Where `input_bounds` came from, for the explanation's options: the spec (stored, given or guessed), or the
    input's integer type."""
    return f"{model.preprocess_source} preprocessing spec" if model.preprocess is not None else \
        f"the range of {model.input_dtype}"
