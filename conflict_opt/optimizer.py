"""Conflict-averse multi-objective steps around any torch optimizer.

:func:`aggregate_` is the math of one step: the Gram of K per-objective gradients
(:func:`conflict_opt.gram`), the dual solve (:func:`conflict_opt.solve`), and Σ_k a_k g_k written
into the parameters' ``.grad`` (:func:`conflict_opt.combine_`). :class:`MultiObjectiveOptimizer`
gathers the gradients, runs the same code (``_aggregate``: :func:`aggregate_` without the
per-tensor checks that autograd's own output does not need), and then calls the inner
optimizer's own ``step()``; it never re-implements an update rule. On CPU both run the three
parts as one native call (``conflict_opt._native.step``) where it applies, with the same
results; between backward passes, with cold caches, that saves most of the step's Python.
Under torch.distributed the wrapper averages each objective's gradient across the ranks
before the Gram (:mod:`conflict_opt._distributed`), which ``DistributedDataParallel`` cannot do
for it. docs/optimizer.md has the training loop, the memory modes, the accumulation policy,
mixed precision, data parallelism and the benchmark table.
"""

from __future__ import annotations

import inspect
import math
import operator
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, NamedTuple

import torch

from . import _distributed
from ._types import (
    BACKENDS,
    FLOAT_DTYPES,
    METHODS,
    OPTIMIZER_OPTIONS,
    Backend,
    Method,
    SolveResult,
)
from .diagnostics import diagnostics
from .primitives import (
    _CPU,
    _EMPTY,
    _FLOAT_DTYPE_SET,
    PRIMITIVE_BACKENDS,
    Grads,
    PrimitiveBackend,
    _as_out,
    _combine_grads,
    _gram_grads,
    _gram_tensor,
    _select,
    _sole_owner,
    _step_native,
    _step_store,
    _subset,
    as_grads,
    combine_,
    gram,
)
from .solvers import _host, _select_backend, _validate_options, _weights, solve

__all__ = ["Aggregation", "MultiObjectiveOptimizer", "aggregate_"]

Mode = Literal["store", "gram_first"]
Accumulation = Literal["per_step", "per_micro_batch"]
MODES = ("store", "gram_first")
ACCUMULATIONS = ("per_step", "per_micro_batch")


# `map` and `filter` with this getter run without a Python frame per parameter (the step runs
# them with cold caches, where each frame costs several times what it does in a loop).
_REQUIRES_GRAD = operator.attrgetter("requires_grad")


class Aggregation(NamedTuple):
    """What :func:`aggregate_` computed: the solve and the Gram it was given (``[K, K]``)."""

    result: SolveResult
    gram: torch.Tensor


def _check_weights(weights: Any) -> torch.Tensor | None:
    """``weights`` as a float64 CPU vector, checked by the solver's own simplex validation.

    A float64 CPU tensor is kept as it is (documented: a weight schedule may change it in place,
    which ``Tensor._version`` counts); anything else is copied, so that a numpy array changed in
    place later, which no version counter sees, cannot change the weights behind the checks."""
    if weights is None:
        return None
    try:
        if isinstance(weights, torch.Tensor):
            w = weights.detach().to(device="cpu", dtype=torch.float64)
        else:
            w = torch.tensor(weights, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(
            f"`weights` must be a [K] vector of real numbers, got weights={weights!r} ({err})."
        ) from None
    if w.ndim != 1 or w.numel() == 0:
        raise ValueError(f"`weights` must be a non-empty [K] vector, got shape={tuple(w.shape)}.")
    k = w.numel()
    _weights(w, torch.zeros(k, k, dtype=torch.float64), validate=True)  # raises on bad weights
    return w


def aggregate_(
    params: Sequence[torch.Tensor],
    per_objective_grads: Sequence[Sequence[torch.Tensor | None]],
    weights: torch.Tensor | Sequence[float] | None = None,
    *,
    method: Method = "cagrad_clip",
    c: float = 0.4,
    backend: Backend = "auto",
    primitive_backend: PrimitiveBackend = "auto",
    accumulate: bool = False,
    process_group: Any = None,
) -> Aggregation:
    r"""Write the conflict-averse combination of K gradients into ``params[t].grad``.

    H = gram(per_objective_grads); a = solve(H, weights, method, c, backend).coeffs;
    ``params[t].grad`` ← Σ_k a_k g_k[t] (``+=`` with ``accumulate``). A missing ``.grad`` is
    allocated; a parameter that no objective reaches is left as it is (``.grad`` None after
    ``zero_grad``, as after a plain backward). The coefficients stay on the device; the only
    host read is the weights' check (none for a list or a CPU tensor).

    Args:
        params: the T distinct parameters.
        per_objective_grads: K sequences of T gradients (``None`` where objective k does not
            reach parameter t), as returned by ``torch.autograd.grad(..., allow_unused=True)``.
        weights: ``[K]`` user weights on the simplex (default uniform), checked as
            :func:`conflict_opt.solve` checks them.
        method, c, backend: as for :func:`conflict_opt.solve`.
        primitive_backend: backend of :func:`conflict_opt.gram` and
            :func:`conflict_opt.combine_`.
        accumulate: add to the existing ``.grad`` instead of overwriting it.
        process_group: a ``torch.distributed`` process group whose ranks each pass their own
            (local) gradients: each objective's gradient is averaged across it before the
            Gram, in each parameter's dtype, as :class:`MultiObjectiveOptimizer` does (same
            schemes, same handshake: every rank must call with the same K, parameters,
            options and weights, or all raise). None (the default): no communication, even
            with torch.distributed initialised, so gradients averaged by the caller are not
            averaged twice. The Gram of each rank's own gradients would give each rank a
            different direction: under data parallelism pass either averaged gradients or
            the group.

    Returns:
        :class:`Aggregation` with the :class:`SolveResult` and the ``[K, K]`` float64 Gram.

    Raises:
        ValueError: mismatched counts or shapes, a parameter passed twice, weights off the
            simplex or of the wrong length, or a bad option (the message names the value).
            With ``process_group``: no parameter, a sharded parameter (FSDP, DTensor), a
            sparse gradient, parameters on several devices, or ranks that disagree (raised
            on every rank, before any gradient is averaged).

    Example:
        >>> import torch, conflict_opt
        >>> w = torch.nn.Parameter(torch.zeros(2))
        >>> g = [[torch.tensor([1.0, 0.0])], [torch.tensor([-0.5, 1.0])]]
        >>> agg = conflict_opt.aggregate_([w], g, [0.5, 0.5], method="linear")
        >>> w.grad.tolist()
        [0.25, 0.5]
    """
    params = list(params)
    grads = [list(g) for g in per_objective_grads]
    _check_aggregate_input(params, grads, primitive_backend)
    w = _check_weights(weights)
    if w is not None and w.numel() != len(grads):
        raise ValueError(
            f"got {len(grads)} objectives' gradients for {w.numel()} weights "
            f"(weights={w.tolist()})."
        )
    group = None if process_group is None else _distributed.resolve_group(process_group)
    if group is not None:
        _validate_options(method, backend, c, False)  # local errors before any collective
        if not params:
            raise ValueError("`params` must hold at least one parameter with a process group.")
        _distributed.check_whole(params)
        k, device = len(grads), params[0].device
        settings = {
            "method": method,
            "c": float(c),
            "backend": backend,
            "primitive_backend": primitive_backend,
            "accumulate": accumulate,
            "weights": [1.0 / k] * k if w is None else w.tolist(),
        }
        _distributed.agree(
            params, k, group, device, call="aggregate_", micro_batch=0, settings=settings
        )
        dtypes = [p.dtype for p in params]
        if _distributed.sharded(group):
            return _sharded_aggregate(
                params,
                grads,
                dtypes,
                group,
                w if w is None or device.type == "cpu" else w.to(device),
                method=method,
                c=c,
                backend=backend,
                primitive_backend=primitive_backend,
                accumulate=accumulate,
            )
        grads = _distributed.average(params, grads, dtypes, group)
    agg = _aggregate(
        params,
        as_grads(grads),
        w,
        method=method,
        c=c,
        backend=backend,
        primitive_backend=primitive_backend,
        accumulate=accumulate,
        check_out=True,
    )
    return agg.materialise() if isinstance(agg, _Deferred) else agg


def _check_aggregate_input(
    params: list[torch.Tensor],
    grads: list[list[torch.Tensor | None]],
    primitive_backend: Any,
) -> None:
    """:func:`aggregate_`'s own checks, each naming the bad entry: one gradient per parameter
    and objective, of the parameter's shape; no parameter twice (its ``.grad`` would keep one
    slot's combination while the Gram counted both); a known primitives backend."""
    if primitive_backend not in PRIMITIVE_BACKENDS:
        raise ValueError(
            f"`primitive_backend` must be one of {PRIMITIVE_BACKENDS}, got "
            f"primitive_backend={primitive_backend!r}."
        )
    if not grads:
        raise ValueError("`per_objective_grads` must hold at least one objective, got none.")
    first: dict[int, int] = {}
    for t, p in enumerate(params):
        if not isinstance(p, torch.Tensor):
            raise ValueError(f"params[{t}] must be a tensor, got {type(p).__name__}.")
        if first.setdefault(id(p), t) != t:
            raise ValueError(
                f"params[{first[id(p)]}] and params[{t}] are the same tensor: pass each "
                "parameter once, with each objective's gradients for it summed."
            )
    for k, g in enumerate(grads):
        if len(g) != len(params):
            raise ValueError(
                f"objective {k} has {len(g)} gradients for {len(params)} parameters; pass one "
                "per parameter (None where the objective does not reach it)."
            )
        for t, x in enumerate(g):
            if isinstance(x, torch.Tensor) and x.shape != params[t].shape:
                raise ValueError(
                    f"objective {k}'s gradient for params[{t}] has shape {tuple(x.shape)}, "
                    f"but the parameter has shape {tuple(params[t].shape)}."
                )


def _aggregate(
    params: list[torch.Tensor],
    g: Grads,
    weights: torch.Tensor | Sequence[float] | None,
    *,
    method: Method,
    c: float,
    backend: Backend,
    primitive_backend: PrimitiveBackend,
    accumulate: bool,
    reuse: bool = False,
    check_out: bool = False,
    unscale: Callable[[torch.Tensor], torch.Tensor] | None = None,
    gram_values: list[float] | None = None,
) -> Aggregation | _Deferred:
    """The math of one step on validated gradients, shared by :func:`aggregate_` and
    :class:`MultiObjectiveOptimizer`: Gram, solve, combination into ``.grad`` (:func:`_outputs`
    for ``reuse``). ``check_out`` (:func:`aggregate_`, whose caller's gradients may be any
    tensors): validate the outputs, and find those in memory of another parameter's gradients
    (written through temporaries); the wrapper's gradients are autograd's fresh tensors, which
    no ``.grad`` shares. ``unscale`` maps the Gram of scaled gradients back to
    the true one before the solve (the wrapper's GradScaler). ``gram_values``: the K·K Gram
    of ``g``, already computed by a fused step whose C solve handed it back.

    On CPU with the native kernels, one call does all three (:func:`_step_native`) and the result
    comes back as :class:`_Deferred`, whose tensors are made when first asked for; otherwise
    (or where the C solve hands the problem back) the Gram, :func:`conflict_opt.solve` and the
    combination run one after the other. Either way ``.grad`` is assigned only after the
    combination has written it.
    """
    _validate_options(method, backend, c, False)
    reached, outs, fresh = _outputs(params, g, accumulate, reuse)
    picked = g if len(reached) == len(g.slots) else _subset(g, reached)
    out = _as_out(outs, picked) if check_out else tuple(outs)
    fused: tuple[list[float], tuple | None] | None = None
    if gram_values is not None:
        fused = (gram_values, None)
    elif unscale is None:
        args = _native_solve(
            weights, picked.k, method, c, backend, primitive_backend, picked.device
        )
        if args is not None:
            fused = _step_native(out, picked, *args, accumulate, exclusive=check_out)
    if fused is not None and fused[1] is not None:
        agg: Aggregation | _Deferred = _Deferred(picked.k, *fused)
    else:
        if fused is not None:  # the Gram, already computed; the solve was handed back
            h = _gram_tensor(fused[0], g.k)
        else:
            h = _gram_grads(g, primitive_backend, torch.float64)
        if unscale is not None:
            h = unscale(h)
        result = solve(h, weights, method=method, c=c, backend=backend, validate=False)
        _combine_grads(out, picked, result.coeffs, primitive_backend, accumulate, aliases=check_out)
        agg = Aggregation(result, h)
    for p, t in fresh:
        p.grad = t
    return agg


def _sharded_aggregate(
    params: list[torch.Tensor],
    grads: list[list[torch.Tensor | None]],
    dtypes: Sequence[torch.dtype],
    group: Any,
    weights: torch.Tensor | None,
    *,
    method: Method,
    c: float,
    backend: Backend,
    primitive_backend: PrimitiveBackend,
    accumulate: bool,
    unscale: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Aggregation:
    """One step across ``group`` in the sharded scheme (:mod:`conflict_opt._distributed`):
    this rank's shard of the averaged gradients, its part of the Gram completed by a K×K
    all-reduce, the same solve on every rank, this rank's part of Σ a_k g_k, gathered into
    ``.grad``. The entries of ``grads`` are dropped as they are packed."""
    k = len(grads)
    shards = _distributed.scatter(params, grads, dtypes, group)
    device = params[0].device
    local = [[part.grads[i] for part in shards] for i in range(k)]
    if shards:
        h = gram(local, backend=primitive_backend, accumulate_dtype=torch.float64)
    else:  # no objective reaches any parameter on any rank
        h = torch.zeros(k, k, dtype=torch.float64, device=device)
    _distributed.dist.all_reduce(h, group=group)
    if unscale is not None:
        h = unscale(h)
    result = solve(h, weights, method=method, c=c, backend=backend, validate=False)
    combined = [torch.empty(part.size, dtype=part.out_dtype, device=device) for part in shards]
    if shards:
        combine_(combined, local, result.coeffs, backend=primitive_backend)
    _distributed.gather(params, shards, combined, group, accumulate)
    return Aggregation(result, h)


class _Deferred(NamedTuple):
    """The fused path's answer as Python numbers (:func:`_step_native`); :meth:`materialise`
    makes the tensors of an :class:`Aggregation`. A training step whose diagnostics nobody
    reads makes none of them: tensor creation, a few µs each in a loop, costs several times
    that between backward passes."""

    k: int
    gram: list[float]
    answer: tuple[list[float], list[float], list[float], float, int]

    def materialise(self) -> Aggregation:
        h = _gram_tensor(self.gram, self.k)
        return Aggregation(_host._output(h, *self.answer), h)


def _native_solve(
    weights: torch.Tensor | Sequence[float] | None,
    k: int,
    method: Method,
    c: float,
    backend: Backend,
    primitive_backend: PrimitiveBackend,
    device: torch.device,
) -> tuple[list[float], tuple] | None:
    """The weights and options of the C host solve for a fused step (Gram, host solve and
    combination in one native call: :func:`conflict_opt.primitives._step_native` and
    ``_step_store``), or ``None`` where that does not apply. It applies for the torch
    primitives backend on CPU, weights the host path takes
    (:func:`conflict_opt.solvers._host.solve_host`), and a solve it has in C (the closed form,
    or the active set; not ``"exact"``). The
    options are :func:`conflict_opt.solve`'s with ``validate=False``, which the torch path is
    then run with where the C solve hands back."""
    if device.type != "cpu" or _select(primitive_backend, device) != "torch":
        return None
    chosen = _select_backend(backend, k)
    if chosen == "exact" or k > _host.MAX_K:
        return None
    w = _host._weights_list(weights, k)
    if w is None:
        return None
    closed_form = chosen == "closed_form"
    return w, _host.native_options(method, closed_form, float(c), torch.float64, k, False)


def _own_grads(params: list[torch.Tensor], grads: list[list[torch.Tensor | None]]) -> Grads:
    """The wrapper's store as :class:`Grads` without per-tensor checks: autograd has already
    given every gradient its parameter's shape, dtype and device (its engine validates them),
    the bfloat16 store converts whole tensors, and accumulation sums like tensors. One dtype read
    per parameter and one layout read per tensor (``nn.Embedding(sparse=True)`` gives sparse
    gradients, refused here naming the parameter); anything else unusual (several devices, a
    non-float dtype) takes :func:`conflict_opt.primitives.as_grads`, which raises naming it.
    Saves that function's per-tensor attribute reads, a noticeable part of a step's overhead on
    a small model."""
    slots = tuple(zip(*grads, strict=True))
    dtypes: list[torch.dtype | None] = []
    for t, slot in enumerate(slots):
        present = [x for x in slot if x is not None]
        dtypes.append(present[0].dtype if present else None)
        if not all(x.layout is torch.strided for x in present):
            i, x = next(
                (i, x)
                for i, x in enumerate(slot)
                if x is not None and x.layout is not torch.strided
            )
            raise ValueError(
                f"parameter {t} (shape {tuple(params[t].shape)}) got a {x.layout} "
                f"gradient from objective {i}: the store's Gram and combination need "
                "dense gradients. Build the module with sparse=False (nn.Embedding), "
                "or use mode='gram_first', which needs only gradient norms."
            )
    devices = {p.device for p in params}
    if len(devices) != 1 or not _FLOAT_DTYPE_SET.issuperset(d for d in dtypes if d is not None):
        return as_grads(grads)
    shapes = tuple(_EMPTY if d is None else p.shape for p, d in zip(params, dtypes, strict=True))
    return Grads(len(grads), slots, shapes, tuple(dtypes), devices.pop(), False)


def _outputs(
    params: list[torch.Tensor], g: Grads, accumulate: bool, reuse: bool
) -> tuple[list[int], list[torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]]]:
    """The ``.grad`` tensors the combination writes: the reached slots (a parameter no
    objective reaches keeps its ``.grad``, None after zero_grad, as after a plain ``backward``,
    so optimizers skip it as usual), their output tensors, and the (parameter, tensor) pairs
    still to be assigned as ``.grad`` once written.

    ``reuse`` (the wrapper's own store, discarded after the step): a missing ``.grad`` becomes
    one of the parameter's own gradient tensors, overwritten in place by the combination
    (``combine_`` reads every block before writing it). That saves a fresh P-sized allocation,
    its page faults and its memory.
    """
    reached = [t for t, d in enumerate(g.dtypes) if d is not None]
    # Which parameters' gradients live in each storage: autograd may hand one tensor to
    # several parameters (the two inputs of an add), and such a tensor may not become a .grad.
    owners: dict[int, set[int]] = {}
    if reuse and not accumulate:
        for t in reached:
            for x in g.slots[t]:
                if x is not None:
                    owners.setdefault(x.untyped_storage().data_ptr(), set()).add(t)
    outs = []
    fresh = []
    for t in reached:
        p = params[t]
        grad = p.grad
        if grad is None:
            grad = _reusable(p, g.slots[t], t, owners) if owners else None
            if grad is None:
                # combine_ writes every element unless it accumulates: no zero fill to pay for.
                grad = torch.zeros_like(p) if accumulate else torch.empty_like(p)
            fresh.append((p, grad))
        outs.append(grad)
    return reached, outs, fresh


def _reusable(
    p: torch.Tensor,
    slot: Sequence[torch.Tensor | None],
    t: int,
    owners: dict[int, set[int]],
) -> torch.Tensor | None:
    """A gradient of ``p`` (parameter ``t``) that can serve as its ``.grad``: its storage holds
    no other parameter's gradient (``combine_`` reads a parameter's inputs before writing its
    output, not the other parameters'), it is dense (an expanded gradient aliases itself), and
    it has ``p``'s dtype, shape and device, outside any graph."""
    for g in slot:
        if (
            g is not None
            and owners.get(g.untyped_storage().data_ptr()) == {t}
            and g.is_contiguous()
            and g.dtype == p.dtype
            and g.shape == p.shape
            and g.device == p.device
            and not g.requires_grad
            and _sole_owner(g)
        ):
            return g
    return None


def _info(h: torch.Tensor, w: torch.Tensor, result: SolveResult) -> dict[str, torch.Tensor]:
    """The diagnostics dict of ``MultiObjectiveOptimizer.last_info`` for one solve."""
    diag = diagnostics(h, w, result.coeffs)
    norms = h.diagonal().clamp_min(0.0).sqrt()
    outer = norms[:, None] * norms[None, :]
    cos = torch.where(outer > 0, h / torch.where(outer > 0, outer, 1.0), 0.0)
    return {
        "coeffs": result.coeffs,
        "dual": result.dual,
        "clipped": result.clipped,
        # Whether RACO's clip changed the dual: p̃ = min(p, w) < p somewhere. Never for the
        # methods without a clip (their clipped dual is the dual), whatever p − w is.
        "clipping_active": (result.clipped < result.dual).any(-1),
        "pairwise_cosines": cos,
        "directional": diag.directional,
        "cosines": diag.cosines,
        "relative_norm": diag.relative_norm,
        "status": result.status,
        "gap": result.gap,
        "iterations": result.iterations,
        "gram": h,
    }


# The options of MultiObjectiveOptimizer (_check_options's arguments); those that decide what
# backward gathers may not change while a step is in progress.
_OPTIONS = OPTIMIZER_OPTIONS
_GATHERING = frozenset({"mode", "store_dtype", "accumulation"})
# The wrapper's part of MultiObjectiveOptimizer.state_dict().
_WRAPPER_KEYS = frozenset({"weights", *_OPTIONS, "steps"})


def _check_options(
    method: Any,
    c: Any,
    backend: Any,
    primitive_backend: Any,
    mode: Any,
    store_dtype: Any,
    accumulation: Any,
    check_finite: Any,
) -> Accumulation:
    """Check the wrapper's options (from its arguments or a state_dict); returns the
    accumulation policy, ``None`` resolved to the mode's default."""
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got method={method!r}.")
    if backend not in BACKENDS:
        raise ValueError(f"`backend` must be one of {BACKENDS}, got backend={backend!r}.")
    if primitive_backend not in PRIMITIVE_BACKENDS:
        raise ValueError(
            f"`primitive_backend` must be one of {PRIMITIVE_BACKENDS}, got "
            f"primitive_backend={primitive_backend!r}."
        )
    if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0.0 <= c < 1.0:
        raise ValueError(f"`c` must be a real number in [0, 1), got c={c!r}.")
    if mode not in MODES:
        raise ValueError(f"`mode` must be one of {MODES}, got mode={mode!r}.")
    if accumulation is None:
        accumulation = "per_step" if mode == "store" else "per_micro_batch"
    if accumulation not in ACCUMULATIONS:
        raise ValueError(
            f"`accumulation` must be one of {ACCUMULATIONS}, got accumulation={accumulation!r}."
        )
    if mode == "gram_first" and accumulation == "per_step":
        raise ValueError(
            "mode='gram_first' keeps no per-objective gradients, so it cannot sum them over "
            "micro-batches: use accumulation='per_micro_batch' or mode='store'."
        )
    if store_dtype is not None and store_dtype not in FLOAT_DTYPES:
        raise ValueError(f"`store_dtype` must be a float dtype or None, got {store_dtype}.")
    if not isinstance(check_finite, bool):
        raise ValueError(f"`check_finite` must be a bool, got check_finite={check_finite!r}.")
    return accumulation


def _option(name: str, doc: str) -> property:
    """A checked option of :class:`MultiObjectiveOptimizer`: read as a plain attribute (a C
    getter, as cheap as one in the step's hot path), assigned through ``_set_option``."""

    def fset(self: MultiObjectiveOptimizer, value: Any) -> None:
        self._set_option(name, value)

    return property(operator.attrgetter("_" + name), fset, doc=doc)


def _requires_closure(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step`` has a ``closure`` parameter without a default
    (``torch.optim.LBFGS``); False where its signature cannot be read."""
    try:
        param = inspect.signature(optimizer.step).parameters.get("closure")
    except (TypeError, ValueError):
        return False
    return param is not None and param.default is inspect.Parameter.empty


class MultiObjectiveOptimizer:
    r"""Wrap a ``torch.optim.Optimizer`` so that each step follows a conflict-averse direction.

    Usage::

        opt = MultiObjectiveOptimizer(torch.optim.AdamW(model.parameters()), [0.7, 0.3])
        opt.zero_grad()
        opt.backward([loss_1, loss_2])      # or a [K] tensor of scalar losses
        opt.step()                          # or opt.step(losses) for both at once

    ``backward`` gathers one gradient per objective over the trainable parameters (those with
    ``requires_grad`` in the inner optimizer's groups, read at each call, so layers may be
    frozen and unfrozen; one frozen after its ``backward`` still takes that step, as in plain
    torch); ``step`` solves for the coefficients a, writes Σ a_k g_k into
    ``.grad`` and calls the inner optimizer's ``step()``.

    Args:
        optimizer: any ``torch.optim.Optimizer`` instance (its param groups, LR schedulers and
            state stay its own: attach schedulers to ``opt.optimizer``).
        weights: ``[K]`` user weights on the simplex; default uniform over however many
            losses are passed. ``opt.weights = ...`` changes them between steps.
        method, c, backend: as for :func:`conflict_opt.solve` (``"cagrad_clip"``, RACO).
        primitive_backend: backend of the Gram and combination primitives.
        mode: ``"store"`` (default) keeps the K per-objective gradients, one store of K×P
            values, and needs K backward passes. ``"gram_first"`` keeps no store: it computes
            the Gram from gradient norms by polarisation, H_ij = (‖g_i + g_j‖² − ‖g_i‖² −
            ‖g_j‖²)/2, one backward pass per objective and per pair, then runs one backward
            of Σ a_k L_k: K(K+1)/2 + 1 passes and at most one gradient alive at a time.
        store_dtype: dtype of the store (``"store"`` mode), e.g. ``torch.bfloat16`` to halve
            it; default: each parameter's dtype. The Gram accumulates in float64 regardless.
        accumulation: ``"per_step"`` (default in store mode) sums per-objective gradients
            over the micro-batches of a step and solves once in ``step()``;
            ``"per_micro_batch"`` solves at every ``backward`` and sums the combined
            directions into ``.grad`` (what the RACO authors' code does; the only choice in
            ``"gram_first"`` mode, where gradients are never kept). None (default): the
            mode's, then and after any change of ``mode``.
        scaler: a ``torch.amp.GradScaler``. ``backward`` then scales the losses itself, the
            Gram is unscaled before the solve, and ``step`` goes through ``scaler.step``, which
            skips the inner step (writing nothing to the parameters) when a gradient is
            inf/NaN. Call ``scaler.update()`` after ``step`` as usual.
        check_finite: raise on a NaN/Inf loss before any gradient is computed (one host read
            of the K losses per ``backward``), and skip a step whose Gram is non-finite
            without a scaler (one read of the K×K Gram per solve). False: no host reads at
            all in one process (across ranks the handshake below still reads its result);
            non-finite values then propagate.
        process_group: data parallelism. Each rank's per-objective gradients are averaged
            across this ``torch.distributed`` process group before the Gram, so that every
            rank solves the same problem and takes the same step (docs/optimizer.md, "Data
            parallelism"). Default: torch.distributed's default group when it is initialised
            with more than one rank, as ``DistributedDataParallel`` defaults to it; a group
            of one rank turns averaging off. Use it instead of ``DistributedDataParallel``,
            whose reducer never sees the wrapper's per-objective passes. Every ``backward``
            and every step starts with one small collective (38 + W integers, one host read,
            whatever ``check_finite``) in which the ranks check that they are at the same
            point of the same step with the same K, parameters, options and weights: every
            rank must call ``backward`` as often per step as the others.

    ``last_info`` holds the diagnostics of the last solve as a dict of device tensors.

    The options can be changed between steps (``opt.c = 0.2``, a schedule); each assignment is
    checked as the constructor checks it. ``mode``, ``store_dtype`` and ``accumulation``
    decide what ``backward`` gathers, so they cannot change between ``backward`` and ``step``.
    An ``accumulation`` left at None follows ``mode``: changing the mode changes it too.
    """

    method = _option("method", "The solver method (:func:`conflict_opt.solve`).")
    c = _option("c", "CAGrad's c in [0, 1), a float.")
    backend = _option("backend", "The solver backend (:func:`conflict_opt.solve`).")
    primitive_backend = _option("primitive_backend", "The Gram and combination backend.")
    mode = _option("mode", '``"store"`` or ``"gram_first"``.')
    store_dtype = _option("store_dtype", "The store's dtype, or None for the parameters'.")
    accumulation = _option(
        "accumulation",
        '``"per_step"`` or ``"per_micro_batch"``; None (the default) follows the mode.',
    )
    check_finite = _option("check_finite", "Whether non-finite losses and Grams are checked.")

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        weights: torch.Tensor | Sequence[float] | None = None,
        *,
        method: Method = "cagrad_clip",
        c: float = 0.4,
        backend: Backend = "auto",
        primitive_backend: PrimitiveBackend = "auto",
        mode: Mode = "store",
        store_dtype: torch.dtype | None = None,
        accumulation: Accumulation | None = None,
        scaler: torch.amp.GradScaler | None = None,
        check_finite: bool = True,
        process_group: Any = None,
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(
                f"`optimizer` must be a torch.optim.Optimizer, got {type(optimizer).__name__}."
            )
        options = {
            "method": method,
            "c": c,
            "backend": backend,
            "primitive_backend": primitive_backend,
            "mode": mode,
            "store_dtype": store_dtype,
            "accumulation": accumulation,
            "check_finite": check_finite,
        }
        self._apply_options(options)
        if scaler is not None and not isinstance(scaler, torch.amp.GradScaler):
            raise ValueError(f"`scaler` must be a torch.amp.GradScaler, got {type(scaler)}.")
        self.optimizer = optimizer
        self._needs_closure = _requires_closure(optimizer)
        self._weights: torch.Tensor | None = None
        self._weights_version: int | None = None
        self.weights = _check_weights(weights)
        self.scaler = scaler
        self._resolve_group(process_group)
        self._info: dict[str, torch.Tensor] = {}
        self._info_source: tuple[Aggregation | _Deferred, list[float] | None, int] | None = None
        # The last step's, when it decided; a tensor only when last_info is read (creating one
        # costs 10-30 µs per step between the backward passes and the next forward).
        self._skipped: bool | None = None
        # The per-objective gradients of this step: the first micro-batch's as (parameters,
        # K lists of gradients), merged into the dict by parameter from the second on.
        self._first: tuple[list[torch.Tensor], list[list[torch.Tensor | None]]] | None = None
        self._store: dict[torch.Tensor, list[torch.Tensor | None]] = {}
        self._k: int | None = None
        self._micro_batches = 0  # backward calls gathered in this step
        self._passed: list[torch.Tensor] = []  # the trainable parameters of the last backward
        # _native_solve's answer: (options, weights, their _version, answer).
        self._solve_args: tuple[tuple, Any, int | None, Any] | None = None
        self._pending = False  # backward ran since the last step
        # aggregate() wrote .grad for this step; the non-finite flag of its solves.
        self._aggregated = False
        self._aggregated_nonfinite: torch.Tensor | bool | None = None
        # Any Gram of this step non-finite: a device tensor, or False from the fused path.
        self._nonfinite: torch.Tensor | bool | None = None
        self.steps = 0

    # ------------------------------------------------------------------ the user's weights
    @property
    def weights(self) -> torch.Tensor | None:
        """The ``[K]`` weights (float64, CPU), or None for uniform over the losses passed.

        Assign new ones at any step (a weight schedule): they are checked as the constructor
        checks them. A float64 CPU tensor passed in is kept, not copied, so changing it in
        place changes the weights too; such a change is checked at the next ``backward`` and at
        the step (``Tensor._version`` counts in-place changes) and raises if it left the
        simplex. Anything else (a list, a numpy array) is copied.
        """
        return self._weights

    @weights.setter
    def weights(self, value: torch.Tensor | Sequence[float] | None) -> None:
        w = _check_weights(value)
        self._weights = w
        self._weights_version = None if w is None else w._version

    def _options(self) -> dict[str, Any]:
        """The options as given: ``accumulation`` None where it follows the mode."""
        options = {name: getattr(self, "_" + name) for name in _OPTIONS}
        if self._accumulation_follows_mode:
            options["accumulation"] = None
        return options

    def _apply_options(self, options: dict[str, Any]) -> None:
        """Check a full set of options as the constructor does, then take them all.
        ``accumulation=None`` follows the mode: it is the mode's default now and after any
        later change of ``mode``."""
        options = dict(options)
        follows = options["accumulation"] is None
        options["accumulation"] = _check_options(**options)
        options["c"] = float(options["c"])
        for name, value in options.items():
            setattr(self, "_" + name, value)
        self._accumulation_follows_mode = follows

    def _set_option(self, name: str, value: Any) -> None:
        if name in _GATHERING and (self._pending or self._aggregated):
            raise RuntimeError(
                f"`{name}` decides what backward gathers and cannot change between backward "
                "and step: call step() (or zero_grad()) first."
            )
        options = self._options()
        options[name] = value
        self._apply_options(options)

    def _resolve_group(self, process_group: Any) -> None:
        self._group = _distributed.resolve_group(process_group)
        self._sharded = self._group is not None and _distributed.sharded(self._group)
        # The default waits for torch.distributed: a wrapper built before init_process_group
        # takes the default group at its first backward after it, instead of training each
        # rank alone.
        self._group_pending = process_group is None and not _distributed.initialised()

    @property
    def process_group(self) -> Any | None:
        """The process group across which per-objective gradients are averaged, or None
        (single process, or a group of one rank). With the default ``process_group=None``, a
        wrapper built before ``torch.distributed.init_process_group`` takes the default
        group at its first ``backward`` after it."""
        return self._group

    @property
    def world_size(self) -> int:
        """The number of ranks whose gradients each step averages (1 without averaging)."""
        return 1 if self._group is None else _distributed.dist.get_world_size(self._group)

    def _checked_weights(self, k: int) -> torch.Tensor | None:
        """The weights for K losses, re-checked if changed in place since the last check."""
        w = self._weights
        if w is None:
            return None
        if w._version != self._weights_version:
            try:
                _check_weights(w)
            except ValueError as err:
                raise ValueError(
                    f"the weights were changed in place to {w.tolist()}: {err}"
                ) from None
            self._weights_version = w._version
        if w.numel() != k:
            raise ValueError(f"got {k} losses for {w.numel()} weights.")
        return w

    # ------------------------------------------------------------------ torch.optim interface
    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    @property
    def state(self) -> Any:
        return self.optimizer.state

    @property
    def defaults(self) -> dict[str, Any]:
        return self.optimizer.defaults

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """The inner optimizer's ``add_param_group``; its parameters take part from the next
        ``backward`` on (the trainable set is read at each one)."""
        if self._pending or self._aggregated:
            raise RuntimeError(
                "add_param_group between backward and step: the gradients gathered for this "
                "step do not cover the new parameters; call it before backward or after step."
            )
        self.optimizer.add_param_group(param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the inner optimizer's gradients and the per-objective store."""
        self.optimizer.zero_grad(set_to_none=set_to_none)
        self._reset()

    def _reset(self) -> None:
        self._first = None
        self._store.clear()
        self._k = None
        self._micro_batches = 0
        self._passed = []
        self._pending = False
        self._nonfinite = None
        self._aggregated = False
        self._aggregated_nonfinite = None

    def state_dict(self) -> dict[str, Any]:
        """The inner optimizer's state and the wrapper's (weights, options, counters)."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "wrapper": {
                "weights": None if self.weights is None else self.weights.clone(),
                # accumulation None where it follows the mode, so that it goes on doing so
                # after loading.
                **self._options(),
                "steps": self.steps,
            },
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output: inner optimizer state and wrapper state.

        The wrapper's part is checked as the constructor checks its arguments before anything
        is loaded, so a bad or foreign state dict raises with both states as they were. A
        step in progress (``backward`` without ``step``) is kept, as torch keeps ``.grad``.
        A ``GradScaler`` keeps its own state dict, as in torch.
        """
        if not isinstance(state_dict, dict) or set(state_dict) != {"optimizer", "wrapper"}:
            keys = sorted(state_dict) if isinstance(state_dict, dict) else type(state_dict)
            raise ValueError(
                "expected a MultiObjectiveOptimizer state_dict with keys 'optimizer' and "
                f"'wrapper', got {keys}."
            )
        wrapper = state_dict["wrapper"]
        if not isinstance(wrapper, dict) or set(wrapper) != _WRAPPER_KEYS:
            got = sorted(wrapper) if isinstance(wrapper, dict) else type(wrapper).__name__
            raise ValueError(
                f"state_dict['wrapper'] must have the keys {sorted(_WRAPPER_KEYS)}, got {got}."
            )
        options = {name: wrapper[name] for name in _OPTIONS}
        resolved = dict(options, accumulation=_check_options(**options))
        if self._pending or self._aggregated:
            changed = sorted(n for n in _GATHERING if resolved[n] != getattr(self, "_" + n))
            if changed:
                raise RuntimeError(
                    f"the state dict changes {changed}, which decide what backward gathers, "
                    "while a step is in progress: call step() (or zero_grad()) first."
                )
        weights = _check_weights(wrapper["weights"])
        steps = wrapper["steps"]
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"state_dict['wrapper']['steps'] must be an int >= 0, got {steps!r}.")
        self.optimizer.load_state_dict(state_dict["optimizer"])
        self.weights = weights
        self._apply_options(options)
        self.steps = steps

    # -------------------------------------------------------------------------- the step
    def _trainable(self) -> list[torch.Tensor]:
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        params = list(filter(_REQUIRES_GRAD, params))
        if len(set(map(id, params))) == len(params):
            return params
        seen: set[int] = set()  # a parameter listed twice (torch warns, and allows it)
        return [p for p in params if not (id(p) in seen or seen.add(id(p)))]

    def _losses(
        self, losses: Sequence[torch.Tensor] | torch.Tensor
    ) -> tuple[list[torch.Tensor], list[float] | None]:
        """The losses checked and made 0-dim, and their values where ``check_finite`` found a
        NaN/Inf among them (``None`` otherwise); :meth:`_gather` raises for those, on every
        rank of a process group."""
        if self._group_pending and _distributed.initialised():
            self._resolve_group(None)
        if isinstance(losses, torch.Tensor):
            if losses.ndim != 1:
                raise ValueError(
                    f"`losses` as a tensor must have shape [K], got shape={tuple(losses.shape)}."
                )
            items = list(losses.unbind(0))
        elif isinstance(losses, Iterable):
            items = list(losses)
        else:
            raise ValueError(f"`losses` must be a sequence or a [K] tensor, got {type(losses)}.")
        if not items:
            raise ValueError("`losses` must hold at least one loss, got none.")
        for k, loss in enumerate(items):
            if not isinstance(loss, torch.Tensor):
                raise ValueError(f"loss {k} must be a tensor, got {type(loss).__name__}.")
            if loss.numel() != 1:
                raise ValueError(
                    f"loss {k} must be a scalar, got shape={tuple(loss.shape)}; reduce it first."
                )
            if not loss.requires_grad:
                raise ValueError(
                    f"loss {k} does not require grad (was it computed under no_grad?)."
                )
        k = len(items)
        self._checked_weights(k)
        if self._k is not None and self._k != k:
            raise ValueError(
                f"got {k} losses, but the earlier micro-batches of this step had {self._k}."
            )
        nonfinite = None
        if self.check_finite:
            if all(loss.is_cpu for loss in items):
                # Read where they are: K scalar reads, no stacking kernel.
                values = [loss.item() for loss in items]
                if not all(map(math.isfinite, values)):
                    nonfinite = values
            else:  # one host read for all K
                stacked = torch.stack([loss.detach().reshape(()).float() for loss in items])
                if not bool(torch.isfinite(stacked).all()):
                    nonfinite = stacked.tolist()
        return [loss if loss.ndim == 0 else loss.reshape(()) for loss in items], nonfinite

    def _settings(self, k: int) -> dict[str, Any]:
        """What every rank of a process group must share (:func:`_distributed.agree`): the
        options and the weights the solve uses (uniform ones as values, so that None and
        explicit uniform weights agree)."""
        w = self._weights
        settings = {name: getattr(self, name) for name in _OPTIONS}
        settings["weights"] = [1.0 / k] * k if w is None else w.tolist()
        return settings

    def _weights_for(self, k: int, device: torch.device) -> torch.Tensor:
        if self.weights is None:
            return torch.full((k,), 1.0 / k, dtype=torch.float64, device=device)
        return self.weights.to(device)

    def _scaling(self) -> bool:
        return self.scaler is not None and self.scaler.is_enabled()

    def _unscale(self, h: torch.Tensor) -> torch.Tensor:
        if not self._scaling():
            return h
        # The Gram of scaled gradients is S²·H; the solve is scale-invariant, the diagnostics
        # are not. The scale lives on the device (GradScaler's own tensor): no host read.
        scale = self.scaler._get_scale_async()  # private, but get_scale() reads to the host
        return h / scale.to(h.dtype) ** 2

    def backward(
        self, losses: Sequence[torch.Tensor] | torch.Tensor, *, retain_graph: bool = False
    ) -> None:
        """Gather the per-objective gradients of ``losses`` (one micro-batch).

        Args:
            losses: K scalar losses, as a sequence or a ``[K]`` tensor.
            retain_graph: keep the graph after the last pass, as ``Tensor.backward``'s
                option does (e.g. for another backward through it afterwards). The graph is
                always kept between the K passes and freed after the last one by default.

        Raises:
            ValueError: a non-scalar loss, a loss without grad, or a number of losses that
                does not match the weights or the earlier micro-batches of this step. With a
                process group, on every rank: such an error on any rank (the others name
                it), or ranks that disagree on K, the parameters, the options or weights, or
                on where they are in the step (one rank's extra micro-batch); nothing is
                computed.
            FloatingPointError: a NaN/Inf loss (with ``check_finite``; with a process group,
                on any rank, raised on every rank); nothing is written.
            RuntimeError: :meth:`aggregate` already wrote ``.grad`` for this step.
        """
        if self._aggregated:
            raise RuntimeError(
                "aggregate() already wrote .grad for this step: call step() before the next "
                "backward, or zero_grad() to drop it."
            )
        if not isinstance(retain_graph, bool):
            raise ValueError(f"`retain_graph` must be a bool, got retain_graph={retain_graph!r}.")
        self._gather(*self._announced(self._losses, losses), retain_graph)

    def _announced(self, check: Callable[..., Any], *args: Any) -> Any:
        """``check(*args)``; across ranks, a ValueError it raises is announced in the
        handshake that the other ranks' ``backward`` is waiting in (they then raise too, naming
        this rank's error), before it is raised here."""
        try:
            return check(*args)
        except ValueError as err:
            if self._group is not None:
                params = self._trainable()
                every = [p for group in self.optimizer.param_groups for p in group["params"]]
                device = (params or every or [torch.zeros(())])[0].device
                _distributed.agree(
                    params,
                    0,
                    self._group,
                    device,
                    call="backward",
                    micro_batch=self._micro_batches + 1,
                    error=err,
                )
            raise

    def aggregate(self) -> None:
        """Solve and write Σ_k a_k g_k into ``.grad`` now, without the inner step, so that
        ``.grad`` can be read or changed first: gradient clipping, logging its norm. ``step()``
        then runs only the inner step (skipping it as usual for a non-finite Gram).

        In store mode ``backward`` writes no ``.grad`` (it keeps the K gradients for the
        solve), so ``torch.nn.utils.clip_grad_norm_`` between ``backward`` and ``step`` would
        find nothing to clip; call this first. With a ``GradScaler`` the ``.grad`` written is
        scaled: call ``scaler.unscale_(opt.optimizer)`` before clipping, as in torch.

        Raises:
            RuntimeError: no ``backward`` since the last step, or ``aggregate`` already ran.
        """
        if self._aggregated:
            raise RuntimeError("aggregate() already ran for this step: call step() next.")
        if not self._pending:
            raise RuntimeError("call backward(losses) before aggregate().")
        nonfinite = self._write()
        self._aggregated, self._aggregated_nonfinite = True, nonfinite

    def _gather(
        self,
        items: list[torch.Tensor],
        nonfinite: list[float] | None,
        retain_graph: bool = False,
    ) -> None:
        """One micro-batch: check (across the ranks of a process group too), then gather."""
        k = len(items)
        params = self._announced(self._checked_params)
        if self._group is not None:
            # Before any pass: the ranks agree on where they are in the step, on K and on the
            # parameters, and all raise together for a non-finite loss on any of them (one
            # raising alone would leave the others waiting in the next collective).
            bad = _distributed.agree(
                params,
                k,
                self._group,
                params[0].device,
                call="backward",
                micro_batch=self._micro_batches + 1,
                finite=nonfinite is None,
                settings=self._settings(k),
            )
            if bad:
                values = nonfinite or [float(loss.detach()) for loss in items]
                shown = ", ".join(map(str, bad[:8])) + (", ..." if len(bad) > 8 else "")
                raise FloatingPointError(
                    f"non-finite loss on {len(bad)} of {self.world_size} ranks (ranks {shown}; "
                    f"this rank's losses={values}); nothing was computed or written on any rank."
                )
        elif nonfinite is not None:
            raise FloatingPointError(
                f"non-finite loss: losses={nonfinite}; nothing was computed or written."
            )
        if self.scaler is not None:
            items = [self.scaler.scale(loss) for loss in items]
        previous, self._k = self._k, k
        try:
            self._gather_passes(items, params, retain_graph)
        except BaseException:
            # A micro-batch that failed is not counted: the next backward is checked against
            # the earlier micro-batches' K, not against this one's.
            self._k = previous
            raise
        self._micro_batches += 1
        self._passed = params
        self._pending = True

    def _checked_params(self) -> list[torch.Tensor]:
        """The trainable parameters, checked before any pass (across ranks, that none is a
        shard of a parameter)."""
        params = self._trainable()
        if not params:
            raise ValueError(
                "the wrapped optimizer has no parameter with requires_grad=True; nothing to train."
            )
        if self._group is not None:
            _distributed.check_whole(params)
        return params

    def _gather_passes(
        self, items: list[torch.Tensor], params: list[torch.Tensor], retain_graph: bool
    ) -> None:
        if self.mode == "gram_first":
            self._gram_first(items, params, retain_graph)
        else:
            grads = self._gradients(items, params, retain_graph)
            if self.accumulation == "per_micro_batch":
                self._solve_and_write(params, grads, accumulate=True)
            else:
                self._keep(params, grads)

    def _gradients(
        self, items: list[torch.Tensor], params: list[torch.Tensor], retain_graph: bool = False
    ) -> list[list[torch.Tensor | None]]:
        """One ``autograd.grad`` per objective; the graph is kept until the last one's pass.

        With ``store_dtype``, each pass's gradients are converted right after it, one parameter
        at a time, each full-precision tensor dropped as soon as its copy exists. So beyond the
        store only one objective's full-precision gradients are ever alive, what a plain
        backward leaves in ``.grad`` too. (Converting inside the pass, in a post-accumulate hook
        per parameter, would hold one parameter's at a time, but the hooks' Python calls and
        their ``.grad`` bookkeeping cost about a quarter of a backward on the benchmark MLP,
        and the peak, reached at the step when the float32 ``.grad`` is written, is the same.)
        """
        dtype = self.store_dtype
        convert = dtype is not None and any(p.dtype != dtype for p in params)
        grads: list[list[torch.Tensor | None]] = []
        last = len(items) - 1
        for i, loss in enumerate(items):
            g = list(
                torch.autograd.grad(
                    loss, params, retain_graph=retain_graph or i < last, allow_unused=True
                )
            )
            if convert:
                for t in range(len(g)):
                    if g[t] is not None:
                        g[t] = g[t].to(dtype)  # the full-precision tensor goes here
            grads.append(g)
        return grads

    def _keep(self, params: list[torch.Tensor], grads: list[list[torch.Tensor | None]]) -> None:
        if self._first is None and not self._store:
            # The first micro-batch of the step: kept as it came (most steps have one).
            self._first = (params, grads)
            return
        if self._first is not None:
            first, self._first = self._first, None
            self._merge(*first)
        self._merge(params, grads)

    def _merge(self, params: list[torch.Tensor], grads: list[list[torch.Tensor | None]]) -> None:
        """Add a micro-batch's gradients to the store, out of place: autograd may hand one
        tensor to several parameters (the two inputs of an add), which an in-place sum would
        add to twice."""
        k = len(grads)
        for t, p in enumerate(params):
            slot = self._store.get(p)
            if slot is None:
                self._store[p] = [grads[i][t] for i in range(k)]
                continue
            for i in range(k):
                new = grads[i][t]
                if new is None:
                    continue
                slot[i] = new if slot[i] is None else slot[i] + new

    def _solve_and_write(
        self,
        params: list[torch.Tensor],
        grads: list[list[torch.Tensor | None]],
        accumulate: bool,
        reuse: bool = False,
    ) -> None:
        # backward checked the weights; a change in place since then is checked here, before
        # anything is computed (a version comparison when there was none).
        self._checked_weights(len(grads))
        steal = True  # whether the store's tensors may become .grad (with reuse)
        if self._group is not None:
            if self._sharded:
                self._sharded_solve_and_write(params, grads, accumulate)
                return
            grads = self._average(params, grads)
            steal = False  # views of K buffers, which a .grad would keep alive
        k = len(grads)
        gram_values = None
        if reuse and not accumulate and params and params[0].is_cpu and not self._scaling():
            # The wrapper's own store on CPU: the fused step in one pass over it.
            args = self._native_solve_cached(k)
            done = (
                None
                if args is None
                else _step_store(params, grads, self.store_dtype, *args, steal=steal)
            )
            if done is not None:
                gram_values, answer, fresh = done
                if answer is not None:
                    for p, t in fresh:
                        p.grad = t
                    self._record(_Deferred(k, gram_values, answer), k)
                    return
                # The C solve handed the Gram back; nothing was written.
        g = _own_grads(params, grads)
        # On CPU the weights as they are (None: uniform), on an accelerator on its device.
        w = self.weights if g.device.type == "cpu" else self._weights_for(k, g.device)
        agg = _aggregate(
            params,
            g,
            w,
            method=self.method,
            c=self.c,
            backend=self.backend,
            primitive_backend=self.primitive_backend,
            accumulate=accumulate,
            reuse=reuse and steal,
            unscale=self._unscale if self._scaling() else None,
            gram_values=gram_values,
        )
        self._record(agg, k)

    def _sharded_solve_and_write(
        self, params: list[torch.Tensor], grads: list[list[torch.Tensor | None]], accumulate: bool
    ) -> None:
        """The step across the process group in the sharded scheme (:func:`_sharded_aggregate`)."""
        k = len(grads)
        device = params[0].device
        agg = _sharded_aggregate(
            params,
            grads,
            self._slot_dtypes(params),
            self._group,
            self.weights if device.type == "cpu" else self._weights_for(k, device),
            method=self.method,
            c=self.c,
            backend=self.backend,
            primitive_backend=self.primitive_backend,
            accumulate=accumulate,
            unscale=self._unscale,
        )
        self._record(agg, k)

    def _average(
        self,
        params: list[torch.Tensor],
        grads: list[list[torch.Tensor | None]],
    ) -> list[list[torch.Tensor | None]]:
        """The per-objective gradients averaged across the process group
        (:func:`conflict_opt._distributed.average`); the entries of ``grads`` are dropped."""
        return _distributed.average(params, grads, self._slot_dtypes(params), self._group)

    def _slot_dtypes(self, params: list[torch.Tensor]) -> list[torch.dtype]:
        """The dtype of each parameter's gathered gradients: the store's in store mode where
        set (``_gradients`` converts them all), else the parameter's."""
        dtype = self.store_dtype if self.mode == "store" else None
        return [p.dtype if dtype is None else dtype for p in params]

    def _native_solve_cached(self, k: int) -> tuple[list[float], tuple] | None:
        """:func:`_native_solve` on CPU for this wrapper's options, kept while they and the
        weights' values (``Tensor._version`` counts in-place changes) stay the same."""
        w = self.weights
        key = (k, self.method, self.c, self.backend, self.primitive_backend)
        version = None if w is None else w._version
        cached = self._solve_args
        # The weight tensor itself is kept, so that its identity cannot pass to another one.
        if cached is None or cached[0] != key or cached[1] is not w or cached[2] != version:
            args = _native_solve(
                w, k, self.method, self.c, self.backend, self.primitive_backend, _CPU
            )
            cached = self._solve_args = (key, w, version, args)
        return cached[3]

    def _gram_first(
        self, items: list[torch.Tensor], params: list[torch.Tensor], retain_graph: bool = False
    ) -> None:
        k = len(items)
        device = items[0].device
        for t, p in enumerate(params):
            if not p.is_floating_point():
                # The store's checks name such a parameter; here the norms would fail inside
                # torch with a message about vector_norm.
                raise ValueError(
                    f"parameter {t} (shape {tuple(p.shape)}) has dtype {p.dtype}: the "
                    f"gradients must be one of {FLOAT_DTYPES}."
                )

        def sq_norm(loss: torch.Tensor) -> torch.Tensor:
            g = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            if self._group is not None:
                g = self._average(params, [list(g)])[0]
            # A sparse gradient (nn.Embedding(sparse=True)) has its norm in its coalesced
            # values (coalescing sums repeated indices first).
            present = [
                x if x.layout is torch.strided else x.coalesce().values()
                for x in g
                if x is not None
            ]
            if not present:
                return torch.zeros((), dtype=torch.float64, device=device)
            return sum(torch.linalg.vector_norm(x, dtype=torch.float64) ** 2 for x in present)

        diag = [sq_norm(loss) for loss in items]
        h = torch.zeros(k, k, dtype=torch.float64, device=device)
        for i in range(k):
            h[i, i] = diag[i]
            for j in range(i + 1, k):
                h[i, j] = h[j, i] = 0.5 * (sq_norm(items[i] + items[j]) - diag[i] - diag[j])
        h = self._unscale(h)
        w = self._weights_for(k, device)
        result = solve(h, w, method=self.method, c=self.c, backend=self.backend, validate=False)
        # With bfloat16 or float16 losses the coefficients reach the graph in that dtype
        # whatever the dtype of this sum: autograd hands a loss its gradient in the loss's own
        # dtype (documented: compute such losses in float32).
        coeffs = result.coeffs.to(items[0].dtype)
        total = (torch.stack(items) * coeffs).sum()
        if params and self._group is not None:
            # Averaged before it reaches .grad (a backward() would also fire the hooks of a
            # DistributedDataParallel module, which would average .grad a second time).
            g = torch.autograd.grad(total, params, retain_graph=retain_graph, allow_unused=True)
            averaged = self._average(params, [list(g)])[0]
            for p, x in zip(params, averaged, strict=True):
                if x is None:
                    continue
                if p.grad is None:
                    p.grad = x  # a view of this pass's one buffer, which only .grad holds
                else:
                    p.grad.add_(x)
        elif params:
            # Accumulates Σ a_k g_k into .grad; frees the graph unless asked to keep it.
            total.backward(inputs=params, retain_graph=retain_graph)
        self._record(Aggregation(result, h), k)

    def _record(self, agg: Aggregation | _Deferred, k: int) -> None:
        # The fused path answers finite Grams only (a non-finite one goes to the torch path).
        bad = False if isinstance(agg, _Deferred) else ~torch.isfinite(agg.gram).all()
        self._nonfinite = bad if self._nonfinite is None else self._nonfinite | bad
        # The diagnostics are a function of (Gram, weights, result), computed when last_info is
        # read: about a dozen small ops that a step whose diagnostics nobody reads need not pay.
        # The user's weight tensor may change in place before then: keep this solve's values.
        weights = None if self.weights is None else self.weights.tolist()
        self._info_source = (agg, weights, k)
        self._skipped = None

    @property
    def last_info(self) -> dict[str, torch.Tensor]:
        """Diagnostics of the last solve, as a dict of tensors on the Gram's device.

        Keys: ``coeffs``, ``dual``, ``clipped``, ``clipping_active``, ``pairwise_cosines``,
        ``directional``, ``cosines``, ``relative_norm``, ``status``, ``gap``, ``iterations``,
        ``gram``, and after ``step`` without a scaler ``skipped``. Empty before the first
        solve. Computed from the kept K×K Gram and solve result on first read after a solve
        (no host synchronisation either way).
        """
        if self._info_source is not None:
            agg, weights, k = self._info_source
            if isinstance(agg, _Deferred):
                agg = agg.materialise()
            device = agg.gram.device
            if weights is None:
                w = torch.full((k,), 1.0 / k, dtype=torch.float64, device=device)
            else:
                w = torch.tensor(weights, dtype=torch.float64, device=device)
            self._info = _info(agg.gram, w, agg.result)
            self._info_source = None
        if self._skipped is not None:
            self._info["skipped"] = torch.tensor(self._skipped)
        else:
            self._info.pop("skipped", None)
        return self._info

    def step(
        self,
        losses: Sequence[torch.Tensor] | torch.Tensor | Callable[[], Any] | None = None,
        *,
        closure: Callable[[], Any] | None = None,
    ) -> Any:
        """Solve and write ``.grad`` (unless done per micro-batch or by :meth:`aggregate`),
        then call the inner step.

        Args:
            losses: shortcut for ``backward(losses)`` first. A callable here is taken as
                ``closure`` (torch's ``optimizer.step(closure)`` is positional).
            closure: for inner optimizers that evaluate the objective more than once per
                step (``torch.optim.LBFGS``, whose ``step`` requires a closure). It re-runs
                the model and returns the K losses, as for :meth:`backward`, without calling
                any backward itself. Each evaluation clears ``.grad`` (as a torch closure's
                ``zero_grad()`` would), gathers the K gradients, solves, writes ``.grad``, and
                returns Σ_k w_k L_k (float64, detached) as the loss the inner optimizer reads.
                The first evaluation runs before the inner step, so that a NaN/Inf loss raises
                and a non-finite Gram skips the step (with ``check_finite``) with nothing
                written to the parameters; the inner step's first call of the closure returns
                it without evaluating again. Later evaluations (LBFGS's line search) check the
                losses too, but by then the inner optimizer has moved the parameters (the
                error says so), and a non-finite Gram there reaches the inner optimizer, as
                it would in its own training loop.

        Returns:
            What the inner ``step`` returns (with a closure, LBFGS and torch's other optimizers
            return the first evaluation's loss); ``None`` for a skipped step without a closure.

        Raises:
            RuntimeError: no ``backward`` since the last step, or ``backward`` already ran
                when a closure is given.
            ValueError: both ``losses`` and ``closure``, a closure with a ``scaler`` (as
                ``GradScaler`` refuses closures), or no closure for an inner optimizer whose
                ``step`` requires one; with a process group, on every rank, ranks whose step
                came after different numbers of micro-batches (or that disagree on K or the
                parameters). Nothing is written to the parameters in any of these cases.
        """
        if callable(losses) and not isinstance(losses, torch.Tensor):
            if closure is not None:
                raise ValueError("got a callable for `losses` and a `closure`: pass one.")
            losses, closure = None, losses
        if closure is not None:
            return self._step_closure(losses, closure)
        if self._needs_closure:
            raise ValueError(
                f"{type(self.optimizer).__name__}.step requires a closure: call "
                "opt.step(closure=fn) with fn re-running the model and returning the K losses."
            )
        if losses is not None:
            self.backward(losses)
        if self._aggregated:  # .grad written by aggregate()
            nonfinite = self._aggregated_nonfinite
            self._aggregated, self._aggregated_nonfinite = False, None
        elif not self._pending:
            raise RuntimeError("call backward(losses) (or step(losses)) before step().")
        else:
            nonfinite = self._write()
        if self.scaler is not None:
            # GradScaler unscales .grad, checks it for inf/NaN and skips the inner step if so;
            # whether it did is its own record (scaler.get_scale() drops after a skip), so
            # last_info has no "skipped" entry here.
            out = self.scaler.step(self.optimizer)
            self._skipped = None
            self.steps += 1
            return out
        if self.check_finite and nonfinite is not None and bool(nonfinite):
            # As GradScaler does with inf/NaN gradients: nothing reaches the parameters.
            self._skipped = True
            self.steps += 1
            return None
        out = self.optimizer.step()
        self._skipped = False
        self.steps += 1
        return out

    def _write(self) -> torch.Tensor | bool | None:
        """Solve the stored step (store mode, per step), write ``.grad``, drop the store;
        returns whether any Gram of the step was non-finite.

        Across the ranks of a process group, first check that all are at this step after as
        many micro-batches (in every mode: where ``backward`` wrote ``.grad``, a rank whose
        step came early would otherwise take it alone)."""
        store = self.mode == "store" and self.accumulation == "per_step"
        if store:
            # The parameters are those the backward passes took: one frozen since then still
            # takes part, as its .grad would in plain torch (and in the other modes, which
            # write .grad at backward).
            if self._first is not None:
                params, grads = self._first
            else:
                params = list(self._store)
                grads = [[self._store[p][i] for p in params] for i in range(self._k or 0)]
        else:
            params = self._passed
        if self._group is not None:
            _distributed.agree(
                params,
                self._k or 0,
                self._group,
                params[0].device,
                call="step",
                micro_batch=self._micro_batches,
                settings=self._settings(self._k or 0),
            )
        if store:
            if self._group is not None:
                # The lists above become the only holders of the local gradients, which the
                # averaging drops as it packs them.
                self._first = None
                self._store.clear()
            # A .grad that exists now (another backward's gradient, or zeros after
            # zero_grad(set_to_none=False)) is added to, as backward adds and as the other modes
            # do. The store is the wrapper's own and is dropped below: its tensors may become
            # .grad where there is none.
            accumulate = any(p.grad is not None for p in params)
            self._solve_and_write(params, grads, accumulate=accumulate, reuse=True)
        nonfinite = self._nonfinite
        self._reset()
        return nonfinite

    def _step_closure(self, losses: Any, closure: Callable[[], Any]) -> Any:
        if losses is not None:
            raise ValueError("got both `losses` and a `closure`: the closure returns the losses.")
        if not callable(closure):
            raise ValueError(f"`closure` must be callable, got {type(closure).__name__}.")
        if self._pending or self._aggregated:
            raise RuntimeError(
                "backward(losses) already ran for this step, and step(closure=...) gathers its "
                "own gradients: call step() to use them, or zero_grad() to drop them."
            )
        if self.scaler is not None:
            raise ValueError("a closure cannot be used with a GradScaler (torch refuses it too).")

        def evaluate(again: bool) -> tuple[torch.Tensor, torch.Tensor | bool | None]:
            self.zero_grad(set_to_none=True)
            with torch.enable_grad():
                losses = closure()
            items, nonfinite = self._announced(self._losses, losses)
            try:
                self._gather(items, nonfinite)
            except FloatingPointError as err:
                if not again:
                    raise
                raise FloatingPointError(
                    f"{err} This was a re-evaluation inside "
                    f"{type(self.optimizer).__name__}.step: the parameters hold its trial point."
                ) from None
            nonfinite = self._write()
            device = items[0].device
            w = self._weights_for(len(items), device)
            value = torch.stack([loss.detach().to(device, torch.float64) for loss in items]) @ w
            if self._group is not None:  # the inner optimizer's line search: the same everywhere
                value = _distributed.mean_of(value, self._group)
            return value, nonfinite

        value, nonfinite = evaluate(again=False)
        if self.check_finite and nonfinite is not None and bool(nonfinite):
            self._skipped = True
            self.steps += 1
            return value
        first: list[torch.Tensor] = [value]

        def inner() -> torch.Tensor:
            return first.pop() if first else evaluate(again=True)[0]

        out = self.optimizer.step(inner)
        self._skipped = False
        self.steps += 1
        return out

    def __repr__(self) -> str:
        return (
            f"MultiObjectiveOptimizer({type(self.optimizer).__name__}, method={self.method!r}, "
            f"c={self.c}, mode={self.mode!r}, accumulation={self.accumulation!r}"
            + (f", world_size={self.world_size})" if self._group is not None else ")")
        )
