"""The command line run in-process, every argument as a string: what the CLI tests call."""
from __future__ import annotations

from click.testing import CliRunner

from onnxplain.cli.main import cli


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])
