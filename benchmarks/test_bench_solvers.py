"""Wall-clock time per solve of ``conflict_opt.solve`` and of its peers, on the same Grams.

Measured (median / mean over rounds, CPU, float64 Gram, c = 0.4):

* ``test_solve_single``: one unbatched ``[K, K]`` problem for every method × backend × K ∈
  {2, 3, 4, 8, 16, 32} (closed_form only for K ≤ 3), with ``validate=True`` (the default user
  call: symmetry / PSD / simplex checks, an eigvalsh and host reads) and ``validate=False``
  (what a training loop should pass).
* ``test_solve_batched``: one call on a ``[1024, 3, 3]`` batch (closed_form, iterative, auto),
  or on its first 32 problems for the exact backend (it loops over the batch in Python);
  ``extra_info`` carries the time per problem.
* ``test_peer_single`` / ``test_peer_batched``: TorchJD 0.18's ``CAGradWeighting(c=0.4)`` and
  ``MGDAWeighting()`` on the Gramian, and the scipy SLSQP formulation of the official CAGrad
  code (Liu et al. 2021), single problems per K and looped over the first 32 batch problems.

Every benchmark stores its accuracy against ``backend="exact"`` on the same problem in
``extra_info`` (see ``conftest.Setup.record``). Run and summarise with::

    python -m pytest benchmarks/test_bench_solvers.py --benchmark-min-rounds=30 \\
        --benchmark-max-time=1.0 --benchmark-json=/tmp/bench.json -q
    python benchmarks/report.py /tmp/bench.json --out benchmarks/results/solvers_cpu.json
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from conftest import BATCH, BATCH_K, EXACT_BATCH, KS, METHODS, SLOW_ROUNDS, C, Setup, helpers

import conflict_opt
from conflict_opt.solvers import _host, _select_backend

BACKENDS = ("closed_form", "iterative", "exact", "auto")


def _solve_params() -> list[Any]:
    return [
        pytest.param(m, b, k, v, id=f"{m}-{b}-K{k}-{'validate' if v else 'novalidate'}")
        for m in METHODS
        for b in BACKENDS
        for k in KS
        for v in (False, True)
        if not (b == "closed_form" and k > 3)
    ]


@pytest.mark.parametrize(("method", "backend", "k", "validate"), _solve_params())
def test_solve_single(
    benchmark: Any, setup: Setup, method: str, backend: str, k: int, validate: bool
) -> None:
    """Time of one ``solve`` on one unbatched float64 ``[K, K]`` Gram."""
    pr = setup.problems(k)
    benchmark.group = f"single K={k}"

    def call() -> conflict_opt.SolveResult:
        return conflict_opt.solve(
            pr.gram, pr.weights, method=method, c=C, backend=backend, validate=validate
        )

    res = call()  # warm-up; this answer is the one scored
    # Which path answered: the unbatched host solve, the torch path it hands problems to, or
    # the cvxpy reference.
    chosen = _select_backend(backend, k)
    if chosen == "exact":
        path = "cvxpy"
    else:
        hosted = _host.solve_host(pr.gram, pr.weights, method, C, chosen, validate)
        path = "torch" if hosted is None else "host"
    benchmark(call)
    setup.record(
        benchmark,
        provider="conflict_opt",
        backend=backend,
        method=method,
        k=k,
        batch=0,
        dual=res.dual.numpy(),
        coeffs=res.coeffs.numpy(),
        status=res.status.numpy(),
        validate=validate,
        iterations_max=int(res.iterations.max()),
        gap_max=float(res.gap.max()),
        path=path,
    )


@pytest.mark.parametrize("validate", [False, True], ids=["novalidate", "validate"])
@pytest.mark.parametrize("backend", ["closed_form", "iterative", "auto", "exact"])
@pytest.mark.parametrize("method", METHODS)
def test_solve_batched(
    benchmark: Any, setup: Setup, method: str, backend: str, validate: bool
) -> None:
    """Time of one ``solve`` on a ``[n, 3, 3]`` batch: n = 1,024, or 32 for the exact backend."""
    n = EXACT_BATCH if backend == "exact" else BATCH
    pr = setup.problems(BATCH_K, n)
    benchmark.group = f"batched K={BATCH_K}"

    def call() -> conflict_opt.SolveResult:
        return conflict_opt.solve(
            pr.gram, pr.weights, method=method, c=C, backend=backend, validate=validate
        )

    res = call()
    if backend == "exact":
        benchmark.pedantic(call, rounds=SLOW_ROUNDS, iterations=1)
    else:
        benchmark(call)
    setup.per_problem(benchmark, n)
    setup.record(
        benchmark,
        provider="conflict_opt",
        backend=backend,
        method=method,
        k=BATCH_K,
        batch=n,
        dual=res.dual.numpy(),
        coeffs=res.coeffs.numpy(),
        status=res.status.numpy(),
        validate=validate,
        iterations_max=int(res.iterations.max()),
        gap_max=float(res.gap.max()),
    )


# --------------------------------------------------------------------------------------- peers
@dataclasses.dataclass(frozen=True)
class Peer:
    """A peer solver: ``inputs`` builds its arguments from a case (untimed), ``run`` is timed,
    ``interpret`` turns its output into (dual p or None, coefficients a, success or None)."""

    provider: str
    backend: str
    method: str  # our method solving the same problem
    uniform: bool  # anchors at uniform weights whatever the case's weights
    inputs: Callable[[helpers.Case], tuple[Any, ...]]
    run: Callable[..., Any]
    interpret: Callable[[helpers.Case, Any], tuple[np.ndarray | None, np.ndarray, bool | None]]


def slsqp_cagrad(gram: np.ndarray, w: np.ndarray, c: float) -> tuple[np.ndarray, np.ndarray, bool]:
    """CAGrad's dual solved as the official code does: scipy SLSQP from the uniform point.

    min over x ∈ Δ_K of  xᵀb + c‖g_0‖·sqrt(xᵀHx + 1e-8),  b = Hw, ‖g_0‖ = sqrt(wᵀHw),
    with bounds [0, 1], the equality Σx = 1, default options and finite-difference gradients;
    then a = w + (c‖g_0‖ / ‖G_x‖) x. (The official code fixes w uniform and divides the step by
    1 + c²; the conflict_opt convention has no such rescaling, so neither has this.)
    """
    from scipy.optimize import minimize

    k = gram.shape[0]
    b = gram @ w
    radius = c * np.sqrt(max(float(w @ b), 0.0))

    def objective(x: np.ndarray) -> float:
        return float(x @ b + radius * np.sqrt(x @ gram @ x + 1e-8))

    res = minimize(
        objective,
        np.full(k, 1.0 / k),
        method="SLSQP",
        bounds=[(0.0, 1.0)] * k,
        constraints=({"type": "eq", "fun": lambda x: 1.0 - x.sum()},),
    )
    x = res.x
    gx_norm = np.sqrt(max(float(x @ gram @ x), 0.0))
    coeffs = w + (radius / gx_norm) * x if gx_norm > 0 else w.copy()
    return x, coeffs, bool(res.success)


def _torchjd_cagrad_dual(case: helpers.Case, a: np.ndarray) -> np.ndarray:
    """TorchJD returns a = 1/K + (c‖g_0‖/‖G_p‖)·p, so p = (a − 1/K) / Σ(a − 1/K)."""
    u = a - 1.0 / case.k
    s = u.sum()
    return u / s if s > 0 else np.full(case.k, np.nan)


def make_peer(name: str) -> Peer:
    """The peer called ``name``; skips when its package is missing."""
    if name == "slsqp_cagrad":
        pytest.importorskip("scipy")
        return Peer(
            provider="slsqp",
            backend="scipy-SLSQP",
            method="cagrad",
            uniform=False,
            inputs=lambda cs: (cs.gram, cs.weights, C),
            run=slsqp_cagrad,
            interpret=lambda cs, out: (out[0], out[1], out[2]),
        )
    aggregation = pytest.importorskip("torchjd.aggregation")
    if name == "torchjd_cagrad":
        weighting = aggregation.CAGradWeighting(c=C)
        return Peer(
            provider="torchjd",
            backend="CAGradWeighting",
            method="cagrad",
            uniform=True,
            inputs=lambda cs: (torch.tensor(cs.gram, dtype=torch.float64),),
            run=weighting,
            interpret=lambda cs, out: (
                _torchjd_cagrad_dual(cs, out.numpy()),
                out.numpy(),
                None,
            ),
        )
    if name == "torchjd_mgda":
        weighting = aggregation.MGDAWeighting()
        return Peer(
            provider="torchjd",
            backend="MGDAWeighting",
            method="mgda",
            uniform=False,
            inputs=lambda cs: (torch.tensor(cs.gram, dtype=torch.float64),),
            run=weighting,
            interpret=lambda cs, out: (out.numpy(), out.numpy(), None),
        )
    raise ValueError(name)


PEERS = ("torchjd_cagrad", "torchjd_mgda", "slsqp_cagrad")


def _run_peer(benchmark: Any, setup: Setup, name: str, k: int, batch: int) -> None:
    peer = make_peer(name)
    pr = setup.problems(k, batch, uniform=peer.uniform)
    inputs = [peer.inputs(cs) for cs in pr.cases]

    def call() -> list[Any]:
        return [peer.run(*args) for args in inputs]

    outputs = call()  # warm-up; scored
    if batch:
        benchmark.group = f"batched K={k}"
        benchmark.pedantic(call, rounds=SLOW_ROUNDS, iterations=1)
        setup.per_problem(benchmark, pr.n)
    else:
        benchmark.group = f"single K={k}"
        benchmark(call)
    duals, coeffs, oks = zip(
        *(peer.interpret(cs, out) for cs, out in zip(pr.cases, outputs, strict=True)),
        strict=True,
    )
    extra: dict[str, Any] = {}
    if oks[0] is not None:
        extra["success_all"] = bool(all(oks))
    setup.record(
        benchmark,
        provider=peer.provider,
        backend=peer.backend,
        method=peer.method,
        k=k,
        batch=batch,
        dual=np.stack(duals),
        coeffs=np.stack(coeffs),
        uniform=peer.uniform,
        **extra,
    )


@pytest.mark.parametrize("k", KS, ids=[f"K{k}" for k in KS])
@pytest.mark.parametrize("peer", PEERS)
def test_peer_single(benchmark: Any, setup: Setup, peer: str, k: int) -> None:
    """Time of one peer call on the same unbatched Gram as ``test_solve_single``."""
    _run_peer(benchmark, setup, peer, k, batch=0)


@pytest.mark.parametrize("peer", PEERS)
def test_peer_batched(benchmark: Any, setup: Setup, peer: str) -> None:
    """Time of a peer looped over the first 32 problems of the K=3 batch (no batched API)."""
    _run_peer(benchmark, setup, peer, BATCH_K, batch=EXACT_BATCH)
