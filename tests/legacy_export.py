"""torch.onnx.export's legacy exporter (opset 13 unless told) with a dynamic batch: the tests' small torch nets
as ONNX."""
from __future__ import annotations

import warnings

import torch


def export(net, path, shape=(2, 6), opset: int = 13, dtype: torch.dtype = torch.float32):
    """`net` (in eval mode) written to `path`, input x of `shape` and `dtype` (uint8: pixels 0..255) and output y,
    the batch left open."""
    example = torch.rand(shape) if dtype.is_floating_point else torch.randint(0, 256, shape, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), (example.to(dtype),), str(path), dynamo=False, opset_version=opset,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    return path
