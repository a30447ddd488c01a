"""`onnxplain explain`: relevance maps for each input, as .npy, JSON (and pictures)."""
from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from onnxplain.errors import OnnxplainError
from onnxplain.io import load_inputs
from onnxplain.methods import make_method, method_names
from onnxplain.targets import parse_target

from .common import echo_json, load_model, model_argument, preprocess_option, read_labels


def parse_rules(pairs: tuple[str, ...]) -> dict[str, str]:
    """--rule OP=RULE (OP an op type or a node-name glob) -> {OP: RULE}."""
    rules = {}
    for pair in pairs:
        if "=" not in pair:
            raise OnnxplainError(f"--rule expects OP=RULE, got {pair!r}")
        key, rule = pair.split("=", 1)
        rules[key.strip()] = rule.strip()
    return rules


def read_reference(path: Path, model) -> np.ndarray:
    """--reference: a folder of images or an .npy batch of preprocessed inputs."""
    if path.is_file() and path.suffix == ".npy":
        from onnxplain.io import read_npy

        return model.check_input(read_npy(path))
    return load_inputs([path], model)[0]


def method_params(options: dict, model) -> dict:
    """The method options the user gave (None = not given), converted to library values."""
    params = {key: value for key, value in options.items() if value not in (None, ())}
    if "rules" in params:
        params["rules"] = parse_rules(params["rules"])
    if "reference" in params:
        params["reference"] = read_reference(params["reference"], model)
    return params


def npy_path(base: Path, source: Path, count: int) -> Path:
    return base if count == 1 else base.with_name(f"{base.stem}_{source.stem}{base.suffix or '.npy'}")


@click.command("explain")
@model_argument
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--method", default="lrp", show_default=True, help=f"Explanation method.")
@click.option("--target", default=None, help="top1 (default), a class index or label; with --layer: C or C,Y,X.")
@click.option("--layer", default=None, help="Explain a hidden tensor (by name) instead of the class scores.")
@click.option("--labels", type=click.Path(dir_okay=False, path_type=Path), help="Class names, one per line.")
@preprocess_option
@click.option("--composite", default=None, help="LRP composite (epsilon-plus, deep-taylor, lrp-0, ...).")
@click.option("--rule", "rules", multiple=True, help="LRP override OP=RULE (op type or node-name glob).")
@click.option("--window", type=int, default=None, help="PDA/occlusion window size k.")
@click.option("--padding", type=int, default=None, help="PDA conditional-sampling padding (l = k + 2*padding).")
@click.option("--samples", type=int, default=None, help="Samples per window (PDA) or noise samples (smoothgrad).")
@click.option("--sampler", type=click.Choice(["marginal", "conditional"]), default=None, help="PDA sampler.")
@click.option("--reference", type=click.Path(path_type=Path), default=None,
              help="PDA reference data: a folder of images or an .npy batch.")
@click.option("--stride", type=int, default=None, help="Window stride (PDA, occlusion).")
@click.option("--seed", type=int, default=None, help="Random seed.")
@click.option("--sigma", type=float, default=None, help="SmoothGrad noise, as a fraction of the input range.")
@click.option("--steps", type=int, default=None, help="Integrated-gradients steps.")
@click.option("--save-npy", "save_npy", type=click.Path(dir_okay=False, path_type=Path), help="Write relevance.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def explain_command(model, inputs, method, target, layer, labels, preprocess, save_npy, as_json, quiet, **options):
    """Explain the model's decision on each input."""
    loaded = load_model(model, preprocess)
    names = read_labels(labels)
    if names:
        loaded.labels = names
    explainer = make_method(method, progress=not quiet, **method_params(options, loaded))
    goal = parse_target(loaded, target, layer)
    x, files = load_inputs(inputs, loaded)
    explanation = explainer.explain(loaded, x, goal)
    if save_npy:
        save_npy.parent.mkdir(parents=True, exist_ok=True)
        for i, source in enumerate(files):
            np.save(npy_path(save_npy, source, len(files)), explanation.relevance[i].astype(np.float32))
    if as_json:
        echo_json([{
            "input": str(source), "method": explanation.method, "params": explanation.params,
            "target": int(explanation.target[i]),
            "label": loaded.label_of(int(explanation.target[i])) if explanation.target[i] >= 0 else layer,
            "score": float(explanation.score[i]), "relevance_sum": float(explanation.relevance_sum[i]),
            "diagnostics": {k: (v[i] if isinstance(v, (list, np.ndarray)) and len(v) == len(files) else v)
                            for k, v in explanation.diagnostics.items()},
        } for i, source in enumerate(files)])
