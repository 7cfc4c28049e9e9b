"""Exact reference: the normalised dual as an SOCP solved by cvxpy with CLARABEL (CPU, float64).

min_{p ∈ Δ} βᵀp + ‖(σR)ᵀp‖ with H̄ = RRᵀ (R from an eigendecomposition with round-off negative
eigenvalues clipped to zero). The problem for each K is built once with ``cp.Parameter``s (σ is
folded into R so that the problem stays DPP) and re-solved for every Gram, unlike TorchJD's
CAGrad, which rebuilds its problem at every call. This backend is the test oracle and benchmark
baseline; it is never chosen by ``backend="auto"``.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import numpy as np
import torch

from ._problem import Problem, certificate, polish

# CLARABEL's defaults stop at 1e-8 relative gaps; the reference must be tighter than what the
# tests demand of the fast backends (1e-9 relative on Φ).
_SETTINGS = {
    "tol_gap_abs": 1e-12,
    "tol_gap_rel": 1e-12,
    "tol_feas": 1e-12,
    "tol_ktratio": 1e-10,
    "max_iter": 400,
}

_INSTALL_HINT = "backend='exact' needs cvxpy and clarabel: pip install 'conflict-opt[exact]'"


def _import_cvxpy() -> Any:
    try:
        import cvxpy as cp
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError(_INSTALL_HINT) from err
    if "CLARABEL" not in cp.installed_solvers():  # pragma: no cover - same
        raise ImportError(_INSTALL_HINT)
    return cp


@functools.lru_cache(maxsize=64)
def _parametrised(k: int) -> tuple[Any, Any, Any, Any, Any]:
    cp = _import_cvxpy()
    p = cp.Variable(k)
    s = cp.Variable()
    beta = cp.Parameter(k)
    factor = cp.Parameter((k, k))
    # The cone is explicit so that its dual (λ, y), with u = −y, certifies the answer.
    cone = cp.SOC(s, factor.T @ p)
    problem = cp.Problem(cp.Minimize(beta @ p + s), [cone, p >= 0, cp.sum(p) == 1])
    return problem, p, beta, factor, cone


def solve_exact(
    problem: Problem, *, polish_answer: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Solve every problem; returns ``p [B, K]``, its gap ``[B]`` and a ``[B]`` bool "solver ok".

    ``polish_answer=False`` returns CLARABEL's point as it is (for tests that want a reference
    sharing no code with the other backends)."""
    cp = _import_cvxpy()
    batch, k = problem.beta.shape
    beta = problem.beta.detach().cpu().numpy()
    sigma = problem.sigma.detach().cpu().numpy()
    factor = problem.factor.detach().cpu().numpy()
    out = np.empty((batch, k))
    dual = np.zeros((batch, k))
    ok = np.zeros(batch, dtype=bool)
    cvx_problem, p_var, beta_par, factor_par, cone = _parametrised(k)
    for b in range(batch):
        factor_par.value = sigma[b] * factor[b]
        beta_par.value = beta[b]
        try:
            # cvxpy warns "Solution may be inaccurate" for OPTIMAL_INACCURATE; the status and the
            # certificate computed below say that precisely, per problem.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Solution may be inaccurate")
                cvx_problem.solve(solver=cp.CLARABEL, **_SETTINGS)
        except cp.error.SolverError:
            status = "solver_error"
        else:
            status = cvx_problem.status
        if p_var.value is None or status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE):
            out[b] = 1.0 / k
            continue
        ok[b] = True
        value = np.clip(p_var.value, 0.0, None)
        out[b] = value / value.sum()
        # The dual of (s, σRᵀp) ∈ SOC is (λ, y) with ‖y‖ ≤ λ = 1 and ⟨ḡ_i, u⟩ = −σ(Ry)_i.
        dual[b] = -sigma[b] * np.asarray(cone.dual_value[1]).reshape(-1)
    device = problem.beta.device
    # An interior-point answer sits a little inside the simplex; the face's exact KKT point
    # replaces it wherever that certifies a smaller gap.
    p = torch.from_numpy(out).to(device)
    if polish_answer:
        p, gap = polish(problem, p)
    else:
        gap = certificate(problem, p)
    # Any u in the ball gives a valid bound, so both signs of the solver's dual are tried
    # (a sign convention of cvxpy's cone duals cannot then make the certificate wrong).
    y = torch.from_numpy(dual).to(device)
    gap = torch.minimum(gap, torch.minimum(certificate(problem, p, y), certificate(problem, p, -y)))
    return p, gap, torch.from_numpy(ok).to(device)
