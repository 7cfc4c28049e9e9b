"""Round-robin timing, shared by the probes whose targets are ratios or differences of two
routes (``optimizer_overhead.py``, ``primitives_paired.py``).

On a shared machine the load, and even the memory bandwidth, changes from minute to minute.
Timing each route in its own block of rounds lets such a change land on one route and not the
other. Here every round calls each route once, in alternating order, so that disturbances hit
all routes alike; ratios and differences of the per-route medians are then comparable.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping


def round_robin(
    calls: Mapping[str, Callable[[], object]], rounds: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of every route over ``rounds`` rounds, after ``warmup`` untimed ones
    (page faults, allocator, caches, optimizer state); odd rounds run in reverse order."""
    names = list(calls)
    for _ in range(warmup):
        for name in names:
            calls[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - start)
    return times
