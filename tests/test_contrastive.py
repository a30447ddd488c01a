"""CDeepEx / xGEMs: the augmented-Lagrangian solver on a problem with a known answer, the constraint report, the
generator checks (clear errors, exit code 2) and short end-to-end runs on the shipped digits models, checked with
onnxruntime (not the torch executor the method differentiates through)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain.errors import OnnxplainError
from onnxplain.methods.contrastive import CDeepEx, XGEMs, constraint_report, contrast_map, softmax_if_logits
from onnxplain.methods.lagrangian import AugmentedLagrangian, Evaluation
from onnxplain.targets import Target

@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Small tensors: intra-op threads only fight each other (and other tests) on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


FAST = dict(restarts=2, fit_steps=150, outer_steps=12, progress=False)


@pytest.fixture(scope="module")
def digits(digits_cnn):
    model = onnxplain.load(digits_cnn)
    x = np.load(digits_cnn.parent / "samples" / "digits_test100_cnn.npy")[:3]
    return model, x, digits_cnn.parent / "digits_generator.onnx"


@pytest.fixture(scope="module")
def cdeepex(digits):
    model, x, generator = digits
    return CDeepEx(str(generator), **FAST).explain(model, x)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


# ---------------------------------------------------------------------------------------------------- solver

def test_augmented_lagrangian_finds_the_kkt_point():
    """min |z - a|^2 s.t. z1 + z2 = 1, z1 <= 0.2: row 1 has the inequality active, row 2 inactive."""
    a = torch.tensor([[1.0, 1.0], [0.0, 1.0], [3.0, -1.0]])

    def problem(z):
        return Evaluation(((z - a) ** 2).sum(1), (z[:, 0] + z[:, 1] - 1)[:, None], (z[:, 0] - 0.2)[:, None])

    solver = AugmentedLagrangian(outer_steps=60, inner_steps=200, learning_rate=0.05, tolerance=1e-4)
    result = solver.minimize(a.clone(), problem)
    expected = torch.tensor([[0.2, 0.8], [0.0, 1.0], [0.2, 0.8]])
    assert torch.allclose(result.z, expected, atol=2e-3)
    # KKT: 2(z - a) + lambda (1, 1) + mu (1, 0) = 0  ->  lambda = -2(z2 - a2), mu = -2(z1 - a1) - lambda
    lam = -2 * (expected[:, 1] - a[:, 1])
    mu = -2 * (expected[:, 0] - a[:, 0]) - lam
    assert torch.allclose(result.equality_multipliers[:, 0], lam, atol=2e-2)
    assert torch.allclose(result.inequality_multipliers[:, 0], mu, atol=2e-2)
    assert result.inequality_multipliers[1, 0] == 0


def test_constraint_report_by_hand():
    llh = np.log(np.array([[0.45, 0.45, 0.10],     # all hold
                           [0.40, 0.20, 0.40],     # not equal, probe below another class
                           [0.30, 0.30, 0.40]]))   # equal, but another class is more likely (xGEMs' failure)
    report = constraint_report(llh, np.array([0, 0, 0]), np.array([1, 1, 1]), margin=0.1, tolerance=0.02)
    assert report["all"].tolist() == [True, False, False]
    assert report["equal_likelihood"].tolist() == [True, False, True]
    assert report["true_and_probe_top_two"].tolist() == [True, False, False]


# ---------------------------------------------------------------------------------------------------- generators

def write_generator(path, latent, out_shape, weight_rows=None):
    """A linear+sigmoid generator latent [N, latent] -> [N, *out_shape]; `weight_rows` != latent makes it broken."""
    rows = weight_rows or latent or 12
    size = int(np.prod(out_shape))
    weight = numpy_helper.from_array(np.random.default_rng(0).normal(size=(rows, size)).astype(np.float32), "w")
    shape = numpy_helper.from_array(np.array([-1, *out_shape], dtype=np.int64), "shape")
    nodes = [helper.make_node("MatMul", ["z", "w"], ["h"]), helper.make_node("Sigmoid", ["h"], ["s"]),
             helper.make_node("Reshape", ["s", "shape"], ["image"])]
    dims = ["N", latent] if latent is not None else ["N", "k"]
    graph = helper.make_graph(nodes, "generator", [helper.make_tensor_value_info("z", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", *out_shape])], [weight, shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize("case, message", [
    ("output_shape", "does not fit the classifier's input"),
    ("latent_size", "generator"),
    ("dynamic_latent", "fixed-size float latent"),
])
def test_bad_generators_are_user_errors_with_exit_code_2(case, message, digits, tmp_path):
    from onnxplain.cli.main import cli

    model, x, _ = digits
    path = tmp_path / f"{case}.onnx"
    if case == "output_shape":
        write_generator(path, 8, (1, 8, 8))
    elif case == "latent_size":  # declares a 5-d latent, but its weights take 12
        write_generator(path, 5, (1, 28, 28), weight_rows=12)
    else:
        write_generator(path, None, (1, 28, 28))
    with pytest.raises(OnnxplainError, match=message):
        CDeepEx(str(path), **FAST).explain(model, x[:1])
    sample = tmp_path / "x.npy"
    np.save(sample, x[0])
    result = CliRunner().invoke(cli, ["contrast", str(model.path), str(sample), "--generator", str(path), "--quiet"])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_probe_must_differ_from_the_prediction_and_be_a_class(digits):
    model, x, generator = digits
    top = int(model.scores(x[:1]).argmax())
    with pytest.raises(OnnxplainError, match="already the predicted class"):
        CDeepEx(str(generator), **FAST).explain(model, x[:1], Target(index=top))
    with pytest.raises(OnnxplainError, match="hidden-layer"):
        CDeepEx(str(generator), **FAST).explain(model, x[:1], Target("relu", 0))
    with pytest.raises(OnnxplainError, match="not found"):
        CDeepEx("missing.onnx", **FAST).explain(model, x[:1])


def test_committed_biased_classifier_learned_the_square(digits_cnn):
    """digits_cnn_biased8.onnx: clean test 8s are not 8s to it, the same 8s with the square are."""
    import sys

    sys.path.insert(0, str(digits_cnn.parent))
    from build import cnn_input, load_split
    from build_contrastive import plant_square

    model = onnxplain.load(digits_cnn.parent / "digits_cnn_biased8.onnx")
    _, (images, labels) = load_split()
    eights = cnn_input(images[labels == 8])
    assert (model.scores(eights).argmax(1) == 8).mean() < 0.1
    assert (model.scores(plant_square(eights)).argmax(1) == 8).mean() > 0.9
    generator = onnxplain.load(digits_cnn.parent / "digits_generator_biased8.onnx")
    assert generator.input_shape == (None, 12) and generator.torch().graph is not None


# ---------------------------------------------------------------------------------------------------- end to end

def test_cdeepex_reaches_the_boundary_with_the_constraints(digits, cdeepex):
    model, x, _ = digits
    d = cdeepex.diagnostics
    order = np.argsort(-model.scores(x), axis=1)
    assert d["true_class"].tolist() == order[:, 0].tolist() and d["probe_class"].tolist() == order[:, 1].tolist()
    assert d["all"].all(), d["llh_final"]
    # the classifier sees exactly the input at z0 (Delta = G(z0) - I), checked with onnxruntime
    at_start = model.logits(d["start_image"] - d["residual"])
    np.testing.assert_allclose(at_start, model.logits(x), rtol=1e-4, atol=1e-4)
    # the reported final log-likelihoods are those of D(G(z_e) - Delta), again by onnxruntime
    boundary = (d["explanation_image"] - d["residual"]).astype(np.float32)
    np.testing.assert_allclose(d["llh_final"], log_softmax(model.logits(boundary)), atol=1e-3)
    rows = np.arange(len(x))
    llh = d["llh_final"]
    assert np.all(np.abs(llh[rows, d["true_class"]] - llh[rows, d["probe_class"]]) <= 0.02)
    np.testing.assert_allclose(cdeepex.relevance, d["start_image"] - d["explanation_image"], atol=1e-6)
    np.testing.assert_allclose(contrast_map(cdeepex), -cdeepex.relevance)
    assert d["path_llh"].shape[:2] == d["path_z"].shape[:2] and d["path_llh"].shape[0] == len(x)
    np.testing.assert_allclose(d["path_llh"][:, 0], d["llh_input"], atol=1e-3)  # the path starts at the input
    assert np.all(d["latent_distance"] > 0)


def test_xgems_drops_only_the_ranking_constraints(digits, cdeepex):
    model, x, generator = digits
    xgems = XGEMs(str(generator), **FAST).explain(model, x)
    d = xgems.diagnostics
    assert d["equal_likelihood"].all()
    np.testing.assert_allclose(d["z0"], cdeepex.diagnostics["z0"], atol=1e-5)  # same Procedure 2
    assert xgems.method == "xgems" and cdeepex.method == "cdeepex"


def test_contrast_cli_writes_json_png_and_npy(digits, tmp_path):
    from onnxplain.cli.main import cli

    model, x, generator = digits
    sample = tmp_path / "digit.npy"
    np.save(sample, x[0])
    result = CliRunner().invoke(cli, [
        "contrast", str(model.path), str(sample), "--generator", str(generator), "--probe", "9",
        "--restarts", "2", "--outer-steps", "12", "--out", str(tmp_path / "c.png"),
        "--save-npy", str(tmp_path / "c.npy"), "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["probe"]["index"] == 9 and set(row["llh_final"]) == {str(i) for i in range(10)}
    assert set(row["constraints"]) >= {"equal_likelihood", "true_above_others", "probe_above_others", "all"}
    final = row["llh_final"]
    assert row["constraints"]["equal_likelihood"] == (abs(final[row["true"]["label"]] - final["9"]) <= 0.02)
    saved = np.load(tmp_path / "c.npy")
    assert saved.shape == (1, 28, 28) and np.abs(saved).sum() > 0
    assert (tmp_path / "c.png").stat().st_size > 10_000
    probabilities = softmax_if_logits(model, x[:1])
    assert abs(sum(np.exp(v) for v in row["llh_input"].values()) - probabilities.sum()) < 1e-3
