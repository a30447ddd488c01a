"""Every torch-device method on `ONNXPLAIN_TEST_DEVICE` (a GPU) against the same method on the CPU.

Skipped unless that variable names a device (CI has no GPU; see `tests/devices.py`). The shipped models cover the
exporters (torch, Keras via tf2onnx, PaddlePaddle, scikit-learn), a vision transformer and 1-D sequences; two zoo
graphs add BatchNorm merging (ResNet-50) and Caffe's LRN (GoogLeNet). Agreement: max |device - CPU| <= 1e-4 of
max |R| on the shipped models. The zoo graphs carry random weights over 50+ layers: there a unit whose
pre-activation is within rounding of 0 can switch its ReLU on one device and not the other, which moves a gradient
path (forward outputs stay within 1e-4) and the relevance less (it is weighted by activations). There: LRP within
1e-3 of max |R|, the gradient within 1e-2 in the L2 norm.
"""
from __future__ import annotations

import numpy as np
import pytest

import onnxplain
from devices import DEVICE, REQUESTED
from onnxplain.methods import make_method
from onnxplain.targets import Target

pytestmark = pytest.mark.skipif(REQUESTED is None, reason="set ONNXPLAIN_TEST_DEVICE (e.g. cuda) to run")

METHODS = {"lrp": {}, "deep-taylor": {}, "gradient": {}, "sensitivity": {}, "gradient-x-input": {},
           "smoothgrad": dict(samples=8), "integrated-gradients": dict(steps=16), "occlusion": dict(window=4),
           "pda": dict(window=4, samples=10, sampler="marginal")}
SHIPPED = ["digits_cnn", "digits_vit", "digits_paddle", "digits_keras_tf", "two_digits", "digits_logreg",
           "sequence_keras_tf"]


def inputs(samples, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(four test inputs, ten reference inputs) in the model's own layout."""
    if name == "sequence_keras_tf":
        x = np.load(samples / "sequence_keras_tf_check.npz")["inputs"]
        return x[:4], x[4:14]
    if name == "digits_logreg":
        x = np.load(samples / "digits_test100_logreg.npy")
        return x[:4].astype(np.float32), np.load(samples / "digits_reference_logreg.npy")[:10].astype(np.float32)
    x = np.load(samples / "digits_test100_cnn.npy")[:4].astype(np.float32)
    ref = np.load(samples / "digits_reference_cnn.npy")[:10].astype(np.float32)
    if name == "digits_keras_tf":
        return x.transpose(0, 2, 3, 1), ref.transpose(0, 2, 3, 1)
    if name == "two_digits":
        return np.concatenate([x, x[::-1]], axis=3), np.concatenate([ref, ref[::-1]], axis=3)
    return x, ref


def assert_agree(method: str, params: dict, model, x, target=None, tolerance=1e-4, norm=np.inf):
    params = dict(params, progress=False)
    on_cpu = make_method(method, device="cpu", **params).attribute(model, x, target)
    on_device = make_method(method, device=str(DEVICE), **params).attribute(model, x, target)
    assert on_device.shape == on_cpu.shape
    difference = np.linalg.norm((on_device - on_cpu).ravel(), norm)
    assert difference <= tolerance * max(np.linalg.norm(on_cpu.ravel(), norm), 1e-12), method


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("method", list(METHODS))
def test_shipped_models(name, method, digits_cnn):
    model = onnxplain.load(digits_cnn.parent / f"{name}.onnx")
    x, reference = inputs(digits_cnn.parent / "samples", name)
    params = dict(METHODS[method])
    if method == "pda":
        params["reference"] = reference
    if name == "digits_logreg" and method in ("occlusion", "pda"):
        params["window"] = 1
    assert_agree(method, params, model, x)


@pytest.mark.parametrize("zoo", ["resnet50", "inception_v1"])
@pytest.mark.parametrize("method", ["lrp", "deep-taylor", "gradient"])
def test_zoo_graphs(zoo, method, zoo_path):
    model = onnxplain.load(zoo_path(zoo))
    x = np.random.default_rng(0).uniform(-1, 1, size=(2, *model.input_shape[1:])).astype(np.float32)
    lrp = method != "gradient"
    assert_agree(method, {}, model, x, tolerance=1e-3 if lrp else 1e-2, norm=np.inf if lrp else 2)


def test_hidden_target(digits_cnn_model, digits_cnn):
    x, _ = inputs(digits_cnn.parent / "samples", "digits_cnn")
    hidden = digits_cnn_model.torch().graph.steps[2].outputs[0]
    for method in ("lrp", "gradient"):
        assert_agree(method, {}, digits_cnn_model, x, Target(hidden, 3))


def test_contrast_runs_on_the_device(digits_cnn_model, digits_cnn):
    from onnxplain.methods.contrastive import CDeepEx

    x, _ = inputs(digits_cnn.parent / "samples", "digits_cnn")
    fast = dict(restarts=2, fit_steps=60, outer_steps=4, progress=False)
    generator = str(digits_cnn.parent / "digits_generator.onnx")
    cpu = CDeepEx(generator, **fast).explain(digits_cnn_model, x[:2])
    device = CDeepEx(generator, device=str(DEVICE), **fast).explain(digits_cnn_model, x[:2])
    assert np.isfinite(device.relevance).all()
    np.testing.assert_array_equal(device.diagnostics["true_class"], cpu.diagnostics["true_class"])
    np.testing.assert_array_equal(device.diagnostics["probe_class"], cpu.diagnostics["probe_class"])
