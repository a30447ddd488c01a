"""torch.onnx.export's legacy exporter (opset 13 unless told) with a dynamic batch: the tests' small torch nets
as ONNX."""
from __future__ import annotations

import warnings

import torch


def export(net, path, shape=(2, 6), opset: int = 13):
    """`net` (in eval mode) written to `path`, input x of `shape` and output y, the batch left open."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), (torch.rand(shape),), str(path), dynamo=False, opset_version=opset,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    return path
