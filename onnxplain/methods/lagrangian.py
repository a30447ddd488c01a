"""A batched augmented-Lagrangian solver (method of multipliers, Bertsekas, Nonlinear Programming, 1999, §4.2).

Solves, independently for each row of a batch of variables z (N, k),

    min_z f(z)   subject to   h(z) = 0 (N, E),   g(z) <= 0 (N, I)

by minimising, for fixed multipliers lambda, mu and penalty c, the augmented Lagrangian

    L_c = f + lambda.h + c/2 |h|^2 + 1/(2c) sum_j (max(0, mu_j + c g_j)^2 - mu_j^2)

(inequalities through squared slack variables, eliminated in closed form as in §4.2), then updating

    lambda <- lambda + c h,    mu <- max(0, mu + c g),
    c <- beta c  unless the constraint violation fell below gamma times the previous one.

The violation is the largest |h_i| or max(0, g_j) of a row. The inner minimisation is `inner_steps` Adam steps
on z, with a cosine-decaying step size that itself shrinks by `decay` every outer step, so that late iterates settle.
The solver stops once every row's violation is within `tolerance` (after at least two updates) or after
`outer_steps`. Every row has its own multipliers and penalty, so one batched forward and backward pass serves
all rows.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class Evaluation:
    """The problem at z: objective f (N,), equality residuals h (N, E), inequality values g (N, I) (<= 0 wanted)."""

    objective: torch.Tensor
    equality: torch.Tensor
    inequality: torch.Tensor

    def violation(self) -> torch.Tensor:
        """(N,) the largest constraint violation of each row."""
        parts = [self.equality.abs(), self.inequality.clamp(min=0)]
        parts = [p for p in parts if p.shape[1]]
        return torch.cat(parts, dim=1).amax(dim=1) if parts else torch.zeros_like(self.objective)


@dataclass
class SolverResult:
    z: torch.Tensor                    # (N, k) the final iterate
    evaluation: Evaluation             # at z
    equality_multipliers: torch.Tensor
    inequality_multipliers: torch.Tensor
    penalty: torch.Tensor              # (N,) final penalty parameters
    outer_steps: int


Problem = Callable[[torch.Tensor], Evaluation]
Recorder = Callable[[torch.Tensor], None]  # called with the iterate at the start and every `record_every` steps


@dataclass
class AugmentedLagrangian:
    """Method of multipliers with Adam inner steps; `tolerance` is the violation counted as satisfied."""

    outer_steps: int = 30
    inner_steps: int = 40
    learning_rate: float = 0.05
    penalty: float = 1.0          # c at the start
    growth: float = 4.0           # beta: penalty growth when the violation did not fall enough
    reduction: float = 0.25       # gamma: the fall asked for
    max_penalty: float = 1e4
    tolerance: float = 1e-2
    decay: float = 0.9            # the inner step size shrinks by this factor every outer step
    record_every: int = 10        # inner steps between two recorded points of the path

    def minimize(self, z: torch.Tensor, problem: Problem, record: Recorder | None = None,
                 on_step: Callable[[], None] | None = None) -> SolverResult:
        """Solve from `z`; `record` sees the path, `on_step` is called after each multiplier update."""
        z = z.detach().clone()
        with torch.no_grad():
            first = problem(z)
        lam = torch.zeros_like(first.equality)
        mu = torch.zeros_like(first.inequality)
        c = torch.full_like(first.objective, self.penalty)
        previous = first.violation()
        if record is not None:
            record(z)
        evaluation, steps = first, 0
        for steps in range(1, self.outer_steps + 1):
            z = self._inner(z, problem, lam, mu, c, self.learning_rate * self.decay ** (steps - 1), record)
            with torch.no_grad():
                evaluation = problem(z)
                violation = evaluation.violation()
                lam = lam + c[:, None] * evaluation.equality
                mu = (mu + c[:, None] * evaluation.inequality).clamp(min=0)
                stalled = violation > self.reduction * previous
                c = torch.where(stalled, (c * self.growth).clamp(max=self.max_penalty), c)
                previous = violation
            if on_step is not None:
                on_step()
            if bool((violation <= self.tolerance).all()) and steps >= 2:
                break
        return SolverResult(z, evaluation, lam, mu, c, steps)

    def lagrangian(self, evaluation: Evaluation, lam, mu, c) -> torch.Tensor:
        """(N,) the augmented Lagrangian of each row."""
        h, g = evaluation.equality, evaluation.inequality
        value = evaluation.objective + (lam * h).sum(1) + 0.5 * c * (h * h).sum(1)
        shifted = (mu + c[:, None] * g).clamp(min=0)
        return value + ((shifted * shifted - mu * mu).sum(1)) / (2 * c)

    def _inner(self, z: torch.Tensor, problem: Problem, lam, mu, c, rate: float, record) -> torch.Tensor:
        z = z.detach().clone().requires_grad_(True)
        optimiser = torch.optim.Adam([z], lr=rate)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, self.inner_steps, eta_min=rate / 10)
        for step in range(1, self.inner_steps + 1):
            optimiser.zero_grad()
            self.lagrangian(problem(z), lam, mu, c).sum().backward()
            optimiser.step()
            schedule.step()
            if record is not None and (step % self.record_every == 0 or step == self.inner_steps):
                record(z.detach())
        return z.detach()
