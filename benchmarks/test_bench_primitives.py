"""Throughput of ``conflict_opt.gram`` and ``conflict_opt.combine_`` beside their baselines.

Every provider of ``primitives_cases`` is timed on the same tensors in one run, for K ∈ {2, 3,
4, 8} and the shapes P = 1M / 10M / 50M (one tensor per objective) and ``transformer`` (196
tensors, 14.8M values). ``extra_info`` carries the least memory traffic in bytes, so GB/s =
bytes / time; ``report_primitives.py`` turns the JSON into the tables of docs/kernels.md and
the targets' ratios. Run::

    python -m pytest benchmarks/test_bench_primitives.py --benchmark-json=/tmp/prim.json -q
    python benchmarks/primitives_memory.py --out /tmp/prim_memory.json
    python benchmarks/primitives_paired.py --out /tmp/prim_paired.json
    python benchmarks/report_primitives.py /tmp/prim.json /tmp/prim_memory.json \\
        --paired /tmp/prim_paired.json --save benchmarks/results/primitives_cpu.json

Environment: ``CONFLICT_OPT_BENCH_PRIMITIVE_THREADS`` (default: every core) sets torch's
threads for these benchmarks only (the solver benchmarks pin one); ``CONFLICT_OPT_BENCH_DEVICE``
(default ``cpu``) runs them on ``cuda``, where the triton provider joins.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from conftest import torch_threads
from primitives_cases import (
    BIG,
    KS,
    SHAPES,
    combine_bytes,
    combine_call,
    gram_bytes,
    gram_call,
    inputs,
)

from conflict_opt import primitives

DEVICE = os.environ.get("CONFLICT_OPT_BENCH_DEVICE", "cpu")
THREADS = int(os.environ.get("CONFLICT_OPT_BENCH_PRIMITIVE_THREADS", str(os.cpu_count() or 1)))
PROVIDERS = (
    "limit",
    "torch",
    "torch_ops",
    "triton",
    "reference",
    "stack",
    "per_param",
    "torchjd",
)


@pytest.fixture(autouse=True)
def _threads() -> Iterator[None]:
    with torch_threads(THREADS):
        yield


def _params() -> list[Any]:
    # (shape, K) outermost so that one input set is built at a time.
    return [
        pytest.param(shape, k, provider, id=f"{shape}-K{k}-{provider}")
        for shape in SHAPES
        for k in KS
        for provider in PROVIDERS
    ]


def _skip_reason(provider: str, shape: str, k: int) -> str | None:
    if provider == "triton":
        reason = primitives.triton_unavailable(torch.device(DEVICE))
        if DEVICE == "cpu" or reason is not None:
            return f"triton provider needs CUDA ({reason or 'CPU run'})"
    if provider == "torch_ops" and DEVICE != "cpu":
        return "the native kernels are CPU-only: elsewhere torch is the torch-ops path"
    if provider == "torchjd":
        try:
            import torchjd  # noqa: F401
        except ImportError:
            return "needs the [bench] extra (torchjd)"
    if provider == "reference" and shape == "P50M" and k == 8:
        return "the float64 oracle's K×P copy (3.2 GB) is not worth timing"
    return None


def _run(benchmark: Any, make: Any, kind: str, shape: str, k: int, provider: str) -> None:
    reason = _skip_reason(provider, shape, k)
    if reason:
        pytest.skip(reason)
    grads, p = inputs(k, shape, DEVICE)
    call = make(provider, grads, p)
    sync = torch.cuda.synchronize if DEVICE == "cuda" else (lambda: None)

    def timed() -> None:
        call()
        sync()

    benchmark.group = f"{kind} {shape} K={k}"
    benchmark.extra_info.update(
        kind=kind,
        shape=shape,
        k=k,
        p=p,
        tensors=len(grads[0]),
        provider=provider,
        # The limit reads K·P values in either group; the combination also writes P.
        bytes=(gram_bytes if kind == "gram" or provider == "limit" else combine_bytes)(k, p),
        threads=THREADS,
        device=DEVICE,
    )
    rounds = 5 if shape in BIG and BIG[shape] >= 10_000_000 else 20
    benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize(("shape", "k", "provider"), _params())
def test_gram(benchmark: Any, shape: str, k: int, provider: str) -> None:
    _run(benchmark, gram_call, "gram", shape, k, provider)


@pytest.mark.parametrize(("shape", "k", "provider"), _params())
def test_combine(benchmark: Any, shape: str, k: int, provider: str) -> None:
    _run(benchmark, combine_call, "combine", shape, k, provider)
