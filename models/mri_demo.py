"""The MRI case of Zintgraf et al. (2017, §4.2) end to end, on the synthetic cohort of `mri_data.py`.

1. a balanced subset (the first 70 patients, all 70 controls), slices 29-40 along the first axis;
2. an L2-regularised scikit-learn `LogisticRegression`, 10-fold cross-validated accuracy;
3. exported by skl2onnx as it comes (LinearClassifier + ZipMap) with a preprocessing spec in its metadata
   (`layout: flat`, `crop: [[29,41],[0,109],[0,91]]`, `scan_shape: [91,109,91]`), loaded by `onnxplain.load`;
4. subjects written as NIfTI and read back through onnxplain's crop path (`onnxplain.io.load_inputs`);
5. explained by prediction difference analysis in 3-D (k=3: marginal, and conditional (l=7) without and with
   location), by LRP on the LinearClassifier, and compared with the classifier's weight map (the paper's Fig. 9);
6. scored against the planted regions: ROC-AUC of |relevance| vs the planted mask inside the brain, per subject;
7. written out: NIfTI relevance volumes, Fig. 9/10/11-style PNGs (15%-of-maximum threshold), results.json.

    python models/mri_demo.py [--out out/mri] [--stride 1] [--methods ...]   # stride 1: the paper's windows

The default window stride 3 keeps the run to minutes on 2 CPU cores (see docs/mri.md for timings).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mri_data as data  # noqa: E402

C = 0.01                 # L2 strength: keeps training probabilities off 0/1, which weight of evidence needs
FOLDS = 10
THRESHOLD = 0.15         # the paper's display: |R| above 15% of the maximum
METHODS = ("pda-marginal", "pda-conditional", "pda-location", "lrp")
DEFAULT_METHODS = ("pda-marginal", "pda-location", "lrp")


@dataclass
class Settings:
    """Prediction difference parameters (the paper's k=3, l=7, 10 samples) and what to run."""

    window: int = 3
    padding: int = 2
    samples: int = 10
    stride: int = 3
    location_cell: int = 20          # voxels per cell of the location grid (the paper's "20x20x20 grid")
    max_patches: int = 10_000        # reference patches per cell for the Gaussian fit
    seed: int = 0
    per_class: int = 4


# ---------------------------------------------------------------------------------------------------- training

def balanced_subset(spec: data.CohortSpec) -> np.ndarray:
    """Subject indices: the first n_controls patients (as the paper took the first 70 HIV samples), all controls."""
    return np.r_[0:min(spec.n_patients, spec.n_controls), spec.n_patients:spec.n_subjects]


def train(features: np.ndarray, labels: np.ndarray):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, max_iter=5000).fit(features, labels)


def cross_validated_accuracy(features: np.ndarray, labels: np.ndarray, folds: int = FOLDS) -> np.ndarray:
    """Per-fold accuracies of stratified, shuffled (seed 0) k-fold cross-validation."""
    from sklearn.base import clone
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    splitter = StratifiedKFold(folds, shuffle=True, random_state=0)
    return cross_val_score(clone(LogisticRegression(C=C, max_iter=5000)), features, labels, cv=splitter)


def export(classifier, path: Path, crop, scan_shape) -> Path:
    """skl2onnx's default export (LinearClassifier + ZipMap) plus the preprocessing spec (the crop box and the
    scan grid it is cut from) and labels in metadata."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    features = int(np.prod([b - a for a, b in crop]))
    proto = convert_sklearn(classifier, initial_types=[("input", FloatTensorType([None, features]))])
    spec = {"layout": "flat", "color": "gray", "crop": [list(pair) for pair in crop],
            "scan_shape": [int(n) for n in scan_shape]}
    for key, value in (("onnxplain.preprocess", json.dumps(spec)), ("onnxplain.labels", json.dumps(data.LABELS))):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(proto.SerializeToString())
    return path


def weight_map(classifier, crop) -> np.ndarray:
    """The logistic regression's weights for 'patient' on the crop grid (the paper's comparison)."""
    return classifier.coef_[0].reshape([b - a for a, b in crop])


# ---------------------------------------------------------------------------------------------------- scoring

def recovery(relevance: np.ndarray, planted: np.ndarray, brain: np.ndarray) -> dict:
    """How well |relevance| finds the planted voxels among the brain voxels: ROC-AUC, and the fraction of the
    top-|R| voxels (as many as there are planted ones) that are planted."""
    from sklearn.metrics import roc_auc_score

    truth, score = planted[brain], np.abs(relevance[brain])
    top = np.argsort(-score, kind="stable")[:int(truth.sum())]
    return {"auc": float(roc_auc_score(truth, score)), "top_precision": float(truth[top].mean())}


# ---------------------------------------------------------------------------------------------------- explaining

def location_cells(crop, cell: int) -> tuple[int, ...]:
    return tuple(int(np.ceil((b - a) / cell)) for a, b in crop)


def pda_methods(settings: Settings, reference: np.ndarray, crop) -> dict:
    """The three prediction-difference variants, built with onnxplain's registry."""
    from onnxplain.methods import make_method
    from onnxplain.methods.samplers import ConditionalSampler

    def conditional(grid):
        # clip per voxel: background voxels (0 in every reference volume) stay 0 and their windows are skipped
        return ConditionalSampler(settings.padding, location_grid=grid, clip="pixel",
                                  max_patches=settings.max_patches)

    common = dict(window=settings.window, samples=settings.samples, stride=settings.stride, seed=settings.seed,
                  reference=reference, progress=True)   # the padding: the conditional samplers' own
    return {"pda-marginal": make_method("pda", sampler="marginal", **common),
            "pda-conditional": make_method("pda", sampler=conditional(None), **common),
            "pda-location": make_method("pda", sampler=conditional(location_cells(crop, settings.location_cell)),
                                        **common)}


def pick_subjects(spec, subset, probabilities, per_class: int) -> list[int]:
    """The first `per_class` correctly classified training subjects of each class (controls first, as Fig. 10)."""
    chosen = []
    for label in (0, 1):
        right = [int(i) for i, p in zip(subset, probabilities) if spec.label(i) == label and (p > 0.5) == label]
        chosen += right[:per_class]
    return chosen


# ---------------------------------------------------------------------------------------------------- figures

def _panel(volume_slice, relevance_slice, scale, invert=False):
    from onnxplain import viz

    base = np.rot90(volume_slice)
    return viz.overlay_rgb(1 - base if invert else base, np.rot90(relevance_slice), THRESHOLD, scale=scale,
                           dim=False)


def fig9(volume, maps: dict, slices, path: Path, title: str) -> Path:
    """Rows: methods; for each slice (the paper: 29 and 40), the overlay on the volume and on its reversed colours."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2.0 * 2 * len(slices), 2.0 * len(maps) + 0.5), dpi=100)
    axes = fig.subplots(len(maps), 2 * len(slices), squeeze=False)
    for row, (name, relevance) in enumerate(maps.items()):
        scale = float(np.abs(relevance).max()) or 1.0
        for j, index in enumerate(slices):
            for k, invert in enumerate((False, True)):
                ax = axes[row][2 * j + k]
                ax.imshow(_panel(volume[index], relevance[index], scale, invert))
                ax.set_xticks([]), ax.set_yticks([])
                ax.set_title(f"slice {index}" if k == 0 else "", fontsize=9)
            axes[row][0].set_ylabel(name, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.01, top=0.88, wspace=0.03, hspace=0.12)
    fig.savefig(path)
    return path


def fig10(volumes: list, maps: list, names: list, index: int, path: Path) -> Path:
    """One panel per subject at slice `index` (the paper: 39), each on its own scale."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2.0 * len(volumes), 2.2), dpi=100)
    axes = fig.subplots(1, len(volumes), squeeze=False)[0]
    for ax, volume, relevance, name in zip(axes, volumes, maps, names):
        ax.imshow(_panel(volume[index], relevance[index], float(np.abs(relevance).max()) or 1.0))
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_title(name, fontsize=8)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.85, wspace=0.03)
    fig.savefig(path)
    return path


# ---------------------------------------------------------------------------------------------------- the run

def train_and_export(spec: data.CohortSpec, out: Path, timings: dict):
    """(onnxplain model, classifier, features (N, F), labels, balanced subset, accuracy and export reports)."""
    import onnxplain

    started = time.perf_counter()
    slab, labels = data.cohort_slab(spec, progress=True)
    timings["cohort"] = time.perf_counter() - started
    subset, features = balanced_subset(spec), slab.reshape(len(slab), -1)
    started = time.perf_counter()
    folds = cross_validated_accuracy(features[subset], labels[subset])
    classifier = train(features[subset], labels[subset])
    timings["training"] = time.perf_counter() - started
    held_out = np.setdiff1d(np.arange(spec.n_subjects), subset)
    accuracy = {"cv_mean": float(folds.mean()), "cv_std": float(folds.std()), "folds": folds.tolist(),
                "held_out_patients": float(classifier.score(features[held_out], labels[held_out]))
                if len(held_out) else None}
    print(f"10-fold CV accuracy {folds.mean():.3f} ± {folds.std():.3f}")
    model = onnxplain.load(export(classifier, out / "mri_logreg.onnx", data.scaled_crop(spec), spec.shape))
    difference = np.abs(model.scores(features[subset]) - classifier.predict_proba(features[subset])).max()
    report = {"ops": [node.op_type for node in model.original.graph.node], "score_output": model.score_output,
              "score_kind": model.score_kind, "max_abs_diff": float(difference)}
    return model, classifier, features, labels, subset, accuracy, report


def explain_subjects(model, x, expected, reference, settings: Settings, methods, timings: dict) -> dict:
    """{method: relevance (N, *crop)} for the inputs `x`, each explained for its top-1 class (= `expected`)."""
    from onnxplain.methods import make_method

    crop = model.preprocess.crop
    pda = pda_methods(settings, reference, crop)
    relevance = {}
    for name in methods:
        method = pda[name] if name in pda else make_method("lrp", composite="epsilon-plus", progress=False)
        started = time.perf_counter()
        explanation = method.explain(model, x)
        timings[name] = time.perf_counter() - started
        if list(explanation.target) != list(expected):
            raise RuntimeError(f"{name} explained classes {explanation.target}, expected {expected}")
        relevance[name] = explanation.relevance.reshape(len(x), *[b - a for a, b in crop])
        print(f"{name}: {timings[name]:.1f} s for {len(x)} volumes")
    return relevance


def write_outputs(out: Path, spec: data.CohortSpec, model, subjects: list[int], relevance: dict, per_class: int):
    """NIfTI relevance volumes, Fig. 9 and slice montages (Fig. 11) for the first control and the first patient;
    Fig. 10 for every subject."""
    from onnxplain import viz
    from onnxplain.io.nifti import sample_to_volume

    crop, full = model.preprocess.crop, tuple(spec.shape)
    volumes = [data.subject_volume(spec, i) for i in subjects]
    placed = {name: [sample_to_volume(m.reshape(-1), model, full) for m in maps] for name, maps in relevance.items()}
    names = [f"{data.LABELS[spec.label(s)]} {s}" for s in subjects]
    for n in (0, per_class):
        kind, subject = data.LABELS[spec.label(subjects[n])], subjects[n]
        for name, maps in placed.items():
            data.write_nifti(maps[n], out / f"relevance_{kind}{subject:03d}_{name}.nii.gz", spec)
            viz.save_figure(viz.montage_figure(volumes[n], maps[n], axis=0, slices=6, threshold=THRESHOLD,
                                            title=f"{name}, {kind} {subject} (|R| ≥ 15% of max)"),
                         out / f"montage_{kind}{subject:03d}_{name}.png")
        fig9(volumes[n], {name: maps[n] for name, maps in placed.items()}, (crop[0][0], crop[0][1] - 1),
             out / f"fig9_{kind}{subject:03d}.png", f"support for '{kind}', subject {subject}")
    for name, maps in placed.items():
        fig10(volumes, maps, names, crop[0][1] - 2, out / f"fig10_{name}.png")


def run(out: Path, settings: Settings, spec: data.CohortSpec = data.CohortSpec(), methods=None) -> dict:
    """The whole case; returns (and writes to out/results.json) accuracies, recovery scores and timings."""
    from onnxplain.io import load_inputs

    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    model, classifier, features, labels, subset, accuracy, report = train_and_export(spec, out, timings)
    subjects = pick_subjects(spec, subset, model.scores(features[subset])[:, 1], settings.per_class)
    paths = [data.write_nifti(data.subject_volume(spec, i), out / "inputs" / f"subject{i:03d}.nii.gz", spec)
             for i in subjects]
    x, _ = load_inputs(paths, model)                             # NIfTI -> crop -> flat, onnxplain's own path
    reference = features[subset]
    np.save(out / "reference.npy", reference)                    # for `onnxplain explain --reference`
    expected = [spec.label(i) for i in subjects]
    relevance = explain_subjects(model, x, expected, reference, settings, methods or DEFAULT_METHODS, timings)
    signs = np.where(np.array(expected) == 1, 1.0, -1.0)
    relevance["weights"] = signs[:, None, None, None] * weight_map(classifier, model.preprocess.crop)[None]

    box = tuple(slice(a, b) for a, b in model.preprocess.crop)
    planted, brain = data.planted_mask(spec)[box], data.brain_mask(spec)[box]
    data.write_nifti(data.planted_mask(spec).astype(np.float32), out / "planted_mask.nii.gz", spec)
    write_outputs(out, spec, model, subjects, relevance, settings.per_class)
    results = {"settings": asdict(settings), "cohort": asdict(spec), "accuracy": accuracy, "export": report,
               "subjects": {str(s): data.LABELS[spec.label(s)] for s in subjects},
               "recovery": {name: {str(s): recovery(maps[n], planted, brain) for n, s in enumerate(subjects)}
                            for name, maps in relevance.items()},
               "timings_s": timings}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


def table(results: dict) -> str:
    """Markdown: per subject, ROC-AUC of |relevance| vs the planted mask for every map."""
    names = list(results["recovery"])
    lines = ["| subject | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for subject, kind in results["subjects"].items():
        cells = [f"{results['recovery'][n][subject]['auc']:.3f}" for n in names]
        lines.append(f"| {kind} {subject} | " + " | ".join(cells) + " |")
    means = [np.mean([v["auc"] for v in results["recovery"][n].values()]) for n in names]
    lines.append("| mean | " + " | ".join(f"{m:.3f}" for m in means) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("out/mri"))
    parser.add_argument("--stride", type=int, default=Settings.stride, help="1 = the paper's setting")
    parser.add_argument("--samples", type=int, default=Settings.samples)
    parser.add_argument("--per-class", type=int, default=Settings.per_class)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(DEFAULT_METHODS),
                        help="pda-conditional is the stationary Gaussian (no location); default: %(default)s")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    settings = Settings(stride=args.stride, samples=args.samples, per_class=args.per_class)
    results = run(args.out, settings, methods=args.methods)
    print(table(results))
    print(f"results and figures in {args.out}")


if __name__ == "__main__":
    main()
