"""APEM's epsilon search: the paper's integer linear scan against batched bracketing + regula falsi.

Both searches get the same cases (relevance and irrelevance directions of gradient maps, stage 2) and must
return the same smallest flipping step; forward passes are counted at `model.run`, time is wall clock.

    python benchmarks/apem_search.py [--images 50]     # appends/replaces its section in benchmarks/README.md
"""
from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import numpy as np

import onnxplain
from onnxplain.metrics import bracket_search, directions, linear_search, loss_gradient, stage_maps
from onnxplain.metrics.layout import InputLayout

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "models" / "samples"
MARK = "<!-- apem_search -->"


class Counted:
    """model.run wrapped to count samples."""

    def __init__(self, model):
        self.passes, self._run = 0, model.run
        model.run = self

    def __call__(self, x, *args, **kwargs):
        self.passes += len(x)
        return self._run(x, *args, **kwargs)


def cases(model, x: np.ndarray):
    classes = np.argmax(model.scores(x), axis=1)
    sensitivity, _ = model.torch().gradient(x, onnxplain.targets.Target())
    sign = np.sign(loss_gradient(model, x, classes))
    layout = InputLayout.of(model, x.shape[1:])
    maps = stage_maps(sensitivity, x, 2, layout)
    both = np.concatenate([maps, 1 - maps])
    d = directions(both, np.concatenate([sign, sign]), layout).astype(x.dtype)
    return np.concatenate([x, x]), d, np.concatenate([classes, classes])


def measure(name: str, model, x: np.ndarray, step: float) -> dict:
    cx, d, classes = cases(model, x)
    counter = Counted(model)
    row = {"model": name, "cases": len(cx), "step": step}
    for label, search in (("linear", linear_search), ("bracket", bracket_search)):
        counter.passes = 0
        start = time.perf_counter()
        row[label] = search(model, cx, d, classes, step=step, max_steps=100_000)
        row[f"{label}_s"], row[f"{label}_passes"] = time.perf_counter() - start, counter.passes
    row["agree"] = int((row["linear"] == row["bracket"]).sum())
    row["median_k"] = float(np.median(row["linear"]))
    return row


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="APEM epsilon search: linear scan vs bracketing")
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--no-write", action="store_true", help="print only; leave benchmarks/README.md alone")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    rows = []
    cnn = onnxplain.load(ROOT / "models" / "digits_cnn.onnx")
    x = np.load(SAMPLES / "digits_test100_cnn.npy")[:args.images]
    rows.append(measure("digits_cnn, ε step 1", cnn, x, 1.0))
    rows.append(measure("digits_cnn, ε step 0.25", cnn, x, 0.25))
    logreg = onnxplain.load(ROOT / "models" / "digits_logreg.onnx")
    logreg_x = np.load(SAMPLES / "digits_test100_logreg.npy")[:args.images]
    rows.append(measure("digits_logreg, ε step 1", logreg, logreg_x, 1.0))
    lines = [MARK, "## APEM ε search (`benchmarks/apem_search.py`)", "",
             f"`python benchmarks/apem_search.py --images {args.images}`: gradient maps (stage 2) of the first "
             f"{args.images} test digits; each case is one image's relevance or irrelevance direction. Forward passes "
             "are samples sent through `model.run`; the linear scan is the paper's k = 0, 1, 2, ...", "",
             "| cases | median k* | same k* | linear passes | bracketing passes | ratio | linear s | bracketing s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']}: {r['cases']} | {r['median_k']:.0f} | {r['agree']}/{r['cases']} | "
                     f"{r['linear_passes']} | {r['bracket_passes']} | "
                     f"{r['linear_passes'] / r['bracket_passes']:.1f}× | {r['linear_s']:.2f} | {r['bracket_s']:.2f} |")
    section = "\n".join(lines) + "\n" + MARK + "\n"
    print(section)
    if args.no_write:
        return
    readme = ROOT / "benchmarks" / "README.md"
    text = readme.read_text() if readme.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(MARK) + ".*?" + re.escape(MARK) + "\n", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    readme.write_text(text)


if __name__ == "__main__":
    main()
