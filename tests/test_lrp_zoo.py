"""The nine zoo graphs: the torch executor reproduces onnxruntime (done-when 1), LRP conserves relevance with
the bias and stabiliser terms for every composite and rule (done-when 3), deep Taylor is positive on plain
ReLU networks; incremental forward passes (prediction difference's windows) reproduce onnxruntime too.

Each model is loaded once (module-scoped fixture, one model in memory at a time) and runs every composite, plus
one set of rule overrides (every rule on several graphs).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import onnxplain
from onnxplain.executor import probe_batch, relative_error
from onnxplain.crops import window_index
from onnxplain.incremental import WindowRunner
from onnxplain.lrp import LRP, DeepTaylor, unsupported_ops
from onnxplain.lrp.composites import COMPOSITES
from onnxplain.zoo import ZOO_NAMES

CONSERVATION = 1e-5
PLAIN_RELU = {"bvlc_alexnet", "vgg19", "zfnet512", "squeezenet", "inception_v1"}  # no sums of signed branches
OVERRIDES = {  # one set of rule overrides per model, so every rule runs on several graphs
    "bvlc_alexnet": [{"Conv": "w2", "Gemm": "w2"}],
    "inception_v1": [{"Conv": "gamma", "Gemm": "zplus"}],
    "vgg19": [{"Conv": "flat", "Gemm": "gamma:0.5"}],
    "resnet50": [{"Conv": "epsilon:0.1", "Gemm": "z"}],
    "squeezenet": [{"Conv": rule} for rule in ("epsilon:0.1", "gamma", "zplus", "alphabeta:3,2", "w2", "flat")],
    "densenet121": [{"BatchNormalization": "pass", "Conv": "alphabeta:3,2"}],
    "inception_v2": [{"Conv": "alpha2beta1", "Gemm": "w2"}],
    "shufflenet": [{"Conv": "zplus", "Gemm": "flat"}],
    "zfnet512": [{"Conv": "epsilon:0.1", "Gemm": "gamma"}],
}
ALL_COMPOSITES = [c for c in COMPOSITES if c != "deep-taylor"]  # deep-taylor: its own test below
CONFIGS = {name: [(c, None) for c in ALL_COMPOSITES] + [("lrp-0", rules) for rules in OVERRIDES[name]]
           for name in ZOO_NAMES}


@pytest.fixture(scope="module", params=ZOO_NAMES)
def zoo(request, zoo_path):
    model = onnxplain.load(zoo_path(request.param))
    return request.param, model, probe_batch(model, 1, seed=11)


def test_incremental_forward_matches_onnxruntime(zoo):
    name, model, probe = zoo
    executor = model.torch()
    rng, k, spatial = np.random.default_rng(3), 10, probe.shape[2:]
    corners = np.array(np.meshgrid(*[[0, n - k] for n in spatial], indexing="ij")).reshape(len(spatial), -1).T
    starts = np.concatenate([corners, np.stack([rng.integers(0, n - k + 1, 4) for n in spatial], axis=1)])
    values = rng.uniform(probe.min(), probe.max(), (len(starts), probe.shape[1], k, k)).astype(np.float32)
    logits = executor.logits_name
    got = WindowRunner(executor, torch.from_numpy(probe), [logits])(torch.from_numpy(values), starts)[logits]
    batch = np.repeat(probe, len(starts), axis=0)
    batch[window_index(starts, (k, k), probe.shape[1])] = values
    assert relative_error(got.numpy(), model.run(batch, [logits])[logits]) <= 1e-4


def test_executor_matches_onnxruntime(zoo):
    name, model, _ = zoo
    executor = model.torch()
    assert executor.graph is not None, executor.problem
    x = probe_batch(model, 2, seed=12)
    assert relative_error(executor(x).detach().numpy(), model.scores(x)) <= 1e-4
    assert relative_error(executor.logits(x).detach().numpy(), model.logits(x)) <= 1e-4
    assert unsupported_ops(model) == []


def test_lrp_conserves_relevance(zoo):
    name, model, x = zoo
    logit = model.logits(x)
    for composite, rules in CONFIGS[name]:
        explanation = LRP(composite, rules=rules, progress=False).explain(model, x)
        report = explanation.diagnostics
        np.testing.assert_allclose(explanation.score, logit[0, explanation.target], rtol=1e-4)
        error = np.abs(report["conservation_error"]).max()
        assert error < CONSERVATION, (composite, rules, error)
        total = np.asarray(report["input_relevance"]) + report["bias_relevance"] + report["stabiliser_relevance"]
        np.testing.assert_allclose(total, explanation.score, rtol=CONSERVATION)
        assert report["layers"][0], "the ledger lists the layers"


def test_deep_taylor(zoo):
    name, model, x = zoo
    explanation = DeepTaylor(progress=False).explain(model, x)
    assert np.abs(explanation.diagnostics["conservation_error"]).max() < CONSERVATION
    first = explanation.diagnostics["layers"][0][0]
    assert first["rule"] == "zb" and first["op"] == "Conv"
    if name in PLAIN_RELU:
        assert explanation.score[0] > 0
        assert explanation.relevance.min() >= 0 and explanation.diagnostics["negative_fraction"][0] == 0
