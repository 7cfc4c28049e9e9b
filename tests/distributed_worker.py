"""The ranks of tests/test_distributed.py: a model, its sharded data, and scenarios that each
rank runs through ``MultiObjectiveOptimizer`` in a gloo process group on CPU.

Spawned processes import this module by name, so it holds no test and no fixture. Each rank
saves ``{scenario: result}`` with ``torch.save``; a scenario that raises records the exception's
type and message instead, so that the parent test reports it.
"""

from __future__ import annotations

import datetime
import functools
import os
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

import conflict_opt
from conflict_opt import _distributed

K = 3
WEIGHTS = [0.5, 0.3, 0.2]
STEPS = 3


class Net(nn.Module):
    """A shared trunk and one head per objective, plus three awkward parameters: ``extra``,
    which objective 1 reaches on shard 0 only, ``unused``, which nothing reaches, and the
    zero-size ``empty``, which objective 0 reaches."""

    def __init__(self, k: int = K, double: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 8))
        self.heads = nn.ModuleList(nn.Linear(8, 1) for _ in range(k))
        # float64 with `double`: two dtypes, so one averaged buffer per objective and dtype.
        # 5 values: 283 in all, which two ranks cannot split evenly (the shards' padding).
        self.extra = nn.Parameter(torch.randn(5, dtype=torch.float64 if double else None))
        self.unused = nn.Parameter(torch.randn(3))
        self.empty = nn.Parameter(torch.zeros(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)


def shard_losses(
    model: nn.Module, net: Net, step: int, shard: int, micro: int = 0
) -> list[torch.Tensor]:
    """The K losses of one shard's micro-batch (means over 8 rows). ``model`` runs the
    forward (``net`` itself, or a ``DistributedDataParallel`` around it)."""
    gen = torch.Generator().manual_seed(10_000 * step + 100 * shard + micro)
    dtype = net.trunk[0].weight.dtype  # float64 for a model made double
    x = torch.randn(8, 6, generator=gen).to(dtype)
    y = torch.randn(len(net.heads), 8, 1, generator=gen).to(dtype)
    z = model(x)
    losses = [((head(z) - y[i]) ** 2).mean() for i, head in enumerate(net.heads)]
    losses[0] = losses[0] + net.empty.sum()
    if shard == 0:
        losses[1] = losses[1] + 0.1 * (net.extra**2).sum()
    return losses


def params_of(net: Net) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in net.named_parameters()}


def grads_of(net: Net) -> dict[str, torch.Tensor | None]:
    return {
        name: None if p.grad is None else p.grad.detach().clone()
        for name, p in net.named_parameters()
    }


def train(
    rank: int,
    *,
    optimizer: str = "sgd",
    micro_batches: int = 1,
    ddp: bool = False,
    steps: int = STEPS,
    double: bool = False,
    **options: Any,
) -> dict[str, Any]:
    net = Net(double=double)
    model = nn.parallel.DistributedDataParallel(net) if ddp else net
    if optimizer == "sgd":
        inner = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    else:
        inner = torch.optim.Adam(net.parameters(), lr=0.01)
    opt = conflict_opt.MultiObjectiveOptimizer(inner, WEIGHTS, **options)
    scaler = options.get("scaler")
    for step in range(steps):
        opt.zero_grad()
        for m in range(micro_batches):
            opt.backward(shard_losses(model, net, step, rank, m))
        opt.step()
        if scaler is not None:
            scaler.update()
    info = opt.last_info
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    storages = {g.untyped_storage().data_ptr(): g.untyped_storage().nbytes() for g in grads}
    return {
        # What the .grad tensors keep alive beyond themselves.
        "grad_bytes": (sum(storages.values()), sum(g.numel() * g.element_size() for g in grads)),
        "params": params_of(net),
        "grads": grads_of(net),
        "coeffs": info["coeffs"].clone(),
        "gram": info["gram"].clone(),
        "world_size": opt.world_size,
        "sharded": opt._sharded,
        "is_world": opt.process_group is dist.group.WORLD,
        "repr": repr(opt),
    }


def nan_step(rank: int) -> dict[str, Any]:
    """Rank 1's losses are NaN at the second step: both ranks must raise, write nothing, and
    go on training together."""
    net = Net()
    opt = conflict_opt.MultiObjectiveOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), WEIGHTS)
    opt.step(shard_losses(net, net, 0, rank))
    before = params_of(net)
    losses = shard_losses(net, net, 1, rank)
    if rank == 1:
        losses[2] = losses[2] * float("nan")
    error = None
    try:
        opt.zero_grad()
        opt.backward(losses)
    except FloatingPointError as err:
        error = str(err)
    untouched = all(torch.equal(before[n], p) for n, p in params_of(net).items())
    opt.zero_grad()
    opt.step(shard_losses(net, net, 2, rank))
    return {"error": error, "untouched": untouched, "params": params_of(net)}


def mismatch(rank: int) -> dict[str, Any]:
    """Rank 1 trains one parameter fewer: every rank must raise, none may hang."""
    net = Net()
    if rank == 1:
        net.extra.requires_grad_(False)
    opt = conflict_opt.MultiObjectiveOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), WEIGHTS)
    try:
        opt.step(shard_losses(net, net, 0, rank))
    except ValueError as err:
        return {"error": str(err)}
    return {"error": None}


def k_mismatch(rank: int, mode: str) -> dict[str, Any]:
    """Rank 1 passes one loss fewer (uniform weights, so that no local check catches it): every
    rank must raise, none may hang, in either mode."""
    net = Net()
    opt = conflict_opt.MultiObjectiveOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), mode=mode)
    losses = shard_losses(net, net, 0, rank)
    try:
        opt.step(losses[:2] if rank == 1 else losses)
    except ValueError as err:
        return {"error": str(err)}
    return {"error": None}


def uneven(rank: int, micro_batches: int = 1, at_step: int = 0, **options: Any) -> dict[str, Any]:
    """Every step has ``micro_batches`` micro-batches on each rank, but at step ``at_step`` rank
    0 calls backward once more: every rank must raise, no parameter may move on any in that
    step (in the modes that write .grad at backward too, where rank 1's step has nothing else
    to wait for), and both go on training together after zero_grad."""
    net = Net()
    opt = conflict_opt.MultiObjectiveOptimizer(
        torch.optim.SGD(net.parameters(), lr=0.1), WEIGHTS, **options
    )
    for step in range(at_step):
        opt.zero_grad()
        for micro in range(micro_batches):
            opt.backward(shard_losses(net, net, step, rank, micro))
        opt.step()
    before = params_of(net)
    error = None
    try:
        opt.zero_grad()
        for micro in range(micro_batches + 1 if rank == 0 else micro_batches):
            opt.backward(shard_losses(net, net, at_step, rank, micro))
        opt.step()
    except ValueError as err:
        error = str(err)
    untouched = all(torch.equal(before[n], p) for n, p in params_of(net).items())
    for step in range(at_step + 1, STEPS):
        opt.zero_grad()
        opt.step(shard_losses(net, net, step, rank))
    return {"error": error, "untouched": untouched, "params": params_of(net)}


def options_differ(rank: int, weights_0: Any = WEIGHTS, **on_rank_1: Any) -> dict[str, Any]:
    """Rank 1 builds its wrapper with other options: every rank must raise before any pass,
    naming them (different weights or c would otherwise solve different problems, and the
    replicas drift apart without an error; a different mode pairs unrelated collectives)."""
    net = Net()
    options: dict[str, Any] = {"weights": weights_0, **(on_rank_1 if rank == 1 else {})}
    opt = conflict_opt.MultiObjectiveOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), **options)
    before = params_of(net)
    try:
        opt.step(shard_losses(net, net, 0, rank))
    except ValueError as err:
        error = str(err)
    else:
        error = None
    untouched = all(torch.equal(before[n], p) for n, p in params_of(net).items())
    return {"error": error, "untouched": untouched, "params": params_of(net)}


def functional(
    rank: int,
    weights_1: Any = WEIGHTS,
    group: bool = True,
    weights_0: Any = WEIGHTS,
    double: bool = False,
    **on_rank_1: Any,
) -> dict[str, Any]:
    """:func:`conflict_opt.aggregate_` with ``process_group``: each rank passes its own
    shard's gradients; SGD with momentum takes the step. With ``weights_1`` (or other options,
    ``on_rank_1``) rank 1 passes other ones: every rank must raise, with nothing written.
    Without ``group``, the default: no communication although torch.distributed is
    initialised. ``double``: the whole model in float64."""
    net = Net().double() if double else Net()
    params = list(net.parameters())
    inner = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    weights = weights_1 if rank == 1 else weights_0
    options = on_rank_1 if rank == 1 else {}
    gram = None
    for step in range(STEPS):
        inner.zero_grad()
        losses = shard_losses(net, net, step, rank)
        grads = [
            list(torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True))
            for loss in losses
        ]
        try:
            agg = conflict_opt.aggregate_(
                params,
                grads,
                weights,
                process_group=dist.group.WORLD if group else None,
                **options,
            )
        except ValueError as err:
            untouched = all(p.grad is None for p in params)
            return {"error": str(err), "untouched": untouched}
        gram = agg.gram.clone()
        inner.step()
    return {"error": None, "params": params_of(net), "gram": gram}


def functional_invalid(rank: int) -> dict[str, Any]:
    """:func:`conflict_opt.aggregate_` with ``process_group`` and the same invalid ``c`` on
    every rank: each must raise the one-process error, naming it, with nothing written."""
    net = Net()
    params = list(net.parameters())
    losses = shard_losses(net, net, 0, rank)
    grads = [
        list(torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True))
        for loss in losses
    ]
    try:
        conflict_opt.aggregate_(params, grads, WEIGHTS, c=1.5, process_group=dist.group.WORLD)
    except ValueError as err:
        return {"error": str(err), "untouched": all(p.grad is None for p in params)}
    return {"error": None}


def functional_dtensor(rank: int) -> dict[str, Any]:
    """:func:`conflict_opt.aggregate_` with ``process_group`` and a parameter sharded across
    the ranks (a DTensor): every rank must raise, naming it, with nothing written."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    whole = torch.nn.Parameter(torch.randn(3))
    sharded = torch.nn.Parameter(distribute_tensor(torch.randn(4, 2), mesh, [Shard(0)]))
    grads = [[torch.ones(3), torch.ones_like(sharded)], [torch.ones(3), torch.ones_like(sharded)]]
    try:
        conflict_opt.aggregate_([whole, sharded], grads, process_group=dist.group.WORLD)
    except ValueError as err:
        return {"error": str(err), "untouched": whole.grad is None and sharded.grad is None}
    return {"error": None}


def freeze_after_backward(rank: int, **options: Any) -> dict[str, Any]:
    """Rank 1 freezes ``extra`` between the first step's backward and its step (and unfreezes
    it after): the step takes what backward gathered, on every rank alike (as in plain torch,
    where requires_grad is read at backward), so the ranks agree and stay identical."""
    net = Net()
    opt = conflict_opt.MultiObjectiveOptimizer(
        torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9), WEIGHTS, **options
    )
    for step in range(STEPS):
        opt.zero_grad()
        opt.backward(shard_losses(net, net, step, rank))
        if rank == 1 and step == 0:
            net.extra.requires_grad_(False)
        opt.step()
        net.extra.requires_grad_(True)
    return {"params": params_of(net)}


def local_error(rank: int, fewer: bool = False, **options: Any) -> dict[str, Any]:
    """Rank 1's own checks fail in the second micro-batch of step 1: a loss without grad (a
    task with no example in its shard, written as a constant), or with ``fewer`` one loss
    fewer than its first micro-batch. Both ranks must raise (rank 0 naming rank 1's error),
    nothing may move, and both go on training together."""
    net = Net()
    opt = conflict_opt.MultiObjectiveOptimizer(
        torch.optim.SGD(net.parameters(), lr=0.1), WEIGHTS if not fewer else None, **options
    )
    opt.zero_grad()
    opt.step(shard_losses(net, net, 0, rank))
    before = params_of(net)
    error = None
    try:
        opt.zero_grad()
        for micro in range(2):
            losses = shard_losses(net, net, 1, rank, micro)
            if rank == 1 and micro == 1:
                losses = losses[:2] if fewer else [*losses[:2], torch.tensor(0.0)]
            opt.backward(losses)
        opt.step()
    except ValueError as err:
        error = str(err)
    untouched = all(torch.equal(before[n], p) for n, p in params_of(net).items())
    for step in range(2, STEPS + 1):
        opt.zero_grad()
        opt.step(shard_losses(net, net, step, rank))
    return {"error": error, "untouched": untouched, "params": params_of(net)}


def mixed_calls(rank: int) -> dict[str, Any]:
    """Rank 0 calls :func:`conflict_opt.aggregate_` with the group while rank 1 is in the
    wrapper's ``backward``: the two handshakes must have one length (gloo aborts the process
    on a size mismatch), so that both ranks raise, naming the two calls."""
    net = Net()
    params = list(net.parameters())
    losses = shard_losses(net, net, 0, rank)
    try:
        if rank == 0:
            grads = [
                list(torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True))
                for loss in losses
            ]
            conflict_opt.aggregate_(params, grads, WEIGHTS, process_group=dist.group.WORLD)
        else:
            opt = conflict_opt.MultiObjectiveOptimizer(torch.optim.SGD(params, lr=0.1), WEIGHTS)
            opt.backward(losses)
    except ValueError as err:
        return {"error": str(err)}
    return {"error": None}


def dtensor(rank: int) -> dict[str, Any]:
    """A parameter sharded across the ranks (a DTensor, as FSDP2 makes): every rank must raise
    before any collective, naming it."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    net = Net()
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    net.extra = nn.Parameter(distribute_tensor(torch.randn(4, 2), mesh, [Shard(0)]))
    opt = conflict_opt.MultiObjectiveOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), WEIGHTS)
    try:  # the losses need not reach it: the check comes before the gradient passes
        opt.step(shard_losses(net, net, 0, rank))
    except ValueError as err:
        return {"error": str(err)}
    return {"error": None}


def fsdp1(rank: int, use_orig_params: bool) -> dict[str, Any]:
    """The trunk wrapped in FSDP1 (``FullyShardedDataParallel``): the optimizer sees its
    FlatParameter, or with ``use_orig_params=True`` the original parameters as views into this
    rank's shard. Either way every rank must raise before any gradient pass, naming FSDP1."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    net = Net()
    net.trunk = FullyShardedDataParallel(
        net.trunk, device_id=torch.device("cpu"), use_orig_params=use_orig_params
    )
    opt = conflict_opt.MultiObjectiveOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), WEIGHTS)
    before = params_of(net)
    try:
        opt.step(shard_losses(net, net, 0, rank))
    except ValueError as err:
        return {"error": str(err), "untouched": _equal(before, params_of(net))}
    return {"error": None}


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def closure(rank: int) -> dict[str, Any]:
    """LBFGS with a strong-Wolfe line search: its decisions read the closure's value, which
    must be the same on every rank for the replicas to stay identical."""
    net = Net()
    inner = torch.optim.LBFGS(net.parameters(), lr=0.5, max_iter=5, line_search_fn="strong_wolfe")
    opt = conflict_opt.MultiObjectiveOptimizer(inner, WEIGHTS)
    values = [float(opt.step(lambda s=s: shard_losses(net, net, s, rank))) for s in range(2)]
    return {"params": params_of(net), "values": values}


def local_group(rank: int) -> dict[str, Any]:
    """A group of one rank turns averaging off: each rank trains on its own shard."""
    group, _ = dist.new_subgroups(group_size=1)
    return train(rank, process_group=group)


SCENARIOS: dict[str, Callable[[int], dict[str, Any]]] = {
    "store": lambda rank: train(rank),
    "store_adam": lambda rank: train(rank, optimizer="adam"),
    "accumulate": lambda rank: train(rank, micro_batches=2),
    "per_micro_batch": lambda rank: train(rank, micro_batches=2, accumulation="per_micro_batch"),
    "gram_first": lambda rank: train(rank, micro_batches=2, mode="gram_first"),
    "two_dtypes": lambda rank: train(rank, double=True),
    "bf16": lambda rank: train(rank, store_dtype=torch.bfloat16),
    "scaler": lambda rank: train(rank, scaler=torch.amp.GradScaler("cpu", init_scale=2.0**10)),
    "ddp": lambda rank: train(rank, ddp=True),
    "ddp_gram_first": lambda rank: train(rank, ddp=True, mode="gram_first"),
    "reference_backend": lambda rank: train(
        rank, primitive_backend="reference", backend="iterative"
    ),
    "nan": nan_step,
    "mismatch": mismatch,
    "dtensor": dtensor,
    "fsdp1": functools.partial(fsdp1, use_orig_params=False),
    "fsdp1_orig_params": functools.partial(fsdp1, use_orig_params=True),
    "k_mismatch": functools.partial(k_mismatch, mode="store"),
    "k_mismatch_gram_first": functools.partial(k_mismatch, mode="gram_first"),
    "uneven": functools.partial(uneven),
    "uneven_unchecked": functools.partial(uneven, check_finite=False),
    "uneven_per_micro_batch": functools.partial(uneven, accumulation="per_micro_batch"),
    "uneven_gram_first": functools.partial(uneven, mode="gram_first"),
    # The second step, two micro-batches against three: the counts restart at every step.
    "uneven_later": functools.partial(uneven, micro_batches=2, at_step=1),
    "uneven_later_gram_first": functools.partial(
        uneven, micro_batches=2, at_step=1, mode="gram_first"
    ),
    "weights_differ": functools.partial(options_differ, weights=WEIGHTS[::-1], c=0.2),
    "weights_none": functools.partial(options_differ, weights=None),
    "uniform_weights": functools.partial(options_differ, weights_0=[1 / K] * K, weights=None),
    "mode_differs": functools.partial(options_differ, mode="gram_first"),
    "method_differs": functools.partial(options_differ, method="mgda"),
    "backend_differs": functools.partial(options_differ, backend="iterative"),
    "primitive_backend_differs": functools.partial(options_differ, primitive_backend="reference"),
    "store_dtype_differs": functools.partial(options_differ, store_dtype=torch.bfloat16),
    "check_finite_differs": functools.partial(options_differ, check_finite=False),
    "freeze_after_backward": functools.partial(freeze_after_backward),
    "freeze_after_backward_per_micro_batch": functools.partial(
        freeze_after_backward, accumulation="per_micro_batch"
    ),
    "freeze_after_backward_gram_first": functools.partial(freeze_after_backward, mode="gram_first"),
    "functional": functional,
    "functional_weights_differ": functools.partial(functional, weights_1=WEIGHTS[::-1]),
    "functional_local": functools.partial(functional, group=False),
    "functional_uniform_weights": functools.partial(
        functional, weights_0=None, weights_1=[1 / K] * K
    ),
    "functional_method_differs": functools.partial(functional, method="mgda"),
    "functional_c_differs": functools.partial(functional, c=0.2),
    "functional_double": functools.partial(functional, double=True),
    "functional_invalid": functional_invalid,
    "functional_dtensor": functional_dtensor,
    "mixed_calls": mixed_calls,
    "local_error": local_error,
    "local_error_gram_first": functools.partial(local_error, mode="gram_first"),
    "local_error_fewer": functools.partial(local_error, fewer=True),
    "closure": closure,
    "local_group": local_group,
}


# Both schemes of the store mode's step, on gloo (conflict_opt._distributed): gloo itself takes
# the all-reduce; "sharded" counts gloo among the backends that take the other.
SCHEMES = {"all_reduce": frozenset(), "sharded": frozenset({"gloo"})}


def _attempt(scenario: Callable[[int], dict[str, Any]], rank: int) -> dict[str, Any]:
    try:
        return scenario(rank)
    except Exception as err:  # reported by the parent test, scenario by scenario
        return {"exception": f"{type(err).__name__}: {err}", "trace": traceback.format_exc()}


def _early() -> tuple[Net, conflict_opt.MultiObjectiveOptimizer]:
    """A wrapper built before torch.distributed is initialised."""
    net = Net()
    inner = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    return net, conflict_opt.MultiObjectiveOptimizer(inner, WEIGHTS)


def late_init(rank: int, early: tuple[Net, conflict_opt.MultiObjectiveOptimizer]) -> dict:
    """The wrapper of :func:`_early`, trained after init_process_group: it must average as
    one built after it does (compared with the ``store`` scenario's reference)."""
    net, opt = early
    before = opt.world_size
    for step in range(STEPS):
        opt.zero_grad()
        opt.backward(shard_losses(net, net, step, rank))
        opt.step()
    return {
        "params": params_of(net),
        "before": before,
        "world_size": opt.world_size,
        "sharded": opt._sharded,
    }


def run(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    # Both ranks are on this machine: talk over loopback, whatever the host name resolves to
    # (in some containers it resolves to no reachable interface).
    if "GLOO_SOCKET_IFNAME" not in os.environ and os.path.exists("/sys/class/net/lo"):
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    early = {scheme: _early() for scheme in SCHEMES}
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    results: dict[str, Any] = {}
    for scheme, backends in SCHEMES.items():
        _distributed.SHARDED_BACKENDS = backends
        for name, scenario in SCENARIOS.items():
            results[f"{scheme}/{name}"] = _attempt(scenario, rank)
            dist.barrier()
        results[f"{scheme}/late_init"] = _attempt(
            functools.partial(late_init, early=early[scheme]), rank
        )
        dist.barrier()
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()
