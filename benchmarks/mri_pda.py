"""Prediction difference on one MRI volume (the paper's §4.2 setting) on this machine, against the paper's ~30 min.

The model is the demo's: an L2 logistic regression on slices 29-40 (12x109x91 = 119,028 voxels) of the synthetic
cohort (`models/mri_data.py`), exported by skl2onnx. One patient volume is explained with k=3, S=10 samples,
marginal and location-conditioned Gaussian sampling (l=7: padding 2), at window strides 1 (the paper's overlapping
windows), 2 and 3. Measured in the same run, as the floor: onnxruntime alone on the same number of forward passes
(one preassembled batch, per-pass time x passes), i.e. what any black-box engine must pay.

    python benchmarks/mri_pda.py [--strides 1 2 3] [--no-write]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
from readme_section import README, write_section  # noqa: E402  (benchmarks/ is on sys.path)

BEGIN, END = "<!-- benchmarks/mri_pda.py: begin -->", "<!-- benchmarks/mri_pda.py: end -->"
PAPER_SECONDS = 30 * 60
sys.path.insert(0, str(ROOT / "models"))


def build_model(folder: Path):
    """(model, reference batch, one patient's input): the demo's training and export."""
    import mri_data as data
    import mri_demo as demo

    import onnxplain

    spec = data.CohortSpec()
    slab, labels = data.cohort_slab(spec, progress=True)
    subset = demo.balanced_subset(spec)
    features = slab.reshape(len(slab), -1)
    classifier = demo.train(features[subset], labels[subset])
    model = onnxplain.load(demo.export(classifier, folder / "mri_logreg.onnx", data.SLAB))
    return model, features[subset], features[[0]]


def onnxruntime_floor(model, x: np.ndarray, rows: int = 1000, repeats: int = 3) -> float:
    """Seconds per forward pass of the bare onnxruntime session on a preassembled batch (best of `repeats`)."""
    session = model.session(())
    batch = np.ascontiguousarray(np.broadcast_to(x, (rows, x.shape[1])))
    best = np.inf
    for _ in range(repeats):
        started = time.perf_counter()
        session.run([model.score_output], {model.input_name: batch})
        best = min(best, time.perf_counter() - started)
    return best / rows


def case(model, reference, x, sampler: str, stride: int, per_pass: float) -> dict:
    import mri_data as data
    import mri_demo as demo

    method = demo.pda_methods(demo.Settings(stride=stride), reference, data.SLAB)[sampler]
    method.progress = False
    started = time.perf_counter()
    method.prepare(model, x.shape[1:])                       # sampler fit (conditional: cached on disk after once)
    fit = time.perf_counter() - started
    started = time.perf_counter()
    explanation = method.explain(model, x)
    seconds = time.perf_counter() - started
    passes = explanation.diagnostics["forward_passes"]
    cache = explanation.diagnostics.get("sampler_cache")
    return {"sampler": sampler, "stride": stride, "windows": explanation.diagnostics["windows"], "passes": passes,
            "fit": fit, "fit_cached": bool(cache), "seconds": seconds, "floor": passes * per_pass}


def markdown(rows: list[dict], per_pass: float, command: str) -> str:
    cores = os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [BEGIN, "## Prediction difference on an MRI volume (`benchmarks/mri_pda.py`)", "",
             f"`{command}` on {platform.machine()}, {cores} CPU cores shared with other jobs (1-min load average "
             f"{load:.1f} at the end), onnxruntime CPU. One patient volume of the synthetic cohort, slices 29-40 "
             "(119,028 voxels), the demo's skl2onnx logistic regression; k=3, S=10 (l=7 for the conditional "
             "sampler). Windows wholly outside the brain are skipped by the engine (no sample changes them). The "
             "paper reports about 30 min per volume on a CPU for k=3, l=7 (stride 1). Floor: bare onnxruntime on "
             f"the same number of forward passes ({per_pass * 1e6:.0f} µs per pass, measured in this run).", "",
             "| sampler | stride | windows | forward passes | sampler fit s | explain s | vs paper's 30 min | "
             "onnxruntime floor s | explain / floor |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fit = f"{r['fit']:.1f}" + (" (cached)" if r["fit_cached"] else "")
        lines.append(f"| {r['sampler']} | {r['stride']} | {r['windows']} | {r['passes']} | {fit} | "
                     f"{r['seconds']:.1f} | {PAPER_SECONDS / r['seconds']:.1f}× faster | {r['floor']:.1f} | "
                     f"{r['seconds'] / r['floor']:.1f}× |")
    lines += ["", SUMMARY, "", END]
    return "\n".join(lines)


SUMMARY = ("Against the 2-minute target: the paper's setting (stride 1) is met when explain / floor comes close to 1. "
           "Each forward pass of this model reads a whole 119k-voxel input; the engine writes each window's samples "
           "into a reused buffer of copies of the volume (64 MiB, ~140 inputs per onnxruntime call), runs it and "
           "restores the windows, so its own work per pass is small next to onnxruntime's. The floor is measured "
           "once, at the start of the run, on a batch of 1000: under the shared machine's changing load an "
           "explain / floor below 1 means the engine runs at the floor within that noise. Larger strides cut the "
           "windows (every voxel is still covered; stride 3 with k=3 means non-overlapping windows).")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strides", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--samplers", nargs="+", default=["pda-marginal", "pda-location"])
    parser.add_argument("--no-write", action="store_true", help="print only; leave benchmarks/README.md alone")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        model, reference, x = build_model(Path(folder))
        per_pass = onnxruntime_floor(model, x)
        rows = []
        for stride in sorted(args.strides, reverse=True):
            for sampler in args.samplers:
                rows.append(case(model, reference, x, sampler, stride, per_pass))
                print(rows[-1], flush=True)
    command = "python benchmarks/mri_pda.py" + ("" if args.strides == [1, 2, 3] else
                                                " --strides " + " ".join(map(str, args.strides)))
    text = markdown(rows, per_pass, command)
    print(text)
    if not args.no_write:
        write_section(text, BEGIN, END)
        print(f"wrote the table to {README}")


if __name__ == "__main__":
    main()
