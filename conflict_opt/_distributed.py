"""Data parallelism for :class:`conflict_opt.MultiObjectiveOptimizer`.

Under data parallelism each of W ranks holds a shard of the batch, and the gradient of
objective k is the mean of the ranks' local ones, ḡ_k = (1/W) Σ_r g_k^r (for losses that are
means over equal shards, exactly the full batch's gradient). The solve needs the Gram of those
global gradients, H_ij = ⟨ḡ_i, ḡ_j⟩. The mean of the ranks' own Grams is not it: it adds the
covariance of the gradients between ranks, (1/W) Σ_r ⟨g_i^r, g_j^r⟩ − ⟨ḡ_i, ḡ_j⟩, which does not
vanish as training converges. So every objective's gradient is all-reduced (K·P values per step,
where ``DistributedDataParallel`` sends P for one loss); then every rank holds the same Gram,
solves the same problem and writes the same ``.grad``, and replicas stay identical.

``DistributedDataParallel`` cannot do this for the wrapper: its reducer hooks fire when a
gradient is accumulated into ``.grad``, and the wrapper's per-objective passes
(``torch.autograd.grad``) accumulate nothing, so a DDP-wrapped model trained through the wrapper
without this module gets only local gradients, and its replicas drift apart without any error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["average", "mean_of", "nonfinite_ranks", "resolve_group"]


def resolve_group(process_group: Any) -> Any | None:
    """The process group whose ranks' gradients are averaged, or ``None`` for none.

    ``None`` means torch.distributed's default group when it is initialised (as
    ``DistributedDataParallel`` defaults to it); a group of one rank means no communication.
    """
    if process_group is None:
        if not (dist.is_available() and dist.is_initialized()):
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


def nonfinite_ranks(finite: bool, group: Any, device: torch.device) -> int:
    """How many ranks of ``group`` saw a non-finite loss, so that all of them raise together
    (a rank that raised alone would leave the others waiting in the next collective)."""
    flag = torch.tensor([0 if finite else 1], dtype=torch.int64, device=device)
    dist.all_reduce(flag, group=group)
    return int(flag.item())


def mean_of(value: torch.Tensor, group: Any) -> torch.Tensor:
    """The mean of a tensor across the ranks of ``group`` (a new tensor)."""
    out = value.clone()
    dist.all_reduce(out, group=group)
    return out / dist.get_world_size(group)


def _agree(params: Sequence[torch.Tensor], k: int, group: Any, device: torch.device) -> None:
    """Check that every rank has the same number of objectives, trainable parameters and values,
    so that the collectives that follow match across ranks: a mismatch would otherwise hang, or
    sum unrelated values. One collective of 6 values (MAX of x and of −x gives max and min)."""
    mine = [k, len(params), sum(p.numel() for p in params)]
    sig = torch.tensor([*mine, *(-v for v in mine)], dtype=torch.int64, device=device)
    dist.all_reduce(sig, op=dist.ReduceOp.MAX, group=group)
    values = sig.tolist()
    high, low = values[:3], [-v for v in values[3:]]
    if high != low:
        names = ("losses", "trainable parameters", "trainable values")
        spread = ", ".join(
            f"{n}: {lo}..{hi}" for n, lo, hi in zip(names, low, high, strict=True) if lo != hi
        )
        raise ValueError(
            f"the ranks of the process group disagree on the step ({spread}; this rank: "
            f"{mine[0]} losses, {mine[1]} trainable parameters, {mine[2]} values). Every rank "
            "must pass the same number of losses and train the same parameters."
        )


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

    Collectives: one of 6 values (:func:`_agree`), one of K·T reach flags, then one sum per
    objective and dtype. One host read of the flags.

    Raises:
        ValueError: parameters on several devices, a sparse gradient, or ranks that disagree
            on the number of losses or parameters (every rank raises).
    """
    k = len(grads)
    devices = {p.device for p in params}
    if len(devices) != 1:
        raise ValueError(
            f"averaging across ranks needs every trainable parameter on one device, got "
            f"{sorted(map(str, devices))}."
        )
    device = devices.pop()
    # Before any collective, so that ranks with the same model all raise here together.
    for i, row in enumerate(grads):
        for t, g in enumerate(row):
            if g is not None and g.layout is not torch.strided:
                raise ValueError(
                    f"parameter {t} (shape {tuple(params[t].shape)}) got a {g.layout} gradient "
                    f"from objective {i}: averaging across ranks needs dense gradients. Build "
                    "the module with sparse=False (nn.Embedding)."
                )
    _agree(params, k, group, device)
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
            buf = torch.empty(sum(params[t].numel() for t in slots), dtype=dtype, device=device)
            offset = 0
            for t in slots:
                n = params[t].numel()
                view = buf[offset : offset + n].view(params[t].shape)
                offset += n
                g = row[t]
                if g is None:
                    view.zero_()
                else:
                    # Divided while packed, as DistributedDataParallel divides before its sum.
                    torch.div(g, world, out=view)
                    row[t] = None
                out[i][t] = view
            works.append(dist.all_reduce(buf, group=group, async_op=True))
    for work in works:
        work.wait()
    return out
