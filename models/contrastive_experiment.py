"""CDeepEx vs xGEMs on the digits CNN: how often Equation 2's constraints hold (the paper's Figs. 4 and 5).

For the first 50 test digits (``samples/digits_test100_cnn.npy``), ask "why your top-1 and not your second most
likely class?" with CDeepEx and with xGEMs (Equation 2 without the ranking constraints), using the VAE decoder
``digits_generator.onnx``. Prints the share of inputs on which every constraint holds, how often another class
ends up more likely than true or probe, how far z_e is from a reference solution (`reference_distance`), and
writes two figures:

* ``docs/figures/contrastive_path.png``: the mean log-likelihood of the true class, the probe and the best other
  class along the optimisation path, for both methods (the paper's Fig. 5b), and one input's path images (Fig. 5a);
* ``docs/figures/contrastive_examples.png``: input, CDeepEx and xGEMs explanations for a few digits (Fig. 4).

Numbers also go to ``docs/figures/contrastive_experiment.json``. About 2 minutes on one CPU core::

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
            "mean_outer_steps": float(d["outer_steps"].mean()), "max_outer_steps": int(d["outer_steps"].max()),
            "converged": float(d["converged"].mean()), "median_stationarity": float(np.median(d["stationarity"])),
            "seconds": round(seconds, 1)}


def reference_distance(explanation, model, generator: Path, margin: float = 0.1) -> np.ndarray:
    """||z_e - z0|| per input from a plain method of multipliers on the same z0 and Delta: one input at a time,
    each inner problem solved by torch's L-BFGS (strong Wolfe line search) to its tolerances, the penalty grown
    4x whenever the violation did not fall 4x, until the violation is below 1e-5 and lambda moves by less than
    1e-6 (at most 200 updates)."""
    import torch

    from onnxplain.methods.generator import Generator

    d = explanation.diagnostics
    generate, classify = Generator(str(generator), model), model.torch().log_likelihood
    distances = []
    for i in range(len(d["z0"])):
        true, probe = int(d["true_class"][i]), int(d["probe_class"][i])
        others = [k for k in range(d["llh_final"].shape[1]) if k not in (true, probe)]
        z0, residual = torch.tensor(d["z0"][i:i + 1]), torch.tensor(d["residual"][i:i + 1])

        def parts(z):
            llh = classify(generate(z) - residual)[0]
            ranking = torch.cat([llh[others] - llh[true], llh[others] - llh[probe]]) + margin
            return ((z - z0) ** 2).sum(), (llh[true] - llh[probe])[None], \
                ranking if explanation.method == "cdeepex" else ranking[:0]

        z, lam, c = z0.clone(), torch.zeros(1), 1.0
        with torch.no_grad():
            _, h, g = parts(z)
        mu = torch.zeros_like(g)
        previous = max(h.abs().max().item(), g.clamp(min=0).max().item() if len(g) else 0.0)
        for update in range(200):
            z = z.detach().clone().requires_grad_(True)
            lbfgs = torch.optim.LBFGS([z], max_iter=500, tolerance_grad=1e-7, tolerance_change=1e-12,
                                      history_size=20, line_search_fn="strong_wolfe")

            def closure():
                lbfgs.zero_grad()
                f, h, g = parts(z)
                value = f + (lam * h).sum() + c / 2 * (h * h).sum() + \
                    ((mu + c * g).clamp(min=0) ** 2 - mu ** 2).sum() / (2 * c)
                value.backward()
                return value

            lbfgs.step(closure)
            with torch.no_grad():
                f, h, g = parts(z)
                violation = max(h.abs().max().item(), g.clamp(min=0).max().item() if len(g) else 0.0)
                change = (c * h).abs().max().item()
                lam, mu = lam + c * h, (mu + c * g).clamp(min=0)
                c = min(4 * c, 1e6) if violation > 0.25 * previous else c
                previous = violation
            if violation < 1e-5 and change < 1e-6 and update >= 2:
                break
        distances.append(f.item() ** 0.5)
    return np.array(distances)


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
        picks = np.arange(min(6, int(d["outer_steps"][example]) + 1))
        images = generator.run(d["path_z"][example, picks].astype(np.float32))[generator.output_names[0]][:, 0]
        ax = fig.add_subplot(grid[row, 0])
        ax.imshow(np.concatenate(list(images), axis=1), cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([28 * k + 14 for k in range(len(picks))], [f"update {p}" for p in picks], fontsize=8)
        ax.set_yticks([])
        ax.set_title(f"{name}: G(z) along the path of input {example}", fontsize=10)
        for column, (title, lines) in enumerate(((f"input {example}", example_path(explanation, example)),
                                                 ("mean over all inputs", mean_path(explanation))), start=1):
            ax = fig.add_subplot(grid[row, column])
            for label, values in lines.items():
                ax.plot(np.arange(len(values)), values, color=colours[label], marker=".",
                        linestyle="--" if label == "best other" else "-", label=label)
            ax.set_title(f"{name}: class log-likelihood, {title}", fontsize=9)
            ax.set_xlabel("multiplier updates", fontsize=8)
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
            if name == "xgems":  # xGEMs imposes no ranking: say what happened, not what was "violated"
                state = "A, B top two" if d["true_and_probe_top_two"][i] else "a third class on top"
            else:
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
        ratio = explanation.diagnostics["latent_distance"] / reference_distance(explanation, model, generator)
        numbers[method_class.name]["distance_over_reference"] = {"median": float(np.median(ratio)),
                                                                 "min": float(ratio.min()), "max": float(ratio.max())}
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
