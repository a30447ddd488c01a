"""Random graphs at random opsets (`fuzz_opsets.draw_model`): the registry's torch forward equals onnxruntime's,
and LRP conserves relevance (input relevance + bias term + stabiliser term = f(x)) or refuses the graph by naming
the ops it cannot pass.

Per seed, on two samples: a draw onnxruntime rejects, or where it computes values that are not finite, is skipped.
Else every tensor the registry's `Graph` computes on the graph as drawn (old opsets as they are) is within 1e-4 of
onnxruntime's (relative to the tensor's largest value, `relative_error`); the loaded model (opsets below 13 upgraded)
runs in the registry, not onnx2torch, with logits within 1e-4; and each composite conserves relevance to 1e-5, or,
where `unsupported_ops` names ops, raises an OnnxplainError naming them. Conservation is measured against the
largest term of the balance: float32 rounds a sum to ~1e-7 of its terms, and where f(x) is small beside them
(relevance of both signs, biases that cancel) the error against f(x) alone exceeds 1e-5 in ~2% of the draws, while
the same walk in float64 conserves to 1e-13.
`ONNXPLAIN_FUZZ_SEEDS=first:stop` runs other seeds (default: the first 60).
"""
from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper

import onnxplain
from fuzz_opsets import draw_model
from onnxplain.errors import OnnxplainError
from onnxplain.executor import relative_error
from onnxplain.lrp import LRP, DeepTaylor, unsupported_ops
from onnxplain.ops.graph import Graph

FIRST, STOP = (int(v) for v in os.environ.get("ONNXPLAIN_FUZZ_SEEDS", "0:60").split(":"))
TOLERANCE = 1e-4        # the executor's, against onnxruntime (test_executor_parity.py)
CONSERVATION = 1e-5     # test_lrp_zoo.py's, there relative to f(x) (here to the balance's largest term)
BOX = 3.0               # inputs are clipped to [-BOX, BOX], z^B's box
COMPOSITES = ("epsilon-plus", "lrp-0", "epsilon-alpha2-beta1", "epsilon-gamma-box", "deep-taylor")
ort.set_default_logger_severity(3)


def onnxruntime_values(proto: onnx.ModelProto, names: list[str], x: np.ndarray) -> dict[str, np.ndarray] | None:
    """onnxruntime's values of the tensors `names` (the graph's outputs made of them), or None where it rejects the
    graph."""
    wide = onnx.ModelProto()
    wide.CopyFrom(proto)
    del wide.graph.output[:]
    wide.graph.output.extend(helper.make_empty_tensor_value_info(name) for name in names)
    try:
        session = ort.InferenceSession(wide.SerializeToString(), providers=["CPUExecutionProvider"])
        return dict(zip(names, session.run(names, {"x": x})))
    except Exception:   # onnxruntime refuses the graph (a combination it does not implement)
        return None


def balance(explanation) -> np.ndarray:
    """Per sample, the largest term of the conservation balance: f(x), the relevance map's absolute sum, and each
    layer's relevance, bias and stabiliser terms. Float32 rounds a sum to ~1e-7 of the terms it adds, so where
    f(x) is small beside them (relevance of both signs, biases that cancel) the error is measured against them."""
    report = explanation.diagnostics
    layers = [max((abs(v) for layer in sample for v in (layer["relevance"], layer["bias"], layer["stabiliser"])),
                  default=0.0)
              for sample in report["layers"]]
    mapped = np.abs(explanation.relevance).reshape(len(layers), -1).sum(1)
    return np.maximum.reduce([np.abs(explanation.score), mapped, np.array(layers)])


def fuzz_case(seed: int, tmp_path) -> str:
    """Seed's graph through the registry, onnxruntime and LRP: 'skipped' where onnxruntime rejects it or computes
    values that are not finite, 'refused' where LRP names an op it cannot pass, else 'passed' (assertions raise)."""
    proto, shape, names = draw_model(seed)
    opset = proto.opset_import[0].version
    rng = np.random.default_rng(10_000 + seed)
    x = np.clip(rng.normal(0, 1, (2, *shape)), -BOX, BOX).astype(np.float32)
    wanted = onnxruntime_values(proto, names, x)
    if wanted is None or not all(np.isfinite(value).all() for value in wanted.values()):
        return "skipped"   # rejected, or a pooling window over padding alone (the type's lowest value) overflows
    got = Graph(proto).run({"x": torch.from_numpy(x)}, names)
    ops = {out: node.op_type for node in proto.graph.node for out in node.output}
    for name in names:
        error = relative_error(got[name].numpy(), wanted[name])
        assert got[name].shape == wanted[name].shape and error <= TOLERANCE, \
            f"seed {seed}, opset {opset}: {ops[name]} {name} {tuple(got[name].shape)} error {error:.2g}"
    path = tmp_path / f"fuzz{seed}.onnx"
    onnx.save(proto, path)
    model = onnxplain.load(path)
    executor = model.torch()
    assert executor.graph is not None, f"seed {seed}, opset {opset}: {executor.problem}"
    error = relative_error(executor.logits(x).detach().numpy(), model.logits(x))
    assert error <= TOLERANCE, f"seed {seed}, opset {opset}: logits error {error:.2g}"
    unsupported = unsupported_ops(model)
    for composite in COMPOSITES:
        box = {"low": -BOX, "high": BOX} if composite in ("epsilon-gamma-box", "deep-taylor") else {}
        method = DeepTaylor(progress=False, **box) if composite == "deep-taylor" else \
            LRP(composite, progress=False, **box)
        if unsupported:
            with pytest.raises(OnnxplainError) as refusal:
                method.explain(model, x)
            assert all(name in str(refusal.value) for name in unsupported[:6]), (seed, str(refusal.value))
            return "refused"
        explanation = method.explain(model, x)
        report = explanation.diagnostics
        total = np.asarray(report["input_relevance"]) + report["bias_relevance"] + report["stabiliser_relevance"]
        error = (np.abs(total - explanation.score) / np.maximum(balance(explanation), 1e-12)).max()
        assert error < CONSERVATION, f"seed {seed}, opset {opset}, {composite}: conservation error {error:.2g}"
        assert relative_error(explanation.score, model.logits(x)[np.arange(2), explanation.target]) <= TOLERANCE
    return "passed"


@pytest.mark.parametrize("seed", range(FIRST, STOP))
def test_random_graphs_run_and_conserve(seed, tmp_path):
    if fuzz_case(seed, tmp_path) == "skipped":
        pytest.skip("onnxruntime rejects this draw, or computes values that are not finite")


def test_most_draws_run_rather_than_skip():
    """A draw onnxruntime rejects (or computes non-finite values for) is skipped: were most of them, the seeds
    above would test little."""
    skipped = 0
    for seed in range(FIRST, STOP):
        proto, shape, names = draw_model(seed)
        x = np.clip(np.random.default_rng(10_000 + seed).normal(0, 1, (2, *shape)), -BOX, BOX).astype(np.float32)
        wanted = onnxruntime_values(proto, names, x)
        skipped += wanted is None or not all(np.isfinite(value).all() for value in wanted.values())
    assert skipped <= 0.2 * (STOP - FIRST), f"{skipped} of {STOP - FIRST} draws skipped"
