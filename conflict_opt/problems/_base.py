"""The problem interface, argument checks shared by the problems, and Pareto criticality."""

from __future__ import annotations

import abc
import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch

from .._types import Status
from ..solvers import check, solve

Tensor = torch.Tensor


def check_int(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int, or ValueError naming it unless it is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {name}={value!r}.")
    if value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {name}={value}.")
    return int(value)


def check_real(name: str, value: Any, minimum: float) -> float:
    """``value`` as a float, or ValueError naming it unless it is a finite real >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"`{name}` must be a real number >= {minimum}, got {name}={value!r}.")
    if not math.isfinite(value) or value < minimum:
        raise ValueError(f"`{name}` must be a finite number >= {minimum}, got {name}={value}.")
    return float(value)


class MultiObjectiveProblem(abc.ABC):
    r"""K losses L_1, …, L_K: ℝ^dim → ℝ with exact analytic gradients, in float64.

    A problem of minimising the vector (L_1(θ), …, L_K(θ)) that the RACO convergence theorems
    (Chen, Li, Chen, Lin, "Reward-free Alignment for Conflicting Objectives", ICML 2026,
    arXiv 2602.02495) can be checked on: deterministic gradient descent with step
    η ≤ 1/L on the weighted loss L_w(θ) = Σ_i w_i L_i(θ), where L = :meth:`smoothness` (w).

    Every method accepts θ with leading batch dimensions ``[..., dim]``; the problem data live
    on the CPU. Subclasses set :attr:`name`, :attr:`num_objectives` and :attr:`dim`.

    Attributes:
        name: short identifier, e.g. ``"quadratic"``.
        num_objectives: K, the number of losses.
        dim: the parameter dimension.

    Example:
        >>> import torch
        >>> from conflict_opt.problems import ConvexQuadratic
        >>> problem = ConvexQuadratic(num_objectives=2, dim=3)
        >>> theta = problem.initial_point()
        >>> problem.losses(theta).shape, problem.gradients(theta).shape
        (torch.Size([2]), torch.Size([2, 3]))
        >>> w = torch.tensor([0.5, 0.5], dtype=torch.float64)
        >>> bool(problem.weighted_loss(theta, w) == problem.losses(theta).mean())
        True
    """

    name: str
    num_objectives: int
    dim: int

    @abc.abstractmethod
    def losses(self, theta: Tensor) -> Tensor:
        """The losses (L_1(θ), …, L_K(θ)): ``[..., K]`` float64 for θ ``[..., dim]``."""

    @abc.abstractmethod
    def gradients(self, theta: Tensor) -> Tensor:
        """The exact gradients ∇L_i(θ) as rows: ``[..., K, dim]`` float64 (no autograd)."""

    @abc.abstractmethod
    def smoothness(self, weights: Tensor | Sequence[float]) -> float:
        """An upper bound on the Lipschitz constant of ∇L_w, L_w = Σ_i w_i L_i."""

    @abc.abstractmethod
    def minimiser(self, weights: Tensor | Sequence[float]) -> Tensor | None:
        """argmin_θ L_w(θ) ``[dim]`` where it exists, else ``None``."""

    @abc.abstractmethod
    def initial_point(self, seed: int = 0) -> Tensor:
        """A deterministic starting point ``[dim]`` (a function of ``seed`` and the problem)."""

    def weighted_loss(self, theta: Tensor, weights: Tensor | Sequence[float]) -> Tensor:
        """L_w(θ) = Σ_i w_i L_i(θ): a scalar (``[...]`` for a batch of θ).

        Args:
            theta: ``[..., dim]`` parameters.
            weights: ``[K]`` nonnegative weights, not all zero (need not sum to one).

        Returns:
            The weighted loss, float64, differentiable by autograd through :meth:`losses`.

        Example:
            >>> from conflict_opt.problems import LeastSquares
            >>> problem = LeastSquares(num_objectives=2, dim=3, samples=8)
            >>> theta = problem.initial_point()
            >>> value = problem.weighted_loss(theta, [1.0, 0.0])
            >>> bool(value == problem.losses(theta)[0])
            True
        """
        return self.losses(theta) @ self._weights(weights)

    def _params(self) -> dict[str, Any]:
        """Constructor arguments shown by ``repr`` (subclasses extend)."""
        return {"num_objectives": self.num_objectives, "dim": self.dim}

    def __repr__(self) -> str:
        args = ", ".join(f"{key}={value!r}" for key, value in self._params().items())
        return f"{type(self).__name__}({args})"

    # --- shared input handling -------------------------------------------------------------

    def _theta(self, theta: Tensor | Sequence[float]) -> Tensor:
        """θ as float64 ``[..., dim]``, keeping any autograd graph; ValueError on a bad shape."""
        if isinstance(theta, Tensor):
            t = theta.to(torch.float64)  # differentiable: an autograd graph survives the cast
        else:
            t = torch.as_tensor(theta, dtype=torch.float64)
        if t.ndim == 0 or t.shape[-1] != self.dim:
            raise ValueError(
                f"`theta` must have shape [..., dim] with dim={self.dim}, "
                f"got shape={tuple(t.shape)}."
            )
        return t

    def _weights(self, weights: Tensor | Sequence[float]) -> Tensor:
        """Weights as float64 ``[K]``; ValueError unless finite, nonnegative and not all zero."""
        w = torch.as_tensor(weights, dtype=torch.float64).detach()
        if w.shape != (self.num_objectives,):
            raise ValueError(
                f"`weights` must have shape [K] with K={self.num_objectives}, "
                f"got shape={tuple(w.shape)}."
            )
        if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ValueError(
                f"`weights` must be finite, nonnegative and not all zero, got weights={w.tolist()}."
            )
        return w


def pareto_criticality(problem: MultiObjectiveProblem, theta: Tensor) -> float:
    r"""Pareto criticality M(θ) = min_{λ∈Δ_K} ‖Σ_i λ_i ∇L_i(θ)‖ of one point θ.

    M(θ) = 0 exactly at the Pareto-critical (Pareto-stationary) points of Fliege & Svaiter
    (Math. Methods Oper. Res., 2000), the first-order condition of Pareto optimality; it is the
    norm of MGDA's common descent direction (Désidéri 2012). The min-norm weights λ* come from
    ``conflict_opt.solve(G @ G.T, method="mgda")`` with the exact gradients ``G [K, dim]``, and
    the norm is taken of λ*ᵀG itself, not through the Gram matrix, so a vanishing combination
    gives M at round-off level (about 1e-16 ‖G‖).

    Args:
        problem: the problem.
        theta: ``[dim]`` one point.

    Returns:
        M(θ) ≥ 0 as a float; NaN when a gradient is not finite.

    Raises:
        ValueError: ``theta`` is not a single point of the problem's dimension.
        conflict_opt.SolverError: the MGDA solve did not certify its answer (not expected for
            K ≤ 3, whose closed form is exact).

    Example:
        >>> from conflict_opt.problems import ConvexQuadratic, pareto_criticality
        >>> problem = ConvexQuadratic(num_objectives=2, dim=4)
        >>> pareto_criticality(problem, problem.optima[0]) == 0.0   # ∇L_1 = 0 at θ_1
        True
        >>> pareto_criticality(problem, problem.initial_point()) > 0
        True
    """
    point = problem._theta(theta).detach()
    if point.ndim != 1:
        raise ValueError(
            f"`theta` must be a single point of shape [{problem.dim}], "
            f"got shape={tuple(point.shape)}."
        )
    grads = problem.gradients(point)  # [K, dim]
    if not bool(torch.isfinite(grads).all()):
        return math.nan
    result = solve(grads @ grads.T, method="mgda")
    if int(result.status) != Status.DEGENERATE:  # degenerate: zero Gram, every λ gives M = 0
        check(result)
    return float(torch.linalg.vector_norm(result.coeffs @ grads))
