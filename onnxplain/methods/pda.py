"""Prediction difference analysis (Zintgraf et al. 2017): how the prediction changes when a window is unknown.

Every k×k (k×k×k for volumes) window, all channels together, is replaced by S samples (marginal or conditional);
the model runs on all of them, windows × samples packed into large batches through `Model.run`; the mean output
is p(c | x without the window). Weight of evidence (log2 odds difference, Laplace-corrected) for probabilities,
activation difference for logits and hidden units. A pixel's relevance is the mean over the windows containing it.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import OnnxplainError
from ..explanation import Explanation, Method, relevance_dtype, require_model
from ..pixels import integer_reader
from ..runtime import optional_bar
from ..scores import softmax
from ..targets import Target, as_target, class_indices, hidden_values
from .passes import WindowSamples, check_precision, chunk_rows, forward_passes
from .samplers import ConditionalSampler, MarginalSampler
from ..numbers import seed_number, whole_number, whole_numbers
from .windows import Geometry, WindowGrid, plain_features

WEIGHT_OF_EVIDENCE = "weight of evidence"
ACTIVATION_DIFFERENCE = "activation difference"
SCORE_KINDS = {WEIGHT_OF_EVIDENCE: "probabilities", ACTIVATION_DIFFERENCE: "logits"}  # what f(x) is, per score


@dataclass
class Score:
    """What is compared: the tensor fetched, how class values are read from it, and which difference is taken."""

    output: str
    kind: str                                     # WEIGHT_OF_EVIDENCE | ACTIVATION_DIFFERENCE
    read: Callable[[np.ndarray], np.ndarray]      # raw output batch -> (B, K) float64
    training_size: int = 0                        # N of the Laplace correction
    classes: int = 0                              # K of the Laplace correction

    def difference(self, original: np.ndarray, marginalised: np.ndarray) -> np.ndarray:
        """(K,) value on x and (W, K) mean values with each window unknown -> (W, K) differences."""
        if self.kind == ACTIVATION_DIFFERENCE:
            return original[None] - marginalised
        return self.log_odds(original)[None] - self.log_odds(marginalised)

    def log_odds(self, p: np.ndarray) -> np.ndarray:
        """log2 odds after the Laplace correction p <- (pN + 1) / (N + K)."""
        p = (np.asarray(p, dtype=np.float64) * self.training_size + 1) / (self.training_size + self.classes)
        return np.log2(p) - np.log2(1 - p)


@dataclass
class Setup:
    """Everything fixed by the input geometry: layout, windows, fitted sampler."""

    geometry: Geometry
    grid: WindowGrid
    sampler: MarginalSampler | ConditionalSampler


class PredictionDifference(Method):
    """Prediction difference analysis with marginal or conditional (Gaussian) sampling.

    window: k (int, or one size per spatial axis; default 4, or 1 on a plain feature vector, whose windows run
    along its features); padding: conditional ring width (l = k + 2·padding; default 2, or 0 on a feature vector,
    whose neighbouring features are no neighbourhood: its conditional model is then a Gaussian per feature);
    samples: S per window; sampler: 'marginal' | 'conditional' | a sampler instance; reference: batch of
    preprocessed inputs the samplers learn from (required); stride: between window starts, at most the window
    (1 = the paper's overlapping windows); seed (an integer >= 0): makes every draw reproducible; training_size,
    classes: N (>= 1) and K (>= 2) of the Laplace correction (default len(reference) and the number of classes);
    score: 'auto' (weight of evidence on probabilities, activation difference on logits), 'probability' (softmax
    of logits when the model has no probabilities), 'logit' (the pre-softmax tensor); location_grid: cells per
    axis to condition on location (§4.2; conditional sampler only); volume_shape: the (D, H, W) or (H, W) grid of
    a flat input; channels: conditional model per channel ('independent') or over all channels ('joint');
    all_classes: True or a list of classes whose maps are kept in `diagnostics['all_classes']`
    (N, len(classes), *input_shape), classes in `diagnostics['all_classes_index']`, from the same pass;
    batch_size: samples per forward pass (default: the model's memory budget, at most CPU_BATCH on CPU; on a GPU
    what its free memory holds; incremental passes, whose crops are small, take what the same budget holds at
    their measured per-row memory, up to INCREMENTAL_ROWS); device: where the forward passes run: None =
    onnxruntime (the model's providers), or 'cpu' / 'cuda' / 'cuda:N' = the torch executor there (checked against
    onnxruntime; on a GPU the batches stay in device memory); precision: 'fp32', or 'tf32' on a CUDA device
    (TensorFloat-32 products: faster, outputs ~1e-3 relative off; see `passes.TorchPasses`); incremental: with the
    torch executor, compute each sample's early layers only around its window (`onnxplain.incremental`: the same
    numbers up to float rounding, less work); allow_gaps: let the stride exceed the window, for timing a subset of
    the windows (pixels between them get no relevance; the benchmarks use it). Samples equal to x's own window
    (e.g. background) are not run again: their output is f(x).
    """

    name = "pda"

    def __init__(self, window: int | tuple[int, ...] | None = None, padding: int | None = None, samples: int = 10,
                 sampler="conditional", reference=None, stride: int = 1, seed: int = 0,
                 training_size: int | None = None, classes: int | None = None, score: str = "auto",
                 location_grid=None, volume_shape=None, channels: str = "independent", all_classes=False,
                 batch_size: int | None = None, device: str | None = None, precision: str = "fp32",
                 incremental: bool = True, progress: bool = True, allow_gaps: bool = False):
        if reference is None:
            raise OnnxplainError("prediction difference needs reference data (--reference: images or an .npy batch)")
        samples, stride = (whole_number(name, value, 1) for name, value in (("samples", samples), ("stride", stride)))
        seed = seed_number(seed)
        window, padding, location_grid, training_size, classes, batch_size = (
            None if value is None else whole_numbers(name, value, least) for name, value, least in
            (("window", window, 1), ("padding", padding, 0), ("location_grid", location_grid, 1),
             ("training_size", training_size, 1), ("classes", classes, 2), ("batch_size", batch_size, 1)))
        for name, value in (("padding", padding), ("training_size", training_size), ("classes", classes),
                            ("batch_size", batch_size)):
            if isinstance(value, tuple):
                raise OnnxplainError(f"{name} must be one integer, not {value!r}")
        if score not in ("auto", "probability", "logit"):
            raise OnnxplainError(f"score must be auto, probability or logit, not {score!r}")
        check_precision(precision)
        if isinstance(sampler, str) and sampler not in ("marginal", "conditional"):
            raise OnnxplainError(f"sampler must be 'marginal' or 'conditional', not {sampler!r}")
        if not isinstance(sampler, str) and not all(callable(getattr(sampler, m, None))
                                                    for m in ("fit", "sample", "samples_per_window")):
            raise OnnxplainError(f"sampler must be 'marginal', 'conditional' or a sampler (fit, sample, "
                                 f"samples_per_window), not {sampler!r}")
        if channels != "independent" and sampler != "conditional":
            raise OnnxplainError("channels applies only to the conditional sampler (sampler='conditional')")
        if location_grid is not None and sampler != "conditional":
            raise OnnxplainError("location_grid applies only to the conditional sampler (sampler='conditional'; a "
                                 "sampler instance carries its own)")
        own = getattr(sampler, "padding", None)   # a sampler instance carries its own padding (or none)
        if padding and (sampler == "marginal" or own is None and not isinstance(sampler, str)):
            raise OnnxplainError(f"padding {padding} applies only to the conditional sampler ("
                                 f"{'marginal sampling' if sampler == 'marginal' else type(sampler).__name__} draws "
                                 "the window alone, with no ring to condition on)")
        if padding is not None and own is not None and own != padding:
            raise OnnxplainError(f"padding {padding} conflicts with the sampler instance's padding {own} (it carries "
                                 "its own: leave padding out)")
        if channels not in ("independent", "joint"):
            raise OnnxplainError(f"channels must be 'independent' or 'joint', not {channels!r}")
        self.window, self.padding, self.samples, self.sampler = window, padding, samples, sampler
        self.reference, self.stride, self.seed = np.asarray(reference), stride, seed
        self.training_size, self.classes, self.score = training_size, classes, score
        self.location_grid, self.volume_shape, self.channels = location_grid, volume_shape, channels
        self.all_classes, self.batch_size, self.progress = all_classes, batch_size, progress
        self.device, self.precision, self.incremental = device, precision, incremental
        self.allow_gaps = bool(allow_gaps)
        if sampler == "conditional" and len(self.reference) < 2:
            raise OnnxplainError("conditional sampling needs at least 2 reference inputs")
        self._setup: tuple | None = None                   # (model, sample shape, Setup) of the last inputs
        self._passes: tuple | None = None                  # (model, SessionPasses | TorchPasses) of the last model

    # ------------------------------------------------------------------ setup
    def prepare(self, model, sample_shape: tuple[int, ...]) -> Setup:
        """Geometry, window grid and fitted sampler for inputs of `sample_shape` (kept for the next call)."""
        sample_shape = tuple(sample_shape)
        if self._setup is None or self._setup[0] is not model or self._setup[1] != sample_shape:
            reference = model.check_input(self.reference, "reference set (--reference)")
            if reference.shape[1:] != sample_shape:
                raise OnnxplainError(f"reference samples {reference.shape[1:]} differ from the inputs {sample_shape}")
            geometry = Geometry.infer(model, sample_shape, self.volume_shape)
            window, padding = self.sizes(model, sample_shape)
            grid = WindowGrid(geometry.spatial, window, self.stride, allow_gaps=self.allow_gaps)
            sampler = self._make_sampler(model, padding, geometry if plain_features(model, sample_shape,
                                                                                     self.volume_shape) else None)
            setup = Setup(geometry, grid, sampler.fit(geometry.to_grid(reference), grid, self.seed))
            self._setup = (model, sample_shape, setup)
        return self._setup[2]

    def passes(self, model):
        """Where this model's forward passes run (built once per model: the torch executor is checked on building)."""
        if self._passes is None or self._passes[0] is not model:
            self._passes = (model, forward_passes(model, self.device, self.precision))
        return self._passes[1]

    def sizes(self, model, sample_shape: tuple[int, ...]) -> tuple:
        """(window, padding): the given ones, else 4 and 2, or 1 and 0 on a plain feature vector."""
        plain = plain_features(model, sample_shape, self.volume_shape)
        window = self.window if self.window is not None else (1 if plain else 4)
        padding = self.padding if self.padding is not None else (0 if plain else 2)
        return window, int(padding)

    def _make_sampler(self, model, padding: int, features: Geometry | None):
        """The sampler asked for; on a plain feature vector (`features`) the conditional model is fitted per
        feature (one location cell each, samples clipped to each feature's own range), not over all of them."""
        if not isinstance(self.sampler, str):
            return self.sampler
        if self.sampler == "marginal":
            return MarginalSampler()
        if integer_reader(model) is not None:   # token ids: a rounded Gaussian draw is no id
            raise OnnxplainError(f"the conditional sampler draws real values from a Gaussian, which this model's "
                                 f"{model.input_dtype} input (token ids, categories) cannot take: use the marginal "
                                 "sampler (--sampler marginal, sampler='marginal'), which draws the reference's "
                                 "values")
        if features is not None and self.location_grid is None:
            return ConditionalSampler(padding, self.channels, features.spatial, clip="pixel")
        return ConditionalSampler(padding, self.channels, self.location_grid)

    def choose_score(self, model, target: Target) -> Score:
        """The compared quantity for this model and target (see the class docstring's `score`)."""
        if target.hidden:
            if self.score == "probability":
                raise OnnxplainError("a hidden-layer target is explained by activation difference, not probability")
            return Score(target.layer, ACTIVATION_DIFFERENCE, lambda raw: hidden_values(raw, target)[:, None])
        mode = self.score
        if mode == "auto":
            mode = "probability" if model.score_kind == "probabilities" else "logit"
        if mode == "logit":
            output = model.logits_output
            if output is None:
                raise OnnxplainError("this model exposes no pre-softmax scores; use score='probability'")
            return Score(output, ACTIVATION_DIFFERENCE, _matrix)
        read = _matrix if model.score_kind == "probabilities" else (lambda raw: softmax(_matrix(raw)))
        return Score(model.score_output, WEIGHT_OF_EVIDENCE, read)

    # ------------------------------------------------------------------ explaining
    def explain(self, model, x: np.ndarray, target: Target | None = None) -> Explanation:
        require_model(model)
        started = time.perf_counter()
        x = model.check_input(x)
        target = as_target(model, target)
        score = self.choose_score(model, target)
        if score.kind != WEIGHT_OF_EVIDENCE and (self.training_size is not None or self.classes is not None):
            raise OnnxplainError("training_size and classes set the Laplace correction of the weight of evidence; "
                                 f"here the score is the {score.kind} (logits or a hidden tensor): leave them out, "
                                 "or explain probabilities (score='probability', --pda-score probability)")
        setup = self.prepare(model, x.shape[1:])
        # f(x) from the engine that runs the samples: both sides of each difference alike; and no onnxruntime call
        # before the torch executor's work (onnxruntime's idle threads spin on after a run, taking the cores)
        passes = self.passes(model)
        originals = score.read(passes.run(passes.array(x), score.output,
                                          int(self.batch_size or passes.batch_size(x[0]))))
        score.training_size = len(self.reference) if self.training_size is None else self.training_size
        score.classes = originals.shape[1] if self.classes is None else self.classes
        explained = np.zeros(len(x), dtype=int) if target.hidden else class_indices(originals, target)
        kept = self._kept_classes(target, originals.shape[1])
        grid, geometry = setup.grid, setup.geometry
        maps, extra, evaluated, incremental = [], [], np.ones(len(x), dtype=np.int64), True   # f(x): one row each
        with optional_bar(self.progress, len(x) * len(grid), "prediction difference", "window") as bar:
            for n in range(len(x)):
                columns = [int(explained[n])] + kept
                differences, ran, cropped = self.window_differences(model, setup, score, x[n], originals[n],
                                                                    columns, bar)
                incremental = incremental and cropped                      # every input's rows ran on crops
                evaluated[n] += ran
                per_class = grid.average(differences)                      # (len(columns), *spatial)
                maps.append(per_class[0])
                extra.append(per_class[1:])
        relevance = geometry.shared_over_channels(np.stack(maps)).astype(relevance_dtype(x.dtype))
        diagnostics = {"score": score.kind, "score_kind": SCORE_KINDS[score.kind], "windows": len(grid),
                       "window": tuple(grid.size), "samples_per_window": setup.sampler.samples_per_window(self.samples),
                       "forward_passes": int(evaluated.sum()), "forward_passes_per_input": evaluated.tolist(),
                       "seconds": round(time.perf_counter() - started, 3),
                       "sampler_cache": getattr(setup.sampler, "cache_hit", None),
                       "forward_passes_on": passes.name + (", incremental" if incremental else "")}
        for key, attribute in (("patch", "patch"), ("sampler_cache_note", "cache_note")):
            if getattr(setup.sampler, attribute, None) is not None:
                diagnostics[key] = getattr(setup.sampler, attribute)
        if score.kind == WEIGHT_OF_EVIDENCE:
            diagnostics.update(laplace_training_size=score.training_size, laplace_classes=score.classes)
        if kept:
            class_maps = np.stack([geometry.shared_over_channels(m) for m in extra])
            diagnostics["all_classes"] = class_maps.astype(relevance.dtype)
            diagnostics["all_classes_index"] = tuple(kept)
        target_index = np.full(len(x), -1) if target.hidden else explained
        return Explanation(relevance, target_index, originals[np.arange(len(x)), explained], self.name,
                           self._params(target, score, *self.sizes(model, x.shape[1:])), diagnostics)

    def window_differences(self, model, setup: Setup, score: Score, x_sample: np.ndarray, original: np.ndarray,
                           columns: list[int], bar=None) -> tuple[np.ndarray, int, bool]:
        """(W, len(columns)) prediction differences of one input (*sample_shape); the number of inputs run; and
        whether they ran incrementally.

        Windows go in chunks; only samples that change x run (a sample equal to x's own window has output f(x)).
        With the torch executor on a channels-first input, each sample's early layers are computed around its
        window only (`onnxplain.incremental`). Otherwise a chunk's samples are written into one reused buffer of
        copies of x, the buffer runs in forward passes of `batch_size`, and the windows are restored from x
        afterwards: no per-chunk copies of the input and no re-checking of inputs built from a checked x."""
        grid, sampler, geometry, passes = setup.grid, setup.sampler, setup.geometry, self.passes(model)
        count = sampler.samples_per_window(self.samples)
        batch = int(self.batch_size or passes.batch_size(x_sample))
        buffer_rows = min(max(1, chunk_rows(batch, x_sample.nbytes) // count), len(grid)) * count
        run = WindowSamples(passes, geometry, x_sample, score.output, grid.size, batch, buffer_rows,
                            self.incremental, grow_batch=not self.batch_size)
        per_chunk = max(1, run.rows // count)   # the buffer's windows, or an incremental runner's larger batch
        out, evaluated = np.empty((len(grid), len(columns))), 0
        chunks = [np.arange(start, min(len(grid), start + per_chunk)) for start in range(0, len(grid), per_chunk)]
        for ids, values, own in self._drawn(setup, run.x_grid, chunks, ahead=passes.overlaps_host):
            changed = (values != own[:, None]).reshape(len(ids), count, -1).any(axis=2)
            outputs = np.broadcast_to(original, (len(ids), count, len(original))).copy()
            windows, samples = np.nonzero(changed)                 # the rows to run, window by window
            if len(windows):
                outputs[windows, samples] = score.read(run(grid.starts[ids[windows]], values[windows, samples]))
            evaluated += len(windows)
            out[ids] = score.difference(original, outputs.mean(axis=1))[:, columns]
            if bar is not None:
                bar.update(len(ids))
        return out, evaluated, run.incremental

    def _drawn(self, setup: Setup, x_grid: np.ndarray, chunks: list[np.ndarray], ahead: bool):
        """(window ids, their samples (w, S, C, *k), x's own windows (w, C, *k)) per chunk. With `ahead` the next
        chunk is drawn in a thread while the caller's forward passes run (on a GPU the host is idle meanwhile)."""
        def draw(ids):
            values = setup.sampler.sample(x_grid, ids, self.samples, self.seed).astype(x_grid.dtype, copy=False)
            return ids, values, setup.grid.windows(x_grid, ids)

        if not ahead:
            yield from map(draw, chunks)
            return
        with ThreadPoolExecutor(1) as pool:
            pending = [pool.submit(draw, chunks[0])]
            for ids in chunks[1:]:
                pending.append(pool.submit(draw, ids))
                yield pending.pop(0).result()
            yield pending.pop(0).result()

    def _kept_classes(self, target: Target, n_classes: int) -> list[int]:
        if self.all_classes is False or self.all_classes is None:
            return []
        if target.hidden:
            raise OnnxplainError("all_classes applies to class scores, not to a hidden-layer target")
        kept = list(range(n_classes)) if self.all_classes is True else [int(c) for c in self.all_classes]
        if any(not 0 <= c < n_classes for c in kept):
            raise OnnxplainError(f"all_classes lists a class outside 0..{n_classes - 1}")
        return kept

    def _params(self, target: Target, score: Score, window, padding: int) -> dict:
        sampler = self.sampler if isinstance(self.sampler, str) else type(self.sampler).__name__
        if self.sampler != "conditional":   # marginal sampling has no ring; a sampler instance carries its own
            padding = 0 if self.sampler == "marginal" else getattr(self.sampler, "padding", 0)
        return {"window": window, "padding": padding, "samples": self.samples, "sampler": sampler,
                "stride": self.stride, "seed": self.seed, "reference_size": len(self.reference),
                "score": score.kind, "output": score.output, "location_grid": self.location_grid,
                "channels": self.channels, "layer": target.layer, "device": self.device or "onnxruntime",
                "precision": self.precision}


def _matrix(raw: np.ndarray) -> np.ndarray:
    return raw.reshape(len(raw), -1).astype(np.float64)
