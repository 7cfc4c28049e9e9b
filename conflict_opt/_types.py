"""Shared option literals, status codes and the solver result type."""

from __future__ import annotations

import enum
from typing import Literal, NamedTuple

import torch

Method = Literal["cagrad_clip", "cagrad", "mgda", "linear"]
Backend = Literal["auto", "exact", "closed_form", "iterative"]

METHODS: tuple[str, ...] = ("cagrad_clip", "cagrad", "mgda", "linear")
BACKENDS: tuple[str, ...] = ("auto", "exact", "closed_form", "iterative")
# The floating dtypes accepted for Grams, gradients and gradient stores.
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# The options of MultiObjectiveOptimizer kept in its state_dict and compared across ranks
# (conflict_opt._distributed.SETTINGS adds aggregate_'s `accumulate` and the weights).
OPTIMIZER_OPTIONS: tuple[str, ...] = (
    "method",
    "c",
    "backend",
    "primitive_backend",
    "mode",
    "store_dtype",
    "accumulation",
    "check_finite",
)


class Status(enum.IntEnum):
    """Outcome of one solve, stored per problem in :attr:`SolveResult.status`.

    The codes are ordered by severity, so ``status.max()`` over a batch is the worst outcome.

    Attributes:
        OPTIMAL: the certificate (relative gap) is below the tight tolerance (1e-9).
        INACCURATE: the certificate is below the loose tolerance (1e-6) but not the tight one.
        MAX_ITER: the certificate stayed above 1e-6: the iterative solver used its whole budget,
            or the closed form or the reference could not certify its answer.
        DEGENERATE: the problem has no well-defined direction and the documented convention
            was applied (zero Gram matrix, or a vanishing weighted gradient ‖g_0‖ = 0).
        NONFINITE: the Gram matrix had NaN or Inf entries, or (with ``validate=False``) the
            weights made the coefficients or the gap non-finite; coefficients are zero.
    """

    OPTIMAL = 0
    INACCURATE = 1
    MAX_ITER = 2
    DEGENERATE = 3
    NONFINITE = 4


# Unbatched results with more objectives than this print a summary of the coefficients.
_REPR_MAX_K = 8


class SolveResult(NamedTuple):
    """What :func:`conflict_opt.solve` returns; every field stays on the Gram's device.

    Shapes use ``...`` for the batch dimensions of the Gram matrix and ``K`` for objectives.

    Attributes:
        coeffs: ``[..., K]`` coefficients a; the update direction is ``Σ_k a_k g_k``.
        dual: ``[..., K]`` the dual weights p on the simplex (for ``"linear"``: the weights).
        clipped: ``[..., K]`` p̃ = min(p, w) for ``"cagrad_clip"``, else equal to ``dual``.
        status: ``[...]`` int64 codes of :class:`Status`.
        iterations: ``[...]`` int64 iterations used (0 for closed forms and trivial cases).
        gap: ``[...]`` certificate: an upper bound on Φ(p) − Φ* relative to the problem's scale
            (‖g_0‖·max_i ‖g_i‖ for CAGrad duals, max_i ‖g_i‖ for MGDA's min-norm problem).
    """

    coeffs: torch.Tensor
    dual: torch.Tensor
    clipped: torch.Tensor
    status: torch.Tensor
    iterations: torch.Tensor
    gap: torch.Tensor

    def __repr__(self) -> str:
        # The default NamedTuple repr prints six full tensors; a summary is what a user wants
        # at a prompt. Counting statuses reads the tensor, which is fine in an interactive repr.
        shape = tuple(self.coeffs.shape)
        counts = {s.name: int((self.status == s).sum()) for s in Status}
        summary = ", ".join(f"{k}={v}" for k, v in counts.items() if v)
        if self.status.ndim == 0:
            tail = f"status={Status(int(self.status)).name}, gap={float(self.gap):.3g})"
            coeffs = self.coeffs.detach()
            if coeffs.numel() > _REPR_MAX_K:
                # Hundreds of values are unreadable at a prompt: their count and range instead.
                return (
                    f"SolveResult(coeffs=<{coeffs.numel()} values in "
                    f"[{float(coeffs.min()):.4g}, {float(coeffs.max()):.4g}]>, {tail}"
                )
            return (
                f"SolveResult(coeffs={coeffs.tolist()}, dual={self.dual.detach().tolist()}, {tail}"
            )
        if self.gap.numel() == 0:
            return f"SolveResult(shape={shape}, empty batch)"
        return f"SolveResult(shape={shape}, status: {summary}, max gap={float(self.gap.max()):.3g})"


class SolverError(RuntimeError):
    """Raised by ``strict=True`` (and :func:`conflict_opt.check`) when a solve did not succeed."""
