"""`Model`: a loaded, normalised ONNX classifier; the one place that knows about sessions and providers."""
from __future__ import annotations

import json
import os
from functools import cached_property
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from . import batch_axis, loading, normalize
from .errors import OnnxplainError, named_list
from .hold import checked_hold, held_feeds, hold_inputs, shared_sizes
from .io.preprocess import LABELS_KEY, METADATA_KEY, PreprocessSpec, default_spec, pixel_scale
from .pixels import integer_reader
from .runtime import available_providers, batch_size_for, make_session, random_feed, run_batched
from .scores import classifier_labels, find_scores, softmax
from .sequences import channel_layout, sequence_layout

SQUEEZE_NOTE = "Squeeze without axes given the axes it squeezes for a batch above one (a batch of one keeps its axis)"


def load(path: str | os.PathLike, *, preprocess: PreprocessSpec | dict | str | os.PathLike | None = None,
         providers: list[str] | None = None, verify: bool = True, scores: str | None = None,
         hold: dict | None = None) -> "Model":
    """Read, validate and normalise an ONNX classifier; `verify` checks every normalisation against the original;
    `scores` names the output holding the class scores (default: a softmax's, else the first float output);
    `preprocess`: a PreprocessSpec, a dict of its fields (a JSON spec's content) or a JSON spec's path;
    `hold`: {input name: array} for every input but the one explained, held at those values (`onnxplain.hold`)."""
    return Model(loading.read_checked(path), path=Path(path), preprocess=preprocess, providers=providers,
                 verify=verify, scores=scores, hold=hold)


class Model:
    """An ONNX classifier: normalised graph, input spec, class-score output, batched onnxruntime forward passes."""

    def __init__(self, original: onnx.ModelProto, *, path: Path | None = None, preprocess=None,
                 providers: list[str] | None = None, verify: bool = True, scores: str | None = None, hold=None):
        self.path = path
        self.providers = providers or available_providers()
        self.notes: list[str] = []
        self.original = original
        self._sessions: dict[tuple[str, ...], object] = {}
        self.held = checked_hold(original, hold)   # {input name: Held}: the inputs held at given values
        self.proto = self._normalise(original, verify)
        self.input_name, self.input_shape, self.input_dtype = self._single_input()
        zipped = {node.output[0]: node.input[0] for node in original.graph.node if node.op_type == "ZipMap"}
        choice = find_scores(self.proto, self.probability_outputs, zipped.get(scores, scores))  # a ZipMap's name too
        self.score_output, self.score_kind, self.score_reason, self.logits_output, self.raw_scores = (
            choice.output, choice.kind, choice.reason, choice.logits, choice.raw)
        self.other_outputs = choice.others   # float outputs passed over by graph order alone (none: no such choice)
        self.binary = any(added.binary and added.output == self.score_output  # logits are log-odds [-z, z]
                          for added in self.probability_outputs.values())
        self._check_score_rows()
        self.preprocess_source: str | None = None  # 'given', 'stored' in the model, or 'guessed' from its input shape
        self._preprocess = self._preprocess_spec(preprocess)
        self.labels = self._labels()

    # ---------------------------------------------------------------- normalisation
    def _normalise(self, original: onnx.ModelProto, verify: bool) -> onnx.ModelProto:
        """Rewrite the graph with its large weights set aside (rewrites need shapes, not bytes), then check
        the result against the original once, on the session later runs use."""
        unused = normalize.unused_inputs(original)
        if unused:
            self.notes.append(f"graph input(s) {', '.join(map(repr, unused))} read by no node: left out")
        model = normalize.unzip_classifier(normalize.drop_extra_inputs(normalize.copy_model(original)))
        hold_inputs(model, self.held)
        normalize.one_input(model)   # before any rewrite: they assume one input
        self.probability_outputs = normalize.expose_probabilities(model)
        self.notes += [f"output {name!r} holds {added.what}; added as output {added.output!r}"
                       for name, added in self.probability_outputs.items()]
        weights = normalize.set_weights_aside(model)
        model, note = normalize.upgrade_opset(model)
        if note:
            self.notes.append(note)
        model = normalize.infer_shapes(model)
        self.aliases = normalize.drop_noops(model)   # names of removed copies' outputs -> what they equal
        if self.aliases:
            self.notes.append(f"{len(self.aliases)} node(s) that copy their input (Identity, Dropout, Cast to the "
                              "same type) left out (their outputs' names still name the values)")
        if batch_axis.keep_batch_in_squeezes(model):
            self.notes.append(SQUEEZE_NOTE)
        dynamic, changed, squeezes = batch_axis.make_batch_dynamic(normalize.copy_model(model))
        self.fixed_batch = False
        if changed:
            dynamic = normalize.infer_shapes(dynamic)
            normalize.restore_weights(dynamic, weights)
            session = self._session_or_none(dynamic)
            if session is not None and self._batch_parity(session):
                self.notes += [f"batch axis (fixed at {batch_axis.fixed_batch(model)}) made dynamic"] + \
                    ([SQUEEZE_NOTE] if squeezes else [])
                return self._verified(original, dynamic, session, verify)
            batch = batch_axis.fixed_batch(model)
            if batch > 1:   # running every batch padded to B would cost B passes per sample
                raise OnnxplainError(f"this model was exported for batches of exactly {batch} and its batch axis "
                                     "cannot be freed; export it with a dynamic batch axis (torch: dynamic_axes or "
                                     "dynamic_shapes)")
            self.fixed_batch = True
            self.notes.append("batch axis stays fixed at 1 (dynamic batch changed the outputs)")
        normalize.restore_weights(model, weights)
        return self._verified(original, model, make_session(model.SerializeToString(), self.providers), verify)

    def _session_or_none(self, proto: onnx.ModelProto):
        try:
            return make_session(proto.SerializeToString(), self.providers)
        except OnnxplainError:
            return None

    def _verified(self, original: onnx.ModelProto, normalised: onnx.ModelProto, session, verify: bool):
        """Keep `session` as the default one; with `verify`, the normalised outputs must equal the original's."""
        self._sessions[()] = session
        if verify:
            self._verify_same_outputs(original, normalised, session)
        return normalised

    def _verify_same_outputs(self, original: onnx.ModelProto, normalised: onnx.ModelProto, candidate) -> None:
        """Every normalised output the original graph computes too (not the ones normalisation added) is equal."""
        computed = {o.name for o in original.graph.output} | {t for n in original.graph.node for t in n.output}
        names = [o.name for o in normalised.graph.output if o.name in computed]
        feed_proto = normalize.drop_extra_inputs(normalize.copy_model(original))
        reference = make_session(normalize.with_outputs(feed_proto, names).SerializeToString(), self.providers)
        batch = batch_axis.fixed_batch(feed_proto, skip=self.held) or 1
        feed = random_feed(candidate, batch, shared_sizes(self.held, feed_proto))
        try:
            wanted = reference.run(names, feed | held_feeds(self.held, feed_proto, batch))
        except Exception:  # the original itself cannot run on the probe (free input sizes it needs set)
            self.notes.append("normalisation not verified: the model needs concrete input sizes")
            return
        try:
            outputs = candidate.run(names, feed)
        except Exception as error:
            raise OnnxplainError(f"normalising this model broke it ({str(error).splitlines()[0][:200]}); "
                                 "please report it") from None
        for name, want, got in zip(names, wanted, outputs):
            want, got = np.asarray(want), np.asarray(got)
            if want.dtype.kind in "OSU":  # string class labels (scikit-learn classifiers with named classes)
                same = want.shape == got.shape and bool((want == got).all())
            else:   # same shape, or the batch axis of one a Squeeze kept (`batch_axis.keep_batch_in_squeezes`)
                same = got.shape in (want.shape, (1,) + want.shape) and np.allclose(
                    want.astype(np.float64), got.astype(np.float64).reshape(want.shape), rtol=1e-4, atol=1e-5,
                    equal_nan=True)
            if not same:
                raise OnnxplainError(f"normalising this model changed output {name!r}; please report it")

    def _check_score_rows(self) -> None:
        """The class scores keep the batch axis, one row per sample, each the sample's own: where only a batch of one
        runs, every sample runs alone; where a batch mixes its samples, the model is refused
        (`batch_axis.one_at_a_time`)."""
        why = batch_axis.one_at_a_time(self._sessions[()], self.proto, self.score_output, self.fixed_batch)
        if why:
            self.fixed_batch = True
            self.notes.append(why)

    @staticmethod
    def _batch_parity(session) -> bool:
        """A batch of 3 gives the same outputs as 3 batches of 1."""
        try:
            feed = random_feed(session, batch=3)
            (name, batch), = feed.items()
            together = session.run(None, feed)
            apart = [session.run(None, {name: batch[i:i + 1]}) for i in range(3)]
        except Exception:  # the dynamic graph fails to run: keep the fixed batch
            return False
        for k, joint in enumerate(together):
            joint, parts = np.asarray(joint), [np.asarray(a[k]) for a in apart]
            if joint.shape[:1] != (3,) or any(p.shape != (1,) + joint.shape[1:] for p in parts):
                return False   # a batch axis that a single sample loses (a Squeeze of it)
            if joint.dtype.kind in "OSU":   # string class labels (scikit-learn classifiers with named classes)
                if not (joint == np.concatenate(parts)).all():
                    return False
            elif not np.allclose(joint.astype(np.float64), np.concatenate(parts).astype(np.float64), rtol=1e-4,
                                 atol=1e-6, equal_nan=True):
                return False
        return True

    # ---------------------------------------------------------------- description
    def _single_input(self):
        value = normalize.one_input(self.proto)
        tensor_type = value.type.tensor_type
        dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim)
        return value.name, shape, np.dtype(dtype)

    @property
    def preprocess(self) -> PreprocessSpec | None:
        return self._preprocess

    @preprocess.setter
    def preprocess(self, spec: PreprocessSpec | None) -> None:
        """A spec set after loading counts as given."""
        self._preprocess, self.preprocess_source = spec, ("given" if spec is not None else None)

    def _preprocess_spec(self, preprocess) -> PreprocessSpec | None:
        self.preprocess_source = "given"
        if preprocess is not None:
            return PreprocessSpec.given(preprocess)
        stored = self.metadata.get(METADATA_KEY)
        if stored:
            self.preprocess_source = "stored"
            return PreprocessSpec.from_json(stored)
        pictures = self.input_dtype == np.uint8 or np.issubdtype(self.input_dtype, np.floating)  # int8, uint16: no
        guessed = default_spec(self.input_shape, pixel_scale(self.proto, self.input_name)) if pictures else None
        self.preprocess_source = "guessed" if guessed is not None else None
        return guessed

    def _labels(self) -> list[str] | None:
        """The stored labels, else a scikit-learn classifier's own class names (ai.onnx.ml classlabels_strings)."""
        stored = self.metadata.get(LABELS_KEY)
        if not stored:
            return classifier_labels(self.proto, self.class_count())
        try:
            labels = json.loads(stored)
        except json.JSONDecodeError:
            labels = None
        if not isinstance(labels, list) or not all(isinstance(label, (str, int, float)) for label in labels):
            raise OnnxplainError(f"metadata {LABELS_KEY} is not a JSON list of class names")
        return [str(label) for label in labels]

    @property
    def metadata(self) -> dict[str, str]:
        return {p.key: p.value for p in self.proto.metadata_props}

    @cached_property
    def tensor_names(self) -> list[str]:
        """Every tensor a forward pass computes, in graph order (for hidden-layer targets)."""
        return [out for node in self.proto.graph.node for out in node.output if out]

    @cached_property
    def sequence_layout(self) -> str | None:
        """'channels_first': (N, C, L) samples, C channels along L positions (a Conv1d net); 'channels_last': (N, L, C)
        samples (the order Keras keeps sequences in); None for anything else (a 2-D sample is then an H x W gray
        image). Read off the path to the first convolution (`onnxplain.sequences`)."""
        return sequence_layout(self.proto, self.input_name) if len(self.input_shape) == 3 else None

    @cached_property
    def image_layout(self) -> str | None:
        """For 3-D and 4-D samples with no preprocessing spec (images of a channel count other than 1 or 3: RGBA,
        multispectral; volumes): 'channels_first' (C, H, W) / (C, D, H, W) or 'channels_last' (H, W, C) /
        (D, H, W, C) when the first convolution reads that axis as its channels, else None (a 3-D sample is then
        a (D, H, W) volume). Read off the graph like `sequence_layout`."""
        if len(self.input_shape) not in (4, 5) or self.preprocess is not None:
            return None
        return channel_layout(self.proto, self.input_name, len(self.input_shape) - 1)

    def label_of(self, index: int) -> str:
        return self.labels[index] if self.labels and index < len(self.labels) else str(index)

    def class_index(self, target: str | int) -> int:
        """A class given as index (an int, or a string of digits that is no label) or label; an index past the
        classes the graph declares, a label several classes share and a string that is both one class's label and
        another's index are refused here, before any work starts."""
        named = [i for i, label in enumerate(self.labels or []) if label == target]
        if len(named) > 1:
            raise OnnxplainError(f"label {target!r} names several classes ({', '.join(map(str, named))}): give the "
                                 "class index")
        numeric = isinstance(target, (int, np.integer)) or str(target).lstrip("-").isdigit()
        if numeric and named and not isinstance(target, (int, np.integer)) and named[0] != int(target):
            raise OnnxplainError(f"{target!r} is both the label of class {named[0]} and the index of class "
                                 f"{int(target)} ({self.label_of(int(target))!r}): give {named[0]} or "
                                 f"{self.label_of(int(target))!r} instead")
        if named:
            return named[0]
        if numeric:
            index, count = int(target), self.class_count()
            if index < 0 or (count is not None and index >= count):
                raise OnnxplainError(f"class {index} is out of range: " + (f"the model has {count} classes"
                                     if count is not None else "class indices start at 0"))
            return index
        shown = self.labels_text()
        raise OnnxplainError(f"unknown class {target!r}" + (f"; labels are {shown}" if shown else ""))

    def labels_text(self, most: int = 20) -> str:
        """The class names, the first `most` of them listed ('' without names)."""
        labels = self.labels or []
        return named_list(labels, most)

    def class_count(self) -> int | None:
        """Number of classes, when the class-score tensor's non-batch axes have static sizes (their product, as
        `scores` flattens them: (N, C, 1, 1) from global pooling is C classes)."""
        values = list(self.proto.graph.output) + list(self.proto.graph.value_info)
        for value in values:
            if value.name == self.score_output and value.type.HasField("tensor_type"):
                dims = value.type.tensor_type.shape.dim[1:]
                if dims and all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
                    return int(np.prod([d.dim_value for d in dims]))
        return None

    # ---------------------------------------------------------------- running
    def session(self, outputs: tuple[str, ...] = ()):
        """The session exposing the graph outputs plus `outputs`; built once per set of tensors and cached."""
        key = tuple(sorted(set(outputs)))
        if key not in self._sessions:
            missing = [name for name in key if name not in self.tensor_names and name not in self.output_names]
            if missing:
                raise OnnxplainError(f"no tensor named {', '.join(map(repr, missing))} in this model")
            names = list(self.output_names) + [n for n in key if n not in self.output_names]
            proto = normalize.with_outputs(self.proto, names)
            self._sessions[key] = make_session(proto.SerializeToString(), self.providers)
        return self._sessions[key]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.proto.graph.output]

    def check_input(self, x: np.ndarray, what: str = "input") -> np.ndarray:
        """A batch the model accepts: right rank, sizes and dtype, finite; else a clear OnnxplainError that
        names `what` was checked (the input, a reference set, ...)."""
        if hasattr(x, "detach"):   # a torch tensor (Captum habits: on a GPU, or requiring grad)
            x = x.detach().cpu().numpy()
        try:
            x = np.asarray(x)
        except ValueError:   # nested lists of unequal lengths (numpy: "inhomogeneous shape")
            raise OnnxplainError(f"{what} is ragged: its nested lists differ in length, so it is no array; give "
                                 "samples of one shape") from None
        expected = self.input_shape
        if x.ndim != len(expected) or any(e is not None and e != s for e, s in zip(expected[1:], x.shape[1:])):
            shown = "x".join("N" if d is None else str(d) for d in expected)
            raise OnnxplainError(f"{what} shape {'x'.join(map(str, x.shape))} does not fit the model's {shown}")
        if len(x) == 0:
            raise OnnxplainError(f"{what} is an empty batch: no samples")
        if not np.issubdtype(self.input_dtype, np.number):   # bool: masks, binary features
            raise OnnxplainError(f"this model takes {self.input_dtype} input {self.input_name!r}; onnxplain explains "
                                 "models that take numbers (floats, integers)")
        if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
            raise OnnxplainError(f"{what} dtype {x.dtype} is not a real number type")
        if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
            raise OnnxplainError(f"{what} contains NaN or Inf values")
        if (np.issubdtype(self.input_dtype, np.integer) and np.issubdtype(x.dtype, np.floating)
                and not (x == np.round(x)).all()):
            kind = "pixels, whole numbers (not 0..1)" if integer_reader(self) is None else "(token ids, categories)"
            raise OnnxplainError(f"{what} has fractional values, but this model takes {self.input_dtype} {kind}: "
                                 "they would be truncated")
        if x.dtype != self.input_dtype and np.issubdtype(self.input_dtype, np.number):
            limits = (np.iinfo if np.issubdtype(self.input_dtype, np.integer) else np.finfo)(self.input_dtype)
            if x.min() < limits.min or x.max() > limits.max:
                raise OnnxplainError(f"{what} has values from {x.min():g} to {x.max():g}, beyond the range of "
                                     f"{self.input_dtype}, which this model takes")
        return np.ascontiguousarray(x, dtype=self.input_dtype)

    def batch_size(self, budget_bytes: int | None = None, sample_shape: tuple[int, ...] | None = None) -> int:
        """Samples per batch under the memory budget, for samples of `sample_shape` (what is explained: a model
        with free spatial axes takes any size) or else the declared shape, free axes counted as 1. Integer inputs
        count 4 bytes a value at least: uint8 pixels feed float32 activations."""
        if self.fixed_batch:
            return 1
        shape = sample_shape if sample_shape is not None else [d or 1 for d in self.input_shape[1:]]
        value_bytes = max(self.input_dtype.itemsize, 4 if np.issubdtype(self.input_dtype, np.integer) else 0)
        sample = int(np.prod(shape)) * value_bytes
        return batch_size_for(sample, budget_bytes) if budget_bytes else batch_size_for(sample)

    def run(self, x: np.ndarray, outputs: list[str] | tuple[str, ...] | None = None, *,
            batch_size: int | None = None, progress: bool | str = False,
            check: bool = True) -> dict[str, np.ndarray]:
        """Forward passes over a batch of any size, split under a memory budget; {tensor name: array}.
        check=False skips `check_input` for batches a method built itself from an already-checked input."""
        x = self.check_input(x) if check else x
        asked = list(outputs) if outputs else self.output_names
        names = [n for n in dict.fromkeys(self.aliases.get(n, n) for n in asked) if n != self.input_name]
        values = {self.input_name: x}   # the input itself (the logits of a graph that only squashes its input)
        if names:
            extra = tuple(n for n in names if n not in self.output_names)
            session = self.session(extra)
            size = 1 if self.fixed_batch else (batch_size or self.batch_size(sample_shape=x.shape[1:]))

            def forward(batch: np.ndarray) -> list[np.ndarray]:
                try:
                    return [np.asarray(a) for a in session.run(names, {self.input_name: batch})]
                except Exception as error:  # onnxruntime raises its own untyped failures
                    raise OnnxplainError("onnxruntime failed on this input: "
                                         f"{str(error).splitlines()[0][:300]}") from None

            values.update(zip(names, run_batched(forward, x, size, progress)))
        return {name: values[self.aliases.get(name, name)] for name in asked}

    def scores(self, x: np.ndarray, **kwargs) -> np.ndarray:
        """Class scores (N, K) from the chosen output."""
        scores = self.run(x, [self.score_output], **kwargs)[self.score_output]
        return scores.reshape(len(scores), -1).astype(np.float64)

    def logits(self, x: np.ndarray, **kwargs) -> np.ndarray:
        """Pre-softmax scores (N, K) when the graph has them, else the class scores."""
        name = self.logits_output or self.score_output
        values = self.run(x, [name], **kwargs)[name]
        return values.reshape(len(values), -1).astype(np.float64)

    def probabilities(self, x: np.ndarray, **kwargs) -> np.ndarray:
        """Class probabilities (N, K): the model's own when it outputs them, else a softmax of its logits."""
        if self.score_kind == "probabilities":
            return self.scores(x, **kwargs)
        return softmax(self.logits(x, **kwargs))

    def torch(self, device: str = "cpu"):
        """The torch executor of this graph (built once per device), for gradients and LRP."""
        from .devices import device_key
        from .executor import TorchExecutor

        cache, key = self.__dict__.setdefault("_torch", {}), device_key(device)   # "cuda" and "cuda:0" alike
        if key not in cache:
            cache[key] = TorchExecutor(self, device=device)
        return cache[key]
