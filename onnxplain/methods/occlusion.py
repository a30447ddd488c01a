"""Occlusion (Zeiler & Fergus 2014): cover a window with a fill value, see how much the explained score drops.

Relevance of a feature = the mean, over every window that covers it, of f(x) - f(x with that window covered),
so positive relevance is evidence for the explained output. Windows slide over the spatial axes (all channels are
covered together); a flat input is windowed as the image (spec `size`) or volume (spec `crop`) it came from. The last
window along each axis is pinned to the edge so that every feature is covered at least once.
"""
from __future__ import annotations

import itertools

import numpy as np

from ..errors import OnnxplainError
from ..explanation import Explanation
from ..runtime import progress_bar
from ..targets import Target, class_indices, hidden_values


def spatial_view(model, sample_shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(shape to view one sample as, axes of that view the windows slide over); other axes are covered whole."""
    spec = model.preprocess
    if spec is not None and spec.crop is not None and len(sample_shape) == 1:  # a flattened volume crop
        shape = tuple(b - a for a, b in spec.crop)
        if int(np.prod(shape)) == sample_shape[0]:
            return shape, tuple(range(len(shape)))
    if spec is not None and spec.layout == "flat" and spec.size is not None and len(sample_shape) == 1:
        shape = (*spec.size, spec.channels)
        if int(np.prod(shape)) == sample_shape[0]:
            return shape, (0, 1)
    if len(sample_shape) == 1:
        return sample_shape, (0,)
    if spec is not None and spec.layout == "NHWC" and len(sample_shape) == 3:
        return sample_shape, (0, 1)
    if len(sample_shape) == 2:
        return sample_shape, (0, 1)
    return sample_shape, tuple(range(1, len(sample_shape)))  # channel first: (C, H, W), (C, D, H, W)


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Start positions along one axis; the last window ends at the edge."""
    if window >= size:
        return [0]
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


class Occlusion:
    """Occlusion sensitivity: black-box, batched through `model.run`.

    window: edge of the (square/cubic) window in features; None = about 1/8 of the smallest windowed axis.
    stride: step between windows; None = window // 2 (at least 1).
    fill: value written into the covered window (in model-input units).
    reference: optional batch of inputs; when given, the window is filled with their mean instead of `fill`.
    """

    def __init__(self, window: int | None = None, stride: int | None = None, fill: float = 0.0,
                 reference: np.ndarray | None = None, progress: bool = True):
        if window is not None and window < 1:
            raise OnnxplainError(f"--window must be at least 1, got {window}")
        if stride is not None and stride < 1:
            raise OnnxplainError(f"--stride must be at least 1, got {stride}")
        self.window, self.stride, self.fill = window, stride, float(fill)
        self.reference = None if reference is None else np.asarray(reference)
        self.progress = progress

    def _baseline(self, model, shape: tuple[int, ...]) -> np.ndarray:
        if self.reference is None:
            return np.full(shape, self.fill, dtype=model.input_dtype)
        reference = model.check_input(self.reference if self.reference.ndim == len(shape) + 1
                                      else self.reference[None], "reference set (--reference)")
        return reference.mean(axis=0).astype(model.input_dtype)

    def _explained(self, model, x: np.ndarray, target: Target, classes: np.ndarray | None, batch_size: int):
        """(N,) explained values of a batch: the target class score per sample, or a hidden tensor's value."""
        if target.hidden:
            return hidden_values(model.run(x, [target.layer], batch_size=batch_size)[target.layer], target)
        scores = model.scores(x, batch_size=batch_size)
        return scores[np.arange(len(x)), classes]

    def explain(self, model, x: np.ndarray, target: Target | None = None) -> Explanation:
        target = target or Target()
        x = model.check_input(x)
        n, sample_shape = len(x), x.shape[1:]
        view_shape, axes = spatial_view(model, sample_shape)
        window = self.window or max(1, round(min(view_shape[a] for a in axes) / 8))
        stride = self.stride or max(1, window // 2)
        boxes = self._boxes(view_shape, axes, window, stride)
        baseline = self._baseline(model, sample_shape).reshape(view_shape)
        batch_size = model.batch_size()

        if target.hidden:
            classes = np.full(n, -1)
            score = self._explained(model, x, target, None, batch_size)
        else:
            scores = model.scores(x, batch_size=batch_size)
            classes = class_indices(model, scores, target)
            score = scores[np.arange(n), classes]

        views = x.reshape(n, *view_shape)
        total = np.zeros((n, *view_shape), dtype=np.float64)
        count = np.zeros(view_shape, dtype=np.float64)
        for box in boxes:
            count[box] += 1
        pairs = [(i, b) for i in range(n) for b in range(len(boxes))]
        for start in self._progress(range(0, len(pairs), batch_size), -(-len(pairs) // batch_size)):
            chunk = pairs[start:start + batch_size]
            covered = views[[i for i, _ in chunk]].copy()
            for row, (_, b) in enumerate(chunk):
                covered[row][boxes[b]] = baseline[boxes[b]]
            rows = np.array([i for i, _ in chunk])
            values = self._explained(model, covered.reshape(len(chunk), *sample_shape), target,
                                     classes[rows], batch_size)
            for (i, b), value in zip(chunk, values):
                total[i][boxes[b]] += score[i] - value
        relevance = (total / np.maximum(count, 1)).reshape(x.shape)
        return Explanation(relevance=relevance.astype(np.float32), target=classes, score=score, method="occlusion",
                           params={"window": window, "stride": stride,
                                   "fill": "reference mean" if self.reference is not None else self.fill},
                           diagnostics={"windows": len(boxes), "forward_passes_per_input": len(boxes) + 1})

    @staticmethod
    def _boxes(view_shape, axes, window: int, stride: int) -> list[tuple[slice, ...]]:
        """Every window as an index into one sample's view."""
        per_axis = [window_starts(view_shape[a], window, stride) for a in axes]
        boxes = []
        for starts in itertools.product(*per_axis):
            box = [slice(None)] * len(view_shape)
            for axis, begin in zip(axes, starts):
                box[axis] = slice(begin, begin + window)
            boxes.append(tuple(box))
        return boxes

    def _progress(self, iterable, total: int):
        if not self.progress:
            return iterable
        return progress_bar(iterable, total=total, desc="occlusion", unit="batch")
