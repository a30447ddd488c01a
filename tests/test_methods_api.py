"""The calls every method offers (`onnxplain.explanation.Method`): `explain`, and Captum-style `attribute`, which
returns the same relevance, shaped like the input batch."""
from __future__ import annotations

import numpy as np
import pytest

import onnxplain
from onnxplain.errors import OnnxplainError
from onnxplain.explanation import Method
from onnxplain.methods import make_method, method_names
from onnxplain.targets import Target

SMALL = {  # keeps each method to a fraction of a second on the digits CNN
    "pda": {"window": 7, "stride": 7, "samples": 2, "padding": 0, "sampler": "marginal"},
    "occlusion": {"window": 7, "stride": 7},
    "smoothgrad": {"samples": 2},
    "integrated-gradients": {"steps": 4},
}


@pytest.mark.parametrize("name", method_names())
def test_attribute_returns_explains_relevance(name, digits_cnn):
    model = onnxplain.load(digits_cnn)
    samples = digits_cnn.parent / "samples"
    x = np.stack([np.load(samples / f"digit{d}_cnn.npy") for d in (3, 7)])
    options = dict(SMALL.get(name, {}))
    if name == "pda":
        options["reference"] = np.load(samples / "digits_reference_cnn.npy")[:10]
    method = make_method(name, progress=False, **options)
    assert isinstance(method, Method) and method.name == name
    target = Target(index=3)
    explanation = method.explain(model, x, target)
    relevance = method.attribute(model, x, target)
    assert relevance.shape == x.shape and np.abs(relevance).max() > 0
    np.testing.assert_array_equal(relevance, explanation.relevance)
    assert explanation.method == name


@pytest.mark.parametrize("name", ["lrp", "gradient", "occlusion"])
def test_attribute_takes_a_class_index_a_label_or_one_class_per_sample(name, digits_cnn):
    """Captum-style targets: an int or a label for all samples, or one class per sample (each sample's map then is
    the one it gets explained alone for its class)."""
    model = onnxplain.load(digits_cnn)
    x = np.load(digits_cnn.parent / "samples" / "digits_reference_cnn.npy")[:4]
    method = make_method(name, progress=False, **SMALL.get(name, {}))
    by_target = method.attribute(model, x, Target(index=3))
    np.testing.assert_array_equal(method.attribute(model, x, target=3), by_target)
    np.testing.assert_array_equal(method.attribute(model, x, target="3"), by_target)
    classes = [3, 5, 1, 3]
    each = np.concatenate([method.attribute(model, x[i:i + 1], Target(index=c)) for i, c in enumerate(classes)])
    np.testing.assert_allclose(method.attribute(model, x, target=np.array(classes)), each, rtol=1e-5, atol=1e-7)
    with pytest.raises(OnnxplainError, match="2 targets for 4 samples"):
        method.attribute(model, x, target=[1, 2])
    mixed = [Target("relu_1", 2), Target("relu_1", 2), Target("relu_1", 5, (5, 3, 3)), 7]   # hidden units, a class
    alone = np.concatenate([method.attribute(model, x[i:i + 1], t) for i, t in enumerate(mixed)])
    np.testing.assert_allclose(method.attribute(model, x, target=mixed), alone, rtol=1e-5, atol=1e-7)
    assert not np.allclose(alone[0], method.attribute(model, x[:1], Target(index=2)))   # not class 2's map
    with pytest.raises(OnnxplainError, match="needs a channel"):   # a layer alone names no unit to explain
        Target("relu")
    assert Target("relu", unit=(1, 2, 3)) == Target("relu", 1, (1, 2, 3))   # a unit's first index is its channel
    with pytest.raises(OnnxplainError, match="channel 2 .* unit"):
        Target("relu", 2, (1, 2, 3))
    with pytest.raises(OnnxplainError, match="no tensor named 'block1'"):
        method.attribute(model, x, Target("block1", 5))
    with pytest.raises(OnnxplainError, match=r"onnxplain.load\(path\)"):
        method.attribute(str(digits_cnn), x)
    with pytest.raises(OnnxplainError, match=r"onnxplain.load\(path\)"):
        method.explain(str(digits_cnn), x)
    import torch

    tensor = torch.from_numpy(x).requires_grad_(True)   # as Captum code holds its inputs
    np.testing.assert_array_equal(method.attribute(model, tensor, Target(index=3)), by_target)
    with pytest.raises(OnnxplainError, match="one class per sample"):
        method.explain(model, x, target=[3, 5, 1, 3])
    with pytest.raises(OnnxplainError, match="not bool"):
        method.attribute(model, x, target=True)
    np.testing.assert_array_equal(method.attribute(model, x, target=np.array(3)), by_target)
    model.labels = [f"digit {d}" for d in range(10)]   # labels that are not the indices' own spelling
    np.testing.assert_array_equal(method.attribute(model, x, target="digit 3"), by_target)
    np.testing.assert_allclose(method.attribute(model, x, target=[f"digit {c}" for c in classes]), each,
                               rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", method_names())
def test_an_empty_batch_is_refused_with_a_clear_error(name, digits_cnn):
    model = onnxplain.load(digits_cnn)
    samples = digits_cnn.parent / "samples"
    options = dict(SMALL.get(name, {}))
    if name == "pda":
        options["reference"] = np.load(samples / "digits_reference_cnn.npy")[:10]
    with pytest.raises(OnnxplainError, match="empty batch"):
        make_method(name, progress=False, **options).explain(model, np.zeros((0, 1, 28, 28), np.float32))


@pytest.mark.parametrize("name", method_names())
def test_repr_shows_what_differs_from_the_defaults(name):
    """scikit-learn's convention: every constructor parameter is kept (under its name, or LRP's numbers in `numbers`),
    and the repr names those that differ from their defaults, arrays by shape."""
    import inspect

    cls = type(make_method(name, reference=np.zeros((3, 1, 28, 28), np.float32)) if name == "pda"
               else make_method(name))
    parameters = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    required = {"reference": np.zeros((3, 1, 28, 28), np.float32)} if name == "pda" else {}
    plain = cls(**required)
    for parameter in parameters:
        assert hasattr(plain, parameter) or hasattr(getattr(plain, "numbers", None), parameter), parameter
    shown = repr(plain)
    assert shown == (f"{cls.__name__}(reference=<ndarray 3x1x28x28 float32>)" if name == "pda" else f"{cls.__name__}()")
    assert repr(cls(**required, progress=False)) == shown[:-1] + (", " if shown[-2] != "(" else "") + "progress=False)"


def test_an_lrp_number_no_rule_reads_is_refused():
    """epsilon or gamma given to a composite without that rule (and no override using it) would be ignored."""
    from onnxplain.lrp import LRP

    with pytest.raises(OnnxplainError, match="gamma 0.5 would change nothing: .* 'epsilon-plus' has no gamma rule"):
        LRP(gamma=0.5)
    with pytest.raises(OnnxplainError, match="epsilon 0.1 would change nothing"):
        LRP(composite="lrp-0", epsilon=0.1)
    LRP(composite="epsilon-gamma-box", gamma=0.5)
    LRP(gamma=0.5, rules={"Conv": "gamma"})


def test_an_explanation_shows_in_one_line(digits_cnn):
    model = onnxplain.load(digits_cnn)
    x = np.load(digits_cnn.parent / "samples" / "digits_reference_cnn.npy")[:4]
    shown = repr(make_method("lrp", progress=False).explain(model, x, Target(index=3)))
    assert shown.startswith("Explanation(lrp, relevance <ndarray 4x1x28x28 float32>, target [3], params {")
    assert "\n" not in shown and len(shown) < 600 and "conservation_error" in shown


def test_input_diagnostics_give_each_input_its_own_numbers():
    """Per-sample lists are indexed, a batch total's per-input split becomes the input's own, and a total that does
    not split is named as the batch's with the number of inputs it covers."""
    from onnxplain.explanation import Explanation

    split = Explanation(np.zeros((2, 3)), [0, 1], [0.5, 0.7], "m", diagnostics={
        "forward_passes": 9, "forward_passes_per_input": [4, 5], "seconds": 1.5, "error": [0.1, 0.2], "window": 3})
    assert split.input_diagnostics(1) == {"forward_passes": 5, "error": 0.2, "window": 3, "batch_seconds": 1.5,
                                          "batch_inputs": 2}
    total = Explanation(np.zeros((2, 3)), [0, 1], [0.5, 0.7], "m", diagnostics={"forward_passes": 9})
    assert total.input_diagnostics(0) == {"batch_forward_passes": 9, "batch_inputs": 2}
