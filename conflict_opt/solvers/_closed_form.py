"""Exact solutions of the normalised dual for K ≤ 3 by candidate enumeration
(docs/solvers.md, "Closed form").

Edge (K = 2, and each edge for K = 3). On the segment p = λe_i + (1 − λ)e_j, with
q2 = ‖g_i − g_j‖², λ0 = ⟨g_j − g_i, g_j⟩ / q2 (the min-norm point of the line, MGDA's γ*) and
m = (H_ii H_jj − H_ij²) / q2 (its squared norm), ‖G_p‖² = q2 (λ − λ0)² + m and

    h(λ) = β_j + δλ + σ sqrt(q2 (λ − λ0)² + m),      δ = β_i − β_j.

h'(λ) = 0 reads q2 x / sqrt(q2 x² + m) = κ with x = λ − λ0 and κ = −δ/σ, which has the single
solution x = κ sqrt(m / (q2 (q2 − κ²))) when κ² < q2 (else h is monotone). Solving for x this way
instead of squaring h' = 0 into a quadratic in λ gives no spurious roots and no
cancellation in the coefficients; since h is convex, clamping the stationary point to [0, 1] and
comparing with both endpoints yields the edge minimum.

Interior (K = 3). A smooth interior optimum satisfies β + σ H p / ‖G_p‖ = ν𝟏; with q = σp/‖G_p‖
this is H q = ν𝟏 − β and qᵀHq = σ², so A ν² − 2Bν + C − σ² = 0 with A = 𝟏ᵀH⁻¹𝟏, B = 𝟏ᵀH⁻¹β,
C = βᵀH⁻¹β, and 𝟏ᵀq > 0 selects ν = (B + sqrt(B² − A(C − σ²))) / A; then Φ* = ν and p ∝ H⁻¹(ν𝟏−β).
A non-smooth interior optimum has ‖G_p‖ = 0, i.e. p ∝ a null vector of H with one sign.
When H is singular every other interior optimum lies on a line of constant Φ that meets the
boundary, so the edge candidates already contain an optimum. Every candidate is a feasible
point, so keeping the one with the smallest Φ is safe even when a candidate is not optimal.
"""

from __future__ import annotations

import torch

from ._problem import Problem, mv

_EDGES = {2: ((0,), (1,)), 3: ((0, 0, 1), (1, 2, 2))}


def _edge_minimisers(problem: Problem) -> torch.Tensor:
    """Minimisers of Φ on every edge λe_i + (1 − λ)e_j at once; returns ``[B, E, K]`` points."""
    k = problem.beta.shape[-1]
    edges = list(zip(*_EDGES[k], strict=True))
    h = problem.gram

    # Basic indexing with Python ints only: index tensors would be host-to-device copies.
    def pick(values: torch.Tensor, index) -> torch.Tensor:
        return torch.stack([index(values, i, j) for i, j in edges], dim=-1)  # [B, E]

    hii = pick(h, lambda m, i, j: m[:, i, i])
    hjj = pick(h, lambda m, i, j: m[:, j, j])
    hij = pick(h, lambda m, i, j: m[:, i, j])
    q2 = (hii + hjj - 2 * hij).clamp_min(0.0)
    flat = q2 <= 0
    safe_q2 = torch.where(flat, 1.0, q2)
    lam0 = (hjj - hij) / safe_q2
    m = ((hii * hjj - hij * hij) / safe_q2).clamp_min(0.0)
    beta_i = pick(problem.beta, lambda v, i, j: v[:, i])
    beta_j = pick(problem.beta, lambda v, i, j: v[:, j])
    kappa = (beta_j - beta_i) / problem.sigma[:, None]
    room = safe_q2 - kappa * kappa
    has_stationary = ~flat & (room > 0)
    x = kappa * (m / (safe_q2 * torch.where(has_stationary, room, 1.0))).sqrt()
    stationary = torch.where(has_stationary, (lam0 + x).clamp(0.0, 1.0), 0.0)

    lam = torch.stack([torch.zeros_like(q2), torch.ones_like(q2), stationary], dim=-1)  # [B,E,3]
    sq = (q2[..., None] * (lam - lam0[..., None]) ** 2 + m[..., None]).clamp_min(0.0)
    # On a flat edge (g_i = g_j) ‖G_p‖ is constant and the expression above is not used.
    sq = torch.where(flat[..., None], hjj[..., None].clamp_min(0.0), sq)
    values = beta_j[..., None] + (beta_i - beta_j)[..., None] * lam
    values = values + problem.sigma[:, None, None] * sq.sqrt()
    best = lam.gather(-1, values.argmin(-1, keepdim=True)).squeeze(-1)  # [B, E]
    points = best.new_zeros(*best.shape, k)
    for e, (i, j) in enumerate(edges):
        points[:, e, i] = best[:, e]
        points[:, e, j] = 1.0 - best[:, e]
    return points


def _interior_candidates(problem: Problem) -> torch.Tensor:
    """Smooth and zero-norm interior KKT points for K = 3; ``[B, 2, 3]``, NaN where absent."""
    evals, evecs = problem.evals, problem.evecs  # ascending
    cutoff = 1e-13 * evals[:, -1:].clamp_min(0.0)
    invertible = evals > cutoff
    inv_evals = torch.where(invertible, 1.0 / torch.where(invertible, evals, 1.0), 0.0)
    h_inv = (evecs * inv_evals[:, None, :]) @ evecs.transpose(-1, -2)
    full_rank = invertible.all(-1)

    ones = torch.ones_like(problem.beta)
    inv_one = mv(h_inv, ones)
    inv_beta = mv(h_inv, problem.beta)
    a = inv_one.sum(-1)
    b = inv_beta.sum(-1)
    c = (problem.beta * inv_beta).sum(-1)
    disc = b * b - a * (c - problem.sigma**2)
    ok = full_rank & (a > 0) & (disc >= 0)
    nu = (b + disc.clamp_min(0.0).sqrt()) / torch.where(ok, a, 1.0)
    q = nu[:, None] * inv_one - inv_beta
    total = q.sum(-1)
    ok = ok & (total > 0)
    smooth = q / torch.where(ok, total, 1.0)[:, None]
    smooth = torch.where(ok[:, None] & (smooth >= 0).all(-1, keepdim=True), smooth, torch.nan)

    null = evecs[:, :, 0]
    null = null * torch.where(null.sum(-1) < 0, -1.0, 1.0)[:, None]
    single_null = ~invertible[:, 0] & invertible[:, 1]
    zero_norm = null / torch.where(single_null, null.sum(-1), 1.0)[:, None]
    positive = single_null & (zero_norm > 0).all(-1)
    zero_norm = torch.where(positive[:, None], zero_norm, torch.nan)
    return torch.stack([smooth, zero_norm], dim=1)


def solve_closed_form(problem: Problem) -> torch.Tensor:
    """Exact dual optimum ``p [B, K]`` for K ∈ {1, 2, 3}."""
    k = problem.beta.shape[-1]
    if k == 1:
        return torch.ones_like(problem.beta)
    # The dispatcher refuses K > 3 with a message naming the alternatives.
    assert k in _EDGES, k
    stacked = _edge_minimisers(problem)  # [B, E, K]
    if k == 3:
        stacked = torch.cat([stacked, _interior_candidates(problem)], dim=1)
    safe = torch.nan_to_num(stacked, nan=0.0)
    # ‖G_p‖ through the factor, as everywhere: exact at zero-norm candidates.
    norm = (safe @ problem.factor).norm(dim=-1)  # [B, E]
    values = (safe * problem.beta[:, None, :]).sum(-1) + problem.sigma[:, None] * norm
    values = torch.where(stacked.isnan().any(-1), torch.inf, values)
    best = values.argmin(-1, keepdim=True)  # [B, 1]
    # Interior candidates come from eigenvectors, whose zero entries are ±1e-17; the dispatcher's
    # snap (_problem.snap) makes them exact zeros, so that RACO's clip sees the true support.
    return stacked.gather(1, best[..., None].expand(-1, 1, k)).squeeze(1)
