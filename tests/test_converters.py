"""Converters: round trips checked with plain onnxruntime (not through the code under test), metadata, dynamic
batch, refusal to write a model that does not match, Keras files through the CLI (the rest of the CLI's convert
is tests/test_cli_convert.py)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from cli_runner import run
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain.converters import convert_keras, convert_pytorch, convert_sklearn
from onnxplain.converters.common import rename_io
from onnxplain.errors import OnnxplainError
from onnxplain.io.preprocess import LABELS_KEY, METADATA_KEY

from convert_cases import SPEC, SignBranch, ort_run, small_net

torch = pytest.importorskip("torch")


def test_pytorch_round_trip_with_dynamic_batch_and_metadata(tmp_path):
    net = small_net()
    report = convert_pytorch(net, tmp_path / "net.onnx", input_shape=(1, 6, 6), opset=17, input_name="image",
                             output_name="logits", preprocess=SPEC, labels=["a", "b", "c"])
    assert report.max_abs_diff < 1e-5 and report.score_kind == "logits"
    proto = onnx.load(tmp_path / "net.onnx")
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch axis
    assert next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == 17
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta[LABELS_KEY]) == ["a", "b", "c"] and json.loads(meta[METADATA_KEY])["size"] == [6, 6]
    x = np.random.default_rng(3).random((5, 1, 6, 6), dtype=np.float32)  # a batch size the export never saw
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ort_run(tmp_path / "net.onnx", x)[0], expected, rtol=1e-5, atol=1e-5)
    assert onnxplain.load(tmp_path / "net.onnx").labels == ["a", "b", "c"]


def test_pytorch_mismatch_is_refused_and_nothing_is_written(tmp_path):
    samples = np.array([[1.0, 2.0], [-3.0, -1.0], [-2.0, -2.0]], dtype=np.float32)
    with pytest.raises(OnnxplainError, match="differs from the source model"):
        convert_pytorch(SignBranch(), tmp_path / "bad.onnx", samples=samples)
    assert not (tmp_path / "bad.onnx").exists()


def test_an_interrupted_write_leaves_no_partial_model(tmp_path, monkeypatch):
    from onnxplain.converters import common

    def half_then_interrupt(source, target):   # Ctrl-C while the model is copied from /tmp
        Path(target).write_bytes(Path(source).read_bytes()[:10])
        raise KeyboardInterrupt

    monkeypatch.setattr(common.shutil, "move", half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        convert_pytorch(small_net(), tmp_path / "net.onnx", input_shape=(1, 6, 6))
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    return load_digits(return_X_y=True)


@pytest.mark.parametrize("zipmap", [False, True])
def test_sklearn_pipeline_round_trip(tmp_path, digits, zipmap):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = digits
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300)).fit(X[:500], y[:500])
    report = convert_sklearn(classifier, tmp_path / "lr.onnx", samples=X[500:540], zipmap=zipmap)
    assert report.max_abs_diff < 1e-4
    outputs = ort_run(tmp_path / "lr.onnx", X[540:560].astype(np.float32))
    probabilities = outputs[1]
    if zipmap:
        assert isinstance(probabilities, list)  # ZipMap: a list of {class: probability}
        probabilities = np.array([[row[c] for c in range(10)] for row in probabilities])
    else:
        assert isinstance(probabilities, np.ndarray) and probabilities.shape == (20, 10)
    np.testing.assert_allclose(probabilities, classifier.predict_proba(X[540:560]), atol=1e-4)
    np.testing.assert_array_equal(outputs[0], classifier.predict(X[540:560]))
    model = onnxplain.load(tmp_path / "lr.onnx")
    assert model.score_kind == "probabilities" and model.labels == [str(c) for c in range(10)]


def test_an_unfitted_model_or_a_spec_that_does_not_fit_is_refused(tmp_path, digits):
    from sklearn.naive_bayes import GaussianNB

    from onnxplain.io.preprocess import PreprocessSpec

    X, y = digits
    classifier = GaussianNB().fit(X, y)
    wrong = PreprocessSpec(layout="NCHW", size=(28, 28), color="gray")            # 1x28x28, not 64 features
    with pytest.raises(OnnxplainError, match="is not fitted"):
        convert_sklearn(GaussianNB(), tmp_path / "nb.onnx", samples=X[:20])
    with pytest.raises(OnnxplainError, match="makes inputs of shape 1x28x28"):
        convert_sklearn(classifier, tmp_path / "nb.onnx", samples=X[:20], preprocess=wrong)
    assert not (tmp_path / "nb.onnx").exists()
    right = PreprocessSpec(layout="flat", size=(8, 8), color="gray", scale=16 / 255)
    convert_sklearn(classifier, tmp_path / "nb.onnx", samples=X[:20], preprocess=right)
    assert onnxplain.load(tmp_path / "nb.onnx").preprocess.size == (8, 8)


def test_sklearn_string_classes_become_labels(tmp_path, digits):
    from sklearn.tree import DecisionTreeClassifier

    X, y = digits
    names = np.array(["even", "odd"])[y % 2]
    tree = DecisionTreeClassifier(max_depth=4, random_state=0).fit(X, names)
    convert_sklearn(tree, tmp_path / "tree.onnx", samples=X[:50])
    assert onnxplain.load(tmp_path / "tree.onnx").labels == ["even", "odd"]
    probabilities = ort_run(tmp_path / "tree.onnx", X[:50].astype(np.float32))[1]
    np.testing.assert_allclose(probabilities, tree.predict_proba(X[:50]), atol=1e-6)


def test_sklearn_regressor_is_refused(tmp_path, digits):
    from sklearn.linear_model import LinearRegression

    X, y = digits
    with pytest.raises(OnnxplainError, match="predict_proba"):
        convert_sklearn(LinearRegression().fit(X, y), tmp_path / "r.onnx")


def test_keras_names_the_missing_package_when_absent(tmp_path, monkeypatch):
    import onnxplain.converters.keras as keras_converter

    monkeypatch.setattr(keras_converter, "installed", lambda name: False)  # as on a machine without them
    with pytest.raises(OnnxplainError, match="tf2onnx"):
        convert_keras(object(), tmp_path / "k.onnx", input_shape=(4,))
    result = run("convert", "keras", __file__, "--out", tmp_path / "k.onnx")
    assert result.exit_code == 2 and "tf2onnx" in result.stderr


@pytest.fixture
def keras():
    from onnxplain.converters.keras import use_torch_backend_without_tensorflow

    use_torch_backend_without_tensorflow()
    return pytest.importorskip("keras")


def test_keras_round_trip(tmp_path, keras):
    network = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, activation="relu"),
                                keras.layers.Dense(3, activation="softmax")])
    samples = np.random.default_rng(0).random((6, 5), dtype=np.float32)
    report = convert_keras(network, tmp_path / "k.onnx", samples=samples)
    assert report.max_abs_diff < 1e-4
    more = np.random.default_rng(1).random((9, 5), dtype=np.float32)  # another batch size
    np.testing.assert_allclose(ort_run(tmp_path / "k.onnx", more)[0], network.predict(more, verbose=0), atol=1e-5)


def test_keras_token_ids_are_checked_on_ids(tmp_path, keras):
    """An Embedding model takes integer ids: the default check inputs are ids (0 and 1), not fractions that the
    model's own check refused; the written model loads verified (no 'not verified' note)."""
    network = keras.Sequential([keras.Input((6,), dtype="int32"), keras.layers.Embedding(10, 4),
                                keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(3)])
    network.save(tmp_path / "tokens.keras")
    result = run("convert", "keras", tmp_path / "tokens.keras", "--out", tmp_path / "tokens.onnx")
    assert result.exit_code == 0, result.output
    model = onnxplain.load(tmp_path / "tokens.onnx")
    assert np.issubdtype(model.input_dtype, np.integer) and not any("not verified" in n for n in model.notes)
    ids = np.random.default_rng(0).integers(0, 10, size=(3, 6))
    np.testing.assert_allclose(model.logits(ids), network.predict(ids, verbose=0), atol=1e-5)


def test_cli_keras_file(tmp_path, keras):
    network = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    network.save(tmp_path / "m.keras")
    result = run("convert", "keras", tmp_path / "m.keras", "--out", tmp_path / "m.onnx")
    assert result.exit_code == 0, result.output
    x = np.random.default_rng(2).random((3, 4), dtype=np.float32)
    np.testing.assert_allclose(ort_run(tmp_path / "m.onnx", x)[0], network.predict(x, verbose=0), atol=1e-5)
    graph = onnx.load(tmp_path / "m.onnx").graph   # the exporter's own names ('keras_tensor', '23') are replaced
    assert ([v.name for v in graph.input], [v.name for v in graph.output]) == (["input"], ["output"])
    result = run("convert", "keras", tmp_path / "m.keras", "--out", tmp_path / "n.onnx", "--input-name", "pixels",
                    "--output-name", "probabilities")
    assert result.exit_code == 0 and "probabilities" in result.output, result.output
    graph = onnx.load(tmp_path / "n.onnx").graph
    assert ([v.name for v in graph.input], [v.name for v in graph.output]) == (["pixels"], ["probabilities"])


def test_renaming_the_input_and_output_reaches_subgraphs_and_refuses_a_taken_name():
    then = helper.make_graph([helper.make_node("Identity", ["t"], ["u"])], "then", [],
                             [helper.make_tensor_value_info("u", TensorProto.FLOAT, [2])])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["v"])], "else", [],
                              [helper.make_tensor_value_info("v", TensorProto.FLOAT, [2])])
    nodes = [helper.make_node("Relu", ["x"], ["t"]), helper.make_node("ReduceMax", ["t"], ["m"], keepdims=0),
             helper.make_node("Greater", ["m", "zero"], ["c"]),
             helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
                              [numpy_helper.from_array(np.zeros((), np.float32), "zero")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    renamed = rename_io(onnx.ModelProto.FromString(proto.SerializeToString()), "input", "output")
    x = np.array([-1.0, 2.0], np.float32)
    for sign in (1, -1):
        expected = ort.InferenceSession(proto.SerializeToString()).run(None, {"x": sign * x})[0]
        got = ort.InferenceSession(renamed.SerializeToString()).run(["output"], {"input": sign * x})[0]
        np.testing.assert_array_equal(got, expected)
    with pytest.raises(OnnxplainError, match="already has a tensor named 't'"):
        rename_io(proto, "t", "output")
    with pytest.raises(OnnxplainError, match="already has a tensor named 'u'"):   # one inside a branch
        rename_io(proto, "input", "u")
    with pytest.raises(OnnxplainError, match="cannot both be named 'same'"):
        rename_io(proto, "same", "same")


def test_tf_keras_round_trip_through_tf2onnx(tmp_path):
    """A Keras 2 model (tf_keras, the tf.keras of TensorFlow >= 2.16) goes through tf2onnx."""
    pytest.importorskip("tensorflow")
    pytest.importorskip("tf2onnx")
    tf_keras = pytest.importorskip("tf_keras")
    network = tf_keras.Sequential([tf_keras.Input((5,)), tf_keras.layers.Dense(4, activation="relu"),
                                   tf_keras.layers.Dense(3, activation="softmax")])
    samples = np.random.default_rng(0).random((6, 5), dtype=np.float32)
    report = convert_keras(network, tmp_path / "k.onnx", samples=samples)
    assert report.exporter.startswith("tf2onnx") and report.max_abs_diff < 1e-4
    more = np.random.default_rng(1).random((9, 5), dtype=np.float32)
    np.testing.assert_allclose(ort_run(tmp_path / "k.onnx", more)[0], network.predict(more, verbose=0), atol=1e-5)


def test_keras_export_failure_is_one_line(tmp_path, keras, monkeypatch):
    network = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])

    def broken(*args, **kwargs):
        raise KeyError("keras_tensor_5")  # what tf2onnx's from_keras raises on Keras 3 models

    monkeypatch.setattr(network, "export", broken)
    with pytest.raises(OnnxplainError, match="Keras cannot export this model to ONNX: KeyError"):
        convert_keras(network, tmp_path / "k.onnx", input_shape=(4,))
    assert not (tmp_path / "k.onnx").exists()
