"""Check RACO's convergence theory on synthetic problems with known structure
(RACO §3, Theorems 3.1 and 3.2).

Deterministic gradient descent θ_{t+1} = θ_t − η Σ_k a_k(θ_t) ∇L_k(θ_t), with a = solve(...).coeffs,
run on convex quadratics, least squares and logistic regression (``conflict_opt.problems``), and
the checks below. The assumptions are the theorems': exact gradients, each L_i ≥ 0, η ≤ 1/L_w
(L_w a smoothness constant of 𝓛_w = Σ w_i L_i), c ∈ [0, 1), w ∈ Δ.

* ``theorem_3_1``: min_{t<T} M(θ_t)² ≤ 2𝓛_w(θ_0) / (η(1 − c²)T) at every T, where
  M(θ) = min_{λ∈Δ} ‖Σ λ_i ∇L_i(θ)‖ (for MGDA, which has no weights, its own bound
  2 min_i L_i(θ_0)/(ηT) with η ≤ 1/max_i L_i, from ⟨g_i, d⟩ ≥ ‖d‖²).
* ``rate``: the log-log slope of min_{t<T} M² against T is at most −0.9 (O(1/T) or faster).
* ``step_certificate``: every step has RACO's form ‖G_0 − g_0‖ = c‖g_0‖ (or G_0 = g_0; within
  1e-6 plus the Gram's resolution of ‖g_0‖, 64 eps (Σ w_i‖g_i‖/‖g_0‖)²) and
  𝓛_w(θ_{t+1}) ≤ 𝓛_w(θ_t) − ηΓ(ρ_t)‖∇𝓛_w(θ_t)‖² with ρ_t = cos(g_0, G_0 − g_0) and
  Γ(ρ) = 1 + cρ − (L_w η/2)(1 + c² + 2cρ).
* ``theorem_3_2``: for K = 2, ρ̃ = cos(g_0, G̃_p) ≥ ρ = cos(g_0, G_p) at every step, strictly at
  steps where the dual is interior, p ≠ w and the gradients are not colinear; the extra
  guaranteed decrease Γ(ρ̃) − Γ(ρ) = c(1 − L_w η)(ρ̃ − ρ) is reported.
* ``clipping_k3``: for K = 3 the fraction of steps where clipping lowers ρ (expected > 0).
* ``weight_respecting``: at the end ‖∇𝓛_w‖ has fallen by 1e-4 and θ_T is within 1e-3 (relative)
  of the exact minimiser of 𝓛_w, for every weight-respecting method (all but MGDA).
* ``front_sweep``: on a two-objective quadratic, final points of CAGrad-Clip for w_1 from 0 to 1
  move monotonically along the Pareto front (L_1 non-increasing, L_2 non-decreasing).
* ``cagrad_toy`` (reported, not a theorem): which methods reach the Pareto segment of the CAGrad
  paper's toy problem from its three starts, with Adam as in that paper.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ._types import SolveResult, Status
from .problems import (
    CAGradToy,
    ConvexQuadratic,
    LeastSquares,
    LogisticRegression,
    MultiObjectiveProblem,
)
from .solvers import solve

Solver = Callable[..., SolveResult]

PROBLEMS = ("quadratic", "least_squares", "logistic")
VERIFY_METHODS = ("cagrad_clip", "cagrad", "linear", "mgda")
# Tolerance of the inequality checks, relative to the quantities compared (float64 round-off
# accumulated over a step, with headroom).
_TOL = 1e-9


@dataclasses.dataclass(frozen=True)
class VerifyConfig:
    """What ``verify`` runs. The defaults are the README's main job (≤ 2 minutes on 2 cores).

    Attributes:
        problems: problem families, from ``("quadratic", "least_squares", "logistic")``.
        methods: methods, from ``("cagrad_clip", "cagrad", "linear", "mgda")``.
        ks: numbers of objectives.
        cs: radii c for the CAGrad methods (linear uses c = 0, MGDA has none).
        seeds: one problem instance and one weight vector per seed.
        steps: gradient steps per run.
        dim: parameter dimension of the synthetic problems.
        step_scale: η = step_scale / L (must be in (0, 1]; < 1 makes Theorem 3.2's gain positive).
        sweep: number of weights w_1 ∈ [0, 1] in the two-objective front sweep (0 skips it).
        toy_steps: Adam steps on the CAGrad toy (0 skips it).
        toy_lr: Adam's learning rate on the toy.
        output: folder for ``report.json`` and the PNG plots (None writes nothing).
    """

    problems: tuple[str, ...] = PROBLEMS
    methods: tuple[str, ...] = VERIFY_METHODS
    ks: tuple[int, ...] = (2, 3, 5)
    cs: tuple[float, ...] = (0.4, 0.7)
    seeds: tuple[int, ...] = (0, 1)
    steps: int = 300
    dim: int = 8
    step_scale: float = 0.5
    sweep: int = 7
    toy_steps: int = 2000
    toy_lr: float = 0.02
    output: pathlib.Path | None = pathlib.Path("verify-output")

    def __post_init__(self) -> None:
        for name in self.problems:
            if name not in PROBLEMS:
                raise ValueError(f"unknown problem {name!r}; choose from {PROBLEMS}.")
        for method in self.methods:
            if method not in VERIFY_METHODS:
                raise ValueError(f"unknown method {method!r}; choose from {VERIFY_METHODS}.")
        if not self.ks or any(k < 2 for k in self.ks):
            raise ValueError(f"`ks` must be numbers of objectives >= 2, got ks={self.ks}.")
        if any(not 0.0 <= c < 1.0 for c in self.cs):
            raise ValueError(f"every c must be in [0, 1), got cs={self.cs}.")
        if not 0.0 < self.step_scale <= 1.0:
            raise ValueError(f"`step_scale` must be in (0, 1], got step_scale={self.step_scale}.")
        if self.steps < 10:
            raise ValueError(f"`steps` must be at least 10, got steps={self.steps}.")
        if not self.seeds:
            raise ValueError("`seeds` must name at least one seed.")

    @classmethod
    def quick(cls, output: pathlib.Path | None = None) -> VerifyConfig:
        """A seconds-long smoke run: one problem family, K = 2 and 3, short runs."""
        return cls(
            problems=("quadratic",),
            ks=(2, 3),
            cs=(0.5,),
            seeds=(0,),
            steps=150,
            sweep=3,
            toy_steps=300,
            output=output,
        )


@dataclasses.dataclass
class Check:
    """One verified claim: ``passed`` is None for reported-only figures."""

    name: str
    claim: str
    passed: bool | None
    figures: dict[str, Any]


@dataclasses.dataclass
class VerifyReport:
    """Everything ``verify`` measured; ``ok`` is False when a theorem check failed."""

    config: VerifyConfig
    checks: list[Check]
    runs: list[dict[str, Any]]
    toy: list[dict[str, Any]]
    files: list[str]

    @property
    def ok(self) -> bool:
        return all(check.passed is not False for check in self.checks)

    def to_json(self) -> dict[str, Any]:
        config = dataclasses.asdict(self.config)
        config["output"] = None if self.config.output is None else str(self.config.output)
        return {
            "ok": self.ok,
            "config": config,
            "checks": [dataclasses.asdict(check) for check in self.checks],
            "runs": self.runs,
            "toy": self.toy,
            "files": self.files,
        }

    def table(self) -> str:
        """The terminal table: one line per check with its figures."""
        lines = [f"{'check':<18} {'result':<7} figures", "-" * 100]
        for check in self.checks:
            result = {True: "pass", False: "FAIL", None: "info"}[check.passed]
            figures = ", ".join(f"{k}={_fmt(v)}" for k, v in check.figures.items())
            lines.append(f"{check.name:<18} {result:<7} {figures}")
        lines.append("-" * 100)
        lines.append("all theorem checks passed" if self.ok else "SOME THEOREM CHECKS FAILED")
        return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) + "}"
    return str(value)


def _make_problem(name: str, k: int, dim: int, seed: int) -> MultiObjectiveProblem:
    if name == "quadratic":
        return ConvexQuadratic(k, dim, condition=5.0, seed=seed)
    if name == "least_squares":
        return LeastSquares(k, dim, seed=seed)
    return LogisticRegression(k, dim, seed=seed)


@dataclasses.dataclass
class _Run:
    problem: MultiObjectiveProblem
    weights: torch.Tensor  # [K]
    method: str
    c: float
    eta: float
    smoothness: float
    theta: torch.Tensor  # [dim]
    label: dict[str, Any]
    # Per-step records, filled by _descend.
    loss_w: list[float] = dataclasses.field(default_factory=list)
    grad_w_sq: list[float] = dataclasses.field(default_factory=list)
    m_sq: list[float] = dataclasses.field(default_factory=list)
    losses: list[list[float]] = dataclasses.field(default_factory=list)
    rho: list[float] = dataclasses.field(default_factory=list)  # cos(g_0, G_p)
    rho_clip: list[float] = dataclasses.field(default_factory=list)  # cos(g_0, G̃_p)
    rho_step: list[float] = dataclasses.field(default_factory=list)  # cos(g_0, G_0 − g_0)
    radius_error: list[float] = dataclasses.field(default_factory=list)
    active: list[bool] = dataclasses.field(default_factory=list)  # G_0 ≠ g_0
    strict_candidate: list[bool] = dataclasses.field(default_factory=list)
    statuses: list[int] = dataclasses.field(default_factory=list)


def _cos(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine of ``[R, D]`` tensors; 0 where either vanishes."""
    nu, nv = u.norm(dim=-1), v.norm(dim=-1)
    denom = nu * nv
    return torch.where(denom > 0, (u * v).sum(-1) / torch.where(denom > 0, denom, 1.0), 0.0)


def _group_step(runs: Sequence[_Run], solver: Solver) -> None:
    """One gradient step for runs sharing (K, method, c), with one batched solve."""
    grads = torch.stack([run.problem.gradients(run.theta) for run in runs])  # [R, K, D]
    gram = grads @ grads.transpose(-1, -2)  # [R, K, K]
    weights = torch.stack([run.weights for run in runs])  # [R, K]
    method, c = runs[0].method, runs[0].c
    result = solver(gram, weights, method=method, c=c)
    # Pareto-criticality M(θ) = min_λ ‖Σλ_i g_i‖, by the package's MGDA solve.
    mgda = solve(gram, method="mgda", validate=False)
    m_dir = (mgda.coeffs.unsqueeze(-2) @ grads).squeeze(-2)  # [R, D]
    g0 = (weights.unsqueeze(-2) @ grads).squeeze(-2)  # [R, D]
    step = (result.coeffs.unsqueeze(-2) @ grads).squeeze(-2)  # [R, D]
    g_p = (result.dual.unsqueeze(-2) @ grads).squeeze(-2)
    g_clip = (result.clipped.unsqueeze(-2) @ grads).squeeze(-2)
    correction = step - g0
    rho, rho_clip, rho_step = _cos(g0, g_p), _cos(g0, g_clip), _cos(g0, correction)
    g0_norm = g0.norm(dim=-1)
    radius_error = (correction.norm(dim=-1) - c * g0_norm).abs() / g0_norm.clamp_min(1e-300)
    # The solver sees ‖g_0‖² = wᵀHw only to eps·(Σ w_i‖g_i‖)²: relative to ‖g_0‖² that is the
    # resolution of the radius, large once the weighted gradient nearly cancels (convergence).
    lengths = (weights * grads.norm(dim=-1)).sum(-1)
    resolution = 64 * torch.finfo(torch.float64).eps * (lengths / g0_norm.clamp_min(1e-300)) ** 2
    # A zero correction is RACO's G_0 = g_0 branch, which is also of the certified form.
    active = correction.norm(dim=-1) > 1e-12 * g0_norm
    radius_error = torch.where(active, radius_error, 0.0)
    radius_error = torch.where(radius_error <= resolution, 0.0, radius_error)
    # Theorem 3.2's conditions for a strict gain (K = 2): interior dual, p ≠ w, not colinear.
    p, w = result.dual, weights
    interior = ((p > 1e-6) & (p < 1 - 1e-6)).all(-1) & ((w > 1e-6).all(-1))
    colinear = _cos(grads[:, 0], grads[:, -1]).abs() > 1 - 1e-9
    strict = interior & ((p - w).abs().max(-1).values > 1e-6) & ~colinear & (c > 0)
    for i, run in enumerate(runs):
        losses = run.problem.losses(run.theta)
        run.losses.append(losses.tolist())
        run.loss_w.append(float(run.weights @ losses))
        run.grad_w_sq.append(float(g0[i] @ g0[i]))
        run.m_sq.append(float(m_dir[i] @ m_dir[i]))
        run.rho.append(float(rho[i]))
        run.rho_clip.append(float(rho_clip[i]))
        run.rho_step.append(float(rho_step[i]))
        run.radius_error.append(float(radius_error[i]))
        run.active.append(bool(active[i]))
        run.strict_candidate.append(bool(strict[i]))
        run.statuses.append(int(result.status[i]))
        run.theta = run.theta - run.eta * step[i]


def _descend(runs: list[_Run], steps: int, solver: Solver, tick: Callable[[], None]) -> None:
    groups: dict[tuple[int, str, float], list[_Run]] = {}
    for run in runs:
        groups.setdefault((run.problem.num_objectives, run.method, run.c), []).append(run)
    for _ in range(steps):
        for group in groups.values():
            _group_step(group, solver)
        tick()
    for run in runs:  # the final point's losses and gradient, for the limit checks
        losses = run.problem.losses(run.theta)
        g0 = run.weights @ run.problem.gradients(run.theta)
        run.losses.append(losses.tolist())
        run.loss_w.append(float(run.weights @ losses))
        run.grad_w_sq.append(float(g0 @ g0))


def _build_runs(config: VerifyConfig) -> list[_Run]:
    runs = []
    for name in config.problems:
        for k in config.ks:
            for seed in config.seeds:
                problem = _make_problem(name, k, config.dim, seed)
                rng = np.random.default_rng([seed, k, 17])
                weights = torch.tensor(rng.dirichlet(np.ones(k)), dtype=torch.float64)
                theta0 = problem.initial_point(seed)
                for method in config.methods:
                    # Linear is c = 0; MGDA has no radius.
                    cs = config.cs if method in ("cagrad_clip", "cagrad") else (0.0,)
                    for c in cs:
                        if method == "mgda":
                            # MGDA's guarantee needs η ≤ 1/L_i for every objective.
                            eye = torch.eye(k, dtype=torch.float64)
                            smooth = max(problem.smoothness(eye[i]) for i in range(k))
                        else:
                            smooth = problem.smoothness(weights)
                        label = {"problem": name, "K": k, "seed": seed, "method": method, "c": c}
                        runs.append(
                            _Run(
                                problem,
                                weights,
                                method,
                                c,
                                config.step_scale / smooth,
                                smooth,
                                theta0.clone(),
                                label,
                            )
                        )
    return runs


def _prefix_min(values: Sequence[float]) -> np.ndarray:
    return np.minimum.accumulate(np.asarray(values, dtype=np.float64))


def _theorem_bound(run: _Run, horizon: np.ndarray) -> np.ndarray:
    if run.method == "mgda":
        return 2.0 * min(run.losses[0]) / (run.eta * horizon)
    return 2.0 * run.loss_w[0] / (run.eta * (1.0 - run.c**2) * horizon)


def _check_theorem_3_1(runs: Sequence[_Run]) -> Check:
    worst, worst_label, worst_grad = 0.0, None, 0.0
    for run in runs:
        horizon = np.arange(1, len(run.m_sq) + 1, dtype=np.float64)
        bound = _theorem_bound(run, horizon)
        ratio = float((_prefix_min(run.m_sq) / bound).max())
        if ratio > worst:
            worst, worst_label = ratio, run.label
        if run.method != "mgda":
            grad_ratio = float((_prefix_min(run.grad_w_sq[:-1]) / bound).max())
            worst_grad = max(worst_grad, grad_ratio)
    return Check(
        "theorem_3_1",
        "min_{t<T} M(θ_t)² ≤ 2𝓛_w(θ_0)/(η(1−c²)T) at every T (MGDA: 2 min_i L_i(θ_0)/(ηT))",
        worst <= 1.0 + _TOL,
        {
            "worst_ratio": worst,
            "worst_ratio_grad_w": worst_grad,
            "runs": len(runs),
            "worst_run": worst_label,
        },
    )


def _fitted_slope(m_sq: Sequence[float]) -> float:
    """Log-log slope of min_{t<T} M² against T, over T where M² is above round-off."""
    best = _prefix_min(m_sq)
    horizon = np.arange(1, len(best) + 1, dtype=np.float64)
    usable = best > max(best[0], 1e-300) * 1e-24
    start = max(2, int(usable.sum()) // 10)
    x, y = np.log(horizon[start : usable.sum()]), np.log(best[start : usable.sum()])
    if len(x) < 3 or best[0] == 0:
        return -math.inf
    return float(np.polyfit(x, y, 1)[0])


def _check_rate(runs: Sequence[_Run]) -> Check:
    slopes = {}
    for run in runs:
        slopes.setdefault(run.method, []).append(_fitted_slope(run.m_sq))
    summary = {m: float(np.median(s)) for m, s in slopes.items()}
    worst = max(max(s) for s in slopes.values())
    return Check(
        "rate",
        "log-log slope of min_{t<T} M(θ_t)² against T is ≤ −0.9 (O(1/T) or faster)",
        worst <= -0.9,
        {"median_slope": summary, "worst_slope": worst},
    )


def _gamma(rho: np.ndarray, c: np.ndarray | float, l_eta: float) -> np.ndarray:
    """RACO's per-step factor Γ(ρ) = 1 + cρ − (L_w η/2)(1 + c² + 2cρ)."""
    return 1.0 + c * rho - 0.5 * l_eta * (1.0 + c * c + 2.0 * c * rho)


def _check_step_certificate(runs: Sequence[_Run]) -> Check:
    violations, steps, worst_radius, worst_slack = 0, 0, 0.0, -math.inf
    for run in runs:
        if run.method == "mgda":
            continue
        loss = np.asarray(run.loss_w)
        grad_sq = np.asarray(run.grad_w_sq[:-1])
        rho = np.asarray(run.rho_step)
        radius = np.asarray(run.radius_error)
        # Where the correction vanished (RACO's G_0 = g_0 branch) the step is plain descent.
        c_eff = np.where(np.asarray(run.active), run.c, 0.0)
        gamma = _gamma(rho, c_eff, run.smoothness * run.eta)
        promised = loss[:-1] - run.eta * gamma * grad_sq
        slack = loss[1:] - promised
        tol = _TOL * np.maximum(np.abs(loss[:-1]), run.eta * grad_sq) + 1e-15
        bad = (slack > tol) | (radius > 1e-6)
        violations += int(bad.sum())
        steps += len(bad)
        worst_radius = max(worst_radius, float(radius.max(initial=0.0)))
        # Relative slack only where the promised decrease is above the loss's round-off.
        meaningful = run.eta * grad_sq > 1e-12 * np.abs(loss[:-1])
        ratios = slack[meaningful] / (run.eta * grad_sq[meaningful])
        worst_slack = max(worst_slack, float(ratios.max(initial=-math.inf)))
    return Check(
        "step_certificate",
        "‖G_0−g_0‖ = c‖g_0‖ and 𝓛_w(θ_{t+1}) ≤ 𝓛_w(θ_t) − ηΓ(ρ_t)‖∇𝓛_w(θ_t)‖² at every step",
        violations == 0,
        {
            "steps": steps,
            "violations": violations,
            "max_radius_error": worst_radius,
            "max_relative_slack": worst_slack,
        },
    )


def _check_theorem_3_2(runs: Sequence[_Run]) -> Check:
    clip2 = [r for r in runs if r.method == "cagrad_clip" and r.problem.num_objectives == 2]
    if not clip2:
        return Check("theorem_3_2", "needs cagrad_clip with K = 2", None, {})
    lowered, strict_steps, strict_fail, gains = 0, 0, 0, []
    for run in clip2:
        rho, rho_clip = np.asarray(run.rho), np.asarray(run.rho_clip)
        strict = np.asarray(run.strict_candidate)
        lowered += int((rho_clip < rho - _TOL).sum())
        strict_steps += int(strict.sum())
        strict_fail += int((rho_clip[strict] <= rho[strict] + 1e-12).sum())
        gains.extend((run.c * (1 - run.smoothness * run.eta) * (rho_clip - rho)).tolist())
    # Decrease of the clipped method against the unclipped one on the same problem and c.
    ratios = []
    for run in clip2:
        twin = [
            r for r in runs if r.method == "cagrad" and r.problem is run.problem and r.c == run.c
        ]
        if twin and twin[0].loss_w[-1] > 0:
            ratios.append(run.loss_w[-1] / twin[0].loss_w[-1])
    return Check(
        "theorem_3_2",
        "K=2: cos(g_0, G̃_p) ≥ cos(g_0, G_p) every step, strictly under the theorem's conditions",
        # Strictness is tested on the steps meeting the conditions (``strict_steps`` of them);
        # a run with none still tests ρ̃ ≥ ρ on every step.
        lowered == 0 and strict_fail == 0,
        {
            "steps": sum(len(r.rho) for r in clip2),
            "steps_lowered": lowered,
            "strict_steps": strict_steps,
            "strict_failures": strict_fail,
            "mean_gamma_gain": float(np.mean(gains)) if gains else 0.0,
            "final_loss_ratio_clip_over_unclipped": float(np.median(ratios)) if ratios else None,
        },
    )


def _check_clipping_k3(runs: Sequence[_Run]) -> Check:
    clip3 = [r for r in runs if r.method == "cagrad_clip" and r.problem.num_objectives == 3]
    if not clip3:
        return Check("clipping_k3", "needs cagrad_clip with K = 3", None, {})
    total = sum(len(r.rho) for r in clip3)
    lowered = sum(int((np.asarray(r.rho_clip) < np.asarray(r.rho) - _TOL).sum()) for r in clip3)
    return Check(
        "clipping_k3",
        "K=3: clipping lowers cos(g_0, G̃_p) on some steps (the strict gain is a K=2 result)",
        None,
        {"steps": total, "steps_lowered": lowered, "fraction": lowered / max(total, 1)},
    )


def _check_weight_respecting(runs: Sequence[_Run]) -> Check:
    failures, worst_grad, worst_dist, mgda_dist = [], 0.0, 0.0, []
    for run in runs:
        target = run.problem.minimiser(run.weights)
        distance = None
        if target is not None:
            start = float((run.problem.initial_point(run.label["seed"]) - target).norm())
            distance = float((run.theta - target).norm()) / max(start, 1e-300)
        if run.method == "mgda":
            if distance is not None:
                mgda_dist.append(distance)
            continue
        grad_drop = math.sqrt(run.grad_w_sq[-1] / max(run.grad_w_sq[0], 1e-300))
        worst_grad = max(worst_grad, grad_drop)
        if distance is not None:
            worst_dist = max(worst_dist, distance)
        if grad_drop > 1e-4 or (distance is not None and distance > 1e-3):
            failures.append({**run.label, "grad_drop": grad_drop, "distance": distance})
    return Check(
        "weight_respecting",
        "final ‖∇𝓛_w‖ ≤ 1e-4 of the start and θ_T within 1e-3 of argmin 𝓛_w (all but MGDA)",
        not failures,
        {
            "worst_grad_drop": worst_grad,
            "worst_relative_distance": worst_dist,
            "failures": len(failures),
            "first_failure": failures[0] if failures else None,
            "mgda_median_distance": float(np.median(mgda_dist)) if mgda_dist else None,
        },
    )


def _front_sweep(
    config: VerifyConfig, solver: Solver, tick: Callable[[], None]
) -> tuple[Check, dict[str, Any]]:
    problem = ConvexQuadratic(2, config.dim, condition=5.0, seed=config.seeds[0])
    grid = np.linspace(0.0, 1.0, config.sweep)
    runs = []
    for w1 in grid:
        weights = torch.tensor([w1, 1.0 - w1], dtype=torch.float64)
        smooth = problem.smoothness(weights)
        label = {"problem": "quadratic", "K": 2, "w1": float(w1), "method": "cagrad_clip"}
        c = config.cs[0]
        theta0 = problem.initial_point(config.seeds[0])
        runs.append(
            _Run(
                problem,
                weights,
                "cagrad_clip",
                c,
                config.step_scale / smooth,
                smooth,
                theta0,
                label,
            )
        )
    # Weights differ per run but K, method and c agree, so one batched solve serves all.
    _descend(runs, config.steps, solver, tick)
    finals = np.array([run.losses[-1] for run in runs])  # [S, 2]
    tol = 1e-9 * np.abs(finals).max()
    monotone = bool((np.diff(finals[:, 0]) <= tol).all() and (np.diff(finals[:, 1]) >= -tol).all())
    front = []
    for w1 in np.linspace(0.0, 1.0, 101):
        theta = problem.minimiser(torch.tensor([w1, 1.0 - w1], dtype=torch.float64))
        front.append(problem.losses(theta).tolist())
    check = Check(
        "front_sweep",
        "K=2: final points move monotonically along the Pareto front as w_1 goes 0 → 1",
        monotone,
        {"weights": len(grid), "final_losses": finals.round(6).tolist()},
    )
    return check, {"grid": grid.tolist(), "finals": finals.tolist(), "front": front}


def _toy(config: VerifyConfig, solver: Solver, tick: Callable[[], None]) -> list[dict[str, Any]]:
    """The CAGrad paper's toy (Liu et al. 2021, Fig. 1) with Adam; all starts in one batch."""
    toy = CAGradToy()
    starts = torch.tensor(toy.STARTS, dtype=torch.float64)  # [S, 2]
    weights = torch.full((len(starts), 2), 0.5, dtype=torch.float64)
    results = []
    for method in ("linear", "mgda", "cagrad", "cagrad_clip"):
        theta = torch.nn.Parameter(starts.clone())
        optimizer = torch.optim.Adam([theta], lr=config.toy_lr)
        path = [theta.detach().clone()]
        every = max(1, config.toy_steps // 200)
        for step in range(config.toy_steps):
            grads = torch.stack([toy.gradients(t) for t in theta.detach()])  # [S, 2, 2]
            gram = grads @ grads.transpose(-1, -2)
            coeffs = solver(gram, weights, method=method, c=0.5).coeffs
            optimizer.zero_grad(set_to_none=False)
            theta.grad = (coeffs.unsqueeze(-2) @ grads).squeeze(-2)
            optimizer.step()
            if step % every == 0:
                path.append(theta.detach().clone())
            if step % 100 == 0:
                tick()
        path.append(theta.detach().clone())
        trajectory = torch.stack(path, dim=1)  # [S, T', 2]
        for s, start in enumerate(toy.STARTS):
            final = theta.detach()[s]
            distance = float(toy.distance_to_pareto_set(final))
            results.append(
                {
                    "method": method,
                    "start": list(start),
                    "final": final.tolist(),
                    "distance_to_pareto_set": distance,
                    "reached": distance <= 0.1,
                    "path": trajectory[s].tolist(),
                }
            )
    return results


def _plots(report: VerifyReport, runs: Sequence[_Run], sweep: dict[str, Any] | None) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = report.config.output
    assert out is not None
    files = []

    fig, axes = plt.subplots(
        1, len(report.config.methods), figsize=(4 * len(report.config.methods), 3.4)
    )
    axes = np.atleast_1d(axes)
    for ax, method in zip(axes, report.config.methods, strict=True):
        for run in [r for r in runs if r.method == method][:6]:
            horizon = np.arange(1, len(run.m_sq) + 1)
            line = ax.loglog(horizon, np.maximum(_prefix_min(run.m_sq), 1e-32), lw=1)[0]
            ax.loglog(
                horizon,
                _theorem_bound(run, horizon.astype(float)),
                ls="--",
                lw=0.8,
                color=line.get_color(),
            )
        ax.set_title(method)
        ax.set_xlabel("T")
    axes[0].set_ylabel("min_{t<T} M(θ_t)²  (dashed: bound)")
    fig.tight_layout()
    files.append(_save(fig, out / "convergence.png"))

    if report.toy:
        toy = CAGradToy()
        x1, x2 = np.meshgrid(np.linspace(-10, 10, 161), np.linspace(-10, 10, 161))
        grid = torch.tensor(np.stack([x1.ravel(), x2.ravel()], 1), dtype=torch.float64)
        z = toy.losses(grid).mean(-1).reshape(x1.shape).numpy()
        methods = sorted({r["method"] for r in report.toy}, key=VERIFY_METHODS.index)
        fig, axes = plt.subplots(1, len(methods), figsize=(4 * len(methods), 3.8))
        for ax, method in zip(np.atleast_1d(axes), methods, strict=True):
            ax.contour(x1, x2, z, levels=30, linewidths=0.5, cmap="viridis")
            (lo, hi), x2p = toy.pareto_segment()
            ax.plot([lo, hi], [x2p, x2p], color="k", lw=2, label="Pareto set")
            for r in [r for r in report.toy if r["method"] == method]:
                path = np.array(r["path"])
                ax.plot(path[:, 0], path[:, 1], lw=1.2)
                ax.plot(*path[0], "o", ms=4, color="tab:red")
                ax.plot(*path[-1], "*", ms=8, color="tab:red" if not r["reached"] else "tab:green")
            ax.set_title(method)
        fig.tight_layout()
        files.append(_save(fig, out / "toy.png"))

    if sweep is not None:
        fig, ax = plt.subplots(figsize=(4.5, 4))
        front = np.array(sweep["front"])
        ax.plot(front[:, 0], front[:, 1], color="k", lw=1, label="Pareto front")
        finals = np.array(sweep["finals"])
        ax.scatter(
            finals[:, 0],
            finals[:, 1],
            c=sweep["grid"],
            cmap="coolwarm",
            zorder=3,
            label="CAGrad-Clip final points",
        )
        ax.set_xlabel("L_1")
        ax.set_ylabel("L_2")
        ax.legend()
        fig.tight_layout()
        files.append(_save(fig, out / "front.png"))
    return files


def _save(fig: Any, path: pathlib.Path) -> str:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def _run_summary(run: _Run) -> dict[str, Any]:
    return {
        **run.label,
        "eta": run.eta,
        "smoothness": run.smoothness,
        "loss_w_start": run.loss_w[0],
        "loss_w_end": run.loss_w[-1],
        "m_sq_start": run.m_sq[0],
        "m_sq_min": float(min(run.m_sq)),
        "slope": _fitted_slope(run.m_sq),
        "non_optimal_solves": sum(
            s not in (Status.OPTIMAL, Status.DEGENERATE) for s in run.statuses
        ),
    }


def verify(
    config: VerifyConfig | None = None,
    *,
    solver: Solver = solve,
    progress: bool = False,
) -> VerifyReport:
    """Run every check of this module's docstring and return the report.

    Args:
        config: what to run; default :class:`VerifyConfig` (the README's main job).
        solver: the function computing coefficients, ``solver(gram, weights, method=, c=)``;
            tests pass deliberately broken ones to show the checks catch them.
        progress: draw a progress bar (tqdm) on stderr.

    Returns:
        :class:`VerifyReport`; its ``ok`` is False when a theorem check failed. With
        ``config.output`` set, ``report.json`` and the plots are written there.

    Example:
        >>> from conflict_opt.verify import VerifyConfig, verify
        >>> config = VerifyConfig(problems=("quadratic",), ks=(2,), cs=(0.5,), seeds=(0,),
        ...                       methods=("cagrad_clip", "cagrad"), steps=200, sweep=0,
        ...                       toy_steps=0, output=None)
        >>> verify(config).ok
        True
    """
    config = config or VerifyConfig()
    runs = _build_runs(config)
    total = config.steps * (1 + (config.sweep > 1)) + config.toy_steps // 100
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="conflict-opt verify", unit="step", leave=False)

    def tick() -> None:
        if bar is not None:
            bar.update(1)

    _descend(runs, config.steps, solver, tick)
    checks = [
        _check_theorem_3_1(runs),
        _check_rate(runs),
        _check_step_certificate(runs),
        _check_theorem_3_2(runs),
        _check_clipping_k3(runs),
        _check_weight_respecting(runs),
    ]
    sweep = None
    if config.sweep > 1:
        check, sweep = _front_sweep(config, solver, tick)
        checks.append(check)
    toy = _toy(config, solver, tick) if config.toy_steps > 0 else []
    if toy:
        reached = {}
        for row in toy:
            reached.setdefault(row["method"], []).append(row["reached"])
        checks.append(
            Check(
                "cagrad_toy",
                "CAGrad toy with Adam: starts (of 3) from which each method reaches the Pareto set",
                None,
                {m: f"{sum(v)}/{len(v)}" for m, v in reached.items()},
            )
        )
    if bar is not None:
        bar.close()
    report = VerifyReport(config, checks, [_run_summary(r) for r in runs], toy, [])
    if config.output is not None:
        config.output.mkdir(parents=True, exist_ok=True)
        report.files = _plots(report, runs, sweep)
        path = config.output / "report.json"
        report.files.append(str(path))
        path.write_text(json.dumps(report.to_json(), indent=1, default=str))
    return report
