"""CDeepEx vs xGEMs on the digits CNN: how often Equation 2's constraints hold (the paper's Figs. 4 and 5).

For the first 50 test digits (``samples/digits_test100_cnn.npy``), ask "why your top-1 and not your second most
likely class?" with CDeepEx and with xGEMs (Equation 2 without the ranking constraints), using the VAE decoder
``digits_generator.onnx``. Prints the share of inputs on which every constraint holds, how often another class
ends up more likely than true or probe, and writes two figures:

* ``docs/figures/contrastive_path.png``: the mean log-likelihood of the true class, the probe and the best other
  class along the optimisation path, for both methods (the paper's Fig. 5b), and one input's path images (Fig. 5a);
* ``docs/figures/contrastive_examples.png``: input, CDeepEx and xGEMs explanations for a few digits (Fig. 4).

Numbers also go to ``docs/figures/contrastive_experiment.json``. About 5 minutes on one CPU core::

    python models/contrastive_experiment.py [--count 50]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
FIGURES = HERE.parent / "docs" / "figures"


def run(method_class, model, generator: Path, x: np.ndarray):
    began = time.perf_counter()
    explanation = method_class(str(generator), progress=True).explain(model, x)
    return explanation, time.perf_counter() - began


def summary(explanation, seconds: float) -> dict:
    d = explanation.diagnostics
    return {"inputs": len(d["all"]), "constraints_hold": float(d["all"].mean()),
            "equal_likelihood": float(d["equal_likelihood"].mean()),
            "true_and_probe_above_others": float((d["true_above_others"] & d["probe_above_others"]).mean()),
            "another_class_more_likely": float((~d["true_and_probe_top_two"]).mean()),
            "mean_latent_distance": float(d["latent_distance"].mean()),
            "mean_reconstruction_error": float(d["reconstruction_error"].mean()),
            "mean_outer_steps": float(d["outer_steps"].mean()), "seconds": round(seconds, 1)}


def mean_path(explanation) -> dict[str, np.ndarray]:
    """Mean log-likelihood of true, probe and the best other class at each outer step (over all inputs)."""
    d = explanation.diagnostics
    path = d["path_llh"]                                  # (N, T, K)
    rows = np.arange(len(path))
    true, probe = path[rows, :, d["true_class"]], path[rows, :, d["probe_class"]]
    masked = path.copy()
    masked[rows, :, d["true_class"]] = -np.inf
    masked[rows, :, d["probe_class"]] = -np.inf
    return {"true": true.mean(0), "probe": probe.mean(0), "best other": masked.max(axis=2).mean(0)}


def example_path(explanation, i: int) -> dict[str, np.ndarray]:
    d = explanation.diagnostics
    path = d["path_llh"][i]
    others = np.delete(path, [d["true_class"][i], d["probe_class"][i]], axis=1).max(axis=1)
    return {"true": path[:, d["true_class"][i]], "probe": path[:, d["probe_class"][i]], "best other": others}


def path_figure(results: dict, generator, example: int):
    """Per method: G(z) along one input's path (Fig. 5a), its class log-likelihoods, and the mean over all."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14, 5.2), dpi=100)
    grid = fig.add_gridspec(2, 3, width_ratios=[1.6, 1, 1])
    colours = {"true": "#1f5fd6", "probe": "#d62728", "best other": "gray"}
    for row, (name, explanation) in enumerate(results.items()):
        d = explanation.diagnostics
        every = explanation.params["record_every"]
        length = int(np.flatnonzero(np.any(d["path_z"][example] != d["path_z"][example, -1:], axis=1)).max(
            initial=0)) + 2
        picks = np.unique(np.geomspace(1, length, 6).round().astype(int) - 1)
        images = generator.run(d["path_z"][example, picks].astype(np.float32))[generator.output_names[0]][:, 0]
        ax = fig.add_subplot(grid[row, 0])
        ax.imshow(np.concatenate(list(images), axis=1), cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([28 * k + 14 for k in range(len(picks))], [f"step {p * every}" for p in picks], fontsize=8)
        ax.set_yticks([])
        ax.set_title(f"{name}: G(z) along the path of input {example}", fontsize=10)
        for column, (title, lines) in enumerate(((f"input {example}", example_path(explanation, example)),
                                                 ("mean over all inputs", mean_path(explanation))), start=1):
            ax = fig.add_subplot(grid[row, column])
            for label, values in lines.items():
                ax.plot(np.arange(len(values)) * every, values, color=colours[label],
                        linestyle="--" if label == "best other" else "-", label=label)
            ax.set_xscale("symlog", linthresh=every)
            ax.set_title(f"{name}: class log-likelihood, {title}", fontsize=9)
            ax.set_xlabel("Adam steps", fontsize=8)
            ax.tick_params(labelsize=8)
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def examples_figure(x: np.ndarray, results: dict, picks: list[int]):
    from matplotlib.figure import Figure

    from onnxplain.methods.contrastive import contrast_map
    from onnxplain.viz import overlay_rgb

    fig = Figure(figsize=(1.9 * (1 + len(results)), 1.9 * len(picks) + 0.3), dpi=100)
    grid = fig.subplots(len(picks), 1 + len(results), squeeze=False)
    for r, i in enumerate(picks):
        grid[r][0].imshow(x[i, 0], cmap="gray", vmin=0, vmax=1)
        for c, (name, explanation) in enumerate(results.items(), start=1):
            d = explanation.diagnostics
            grid[r][c].imshow(overlay_rgb(x[i, 0], contrast_map(explanation)[i, 0]))
            state = "holds" if d["all"][i] else "violated"
            grid[r][c].set_title(f"{name}: {d['true_class'][i]} not {d['probe_class'][i]} ({state})", fontsize=7)
        for ax in grid[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    grid[0][0].set_title("input", fontsize=8)
    fig.tight_layout()
    return fig


def main(argv=None) -> None:
    import torch

    import onnxplain
    from onnxplain.methods.contrastive import CDeepEx, XGEMs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50, help="test digits explained")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model = onnxplain.load(HERE / "digits_cnn.onnx")
    x = np.load(HERE / "samples" / "digits_test100_cnn.npy")[:args.count]
    generator = HERE / "digits_generator.onnx"
    results, numbers = {}, {}
    for method_class in (CDeepEx, XGEMs):
        explanation, seconds = run(method_class, model, generator, x)
        results[method_class.name], numbers[method_class.name] = explanation, summary(explanation, seconds)
        print(method_class.name, json.dumps(numbers[method_class.name]))
    FIGURES.mkdir(parents=True, exist_ok=True)
    xgems = results["xgems"].diagnostics
    example = int(np.flatnonzero(~xgems["true_and_probe_top_two"])[0]) if (~xgems["true_and_probe_top_two"]).any() \
        else 0
    path_figure(results, onnxplain.load(generator), example).savefig(FIGURES / "contrastive_path.png")
    picks = sorted({example, *np.flatnonzero(~xgems["all"])[:2].tolist(), 0, 1})[:5]
    examples_figure(x, results, picks).savefig(FIGURES / "contrastive_examples.png")
    numbers["command"] = f"python models/contrastive_experiment.py --count {args.count}"
    (FIGURES / "contrastive_experiment.json").write_text(json.dumps(numbers, indent=2) + "\n")
    print(f"wrote {FIGURES / 'contrastive_path.png'}, contrastive_examples.png, contrastive_experiment.json")


if __name__ == "__main__":
    main()
