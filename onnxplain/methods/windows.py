"""Where the windows of prediction difference analysis lie: an input's spatial geometry and its sliding windows.

`Geometry` turns a model-input batch (NCHW, NHWC, 5-D volumes, flat feature vectors that describe an image or a
volume, or plain feature vectors windowed along their features) into one canonical layout, (N, C, *spatial), and
back. `WindowGrid` enumerates the k×k (or k×k×k) windows over the spatial axes; a window's id is its C-order index
over the grid of start positions.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numpy as np

from ..errors import OnnxplainError
from ..numbers import whole_number
from ..sequences import sample_channel_axis


@dataclass(frozen=True)
class Geometry:
    """How one input sample (`sample_shape`, no batch axis) maps onto `channels` × `spatial`."""

    sample_shape: tuple[int, ...]
    layout: str   # "channels_first" | "channels_last" | "flat" (channels last, raveled) | "no_channels" (a volume)
    channels: int
    spatial: tuple[int, ...]

    @classmethod
    def infer(cls, model, sample_shape: tuple[int, ...], volume_shape=None) -> "Geometry":
        """From the input's rank, the preprocessing spec (layout, size, crop), an explicit `volume_shape`, or the
        first convolution the input feeds (channels along a sequence, or an image's channels where no spec says)."""
        sample_shape = tuple(int(d) for d in sample_shape)
        spec = model.preprocess
        if len(sample_shape) == 1:
            return cls._flat(sample_shape, _flat_spatial(spec, volume_shape, sample_shape))
        if volume_shape is not None:
            if tuple(volume_shape) not in (sample_shape, sample_shape[1:], sample_shape[:-1]):
                raise OnnxplainError(f"volume_shape {tuple(volume_shape)} does not match the input {sample_shape}")
            if tuple(volume_shape) == sample_shape:
                return cls(sample_shape, "no_channels", 1, sample_shape)
            if tuple(volume_shape) == sample_shape[:-1] != sample_shape[1:]:   # (D, H, W, C): channels last
                return cls(sample_shape, "channels_last", sample_shape[-1], sample_shape[:-1])
        if 2 <= len(sample_shape) <= 4:   # sequences (C, L) / (L, C), images, volumes (D, H, W) or with channels
            axis = sample_channel_axis(model, sample_shape)
            if axis is None:
                return cls(sample_shape, "no_channels", 1, sample_shape)
            layout = "channels_first" if axis == 0 else "channels_last"
            rest = sample_shape[1:] if axis == 0 else sample_shape[:-1]
            return cls(sample_shape, layout, sample_shape[axis], rest)
        what = "a single number each (an input of shape N)" if not sample_shape else f"of shape {sample_shape}"
        raise OnnxplainError("occlusion and prediction difference slide windows over feature vectors, sequences, "
                             f"images or volumes; these samples are {what}")

    @classmethod
    def _flat(cls, sample_shape: tuple[int, ...], spatial: tuple[int, ...]) -> "Geometry":
        pixels = int(np.prod(spatial))
        if sample_shape[0] % pixels:
            raise OnnxplainError(f"{sample_shape[0]} features do not split into a {'x'.join(map(str, spatial))} grid")
        return cls(sample_shape, "flat", sample_shape[0] // pixels, spatial)

    def to_grid(self, x: np.ndarray) -> np.ndarray:
        """(N, *sample_shape) -> (N, C, *spatial), contiguous."""
        n = len(x)
        if self.layout == "channels_first":
            return np.ascontiguousarray(x)
        if self.layout == "no_channels":
            return np.ascontiguousarray(x[:, None])
        if self.layout == "flat":
            x = x.reshape(n, *self.spatial, self.channels)
        return np.ascontiguousarray(np.moveaxis(x, -1, 1))

    def grid_view(self, x: np.ndarray) -> np.ndarray:
        """A contiguous (N, *sample_shape) batch (numpy or torch) seen as (N, C, *spatial) without copying:
        writing a window into the view writes it into the batch."""
        if self.layout == "channels_first":
            return x
        if self.layout == "no_channels":
            return x[:, None]
        moved = x.reshape(len(x), *self.spatial, self.channels)
        return moved.movedim(-1, 1) if hasattr(moved, "movedim") else np.moveaxis(moved, -1, 1)

    def from_grid(self, grid: np.ndarray) -> np.ndarray:
        """(N, C, *spatial) -> (N, *sample_shape), the inverse of `to_grid`."""
        n = len(grid)
        if self.layout == "channels_first":
            return grid
        if self.layout == "no_channels":
            return grid[:, 0]
        moved = np.moveaxis(grid, 1, -1)
        return np.ascontiguousarray(moved).reshape(n, *self.sample_shape)

    def shared_over_channels(self, maps: np.ndarray) -> np.ndarray:
        """(N, *spatial) pixel relevance -> (N, *sample_shape): shared equally by a pixel's channels, so that
        summing over channels gives the pixel's map back."""
        return self.from_grid(np.repeat(maps[:, None] / self.channels, self.channels, axis=1))


def _flat_spatial(spec, volume_shape, sample_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The grid a flat input describes: a volume or image (given, or from the spec's crop or size), else its
    features along one axis."""
    if volume_shape is not None:
        return tuple(int(d) for d in volume_shape)
    if spec is not None and spec.crop is not None:
        return tuple(int(b) - int(a) for a, b in spec.crop)
    if spec is not None and spec.size is not None:
        return tuple(int(d) for d in spec.size)
    return sample_shape


def plain_features(model, sample_shape: tuple[int, ...], volume_shape=None) -> bool:
    """A feature vector that describes no image or volume (no volume_shape, no size or crop in its spec): its
    windows run along the features, and the methods' defaults cover one feature each."""
    spec = model.preprocess
    return len(sample_shape) == 1 and volume_shape is None and (spec is None or (spec.crop is None
                                                                                 and spec.size is None))


class WindowGrid:
    """Every window of `size` over `spatial`, start positions `stride` apart (the last one flush with the edge).
    A window larger than the input along an axis, or a stride larger than the window (pixels between windows would
    be covered by none), is refused: so every pixel is covered by at least one window. `allow_gaps` lets the stride
    exceed the window, for timing a subset of the windows (pixels between them get no relevance)."""

    def __init__(self, spatial: tuple[int, ...], window, stride: int = 1, allow_gaps: bool = False):
        window = (window,) * len(spatial) if np.isscalar(window) else tuple(window)
        if len(window) != len(spatial):
            raise OnnxplainError(f"window {window} needs one size per spatial axis of {spatial}")
        window = tuple(whole_number("window", k, 1) for k in window)
        stride = whole_number("stride", stride, 1)
        if any(k > n for k, n in zip(window, spatial)):
            raise OnnxplainError(f"window {_sizes(window)} is larger than the input's {_sizes(spatial)} along an "
                                 "axis; give a window of at most the input's size there (one size per axis)")
        if not allow_gaps and any(stride > k for k, n in zip(window, spatial) if k < n):
            raise OnnxplainError(f"stride {stride} is larger than the window {_sizes(window)}: pixels between "
                                 "windows would be covered by none; give a stride of at most the window")
        self.spatial = tuple(int(n) for n in spatial)
        self.size = window
        self.axis_starts = [_starts(n, k, stride) for n, k in zip(self.spatial, self.size)]
        self.shape = tuple(len(s) for s in self.axis_starts)
        self.starts = np.array(list(product(*self.axis_starts)), dtype=np.int64).reshape(-1, len(spatial))
        self._slices = [tuple(slice(s, s + k) for s, k in zip(start, self.size)) for start in self.starts.tolist()]

    def __len__(self) -> int:
        return len(self.starts)

    def slices(self, window_id: int) -> tuple[slice, ...]:
        return self._slices[window_id]

    def windows(self, values: np.ndarray, window_ids) -> np.ndarray:
        """(len(window_ids), C, *size): the windows' contents of `values` (C, *spatial)."""
        return np.stack([values[(slice(None),) + self._slices[w]] for w in window_ids])

    def counts(self) -> np.ndarray:
        """How many windows cover each pixel."""
        return self._scatter(np.ones((1, len(self)))).reshape(self.spatial)

    def average(self, values: np.ndarray) -> np.ndarray:
        """(W, K) per-window values -> (K, *spatial): each pixel's mean over the windows that contain it."""
        sums = self._scatter(np.asarray(values, dtype=np.float64).T)
        counts = self.counts()
        return np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)

    def _scatter(self, values: np.ndarray) -> np.ndarray:
        """(K, W) -> (K, *spatial) sums: one vectorised add per offset inside the window."""
        k = len(values)
        on_grid = values.reshape(k, *self.shape)
        sums = np.zeros((k, *self.spatial))
        for offset in np.ndindex(*self.size):
            index = np.ix_(*[np.asarray(s) + o for s, o in zip(self.axis_starts, offset)])
            sums[(slice(None),) + index] += on_grid
        return sums


def _starts(n: int, k: int, stride: int) -> list[int]:
    starts = list(range(0, n - k + 1, stride))
    if starts[-1] != n - k:
        starts.append(n - k)
    return starts


def _sizes(sizes) -> str:
    return "x".join(str(int(n)) for n in sizes)
