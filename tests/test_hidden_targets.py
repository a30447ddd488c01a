"""Hidden-tensor targets name channels the same way whatever the tensor's layout.

tf2onnx's Keras graphs hold convolutions channels-first, and transpose the last map back to channels-last before
the flatten: `Transpose__34:0` (N, 7, 7, 16) holds exactly the numbers of the max pooling before it (N, 16, 7, 7).
Channel c (and unit (c, y, x)) of either tensor is the same set of units, so every method must give the same
explanation for both; before the channel axis was traced, channel 5 of the channels-last tensor was its row 5.
"""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import onnx
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain.errors import OnnxplainError
from onnxplain.methods import make_method
from onnxplain.targets import Target, parse_target, tensor_channel_axis

from conftest import MODELS

LAST, FIRST = "Transpose__34:0", "sequential_1/max_pooling2d_1_2/MaxPool2d:0"


@pytest.fixture(scope="module")
def keras():
    model = onnxplain.load(MODELS / "digits_keras_tf.onnx")
    x = np.load(MODELS / "samples" / "digit3_cnn.npy").transpose(1, 2, 0)[None]   # NHWC, like the model
    return model, np.concatenate([x, x[:, ::-1]])


def test_the_channel_axis_is_traced_through_transposes(keras):
    model, _ = keras
    assert tensor_channel_axis(model, LAST) == 3 and tensor_channel_axis(model, FIRST) == 1
    assert parse_target(model, "5", LAST) == Target(LAST, 5, None, 3)
    assert tensor_channel_axis(model, "sequential_1/dense_1/Relu:0") == 1   # a dense layer's features

    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("Transpose", ["c"], ["last"], perm=[0, 2, 3, 1]),
             helper.make_node("Relu", ["last"], ["r"]),
             helper.make_node("Add", ["r", "r"], ["sum"]),
             helper.make_node("Transpose", ["sum"], ["odd"], perm=[0, 3, 1, 2]),
             helper.make_node("Transpose", ["odd"], ["back"], perm=[0, 2, 1, 3])]
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 9, 9])],
                              [helper.make_tensor_value_info("back", TensorProto.FLOAT, None)], [weight])
    built = SimpleNamespace(proto=helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    assert [tensor_channel_axis(built, name) for name in ("c", "last", "r", "sum", "odd", "back", "x")] == \
        [1, 3, 3, 3, 1, 2, 1]


@pytest.mark.parametrize("method, params", [("gradient", {}), ("lrp", {}), ("occlusion", {"window": 7}),
                                            ("pda", {"window": 7, "stride": 7, "samples": 3, "sampler": "marginal"})])
@pytest.mark.parametrize("unit", [None, (5, 2, 3)])
def test_every_method_explains_the_same_units_in_either_layout(keras, method, params, unit):
    model, x = keras
    if method == "pda":
        params = dict(params, reference=np.load(MODELS / "samples" / "digits_reference_cnn.npy")[:3]
                      .transpose(0, 2, 3, 1))
    explain = make_method(method, progress=False, **params).explain
    last = explain(model, x, Target(LAST, 5, unit))
    first = explain(model, x, Target(FIRST, 5, unit))
    expected = model.run(x, [FIRST])[FIRST][:, 5]
    expected = expected[:, unit[1], unit[2]] if unit else expected.reshape(len(x), -1).mean(axis=1)
    np.testing.assert_allclose(first.score, expected, rtol=1e-5)
    np.testing.assert_allclose(last.score, first.score, rtol=1e-6)
    np.testing.assert_allclose(last.relevance, first.relevance, rtol=1e-5, atol=1e-7)
    assert np.abs(first.relevance).max() > 0


def test_an_explicit_axis_is_kept(keras):
    """Target(axis=...) names the layout where the graph cannot tell; here it overrides the traced one."""
    model, x = keras
    rows = make_method("gradient", progress=False).explain(model, x, Target(LAST, 5, axis=1))
    values = model.run(x, [LAST])[LAST][:, 5]
    np.testing.assert_allclose(rows.score, values.reshape(len(x), -1).mean(axis=1), rtol=1e-5)
    with pytest.raises(OnnxplainError, match="channel axis 4 is out of range"):
        make_method("gradient", progress=False).explain(model, x, Target(LAST, 5, axis=4))


def test_the_json_record_names_the_axis(tmp_path):
    """`explain --layer` on a channels-last tensor reports the channel axis it read; the map equals the
    channels-first tensor's."""
    from click.testing import CliRunner

    from onnxplain.cli.main import cli

    records = []
    for layer in (LAST, FIRST):
        out = tmp_path / f"{len(records)}.npy"
        result = CliRunner().invoke(cli, ["explain", str(MODELS / "digits_keras_tf.onnx"),
                                          str(MODELS / "samples" / "digit3.png"), "--method", "gradient", "--layer",
                                          layer, "--target", "5,2,3", "--json", "--quiet", "--save-npy", str(out)])
        assert result.exit_code == 0, result.output
        records.append((json.loads(result.stdout)[0]["target"], np.load(out)))
    assert records[0][0] == {"layer": LAST, "channel": 5, "unit": [5, 2, 3], "channel_axis": 3}
    assert records[1][0] == {"layer": FIRST, "channel": 5, "unit": [5, 2, 3]}
    np.testing.assert_array_equal(records[0][1], records[1][1])


@pytest.mark.parametrize("target, named", [("5", "relu_1 channel 5"), ("5,2,3", "relu_1 unit 5,2,3")])
def test_lines_and_titles_name_the_channel_or_unit(target, named, tmp_path, monkeypatch):
    """Two channels of one layer gave the same line and picture title ('for relu_1'), though the score differs."""
    from click.testing import CliRunner

    from onnxplain import viz
    from onnxplain.cli.main import cli

    titles, figure = [], viz.sample_figure
    monkeypatch.setattr(viz, "sample_figure", lambda *a, title="", **k: titles.append(title) or figure(*a, **k))
    result = CliRunner().invoke(cli, ["explain", str(MODELS / "digits_cnn.onnx"), str(MODELS / "samples" /
                                      "digit3.png"), "--method", "gradient", "--layer", "relu_1", "--target", target,
                                      "--quiet", "--out", str(tmp_path / "r.png")])
    assert result.exit_code == 0, result.output
    assert f"gradient for layer {named} (score " in result.stdout
    assert len(titles) == 1 and titles[0].startswith(f"digit3.png: gradient for {named} (score ")


def test_channels_last_through_layer_norm_and_dense_layers(tmp_path):
    """A ConvNeXt block runs channels-last: Transpose, LayerNormalization over the channels, a dense layer (MatMul,
    Add), Transpose back. Channel 2 of the dense layer's (N, 6, 6, 4) output is channel 2 of the map it is
    transposed back to; it was read as row 2 (the trace stopped at LayerNormalization and MatMul)."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), name)
               for name, shape in [("k", (4, 2, 3, 3)), ("scale", (4,)), ("shift", (4,)), ("w", (4, 4)), ("b", (4,)),
                                   ("head", (144, 3))]]
    nodes = [helper.make_node("Conv", ["x", "k"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Transpose", ["c"], ["t"], perm=[0, 2, 3, 1]),
             helper.make_node("LayerNormalization", ["t", "scale", "shift"], ["ln"]),
             helper.make_node("MatMul", ["ln", "w"], ["mm"]), helper.make_node("Add", ["mm", "b"], ["dense"]),
             helper.make_node("Transpose", ["dense"], ["back"], perm=[0, 3, 1, 2]),
             helper.make_node("Flatten", ["back"], ["flat"]), helper.make_node("MatMul", ["flat", "head"], ["y"])]
    graph = helper.make_graph(nodes, "convnext", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                ["N", 2, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], weights)
    path = tmp_path / "block.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    model = onnxplain.load(path)
    assert [tensor_channel_axis(model, name) for name in ("t", "ln", "mm", "dense", "back")] == [3, 3, 3, 3, 1]
    x = rng.random((2, 2, 6, 6)).astype(np.float32)
    gradient = make_method("gradient", progress=False)
    for channel, unit in ((2, None), (2, (2, 1, 3))):
        last = gradient.explain(model, x, Target("dense", channel, unit))
        first = gradient.explain(model, x, Target("back", channel, unit))
        np.testing.assert_allclose(last.score, first.score, rtol=1e-6)
        np.testing.assert_allclose(last.relevance, first.relevance, rtol=1e-5, atol=1e-7)
