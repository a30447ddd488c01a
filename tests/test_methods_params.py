"""Parameters as scikit-learn keeps them: every method's constructor parameters come back from `get_params`,
assigning one remakes the method (checked anew, nothing fitted for the old value kept), and numbers are checked
alike everywhere; metrics read targets as methods do."""
from __future__ import annotations

import numpy as np
import pytest

import onnxplain
from onnxplain.errors import OnnxplainError
from onnxplain.lrp import LRP, DeepTaylor
from onnxplain.methods import make_method, method_names
from onnxplain.methods.contrastive import CDeepEx, XGEMs
from onnxplain.methods.pda import PredictionDifference
from onnxplain.metrics.apem import APEM
from onnxplain.metrics.evaluation import Evaluation
from onnxplain.metrics.perturbation import region_perturbation
from onnxplain.targets import Target

REFERENCE = np.zeros((3, 1, 28, 28), np.float32)


def _made(name: str):
    return make_method(name, reference=REFERENCE) if name == "pda" else make_method(name)


@pytest.mark.parametrize("cls", sorted({type(_made(n)) for n in method_names()} | {CDeepEx, XGEMs},
                                       key=lambda c: c.__name__))
def test_get_params_returns_every_constructor_parameter_and_remakes_the_method(cls):
    required = {"reference": REFERENCE} if cls is PredictionDifference else \
        {"generator": "g.onnx"} if issubclass(cls, CDeepEx) else {}
    method = cls(**required, progress=False)
    params = method.get_params()
    assert list(params) == cls.parameter_names() and params["progress"] is False
    assert repr(cls(**params)) == repr(method)
    method.progress = True                    # an assignment remakes it: same type, the new value, the rest kept
    assert type(method) is cls and method.get_params() == params | {"progress": True}


def test_cdeepex_keeps_its_solver_settings_under_their_names():
    method = CDeepEx("g.onnx", outer_steps=5, learning_rate=0.1, growth=2.0)
    assert repr(method) == "CDeepEx(generator='g.onnx', outer_steps=5, learning_rate=0.1, growth=2.0)"
    assert (method.solver.outer_steps, method.solver.learning_rate, method.solver.growth) == (5, 0.1, 2.0)
    method.inner_steps = 7
    assert method.solver.inner_steps == 7 and method.params["inner_steps"] == 7


def test_a_changed_lrp_rule_changes_the_map(digits_cnn):
    model = onnxplain.load(digits_cnn)
    x = np.load(digits_cnn.parent / "samples" / "digit3_cnn.npy")[None]
    method = LRP(progress=False)
    before = method.attribute(model, x, 3)
    method.rules = {"Conv": "zplus", "Gemm": "zplus"}
    after = method.attribute(model, x, 3)
    np.testing.assert_array_equal(after, LRP(rules={"Conv": "zplus", "Gemm": "zplus"}, progress=False)
                                  .attribute(model, x, 3))
    assert not np.allclose(before, after)
    assert method.explain(model, x, 3).params["rules"] == {"Conv": "zplus", "Gemm": "zplus"}
    taylor = DeepTaylor(progress=False)
    taylor.attribute(model, x, 3)
    taylor.stabilizer = 1e-2
    assert taylor.numbers.stabilizer == 1e-2


def test_a_changed_pda_reference_is_fitted_again(digits_cnn):
    model = onnxplain.load(digits_cnn)
    samples = digits_cnn.parent / "samples"
    x, reference = np.load(samples / "digit3_cnn.npy")[None], np.load(samples / "digits_reference_cnn.npy")
    options = dict(window=7, stride=7, padding=0, samples=5, sampler="marginal", progress=False)
    method = PredictionDifference(reference=reference[:5], **options)
    first = method.explain(model, x, Target(index=3))
    method.reference = reference[5:10]
    second = method.explain(model, x, Target(index=3))
    assert second.params["reference_size"] == 5
    np.testing.assert_array_equal(second.relevance, PredictionDifference(reference=reference[5:10], **options)
                                  .explain(model, x, Target(index=3)).relevance)
    assert not np.allclose(first.relevance, second.relevance)
    assert second.relevance.dtype == np.float32            # the input's float type, as the other methods


@pytest.mark.parametrize("make, option", [
    (lambda: LRP(epsilon="0.1"), "epsilon"), (lambda: LRP(batch_size=2.5), "batch_size"),
    (lambda: LRP(batch_size=0), "batch_size"), (lambda: make_method("smoothgrad", samples=2.5), "samples"),
    (lambda: make_method("smoothgrad", sigma="0.1"), "sigma"),
    (lambda: make_method("integrated-gradients", steps=3.0), "steps"),
    (lambda: make_method("gradient", batch_size=0), "batch_size"),
    (lambda: make_method("occlusion", window=2.5), "window"), (lambda: make_method("occlusion", fill=np.nan), "fill"),
    (lambda: CDeepEx("g.onnx", restarts=2.0), "restarts"), (lambda: CDeepEx("g.onnx", kappa=-1), "kappa"),
    (lambda: APEM(stage=2.0), "stage"), (lambda: APEM(step=0), "step"),
    (lambda: Evaluation(region=0), "region"),
])
def test_numbers_are_checked_alike_in_every_method_and_metric(make, option):
    with pytest.raises(OnnxplainError, match=option) as error:
        make()
    assert "\n" not in str(error.value)


def test_an_assignment_is_checked_as_the_constructor_checks_it():
    method = make_method("smoothgrad", samples=3)
    with pytest.raises(OnnxplainError, match="samples must be at least 1"):
        method.samples = 0
    assert method.samples == 3


def test_metrics_take_targets_as_methods_do(digits_cnn):
    model = onnxplain.load(digits_cnn)
    x = np.load(digits_cnn.parent / "samples" / "digits_reference_cnn.npy")[:2]
    relevance = np.random.default_rng(0).random(x.shape).astype(np.float32)
    curves = region_perturbation(model, x, relevance, Target(index=3), steps=3)
    np.testing.assert_array_equal(curves, region_perturbation(model, x, relevance, 3, steps=3))
    np.testing.assert_array_equal(curves, region_perturbation(model, x, relevance, [3, 3], steps=3))
    assert APEM(shuffles=0, progress=False).classes(model, x, Target(index=3)).tolist() == [3, 3]
    for bad, message in ((99, "class 99 is out of range"), (3.7, "target must be"), ([1], "1 targets for 2"),
                         (Target("relu", 0), "hidden-tensor targets")):
        with pytest.raises(OnnxplainError, match=message):
            region_perturbation(model, x, relevance, bad, steps=3)
    with pytest.raises(OnnxplainError, match="region must be at least 1"):
        region_perturbation(model, x, relevance, steps=3, region=0)
    assert Evaluation("aopc").metrics == ("aopc",)


def test_probabilities_are_the_softmax_of_the_logits(digits_cnn, digits_logreg):
    model = onnxplain.load(digits_cnn)
    x = np.load(digits_cnn.parent / "samples" / "digits_reference_cnn.npy")[:3]
    logits = model.logits(x)
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(model.probabilities(x), expected, rtol=1e-12)
    logreg = onnxplain.load(digits_logreg)
    features = np.random.default_rng(0).random((2,) + logreg.input_shape[1:]).astype(np.float32) * 16
    np.testing.assert_array_equal(logreg.probabilities(features), logreg.scores(features))


def test_one_executor_per_gpu_whatever_its_name(monkeypatch):
    import torch

    from onnxplain.devices import device_key

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert device_key("cuda") == device_key("cuda:0") == "cuda:0" and device_key("cuda:1") == "cuda:1"
    assert device_key("cpu") == "cpu" and device_key("nonsense") == "nonsense"


def test_occlusion_shares_a_drop_among_channels_and_names_its_score(digits_cnn):
    model = onnxplain.load(digits_cnn)
    x = np.load(digits_cnn.parent / "samples" / "digit3_cnn.npy")[None]
    explanation = make_method("occlusion", window=7, stride=7, progress=False).explain(model, x, Target(index=3))
    assert explanation.diagnostics["score_kind"] == model.score_kind == "logits"


def test_a_runner_failure_is_not_reported_as_incremental(digits_cnn, monkeypatch):
    """A batch the incremental runner cannot run goes whole: same numbers, and the diagnostics say so."""
    from onnxplain.incremental import WindowRunner

    model = onnxplain.load(digits_cnn)
    x = np.load(digits_cnn.parent / "samples" / "digit3_cnn.npy")[None]
    method = make_method("occlusion", window=7, stride=7, device="cpu", progress=False)
    incremental = method.explain(model, x, Target(index=3))
    assert incremental.diagnostics["forward_passes_on"].endswith(", incremental")

    probed = WindowRunner.__call__

    def flaky(self, values, starts):   # the probe's 5 windows run; the 16 windows of a batch do not
        if len(values) > 5:
            raise RuntimeError("no rule for this crop")
        return probed(self, values, starts)

    monkeypatch.setattr(WindowRunner, "__call__", flaky)
    whole = make_method("occlusion", window=7, stride=7, device="cpu", progress=False).explain(model, x, 3)
    assert not whole.diagnostics["forward_passes_on"].endswith("incremental")
    # float32 rounding: both are about 5e-6 from the float64 drops (logits of about 20-40)
    np.testing.assert_allclose(whole.relevance, incremental.relevance, rtol=1e-5, atol=1e-5)
