"""The model layer: loading, normalisation, class-score detection, batched runs, intermediate tensors."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain.errors import OnnxplainError
from onnxplain.zoo import ZOO_NAMES


def plain_session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def tiny_classifier(batch_dim=1, softmax=True, opset=13) -> onnx.ModelProto:
    """x (batch, 4) -> Gemm -> [Softmax] -> (batch, 3); a Reshape that hard-codes the batch of 1."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(size=(4, 3)).astype(np.float32), "w")
    bias = numpy_helper.from_array(rng.normal(size=(3,)).astype(np.float32), "b")
    shape = numpy_helper.from_array(np.array([1 if batch_dim == 1 else -1, 4], dtype=np.int64), "shape")
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["flat"]),
             helper.make_node("Gemm", ["flat", "w", "b"], ["logits"])]
    out = "logits"
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["prob"], axis=1))
        out = "prob"
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch_dim, 4])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, [batch_dim, 3])],
                              [weight, bias, shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8  # what onnxruntime reads everywhere (onnx's newest IR can be ahead of it)
    return model


def test_tiny_model_softmax_detected_and_batch_made_dynamic(tmp_path):
    path = tmp_path / "tiny.onnx"
    onnx.save(tiny_classifier(), path)
    model = onnxplain.load(path)
    assert model.score_kind == "probabilities" and model.score_output == "prob"
    assert model.logits_output == "logits"
    assert model.input_shape == (None, 4) and not model.fixed_batch
    x = np.random.default_rng(1).random((5, 4), dtype=np.float32)
    together = model.scores(x)
    apart = np.concatenate([model.scores(x[i:i + 1]) for i in range(5)])
    np.testing.assert_allclose(together, apart, rtol=1e-6)
    reference = plain_session(path)
    want = np.concatenate([reference.run(None, {"x": x[i:i + 1]})[0] for i in range(5)])
    np.testing.assert_allclose(together, want, rtol=1e-5)


def test_logits_model_detected(tmp_path):
    path = tmp_path / "tiny.onnx"
    onnx.save(tiny_classifier(softmax=False), path)
    model = onnxplain.load(path)
    assert model.score_kind == "logits" and model.score_output == "logits"


def test_batch_runner_splits_and_matches(tmp_path):
    path = tmp_path / "tiny.onnx"
    onnx.save(tiny_classifier(batch_dim="N"), path)
    model = onnxplain.load(path)
    x = np.random.default_rng(2).random((23, 4), dtype=np.float32)
    np.testing.assert_allclose(model.run(x, batch_size=4)["prob"], model.run(x, batch_size=100)["prob"], rtol=1e-6)


def test_intermediate_tensor_by_name_and_sessions_cached(tmp_path):
    path = tmp_path / "tiny.onnx"
    onnx.save(tiny_classifier(batch_dim="N"), path)
    model = onnxplain.load(path)
    x = np.random.default_rng(3).random((2, 4), dtype=np.float32)
    first = model.run(x, outputs=["logits"])["logits"]
    model.run(x, outputs=["logits"])
    assert len([k for k in model._sessions if k == ("logits",)]) == 1
    np.testing.assert_allclose(np.exp(first) / np.exp(first).sum(1, keepdims=True), model.scores(x), rtol=1e-5)
    with pytest.raises(OnnxplainError, match="no tensor named"):
        model.run(x, outputs=["nope"])


def test_check_input_rejects_wrong_shape_and_nan(digits_cnn):
    model = onnxplain.load(digits_cnn)
    with pytest.raises(OnnxplainError, match="does not fit"):
        model.check_input(np.zeros((1, 1, 27, 28), np.float32))
    bad = np.zeros((1, 1, 28, 28), np.float32)
    bad[0, 0, 3, 3] = np.nan
    with pytest.raises(OnnxplainError, match="NaN"):
        model.check_input(bad)


def test_zipmap_classifier_uses_probability_tensor(digits_logreg):
    model = onnxplain.load(digits_logreg)
    assert model.score_kind == "probabilities"
    x = np.load(digits_logreg.parent / "samples" / "digits_reference_logreg.npy")[:7]
    session = plain_session(digits_logreg)
    outputs = session.run(None, {session.get_inputs()[0].name: x})
    zipped = outputs[1]  # skl2onnx default: label, then a sequence of {class: probability}
    want = np.array([[row[k] for k in sorted(row)] for row in zipped])
    np.testing.assert_allclose(model.scores(x), want, rtol=1e-5)


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_zoo_model_normalised_equals_original_and_batch_parity(name, zoo_path):
    path = zoo_path(name)
    model = onnxplain.load(path)
    original = plain_session(path)
    x = np.random.default_rng(4).random((2, 3, 224, 224), dtype=np.float32)
    feed_name = original.get_inputs()[0].name
    want = np.concatenate([original.run([model.score_output], {feed_name: x[i:i + 1]})[0] for i in range(2)])
    got = model.run(x, [model.score_output], batch_size=2)[model.score_output]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert any("opset" in note for note in model.notes)
    assert not model.fixed_batch


def test_examples_predict_like_onnxruntime(digits_cnn):
    model = onnxplain.load(digits_cnn)
    x = np.load(digits_cnn.parent / "samples" / "digits_reference_cnn.npy")[:16]
    session = plain_session(digits_cnn)
    want = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(model.scores(x), want, rtol=1e-5, atol=1e-6)


def test_custom_domain_refused(tmp_path):
    model = tiny_classifier()
    model.graph.node.append(helper.make_node("Mystery", ["prob"], ["odd"], domain="com.example"))
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    path = tmp_path / "custom.onnx"
    onnx.save(model, path)
    with pytest.raises(OnnxplainError, match="com.example"):
        onnxplain.load(path)


def test_external_data_outside_folder_refused(tmp_path):
    model = tiny_classifier()
    folder = tmp_path / "model"
    folder.mkdir()
    onnx.save(model, folder / "m.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    loaded = onnx.load(str(folder / "m.onnx"), load_external_data=False)
    for tensor in loaded.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../weights.bin"
    (tmp_path / "weights.bin").write_bytes((folder / "weights.bin").read_bytes())
    onnx.save(loaded, folder / "evil.onnx")
    with pytest.raises(OnnxplainError, match="outside the model's folder"):
        onnxplain.load(folder / "evil.onnx")
    assert onnxplain.load(folder / "m.onnx").score_kind == "probabilities"  # inside the folder: fine
    (folder / "weights.bin").unlink()
    with pytest.raises(OnnxplainError, match="external data file 'weights.bin' is missing"):
        onnxplain.load(folder / "m.onnx")
    (folder / "weights.bin").symlink_to(tmp_path / "weights.bin")   # inside by name, outside by where it leads
    with pytest.raises(OnnxplainError, match=f"'weights.bin', a link to '{tmp_path.resolve() / 'weights.bin'}'"):
        onnxplain.load(folder / "m.onnx")


def test_corrupt_and_missing_files(tmp_path):
    with pytest.raises(OnnxplainError, match="not found"):
        onnxplain.load(tmp_path / "missing.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x00\x01 definitely not protobuf" * 10)
    with pytest.raises(OnnxplainError, match="not a readable ONNX model"):
        onnxplain.load(corrupt)


def test_ir_version_newer_than_onnxruntime_reads_is_lowered(tmp_path, monkeypatch):
    from onnxplain import normalize

    # an onnxruntime one IR version behind onnx (whether the installed pair is so or not)
    monkeypatch.setattr(normalize, "_RUNTIME_MAX_IR", min(normalize.runtime_max_ir_version(), onnx.IR_VERSION - 1))
    model = tiny_classifier()
    model.ir_version = onnx.IR_VERSION  # what onnx.helper writes
    path = tmp_path / "new_ir.onnx"
    onnx.save(model, path)
    loaded = onnxplain.load(path)
    assert loaded.proto.ir_version == normalize.runtime_max_ir_version() < onnx.IR_VERSION
    x = np.random.default_rng(5).random((3, 4), dtype=np.float32)
    logits = x @ numpy_helper.to_array(model.graph.initializer[0]) + numpy_helper.to_array(model.graph.initializer[1])
    want = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(loaded.scores(x), want, rtol=1e-5)


def test_class_count_multiplies_the_non_batch_axes(tmp_path):
    """Scores shaped (N, C, 1, 1) (global pooling, no flatten) are C classes, as `scores` flattens them."""
    graph = helper.make_graph([helper.make_node("GlobalAveragePool", ["x"], ["scores"])], "gap",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 4, 4])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [None, 3, 1, 1])])
    path = tmp_path / "gap.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)
    model = onnxplain.load(path)
    assert model.class_count() == 3 and model.scores(np.ones((2, 3, 4, 4), np.float32)).shape == (2, 3)


def test_torch_batches_on_a_gpu_take_a_share_of_its_free_memory(digits_cnn, monkeypatch):
    """On CUDA the executor sizes batches from the device's free memory (1/16), not from the CPU budget."""
    import torch

    from onnxplain.executor import GPU_MEMORY_SHARE

    model = onnxplain.load(digits_cnn)
    executor = model.torch()
    assert executor.batch_size() == model.batch_size()
    free = 64 * 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, 2 * free))
    monkeypatch.setattr(executor, "device", torch.device("cuda"))
    assert executor.batch_size() == model.batch_size(free // GPU_MEMORY_SHARE) > 10 * model.batch_size()


def test_scikit_learn_probability_outputs_are_recognised(tmp_path):
    """SVC(probability=True) gives Platt-scaled probabilities, gradient boosting a softmax post-transform: both are
    probabilities (weight of evidence in PDA), each said why."""
    import warnings

    from sklearn.datasets import load_wine
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.svm import SVC

    from onnxplain.converters import convert_sklearn

    X, y = load_wine(return_X_y=True)
    X = X.astype(np.float32)
    cases = {"svc": (SVC(probability=True, random_state=0), "Platt-scaled probabilities"),
             "boosting": (GradientBoostingClassifier(n_estimators=5, random_state=0), "SOFTMAX post-transform")}
    for name, (estimator, why) in cases.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)   # scikit-learn 1.9 deprecates SVC(probability=True)
            convert_sklearn(estimator.fit(X, y), tmp_path / f"{name}.onnx", samples=X[:20])
        model = onnxplain.load(tmp_path / f"{name}.onnx")
        assert model.score_kind == "probabilities" and why in model.score_reason, model.score_reason
        np.testing.assert_allclose(model.scores(X[:4]).sum(1), 1, rtol=1e-5)


def test_tree_ensemble_opset5_post_transform_enum_is_read(tmp_path):
    """ai.onnx.ml opset 5's TreeEnsemble stores post_transform as an enum (1 = SOFTMAX), not as text."""
    node = helper.make_node(
        "TreeEnsemble", ["x"], ["y"], domain="ai.onnx.ml", aggregate_function=1, n_targets=2, tree_roots=[0],
        post_transform=1, nodes_featureids=[0], nodes_splits=numpy_helper.from_array(np.array([0.5], np.float32)),
        nodes_modes=numpy_helper.from_array(np.array([0], np.uint8)), nodes_truenodeids=[0], nodes_trueleafs=[1],
        nodes_falsenodeids=[1], nodes_falseleafs=[1], leaf_targetids=[0, 1],
        leaf_weights=numpy_helper.from_array(np.array([1.0, 2.0], np.float32)))
    graph = helper.make_graph([node], "trees", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("ai.onnx.ml", 5)])
    model.ir_version = 10
    onnx.save(model, tmp_path / "trees.onnx")
    loaded = onnxplain.load(tmp_path / "trees.onnx")
    assert loaded.score_kind == "probabilities" and "SOFTMAX post-transform" in loaded.score_reason


def test_zoo_write_that_fails_leaves_no_partial_file(tmp_path, monkeypatch):
    """A full disk mid-write: the error comes through and the half-written `.partial` file is removed. The partial
    file is this process's own (two processes building one model at once do not share it)."""
    import errno
    import os

    from onnxplain import zoo

    def full_disk(model, path):
        assert path.endswith(f".{os.getpid()}.partial")
        with open(path, "wb") as stream:
            stream.write(b"\0" * 1024)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(zoo.onnx, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        zoo.materialize("squeezenet", folder=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_class_names_that_are_ambiguous_are_refused(digits_cnn):
    """A label several classes share, and digits that are one class's label and another's index, name no one class:
    refused with what to give instead (before, the first match or the label silently won). A long label list is
    cut with a count, so that the message does not read as every label."""
    model = onnxplain.load(digits_cnn)
    model.labels = [f"c{i}" for i in range(8)] + ["dup", "dup"]
    with pytest.raises(OnnxplainError, match=r"label 'dup' names several classes \(8, 9\)"):
        model.class_index("dup")
    model.labels[7] = "3"
    with pytest.raises(OnnxplainError, match="'3' is both the label of class 7 and the index of class 3 .'c3'."):
        model.class_index("3")
    assert model.class_index(3) == 3 and model.class_index("c3") == 3 and model.class_index("7") == 7
    model.labels = [str(i) for i in range(10)]   # labels that spell their own indices are no ambiguity
    assert model.class_index("3") == 3
    model.labels = [f"c{i}" for i in range(30)]
    with pytest.raises(OnnxplainError, match="c19 and 10 more$"):
        model.class_index("nope")
