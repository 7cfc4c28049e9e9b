"""Batched interior-point solver of the normalised dual for any K, in pure torch.

The dual min_{p∈Δ} βᵀp + σ‖G_p‖ is the second-order cone program

    min βᵀp + σt   s.t.  p ≥ 0,  𝟏ᵀp = 1,  t ≥ ‖Rᵀp‖      (H̄ = RRᵀ),

solved by a primal log-barrier method (Nesterov & Nemirovski; Boyd & Vandenberghe §11): for
decreasing μ, minimise F_μ(p, t) = (βᵀp + σt)/μ − Σ_i log p_i − log(t² − ‖Rᵀp‖²) on 𝟏ᵀp = 1.
F_μ is self-concordant, so the damped Newton step (p, t) + Δ/(1 + λ) (λ the Newton decrement)
never leaves the domain and needs no line search; once λ ≤ 1 the iterate counts as centred and
μ shrinks by ``MU_FACTOR``. Unlike first-order methods (Frank–Wolfe, mirror descent), this reaches
the 1e-12 accuracy the certificates demand in tens of (K + 2)-sized linear solves, and it handles
the non-smooth points ‖G_p‖ = 0 (MGDA's Pareto-stationary case, opposite gradients).

Every iteration yields a primal certificate from the Newton-corrected multiplier of the cone
constraint (see the loop), and every ``POLISH_EVERY`` iterations the iterate's face is solved
exactly (:func:`._problem.polish`), which ends the solve at round-off accuracy once the support
is identified. Measured on the 2,100 test problems (K ≤ 32, ranks 0…K, scales 1e-12…1e12): median
17 iterations, 99th percentile 68, maximum 162; the budget is ``MAX_ITER`` = 200.

The loop uses tensor operations only (no host synchronisation); problems whose certificate is
below ``STOP_TOL`` are frozen with ``torch.where``. On CPU, where reading a flag costs nothing,
the loop also stops once every problem of the batch is frozen.
"""

from __future__ import annotations

import torch

from ._problem import THRESHOLDS, Problem, certificate, mv, norm_sq, polish, tmv

MAX_ITER = 200
STOP_TOL = 1e-12
# Every POLISH_EVERY iterations the iterate's face is solved exactly (see _problem.face): once the
# barrier has identified the support, this crossover ends the solve at round-off accuracy.
POLISH_EVERY = 3
MU_FACTOR = 0.03
CENTRED = 1.0
# Interior-point iterates never touch the boundary; entries this small are the barrier's
# footprint (≈ μ), not part of the answer, and are set to zero so clipping sees exact zeros.
SNAP = 1e-11


def solve_iterative(
    problem: Problem, max_iter: int = MAX_ITER, tol: float = STOP_TOL
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Solve the batch; returns ``p [B, K]``, ``iterations [B]``, ``gap [B]``, ``exhausted [B]``."""
    h, factor, beta, sigma = problem.gram, problem.factor, problem.beta, problem.sigma
    batch, k = beta.shape
    dev = beta.device
    p = torch.full((batch, k), 1.0 / k, dtype=torch.float64, device=dev)
    t = norm_sq(factor, p).sqrt() + 1.0
    mu = torch.ones(batch, dtype=torch.float64, device=dev)
    iterations = torch.zeros(batch, dtype=torch.int64, device=dev)
    done = torch.zeros(batch, dtype=torch.bool, device=dev)
    best_gap = torch.full((batch,), torch.inf, dtype=torch.float64, device=dev)
    best_p = p.clone()

    # KKT system of the equality-constrained Newton step, in unknowns (Δp, Δt, multiplier).
    kkt = torch.zeros(batch, k + 2, k + 2, dtype=torch.float64, device=dev)
    kkt[:, :k, k + 1] = 1.0
    kkt[:, k + 1, :k] = 1.0
    rhs = torch.zeros(batch, k + 2, dtype=torch.float64, device=dev)
    check_host = dev.type == "cpu"

    for it in range(max_iter):
        z = tmv(factor, p)
        hp = mv(factor, z)
        r_sq = (z * z).sum(-1)
        r = r_sq.sqrt()
        # D = t² − ‖G_p‖² as a product: near the cone's apex both terms are ~1e-20.
        d = (t - r) * (t + r)
        inv_d = 1.0 / d

        grad_p = beta / mu[:, None] - 1.0 / p + 2.0 * inv_d[:, None] * hp
        grad_t = sigma / mu - 2.0 * t * inv_d
        inv_d2 = inv_d * inv_d
        hess_pp = (
            torch.diag_embed(1.0 / (p * p))
            + 2.0 * inv_d[:, None, None] * h
            + 4.0 * inv_d2[:, None, None] * hp[:, :, None] * hp[:, None, :]
        )
        hess_pt = -4.0 * (t * inv_d2)[:, None] * hp
        hess_tt = 2.0 * (t * t + r_sq) * inv_d2

        # Symmetric Jacobi scaling keeps the solve accurate when 1/p_i² spans many decades.
        diag = torch.cat([hess_pp.diagonal(dim1=-2, dim2=-1), hess_tt[:, None]], dim=-1)
        scale = diag.rsqrt()
        sp, st = scale[:, :k], scale[:, k]
        kkt[:, :k, :k] = sp[:, :, None] * hess_pp * sp[:, None, :]
        kkt[:, :k, k] = sp * hess_pt * st[:, None]
        kkt[:, k, :k] = kkt[:, :k, k]
        kkt[:, k, k] = hess_tt * st * st
        kkt[:, :k, k + 1] = sp
        kkt[:, k + 1, :k] = sp
        rhs[:, :k] = -sp * grad_p
        rhs[:, k] = -st * grad_t
        sol, _ = torch.linalg.solve_ex(kkt, rhs)
        dp = sol[:, :k] * sp
        dt = sol[:, k] * st

        # Dual estimate of the cone constraint, y = μ(∇ψ + ∇²ψ Δ) for ψ = −log(t² − ‖z‖²) in
        # z = Rᵀp: the Newton-corrected multiplier. The uncorrected μ∇ψ = 2μz/D is far off near
        # the cone's apex, where ∇²ψ ~ 1/D is huge (zero-norm optima, e.g. opposite gradients).
        dz = tmv(factor, dp)
        y = (2.0 * mu * inv_d)[:, None] * (
            z + dz + (2.0 * inv_d * ((z * dz).sum(-1) - t * dt))[:, None] * z
        )
        candidate = p
        gap = certificate(problem, p, y)
        if it % POLISH_EVERY == POLISH_EVERY - 1:
            # One support threshold per round, in turn: each costs an eigendecomposition.
            threshold = THRESHOLDS[(it // POLISH_EVERY) % len(THRESHOLDS)]
            polished, polished_gap = polish(problem, p, (threshold,))
            use = polished_gap < gap
            candidate = torch.where(use[:, None], polished, p)
            gap = torch.where(use, polished_gap, gap)
        improved = gap < best_gap
        best_gap = torch.where(improved, gap, best_gap)
        best_p = torch.where(improved[:, None], candidate, best_p)
        done = done | (best_gap <= tol)
        if check_host and bool(done.all()):
            break
        iterations = iterations + (~done).long()

        decrement = (-(grad_p * dp).sum(-1) - grad_t * dt).clamp_min(0.0).sqrt()
        step = torch.where(decrement > 0.25, 1.0 / (1.0 + decrement), 1.0)
        # Fraction to the boundary: exact arithmetic keeps the damped step inside the domain;
        # this guard keeps it there in floating point too.
        ratio = torch.where(dp < 0, -p / torch.where(dp < 0, dp, -1.0), torch.inf).min(-1).values
        step = torch.minimum(step, 0.99 * ratio)
        qa = dt * dt - (dz * dz).sum(-1)
        qb = 2.0 * (t * dt - (z * dz).sum(-1))
        # Largest step keeping D(α) = d + qb·α + qa·α² positive: its first positive root is
        # (−qb − sqrt(qb² − 4·qa·d)) / (2·qa) when the parabola opens down (qa < 0), or opens up
        # with real roots on the positive side (qa > 0, qb < 0); otherwise D stays positive.
        disc = qb * qb - 4.0 * qa * d
        bounded = (qa < 0) | ((qa > 0) & (qb < 0) & (disc >= 0))
        safe_qa = torch.where(bounded, qa, 1.0)
        root = torch.where(bounded, (-qb - disc.clamp_min(0.0).sqrt()) / (2.0 * safe_qa), torch.inf)
        step = torch.minimum(step, 0.99 * root.clamp_min(0.0))
        step = torch.where(done, 0.0, step)

        p = p + step[:, None] * dp
        t = t + step * dt
        centred = (decrement <= CENTRED) & ~done
        mu = torch.where(centred, MU_FACTOR * mu, mu)

    snapped = torch.where(best_p < SNAP, 0.0, best_p)
    snapped = snapped / snapped.sum(-1, keepdim=True)
    p, gap = polish(problem, snapped)
    # The barrier's own certificate can beat any face's (zero-norm optima with binding
    # off-support constraints); keep its point unless the polished one is as good.
    keep = best_gap < gap - 1e-14
    p = torch.where(keep[:, None], best_p, p)
    gap = torch.where(keep, best_gap, gap)
    return p, iterations, gap, ~done
