"""The two-objective, two-dimensional toy problem of the CAGrad paper (Liu et al., 2021)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ._base import MultiObjectiveProblem, Tensor, check_int

_LOG_FLOOR = 5e-6  # the clamp floor of |·| inside the logarithms (``LOWER`` in the paper's code)
_TOY_STREAM = 4
_X1_RANGE = (-7.0, 7.0)
_NOMINAL_X2 = -8.3552  # the paper's figures: the Pareto set drawn as x2 = -8.3552, |x1| <= 7
_BRACKET = (-10.0, -8.0)  # the Pareto curve's x2 lies in here for every x1 in [-7, 7]
_BISECTIONS = 64  # halves the bracket of width 2 down to below float64 spacing
_CURVE_POINTS = 14_001  # vertices of the polyline used by distance_to_pareto_set (step 1e-3)


class CAGradToy(MultiObjectiveProblem):
    r"""The non-convex 2-task toy of CAGrad (Liu et al., NeurIPS 2021, arXiv 2110.14048).

    With θ = (x1, x2), ``LOWER`` = 5e-6 and c⁺ = max(c, 0), as in the official code
    (github.com/Cranial-XIX/CAGrad, ``toy.py``, class ``Toy``)::

        f1 = log max(|0.5(−x1 − 7) − tanh(−x2)|, LOWER) + 6
        f2 = log max(|0.5(−x1 + 3) + tanh(−x2) + 2|, LOWER) + 6
        q1 = ((−x1 + 7)² + 0.1(−x2 − 8)²)/10 − 20
        q2 = ((−x1 − 7)² + 0.1(−x2 − 8)²)/10 − 20
        L_i = f_i · tanh(x2/2)⁺ + q_i · tanh(−x2/2)⁺,   i = 1, 2.

    For x2 > 0 only the log-valleys f_i count, for x2 < 0 only the shifted quadratics q_i. The
    losses **can be negative**: the constant offset −20 of q_i puts them near −20 around the
    Pareto set, and the log floor log(5e-6) + 6 ≈ −6.2 lies below zero too. The problem is
    **non-convex**, with kinks where a clamp switches (x2 = 0, and |inner| = LOWER in the
    valleys). Values equal the official definition evaluated in float64 (its plots use
    ``.double()``; its training loop runs in float32). Gradients are analytic and follow autograd's
    convention at the clamps: ``clamp(z, min=m)`` passes the gradient where z ≥ m, and
    d|z|/dz = sign(z) (0 at 0), so both tanh gates are differentiated at x2 = 0.

    Pareto set. For x2 < 0, ∇L_i ∝ x1 ∓ 7 in x1, so a Pareto-critical point has x1 ∈ [−7, 7]
    with λ = (x1 + 7)/14 on L_1, and x2 solves the x2-component of λ∇L_1 + (1 − λ)∇L_2 = 0:

        tanh(−x2/2)·0.02(x2 + 8) − ½ sech²(x2/2)·((49 − x1²)/10 + 0.01(x2 + 8)² − 20) = 0,

    whose single root lies in (−10, −8): x2 = −8.35511 at x1 = 0, falling to −8.43446 at
    x1 = ±7. Each such point is the global minimiser of L_w for w = (λ, 1 − λ) (every point
    with x2 ≥ 0 has L_w ≥ −6.21 Σw, while the curve has L_w ≤ −15 Σw), hence Pareto optimal,
    and no other point is Pareto critical in x2 < 0. :meth:`pareto_curve` solves for x2 by
    bisection; the paper's figures draw the flat segment x2 = −8.3552 (:meth:`pareto_segment`),
    on which M(θ) = :func:`pareto_criticality` (θ) is small (≤ 2.4e-3) but not zero.

    There is no global smoothness constant (:meth:`smoothness` raises); the paper runs the toy
    with Adam (lr 1e-3) from :attr:`STARTS`, not with the step η ≤ 1/L of the RACO theorems.

    Attributes:
        STARTS: the paper's three starting points (−8.5, 7.5), (−8.5, −5), (9, 9).

    Example:
        >>> from conflict_opt.problems import CAGradToy, pareto_criticality
        >>> toy = CAGradToy()
        >>> [round(v, 4) for v in toy.losses(toy.initial_point(1)).tolist()]
        [4.0599, -19.4215]
        >>> pareto_criticality(toy, toy.minimiser([0.5, 0.5])) < 1e-12
        True
    """

    name = "cagrad_toy"
    STARTS: tuple[tuple[float, float], ...] = ((-8.5, 7.5), (-8.5, -5.0), (9.0, 9.0))

    def __init__(self) -> None:
        self.num_objectives = 2
        self.dim = 2

    def _params(self) -> dict[str, Any]:
        return {}

    def _pieces(self, theta: Tensor) -> tuple[Tensor, ...]:
        """The building blocks, each ``[...]``: x1, x2, inner1, inner2, f1, f2, q1, q2."""
        x1, x2 = theta[..., 0], theta[..., 1]
        inner1 = 0.5 * (-x1 - 7) - torch.tanh(-x2)
        inner2 = 0.5 * (-x1 + 3) + torch.tanh(-x2) + 2
        f1 = inner1.abs().clamp_min(_LOG_FLOOR).log() + 6
        f2 = inner2.abs().clamp_min(_LOG_FLOOR).log() + 6
        bowl = 0.1 * (-x2 - 8) ** 2
        q1 = ((-x1 + 7) ** 2 + bowl) / 10 - 20
        q2 = ((-x1 - 7) ** 2 + bowl) / 10 - 20
        return x1, x2, inner1, inner2, f1, f2, q1, q2

    def losses(self, theta: Tensor) -> Tensor:
        """(L_1(θ), L_2(θ)) ``[..., 2]``; negative over most of the plane (see the class).

        Example:
            >>> from conflict_opt.problems import CAGradToy
            >>> CAGradToy().losses([3.0, 0.0]).tolist()     # both gates are closed at x2 = 0
            [0.0, 0.0]
        """
        _, x2, _, _, f1, f2, q1, q2 = self._pieces(self._theta(theta))
        upper = torch.tanh(x2 * 0.5).clamp_min(0.0)  # gate of the log valleys, x2 > 0
        lower = torch.tanh(-x2 * 0.5).clamp_min(0.0)  # gate of the quadratics, x2 < 0
        return torch.stack([f1 * upper + q1 * lower, f2 * upper + q2 * lower], dim=-1)

    def gradients(self, theta: Tensor) -> Tensor:
        """(∇L_1(θ), ∇L_2(θ)) as rows ``[..., 2, 2]``, analytic, autograd's clamp convention.

        Example:
            >>> from conflict_opt.problems import CAGradToy
            >>> toy = CAGradToy()
            >>> [round(v, 6) for v in toy.gradients(toy.initial_point(1))[0].tolist()]
            [-3.058504, 0.004483]
        """
        x1, x2, inner1, inner2, f1, f2, q1, q2 = self._pieces(self._theta(theta).detach())
        t = torch.tanh(-x2)
        sech2 = 1 - t * t  # d tanh(−x2)/dx2 = −sech²(x2)
        # d f_i / d inner_i = 1/inner_i where the clamp passes the gradient, else 0.
        df1 = torch.where(inner1.abs() >= _LOG_FLOOR, 1 / inner1, 0.0)
        df2 = torch.where(inner2.abs() >= _LOG_FLOOR, 1 / inner2, 0.0)
        a = torch.tanh(x2 * 0.5)
        b = torch.tanh(-x2 * 0.5)
        upper, lower = a.clamp_min(0.0), b.clamp_min(0.0)
        d_upper = torch.where(a >= 0, 0.5 * (1 - a * a), 0.0)  # d/dx2 tanh(x2/2)⁺
        d_lower = torch.where(b >= 0, -0.5 * (1 - b * b), 0.0)  # d/dx2 tanh(−x2/2)⁺
        d_bowl = 0.02 * (x2 + 8)  # d q_i / d x2
        g11 = upper * df1 * -0.5 + lower * (x1 - 7) / 5
        g12 = upper * df1 * sech2 + f1 * d_upper + lower * d_bowl + q1 * d_lower
        g21 = upper * df2 * -0.5 + lower * (x1 + 7) / 5
        g22 = -upper * df2 * sech2 + f2 * d_upper + lower * d_bowl + q2 * d_lower
        return torch.stack([torch.stack([g11, g12], -1), torch.stack([g21, g22], -1)], dim=-2)

    def smoothness(self, weights: Tensor | Sequence[float]) -> float:
        """Not available: ∇L_w is discontinuous at the clamps, so no global L exists.

        Raises:
            NotImplementedError: always (after checking ``weights``).

        Example:
            >>> from conflict_opt.problems import CAGradToy
            >>> CAGradToy().smoothness([0.5, 0.5])
            Traceback (most recent call last):
                ...
            NotImplementedError: CAGradToy has no global smoothness constant: ...
        """
        self._weights(weights)
        raise NotImplementedError(
            "CAGradToy has no global smoothness constant: the clamps make ∇L_w discontinuous "
            "(at x2 = 0 and at the floor of the log valleys, where the curvature reaches "
            f"1/{_LOG_FLOOR}² = {_LOG_FLOOR**-2:.0e}). Run it with Adam, as the CAGrad paper does."
        )

    def minimiser(self, weights: Tensor | Sequence[float]) -> Tensor:
        """The global minimiser of L_w ``[2]``: (x1, x2) = (7(w1 − w2)/(w1 + w2), x2*(x1)).

        x2*(x1) is :meth:`pareto_curve`; see the class docstring for why it is global.

        Example:
            >>> from conflict_opt.problems import CAGradToy
            >>> [round(v, 4) for v in CAGradToy().minimiser([0.5, 0.5]).tolist()]
            [0.0, -8.3551]
        """
        w = self._weights(weights)
        x1 = 7 * (w[0] - w[1]) / w.sum()
        return torch.stack([x1, self.pareto_curve(x1)])

    def initial_point(self, seed: int = 0) -> Tensor:
        """``STARTS[seed]`` for seed 0, 1, 2; for seed ≥ 3 a uniform point of [−10, 10]².

        Example:
            >>> from conflict_opt.problems import CAGradToy
            >>> CAGradToy().initial_point(2).tolist()
            [9.0, 9.0]
        """
        seed = check_int("seed", seed, 0)
        if seed < len(self.STARTS):
            return torch.tensor(self.STARTS[seed], dtype=torch.float64)
        rng = np.random.default_rng([0, _TOY_STREAM, 1, seed])
        return torch.from_numpy(rng.uniform(-10.0, 10.0, size=2))

    @staticmethod
    def pareto_segment() -> tuple[tuple[float, float], float]:
        """The Pareto set as the paper draws it: ((x1_min, x1_max), x2) = ((−7, 7), −8.3552).

        The exact set lies slightly below this segment (x2 = −8.35511 at x1 = 0, −8.43446 at
        x1 = ±7); use :meth:`pareto_curve` for the exact x2.

        Example:
            >>> from conflict_opt.problems import CAGradToy
            >>> CAGradToy.pareto_segment()
            ((-7.0, 7.0), -8.3552)
        """
        return _X1_RANGE, _NOMINAL_X2

    def pareto_curve(self, x1: Tensor | float) -> Tensor:
        """The exact Pareto set: x2 of the Pareto-optimal point above each x1 ∈ [−7, 7].

        Solves the x2-equation of the class docstring by bisection on (−10, −8) to float64
        resolution. Works elementwise on a tensor of any shape.

        Raises:
            ValueError: some x1 lies outside [−7, 7] (there is no Pareto point there).

        Example:
            >>> from conflict_opt.problems import CAGradToy
            >>> [round(v, 4) for v in CAGradToy().pareto_curve(torch.tensor([0.0, 7.0])).tolist()]
            [-8.3551, -8.4345]
        """
        x1 = torch.as_tensor(x1, dtype=torch.float64).detach()
        if not bool(((x1 >= _X1_RANGE[0]) & (x1 <= _X1_RANGE[1])).all()):
            raise ValueError(f"`x1` must lie in [-7, 7], got x1={x1.tolist()}.")
        lam = (x1 + 7) / 14  # the weight of L_1 in the vanishing combination
        low = torch.full_like(x1, _BRACKET[0])  # residual < 0 here
        high = torch.full_like(x1, _BRACKET[1])  # residual > 0 here
        for _ in range(_BISECTIONS):
            mid = 0.5 * (low + high)
            grads = self.gradients(torch.stack([x1, mid], dim=-1))  # [..., 2, 2]
            residual = lam * grads[..., 0, 1] + (1 - lam) * grads[..., 1, 1]
            negative = residual < 0
            low = torch.where(negative, mid, low)
            high = torch.where(negative, high, mid)
        return 0.5 * (low + high)

    def distance_to_pareto_set(self, theta: Tensor) -> float:
        """Euclidean distance from θ ``[2]`` to the exact Pareto set {(x1, x2*(x1)) : |x1| ≤ 7}.

        Measured to a polyline through 14001 points of the curve, within 1e-9 of the exact
        distance (the curve's curvature stays below 0.01, so a chord of length 1e-3 sags
        by less than 1e-9).

        Example:
            >>> from conflict_opt.problems import CAGradToy
            >>> toy = CAGradToy()
            >>> toy.distance_to_pareto_set(toy.minimiser([0.3, 0.7])) < 1e-9
            True
            >>> round(toy.distance_to_pareto_set([0.0, 0.0]), 4)
            8.3551
        """
        point = self._theta(theta).detach()
        if point.shape != (2,):
            raise ValueError(f"`theta` must have shape [2], got shape={tuple(point.shape)}.")
        curve = _curve_polyline()  # [N, 2]
        start, edge = curve[:-1], curve[1:] - curve[:-1]  # [N-1, 2]
        t = (((point - start) * edge).sum(-1) / (edge * edge).sum(-1)).clamp(0.0, 1.0)
        return float((start + t[:, None] * edge - point).norm(dim=-1).min())


@functools.cache
def _curve_polyline() -> Tensor:
    """Vertices ``[N, 2]`` of the Pareto curve at evenly spaced x1 (computed once; read only)."""
    x1 = torch.linspace(*_X1_RANGE, _CURVE_POINTS, dtype=torch.float64)
    return torch.stack([x1, CAGradToy().pareto_curve(x1)], dim=-1)
