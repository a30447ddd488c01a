"""Entry point: the click group, and the one place that turns a user's mistake into one line and exit code 2."""
from __future__ import annotations

import sys
import warnings

import click

from onnxplain.allocator import reuse_freed_memory
from onnxplain.errors import OnnxplainError

from .contrast_cmd import contrast_command
from .convert_cmd import convert_group
from .evaluate_cmd import evaluate_command
from .explain_cmd import explain_command
from .inspect_cmd import inspect_command
from .predict_cmd import predict_command


OUT_OF_MEMORY = ("out of memory", "can't allocate memory")   # torch's CPU and CUDA allocators say so


class UserErrorGroup(click.Group):
    """Runs commands so that an OnnxplainError prints one line on stderr and exits 2, with no traceback; so does
    running out of memory (settings or inputs too large for the machine)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except OnnxplainError as error:
            fail(str(error))
        except click.UsageError as error:  # unknown option, missing argument: one line too
            fail(f"{error.format_message()} (see --help)")
        except (MemoryError, RuntimeError) as error:
            text = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
            if isinstance(error, RuntimeError) and not any(s in text.lower() for s in OUT_OF_MEMORY):
                raise
            fail(f"out of memory ({text}): give fewer inputs at once (--batch) or smaller settings")


def fail(message: str):
    click.echo(f"onnxplain: error: {message}", err=True)
    sys.exit(2)


@click.group(cls=UserErrorGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="onnxplain")
def cli():
    """Explain the decisions of any ONNX classifier (PyTorch, Keras, Caffe, PaddlePaddle, scikit-learn exports)."""
    warnings.filterwarnings("ignore", category=UserWarning)
    reuse_freed_memory()


cli.add_command(contrast_command)
cli.add_command(convert_group)
cli.add_command(evaluate_command)
cli.add_command(explain_command)
cli.add_command(inspect_command)
cli.add_command(predict_command)


def main():
    cli()


if __name__ == "__main__":
    main()
