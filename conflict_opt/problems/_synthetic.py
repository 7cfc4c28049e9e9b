"""Convex synthetic problems with closed-form (or Newton-exact) minimisers of L_w = Σ w_i L_i.

All data are drawn once in the constructor from ``numpy.random.default_rng([seed, stream])``
(a fixed stream per class, so problems of different classes never share draws) and stored as
float64 tensors; :meth:`initial_point` draws from ``default_rng([seed, stream, 1, start])``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ._base import MultiObjectiveProblem, Tensor, check_int, check_real, pareto_criticality

# Fixed stream ids, one per class: the second entry of every seed sequence.
_QUADRATIC_STREAM = 1
_LEAST_SQUARES_STREAM = 2
_LOGISTIC_STREAM = 3
_START_STREAM = 1

# Labels of LogisticRegression: P(y = +1 | x) = σ(_LABEL_SHARPNESS · xᵀu_i).
_LABEL_SHARPNESS = 4.0
_NEWTON_TOL = 1e-12  # ‖∇L_w‖ at the returned minimiser (weights normalised to the simplex)
_NEWTON_FLOOR = 1e-10  # accepted instead when round-off stalls Newton just above the tolerance
_NEWTON_MAX_ITER = 100
_FULL_STEP_DECREMENT = 1e-6  # below this squared Newton decrement, undamped steps
_DIVERGED_NORM = 1e8  # ‖θ‖ beyond which ridge-free Newton has run off to infinity (separable)


def _tensor(array: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64))


def _symmetric(matrices: Tensor) -> Tensor:
    return 0.5 * (matrices + matrices.transpose(-1, -2))


def _unit_vectors(rng: np.random.Generator, count: int, dim: int) -> np.ndarray:
    """``[count, dim]`` independent directions, uniform on the unit sphere."""
    z = rng.standard_normal((count, dim))
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def _haar_orthogonal(rng: np.random.Generator, dim: int) -> np.ndarray:
    """A ``[dim, dim]`` orthogonal matrix drawn from the Haar measure (QR with sign fix)."""
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    return q * np.where(np.diag(r) < 0, -1.0, 1.0)


def _gaussian_start(seed: int, stream: int, start: int, dim: int) -> Tensor:
    start = check_int("seed", start, 0)
    rng = np.random.default_rng([seed, stream, _START_STREAM, start])
    return _tensor(rng.standard_normal(dim))


class ConvexQuadratic(MultiObjectiveProblem):
    r"""K strongly convex quadratics L_i(θ) = ½ (θ − θ_i)ᵀ A_i (θ − θ_i) ≥ 0 on ℝ^dim.

    Each A_i = Q_i diag(a) Q_iᵀ has the same spectrum a_j = condition^{(j−1)/(dim−1)},
    j = 1, …, dim, log-uniformly spaced from 1 to ``condition`` (so κ(A_i) = ``condition``
    exactly; a = (1,) when dim = 1), in its own Haar-random orthogonal eigenbasis Q_i. The
    individual optima are θ_i = conflict·√dim·u_i with u_i independent and uniform on the unit
    sphere, so ‖θ_i‖ = conflict·√dim exactly (all θ_i = 0 when conflict = 0).

    L_w = Σ w_i L_i has Hessian A_w = Σ w_i A_i everywhere, so :meth:`smoothness` returns the
    exact constant λ_max(A_w) and :meth:`minimiser` the closed form A_w⁻¹ Σ w_i A_i θ_i. A point
    is Pareto critical iff 0 ∈ conv{A_i(θ − θ_i)} (Fliege & Svaiter 2000); for convex losses
    that is Pareto optimality. A test problem for the RACO convergence theorems (Chen, Li,
    Chen, Lin, ICML 2026, arXiv 2602.02495).

    Args:
        num_objectives: K ≥ 1.
        dim: the parameter dimension, ≥ 1.
        condition: κ ≥ 1, the condition number of every A_i.
        conflict: ≥ 0, the scale of the optima (‖θ_i‖ = conflict·√dim).
        seed: ≥ 0, seeds every draw; equal seeds give identical problems.

    Attributes:
        hessians: ``[K, dim, dim]`` the matrices A_i.
        optima: ``[K, dim]`` the individual minimisers θ_i.
        eigenvalues: ``[dim]`` the common spectrum a of the A_i, ascending.

    Raises:
        ValueError: an argument is out of range; the message names the value.

    Example:
        >>> import torch
        >>> from conflict_opt.problems import ConvexQuadratic
        >>> problem = ConvexQuadratic(num_objectives=3, dim=5, condition=100.0, seed=1)
        >>> w = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
        >>> theta = problem.minimiser(w)
        >>> float((w @ problem.gradients(theta)).norm()) < 1e-12
        True
        >>> round(problem.smoothness([1.0, 0.0, 0.0]), 6)
        100.0
    """

    name = "quadratic"

    def __init__(
        self,
        num_objectives: int = 2,
        dim: int = 10,
        *,
        condition: float = 10.0,
        conflict: float = 1.0,
        seed: int = 0,
    ) -> None:
        self.num_objectives = check_int("num_objectives", num_objectives, 1)
        self.dim = check_int("dim", dim, 1)
        self.condition = check_real("condition", condition, 1.0)
        self.conflict = check_real("conflict", conflict, 0.0)
        self.seed = check_int("seed", seed, 0)
        k, d = self.num_objectives, self.dim
        rng = np.random.default_rng([self.seed, _QUADRATIC_STREAM])
        spectrum = np.geomspace(1.0, self.condition, d) if d > 1 else np.ones(1)
        bases = np.stack([_haar_orthogonal(rng, d) for _ in range(k)])  # [K, dim, dim]
        optima = self.conflict * np.sqrt(d) * _unit_vectors(rng, k, d)  # [K, dim]
        self.eigenvalues = _tensor(spectrum)  # [dim]
        # A_i = R_iᵀR_i with R_i = diag(√a) Q_iᵀ: the loss ½‖R_i(θ − θ_i)‖² is >= 0 exactly.
        self._roots = _tensor(np.sqrt(spectrum)[None, :, None] * bases.transpose(0, 2, 1))
        self.hessians = _symmetric(self._roots.transpose(-1, -2) @ self._roots)  # [K, dim, dim]
        self.optima = _tensor(optima)  # [K, dim]

    def _params(self) -> dict[str, Any]:
        return {
            **super()._params(),
            "condition": self.condition,
            "conflict": self.conflict,
            "seed": self.seed,
        }

    def losses(self, theta: Tensor) -> Tensor:
        """L_i(θ) = ½‖R_i(θ − θ_i)‖² with A_i = R_iᵀR_i: ``[..., K]``, exactly ≥ 0.

        Example:
            >>> from conflict_opt.problems import ConvexQuadratic
            >>> problem = ConvexQuadratic(num_objectives=2, dim=3)
            >>> problem.losses(problem.optima[1])[1].item()
            0.0
        """
        diff = self._theta(theta)[..., None, :] - self.optima  # [..., K, dim]
        scaled = torch.einsum("kij,...kj->...ki", self._roots, diff)  # [..., K, dim]
        return 0.5 * (scaled * scaled).sum(-1)

    def gradients(self, theta: Tensor) -> Tensor:
        """∇L_i(θ) = A_i(θ − θ_i) as rows: ``[..., K, dim]``.

        Example:
            >>> from conflict_opt.problems import ConvexQuadratic
            >>> problem = ConvexQuadratic(num_objectives=2, dim=3)
            >>> problem.gradients(problem.optima[0])[0].abs().max().item()
            0.0
        """
        diff = self._theta(theta)[..., None, :] - self.optima  # [..., K, dim]
        return torch.einsum("kij,...kj->...ki", self.hessians, diff)

    def smoothness(self, weights: Tensor | Sequence[float]) -> float:
        """λ_max(Σ w_i A_i): the exact Lipschitz constant of ∇L_w (its constant Hessian).

        Example:
            >>> from conflict_opt.problems import ConvexQuadratic
            >>> problem = ConvexQuadratic(num_objectives=2, dim=4, condition=10.0)
            >>> 5.0 <= problem.smoothness([0.5, 0.5]) <= 10.0
            True
        """
        w = self._weights(weights)
        hessian = torch.einsum("k,kij->ij", w, self.hessians)  # [dim, dim]
        return float(torch.linalg.eigvalsh(hessian)[-1])

    def minimiser(self, weights: Tensor | Sequence[float]) -> Tensor:
        """(Σ w_i A_i)⁻¹ Σ w_i A_i θ_i ``[dim]``, the unique minimiser of L_w (Cholesky solve).

        Example:
            >>> import torch
            >>> from conflict_opt.problems import ConvexQuadratic
            >>> problem = ConvexQuadratic(num_objectives=2, dim=3)
            >>> torch.allclose(problem.minimiser([0.0, 1.0]), problem.optima[1])
            True
        """
        w = self._weights(weights)
        w = w / w.sum()
        hessian = torch.einsum("k,kij->ij", w, self.hessians)  # [dim, dim]
        rhs = torch.einsum("k,kij,kj->i", w, self.hessians, self.optima)  # [dim]
        factor = torch.linalg.cholesky(hessian)
        return torch.cholesky_solve(rhs[:, None], factor)[:, 0]

    def initial_point(self, seed: int = 0) -> Tensor:
        """θ₀ ~ N(0, I_dim) ``[dim]``, a deterministic function of (problem seed, ``seed``).

        Example:
            >>> import torch
            >>> from conflict_opt.problems import ConvexQuadratic
            >>> problem = ConvexQuadratic(dim=3)
            >>> torch.equal(problem.initial_point(2), problem.initial_point(2))
            True
        """
        return _gaussian_start(self.seed, _QUADRATIC_STREAM, seed, self.dim)

    def pareto_set_contains(self, theta: Tensor, tol: float = 1e-8) -> bool:
        """Whether θ ``[dim]`` is Pareto optimal up to ``tol``: M(θ) ≤ tol.

        For convex quadratics θ is Pareto optimal iff it is Pareto critical, i.e.
        0 ∈ conv{A_i(θ − θ_i)}, i.e. M(θ) = :func:`pareto_criticality` (θ) = 0.

        Example:
            >>> from conflict_opt.problems import ConvexQuadratic
            >>> problem = ConvexQuadratic(num_objectives=2, dim=3)
            >>> problem.pareto_set_contains(problem.minimiser([0.3, 0.7]))
            True
            >>> problem.pareto_set_contains(problem.initial_point())
            False
        """
        return pareto_criticality(self, theta) <= tol


class LeastSquares(MultiObjectiveProblem):
    r"""K linear regressions L_i(θ) = 1/(2n) ‖X_i θ − y_i‖² ≥ 0, each on its own data set.

    Objective i has n = ``samples`` rows X_i ``[n, dim]`` with i.i.d. N(0, 1) entries, its own
    ground truth θ*_i ~ N(0, I_dim) (so the objectives conflict) and targets
    y_i = X_i θ*_i + noise·ε_i with ε_i ~ N(0, I_n). With S_i = X_iᵀX_i / n, L_w = Σ w_i L_i
    has the constant Hessian S_w = Σ w_i S_i: :meth:`smoothness` returns the exact λ_max(S_w),
    and :meth:`minimiser` solves the normal equations S_w θ = Σ w_i X_iᵀy_i / n. ``samples``
    ≥ ``dim`` makes every S_i positive definite (almost surely), so the minimiser is unique
    for every weight vector. A test problem for the RACO convergence theorems (Chen, Li, Chen,
    Lin, ICML 2026, arXiv 2602.02495).

    Args:
        num_objectives: K ≥ 1.
        dim: the parameter dimension, ≥ 1.
        samples: n ≥ dim, rows per objective.
        noise: ≥ 0, the standard deviation of the target noise.
        seed: ≥ 0, seeds every draw; equal seeds give identical problems.

    Attributes:
        features: ``[K, n, dim]`` the X_i.
        targets: ``[K, n]`` the y_i.
        ground_truth: ``[K, dim]`` the θ*_i.

    Raises:
        ValueError: an argument is out of range; the message names the value.

    Example:
        >>> import torch
        >>> from conflict_opt.problems import LeastSquares
        >>> problem = LeastSquares(num_objectives=2, dim=4, samples=20, noise=0.0)
        >>> theta = problem.minimiser([1.0, 0.0])             # noiseless: recovers θ*_1
        >>> torch.allclose(theta, problem.ground_truth[0])
        True
    """

    name = "least_squares"

    def __init__(
        self,
        num_objectives: int = 2,
        dim: int = 10,
        samples: int = 50,
        *,
        noise: float = 0.1,
        seed: int = 0,
    ) -> None:
        self.num_objectives = check_int("num_objectives", num_objectives, 1)
        self.dim = check_int("dim", dim, 1)
        self.samples = check_int("samples", samples, self.dim)
        self.noise = check_real("noise", noise, 0.0)
        self.seed = check_int("seed", seed, 0)
        k, n, d = self.num_objectives, self.samples, self.dim
        rng = np.random.default_rng([self.seed, _LEAST_SQUARES_STREAM])
        features = rng.standard_normal((k, n, d))
        truth = rng.standard_normal((k, d))
        targets = np.einsum("kni,ki->kn", features, truth) + self.noise * rng.standard_normal(
            (k, n)
        )
        self.features = _tensor(features)  # [K, n, dim]
        self.targets = _tensor(targets)  # [K, n]
        self.ground_truth = _tensor(truth)  # [K, dim]
        self._second = _symmetric(self.features.transpose(-1, -2) @ self.features) / n  # S_i
        self._cross = torch.einsum("kni,kn->ki", self.features, self.targets) / n  # [K, dim]

    def _params(self) -> dict[str, Any]:
        return {
            **super()._params(),
            "samples": self.samples,
            "noise": self.noise,
            "seed": self.seed,
        }

    def _residuals(self, theta: Tensor) -> Tensor:
        """X_i θ − y_i: ``[..., K, n]``."""
        return torch.einsum("kni,...i->...kn", self.features, self._theta(theta)) - self.targets

    def losses(self, theta: Tensor) -> Tensor:
        """L_i(θ) = mean of ½(X_i θ − y_i)²: ``[..., K]``, ≥ 0.

        Example:
            >>> from conflict_opt.problems import LeastSquares
            >>> problem = LeastSquares(num_objectives=2, dim=3, samples=5, noise=0.0)
            >>> problem.losses(problem.ground_truth[0])[0].item()
            0.0
        """
        residuals = self._residuals(theta)  # [..., K, n]
        return 0.5 * (residuals * residuals).mean(-1)

    def gradients(self, theta: Tensor) -> Tensor:
        """∇L_i(θ) = X_iᵀ(X_i θ − y_i) / n as rows: ``[..., K, dim]``.

        Example:
            >>> from conflict_opt.problems import LeastSquares
            >>> problem = LeastSquares(num_objectives=3, dim=2, samples=4)
            >>> tuple(problem.gradients(problem.initial_point()).shape)
            (3, 2)
        """
        residuals = self._residuals(theta)  # [..., K, n]
        return torch.einsum("kni,...kn->...ki", self.features, residuals) / self.samples

    def smoothness(self, weights: Tensor | Sequence[float]) -> float:
        """λ_max(Σ w_i X_iᵀX_i / n): the exact Lipschitz constant of ∇L_w.

        Example:
            >>> from conflict_opt.problems import LeastSquares
            >>> problem = LeastSquares(num_objectives=2, dim=3, samples=30)
            >>> problem.smoothness([0.5, 0.5]) > 0
            True
        """
        w = self._weights(weights)
        return float(torch.linalg.eigvalsh(torch.einsum("k,kij->ij", w, self._second))[-1])

    def minimiser(self, weights: Tensor | Sequence[float]) -> Tensor:
        """The solution ``[dim]`` of S_w θ = Σ w_i X_iᵀy_i / n, with one refinement step.

        Solved by Cholesky; one step of iterative refinement against the gradient computed
        from the residuals brings ‖∇L_w‖ to round-off. Should S_w be singular (impossible for
        Gaussian data with samples ≥ dim, except with probability zero) the minimum-norm
        minimiser is returned.

        Example:
            >>> import torch
            >>> from conflict_opt.problems import LeastSquares
            >>> problem = LeastSquares(num_objectives=2, dim=3, samples=10)
            >>> w = torch.tensor([0.4, 0.6], dtype=torch.float64)
            >>> float((w @ problem.gradients(problem.minimiser(w))).norm()) < 1e-12
            True
        """
        w = self._weights(weights)
        w = w / w.sum()
        hessian = torch.einsum("k,kij->ij", w, self._second)  # [dim, dim]
        rhs = w @ self._cross  # [dim]
        factor, info = torch.linalg.cholesky_ex(hessian)
        if int(info) != 0:
            return torch.linalg.pinv(hessian, hermitian=True) @ rhs
        theta = torch.cholesky_solve(rhs[:, None], factor)[:, 0]
        gradient = w @ self.gradients(theta)  # [dim]
        return theta - torch.cholesky_solve(gradient[:, None], factor)[:, 0]

    def initial_point(self, seed: int = 0) -> Tensor:
        """θ₀ ~ N(0, I_dim) ``[dim]``, a deterministic function of (problem seed, ``seed``).

        Example:
            >>> import torch
            >>> from conflict_opt.problems import LeastSquares
            >>> problem = LeastSquares(dim=3, samples=5)
            >>> torch.equal(problem.initial_point(0), problem.initial_point(1))
            False
        """
        return _gaussian_start(self.seed, _LEAST_SQUARES_STREAM, seed, self.dim)


class LogisticRegression(MultiObjectiveProblem):
    r"""K ridge-regularised logistic regressions, each on its own labelled data set.

        L_i(θ) = (1/n) Σ_j log(1 + exp(−y_ij x_ijᵀθ)) + (ridge/2) ‖θ‖² ≥ 0.

    Objective i has n = ``samples`` rows x_ij ~ N(0, I_dim) and labels y_ij ∈ {−1, +1} with
    P(y_ij = +1) = σ(4·x_ijᵀu_i), where the ground-truth directions u_i are independent and
    uniform on the unit sphere, so the objectives conflict. log(1 + eᶻ) is evaluated as
    ``logaddexp(0, z)`` (no overflow, no cut-off) and its derivative as σ(z).

    The Hessian of L_w = Σ w_i L_i is Σ_i (w_i/n) X_iᵀ D_i X_i + ridge·(Σw)·I with
    D_i = diag(σ(m)σ(−m)) ≼ I/4, so :meth:`smoothness` returns
    λ_max(Σ w_i X_iᵀX_i)/(4n) + ridge·Σ w_i (the ``+ ridge`` of RACO's setting for simplex
    weights). With ridge > 0, L_w is strongly convex and :meth:`minimiser` is its unique
    minimiser, found by damped Newton in float64 to ‖∇L_w‖ ≤ 1e-12 (weights normalised to sum
    to one). A test problem for the RACO convergence theorems (Chen, Li, Chen, Lin, ICML 2026,
    arXiv 2602.02495).

    Args:
        num_objectives: K ≥ 1.
        dim: the parameter dimension, ≥ 1.
        samples: n ≥ 1, rows per objective.
        ridge: ≥ 0, the ℓ2 coefficient (inside every L_i). With ridge = 0 the minimiser of L_w
            exists only if the pooled data of the objectives with w_i > 0 are not linearly
            separable; :meth:`minimiser` returns ``None`` otherwise.
        seed: ≥ 0, seeds every draw; equal seeds give identical problems.

    Attributes:
        features: ``[K, n, dim]`` the rows x_ij.
        labels: ``[K, n]`` the labels y_ij ∈ {−1, +1} (float64).
        directions: ``[K, dim]`` the ground-truth unit directions u_i.

    Raises:
        ValueError: an argument is out of range; the message names the value.

    Example:
        >>> import torch
        >>> from conflict_opt.problems import LogisticRegression
        >>> problem = LogisticRegression(num_objectives=2, dim=3, samples=40, ridge=0.1)
        >>> w = torch.tensor([0.5, 0.5], dtype=torch.float64)
        >>> theta = problem.minimiser(w)
        >>> float((w @ problem.gradients(theta)).norm()) <= 1e-12
        True
    """

    name = "logistic"

    def __init__(
        self,
        num_objectives: int = 2,
        dim: int = 10,
        samples: int = 100,
        *,
        ridge: float = 1e-2,
        seed: int = 0,
    ) -> None:
        self.num_objectives = check_int("num_objectives", num_objectives, 1)
        self.dim = check_int("dim", dim, 1)
        self.samples = check_int("samples", samples, 1)
        self.ridge = check_real("ridge", ridge, 0.0)
        self.seed = check_int("seed", seed, 0)
        k, n, d = self.num_objectives, self.samples, self.dim
        rng = np.random.default_rng([self.seed, _LOGISTIC_STREAM])
        features = rng.standard_normal((k, n, d))
        directions = _unit_vectors(rng, k, d)
        logits = _LABEL_SHARPNESS * np.einsum("kni,ki->kn", features, directions)
        positive = rng.random((k, n)) < 1.0 / (1.0 + np.exp(-logits))
        self.features = _tensor(features)  # [K, n, dim]
        self.labels = _tensor(np.where(positive, 1.0, -1.0))  # [K, n]
        self.directions = _tensor(directions)  # [K, dim]
        # Rows signed by their labels: the margins are y_ij x_ijᵀθ = (signed @ θ)_ij.
        self._signed = self.labels[..., None] * self.features  # [K, n, dim]

    def _params(self) -> dict[str, Any]:
        return {
            **super()._params(),
            "samples": self.samples,
            "ridge": self.ridge,
            "seed": self.seed,
        }

    def losses(self, theta: Tensor) -> Tensor:
        """L_i(θ) = mean_j logaddexp(0, −y_ij x_ijᵀθ) + (ridge/2)‖θ‖²: ``[..., K]``, ≥ 0.

        Example:
            >>> import math
            >>> from conflict_opt.problems import LogisticRegression
            >>> problem = LogisticRegression(num_objectives=2, dim=3, samples=5)
            >>> math.isclose(problem.losses([0.0, 0.0, 0.0])[0].item(), math.log(2))
            True
        """
        theta = self._theta(theta)
        margins = torch.einsum("kni,...i->...kn", self._signed, theta)  # [..., K, n]
        data = torch.logaddexp(torch.zeros_like(margins), -margins).mean(-1)  # [..., K]
        return data + 0.5 * self.ridge * (theta * theta).sum(-1, keepdim=True)

    def gradients(self, theta: Tensor) -> Tensor:
        """∇L_i(θ) = −(1/n) Σ_j σ(−m_ij) y_ij x_ij + ridge·θ, m_ij = y_ij x_ijᵀθ: ``[..., K, dim]``.

        Example:
            >>> from conflict_opt.problems import LogisticRegression
            >>> problem = LogisticRegression(num_objectives=2, dim=3, samples=5)
            >>> tuple(problem.gradients(problem.initial_point()).shape)
            (2, 3)
        """
        theta = self._theta(theta)
        margins = torch.einsum("kni,...i->...kn", self._signed, theta)  # [..., K, n]
        data = -torch.einsum("kni,...kn->...ki", self._signed, torch.sigmoid(-margins))
        return data / self.samples + self.ridge * theta[..., None, :]

    def smoothness(self, weights: Tensor | Sequence[float]) -> float:
        """λ_max(Σ w_i X_iᵀX_i)/(4n) + ridge·Σ w_i, a global bound on the Hessian of L_w.

        Example:
            >>> from conflict_opt.problems import LogisticRegression
            >>> problem = LogisticRegression(num_objectives=2, dim=3, samples=50, ridge=0.5)
            >>> problem.smoothness([0.5, 0.5]) > 0.5
            True
        """
        w = self._weights(weights)
        second = torch.einsum("k,kni,knj->ij", w, self.features, self.features)  # [dim, dim]
        top = float(torch.linalg.eigvalsh(_symmetric(second))[-1])
        return top / (4 * self.samples) + self.ridge * float(w.sum())

    def minimiser(self, weights: Tensor | Sequence[float]) -> Tensor | None:
        """argmin L_w ``[dim]`` by damped Newton from θ = 0 to ‖∇L_w‖ ≤ 1e-12, or ``None``.

        The weights are first normalised to sum to one (the minimiser does not change). Newton
        steps are damped by Armijo backtracking while the squared Newton decrement
        ∇L_wᵀ H⁻¹ ∇L_w exceeds 1e-6, and taken in full inside that region of quadratic
        convergence (where round-off in L_w would defeat the Armijo test). Should round-off
        stall the iteration between 1e-12 and 1e-10 the best iterate is returned.

        ``None`` only when ridge = 0 and the weighted data are linearly separable, which shows
        as a singular Hessian, ‖θ‖ running off to infinity, or a numerically stationary point
        at which every margin is positive (a true minimiser cannot separate all its samples:
        θᵀ∇L_w(θ) = −mean σ(−m)·m would be negative).

        Raises:
            RuntimeError: ridge > 0 and Newton did not converge (not expected).

        Example:
            >>> from conflict_opt.problems import LogisticRegression
            >>> problem = LogisticRegression(num_objectives=2, dim=2, samples=30)
            >>> theta = problem.minimiser([0.0, 1.0])
            >>> float(problem.gradients(theta)[1].norm()) <= 1e-12
            True
        """
        w = self._weights(weights)
        w = w / w.sum()
        theta = torch.zeros(self.dim, dtype=torch.float64)
        value = float(self.weighted_loss(theta, w))
        best, best_norm = theta, float("inf")
        for _ in range(_NEWTON_MAX_ITER):
            gradient = w @ self.gradients(theta)  # [dim]
            grad_norm = float(gradient.norm())
            if grad_norm < best_norm:
                best, best_norm = theta, grad_norm
            if grad_norm <= _NEWTON_TOL:
                break
            margins = self._signed @ theta  # [K, n]
            curvature = torch.sigmoid(margins) * torch.sigmoid(-margins)  # [K, n]
            hessian = torch.einsum("k,kni,kn,knj->ij", w, self._signed, curvature, self._signed)
            hessian = _symmetric(hessian) / self.samples
            hessian = hessian + self.ridge * torch.eye(self.dim, dtype=torch.float64)
            factor, info = torch.linalg.cholesky_ex(hessian)
            if int(info) != 0:
                break  # singular: only possible with ridge = 0
            step = -torch.cholesky_solve(gradient[:, None], factor)[:, 0]
            decrement = -float(gradient @ step)  # Newton decrement², > 0
            size = 1.0
            if decrement > _FULL_STEP_DECREMENT:
                while size > 1e-12:
                    trial = float(self.weighted_loss(theta + size * step, w))
                    if trial <= value - 1e-4 * size * decrement:
                        break
                    size *= 0.5
            theta = theta + size * step
            value = float(self.weighted_loss(theta, w))
            if float(theta.norm()) > _DIVERGED_NORM:
                break
        if best_norm <= _NEWTON_TOL or (best_norm <= _NEWTON_FLOOR and self.ridge > 0):
            if self.ridge == 0 and self._separates(best, w):
                return None
            return best
        if self.ridge == 0:
            return None
        raise RuntimeError(  # pragma: no cover - strongly convex and smooth: Newton converges
            f"Newton's method stalled at ‖∇L_w‖ = {best_norm:.3g} for weights={w.tolist()}."
        )

    def _separates(self, theta: Tensor, w: Tensor) -> bool:
        """Whether every sample of the objectives with w_i > 0 has a positive margin at θ."""
        margins = self._signed[w > 0] @ theta  # [K', n]
        return bool((margins > 0).all())

    def initial_point(self, seed: int = 0) -> Tensor:
        """θ₀ ~ N(0, I_dim) ``[dim]``, a deterministic function of (problem seed, ``seed``).

        Example:
            >>> from conflict_opt.problems import LogisticRegression
            >>> LogisticRegression(dim=4).initial_point().shape
            torch.Size([4])
        """
        return _gaussian_start(self.seed, _LOGISTIC_STREAM, seed, self.dim)
