"""Per-step diagnostics of an update direction, computed from the Gram matrix alone."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch


class Diagnostics(NamedTuple):
    """Geometry of the update d = Σ_k a_k g_k; shapes ``[..., K]`` or ``[...]``, on device.

    Attributes:
        directional: ``[..., K]`` ⟨g_i, d⟩ = (H a)_i: first-order change of −L_i per unit step.
        cosines: ``[..., K]`` cos(g_i, d); 0 where g_i or d is zero.
        relative_norm: ``[...]`` ‖d‖ / ‖g_0‖ with g_0 = Σ w_i g_i; at most 1 + c for the CAGrad
            methods, inf where g_0 = 0 ≠ d, NaN where both vanish.
        conflict: ``[...]`` bool, some objective has ⟨g_i, d⟩ < 0 (d increases L_i).
        clipping_active: ``[...]`` bool, some p_i > w_i: RACO's clip p̃ = min(p, w) changes
            this dual (for a CAGrad-Clip solve, it did; for another method's dual, it would).
            ``None`` when no dual was given.
    """

    directional: torch.Tensor
    cosines: torch.Tensor
    relative_norm: torch.Tensor
    conflict: torch.Tensor
    clipping_active: torch.Tensor | None


def diagnostics(
    gram: torch.Tensor,
    weights: torch.Tensor | Sequence[float] | None,
    coeffs: torch.Tensor,
    *,
    dual: torch.Tensor | None = None,
) -> Diagnostics:
    """Directional derivatives, cosines and step size of d = Σ a_k g_k from H_ij = ⟨g_i, g_j⟩.

    No gradient is needed: ⟨g_i, d⟩ = (Ha)_i, ‖d‖² = aᵀHa, ‖g_0‖² = wᵀHw. Everything stays on
    the Gram's device (no host synchronisation), computed in float64.

    Args:
        gram: ``[..., K, K]`` Gram matrix.
        weights: ``[K]`` or ``[..., K]`` simplex weights (default uniform), for g_0.
        coeffs: ``[..., K]`` coefficients a, e.g. ``solve(...).coeffs``.
        dual: optional ``[..., K]`` dual weights p (``solve(...).dual``) to report whether
            RACO's clip p̃ = min(p, w) was active.

    Returns:
        :class:`Diagnostics`.

    Example:
        >>> import torch, conflict_opt
        >>> g = torch.tensor([[1.0, 0.0], [-0.9, 0.3]])
        >>> h = g @ g.T
        >>> res = conflict_opt.solve(h, [0.8, 0.2], c=0.4)
        >>> diag = conflict_opt.diagnostics(h, [0.8, 0.2], res.coeffs, dual=res.dual)
        >>> bool(diag.relative_norm <= 1.4 + 1e-6), bool(diag.clipping_active)
        (True, True)
    """
    h = gram.to(torch.float64)
    k = h.shape[-1]
    a = coeffs.to(device=h.device, dtype=torch.float64)
    if weights is None:
        w = torch.full((k,), 1.0 / k, dtype=torch.float64, device=h.device)
    else:
        w = torch.as_tensor(weights, dtype=torch.float64, device=h.device)
    if a.shape[-1] != k or w.shape[-1] != k:
        raise ValueError(
            f"`coeffs` and `weights` must end in K={k}, got coeffs shape={tuple(a.shape)}, "
            f"weights shape={tuple(w.shape)}."
        )
    directional = torch.einsum("...ij,...j->...i", h, a)
    d_norm = (a * directional).sum(-1).clamp_min(0.0).sqrt()
    g_norm = h.diagonal(dim1=-2, dim2=-1).clamp_min(0.0).sqrt()
    denom = g_norm * d_norm[..., None]
    cosines = torch.where(denom > 0, directional / torch.where(denom > 0, denom, 1.0), 0.0)
    g0 = torch.einsum("...i,...ij,...j->...", w, h, w).clamp_min(0.0).sqrt()
    relative_norm = d_norm / g0
    clipping = None
    if dual is not None:
        p = dual.to(device=h.device, dtype=torch.float64)
        clipping = (p > w + 1e-12).any(-1)
    return Diagnostics(directional, cosines, relative_norm, (directional < 0).any(-1), clipping)
