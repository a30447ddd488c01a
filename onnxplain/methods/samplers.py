"""Samplers for prediction difference analysis: values that stand in for a window when it is 'unknown'.

Both take canonical arrays (C, *spatial) (see `windows.Geometry`) and return, for a list of window ids,
samples of shape (W, S, C, *window). Randomness comes from a counter-based stream per window, keyed by
(seed, window id) (`window_bits`), so a window's samples are the same whether it is drawn alone or in a chunk of
many, and a chunk's draws are a few array operations.

* `MarginalSampler`: the window's values in reference images at the same location (the paper's empirical
  distribution); with `samples >= len(reference)` every reference image is used, in order (exact expectation).
* `ConditionalSampler`: a multivariate Gaussian over l×l (l×l×l) patches, l = k + 2·padding, fitted on the
  reference; the inner window is drawn from its conditional given the surrounding ring (Schur complement).
  At the borders the patch is shifted to stay inside the input. Channels are modelled independently or jointly;
  `location_grid` fits one Gaussian per cell of a coarse grid (conditioning on location, the paper's MRI option).
  Samples are clipped to the reference's range: per channel (default), or per pixel as in the original code
  (voxels that are constant in the reference, e.g. background, then keep their value). Fitted factors are
  cached on disk.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ..errors import OnnxplainError
from ..numbers import real_number, seed_number, whole_number, whole_numbers
from .windows import WindowGrid

CACHE_VERSION = 2


MASK = 2**64 - 1
GAMMA = 0x9E3779B97F4A7C15          # splitmix64's increment (the golden ratio in 64 bits)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's output function on uint64 arrays (products wrap modulo 2^64)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def window_bits(seed: int, window_ids, count: int) -> np.ndarray:
    """(W, count) random 64-bit words, a stream per (seed, window id): splitmix64 started from a hash of both.
    Counter-based, so that a window's words are the same whether it is drawn alone or among many, and whole
    chunks of windows are drawn with a few array operations (a generator object per window costs ~10 us)."""
    windows = np.asarray(window_ids, dtype=np.int64).astype(np.uint64).reshape(-1, 1)
    key = _mix(np.array([int(seed) & MASK], dtype=np.uint64) ^ np.uint64(0x5851F42D4C957F2D))
    start = _mix(key ^ (windows * np.uint64(GAMMA)))
    steps = np.arange(1, count + 1, dtype=np.uint64) * np.uint64(GAMMA)
    return _mix(start + steps[None])


def window_uniforms(seed: int, window_ids, count: int) -> np.ndarray:
    """(W, count) uniform draws in (0, 1), 53 random bits each."""
    return ((window_bits(seed, window_ids, count) >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0 ** -53


def window_normals(seed: int, window_ids, count: int) -> np.ndarray:
    """(W, count) standard normal draws (Box-Muller on `window_uniforms`)."""
    pairs = -(-count // 2)
    uniform = window_uniforms(seed, window_ids, 2 * pairs)
    radius = np.sqrt(-2.0 * np.log(uniform[:, :pairs]))
    angle = 2.0 * np.pi * uniform[:, pairs:]
    return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)], axis=1)[:, :count]


class MarginalSampler:
    """Windows replaced by the same window of reference images."""

    def fit(self, reference: np.ndarray, grid: WindowGrid, seed: int = 0) -> "MarginalSampler":
        self.reference, self.grid = reference, grid
        self.boxes = np.lib.stride_tricks.sliding_window_view(      # (R, C, *positions, *window), a view
            reference, grid.size, axis=tuple(range(2, reference.ndim)))
        return self

    def samples_per_window(self, samples: int) -> int:
        return min(samples, len(self.reference))

    def sample(self, x: np.ndarray, window_ids, samples: int, seed: int) -> np.ndarray:
        count = self.samples_per_window(samples)
        every = count == len(self.reference)
        window_ids = np.asarray(window_ids, dtype=np.int64)
        if every:   # all reference images, in order
            chosen = np.broadcast_to(np.arange(count), (len(window_ids), count))
        else:       # a uniform subset of `count` images per window, in order
            chosen = np.sort(_subsets(window_uniforms(seed, window_ids, count), len(self.reference)), axis=1)
        corners = tuple(self.grid.starts[window_ids].T[:, :, None])                  # (d, W, 1)
        picked = self.boxes[(chosen, slice(None)) + corners]                         # (W, S, C, *window)
        return np.ascontiguousarray(picked)


class ConditionalSampler:
    """Gaussian patch model; the window drawn from p(window | surrounding ring [, grid cell])."""

    def __init__(self, padding: int = 2, channels: str = "independent", location_grid=None,
                 max_patches: int = 20_000, ridge: float = 1e-3, clip: str | None = "channel", cache: bool = True):
        if channels not in ("independent", "joint"):
            raise OnnxplainError(f"channels must be 'independent' or 'joint', not {channels!r}")
        if clip not in ("channel", "pixel", None):
            raise OnnxplainError(f"clip must be 'channel', 'pixel' or None, not {clip!r}")
        self.padding = whole_number("padding", padding, 0)
        self.channels, self.clip, self.cache = channels, clip, cache
        self.location_grid = None if location_grid is None else whole_numbers("location_grid", location_grid, 1)
        self.max_patches = whole_number("max_patches", max_patches, 2)
        self.ridge = real_number("ridge", ridge, 0, exclusive=True)   # > 0: the covariance is inverted
        self.cache_hit = False
        self.cache_path: Path | None = None
        self.cache_note: str | None = None       # why the cache was not used as it stood (refitted, not written)

    # ------------------------------------------------------------------ fitting
    def fit(self, reference: np.ndarray, grid: WindowGrid, seed: int = 0) -> "ConditionalSampler":
        """Assign every window a (grid cell, offset inside its patch) configuration and fit its conditional."""
        self.grid, self.seed, self._rings = grid, seed_number(seed), {}
        spatial, n_channels = grid.spatial, reference.shape[1]
        self.patch = tuple(min(k + 2 * self.padding, n) for k, n in zip(grid.size, spatial))
        self.cells = _cells(self.location_grid, spatial)
        self.groups = [[c] for c in range(n_channels)] if self.channels == "independent" else [list(range(n_channels))]
        starts = grid.starts
        self.patch_starts = np.clip(starts - self.padding, 0, np.array(spatial) - np.array(self.patch))
        keys = np.concatenate([self._cell_of(self.patch_starts), starts - self.patch_starts], axis=1)
        self.configs, self.window_config = np.unique(keys, axis=0, return_inverse=True)
        self.window_config = self.window_config.reshape(-1)
        over = 0 if self.clip == "pixel" else tuple(a for a in range(reference.ndim) if a != 1)
        self.low, self.high = reference.min(axis=over), reference.max(axis=over)
        self.cache_path = _cache_file(self._key(reference)) if self.cache else None
        self.cache_note = None
        self.cache_hit = self.cache_path is not None and self._load(self.cache_path)
        if not self.cache_hit:
            self._fit_configs(reference)
            if self.cache_path is not None:
                self._save(self.cache_path)
        return self

    def _cell_of(self, patch_starts: np.ndarray) -> np.ndarray:
        centre = patch_starts + np.array(self.patch) // 2
        return centre * np.array(self.cells) // np.array(self.grid.spatial)

    def _fit_configs(self, reference: np.ndarray) -> None:
        """Per grid cell: mean and covariance of its reference patches; per configuration: the conditional."""
        d = len(self.patch)
        positions = np.array(list(np.ndindex(*[n - p + 1 for n, p in zip(self.grid.spatial, self.patch)])))
        position_cells = self._cell_of(positions)
        rng = np.random.default_rng(self.seed)
        for name, shapes in self._fitted_shapes().items():
            setattr(self, name, [np.zeros(shape) for shape in shapes])
        for cell in np.unique(self.configs[:, :d], axis=0):
            where = positions[(position_cells == cell).all(axis=1)]
            patches = _patches(reference, where, self.patch, self.max_patches, rng)  # (M, C, prod(patch))
            for g, channels in enumerate(self.groups):
                data = patches[:, channels].reshape(len(patches), -1)
                if not np.issubdtype(data.dtype, np.floating):   # uint8 pixels: centred without wrapping around
                    data = data.astype(np.float64)
                mean = data.mean(axis=0, dtype=np.float64)
                centred = data - mean.astype(data.dtype)
                cov = (centred.T @ centred).astype(np.float64) / max(len(data) - 1, 1)  # in the data's precision
                cov += self.ridge * max(float(np.mean(np.diag(cov))), 1e-12) * np.eye(len(cov))
                precision = np.linalg.inv(cov)             # one inverse per cell serves every window offset
                indices = np.flatnonzero((self.configs[:, :d] == cell).all(axis=1))
                self._condition(g, indices, mean, precision, len(channels))

    def _fitted_shapes(self) -> dict[str, list[tuple[int, ...]]]:
        """Shapes of the fitted arrays, per channel group: gain (configs, inner, outer), factor (configs, inner,
        inner), mean_in (configs, inner), mean_out (configs, outer)."""
        count, shapes = len(self.configs), {"gain": [], "factor": [], "mean_in": [], "mean_out": []}
        for group in self.groups:
            inner = len(group) * int(np.prod(self.grid.size))
            outer = len(group) * int(np.prod(self.patch)) - inner
            for name, shape in (("gain", (count, inner, outer)), ("factor", (count, inner, inner)),
                                ("mean_in", (count, inner)), ("mean_out", (count, outer))):
                shapes[name].append(shape)
        return shapes

    def inner_index(self, offset, n_channels: int) -> np.ndarray:
        """Indices of the window inside a flattened (channels, *patch) vector."""
        mask = np.zeros(self.patch, dtype=bool)
        mask[tuple(slice(o, o + k) for o, k in zip(offset, self.grid.size))] = True
        flat = np.flatnonzero(mask)
        size = int(np.prod(self.patch))
        return (np.arange(n_channels)[:, None] * size + flat[None]).reshape(-1)

    def _ring_index(self, g: int, config: int, n_channels: int) -> np.ndarray:
        """Indices of the ring (patch minus window) of configuration `config`, computed once per fit."""
        key = (g, config)
        if key not in self._rings:
            inner = self.inner_index(self.configs[config, len(self.patch):], n_channels)
            self._rings[key] = np.setdiff1d(np.arange(n_channels * int(np.prod(self.patch))), inner)
        return self._rings[key]

    def _condition(self, g: int, indices: np.ndarray, mean: np.ndarray, precision: np.ndarray,
                   n_channels: int) -> None:
        """Gaussian conditionals of the window given the ring for configurations `indices` of one cell, from the
        precision matrix P = S^-1: covariance P11^-1 = S11 - S12 S22^-1 S21 (the Schur complement), mean
        mu1 - P11^-1 P12 (x2 - mu2) = mu1 + S12 S22^-1 (x2 - mu2); a Cholesky factor of the covariance for draws.
        Stacked over configurations: small LAPACK calls one by one are slow under threaded BLAS."""
        everything = np.arange(len(mean))
        inner = np.stack([self.inner_index(self.configs[i, len(self.patch):], n_channels) for i in indices])
        outer = np.stack([np.setdiff1d(everything, row) for row in inner])
        conditional = np.linalg.inv(precision[inner[:, :, None], inner[:, None, :]])
        conditional = (conditional + conditional.transpose(0, 2, 1)) / 2
        self.gain[g][indices] = -conditional @ precision[inner[:, :, None], outer[:, None, :]]
        self.factor[g][indices] = _square_root(conditional)
        self.mean_in[g][indices], self.mean_out[g][indices] = mean[inner], mean[outer]

    # ------------------------------------------------------------------ sampling
    def samples_per_window(self, samples: int) -> int:
        return samples

    def sample(self, x: np.ndarray, window_ids, samples: int, seed: int) -> np.ndarray:
        window_ids = np.asarray(window_ids, dtype=np.int64)
        n_channels, k = x.shape[0], self.grid.size
        size = int(np.prod(self.patch))
        view = np.lib.stride_tricks.sliding_window_view(x, self.patch, axis=tuple(range(1, x.ndim)))
        corners = tuple(self.patch_starts[window_ids].T)                      # each window's patch corner
        patches = np.moveaxis(view[(slice(None),) + corners], 0, 1).reshape(len(window_ids), n_channels, size)
        noise = window_normals(seed, window_ids, samples * n_channels * int(np.prod(k)))
        noise = noise.reshape(len(window_ids), samples, n_channels * int(np.prod(k)))
        out = np.empty((len(window_ids), samples, n_channels * int(np.prod(k))))
        configs = self.window_config[window_ids]
        column = 0
        for g, channels in enumerate(self.groups):
            width = self.gain[g].shape[1]
            for config in np.unique(configs):
                rows = np.flatnonzero(configs == config)
                vectors = patches[rows][:, channels].reshape(len(rows), -1)
                ring = vectors[:, self._ring_index(g, config, len(channels))]
                mean = self.mean_in[g][config] + (ring - self.mean_out[g][config]) @ self.gain[g][config].T
                draws = noise[rows][:, :, column:column + width] @ self.factor[g][config].T
                out[rows, :, column:column + width] = mean[:, None, :] + draws
            column += width
        out = out.reshape(len(window_ids), samples, n_channels, *k)
        if self.clip == "channel":
            shape = (1, 1, n_channels) + (1,) * len(k)
            out = np.clip(out, self.low.reshape(shape), self.high.reshape(shape))
        elif self.clip == "pixel":
            low, high = self.grid.windows(self.low, window_ids), self.grid.windows(self.high, window_ids)
            out = np.clip(out, low[:, None], high[:, None])
        if np.issubdtype(x.dtype, np.integer):   # integer pixels: each draw to its nearest whole value of the type
            out = np.clip(np.rint(out), np.iinfo(x.dtype).min, np.iinfo(x.dtype).max)
        return out.astype(x.dtype, copy=False)

    # ------------------------------------------------------------------ disk cache
    def _key(self, reference: np.ndarray) -> str:
        digest = hashlib.sha256(np.ascontiguousarray(reference).tobytes())
        digest.update(json.dumps([str(reference.dtype), reference.shape]).encode())
        params = {"version": CACHE_VERSION, "window": self.grid.size, "padding": self.padding,
                  "channels": self.channels, "cells": self.cells, "max_patches": self.max_patches,
                  "ridge": self.ridge, "seed": self.seed, "configs": self.configs.tolist()}
        digest.update(json.dumps(params, default=int).encode())
        return digest.hexdigest()[:24]

    def _save(self, path: Path) -> None:
        """Write the fitted arrays (atomically); a cache that cannot be written is skipped, with a note."""
        arrays = {f"{name}{g}": getattr(self, name)[g] for name in ("gain", "factor", "mean_in", "mean_out")
                  for g in range(len(self.groups))}
        partial = path.with_name(path.name + f".{os.getpid()}.partial.npz")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(partial, **arrays)
            partial.replace(path)
        except OSError as error:
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
            self.cache_note = _joined(self.cache_note, f"the fitted sampler was not cached ({path.parent}: "
                                                       f"{error.strerror or type(error).__name__})")

    def _load(self, path: Path) -> bool:
        """Read the fitted arrays; False when the entry is missing, or (with a note) unreadable or of other
        shapes, so that the caller refits and rewrites it."""
        if not path.is_file():
            return False
        expected = self._fitted_shapes()
        try:
            with np.load(path, allow_pickle=False) as stored:
                loaded = {name: [np.asarray(stored[f"{name}{g}"], dtype=np.float64) for g in range(len(shapes))]
                          for name, shapes in expected.items()}
        except Exception:   # a damaged zip or npy raises several unrelated types (BadZipFile, ValueError, ...)
            loaded = None
        if loaded is None or any([a.shape for a in loaded[name]] != shapes for name, shapes in expected.items()):
            self.cache_note = f"a damaged sampler cache entry was refitted ({path.name})"
            return False
        for name, arrays in loaded.items():
            setattr(self, name, arrays)
        return True


def _joined(note: str | None, more: str) -> str:
    return more if note is None else f"{note}; {more}"


def _subsets(uniform: np.ndarray, population: int) -> np.ndarray:
    """(W, k) uniformly random k-subsets of range(population), one per row of `uniform` (W, k): Floyd's
    algorithm, vectorised over rows (k steps, whatever the population: a 60,000-image reference costs no more)."""
    rows, k = uniform.shape
    if rows <= 4:     # a window or a few (the literal loop's calls): the same steps on Python numbers, faster there
        return np.array([_subset(row, population) for row in uniform.tolist()], dtype=np.int64).reshape(rows, k)
    chosen = np.empty((rows, k), dtype=np.int64)
    for step in range(k):
        top = population - k + step                       # draw from 0..top; take top itself if already chosen
        pick = np.minimum((uniform[:, step] * (top + 1)).astype(np.int64), top)
        taken = (chosen[:, :step] == pick[:, None]).any(axis=1)
        chosen[:, step] = np.where(taken, top, pick)
    return chosen


def _subset(uniform: list[float], population: int) -> list[int]:
    """`_subsets` for one row."""
    chosen: list[int] = []
    for step, u in enumerate(uniform):
        top = population - len(uniform) + step
        pick = min(int(u * (top + 1)), top)
        chosen.append(top if pick in chosen else pick)
    return chosen


def _square_root(covariances: np.ndarray) -> np.ndarray:
    """Factors L with L L^T = covariance, stacked: Cholesky, or eigenvalues clipped at 0 where it fails."""
    try:
        return np.linalg.cholesky(covariances)
    except np.linalg.LinAlgError:
        values, vectors = np.linalg.eigh(covariances)
        return vectors * np.sqrt(np.clip(values, 0, None))[:, None, :]


def _cells(location_grid, spatial: tuple[int, ...]) -> tuple[int, ...]:
    """Cells per axis of the location grid (1 everywhere: one stationary model)."""
    if location_grid is None:
        return (1,) * len(spatial)
    cells = (location_grid,) * len(spatial) if np.isscalar(location_grid) else tuple(location_grid)
    if len(cells) != len(spatial) or min(cells) < 1:
        raise OnnxplainError(f"location_grid {location_grid} needs one positive cell count per axis of {spatial}")
    return tuple(min(int(c), n) for c, n in zip(cells, spatial))


def _patches(reference: np.ndarray, positions: np.ndarray, patch: tuple[int, ...], limit: int,
             rng: np.random.Generator) -> np.ndarray:
    """(M, C, prod(patch)) reference patches at `positions` in every image, at most `limit` (seeded subsample)."""
    pairs = len(reference) * len(positions)
    chosen = np.arange(pairs) if pairs <= limit else np.sort(rng.choice(pairs, limit, replace=False))
    images, where = np.divmod(chosen, len(positions))
    axes = tuple(range(2, reference.ndim))
    view = np.lib.stride_tricks.sliding_window_view(reference, patch, axis=axes)  # (R, C, *positions, *patch)
    picked = view[(images, slice(None)) + tuple(positions[where].T)]             # (M, C, *patch)
    return picked.reshape(len(chosen), reference.shape[1], -1)


def _cache_file(key: str) -> Path:
    from ..zoo import cache_root

    return cache_root() / "pda" / f"conditional_{key}.npz"
