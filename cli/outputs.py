"""Where `explain` writes: one file per input under a documented naming scheme, staged so nothing half-written
is left behind when a later input fails.

Naming: with one input, `--out x.png` / `--save-npy r.npy` are used as given. With several inputs, a path with a
suffix becomes `<stem>_<input name><suffix>` beside it, and a folder (existing, or given without a suffix)
receives `<input name>.png` / `<input name>.npy`. The input name is the file name without its extension, with
`_<i>` for sample i of an .npy batch; two inputs with the same stem keep their extension (`digit3_png`).
A volume's relevance goes to `<png path minus .png>_relevance.nii.gz`.
"""
from __future__ import annotations

import re
import shutil
import tempfile
from collections import Counter
from pathlib import Path

from onnxplain.errors import OnnxplainError

KNOWN_SUFFIXES = (".nii.gz", ".nii", ".npy", ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                  ".ppm", ".pgm")


def _split(source: Path) -> tuple[str, str, str]:
    """(stem, extension without the dot, batch index or '') of an input as listed by `load_inputs`."""
    name = source.name
    match = re.fullmatch(r"(.*)\[(\d+)\]", name)
    index = ""
    if match:
        name, index = match.group(1), match.group(2)
    for suffix in KNOWN_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)], suffix.lstrip(".").replace(".", "_"), index
    return name, "", index


def input_names(sources: list[Path]) -> list[str]:
    """A distinct, file-name-safe name per input (see the module docstring)."""
    parts = [_split(s) for s in sources]
    plain = [stem + (f"_{index}" if index else "") for stem, _, index in parts]
    repeated = {name for name, count in Counter(plain).items() if count > 1}
    names = [name if name not in repeated else f"{stem}_{ext}" + (f"_{index}" if index else "")
             for name, (stem, ext, index) in zip(plain, parts)]
    if len(set(names)) != len(names):  # same file twice, or a.b.png vs a.b.png in two folders
        names = [f"{i}_{name}" for i, name in enumerate(names)]
    return [re.sub(r"[^\w.-]", "_", name) for name in names]


def output_paths(base: Path, names: list[str], suffix: str) -> list[Path]:
    """One path per input from the user's `base` (see the module docstring)."""
    if len(names) == 1 and base.suffix and not base.is_dir():
        return [base]
    if base.is_dir() or not base.suffix:
        return [base / f"{name}{suffix}" for name in names]
    return [base.with_name(f"{base.stem}_{name}{base.suffix}") for name in names]


def nifti_path(png: Path) -> Path:
    stem = png.name[: -len(png.suffix)] if png.suffix else png.name
    return png.with_name(f"{stem}_relevance.nii.gz")


class StagedFiles:
    """Write every output into a private temporary folder; `commit` moves them all into place (creating the
    target folders then), `discard` drops them. Used as a context manager: an exception discards."""

    def __init__(self):
        self._folder: Path | None = None
        self._pending: list[tuple[Path, Path]] = []

    def __enter__(self) -> "StagedFiles":
        self._folder = Path(tempfile.mkdtemp(prefix="onnxplain-"))
        return self

    def path_for(self, final: Path) -> Path:
        """A temporary path keeping `final`'s file name (writers infer formats from it)."""
        if any(final == done for _, done in self._pending):
            raise OnnxplainError(f"two outputs would be written to {final}")
        staged = self._folder / str(len(self._pending)) / final.name
        staged.parent.mkdir()
        self._pending.append((staged, final))
        return staged

    def commit(self) -> list[Path]:
        for staged, final in self._pending:
            final.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(staged), str(final))
        return [final for _, final in self._pending]

    def __exit__(self, kind, error, trace):
        shutil.rmtree(self._folder, ignore_errors=True)
        return False
