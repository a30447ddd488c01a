"""A deterministic synthetic stand-in for the paper's MRI cohort (§4.2): fractional-anisotropy-like volumes.

No real MRI can be downloaded here, so we build a cohort of the paper's size and geometry: 100 "patients" and
70 "controls", each a 91x109x91 volume (2 mm MNI-like grid) with values in [0, 1]:

* anatomy (one template): a brain-shaped mask (cerebrum, cerebellum, brainstem), a gray-matter ribbon with a
  fixed gyral pattern (FA ~0.15), deep gray matter (~0.25), ventricles (~0.07), white matter (~0.38) and
  white-matter tracts with a Gaussian cross-section (corpus callosum, corticospinal tracts, cingulum, superior
  longitudinal and inferior fronto-occipital fasciculi, optic radiations; up to ~0.75);
* subject variation: a gain per tract and a global gain, a small misregistration (translation, scaling),
  spatially smooth noise and voxel noise;
* the group difference: patients have reduced FA inside a few known spherical regions (`PLANTED`), with a
  severity drawn per patient and region (mean `CohortSpec.effect`). Three regions lie inside the paper's slab
  (slices 29-40 along the first axis); one lies in the other hemisphere, outside it, where a slab model cannot see.

Everything is a function of (spec, subject index): subject `i` is the same volume every time, on any machine.
Geometry is written in full-grid voxel units, so a reduced `shape` (for tests) samples the same brain coarser.
Volumes are made on demand; the training slab of the whole cohort is cached as .npy (`cache_folder()`), and
`python models/mri_data.py --out DIR --subjects 0 100` writes NIfTI volumes plus the planted-region mask.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage

FULL_SHAPE = (91, 109, 91)
SLAB = ((29, 41), (0, 109), (0, 91))           # slices 29-40 along the first axis, as in the paper
AFFINE = np.array([[-2.0, 0, 0, 90], [0, 2.0, 0, -126], [0, 0, 2.0, -72], [0, 0, 0, 1]])  # MNI152 2 mm
VERSION = 1                                      # bump when the generator changes: part of the cache key
LABELS = ["control", "patient"]                  # class 1 = patient ("HIV" in the paper)
MID = 45.0                                       # the midline along the first axis

# (centre, radius) in full-grid voxels; the first three lie in the slab, the last one outside it
PLANTED = (((34.0, 50.0, 30.0), 4.5),           # posterior limb of the internal capsule / corticospinal tract
           ((36.0, 44.0, 55.0), 4.5),           # corona radiata next to the callosal body
           ((39.0, 70.0, 50.0), 3.5),           # anterior cingulum
           ((58.0, 44.0, 55.0), 4.5))           # the mirror of the second, other hemisphere (outside the slab)

# tracts: (control points per hemisphere as (offset from midline, y, z), radius, peak FA above white matter)
TRACTS = {
    "corticospinal": (((6, 50, 4), (10, 51, 30), (14, 49, 52), (20, 47, 74)), 2.6, 0.32),
    "cingulum": (((6, 28, 50), (6, 50, 58), (6, 72, 56), (6, 88, 46)), 1.8, 0.28),
    "slf": (((24, 28, 52), (24, 52, 60), (22, 78, 54)), 2.4, 0.26),
    "ifof": (((22, 18, 34), (25, 52, 33), (20, 96, 38)), 2.2, 0.26),
    "optic_radiation": (((15, 14, 40), (24, 36, 37), (18, 52, 34)), 2.0, 0.24),
}
CALLOSUM_Y = tuple(range(34, 77, 2))            # the callosum: a sheet of transverse arcs, one every 2 voxels


@dataclass(frozen=True)
class CohortSpec:
    """The cohort: grid shape, group sizes, seed and effect size (mean fractional FA loss in planted regions)."""

    shape: tuple[int, int, int] = FULL_SHAPE
    n_patients: int = 100
    n_controls: int = 70
    seed: int = 2017
    effect: float = 0.08
    smooth_noise: float = 0.045                  # std of the spatially smooth noise (sigma 2 voxels)
    voxel_noise: float = 0.025                   # std of the independent per-voxel noise

    @property
    def n_subjects(self) -> int:
        return self.n_patients + self.n_controls

    def label(self, index: int) -> int:
        """Subjects 0..n_patients-1 are patients (1), the rest controls (0)."""
        return int(index < self.n_patients)

    def labels(self) -> np.ndarray:
        return np.array([self.label(i) for i in range(self.n_subjects)])

    def scale(self) -> np.ndarray:
        """Full-grid voxels per voxel of this grid, per axis."""
        return np.array(FULL_SHAPE, dtype=float) / np.array(self.shape, dtype=float)

    def key(self) -> str:
        return hashlib.sha1(json.dumps([VERSION, asdict(self)], sort_keys=True).encode()).hexdigest()[:12]


def scaled_crop(spec: CohortSpec, crop=SLAB) -> tuple[tuple[int, int], ...]:
    """The full-grid box `crop` on this spec's grid (identity on the full grid)."""
    return tuple((int(round(a / s)), int(round(b / s))) for (a, b), s in zip(crop, spec.scale()))


# ---------------------------------------------------------------------------------------------------- template

def _coordinates(shape) -> list[np.ndarray]:
    """Full-grid voxel coordinates of each voxel centre of a grid of `shape` (open mesh)."""
    scale = np.array(FULL_SHAPE, dtype=float) / np.array(shape, dtype=float)
    axes = [(np.arange(n) + 0.5) * s - 0.5 for n, s in zip(shape, scale)]
    return np.meshgrid(*axes, indexing="ij", sparse=True)


def _ellipsoid(coords, centre, radii) -> np.ndarray:
    """Normalised radius: < 1 inside the ellipsoid."""
    return np.sqrt(sum(((c - m) / r) ** 2 for c, m, r in zip(coords, centre, radii)))


def _soft(inside: np.ndarray, width: float = 0.04) -> np.ndarray:
    """A soft step from 1 (radius well under 1) to 0 (well over 1)."""
    return 1.0 / (1.0 + np.exp((inside - 1.0) / width))


def _curve_distance(shape, polylines: list[np.ndarray]) -> np.ndarray:
    """Distance (full-grid voxels) from each voxel to the nearest of some polylines (control points each)."""
    scale = np.array(FULL_SHAPE, dtype=float) / np.array(shape, dtype=float)
    seeds = np.ones(shape, dtype=bool)
    for points in polylines:
        dense = np.concatenate([np.linspace(a, b, 60, endpoint=False) for a, b in zip(points[:-1], points[1:])])
        index = np.clip(np.round((dense + 0.5) / scale - 0.5).astype(int), 0, np.array(shape) - 1)
        seeds[tuple(index.T)] = False
    return ndimage.distance_transform_edt(seeds, sampling=scale)


def _tract_curves() -> dict[str, tuple[list[np.ndarray], float, float]]:
    """Tract name -> (polylines in full-grid voxels, radius, peak FA): each tract per hemisphere, and the callosum."""
    curves = {}
    for name, (points, radius, peak) in TRACTS.items():
        for side, sign in (("left", -1), ("right", 1)):
            line = np.array([(MID + sign * dx, y, z) for dx, y, z in points], dtype=float)
            curves[f"{name}_{side}"] = ([line], radius, peak)
    offsets = np.linspace(-26, 26, 9)
    arcs = [np.array([(MID + dx, y, 47 + 9 * (dx / 26) ** 2 - 3 * ((y - 55) / 21) ** 2) for dx in offsets])
            for y in CALLOSUM_Y]
    curves["callosum"] = (arcs, 1.8, 0.36)
    return curves


@dataclass(frozen=True)
class Template:
    """The shared anatomy on one grid: brain mask, tissue FA without tracts, and one profile per tract."""

    brain: np.ndarray            # soft mask in [0, 1]
    tissue: np.ndarray           # FA of gray/white matter, deep gray matter and ventricles
    tracts: dict                 # tract name -> FA added at full gain (Gaussian cross-section)


@lru_cache(maxsize=4)
def template(shape: tuple[int, int, int]) -> Template:
    """The anatomy every subject shares (computed once per grid shape, a few seconds at full size)."""
    coords = _coordinates(shape)
    cerebrum = _ellipsoid(coords, (MID, 55, 44), (35, 45, 32))
    cerebellum = _ellipsoid(coords, (MID, 24, 20), (26, 14, 11))
    brainstem = _ellipsoid(coords, (MID, 50, 14), (6.5, 7, 16))
    radius = np.minimum(np.minimum(cerebrum, cerebellum), brainstem)
    brain = _soft(radius)
    brain[brain < 0.02] = 0.0                    # skull-stripped: exactly 0 outside the brain, as real FA maps
    gyri = ndimage.gaussian_filter(np.random.default_rng(7).standard_normal(shape), 2.2 / _mean_scale(shape))
    gyri /= gyri.std() + 1e-12
    white = _soft((cerebrum + 0.07 * gyri) / 0.84, 0.03)
    white = np.maximum(white, _soft(brainstem / 0.8, 0.08))
    deep = sum(_soft(_ellipsoid(coords, (MID + s * 11, 54, 40), (5, 8, 6)), 0.1) for s in (-1, 1))
    ventricles = sum(_soft(_ellipsoid(coords, (MID + s * 5, 56, 47), (3, 13, 5)), 0.1) for s in (-1, 1))
    tissue = 0.15 + 0.23 * white
    tissue = tissue * (1 - deep) + 0.25 * deep
    tissue = tissue * (1 - ventricles) + 0.07 * ventricles
    tracts = {}
    for name, (polylines, width, peak) in _tract_curves().items():
        profile = np.exp(-0.5 * (_curve_distance(shape, polylines) / width) ** 2) * (1 - ventricles)
        tracts[name] = (peak * profile * brain).astype(np.float32)
    return Template(brain=brain.astype(np.float32), tissue=(tissue * brain).astype(np.float32), tracts=tracts)


def _mean_scale(shape) -> float:
    return float(np.mean(np.array(FULL_SHAPE, dtype=float) / np.array(shape, dtype=float)))


@lru_cache(maxsize=4)
def _planted_profile(shape: tuple[int, int, int]) -> np.ndarray:
    """(len(regions), *shape): per region a smooth ball, 1 inside its radius, 0 past radius + 2 voxels."""
    coords = _coordinates(shape)
    balls = []
    for centre, radius in PLANTED:
        distance = np.sqrt(sum((c - m) ** 2 for c, m in zip(coords, centre)))
        balls.append(np.clip((radius + 2.0 - distance) / 2.0, 0.0, 1.0))
    return np.stack(balls).astype(np.float32)


def planted_mask(spec: CohortSpec = CohortSpec()) -> np.ndarray:
    """The ground truth: voxels (inside the brain) where patients lose FA by at least half the region's severity."""
    brain = template(tuple(spec.shape)).brain > 0.5
    return (_planted_profile(tuple(spec.shape)).max(axis=0) >= 0.5) & brain


def brain_mask(spec: CohortSpec = CohortSpec()) -> np.ndarray:
    return template(tuple(spec.shape)).brain > 0.5


# ---------------------------------------------------------------------------------------------------- subjects

def subject_volume(spec: CohortSpec, index: int) -> np.ndarray:
    """Subject `index` as a float32 volume of `spec.shape` in [0, 1] (deterministic)."""
    if not 0 <= index < spec.n_subjects:
        raise IndexError(f"subject {index} is outside the cohort of {spec.n_subjects}")
    shape = tuple(spec.shape)
    anatomy = template(shape)
    rng = np.random.default_rng([spec.seed, index])
    gains = 1.0 + 0.10 * rng.standard_normal(len(anatomy.tracts))
    fa = anatomy.tissue * np.float32(1.0 + 0.05 * rng.standard_normal())
    for gain, profile in zip(gains, anatomy.tracts.values()):
        fa = fa + np.float32(gain) * profile
    smooth = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), 2.0 / _mean_scale(shape))
    smooth *= spec.smooth_noise / (smooth.std() + 1e-12)
    fa = fa + (smooth + spec.voxel_noise * rng.standard_normal(shape, dtype=np.float32)) * anatomy.brain
    fa = _misregister(fa, rng, spec)
    if spec.label(index):
        severity = spec.effect * rng.uniform(0.0, 2.0, len(PLANTED))
        fa = fa * (1.0 - np.tensordot(severity, _planted_profile(shape), axes=1))
    return np.clip(fa, 0.0, 1.0).astype(np.float32)


def _misregister(volume: np.ndarray, rng: np.random.Generator, spec: CohortSpec) -> np.ndarray:
    """A small residual registration error: translation (~0.7 voxel) and scaling (~1.5%) about the centre."""
    scale = 1.0 + 0.015 * rng.standard_normal(3)
    shift = 0.7 * rng.standard_normal(3) / spec.scale()
    centre = (np.array(spec.shape) - 1) / 2.0
    offset = centre - scale * centre + shift
    return ndimage.affine_transform(volume, scale, offset=offset, order=1, mode="constant")


def cache_folder() -> Path:
    """Where generated cohorts are kept: $ONNXPLAIN_CACHE/mri (default ~/.cache/onnxplain/mri)."""
    root = os.environ.get("ONNXPLAIN_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "onnxplain")
    return Path(root).expanduser() / "mri"


def cohort_slab(spec: CohortSpec = CohortSpec(), crop=SLAB, *, cache: bool = True,
                progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(volumes cropped to `crop` (full-grid voxels, scaled to the grid) as (N, ...) float32, labels (N,)).

    Made once per (spec, crop) and cached as .npy; the slab of the 170 full-size subjects is 81 MB."""
    box = scaled_crop(spec, crop)
    path = cache_folder() / f"slab_{spec.key()}_{'_'.join(f'{a}-{b}' for a, b in box)}.npy"
    if cache and path.is_file():
        return np.load(path), spec.labels()
    window = tuple(slice(a, b) for a, b in box)
    indices = range(spec.n_subjects)
    if progress:   # onnxplain's bar: none where stderr is no terminal (a log would collect every frame)
        from onnxplain.runtime import progress_bar
        indices = progress_bar(indices, desc="synthetic cohort", unit="subject")
    slab = np.stack([subject_volume(spec, i)[window] for i in indices])
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial.npy")
        np.save(partial, slab)
        partial.replace(path)
    return slab, spec.labels()


def write_nifti(volume: np.ndarray, path: Path, spec: CohortSpec = CohortSpec()) -> Path:
    """A volume of this spec's grid as NIfTI with the MNI-like affine (scaled for reduced grids)."""
    import nibabel

    affine = AFFINE.copy()
    affine[:3, :3] = AFFINE[:3, :3] @ np.diag(spec.scale())
    path.parent.mkdir(parents=True, exist_ok=True)
    nibabel.save(nibabel.Nifti1Image(np.asarray(volume, dtype=np.float32), affine), str(path))
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the NIfTI files")
    parser.add_argument("--subjects", type=int, nargs="*", default=[0, 100],
                        help="subject indices (0-99 patients, 100-169 controls)")
    args = parser.parse_args(argv)
    spec = CohortSpec()
    write_nifti(planted_mask(spec).astype(np.float32), args.out / "planted_mask.nii.gz", spec)
    for index in args.subjects:
        name = f"subject{index:03d}_{LABELS[spec.label(index)]}.nii.gz"
        print(write_nifti(subject_volume(spec, index), args.out / name, spec))


if __name__ == "__main__":
    main()
