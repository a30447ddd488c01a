"""Options and helpers shared by several commands."""
from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

import onnxplain
from onnxplain.errors import OnnxplainError, named_list
from onnxplain.io.inputs import read_npy
from onnxplain.io.text import read_text
from onnxplain.scores import finite_scores


class NonEmptyPath(click.Path):
    """click.Path giving a `Path`, refusing an empty string (`Path("")` is the current folder: `--out ""` from an
    unset shell variable would quietly write there)."""

    def __init__(self, **kwargs):
        super().__init__(path_type=Path, **kwargs)

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value.strip():
            self.fail("an empty path (give a file or folder name)", param, ctx)
        return super().convert(value, param, ctx)


model_argument = click.argument("model", type=NonEmptyPath(dir_okay=False))
preprocess_option = click.option("--preprocess", "preprocess", type=NonEmptyPath(dir_okay=False),
                                 help="JSON preprocessing spec (overrides the one stored in the model).")
scores_option = click.option("--scores", "scores", metavar="OUTPUT",
                             help="The output holding the class scores (default: a softmax's output, else the first "
                                  "float output; inspect names them).")

hold_option = click.option("--hold", "hold", multiple=True, metavar="NAME=FILE.npy",
                           help="Hold model input NAME at the sample in FILE.npy (with or without a batch axis of 1); "
                                "a model of several inputs explains the one left unheld. Repeatable.")


def load_model(path: Path, preprocess: Path | None, scores: str | None = None, hold: tuple[str, ...] = ()):
    return onnxplain.load(path, preprocess=preprocess, scores=scores, hold=read_holds(hold))


def read_holds(pairs: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """--hold NAME=FILE.npy pairs as {input name: array}: .npy files only, never unpickled."""
    held = {}
    for pair in pairs:
        name, equals, file = pair.partition("=")
        if not (name and equals and file.strip()):
            raise OnnxplainError(f"--hold takes NAME=FILE.npy (an input's name and an .npy file), not {pair!r}")
        if name in held:
            raise OnnxplainError(f"--hold {name} is given twice")
        path = Path(file)
        if path.suffix.lower() != ".npy":
            raise OnnxplainError(f"--hold {name}: {file} is no .npy file (held values are read from .npy arrays only)")
        if not path.is_file():
            raise OnnxplainError(f"--hold {name}: file not found: {file}")
        held[name] = read_npy(path)
    return held or None


def read_labels(path: Path | None) -> list[str] | None:
    if path is None:
        return None
    labels = [line.strip() for line in read_text(path, "labels file").splitlines() if line.strip()]
    if not labels:
        raise OnnxplainError(f"labels file {path} is empty")
    return labels


def use_labels(model, path: Path | None) -> None:
    """Give the loaded model the class names of `path` (one per line); their number must match its classes."""
    names = read_labels(path)
    if names is None:
        return
    count = model.class_count()
    if count is not None and len(names) != count:
        raise OnnxplainError(f"labels file {path} names {len(names)} classes; the model has {count}")
    model.labels = names


def checked_scores(model, x, sources: list[Path], progress: bool | str = False):
    """The class scores of inputs `x`; an input the model scores NaN or +inf is a user error that names it, before
    anything is explained or written (`finite_scores`). `progress`: a bar's title, for long runs."""
    return finite_scores(model.scores(x, progress=progress), [str(source) for source in sources])


def echo_json(data) -> None:
    click.echo(json_text(data))


def json_text(data) -> str:
    """Strict JSON (what jq and other parsers read): NumPy values as plain ones, NaN and infinities as null."""
    return json.dumps(_strict(data), indent=2, allow_nan=False)


def _strict(value):
    """`value` as JSON writes it: numpy arrays and numbers as lists and Python numbers, NaN and infinities as
    None, keys and other objects (a sampler instance among a method's parameters) as text."""
    if isinstance(value, dict):
        return {str(key): _strict(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(item) for item in value]
    if isinstance(value, np.ndarray):
        return _strict(value.tolist())
    if isinstance(value, np.generic):
        return _strict(value.item())
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)


def guessed_spec_note(model, sources: list[Path]) -> str | None:
    """A note when images were read through a preprocessing spec guessed from the input shape (none stored, none
    given): pixels scaled to 0..1 (or kept 0..255 for a graph that rescales them itself) without mean/std, which a
    model trained on normalised inputs would not expect."""
    from onnxplain.io.inputs import IMAGE_SUFFIXES

    if model.preprocess_source != "guessed" or not any(s.suffix.lower() in IMAGE_SUFFIXES for s in sources):
        return None
    scaled = "kept at 0..255 (the graph rescales them itself)" if model.preprocess.scale == 1 else "scaled to 0..1"
    return (f"note: the model stores no preprocessing spec; images were resized and {scaled} without mean/std "
            "(give --preprocess spec.json if the model expects otherwise)")


def input_notes(model, inputs, sources: list[Path], *folders, x: np.ndarray | None = None) -> list[str]:
    """The notes every command that reads inputs gives once its work is done: a model whose layer weights are
    placeholders, images read through a guessed spec, arrays `x` outside the stored spec's range, and what folders
    among `inputs` (and `folders`, e.g. --reference) held that was skipped: files that are no inputs, and
    subfolders (not searched)."""
    from onnxplain.io.inputs import skipped_note

    notes = (placeholder_note(model), guessed_spec_note(model, sources), range_note(model, x, sources),
             skipped_note([*inputs, *filter(None, folders)]))
    return [note for note in notes if note]


def map_scores_note(model) -> str | None:
    """A note where the class scores are a map (a segmentation net's): 'class 37' is one of its units."""
    from onnxplain.scores import score_map

    shape, count = score_map(next(o for o in model.proto.graph.output if o.name == model.score_output))
    if shape is None:
        return None
    return (f"note: output {model.score_output!r} holds a {shape} map per sample, read as {count} class scores "
            f"(flattened: a class is one unit of the map); --layer {model.score_output} --target C (or C,Y,X) "
            "explains one channel's map (or one unit)")


def first_output_note(model) -> str | None:
    """A note where graph order alone chose the class scores among several float outputs (no softmax or classifier
    marks one): an auxiliary head exported first would otherwise pass for the classes without a word."""
    if not model.other_outputs:
        return None
    return (f"note: class scores read from output {model.score_output!r}, the first of the float outputs "
            f"({', '.join([model.score_output, *model.other_outputs])}); --scores names another")


def placeholder_note(model) -> str | None:
    """A note when ConstantOfShape fills the layer weights with one value each (the onnx wheel's test graphs):
    the explanation is of that graph, not of a trained network."""
    from onnxplain.zoo import placeholder_weights

    filled = placeholder_weights(model.proto)
    if not filled:
        return None
    return (f"note: the weights of {len(filled)} layers ({named_list(filled)}) "
            "are placeholders that ConstantOfShape fills with one value each (the onnx wheel's test graphs): what "
            "comes out describes that graph, not a trained network (onnxplain.zoo.materialize gives such graphs "
            "seeded random weights)")


def range_note(model, x: np.ndarray | None, sources: list[Path]) -> str | None:
    """A note when arrays (.npy, NIfTI: images are read through the spec) lie outside the value range that the
    model's stored or given preprocessing spec gives its inputs: arrays go to the model as they are, and raw pixels
    (0..255 for a 0..1 spec) are an easy slip."""
    from onnxplain.bounds import input_bounds, rows_inside
    from onnxplain.io.inputs import IMAGE_SUFFIXES

    if x is None or model.preprocess_source not in ("stored", "given") or not np.issubdtype(x.dtype, np.number):
        return None
    arrays = [i for i, source in enumerate(sources) if source.suffix.lower() not in IMAGE_SUFFIXES]
    bounds = input_bounds(model, (1, *x.shape[1:])) if arrays else None
    if bounds is None:
        return None
    outside = [i for i, inside in zip(arrays, rows_inside(x[arrays], *bounds)) if not inside]
    if not outside:
        return None
    low, high = float(bounds[0].min()), float(bounds[1].max())
    reach = f"{float(x[outside].min()):.4g}..{float(x[outside].max()):.4g}"
    return (f"note: {named_list(sources[i] for i in outside)}: values {reach} lie outside the range the model's "
            f"preprocessing spec gives its inputs ({low:.4g}..{high:.4g}); arrays go to the model as they are, so "
            "give them preprocessed")


def echo_notes(notes) -> None:
    """Each note on its own line of stderr, the empty ones (None) left out."""
    for note in notes:
        if note:
            click.echo(note, err=True)
