"""`onnxplain contrast`: "why class A and not class B?" through a generator's latent space (CDeepEx or xGEMs).

Per input: a PNG (input | the generator's fit G(z0) | the boundary input D sees at z_e | the contrast, red where the
probe class needs ink added and blue where ink would go | the class log-likelihoods along the optimisation path),
the explanation G(z0) - G(z_e) as .npy, and JSON with the final log-likelihoods and which constraints hold.
"""
from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from onnxplain.errors import OnnxplainError
from onnxplain.io import load_inputs
from onnxplain.methods.contrastive import CDeepEx, ProbeIsPrediction, XGEMs, contrast_map
from onnxplain.numbers import SEED_MAX
from onnxplain.targets import parse_target

from .common import (NonEmptyPath, checked_scores, echo_json, echo_notes, first_output_note, hold_option, input_notes,
                     load_model, model_argument, preprocess_option, scores_option, use_labels)
from .outputs import StagedFiles, check_output, input_names, output_paths

METHODS = {"cdeepex": CDeepEx, "xgems": XGEMs}
CONSTRAINTS = ("equal_likelihood", "true_above_others", "probe_above_others", "all", "true_and_probe_top_two")
IMPOSED = {"cdeepex": ("equal_likelihood", "true_above_others", "probe_above_others"),
           "xgems": ("equal_likelihood",)}


def contrast_figure(model, sample: np.ndarray, explanation, i: int, title: str):
    """input | G(z0) | G(z_e) - Delta | contrast over the input | log-likelihood path (true, probe, best other)."""
    from onnxplain import viz

    _, Figure = viz.matplotlib_parts()
    d = explanation.diagnostics
    spec = model.preprocess
    if spec is None or (spec.layout == "flat" and spec.size is None):
        raise OnnxplainError("--out draws images, but this model's input has no image layout; give --preprocess "
                             "with a layout and size")
    show, to_map = spec.tensor_to_image, spec.relevance_to_map
    boundary = d["explanation_image"][i] - d["residual"][i]
    contrast = to_map(contrast_map(explanation)[i])
    fig = Figure(figsize=(13.5, 3.0), dpi=viz.DPI)
    fig.suptitle(title, fontsize=10)
    axes = fig.subplots(1, 5, gridspec_kw={"width_ratios": [1, 1, 1, 1, 1.6]})
    for ax, picture, name in zip(axes, (show(sample), show(d["start_image"][i]), show(boundary)),
                                 ("input", "G(z0)", "G(z_e) - Δ (boundary)")):
        viz.show_picture(ax, picture, name, cmap="gray" if np.ndim(picture) == 2 else None, vmin=0, vmax=1)
    viz.show_picture(axes[3], viz.overlay_rgb(show(sample), contrast), "red: add, blue: remove")
    true, probe = int(d["true_class"][i]), int(d["probe_class"][i])
    path = d["path_llh"][i]
    others = np.delete(path, [true, probe], axis=1).max(axis=1)
    steps = np.arange(len(path))
    axes[4].plot(steps, path[:, true], color="#1f5fd6", label=f"true {model.label_of(true)}")
    axes[4].plot(steps, path[:, probe], color="#d62728", label=f"probe {model.label_of(probe)}")
    axes[4].plot(steps, others, color="gray", linestyle="--", label="best other")
    axes[4].set_xlabel("multiplier updates (augmented Lagrangian)", fontsize=8)
    axes[4].set_xticks(steps[::max(1, len(steps) // 8)])
    axes[4].set_ylabel("log-likelihood", fontsize=8)
    axes[4].tick_params(labelsize=7)
    axes[4].legend(fontsize=7)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.16, top=0.82, wspace=0.32)
    return fig


def report(model, explanation, i: int, source: Path, outputs: dict) -> dict:
    d = explanation.diagnostics
    labelled = lambda row: {model.label_of(k): round(float(v), 5) for k, v in enumerate(row)}  # noqa: E731
    true, probe = int(d["true_class"][i]), int(d["probe_class"][i])
    return {
        "input": str(source), "method": explanation.method, "options": explanation.params,
        "true": {"index": true, "label": model.label_of(true)},
        "probe": {"index": probe, "label": model.label_of(probe)},
        "llh_input": labelled(d["llh_input"][i]), "llh_final": labelled(d["llh_final"][i]),
        "constraints": {key: bool(d[key][i]) for key in CONSTRAINTS},
        "constraints_imposed": list(IMPOSED[explanation.method]),
        "reconstruction_error": float(d["reconstruction_error"][i]),
        "latent_distance": float(d["latent_distance"][i]), "outer_steps": int(d["outer_steps"][i]),
        "converged": bool(d["converged"][i]), "stationarity": float(d["stationarity"][i]),
        "penalty": float(d["penalty"][i]),
        "explanation_l1": float(np.abs(explanation.relevance[i]).sum()), "outputs": outputs,
    }


def outcome(row: dict) -> str:
    """What the method reached, in its own terms: xGEMs imposes llh(A) = llh(B) only, so a third class above A and B
    is reported as what happened, not as a violated constraint."""
    held = row["constraints"]
    if row["method"] != "xgems":
        return "all constraints hold" if held["all"] else "constraints violated"
    reached = "equal likelihood reached" if held["equal_likelihood"] else "equal likelihood not reached"
    ranking = "true and probe the top two" if held["true_and_probe_top_two"] else \
        "another class more likely (xgems imposes no ranking)"
    return f"{reached}, {ranking}"


@click.command("contrast")
@model_argument
@click.argument("inputs", nargs=-1, required=True, type=NonEmptyPath())
@click.option("--generator", required=True, type=NonEmptyPath(dir_okay=False),
              help="ONNX generator: latent [N,k] -> the classifier's input.")
@click.option("--probe", default=None, help="Class to contrast with (index or label; default: 2nd most likely).")
@click.option("--method", type=click.Choice(sorted(METHODS)), default="cdeepex", show_default=True,
              help="cdeepex (Equation 2 with ranking constraints) or xgems (without them).")
@click.option("--labels", type=NonEmptyPath(dir_okay=False), help="Class names, one per line.")
@preprocess_option
@scores_option
@hold_option
@click.option("--margin", type=click.FloatRange(0), default=0.1, show_default=True,
              help="Log-likelihood margin of true and probe over every other class.")
@click.option("--restarts", type=click.IntRange(1), default=4, show_default=True, help="Random starts for z0.")
@click.option("--outer-steps", "outer_steps", type=click.IntRange(1), default=30, show_default=True,
              help="Augmented-Lagrangian multiplier updates.")
@click.option("--seed", type=click.IntRange(0, SEED_MAX), default=0, show_default=True,
              help="Seed of the latent starts.")
@click.option("--device", default="cpu", show_default=True, help="Torch device for D and G (cpu, cuda, cuda:N).")
@click.option("--out", type=NonEmptyPath(), default=None, help="PNG per input (a folder or a name).")
@click.option("--save-npy", "save_npy", type=NonEmptyPath(),
              help="Write G(z0) - G(z_e) as .npy (a name ending in .npy, or a folder).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def contrast_command(model, inputs, generator, probe, method, labels, preprocess, scores, hold, margin, restarts,
                     outer_steps, seed, device, out, save_npy, as_json, quiet):
    """Why does MODEL choose its class and not --probe for each input? (CDeepEx, via --generator's latent space)"""
    from onnxplain import viz

    check_output(out, "figure")
    check_output(save_npy, "file")
    if save_npy is not None and save_npy.suffix and not save_npy.is_dir() and save_npy.suffix.lower() != ".npy":
        raise OnnxplainError(f"--save-npy writes .npy files: give a name ending in .npy or a folder, not {save_npy}")
    loaded = load_model(model, preprocess, scores, hold)
    use_labels(loaded, labels)
    explainer = METHODS[method](str(generator), margin=margin, restarts=restarts, outer_steps=outer_steps,
                                seed=seed, device=device, progress=not quiet)
    goal = parse_target(loaded, probe) if probe is not None else None
    x, sources = load_inputs(inputs, loaded)
    checked_scores(loaded, x, sources)
    ids = input_names(sources)
    pngs = output_paths(out, ids, ".png") if out else [None] * len(x)
    npys = output_paths(save_npy, ids, ".npy") if save_npy else [None] * len(x)
    try:
        explanation = explainer.explain(loaded, x, goal)
    except ProbeIsPrediction as error:
        raise ProbeIsPrediction(error.rows, error.label, [str(sources[i]) for i in error.rows]) from None
    rows = []
    with StagedFiles() as staged:
        for i, (source, png, npy) in enumerate(zip(sources, pngs, npys)):
            outputs = {}
            if npy is not None:
                staged.save_npy(npy, explanation.relevance[i].astype(np.float32))
                outputs["npy"] = str(npy)
            row = report(loaded, explanation, i, source, outputs)
            if png is not None:
                title = (f"{source.name}: why {row['true']['label']} and not {row['probe']['label']}? "
                         f"({method}: {outcome(row)})")
                viz.save_figure(contrast_figure(loaded, x[i], explanation, i, title), staged.path_for(png))
                outputs["png"] = str(png)
            rows.append(row)
        staged.commit()
    echo_notes([first_output_note(loaded), *input_notes(loaded, inputs, sources, x=x)])
    if as_json:
        echo_json(rows)
        return
    for row in rows:
        written = ", ".join(row["outputs"].values())
        click.echo(f"{row['input']}: why {row['true']['label']} and not {row['probe']['label']}: {outcome(row)} "
                   f"(llh true {row['llh_final'][row['true']['label']]:.3f}, probe "
                   f"{row['llh_final'][row['probe']['label']]:.3f})" + (f" -> {written}" if written else ""))
