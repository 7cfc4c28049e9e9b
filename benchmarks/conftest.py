"""Shared setup for the solver benchmarks: one problem factory, exact references, accuracy.

Every provider (our backends, TorchJD, the SLSQP formulation of the official CAGrad code) is
timed on the *same* Gram matrices, drawn once per ``(K, batch)`` from a fixed seed with
``tests/helpers.case(kind="conflict", weight_kind="interior")``, and scored against the
``backend="exact"`` answer (cvxpy + CLARABEL) on those Grams.

Environment:
    ``CONFLICT_OPT_BENCH_THREADS`` (default ``1``): torch intra-op threads. These problems are
    tiny (K ≤ 32, a 1,024 × 3 × 3 batch), so extra threads buy nothing and, on a small shared
    VM, OpenMP wake-ups can cost milliseconds per reduction; set it to compare.
    ``CONFLICT_OPT_BENCH_SLOW_ROUNDS`` (default ``5``): rounds for the slow loops timed with
    ``benchmark.pedantic`` (exact on a batch, peers looped over a batch).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import conflict_opt
from conflict_opt import Status

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import helpers  # tests/helpers.py: the shared Gram samplers

SEED = 20_260_501
C = 0.4
KS = (2, 3, 4, 8, 16, 32)
METHODS = ("cagrad_clip", "cagrad", "mgda", "linear")
BATCH = 1024  # the batched K=3 problem set for closed_form / iterative / auto
EXACT_BATCH = 32  # the exact backend (and the looping peers) run on its first 32 problems
BATCH_K = 3
THREADS = int(os.environ.get("CONFLICT_OPT_BENCH_THREADS", "1"))
SLOW_ROUNDS = int(os.environ.get("CONFLICT_OPT_BENCH_SLOW_ROUNDS", "5"))

torch.set_num_threads(THREADS)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with ``n`` torch threads, then restore the previous count (the bandwidth
    benchmarks use every core while the solver benchmarks pin one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclasses.dataclass(frozen=True, eq=False)
class Problems:
    """``n`` problems of size K: the cases (gradients kept for Φ) and their stacked tensors.

    ``gram`` is ``[K, K]`` (``batched=False``) or ``[n, K, K]``; ``weights`` likewise ``[K]`` or
    ``[n, K]``. All float64 on CPU.
    """

    cases: tuple[helpers.Case, ...]
    batched: bool

    @property
    def k(self) -> int:
        return self.cases[0].k

    @property
    def n(self) -> int:
        return len(self.cases)

    @functools.cached_property
    def gram(self) -> torch.Tensor:
        g = torch.tensor(np.stack([c.gram for c in self.cases]), dtype=torch.float64)
        return g if self.batched else g[0]

    @functools.cached_property
    def weights(self) -> torch.Tensor:
        w = torch.tensor(np.stack([c.weights for c in self.cases]), dtype=torch.float64)
        return w if self.batched else w[0]


class Setup:
    """The one setup factory: problems, exact references and the accuracy record, all cached."""

    def __init__(self) -> None:
        self._problems: dict[tuple[int, int, bool], Problems] = {}
        self._references: dict[tuple[int, int, bool, str], conflict_opt.SolveResult] = {}

    # ---------------------------------------------------------------- problems
    def problems(self, k: int, batch: int = 0, *, uniform: bool = False) -> Problems:
        """The fixed problems for ``(k, batch)``; ``batch=0`` is one unbatched problem.

        A batch of ``n ≤ BATCH`` is the first ``n`` problems of the ``BATCH`` set, so the exact
        backend and the looping peers see exactly the Grams the batched solvers see. ``uniform``
        swaps the weights for 1/K (TorchJD's CAGrad anchors at the uniform average).
        """
        key = (k, batch, uniform)
        if key not in self._problems:
            if uniform:
                base = self.problems(k, batch)
                cases = tuple(
                    dataclasses.replace(c, weights=np.full(k, 1.0 / k), weight_kind="uniform")
                    for c in base.cases
                )
            elif 0 < batch < BATCH:
                cases = self.problems(k, BATCH).cases[:batch]
            else:
                rng = np.random.default_rng([SEED, k, batch])
                cases = tuple(
                    helpers.case(rng, k, kind="conflict", weight_kind="interior")
                    for _ in range(max(batch, 1))
                )
            self._problems[key] = Problems(cases, batched=batch > 0)
        return self._problems[key]

    def reference(
        self, k: int, batch: int, method: str, *, uniform: bool = False
    ) -> conflict_opt.SolveResult:
        """``backend="exact"`` on :meth:`problems` (the accuracy yardstick), computed once."""
        key = (k, batch, uniform, method)
        if key not in self._references:
            pr = self.problems(k, batch, uniform=uniform)
            self._references[key] = conflict_opt.solve(
                pr.gram, pr.weights, method=method, c=C, backend="exact"
            )
        return self._references[key]

    # ---------------------------------------------------------------- accuracy
    def record(
        self,
        benchmark: Any,
        *,
        provider: str,
        backend: str,
        method: str,
        k: int,
        batch: int,
        dual: np.ndarray | None,
        coeffs: np.ndarray,
        uniform: bool = False,
        status: Sequence[int] | None = None,
        validate: bool | None = None,
        **extra: Any,
    ) -> None:
        """Fill ``benchmark.extra_info`` with the identity of the run and its accuracy.

        Accuracy against the exact backend on the same Grams (and weights):

        * ``dual_rel_err_max`` / ``_min`` / ``_median``: (Φ(p) − Φ(p_exact)) / phi_scale over
          the problems, Φ the dual objective of ``helpers.phi`` (CAGrad's for the CAGrad
          methods, ‖G_p‖ for MGDA), p clipped at 0 and renormalised onto the simplex first.
          Positive means worse than exact; slightly negative means exact was looser.
        * ``dual_infeasibility``: max(|Σp − 1|, max(−p)) of the raw dual.
        * ``cosine_min`` and ``rel_norm_diff_max`` of the update Σ a_k g_k against exact's.
        * ``coeff_max_abs_diff``: max |a − a_exact|.
        * ``all_optimal`` and ``status_counts`` when the provider reports a status.
        """
        pr = self.problems(k, batch, uniform=uniform)
        ref = self.reference(k, batch, method, uniform=uniform)
        ref_dual = ref.dual.reshape(-1, k).numpy()
        ref_coeffs = ref.coeffs.reshape(-1, k).numpy()
        coeffs = np.asarray(coeffs, dtype=np.float64).reshape(-1, k)

        info: dict[str, Any] = {
            "K": k,
            "batch": batch,
            "problems_per_call": pr.n,
            "method": method,
            "provider": provider,
            "backend": backend,
            "validate": validate,
            "weights": "uniform" if uniform else "interior",
            "c": C,
            "dtype": "float64",
            "threads": THREADS,
        }
        if dual is not None:
            dual = np.asarray(dual, dtype=np.float64).reshape(-1, k)
            info["dual_infeasibility"] = _num(
                np.max(np.maximum(np.abs(dual.sum(-1) - 1.0), np.maximum(-dual, 0.0).max(-1)))
            )
            # Φ is positively homogeneous, so an off-simplex p (SLSQP's Σx = 1 ± 1e-8) could
            # score below the optimum; score its projection p⁺ / Σp⁺ instead.
            dual = np.maximum(dual, 0.0)
            dual = dual / dual.sum(-1, keepdims=True)
            err = np.array(
                [
                    (helpers.phi(cs, p, C, method) - helpers.phi(cs, q, C, method))
                    / helpers.phi_scale(cs, method)
                    for cs, p, q in zip(pr.cases, dual, ref_dual, strict=True)
                ]
            )
            info["dual_rel_err_max"] = _num(np.max(err))
            info["dual_rel_err_min"] = _num(np.min(err))
            info["dual_rel_err_median"] = _num(np.median(err))
        cos, rel = [], []
        for cs, a, b in zip(pr.cases, coeffs, ref_coeffs, strict=True):
            d, d_ref = a @ cs.grads, b @ cs.grads
            nd, nr = np.linalg.norm(d), np.linalg.norm(d_ref)
            cos.append(d @ d_ref / (nd * nr) if nd > 0 and nr > 0 else np.nan)
            rel.append(np.linalg.norm(d - d_ref) / nr if nr > 0 else np.nan)
        info["cosine_min"] = _num(np.min(cos))
        info["rel_norm_diff_max"] = _num(np.max(rel))
        info["coeff_max_abs_diff"] = _num(np.max(np.abs(coeffs - ref_coeffs)))
        if status is not None:
            codes = np.asarray(status).reshape(-1)
            info["all_optimal"] = bool((codes == int(Status.OPTIMAL)).all())
            info["status_counts"] = {
                Status(int(s)).name: int((codes == s).sum()) for s in np.unique(codes)
            }
        info.update(extra)
        benchmark.extra_info.update(info)

    @staticmethod
    def per_problem(benchmark: Any, n: int) -> None:
        """After a run: median and mean time per problem (µs) of a call that solves ``n``."""
        stats = getattr(benchmark, "stats", None)
        if stats is None:  # --benchmark-disable
            return
        benchmark.extra_info["per_problem_median_us"] = stats.stats.median / n * 1e6
        benchmark.extra_info["per_problem_mean_us"] = stats.stats.mean / n * 1e6


def _num(x: float) -> float | None:
    """A JSON-safe float (NaN → None)."""
    x = float(x)
    return None if np.isnan(x) else x


@pytest.fixture(scope="session")
def setup() -> Setup:
    """The shared setup factory (one per session, so references are computed once)."""
    return Setup()
