"""Bad arguments to the library's API are refused up front, in one line that names the parameter (from a user
trial: each case here once failed deep inside with a raw TypeError, IndexError or numpy/torch error)."""
from __future__ import annotations

import json

import numpy as np
import pytest

import onnxplain
from onnxplain import zoo
from onnxplain.errors import OnnxplainError
from onnxplain.lrp import LRP, DeepTaylor
from onnxplain.methods import make_method
from onnxplain.methods.pda import PredictionDifference
from onnxplain.methods.samplers import ConditionalSampler, MarginalSampler
from onnxplain.metrics import Evaluation, aopc, loss_correlation
from onnxplain.targets import Target, as_target


@pytest.fixture(scope="module")
def digit(digits_cnn):
    return np.load(digits_cnn.parent / "samples" / "digit3_cnn.npy")[None]


def _refused(match: str, call) -> str:
    with pytest.raises(OnnxplainError, match=match) as error:
        call()
    assert "\n" not in str(error.value)
    return str(error.value)


@pytest.mark.parametrize("rules", [["Conv=zplus"], "Conv=zplus", {3: "z"}, {"Conv": 0.5}])
def test_lrp_rules_must_map_names_to_rule_specs(rules):
    _refused("rules must be a mapping of op type or node-name pattern", lambda: LRP(rules=rules))
    method = LRP(rules={"Conv": "zplus"})
    _refused("rules must be a mapping", lambda: setattr(method, "rules", rules))
    assert method.rules == {"Conv": "zplus"}


@pytest.mark.parametrize("low, high, match", [
    (1, 0, "low must be below high everywhere"), (np.zeros(3), np.array([1, 1, 0]), "below high"),
    (0, None, "high is missing"), (None, 1, "low is missing"), ("a", 1, "low must be a finite number"),
    (0, np.inf, "high must be a finite number"), (np.zeros(3), np.ones(2), "do not broadcast together"),
])
def test_lrp_box_bounds_are_checked_when_given(low, high, match):
    _refused(match, lambda: LRP(composite="epsilon-gamma-box", low=low, high=high))


def test_lrp_box_bounds_without_a_box_rule_are_refused():
    """low/high feed z^B alone: a composite and rules without it would ignore them."""
    _refused("low/high would change nothing: composite 'epsilon-plus' has no z\\^B rule",
             lambda: LRP(low=0, high=1))
    LRP(rules={"Conv": "zb"}, low=0, high=1)    # an override that takes z^B reads them
    DeepTaylor(low=0, high=1)


def test_lrp_box_bounds_must_fit_one_sample(digits_cnn_model, digit):
    method = LRP(composite="epsilon-gamma-box", low=np.zeros(5), high=np.ones(5), progress=False)
    _refused(r"low of shape \(5,\) does not broadcast against one input sample of shape \(1, 28, 28\)",
             lambda: method.attribute(digits_cnn_model, digit))
    per_channel = LRP(composite="epsilon-gamma-box", low=np.zeros((1, 1, 1)), high=np.ones((1, 28, 28)),
                      progress=False).attribute(digits_cnn_model, digit)
    np.testing.assert_allclose(per_channel, LRP(composite="epsilon-gamma-box", low=0, high=1, progress=False)
                               .attribute(digits_cnn_model, digit))


@pytest.mark.parametrize("fields, match", [
    ({"index": "3"}, "Target index must be an integer, not '3' .*target='3'"), ({"index": 1.5}, "Target index"),
    ({"index": -1}, "Target index must be at least 0"), ({"index": True}, "Target index"),
    ({"layer": "relu", "unit": ("1", 2)}, "Target unit must be an integer"), ({"layer": 3, "index": 0}, "layer"),
])
def test_target_indices_are_integers_from_zero(fields, match):
    _refused(match, lambda: Target(**fields))


def test_a_class_given_as_a_string_or_a_negative_number_is_read_with_the_model(digits_cnn_model, digit):
    assert Target(index=np.int64(3)).index == 3 and type(Target(index=np.int64(3)).index) is int
    assert as_target(digits_cnn_model, "3") == Target(index=3)
    _refused("class -1 is out of range: the model has 10 classes", lambda: as_target(digits_cnn_model, -1))


@pytest.mark.parametrize("call, match", [
    (lambda: aopc(np.arange(5.0)), r"curves must be a 2-D array \(images, steps \+ 1\).*got shape \(5,\)"),
    (lambda: aopc([["a"]]), "curves must be an array of numbers"),
    (lambda: loss_correlation(np.arange(4.0), np.arange(3.0)), r"same length .* shapes \(4,\) and \(3,\)"),
    (lambda: loss_correlation(np.ones((4, 2)), np.ones((4, 2))), "values and loss must be 1-D"),
])
def test_metric_helpers_check_their_arrays(call, match):
    _refused(match, call)


def test_an_evaluation_takes_a_list_of_methods_named_by_their_names(digits_cnn_model, digit):
    evaluation = Evaluation(["aopc"], steps=5, region=3, progress=False)
    gradient = make_method("gradient", progress=False)
    listed = evaluation.run(digits_cnn_model, digit, [gradient])
    assert [result.name for result in listed.methods] == ["gradient"]
    np.testing.assert_array_equal(listed.methods[0].curves["morf"], evaluation.run(
        digits_cnn_model, digit, {"gradient": gradient}).methods[0].curves["morf"])
    for methods, match in (([gradient, gradient], r"methods named alike \(gradient\)"), ([], "non-empty"),
                           ("gradient", "must be a non-empty dict"), ({"a": 3}, "method 'a' has neither")):
        _refused(match, lambda: evaluation.run(digits_cnn_model, digit, methods))


def test_an_evaluation_reads_labels_given_as_class_names(digits_cnn, digit):
    model = onnxplain.load(digits_cnn)
    model.labels = [f"digit {i}" for i in range(10)]
    evaluation = Evaluation(["aopc"], steps=2, region=7, progress=False)
    gradient = {"gradient": make_method("gradient", progress=False)}
    x = np.concatenate([digit, digit])
    named = evaluation.run(model, x, gradient, labels=["digit 8", "digit 3"])
    assert named.labels.tolist() == [8, 3] and named.loss.tolist() == evaluation.run(
        model, x, gradient, labels=np.array([8, 3])).loss.tolist()
    assert evaluation.run(model, x, gradient, labels=np.array(["3", "3"])).labels.tolist() == [3, 3]
    _refused("unknown class 'seven'", lambda: evaluation.run(model, x, gradient, labels=["seven", "digit 3"]))
    _refused("labels must be 2 class indices or class names", lambda: evaluation.run(model, x, gradient, [1.0, 2.0]))


@pytest.mark.parametrize("seed, match", [(-1, "seed must be at least 0"), (1.5, "seed must be an integer"),
                                         ("1", "seed must be an integer")])
def test_zoo_seeds_are_checked_as_the_methods_check_theirs(seed, match, tmp_path):
    _refused(match, lambda: zoo.materialize("squeezenet", seed=seed, folder=tmp_path))
    assert not list(tmp_path.iterdir())


def test_a_ragged_nested_list_is_refused_as_input(digits_cnn_model, digit):
    ragged = [digit[0].tolist(), [[1, 2]]]
    _refused("input is ragged: its nested lists differ in length",
             lambda: make_method("gradient", progress=False).attribute(digits_cnn_model, ragged))
    _refused("reference set .* is ragged", lambda: digits_cnn_model.check_input(ragged, "reference set (--reference)"))


def test_load_takes_a_preprocessing_spec_as_a_dict(digits_cnn, tmp_path):
    fields = {"layout": "NCHW", "color": "gray", "size": [28, 28], "scale": 1.0}
    model = onnxplain.load(digits_cnn, preprocess=fields)
    (tmp_path / "spec.json").write_text(json.dumps(fields))
    assert model.preprocess == onnxplain.load(digits_cnn, preprocess=tmp_path / "spec.json").preprocess
    assert model.preprocess.scale == 1.0 and model.preprocess_source == "given"
    _refused("layout must be NCHW, NHWC or flat", lambda: onnxplain.load(digits_cnn, preprocess={"layout": "CHW"}))
    _refused("preprocess must be a PreprocessSpec, a dict of its fields .* not int",
             lambda: onnxplain.load(digits_cnn, preprocess=3))


@pytest.mark.parametrize("ridge, match", [(-1, "ridge must be above 0, got -1"), (0, "ridge must be above 0"),
                                          ("1e-3", "ridge must be a number")])
def test_the_conditional_sampler_needs_a_positive_ridge(ridge, match):
    _refused(match, lambda: ConditionalSampler(ridge=ridge))


def test_padding_given_next_to_a_sampler_instance_must_agree_with_it():
    reference = np.zeros((3, 1, 28, 28), np.float32)
    assert PredictionDifference(sampler=ConditionalSampler(padding=2), padding=2, reference=reference).padding == 2
    _refused(r"padding 1 conflicts with the sampler instance's padding 2 \(it carries its own",
             lambda: PredictionDifference(sampler=ConditionalSampler(padding=2), padding=1, reference=reference))
    _refused(r"padding 1 applies only to the conditional sampler \(MarginalSampler draws the window alone",
             lambda: PredictionDifference(sampler=MarginalSampler(), padding=1, reference=reference))
    _refused(r"padding 2 applies only to the conditional sampler \(marginal sampling draws the window alone",
             lambda: PredictionDifference(sampler="marginal", padding=2, reference=reference))
    assert PredictionDifference(sampler="marginal", padding=0, reference=reference).padding == 0
