"""What averaging across ranks costs the wrapper's step: W gloo ranks on CPU, timed round-robin.

Every rank trains the benchmark MLP (``optimizer_cases.MLP``, K heads, its own batch of 256
rows) through four routes, each on its own copy of the model, one step per route per round in
turn, with a barrier before each step so that the ranks start it together:

* ``ddp``: ``DistributedDataParallel`` on Σ w_k L_k, one backward, its reducer's all-reduce
  of P values: plain data-parallel training of the scalarised loss.
* ``ours-local``: ``MultiObjectiveOptimizer`` with a process group of one rank, no
  communication: the step of one process, on one thread.
* ``ours-all_reduce``: the same averaged across the ranks by an all-reduce of each objective's
  gradient (``conflict_opt._distributed.average``), what gloo takes.
* ``ours-sharded``: the sharded scheme (reduce-scatter, a K×K all-reduce of the Gram, the
  combination on the shard, all-gather), forced on gloo by counting it among
  ``SHARDED_BACKENDS``.

Each rank runs one torch thread (the benchmark VM has 2 cores for 2 ranks). Rank 0 writes the
medians over the rounds after ``--warmup``, and the paired medians of each route minus
``ours-local`` (what averaging adds), to ``--out``. Run::

    python benchmarks/distributed_overhead.py --out benchmarks/results/distributed_cpu.json

It times gloo over loopback on one machine: the figures say how the two schemes compare on
gloo, not what NCCL between GPUs costs.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from optimizer_cases import MLP
from report import cpu_model
from report_optimizer import save_json

import conflict_opt
from conflict_opt import _distributed

ROUTES = ("ddp", "ours-local", "ours-all_reduce", "ours-sharded")


class _Losses(nn.Module):
    """The MLP's K losses as one ``[K]`` output, so that DDP's forward runs them."""

    def __init__(self, net: MLP) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return torch.stack(self.net.losses((x, targets)))


def _batch(k: int, rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(100_000 * rank + step)
    return torch.randn(256, 128, generator=gen), torch.randn(k, 256, 16, generator=gen)


def _rank(rank: int, world: int, init: str, args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    if "GLOO_SOCKET_IFNAME" not in os.environ and os.path.exists("/sys/class/net/lo"):
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # all ranks on this machine: loopback
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init}",
        rank=rank,
        world_size=world,
        timeout=dt.timedelta(seconds=120),
    )
    k = args.k
    weights = torch.full((k,), 1.0 / k, dtype=torch.float64)
    torch.manual_seed(0)
    base = MLP(k)
    local, _ = dist.new_subgroups(group_size=1)
    nets = {route: copy.deepcopy(base) for route in ROUTES}
    ddp = nn.parallel.DistributedDataParallel(_Losses(nets["ddp"]))
    ddp_opt = torch.optim.SGD(nets["ddp"].parameters(), lr=1e-3)

    def wrapper(route: str, **kwargs: Any) -> conflict_opt.MultiObjectiveOptimizer:
        inner = torch.optim.SGD(nets[route].parameters(), lr=1e-3)
        return conflict_opt.MultiObjectiveOptimizer(inner, weights, **kwargs)

    opts = {
        "ours-local": wrapper("ours-local", process_group=local),
        "ours-all_reduce": wrapper("ours-all_reduce"),
    }
    default_backends = _distributed.SHARDED_BACKENDS
    _distributed.SHARDED_BACKENDS = frozenset({"gloo"})
    opts["ours-sharded"] = wrapper("ours-sharded")  # the scheme is fixed at construction
    _distributed.SHARDED_BACKENDS = default_backends
    assert not opts["ours-all_reduce"]._sharded and opts["ours-sharded"]._sharded

    def step(route: str, i: int) -> None:
        x, y = _batch(k, rank, i)
        if route == "ddp":
            ddp_opt.zero_grad()
            (ddp(x, y) @ weights.float()).backward()
            ddp_opt.step()
        else:
            opt = opts[route]
            opt.zero_grad()
            opt.step(nets[route].losses((x, y)))

    times: dict[str, list[float]] = {route: [] for route in ROUTES}
    for i in range(args.warmup + args.rounds):
        order = ROUTES if i % 2 == 0 else ROUTES[::-1]
        for route in order:
            dist.barrier()
            start = time.perf_counter()
            step(route, i)
            times[route].append(time.perf_counter() - start)
    if rank == 0:
        kept = {route: v[args.warmup :] for route, v in times.items()}
        ms = {route: round(statistics.median(v) * 1e3, 3) for route, v in kept.items()}
        added = {
            route: round(
                statistics.median(
                    a - b for a, b in zip(kept[route], kept["ours-local"], strict=True)
                )
                * 1e3,
                3,
            )
            for route in ("ddp", "ours-all_reduce", "ours-sharded")
        }
        params = sum(p.numel() for p in base.parameters())
        save_json(
            Path(args.out),
            {
                "machine": {
                    "platform": platform.platform(),
                    "cpu_model": cpu_model(),
                    "cpu_cores": os.cpu_count(),
                    "torch_version": torch.__version__,
                    "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                },
                "config": {
                    "backend": "gloo",
                    "world_size": world,
                    "threads_per_rank": 1,
                    "model": "mlp",
                    "k": k,
                    "parameters": params,
                    "batch_per_rank": 256,
                    "rounds": args.rounds,
                    "warmup": args.warmup,
                },
                "median_step_ms": ms,
                "paired_median_minus_ours_local_ms": added,
                "times_us": {r: [round(t * 1e6) for t in v] for r, v in kept.items()},
            },
        )
        print(f"median step (ms): {ms}")
        print(f"paired median minus ours-local (ms): {added}")
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--out", default="benchmarks/results/distributed_cpu.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_rank, args=(args.world, os.path.join(tmp, "init"), args), nprocs=args.world)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
