"""The synthetic MRI cohort (models/mri_data.py), on a reduced grid: determinism, anatomy, the planted regions."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
import mri_data as data  # noqa: E402

SMALL = data.CohortSpec(shape=(30, 36, 30), n_patients=12, n_controls=12, effect=0.2)


pytestmark = pytest.mark.usefixtures("private_cache")  # fitted samplers are cached in a folder of the test's own


@pytest.fixture(scope="module")
def cohort():
    return np.stack([data.subject_volume(SMALL, i) for i in range(SMALL.n_subjects)]), SMALL.labels()


def test_subjects_are_deterministic_and_distinct():
    first, again = data.subject_volume(SMALL, 3), data.subject_volume(SMALL, 3)
    assert first.dtype == np.float32 and first.shape == SMALL.shape
    assert np.array_equal(first, again)
    assert not np.array_equal(first, data.subject_volume(SMALL, 4))
    other_seed = data.CohortSpec(shape=SMALL.shape, n_patients=12, n_controls=12, effect=0.2, seed=1)
    assert not np.array_equal(first, data.subject_volume(other_seed, 3))


def test_values_brain_shape_and_background(cohort):
    volumes, _ = cohort
    assert volumes.min() >= 0.0 and volumes.max() <= 1.0
    brain = data.brain_mask(SMALL)
    assert 0.2 < brain.mean() < 0.5                                  # a brain inside the box, not the box
    support = ndimage.distance_transform_edt(data.template(SMALL.shape).brain == 0) <= 2  # + misregistration
    assert (volumes[:, ~support] == 0).all()                         # skull-stripped background is exactly 0
    assert (~support).mean() > 0.4
    assert (volumes[:, brain] > 0).mean() > 0.99


def test_tracts_are_brighter_than_gray_matter():
    anatomy = data.template(SMALL.shape)
    volume = data.subject_volume(SMALL, SMALL.n_patients)            # a control
    tract = anatomy.tracts["callosum"] > 0.6 * anatomy.tracts["callosum"].max()
    cortex = (anatomy.brain > 0.5) & (anatomy.tissue < 0.2) & (sum(anatomy.tracts.values()) < 0.01)
    assert tract.sum() > 10 and cortex.sum() > 100
    assert volume[tract].mean() > 0.5 > 0.25 > volume[cortex].mean()


def test_planted_regions_carry_the_group_difference(cohort):
    volumes, labels = cohort
    planted, brain = data.planted_mask(SMALL), data.brain_mask(SMALL)
    elsewhere = brain & ~ndimage.binary_dilation(planted, iterations=2)
    patients, controls = volumes[labels == 1].mean(axis=0), volumes[labels == 0].mean(axis=0)
    inside = 1 - patients[planted].mean() / controls[planted].mean()
    outside = 1 - patients[elsewhere].mean() / controls[elsewhere].mean()
    assert 0.4 * SMALL.effect < inside < 1.6 * SMALL.effect        # patients lose FA there (mean severity = effect)
    assert abs(outside) < 0.15 * SMALL.effect                      # and nowhere else


def test_planted_mask_lies_in_and_outside_the_slab():
    full = data.planted_mask(data.CohortSpec())
    box = tuple(slice(a, b) for a, b in data.SLAB)
    in_slab = np.zeros_like(full)
    in_slab[box] = True
    assert (full & in_slab).sum() > 1000                           # three regions inside slices 29-40
    assert (full & ~in_slab).sum() > 200                           # one in the other hemisphere, outside
    for centre, _ in data.PLANTED:
        assert full[tuple(int(round(c)) for c in centre)]


def test_scaled_crop():
    assert data.scaled_crop(data.CohortSpec()) == data.SLAB
    assert data.scaled_crop(SMALL) == ((10, 14), (0, 36), (0, 30))


def test_cohort_slab_is_cached_and_matches_the_volumes():
    tiny = data.CohortSpec(shape=(23, 28, 23), n_patients=3, n_controls=2)
    slab, labels = data.cohort_slab(tiny)
    assert list(labels) == [1, 1, 1, 0, 0]
    files = list(data.cache_folder().glob("slab_*.npy"))
    assert len(files) == 1
    again, _ = data.cohort_slab(tiny)
    assert np.array_equal(slab, again)
    box = tuple(slice(a, b) for a, b in data.scaled_crop(tiny))
    assert np.array_equal(slab[4], data.subject_volume(tiny, 4)[box])


def test_nifti_written_with_the_mni_affine(tmp_path):
    import nibabel

    volume = data.subject_volume(SMALL, 0)
    path = data.write_nifti(volume, tmp_path / "s.nii.gz", SMALL)
    image = nibabel.load(str(path))
    assert np.array_equal(np.asarray(image.get_fdata(), dtype=np.float32), volume)
    assert np.allclose(np.diag(image.affine)[:3], [-2 * 91 / 30, 2 * 109 / 36, 2 * 91 / 30])
    assert np.allclose(image.affine[:3, 3], [90, -126, -72])
