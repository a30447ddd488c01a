"""`onnxplain explain`: relevance for each input, as pictures (PNG, NIfTI), .npy and JSON.

Inputs are explained in batches of `--batch`; each batch's outputs are rendered into a staging folder as it
finishes (its relevance maps then dropped), and moved into place only after all inputs succeeded (naming scheme:
`cli/outputs.py`).
"""
from __future__ import annotations

import inspect
import time
from pathlib import Path

import click
import numpy as np

from onnxplain.errors import NotFinite, OnnxplainError, named_list, not_applicable
from onnxplain.explanation import relevance_dtype, sample_values
from onnxplain.io import load_inputs
from onnxplain.methods import make_method, method_class, method_names
from onnxplain.numbers import SEED_MAX
from onnxplain.runtime import optional_bar
from onnxplain.targets import parse_target
from onnxplain.viz import DEFAULT_THRESHOLD

from .common import (NonEmptyPath, checked_scores, echo_json, echo_notes, first_output_note, hold_option, input_notes,
                     load_model, map_scores_note, model_argument, preprocess_option, scores_option, use_labels)
from .outputs import StagedFiles, check_output, input_names, nifti_path, output_paths
from .predict_cmd import top_k


def parse_rules(pairs: tuple[str, ...]) -> dict[str, str]:
    """--rule OP=RULE (OP an op type, or a glob of node or tensor names) -> {OP: RULE}."""
    rules = {}
    for pair in pairs:
        if "=" not in pair:
            raise OnnxplainError(f"--rule expects OP=RULE, got {pair!r}")
        key, rule = pair.split("=", 1)
        rules[key.strip()] = rule.strip()
    return rules


def read_reference(path: Path, model) -> np.ndarray:
    """--reference: a folder of images, or an .npy of preprocessed inputs (a batch, or one sample without the batch
    axis)."""
    if not path.exists():
        raise OnnxplainError(f"reference data not found: {path}")
    if path.is_file() and path.suffix == ".npy":
        from onnxplain.io.inputs import as_batch, read_npy

        what = f"--reference {path}"
        return model.check_input(as_batch(read_npy(path), model, what), f"{what}:")
    return load_inputs([path], model)[0]


def parse_cells(text: str) -> int | tuple[int, ...]:
    """--location-grid N or A,B,C (cells per axis) -> an int or a tuple of ints."""
    try:
        cells = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise OnnxplainError(f"--location-grid expects N or one count per axis (A,B,C), got {text!r}") from None
    return cells[0] if len(cells) == 1 else cells


def method_params(options: dict, model) -> dict:
    """The method options the user gave (None = not given), converted to library values."""
    params = {key: value for key, value in options.items() if value not in (None, ())}
    if "rules" in params:
        params["rules"] = parse_rules(params["rules"])
    if "location_grid" in params:
        params["location_grid"] = parse_cells(params["location_grid"])
    if "reference" in params:
        params["reference"] = read_reference(params["reference"], model)
    return params


def default_method(model) -> tuple[str, str | None]:
    """(method, why): LRP (its default composite, epsilon-plus) when it covers every op, else prediction difference
    and the reason LRP was passed over."""
    from onnxplain.lrp import unsupported_ops

    try:
        missing = unsupported_ops(model)
    except OnnxplainError as error:  # the graph does not even run in torch (ops outside the registry)
        reason = str(error).removeprefix("cannot run this model in torch: ")
        missing = [reason.split(" (")[0] if reason.startswith("ops outside") else f"this model's torch run "
                   f"({reason})"]
    if not missing:
        return "lrp", None
    why = f"LRP does not cover {named_list(missing, 6, '; ')}"
    return "pda", why


def build_method(name: str, params: dict, quiet: bool):
    """The method object; a required option the user left out is a user error that names it."""
    cls = method_class(name)
    required = [key for key, p in inspect.signature(cls.__init__).parameters.items()
                if key != "self" and p.default is inspect.Parameter.empty
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and key not in params]
    if required:
        raise OnnxplainError(f"--method {name} needs " + ", ".join("--" + k.replace("_", "-") for k in required))
    return make_method(name, progress=not quiet, **params)


def check_slice_axis(slice_axis: int | None, model, x: np.ndarray, sources: list[Path]) -> None:
    """--slice-axis picks how volumes are drawn: given for inputs that are no volumes, it is refused, not ignored."""
    from onnxplain.io.nifti import is_volume_input

    if slice_axis is None or is_volume_input(model) or any(s.name.lower().endswith((".nii", ".nii.gz"))
                                                           for s in sources):
        return
    shape = "x".join(map(str, x.shape[1:]))
    raise not_applicable(["--slice-axis"], f"inputs of shape {shape}, which are no 3-D volumes (it picks the axis "
                                           "a volume's slice montage runs along)")


def zero_map_note(model, records: list[dict], sources: list) -> str | None:
    """One line for inputs whose relevance is zero everywhere, with why where it is a saturated probability (1 to
    float32 precision: no occluded window or PDA sample moves it) and what to explain instead."""
    zero = [(record, source) for record, source in zip(records, sources) if record["all_zero"]]
    if not zero:
        return None
    names = named_list([source for _, source in zero])
    saturated = [r for r, _ in zero if r["target"] >= 0 and model.score_kind == "probabilities"
                 and r["score"] >= 1 - 1e-6 and r["method"] in ("occlusion", "pda")]
    if not saturated:
        return f"note: the relevance of {names} is zero everywhere"
    record = saturated[0]
    instead = "--pda-score logit" if record["method"] == "pda" else \
        f"--layer {model.logits_output} --target {record['target']}" if model.logits_output else "a logits output"
    return (f"note: the relevance of {names} is zero everywhere: the explained probability is 1 to float32 "
            f"precision, which no {record['method']} window changes; explain the logits instead ({instead})")


def explain_in_batches(explainer, model, x: np.ndarray, target, batch: int, sources: list[Path]):
    """(first input's index, one record per input of the batch: relevance, target, score, diagnostics, explain
    time (the batch's time shared)) for each batch of `batch` inputs, as it is explained; a map that is not finite
    is refused naming its files."""
    for start in range(0, len(x), batch):
        records = []
        began = time.perf_counter()
        try:
            explanation = explainer.explain(model, x[start:start + batch], target)
        except NotFinite as error:
            raise NotFinite(error.method, error.rows, [sources[start + row] for row in error.rows]) from None
        seconds = time.perf_counter() - began
        n = len(explanation.relevance)
        if n != len(x[start:start + batch]) or explanation.relevance.shape[1:] != x.shape[1:]:
            raise RuntimeError(f"{explanation.method} returned relevance of shape {explanation.relevance.shape}")
        for i in range(n):
            records.append({"relevance": explanation.relevance[i], "target": int(explanation.target[i]),
                            "score": float(explanation.score[i]), "method": explanation.method,
                            "params": sample_values(explanation.params, i, n),
                            "diagnostics": explanation.input_diagnostics(i), "explain_s": seconds / n})
        yield start, records


def hidden_name(layer: str | None, goal) -> str | None:
    """A hidden target as lines and titles name it: the tensor and its channel or unit (as --target takes them)."""
    if layer is None:
        return None
    return f"{layer} unit {','.join(map(str, goal.unit))}" if goal.unit else f"{layer} channel {goal.index}"


def title_of(model, record: dict, hidden: str | None, source: Path) -> str:
    what = hidden if record["target"] < 0 else f"class {model.label_of(record['target'])}"
    composite = record["params"].get("composite")
    method = record["method"] + (f" {composite}" if isinstance(composite, str) and composite != record["method"]
                                 else "")
    return f"{source.name}: {method} for {what} (score {record['score']:.4g})"


def write_outputs(staged: StagedFiles, model, x, records, sources, pngs, npys, *, threshold, slice_axis,
                  hidden) -> None:
    """Render and save the inputs' outputs (PNG and .npy paths, None for none) into `staged`; fills
    record['outputs'], and replaces record['relevance'] by its sum and whether it is zero everywhere."""
    from onnxplain import viz
    from onnxplain.io import read_nifti
    from onnxplain.io.nifti import sample_to_volume, write_nifti

    for sample, record, source, png, npy in zip(x, records, sources, pngs, npys, strict=True):
        relevance = record.pop("relevance")
        record.update(outputs={}, relevance_sum=float(np.sum(relevance, dtype=np.float64)),
                      all_zero=not np.any(relevance))
        if npy is not None:
            staged.save_npy(npy, relevance.astype(relevance_dtype(model.input_dtype)))   # float64 models' too
            record["outputs"]["npy"] = str(npy)
        if png is None:
            continue
        volume = affine = None
        if source.name.lower().endswith((".nii", ".nii.gz")) and source.is_file():
            volume, affine = read_nifti(source)
        figure = viz.sample_figure(model, sample, relevance, title=title_of(model, record, hidden, source),
                                   threshold=threshold, volume=volume, slice_axis=slice_axis)
        viz.save_figure(figure, staged.path_for(png))
        record["outputs"]["png"] = str(png)
        if volume is not None:
            write_nifti(staged.path_for(nifti_path(png)), sample_to_volume(relevance, model, volume.shape), affine)
            record["outputs"]["nifti"] = str(nifti_path(png))


def report(model, record: dict, source: Path, ranked: list[dict] | None, goal, timings: dict,
           asked: str | None = None) -> dict:
    """The JSON record of one explained input; `asked`: the --layer as given (a removed Cast's output names the
    tensor it cast, reported as `tensor`)."""
    diagnostics = record["diagnostics"]
    target = record["target"]
    hidden = {"layer": asked or goal.layer, "channel": goal.index} | ({"unit": list(goal.unit)} if goal.unit else {})
    if goal.hidden and goal.channel_axis != 1:
        hidden["channel_axis"] = goal.channel_axis   # a channels-last tensor: the unit is still named channel first
    if asked and asked != goal.layer:
        hidden["tensor"] = goal.layer
    return {
        "input": str(source), "method": record["method"], "options": record["params"],
        "target": {"index": target, "label": model.label_of(target)} if target >= 0 else hidden,
        "score": record["score"],
        "score_kind": diagnostics.get("score_kind", model.score_kind) if target >= 0 else "hidden",
        "top": ranked, "relevance_sum": record["relevance_sum"],
        "conservation_error": next((v for k, v in diagnostics.items() if "conservation" in k), None),
        "diagnostics": diagnostics, "outputs": record["outputs"],
        "timings": {**timings, "explain_s": round(record["explain_s"], 4)},
    }


@click.command("explain")
@model_argument
@click.argument("inputs", nargs=-1, required=True, type=NonEmptyPath())
@click.option("--method", default=None,
              help=f"Explanation method: {', '.join(method_names())} (default: lrp with the epsilon-plus composite "
                   "when LRP covers every op, else pda).")
@click.option("--target", default=None, help="top1 (default), a class index or label; with --layer: C or C,Y,X.")
@click.option("--layer", default=None, help="Explain a hidden tensor (by name) instead of the class scores.")
@click.option("--labels", type=NonEmptyPath(dir_okay=False), help="Class names, one per line.")
@preprocess_option
@scores_option
@hold_option
@click.option("--composite", default=None, help="LRP composite (epsilon-plus, deep-taylor, lrp-0, ...).")
@click.option("--rule", "rules", multiple=True,
              help="LRP override OP=RULE (op type, or a glob of node or tensor names).")
@click.option("--epsilon", type=float, default=None,
              help="LRP: the epsilon of the composite's epsilon rules and of --rule specs that give none (default "
                   "1e-6); a rule's own number (epsilon:0.25) wins.")
@click.option("--window", type=int, default=None,
              help="Window size k: PDA (default 4), occlusion (default about 1/8 of the smallest axis); one feature "
                   "on a plain feature vector (tabular data).")
@click.option("--padding", type=int, default=None,
              help="PDA conditional-sampling padding, l = k + 2*padding (default 2; 0 on a feature vector).")
@click.option("--samples", type=int, default=None,
              help="Samples per window (PDA, default 10) or noisy copies (smoothgrad, default 25).")
@click.option("--sampler", type=click.Choice(["marginal", "conditional"]), default=None,
              help="PDA sampler (default conditional).")
@click.option("--reference", type=NonEmptyPath(), default=None,
              help="Reference data (a folder of images, or an .npy batch or single sample of preprocessed inputs): "
                   "PDA samples, occlusion's fill.")
@click.option("--stride", type=int, default=None,
              help="Window stride, at most the window: PDA (default 1), occlusion (default window // 2).")
@click.option("--location-grid", "location_grid", default=None, metavar="N|A,B,C",
              help="PDA conditional sampler: one Gaussian per cell of this grid (cells per axis), conditioning on "
                   "location as well (Zintgraf et al. §4.2).")
@click.option("--channels", type=click.Choice(["independent", "joint"]), default=None,
              help="PDA conditional sampler: a Gaussian per channel (default) or over all channels together.")
@click.option("--pda-score", "score", type=click.Choice(["auto", "probability", "logit"]), default=None,
              help="PDA: what is compared: auto (weight of evidence on probabilities, activation difference on "
                   "logits), probability (softmax of a logits model), logit (the pre-softmax tensor).")
@click.option("--training-size", "training_size", type=click.IntRange(1), default=None,
              help="PDA weight of evidence: N of the Laplace correction (default: the reference set's size; the "
                   "paper uses the classifier's training-set size).")
@click.option("--fill", type=float, default=None,
              help="Occlusion fill value (model-input units; default 0; a whole number for integer inputs).")
@click.option("--seed", type=click.IntRange(0, SEED_MAX), default=None,
              help="Random seed, 0 to 2**64-1 (PDA, smoothgrad; default 0).")
@click.option("--sigma", type=float, default=None,
              help="SmoothGrad noise, as a fraction of the input range (default 0.15).")
@click.option("--steps", type=int, default=None, help="Integrated-gradients steps (default 50).")
@click.option("--baseline", default=None, help="Integrated-gradients baseline: min (default), zeros or a number.")
@click.option("--device", default=None,
              help="Torch device (cpu, cuda, cuda:N) for LRP and gradient methods; for pda and occlusion it moves "
                   "the forward passes from onnxruntime to the torch executor there.")
@click.option("--precision", type=click.Choice(["fp32", "tf32"]), default=None,
              help="pda on a CUDA device: tf32 multiplies in TensorFloat-32 (faster, ~1e-3 relative off; "
                   "default fp32).")
@click.option("--out", type=NonEmptyPath(), default=None,
              help="PNG per input (a folder or a name; volumes also get <name>_relevance.nii.gz).")
@click.option("--threshold", type=click.FloatRange(0, 1), default=None, is_flag=False,
              flag_value=DEFAULT_THRESHOLD,
              help="Show only |R| above this fraction of the max (the papers' display; 0.15 if no value).")
@click.option("--slice-axis", "slice_axis", type=click.IntRange(0, 2), default=None,
              help="Volume axis the slice montage runs along (default 0; volumes only).")
@click.option("--save-npy", "save_npy", type=NonEmptyPath(), help="Write relevance as .npy per input.")
@click.option("--batch", type=click.IntRange(1), default=16, show_default=True, help="Inputs explained at once.")
@click.option("--top", "k", type=click.IntRange(1), default=5, show_default=True, help="Classes listed in --json.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def explain_command(model, inputs, method, target, layer, labels, preprocess, scores, hold, out, threshold, slice_axis,
                    save_npy, batch, k, as_json, quiet, **options):
    """Explain the model's decision on each input (images, .npy tensors, NIfTI volumes, folders of them)."""
    began = time.perf_counter()
    check_output(out, "figure")
    check_output(save_npy, "file")
    unused = [name for name, value in (("--threshold", threshold), ("--slice-axis", slice_axis)) if value is not None]
    if unused and out is None:   # they shape the pictures: without --out there are none
        raise not_applicable(unused, "a run that draws no pictures (they shape those --out writes)")
    loaded = load_model(model, preprocess, scores, hold)
    use_labels(loaded, labels)
    params = method_params(options, loaded)
    chosen, why = method is None, None
    if chosen:
        method, why = default_method(loaded)
    try:
        explainer = build_method(method, params, quiet)
    except OnnxplainError as error:
        if not chosen:
            raise
        because = f"; {why}" if why else ""
        raise OnnxplainError(f"{error} (method {method}: this model's default{because}; --method picks another)") \
            from None
    goal = parse_target(loaded, target, layer)
    x, sources = load_inputs(inputs, loaded)
    check_slice_axis(slice_axis, loaded, x, sources)
    scores = checked_scores(loaded, x, sources)
    loaded_s = time.perf_counter() - began

    names = input_names(sources)
    pngs = output_paths(out, names, ".png") if out else [None] * len(x)
    npys = output_paths(save_npy, names, ".npy") if save_npy else [None] * len(x)
    records, render_s = [], 0.0
    # with several batches, a bar over all inputs: the method's own bars count one batch each
    with StagedFiles() as staged, optional_bar(not quiet and len(x) > batch, len(x), "inputs", "input") as bar:
        for start, done in explain_in_batches(explainer, loaded, x, goal, batch, sources):
            rendering, end = time.perf_counter(), start + len(done)
            write_outputs(staged, loaded, x[start:end], done, sources[start:end], pngs[start:end], npys[start:end],
                          threshold=threshold, slice_axis=slice_axis or 0, hidden=hidden_name(layer, goal))
            render_s += time.perf_counter() - rendering
            records += done
            if bar is not None:
                bar.update(len(done))
        ranked = top_k(loaded, scores, k) if not goal.hidden else [None] * len(x)
        staged.commit()
    timings = {"load_s": round(loaded_s, 4), "render_s": round(render_s / len(x), 4),
               "total_s": round(time.perf_counter() - began, 4)}

    rows = [report(loaded, r, s, t, goal, timings, layer) for r, s, t in zip(records, sources, ranked)]
    if why:   # notes come once the work is done, so that an error stays the only line on stderr
        click.echo(f"note: {why}; explained with prediction difference (--method pda) instead", err=True)
    cache_notes = dict.fromkeys(f"note: {r['diagnostics']['sampler_cache_note']}" for r in records
                                if "sampler_cache_note" in r["diagnostics"])
    notes = input_notes(loaded, inputs, sources, options["reference"], x=x)
    scores_notes = [] if layer else [first_output_note(loaded), map_scores_note(loaded)]
    echo_notes([*scores_notes, *notes, zero_map_note(loaded, records, sources), *cache_notes])
    if as_json:
        echo_json(rows)
        return
    for row in rows:
        what = f"class {row['target']['label']}" if "label" in row["target"] else f"layer {hidden_name(layer, goal)}"
        written = ", ".join(row["outputs"].values())
        click.echo(f"{row['input']}: {row['method']} for {what} (score {row['score']:.4g}, "
                   f"relevance sum {row['relevance_sum']:.4g})" + (f" -> {written}" if written else ""))
