"""Time per training step of ``MultiObjectiveOptimizer`` beside plain training and its peers.

Every route of ``optimizer_cases`` is timed on the same model, batch and K (the MLP and the
small transformer, K ∈ {2, 3, 4}) in one run. ``report_optimizer.py`` turns the JSON into the
table of docs/optimizer.md and the targets:

* overhead of the wrapper beyond the K backward passes (its step minus ``k_backward_step``)
  ≤ 10% of one backward pass (``forward_backward`` minus ``forward``);
* faster than TorchJD's ``autojac.backward`` + ``jac_to_grad`` and than the research route;
* peak memory ≤ one K×P store above plain training (half that with the bfloat16 store),
  measured by ``optimizer_memory.py``.

Run::

    python -m pytest benchmarks/test_bench_optimizer.py --benchmark-json=/tmp/opt.json -q
    python benchmarks/optimizer_memory.py --out /tmp/opt_memory.json
    for run in 1 2 3 4 5 6; do
        python benchmarks/optimizer_overhead.py --out /tmp/opt_overhead_$run.json
        python benchmarks/optimizer_overhead.py --malloc no-trim --out /tmp/opt_no_trim_$run.json
    done
    python benchmarks/report_optimizer.py /tmp/opt.json /tmp/opt_memory.json \\
        --overhead /tmp/opt_overhead_?.json /tmp/opt_no_trim_?.json \\
        --save benchmarks/results/optimizer_cpu.json

The routes with one backend changed (``BACKEND_ROUTES``) are timed here too and tabled by
``report_backends.py`` (its docstring has the recipe).

``CONFLICT_OPT_BENCH_OPTIMIZER_THREADS`` (default: every core) sets torch's threads here and
in the two probes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conftest import torch_threads
from optimizer_cases import BACKEND_ROUTES, KS, MODELS, ROUTES, route, setup, threads

THREADS = threads()


@pytest.fixture(autouse=True)
def _threads() -> Iterator[None]:
    with torch_threads(THREADS):
        yield


@pytest.mark.parametrize(
    ("model", "k", "name"),
    [
        pytest.param(m, k, r, id=f"{m}-K{k}-{r}")
        for m in MODELS
        for k in KS
        for r in ROUTES + BACKEND_ROUTES
    ],
)
def test_step(benchmark: Any, model: str, k: int, name: str) -> None:
    if name.startswith("torchjd"):
        pytest.importorskip("torchjd")
    if name.endswith("-exact"):
        pytest.importorskip("cvxpy")
    if name == "research":
        pytest.importorskip("scipy")
    s = setup(model, k)
    call = route(name, s)
    benchmark.group = f"{model} K={k}"
    benchmark.extra_info.update(model=model, k=k, route=name, p=s.p, threads=THREADS)
    benchmark.pedantic(call, rounds=15, iterations=1, warmup_rounds=2)
