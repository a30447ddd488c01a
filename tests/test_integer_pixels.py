"""Models that take integer pixels and cast them to float inside the graph (uint8 images, preprocessing in the model):
gradient methods and LRP explain them with respect to the pixel values as real numbers, as the same network taking
float pixels is explained; integers read any other way (token ids into a Gather) still refuse, in one line."""
from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
import torch
from cli_runner import run
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

import onnxplain
from onnxplain.bounds import input_bounds
from onnxplain.errors import OnnxplainError
from onnxplain.lrp import LRP, DeepTaylor, unsupported_ops
from onnxplain.methods import make_method
from onnxplain.targets import Target

import legacy_export

captum_attr = pytest.importorskip("captum.attr")
pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")]
RNG = np.random.default_rng(0)
GRADIENT_METHODS = ["gradient", "sensitivity", "gradient-x-input", "smoothgrad", "integrated-gradients"]


def save(path, nodes, weights, element: int, shape: list, classes: int):
    graph = helper.make_graph(nodes, path.stem, [helper.make_tensor_value_info("x", element, ["N", *shape])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", classes])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def conv_graph(folder, pixels: bool, channels_last: bool = False):
    """x -> Cast to float -> Div by 255 -> Conv -> Relu -> GlobalAveragePool -> Flatten (4 classes), taking uint8;
    without pixels, the same graph without the Cast, taking float32. channels_last: (N, 8, 8, 3) through a Transpose
    (a shape-only op before the Cast)."""
    name, nodes = "x", []
    if channels_last:
        nodes.append(helper.make_node("Transpose", [name], ["nchw"], perm=[0, 3, 1, 2]))
        name = "nchw"
    if pixels:
        nodes.append(helper.make_node("Cast", [name], ["xf"], to=TensorProto.FLOAT))
        name = "xf"
    nodes += [helper.make_node("Div", [name, "s"], ["xs"]), helper.make_node("Conv", ["xs", "W"], ["c"]),
              helper.make_node("Relu", ["c"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["p"]),
              helper.make_node("Flatten", ["p"], ["y"])]
    weights = [numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32), "W"),
               numpy_helper.from_array(np.array(255, np.float32), "s")]
    path = folder / f"{'u8' if pixels else 'float'}{'_nhwc' if channels_last else ''}.onnx"
    element = TensorProto.UINT8 if pixels else TensorProto.FLOAT
    return save(path, nodes, weights, element, [8, 8, 3] if channels_last else [3, 8, 8], 4)


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """{(pixels, channels_last): model} and uint8 images (N, 3, 8, 8)."""
    folder = tmp_path_factory.mktemp("pixels")
    models = {(p, last): onnxplain.load(conv_graph(folder, p, last)) for p in (True, False) for last in (False, True)}
    return models, RNG.integers(0, 256, (3, 3, 8, 8)).astype(np.uint8)


class PixelNet(torch.nn.Module):
    """Takes pixels 0..255 and scales them itself (`x.float() / 255`), as models exported with preprocessing do."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.head = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
                                        torch.nn.Linear(4 * 4 * 4, 5))

    def forward(self, x):
        return self.head(self.conv(x.float() / 255))


@pytest.fixture(scope="module")
def pixel_net(tmp_path_factory):
    """(torch net, its uint8 export, its float32 export, uint8 pixels)."""
    torch.manual_seed(3)
    net, folder = PixelNet().eval(), tmp_path_factory.mktemp("pixel_net")
    exported = [onnxplain.load(legacy_export.export(net, folder / f"{dtype}.onnx", (2, 3, 8, 8), 17, dtype))
                for dtype in (torch.uint8, torch.float32)]
    return net, *exported, RNG.integers(0, 256, (3, 3, 8, 8)).astype(np.uint8)


def relative(ours: np.ndarray, reference) -> float:
    reference = np.asarray(reference.detach() if hasattr(reference, "detach") else reference, np.float64)
    assert np.abs(reference).max() > 0, "a vacuous comparison: the reference is all zero"
    return float(np.abs(ours.astype(np.float64) - reference).max() / np.abs(reference).max())


def test_gradients_equal_captum_on_the_float_network(pixel_net):
    """The uint8 export explained like the torch net fed the same pixels as floats: gradient, gradient x input,
    integrated gradients (the 'min' baseline of uint8 is 0) and SmoothGrad (noise of sigma times 255)."""
    net, model, _, x = pixel_net
    pixels = torch.from_numpy(x.astype(np.float32))
    with torch.no_grad():
        targets = net(pixels).argmax(1).tolist()
    ours = make_method("gradient", progress=False).explain(model, x)
    assert ours.relevance.dtype == np.float32 and ours.relevance.shape == x.shape
    assert relative(ours.relevance, captum_attr.Saliency(net).attribute(pixels, target=targets, abs=False)) < 1e-5
    ours = make_method("gradient-x-input", progress=False).explain(model, x)
    assert relative(ours.relevance, captum_attr.InputXGradient(net).attribute(pixels, target=targets)) < 1e-5
    ours = make_method("integrated-gradients", steps=16, progress=False).explain(model, x)
    reference = captum_attr.IntegratedGradients(net).attribute(pixels, baselines=0.0, target=targets, n_steps=16)
    assert relative(ours.relevance, reference) < 1e-5
    sigma, samples, seed = 0.1, 6, 4
    ours = make_method("smoothgrad", samples=samples, sigma=sigma, seed=seed, progress=False).explain(model, x)
    tunnel, reference = captum_attr.NoiseTunnel(captum_attr.Saliency(net)), []
    for i in range(len(x)):
        torch.manual_seed(seed)
        reference.append(tunnel.attribute(pixels[i:i + 1], nt_type="smoothgrad", nt_samples=samples,
                                          stdevs=sigma * 255, target=targets[i:i + 1], abs=False))
    assert relative(ours.relevance, torch.cat(reference)) < 1e-5
    np.testing.assert_allclose(ours.diagnostics["noise_std"], sigma * 255, rtol=1e-6)


@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_every_gradient_method_equals_the_float_export(pixel_net, name):
    net, model, float_model, x = pixel_net
    ours = make_method(name, progress=False).explain(model, x)
    reference = make_method(name, progress=False).explain(float_model, x.astype(np.float32))
    assert ours.relevance.dtype == np.float32
    assert relative(ours.relevance, reference.relevance) < 1e-6
    np.testing.assert_allclose(ours.score, reference.score, rtol=1e-6)


def test_the_executor_differentiates_real_points_between_pixels(pixel_net):
    """`gradient()` of the uint8 model (a raw torch RuntimeError before) at the pixels and at points between them:
    the surrogate is the graph after the Cast, the float export's."""
    net, model, float_model, x = pixel_net
    for points in (x, x + np.float32(0.5), x.astype(np.float32) - 3.25):
        grads, values = model.torch().gradient(points, Target(index=1))
        want, want_values = float_model.torch().gradient(points.astype(np.float32), Target(index=1))
        assert grads.dtype == np.float32 and relative(grads, want) < 1e-6
        np.testing.assert_allclose(values, want_values, rtol=1e-6)
    np.testing.assert_allclose(model.torch().gradient(x, Target(index=1))[1], model.logits(x)[:, 1], rtol=1e-5)


@pytest.mark.parametrize("method", [LRP("epsilon-plus", progress=False), LRP("epsilon-gamma-box", progress=False),
                                    DeepTaylor(progress=False)], ids=lambda method: method.composite)
@pytest.mark.parametrize("channels_last", [False, True])
def test_lrp_equals_lrp_on_the_float_graph(graphs, method, channels_last):
    """The Cast routes relevance to the pixels; z^B's box is the guessed spec's 0..255, as for float pixels."""
    models, x = graphs
    x = x.transpose(0, 2, 3, 1).copy() if channels_last else x
    assert unsupported_ops(models[True, channels_last]) == []
    ours = method.explain(models[True, channels_last], x)
    reference = method.explain(models[False, channels_last], x.astype(np.float32))
    assert ours.relevance.dtype == np.float32 and ours.relevance.shape == x.shape
    np.testing.assert_allclose(ours.relevance, reference.relevance, rtol=1e-6,
                               atol=1e-6 * np.abs(reference.relevance).max())
    assert np.abs(reference.relevance).max() > 0 and ours.params == reference.params
    assert np.abs(ours.diagnostics["conservation_error"]).max() < 1e-4


def test_lrp_of_the_torch_export_equals_that_of_its_float_twin(pixel_net):
    _, model, float_model, x = pixel_net
    ours = LRP(progress=False).explain(model, x)
    reference = LRP(progress=False).explain(float_model, x.astype(np.float32))
    assert relative(ours.relevance, reference.relevance) < 1e-6
    assert np.abs(ours.diagnostics["conservation_error"]).max() < 1e-4


def dense_graph(folder, element: int, first: str = "Div", constant: float = 255.0):
    """(N, 12) -> [Cast to float] -> `first` by a constant -> MatMul to 3 classes: no spec is guessed for it."""
    nodes = [helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT)] if element != TensorProto.FLOAT else []
    nodes += [helper.make_node(first, ["xf" if nodes else "x", "s"], ["xs"]), helper.make_node("MatMul", ["xs", "w"],
                                                                                              ["y"])]
    weights = [numpy_helper.from_array(np.random.default_rng(1).normal(size=(12, 3)).astype(np.float32), "w"),
               numpy_helper.from_array(np.array(constant, np.float32), "s")]
    return onnxplain.load(save(folder / f"dense_{element}_{first}.onnx", nodes, weights, element, [12], 3))


def test_without_a_spec_the_box_is_the_range_of_uint8(tmp_path):
    """z^B, SmoothGrad's noise and the executor's probes take 0..255 from the input's type (the probes were all
    zero, and z^B wanted a spec)."""
    model = dense_graph(tmp_path, TensorProto.UINT8)
    assert model.preprocess is None
    fed = []
    run = model.run
    model.run = lambda batch, *args, **kwargs: fed.append(np.array(batch)) or run(batch, *args, **kwargs)
    model.torch()
    assert fed and all(batch.dtype == np.uint8 for batch in fed) and max(batch.max() for batch in fed) > 100
    low, high = input_bounds(model, (2, 12))
    assert (low == 0).all() and (high == 255).all()
    x = RNG.integers(0, 256, (2, 12)).astype(np.uint8)
    box = LRP(rules={"MatMul": "zb"}, progress=False).explain(model, x)
    assert box.params["box_bounds"] == "the range of uint8"
    float_model = dense_graph(tmp_path, TensorProto.FLOAT)
    reference = LRP(rules={"MatMul": "zb"}, low=0.0, high=255.0, progress=False).explain(float_model,
                                                                                        x.astype(np.float32))
    assert relative(box.relevance, reference.relevance) < 1e-6
    noisy = make_method("smoothgrad", samples=2, sigma=0.1, progress=False).explain(model, x)
    np.testing.assert_allclose(noisy.diagnostics["noise_std"], 0.1 * 255, rtol=1e-6)


@pytest.mark.parametrize("element, dtype", [(TensorProto.INT8, np.int8), (TensorProto.UINT16, np.uint16)])
def test_image_shaped_pixels_of_other_types_take_their_types_range(tmp_path, element, dtype):
    """int8 and uint16 pictures are not 0..255: no spec is guessed for them (one was, and its 0..255 refused z^B,
    left SmoothGrad to each sample's own range, and let AOPC's noise wrap around int8), so their type's range is
    the box, the noise's scale and the perturbation's range."""
    from onnxplain.metrics import region_perturbation

    nodes = [helper.make_node("Cast", ["x"], ["f"], to=TensorProto.FLOAT), helper.make_node("Conv", ["f", "w"], ["c"]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["y"])]
    weights = [numpy_helper.from_array(RNG.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")]
    model = onnxplain.load(save(tmp_path / "typed.onnx", nodes, weights, element, [3, 8, 8], 4))
    info = np.iinfo(dtype)
    assert model.preprocess is None
    x = RNG.integers(0, 100, (2, 3, 8, 8)).astype(dtype)
    box = LRP(composite="epsilon-gamma-box", progress=False).explain(model, x)
    assert box.params["box_bounds"] == f"the range of {np.dtype(dtype).name}"
    noisy = make_method("smoothgrad", samples=2, sigma=0.15, progress=False).explain(model, x)
    np.testing.assert_allclose(noisy.diagnostics["noise_std"], 0.15 * (float(info.max) - info.min), rtol=1e-6)
    seen = []
    run = model.run
    model.run = lambda batch, *args, **kwargs: seen.append(np.array(batch)) or run(batch, *args, **kwargs)
    region_perturbation(model, x[:1], RNG.normal(size=x[:1].shape), 0, region=2, steps=16, seed=1)
    replaced = seen[-1][-1]
    assert replaced.dtype == dtype and replaced.min() < 0.25 * info.max + 0.75 * info.min
    assert replaced.max() > 0.75 * info.max + 0.25 * info.min


def test_a_guessed_spec_takes_integer_pixels_unscaled(tmp_path):
    """An image-shaped uint8 input whose graph normalises by mean and std, not by 255: the guessed spec read its
    pixels as 0..1 (so images loaded as fractions, which uint8 cannot hold)."""
    nodes = [helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT), helper.make_node("Sub", ["xf", "m"], ["c"]),
             helper.make_node("Flatten", ["c"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["y"])]
    weights = [numpy_helper.from_array(np.array(127.5, np.float32), "m"),
               numpy_helper.from_array(RNG.normal(size=(3 * 4 * 4, 2)).astype(np.float32), "w")]
    model = onnxplain.load(save(tmp_path / "sub.onnx", nodes, weights, TensorProto.UINT8, [3, 4, 4], 2))
    assert model.preprocess_source == "guessed" and model.preprocess.scale == 1
    assert input_bounds(model, (1, 3, 4, 4))[1].max() == 255


def invoke(*args):
    return run("explain", *args, "--quiet")


@pytest.mark.parametrize("method", ["lrp", "gradient", "smoothgrad", "integrated-gradients"])
def test_the_cli_explains_uint8_arrays_and_pictures(graphs, tmp_path, method):
    """A uint8 .npy and a PNG of the same pixels (read through the guessed spec, scale 1) give the same map."""
    models, x = graphs
    model_path = tmp_path / "u8.onnx"
    onnx.save(models[True, False].proto, model_path)
    np.save(tmp_path / "x.npy", x[0])
    Image.fromarray(x[0].transpose(1, 2, 0)).save(tmp_path / "x.png")
    maps = []
    for source in ("x.npy", "x.png"):
        result = invoke(model_path, tmp_path / source, "--method", method, "--save-npy", tmp_path / f"{source}.r.npy")
        assert result.exit_code == 0, result.output
        maps.append(np.load(tmp_path / f"{source}.r.npy"))
    assert maps[0].dtype == np.float32 and maps[0].shape == x.shape[1:] and np.abs(maps[0]).max() > 0
    np.testing.assert_array_equal(maps[0], maps[1])


def test_integer_pixels_are_batched_as_the_float_activations_they_feed(graphs):
    """Batches are sized by the input's bytes times an activation factor: uint8 pixels feed float32 activations,
    so a uint8 model gets the batches of its float twin, not four times as many samples."""
    models, _ = graphs
    pixels, floats = models[True, False], models[False, False]
    assert pixels.input_dtype == np.uint8 and floats.input_dtype == np.float32
    assert pixels.batch_size(2 ** 24) == floats.batch_size(2 ** 24) > 1


def test_fractions_for_integer_pixels_are_named_as_pixels(graphs, tmp_path):
    """0..1 floats into a uint8 pixel model: refused, naming pixels (the message spoke of token ids)."""
    models, x = graphs
    onnx.save(models[True, False].proto, tmp_path / "u8.onnx")
    np.save(tmp_path / "x.npy", (x[0] / 255).astype(np.float32))
    result = invoke(tmp_path / "u8.onnx", tmp_path / "x.npy")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert "has fractional values, but this model takes uint8 pixels, whole numbers (not 0..1)" in result.stderr


def test_a_spec_that_scales_integer_pixels_is_named(graphs, tmp_path):
    """A spec of scale 1/255 (or a mean/std) on a uint8 model makes fractions of a picture's pixels: the refusal
    names the spec, not the fractions."""
    models, x = graphs
    onnx.save(models[True, False].proto, tmp_path / "u8.onnx")
    Image.fromarray(x[0].transpose(1, 2, 0)).save(tmp_path / "x.png")
    (tmp_path / "spec.json").write_text('{"layout": "NCHW", "color": "rgb", "scale": 0.00392156862745098}')
    result = invoke(tmp_path / "u8.onnx", tmp_path / "x.png", "--preprocess", tmp_path / "spec.json")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert "the given preprocessing spec (scale 0.00392157, mean [0], std [1]) makes fractions of the pixels, but " \
        "this model takes uint8 pixels: give a spec that keeps them whole (scale 1, no mean/std)" in result.stderr


@pytest.fixture(scope="module")
def refusing(tmp_path_factory):
    """Integer inputs without a gradient: int64 token ids into a Gather; uint8 cast to int32 before float."""
    folder = tmp_path_factory.mktemp("refusing")
    table = numpy_helper.from_array(RNG.normal(size=(20, 3)).astype(np.float32), "table")
    tokens = save(folder / "tokens.onnx", [helper.make_node("Gather", ["table", "x"], ["v"]),
                                           helper.make_node("ReduceMean", ["v"], ["y"], axes=[1], keepdims=0)],
                  [table], TensorProto.INT64, [4], 3)
    nodes = [helper.make_node("Cast", ["x"], ["xi"], to=TensorProto.INT32),
             helper.make_node("Cast", ["xi"], ["xf"], to=TensorProto.FLOAT), helper.make_node("MatMul", ["xf", "w"],
                                                                                             ["y"])]
    weights = [numpy_helper.from_array(RNG.normal(size=(4, 3)).astype(np.float32), "w")]
    wide = save(folder / "wide.onnx", nodes, weights, TensorProto.UINT8, [4], 3)
    np.save(folder / "x.npy", RNG.integers(0, 20, (2, 4)).astype(np.int64))
    np.save(folder / "u8.npy", RNG.integers(0, 20, (2, 4)).astype(np.uint8))
    return {"tokens": (tokens, folder / "x.npy", "Gather (v)"), "wide": (wide, folder / "u8.npy", "int32")}


@pytest.mark.parametrize("case", ["tokens", "wide"])
def test_integers_without_a_gradient_refuse_in_one_line(refusing, case):
    path, inputs, reader = refusing[case]
    model = onnxplain.load(path)
    x = np.load(inputs)
    with pytest.raises(OnnxplainError, match=f"gradients need a floating-point input.*{re.escape(reader)}"):
        model.torch().gradient(x, Target())   # a torch RuntimeError escaped
    assert model.torch().gradient(x, Target(), grad=False)[0] is None   # forward passes still run on the integers
    assert reader in unsupported_ops(model)[0]
    for method in ("lrp", "deep-taylor", "gradient", "smoothgrad", "integrated-gradients"):
        result = invoke(path, inputs, "--method", method)
        assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
        assert "floating-point input" in result.stderr and reader in result.stderr


def test_evaluate_defaults_to_gradient_methods_for_pixels_and_aopc_alone(graphs, refusing):
    """uint8 pixels have gradients (evaluate gave them occlusion alone, saying they had none); APEM's fractional
    steps fit no uint8, so AOPC stays alone; token ids keep occlusion."""
    from onnxplain.cli.evaluate_cmd import default_methods, default_metrics

    models, x = graphs
    assert default_methods(models[True, False]) == ("lrp,gradient,sensitivity,smoothgrad", None)
    metrics, note = default_metrics(models[True, False], x)
    assert metrics == "aopc" and "uint8" in note
    methods, note = default_methods(onnxplain.load(refusing["tokens"][0]))
    assert methods == "occlusion" and "Gather (v)" in note
