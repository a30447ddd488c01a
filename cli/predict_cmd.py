"""`onnxplain predict`: the top-K classes of each input."""
from __future__ import annotations

import click
import numpy as np

from onnxplain.io import load_inputs

from .common import (NonEmptyPath, checked_scores, echo_json, echo_notes, first_output_note, hold_option, input_notes,
                     load_model, map_scores_note, model_argument, preprocess_option, scores_option, use_labels)


def top_k(model, scores: np.ndarray, k: int) -> list[list[dict]]:
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [[{"index": int(i), "label": model.label_of(int(i)), "score": float(row[i])} for i in idx]
            for row, idx in zip(scores, order)]


@click.command("predict")
@model_argument
@click.argument("inputs", nargs=-1, required=True, type=NonEmptyPath())
@click.option("--top", "k", type=click.IntRange(min=1), default=5, show_default=True,
              help="How many classes to list.")
@click.option("--labels", type=NonEmptyPath(dir_okay=False), help="Class names, one per line.")
@preprocess_option
@scores_option
@hold_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def predict_command(model, inputs, k, labels, preprocess, scores, hold, as_json, quiet):
    """The top-K classes with their scores for each input (image, .npy or NIfTI; folders too)."""
    loaded = load_model(model, preprocess, scores, hold)
    use_labels(loaded, labels)
    x, files = load_inputs(inputs, loaded)
    ranked = top_k(loaded, checked_scores(loaded, x, files, progress=not quiet and "predict"), k)
    echo_notes([first_output_note(loaded), map_scores_note(loaded), *input_notes(loaded, inputs, files, x=x)])
    if as_json:
        echo_json([{"input": str(f), "kind": loaded.score_kind, "top": r} for f, r in zip(files, ranked)])
        return
    for path, rows in zip(files, ranked):
        click.echo(f"{path}:")
        for row in rows:
            click.echo(f"  {row['label']:>12}  {row['score']:.4f}")
