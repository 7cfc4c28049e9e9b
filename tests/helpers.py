"""Samplers of Gram matrices with controlled rank, conflict and scale (tests and benchmarks).

Every generator takes a ``numpy.random.Generator`` and returns float64 numpy arrays, so the same
problems can be fed to every backend and to peers (TorchJD, scipy SLSQP).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

import conflict_opt

KINDS = ("random", "aligned", "conflict", "duplicated", "opposite")
WEIGHT_KINDS = ("interior", "vertex", "edge", "uniform")


@dataclass(frozen=True)
class Case:
    """One generated problem: gradients ``[K, D]``, their Gram ``[K, K]`` and weights ``[K]``."""

    grads: np.ndarray
    gram: np.ndarray
    weights: np.ndarray
    kind: str
    rank: int
    scale: float
    weight_kind: str

    @property
    def k(self) -> int:
        return self.gram.shape[0]

    def gram_tensor(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        return torch.tensor(self.gram, dtype=dtype)

    def __repr__(self) -> str:
        return (
            f"Case(K={self.k}, kind={self.kind}, rank={self.rank}, scale={self.scale:.0e}, "
            f"weights={self.weight_kind}:{np.round(self.weights, 4).tolist()})"
        )


def gradients(rng: np.random.Generator, k: int, rank: int, kind: str, dim: int = 0) -> np.ndarray:
    """``[K, D]`` gradients whose Gram has rank ≤ ``rank`` (exactly ``rank`` generically)."""
    rank = min(rank, k)
    dim = dim or max(2 * k, 6)
    if rank == 0:
        return np.zeros((k, dim))
    basis = rng.standard_normal((rank, dim))
    if kind == "aligned":
        # A shared direction dominates: all pairwise cosines are positive.
        mix = np.abs(rng.standard_normal((k, rank))) + 0.1
        mix[:, 0] += 3.0
    elif kind == "conflict":
        # Rows centred so that they sum to (nearly) zero: 0 lies in or near the convex hull.
        mix = rng.standard_normal((k, rank))
        mix -= mix.mean(0, keepdims=True) * 0.95
    else:
        mix = rng.standard_normal((k, rank))
    g = mix @ basis
    if kind in ("duplicated", "opposite") and k >= 2:
        i, j = rng.choice(k, size=2, replace=False)
        g[j] = g[i] if kind == "duplicated" else -g[i]
    return g


def weights(rng: np.random.Generator, k: int, kind: str) -> np.ndarray:
    """Simplex weights: a Dirichlet interior point, a vertex, a point of an edge, or uniform."""
    if kind == "vertex":
        w = np.zeros(k)
        w[rng.integers(k)] = 1.0
        return w
    if kind == "edge" and k >= 2:
        w = np.zeros(k)
        i, j = rng.choice(k, size=2, replace=False)
        w[i] = rng.uniform(0.05, 0.95)
        w[j] = 1.0 - w[i]
        return w
    if kind == "uniform":
        return np.full(k, 1.0 / k)
    return rng.dirichlet(np.ones(k))


def case(
    rng: np.random.Generator,
    k: int,
    *,
    rank: int | None = None,
    kind: str = "random",
    scale: float = 1.0,
    weight_kind: str = "interior",
) -> Case:
    """A full problem; ``scale`` multiplies the Gram (gradients by sqrt(scale))."""
    rank = k if rank is None else rank
    g = gradients(rng, k, rank, kind) * np.sqrt(scale)
    return Case(g, g @ g.T, weights(rng, k, weight_kind), kind, min(rank, k), scale, weight_kind)


def phi(case: Case, p: np.ndarray, c: float, method: str) -> float:
    """RACO's dual objective in the caller's units, from the gradients themselves.

    CAGrad methods: Φ(p) = ⟨G_p, g_0⟩ + c‖g_0‖‖G_p‖; MGDA: ‖G_p‖, with G_p = Σ p_i g_i and
    g_0 = Σ w_i g_i. Computing G_p from the gradients (not from the Gram) keeps ‖G_p‖ exact near
    zero-norm points, where sqrt(pᵀHp) resolves only sqrt(eps).
    """
    g_p = p @ case.grads
    if method == "mgda":
        return float(np.linalg.norm(g_p))
    g0 = case.weights @ case.grads
    return float(g_p @ g0 + c * np.linalg.norm(g0) * np.linalg.norm(g_p))


def phi_scale(case: Case, method: str) -> float:
    """The natural size of Φ: ‖g_0‖·max‖g_i‖ (CAGrad) or max‖g_i‖ (MGDA)."""
    gmax = float(np.linalg.norm(case.grads, axis=1).max())
    if method == "mgda":
        return gmax
    return float(np.linalg.norm(case.weights @ case.grads)) * gmax


def relative_phi(case: Case, p: np.ndarray, c: float, method: str) -> float:
    """Φ(p) in the units of the reported gap: Φ / (‖g_0‖·max‖g_i‖) for the CAGrad methods, and
    ‖G_p‖² / max‖g_i‖² for MGDA, whose certificate is on its own squared objective (0 when the
    scale is 0)."""
    scale = phi_scale(case, method)
    if scale == 0:
        return 0.0
    value = phi(case, p, c, method) / scale
    return value**2 if method == "mgda" else value


def row(res: conflict_opt.SolveResult, i: int) -> conflict_opt.SolveResult:
    """Problem ``i`` of a batched :class:`SolveResult`, as an unbatched one."""
    return conflict_opt.SolveResult(*(field[i] for field in res))


def assert_same_direction(
    case: Case, a: np.ndarray, a_ref: np.ndarray, context: object = None
) -> None:
    """The updates d = Σ a_k g_k and d_ref agree: ‖d − d_ref‖ ≤ 1e-6‖d_ref‖ + 1e-9 max‖g_i‖ (the
    absolute term is a 1e-9 error in the coefficients, for directions much shorter than the
    gradients)."""
    d, d_ref = a @ case.grads, a_ref @ case.grads
    gmax = np.linalg.norm(case.grads, axis=1).max()
    assert np.linalg.norm(d - d_ref) <= 1e-6 * np.linalg.norm(d_ref) + 1e-9 * gmax, context
