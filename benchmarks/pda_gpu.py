"""Prediction difference at the paper's GoogLeNet setting on a GPU, through the torch executor.

The paper (Zintgraf et al. 2017, §4) took about 30 minutes per image for GoogLeNet with Caffe on a GPU: 224²
input, k = 10, conditional sampling with l = 14, S = 10, stride 1 (46,225 windows, ~462,000 forward passes). Here
the same run goes through `PredictionDifference(device="cuda")`: the torch executor (checked against onnxruntime
at fp32, TF32 off), batches built in GPU memory. The script also checks the GPU map against onnxruntime's on a
strided subset, and times the literal loop (one call per window with its S samples, the original code's scheme)
on the first windows to give the ratio.

    python benchmarks/pda_gpu.py                 # needs torch with CUDA; ~1-3 minutes on an H100/H200
    python benchmarks/pda_gpu.py --device cpu --stride 56 --literal-windows 5 --no-write   # a dry run anywhere
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
from pda import literal_loop, photo_inputs  # noqa: E402  (benchmarks/ is on sys.path)
from readme_section import README, write_section  # noqa: E402

BEGIN, END = "<!-- benchmarks/pda_gpu.py: begin -->", "<!-- benchmarks/pda_gpu.py: end -->"
sys.path.insert(0, str(ROOT))

import onnxplain  # noqa: E402
from onnxplain.methods.passes import INCREMENTAL_ROWS  # noqa: E402
from onnxplain.methods.pda import PredictionDifference  # noqa: E402
from onnxplain.methods.windows import WindowGrid  # noqa: E402
from onnxplain.targets import Target  # noqa: E402
from onnxplain.zoo import materialize  # noqa: E402

PAPER_MINUTES = 30
SETTING = dict(window=10, padding=2, samples=10, sampler="conditional")


def timed(fn):
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(torch.device(device))}, torch {torch.__version__}"
    return f"{platform.machine()} CPU ({os.cpu_count()} cores), torch {torch.__version__}"


def run(args) -> list[dict]:
    model = onnxplain.load(materialize("inception_v1"))
    x, reference = photo_inputs(model)
    rows = [timed_run(args, model, x, reference, precision) for precision in args.precisions.split(",")]
    method = PredictionDifference(reference=reference, device=args.device, progress=False, **SETTING)
    _, literal_s = timed(lambda: literal_loop(method, model, x, Target(), windows=args.literal_windows))
    print(f"literal loop (fp32): {args.literal_windows} windows in {literal_s:.2f} s", flush=True)
    for row in rows:
        row.update(literal_windows=args.literal_windows, literal_total_s=literal_s / args.literal_windows
                   * row["windows"])
    return rows


def timed_run(args, model, x, reference, precision: str) -> dict:
    """Check against onnxruntime on a strided subset, predict from a coarser run, then time the asked stride."""
    target, common = Target(), {"reference": reference, "device": args.device, "precision": precision,
                                "incremental": not args.whole_samples, "progress": False, "allow_gaps": True,
                                **SETTING}   # strides past the window: subsets of the windows, timed
    method = PredictionDifference(stride=args.stride, **common)
    _, fit_s = timed(lambda: method.prepare(model, x.shape[1:]))
    batch = method.passes(model).batch_size(x[0])
    print(f"{precision}: {device_name(args.device)}; forward batch {batch}; sampler fit {fit_s:.1f} s", flush=True)

    on_device = PredictionDifference(**{**common, "stride": args.check_stride}).explain(model, x, target)
    check = {**common, "stride": args.check_stride, "device": None, "precision": "fp32", "incremental": False}
    on_session = PredictionDifference(**check).explain(model, x, target)
    scale = float(np.abs(on_session.relevance).max())
    check_diff = float(np.abs(on_device.relevance - on_session.relevance).max())
    print(f"check at stride {args.check_stride}: max |GPU - onnxruntime| = {check_diff:.2e} (max |R| {scale:.3g})",
          flush=True)

    # a coarser run predicts the timed one (run twice: the first tunes cuDNN for the chunk's shape); the finest
    # stride that fits --budget-s is taken when the asked one would not (per-window cost is the same at every stride)
    probe = PredictionDifference(**{**common, "stride": args.probe_stride})
    probe.explain(model, x, target)
    probed, probe_s = timed(lambda: probe.explain(model, x, target))
    per_window = probe_s / probed.diagnostics["windows"]
    windows_at = lambda stride: len(WindowGrid((224, 224), SETTING["window"], stride, allow_gaps=True))  # noqa: E731
    stride = args.stride
    while per_window * windows_at(stride) > args.budget_s:
        stride += 1
    print(f"stride {args.probe_stride}: {probed.diagnostics['windows']} windows in {probe_s:.1f} s -> stride "
          f"{args.stride}: {per_window * windows_at(args.stride):.0f} s predicted; timing stride {stride}", flush=True)
    if stride != args.stride:
        method = PredictionDifference(**{**common, "stride": stride})
        method.prepare(model, x.shape[1:])
    explanation, explain_s = timed(lambda: method.explain(model, x, target))
    windows, forward = explanation.diagnostics["windows"], explanation.diagnostics["forward_passes"]
    engine = explanation.diagnostics["forward_passes_on"]      # says whether the passes ran incrementally
    print(f"stride {stride}: {windows} windows, {forward} forward passes on {engine}, {explain_s:.1f} s", flush=True)
    return {"device": f"{device_name(args.device)}; {engine}", "precision": precision, "batch": batch, "fit_s": fit_s,
            "windows": windows, "passes": forward, "explain_s": explain_s, "samples_per_s": forward / explain_s,
            "check_stride": args.check_stride, "check_diff": check_diff, "check_scale": scale, "stride": stride}


def section(rows: list[dict], command: str, incremental: bool) -> str:
    paper = PAPER_MINUTES * 60
    table = ["| device | precision | stride | windows | forward passes | engine s | samples/s | vs paper's 30 min | "
             "literal loop s (extrapolated) | engine vs literal | max \\|GPU − onnxruntime\\| |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        table.append(
            f"| {row['device']} | {row['precision']} | {row['stride']} | {row['windows']} | {row['passes']} | "
            f"{row['explain_s']:.1f} | {row['samples_per_s']:.0f} | {paper / row['explain_s']:.0f}× faster | "
            f"{row['literal_total_s']:.0f} ({row['literal_windows']} windows timed) | "
            f"{row['literal_total_s'] / row['explain_s']:.1f}× | {row['check_diff']:.1e} (max \\|R\\| "
            f"{row['check_scale']:.2g}, stride {row['check_stride']}) |")
    return "\n".join([
        BEGIN, "## Prediction difference on a GPU: the paper's GoogLeNet setting (`benchmarks/pda_gpu.py`)", "",
        f"`{command}`. GoogLeNet (the onnx wheel's Caffe graph `inception_v1`, seeded random weights), chelsea at "
        "224², conditional sampling k = 10, l = 14, S = 10 (10 reference photos), stride 1 as in the paper, whose "
        "Caffe GPU implementation took about 30 minutes per image. Forward passes run in onnxplain's torch executor "
        "on the GPU (`PredictionDifference(device='cuda')`, CLI `--device cuda`), "
        + ("incrementally (each sample's early layers around its window only)" if incremental else
           "as whole samples written into a batch in GPU memory (`incremental=False`)")
        + ": `fp32` is exact fp32 (TF32 off), "
        "`tf32` lets the GPU multiply in TensorFloat-32 (`--precision tf32`). Whole-sample forward batch "
        f"{rows[0]['batch']} (from the memory a probe batch takes; incremental passes size their own batches from "
        f"the memory a row takes, up to {INCREMENTAL_ROWS:,} rows); the conditional sampler's fit "
        f"({rows[0]['fit_s']:.1f} s) is outside the timing. The literal loop sends one window's S samples per call "
        "(the original code's scheme, fp32), timed on the first windows and extrapolated. The last column compares "
        "the GPU map with onnxruntime's (CPU, fp32) on the same windows at a coarser stride; with random weights the "
        "class probabilities are nearly uniform, so the weights of evidence (max |R|) are small.", "", *table, "",
        END])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precisions", default="fp32,tf32", help="comma-separated: fp32, tf32 (CUDA only)")
    parser.add_argument("--stride", type=int, default=1, help="window stride of the timed run (paper: 1)")
    parser.add_argument("--check-stride", type=int, default=32, help="stride of the onnxruntime comparison")
    parser.add_argument("--literal-windows", type=int, default=300, help="windows the literal loop is timed on")
    parser.add_argument("--probe-stride", type=int, default=8, help="stride of the run that predicts the timing")
    parser.add_argument("--budget-s", type=float, default=420, help="longest timed run allowed (seconds)")
    parser.add_argument("--whole-samples", action="store_true",
                        help="run whole samples (incremental=False) instead of incremental forward passes")
    parser.add_argument("--no-write", action="store_true", help="print only; leave benchmarks/README.md alone")
    args = parser.parse_args(argv)
    os.environ.setdefault("ONNXPLAIN_CACHE", str(ROOT / ".cache"))
    rows = run(args)
    if not args.no_write:
        command = "python benchmarks/pda_gpu.py " + " ".join(sys.argv[1:] if argv is None else argv)
        write_section(section(rows, command.strip(), not args.whole_samples), BEGIN, END)
        print(f"wrote the table to {README}")


if __name__ == "__main__":
    main()
