"""The solver dispatcher: ``solve(gram, weights, method=, backend=)`` and ``check(result)``."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch

from .._types import (
    BACKENDS,
    FLOAT_DTYPES,
    METHODS,
    Backend,
    Method,
    SolverError,
    SolveResult,
    Status,
)
from . import _problem
from ._closed_form import solve_closed_form
from ._host import solve_host
from ._iterative import solve_iterative

__all__ = ["check", "solve"]


def _validate_options(method: str, backend: str, c: float, strict: bool) -> None:
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got method={method!r}.")
    if backend not in BACKENDS:
        raise ValueError(f"`backend` must be one of {BACKENDS}, got backend={backend!r}.")
    # numbers.Real takes Python and numpy real scalars (np.float32 is no float subclass); a bool
    # is an int to Python but never a radius.
    if isinstance(c, bool) or not isinstance(c, numbers.Real):
        raise ValueError(f"`c` must be a real number in [0, 1), got c={c!r}.")
    if not 0.0 <= float(c) < 1.0:
        raise ValueError(f"`c` must be in [0, 1), got c={c}.")
    if not isinstance(strict, bool):
        raise ValueError(f"`strict` must be a bool, got strict={strict!r}.")


def _validate_gram(gram: torch.Tensor, validate: bool) -> None:
    if not isinstance(gram, torch.Tensor):
        raise ValueError(f"`gram` must be a torch.Tensor, got {type(gram).__name__}.")
    if gram.dtype not in FLOAT_DTYPES:
        raise ValueError(f"`gram` must have a floating dtype, got dtype={gram.dtype}.")
    if gram.ndim < 2 or gram.shape[-1] != gram.shape[-2]:
        raise ValueError(f"`gram` must have shape [..., K, K], got shape={tuple(gram.shape)}.")
    if gram.shape[-1] == 0:
        raise ValueError("`gram` must describe at least one objective, got K=0.")
    if not validate or gram.numel() == 0:
        return
    h = gram.detach().to(torch.float64).reshape(-1, gram.shape[-1], gram.shape[-1])
    finite = torch.isfinite(h).flatten(-2).all(-1)
    index = finite.nonzero()[:, 0]  # each finite problem's place in the flattened batch
    h = h[finite]
    if h.shape[0] == 0:
        return
    tol = _problem.relative_tol(gram.dtype)
    magnitude = h.abs().flatten(-2).max(-1).values
    asym = (h - h.transpose(-1, -2)).abs().flatten(-2).max(-1).values
    bad = asym > tol * magnitude
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(
            "`gram` must be symmetric: max |H - H^T| = "
            f"{float(asym[i]):.3g} against max |H| = {float(magnitude[i]):.3g} "
            f"(problem {int(index[i])} of the flattened batch)."
        )
    trace = h.diagonal(dim1=-2, dim2=-1).sum(-1)
    lowest = torch.linalg.eigvalsh(0.5 * (h + h.transpose(-1, -2)))[:, 0]
    bad = lowest < -tol * trace.clamp_min(0.0) - (trace <= 0) * tol * magnitude
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(
            "`gram` must be positive semidefinite (a Gram matrix): smallest eigenvalue "
            f"{float(lowest[i]):.3g} against trace {float(trace[i]):.3g} "
            f"(problem {int(index[i])} of the flattened batch)."
        )


def _weights(
    weights: torch.Tensor | Sequence[float] | None,
    gram: torch.Tensor,
    validate: bool,
) -> torch.Tensor:
    """Weights as float64 on the Gram's device, broadcast to ``[..., K]`` and renormalised."""
    k = gram.shape[-1]
    batch = gram.shape[:-2]
    if weights is None:
        return torch.full((*batch, k), 1.0 / k, dtype=torch.float64, device=gram.device)
    try:
        w = torch.as_tensor(weights, dtype=torch.float64, device=gram.device)
    except (TypeError, ValueError, RuntimeError) as err:
        # torch's own message ("new(): invalid data type 'str'") names neither the argument
        # nor the value.
        raise ValueError(
            f"`weights` must be a tensor or a sequence of real numbers, got weights={weights!r}."
        ) from err
    if w.ndim == 0 or w.shape[-1] != k:
        raise ValueError(
            f"`weights` must have shape [K] or [..., K] with K={k}, got shape={tuple(w.shape)}."
        )
    try:
        w = torch.broadcast_to(w, (*batch, k))
    except RuntimeError as err:
        raise ValueError(
            f"`weights` of shape {tuple(w.shape)} does not broadcast to the Gram batch "
            f"{tuple(batch)} + (K={k},)."
        ) from err
    if validate and w.numel():
        if not bool(torch.isfinite(w).all()):
            raise ValueError(f"`weights` must be finite, got weights={w.tolist()}.")
        if bool((w < 0).any()):
            raise ValueError(f"`weights` must be nonnegative, got weights={w.tolist()}.")
        total = w.sum(-1)
        off = (total - 1.0).abs()
        if bool((off > 1e-6).any()):
            i = int(off.argmax())
            raise ValueError(
                "`weights` must sum to 1 (a point of the simplex), got sum="
                f"{float(total.flatten()[i]):.9g} for weights={w.reshape(-1, k)[i].tolist()}."
            )
    # Renormalise exactly so that accepted round-off in the sum does not leak into a = w + ….
    return w / w.sum(-1, keepdim=True)


def _select_backend(backend: str, k: int) -> str:
    if backend == "auto":
        return "closed_form" if k <= 3 else "iterative"
    if backend == "closed_form" and k > 3:
        raise ValueError(
            f"backend='closed_form' is exact only for K <= 3 objectives, got K={k}; "
            "use backend='iterative' (any K) or backend='exact' (cvxpy reference)."
        )
    return backend


def solve(
    gram: torch.Tensor,
    weights: torch.Tensor | Sequence[float] | None = None,
    *,
    method: Method = "cagrad_clip",
    c: float = 0.4,
    backend: Backend = "auto",
    strict: bool = False,
    validate: bool = True,
) -> SolveResult:
    r"""Coefficients a of a conflict-averse update Σ_k a_k g_k from the Gram H_ij = ⟨g_i, g_j⟩.

    With g_0 = Σ w_i g_i and G_p = Σ p_i g_i, the CAGrad methods solve the dual
    (RACO Algorithm 1, step 3)

        p ∈ argmin_{p ∈ Δ_K}  G_pᵀ g_0 + c ‖g_0‖ ‖G_p‖,

    clip it, p̃ = min(p, w) (``"cagrad_clip"``, RACO Algorithm 1; ``"cagrad"`` keeps p̃ = p), and
    return a = w + c‖g_0‖ p̃ / ‖G̃_p‖, i.e. G_0 = g_0 + c‖g_0‖ G̃_p/‖G̃_p‖ with ‖G_0 − g_0‖ = c‖g_0‖.
    ``"mgda"`` returns the min-norm point of the convex hull, a = argmin_{p∈Δ} ‖G_p‖ (weights
    unused), and ``"linear"`` returns a = w.

    References: Chen, Li, Chen, Lin, "Reward-free Alignment for Conflicting Objectives",
    ICML 2026 (arXiv 2602.02495); Liu et al., "Conflict-Averse Gradient Descent for Multi-task
    Learning", NeurIPS 2021; Désidéri 2012; Sener & Koltun, NeurIPS 2018.

    .. note::
        There is no (1 + c) or (1 + c²) rescaling of the step, unlike the official CAGrad code,
        and the anchor is the *weighted* gradient g_0 = Σ w_i g_i (TorchJD and the official code
        use the uniform average). ``docs/solvers.md`` shows how to reproduce both conventions.

    Degenerate inputs never raise and never hang; their policy (``docs/solvers.md``):
    zero Gram or ‖g_0‖ = 0 (CAGrad methods) → a = w, status DEGENERATE; G̃_p = 0 → a = w, as
    RACO prescribes; NaN/Inf in a Gram (or, with ``validate=False``, weights that make the
    coefficients or the certificate non-finite, e.g. all zero) → a = 0, status NONFINITE.

    Args:
        gram: ``[..., K, K]`` symmetric PSD Gram matrices; leading dimensions are a batch of
            independent problems. Any floating dtype; the solve runs in float64.
        weights: ``[K]`` or ``[..., K]`` user weights on the simplex; default uniform.
        method: ``"cagrad_clip"``, ``"cagrad"``, ``"mgda"`` or ``"linear"``.
        c: the radius c ∈ [0, 1) of the conflict-averse ball (paper default 0.4); any real
            scalar (Python or numpy), not a bool.
        backend: ``"closed_form"`` (exact, K ≤ 3), ``"iterative"`` (batched interior point in
            torch, any K, on the Gram's device; budget max(200, 4K) iterations, MAX_ITER past
            it), ``"exact"`` (cvxpy + CLARABEL reference, CPU),
            or ``"auto"`` (closed form for K ≤ 3, iterative otherwise; never exact).
            One unbatched ``[K, K]`` CPU Gram first goes to a host path (the closed form in
            scalar Python; for ``"iterative"`` an exact active-set homotopy on LAPACK), which
            answers only what it certifies OPTIMAL and hands the rest to the torch path; pass
            ``gram[None]`` to force the torch path (``docs/solvers.md``, "Two paths").
        strict: raise :class:`SolverError` unless every problem is OPTIMAL or INACCURATE.
        validate: check symmetry, positive semidefiniteness and the simplex. This reads values
            (a host synchronisation on accelerators); hot loops that trust their input pass False.

    Returns:
        :class:`SolveResult` with ``coeffs``, ``dual``, ``clipped`` ``[..., K]`` in the Gram's
        dtype promoted to at least float32, and ``status``, ``iterations``, ``gap`` ``[...]``.

    Raises:
        ValueError: bad option, shape, dtype, weights that are not real numbers, or (with
            ``validate``) a Gram that is clearly asymmetric or indefinite, or weights off the
            simplex. The message names the value.
        ImportError: ``backend="exact"`` without the ``[exact]`` extra.
        SolverError: with ``strict=True``, when a problem is not OPTIMAL or INACCURATE.

    Example:
        >>> import torch, conflict_opt
        >>> g = torch.tensor([[1.0, 0.0], [-0.5, 1.0]])     # two conflicting gradients
        >>> res = conflict_opt.solve(g @ g.T, [0.5, 0.5], method="cagrad_clip", c=0.4)
        >>> res.status.item() == conflict_opt.Status.OPTIMAL
        True
        >>> d = res.coeffs @ g                                # the update direction
        >>> bool((g @ d > 0).all())                           # improves both objectives
        True
    """
    _validate_options(method, backend, c, strict)
    # From here on c is a Python float (a numpy scalar would leak its dtype into the arithmetic).
    c = float(c)
    if isinstance(weights, torch.Tensor):
        # The solve is not differentiable, like the Gram (detached below): weights that require
        # grad would otherwise leak a graph into a = w + ….
        weights = weights.detach()
    if (
        isinstance(gram, torch.Tensor)
        and gram.ndim == 2
        and gram.shape[0] == gram.shape[1]
        and gram.device.type == "cpu"
    ):
        chosen = _select_backend(backend, gram.shape[-1])
        if chosen != "exact":
            # One problem on the host: certified OPTIMAL there, or None and the torch path below.
            hosted = solve_host(gram, weights, method, float(c), chosen, validate)
            if hosted is not None:
                return hosted
    _validate_gram(gram, validate)
    w = _weights(weights, gram, validate)
    k = gram.shape[-1]
    chosen = _select_backend(backend, k)
    batch_shape = gram.shape[:-2]
    out_dtype = torch.promote_types(gram.dtype, torch.float32)
    flat_gram = gram.detach().reshape(-1, k, k)
    flat_w = w.reshape(-1, k)
    b = flat_w.shape[0]
    iterations = torch.zeros(b, dtype=torch.int64, device=gram.device)

    if method == "linear" or (method in ("cagrad", "cagrad_clip") and c == 0):
        # No dual to solve: a = w exactly (c = 0 removes RACO's correction term).
        nonfinite = ~torch.isfinite(flat_gram).flatten(-2).all(-1)
        p = coeffs = clipped = flat_w
        gap = torch.zeros(b, dtype=torch.float64, device=gram.device)
        status = _problem.status_from_gap(gap)
    else:
        problem = _problem.prepare(flat_gram, flat_w, method, float(c))
        exhausted = None
        if chosen == "closed_form":
            p = solve_closed_form(problem)
            gap = _problem.certify(problem, p)
        elif chosen == "iterative":
            p, iterations, gap, exhausted = solve_iterative(problem)
        else:
            from ._exact import solve_exact

            p, gap, ok = solve_exact(problem)
            exhausted = ~ok
        p, gap = _problem.snap(problem, p, gap)
        status = _problem.status_from_gap(gap, exhausted)
        # Degenerate problems follow the documented convention: p = w, a = w.
        p = torch.where(problem.degenerate[:, None], flat_w, p)
        coeffs, clipped = _problem.coefficients(problem, p, method, float(c))
        status = torch.where(problem.degenerate, int(Status.DEGENERATE), status)
        gap = torch.where(problem.degenerate, 0.0, gap)
        nonfinite = problem.nonfinite
    # Non-finite weights (possible with validate=False: NaN, or all zeros renormalised to 0/0)
    # give non-finite coefficients or gap; those follow the NaN-Gram policy instead of passing
    # as OPTIMAL (a NaN gap compares false against every tolerance). torch.where only: no sync.
    nonfinite = (
        nonfinite
        | ~torch.isfinite(coeffs).all(-1)
        | ~torch.isfinite(p).all(-1)
        | ~torch.isfinite(gap)
    )
    zeros = torch.zeros_like(flat_w)
    coeffs = torch.where(nonfinite[:, None], zeros, coeffs)
    p = torch.where(nonfinite[:, None], zeros, p)
    clipped = torch.where(nonfinite[:, None], zeros, clipped)
    status = torch.where(nonfinite, int(Status.NONFINITE), status)
    gap = torch.where(nonfinite, torch.inf, gap)
    iterations = torch.where(nonfinite, 0, iterations)

    result = SolveResult(
        coeffs=coeffs.to(out_dtype).reshape(*batch_shape, k),
        dual=p.to(out_dtype).reshape(*batch_shape, k),
        clipped=clipped.to(out_dtype).reshape(*batch_shape, k),
        status=status.reshape(batch_shape),
        iterations=iterations.reshape(batch_shape),
        gap=gap.to(out_dtype).reshape(batch_shape),
    )
    if strict:
        check(result)
    return result


def check(result: SolveResult) -> SolveResult:
    """Raise :class:`SolverError` unless every problem in ``result`` is OPTIMAL or INACCURATE.

    Reads the status tensor (a host synchronisation on accelerators). Returns ``result``.

    Example:
        >>> import torch, conflict_opt
        >>> res = conflict_opt.solve(torch.full((2, 2), float("nan")))
        >>> conflict_opt.check(res)
        Traceback (most recent call last):
            ...
        conflict_opt._types.SolverError: 1 of 1 problems failed: NONFINITE=1 ...
    """
    bad = result.status > int(Status.INACCURATE)
    if bool(bad.any()):
        flat = result.status.reshape(-1)
        counts = {s.name: int((flat == s).sum()) for s in Status if s > Status.INACCURATE}
        summary = ", ".join(f"{k}={v}" for k, v in counts.items() if v)
        first = int(bad.reshape(-1).nonzero()[0, 0])
        raise SolverError(
            f"{int(bad.sum())} of {flat.numel()} problems failed: {summary} "
            f"(first at flat index {first}, status {Status(int(flat[first])).name}, "
            f"gap {float(result.gap.reshape(-1)[first]):.3g})."
        )
    return result
