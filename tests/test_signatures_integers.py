"""Models taking integers (token ids into an embedding): prediction difference samples values the input can hold.
Models taking booleans are named as such in one line."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain.cli.main import cli
from onnxplain.methods.pda import PredictionDifference

RNG = np.random.default_rng(5)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """int64 ids (N, 7) -> Gather from a 20 x 5 embedding -> mean over tokens -> dense (3 classes)."""
    folder = tmp_path_factory.mktemp("tokens")
    weights = [numpy_helper.from_array(RNG.normal(size=(20, 5)).astype(np.float32), "embedding"),
               numpy_helper.from_array(RNG.normal(size=(5, 3)).astype(np.float32), "w")]
    graph = helper.make_graph([helper.make_node("Gather", ["embedding", "ids"], ["e"]),
                               helper.make_node("ReduceMean", ["e"], ["m"], axes=[1], keepdims=0),
                               helper.make_node("MatMul", ["m", "w"], ["y"])], "tokens",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 7])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), folder / "tokens.onnx")
    np.save(folder / "ids.npy", RNG.integers(0, 20, (2, 7)))
    np.save(folder / "reference.npy", RNG.integers(0, 20, (12, 7)))
    return folder


def test_conditional_sampling_of_token_ids_is_refused(files):
    """Gaussian draws were cast to int64, each truncated to some other token id; the marginal sampler draws the
    reference's own ids."""
    model = onnxplain.load(files / "tokens.onnx")
    x, reference = np.load(files / "ids.npy"), np.load(files / "reference.npy")
    with pytest.raises(onnxplain.OnnxplainError, match="conditional sampler draws real values.*--sampler marginal"):
        PredictionDifference(reference=reference, progress=False).explain(model, x)
    fed = []
    run = model.run
    model.run = lambda batch, *args, **kwargs: fed.append(np.array(batch)) or run(batch, *args, **kwargs)
    explanation = PredictionDifference(sampler="marginal", samples=4, reference=reference, progress=False).explain(
        model, x)
    assert np.isfinite(explanation.relevance).all() and explanation.relevance.any()
    assert all(np.isin(batch, np.concatenate([reference, x])).all() for batch in fed)


def test_the_cli_says_which_sampler_to_use(files):
    result = CliRunner().invoke(cli, ["explain", str(files / "tokens.onnx"), str(files / "ids.npy"), "--reference",
                                      str(files / "reference.npy"), "--quiet"])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
    assert "--sampler marginal" in result.stderr
    marginal = CliRunner().invoke(cli, ["explain", str(files / "tokens.onnx"), str(files / "ids.npy"), "--reference",
                                        str(files / "reference.npy"), "--sampler", "marginal", "--quiet"])
    assert marginal.exit_code == 0, marginal.output


def cast_model(folder, name: str, element: int) -> None:
    """`name`.onnx: an (N, 6) input `name` of ONNX type `element`, cast to float, then a dense layer to 3 classes."""
    graph = helper.make_graph([helper.make_node("Cast", [name], ["f"], to=TensorProto.FLOAT),
                               helper.make_node("MatMul", ["f", "w"], ["y"])], name,
                              [helper.make_tensor_value_info(name, element, ["N", 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                              [numpy_helper.from_array(RNG.normal(size=(6, 3)).astype(np.float32), "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), folder / f"{name}.onnx")


def test_a_boolean_input_is_named(tmp_path):
    """A model taking booleans loads (inspect describes it), but no input fits it: every command said 'input dtype
    bool is not a real number type', also of float inputs."""
    cast_model(tmp_path, "mask", TensorProto.BOOL)
    assert CliRunner().invoke(cli, ["inspect", str(tmp_path / "mask.onnx")]).exit_code == 0
    for values in (RNG.random((2, 6)) > 0.5, (RNG.random((2, 6)) > 0.5).astype(np.float32)):
        np.save(tmp_path / "x.npy", values)
        result = CliRunner().invoke(cli, ["explain", str(tmp_path / "mask.onnx"), str(tmp_path / "x.npy"), "--method",
                                          "occlusion"])
        assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
        assert "this model takes bool input 'mask'" in result.stderr


def test_a_string_input_is_refused_on_loading(tmp_path):
    """Strings (a text pipeline's input) have no numpy type to probe with: loading raised a TypeError (a traceback
    from `inspect`); it is one line naming the input."""
    cast_model(tmp_path, "text", TensorProto.STRING)
    result = CliRunner().invoke(cli, ["inspect", str(tmp_path / "text.onnx")])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
    assert "this model takes string input 'text'" in result.stderr
