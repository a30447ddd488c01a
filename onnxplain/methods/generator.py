"""The generator of contrastive explanations: an ONNX model from a latent to the classifier's input, checked against
the classifier before any optimisation starts (a fixed-size float latent, one output, the batch axis kept)."""
from __future__ import annotations

import os

import numpy as np
import torch
from onnx import TensorProto

from ..errors import OnnxplainError
from ..scores import FLOAT_TYPES



class Generator:
    """An ONNX generator checked against a classifier: a fixed-size float latent in, the classifier's input out."""

    def __init__(self, generator, classifier, device: str = "cpu"):
        model = self._load(generator) if isinstance(generator, (str, os.PathLike)) else generator
        check_latent(model.proto, model.input_name)
        if len(model.output_names) != 1:
            raise OnnxplainError(f"the generator must have one output (the generated input); it has "
                                 f"{len(model.output_names)}: {', '.join(model.output_names)}")
        self.model, self.latent_shape, self.output = model, tuple(model.input_shape[1:]), model.output_names[0]
        self._check_output(classifier)
        self.executor = model.torch(device)

    @staticmethod
    def _load(path):
        """Check the declared latent first (a model with free latent sizes cannot even be probed), then load."""
        from .. import load
        from ..loading import read_model

        proto = read_model(path)
        initializers = {t.name for t in proto.graph.initializer}
        inputs = [i.name for i in proto.graph.input if i.name not in initializers]
        if len(inputs) != 1:
            raise OnnxplainError(f"the generator must have one input (the latent); it has {len(inputs)}")
        check_latent(proto, inputs[0])
        try:
            return load(path)
        except OnnxplainError as error:
            raise OnnxplainError(f"generator {path}: {error}") from None

    def _check_output(self, classifier) -> None:
        """Run two latents (the method runs batches): the output must be the classifier's input, per latent."""
        size = "x".join(map(str, self.latent_shape))
        if self.model.fixed_batch:   # its runs would split into single latents; the torch executor's could not
            raise OnnxplainError(f"the generator runs one latent at a time: it must accept a batch axis (N x {size})")
        try:
            produced = self._run(2)
        except OnnxplainError as error:
            try:
                self._run(1)
            except OnnxplainError:
                raise OnnxplainError(f"the generator fails on a latent of size {size}: {error}") from None
            raise OnnxplainError(f"the generator runs on one latent but fails on a batch of 2: it must accept a "
                                 f"batch axis (N x {size})") from None
        if produced.shape[0] != 2:
            raise OnnxplainError(f"the generator turned a batch of 2 latents into {produced.shape[0]} outputs: it "
                                 f"must keep the batch axis (N x {size} in, N x the classifier's input out)")
        got = produced.shape[1:]
        want = classifier.input_shape[1:]
        if len(got) != len(want) or any(w is not None and w != g for w, g in zip(want, got)):
            shown = "x".join("N" if d is None else str(d) for d in want)
            raise OnnxplainError(f"the generator's output N x {'x'.join(map(str, got))} does not fit the "
                                 f"classifier's input {shown}")

    def _run(self, count: int) -> np.ndarray:
        return self.model.run(np.zeros((count, *self.latent_shape), self.model.input_dtype), [self.output])[self.output]

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return self.executor.run(z, [self.output])[self.output]


def check_latent(proto, name: str) -> None:
    """The latent input `name` must be float and fixed-size apart from the batch axis: N x k (or N x k x 1 x 1)."""
    (value,) = [i for i in proto.graph.input if i.name == name]
    tensor = value.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim][1:]
    if not dims or any(d is None or d < 1 for d in dims) or tensor.elem_type not in FLOAT_TYPES:
        shown = "x".join("?" if d is None else str(d) for d in dims) or "nothing"
        raise OnnxplainError(f"the generator's input must be a fixed-size float latent (N x k); it is N x {shown} "
                             f"of ONNX type {onnx_type_name(tensor.elem_type)}")


def onnx_type_name(elem_type: int) -> str:
    """'FLOAT', 'INT64', ... for an ONNX element type number."""
    try:
        return TensorProto.DataType.Name(elem_type)
    except ValueError:
        return f"unknown ({elem_type})"
