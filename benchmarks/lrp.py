"""How fast is onnxplain's LRP? Against one plain autograd gradient on the same executor, and against zennit.

Two torch nets, defined here with seeded random weights and exported to ONNX in a temporary folder:

* ``vgg``: conv/ReLU/max-pool blocks and two linear layers on 3x64x64 inputs;
* ``resnet``: a stem and three residual stages (conv, BatchNorm, ReLU, identity or 1x1-conv shortcuts), global
  average pooling and a linear layer, on 3x64x64 inputs.

For each net and batch size (1 and 16) it times, interleaved round by round so that load on the machine hits all
alike, the median wall time of:

* ``lrp``: onnxplain's ``lrp`` method, composite ``epsilon-plus``, on the exported ONNX model (numpy in, numpy out,
  with its conservation report);
* ``lrp-no-report``: the same method's ``attribute`` (relevance only: the conservation ledger off, which is what the
  report costs);
* ``gradient``: one plain autograd gradient of the same class score from the same torch executor
  (``model.torch().gradient``);
* ``zennit``: zennit's ``Gradient`` attributor with its ``EpsilonPlus`` composite and ``SequentialMergeBatchNorm``
  canonizer on the original torch net (residual sums through ``zennit.layer.Sum``, as zennit's own ResNet canonizer
  does), hooks registered once outside the timed call; ``zennit+hooks`` also counts registering and removing them,
  as one stand-alone explanation would;
* ``floor``: the same rules written out by hand for each net with no autograd, no ledger and temporaries reused in place
  where the arithmetic allows (``lrp_floor.HandLRP``; the faster of its two variants, z+'s convolution separate or
  stacked with the true output's): about the least work this rule set needs, so ``floor / gradient`` is about the
  best ratio an implementation of these rules can reach with torch's kernels on this CPU.

It checks that onnxplain, zennit and the floor give the same relevance (zennit's is scaled by f(x), as zennit starts
from a one-hot output) and writes a table to its section of ``benchmarks/README.md``::

    python benchmarks/lrp.py [--repeats 15] [--threads 1] [--allocator reuse|default] [--no-write]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from lrp_floor import HandLRP, floors, overheads  # noqa: E402  (benchmarks/ is on sys.path)
from lrp_nets import CLASSES, INPUT_SHAPE, NETS, export, randomised, zennit_twin  # noqa: E402
from readme_section import README, write_section  # noqa: E402

MARKERS = {"reuse": ("<!-- benchmarks/lrp.py: begin -->", "<!-- benchmarks/lrp.py: end -->"),
           "default": ("<!-- benchmarks/lrp.py --allocator default: begin -->",
                       "<!-- benchmarks/lrp.py --allocator default: end -->")}
BATCHES = (1, 16)
COMPOSITE = "epsilon-plus"


# ---------------------------------------------------------------------------------------------------- the contenders

class Zennit:
    """zennit's LRP with EpsilonPlus and batch-norm merging; ``call`` with hooks registered, ``standalone`` without."""

    def __init__(self, net: nn.Module):
        from zennit.attribution import Gradient
        from zennit.canonizers import SequentialMergeBatchNorm
        from zennit.composites import EpsilonPlus

        self.net = zennit_twin(net)
        self.make = lambda: Gradient(self.net, EpsilonPlus(canonizers=[SequentialMergeBatchNorm()]))

    @staticmethod
    def _one_hot(net, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            classes = net(x).argmax(1)
        return torch.nn.functional.one_hot(classes, CLASSES).to(x.dtype)

    def standalone(self, x: np.ndarray) -> np.ndarray:
        inputs = torch.from_numpy(x)
        with self.make() as attributor:
            _, relevance = attributor(inputs, self._one_hot(self.net, inputs))
        return relevance.numpy()

    def __enter__(self):
        self.attributor = self.make().__enter__()
        return self

    def __exit__(self, *exc):
        self.attributor.__exit__(*exc)

    def call(self, x: np.ndarray) -> np.ndarray:
        inputs = torch.from_numpy(x)
        _, relevance = self.attributor(inputs, self._one_hot(self.net, inputs))
        return relevance.numpy()


class Onnxplain:
    """onnxplain's ``lrp`` method and the same executor's plain gradient, on the exported model."""

    def __init__(self, path: Path):
        import onnxplain
        from onnxplain.methods import make_method
        from onnxplain.targets import Target

        self.model = onnxplain.load(path)
        self.method = make_method("lrp", composite=COMPOSITE, progress=False)
        self.executor = self.model.torch()
        self.target = Target()

    def lrp(self, x: np.ndarray):
        return self.method.explain(self.model, x, self.target)

    def lrp_without_report(self, x: np.ndarray) -> np.ndarray:
        return self.method.attribute(self.model, x, self.target)

    def gradient(self, x: np.ndarray) -> np.ndarray:
        return self.executor.gradient(x, self.target)[0]


# ---------------------------------------------------------------------------------------------------- measuring

def median_times(contenders: dict, x: np.ndarray, repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each contender, calls interleaved round by round."""
    times = {name: [] for name in contenders}
    for round_ in range(warmup + repeats):
        for name, call in contenders.items():
            started = time.perf_counter()
            call(x)
            if round_ >= warmup:
                times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def agreement(explanation, zennit_relevance: np.ndarray) -> float:
    """Max |onnxplain - f(x) * zennit| over max |onnxplain|: zennit's relevance starts from a one-hot output."""
    scale = explanation.score.reshape((-1,) + (1,) * (zennit_relevance.ndim - 1))
    return relative_difference(explanation.relevance, zennit_relevance * scale)


def relative_difference(found: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(found - expected).max() / np.abs(expected).max())


CATEGORIES = {  # torch profiler op names -> where the time goes
    "conv forward": ("aten::mkldnn_convolution", "aten::_slow_conv2d_forward", "aten::thnn_conv2d"),
    "conv backward": ("aten::convolution_backward",),
    "pooling": ("aten::max_pool2d_with_indices", "aten::max_pool2d_with_indices_backward", "aten::avg_pool2d",
                "aten::avg_pool2d_backward", "aten::mean"),
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm"),
}


def breakdown(call, x: np.ndarray, rounds: int = 3) -> dict[str, float]:
    """Per-call ms by category (torch profiler self CPU time) and 'other' (elementwise ops, copies, Python: the wall
    time left), plus the number of forward convolutions per call."""
    from torch.profiler import ProfilerActivity, profile

    call(x)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        started = time.perf_counter()
        for _ in range(rounds):
            call(x)
        wall = (time.perf_counter() - started) / rounds * 1000
    events = {e.key: e for e in prof.key_averages()}
    out = {"total": wall}
    for category, names in CATEGORIES.items():
        out[category] = sum(events[n].self_cpu_time_total for n in names if n in events) / rounds / 1000
    out["other"] = wall - sum(out[c] for c in CATEGORIES)
    out["conv calls"] = sum(events[n].count for n in CATEGORIES["conv forward"] if n in events) / rounds
    return out


def measure(repeats: int) -> tuple[list[dict], list[dict]]:
    rows, profiles = [], []
    with tempfile.TemporaryDirectory() as folder:
        for seed, (name, build) in enumerate(NETS.items()):
            net = randomised(build(), seed)
            ours = Onnxplain(export(net, Path(folder) / f"{name}.onnx"))
            zennit = Zennit(net)
            floors = {"separate": HandLRP(net), "stacked": HandLRP(net, stacked=True)}
            for batch in BATCHES:
                x = np.random.default_rng(seed).standard_normal((batch,) + INPUT_SHAPE).astype(np.float32)
                explanation = ours.lrp(x)
                difference = agreement(explanation, zennit.standalone(x))
                floor_difference = max(relative_difference(f(x), explanation.relevance) for f in floors.values())
                if floor_difference > 1e-3:  # a floor computing something else measures nothing (float32 noise
                    # reaches a few 1e-4 on some inputs, as against zennit)
                    raise SystemExit(f"{name}, batch {batch}: a hand-written floor's relevance differs from the "
                                     f"walker's by {floor_difference:.1e}")
                with zennit:
                    times = median_times({"lrp": ours.lrp, "lrp-no-report": ours.lrp_without_report,
                                          "gradient": ours.gradient, "zennit": zennit.call,
                                          **{f"floor, {kind}": f for kind, f in floors.items()}}, x, repeats)
                times["zennit+hooks"] = median_times({"z": zennit.standalone}, x, max(3, repeats // 3))["z"]
                times["floor"] = min(times[f"floor, {kind}"] for kind in floors)
                rows.append({"net": name, "batch": batch, "difference": difference,
                             "floor difference": floor_difference, **times})
                print(format_row(rows[-1]), flush=True)
                for label, call in (("gradient", ours.gradient), ("LRP, no report", ours.lrp_without_report),
                                    ("LRP", ours.lrp)):
                    profiles.append({"net": f"{name}, batch {batch}", "what": label, **breakdown(call, x)})
    return rows, profiles


# ---------------------------------------------------------------------------------------------------- report

HEADER = ("| net | batch | LRP ms | LRP, no report ms | gradient ms | zennit ms | zennit+hooks ms | floor ms "
          "| LRP / gradient | LRP, no report / gradient | floor / gradient | LRP / zennit "
          "| LRP vs zennit max rel. diff | floor vs LRP max rel. diff |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def format_row(row: dict) -> str:
    ms = {key: 1000 * row[key] for key in ("lrp", "lrp-no-report", "gradient", "zennit", "zennit+hooks", "floor")}
    return (f"| {row['net']} | {row['batch']} | {ms['lrp']:.1f} | {ms['lrp-no-report']:.1f} | {ms['gradient']:.1f} "
            f"| {ms['zennit']:.1f} | {ms['zennit+hooks']:.1f} | {ms['floor']:.1f} "
            f"| {row['lrp'] / row['gradient']:.2f}x | {row['lrp-no-report'] / row['gradient']:.2f}x "
            f"| {row['floor'] / row['gradient']:.2f}x "
            f"| {row['lrp'] / row['zennit']:.2f}x | {row['difference']:.1e} | {row['floor difference']:.1e} |")


NOTE = ("The z+ rule needs, per convolution, one forward convolution more than a gradient does (its denominators "
        "besides the true output; a first layer whose inputs take both signs runs its two parts as one convolution "
        "over the stacked inputs), and per layer a quotient and a product where a gradient has one ReLU mask. "
        "Convolutions alone put LRP at 1 + F / T of a gradient, F being the gradient's forward-convolution time and "
        "T its whole time (profile below): {conv_floors}. The 'floor' column measures the whole arithmetic written "
        "out by hand for each net (`benchmarks/lrp_floor.py`: no autograd, no ledger, temporaries reused in place; "
        "same relevance as the walker, last column), the faster of two variants, z+'s convolution separate from "
        "the true output's or both from one convolution over weights stacked along the output channels (the "
        "walker stacks them for one sample, and runs them separately for several). Floor / gradient, separate and "
        "stacked: {floors}. `attribute` (no report) / floor: {overheads}: the per-op cost of the walker's "
        "bookkeeping (one autograd node per layer, each op's Python). The report (the ledger read during the "
        "backward pass) costs the "
        "difference between the 'LRP ms' and 'LRP, no report ms' columns. Where the floor is below 1.5x and "
        "`attribute` above it, what stands between LRP and that target is the walker's own overhead, not the "
        "rules' arithmetic. Channels-last memory "
        "order would make both LRP and the gradient ~20% faster at batch 16 but makes oneDNN's convolutions ~10x "
        "less accurate (2e-6 relative per element), which breaks the 1e-5 conservation check on VGG-19; it is not "
        "used.")


def conv_floors(profiles: list[dict]) -> str:
    """'net, batch b: 1 + F / T' for each profiled gradient."""
    return "; ".join(f"{p['net']}: {1 + p['conv forward'] / p['total']:.2f}x" for p in profiles
                     if p["what"] == "gradient")



PROFILE_HEADER = ("| net | what | ms per call | conv forward ms (calls) | conv backward ms | pooling ms | matmul ms "
                  "| other ms (elementwise, copies, Python) |\n|---|---|---|---|---|---|---|---|")


def format_profile(row: dict) -> str:
    return (f"| {row['net']} | {row['what']} | {row['total']:.0f} "
            f"| {row['conv forward']:.0f} ({row['conv calls']:.0f}) | {row['conv backward']:.0f} "
            f"| {row['pooling']:.0f} | {row['matmul']:.0f} | {row['other']:.0f} |")


def section(rows: list[dict], profiles: list[dict], command: str, threads: int, repeats: int, allocator: str) -> str:
    from importlib.metadata import version

    begin, end = MARKERS[allocator]
    if allocator == "default":
        return "\n".join([begin, "### The same with glibc's default allocator settings", "",
                          f"Made by `{command}`: every large temporary comes from fresh pages (LRP makes more "
                          "temporaries per layer than a gradient).", "", HEADER, *map(format_row, rows),
                          "", end])
    lines = [begin, "## LRP speed (`benchmarks/lrp.py`)", "",
             f"Made by `{command}` on {platform.processor() or platform.machine()}, torch {torch.__version__} "
             f"({threads} thread(s)), zennit {version('zennit')}; median of {repeats} interleaved rounds. "
             f"Composite `{COMPOSITE}` (zennit: `EpsilonPlus` + `SequentialMergeBatchNorm`); inputs "
             f"{'x'.join(map(str, INPUT_SHAPE))}, {os.cpu_count()} CPU cores (shared with other jobs: the ratios come "
             f"from interleaved rounds, absolute times are noisy). Freed memory is kept for reuse "
             f"(`onnxplain.allocator.reuse_freed_memory()`, as the CLI does), for all contenders alike. "
             f"Targets: LRP <= 1.5x a gradient, <= 1.0x zennit.",
             "", HEADER, *map(format_row, rows), "", NOTE.format(conv_floors=conv_floors(profiles), floors=floors(rows),
                                                         overheads=overheads(rows)), "",
             "Where the time goes (torch profiler, self CPU time per call; the profiler adds some overhead to "
             "'other'):", "", PROFILE_HEADER, *map(format_profile, profiles), "", end]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds per case (default 15)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--allocator", choices=("reuse", "default"), default="reuse",
                        help="reuse: keep freed memory for reuse, as the onnxplain CLI does (default); default: "
                             "glibc's own settings")
    parser.add_argument("--no-write", action="store_true", help="print only; leave benchmarks/README.md alone")
    args = parser.parse_args(argv)
    if args.allocator == "reuse":
        from onnxplain.allocator import reuse_freed_memory

        reuse_freed_memory()
    from onnxplain.compat import ensure_torchvision

    ensure_torchvision()  # zennit imports torchvision
    torch.set_num_threads(args.threads)
    print(HEADER)
    rows, profiles = measure(args.repeats)
    print(PROFILE_HEADER, *map(format_profile, profiles), sep="\n")
    if not args.no_write:
        command = "python benchmarks/lrp.py " + " ".join(sys.argv[1:] if argv is None else argv)
        write_section(section(rows, profiles, command.strip(), args.threads, args.repeats, args.allocator),
                      *MARKERS[args.allocator])
        print(f"wrote the table to {README}")


if __name__ == "__main__":
    main()
