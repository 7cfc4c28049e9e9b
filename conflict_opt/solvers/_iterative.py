"""Batched interior-point solver of the normalised dual for any K, in pure torch.

The dual min_{p∈Δ} βᵀp + σ‖G_p‖ is the second-order cone program

    min βᵀp + σt   s.t.  p ≥ 0,  𝟏ᵀp = 1,  t ≥ ‖Rᵀp‖      (H̄ = RRᵀ),

solved by a primal log-barrier method (Nesterov & Nemirovski; Boyd & Vandenberghe §11): for
decreasing μ, minimise F_μ(p, t) = (βᵀp + σt)/μ − Σ_i log p_i − log(t² − ‖Rᵀp‖²) on 𝟏ᵀp = 1.
Each Newton step is followed by a line search over a few fixed fractions of the longest feasible
step and the damped step (p, t) + Δ/(1 + λ) (λ the Newton decrement), whose decrease
self-concordance guarantees; all candidates are evaluated in one batched pass, so there is no
data-dependent loop. Once λ ≤ 1 the iterate counts as centred and μ shrinks by ``MU_FACTOR``.
Unlike first-order methods (Frank–Wolfe, mirror descent), this reaches the stop tolerance of
1e-10 (ten times inside OPTIMAL's 1e-9) in tens of (K + 2)-sized linear solves, and it handles
the non-smooth points ‖G_p‖ = 0 (MGDA's Pareto-stationary case, opposite gradients).

Every iteration yields a primal certificate from the Newton-corrected multiplier of the cone
constraint (see the loop). Every ``POLISH_EVERY`` iterations the iterate's face is solved exactly
(:func:`._problem.polish`), with the support guessed as p_i > sqrt(μ) (the barrier multiplier of
p_i ≥ 0 is μ/p_i) or, every other round, by a fixed threshold; this crossover ends the solve at
round-off accuracy once the support is identified. Measured on the 2,100 test problems (K ≤ 32,
ranks 0…K, scales 1e-12…1e12): median 9 iterations, 99th percentile 57, maximum 83. On larger
full-rank problems the count grows about linearly in K; the most over 12 random and conflicting
problems per K (4 at K = 384) was 105 at K = 64, 197 at K = 96, 309 at K = 128, 593 at K = 256
and 821 at K = 384, at most 2.4·K from K = 64 on. The budget is therefore :func:`budget`,
max(``MAX_ITER``, ``ITER_PER_K``·K) = max(200, 4K) iterations.

The loop uses tensor operations only (no host synchronisation); problems whose certificate is
below ``STOP_TOL`` are frozen with ``torch.where``. On CPU, where reading a flag costs nothing,
the loop also stops once every problem of the batch is frozen, and it skips the polish until
some gap is below ``POLISH_FROM``.
"""

from __future__ import annotations

import torch

from ._problem import THRESHOLDS, Problem, certificate, mv, norm_sq, polish, tmv

MAX_ITER = 200
# Iterations per objective beyond MAX_ITER: the measured worst case is 2.4 per objective
# (module docstring), so 4 leaves a margin of 1.6 without letting a stuck solve run long.
ITER_PER_K = 4
# Line-search candidates, as fractions of the longest feasible step (plus the damped step).
_FRACTIONS_LIST = (1.0, 0.5, 0.25, 0.1)
STOP_TOL = 1e-10
# Every POLISH_EVERY iterations the iterate's face is solved exactly (see _problem.face): once the
# barrier has identified the support, this crossover ends the solve at round-off accuracy.
POLISH_EVERY = 2
POLISH_FROM = 1e-3
MU_FACTOR = 0.1
MU_START = 0.1
CENTRED = 1.0


def budget(k: int) -> int:
    """Default iteration budget for ``k`` objectives: max(``MAX_ITER``, ``ITER_PER_K``·k)."""
    return max(MAX_ITER, ITER_PER_K * k)


def solve_iterative(
    problem: Problem, max_iter: int | None = None, tol: float | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Solve the batch; returns ``p [B, K]``, ``iterations [B]``, ``gap [B]``, ``exhausted [B]``.

    Args:
        problem: the normalised problems.
        max_iter: iteration budget; default :func:`budget` of K, max(200, 4K).
        tol: certificate at which a problem is frozen; default ``STOP_TOL``.
    """
    tol = STOP_TOL if tol is None else tol
    h, factor, beta, sigma = problem.gram, problem.factor, problem.beta, problem.sigma
    batch, k = beta.shape
    max_iter = budget(k) if max_iter is None else max_iter
    dev = beta.device
    p = torch.full((batch, k), 1.0 / k, dtype=torch.float64, device=dev)
    t = norm_sq(factor, p).sqrt() + 1.0
    mu = torch.full((batch,), MU_START, dtype=torch.float64, device=dev)
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
    _fractions = torch.tensor(_FRACTIONS_LIST, dtype=torch.float64, device=dev)

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
        # The support cannot be read off an iterate far from optimal, so on CPU (where the
        # flag is free) the polish waits for a small gap; accelerators run it on schedule.
        worth = not check_host or bool((gap[~done] <= POLISH_FROM).any())
        if it % POLISH_EVERY == POLISH_EVERY - 1 and worth:
            # The barrier's multiplier of p_i ≥ 0 is μ/p_i, so p_i > sqrt(μ) is the classic
            # interior-point guess of the support (one eigendecomposition). Every other round
            # a fixed threshold is tried instead, in turn, in case the guess is off.
            round_ = it // POLISH_EVERY
            if round_ % 2 == 0:
                threshold = mu.sqrt() / p.max(-1).values
            else:
                threshold = THRESHOLDS[(round_ // 2) % len(THRESHOLDS)]
            candidate, gap = polish(problem, p, (threshold,), gap)
        improved = gap < best_gap
        best_gap = torch.where(improved, gap, best_gap)
        best_p = torch.where(improved[:, None], candidate, best_p)
        done = done | (best_gap <= tol)
        if check_host and bool(done.all()):
            break
        iterations = iterations + (~done).long()

        decrement = (-(grad_p * dp).sum(-1) - grad_t * dt).clamp_min(0.0).sqrt()
        # Fraction to the boundary of p ≥ 0 and of the cone, then a line search over a few
        # fixed fractions of it and the damped step 1/(1 + λ) (whose decrease self-concordance
        # guarantees), all evaluated in one batched pass: far from the central path the damped
        # step alone needs ~8 iterations to re-centre after each cut of μ.
        ratio = torch.where(dp < 0, -p / torch.where(dp < 0, dp, -1.0), torch.inf).min(-1).values
        qa = dt * dt - (dz * dz).sum(-1)
        qb = 2.0 * (t * dt - (z * dz).sum(-1))
        # Largest step keeping D(α) = d + qb·α + qa·α² positive: its first positive root is
        # (−qb − sqrt(qb² − 4·qa·d)) / (2·qa) when the parabola opens down (qa < 0), or opens up
        # with real roots on the positive side (qa > 0, qb < 0); otherwise D stays positive.
        disc = qb * qb - 4.0 * qa * d
        bounded = (qa < 0) | ((qa > 0) & (qb < 0) & (disc >= 0))
        safe_qa = torch.where(bounded, qa, 1.0)
        root = torch.where(bounded, (-qb - disc.clamp_min(0.0).sqrt()) / (2.0 * safe_qa), torch.inf)
        longest = (0.99 * torch.minimum(ratio, root.clamp_min(0.0))).clamp_max(1.0)
        damped = torch.minimum(torch.where(decrement > 0.25, 1.0 / (1.0 + decrement), 1.0), longest)
        steps = torch.cat([longest[:, None] * _fractions, damped[:, None]], dim=-1)  # [B, S]
        trial_p = p[:, None, :] + steps[..., None] * dp[:, None, :]  # [B, S, K]
        trial_t = t[:, None] + steps * dt[:, None]
        trial_r_sq = (
            r_sq[:, None]
            + steps * (2.0 * (z * dz).sum(-1))[:, None]
            + steps**2 * (dz * dz).sum(-1)[:, None]
        )
        trial_d = trial_t * trial_t - trial_r_sq
        feasible = (trial_p > 0).all(-1) & (trial_d > 0)
        barrier = (
            ((trial_p * beta[:, None, :]).sum(-1) + sigma[:, None] * trial_t) / mu[:, None]
            - torch.where(trial_p > 0, trial_p, 1.0).log().sum(-1)
            - torch.where(trial_d > 0, trial_d, 1.0).log()
        )
        barrier = torch.where(feasible, barrier, torch.inf)
        choice = barrier.argmin(-1, keepdim=True)
        step = steps.gather(-1, choice).squeeze(-1)
        step = torch.where(done, 0.0, step)

        p = p + step[:, None] * dp
        t = t + step * dt
        centred = (decrement <= CENTRED) & ~done
        mu = torch.where(centred, MU_FACTOR * mu, mu)

    p, gap = polish(problem, best_p)
    # The barrier's own certificate can beat any face's (zero-norm optima with binding
    # off-support constraints); keep its point unless the polished one is as good.
    keep = best_gap < gap - 1e-14
    p = torch.where(keep[:, None], best_p, p)
    gap = torch.where(keep, best_gap, gap)
    return p, iterations, gap, ~done
