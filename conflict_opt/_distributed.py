"""Data parallelism for :class:`conflict_opt.MultiObjectiveOptimizer`.

Under data parallelism each of W ranks holds a shard of the batch, and the gradient of
objective k is the mean of the ranks' local ones, ḡ_k = (1/W) Σ_r g_k^r (for losses that are
means over equal shards, exactly the full batch's gradient). The solve needs the Gram of those
global gradients, H_ij = ⟨ḡ_i, ḡ_j⟩. The mean of the ranks' own Grams is not it: it adds the
covariance of the gradients between ranks, (1/W) Σ_r ⟨g_i^r, g_j^r⟩ − ⟨ḡ_i, ḡ_j⟩, which does not
vanish as training converges. So every objective's gradient is all-reduced (K·P values per step,
where ``DistributedDataParallel`` sends P for one loss); then every rank holds the same Gram,
solves the same problem and writes the same ``.grad``, and replicas stay identical.

Two schemes do it in store mode:

* :func:`average`: one all-reduce of each objective's gradient; then each rank runs the whole
  step as one process would (on CPU, the fused native step).
* Sharded (:func:`scatter`, :func:`gather`): a reduce-scatter gives each rank 1/W of every
  averaged gradient; the Gram is a sum over shards, so each rank computes its shard's and a
  K×K all-reduce completes it; each rank combines its shard and an all-gather assembles the
  direction. Where the reduce-scatter is a ring's first half (NCCL, whose all-reduce is a
  reduce-scatter then an all-gather), this moves (K + 1)·P values per rank instead of 2K·P,
  and each rank does 1/W of the Gram's and the combination's work. Gloo's reduce-scatter
  costs as much as its all-reduce (measured on 2 CPU ranks: 11.3 against 10.2 ms for four
  buffers of 600K values), and the sharded step also gives up the fused CPU step, so gloo
  uses the first scheme (:data:`SHARDED_BACKENDS`).

Gram-first mode, which keeps one gradient at a time, all-reduces each pass (:func:`average`).

``DistributedDataParallel`` cannot do this for the wrapper: its reducer hooks fire when a
gradient is accumulated into ``.grad``, and the wrapper's per-objective passes
(``torch.autograd.grad``) accumulate nothing, so a DDP-wrapped model trained through the wrapper
without this module gets only local gradients, and its replicas drift apart without any error.
"""

from __future__ import annotations

import itertools
import math
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.distributed as dist

from ._types import FLOAT_DTYPES, OPTIMIZER_OPTIONS

try:  # torch >= 2.4; absent from builds without torch.distributed
    from torch.distributed.tensor import DTensor as _DTENSOR
except ImportError:  # pragma: no cover - depends on the torch build
    _DTENSOR = None

__all__ = [
    "CALLS",
    "SETTINGS",
    "SHARDED_BACKENDS",
    "Shards",
    "agree",
    "average",
    "check_whole",
    "gather",
    "initialised",
    "mean_of",
    "resolve_group",
    "scatter",
    "sharded",
]


# The torch.distributed backends that take the sharded scheme (the others all-reduce).
SHARDED_BACKENDS = frozenset({"nccl"})


def sharded(group: Any) -> bool:
    """Whether the store mode's step across ``group`` is sharded (module docstring)."""
    return dist.get_backend(group) in SHARDED_BACKENDS


def initialised() -> bool:
    """Whether torch.distributed is available and its default group initialised."""
    return dist.is_available() and dist.is_initialized()


def resolve_group(process_group: Any) -> Any | None:
    """The process group whose ranks' gradients are averaged, or ``None`` for none.

    ``None`` means torch.distributed's default group when it is initialised (as
    ``DistributedDataParallel`` defaults to it); a group of one rank means no communication.
    """
    if process_group is None:
        if not initialised():
            return None
        group = dist.group.WORLD
    else:
        if not dist.is_available():
            raise ValueError(
                "`process_group` was given, but this torch build has no torch.distributed."
            )
        if not isinstance(process_group, dist.ProcessGroup):
            raise ValueError(
                "`process_group` must be a torch.distributed.ProcessGroup or None, got "
                f"{type(process_group).__name__}."
            )
        group = process_group
    return group if dist.get_world_size(group) > 1 else None


def mean_of(value: torch.Tensor, group: Any) -> torch.Tensor:
    """The mean of a tensor across the ranks of ``group`` (a new tensor)."""
    out = value.clone()
    dist.all_reduce(out, group=group)
    return out / dist.get_world_size(group)


# What a rank is doing when it calls agree(): the collectives that follow depend on it.
CALLS = ("backward", "step", "aggregate_")


# The settings compared by agree(), in this order. Every caller sends all of them (a setting
# it does not have as a placeholder), so that the handshake has one length whoever calls it: a
# rank in the wrapper's backward and one in aggregate_ then disagree on `call`, instead of
# exchanging buffers of two sizes (which gloo answers by aborting the process).
SETTINGS = (*OPTIMIZER_OPTIONS, "accumulate", "weights")
# The parameter dtypes whose values are counted apart: a dtype that differs between ranks
# would give the averaging buffers of other sizes.
_COUNTED = FLOAT_DTYPES
_COUNTS = (
    "call",
    "micro-batch",
    "losses",
    "trainable parameters",
    "trainable values",
    *(f"{str(d).removeprefix('torch.')} values" for d in _COUNTED),
)
_ABSENT = -1  # a setting the caller does not have (CRC-32 codes are not negative)


def agree(
    params: Sequence[torch.Tensor],
    k: int,
    group: Any,
    device: torch.device,
    *,
    call: str,
    micro_batch: int,
    finite: bool = True,
    settings: Mapping[str, Any] | None = None,
    error: BaseException | None = None,
) -> list[int]:
    """Check that every rank of ``group`` is at the same point of the same step, before the
    collectives of that point, and return the ranks that saw a non-finite loss.

    ``error``: this rank's own checks failed before it could take part (a loss without grad,
    say, which may happen on one rank only); it joins the handshake to say so instead of
    leaving the others waiting in it, and every rank learns every failed rank's message (one
    more collective, only then). The other ranks raise ValueError naming them; this rank
    returns, and its caller raises its own error.

    Collectives pair up by their order alone, so ranks that differ in any of these would sum
    unrelated buffers or wait until the backend's timeout; each is compared:

    * ``call``: ``"backward"``, ``"step"`` (which also stands for the wrapper's ``aggregate``)
      or ``"aggregate_"`` (the function);
    * ``micro_batch``: in ``backward``, which micro-batch of the step this is (from 1); in
      ``step``, how many there were. A rank that called ``backward`` once more than the others
      meets their ``step`` (or their next step's first ``backward``) here;
    * the number of objectives, of trainable parameters and of their values, in all and per
      float dtype (not their shapes);
    * ``settings``: values by name, from :data:`SETTINGS`, that must be equal on every rank,
      compared by a CRC-32 of their ``repr`` (exact for floats and lists of floats): the
      options and weights, which would otherwise make the ranks solve different problems, and
      their replicas drift apart without an error. Those not given count as absent.

    One collective of 2·(9 + 10) + W integers, whoever calls it (MAX of x and of −x gives max
    and min; one code per rank: 1 for a non-finite loss, 2 for an ``error``), and one host
    read.

    Raises:
        ValueError: the ranks disagree (every rank raises, naming the spread of each count and
            the settings that differ, with this rank's values).
    """
    settings = dict(settings or {})
    unknown = set(settings) - set(SETTINGS)
    if unknown:
        raise ValueError(f"unknown settings {sorted(unknown)}; known: {SETTINGS}.")
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    per_dtype = dict.fromkeys(_COUNTED, 0)
    for p in params:
        if p.dtype in per_dtype:
            per_dtype[p.dtype] += p.numel()
    mine = [CALLS.index(call), micro_batch, k, len(params), sum(p.numel() for p in params)]
    mine += per_dtype.values()
    mine += [
        zlib.crc32(repr(settings[name]).encode()) if name in settings else _ABSENT
        for name in SETTINGS
    ]
    n = len(mine)
    sig = [*mine, *(-v for v in mine), *([0] * world)]
    sig[2 * n + rank] = 2 if error is not None else 0 if finite else 1
    reduced = torch.tensor(sig, dtype=torch.int64, device=device)
    dist.all_reduce(reduced, op=dist.ReduceOp.MAX, group=group)
    values = reduced.tolist()
    codes = values[2 * n :]
    failed = [r for r, code in enumerate(codes) if code == 2]
    if failed:  # before the comparison: a failed rank's counts are not meaningful
        mine_text = None if error is None else f"{type(error).__name__}: {error}"
        messages: list[Any] = [None] * world
        dist.all_gather_object(messages, mine_text, group=group)
        if error is not None:
            return []
        listed = "; ".join(f"rank {r}: {messages[r]}" for r in failed[:4])
        more = f" (and {len(failed) - 4} more)" if len(failed) > 4 else ""
        raise ValueError(
            f"{len(failed)} of {world} ranks raised in their own checks before their "
            "collectives, so this rank stops too, with nothing computed or written on any "
            f"rank ({listed}{more})."
        )
    high, low = values[:n], [-v for v in values[n : 2 * n]]
    if high != low:
        raise ValueError(_disagreement(high, low, mine, settings, call, micro_batch))
    return [r for r, code in enumerate(codes) if code]


def _disagreement(
    high: list[int],
    low: list[int],
    mine: list[int],
    settings: dict[str, Any],
    call: str,
    micro_batch: int,
) -> str:
    """:func:`agree`'s message: the spread of each count that differs across the ranks, the
    settings that differ with this rank's values, and where this rank is."""

    def shown(name: str, value: int) -> str:
        return CALLS[value] if name == "call" else str(value)

    counted = len(_COUNTS)
    parts = [
        ", ".join(
            f"{name}: {shown(name, lo)}..{shown(name, hi)}"
            for name, lo, hi in zip(_COUNTS, low, high, strict=False)
            if lo != hi
        ),
        ", ".join(
            f"{name}={settings[name]!r}" if name in settings else f"{name} not used"
            for name, lo, hi in zip(SETTINGS, low[counted:], high[counted:], strict=True)
            if lo != hi
        ),
    ]
    if parts[1]:
        parts[1] = f"options that differ, this rank's: {parts[1]}"
    where = {
        "backward": f"backward() of micro-batch {micro_batch}",
        "step": f"step() after {micro_batch} micro-batch{'' if micro_batch == 1 else 'es'}",
        "aggregate_": "aggregate_()",
    }[call]
    return (
        f"the ranks of the process group disagree on the step ({'; '.join(filter(None, parts))}; "
        f"this rank: {where}, {mine[2]} losses, {mine[3]} trainable parameters, {mine[4]} "
        "values). Every rank must call backward() as often per step as the others, pass the "
        "same number of losses, train the same parameters and use the same options and weights."
    )


def _shard_kind(p: torch.Tensor) -> str | None:
    """What makes ``p`` one rank's shard of a parameter, or None for a whole one.

    * A DTensor: FSDP2 and tensor parallelism.
    * FSDP1 (``FullyShardedDataParallel``): it sets the attribute ``_fsdp_flattened`` on its
      ``FlatParameter`` and, with ``use_orig_params=True``, on each original parameter, which
      is then a view into the rank's shard of the flat parameter (possibly empty)
      (``torch.distributed.fsdp._common_utils``; private, but the only mark FSDP1 leaves).
      The flat parameter is a plain ``nn.Parameter`` by type: FSDP1's ``isinstance`` check
      goes through its metaclass, so its class name cannot identify it.
    """
    if _DTENSOR is not None and isinstance(p, _DTENSOR):
        return "a DTensor"
    if getattr(p, "_is_flat_param", False):
        return "FSDP1's FlatParameter"
    if getattr(p, "_fsdp_flattened", False):
        return "a parameter managed by FSDP1 (use_orig_params=True)"
    return None


def check_whole(params: Sequence[torch.Tensor]) -> None:
    """Raise for a parameter sharded across the ranks: averaging the ranks' shards would sum
    unrelated values. Called before the gradient passes, so that nothing is computed."""
    for t, p in enumerate(params):
        kind = _shard_kind(p)
        if kind is not None:
            raise ValueError(
                f"parameter {t} ({kind}, of shape {tuple(p.shape)}) is sharded across ranks "
                "(FSDP, DTensor): averaging per-objective gradients needs every rank to hold "
                "every trainable parameter whole, as DistributedDataParallel does."
            )


def _one_device(
    params: Sequence[torch.Tensor], grads: list[list[torch.Tensor | None]]
) -> torch.device:
    """The one device of the parameters; raises for several, or for a sparse gradient. Runs
    before any collective, so that ranks with the same model all raise here together."""
    devices = {p.device for p in params}
    if len(devices) != 1:
        raise ValueError(
            f"averaging across ranks needs every trainable parameter on one device, got "
            f"{sorted(map(str, devices))}."
        )
    for i, row in enumerate(grads):
        for t, g in enumerate(row):
            if g is not None and g.layout is not torch.strided:
                raise ValueError(
                    f"parameter {t} (shape {tuple(params[t].shape)}) got a {g.layout} gradient "
                    f"from objective {i}: averaging across ranks needs dense gradients. Build "
                    "the module with sparse=False (nn.Embedding)."
                )
    return devices.pop()


def _offsets(params: Sequence[torch.Tensor], slots: Sequence[int]) -> tuple[list[int], int]:
    """Where each of ``slots`` starts when their parameters are laid end to end, and the
    total."""
    offsets = list(itertools.accumulate((params[t].numel() for t in slots), initial=0))
    return offsets, offsets.pop()


def _pack(
    buf: torch.Tensor,
    params: Sequence[torch.Tensor],
    slots: Sequence[int],
    offsets: Sequence[int],
    row: list[torch.Tensor | None],
    world: int,
) -> list[torch.Tensor]:
    """Lay one objective's gradients of ``slots`` into ``buf`` at ``offsets``, each divided by
    W (as DistributedDataParallel divides before its sum), zero where ``row`` has none; clear
    the packed entries of ``row`` (so that a rank holds them once, not twice) and return the
    views, in the parameters' shapes."""
    views = []
    for t, offset in zip(slots, offsets, strict=True):
        view = buf[offset : offset + params[t].numel()].view(params[t].shape)
        g = row[t]
        if g is None:
            view.zero_()
        else:
            torch.div(g, world, out=view)
            row[t] = None
        views.append(view)
    return views


def average(
    params: Sequence[torch.Tensor],
    grads: list[list[torch.Tensor | None]],
    dtypes: Sequence[torch.dtype],
    group: Any,
) -> list[list[torch.Tensor | None]]:
    """Average K lists of T per-parameter gradients across the ranks of ``group``.

    A gradient one rank lacks (``None``: its objective did not reach the parameter there) counts
    as zero; a slot no rank reaches stays ``None``. Each rank's gradients are divided by W while
    they are packed into one contiguous buffer per objective and dtype (``dtypes[t]`` is slot
    t's, the same on every rank), the buffers are all-reduced together, and the result is
    returned as views of them, in the parameters' shapes. The entries of ``grads`` are cleared
    as they are packed, so that a rank holds each objective's gradients once, not twice.

    Collectives: one of K·T reach flags, then one sum per objective and dtype. One host read
    of the flags. The caller has checked with :func:`agree` that the ranks are at the same
    point of the step, with the same K and parameters.

    Raises:
        ValueError: parameters on several devices, or a sparse gradient.
    """
    k = len(grads)
    device = _one_device(params, grads)
    flags = torch.tensor(
        [[g is not None for g in row] for row in grads], dtype=torch.int64, device=device
    )
    dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=group)
    reached = flags.tolist()
    world = dist.get_world_size(group)
    out: list[list[torch.Tensor | None]] = [[None] * len(params) for _ in range(k)]
    works = []
    for i, row in enumerate(grads):
        by_dtype: dict[torch.dtype, list[int]] = {}
        for t, hit in enumerate(reached[i]):
            if hit:
                by_dtype.setdefault(dtypes[t], []).append(t)
        for dtype, slots in by_dtype.items():
            offsets, numel = _offsets(params, slots)
            buf = torch.empty(numel, dtype=dtype, device=device)
            for t, view in zip(slots, _pack(buf, params, slots, offsets, row, world), strict=True):
                out[i][t] = view
            works.append(dist.all_reduce(buf, group=group, async_op=True))
    for work in works:
        work.wait()
    return out


# torch 2.13 renamed these (the old names warn); older releases have only the old ones.
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


class Shards(NamedTuple):
    """One buffer group of :func:`scatter`: the slots whose gradients share one dtype and whose
    parameters have ``out_dtype``, laid end to end (``offsets``; ``numel`` values, padded to
    W·``size``), and this rank's ``size`` values of each objective's average (``grads``, in
    the gradients' dtype)."""

    slots: list[int]
    offsets: list[int]
    numel: int
    size: int
    out_dtype: torch.dtype
    grads: list[torch.Tensor]


def scatter(
    params: Sequence[torch.Tensor],
    grads: list[list[torch.Tensor | None]],
    dtypes: Sequence[torch.dtype],
    group: Any,
) -> list[Shards]:
    """This rank's shard of each objective's gradient averaged across ``group``.

    The slots that some objective reaches on some rank are laid end to end, in one buffer per
    (gradient dtype, parameter dtype), the same layout for every objective (zero where an
    objective or a rank does not reach a slot), each rank's values divided by W as they are
    packed. A reduce-scatter per objective and buffer leaves rank r the r-th of W equal parts of
    the sum. The entries of ``grads`` are cleared as they are packed. A slot no objective
    reaches on any rank is in no buffer.

    Collectives: one of T reach flags (one host read), one reduce-scatter per objective and
    buffer. The caller has checked with :func:`agree` that the ranks are at the same point of
    the step, with the same K and parameters.
    """
    device = _one_device(params, grads)
    flags = torch.tensor(
        [any(row[t] is not None for row in grads) for t in range(len(params))],
        dtype=torch.int64,
        device=device,
    )
    dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=group)
    world = dist.get_world_size(group)
    layout: dict[tuple[torch.dtype, torch.dtype], list[int]] = {}
    for t, hit in enumerate(flags.tolist()):
        if hit:
            layout.setdefault((dtypes[t], params[t].dtype), []).append(t)
    out: list[Shards] = []
    works = []
    for (dtype, out_dtype), slots in layout.items():
        offsets, numel = _offsets(params, slots)
        size = math.ceil(numel / world)
        shards = []
        for row in grads:
            buf = torch.empty(world * size, dtype=dtype, device=device)
            buf[numel:].zero_()
            _pack(buf, params, slots, offsets, row, world)
            shard = torch.empty(size, dtype=dtype, device=device)
            if size:
                works.append(_reduce_scatter(shard, buf, group=group, async_op=True))
            shards.append(shard)
        out.append(Shards(slots, offsets, numel, size, out_dtype, shards))
    for work in works:
        work.wait()
    return out


def gather(
    params: Sequence[torch.Tensor],
    shards: Sequence[Shards],
    combined: Sequence[torch.Tensor],
    group: Any,
    accumulate: bool,
) -> None:
    """Assemble each buffer's combined direction from every rank's part (``combined[j]``,
    ``shards[j].size`` values) with one all-gather, and write it into ``.grad``: added with
    ``accumulate``, else copied into an existing ``.grad``; a missing ``.grad`` becomes a view
    of the gathered buffer, which then holds nothing but ``.grad`` values and padding."""
    world = dist.get_world_size(group)
    fulls = []
    works = []
    for part, values in zip(shards, combined, strict=True):
        full = torch.empty(world * part.size, dtype=part.out_dtype, device=values.device)
        if part.size:
            works.append(_all_gather(full, values, group=group, async_op=True))
        fulls.append(full)
    for work in works:
        work.wait()
    for part, full in zip(shards, fulls, strict=True):
        for t, offset in zip(part.slots, part.offsets, strict=True):
            p = params[t]
            view = full[offset : offset + p.numel()].view(p.shape)
            if p.grad is None:
                p.grad = view
            elif accumulate:
                p.grad.add_(view)
            else:
                p.grad.copy_(view)
