"""conflict_opt: conflict-averse multi-objective update directions for PyTorch.

Solvers are pure functions of the K×K Gram matrix of the per-objective gradients; see
:func:`solve` and ``docs/solvers.md``. The Gram itself and the combined update Σ a_k g_k are
computed by :func:`gram` and :func:`combine_` (``docs/kernels.md``);
:class:`MultiObjectiveOptimizer` wraps any torch optimizer with the whole step
(``docs/optimizer.md``).
"""

from __future__ import annotations

from ._types import Backend as Backend
from ._types import Method as Method
from ._types import SolverError as SolverError
from ._types import SolveResult as SolveResult
from ._types import Status as Status
from .diagnostics import Diagnostics as Diagnostics
from .diagnostics import diagnostics as diagnostics
from .optimizer import Aggregation as Aggregation
from .optimizer import MultiObjectiveOptimizer as MultiObjectiveOptimizer
from .optimizer import aggregate_ as aggregate_
from .primitives import combine_ as combine_
from .primitives import gram as gram
from .solvers import check as check
from .solvers import solve as solve

__version__ = "0.1.0"

__all__ = [
    "Aggregation",
    "Backend",
    "Diagnostics",
    "Method",
    "MultiObjectiveOptimizer",
    "SolveResult",
    "SolverError",
    "Status",
    "__version__",
    "aggregate_",
    "check",
    "combine_",
    "diagnostics",
    "gram",
    "solve",
]
