"""Check RACO's convergence theory on synthetic problems with known structure
(RACO §3, Theorems 3.1 and 3.2).

Deterministic gradient descent θ_{t+1} = θ_t − η Σ_k a_k(θ_t) ∇L_k(θ_t), with a = solve(...).coeffs,
run on convex quadratics, least squares and logistic regression (``conflict_opt.problems``), and
the checks below. The assumptions are the theorems': exact gradients, each L_i ≥ 0, η ≤ 1/L_w
(L_w a smoothness constant of 𝓛_w = Σ w_i L_i), c ∈ [0, 1), w ∈ Δ.

* ``theorem_3_1``: min_{t<T} M(θ_t)² ≤ 2𝓛_w(θ_0) / (η(1 − c²)T) at every T, and the same for
  ‖∇𝓛_w(θ_t)‖², where M(θ) = min_{λ∈Δ} ‖Σ λ_i ∇L_i(θ)‖ (for MGDA, which has no weights, its
  own bound 2 min_i L_i(θ_0)/(ηT) with η ≤ 1/max_i L_i, from ⟨g_i, d⟩ ≥ ‖d‖²).
* ``rate``: the log-log slope of min_{t<T} M² against T is at most −0.9 (O(1/T) or faster).
* ``solves``: every solve is OPTIMAL (DEGENERATE only at round-off), its dual is optimal by a
  duality gap computed from the gradients (not by the solver's own certificate), and its answer
  has its method's form: p̃ = min(p, w) (CAGrad: p), a = w + κp̃ with κ ≥ 0, linear a = w,
  MGDA a on the simplex.
* ``step_certificate``: every step not at round-off has RACO's form ‖G_0 − g_0‖ = c‖g_0‖ (or
  G_0 = g_0 where G̃_p vanishes; within 1e-6 plus the Gram's resolution of ‖g_0‖,
  64 eps (Σ w_i‖g_i‖/‖g_0‖)², tested where that is at most 1e-6) and
  𝓛_w(θ_{t+1}) ≤ 𝓛_w(θ_t) − ηΓ(ρ_t)‖∇𝓛_w(θ_t)‖² with ρ_t = cos(g_0, G_0 − g_0),
  Γ(ρ) = 1 + cρ − (L_w η/2)(1 + c² + 2cρ) ≥ (1 − c²)/2.
* ``theorem_3_2``: for K = 2, ρ̃ = cos(g_0, G̃_p) ≥ ρ = cos(g_0, G_p) at every step and on
  sampled instances, strictly where the dual is interior, p ≠ w, g_0 ≠ 0 and the gradients are
  not colinear (on at least 50 sampled instances); Γ(ρ̃) − Γ(ρ) = c(1 − L_w η)(ρ̃ − ρ).
* ``clipping_k_ge_3`` (reported): for each K ≥ 3 the steps, and for K = 3 sampled instances,
  where clipping lowers ρ.
* ``weight_respecting``: at the end ‖∇𝓛_w‖ has fallen by 1e-4 and θ_T is within 1e-3 (relative)
  of the exact minimiser of 𝓛_w, for every weight-respecting method (all but MGDA); a theorem
  check for runs of at least 200 steps, reported for shorter ones.
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
# A step is resolved when the Gram gives ‖g_0‖ to this relative accuracy (see _group_step);
# the solver's answers are checked on resolved steps, and runs spend their last steps past it.
_RESOLVED = 1e-6
# The largest relative duality gap accepted for a reported dual (a certified OPTIMAL solve has
# a gap of at most 1e-9 on Φ itself; the gap computed here is the Frank–Wolfe-type bound, which
# may be larger: on the default run it reached 2.9e-6 for MGDA at K = 5, 3e-9 for CAGrad).
_DUAL_GAP_TOL = 1e-4
# The largest deviation from a method's form (exact algebra on the solver's output).
_FORM_TOL = 1e-9
# Random instances per radius for Theorem 3.2 (K = 2) and the K = 3 observation, and how many
# of them must meet Theorem 3.2's conditions for its strict gain to count as tested.
_SAMPLES = 400
_MIN_STRICT = 50
# Steps from which weight_respecting is a theorem check: its thresholds are what the default
# problems reach by then (at 150 steps the worst gradient drop was 9e-5 against 1e-4, at 100
# 1e-3); shorter runs report it.
_LIMIT_STEPS = 200


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
        if not self.seeds or any(seed < 0 for seed in self.seeds):
            raise ValueError(f"`seeds` must be one or more seeds >= 0, got seeds={self.seeds}.")
        if not self.problems or not self.methods or not self.cs:
            empty = [n for n in ("problems", "methods", "cs") if not getattr(self, n)]
            raise ValueError(f"`{empty[0]}` must name at least one value, got an empty list.")
        if self.dim < 2:
            # In one dimension every pair of gradients is colinear: Theorem 3.2 has no case.
            raise ValueError(f"`dim` must be at least 2, got dim={self.dim}.")
        if self.sweep != 0 and self.sweep < 2:
            raise ValueError(f"`sweep` must be 0 (skip) or at least 2, got sweep={self.sweep}.")
        if self.toy_steps < 0:
            raise ValueError(f"`toy_steps` must be >= 0 (0 skips), got toy_steps={self.toy_steps}.")
        if not (math.isfinite(self.toy_lr) and self.toy_lr > 0):
            raise ValueError(f"`toy_lr` must be a positive number, got toy_lr={self.toy_lr}.")

    @classmethod
    def quick(cls, output: pathlib.Path | None = None) -> VerifyConfig:
        """A seconds-long smoke run: one problem family, K = 2 and 3, short runs (long enough
        for every theorem check to apply)."""
        return cls(
            problems=("quadratic",),
            ks=(2, 3),
            cs=(0.5,),
            seeds=(0,),
            steps=_LIMIT_STEPS,
            sweep=3,
            toy_steps=300,
            output=output,
        )


@dataclasses.dataclass
class Check:
    """One claim and its figures.

    ``passed`` is True or False for a theorem check that was tested, and None for a reported
    figure (``reported``, shown as "info") or for a theorem check that the configuration gave
    nothing to test (shown as "n/a"; e.g. Theorem 3.2 without ``cagrad_clip``).
    """

    name: str
    claim: str
    passed: bool | None
    figures: dict[str, Any]
    reported: bool = False


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

    @property
    def not_applicable(self) -> list[str]:
        """The theorem checks that this configuration gave nothing to test."""
        return [c.name for c in self.checks if c.passed is None and not c.reported]

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready data; non-finite numbers become None (strict JSON)."""
        config = dataclasses.asdict(self.config)
        config["output"] = None if self.config.output is None else str(self.config.output)
        return _json_ready(
            {
                "ok": self.ok,
                "not_applicable": self.not_applicable,
                "config": config,
                "checks": [dataclasses.asdict(check) for check in self.checks],
                "runs": self.runs,
                "toy": self.toy,
                "files": self.files,
            }
        )

    def table(self) -> str:
        """The terminal table: one line per check with its figures."""
        lines = [f"{'check':<18} {'result':<7} figures", "-" * 100]
        for check in self.checks:
            if check.passed is None:
                result = "info" if check.reported else "n/a"
            else:
                result = "pass" if check.passed else "FAIL"
            figures = ", ".join(f"{k}={_fmt(v)}" for k, v in check.figures.items())
            lines.append(f"{check.name:<18} {result:<7} {figures}")
        lines.append("-" * 100)
        if not self.ok:
            lines.append("SOME THEOREM CHECKS FAILED")
        elif self.not_applicable:
            lines.append(
                "all theorem checks that applied passed; nothing to test here for: "
                + ", ".join(self.not_applicable)
            )
        else:
            lines.append("all theorem checks passed")
        return "\n".join(lines)


def _json_ready(value: Any) -> Any:
    """``value`` with tuples as lists, numpy scalars as Python numbers and NaN/±Inf as None."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


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
    # The Gram's relative resolution of ‖g_0‖, 64 eps (Σ w_i‖g_i‖/‖g_0‖)²: a step whose
    # resolution is above _RESOLVED is at round-off, where no Gram-based solve is accurate.
    resolution: list[float] = dataclasses.field(default_factory=list)
    dual_gap: list[float] = dataclasses.field(default_factory=list)  # relative; NaN: none
    form_error: list[float] = dataclasses.field(default_factory=list)
    active: list[bool] = dataclasses.field(default_factory=list)  # G_0 ≠ g_0
    strict_candidate: list[bool] = dataclasses.field(default_factory=list)
    statuses: list[int] = dataclasses.field(default_factory=list)


def _cos(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine of ``[R, D]`` tensors; 0 where either vanishes."""
    nu, nv = u.norm(dim=-1), v.norm(dim=-1)
    denom = nu * nv
    return torch.where(denom > 0, (u * v).sum(-1) / torch.where(denom > 0, denom, 1.0), 0.0)


def _combine(coeffs: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Σ_k coeffs_k g_k per row: ``[R, K]`` coefficients of ``[R, K, D]`` gradients, ``[R, D]``."""
    return (coeffs.unsqueeze(-2) @ grads).squeeze(-2)


def _simplex_error(p: torch.Tensor) -> torch.Tensor:
    """How far each row of ``p [R, K]`` is from the simplex: max(|Σp − 1|, max(−p))."""
    return torch.maximum((p.sum(-1) - 1).abs(), (-p).clamp_min(0).max(-1).values)


def _dual_gap(
    grads: torch.Tensor, g0: torch.Tensor, result: SolveResult, method: str, c: float
) -> torch.Tensor:
    """The duality gap of the solver's dual, computed from the gradients, not the solver's
    own certificate; ``[R]``, relative to the scale of the dual objective (NaN for linear).

    CAGrad methods: Φ(p) = ⟨G_p, g_0⟩ + c‖g_0‖‖G_p‖ against the primal value
    min_i ⟨g_i, d⟩ of the feasible d = g_0 + c‖g_0‖ G_p/‖G_p‖ and of d = g_0 (RACO §1, primal
    view; strong duality makes the difference a bound on Φ(p) − Φ*), over ‖g_0‖ max_i ‖g_i‖.
    MGDA: the Frank–Wolfe gap ‖d‖² − min_i ⟨g_i, d⟩ of d = Σ λ_i g_i, over max_i ‖g_i‖².
    """
    longest = grads.norm(dim=-1).max(-1).values
    if method == "linear":
        return torch.full_like(longest, math.nan)
    if method == "mgda":
        d = _combine(result.coeffs, grads)
        gap = (d * d).sum(-1) - (grads @ d.unsqueeze(-1)).squeeze(-1).min(-1).values
        return gap / torch.where(longest > 0, longest**2, 1.0)
    g_p = _combine(result.dual, grads)
    norm_p, norm_0 = g_p.norm(dim=-1), g0.norm(dim=-1)
    b = (grads @ g0.unsqueeze(-1)).squeeze(-1)  # ⟨g_i, g_0⟩
    radius = c * norm_0
    phi = (b * result.dual).sum(-1) + radius * norm_p
    unit = g_p / torch.where(norm_p > 0, norm_p, 1.0).unsqueeze(-1)
    toward = (b + radius.unsqueeze(-1) * (grads @ unit.unsqueeze(-1)).squeeze(-1)).min(-1).values
    primal = torch.where(norm_p > 0, torch.maximum(b.min(-1).values, toward), b.min(-1).values)
    scale = norm_0 * longest
    return (phi - primal).clamp_min(0) / torch.where(scale > 0, scale, 1.0)


def _form_error(weights: torch.Tensor, result: SolveResult, method: str) -> torch.Tensor:
    """How far the solver's answer is from the form its method defines; ``[R]``, 0 if exact.

    Linear: a = w. MGDA: a on the simplex. CAGrad methods: p on the simplex, the clipped dual
    p̃ = min(p, w) for CAGrad-Clip (= p for CAGrad), and a = w + κ p̃ with κ ≥ 0 (RACO
    Algorithm 1, steps 3 to 6): the distance of a − w from the ray {κ p̃ : κ ≥ 0}, relative
    to ‖a − w‖ + 1e-5‖a‖ (the second term absorbs the round-off of a − w, a few eps‖a‖, when
    the correction is tiny).
    """
    a, w = result.coeffs, weights
    if method == "linear":
        return (a - w).abs().max(-1).values
    if method == "mgda":
        return _simplex_error(a)
    p, clipped = result.dual, result.clipped
    expected = torch.minimum(p, w) if method == "cagrad_clip" else p
    error = torch.maximum(_simplex_error(p), (clipped - expected).abs().max(-1).values)
    delta = a - w
    kappa = (delta * clipped).sum(-1) / (clipped * clipped).sum(-1).clamp_min(1e-300)
    kappa = kappa.clamp_min(0.0)  # the nearest point of the ray
    residual = (delta - kappa.unsqueeze(-1) * clipped).norm(dim=-1)
    size = delta.norm(dim=-1) + 1e-5 * a.norm(dim=-1)
    return torch.maximum(error, residual / size.clamp_min(1e-300))


def _strict_gain_conditions(
    grads: torch.Tensor, weights: torch.Tensor, dual: torch.Tensor
) -> torch.Tensor:
    """Theorem 3.2's conditions for a strict gain (K = 2) but c > 0 and g_0 ≠ 0, ``[R]``: the
    dual and the weights are interior, p ≠ w, and the two gradients are not colinear."""
    interior = ((dual > 1e-6) & (dual < 1 - 1e-6)).all(-1) & (weights > 1e-6).all(-1)
    moved = (dual - weights).abs().max(-1).values > 1e-6
    colinear = _cos(grads[:, 0], grads[:, -1]).abs() > 1 - 1e-9
    return interior & moved & ~colinear


def _group_step(runs: Sequence[_Run], solver: Solver) -> None:
    """One gradient step for runs sharing (K, method, c), with one batched solve."""
    grads = torch.stack([run.problem.gradients(run.theta) for run in runs])  # [R, K, D]
    gram = grads @ grads.transpose(-1, -2)  # [R, K, K]
    weights = torch.stack([run.weights for run in runs])  # [R, K]
    method, c = runs[0].method, runs[0].c
    result = solver(gram, weights, method=method, c=c)
    # Pareto-criticality M(θ) = min_λ ‖Σλ_i g_i‖, by the package's MGDA solve.
    mgda = solve(gram, method="mgda", validate=False)
    m_dir = _combine(mgda.coeffs, grads)  # [R, D]
    g0 = _combine(weights, grads)  # [R, D]
    step = _combine(result.coeffs, grads)  # [R, D]
    g_p = _combine(result.dual, grads)
    g_clip = _combine(result.clipped, grads)
    correction = step - g0
    rho, rho_clip, rho_step = _cos(g0, g_p), _cos(g0, g_clip), _cos(g0, correction)
    g0_norm = g0.norm(dim=-1)
    radius_error = (correction.norm(dim=-1) - c * g0_norm).abs() / g0_norm.clamp_min(1e-300)
    # The solver sees ‖g_0‖² = wᵀHw only to eps·(Σ w_i‖g_i‖)²: relative to ‖g_0‖² that is the
    # resolution of the radius, large once the weighted gradient nearly cancels (convergence).
    norms = grads.norm(dim=-1)
    lengths = (weights * norms).sum(-1)
    resolution = 64 * torch.finfo(torch.float64).eps * (lengths / g0_norm.clamp_min(1e-300)) ** 2
    active = correction.norm(dim=-1) > 1e-12 * g0_norm
    # A zero correction is RACO's G_0 = g_0 branch only where G̃_p vanishes (to the Gram's
    # resolution of its norm, about sqrt(eps) of Σ p̃_i‖g_i‖); elsewhere it is a wrong radius.
    vanished = g_clip.norm(dim=-1) <= 1e-7 * (result.clipped.clamp_min(0) * norms).sum(-1)
    radius_error = torch.where(active | ~vanished, radius_error, 0.0)
    # Theorem 3.2's conditions, with g_0 ≠ 0 as resolved by the Gram.
    strict = _strict_gain_conditions(grads, weights, result.dual) & (c > 0)
    strict &= resolution <= _RESOLVED
    dual_gap = _dual_gap(grads, g0, result, method, c)
    form_error = _form_error(weights, result, method)
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
        run.resolution.append(float(resolution[i]))
        run.dual_gap.append(float(dual_gap[i]))
        run.form_error.append(float(form_error[i]))
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
    worst, worst_label, worst_grad = 0.0, None, None
    for run in runs:
        horizon = np.arange(1, len(run.m_sq) + 1, dtype=np.float64)
        bound = _theorem_bound(run, horizon)
        ratio = float((_prefix_min(run.m_sq) / bound).max())
        if ratio > worst:
            worst, worst_label = ratio, run.label
        if run.method != "mgda":
            grad_ratio = float((_prefix_min(run.grad_w_sq[:-1]) / bound).max())
            worst_grad = grad_ratio if worst_grad is None else max(worst_grad, grad_ratio)
    return Check(
        "theorem_3_1",
        "min_{t<T} M(θ_t)² and min_{t<T} ‖∇𝓛_w(θ_t)‖² ≤ 2𝓛_w(θ_0)/(η(1−c²)T) at every T "
        "(MGDA: M² ≤ 2 min_i L_i(θ_0)/(ηT))",
        worst <= 1.0 + _TOL and (worst_grad is None or worst_grad <= 1.0 + _TOL),
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


def _check_solves(runs: Sequence[_Run]) -> Check:
    """Each solve's answer, checked against its method's definition with the gradients."""
    solves = bad_status = degenerate = gaps_tested = gap_failures = form_failures = 0
    worst_gap, worst_form, first = 0.0, 0.0, None
    for run in runs:
        status = np.asarray(run.statuses)
        resolved = np.asarray(run.resolution) <= _RESOLVED
        optimal = status == Status.OPTIMAL
        bad = ~(optimal | (status == Status.DEGENERATE))
        # The CAGrad methods' degenerate case is ‖g_0‖ = 0, which a resolved step rules out.
        wrongly_degenerate = np.zeros_like(bad)
        if run.method in ("cagrad_clip", "cagrad"):
            wrongly_degenerate = (status == Status.DEGENERATE) & resolved
            tested = optimal & resolved
        elif run.method == "mgda":
            tested = optimal
        else:  # linear has no dual
            tested = np.zeros_like(bad)
        gaps = np.asarray(run.dual_gap)[tested]
        gap_bad = ~(gaps <= _DUAL_GAP_TOL)  # NaN fails
        form = np.asarray(run.form_error)
        form_bad = ~(form <= _FORM_TOL)
        solves += len(status)
        bad_status += int(bad.sum())
        degenerate += int(wrongly_degenerate.sum())
        gaps_tested += int(tested.sum())
        gap_failures += int(gap_bad.sum())
        form_failures += int(form_bad.sum())
        worst_gap = max(worst_gap, float(np.nan_to_num(gaps, nan=np.inf).max(initial=0.0)))
        worst_form = max(worst_form, float(np.nan_to_num(form, nan=np.inf).max(initial=0.0)))
        if first is None and (
            bad.any() or wrongly_degenerate.any() or gap_bad.any() or form_bad.any()
        ):
            first = run.label
    failures = bad_status + degenerate + gap_failures + form_failures
    return Check(
        "solves",
        "every solve: status OPTIMAL (DEGENERATE only where ‖g_0‖ is at round-off); its dual "
        f"within a duality gap of {_DUAL_GAP_TOL:g} (computed from the gradients); its answer "
        "of its method's form: p̃ = min(p, w) (CAGrad: p), a = w + κp̃ with κ ≥ 0, "
        "linear a = w, MGDA a ∈ Δ",
        None if not solves else failures == 0,
        {
            "solves": solves,
            "not_optimal": bad_status,
            "degenerate_when_resolved": degenerate,
            "gaps_tested": gaps_tested,
            "gap_failures": gap_failures,
            "max_dual_gap": worst_gap,
            "form_failures": form_failures,
            "max_form_error": worst_form,
            "first_failure": first,
        },
    )


def _check_step_certificate(runs: Sequence[_Run]) -> Check:
    violations, steps, worst_radius, worst_slack = 0, 0, 0.0, -math.inf
    radius_tested = descent_tested = gamma_low = 0
    for run in runs:
        if run.method == "mgda":
            continue
        loss = np.asarray(run.loss_w)
        grad_sq = np.asarray(run.grad_w_sq[:-1])
        rho = np.asarray(run.rho_step)
        radius = np.asarray(run.radius_error)
        resolution = np.asarray(run.resolution)
        # Where the correction vanished (RACO's G_0 = g_0 branch) the step is plain descent.
        c_eff = np.where(np.asarray(run.active), run.c, 0.0)
        gamma = _gamma(rho, c_eff, run.smoothness * run.eta)
        promised = run.eta * gamma * grad_sq
        slack = loss[1:] - (loss[:-1] - promised)
        tol = _TOL * np.maximum(np.abs(loss[:-1]), run.eta * grad_sq) + 1e-15
        # Tested: steps whose promised decrease is above the tolerance, and steps where the
        # Gram resolves the radius; the rest are at round-off (the runs end converged).
        descends = promised > tol
        resolved = resolution <= _RESOLVED
        bad = (slack > tol) | (resolved & (radius > 1e-6 + resolution))
        # Γ(ρ) ≥ (1 − c²)/2 for η ≤ 1/L_w (RACO §3): the step size honours the assumption.
        low = gamma < (1 - c_eff**2) / 2 - 1e-12
        violations += int((bad | low).sum())
        gamma_low += int(low.sum())
        steps += len(bad)
        radius_tested += int(resolved.sum())
        descent_tested += int(descends.sum())
        worst_radius = max(worst_radius, float(radius[resolved].max(initial=0.0)))
        # Relative slack only where the promised decrease is above the loss's round-off.
        meaningful = run.eta * grad_sq > 1e-12 * np.abs(loss[:-1])
        ratios = slack[meaningful] / (run.eta * grad_sq[meaningful])
        worst_slack = max(worst_slack, float(ratios.max(initial=-math.inf)))
    tested = radius_tested + descent_tested
    reason = {}
    if not tested:
        reason = {"reason": "every step at round-off" if steps else "only MGDA runs"}
    return Check(
        "step_certificate",
        "‖G_0−g_0‖ = c‖g_0‖ and 𝓛_w(θ_{t+1}) ≤ 𝓛_w(θ_t) − ηΓ(ρ_t)‖∇𝓛_w(θ_t)‖² with "
        "Γ(ρ_t) ≥ (1−c²)/2, at every step not at round-off",
        None if not tested else violations == 0,
        {
            "steps": steps,
            "radius_tested": radius_tested,
            "descent_tested": descent_tested,
            "violations": violations,
            "gamma_below_floor": gamma_low,
            "max_radius_error": worst_radius,
            "max_relative_slack": worst_slack,
            **reason,
        },
    )


def _sample_instances(
    config: VerifyConfig, solver: Solver, k: int, c: float
) -> dict[str, torch.Tensor]:
    """_SAMPLES random problems with K = ``k`` in dimension ``config.dim``, solved with
    CAGrad-Clip at radius ``c``: Gaussian gradients of log-normal lengths, weights drawn from a
    Dirichlet distribution. Returns the cosines, the strict-gain conditions and the checks of
    the solves (as ``_group_step`` records them for a step)."""
    gen = torch.Generator().manual_seed(1000 * config.seeds[0] + 10 * k + round(100 * c))
    grads = torch.randn(_SAMPLES, k, config.dim, generator=gen, dtype=torch.float64)
    grads = grads * torch.randn(_SAMPLES, k, 1, generator=gen, dtype=torch.float64).exp()
    weights = _dirichlet(gen, _SAMPLES, k)
    gram = grads @ grads.transpose(-1, -2)
    result = solver(gram, weights, method="cagrad_clip", c=c)
    g0 = _combine(weights, grads)
    g_p = _combine(result.dual, grads)
    g_clip = _combine(result.clipped, grads)
    strict = _strict_gain_conditions(grads, weights, result.dual) & (g0.norm(dim=-1) > 0)
    return {
        "rho": _cos(g0, g_p),
        "rho_clip": _cos(g0, g_clip),
        "strict": strict,
        "bad_solve": (result.status != Status.OPTIMAL)
        | ~(_dual_gap(grads, g0, result, "cagrad_clip", c) <= _DUAL_GAP_TOL)
        | ~(_form_error(weights, result, "cagrad_clip") <= _FORM_TOL),
    }


def _dirichlet(gen: torch.Generator, n: int, k: int) -> torch.Tensor:
    """``n`` uniform draws from the simplex Δ_k (normalised exponentials), from ``gen``."""
    e = -torch.rand(n, k, generator=gen, dtype=torch.float64).clamp_min(1e-300).log()
    return e / e.sum(-1, keepdim=True)


def _check_theorem_3_2(runs: Sequence[_Run], config: VerifyConfig, solver: Solver) -> Check:
    clip2 = [r for r in runs if r.method == "cagrad_clip" and r.problem.num_objectives == 2]
    cs = [c for c in config.cs if c > 0]
    if "cagrad_clip" not in config.methods or not cs:
        reason = "no cagrad_clip run with c > 0"
        return Check("theorem_3_2", "needs cagrad_clip with some c > 0", None, {"reason": reason})
    # Along the descent runs with K = 2 (where there are any) ...
    lowered, strict_steps, strict_fail, gains = 0, 0, 0, []
    for run in clip2:
        rho, rho_clip = np.asarray(run.rho), np.asarray(run.rho_clip)
        strict = np.asarray(run.strict_candidate)
        lowered += int((rho_clip < rho - _TOL).sum())
        strict_steps += int(strict.sum())
        strict_fail += int((rho_clip[strict] <= rho[strict] + 1e-12).sum())
        gains.extend((run.c * (1 - run.smoothness * run.eta) * (rho_clip - rho)).tolist())
    # ... and on sampled instances, where the conditions hold far more often than along a run
    # that soon reaches the region where the dual sits on a vertex.
    l_eta = config.step_scale
    s_lowered = s_strict = s_fail = s_bad = 0
    identity = 0.0
    for c in cs:
        sample = _sample_instances(config, solver, 2, c)
        rho, rho_clip = sample["rho"].numpy(), sample["rho_clip"].numpy()
        strict = sample["strict"].numpy()
        s_lowered += int((rho_clip < rho - _TOL).sum())
        s_strict += int(strict.sum())
        s_fail += int((rho_clip[strict] <= rho[strict] + 1e-12).sum())
        s_bad += int(sample["bad_solve"].sum())
        gain = _gamma(rho_clip, c, l_eta) - _gamma(rho, c, l_eta)
        identity = max(identity, float(np.abs(gain - c * (1 - l_eta) * (rho_clip - rho)).max()))
    # Decrease of the clipped method against the unclipped one on the same problem and c.
    ratios = []
    for run in clip2:
        twin = [
            r for r in runs if r.method == "cagrad" and r.problem is run.problem and r.c == run.c
        ]
        if twin and twin[0].loss_w[-1] > 0:
            ratios.append(run.loss_w[-1] / twin[0].loss_w[-1])
    passed = (
        lowered == 0
        and strict_fail == 0
        and s_lowered == 0
        and s_fail == 0
        and s_bad == 0
        and s_strict >= _MIN_STRICT
        and identity <= 1e-12
    )
    return Check(
        "theorem_3_2",
        "K=2: cos(g_0, G̃_p) ≥ cos(g_0, G_p) at every step and sampled instance, strictly "
        f"under the theorem's conditions (on at least {_MIN_STRICT} sampled instances); "
        "Γ(ρ̃) − Γ(ρ) = c(1 − L_wη)(ρ̃ − ρ)",
        passed,
        {
            "steps": sum(len(r.rho) for r in clip2),
            "steps_lowered": lowered,
            "strict_steps": strict_steps,
            "strict_failures": strict_fail,
            "instances": _SAMPLES * len(cs),
            "instances_lowered": s_lowered,
            "strict_instances": s_strict,
            "strict_instance_failures": s_fail,
            "instance_solves_failed": s_bad,
            "gain_identity_error": identity,
            "mean_gamma_gain": float(np.mean(gains)) if gains else None,
            "final_loss_ratio_clip_over_unclipped": float(np.median(ratios)) if ratios else None,
        },
    )


def _check_clipping_many(runs: Sequence[_Run], config: VerifyConfig, solver: Solver) -> Check:
    if "cagrad_clip" not in config.methods or not any(c > 0 for c in config.cs):
        reason = {"reason": "no cagrad_clip run with c > 0"}
        return Check("clipping_k_ge_3", "needs cagrad_clip with some c > 0", None, reason, True)
    by_k: dict[str, Any] = {}
    for k in sorted({k for k in config.ks if k >= 3}):
        steps = [r for r in runs if r.method == "cagrad_clip" and r.problem.num_objectives == k]
        total = sum(len(r.rho) for r in steps)
        lowered = sum(int((np.asarray(r.rho_clip) < np.asarray(r.rho) - _TOL).sum()) for r in steps)
        by_k[f"K={k} steps"] = f"{lowered}/{total}"
    sample = _sample_instances(config, solver, 3, max(config.cs))
    lowered = int((sample["rho_clip"] < sample["rho"] - _TOL).sum())
    by_k["K=3 instances"] = f"{lowered}/{_SAMPLES}"
    return Check(
        "clipping_k_ge_3",
        "K≥3: steps and sampled instances where clipping lowers cos(g_0, G̃_p) (RACO §3: the "
        "strict gain is a two-objective result)",
        None,
        by_k,
        reported=True,
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
    steps = len(runs[0].m_sq) if runs else 0
    weighted = any(run.method != "mgda" for run in runs)
    gated = weighted and steps >= _LIMIT_STEPS
    reason = (
        {} if gated else {"reason": "only MGDA runs" if not weighted else f"runs of {steps} steps"}
    )
    return Check(
        "weight_respecting",
        "final ‖∇𝓛_w‖ ≤ 1e-4 of the start and θ_T within 1e-3 of argmin 𝓛_w (all but MGDA; "
        f"a finite-run proxy for Theorem 3.1's limit points, tested from {_LIMIT_STEPS} steps)",
        (not failures) if gated else None,
        {
            "worst_grad_drop": worst_grad,
            "worst_relative_distance": worst_dist,
            "failures": len(failures),
            "first_failure": failures[0] if failures else None,
            "mgda_median_distance": float(np.median(mgda_dist)) if mgda_dist else None,
            **reason,
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
            theta.grad = _combine(coeffs, grads)
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
    # The toy ticks every 100th step of each of its four methods.
    total = config.steps * (1 + (config.sweep > 1)) + 4 * math.ceil(config.toy_steps / 100)
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
        _check_solves(runs),
        _check_step_certificate(runs),
        _check_theorem_3_2(runs, config, solver),
        _check_clipping_many(runs, config, solver),
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
                reported=True,
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
        path.write_text(json.dumps(report.to_json(), indent=1, allow_nan=False))
    return report
