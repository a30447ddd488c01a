"""PyTorch -> ONNX through `torch.onnx.export`, with a dynamic batch axis and a chosen opset."""
from __future__ import annotations

import io
import logging
import os
import warnings
from contextlib import contextmanager

import numpy as np

from onnxplain.errors import OnnxplainError
from onnxplain.loading import default_opset

from .common import ConversionReport, embed_metadata, sample_batch, verify_and_write


@contextmanager
def _quiet_exporter():
    """The exporters log opset conversion chatter at WARNING; the report says which opset was written."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "torch.export")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _at_opset(proto, opset: int):
    """The exported graph at the requested opset: the dynamo exporter writes opset 18 or later whatever it is
    asked, so an older one is reached by `onnx.version_converter` (a failure here falls back to TorchScript)."""
    import onnx.version_converter

    found = default_opset(proto)
    if found == opset:
        return proto
    converted = onnx.version_converter.convert_version(proto, opset)
    if default_opset(converted) != opset:
        raise ValueError(f"the dynamo exporter wrote opset {found}, not {opset}")
    onnx.checker.check_model(converted, full_check=True)   # the converter can write attributes an opset lacks
    return converted


def _export(module, example, opset: int, input_name: str, output_name: str):
    """(ModelProto, exporter description): the dynamo exporter first, the TorchScript one if that fails."""
    import onnx
    import torch

    with _quiet_exporter():
        try:
            program = torch.onnx.export(module, (example,), dynamo=True, opset_version=opset,
                                        input_names=[input_name], output_names=[output_name],
                                        dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
            proto = _at_opset(program.model_proto, opset)
            return proto, f"torch.onnx.export (dynamo), opset {default_opset(proto)}"
        except Exception as dynamo_error:  # the exporters raise many unrelated types
            buffer = io.BytesIO()
            try:
                torch.onnx.export(module, (example,), buffer, dynamo=False, opset_version=opset,
                                  input_names=[input_name], output_names=[output_name],
                                  dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}})
            except Exception as error:
                raise OnnxplainError(f"torch.onnx.export failed: {type(dynamo_error).__name__}: "
                                     f"{str(dynamo_error).splitlines()[0][:200]}; TorchScript exporter: "
                                     f"{type(error).__name__}: {str(error).splitlines()[0][:200]}") from None
            proto = onnx.load_from_string(buffer.getvalue())
            return proto, f"torch.onnx.export (TorchScript), opset {default_opset(proto)}"


def convert_pytorch(module, path: str | os.PathLike, *, input_shape: tuple[int, ...] | None = None,
                    samples: np.ndarray | None = None, opset: int = 18, input_name: str = "input",
                    output_name: str = "output", preprocess=None, labels: list | None = None,
                    atol: float = 1e-4) -> ConversionReport:
    """Export `module` (a torch.nn.Module returning one tensor of class scores) to `path`.

    input_shape: one input's shape without the batch axis (taken from `samples` when they are given).
    samples: inputs (N, *input_shape) to verify on; default 8 seeded random inputs over the spec's value range.
    """
    import torch

    if not isinstance(module, torch.nn.Module):
        raise OnnxplainError(f"expected a torch.nn.Module, got {type(module).__name__}")
    if input_shape is None and samples is None:
        raise OnnxplainError("give the input shape (without the batch axis) or sample inputs")
    shape = tuple(input_shape) if input_shape is not None else tuple(np.shape(samples)[1:])
    batch = sample_batch(samples, shape, preprocess)
    module = module.eval()
    example = torch.from_numpy(np.concatenate([batch[:1], batch[:1]]))  # batch 2: keeps the batch axis symbolic
    proto, exporter = _export(module, example, opset, input_name, output_name)
    with torch.no_grad():
        expected = module(torch.from_numpy(batch))
    if not isinstance(expected, torch.Tensor):
        raise OnnxplainError(f"the module returns {type(expected).__name__}; onnxplain needs one tensor of scores")
    embed_metadata(proto, preprocess, labels)
    return verify_and_write(proto, path, batch, expected.numpy(), exporter=exporter, output=output_name, atol=atol)
