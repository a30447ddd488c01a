"""Where `explain` writes: one file per input under a documented naming scheme, staged so nothing half-written
is left behind when a later input fails.

Naming: with one input, `--out x.png` / `--save-npy r.npy` are used as given. With several inputs, a path with a
suffix becomes `<stem>_<input name><suffix>` beside it, and a folder (existing, or given without a suffix)
receives `<input name>.png` / `<input name>.npy`. The input name is the file name without its extension, with
`_<i>` for sample i of an .npy batch; two inputs with the same stem keep their extension (`digit3_png`).
A volume's relevance goes to `<png path minus .png>_relevance.nii.gz`. Missing folders are created; a path that
cannot be written is an error, and then no output is left behind.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

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


def check_output(path: Path | None, kind: str) -> None:
    """Fail before any work for an output that can never be written: a file where a folder must be (the path
    itself for a folder output, or one of its parents), or a figure suffix no writer knows. kind: 'folder',
    'figure' or 'file'."""
    if path is None:
        return
    folder = path if kind == "folder" or path.is_dir() or not path.suffix else path.parent
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OnnxplainError(f"cannot write {path}: {existing} is a file, not a folder")
    if kind == "figure" and folder is not path:
        from onnxplain.viz import figure_format

        figure_format(path)


def nifti_path(png: Path) -> Path:
    stem = png.name[: -len(png.suffix)] if png.suffix else png.name
    return png.with_name(f"{stem}_relevance.nii.gz")


class StagedFiles:
    """Write every output into a private temporary folder; `commit` moves them all into place (creating the
    target folders then), or none of them. Used as a context manager: an exception discards."""

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

    def save_npy(self, final: Path, array: np.ndarray) -> None:
        """`array` as .npy at exactly `final` (np.save given a name would append '.npy' to other suffixes)."""
        with open(self.path_for(final), "wb") as handle:
            np.save(handle, array)

    def commit(self) -> list[Path]:
        """Every staged file into place, or none. Each is first moved beside its target under a temporary name
        (the step that can fail: a file where a folder should be, no permission, another device); then existing
        targets are set aside and the new files renamed in. A failure puts back what was set aside and removes
        only what this commit wrote and the folders it made (when empty)."""
        targets = [final.parent.resolve() / final.name for _, final in self._pending]   # no '..' through new folders
        for final in targets:
            if final.is_dir():
                raise OnnxplainError(f"cannot write {final}: it is a folder")
        partials, kept, placed, created = [], [], [], []
        final = None
        try:
            for (staged, _), final in zip(self._pending, targets):
                created += _missing_folders(final.parent)
                final.parent.mkdir(parents=True, exist_ok=True)
                partials.append(_beside(final, "partial"))
                shutil.move(str(staged), str(partials[-1]))
            for partial, final in zip(partials, targets):
                if final.exists() or final.is_symlink():
                    kept.append((_beside(final, "old"), final))
                    os.replace(final, kept[-1][0])
                os.replace(partial, final)
                placed.append(final)
        except OSError as error:
            for path in placed + partials:
                path.unlink(missing_ok=True)
            for old, final in kept:
                os.replace(old, final)
            for folder in reversed(created):
                with contextlib.suppress(OSError):
                    folder.rmdir()                 # only if empty: never anything this commit did not make
            raise OnnxplainError(f"cannot write {final}: {error.strerror or error}") from None
        for old, _ in kept:
            old.unlink(missing_ok=True)
        return [final for _, final in self._pending]

    def __exit__(self, kind, error, trace):
        shutil.rmtree(self._folder, ignore_errors=True)
        return False


def _missing_folders(folder: Path) -> list[Path]:
    """The folders `mkdir(parents=True)` would create for the resolved `folder`, outermost first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing[::-1]


def _beside(path: Path, tag: str) -> Path:
    """A temporary name next to `path` (same folder, so that renames stay on one file system)."""
    return path.with_name(f".{path.name[:200]}.{os.getpid()}.{tag}")
