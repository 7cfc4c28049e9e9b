"""Host fast path: one unbatched problem on CPU, solved in float64 C, Python and LAPACK.

Why it exists: the batched torch backends pay a few µs of dispatch per tensor operation, and an
unbatched solve is hundreds of operations on 2 to 32 numbers (about 1 ms for the closed form,
10 to 30 ms for the interior-point method). A training loop solves exactly one such problem per
step. On CPU the Gram is already on the host, so reading it costs nothing; this module solves it
with scalar Python (closed form, K ≤ 3) or with a few LAPACK calls (active set, any K). Where
the CPU kernels of ``conflict_opt._native`` run, the closed form and the active sets (CAGrad's
homotopy, MGDA's Lawson–Hanson) run as their C transcriptions (csrc/host_solve.c,
:func:`_solve_native`; a few µs each), which ``tests/test_host_native.py`` holds to the same
answers.

Contract. :func:`solve_host` returns a :class:`SolveResult` only when every number in it is
certified by the same Frank–Wolfe/KKT bound as the torch path (:func:`._problem.certificate`)
with gap ≤ ``TOL_OPTIMAL``; otherwise it returns ``None`` and the dispatcher runs the batched
torch path, which owns every error message, every degenerate, non-finite, rank-deficient or
zero-norm case and every ``INACCURATE`` answer. The fast path therefore never changes *what* is
returned beyond round-off, only how fast; ``tests/test_parity.py`` checks it on the 2,100-problem
suite against the cvxpy reference and ``tests/test_host.py`` against the torch path.

Quadratic forms. Near a zero-norm point pᵀH̄p is a sum of O(1) terms cancelling to round-off;
the torch path resolves it through an eigen factor, the direct form here only to about
K·eps·(Σ |p_i| ‖ḡ_i‖)² (the yardstick). CAGrad's Φ and step are linear in ‖G_p‖, so the host
path trusts a squared norm only above ``FLOOR``·K times its yardstick (relative error of the
norm ≲ 1e-8); MGDA's objective is ‖G_p‖² itself, which needs only the dtype's round-off level.
Anything below goes to the torch path.

The active set (backend ``"iterative"``). For a smooth optimum of min_{p∈Δ} βᵀp + σ‖G_p‖ put
q = σp/‖G_p‖ ≥ 0: the KKT conditions read β + H̄q − ν𝟏 ≥ 0 ⟂ q ≥ 0 with qᵀH̄q = σ², and
Φ* = ν (the closed form's interior KKT formula applied to a face). For fixed ν the complementarity
part is the KKT system of min_{q≥0} ½qᵀH̄q − (ν𝟏 − β)ᵀq, whose solution q(ν) is piecewise linear
in ν, starts at 0 for ν ≤ min β, and has s(ν) = q(ν)ᵀH̄q(ν) increasing for positive definite H̄
(ds/dν = 2𝟏ᵀq on each piece). :func:`_homotopy` follows q(ν) from ν = min β piece by piece, like
LARS (Efron, Hastie, Johnstone, Tibshirani 2004) follows the lasso path: on a piece with support
S, q_S = νH_SS⁻¹𝟏 − H_SS⁻¹β_S, s is the quadratic Aν² − 2Bν + C (A = 𝟏ᵀH_SS⁻¹𝟏,
B = 𝟏ᵀH_SS⁻¹β_S, C = β_SᵀH_SS⁻¹β_S), and the walk stops at the piece's root of s(ν) = σ². One
Cholesky solve per piece; the answer is the exact KKT point of its face, and the number of pieces
is reported as ``iterations``. MGDA (β = 0, σ = 1) has no path: it is the single program
q = argmin_{q≥0} ½qᵀH̄q − 𝟏ᵀq, p = q/𝟏ᵀq, solved by the Lawson–Hanson active set (Lawson & Hanson,
"Solving Least Squares Problems", 1974, ch. 23, adapted from least squares to a positive definite
quadratic; pivots reported as ``iterations``). Only positive definite H̄ with a 1-norm condition
number ≤ ``MAX_CONDITION`` is taken (every H_SS is then at least as well conditioned); the rest
goes to the torch interior point.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable, Sequence

import numpy as np
import torch

# Imported with the package, not on first use: 0.3 s and ~18 MiB of shared libraries that would
# otherwise land inside the first training step.
from scipy.linalg import lapack

from .._types import FLOAT_DTYPES, SolveResult, Status
from ..primitives import _native, _use_native
from . import _problem

# Direct quadratic forms are trusted above K·FLOOR times their yardstick (module docstring).
FLOOR = 2e-8
# The active set takes Grams up to this 1-norm condition number (LAPACK's dpocon estimate).
MAX_CONDITION = 1e10
# Largest K solved on the host; beyond it K×K LAPACK calls no longer dominate by dispatch.
MAX_K = 128
# Interior candidate of the K = 3 closed form needs det(H̄) above this (eigenvalues sum to 1).
_MIN_DET = 1e-10
# Budget of active-set pivots (or homotopy pieces) per problem: 10 per objective, plus 20.
_PIVOTS_PER_K = 10

# --- input ---------------------------------------------------------------------------------------


def _weights_list(weights: torch.Tensor | Sequence[float] | None, k: int) -> list[float] | None:
    """Weights as floats, renormalised, if they are clearly valid; else ``None``."""
    if weights is None:
        return [1.0 / k] * k
    if isinstance(weights, torch.Tensor):
        if weights.device.type != "cpu" or weights.ndim != 1 or weights.requires_grad:
            return None
        values = weights.tolist()
    elif isinstance(weights, (list, tuple)):
        values = list(weights)
        if not all(type(v) in (float, int) for v in values):
            return None
    else:
        return None
    if len(values) != k:
        return None
    total = 0.0
    for v in values:
        if not (math.isfinite(v) and v >= 0.0):
            return None
        total += v
    if not abs(total - 1.0) <= 1e-6:
        return None
    return [float(v) / total for v in values]


def _symmetric(h: list[list[float]], tol: float) -> bool:
    """Finite entries and max |H − Hᵀ| ≤ tol·max |H| (the dispatcher's own test)."""
    magnitude = 0.0
    asym = 0.0
    for i, row in enumerate(h):
        for j, x in enumerate(row):
            if not math.isfinite(x):
                return False
            magnitude = max(magnitude, abs(x))
            if j < i:
                asym = max(asym, abs(x - h[j][i]))
    return asym <= tol * magnitude


def _psd_within(h: list[list[float]], margin: float) -> bool:
    """Whether the symmetric ``h`` (K ≤ 3 here, any K works) has no eigenvalue below
    ``-margin``: the Cholesky factorisation of h + margin·I succeeds (every pivot positive).

    Cholesky is backward stable, so the answer is exact up to O(K·eps·‖h‖) at the boundary and
    correct for singular Grams: a rank-one Gram, with a double zero eigenvalue, gets pivots
    ``margin`` ± round-off. A closed-form eigenvalue (trigonometric for K = 3) loses sqrt(eps)
    at repeated eigenvalues, which would refuse exactly those Grams.
    """
    k = len(h)
    low = [[0.0] * k for _ in range(k)]
    for i in range(k):
        for j in range(i + 1):
            s = h[i][j] + (margin if i == j else 0.0)
            for m in range(j):
                s -= low[i][m] * low[j][m]
            if i == j:
                if not s > 0.0:
                    return False
                low[i][i] = math.sqrt(s)
            else:
                low[i][j] = s / low[j][j]
    return True


def _output(
    gram: torch.Tensor,
    coeffs: list[float],
    p: list[float],
    clipped: list[float],
    gap: float,
    iterations: int,
) -> SolveResult:
    """A :class:`SolveResult` in the dtype the torch path would return.

    One host array becomes the three ``[K]`` results (views of a ``[3, K]`` tensor): tensor
    creation, at about 1 µs each, is a fifth of a closed-form solve.
    """
    dtype = torch.promote_types(gram.dtype, torch.float32)
    rows = torch.from_numpy(np.array((coeffs, p, clipped), dtype=_NUMPY[dtype])).unbind()
    return SolveResult(
        coeffs=rows[0],
        dual=rows[1],
        clipped=rows[2],
        status=torch.scalar_tensor(int(Status.OPTIMAL), dtype=torch.int64),
        iterations=torch.scalar_tensor(iterations, dtype=torch.int64),
        gap=torch.scalar_tensor(gap, dtype=dtype),
    )


_NUMPY = {torch.float32: np.float32, torch.float64: np.float64}


def _dot(u: list[float], v: list[float]) -> float:
    return sum(map(operator.mul, u, v))


def _finish(
    matvec: Callable[[list[float]], list[float]],
    lengths: list[float],
    w: list[float],
    beta: list[float],
    sigma: float,
    anchor: float,
    p: list[float],
    method: str,
    c: float,
    floor: float,
    zero: float,
) -> tuple[list[float], list[float], list[float], float] | None:
    """Certificate, snap and coefficients of ``p`` by :mod:`._problem`'s rules, or ``None``.

    ``matvec(v)`` = H̄v and ``lengths`` are ‖ḡ_i‖. ``floor`` bounds the squared norms that CAGrad
    uses (relative to their yardstick; Φ and the step are linear in ‖G_p‖, so its round-off
    counts in full); ``zero`` is the dtype's round-off, all that MGDA's squared objective needs.
    Returns the coefficients, the (snapped) dual, the clipped dual and the certified relative
    gap ≤ ``TOL_OPTIMAL``.
    """
    if method == "mgda":
        floor = zero
    size = max(lengths) or 1.0
    hp = matvec(p)
    r_sq = _dot(p, hp)
    if not r_sq > floor * _dot(p, lengths) ** 2:
        return None
    r = math.sqrt(r_sq)
    phi = _dot(beta, p) + sigma * r
    # The Frank–Wolfe bound of _problem.certificate: u = 0 and u = σG_p/‖G_p‖.
    ratio = sigma / r
    psi = max(min(beta), min([b + ratio * x for b, x in zip(beta, hp, strict=True)]))
    gap = max(phi - psi, 0.0)
    gap = gap * (phi + max(psi, 0.0)) / size**2 if method == "mgda" else gap / size

    cut = _problem.SNAP * max(p)
    if any([0.0 < x <= cut for x in p]):
        kept = [0.0 if x <= cut else x for x in p]
        total = sum(kept)
        kept = [x / total for x in kept]
        kept_sq = _dot(kept, matvec(kept))
        if kept_sq > floor * _dot(kept, lengths) ** 2:
            increase = max(_dot(beta, kept) + sigma * math.sqrt(kept_sq) - phi, 0.0) / size
            if increase <= _problem._SNAP_COST:
                if method == "mgda":
                    increase *= 2.0 * phi / size + increase
                p, gap = kept, gap + increase
    if not gap <= _problem.TOL_OPTIMAL:
        return None

    if method == "mgda":
        return p, p, p, gap
    clipped = [min(x, y) for x, y in zip(p, w, strict=True)] if method == "cagrad_clip" else p
    if not any(clipped):
        # supp(p) ∩ supp(w) = ∅: G̃_p = 0 exactly and RACO takes G_0 = g_0, a = w.
        return w, p, clipped, gap
    clipped_sq = _dot(clipped, matvec(clipped))
    if not clipped_sq > floor * _dot(clipped, lengths) ** 2:
        return None
    factor = c * anchor / math.sqrt(clipped_sq)
    return [x + factor * y for x, y in zip(w, clipped, strict=True)], p, clipped, gap


# --- closed form, scalar Python (K ≤ 3) ----------------------------------------------------------


def _edge(
    h: list[list[float]], beta: list[float], sigma: float, i: int, j: int
) -> tuple[float, list[float]]:
    """Φ's minimum and minimiser on the edge λe_i + (1 − λ)e_j (:mod:`._closed_form`'s formula)."""
    hii, hjj, hij = h[i][i], h[j][j], h[i][j]
    bi, bj = beta[i], beta[j]
    q2 = hii + hjj - 2.0 * hij
    if q2 > 0.0:
        lam0 = (hjj - hij) / q2
        m = max((hii * hjj - hij * hij) / q2, 0.0)
        lam, value = 0.0, bj + sigma * math.sqrt(max(q2 * lam0 * lam0 + m, 0.0))
        one = bi + sigma * math.sqrt(max(q2 * (1.0 - lam0) ** 2 + m, 0.0))
        if one < value:
            lam, value = 1.0, one
        kappa = (bj - bi) / sigma
        room = q2 - kappa * kappa
        if room > 0.0:
            x = min(max(lam0 + kappa * math.sqrt(m / (q2 * room)), 0.0), 1.0)
            inner = bj + (bi - bj) * x + sigma * math.sqrt(max(q2 * (x - lam0) ** 2 + m, 0.0))
            if inner < value:
                lam, value = x, inner
    else:
        # g_i = g_j: ‖G_p‖ is constant on the edge and Φ is linear.
        lam = 1.0 if bi < bj else 0.0
        value = bj + (bi - bj) * lam + sigma * math.sqrt(max(hjj, 0.0))
    point = [0.0] * len(beta)
    point[i], point[j] = lam, 1.0 - lam
    return value, point


def _interior(
    h: list[list[float]], beta: list[float], sigma: float
) -> tuple[float, list[float]] | None:
    """The smooth interior KKT point for K = 3 and Φ there (= ν), by the adjugate; or ``None``."""
    (a, b, c), (_, d, e), (_, _, f) = h
    a00, a01, a02 = d * f - e * e, c * e - b * f, b * e - c * d
    a11, a12, a22 = a * f - c * c, b * c - a * e, a * d - b * b
    det = a * a00 + b * a01 + c * a02
    if not det > _MIN_DET:
        return None
    b0, b1, b2 = beta
    inv_one = [(a00 + a01 + a02) / det, (a01 + a11 + a12) / det, (a02 + a12 + a22) / det]
    inv_beta = [
        (a00 * b0 + a01 * b1 + a02 * b2) / det,
        (a01 * b0 + a11 * b1 + a12 * b2) / det,
        (a02 * b0 + a12 * b1 + a22 * b2) / det,
    ]
    big_a, big_b, big_c = sum(inv_one), sum(inv_beta), _dot(beta, inv_beta)
    disc = big_b * big_b - big_a * (big_c - sigma * sigma)
    if not (big_a > 0.0 and disc >= 0.0):
        return None
    nu = (big_b + math.sqrt(disc)) / big_a
    q = [nu * x - y for x, y in zip(inv_one, inv_beta, strict=True)]
    total = sum(q)
    if not total > 0.0 or min(q) < 0.0:
        return None
    return nu, [x / total for x in q]


def _closed_form(
    h: list[list[float]], w: list[float], method: str, c: float, floor: float, zero: float
) -> tuple[list[float], list[float], list[float], float] | None:
    """The closed form on a symmetric, trace-normalised ``h`` (K ≤ 3): coefficients, dual,
    clipped dual and certified gap (:func:`_finish`), or ``None`` for the torch path."""
    k = len(h)
    lengths = [math.sqrt(max(h[i][i], 0.0)) for i in range(k)]

    def matvec(v: list[float]) -> list[float]:
        return [_dot(row, v) for row in h]

    if method == "mgda":
        beta, sigma, anchor = [0.0] * k, 1.0, 0.0
    else:
        hw = matvec(w)
        g0_sq = _dot(w, hw)
        if not g0_sq > floor * _dot(w, lengths) ** 2:
            return None
        anchor = math.sqrt(g0_sq)
        beta, sigma = [x / anchor for x in hw], c
    if k == 1:
        p = [1.0]
    else:
        best, p = _edge(h, beta, sigma, 0, 1)
        candidates = [_edge(h, beta, sigma, 0, 2), _edge(h, beta, sigma, 1, 2)] if k == 3 else []
        if k == 3:
            interior = _interior(h, beta, sigma)
            if interior is not None:
                candidates.append(interior)
        for value, point in candidates:
            if value < best:
                best, p = value, point
    return _finish(matvec, lengths, w, beta, sigma, anchor, p, method, c, floor, zero)


# --- active set, LAPACK (any K) ------------------------------------------------------------------


def _spd_solve(h: np.ndarray, rhs: np.ndarray) -> np.ndarray | None:
    """``h⁻¹ rhs`` by Cholesky (LAPACK dposv); ``None`` if ``h`` is not numerically PD."""
    _, x, info = lapack.dposv(h, rhs)
    return x if info == 0 else None


def _nnqp(h: np.ndarray, b: np.ndarray, budget: int) -> tuple[np.ndarray, np.ndarray, int] | None:
    """argmin_{q≥0} ½qᵀhq − bᵀq for positive definite ``h`` by Lawson–Hanson's active set.

    Returns q, its support (bool mask) and the pivots used, or ``None`` when a solve fails or
    the budget runs out.
    """
    k = b.shape[0]
    q = np.zeros(k)
    support = np.zeros(k, dtype=bool)
    pivots = 0
    abs_h = np.abs(h)
    excluded = np.zeros(k, dtype=bool)
    while True:
        grad = b - h @ q
        # Stop once no inactive gradient is positive beyond the round-off of its own terms.
        slack = 1e-13 * (np.abs(b) + abs_h @ q)
        candidates = np.where(support | excluded, -np.inf, grad - slack)
        j = int(candidates.argmax())
        if not candidates[j] > 0:
            return q, support, pivots
        support[j] = True
        pivots += 1
        entering = True
        while True:
            if pivots > budget:
                return None
            idx = np.flatnonzero(support)
            z = _spd_solve(h[idx][:, idx], b[idx])
            if z is None:
                return None
            if (z > 0).all():
                q = np.zeros(k)
                q[idx] = z
                excluded[:] = False
                break
            current = q[idx]
            blocked = z <= 0
            if entering and blocked[idx == j].any():
                # In exact arithmetic an index with a positive gradient enters with z_j > 0;
                # z_j ≤ 0 is round-off, and letting it leave again would cycle.
                support[j] = False
                excluded[j] = True
                break
            entering = False
            # Longest step from q towards z that keeps q ≥ 0 (current ≥ 0 ≥ z where blocked).
            denom = np.where(blocked, current - z, 1.0)
            ratios = np.where(blocked & (denom > 0), current / np.where(denom > 0, denom, 1.0), 0.0)
            ratios = np.where(blocked, ratios, np.inf)
            step = ratios.min()
            current = current + step * (z - current)
            current[(ratios <= step) | (current <= 0)] = 0.0
            q[idx] = current
            support[idx[current <= 0]] = False
            pivots += 1


def _homotopy(
    h: np.ndarray, beta: np.ndarray, sigma: float, budget: int
) -> tuple[np.ndarray, int] | None:
    """The dual point p of min_{p∈Δ} βᵀp + σ‖G_p‖ by following q(ν) from ν = min β.

    On a piece with support S, q_S(ν) = νv − u with H_SS [v u] = [𝟏 β_S]; the piece ends where
    some q_j reaches 0 (j leaves) or some slack β_i + H_iS q_S − ν of i ∉ S reaches 0 (i enters),
    and the walk stops at the piece's root of s(ν) = σ² (module docstring). This is the
    parametric-LCP homotopy of LARS (Efron et al. 2004) applied to the KKT system of the dual.
    Returns p and the number of pieces walked, or ``None`` (budget, or a failed solve).
    """
    k = beta.shape[0]
    rhs = np.stack([np.ones(k), beta], axis=1)
    first = int(beta.argmin())
    support = [first]
    outside = np.ones(k, dtype=bool)
    outside[first] = False
    nu = float(beta[first])
    moved = first  # the index that last changed sides may not cross back at once (round-off)
    for step in range(1, budget + 1):
        idx = np.array(support)
        vu = _spd_solve(h[idx][:, idx], rhs[idx])
        if vu is None:
            return None
        v, u = vu[:, 0], vu[:, 1]
        a, b, c = float(v.sum()), float(u.sum()), float(beta[idx] @ u)
        disc = b * b - a * (c - sigma * sigma)
        if not (a > 0.0 and disc >= 0.0):
            return None
        root = (b + math.sqrt(disc)) / a
        hvu = h[:, idx] @ vu
        slope = hvu[:, 0] - 1.0  # d(slack_i)/dν
        entering = outside & (slope < 0.0)
        entering[moved] = False
        enter_nu = np.where(entering, (beta - hvu[:, 1]) / np.where(entering, -slope, 1.0), np.inf)
        leaving = v < 0.0
        if support[-1] == moved:
            leaving[-1] = False
        leave_nu = np.where(leaving, u / np.where(leaving, v, 1.0), np.inf)
        j = int(enter_nu.argmin())
        i = int(leave_nu.argmin())
        nu_enter = max(float(enter_nu[j]), nu)
        nu_leave = max(float(leave_nu[i]), nu)
        if root <= min(nu_enter, nu_leave):
            q = np.zeros(k)
            q[idx] = np.maximum(root * v - u, 0.0)
            total = q.sum()
            return (q / total, step) if total > 0.0 else None
        if nu_leave <= nu_enter:
            moved = support.pop(i)
            outside[moved] = True
            nu = nu_leave
        else:
            support.append(j)
            outside[j] = False
            moved = j
            nu = nu_enter
    return None


def _symmetrised(gram: torch.Tensor, validate: bool) -> np.ndarray | None:
    """The Gram in float64 as (H + Hᵀ)/2, or ``None`` if it has a non-finite entry or (with
    ``validate``) fails the dispatcher's symmetry test."""
    raw = gram.detach().to(torch.float64).resolve_neg().numpy()
    if not np.isfinite(raw).all():
        return None
    if validate:
        magnitude = float(np.abs(raw).max())
        if not float(np.abs(raw - raw.T).max()) <= _problem.relative_tol(gram.dtype) * magnitude:
            return None
    return 0.5 * (raw + raw.T)


def _active_set(
    gram: torch.Tensor,
    w: list[float],
    method: str,
    c: float,
    floor: float,
    zero: float,
    validate: bool,
) -> tuple[list[float], list[float], list[float], float, int] | None:
    """The ``iterative`` backend on the host (module docstring): coefficients, dual, clipped
    dual, certified gap and pieces (or pivots) walked, or ``None`` for the torch path.

    It runs in compiled code (:func:`_solve_native`) wherever the CPU kernels of
    ``conflict_opt._native`` run (``CONFLICT_OPT_DISABLE_NATIVE=1`` turns both off), and here
    otherwise.
    """
    k = gram.shape[-1]
    if _use_native(gram.device):
        return _solve_native(gram, w, method, c, False, validate)
    sym = _symmetrised(gram, validate)
    if sym is None:
        return None
    trace = float(np.trace(sym))
    if not trace > 0.0:
        return None
    h = sym * (1.0 / trace)
    chol, info = lapack.dpotrf(h)
    if info != 0:
        return None
    rcond, info = lapack.dpocon(chol, float(np.abs(h).sum(0).max()))
    if info != 0 or not rcond * MAX_CONDITION >= 1.0:
        return None
    wa = np.array(w)
    budget = _PIVOTS_PER_K * k + 20
    if method == "mgda":
        solved = _nnqp(h, np.ones(k), budget)
        if solved is None:
            return None
        q, _, pivots = solved
        p = q / q.sum()
        beta, sigma, anchor = [0.0] * k, 1.0, 0.0
    else:
        hw = h @ wa
        g0_sq = float(wa @ hw)
        if not g0_sq > floor * float(wa @ np.sqrt(np.diag(h))) ** 2:
            return None
        anchor = math.sqrt(g0_sq)
        beta_a = hw / anchor
        found = _homotopy(h, beta_a, c, budget)
        if found is None:
            return None
        p, pivots = found
        beta, sigma = beta_a.tolist(), c
    finished = _finish(
        lambda v: (h @ np.array(v)).tolist(),
        np.sqrt(np.diag(h)).tolist(),
        w,
        beta,
        sigma,
        anchor,
        p.tolist(),
        method,
        c,
        floor,
        zero,
    )
    if finished is None:
        return None
    return (*finished, pivots)


def _thresholds(dtype: torch.dtype, k: int) -> tuple[float, float]:
    """``zero`` and ``floor`` of :func:`_finish` for a Gram of ``dtype``: twice the torch
    path's own round-off level (_problem.vanishes), so that what passes here is not degenerate
    there either, and the trusted-norm floor (module docstring) at least that."""
    zero = 2.0 * _problem._roundoff(dtype, k)
    return zero, max(FLOOR * k, zero)


def _trivial(method: str, c: float) -> bool:
    """Whether the solve is a = w: ``"linear"``, or a CAGrad method with c = 0."""
    return method == "linear" or (method != "mgda" and c == 0.0)


# Method numbers of csrc/host_solve.h.
_NATIVE_METHOD = {"cagrad": 0, "cagrad_clip": 1, "mgda": 2, "linear": 3}


@functools.lru_cache(maxsize=256)
def native_options(
    method: str, closed_form: bool, c: float, dtype: torch.dtype, k: int, validate: bool
) -> tuple:
    """The options tuple of ``conflict_opt._native.solve_host`` and ``step`` (csrc/host_solve.h):
    this module's thresholds for one problem shape, as :func:`solve_host` applies them.
    ``method="linear"`` (or CAGrad with c = 0) is the trivial solve a = w."""
    zero, floor = _thresholds(dtype, k)
    return (
        _NATIVE_METHOD["linear" if _trivial(method, c) else method],
        closed_form,
        c,
        floor,
        zero,
        _problem.relative_tol(dtype) if validate else math.inf,
        _PIVOTS_PER_K * k + 20,
        MAX_CONDITION,
        _problem.SNAP,
        _problem._SNAP_COST,
        _problem.TOL_OPTIMAL,
        _MIN_DET,
        _problem._roundoff(torch.float64, k),
    )


def _solve_native(
    gram: torch.Tensor, w: list[float], method: str, c: float, closed_form: bool, validate: bool
) -> tuple[list[float], list[float], list[float], float, int] | None:
    """The closed form (:func:`_closed_form` with :func:`solve_host`'s checks before it) or the
    active set (:func:`_active_set`: :func:`_homotopy` or :func:`_nnqp`) in C
    (csrc/host_solve.c).

    The same steps in the same order, and the same thresholds (:func:`native_options`). One
    deliberate difference: the active set's 1-norm condition number is computed exactly from
    the inverse, where LAPACK's dpocon estimates it. A K = 4 active set takes a few µs against
    about 0.1 ms in numpy, a K = 3 closed form about 3 µs against 35 µs in scalar Python
    (docs/solvers.md, "Two paths").
    """
    g = gram.detach().to(torch.float64).resolve_neg()
    k = g.shape[0]
    options = native_options(method, closed_form, c, gram.dtype, k, validate)
    return _native.solve_host(g.data_ptr(), k, g.stride(0), g.stride(1), w, options)


# --- entry ---------------------------------------------------------------------------------------


def solve_host(
    gram: torch.Tensor,
    weights: torch.Tensor | Sequence[float] | None,
    method: str,
    c: float,
    backend: str,
    validate: bool,
) -> SolveResult | None:
    """Solve one unbatched CPU problem on the host, or return ``None`` (module docstring).

    ``backend`` is the dispatcher's resolved choice, ``"closed_form"`` or ``"iterative"``; options
    are already validated. ``None`` means: run the torch path, which raises on invalid input.
    """
    if not (
        isinstance(gram, torch.Tensor)
        and gram.ndim == 2
        and gram.device.type == "cpu"
        and gram.dtype in FLOAT_DTYPES
        and 1 <= gram.shape[0] == gram.shape[1] <= MAX_K
    ):
        return None
    k = gram.shape[0]
    w = _weights_list(weights, k)
    if w is None:
        return None
    trivial = _trivial(method, c)
    if backend == "closed_form" and not trivial and _use_native(gram.device):
        solved = _solve_native(gram, w, method, c, True, validate)
        return None if solved is None else _output(gram, *solved)
    zero, floor = _thresholds(gram.dtype, k)
    tol = _problem.relative_tol(gram.dtype)
    if backend == "closed_form" or (trivial and k <= 3):
        g = gram.tolist()
        if not _symmetric(g, tol if validate else math.inf):
            return None
        trace = sum([g[i][i] for i in range(k)])
        if not trace > 0.0:
            return None
        h = [[0.5 * (g[i][j] + g[j][i]) / trace for j in range(k)] for i in range(k)]
        # Numerically PSD in float64, or the certificate's weak duality does not hold: a Gram
        # that round-off left indefinite (accepted by validation for low-precision dtypes) is
        # the torch path's, which solves its PSD projection. This is also within half the
        # dispatcher's validation margin, so whatever is accepted here it accepts too.
        if not _psd_within(h, _problem._roundoff(torch.float64, k)):
            return None
        if trivial:
            return _output(gram, w, w, w, 0.0, 0)
        solved = _closed_form(h, w, method, c, floor, zero)
        if solved is None:
            return None
        return _output(gram, *solved, 0)
    if trivial:
        sym = _symmetrised(gram, validate)
        # With validation the Gram must pass the dispatcher's checks; a Cholesky factor
        # proves it PSD.
        if sym is None or (validate and lapack.dpotrf(sym)[1] != 0):
            return None
        return _output(gram, w, w, w, 0.0, 0)
    solved = _active_set(gram, w, method, c, floor, zero, validate)
    if solved is None:
        return None
    return _output(gram, *solved)
