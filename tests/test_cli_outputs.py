"""Output files of the commands: written as named (any --save-npy suffix, a figure in its suffix's format,
missing folders made) or not at all: staged until the run succeeds, and a commit that fails restores what it
replaced and leaves nothing new."""
from __future__ import annotations

import numpy as np
import pytest
from cli_runner import run
from PIL import Image

from onnxplain.cli.outputs import StagedFiles
from onnxplain.errors import OnnxplainError


@pytest.fixture(scope="module")
def samples(digits_cnn):
    return digits_cnn.parent / "samples"


def test_staged_files_are_dropped_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with StagedFiles() as staged:
            staged.path_for(tmp_path / "a" / "one.png").write_text("1")
            raise RuntimeError("a later input failed")
    assert not (tmp_path / "a").exists()
    with StagedFiles() as staged:
        staged.path_for(tmp_path / "a" / "one.png").write_text("1")
        staged.commit()
    assert (tmp_path / "a" / "one.png").read_text() == "1"


def test_output_paths_are_written_as_named_or_not_at_all(tmp_path, digits_cnn, samples):
    """--save-npy keeps any suffix the user gives; a figure is written in the format its suffix names; a path
    that can never be written is one line and exit 2 before any work; missing folders are created."""
    digit = samples / "digit3.png"
    options = ("--method", "occlusion", "--window", "7", "--quiet")
    result = run("explain", digits_cnn, digit, *options, "--save-npy", tmp_path / "r.txt",
                 "--out", tmp_path / "new" / "sub" / "x.jpg")
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "r.txt").shape == (1, 28, 28)
    assert Image.open(tmp_path / "new" / "sub" / "x.jpg").format == "JPEG"
    blocker = tmp_path / "file.png"
    blocker.write_text("a file where a folder should be")
    for flags, message in ((("--out", blocker / "x.png", "--save-npy", tmp_path / "a.npy"), "is a file, not a folder"),
                           (("--save-npy", blocker / "r.npy"), "is a file, not a folder"),
                           (("--out", tmp_path / "x.txt"), "cannot write a figure as .txt")):
        result = run("explain", digits_cnn, digit, *options, *flags)
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], result.output
    assert not (tmp_path / "a.npy").exists() and not (tmp_path / "x.txt").exists()
    evaluated = run("evaluate", digits_cnn, samples / "digit3_cnn.npy", "--methods", "gradient", "--steps", "2",
                    "--out", blocker / "report", "--quiet")
    assert evaluated.exit_code == 2 and "is a file, not a folder" in evaluated.stderr


def test_a_commit_that_fails_leaves_nothing(tmp_path):
    (tmp_path / "file").write_text("x")
    with StagedFiles() as staged:
        staged.path_for(tmp_path / "made" / "one.png").write_text("1")
        staged.path_for(tmp_path / "file" / "two.png").write_text("2")     # its folder is a file: cannot be made
        with pytest.raises(OnnxplainError, match="cannot write"):
            staged.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]            # no partial file, no new folder


def test_a_failed_commit_restores_what_it_replaced_and_deletes_nothing_else(tmp_path, monkeypatch):
    """Paths through '..' and files that existed before: a failure puts old files back and removes only what the
    commit made."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "precious.txt").write_text("keep me")
    (tmp_path / "old.png").write_text("the old figure")
    (tmp_path / "file").write_text("x")
    with StagedFiles() as staged:
        staged.path_for(tmp_path / "old.png").write_text("new")
        staged.path_for(tmp_path / "new" / ".." / "figs" / "a.png").write_text("a")
        staged.path_for(tmp_path / "file" / "b.png").write_text("b")         # cannot be made: its folder is a file
        with pytest.raises(OnnxplainError, match="cannot write"):
            staged.commit()
    assert (tmp_path / "precious.txt").read_text() == "keep me"
    assert (tmp_path / "old.png").read_text() == "the old figure"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "old.png", "precious.txt"]
    with StagedFiles() as staged:
        staged.path_for(tmp_path / "old.png").write_text("new")
        staged.commit()
    assert (tmp_path / "old.png").read_text() == "new" and len(list(tmp_path.iterdir())) == 3
