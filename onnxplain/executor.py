"""`TorchExecutor`: the model's graph in torch (on CPU or CUDA, with autograd), checked against onnxruntime.

It runs the normalised graph with the op registry (`onnxplain.ops`). When the registry lacks an op, or its
result disagrees with onnxruntime on a probe batch, the whole model falls back to onnx2torch (also checked);
when neither works, an `OnnxplainError` names each unsupported op and node.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import torch

from .bounds import input_bounds
from .devices import usable_device
from .errors import OnnxplainError, named_list
from .loading import default_opset
from .ops.graph import Graph
from .pixels import real_input
from .runtime import DEFAULT_BATCH_BYTES, tolerance
from .scores import FLOAT_TYPES
from .targets import Target, as_target, class_indices, hidden_values

GPU_MEMORY_SHARE = 16  # a batch's budget on a CUDA device: this fraction of its free memory
SCORE_TAIL = {"Normalizer", "Cast", "Identity", "Reshape", "Flatten", "Squeeze"}


class TorchExecutor:
    """`executor(x)` class scores, `.run(x, outputs)`, `.logits(x)`, `.gradient(x, target)`; x batch first."""

    def __init__(self, model, device: str = "cpu"):
        self.model = model
        self.device = usable_device(device)
        if self.device.type == "cuda":  # fp32 as checked: TF32 convolutions (torch's default) drift by ~1e-3
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        self.graph: Graph | None = None
        self.problem: str | None = None  # why the registry graph is not used, when it is not
        self._fallbacks: dict[tuple[str, ...], torch.nn.Module] = {}
        self._layouts: dict[tuple, bool] = {}   # (hidden tensor, sample shape) -> holds the samples first
        self._smooth: set[str] = set()          # tensors a gradient reaches from the input (`require_gradient`)
        try:
            graph = Graph(model.proto, self.device)
        except Exception as error:  # an op that cannot even be set up on its constants
            graph, self.problem = None, f"building the graph failed: {error}"
        if graph is not None:
            missing = graph.missing(self.checked_outputs(), (model.input_name,))
            if missing:
                self.problem = "ops outside the registry: " + ", ".join(missing)
            else:
                self.graph = graph
        self.logits_name = self._find_logits()
        self.tolerance = tolerance(model.proto)
        self._unchecked = False   # onnxruntime took no probe size: checked at the first input's (`check_shape`)
        self._check()

    # ---------------------------------------------------------------- set-up
    def checked_outputs(self) -> list[str]:
        """The outputs compared with onnxruntime: the float graph outputs, class scores first, and the logits (not a
        classifier's string or integer labels, which torch cannot hold or has no gradient for)."""
        names = [self.model.score_output] + [n for n in self.model.output_names if n != self.model.score_output]
        if self.model.logits_output and self.model.logits_output not in names:
            names.append(self.model.logits_output)
        return [n for n in names if _is_float_output(self.model, n)]

    def _find_logits(self) -> str:
        """The pre-softmax tensor: the model's, the raw scores under a LinearClassifier's post-transform, or z of
        normalised sigmoid(z) probabilities."""
        if self.model.logits_output or self.model.raw_scores:
            return self.model.logits_output or self.model.raw_scores
        if self.graph is not None:
            name = self.model.score_output
            step = self.graph.producers.get(name)
            while step is not None and step.node.op_type in SCORE_TAIL:
                name = step.inputs[0]
                step = self.graph.producers.get(name)
            if step is not None and step.node.op_type == "PostTransform":
                return step.inputs[0]
        return self.model.score_output

    def _check(self, sample_shape: tuple[int, ...] | None = None) -> None:
        """Compare with onnxruntime on probe batches (of `sample_shape`, else with open sizes set); fall back to
        onnx2torch when the registry graph disagrees. A graph that leaves sizes open but takes none of the probe's
        (a Flatten into a dense layer exported with free height and width) is checked on the first input instead."""
        names = self.checked_outputs()
        probes = self._probes(names, sample_shape)
        if not probes:
            self._unchecked = True
            return
        if self.graph is not None:
            try:
                error = self._error(probes, names)
                if error <= self.tolerance:
                    return
                self.problem = f"the registry graph differs from onnxruntime by {error:.2g} (relative)"
            except Exception as failure:  # an op meeting attributes or shapes it does not handle
                self.problem = f"the registry graph failed: {str(failure).splitlines()[0][:200]}"
            self.graph = None
            self.logits_name = self._find_logits()
        try:
            error = self._error(probes, names)
        except Exception as failure:  # onnx2torch raises many kinds of errors for ops it lacks
            raise OnnxplainError(f"cannot run this model in torch: {self.problem}; onnx2torch: "
                                 f"{str(failure).splitlines()[0][:200]}") from None
        if error > self.tolerance:
            raise OnnxplainError(f"cannot run this model in torch: {self.problem}; onnx2torch differs from "
                                 f"onnxruntime by {error:.2g} (relative)")

    def _probes(self, names: list[str], sample_shape: tuple[int, ...] | None) -> list[tuple[np.ndarray, dict]]:
        """(probe batch, onnxruntime's outputs): of `sample_shape`; else sizes the model leaves open set to 8, and,
        where it leaves any open, to 7 as well (an op can be exact at one size and not another), each skipped where
        onnxruntime refuses it (the graph takes only some sizes: a reshape to a fixed length, ...)."""
        if sample_shape is not None:
            probe = probe_batch(self.model, batch=1, sample_shape=sample_shape)
            return [(probe, self.model.run(probe, names))]
        checked = []
        for size in (8, 7):
            probe = probe_batch(self.model, batch=1, open_size=size)
            if checked and probe.shape == checked[0][0].shape:
                break
            try:
                checked.append((probe, self.model.run(probe, names)))
            except OnnxplainError:
                if None not in self.model.input_shape[1:]:
                    raise   # no open size to blame: the model cannot run at all
        return checked

    def check_shape(self, sample_shape: tuple[int, ...]) -> None:
        """Check an executor that no probe size could check (`_check`) on samples of `sample_shape`, before its
        first run; nothing once checked."""
        if self._unchecked:
            self._unchecked = False
            try:
                self._check(tuple(sample_shape))
            except Exception:   # onnxruntime refused these samples, or the check failed: the next input retries
                self._unchecked = True
                raise

    def _error(self, probes: list[tuple[np.ndarray, dict]], names: list[str]) -> float:
        bounded = self._probabilities(names)
        errors = []
        for probe, reference in probes:
            with torch.no_grad():
                got = self.run(probe, names)
            errors += [relative_error(got[n].double().cpu().numpy(), reference[n], 1.0 if n in bounded else 1e-12)
                       for n in names]
        return max(errors)

    def _probabilities(self, names: list[str]) -> set[str]:
        """The outputs that hold probabilities (a Sigmoid's or Softmax's, or class scores read as probabilities):
        their error is taken against their range, 1, not their largest value. Where a probe's probabilities are
        tiny, onnxruntime's own sigmoid is approximate (1.19e-7 for 1.16e-7); the logits under them, where the
        graph has them, stay checked against their own size."""
        producers = {out: node.op_type for node in self.model.proto.graph.node for out in node.output}
        bounded = {n for n in names if producers.get(n) in ("Sigmoid", "Softmax")}
        return bounded | ({self.model.score_output} if self.model.score_kind == "probabilities" else set())

    # ---------------------------------------------------------------- forward passes
    def batch_size(self, sample_shape: tuple[int, ...] | None = None) -> int:
        """Samples (of `sample_shape`, else the declared shape: `Model.batch_size`) per batch: the model's CPU
        memory budget, or on a CUDA device a sixteenth of its free memory (a GPU runs small batches at a fraction
        of its speed; the CPU budget would split a batch of 256 photos)."""
        if self.device.type == "cuda":   # memory torch's allocator holds but no tensor uses counts as free
            free, _ = torch.cuda.mem_get_info(self.device)
            free += torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
            return self.model.batch_size(max(free // GPU_MEMORY_SHARE, DEFAULT_BATCH_BYTES), sample_shape)
        return self.model.batch_size(sample_shape=sample_shape)

    def tensor(self, x) -> torch.Tensor:
        x = x if isinstance(x, torch.Tensor) else torch.from_numpy(self.model.check_input(x))
        self.check_shape(tuple(x.shape[1:]))
        return x.to(self.device)

    def run(self, x, outputs: list[str] | None = None, feeds: dict | None = None) -> dict[str, torch.Tensor]:
        """{name: tensor} for the graph outputs or any tensors by name; `feeds` overrides tensors on the way."""
        names = list(outputs) if outputs else list(self.model.output_names)
        x = self.tensor(x)
        if self.graph is None:
            return self._run_fallback(x, names)
        inputs = {self.model.input_name: x, **(feeds or {})}
        return self.graph.run(inputs, names)

    def __call__(self, x) -> torch.Tensor:
        """Class scores (N, K), like `model.scores`."""
        scores = self.run(x, [self.model.score_output])[self.model.score_output]
        return scores.reshape(len(scores), -1)

    def logits(self, x) -> torch.Tensor:
        """Pre-softmax scores (N, K) when the graph has a softmax (or a classifier post-transform), else scores."""
        logits = self.run(x, [self.logits_name])[self.logits_name]
        return logits.reshape(len(logits), -1)

    def explained_kind(self, target: Target) -> str:
        """What the explained value f(x) is: 'hidden' for a hidden-tensor target; for a class, 'logits' when the
        class scores pass a softmax (or a classifier's post-transform) after the tensor explained, else the scores'
        own kind."""
        if target.hidden:
            return "hidden"
        return "logits" if self.logits_name != self.model.score_output else self.model.score_kind

    def explained(self, start: torch.Tensor, x: torch.Tensor, target: Target) -> tuple[torch.Tensor, np.ndarray]:
        """(f(x) per sample, class per sample or -1) for `start`: the logits, or the hidden tensor of `target`."""
        if target.hidden:
            if len(start) != len(x) or (len(x) > 1 and not self._samples_first(target.layer, x)):
                raise OnnxplainError(f"tensor {target.layer!r} (shape {tuple(start.shape)}) does not hold the batch "
                                     "on its first axis: it cannot be a target")
            return hidden_values(start, target), np.full(len(start), -1)
        with torch.no_grad():
            scores = self.run(x.detach(), [self.model.score_output], {self.logits_name: start.detach()})
        scores = scores[self.model.score_output].reshape(len(start), -1).double().cpu().numpy()
        classes = class_indices(scores, target)
        values = start.reshape(len(start), -1)
        if classes.max() >= values.shape[1]:
            raise OnnxplainError(f"class {classes.max()} has no logit: the pre-softmax tensor has {values.shape[1]}")
        rows = torch.arange(len(start), device=start.device)
        return values[rows, torch.as_tensor(classes, device=start.device)], classes

    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """(N, K) class log-likelihoods, differentiable: log-softmax of the logits (= log of the probabilities when
        the graph has them); log-sigmoid of a binary classifier's log-odds; the log of the probabilities where the
        model has no pre-softmax tensor of its own (a classifier's post-transform may be logistic, not a softmax of
        its raw scores); for probabilities that normalise sigmoid(z), log sigmoid(z) less its log-sum-exp, which stays
        finite where the graph's exp(-z) overflows (its gradient there would be NaN), and log 1/K where every
        sigmoid is 0 (the graph, like scikit-learn, then gives each class 1/K)."""
        model = self.model
        if model.binary:
            return torch.nn.functional.logsigmoid(self.logits(x))
        if model.raw_scores:
            z = self.logits(x)
            log_sigmoid = torch.nn.functional.logsigmoid(z)
            vanished = (z < -math.log(torch.finfo(z.dtype).max)).all(1, keepdim=True)   # 1 / (1 + inf) = 0
            return torch.where(vanished, -math.log(z.shape[1]), log_sigmoid - torch.logsumexp(log_sigmoid, 1, True))
        if model.score_kind == "probabilities" and model.logits_output is None:
            return torch.log(self(x).reshape(len(x), -1).clamp_min(1e-30))
        return torch.log_softmax(self.logits(x).reshape(len(x), -1), dim=1)

    def _samples_first(self, name: str, x: torch.Tensor) -> bool:
        """Whether tensor `name` holds the samples on its first axis (a length equal to the batch's may be tokens
        when attention runs sequence first): `lrp.layout.samples_first`, cached per sample shape."""
        from .lrp.layout import samples_first

        key = (name, tuple(x.shape[1:]))
        if key not in self._layouts:
            self._layouts[key] = self.graph is None or samples_first(self.graph, self.model.proto,
                                                                    self.model.input_name, name, x.detach())
        return self._layouts[key]

    def gradient(self, x: np.ndarray, target: Target | None = None, batch_size: int | None = None,
                 grad: bool = True) -> tuple[np.ndarray | None, np.ndarray]:
        """(d f(x) / dx shaped like x, f(x) (N,)): f is the target's logit (pre-softmax) or hidden value; with
        grad=False only f(x), from forward passes (None for the gradient). Integer pixels go in as real numbers
        (`pixels.real_input`): points between pixel values too."""
        target = as_target(self.model, target)
        x = real_input(self.model, x, required=grad)
        self.check_shape(x.shape[1:])   # before reading the graph's names: the check may fall back to onnx2torch
        size = 1 if self.model.fixed_batch else (batch_size or self.batch_size(x.shape[1:]))
        name = target.layer if target.hidden else self.logits_name
        if grad:
            self.require_gradient(name, "gradient methods cannot explain it (occlusion and pda can)")
        grads, values = [], []
        for start in range(0, len(x), size):
            with torch.set_grad_enabled(grad):
                batch = self.tensor(torch.from_numpy(x[start:start + size])).requires_grad_(grad)
                value, _ = self.explained(self.run(batch, [name])[name], batch, target)
            if grad:
                if not value.requires_grad:     # the onnx2torch fallback, which the graph check cannot see into
                    raise OnnxplainError(f"{name} does not depend differentiably on the input: gradient methods "
                                         "cannot explain it (occlusion and pda can)")
                grads.append(torch.autograd.grad(value.sum(), batch)[0].detach().cpu().numpy())
            values.append(value.detach().double().cpu().numpy())
        return (np.concatenate(grads).astype(x.dtype, copy=False) if grad else None), np.concatenate(values)

    def require_gradient(self, name: str, advice: str) -> None:
        """Raise, naming the ops, where every way from the input to tensor `name` passes through integer or
        boolean data (ArgMin, Round, a comparison: an isotonic calibration's lookup, say): its gradient is zero or
        missing, and a map of it would say nothing."""
        if self.graph is None or name in self._smooth:
            return
        cuts = self.graph.data_cuts(name, self.model.input_name)
        if cuts is None:
            self._smooth.add(name)
            return
        raise OnnxplainError(f"{name} does not depend differentiably on the input: every way from the input to it "
                             f"passes through integer or boolean data ({named_list(cuts, 6, '; ')})"
                             + (f"; {advice}" if advice else ""))

    # ---------------------------------------------------------------- onnx2torch fallback
    def _run_fallback(self, x: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
        key = tuple(names)
        if key not in self._fallbacks:
            self._fallbacks[key] = onnx2torch_module(self.model.proto, names).to(self.device).eval()
        outputs = self._fallbacks[key](x)
        outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
        return dict(zip(names, outputs))


def onnx2torch_module(proto, outputs: list[str]) -> torch.nn.Module:
    """The graph, with `outputs` as its outputs, converted by onnx2torch (after onnx.version_converter)."""
    from onnx import helper, version_converter

    from .compat import ensure_torchvision

    model = copy.deepcopy(proto)
    known = {v.name: v for v in list(model.graph.output) + list(model.graph.value_info)}
    del model.graph.output[:]
    model.graph.output.extend(known.get(n) or helper.make_empty_tensor_value_info(n) for n in outputs)
    version = default_opset(model) or 13   # a graph of ai.onnx.ml ops alone stays as it is
    if version < 13 or version > 17:
        _write_out_gelu(model)
        model = version_converter.convert_version(model, min(max(version, 13), 17))
    _clear_needless_allowzero(model)
    ensure_torchvision()
    from onnx2torch import convert

    return convert(model)


def _write_out_gelu(model) -> None:
    """Gelu (opset 20) has no earlier version to convert to and no onnx2torch converter: each is written out as
    exporters did before, 0.5 x (1 + erf(x / sqrt 2)) or 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))."""
    from onnx import TensorProto, helper, numpy_helper, shape_inference

    if not any(node.op_type == "Gelu" for node in model.graph.node):
        return
    typed = shape_inference.infer_shapes(model).graph   # the constants take the type of the Gelu's input
    types = {v.name: v.type.tensor_type.elem_type for v in [*typed.input, *typed.value_info, *typed.output]}
    types |= {t.name: t.data_type for t in typed.initializer}
    nodes = []
    for node in model.graph.node:
        if node.op_type != "Gelu" or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        x, p = node.input[0], f"{node.output[0]}/gelu_"
        dtype = helper.tensor_dtype_to_np_dtype(types.get(x) or TensorProto.FLOAT)
        constants = {"half": 0.5, "one": 1.0, "root2": math.sqrt(2), "c": 0.044715, "root2pi": math.sqrt(2 / math.pi)}
        model.graph.initializer.extend(numpy_helper.from_array(np.array(v, dtype), p + k)
                                       for k, v in constants.items())
        if any(a.name == "approximate" and a.s == b"tanh" for a in node.attribute):
            steps = [("Mul", [x, x], "sq"), ("Mul", [p + "sq", x], "cube"), ("Mul", [p + "cube", p + "c"], "k"),
                     ("Add", [x, p + "k"], "s"), ("Mul", [p + "s", p + "root2pi"], "t"), ("Tanh", [p + "t"], "phi")]
        else:
            steps = [("Div", [x, p + "root2"], "t"), ("Erf", [p + "t"], "phi")]
        steps += [("Add", [p + "phi", p + "one"], "a"), ("Mul", [x, p + "a"], "m")]
        nodes += [helper.make_node(op, inputs, [p + out]) for op, inputs, out in steps]
        nodes.append(helper.make_node("Mul", [p + "m", p + "half"], [node.output[0]]))
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def _clear_needless_allowzero(model) -> None:
    """Reshape with allowzero=1 (what torch's dynamo exporter writes) means the same as 0 when its constant shape
    holds no zero; onnx2torch implements only 0, so such nodes get 0."""
    from onnx import numpy_helper

    constants = {t.name: t for t in model.graph.initializer}
    constants.update({n.output[0]: a.t for n in model.graph.node if n.op_type == "Constant"
                      for a in n.attribute if a.name == "value"})
    for node in model.graph.node:
        allowzero = next((a for a in node.attribute if a.name == "allowzero"), None)
        if node.op_type == "Reshape" and allowzero is not None and allowzero.i == 1 and node.input[1] in constants \
                and (numpy_helper.to_array(constants[node.input[1]]) != 0).all():
            allowzero.i = 0


def probe_batch(model, batch: int = 2, seed: int = 0, open_size: int = 8,
                sample_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Seeded random inputs inside the preprocessing's value range (or [0, 1)) for checks, of `sample_shape` or
    with the sizes the model leaves open set to `open_size`."""
    rng = np.random.default_rng(seed)
    size = 1 if model.fixed_batch else batch
    shape = (size,) + (sample_shape or tuple(d if d else open_size for d in model.input_shape[1:]))
    bounds = input_bounds(model, shape)
    unit = rng.random(shape)
    x = unit if bounds is None else bounds[0] + unit * (bounds[1] - bounds[0])
    return x.astype(model.input_dtype)


def relative_error(got: np.ndarray, want: np.ndarray, least_scale: float = 1e-12) -> float:
    """max |got - want| / max |want| over the finite values (the scale of the reference, at least `least_scale`:
    1 for probabilities, measured against their range). A position where both
    hold the same non-finite value (NaN, or one infinity) agrees, so that a graph computing NaN (a generator's
    sqrt of a negative) is not mistaken for a wrong executor; any other non-finite position is an infinite error."""
    want = np.asarray(want, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64).reshape(want.shape)
    finite = np.isfinite(want) & np.isfinite(got)
    if not (finite | (np.isnan(want) & np.isnan(got)) | (want == got)).all():
        return float("inf")
    if not finite.any():
        return 0.0
    return float(np.abs(got[finite] - want[finite]).max() / max(np.abs(want[finite]).max(), least_scale))


def _is_float_output(model, name: str) -> bool:
    known = {v.name: v for v in list(model.proto.graph.output) + list(model.proto.graph.value_info)}
    value = known.get(name)
    if value is None:
        return True
    return value.type.tensor_type.elem_type in FLOAT_TYPES
