"""Contrastive "why class A and not class B?" explanations through a generator's latent space (CDeepEx, xGEMs).

Given a classifier D, a generator G: latent -> input (both ONNX, both run and differentiated by the torch executor),
an input I and a probe class:

1. Procedure 2: z0 = argmin_z ||G(z) - I||^2 + kappa * (-llh(D(G(z)), true)) from `restarts` seeded N(0, 1) starts
   (Adam), and the residual Delta = G(z0) - I.
2. Equation 2: z_e = argmin_z ||z - z0||^2 subject to
       llh(true) - llh(probe) = 0,
       llh(i) - llh(true) <= -margin  and  llh(i) - llh(probe) <= -margin   for every other class i,
   all log-likelihoods taken of D(G(z) - Delta), so that D sees exactly I at z = z0. (The paper typesets
   "D(G(z)) + Delta"; we read it as the classifier's input G(z) corrected by the residual, and its "<= epsilon"
   ranking constraints with the sign that keeps true and probe above every other class, epsilon = -margin.)
   Solved by the augmented Lagrangian method (`lagrangian.AugmentedLagrangian`), each input to its own KKT
   point. xGEMs drops the ranking constraints.
3. The explanation G(z0) - G(z_e): positive where the input has ink the probe class would not, negative where the
   probe would need ink added (rendered red = add, blue = remove: `contrast_map`).

The true class is the classifier's top-1 on I; the probe defaults to the second most likely class. Each input's
random starts come from the seed and a digest of the input, so an input gets the same answer alone or in any batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import OnnxplainError
from ..explanation import Explanation, Method, require_model
from ..numbers import image_generators, optional_whole_number, real_number, seed_number, whole_number
from ..runtime import progress_bar
from ..targets import Target, as_target
from .generator import Generator
from .lagrangian import AugmentedLagrangian, Evaluation

@dataclass
class ContrastProblem:
    """Equation 2 for a batch: distance to z0, the equal-likelihood constraint and (if `ranked`) the ranking ones.
    Called with the latents of some rows and those rows' indices."""

    classify: callable      # x -> (N, K) log-likelihoods
    generate: callable      # z -> x
    z0: torch.Tensor
    residual: torch.Tensor  # Delta = G(z0) - I
    true: torch.Tensor      # (N,) long
    probe: torch.Tensor
    margin: float
    ranked: bool

    def llh(self, z: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return self.classify(self.generate(z) - self.residual[rows])

    def __call__(self, z: torch.Tensor, rows: torch.Tensor) -> Evaluation:
        llh = self.llh(z, rows)
        each = torch.arange(len(z), device=z.device)
        true, probe = llh[each, self.true[rows]], llh[each, self.probe[rows]]
        distance = ((z - self.z0[rows]) ** 2).reshape(len(z), -1).sum(1)
        equality = (true - probe)[:, None]
        if not self.ranked:
            return Evaluation(distance, equality, llh.new_zeros(len(z), 0))
        others = other_classes(llh, self.true[rows], self.probe[rows])
        inequality = torch.cat([others - true[:, None], others - probe[:, None]], dim=1) + self.margin
        return Evaluation(distance, equality, inequality)


def other_classes(llh: torch.Tensor, true: torch.Tensor, probe: torch.Tensor) -> torch.Tensor:
    """(N, K-2) the log-likelihoods of every class but the true and probe ones, in class order."""
    keep = torch.ones_like(llh, dtype=torch.bool)
    rows = torch.arange(len(llh), device=llh.device)
    keep[rows, true] = False
    keep[rows, probe] = False
    return llh[keep].reshape(len(llh), -1)


def constraint_report(llh: np.ndarray, true: np.ndarray, probe: np.ndarray, margin: float,
                      tolerance: float) -> dict[str, np.ndarray]:
    """Which of Equation 2's constraints hold at the final point (within `tolerance`), per sample."""
    rows = np.arange(len(llh))
    others = other_classes(torch.from_numpy(llh), torch.from_numpy(true), torch.from_numpy(probe)).numpy()
    best_other = others.max(axis=1) if others.shape[1] else np.full(len(llh), -np.inf)
    equal = np.abs(llh[rows, true] - llh[rows, probe]) <= tolerance
    true_above = best_other - llh[rows, true] <= -margin + tolerance
    probe_above = best_other - llh[rows, probe] <= -margin + tolerance
    top_two = np.minimum(llh[rows, true], llh[rows, probe]) > best_other
    return {"equal_likelihood": equal, "true_above_others": true_above, "probe_above_others": probe_above,
            "all": equal & true_above & probe_above, "true_and_probe_top_two": top_two}


class ProbeIsPrediction(OnnxplainError):
    """The asked probe class is already the predicted class of some inputs (`rows`)."""

    def __init__(self, rows: np.ndarray, label: str, names: list[str] | None = None):
        self.rows, self.label = rows, label
        shown = ", ".join(names if names is not None else [f"input {i}" for i in rows])
        super().__init__(f"the probe class {label} is already the predicted class of {shown}; ask about another class")


class CDeepEx(Method):
    """CDeepEx (contrastive deep explanations): why the classifier chose its top-1 class and not `target` (the probe).

    generator: the ONNX generator (path or loaded `Model`), latent (N, k) -> the classifier's input.
    margin: how far (in log-likelihood) true and probe must stay above every other class (the paper's -epsilon).
    tolerance: constraint violation still counted as satisfied. kappa: weight of the misclassification cost in
    Procedure 2; restarts, fit_steps, fit_rate: its random starts, Adam steps and step size.
    outer_steps, inner_steps, learning_rate, penalty, growth: the augmented Lagrangian's settings (`lagrangian`).

    Diagnostics (per input): true_class, probe_class, llh_input, llh_final (log-likelihoods of D(G(z_e) - Delta)),
    the constraint flags of `constraint_report`, z0, z_explanation, residual (Delta), start_image (G(z0)),
    explanation_image (G(z_e)), reconstruction_error ||Delta||, latent_distance ||z_e - z0||, the solver's
    outer_steps, penalty, stationarity (the KKT residual ||grad of the Lagrangian|| at z_e) and converged (feasible,
    stationary, multipliers settled), and the optimisation path: path_z (N, T, k) and path_llh (N, T, K), the start
    and the point after each multiplier update (G(path_z) gives the paper's Fig. 5a pictures).
    """

    name = "cdeepex"
    ranked = True

    def __init__(self, generator, *, margin: float = 0.1, tolerance: float = 0.02, kappa: float = 1.0,
                 restarts: int = 4, fit_steps: int = 300, fit_rate: float = 0.05, outer_steps: int = 30,
                 inner_steps: int = 100, learning_rate: float = 0.05, penalty: float = 1.0, growth: float = 4.0,
                 seed: int = 0, device: str = "cpu", batch_size: int | None = None, progress: bool = True):
        restarts, fit_steps, outer_steps, inner_steps = (whole_number(name, value, 1) for name, value in (
            ("restarts", restarts), ("fit_steps", fit_steps), ("outer_steps", outer_steps),
            ("inner_steps", inner_steps)))
        batch_size = optional_whole_number("batch_size", batch_size, 1)
        margin, tolerance, kappa = (real_number(name, value, 0) for name, value in
                                    (("margin", margin), ("tolerance", tolerance), ("kappa", kappa)))
        penalty, learning_rate, fit_rate = (real_number(name, value, 0, exclusive=True) for name, value in
                                            (("penalty", penalty), ("learning_rate", learning_rate),
                                             ("fit_rate", fit_rate)))
        growth = real_number("growth", growth, 1)
        self.generator, self.margin, self.tolerance, self.kappa = generator, margin, tolerance, kappa
        self.restarts, self.fit_steps, self.fit_rate = restarts, fit_steps, fit_rate
        self.outer_steps, self.inner_steps, self.learning_rate = outer_steps, inner_steps, learning_rate
        self.penalty, self.growth = penalty, growth
        self.seed = seed_number(seed)
        self.device, self.batch_size, self.progress = device, batch_size, progress
        self._generator: tuple | None = None   # (classifier, Generator) of the last classifier: checked once

    @property
    def solver(self) -> AugmentedLagrangian:
        return AugmentedLagrangian(outer_steps=self.outer_steps, inner_steps=self.inner_steps,
                                   learning_rate=self.learning_rate, penalty=self.penalty, growth=self.growth,
                                   tolerance=self.tolerance)

    @property
    def params(self) -> dict:
        names = ("margin", "tolerance", "kappa", "restarts", "fit_steps", "fit_rate", "outer_steps", "inner_steps",
                 "learning_rate", "penalty", "growth", "seed")
        return {name: getattr(self, name) for name in names}

    def generator_for(self, model) -> "Generator":
        """The generator, checked against `model` once (loading and verifying it takes a while)."""
        if isinstance(self.generator, Generator):
            return self.generator
        if self._generator is None or self._generator[0] is not model:
            self._generator = (model, Generator(self.generator, model, self.device))
        return self._generator[1]

    def explain(self, model, x: np.ndarray, target: Target | None = None) -> Explanation:
        require_model(model)
        x = model.check_input(x)
        generator = self.generator_for(model)
        for what, taken in (("classifier", model.input_dtype), ("generator", generator.model.input_dtype)):
            if np.dtype(taken) != np.float32:   # the latent search, its starts and multipliers are float32
                raise OnnxplainError(f"a contrastive explanation searches the latent space in float32; this {what} "
                                     f"takes {np.dtype(taken)}")
        executor = model.torch(self.device)
        size = self.batch_size or max(1, executor.batch_size(x.shape[1:]) // self.restarts)
        llh_input = log_likelihoods(executor, x, size)
        true, probe = self.classes(model, llh_input, as_target(model, target))
        starts = latent_starts(x, self.seed, self.restarts, generator.latent_shape)
        parts = []
        with progress_bar(total=len(x) * (self.fit_steps + self.outer_steps), desc=self.name,
                          disable=not self.progress) as bar:
            for start in range(0, len(x), size):
                rows = slice(start, start + size)
                parts.append(self._explain_batch(executor, generator, x[rows], true[rows], probe[rows],
                                                 starts[rows], bar))
        paths = ("path_llh", "path_z")
        result = {key: np.concatenate([part[key] for part in parts]) for key in parts[0] if key not in paths}
        result.update({key: _pad_paths([part[key] for part in parts]) for key in paths})
        result.update(constraint_report(result["llh_final"], true, probe, self.margin, self.tolerance))
        rows = np.arange(len(x))
        relevance = result["start_image"] - result["explanation_image"]
        diagnostics = {"true_class": true, "probe_class": probe, "llh_input": llh_input, **result}
        return Explanation(relevance.astype(np.float32), probe, llh_input[rows, true] - llh_input[rows, probe],
                           self.name, self.params, diagnostics)

    def classes(self, model, llh: np.ndarray, target: Target | None) -> tuple[np.ndarray, np.ndarray]:
        """(true, probe) per sample: the top-1 class and the asked probe (default: the second most likely)."""
        if target is not None and target.hidden:
            raise OnnxplainError("a contrastive explanation needs a probe class, not a hidden-layer target")
        if llh.shape[1] < 2:
            raise OnnxplainError(f"a contrastive explanation needs two classes or more; the class scores "
                                 f"({model.score_output!r}) have {llh.shape[1]} (--scores picks another output)")
        order = np.argsort(-llh, axis=1, kind="stable")
        true = order[:, 0]
        if target is None or target.index is None:
            return true, order[:, 1]
        if not 0 <= target.index < llh.shape[1]:
            raise OnnxplainError(f"probe class {target.index} is out of range: the model has {llh.shape[1]} classes")
        probe = np.full(len(llh), target.index)
        if np.any(probe == true):
            raise ProbeIsPrediction(np.flatnonzero(probe == true), model.label_of(target.index))
        return true, probe

    def _explain_batch(self, executor, generator, x, true, probe, starts, bar) -> dict[str, np.ndarray]:
        device = executor.device
        image = torch.from_numpy(x).to(device)
        true_t, probe_t = torch.as_tensor(true, device=device), torch.as_tensor(probe, device=device)
        classify = executor.log_likelihood
        z0, fit_loss = self.fit_latent(generator, classify, image, true_t, starts.to(device),
                                       on_step=lambda: bar.update(len(x)))
        with torch.no_grad():
            start = generator(z0)
        require_finite("the generator's fit G(z0) of the input", start, fit_loss)
        problem = ContrastProblem(classify, generator, z0, start - image, true_t, probe_t, self.margin, self.ranked)
        path_llh, path_z = [[] for _ in x], [[] for _ in x]

        def record(rows, z):
            with torch.no_grad():
                llh = problem.llh(z, rows).double().cpu().numpy()
            for row, point, values in zip(rows.tolist(), z.cpu().numpy(), llh):
                path_z[row].append(point)
                path_llh[row].append(values)

        solved = self.solver.minimize(z0, problem, record, on_step=bar.update)
        bar.update(int((self.outer_steps - solved.outer_steps).sum()))  # rows that finished early
        with torch.no_grad():
            final = generator(solved.z)
            llh_final = problem.llh(solved.z, torch.arange(len(x), device=device)).double().cpu().numpy()
        require_finite("the point z_e the solver reached", solved.z, final, llh_final)
        return {"start_image": start.cpu().numpy(), "explanation_image": final.cpu().numpy(),
                "residual": (start - image).cpu().numpy(), "z0": z0.cpu().numpy(), "z_explanation":
                solved.z.cpu().numpy(), "reconstruction_error": fit_loss,
                "latent_distance": np.sqrt(solved.evaluation.objective.double().cpu().numpy()),
                "llh_final": llh_final, "outer_steps": solved.outer_steps.cpu().numpy(),
                "penalty": solved.penalty.double().cpu().numpy(),
                "stationarity": solved.stationarity.double().cpu().numpy(),
                "converged": solved.converged.cpu().numpy(),
                "path_llh": [np.stack(p) for p in path_llh], "path_z": [np.stack(p) for p in path_z]}

    def fit_latent(self, generator, classify, image, true, starts, on_step=None):
        """Procedure 2 for a batch: (z0 (N, k), ||G(z0) - I|| (N,)), the best Adam run per input from `starts`
        (N, restarts, *latent) drawn from N(0, 1); `on_step` follows each Adam step."""
        n, r = starts.shape[:2]
        z = starts.reshape(n * r, *generator.latent_shape).clone().requires_grad_(True)
        targets, labels = image.repeat_interleave(r, dim=0), true.repeat_interleave(r)
        optimiser = torch.optim.Adam([z], lr=self.fit_rate)
        for _ in range(self.fit_steps):
            optimiser.zero_grad()
            self._fit_loss(generator, classify, z, targets, labels).sum().backward()
            optimiser.step()
            if on_step is not None:
                on_step()
        with torch.no_grad():
            loss = self._fit_loss(generator, classify, z, targets, labels).reshape(n, r)
            best = torch.nan_to_num(loss, nan=float("inf")).argmin(dim=1)
            z0 = z.detach().reshape(n, r, *generator.latent_shape)[torch.arange(n), best]
            error = (generator(z0) - image).reshape(n, -1).norm(dim=1)
        return z0, error.double().cpu().numpy()

    def _fit_loss(self, generator, classify, z, targets, labels) -> torch.Tensor:
        images = generator(z)
        distance = ((images - targets) ** 2).reshape(len(z), -1).sum(1)
        llh = classify(images)
        return distance - self.kappa * llh[torch.arange(len(z), device=z.device), labels]


class XGEMs(CDeepEx):
    """xGEMs as the CDeepEx paper implements it for comparison: Equation 2 without the ranking constraints."""

    name = "xgems"
    ranked = False


def log_likelihoods(executor, x: np.ndarray, size: int) -> np.ndarray:
    """(N, K) class log-likelihoods of the inputs by the torch executor (a log-softmax of the logits: exact for
    confident inputs, where the log of clipped probabilities would tie every unlikely class)."""
    with torch.no_grad():
        return np.concatenate([executor.log_likelihood(torch.from_numpy(x[i:i + size]).to(executor.device))
                               .double().cpu().numpy() for i in range(0, len(x), size)])


def latent_starts(x: np.ndarray, seed: int, restarts: int, latent_shape: tuple) -> torch.Tensor:
    """(N, restarts, *latent) N(0, 1) starts, drawn per input from `seed` and a digest of the input: an input gets
    the same starts alone or in any batch, in any order."""
    return torch.from_numpy(np.stack([rng.standard_normal((restarts, *latent_shape), dtype=np.float32)
                                      for rng in image_generators(x, seed)]))


def require_finite(what: str, *values) -> None:
    """A user error when any of `values` (tensors or arrays) holds NaN or infinity: the generator or classifier
    produced them, and the numbers after would be meaningless."""
    for value in values:
        finite = torch.isfinite(value).all() if isinstance(value, torch.Tensor) else np.isfinite(value).all()
        if not bool(finite):
            raise OnnxplainError(f"{what} is not finite (NaN or infinity): check the generator and the classifier")


def contrast_map(explanation: Explanation) -> np.ndarray:
    """G(z_e) - G(z0) shaped like the input: positive (red) where the probe needs ink added, negative (blue) where
    the input's ink would go."""
    return -explanation.relevance


def _pad_paths(paths: list[list[np.ndarray]]) -> np.ndarray:
    """(N, T, ...) from per-input paths (T_i, ...), repeating each path's last point up to the longest."""
    paths = [path for part in paths for path in part]
    length = max(len(path) for path in paths)
    return np.stack([np.concatenate([path, np.repeat(path[-1:], length - len(path), axis=0)]) for path in paths])
