"""Where the channels of one input sample are, and what values its features may take.

Metrics need both: region perturbation tiles the spatial axes and fills them with noise over the valid input
range; APEM sums relevance over channels and multiplies maps by the input's intensity.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import OnnxplainError
from ..pixels import data_range
from ..sequences import sample_channel_axis


@dataclass(frozen=True)
class InputLayout:
    """One sample of shape `sample_shape`, viewed as `view_shape` (a flat input with an image size in its
    preprocessing spec is viewed as that image, H x W x C); `channel_axis` is an axis of the view or None."""

    sample_shape: tuple[int, ...]
    view_shape: tuple[int, ...]
    channel_axis: int | None
    low: np.ndarray | None = None    # valid input range, broadcastable to view_shape (None: unknown)
    high: np.ndarray | None = None
    guessed: bool = False            # the range of a spec guessed from the input's shape (`bounds.input_bounds`)

    @classmethod
    def of(cls, model, sample_shape: tuple[int, ...]) -> "InputLayout":
        spec = getattr(model, "preprocess", None)
        shape, channel_axis = tuple(sample_shape), None
        if spec is not None and spec.layout == "flat" and spec.size is not None and len(shape) == 1 \
                and int(np.prod((*spec.size, spec.channels))) == shape[0]:
            shape, channel_axis = (*spec.size, spec.channels), 2
        else:
            channel_axis = sample_channel_axis(model, shape)
        gray = channel_axis is None and len(shape) >= 2 and spec is not None and spec.channels == 1
        if gray or (channel_axis is not None and spec is not None and shape[channel_axis] == spec.channels):
            low, high = spec.value_range()   # a gray (H, W) image's one range, or one per channel
            where = [1] * len(shape)
            if not gray:
                where[channel_axis] = len(low)
            return cls(tuple(sample_shape), shape, channel_axis, low.reshape(where), high.reshape(where),
                       getattr(model, "preprocess_source", None) == "guessed")
        typed = data_range(model) if spec is None and hasattr(model, "input_dtype") else None
        if typed is not None:   # integer pixels without a spec: their type's range (0..255 for uint8)
            low, high = (np.full((1,) * len(shape), value) for value in typed)
            return cls(tuple(sample_shape), shape, channel_axis, low, high)
        return cls(tuple(sample_shape), shape, channel_axis)

    @property
    def image_like(self) -> bool:
        """More than one spatial axis (an image or volume), or channels along one (a sequence), rather than a
        feature vector: neighbouring positions belong together."""
        return len(self.spatial_shape) > 1 or self.channel_axis is not None

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(d for a, d in enumerate(self.view_shape) if a != self.channel_axis)

    @property
    def channels(self) -> int:
        return 1 if self.channel_axis is None else self.view_shape[self.channel_axis]

    def view(self, batch: np.ndarray) -> np.ndarray:
        """(N, *sample_shape) -> (N, *view_shape)."""
        return batch.reshape(len(batch), *self.view_shape)

    def unview(self, batch: np.ndarray) -> np.ndarray:
        return batch.reshape(len(batch), *self.sample_shape)

    def sum_channels(self, batch: np.ndarray) -> np.ndarray:
        """(N, *view_shape) -> (N, *spatial_shape)."""
        return batch if self.channel_axis is None else batch.sum(axis=self.channel_axis + 1)

    def expand(self, maps: np.ndarray) -> np.ndarray:
        """(N, *spatial_shape) -> (N, *sample_shape): one value per position, repeated over the channels."""
        if self.channel_axis is None:
            return self.unview(maps)
        expanded = np.repeat(np.expand_dims(maps, self.channel_axis + 1), self.channels, axis=self.channel_axis + 1)
        return self.unview(expanded)

    def value_range(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Valid (low, high) per channel from the preprocessing spec, else the range of the data, broadcastable
        to (N, *view_shape). A guessed spec's range holds only for the inputs inside it (per input, as
        `bounds.spec_range_rows` decides); the others get the batch's data range (the one place where an input's
        numbers depend on the other inputs of the batch)."""
        data = np.asarray(np.min(x), dtype=np.float64), np.asarray(np.max(x), dtype=np.float64)
        if self.low is None:
            return data
        low, high = self.low[None], self.high[None]
        if not self.guessed:
            return low, high
        from ..bounds import rows_inside

        rows = rows_inside(self.view(np.asarray(x)), low, high).reshape((-1,) + (1,) * len(self.view_shape))
        return np.where(rows, low, data[0]), np.where(rows, high, data[1])

    def intensity(self, x: np.ndarray) -> np.ndarray:
        """(N, *view_shape) in [0, 1]: the input rescaled by its valid range (pixel brightness for images)."""
        low, high = self.value_range(x)
        span = np.where(high > low, high - low, 1.0)
        return np.clip((self.view(np.asarray(x, dtype=np.float64)) - low) / span, 0.0, 1.0)


def checked_relevance(relevance, x: np.ndarray, source: str = "relevance") -> np.ndarray:
    """`relevance` as an array shaped like the inputs `x`, all finite (a NaN or inf would make any ranking or
    direction meaningless)."""
    relevance = np.asarray(relevance)
    if relevance.shape != x.shape:
        raise OnnxplainError(f"{source} shape {relevance.shape} does not match the inputs {x.shape}")
    finite = np.isfinite(relevance).reshape(len(relevance), -1).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise OnnxplainError(f"{source} is not finite (NaN or inf) for input(s) {', '.join(map(str, bad[:5]))}"
                             f"{' ...' if len(bad) > 5 else ''}: the metrics need finite maps")
    return relevance
