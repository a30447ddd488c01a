"""`onnxplain explain --method lrp|deep-taylor` from the command line: files, JSON, and user errors."""
from __future__ import annotations

import json

import numpy as np
from cli_runner import run
from click.testing import CliRunner

import onnxplain
from onnxplain.cli.main import cli
from onnxplain.lrp import LRP, DeepTaylor


def test_lrp_composite_rule_npy_and_json(digits_cnn, tmp_path):
    sample = digits_cnn.parent / "samples" / "digit3_cnn.npy"
    out = tmp_path / "relevance.npy"
    result = run("explain", digits_cnn, sample, "--method", "lrp", "--composite", "epsilon-gamma-box",
                 "--rule", "Gemm=epsilon:0.25", "--rule", "node_conv2d_1=alpha2beta1", "--save-npy", out, "--json",
                 "--quiet")
    assert result.exit_code == 0, result.output
    saved = np.load(out)
    assert saved.shape == (1, 28, 28)  # the input's own shape: no batch axis
    model = onnxplain.load(digits_cnn)
    expected = LRP("epsilon-gamma-box", rules={"Gemm": "epsilon:0.25", "node_conv2d_1": "alpha2beta1"},
                   progress=False).explain(model, np.load(sample)[None])
    np.testing.assert_allclose(saved, expected.relevance[0], rtol=1e-6, atol=1e-9)
    (entry,) = json.loads(result.stdout)
    assert entry["method"] == "lrp" and entry["target"]["index"] == 3
    assert abs(entry["score"] - model.logits(np.load(sample)[None])[0, 3]) < 1e-4
    assert abs(entry["relevance_sum"] - saved.sum()) < 1e-3
    rules = {layer["node"]: layer["rule"] for layer in entry["diagnostics"]["layers"]}
    assert rules == {"node_conv2d": "zb", "node_conv2d_1": "alphabeta", "node_linear": "epsilon",
                     "node_linear_1": "epsilon"}


def test_deep_taylor_on_the_logistic_regression(digits_logreg, tmp_path):
    sample = digits_logreg.parent / "samples" / "digit7_logreg.npy"
    out = tmp_path / "dt.npy"
    result = run("explain", digits_logreg, sample, "--method", "deep-taylor", "--target", "7", "--save-npy", out,
                 "--json", "--quiet")
    assert result.exit_code == 0, result.output
    saved = np.load(out)
    assert saved.shape == (64,)
    model = onnxplain.load(digits_logreg)
    expected = DeepTaylor(progress=False).explain(model, np.load(sample)[None], onnxplain.targets.Target(index=7))
    np.testing.assert_allclose(saved, expected.relevance[0], rtol=1e-6)
    (entry,) = json.loads(result.stdout)
    raw = model.torch().logits(np.load(sample)[None])[0, 7].item()
    assert abs(entry["score"] - raw) < 1e-4  # relevance starts at the raw score under the softmax
    assert entry["diagnostics"]["layers"][0]["rule"] == "zb"
    assert abs(entry["diagnostics"]["conservation_error"]) < 1e-5


def test_lrp_user_errors_exit_2(digits_cnn):
    sample = digits_cnn.parent / "samples" / "digit3_cnn.npy"
    for extra, message in ((["--rule", "Conv=magic"], "unknown LRP rule"),
                           (["--rule", "nothing*=epsilon"], "matches no"),
                           (["--composite", "nope"], "unknown composite")):
        result = run("explain", digits_cnn, sample, "--method", "lrp", "--quiet", *extra)
        assert result.exit_code == 2 and message in result.output, result.output
    result = run("explain", digits_cnn, sample, "--method", "deep-taylor", "--composite", "lrp-0", "--quiet")
    assert result.exit_code == 2 and "--composite" in result.output


def test_json_names_the_explained_hidden_unit(digits_cnn):
    """With --layer, the JSON target says which tensor, channel and unit were explained."""
    sample = digits_cnn.parent / "samples" / "digit3_cnn.npy"
    result = CliRunner().invoke(cli, ["explain", str(digits_cnn), str(sample), "--layer", "relu_1", "--target",
                                      "3,4,5", "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["target"] == {"layer": "relu_1", "channel": 3, "unit": [3, 4, 5]}


def test_epsilon_option_and_truthful_options_against_a_hand_computation(tmp_path):
    """One Gemm, z = w.x + b; the epsilon rule gives R_i = x_i w_i z / (z + eps sign z). With z = 1 and --epsilon 1
    each R_i is half of x_i w_i; an override's own epsilon (1e-9) wins over --epsilon, and then the JSON options
    name the rule that ran and claim no epsilon that no node used."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.array([[0.5, -0.25, 1.0], [2.0, 1.0, -1.0]], np.float32)       # (classes, features)
    bias = np.array([-0.75, 0.0], np.float32)
    x = np.array([1.0, 2.0, 1.75], np.float32)                                  # z_0 = 1.75 - 0.75 = 1
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "w", "b"], ["logits"], transB=1)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
                              [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), tmp_path / "g.onnx")
    np.save(tmp_path / "x.npy", x)
    z = float(weight[0] @ x + bias[0])
    assert z == 1.0
    contributions = x.astype(np.float64) * weight[0]

    def explain(*extra):
        result = run("explain", tmp_path / "g.onnx", tmp_path / "x.npy", "--method", "lrp", "--target", 0,
                     "--save-npy", tmp_path / "r.npy", "--json", "--quiet", *extra)
        assert result.exit_code == 0, result.output
        return np.load(tmp_path / "r.npy"), json.loads(result.stdout)[0]["options"]

    relevance, options = explain("--epsilon", 1)
    np.testing.assert_allclose(relevance, contributions * z / (z + 1.0), rtol=1e-6)
    assert options["epsilon"] == 1.0 and options["applied_rules"] == {"epsilon:1": 1}
    assert "gamma" not in options and "stabilizer" not in options    # no gamma rule, no stabilised rule ran
    relevance, options = explain()
    np.testing.assert_allclose(relevance, contributions * z / (z + 1e-6), rtol=1e-6)
    assert options["epsilon"] == 1e-6 and options["applied_rules"] == {"epsilon:1e-06": 1}
    relevance, options = explain("--epsilon", 1, "--rule", "*=epsilon:1e-9")
    np.testing.assert_allclose(relevance, contributions, rtol=1e-6)
    assert options["rules"] == {"*": "epsilon:1e-9"} and options["applied_rules"] == {"epsilon:1e-09": 1}
    assert "epsilon" not in options
    result = run("explain", tmp_path / "g.onnx", tmp_path / "x.npy", "--composite", "lrp-0", "--epsilon", 1)
    assert result.exit_code == 2 and "composite 'lrp-0' has no epsilon rule" in result.stderr   # not ignored
    relevance, options = explain("--composite", "lrp-0", "--epsilon", 1, "--rule", "Gemm=epsilon")
    np.testing.assert_allclose(relevance, contributions * z / (z + 1.0), rtol=1e-6)
    result = run("explain", tmp_path / "g.onnx", tmp_path / "x.npy", "--method", "deep-taylor", "--epsilon", 1)
    assert result.exit_code == 2 and "--epsilon do not apply to --method deep-taylor" in result.stderr
    result = run("explain", tmp_path / "g.onnx", tmp_path / "x.npy", "--method", "lrp", "--epsilon", -1)
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "epsilon must be at least 0" in result.stderr
