"""The deep Taylor paper's two-digit experiment (Sec. 6.1, Figs. 5 and 6) on ``two_digits.onnx``.

Evaluation images are pairs of test-split digits (``two_digits.evaluation_pairs``): positives hold exactly one digit
0-3 beside a digit 4-9, negatives two digits 4-9. Three explanations of the one output f(x):

* sensitivity analysis, R_p = (df/dx_p)^2, from the torch executor's autograd gradient;
* deep Taylor decomposition, onnxplain's ``deep-taylor`` method (z^B on the first layer with the bounds of the
  preprocessing spec, -0.5 and 1.5 as in the paper; z+ on the layers above);
* LRP-0 (the z-rule everywhere, onnxplain's ``lrp`` method with composite ``lrp-0``), a non-positive contrast.

Reported: on positives, the share of (positive) relevance that falls on the target digit's half; on all images, the
Fig. 6 diagnostics, sum of input relevance against f(x) and the histogram of pixel relevances (negative ones blue).
Writes ``docs/figures/two_digits.png`` and prints a Markdown table::

    python models/two_digits_experiment.py [--positives 300] [--negatives 100] [--figure PATH] [--model PATH]
"""
from __future__ import annotations

import argparse
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MODEL = HERE / "two_digits.onnx"
FIGURE = HERE.parent / "docs" / "figures" / "two_digits.png"
EXAMPLES = 6
METHODS = ("sensitivity", "deep-taylor", "lrp-0")
TITLES = {"sensitivity": "sensitivity $(\\partial f/\\partial x_p)^2$", "deep-taylor": "deep Taylor (onnxplain)",
          "lrp-0": "LRP-0 (z-rule)"}


def two_digits_module():
    """``two_digits.py`` (data and network), loaded by path: ``models/`` is not a package."""
    spec = importlib.util.spec_from_file_location("onnxplain_models_two_digits", HERE / "two_digits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def evaluation_set(positives: int, negatives: int):
    """(x, digits, target side) of the evaluation pairs, built from build.py's test digits."""
    data = two_digits_module()
    _, (canvases, labels) = data.digit_canvases()
    return data.evaluation_pairs(canvases, labels, positives, negatives)


# ---------------------------------------------------------------------------------------------------- explanations

def explain(model, x: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """(relevance like x, f(x), diagnostics) of the model's one output by `method` (one of METHODS)."""
    from onnxplain.methods import make_method
    from onnxplain.targets import Target

    target = Target(index=0)
    if method == "sensitivity":
        gradient, score = model.torch().gradient(x, target)
        return np.asarray(gradient, dtype=np.float64) ** 2, np.asarray(score, dtype=np.float64), {}
    explainer = (make_method("deep-taylor", progress=False) if method == "deep-taylor"
                 else make_method("lrp", composite="lrp-0", progress=False))
    explanation = explainer.explain(model, x, target)
    return explanation.relevance.astype(np.float64), explanation.score, explanation.diagnostics


def target_half_share(relevance: np.ndarray, sides: np.ndarray) -> np.ndarray:
    """Per image: the share of its positive relevance on the target digit's half (side 0 = left, 1 = right)."""
    positive = np.clip(relevance, 0, None).reshape(len(relevance), -1, 2, relevance.shape[-1] // 2)
    halves = positive.sum(axis=(1, 3))                                   # (N, 2): left, right
    return halves[np.arange(len(sides)), sides] / np.maximum(halves.sum(axis=1), 1e-30)


def input_sums(relevance: np.ndarray, diagnostics: dict) -> np.ndarray:
    """Sum of input relevance per image: from the conservation report when the method gives one."""
    if "input_relevance" in diagnostics:
        return np.asarray(diagnostics["input_relevance"], dtype=np.float64)
    return relevance.reshape(len(relevance), -1).sum(axis=1)


def summary(relevance: np.ndarray, score: np.ndarray, sides: np.ndarray, diagnostics: dict) -> dict[str, float]:
    """The numbers of one method: target-half share on positives, conservation (sum of input relevance, and with
    the bias and stabiliser terms of the conservation report where there is one) and positivity on all images."""
    positives = sides >= 0
    share = target_half_share(relevance[positives], sides[positives])
    ledger = diagnostics.get("conservation_error")
    sums = input_sums(relevance, diagnostics)[positives]
    return {
        "share_mean": float(share.mean()),
        "share_median": float(np.median(share)),
        "share_over_half": float((share > 0.5).mean()),
        "input_sum_error": float(np.median(np.abs(sums - score[positives]) / np.abs(score[positives]))),
        "sum_spread": float(sums.std() / abs(sums.mean())),
        "ledger_error": float(np.max(np.abs(ledger))) if ledger is not None else float("nan"),
        "negative_fraction": float((relevance < 0).mean()),
        "negative_mass": float(np.clip(-relevance, 0, None).sum() / np.abs(relevance).sum()),
    }


# ---------------------------------------------------------------------------------------------------- report

def table(results: dict[str, dict], positives: int, negatives: int) -> str:
    rows = ["| method | share on the target half: mean | median | images with share > 0.5 "
            "| median abs(ΣR − f(x)) / f(x) | spread of ΣR (std / mean) | max ledger error | negative pixels "
            "| negative share of abs(R) |", "|---|---|---|---|---|---|---|---|---|"]
    for method, r in results.items():
        ledger = "n/a" if np.isnan(r["ledger_error"]) else f"{r['ledger_error']:.1e}"
        rows.append(f"| {method} | {r['share_mean']:.3f} | {r['share_median']:.3f} | {r['share_over_half']:.1%} "
                    f"| {r['input_sum_error']:.1e} | {r['sum_spread']:.2f} | {ledger} | {r['negative_fraction']:.1%} "
                    f"| {r['negative_mass']:.1%} |")
    return (f"Shares and ΣR (against f(x), and its spread) over {positives} positive images (one digit 0-3 beside "
            f"one digit 4-9); "
            f"the ledger error (ΣR + bias + stabiliser terms − f(x), relative) and positivity over all "
            f"{positives + negatives} images.\n\n" + "\n".join(rows))


def figure(out: Outcome):
    """Fig. 5 and 6 in one: example heatmaps (top), ΣR vs f(x) scatter and relevance histograms (bottom)."""
    from matplotlib.figure import Figure

    from onnxplain.viz import heatmap_rgb

    model, x, score, sides, relevances = out.model, out.x, out.score, out.sides, out.relevances

    fig = Figure(figsize=(2.1 * EXAMPLES, 1.2 * (1 + len(relevances)) + 2 * 2.6), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.2 * (1 + len(relevances)), 2 * 2.6])
    grid = top.subplots(1 + len(relevances), EXAMPLES, squeeze=False)
    examples = np.flatnonzero(sides >= 0)[:EXAMPLES]
    for column, i in enumerate(examples):
        grid[0, column].imshow(model.preprocess.tensor_to_image(x[i]), cmap="gray", vmin=0, vmax=1)
        grid[0, column].set_title(f"f(x) = {score[i]:.0f}", fontsize=9)
        for row, (method, relevance) in enumerate(relevances.items(), start=1):
            grid[row, column].imshow(heatmap_rgb(relevance[i, 0]))
            if column == 0:
                grid[row, column].set_ylabel(method, fontsize=9)
    for ax in grid.ravel():
        ax.set_xticks([]), ax.set_yticks([])

    plots = bottom.subplots(2, len(relevances), squeeze=False)
    for column, (method, relevance) in enumerate(relevances.items()):
        scatter = plots[0, column]
        scatter.scatter(score, out.sums[method], s=6, c=np.where(sides >= 0, "tab:red", "tab:gray"))
        if method != "sensitivity":
            line = [min(score.min(), 0), score.max()]
            scatter.plot(line, line, "k--", lw=0.8)
        scatter.set_title(TITLES[method], fontsize=10)
        scatter.set_xlabel("f(x)", fontsize=9)
        scatter.set_ylabel("Σ_p R_p", fontsize=9)
        values = relevance.ravel()
        values = values[values != 0]
        edges = np.linspace(-np.abs(values).max(), np.abs(values).max(), 61)
        counts, _ = np.histogram(values, edges)
        centres = (edges[:-1] + edges[1:]) / 2
        plots[1, column].bar(centres, counts, width=np.diff(edges), color=np.where(centres < 0, "tab:blue", "tab:red"))
        plots[1, column].set_yscale("log")
        plots[1, column].set_xlabel("R_p (nonzero pixels)", fontsize=9)
        plots[1, column].set_ylabel("count", fontsize=9)
    return fig


@dataclass
class Outcome:
    """One run: the evaluation images, f(x), target sides, and per method its relevance, input sums and numbers."""

    model: object
    x: np.ndarray
    sides: np.ndarray
    score: np.ndarray = None
    relevances: dict = field(default_factory=dict)
    sums: dict = field(default_factory=dict)
    results: dict = field(default_factory=dict)


def run(positives: int, negatives: int, methods=METHODS, path: Path = MODEL) -> Outcome:
    """Explain the evaluation set with each method."""
    import onnxplain

    model = onnxplain.load(path)
    x, _, sides = evaluation_set(positives, negatives)
    out = Outcome(model, x, sides)
    for method in methods:
        relevance, out.score, diagnostics = explain(model, x, method)
        out.relevances[method], out.sums[method] = relevance, input_sums(relevance, diagnostics)
        out.results[method] = summary(relevance, out.score, sides, diagnostics)
    if "sensitivity" in methods:  # the gradient's magnitude, unsquared: how much the power matters
        out.results["gradient magnitude"] = summary(np.sqrt(out.relevances["sensitivity"]), out.score, sides, {})
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positives", type=int, default=300)
    parser.add_argument("--negatives", type=int, default=100)
    parser.add_argument("--figure", type=Path, default=FIGURE)
    parser.add_argument("--model", type=Path, default=MODEL, help="a detector built by two_digits.py")
    args = parser.parse_args(argv)
    import torch

    from onnxplain.viz import save_figure

    torch.set_num_threads(1)
    out = run(args.positives, args.negatives, path=args.model)
    positive = out.sides >= 0
    print(f"detector: mean f(x) {out.score[positive].mean():.1f} on positives, {out.score[~positive].mean():.1f} "
          f"on negatives; accuracy at f(x) > 50: {((out.score > 50) == positive).mean():.4f}")
    print(table(out.results, args.positives, args.negatives))
    args.figure.parent.mkdir(parents=True, exist_ok=True)
    save_figure(figure(out), args.figure)
    print(f"wrote {args.figure}")


if __name__ == "__main__":
    main()
