"""Rendering: colours (red = for, blue = against, white = 0, symmetric), the threshold display, the fixed image
layout, slice montages, bar charts, and volumes written back as NIfTI on the input's grid."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from onnxplain import viz
from onnxplain.io.inputs import volume_to_tensor
from onnxplain.io.nifti import sample_to_volume, write_nifti
from onnxplain.io.preprocess import PreprocessSpec


def red(pixels):
    return (pixels[..., 0] > 0.7) & (pixels[..., 2] < 0.45)


def blue(pixels):
    return (pixels[..., 2] > 0.7) & (pixels[..., 0] < 0.45)


def test_heatmap_colours_are_symmetric_and_white_at_zero():
    relevance = np.array([[2.0, -2.0, 0.0, 1.0]])
    rgb = viz.heatmap_rgb(relevance)
    assert red(rgb[0, 0]) and blue(rgb[0, 1])
    np.testing.assert_allclose(rgb[0, 2], [1, 1, 1], atol=0.01)
    mirrored = viz.heatmap_rgb(-relevance)
    np.testing.assert_allclose(rgb[..., 0], mirrored[..., 2], atol=0.01)  # R of +r == B of -r
    assert rgb[0, 3, 1] > rgb[0, 0, 1]  # half the relevance: a lighter red


def test_threshold_keeps_only_large_relevance():
    relevance = np.array([1.0, -0.5, 0.14, -0.149, 0.151])
    np.testing.assert_array_equal(viz.apply_threshold(relevance, 0.15), [1.0, -0.5, 0.0, 0.0, 0.151])
    rgb = viz.heatmap_rgb(relevance[None], threshold=0.15)
    np.testing.assert_allclose(rgb[0, 2], [1, 1, 1], atol=0.01)
    assert viz.limit(np.zeros(3)) == 1.0


def test_overlay_is_transparent_where_relevance_is_zero():
    image = np.linspace(0, 1, 16).reshape(4, 4)
    relevance = np.zeros((4, 4))
    relevance[0, 0] = 1.0
    overlay = viz.overlay_rgb(image, relevance)
    np.testing.assert_allclose(overlay[1:, 1:, 0], overlay[1:, 1:, 2])  # gray where R = 0
    assert red(overlay[0, 0])


def test_image_figure_puts_red_where_relevance_is_positive(tmp_path):
    relevance = np.zeros((20, 30))
    relevance[:, :10] = 1.0
    relevance[:, 20:] = -1.0
    image = np.full((20, 30), 0.5)
    png = viz.save_figure(viz.image_figure(image, relevance, title="t"), tmp_path / "f.png")
    heat = viz.read_panel(png, 20, 30, 1)[3:-3, 3:-3]
    third = heat.shape[1] // 3
    assert red(heat[:, : third - 2]).mean() > 0.95
    assert blue(heat[:, -third + 2:]).mean() > 0.95
    assert (heat[:, third + 2: 2 * third - 2] > 0.95).all()  # white middle
    overlay = viz.read_panel(png, 20, 30, 2)[3:-3, 3:-3]
    assert red(overlay[:, : third - 2]).mean() > 0.9 and blue(overlay[:, -third + 2:]).mean() > 0.9


def test_slice_indices_follow_the_relevance():
    relevance = np.zeros((30, 5, 5))
    relevance[10:20] = 1
    picks = viz.slice_indices(relevance, 0, 4)
    assert picks[0] == 10 and picks[-1] == 19 and len(picks) == 4
    assert viz.slice_indices(np.zeros((6, 3, 3)), 0, 10) == list(range(6))


def test_montage_shows_positive_and_negative_regions(tmp_path):
    volume = np.random.default_rng(0).random((12, 14, 10))
    relevance = np.zeros_like(volume)
    relevance[4:8, 3:7, 2:5] = 1.0
    relevance[4:8, 9:12, 6:9] = -0.8
    fig = viz.montage_figure(volume, relevance, axis=0, slices=4, threshold=0.15)
    assert len(fig.axes) == 8  # 2 rows x 4 slices
    pixels = np.asarray(Image.open(viz.save_figure(fig, tmp_path / "m.png")).convert("RGB"), dtype=float) / 255
    assert red(pixels).sum() > 100 and blue(pixels).sum() > 100


def test_bar_chart_lists_top_features_largest_first():
    relevance = np.array([0.1, -3.0, 2.0, 0.0, -0.5])
    fig = viz.bar_figure(relevance, names=list("abcde"), top=3)
    bars = fig.axes[0].patches
    assert [round(b.get_width(), 6) for b in bars] == [-3.0, 2.0, -0.5]
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["b", "c", "e"]


def test_a_threshold_keeps_the_bars_that_reach_its_share_of_the_largest():
    relevance = np.array([0.1, -3.0, 2.0, 0.0, -0.5])
    features = SimpleNamespace(input_shape=(None, 5), preprocess=None)   # a feature vector is drawn as bars
    fig = viz.sample_figure(features, np.zeros(5), relevance, threshold=0.5)
    assert [round(b.get_width(), 6) for b in fig.axes[0].patches] == [-3.0, 2.0]
    assert "50% of max" in fig.axes[0].get_xlabel()


def fake_model(shape, spec):
    return SimpleNamespace(input_shape=(None, *shape), preprocess=spec)


def test_sample_figure_picks_the_picture_for_the_input():
    image_model = fake_model((1, 6, 6), PreprocessSpec(layout="NCHW", size=(6, 6), color="gray"))
    assert len(viz.sample_figure(image_model, np.zeros((1, 6, 6)), np.ones((1, 6, 6))).axes) == 4  # 3 + colour bar
    features = fake_model((7,), None)
    assert len(viz.sample_figure(features, np.zeros(7), np.arange(7.0)).axes[0].patches) == 7
    tokens = fake_model((16, 8), None)   # tokens x features: a map, not bars of flattened indices
    fig = viz.sample_figure(tokens, np.linspace(-2, 2, 128).reshape(16, 8), np.ones((16, 8)))
    assert len(fig.axes) == 4 and fig.axes[0].images[0].get_array().shape == (16, 8)
    assert fig.axes[0].images[0].get_array().min() == 0 and fig.axes[0].images[0].get_array().max() == 1
    long = viz.sample_figure(fake_model((600, 3), None), np.zeros((600, 3)), np.ones((600, 3)))
    width, height = long.get_size_inches()
    assert height < 2 * width   # a 600 x 3 series in panels of at most 4:1, not 200:1
    volume_model = fake_model((4 * 3 * 2,), PreprocessSpec(layout="flat", crop=((1, 5), (0, 3), (2, 4))))
    fig = viz.sample_figure(volume_model, np.zeros(24), np.ones(24), volume=np.zeros((6, 3, 5)), slice_axis=0)
    assert len(fig.axes) == 8  # the 4 slices holding relevance, two rows


def test_volume_round_trip_and_nifti_affine(tmp_path):
    nibabel = pytest.importorskip("nibabel")
    spec = PreprocessSpec(layout="flat", crop=((1, 5), (2, 5), (0, 2)))
    model = fake_model((4 * 3 * 2,), spec)
    volume = np.random.default_rng(1).random((6, 7, 2)).astype(np.float32)
    flat = volume_to_tensor(volume, model)
    back = sample_to_volume(flat, model, volume.shape)
    np.testing.assert_allclose(back[1:5, 2:5, 0:2], volume[1:5, 2:5, 0:2])
    assert (back[0] == 0).all() and (back[:, :2] == 0).all()
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-90, -126, -72]
    written = write_nifti(tmp_path / "r.nii.gz", back, affine)
    image = nibabel.load(str(written))
    np.testing.assert_allclose(image.affine, affine)
    np.testing.assert_allclose(image.get_fdata(), back, rtol=1e-6)
