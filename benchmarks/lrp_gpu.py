"""LRP against one plain autograd gradient and against zennit on a GPU (the nets of `benchmarks/lrp.py`).

The same two nets (``vgg``, ``resnet``; seeded random weights, exported with ``torch.onnx.export``), composite
``epsilon-plus``, contenders as in ``benchmarks/lrp.py`` but all on one CUDA device, numpy in and numpy out for
each (so every call includes its transfers and ends synchronised), TF32 off for all (onnxplain's executor turns
it off; the flags are global, so zennit runs at exact fp32 too). Batches 1, 16 and 256; median of interleaved
rounds. It checks that onnxplain's relevance matches zennit's and writes a table to its section of
``benchmarks/README.md``::

    python benchmarks/lrp_gpu.py [--device cuda] [--repeats 30] [--no-write]
    python benchmarks/lrp_gpu.py --device cpu --batches 1 --repeats 2 --no-write   # a dry run anywhere
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from lrp import COMPOSITE, agreement, median_times
from lrp_nets import CLASSES, INPUT_SHAPE, NETS, export, randomised, zennit_twin
from readme_section import README, write_section

BEGIN, END = "<!-- benchmarks/lrp_gpu.py: begin -->", "<!-- benchmarks/lrp_gpu.py: end -->"


class OnDevice:
    """onnxplain's LRP (with and without its report), the executor's gradient and zennit, all on `device`."""

    def __init__(self, net, path: Path, device: str):
        import onnxplain
        from onnxplain.lrp import LRP
        from onnxplain.targets import Target
        from zennit.attribution import Gradient
        from zennit.canonizers import SequentialMergeBatchNorm
        from zennit.composites import EpsilonPlus

        self.model, self.target, self.device = onnxplain.load(path), Target(), torch.device(device)
        self.method = LRP(composite=COMPOSITE, device=device, progress=False)
        self.executor = self.model.torch(device)
        self.zennit_net = zennit_twin(net).to(self.device)
        self.attributor = Gradient(self.zennit_net, EpsilonPlus(canonizers=[SequentialMergeBatchNorm()]))

    def contenders(self) -> dict:
        return {"lrp": lambda x: self.method.explain(self.model, x, self.target),
                "lrp-no-report": lambda x: self.method.attribute(self.model, x, self.target),
                "gradient": lambda x: self.executor.gradient(x, self.target)[0],
                "zennit": self.zennit}

    def zennit(self, x: np.ndarray) -> np.ndarray:
        inputs = torch.from_numpy(x).to(self.device)
        with torch.no_grad():
            classes = self.zennit_net(inputs).argmax(1)
        one_hot = torch.nn.functional.one_hot(classes, CLASSES).to(inputs.dtype)
        _, relevance = self.attributor(inputs, one_hot)
        return relevance.cpu().numpy()


def measure(device: str, batches: list[int], repeats: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for seed, (name, build) in enumerate(NETS.items()):
            net = randomised(build(), seed)
            contenders = OnDevice(net, export(net, Path(folder) / f"{name}.onnx"), device)
            with contenders.attributor:
                for batch in batches:
                    x = np.random.default_rng(seed).standard_normal((batch,) + INPUT_SHAPE).astype(np.float32)
                    difference = agreement(contenders.method.explain(contenders.model, x, contenders.target),
                                           contenders.zennit(x))
                    times = median_times(contenders.contenders(), x, repeats, warmup=3)
                    rows.append({"net": name, "batch": batch, "difference": difference, **times})
                    print(format_row(rows[-1]), flush=True)
    return rows


HEADER = ("| net | batch | LRP ms | LRP, no report ms | gradient ms | zennit ms | LRP / gradient "
          "| LRP, no report / gradient | LRP / zennit | LRP, no report / zennit | LRP vs zennit max rel. diff |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")


def format_row(row: dict) -> str:
    ms = {key: 1000 * row[key] for key in ("lrp", "lrp-no-report", "gradient", "zennit")}
    return (f"| {row['net']} | {row['batch']} | {ms['lrp']:.2f} | {ms['lrp-no-report']:.2f} | {ms['gradient']:.2f} "
            f"| {ms['zennit']:.2f} | {row['lrp'] / row['gradient']:.2f}x "
            f"| {row['lrp-no-report'] / row['gradient']:.2f}x "
            f"| {row['lrp'] / row['zennit']:.2f}x | {row['lrp-no-report'] / row['zennit']:.2f}x "
            f"| {row['difference']:.1e} |")


def device_name(device: str) -> str:
    if torch.device(device).type == "cuda":
        return f"{torch.cuda.get_device_name(torch.device(device))}, torch {torch.__version__}"
    return f"CPU, torch {torch.__version__}"


def section(rows: list[dict], command: str, device: str, repeats: int) -> str:
    from importlib.metadata import version

    return "\n".join([
        BEGIN, "## LRP speed on a GPU (`benchmarks/lrp_gpu.py`)", "",
        f"Made by `{command}` on {device_name(device)}, zennit {version('zennit')}; median of {repeats} interleaved "
        f"rounds. The nets and composite of `benchmarks/lrp.py` (`{COMPOSITE}`; inputs "
        f"{'x'.join(map(str, INPUT_SHAPE))}); every contender takes numpy and returns numpy, so each call includes "
        "its transfers and ends synchronised; TF32 off for all. Targets: LRP <= 1.5x a gradient, <= 1.0x zennit.",
        "", HEADER, *map(format_row, rows), "", END])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batches", default="1,16,256", help="comma-separated batch sizes (default 1,16,256)")
    parser.add_argument("--repeats", type=int, default=30, help="timed rounds per case (default 30)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave benchmarks/README.md alone")
    args = parser.parse_args(argv)
    from onnxplain.compat import ensure_torchvision

    ensure_torchvision()  # zennit imports torchvision
    print(HEADER)
    rows = measure(args.device, [int(b) for b in args.batches.split(",")], args.repeats)
    if not args.no_write:
        command = "python benchmarks/lrp_gpu.py " + " ".join(sys.argv[1:] if argv is None else argv)
        write_section(section(rows, command.strip(), args.device, args.repeats), BEGIN, END)
        print(f"wrote the table to {README}")


if __name__ == "__main__":
    main()
