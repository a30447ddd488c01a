"""Occlusion (Zeiler & Fergus 2014): cover a window with a fill value, see how much the explained score drops.

Relevance of a feature = the mean, over every window that covers it, of f(x) - f(x with that window covered),
so positive relevance is evidence for the explained output. Windows slide over the spatial axes (all channels are
covered together); a flat input is windowed as the image (spec `size`) or volume (spec `crop`) it came from, a
plain feature vector feature by feature. The windows and forward passes are prediction difference's
(`windows.WindowGrid`, `passes.WindowSamples`): the last window along each axis is flush with the edge, so every
feature is covered, and with `device` the passes run in the torch executor, incrementally around each window.
"""
from __future__ import annotations

import numpy as np

from ..errors import OnnxplainError
from ..explanation import Explanation, Method, relevance_dtype, require_model
from ..numbers import optional_whole_number, real_number
from ..pixels import integer_reader
from ..runtime import optional_bar
from ..targets import Target, as_target, class_indices, hidden_values
from .passes import WindowSamples, chunk_rows, forward_passes
from .windows import Geometry, WindowGrid, plain_features


class Occlusion(Method):
    """Occlusion sensitivity: black-box, batched like prediction difference.

    window: edge of the (square/cubic) window in features; None = about 1/8 of the smallest windowed axis, or one
    feature for a plain feature vector (tabular data).
    stride: step between windows; None = window // 2 (at least 1).
    fill: value written into the covered window (in model-input units; default 0); a whole number for an integer
    input.
    reference: optional batch of inputs; when given, the window is filled with their mean (not with a `fill`).
    device: None = onnxruntime; 'cpu' / 'cuda' / 'cuda:N' = the torch executor there (incremental passes).
    A pixel's relevance is the mean drop of the explained score over the windows that cover it, shared equally by
    its channels: their sum (what the picture shows) is that drop, as prediction difference shares its evidence
    (Captum's Occlusion gives every channel the whole drop, C times as much).
    """

    name = "occlusion"

    def __init__(self, window: int | None = None, stride: int | None = None, fill: float | None = None,
                 reference: np.ndarray | None = None, device: str | None = None, progress: bool = True):
        window, stride = optional_whole_number("window", window, 1), optional_whole_number("stride", stride, 1)
        fill = None if fill is None else real_number("fill", fill)
        if fill is not None and reference is not None:
            raise OnnxplainError("occlusion fills windows with a value (fill) or the reference mean (reference), "
                                 "not both")
        self.window, self.stride, self.fill = window, stride, fill
        self.reference = None if reference is None else np.asarray(reference)
        self.device, self.progress = device, progress

    def _baseline(self, model, shape: tuple[int, ...]) -> np.ndarray:
        if self.reference is None:
            return np.full(shape, self._fill_for(model.input_dtype), dtype=model.input_dtype)
        reference = model.check_input(self.reference if self.reference.ndim == len(shape) + 1
                                      else self.reference[None], "reference set (--reference)")
        mean = reference.mean(axis=0)
        if np.issubdtype(model.input_dtype, np.integer) and integer_reader(model) is None:   # pixels: the nearest
            mean = np.rint(mean)
        if np.issubdtype(model.input_dtype, np.integer) and not (mean == np.round(mean)).all():
            raise OnnxplainError(f"the reference mean has fractional values, but this model takes {model.input_dtype}"
                                 " inputs (token ids, categories): they would be truncated; give a whole-number fill")
        return mean.astype(model.input_dtype)

    def _fill_for(self, dtype: np.dtype) -> float | int:
        """The fill as a value of the model's input type, within its range: an integer input (token ids,
        categories) takes only an integral fill, never a silently truncated or wrapped one."""
        fill = self.fill or 0.0
        whole = np.issubdtype(dtype, np.integer)
        limits = np.iinfo(dtype) if whole else np.finfo(dtype)
        low, high = (limits.min, limits.max) if whole else (float(limits.min), float(limits.max))
        fractional = whole and fill != round(fill)
        if fractional or not low <= fill <= high:
            kind = " (token ids, categories); give a whole number" if whole else "; give a number"
            span = f"from {low} to {high}" if whole else f"from {low:.6g} to {high:.6g}"   # integer limits exact
            raise OnnxplainError(f"fill {fill:g} would be {'truncated' if fractional else 'out of range'}: "
                                 f"this model takes {dtype} inputs{kind} {span}")
        return int(fill) if whole else fill

    def explain(self, model, x: np.ndarray, target: Target | None = None) -> Explanation:
        require_model(model)
        target = as_target(model, target)
        x = model.check_input(x)
        n, sample_shape = len(x), x.shape[1:]
        geometry = Geometry.infer(model, sample_shape)
        plain = plain_features(model, sample_shape)
        window = self.window or (1 if plain else max(1, round(min(geometry.spatial) / 8)))
        stride = self.stride or max(1, window // 2)
        grid = WindowGrid(geometry.spatial, window, stride)
        cover = geometry.to_grid(self._baseline(model, sample_shape)[None])[0]
        passes = forward_passes(model, self.device)
        output = target.layer if target.hidden else model.score_output
        batch = passes.batch_size(x[0])
        rows = min(len(grid), chunk_rows(batch, x[0].nbytes))

        # f(x) from the engine that runs the windows: both sides of each drop alike (as prediction difference)
        original = passes.run(passes.array(x), output, batch)
        if target.hidden:
            classes, score = np.full(n, -1), hidden_values(original, target)
        else:
            scores = original.reshape(n, -1).astype(np.float64)
            classes = class_indices(scores, target)
            score = scores[np.arange(n), classes]

        maps, incremental, ran = [], True, np.ones(n, dtype=np.int64)   # f(x): one row each
        with optional_bar(self.progress, n * len(grid), "occlusion", "window") as bar:
            for i in range(n):
                run = WindowSamples(passes, geometry, x[i], output, grid.size, batch, rows)
                drops = np.empty(len(grid))
                for start in range(0, len(grid), run.rows):
                    ids = np.arange(start, min(len(grid), start + run.rows))
                    covers, own = grid.windows(cover, ids), grid.windows(run.x_grid, ids)   # (w, C, *k) each
                    changed = (covers != own).reshape(len(ids), -1).any(axis=1)
                    drops[ids] = 0.0               # a cover equal to x's own window changes nothing: no drop
                    ran[i] += int(changed.sum())
                    if changed.any():
                        raw = run(grid.starts[ids[changed]], covers[changed])
                        values = (hidden_values(raw, target) if target.hidden
                                  else raw.reshape(int(changed.sum()), -1)[:, classes[i]].astype(np.float64))
                        drops[ids[changed]] = score[i] - values
                    if bar is not None:
                        bar.update(len(ids))
                maps.append(grid.average(drops[:, None])[0])          # (*spatial): each pixel's mean drop
                incremental = incremental and run.incremental         # every input's rows ran incrementally
        relevance = geometry.shared_over_channels(np.stack(maps)).reshape(x.shape)   # a pixel's channels share it
        name = passes.name + (", incremental" if incremental else "")
        params = {"window": window, "stride": stride,
                  "fill": "reference mean" if self.reference is not None else self.fill or 0.0,
                  "device": self.device or "onnxruntime"}
        return Explanation(relevance=relevance.astype(relevance_dtype(x.dtype)), target=classes, score=score,
                           method=self.name, params=params,
                           diagnostics={"score_kind": "hidden" if target.hidden else model.score_kind,
                                        "windows": len(grid), "forward_passes": int(ran.sum()),
                                        "forward_passes_per_input": ran.tolist(), "forward_passes_on": name})
