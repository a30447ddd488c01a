"""A batched augmented-Lagrangian solver (method of multipliers, Bertsekas, Nonlinear Programming, 1999, §4.2).

Solves, independently for each row of a batch of variables z (N, k),

    min_z f(z)   subject to   h(z) = 0 (N, E),   g(z) <= 0 (N, I)

by minimising, for fixed multipliers lambda, mu and penalty c, the augmented Lagrangian

    L_c = f + lambda.h + c/2 |h|^2 + 1/(2c) sum_j (max(0, mu_j + c g_j)^2 - mu_j^2)

(inequalities through squared slack variables, eliminated in closed form as in §4.2), then updating

    lambda <- lambda + c h,    mu <- max(0, mu + c g),
    c <- beta c  while the row is not done and its violation did not fall below gamma times the previous one.

The violation is the largest |h_i| or max(0, g_j) of a row. Each inner minimisation is L-BFGS with an Armijo
backtracking line search, run until ||grad_z L_c|| <= `stationarity`, or until not even a steepest-descent step
lowers L_c (at a kink: ReLU networks are not smooth, and their gradient need not vanish at a minimum), or for
`inner_steps` iterations. grad_z L_c is grad f + lambda'.grad h + mu'.grad g with the updated multipliers lambda',
mu': the stationarity residual of the KKT conditions. A row is done once its violation is within `tolerance`, its
inner problem was solved and its multipliers settled: they moved by at most `multiplier_tolerance` times
1 + their size, or the update left z where it was (at a kink a range of multipliers fits the same point). Done rows
are frozen while the others go on, up to `outer_steps` updates.

Every row has its own multipliers, penalty, L-BFGS history and step sizes, so a row's iterates do not depend on
which rows share its batch: rows share forward and backward passes only.
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
    outer_steps: torch.Tensor          # (N,) multiplier updates per row
    stationarity: torch.Tensor         # (N,) the KKT stationarity residual at z (`residuals`)
    converged: torch.Tensor            # (N,) bool: done (feasible, inner problem solved, multipliers settled)


Problem = Callable[[torch.Tensor, torch.Tensor], Evaluation]  # (z of some rows, their row indices) -> Evaluation
Recorder = Callable[[torch.Tensor, torch.Tensor], None]       # (row indices, their z): the start, each outer step


@dataclass
class AugmentedLagrangian:
    """Method of multipliers with L-BFGS inner minimisations; `tolerance` is the violation counted as satisfied."""

    outer_steps: int = 30
    inner_steps: int = 100        # L-BFGS iterations at most per inner minimisation
    learning_rate: float = 0.05   # the length of each inner minimisation's first (steepest-descent) step
    penalty: float = 1.0          # c at the start
    growth: float = 4.0           # beta: penalty growth when the violation did not fall enough
    reduction: float = 0.25       # gamma: the fall asked for
    max_penalty: float = 1e4
    tolerance: float = 1e-2
    stationarity: float = 1e-3    # inner problems are solved to this gradient norm (or to a kink)
    multiplier_tolerance: float = 1e-3
    step_tolerance: float = 1e-6  # an outer step that moves z by less (relative) leaves it where it was
    history: int = 10             # L-BFGS memory

    def minimize(self, z: torch.Tensor, problem: Problem, record: Recorder | None = None,
                 on_step: Callable[[int], None] | None = None) -> SolverResult:
        """Solve from `z`; `record` sees the path, `on_step(rows)` follows each multiplier update of `rows` rows."""
        z = z.detach().clone()
        everyone = torch.arange(len(z), device=z.device)
        with torch.no_grad():
            first = problem(z, everyone)
        lam, mu = torch.zeros_like(first.equality), torch.zeros_like(first.inequality)
        c = torch.full_like(first.objective, self.penalty)
        previous = first.violation()
        steps = torch.zeros(len(z), dtype=torch.long, device=z.device)
        converged = torch.zeros(len(z), dtype=torch.bool, device=z.device)
        if record is not None:
            record(everyone, z)
        active = everyone
        for _ in range(self.outer_steps):
            if not len(active):
                break
            z_active, solved = self._inner(z[active], active, problem, lam[active], mu[active], c[active])
            with torch.no_grad():
                evaluation = problem(z_active, active)
                new_lam = lam[active] + c[active, None] * evaluation.equality
                new_mu = (mu[active] + c[active, None] * evaluation.inequality).clamp(min=0)
                change = _row_max(torch.cat([new_lam - lam[active], new_mu - mu[active]], dim=1).abs())
                size = 1 + _row_max(torch.cat([new_lam, new_mu], dim=1).abs())
                violation = evaluation.violation()
                moved = (z_active - z[active]).reshape(len(active), -1).norm(dim=1)
                stuck = moved <= self.step_tolerance * (1 + z[active].reshape(len(active), -1).norm(dim=1))
                settled = (change <= self.multiplier_tolerance * size) | stuck
                done = (violation <= self.tolerance) & solved & settled
                grow = ~done & (violation > self.reduction * previous[active])
                c[active] = torch.where(grow, (c[active] * self.growth).clamp(max=self.max_penalty), c[active])
                z[active], lam[active], mu[active], previous[active] = z_active, new_lam, new_mu, violation
                steps[active] += 1
                converged[active] = done
            if record is not None:
                record(active, z_active)
            if on_step is not None:
                on_step(len(active))
            active = active[~done]
        with torch.no_grad():
            evaluation = problem(z, everyone)
        return SolverResult(z, evaluation, lam, mu, c, steps, self.residuals(z, problem, lam, mu), converged)

    def lagrangian(self, evaluation: Evaluation, lam, mu, c) -> torch.Tensor:
        """(N,) the augmented Lagrangian of each row."""
        h, g = evaluation.equality, evaluation.inequality
        value = evaluation.objective + (lam * h).sum(1) + 0.5 * c * (h * h).sum(1)
        shifted = (mu + c[:, None] * g).clamp(min=0)
        return value + ((shifted * shifted - mu * mu).sum(1)) / (2 * c)

    def _inner(self, z: torch.Tensor, rows: torch.Tensor, problem: Problem, lam, mu, c):
        """L-BFGS on each row's L_c from `z` (n, ...): (the final z, whether each row's minimisation finished: its
        gradient norm is within `stationarity`, or not even a steepest-descent step lowers L_c any more)."""
        def value_and_gradient(point, at):  # `at`: positions among this call's rows
            point = point.detach().requires_grad_(True)
            value = self.lagrangian(problem(point.reshape(len(at), *shape), rows[at]), lam[at], mu[at], c[at])
            (gradient,) = torch.autograd.grad(value.sum(), point)
            return value.detach(), gradient

        shape, n = z.shape[1:], len(z)
        x = z.detach().reshape(n, -1).clone()
        value, gradient = value_and_gradient(x, torch.arange(n, device=x.device))
        memory = LimitedMemory(self.history, x, self.learning_rate / gradient.norm(dim=1).clamp(min=1e-12))
        finished = gradient.norm(dim=1) <= self.stationarity
        going = torch.nonzero(~finished).flatten()
        for _ in range(self.inner_steps):
            if not len(going):
                break
            direction = memory.direction(going, gradient[going])
            slope = (direction * gradient[going]).sum(1)
            uphill = slope >= 0  # a stale curvature pair: fall back to steepest descent, forget the history
            if uphill.any():
                memory.forget(going[uphill])
                direction[uphill] = -memory.scale[going[uphill], None] * gradient[going[uphill]]
                slope = (direction * gradient[going]).sum(1)
            found, new_x, new_value, new_gradient = _armijo(value_and_gradient, x[going], going, value[going],
                                                            slope, direction)
            accepted, failed = going[found], going[~found]
            memory.remember(accepted, new_x[found] - x[accepted], new_gradient[found] - gradient[accepted])
            x[accepted], value[accepted], gradient[accepted] = new_x[found], new_value[found], new_gradient[found]
            finished[failed[memory.empty(failed)]] = True  # steepest descent failed too: a minimum to precision
            memory.forget(failed)                           # the others retry along the steepest descent
            finished[accepted[gradient[accepted].norm(dim=1) <= self.stationarity]] = True
            going = going[~finished[going]]
        return x.reshape(n, *shape), finished

    def residuals(self, z: torch.Tensor, problem: Problem, lam, mu) -> torch.Tensor:
        """(N,) the KKT stationarity residual ||grad f + lam.grad h + mu.grad g|| / ||grad f|| of each row."""
        z = z.detach().requires_grad_(True)
        evaluation = problem(z, torch.arange(len(z), device=z.device))
        lagrangian = evaluation.objective + (lam * evaluation.equality).sum(1) + (mu * evaluation.inequality).sum(1)
        (total,) = torch.autograd.grad(lagrangian.sum(), z, retain_graph=True)
        (objective,) = torch.autograd.grad(evaluation.objective.sum(), z)
        return total.reshape(len(z), -1).norm(dim=1) / objective.reshape(len(z), -1).norm(dim=1).clamp(min=1e-12)


def _armijo(value_and_gradient, x, at, value, slope, direction, shrink: float = 0.5, tries: int = 30,
            sufficient: float = 1e-4):
    """Per-row backtracking from step 1: (found (n,) bool, new x, its values, its gradients)."""
    found = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    new_x, new_value, new_gradient = x.clone(), value.clone(), torch.zeros_like(x)
    step = torch.ones_like(value)
    pending = torch.arange(len(x), device=x.device)
    for _ in range(tries):
        trial = x[pending] + step[pending, None] * direction[pending]
        trial_value, trial_gradient = value_and_gradient(trial, at[pending])
        good = (trial_value < value[pending]) & (  # a strict decrease: equal values mean float precision is spent
            trial_value <= value[pending] + sufficient * step[pending] * slope[pending])
        chosen = pending[good]
        found[chosen] = True
        new_x[chosen], new_value[chosen], new_gradient[chosen] = trial[good], trial_value[good], trial_gradient[good]
        pending = pending[~good]
        if not len(pending):
            break
        step[pending] *= shrink
    return found, new_x, new_value, new_gradient


class LimitedMemory:
    """Per-row L-BFGS curvature pairs (the two-loop recursion of Nocedal & Wright, Algorithm 7.4); a row's pairs
    are its own, kept in the order it made them."""

    def __init__(self, size: int, x: torch.Tensor, scale: torch.Tensor):
        n, k = x.shape
        self.s = x.new_zeros(n, size, k)
        self.y = x.new_zeros(n, size, k)
        self.rho = x.new_zeros(n, size)      # 0 marks an empty slot
        self.count = torch.zeros(n, dtype=torch.long, device=x.device)
        self.scale = scale                   # H0 = scale * I per row

    def direction(self, rows: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        """-H gradient for `rows`."""
        size = self.s.shape[1]
        s, y, rho = self.s[rows], self.y[rows], self.rho[rows]
        q, alphas = gradient.clone(), []
        latest, pick = self.count[rows], torch.arange(len(rows), device=gradient.device)
        for back in range(size):  # newest to oldest
            slot = (latest - 1 - back) % size
            alpha = rho[pick, slot] * (s[pick, slot] * q).sum(1)
            q = q - alpha[:, None] * y[pick, slot]
            alphas.append((slot, alpha))
        r = self.scale[rows, None] * q
        for slot, alpha in reversed(alphas):
            beta = rho[pick, slot] * (y[pick, slot] * r).sum(1)
            r = r + (alpha - beta)[:, None] * s[pick, slot]
        return -r

    def remember(self, rows: torch.Tensor, s: torch.Tensor, y: torch.Tensor) -> None:
        """Keep the pairs with positive curvature (the others would make H indefinite)."""
        curvature = (s * y).sum(1)
        keep = curvature > 1e-10 * s.norm(dim=1) * y.norm(dim=1)
        rows, s, y, curvature = rows[keep], s[keep], y[keep], curvature[keep]
        slot = self.count[rows] % self.s.shape[1]
        self.s[rows, slot], self.y[rows, slot], self.rho[rows, slot] = s, y, 1 / curvature
        self.scale[rows] = curvature / (y * y).sum(1)
        self.count[rows] += 1

    def forget(self, rows: torch.Tensor) -> None:
        self.rho[rows] = 0

    def empty(self, rows: torch.Tensor) -> torch.Tensor:
        """(len(rows),) bool: no curvature pair kept, so the direction is the (scaled) steepest descent."""
        return (self.rho[rows] == 0).all(dim=1)


def _row_max(values: torch.Tensor) -> torch.Tensor:
    return values.amax(dim=1) if values.shape[1] else values.new_zeros(len(values))
