"""Samplers of prediction difference analysis: the Gaussian conditional (Schur complement) checked against
formulas computed here from the reference patches, borders, clipping, location conditioning, the disk cache."""
from __future__ import annotations

import numpy as np
import pytest

from onnxplain.methods.samplers import ConditionalSampler, MarginalSampler
from onnxplain.methods.windows import WindowGrid


pytestmark = pytest.mark.usefixtures("private_cache")  # fitted samplers are cached in a folder of the test's own


@pytest.fixture(scope="module")
def reference(digits_cnn):
    images = np.load(digits_cnn.parent / "samples" / "digits_reference_cnn.npy")[:60]
    return images[:, :, ::2, ::2].astype(np.float64)  # (60, 1, 14, 14): small enough to fit every patch


def all_patches(reference, size):
    """Every size×size patch of every (single-channel) reference image, one per row."""
    height, width = reference.shape[2:]
    patches = [reference[:, 0, i:i + size, j:j + size].reshape(len(reference), -1)
               for i in range(height - size + 1) for j in range(width - size + 1)]
    return np.concatenate(patches)


@pytest.mark.parametrize("window_start", [(5, 6), (0, 0), (13, 4)])  # middle, corner, bottom edge
def test_conditional_samples_follow_the_schur_complement(reference, window_start):
    k, padding, ridge = 2, 1, 1e-3
    grid = WindowGrid((14, 14), k)
    sampler = ConditionalSampler(padding, ridge=ridge, clip=None, max_patches=10**6).fit(reference, grid)
    x = reference[7]
    start = np.array([min(s, 14 - k) for s in window_start])
    window = int(np.flatnonzero((grid.starts == start).all(axis=1))[0])
    draws = sampler.sample(x, [window], 20000, seed=3)[0].reshape(20000, -1)

    size = k + 2 * padding
    data = all_patches(reference, size)
    mean, cov = data.mean(axis=0), np.cov(data, rowvar=False)
    cov = cov + ridge * np.mean(np.diag(cov)) * np.eye(len(cov))
    corner = np.clip(start - padding, 0, 14 - size)                    # the patch stays inside the image
    inside = np.zeros((size, size), bool)
    inside[start[0] - corner[0]:start[0] - corner[0] + k, start[1] - corner[1]:start[1] - corner[1] + k] = True
    a, b = inside.reshape(-1), ~inside.reshape(-1)
    ring = x[0, corner[0]:corner[0] + size, corner[1]:corner[1] + size].reshape(-1)[b]
    inverse = np.linalg.inv(cov[np.ix_(b, b)])
    cond_mean = mean[a] + cov[np.ix_(a, b)] @ inverse @ (ring - mean[b])
    cond_cov = cov[np.ix_(a, a)] - cov[np.ix_(a, b)] @ inverse @ cov[np.ix_(b, a)]
    spread = np.sqrt(np.diag(cond_cov))
    assert np.all(np.abs(draws.mean(axis=0) - cond_mean) < 5 * spread / np.sqrt(len(draws)) + 1e-9)
    np.testing.assert_allclose(np.cov(draws, rowvar=False), cond_cov, atol=0.06 * spread.max() ** 2)


def test_samples_are_clipped_reproducible_and_chunk_independent(reference):
    grid = WindowGrid((14, 14), 3)
    sampler = ConditionalSampler(2).fit(reference, grid)
    x = reference[3]
    together = sampler.sample(x, [4, 40, 120], 8, seed=5)
    apart = np.concatenate([sampler.sample(x, [w], 8, seed=5) for w in (4, 40, 120)])
    np.testing.assert_array_equal(together, apart)
    assert together.shape == (3, 8, 1, 3, 3)
    many = sampler.sample(x, np.arange(len(grid)), 4, seed=0)
    assert many.min() >= reference.min() and many.max() <= reference.max()
    assert not np.array_equal(sampler.sample(x, [4], 8, seed=6), together[:1])


def test_joint_channel_model_couples_channels():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(80, 1, 9, 9))
    reference = np.concatenate([base, base + 0.01 * rng.normal(size=base.shape)], axis=1)  # channel 2 ≈ channel 1
    grid = WindowGrid((9, 9), 2)
    joint = ConditionalSampler(1, channels="joint", clip=None).fit(reference, grid)
    independent = ConditionalSampler(1, channels="independent", clip=None).fit(reference, grid)
    x = reference[0]
    for sampler, coupled in ((joint, True), (independent, False)):
        draws = sampler.sample(x, np.arange(len(grid)), 50, seed=1)
        gap = np.abs(draws[:, :, 0] - draws[:, :, 1]).mean()
        assert (gap < 0.1) == coupled


def test_location_grid_fits_one_model_per_cell():
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(100, 1, 8, 16))
    reference[:, :, :, 8:] *= 0.05   # the right half varies 20x less
    grid = WindowGrid((8, 16), 2)
    x = np.zeros((1, 8, 16))
    left, right = [int(np.flatnonzero((grid.starts == s).all(axis=1))[0]) for s in ((3, 2), (3, 12))]
    spreads = {}
    for cells in (None, (1, 2)):
        sampler = ConditionalSampler(1, location_grid=cells, clip=None).fit(reference, grid)
        draws = sampler.sample(x, [left, right], 2000, seed=0)
        spreads[cells] = draws[0].std() / draws[1].std()
    assert spreads[None] == pytest.approx(1.0, abs=0.1)       # one stationary model: same spread everywhere
    assert spreads[(1, 2)] > 3    # conditioned on location: the halves differ (cells near the middle mix both)


def test_fitted_models_are_cached_on_disk_by_reference(reference, tmp_path):
    grid = WindowGrid((14, 14), 2)
    first = ConditionalSampler(2).fit(reference, grid)
    assert not first.cache_hit and first.cache_path.is_file()
    second = ConditionalSampler(2).fit(reference, grid)
    assert second.cache_hit and second.cache_path == first.cache_path
    x = reference[0]
    np.testing.assert_array_equal(first.sample(x, [10, 50], 5, 0), second.sample(x, [10, 50], 5, 0))
    changed = reference.copy()
    changed[0, 0, 0, 0] += 0.5
    assert not ConditionalSampler(2).fit(changed, grid).cache_hit
    assert not ConditionalSampler(1).fit(reference, grid).cache_hit    # other padding, other model


def test_marginal_sampler_uses_reference_windows(reference):
    grid = WindowGrid((14, 14), 3, stride=2)
    sampler = MarginalSampler().fit(reference, grid)
    x = reference[0]
    every = sampler.sample(x, [7], 1000, seed=0)[0]
    box = grid.slices(7)
    np.testing.assert_array_equal(every, reference[(slice(None), slice(None)) + box])  # S >= R: all, in order
    labelled = reference + 10.0 * np.arange(len(reference))[:, None, None, None]   # every image's windows differ
    sampler = MarginalSampler().fit(labelled, grid)
    some = sampler.sample(x, [7, 8], 5, seed=0)
    assert some.shape == (2, 5, 1, 3, 3)
    for row, window in enumerate((7, 8)):
        boxes = labelled[(slice(None), slice(None)) + grid.slices(window)]
        chosen = [int(np.flatnonzero((boxes == s).all(axis=(1, 2, 3)))[0]) for s in some[row]]
        assert len(set(chosen)) == 5 and chosen == sorted(chosen)  # distinct reference images, in order
    np.testing.assert_array_equal(some[:1], sampler.sample(x, [7], 5, seed=0))
    firsts = np.stack([sampler.sample(x, [w], 5, seed=0)[0, 0, 0, 0, 0] // 10 for w in range(len(grid))])
    assert len(np.unique(firsts)) > 1                     # windows draw their own subsets


def test_window_grid_covers_every_pixel_and_averages():
    grid = WindowGrid((7, 9), 3, stride=2)
    assert grid.axis_starts == [[0, 2, 4], [0, 2, 4, 6]]
    counts = grid.counts()
    assert counts.min() >= 1
    values = np.arange(len(grid), dtype=float)[:, None]
    expected = np.zeros((7, 9))
    for w, start in enumerate(grid.starts):
        expected[start[0]:start[0] + 3, start[1]:start[1] + 3] += w
    np.testing.assert_allclose(grid.average(values)[0], expected / counts)
    volume = WindowGrid((4, 5, 6), 3)
    assert len(volume) == 2 * 3 * 4 and volume.counts().sum() == len(volume) * 27


def test_pixel_clipping_keeps_constant_background_exact():
    rng = np.random.default_rng(2)
    reference = rng.random((40, 1, 10, 10))
    reference[:, :, :, :4] = 0.0                      # a background that is 0 in every reference image
    grid = WindowGrid((10, 10), 2)
    x = reference[0]
    background = [w for w, s in enumerate(grid.starts) if s[1] + 2 <= 4]
    pixel = ConditionalSampler(2, clip="pixel").fit(reference, grid).sample(x, background, 6, seed=0)
    channel = ConditionalSampler(2, clip="channel").fit(reference, grid).sample(x, background, 6, seed=0)
    assert np.all(pixel == 0.0)                      # exactly x's values: the engine will not even run these
    assert np.any(channel > 0.0)


@pytest.mark.parametrize("sample_shape, spec, volume_shape, layout, channels, spatial", [
    ((3, 6, 5), dict(layout="NCHW"), None, "channels_first", 3, (6, 5)),
    ((6, 5, 3), dict(layout="NHWC"), None, "channels_last", 3, (6, 5)),
    ((90,), dict(layout="flat", size=[6, 5], color="rgb"), None, "flat", 3, (6, 5)),
    ((120,), dict(layout="flat", crop=[[2, 6], [0, 6], [1, 6]]), None, "flat", 1, (4, 6, 5)),
    ((120,), None, (4, 6, 5), "flat", 1, (4, 6, 5)),
    ((2, 4, 6, 5), None, None, "channels_first", 2, (4, 6, 5)),
    ((4, 6, 5), None, None, "no_channels", 1, (4, 6, 5)),
])
def test_geometry_round_trip(sample_shape, spec, volume_shape, layout, channels, spatial):
    from types import SimpleNamespace

    from onnxplain.io.preprocess import PreprocessSpec
    from onnxplain.methods.windows import Geometry

    model = SimpleNamespace(preprocess=PreprocessSpec.from_dict(spec) if spec else None)
    geometry = Geometry.infer(model, sample_shape, volume_shape)
    assert (geometry.layout, geometry.channels, geometry.spatial) == (layout, channels, spatial)
    x = np.arange(2 * int(np.prod(sample_shape)), dtype=np.float32).reshape(2, *sample_shape)
    grid = geometry.to_grid(x)
    assert grid.shape == (2, channels, *spatial)
    np.testing.assert_array_equal(geometry.from_grid(grid), x)
    view = geometry.grid_view(x)                    # the engine writes windows into its batch through this view
    np.testing.assert_array_equal(view, grid)
    view[(1, -1) + (0,) * len(spatial)] = -1.0
    assert np.shares_memory(view, x) and (x == -1.0).sum() == 1
    if layout == "flat" and channels == 3:   # flat RGB images are raveled H, W, C (PreprocessSpec.image_to_tensor)
        np.testing.assert_array_equal(grid[0, :, 0, 1], x[0, 3:6])


def test_window_streams_are_per_window_and_well_distributed():
    from scipy import stats

    from onnxplain.methods.samplers import window_bits, window_normals, window_uniforms

    together = window_bits(7, [0, 5, 3, 123456], 9)
    apart = np.concatenate([window_bits(7, [w], 9) for w in (0, 5, 3, 123456)])
    np.testing.assert_array_equal(together, apart)                      # alone or among many: the same words
    assert len(np.unique(together)) == together.size
    assert not np.array_equal(window_bits(8, [0], 9), together[:1])       # another seed, another stream
    uniform = window_uniforms(1, np.arange(200), 500).ravel()
    assert 0 < uniform.min() and uniform.max() < 1
    assert stats.kstest(uniform, "uniform").pvalue > 1e-3
    normal = window_normals(2, np.arange(200), 501)
    assert normal.shape == (200, 501)
    assert stats.kstest(normal.ravel(), "norm").pvalue > 1e-3
    lagged = np.corrcoef(normal[:, :-1].ravel(), normal[:, 1:].ravel())[0, 1]
    across = np.corrcoef(normal[:-1].ravel(), normal[1:].ravel())[0, 1]   # neighbouring windows
    assert abs(lagged) < 0.01 and abs(across) < 0.01


def test_marginal_subsets_are_uniform_and_cost_nothing_per_reference_image():
    from scipy import stats

    from onnxplain.methods.samplers import _subsets, window_uniforms

    chosen = np.sort(_subsets(window_uniforms(3, np.arange(100_000), 3), 5), axis=1)
    assert (np.diff(chosen, axis=1) > 0).all()                         # distinct images
    _, counts = np.unique(chosen @ np.array([25, 5, 1]), return_counts=True)
    assert len(counts) == 10 and stats.chisquare(counts).pvalue > 1e-3  # each of the 10 subsets equally likely
    few = window_uniforms(5, np.arange(6), 7)
    np.testing.assert_array_equal(np.concatenate([_subsets(few[:3], 50), _subsets(few[3:], 50)]),
                                  _subsets(few, 50))                     # one window or many: the same subsets
    huge = _subsets(window_uniforms(0, np.arange(4), 10), 10**12)       # no draw per reference image
    assert huge.shape == (4, 10) and all(len(set(row)) == 10 for row in huge) and huge.max() < 10**12
