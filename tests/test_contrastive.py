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
from onnxplain.methods.contrastive import CDeepEx, XGEMs, constraint_report, contrast_map
from onnxplain.methods.generator import Generator
from onnxplain.methods.lagrangian import AugmentedLagrangian, Evaluation
from onnxplain.targets import Target

pytestmark = pytest.mark.usefixtures("one_torch_thread")
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

    def problem(z, rows):
        return Evaluation(((z - a[rows]) ** 2).sum(1), (z[:, 0] + z[:, 1] - 1)[:, None], (z[:, 0] - 0.2)[:, None])

    solver = AugmentedLagrangian(outer_steps=60, tolerance=1e-4)
    result = solver.minimize(a.clone(), problem)
    assert result.converged.all() and (result.stationarity < 1e-3).all()
    expected = torch.tensor([[0.2, 0.8], [0.0, 1.0], [0.2, 0.8]])
    assert torch.allclose(result.z, expected, atol=2e-3)
    # KKT: 2(z - a) + lambda (1, 1) + mu (1, 0) = 0  ->  lambda = -2(z2 - a2), mu = -2(z1 - a1) - lambda
    lam = -2 * (expected[:, 1] - a[:, 1])
    mu = -2 * (expected[:, 0] - a[:, 0]) - lam
    assert torch.allclose(result.equality_multipliers[:, 0], lam, atol=2e-2)
    assert torch.allclose(result.inequality_multipliers[:, 0], mu, atol=2e-2)
    assert result.inequality_multipliers[1, 0] == 0


def circle_problem(a: torch.Tensor, radius: torch.Tensor):
    """min |z - a|^2 s.t. |z|^2 = radius^2 (per row): the answer is radius * a / |a|."""
    def problem(z, rows):
        return Evaluation(((z - a[rows]) ** 2).sum(1), ((z * z).sum(1) - radius[rows] ** 2)[:, None],
                          z.new_zeros(len(z), 0))
    return problem


def test_solver_rows_stop_on_their_own_and_do_not_depend_on_the_batch():
    """A row that has converged is frozen (no further steps, no penalty growth) while a slower row goes on, so a
    row's answer is the same alone as beside others."""
    a = torch.tensor([[1.0, 1.0], [3.0, -1.0], [0.6, 0.8]])
    radius = torch.tensor([1.0, 0.05, 1.0])  # row 1: a small circle far away (slow); row 2 already optimal
    solver = AugmentedLagrangian(tolerance=1e-4)
    together = solver.minimize(a.clone(), circle_problem(a, radius))
    expected = radius[:, None] * a / a.norm(dim=1, keepdim=True)
    assert torch.allclose(together.z, expected, atol=1e-3) and together.converged.all()
    steps = together.outer_steps.tolist()
    assert steps[2] == 1 and steps[0] < steps[1], steps
    assert together.penalty[2] == 1 and torch.equal(together.z[2], a[2])
    for row in (0, 2):
        alone = solver.minimize(a[row:row + 1].clone(), circle_problem(a[row:row + 1], radius[row:row + 1]))
        assert torch.equal(alone.z[0], together.z[row])
        assert alone.outer_steps.item() == steps[row] and alone.penalty.item() == together.penalty[row].item()


def test_constraint_report_by_hand():
    llh = np.log(np.array([[0.45, 0.45, 0.10],     # all hold
                           [0.40, 0.20, 0.40],     # not equal, probe below another class
                           [0.30, 0.30, 0.40]]))   # equal, but another class is more likely (xGEMs' failure)
    report = constraint_report(llh, np.array([0, 0, 0]), np.array([1, 1, 1]), margin=0.1, tolerance=0.02)
    assert report["all"].tolist() == [True, False, False]
    assert report["equal_likelihood"].tolist() == [True, False, True]
    assert report["true_and_probe_top_two"].tolist() == [True, False, False]


# ---------------------------------------------------------------------------------------------------- generators

def write_generator(path, latent, out_shape, weight_rows=None, batch=-1, activation="Sigmoid",
                    latent_type=TensorProto.FLOAT, collapse=False):
    """A linear+`activation` generator latent [N, latent] -> [N, *out_shape]; `weight_rows` != latent makes it
    broken, `batch` 1 hard-codes one sample in its Reshape (while declaring N), `collapse` averages the batch."""
    rows = weight_rows or latent or 12
    size = int(np.prod(out_shape))
    weight = numpy_helper.from_array(np.random.default_rng(0).normal(size=(rows, size)).astype(np.float32), "w")
    shape = numpy_helper.from_array(np.array([batch, *out_shape], dtype=np.int64), "shape")
    nodes = [helper.make_node("MatMul", ["z", "w"], ["m"]), helper.make_node(activation, ["h"], ["s"]),
             helper.make_node("Reshape", ["s", "shape"], ["image"])]
    nodes.insert(1, helper.make_node("ReduceMean", ["m"], ["h"], axes=[0]) if collapse else
                 helper.make_node("Identity", ["m"], ["h"]))
    dims = ["N", latent] if latent is not None else ["N", "k"]
    graph = helper.make_graph(nodes, "generator", [helper.make_tensor_value_info("z", latent_type, dims)],
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", *out_shape])],
                              [weight, shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize("case, message", [
    ("output_shape", "does not fit the classifier's input"),
    ("latent_size", "generator"),
    ("dynamic_latent", "fixed-size float latent"),
    ("integer_latent", "of ONNX type INT64"),
    ("batch_of_one", "must accept a batch axis"),
    ("nan_output", "not finite"),
    ("batch_collapsed", "must keep the batch axis"),
])
def test_bad_generators_are_user_errors_with_exit_code_2(case, message, digits, tmp_path):
    from onnxplain.cli.main import cli

    model, x, _ = digits
    path = tmp_path / f"{case}.onnx"
    if case == "output_shape":
        write_generator(path, 8, (1, 8, 8))
    elif case == "latent_size":  # declares a 5-d latent, but its weights take 12
        write_generator(path, 5, (1, 28, 28), weight_rows=12)
    elif case == "integer_latent":
        write_generator(path, 12, (1, 28, 28), latent_type=TensorProto.INT64)
    elif case == "batch_of_one":  # declares N, runs only one latent at a time
        write_generator(path, 12, (1, 28, 28), batch=1)
    elif case == "nan_output":    # the square root of negative numbers: fine at z = 0, NaN once fitting starts
        write_generator(path, 12, (1, 28, 28), activation="Sqrt")
    elif case == "batch_collapsed":  # one image, whatever the batch
        write_generator(path, 12, (1, 28, 28), collapse=True)
    else:
        write_generator(path, None, (1, 28, 28))
    with pytest.raises(OnnxplainError, match=message):
        CDeepEx(str(path), **FAST).explain(model, x[:1])
    sample = tmp_path / "x.npy"
    np.save(sample, x[0])
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["contrast", str(model.path), str(sample), "--generator", str(path), "--quiet",
                                      "--restarts", "1", "--outer-steps", "2", "--out", str(out),
                                      "--save-npy", str(out), "--json"])
    assert result.exit_code == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not out.exists() and not result.stdout


def test_probe_must_differ_from_the_prediction_and_be_a_class(digits, tmp_path):
    from onnxplain.cli.main import cli

    model, x, generator = digits
    top = int(model.scores(x[:1]).argmax())
    with pytest.raises(OnnxplainError, match="already the predicted class of input 0"):
        CDeepEx(str(generator), **FAST).explain(model, x[:1], Target(index=top))
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    (tmp_path / "labels.txt").write_text("\n".join(names) + "\n")
    sample = tmp_path / "my_digit.npy"
    np.save(sample, x[0])
    result = CliRunner().invoke(cli, ["contrast", str(model.path), str(sample), "--generator", str(generator),
                                      "--labels", str(tmp_path / "labels.txt"), "--probe", names[top], "--quiet"])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert f"probe class {names[top]} is already the predicted class of {sample}" in result.stderr
    with pytest.raises(OnnxplainError, match="hidden-layer"):
        CDeepEx(str(generator), **FAST).explain(model, x[:1], Target("relu", 0))
    with pytest.raises(OnnxplainError, match="not found"):
        CDeepEx("missing.onnx", **FAST).explain(model, x[:1])


@pytest.mark.parametrize("option, value", [("penalty", 0.0), ("penalty", -1.0), ("learning_rate", 0.0),
                                           ("fit_rate", -0.1), ("growth", 0.5), ("batch_size", 0),
                                           ("seed", 2**64), ("seed", -1)])
def test_bad_settings_are_one_line_errors(option, value):
    with pytest.raises(OnnxplainError, match=option) as error:
        CDeepEx("unused.onnx", **{option: value})
    assert "\n" not in str(error.value)


def test_params_hold_every_setting_and_the_widest_seed_is_accepted():
    params = CDeepEx("unused.onnx", penalty=2.0, growth=3.0, fit_rate=0.01, seed=2**64 - 1).params
    assert params["penalty"] == 2.0 and params["growth"] == 3.0 and params["fit_rate"] == 0.01
    assert params["seed"] == 2**64 - 1


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
    expected = log_softmax(model.logits(x[:1]))[0]
    np.testing.assert_allclose([row["llh_input"][str(k)] for k in range(10)], expected, atol=1e-4)
    assert row["constraints_imposed"] == ["equal_likelihood", "true_above_others", "probe_above_others"]
    assert row["converged"] and row["outer_steps"] >= 1 and row["stationarity"] < 0.1


def test_an_input_gets_the_same_answer_alone_or_in_any_batch(digits, cdeepex):
    """Latent starts are drawn per input (seed + digest of the input), and every row of the solver has its own
    state and stopping test: batch mates and order change nothing beyond float rounding (batched convolutions
    round differently for different batch sizes)."""
    model, x, generator = digits
    d = cdeepex.diagnostics
    alone = CDeepEx(str(generator), **FAST).explain(model, x[2:3]).diagnostics
    reordered = CDeepEx(str(generator), **FAST).explain(model, x[[2, 0]]).diagnostics
    for other, row, mine in ((alone, 0, 2), (reordered, 0, 2), (reordered, 1, 0)):
        np.testing.assert_allclose(other["z0"][row], d["z0"][mine], atol=1e-5)
        np.testing.assert_allclose(other["latent_distance"][row], d["latent_distance"][mine], rtol=2e-3)
        np.testing.assert_allclose(other["z_explanation"][row], d["z_explanation"][mine], atol=2e-2)


def test_cdeepex_returns_a_kkt_point(digits, cdeepex):
    """Where only llh(A) = llh(B) is active (every other class far below), a minimum of ||z - z0||^2 on it has
    z_e - z0 parallel to grad h(z_e); checked here from scratch, and the solver's own residual agrees."""
    model, x, generator = digits
    d = cdeepex.diagnostics
    generate, classify = Generator(str(generator), model), model.torch().log_likelihood
    checked = 0
    for i in range(len(x)):
        true, probe = int(d["true_class"][i]), int(d["probe_class"][i])
        z = torch.tensor(d["z_explanation"][i:i + 1], requires_grad=True)
        llh = classify(generate(z) - torch.tensor(d["residual"][i:i + 1]))[0]
        if np.delete(llh.detach().numpy(), [true, probe]).max() > llh[true].item() - 1:
            continue  # a ranking constraint may be active
        (llh[true] - llh[probe]).backward()
        step, gradient = d["z_explanation"][i] - d["z0"][i], z.grad[0].numpy()
        assert abs(step @ gradient) / np.linalg.norm(step) / np.linalg.norm(gradient) > 0.99
        checked += 1
    assert checked >= 2
    assert d["converged"].all() and (d["stationarity"] < 0.1).all(), d["stationarity"]


def test_default_probe_of_a_confident_input_is_its_second_class(digits):
    """At x * 255 the digits CNN is so sure that nine classes have log-likelihoods below log(1e-30): the probe
    must come from the log-softmax of the logits, not from clipped probabilities."""
    model, x, generator = digits
    confident = (x[:1] * 255).astype(np.float32)
    expected = log_softmax(model.logits(confident))
    assert (expected < np.log(1e-30)).sum() >= 2
    quick = dict(restarts=1, fit_steps=1, outer_steps=1, progress=False)
    d = CDeepEx(str(generator), **quick).explain(model, confident).diagnostics
    assert d["probe_class"][0] == np.argsort(-expected[0])[1]
    np.testing.assert_allclose(d["llh_input"], expected, rtol=1e-4)


def test_the_progress_bar_counts_the_fit_and_ends_full(digits, monkeypatch):
    import onnxplain.methods.contrastive as contrastive

    bars = []

    class Bar:
        def __init__(self, total, **_):
            self.total, self.updates = total, []
            bars.append(self)

        def __enter__(self):
            return self

        def __exit__(self, *_):
            return False

        def update(self, count):
            self.updates.append(count)

    monkeypatch.setattr(contrastive, "progress_bar", Bar)
    model, x, generator = digits
    CDeepEx(str(generator), **{**FAST, "fit_steps": 20, "progress": True}).explain(model, x[:2])
    (bar,) = bars
    assert sum(bar.updates) == bar.total == 2 * (20 + FAST["outer_steps"])
    assert bar.updates[:20] == [2] * 20  # one update per Adam step of the fit, before the solver's


def test_save_npy_must_name_an_npy_file(digits, tmp_path):
    from onnxplain.cli.main import cli

    model, x, generator = digits
    sample = tmp_path / "x.npy"
    np.save(sample, x[0])
    result = CliRunner().invoke(cli, ["contrast", str(model.path), str(sample), "--generator", str(generator),
                                      "--out", str(tmp_path / "out"), "--save-npy", str(tmp_path / "out" / "x.png")])
    assert result.exit_code == 2 and "--save-npy writes .npy files" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_a_seed_beyond_64_bits_is_one_line(digits, tmp_path):
    from onnxplain.cli.main import cli

    model, x, generator = digits
    sample = tmp_path / "x.npy"
    np.save(sample, x[0])
    result = CliRunner().invoke(cli, ["contrast", str(model.path), str(sample), "--generator", str(generator),
                                      "--seed", str(2**64)])
    assert result.exit_code == 2 and "--seed" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_xgems_results_are_worded_without_ranking_violations():
    from onnxplain.cli.contrast_cmd import outcome

    flags = {"equal_likelihood": True, "all": False, "true_and_probe_top_two": False}
    assert "violated" not in outcome({"method": "xgems", "constraints": flags})
    assert "imposes no ranking" in outcome({"method": "xgems", "constraints": flags})
    assert outcome({"method": "cdeepex", "constraints": flags}) == "constraints violated"
