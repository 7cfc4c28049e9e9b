"""The wrapper's overhead beyond its K backward passes, timed round-robin.

The overhead target is a difference of step times: (``ours-*`` − ``k_backward_step``) over
(``forward_backward`` − ``forward``). pytest-benchmark times each route in its own block of
rounds, so on a shared machine a slow minute lands on one route and not on the other, and the
difference swings by more than the target (−0.6 to +1.4 of a backward in one run). Here every
round runs each route once, in alternating order, on the same model and batch
(``optimizer_cases``), so that disturbances hit all routes alike; the medians over the rounds
then give the difference. Run::

    for run in 1 2 3 4 5 6; do
        python benchmarks/optimizer_overhead.py --out /tmp/opt_overhead_$run.json
        python benchmarks/optimizer_overhead.py --malloc no-trim --out /tmp/opt_no_trim_$run.json
    done

and pass the files to ``report_optimizer.py --overhead``: from one run to the next the
figures move by about ±0.1 of a backward on the benchmark VM, and the report takes the median
over the runs of each ``--malloc`` setting (below).

A second estimate takes the backward passes out of both terms. Every call of
``torch.autograd.grad`` and ``torch.autograd.backward`` is timed, and each step's time spent
inside them is subtracted from that step (``net_median_s``). The overhead is then
(net ``ours-*`` − net ``k_backward_step``) / one backward: the K passes, by far the largest
and noisiest part of both steps, no longer enter the difference. The bfloat16 store's
conversion runs after each pass, so it stays in the net figure.

Both estimates are also computed paired: ``k_backward_step`` and ``ours-cagrad_clip-store``
run next to each other in every round, so the median over the rounds of their per-round
difference follows the load of that moment rather than comparing two medians that may come
from different minutes. Each route's per-round times (``times_us``, and with the passes
subtracted ``net_times_us``; whole microseconds, in round order) are kept in the JSON, so that
``report_optimizer.py`` can form any paired figure afterwards.

The peers' routes (``torchjd-cagrad``, ``torchjd-upgrad`` when TorchJD is installed, and
``research``) run in the same rounds, so that the "faster than" ratios also come from
interleaved timing.

``--routes backends`` times, instead of the routes above, the default route beside the same
route with one backend changed (``optimizer_cases.BACKEND_ROUTES``: the ``iterative`` and
``exact`` solves, the ``reference`` primitives), with ``forward``, ``forward_backward`` and
``k_backward_step``; ``report_backends.py`` tables those runs::

    for run in 1 2 3; do
        python benchmarks/optimizer_overhead.py --routes backends --out /tmp/opt_backends_$run.json
    done

Page faults. glibc's ``free`` gives the top of the heap back to the kernel once more than
``M_TRIM_THRESHOLD`` bytes lie free there, and serves large blocks by ``mmap``; a step that
then allocates that memory again takes a minor page fault per 4 KiB page (about 1.4 µs each on
the benchmark VM, in the step's time). How many a route takes depends on the heap that the
routes before it left more than on its own work: run alone, the wrapper's store route on the
MLP at K = 4 took 3 faults per step called as ``opt.step(losses)`` and 2,400 called as
``opt.backward(losses); opt.step()``. Each row keeps the faults of every round
(``minor_faults``, from ``getrusage``). ``--malloc no-trim`` sets glibc's trim threshold to
1 GiB and its mmap threshold to 32 MiB (``mallopt``) before anything is allocated, so that
freed memory stays mapped and no route pays faults that another escapes; the report gives the
targets of such runs under their own label. It measures the work of each route without the
allocator's share, which the default runs include as a user's process would.
"""

from __future__ import annotations

import argparse
import ctypes
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report_optimizer import (
    backend_table,
    dump_json,
    faster_targets,
    fault_table,
    overhead_targets,
)
from round_robin import round_robin

ROUTES = (
    "forward",
    "forward_backward",
    "k_backward_step",
    "ours-cagrad_clip-store",
    "ours-cagrad_clip-bf16",
    "ours-mgda-store",
    "ours-linear-store",
)


SETS = ("default", "backends")


def routes(which: str = "default") -> tuple[str, ...]:
    """``default``: ROUTES and the peers' routes that can run here (TorchJD's when it is
    installed). ``backends``: the default route with one backend changed, beside it and the
    routes the overhead needs (the ``exact`` solve needs cvxpy, and raises without it)."""
    import importlib.util

    from optimizer_cases import BACKEND_ROUTES, PEERS

    if which not in SETS:
        raise ValueError(f"routes must be one of {SETS}, got {which!r}")
    if which == "backends":
        if importlib.util.find_spec("cvxpy") is None:
            raise RuntimeError("--routes backends times the exact solve, which needs cvxpy")
        return (*ROUTES[:4], *BACKEND_ROUTES)
    have_torchjd = importlib.util.find_spec("torchjd") is not None
    return ROUTES + tuple(p for p in PEERS if have_torchjd or not p.startswith("torchjd"))


WARMUP = 3


class PassTimer:
    """Seconds spent inside ``torch.autograd.grad`` / ``backward`` since the last ``take()``."""

    def __init__(self) -> None:
        import torch

        self.inside = 0.0
        self._grad, self._backward = torch.autograd.grad, torch.autograd.backward

        def timed(f: Callable[..., Any]) -> Callable[..., Any]:
            def call(*args: Any, **kwargs: Any) -> Any:
                start = time.perf_counter()
                try:
                    return f(*args, **kwargs)
                finally:
                    self.inside += time.perf_counter() - start

            return call

        torch.autograd.grad = timed(self._grad)
        torch.autograd.backward = timed(self._backward)

    def take(self) -> float:
        inside, self.inside = self.inside, 0.0
        return inside

    def close(self) -> None:
        import torch

        torch.autograd.grad, torch.autograd.backward = self._grad, self._backward


# glibc's malloc.h: mallopt parameters, and the largest mmap threshold its manual documents on
# 64-bit (DEFAULT_MMAP_THRESHOLD_MAX).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_MAX = 32 << 20
ALLOCATORS = ("default", "no-trim")


def set_allocator(allocator: str) -> None:
    """``no-trim``: keep freed heap memory mapped (glibc's ``mallopt``), see the module text.
    Raises where that cannot be done, rather than run a probe that is not what it says."""
    if allocator not in ALLOCATORS:
        raise ValueError(f"allocator must be one of {ALLOCATORS}, got {allocator!r}")
    if allocator == "default":
        return
    libc_name, _ = platform.libc_ver()
    if libc_name != "glibc":
        raise RuntimeError(
            f"--malloc no-trim needs glibc's mallopt; this C library is {libc_name!r}"
        )
    libc = ctypes.CDLL("libc.so.6")
    for param, value in ((M_TRIM_THRESHOLD, 1 << 30), (M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)):
        if libc.mallopt(param, value) != 1:
            raise RuntimeError(f"mallopt({param}, {value}) failed")


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def measure(
    model: str, k: int, rounds: int, allocator: str = "default", which: str = "default"
) -> list[dict[str, object]]:
    from optimizer_cases import route, setup

    s = setup(model, k)
    timer = PassTimer()
    names = routes(which)
    inside: dict[str, list[float]] = {name: [] for name in names}
    faults: dict[str, list[int]] = {name: [] for name in names}

    def with_passes(name: str, step: Callable[[], None]) -> Callable[[], None]:
        def call() -> None:
            timer.take()
            before = _minor_faults()
            step()
            faults[name].append(_minor_faults() - before)
            inside[name].append(timer.take())

        return call

    try:
        calls = {name: with_passes(name, route(name, s)) for name in names}
        times = round_robin(calls, rounds, warmup=WARMUP)
    finally:
        timer.close()
    rows = []
    for name, ts in times.items():
        # inside[name] also holds the warm-up calls, which round_robin does not time.
        net = [t - i for t, i in zip(ts, inside[name][WARMUP:], strict=True)]
        rows.append(
            {
                "model": model,
                "k": k,
                "p": s.p,
                "route": name,
                "median_s": statistics.median(ts),
                "net_median_s": statistics.median(net),
                "rounds": rounds,
                "times_us": [round(t * 1e6) for t in ts],
                "net_times_us": [round(t * 1e6) for t in net],
                "allocator": allocator,
                "minor_faults": faults[name][WARMUP:],
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    import torch
    from optimizer_cases import KS, MODELS, threads

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument(
        "--malloc",
        choices=ALLOCATORS,
        default="default",
        help="no-trim: keep freed heap memory mapped (glibc), so that no route pays page "
        "faults for memory another route gave back",
    )
    parser.add_argument(
        "--routes",
        choices=SETS,
        default="default",
        help="backends: the default route beside the same with one backend changed",
    )
    args = parser.parse_args(argv)
    set_allocator(args.malloc)  # before the models allocate anything
    torch.set_num_threads(threads())
    rows: list[dict[str, object]] = []
    for model in MODELS:
        for k in KS:
            got = measure(model, k, args.rounds, args.malloc, args.routes)
            rows += got
            if args.routes == "backends":
                for b in backend_table([got]):
                    print(
                        f"{model:12s} K={k} {b['route']:34s} overhead {b['overhead']:+.3f} "
                        f"backward (paired {b['overhead_paired']:+.3f}), "
                        f"{b['time_over_default']:.2f}x the default route's step",
                        flush=True,
                    )
                continue
            # The report's own arithmetic, one list per estimate, routes in the same order.
            estimates = [
                overhead_targets(got, "probe", net=net, paired=paired)
                for net, paired in ((False, False), (True, False), (False, True), (True, True))
            ]
            for plain, net, pair, pair_net in zip(*estimates, strict=True):
                print(
                    f"{model:12s} K={k} {plain['route']:26s} overhead {plain['ratio']:+.3f} "
                    f"backward (passes subtracted {net['ratio']:+.3f}; paired "
                    f"{pair['ratio']:+.3f}, {pair_net['ratio']:+.3f})",
                    flush=True,
                )
            for f in fault_table([got]):
                print(
                    f"{model:12s} K={k} {f['route']:26s} minor faults per step, mean "
                    f"{f['mean_per_step']:.0f}, in {f['share_of_steps_with_faults']:.0%} of "
                    f"{f['steps']} steps (most {f['max_in_one_step']})",
                    flush=True,
                )
            for peer in faster_targets(got, "probe"):
                line = f"{model:12s} K={k} {peer['route']:26s} {peer['ratio']:.2f}x ours"
                print(line, flush=True)
    args.out.write_text(dump_json(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
