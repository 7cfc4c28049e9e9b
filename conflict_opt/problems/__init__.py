"""Deterministic multi-objective test problems with exact gradients.

Convex problems with a known smoothness constant and exact minimisers of L_w = Σ w_i L_i
(:class:`ConvexQuadratic`, :class:`LeastSquares`, :class:`LogisticRegression`) for checking the
RACO convergence theorems (Chen, Li, Chen, Lin, ICML 2026) with gradient descent at step
η ≤ 1/L, the non-convex toy of CAGrad (:class:`CAGradToy`, Liu et al., NeurIPS 2021), and the
Pareto criticality measure :func:`pareto_criticality`.
"""

from __future__ import annotations

from ._base import MultiObjectiveProblem as MultiObjectiveProblem
from ._base import pareto_criticality as pareto_criticality
from ._synthetic import ConvexQuadratic as ConvexQuadratic
from ._synthetic import LeastSquares as LeastSquares
from ._synthetic import LogisticRegression as LogisticRegression
from ._toy import CAGradToy as CAGradToy

__all__ = [
    "CAGradToy",
    "ConvexQuadratic",
    "LeastSquares",
    "LogisticRegression",
    "MultiObjectiveProblem",
    "pareto_criticality",
]
