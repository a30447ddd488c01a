"""Held inputs in LRP (its ledger; products with held values), in the choice of what is per sample and in the
check on loading: the held term of a batch equals each sample's own (a value held whole, or a per-sample one moved
off the first axis, is walked one sample at a time), x's own data next to a held value is no held relevance, a
product with held values is LRP with them written in as weights, a first axis named by another symbol than x's
batch is taken whole, and a held mask sharing x's free length is verified at that length.
References: each sample walked alone; the graph with the held values as weights; onnxruntime fed every input."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import onnxplain
from onnxplain.lrp import LRP

from hold_graphs import save

RNG = np.random.default_rng(11)
W = (RNG.normal(size=(4, 3)) * 0.5).astype(np.float32)
LOGITS = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])


def value(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def whole_vector(path):
    """x (N, 4) + h (4,), held whole -> Relu -> MatMul."""
    nodes = [helper.make_node("Add", ["x", "h"], ["s"]), helper.make_node("Relu", ["s"], ["r"]),
             helper.make_node("MatMul", ["r", "w"], ["y"])]
    return save(nodes, [value("x", ["N", 4]), value("h", [4])], [LOGITS], {"w": W}, path)


def transposed(path):
    """x (N, 2, 4) and a per-sample h (N, 2, 4), both moved to (2, N, 4) before they meet, and back."""
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
             helper.make_node("Transpose", ["h"], ["ht"], perm=[1, 0, 2]), helper.make_node("Add", ["xt", "ht"], ["s"]),
             helper.make_node("Relu", ["s"], ["r"]), helper.make_node("Transpose", ["r"], ["rb"], perm=[1, 0, 2]),
             helper.make_node("ReduceSum", ["rb", "axis"], ["m"], keepdims=0),
             helper.make_node("MatMul", ["m", "w"], ["y"])]
    return save(nodes, [value("x", ["N", 2, 4]), value("h", ["N", 2, 4])], [LOGITS],
                {"w": W, "axis": np.array([1], np.int64)}, path)


@pytest.mark.parametrize("build, hold, sample", [
    (whole_vector, np.array([0.3, -0.2, 0.5, 1.0], np.float32), (4,)),
    (transposed, RNG.normal(size=(2, 4)).astype(np.float32), (2, 4)),
])
def test_the_held_term_of_a_batch_is_each_samples_own(tmp_path, build, hold, sample):
    """Was: the held leaf's gradient split along axis 0 (a whole value's is summed over the batch already): wrong
    shares for a batch of 2, NaN for 3, and conservation errors of order 1."""
    model = onnxplain.load(build(tmp_path / "m.onnx"), hold={"h": hold})
    x = RNG.normal(size=(3, *sample)).astype(np.float32)
    lrp = LRP(composite="lrp-0", progress=False)
    batch = lrp.explain(model, x).diagnostics
    alone = [lrp.explain(model, x[i:i + 1]).diagnostics["held_relevance"][0] for i in range(len(x))]
    np.testing.assert_allclose(batch["held_relevance"], alone, rtol=1e-5, atol=1e-7)
    assert np.abs(alone).min() > 1e-3
    assert np.abs(batch["conservation_error"]).max() < 1e-5


def test_x_own_data_beside_a_held_value_is_no_held_relevance(tmp_path):
    """t = Floor(x) + h with h held at 0: the relevance t takes is Floor(x)'s, a constant of the walk (bias), not
    the held input's (it was all reported as held relevance)."""
    nodes = [helper.make_node("Floor", ["x"], ["fx"]), helper.make_node("Add", ["fx", "h"], ["t"]),
             helper.make_node("Add", ["x", "t"], ["a"]), helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("MatMul", ["r", "w"], ["y"])]
    path = save(nodes, [value("x", ["N", 4]), value("h", ["N", 4])], [LOGITS], {"w": W}, tmp_path / "floor.onnx")
    model = onnxplain.load(path, hold={"h": np.zeros(4, np.float32)})
    report = LRP(composite="lrp-0", progress=False).explain(model, np.array([[2.5, 1.7, 3.2, 0.6]], np.float32))
    diagnostics = report.diagnostics
    assert diagnostics["held_relevance"] == [0.0]
    assert abs(diagnostics["bias_relevance"][0]) > 0.1 and abs(diagnostics["conservation_error"][0]) < 1e-5


def test_a_first_axis_of_another_symbol_is_held_whole(tmp_path):
    """Prototypes (S, 4) beside inputs (N, 4): S is no batch. One prototype was repeated for every sample (scores
    N x N where onnxruntime gives N x 1), and five were refused."""
    nodes = [helper.make_node("Transpose", ["protos"], ["pt"]), helper.make_node("MatMul", ["x", "pt"], ["y"])]
    path = save(nodes, [value("x", ["N", 4]), value("protos", ["S", 4])],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "S"])], {}, tmp_path / "protos.onnx")
    x = RNG.normal(size=(3, 4)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for count in (1, 5):
        protos = RNG.normal(size=(count, 4)).astype(np.float32)
        model = onnxplain.load(path, hold={"protos": protos})
        np.testing.assert_allclose(model.run(x)["y"], session.run(None, {"x": x, "protos": protos})[0], rtol=1e-6)


def test_a_held_mask_sharing_x_free_length_is_verified(tmp_path, monkeypatch):
    """A mask (N, L) beside a sequence (N, L, 4): the original graph is probed at the mask's L (it was probed at 32,
    failed, and loading went on unverified, so a rewrite holding a wrong value loaded without a word)."""
    import onnxplain.model
    from onnxplain.errors import OnnxplainError
    from onnxplain.hold import Held, hold_inputs

    nodes = [helper.make_node("Unsqueeze", ["mask", "two"], ["m3"]), helper.make_node("Mul", ["x", "m3"], ["a"]),
             helper.make_node("ReduceSum", ["a", "one"], ["s"], keepdims=0),
             helper.make_node("MatMul", ["s", "w"], ["y"])]
    path = save(nodes, [value("x", ["N", "L", 4]), value("mask", ["N", "L"])], [LOGITS],
                {"w": W, "one": np.array([1], np.int64), "two": np.array([2], np.int64)}, tmp_path / "mask.onnx")
    mask = np.array([1, 1, 0, 1, 0], np.float32)
    model = onnxplain.load(path, hold={"mask": mask})
    assert not any("not verified" in note for note in model.notes), model.notes
    x = RNG.normal(size=(2, 5, 4)).astype(np.float32)
    np.testing.assert_allclose(model.run(x)["y"], (x * mask[None, :, None]).sum(axis=1) @ W, rtol=1e-5, atol=1e-6)
    def zeroed(proto, held):   # a rewrite that holds the wrong value
        return hold_inputs(proto, {name: Held(name, item.value * 0, item.batched) for name, item in held.items()})

    monkeypatch.setattr(onnxplain.model, "hold_inputs", zeroed)
    with pytest.raises(OnnxplainError, match="normalising this model changed output 'y'"):
        onnxplain.load(path, hold={"mask": mask})


@pytest.mark.parametrize("op", ["Mul", "MatMul"])
def test_a_product_with_held_values_is_lrp_with_them_as_constants(tmp_path, op):
    """x * (h1 + h2) and x @ M, M held: the held operand is a constant of the walk (a gate, a dense layer's weight),
    so LRP equals LRP of the graph with that operand written in as a weight. Both were refused as 'a product of two
    activations' (only a held input itself, not a sum of two, was seen as one)."""
    h1, h2 = RNG.normal(size=4).astype(np.float32), RNG.normal(size=4).astype(np.float32)
    matrix = RNG.normal(size=(4, 4)).astype(np.float32)
    tail = [helper.make_node("Relu", ["a"], ["r"]), helper.make_node("MatMul", ["r", "w"], ["y"])]
    if op == "Mul":
        held_nodes = [helper.make_node("Add", ["h1", "h2"], ["hs"]), helper.make_node("Mul", ["x", "hs"], ["a"])]
        held_inputs, hold = [value("h1", ["N", 4]), value("h2", ["N", 4])], {"h1": h1, "h2": h2}
        fixed_nodes, fixed = [helper.make_node("Mul", ["x", "c"], ["a"])], {"c": (h1 + h2)[None]}
    else:
        held_nodes, held_inputs, hold = [helper.make_node("MatMul", ["x", "M"], ["a"])], [value("M", [4, 4])], \
            {"M": matrix}
        fixed_nodes, fixed = [helper.make_node("MatMul", ["x", "c"], ["a"])], {"c": matrix}
    held = onnxplain.load(save(held_nodes + tail, [value("x", ["N", 4]), *held_inputs], [LOGITS], {"w": W},
                               tmp_path / "held.onnx"), hold=hold)
    baked = onnxplain.load(save(fixed_nodes + tail, [value("x", ["N", 4])], [LOGITS], {"w": W, **fixed},
                                tmp_path / "baked.onnx"))
    x = RNG.normal(size=(3, 4)).astype(np.float32)
    for composite in ("lrp-0", "epsilon-plus"):
        ours = LRP(composite=composite, progress=False).explain(held, x)
        reference = LRP(composite=composite, progress=False).explain(baked, x)
        np.testing.assert_allclose(ours.relevance, reference.relevance, rtol=1e-5, atol=1e-7)
        assert np.abs(ours.diagnostics["conservation_error"]).max() < 1e-5


def test_inputs_whose_batch_each_has_its_own_symbol_stay_per_sample(tmp_path):
    """tf2onnx names every input's batch apart (unk__1, unk__2): meta, given as one sample with or without its batch
    axis, is still held per sample, and a batch of 3 runs at once (the prototype rule above had made it whole)."""
    import onnx

    from hold_graphs import META, concat_model

    proto = onnx.load(concat_model(tmp_path / "concat.onnx"))
    for value, symbol in zip([*proto.graph.input, *proto.graph.output], ("unk__1", "unk__2", "unk__3")):
        value.type.tensor_type.shape.dim[0].dim_param = symbol
    onnx.save(proto, tmp_path / "renamed.onnx")
    x = RNG.normal(size=(3, 1, 8, 8)).astype(np.float32)
    session = ort.InferenceSession(str(tmp_path / "renamed.onnx"), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"image": x, "meta": np.repeat(META[None], 3, axis=0)})[0]
    for given in (META, META[None]):
        model = onnxplain.load(tmp_path / "renamed.onnx", hold={"meta": given})
        assert model.held["meta"].batched and not model.fixed_batch
        np.testing.assert_allclose(model.run(x)["logits"], expected, rtol=1e-5, atol=1e-6)
