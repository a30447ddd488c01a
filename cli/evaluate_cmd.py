"""`onnxplain evaluate`: score explanation methods on a set of inputs with AOPC and APEM.

True labels (optional, for accuracy and the APEM/loss correlation) come from `--labels FILE`:
an `.npy` integer array with one class per input in input order, or a CSV of `input,label` rows where
`input` is an input's file name (`digit3.png`, or `batch.npy[4]` for sample 4 of an .npy batch) and `label`
a class index or class name; a first row `input,label` is skipped as a header.
"""
from __future__ import annotations

import csv
import inspect
import io
from pathlib import Path

import click
import numpy as np

from onnxplain.errors import OnnxplainError, named_list, not_applicable
from onnxplain.io import load_inputs, read_npy
from onnxplain.io.text import read_text
from onnxplain.methods import make_method, method_class
from onnxplain.numbers import SEED_MAX
from onnxplain.pixels import integer_reader
from onnxplain.metrics import Evaluation
from onnxplain.metrics import report as render
from onnxplain.metrics.plots import plot_apem, plot_curves

from .common import (NonEmptyPath, echo_notes, first_output_note, hold_option, input_notes, json_text, load_model,
                     model_argument, preprocess_option, scores_option)
from .explain_cmd import parse_rules, read_reference
from .outputs import StagedFiles, check_output

DEFAULT_METHODS = ("lrp", "gradient", "sensitivity", "smoothgrad")


def read_true_labels(path: Path, sources: list[Path], model) -> np.ndarray:
    """One class index per input from an .npy array (input order) or an `input,label` CSV (by file name)."""
    if not path.is_file():
        raise OnnxplainError(f"labels file not found: {path}")
    if path.suffix.lower() == ".npy":
        labels = np.asarray(read_npy(path)).reshape(-1)
        if len(labels) != len(sources) or not np.issubdtype(labels.dtype, np.integer):
            raise OnnxplainError(f"{path}: expected {len(sources)} integer labels, one per input")
        return labels.astype(np.int64)
    table, rows = {}, csv.reader(io.StringIO(read_text(path, "labels file"), newline=""))
    try:
        for number, row in enumerate(rows, 1):
            if not row or (number == 1 and [c.strip().lower() for c in row] == ["input", "label"]):
                continue
            if len(row) != 2:
                raise OnnxplainError(f"{path}:{number}: expected 'input,label', got {','.join(row)!r}")
            table[row[0].strip()] = model.class_index(row[1].strip())
    except csv.Error as error:
        raise OnnxplainError(f"{path}:{rows.line_num}: not a CSV of input,label rows ({error})") from None
    labels = []
    for source in sources:
        key = next((k for k in (source.name, str(source)) if k in table), None)
        if key is None:
            raise OnnxplainError(f"{path}: no label for input {source.name}")
        labels.append(table[key])
    return np.asarray(labels, dtype=np.int64)


NOT_IN_SPECS = {"progress": "--quiet sets it", "reference": "--reference gives it",
                "volume_shape": "it takes a shape"}   # constructor parameters a method spec cannot give


def parse_method(spec: str) -> tuple[str, dict]:
    """'NAME' or 'NAME:key=value:key=value' (e.g. lrp:composite=epsilon-gamma-box) -> (name, parameters), each
    value converted to the type the method's constructor declares for it; `rules=OP=RULE`, repeatable, gives LRP
    rules as explain's --rule does."""
    name, *pairs = (part.strip() for part in spec.split(":"))
    accepted = inspect.signature(method_class(name).__init__).parameters
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise OnnxplainError(f"method parameter {pair!r} in {spec!r} is not key=value")
        if key in NOT_IN_SPECS and key in accepted:
            raise OnnxplainError(f"method parameter {key} cannot be given in {spec!r}: {NOT_IN_SPECS[key]}")
        if key == "rules" and key in accepted:
            params.setdefault("rules", {}).update(parse_rules((value,)))
            continue
        kind = declared_type(accepted[key]) if key in accepted else None
        params[key] = _number(value.strip()) if kind is None else _convert(name, key, value.strip(), kind)
    return name, params


EXPECTED = {int: "an integer", float: "a number", bool: "true or false", str: "text"}  # the types specs convert to


def declared_type(parameter: inspect.Parameter) -> type | None:
    """int, float, bool or str, from the annotation (`X` or `X | None`) or else the default; None if neither says."""
    annotation = parameter.annotation
    if annotation is parameter.empty:
        return type(parameter.default) if type(parameter.default) in EXPECTED else None
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    names = {kind.__name__: kind for kind in EXPECTED}
    known = [names[part.strip()] for part in text.split("|") if part.strip() in names]
    return known[0] if len(known) == 1 else None   # `int | tuple[int, ...]`: a spec's text is the int


def _convert(method: str, key: str, text: str, kind: type):
    """`text` as `kind`; a value that is not one is a user error naming the method, parameter and type."""
    try:
        return _boolean(text) if kind is bool else kind(text)
    except ValueError:
        raise OnnxplainError(f"method {method}: parameter {key} must be {EXPECTED[kind]}, got {text!r}") from None


def _boolean(text: str) -> bool:
    """'true' or 'false' (any case)."""
    if text.lower() not in ("true", "false"):
        raise ValueError(text)
    return text.lower() == "true"


def _number(text: str):
    """For a parameter whose type the method does not declare: bool, int or float where `text` reads as one."""
    for read in (_boolean, int, float):
        try:
            return read(text)
        except ValueError:
            pass
    return text


def build_methods(specs: list[str], progress: bool, options: dict) -> dict:
    """{spec: method}; each also gets the shared options (reference, seed, device) that its constructor accepts."""
    methods = {}
    for spec in specs:
        name, params = parse_method(spec)
        accepted = inspect.signature(method_class(name).__init__).parameters
        shared = {k: v for k, v in options.items() if v is not None and k in accepted and k not in params}
        methods[spec] = make_method(name, progress=progress, **shared, **params)
    return methods


def default_methods(model) -> tuple[str, str | None]:
    """(lrp, gradient, sensitivity and smoothgrad, note): lrp is left out, with a note, when it does not cover the
    model; a model taking integers other than pixels cast to float (token ids), which have no input gradients, gets
    occlusion."""
    reader = integer_reader(model)
    if reader is not None:
        return "occlusion", (f"note: this model takes {model.input_dtype} into {reader}, which has no gradients; "
                             "evaluated occlusion (--methods picks others)")
    problem = gradient_problem(model)
    if problem:
        return "occlusion", f"note: {problem}; evaluated occlusion (--methods picks others)"
    from onnxplain.lrp import unsupported_ops

    names, note, missing = list(DEFAULT_METHODS), None, unsupported_ops(model)
    if missing:
        names.remove("lrp")
        note = (f"note: LRP does not cover {named_list(missing, 6, '; ')}; evaluated {', '.join(names)} "
                "(--methods picks others)")
    return ",".join(names), note


def gradient_problem(model) -> str | None:
    """Why the model has no input gradient (it does not run in torch, or its scores pass only through integer
    data, as an isotonic calibration's lookup does), else None."""
    try:
        executor = model.torch()
        executor.require_gradient(executor.logits_name, "")
    except OnnxplainError as error:
        return str(error)
    return None


def listed(value: str, option: str, same=lambda item: item) -> list[str]:
    """A comma-separated option's items; an empty item or one listed twice (`same` says when two are) is an error."""
    items = [part.strip() for part in value.split(",")]
    if not all(items):
        raise OnnxplainError(f"{option} {value!r} has an empty item: list them comma-separated, e.g. a,b")
    keys = [same(item) for item in items]
    twice = [item for item, key in zip(items, keys) if keys.count(key) > 1]
    if twice:
        raise OnnxplainError(f"{option} lists the same one more than once: {', '.join(dict.fromkeys(twice))}")
    return items


def default_metrics(model, x: np.ndarray) -> tuple[str, str | None]:
    """(aopc,apem, None), or aopc with a note for a model APEM cannot measure: one taking integers (no input
    gradient, or whole values only where APEM steps by fractions) or with one score column (its decision cannot
    flip)."""
    if not np.issubdtype(model.input_dtype, np.floating):
        return "aopc", (f"note: APEM steps inputs along their loss gradient by real amounts, which {model.input_dtype} "
                        "inputs cannot take; evaluated aopc (--metrics picks)")
    problem = gradient_problem(model)
    if problem:
        return "aopc", f"note: APEM needs input gradients, and {problem}; evaluated aopc (--metrics picks)"
    classes = model.class_count()   # from the graph: scoring a sample only where its shape does not say
    if (classes if classes is not None else model.scores(x[:1]).shape[1]) < 2:
        return "aopc", ("note: APEM needs at least two classes, and this model has one score column (its decision "
                        "cannot flip); evaluated aopc (--metrics picks)")
    return "aopc,apem", None


def result_notes(report) -> list[str]:
    """Notes on what the numbers are: the score tracked when the graph has no logits, censored APEM searches."""
    notes, settings = [], report.settings
    if "aopc" in settings["metrics"] and settings["score"] != settings["score_asked"]:
        notes.append("note: the graph has no logits (pre-softmax scores); region perturbation tracked the "
                     "probability, so --score logit and --score probability give the same numbers")
    results = [m.apem for m in report.methods if m.apem is not None]
    censored = sum(int(r.censored.sum()) for r in results)
    if censored:
        notes.append(f"note: {censored} of {sum(len(r.censored) for r in results)} APEM cases (method x input) "
                     f"never flipped within --max-steps {settings['max_steps']} (censored: their eps is only a "
                     "lower bound); they are left out of the means, medians and comparisons and flagged in the "
                     "per-image rows")
    return notes


@click.command("evaluate")
@model_argument
@click.argument("inputs", nargs=-1, required=True, type=NonEmptyPath())
@click.option("--methods", default=None,
              help="Comma-separated methods, each NAME or NAME:key=value:... (e.g. lrp:composite=epsilon-gamma-box) "
                   "[default: lrp, gradient, sensitivity, smoothgrad; lrp is left out, with a note, when it does "
                   "not cover every op of the model].")
@click.option("--metrics", default=None, help="Comma-separated: aopc, apem [default: aopc,apem; aopc, with a note, "
                                             "for a model taking integers, which APEM cannot perturb along a "
                                             "gradient, or with one score column, whose decision cannot flip].")
@click.option("--labels", type=NonEmptyPath(dir_okay=False),
              help="True labels: .npy (input order) or CSV 'input,label'.")
@click.option("--out", type=NonEmptyPath(file_okay=False),
              help="Folder for results.md/.csv/.json, per_image.csv and the plots.")
@preprocess_option
@scores_option
@hold_option
@click.option("--region", type=click.IntRange(1), default=None,
              help="Region edge for perturbation [default: 9, less for small images so each axis has 8 regions; "
                   "1 for vectors].")
@click.option("--steps", type=click.IntRange(1), default=100, show_default=True,
              help="Perturbation steps L (at most the number of regions: the report gives the L used).")
@click.option("--score", type=click.Choice(["logit", "probability"]), default="logit", show_default=True,
              help="Score tracked by region perturbation (a graph without logits gives the probability for both).")
@click.option("--stage", type=click.IntRange(1, 3), default=2, show_default=True,
              help="APEM visualisation stage: 1 |R| with its channels, 2 |R| clamped + channels summed, 3 times "
                   "the input.")
@click.option("--epsilon-step", type=click.FloatRange(0, min_open=True), default=1.0, show_default=True,
              help="APEM ε grid step.")
@click.option("--max-steps", type=click.IntRange(1), default=100_000, show_default=True,
              help="APEM ε search limit (steps).")
@click.option("--shuffles", type=click.IntRange(1), default=10, show_default=True,
              help="Shuffled maps per image (APEM_norm).")
@click.option("--reference", type=NonEmptyPath(), default=None,
              help="Reference data for methods that take it (pda, occlusion): a folder of images, or an .npy "
                   "batch or single sample.")
@click.option("--seed", type=click.IntRange(0, SEED_MAX), default=0, show_default=True,
              help="Random seed (noise, shuffles, methods).")
@click.option("--device", default=None,
              help="Torch device (cpu, cuda, cuda:N) for every method that takes one (a method's own device=... "
                   "wins; pda and occlusion then run their forward passes in the torch executor there) and for "
                   "APEM's loss gradient.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def evaluate_command(model, inputs, methods, metrics, labels, out, preprocess, scores, hold, region, steps, score,
                     stage, epsilon_step, max_steps, shuffles, reference, seed, device, as_json, quiet):
    """Score explanation methods with region-perturbation AOPC and APEM on the inputs (files or folders)."""
    check_output(out, "folder")
    specs = listed(methods, "--methods", parse_method) if methods is not None else None   # before any work
    metric_names = listed(metrics, "--metrics") if metrics is not None else None
    loaded = load_model(model, preprocess, scores, hold)
    x, sources = load_inputs(inputs, loaded)   # Evaluation.run scores them once and refuses NaN scores, naming them
    truth = read_true_labels(labels, sources, loaded) if labels else None
    method_note = metric_note = None
    if specs is None:
        names, method_note = default_methods(loaded)
        specs = names.split(",")
    if metric_names is None:
        names, metric_note = default_metrics(loaded, x)
        metric_names = names.split(",")
    refuse_unread_options(metric_names if metric_note is None else METRIC_OPTIONS, specs, reference, methods is None)
    options = {"seed": seed, "reference": read_reference(reference, loaded) if reference else None,
               "device": device}
    chosen = build_methods(specs, not quiet, options)
    evaluation = Evaluation(metric_names, region=region, steps=steps, score=score, stage=stage,
                            epsilon_step=epsilon_step, max_steps=max_steps, shuffles=shuffles, seed=seed,
                            device=device or "cpu", progress=not quiet)
    report = evaluation.run(loaded, x, chosen, truth, [s.name for s in sources])
    if out:
        write_outputs(report, out, title=f"Evaluation of {model.name}")
    # once the work is done: an error stays alone
    echo_notes([first_output_note(loaded), method_note, metric_note, *result_notes(report),
                *input_notes(loaded, inputs, sources, reference, x=x)])
    if as_json:
        click.echo(json_text(render.as_json(report)))
    else:
        click.echo(render.markdown(report, title=f"Evaluation of {model.name}"))


METRIC_OPTIONS = {"aopc": ("region", "steps", "score"), "apem": ("stage", "epsilon_step", "max_steps", "shuffles")}


def refuse_unread_options(metrics: list[str], specs: list[str], reference, default_methods: bool) -> None:
    """Options given on the command line that no chosen metric or method reads are refused, not ignored (where
    the defaults left APEM out with a note, its options pass: `metrics` is then every metric)."""
    context = click.get_current_context()
    unread = [name for metric, names in METRIC_OPTIONS.items() if metric not in metrics for name in names
              if context.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE
              and set(metrics) <= set(METRIC_OPTIONS)]   # an unknown metric is Evaluation's error to name
    if unread:
        raise not_applicable([f"--{name.replace('_', '-')}" for name in unread], f"--metrics {','.join(metrics)}")
    takers = [spec for spec in specs
              if "reference" in inspect.signature(method_class(parse_method(spec)[0]).__init__).parameters]
    if reference is not None and not takers:
        chosen = f"the default methods ({', '.join(specs)})" if default_methods else f"--methods {','.join(specs)}"
        raise not_applicable(["--reference"], f"{chosen}: none of them reads reference data (pda and occlusion do)")


def write_outputs(report, out: Path, title: str) -> list[Path]:
    """The report's files in folder `out` (created if missing): all of them, or none when one cannot be written."""
    written = {"results.md": render.markdown(report, title), "results.csv": render.summary_csv(report),
               "results.json": json_text(render.as_json(report)),
               "per_image.csv": render.per_image_csv(report)}
    with StagedFiles() as staged:
        for name, text in written.items():
            staged.path_for(out / name).write_text(text)
        if report.random_curves is not None:
            plot_curves(report, staged.path_for(out / "perturbation_curves.png"))
        if any(m.apem is not None for m in report.methods):
            plot_apem(report, staged.path_for(out / "apem_boxplot.png"))
        return staged.commit()
