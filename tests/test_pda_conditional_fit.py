"""The conditional sampler's draws, exactly: mu1 + S12 S22^-1 (ring - mu2) plus the sampler's own standard normals
(`window_normals`, public) times the Cholesky factor of the Schur complement S11 - S12 S22^-1 S21, with S the
unbiased covariance (np.cov, N - 1) of the reference patches of the window's location cell (cell of the patch's
centre) plus the ridge. Few patches make N against N - 1 visible; also per-channel clipping and the cache key."""
from __future__ import annotations

import numpy as np
import pytest

from onnxplain.methods.samplers import ConditionalSampler, window_normals
from onnxplain.methods.windows import WindowGrid

pytestmark = pytest.mark.usefixtures("private_cache")  # fitted samplers are cached in a folder of the test's own
RIDGE, SEED, SAMPLES = 1e-3, 9, 6


def literal_conditional(reference, x, start, k, padding, cells):
    """(conditional mean, Cholesky factor of the conditional covariance) of the k x k window at `start` given x's
    ring, for single-channel (R, 1, H, W) reference data, from the formulas."""
    spatial = np.array(reference.shape[2:])
    patch = np.minimum(k + 2 * padding, spatial)
    corner = np.clip(np.array(start) - padding, 0, spatial - patch)
    cell_of = lambda c: (c + patch // 2) * np.array(cells) // spatial  # noqa: E731
    corners = [np.array(c) for c in np.ndindex(*(spatial - patch + 1))
               if (cell_of(np.array(c)) == cell_of(corner)).all()]
    data = np.concatenate([reference[:, 0, c[0]:c[0] + patch[0], c[1]:c[1] + patch[1]].reshape(len(reference), -1)
                           for c in corners])
    mean, cov = data.mean(axis=0), np.cov(data, rowvar=False)
    cov = cov + RIDGE * np.mean(np.diag(cov)) * np.eye(len(cov))
    inner = np.zeros(patch, bool)
    inner[start[0] - corner[0]:start[0] - corner[0] + k, start[1] - corner[1]:start[1] - corner[1] + k] = True
    a, b = inner.ravel(), ~inner.ravel()
    ring = x[0, corner[0]:corner[0] + patch[0], corner[1]:corner[1] + patch[1]].ravel()[b]
    solve = np.linalg.solve(cov[np.ix_(b, b)], np.column_stack([ring - mean[b], cov[np.ix_(b, a)]]))
    cond_mean = mean[a] + cov[np.ix_(a, b)] @ solve[:, 0]
    factor = np.linalg.cholesky(cov[np.ix_(a, a)] - cov[np.ix_(a, b)] @ solve[:, 1:])
    return cond_mean, factor


def draws_of(sampler, grid, x, start):
    """(the sampler's draws for the window at `start`, the standard normals they are made from), (S, k*k) each."""
    window = int(np.flatnonzero((grid.starts == start).all(axis=1))[0])
    normals = window_normals(SEED, [window], SAMPLES * int(np.prod(grid.size))).reshape(SAMPLES, -1)
    return sampler.sample(x, [window], SAMPLES, SEED)[0].reshape(SAMPLES, -1), normals


@pytest.mark.parametrize("start", [(0, 0), (1, 1), (2, 1)])
def test_draws_are_the_schur_conditional_of_the_unbiased_covariance(start):
    """One patch position (the 3x3 image itself), 12 patches: the covariance's N - 1 is a 9% difference."""
    reference = np.random.default_rng(0).normal(size=(12, 1, 3, 3))
    x = np.random.default_rng(1).normal(size=(1, 3, 3))
    grid = WindowGrid((3, 3), 1)
    sampler = ConditionalSampler(1, ridge=RIDGE, clip=None, cache=False).fit(reference, grid)
    got, normals = draws_of(sampler, grid, x, start)
    mean, factor = literal_conditional(reference, x, start, 1, 1, (1, 1))
    np.testing.assert_allclose(got, mean + normals @ factor.T, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("start", [(0, 1), (1, 3), (2, 5)])
def test_a_location_cell_is_the_cell_of_the_patch_centre(start):
    """4x8 images, 2x2 windows, padding 1 (4x4 patches), two cells across: the patch at columns 2-5 (window start
    column 3) has its centre in the right cell, though it starts in the left one."""
    rng = np.random.default_rng(2)
    reference = rng.normal(size=(30, 1, 4, 8)) * np.linspace(0.2, 3.0, 8)
    x = rng.normal(size=(1, 4, 8))
    grid = WindowGrid((4, 8), 2)
    sampler = ConditionalSampler(1, location_grid=(1, 2), ridge=RIDGE, clip=None, cache=False).fit(reference, grid)
    got, normals = draws_of(sampler, grid, x, start)
    mean, factor = literal_conditional(reference, x, start, 2, 1, (1, 2))
    np.testing.assert_allclose(got, mean + normals @ factor.T, rtol=1e-7, atol=1e-9)


def test_samples_are_clipped_to_their_own_channels_range():
    rng = np.random.default_rng(3)
    reference = np.concatenate([rng.uniform(0, 1, (40, 1, 6, 6)), rng.uniform(10, 20, (40, 1, 6, 6))], axis=1)
    x = np.stack([np.full((6, 6), 5.0), np.full((6, 6), 15.0)])   # channel 0's ring far above its range
    grid = WindowGrid((6, 6), 2)
    draws = ConditionalSampler(1, cache=False).fit(reference, grid).sample(x, np.arange(len(grid)), 20, 0)
    for channel in (0, 1):
        values, known = draws[:, :, channel], reference[:, channel]
        assert known.min() <= values.min() and values.max() <= known.max()
    assert (draws[:, :, 0] == reference[:, 0].max()).any()        # the clip was needed


@pytest.mark.parametrize("changed", [{"ridge": 0.5}, {"max_patches": 40}, {"location_grid": 2}])
def test_a_cached_fit_is_reused_only_with_the_same_settings(changed):
    reference = np.random.default_rng(4).normal(size=(20, 1, 6, 6))
    grid, x = WindowGrid((6, 6), 2), reference[0]
    ConditionalSampler(1).fit(reference, grid)
    cached = ConditionalSampler(1, **changed).fit(reference, grid)
    fresh = ConditionalSampler(1, cache=False, **changed).fit(reference, grid)
    assert not cached.cache_hit
    np.testing.assert_array_equal(cached.sample(x, [0, 7], 5, 0), fresh.sample(x, [0, 7], 5, 0))
