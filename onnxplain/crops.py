"""Crops: rows of a batch that differ from one input x's activation only inside a box, and how they are read
from and written into full maps or patches (`incremental.WindowRunner` runs the graph on them).

Moving many small boxes is where incremental passes spend much of their time, so the moves are batched: boxes are
gathered once per site (rows that share a window share a site) through a view of all boxes, and crops written
at one offset go as one slice per run of consecutive rows (the runner sorts rows so that runs are few).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from .ops.base import MAX_POOL

MAX_GROUPS = 64   # rows written per shared offset up to this many offsets, else element by element
MAX_RUNS = 256    # rows sharing an offset written as slices up to this many runs of consecutive rows
SLICED_POOL = 16  # max poolings with at most this many kernel positions run as a maximum over strided slices


@dataclass
class Crop:
    """Rows of a batch that differ from x's activation only inside a box: values (R, C, *size); row r's box is at
    `sites[row_site[r]]` (sites (U, d); every crop of one call shares `row_site`, so sites line up across crops)."""

    values: torch.Tensor
    sites: np.ndarray
    row_site: np.ndarray

    @property
    def size(self) -> tuple[int, ...]:
        return tuple(self.values.shape[2:])

    def moved(self, values: torch.Tensor, sites: np.ndarray | None = None) -> "Crop":
        """The same rows with new values (at new sites)."""
        return replace(self, values=values, sites=self.sites if sites is None else sites)


@dataclass
class FlatCrop(Crop):
    """A crop of a map flattened to (R, C·prod(spatial)) rows: values stay boxes (R, C, *size) of the map
    (`map_shape` (C, *spatial)), so that a dense layer reads only the box's entries (`flat_index`)."""

    map_shape: tuple[int, ...] = ()

    def flat_index(self) -> np.ndarray:
        """(U, C·prod(size)): each site's box entries as positions in the flattened map."""
        index = window_index(self.sites, self.size, self.map_shape[0], rows=False)
        index = np.broadcast_arrays(*index)
        return np.ravel_multi_index(tuple(index), self.map_shape).reshape(len(self.sites), -1)


def sites_of(starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct window starts (U, d) and each row's index into them."""
    if len(starts) == 0:
        return starts.reshape(0, starts.shape[1]), np.zeros(0, dtype=np.int64)
    low = starts.min(axis=0)
    keys = np.ravel_multi_index(tuple((starts - low).T), tuple(starts.max(axis=0) - low + 1))
    _, first, row_site = np.unique(keys, return_index=True, return_inverse=True)
    return starts[first], row_site.reshape(-1)


def gather(source: torch.Tensor, sites: np.ndarray, size: tuple[int, ...], row_site: np.ndarray) -> torch.Tensor:
    """(R, C, *size): the boxes of `source` (C, *spatial) at each row's site (inside `source`): one copy per site
    through a view of all boxes (blocks move whole, instead of element by element), then copied to its rows."""
    view = source
    for axis, k in enumerate(size):
        view = view.unfold(1 + axis, k, 1)                  # (C, *positions, *size)
    starts = tuple(torch.as_tensor(sites[:, a], device=source.device) for a in range(len(size)))
    boxes = view[(slice(None),) + starts].movedim(1, 0).contiguous()
    if len(row_site) == len(sites) and np.array_equal(row_site, np.arange(len(sites))):
        return boxes
    return boxes.index_select(0, torch.as_tensor(row_site, device=source.device))


def write(target: torch.Tensor, offsets: np.ndarray, crop: Crop) -> None:
    """target[r, :, box at offsets[site of r]] = crop.values[r] for every row; parts of a box outside target are
    left out.

    Rows that share an offset (most of them, when the offsets are relative to each site's own patch) are written
    together: as one slice per run of consecutive rows when they lie in few runs (`WindowRunner._grouped` sorts
    them so), else by one indexed copy per offset; rows with offsets of their own (whole maps) by one element-wise
    index."""
    values, row_site = crop.values, crop.row_site
    size, span = np.array(values.shape[2:]), np.array(target.shape[2:])
    distinct, site_group = sites_of(offsets)
    if len(distinct) <= MAX_GROUPS:
        row_group = site_group[row_site]
        firsts = np.flatnonzero(np.diff(row_group, prepend=-1))
        runs = len(firsts) <= MAX_RUNS
        parts = zip(row_group[firsts], firsts, np.append(firsts[1:], len(row_group))) if runs else \
            ((g, 0, len(row_group)) for g in range(len(distinct)))
        for g, first, last in parts:
            offset = distinct[g]
            low, high = np.maximum(offset, 0), np.minimum(offset + size, span)
            if (high <= low).any():
                continue
            into = tuple(slice(int(a), int(b)) for a, b in zip(low, high))
            part = tuple(slice(int(a - o), int(b - o)) for a, b, o in zip(low, high, offset))
            if runs:
                rows = slice(int(first), int(last))
                target[(rows, slice(None)) + into] = values[(rows, slice(None)) + part]
                continue
            rows = torch.as_tensor(np.flatnonzero(row_group == g), device=target.device)
            target[(slice(None), slice(None)) + into].index_copy_(
                0, rows, values.index_select(0, rows)[(slice(None), slice(None)) + part])
        return
    origin = offsets[row_site]
    index = window_index(origin, tuple(size), target.shape[1])
    if (origin >= 0).all() and (origin + size <= span).all():
        target[tuple(torch.as_tensor(i, device=target.device) for i in index)] = values
        return
    index = [np.broadcast_to(i, values.shape) for i in index]
    inside = np.ones(values.shape, dtype=bool)
    for axis, positions in enumerate(index[2:]):
        inside &= (positions >= 0) & (positions < span[axis])
    target[tuple(torch.as_tensor(i[inside], device=target.device) for i in index)] = \
        values[torch.as_tensor(inside, device=values.device)]


def max_pool_slices(patch: torch.Tensor, kernel, strides, dilations, size: tuple[int, ...]) -> torch.Tensor:
    """Max pooling of an unpadded patch to `size` outputs: for small kernels the maximum over the kernel's strided
    slices, one axis at a time, outer axes first so that the inner rows stay contiguous longest (the same numbers;
    several times faster than CPU pooling kernels on small maps)."""
    d = len(kernel)
    if int(np.prod(kernel)) > SLICED_POOL:
        return MAX_POOL[d](patch, [int(k) for k in kernel], [int(s) for s in strides], 0,
                           [int(v) for v in dilations])
    result, made = patch, False
    for axis, (k, r, n, s) in enumerate(zip(kernel, dilations, size, strides)):
        k, r, n, s = int(k), int(r), int(n), int(s)
        parts = [result[(slice(None),) * (axis + 2) + (slice(o * r, o * r + (n - 1) * s + 1, s),)] for o in range(k)]
        if k == 1:
            result = parts[0]
            continue
        result, made = torch.maximum(parts[0], parts[1]), True
        for part in parts[2:]:
            torch.maximum(result, part, out=result)
    return result if made else result.clone()


def window_index(starts: np.ndarray, size: tuple[int, ...], channels: int, rows: bool = True, device=None):
    """Index arrays that address, in a (rows, C, *spatial) tensor, row r's box of `size` at `starts[r]` (all
    channels); with rows=False the same boxes in one (C, *spatial) tensor, stacked as rows. NumPy arrays, or
    tensors on `device`: one vectorised read or write for a whole chunk of windows, on the CPU or a GPU alike."""
    count, axes = len(starts), len(size)

    def shape(axis: int, n: int) -> tuple[int, ...]:
        return tuple(n if a == axis else 1 for a in range(axes + 2))

    index = [np.arange(count).reshape(shape(0, count))] if rows else []
    index.append(np.arange(channels).reshape(shape(1, channels)))
    for a, k in enumerate(size):
        index.append((np.asarray(starts)[:, a, None] + np.arange(k)).reshape((count,) + shape(a + 2, k)[1:]))
    if device is None:
        return tuple(index)
    return tuple(torch.as_tensor(i, device=device) for i in index)
