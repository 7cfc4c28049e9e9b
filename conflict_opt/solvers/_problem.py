"""The normalised dual shared by every method and backend, its certificate and the coefficients.

Every method except ``"linear"`` reduces to one convex problem on the simplex Δ_K::

    min_{p ∈ Δ_K}  Φ(p) = βᵀp + σ ‖G_p‖,     ‖G_p‖ = sqrt(pᵀ H̄ p),

where H̄ = H / trace(H) is the trace-normalised Gram matrix (so the answer cannot depend on the
gradient scale) and

* CAGrad / CAGrad-Clip (RACO Algorithm 1, step 3, divided by ‖g_0‖): β = H̄w / ‖ḡ_0‖, σ = c, with
  ‖ḡ_0‖ = sqrt(wᵀH̄w). Φ·‖ḡ_0‖ is exactly RACO's Φ(p) = G_pᵀg_0 + c‖g_0‖‖G_p‖ on H̄;
* MGDA: β = 0, σ = 1. min ‖G_p‖ and min ‖G_p‖² (Désidéri 2012; Sener & Koltun 2018) have the
  same minimisers, so the min-norm problem is the zero-anchor case of the same dual.

The primal problem (strong duality; Liu et al. 2021) is
max_{u ∈ span, ‖u‖ ≤ σ} min_i (β_i + ⟨ḡ_i, u⟩), and its optimal value equals Φ*. Any feasible
u therefore certifies Φ(p) − Φ* ≤ Φ(p) − ψ(u) with
ψ(u) = min_i (β_i + ⟨ḡ_i, u⟩); :func:`certificate` evaluates this for u = σ G_p/‖G_p‖ (which makes
the bound the Frank–Wolfe gap and the KKT residual of p), for u = 0, and for a solver-supplied u.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .._types import Status

# Relative tolerances of the certificate (gap / max_i ‖ḡ_i‖).
TOL_OPTIMAL = 1e-9
TOL_INACCURATE = 1e-6


def mv(m: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Batched matrix-vector product ``m [B, K, K] @ v [B, K] -> [B, K]``."""
    return (m @ v.unsqueeze(-1)).squeeze(-1)


def tmv(m: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Batched ``mᵀv`` for ``m [B, K, K]``, ``v [B, K] -> [B, K]``."""
    return (v.unsqueeze(-2) @ m).squeeze(-2)


def relative_tol(dtype: torch.dtype) -> float:
    """Tolerance for "clearly" asymmetric / indefinite / off-simplex input of ``dtype``."""
    return max(1e-6, 64 * torch.finfo(dtype).eps)


def _roundoff(dtype: torch.dtype, k: int) -> float:
    """Relative size of round-off in a quadratic form of a trace-normalised Gram of ``dtype``."""
    return 8.0 * k * torch.finfo(dtype).eps


def _below_roundoff(
    gram: torch.Tensor, v: torch.Tensor, sq_norm: torch.Tensor, tiny: float
) -> torch.Tensor:
    """Whether ‖Σ v_i g_i‖² = ``sq_norm [B]`` is round-off for ``v [B, K]``; returns ``[B]``.

    The yardstick is what the terms could produce, (Σ |v_i| ‖g_i‖)², times ``tiny`` (the
    round-off of the caller's dtype): relative, so scale-free, and honest about a bf16 Gram's
    three digits.
    """
    lengths = gram.diagonal(dim1=-2, dim2=-1).clamp_min(0.0).sqrt()
    return sq_norm <= tiny * (v.abs() * lengths).sum(-1) ** 2


def vanishes(problem: Problem, v: torch.Tensor, sq_norm: torch.Tensor) -> torch.Tensor:
    """:func:`_below_roundoff` for the problem's (normalised) Gram and dtype."""
    return _below_roundoff(problem.gram, v, sq_norm, problem.tiny)


class Problem(NamedTuple):
    """A batch of normalised duals; batch dimensions are flattened to one, ``B``."""

    gram: torch.Tensor  # [B, K, K] float64, symmetric, trace 1 (identity/K where not solvable)
    evals: torch.Tensor  # [B, K] eigenvalues of gram, ascending, round-off level set to 0
    evecs: torch.Tensor  # [B, K, K] matching eigenvectors (columns)
    factor: torch.Tensor  # [B, K, K] R = V Λ^½ with R Rᵀ = gram
    weights: torch.Tensor  # [B, K] float64 on the simplex
    beta: torch.Tensor  # [B, K]
    sigma: torch.Tensor  # [B]
    anchor_norm: torch.Tensor  # [B] ‖ḡ_0‖ in trace-normalised units
    nonfinite: torch.Tensor  # [B] bool
    degenerate: torch.Tensor  # [B] bool: zero Gram, or ‖g_0‖ = 0 for the CAGrad methods
    tiny: float  # relative round-off of quadratic forms in the caller's dtype (see vanishes)
    squared: bool  # certify Φ² (MGDA's own objective ‖G_p‖²) instead of Φ


def prepare(gram: torch.Tensor, weights: torch.Tensor, method: str, c: float) -> Problem:
    """Build the normalised dual from a validated ``gram [B, K, K]`` and ``weights [B, K]``.

    Problems whose Gram has non-finite entries, or cannot be solved (zero Gram, vanishing anchor)
    get a harmless stand-in (identity Gram) so batched code stays finite; the flags say which.
    """
    k = gram.shape[-1]
    tiny = _roundoff(gram.dtype, k)
    h = gram.to(torch.float64)
    w = weights.to(torch.float64)
    eye = torch.eye(k, dtype=torch.float64, device=h.device)

    nonfinite = ~torch.isfinite(h).flatten(-2).all(-1)
    h = torch.where(nonfinite[:, None, None], eye, h)
    h = 0.5 * (h + h.transpose(-1, -2))
    trace = h.diagonal(dim1=-2, dim2=-1).sum(-1)
    # Grams are PSD, so trace 0 means every gradient is zero; a negative trace only survives
    # validation as round-off around zero.
    zero = trace <= 0
    h = torch.where(zero[:, None, None], eye / k, h / torch.where(zero, 1.0, trace)[:, None, None])

    # Quadratic forms go through the factor: pᵀH̄p = ‖Rᵀp‖². Near a zero-norm point pᵀH̄p is a
    # sum of O(1) terms cancelling to ~1e-20, which only the factor form resolves (there the
    # cancellation happens in Rᵀp, at the scale of its own entries).
    # Eigenvalues at round-off level (those of an exact null direction come out as ±1e-17) are
    # zero: left in, their square roots (~3e-9) would floor ‖Rᵀp‖ at a zero-norm point.
    evals, evecs = torch.linalg.eigh(h)
    cutoff = _roundoff(torch.float64, k) * evals[:, -1:]
    indefinite = (evals < -cutoff).any(-1)
    evals = torch.where(evals > cutoff, evals, 0.0)
    factor = evecs * evals.sqrt()[:, None, :]
    # A Gram that round-off left indefinite beyond float64's own round-off (a bfloat16 Gram's
    # rounding, which validation accepts) is replaced by the PSD matrix the factor represents:
    # otherwise the closed form's edge formulas and the barrier's Hessian would solve another
    # problem than the one the certificate measures, and the answer could not be certified.
    # PSD Grams are left bit for bit as they are.
    projected = factor @ factor.transpose(-1, -2)
    projected = 0.5 * (projected + projected.transpose(-1, -2))
    h = torch.where(indefinite[:, None, None], projected, h)
    g0_sq = norm_sq(factor, w)
    anchor_norm = g0_sq.sqrt()
    if method in ("cagrad", "cagrad_clip"):
        degenerate = zero | _below_roundoff(h, w, g0_sq, tiny)
        safe_norm = torch.where(degenerate, 1.0, anchor_norm)
        beta = mv(h, w) / safe_norm[:, None]
        beta = torch.where(degenerate[:, None], 0.0, beta)
        sigma = torch.where(degenerate, 1.0, torch.full_like(trace, c))
    else:
        degenerate = zero
        beta = torch.zeros_like(w)
        sigma = torch.ones_like(trace)
    degenerate = degenerate & ~nonfinite
    return Problem(
        h,
        evals,
        evecs,
        factor,
        w,
        beta,
        sigma,
        anchor_norm,
        nonfinite,
        degenerate,
        tiny,
        method == "mgda",
    )


def scale(problem: Problem) -> torch.Tensor:
    """max_i ‖ḡ_i‖ ``[B]`` (1 where every gradient is zero): the size of Φ and of its gaps."""
    longest = problem.gram.diagonal(dim1=-2, dim2=-1).max(-1).values.clamp_min(0.0).sqrt()
    return torch.where(longest > 0, longest, 1.0)


def norm_sq(factor: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """‖G_p‖² = ‖Rᵀp‖² for ``factor [B, K, K]`` and ``p [B, K]``; returns ``[B]``."""
    z = tmv(factor, p)
    return (z * z).sum(-1)


def objective(problem: Problem, p: torch.Tensor) -> torch.Tensor:
    """Φ(p) = βᵀp + σ‖G_p‖ for ``p [B, K]``; returns ``[B]``."""
    r = norm_sq(problem.factor, p).sqrt()
    return (problem.beta * p).sum(-1) + problem.sigma * r


def certificate(
    problem: Problem, p: torch.Tensor, u_coords: torch.Tensor | None = None
) -> torch.Tensor:
    """Relative upper bound on Φ(p) − Φ* for ``p [B, K]`` on the simplex; returns ``[B]``.

    Args:
        problem: the normalised problem.
        p: ``[B, K]`` a point of the simplex.
        u_coords: optional ``[B, K]`` primal candidate u in the orthonormal coordinates of the
            factor (⟨ḡ_i, u⟩ = (R u)_i, ‖u‖ = ‖u_coords‖), e.g. the interior-point dual, or
            ``[B, C, K]`` several candidates (the best one counts); each is shrunk into the ball
            ‖u‖ ≤ σ if needed.

    Returns:
        ``[B]`` the smallest certified gap, divided by max_i ‖ḡ_i‖ (the scale of Φ). For MGDA
        (``problem.squared``) the bound is on ‖G_p‖² − ‖G_p*‖² ≤ (Φ − ψ)(Φ + max(ψ, 0)), divided
        by max_i ‖ḡ_i‖²: near a zero-norm optimum ‖G_p‖ itself resolves only sqrt(eps).
    """
    factor = problem.factor
    z = tmv(factor, p)
    hp = mv(factor, z)
    r = (z * z).sum(-1).sqrt()
    phi = (problem.beta * p).sum(-1) + problem.sigma * r
    psi = problem.beta.min(-1).values  # u = 0
    smooth = r > 0
    ratio = problem.sigma / torch.where(smooth, r, 1.0)
    psi_smooth = (problem.beta + ratio[:, None] * hp).min(-1).values
    psi = torch.where(smooth, torch.maximum(psi, psi_smooth), psi)
    if u_coords is not None:
        u = u_coords if u_coords.ndim == 3 else u_coords[:, None, :]  # [B, C, K]
        hx = u @ factor.transpose(-1, -2)  # (R u)_i for every candidate
        norm = (u * u).sum(-1).sqrt()
        sigma = problem.sigma[:, None]
        shrink = torch.where(norm > sigma, sigma / norm.clamp_min(1e-300), 1.0)
        psi_u = (problem.beta[:, None, :] + shrink[..., None] * hx).min(-1).values
        psi = torch.maximum(psi, psi_u.max(-1).values)
    size = scale(problem)
    gap = (phi - psi).clamp_min(0.0)
    if problem.squared:
        return gap * (phi + psi.clamp_min(0.0)) / size**2
    return gap / size


def _face_pinv(
    problem: Problem, p: torch.Tensor, threshold: float | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Support S of ``p``, the pseudo-inverse of H_SS ⊕ I, its eigenvectors and kept mask.

    ``threshold`` is relative to max_j p_j: a float, or ``[B]`` per problem.
    """
    if isinstance(threshold, torch.Tensor):
        threshold = threshold[:, None]
    support = p > threshold * p.max(-1, keepdim=True).values
    pinv, evecs, keep = _embedded_pinv(problem.gram, support)
    return support, pinv, evecs, keep


def _embedded_pinv(
    gram: torch.Tensor, support: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pseudo-inverse of H_SS ⊕ I ``[..., K, K]``, its eigenvectors and kept-eigenvalue mask,
    for ``gram [..., K, K]`` and ``support [..., K]`` bool (broadcast against each other).

    H_SS embedded with an identity on the complement: its pseudo-inverse is H_SS⁺ ⊕ I, and its
    eigenvectors of (near) zero eigenvalue span the null space of H_SS.
    """
    k = gram.shape[-1]
    mask = support[..., :, None] & support[..., None, :]
    eye = torch.eye(k, dtype=gram.dtype, device=gram.device)
    m = torch.where(mask, gram, torch.where(support[..., None, :], 0.0, eye))
    evals, evecs = torch.linalg.eigh(m)
    keep = evals > 1e-13 * evals[..., -1:].clamp_min(0.0)
    inv = torch.where(keep, 1.0 / torch.where(keep, evals, 1.0), 0.0)
    pinv = (evecs * inv[..., None, :]) @ evecs.transpose(-1, -2)
    return pinv, evecs, keep


def _face_dual(
    problem: Problem, p: torch.Tensor, support: torch.Tensor, pinv: torch.Tensor
) -> torch.Tensor:
    """Primal candidate x_S = H_SS⁺(Φ(p)𝟏 − β_S), in the factor's coordinates."""
    ones = support.to(p.dtype)
    beta = torch.where(support, problem.beta, 0.0)
    x = mv(pinv, objective(problem, p)[:, None] * ones - beta) * ones
    return tmv(problem.factor, x)


# Largest K for which certify enumerates every support of the minimum-norm primal (2^K − 1).
_ENUMERATE_K = 3


def _min_norm_duals(problem: Problem, p: torch.Tensor) -> torch.Tensor:
    """Candidates for the minimum-norm primal certifying ``p [B, K]``, ``[B, 2^K − 1, K]``.

    At a zero-norm optimum p* the KKT conditions give a u with ‖u‖ ≤ σ and
    β_i + ⟨ḡ_i, u⟩ ≥ Φ* for every i, including i outside supp(p*) (e.g. p* a zero gradient's
    vertex): the face dual, which only enforces equality on the support, misses those
    constraints. The minimum-norm u with ⟨ḡ_i, u⟩ ≥ s_i = Φ(p) − β_i is u = Σ λ_j ḡ_j, with
    λ ≥ 0 solving min_{λ≥0} ½λᵀH̄λ − sᵀλ (its Lagrange dual); at the optimum it has ‖u‖ ≤ σ.
    For small K every support T of λ is tried, λ_T = H̄_TT⁺ s_T: the right one certifies p, and
    the others are still feasible candidates once :func:`certificate` shrinks them.

    Returns:
        ``[B, 2^K − 1, K]`` the candidates u = Rᵀλ in the factor's coordinates.
    """
    k = p.shape[-1]
    # Supports as the bits of 1 … 2^K − 1, built on the device (an index list would be a copy).
    codes = torch.arange(1, 2**k, device=p.device)
    support = ((codes[:, None] >> torch.arange(k, device=p.device)) & 1).bool()  # [T, K]
    pinv, _, _ = _embedded_pinv(problem.gram[:, None], support)  # [B, T, K, K]
    s = objective(problem, p)[:, None] - problem.beta  # [B, K]
    ones = support.to(p.dtype)  # [T, K]
    lam = (pinv @ (s[:, None, :] * ones)[..., None]).squeeze(-1) * ones  # [B, T, K]
    return lam @ problem.factor  # u = Rᵀλ, row by row


def certify(problem: Problem, p: torch.Tensor) -> torch.Tensor:
    """Certificate of an exact point ``p [B, K]`` (exact zeros off its support): :func:`certificate`
    with the face dual of :func:`face` as extra candidate, which covers zero-norm optima, and for
    K ≤ 3 the minimum-norm primal of :func:`_min_norm_duals`, which covers zero-norm optima with
    constraints binding off the support (a zero gradient's vertex)."""
    gap = certificate(problem, p)
    # The extra candidates cost eigendecompositions and only matter where the Frank–Wolfe bound
    # fails (zero-norm optima). On CPU reading the flag is free; elsewhere it would be a host
    # synchronisation, so accelerators always compute them.
    if gap.device.type == "cpu" and bool((gap <= TOL_OPTIMAL).all()):
        return gap
    support, pinv, _, _ = _face_pinv(problem, p, 1e-12)
    candidates = _face_dual(problem, p, support, pinv)[:, None, :]
    if p.shape[-1] <= _ENUMERATE_K:
        candidates = torch.cat([candidates, _min_norm_duals(problem, p)], dim=1)
    return torch.minimum(gap, certificate(problem, p, candidates))


def face(
    problem: Problem, p: torch.Tensor, threshold: float | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact KKT points and a primal certificate on the face spanned by the support S of ``p``.

    S = {i : p_i > threshold · max_j p_j}. On the face, a smooth optimum satisfies
    H_SS q = ν𝟏 − β_S and q_Sᵀ H_SS q_S = σ² with q = σp/‖G_p‖ (the closed form's interior formula
    applied to a face), so A ν² − 2Bν + C − σ² = 0 with A = 𝟏ᵀH_SS⁺𝟏, B = 𝟏ᵀH_SS⁺β_S,
    C = β_Sᵀ H_SS⁺ β_S. A non-smooth optimum has G_p = 0: p_S in the null space of H_SS.
    The primal point u = Σ_S x_j ḡ_j with x_S = H_SS⁺(Φ(p)𝟏 − β_S) certifies p both at a smooth
    optimum (there it is σ G_p/‖G_p‖) and at a zero-norm one (Φ* = 0, u = −P_S ĝ_0), where the
    Frank–Wolfe candidate of :func:`certificate` is undefined.

    Args:
        problem: the normalised problem.
        p: ``[B, K]`` a point of the simplex (typically a near-optimal iterate).
        threshold: size relative to max_j p_j below which an entry of ``p`` is taken as zero
            (a float, or ``[B]`` per problem).

    Returns:
        ``[B, K]`` the face's smooth KKT point and ``[B, K]`` its zero-norm point nearest to
        ``p`` (NaN rows where none exists in the simplex), and ``[B, K]`` the primal candidates
        u = Σ_S x_j ḡ_j certifying ``p`` and the zero-norm point, in the factor's coordinates.
        The smooth point needs none: :func:`certificate`'s own σG_p/‖G_p‖ is its exact dual.
    """
    support, pinv, evecs, keep = _face_pinv(problem, p, threshold)
    ones = support.to(p.dtype)
    beta = torch.where(support, problem.beta, 0.0)
    x = _face_dual(problem, p, support, pinv)

    inv_one = mv(pinv, ones) * ones
    inv_beta = mv(pinv, beta) * ones
    a = inv_one.sum(-1)
    b = inv_beta.sum(-1)
    c = (beta * inv_beta).sum(-1)
    disc = b * b - a * (c - problem.sigma**2)
    ok = (a > 0) & (disc >= 0)
    nu = (b + disc.clamp_min(0.0).sqrt()) / torch.where(ok, a, 1.0)
    q = nu[:, None] * inv_one - inv_beta
    total = q.sum(-1)
    ok = ok & (total > 0)
    smooth = q / torch.where(ok, total, 1.0)[:, None]
    ok = ok & (smooth >= 0).all(-1)
    smooth = torch.where(ok[:, None], smooth, torch.nan)

    null_basis = evecs * (~keep).to(p.dtype)[:, None, :]
    z = mv(null_basis, tmv(null_basis, p * ones))
    total = z.sum(-1)
    ok = (total > 0) & (z >= -1e-12 * total[:, None]).all(-1)
    zero_norm = z.clamp_min(0.0) / torch.where(ok, total, 1.0)[:, None]
    x_zero = _face_dual(problem, torch.where(ok[:, None], zero_norm, p), support, pinv)
    zero_norm = torch.where(ok[:, None], zero_norm, torch.nan)
    return smooth, zero_norm, x, x_zero


# Support thresholds tried by polish: an interior-point iterate has its inactive entries at
# roughly μ; trying several cut-offs finds the support without knowing μ.
THRESHOLDS = (1e-7, 1e-5, 1e-3)
_TIE = 1e-14


def polish(
    problem: Problem,
    p: torch.Tensor,
    thresholds: tuple[float | torch.Tensor, ...] = THRESHOLDS,
    gap: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Improve ``p [B, K]`` by exact KKT points of candidate faces where they certify better.

    Each support threshold costs one K×K eigendecomposition per problem. ``gap`` is a known
    certificate of ``p`` (computed here when absent).
    Returns the chosen ``p [B, K]`` and its certified relative gap ``[B]``.
    """
    best, best_gap = p, certificate(problem, p) if gap is None else gap
    for threshold in thresholds:
        smooth, zero_norm, x, x_zero = face(problem, p, threshold)
        for point, dual, is_face in (
            (p, x, False),
            (smooth, None, True),
            (zero_norm, x_zero, True),
        ):
            usable = ~point.isnan().any(-1)
            point = torch.where(usable[:, None], point, p)
            gap = torch.where(usable, certificate(problem, point, dual), torch.inf)
            # An exact face point solves linear equations, so it is accurate to round-off where
            # an iterate is only accurate to sqrt(round-off) in p: it wins ties at that level.
            better = gap <= best_gap.clamp_min(_TIE) if is_face else gap < best_gap
            best = torch.where(better[:, None], point, best)
            best_gap = torch.where(better, gap, best_gap)
    return best, best_gap


# Dual weights below this fraction of the largest are below every backend's accuracy.
SNAP = 1e-9
# ... and zeroing them may raise Φ by at most this much (relative to max_i ‖ḡ_i‖).
_SNAP_COST = 1e-10


def snap(problem: Problem, p: torch.Tensor, gap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Set round-off entries of the dual ``p [B, K]`` to zero; returns ``p`` and its gap ``[B]``.

    RACO's clip p̃ = min(p, w) is followed by a normalisation G̃_p/‖G̃_p‖, so a dual entry of
    1e-15 where w > 0 (an interior-point footprint, a null-space projection's residue) would
    otherwise become a full-length correction. Entries below ``SNAP`` of the largest are zeroed
    where that raises Φ by at most 1e-10; the certificate stays valid, the dual bound ψ being
    unchanged: gap(snapped) = gap + ΔΦ.
    """
    snapped = torch.where(p <= SNAP * p.max(-1, keepdim=True).values, 0.0, p)
    snapped = snapped / snapped.sum(-1, keepdim=True)
    size = scale(problem)
    value = objective(problem, p) / size
    increase = (objective(problem, snapped) / size - value).clamp_min(0.0)
    use = increase <= _SNAP_COST
    if problem.squared:
        # MGDA's gap is on ‖G_p‖²: (Φ + ΔΦ)² − Φ*² ≤ gap + ΔΦ(2Φ + ΔΦ), all relative.
        increase = increase * (2.0 * value + increase)
    return torch.where(use[:, None], snapped, p), torch.where(use, gap + increase, gap)


def status_from_gap(gap: torch.Tensor, exhausted: torch.Tensor | None = None) -> torch.Tensor:
    """Map certificates ``[B]`` to :class:`Status`; ``exhausted`` marks budget-limited solves.

    A non-finite gap (NaN compares false against every tolerance) is NONFINITE, never OPTIMAL.
    """
    status = torch.full(gap.shape, int(Status.OPTIMAL), dtype=torch.int64, device=gap.device)
    status = torch.where(gap > TOL_OPTIMAL, int(Status.INACCURATE), status)
    loose = gap > TOL_INACCURATE
    if exhausted is not None:
        status = torch.where(loose & exhausted, int(Status.MAX_ITER), status)
        loose = loose & ~exhausted
    # A gap above the loose tolerance with no iteration budget to blame is still not OPTIMAL.
    status = torch.where(loose, int(Status.MAX_ITER), status)
    return torch.where(torch.isfinite(gap), status, int(Status.NONFINITE))


def coefficients(
    problem: Problem, p: torch.Tensor, method: str, c: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Coefficients a ``[B, K]`` and clipped dual p̃ ``[B, K]`` from the dual ``p [B, K]``.

    RACO Algorithm 1, steps 4 to 6: a = w + (c‖g_0‖ / ‖G̃_p‖) p̃ with p̃ = min(p, w) for
    CAGrad-Clip (p̃ = p for CAGrad), and a = w when ‖G̃_p‖ vanishes. No (1 + c) or (1 + c²) rescaling.
    MGDA: a = p.
    """
    if method == "mgda":
        return p, p
    w = problem.weights
    clipped = torch.minimum(p, w) if method == "cagrad_clip" else p
    r_sq = norm_sq(problem.factor, clipped)
    # ‖G̃_p‖² at round-off level means G̃_p = 0 (e.g. the dual's support misses supp(w), or
    # clipped weights on exactly opposite gradients cancel): RACO then takes G_0 = g_0.
    active = ~vanishes(problem, clipped, r_sq)
    factor = c * problem.anchor_norm / torch.where(active, r_sq, 1.0).sqrt()
    factor = torch.where(active & ~problem.degenerate, factor, 0.0)
    return w + factor[:, None] * clipped, clipped
