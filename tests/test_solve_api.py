"""The public solve() contract: validation, shapes, dtypes, batching, statuses and strict mode."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import conflict_opt
from conflict_opt import SolverError, SolveResult, Status

from . import helpers

FAST = ("closed_form", "iterative")


def conflict_gram(k: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    case = helpers.case(np.random.default_rng(seed), k, kind="conflict")
    return case.gram_tensor(), torch.tensor(case.weights)


# --- invalid input: ValueError naming the bad value ------------------------------------------


@pytest.mark.parametrize("c", [-0.1, 1.0, 1.5, float("nan")])
def test_c_outside_unit_interval_is_rejected(c: float) -> None:
    gram, w = conflict_gram()
    with pytest.raises(ValueError, match=r"`c` must be in \[0, 1\), got c="):
        conflict_opt.solve(gram, w, c=c)


def test_c_of_wrong_type_is_rejected() -> None:
    gram, w = conflict_gram()
    with pytest.raises(ValueError, match=r"got c='0\.4'"):
        conflict_opt.solve(gram, w, c="0.4")  # type: ignore[arg-type]


@pytest.mark.parametrize("c", [np.float32(0.4), np.float16(0.4), np.float64(0.4), np.int64(0)])
def test_c_as_a_numpy_scalar_is_accepted(c: object) -> None:
    """Any real scalar is a radius: the same answer as the Python float of the same value."""
    gram, w = conflict_gram()
    res = conflict_opt.solve(gram, w, c=c)  # type: ignore[arg-type]
    ref = conflict_opt.solve(gram, w, c=float(c))  # type: ignore[arg-type]
    assert Status(int(res.status)) == Status.OPTIMAL
    assert torch.equal(res.coeffs, ref.coeffs)


@pytest.mark.parametrize("c", [True, np.bool_(False), torch.tensor(0.4)])
def test_c_that_is_not_a_real_scalar_is_rejected(c: object) -> None:
    gram, w = conflict_gram()
    with pytest.raises(ValueError, match=r"`c` must be a real number in \[0, 1\), got c="):
        conflict_opt.solve(gram, w, c=c)  # type: ignore[arg-type]


@pytest.mark.parametrize("c", [np.float32("nan"), np.float32(1.5), np.int64(-1)])
def test_numpy_c_outside_unit_interval_is_rejected(c: object) -> None:
    gram, w = conflict_gram()
    with pytest.raises(ValueError, match=r"`c` must be in \[0, 1\), got c="):
        conflict_opt.solve(gram, w, c=c)  # type: ignore[arg-type]


def test_unknown_method_and_backend_list_the_choices() -> None:
    gram, w = conflict_gram()
    with pytest.raises(ValueError, match=r"`method` must be one of .*got method='pcgrad'"):
        conflict_opt.solve(gram, w, method="pcgrad")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`backend` must be one of .*got backend='cuda'"):
        conflict_opt.solve(gram, w, backend="cuda")  # type: ignore[arg-type]


def test_closed_form_refuses_more_than_three_objectives() -> None:
    gram, w = conflict_gram(4)
    with pytest.raises(ValueError, match=r"closed_form.*K <= 3.*got K=4"):
        conflict_opt.solve(gram, w, backend="closed_form")


@pytest.mark.parametrize(
    ("gram", "match"),
    [
        (torch.ones(3), r"shape \[\.\.\., K, K\], got shape=\(3,\)"),
        (torch.ones(2, 3), r"got shape=\(2, 3\)"),
        (torch.ones(0, 0), "got K=0"),
        (torch.ones(2, 2, dtype=torch.int64), "floating dtype, got dtype=torch.int64"),
        ([[1.0, 0.0], [0.0, 1.0]], "must be a torch.Tensor, got list"),
    ],
)
def test_malformed_gram_is_rejected(gram: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        conflict_opt.solve(gram)  # type: ignore[arg-type]


def test_asymmetric_gram_is_rejected_with_its_asymmetry() -> None:
    gram = torch.tensor([[1.0, 0.5], [-0.5, 1.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"symmetric: max \|H - H\^T\| = 1 against max \|H\| = 1"):
        conflict_opt.solve(gram)


def test_indefinite_gram_is_rejected_with_its_eigenvalue() -> None:
    gram = torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"positive semidefinite.*smallest eigenvalue -1"):
        conflict_opt.solve(gram)


def test_invalid_gram_in_a_batch_is_named_by_its_flat_index() -> None:
    """Non-finite problems are NONFINITE, not errors, but they still occupy their index: the
    asymmetric Gram below is problem 1 of the flattened batch, after a NaN one, and the
    indefinite one problem 2, after a NaN one and a valid one."""
    nan = torch.full((2, 2), math.nan, dtype=torch.float64)
    asymmetric = torch.tensor([[1.0, 0.5], [0.0, 1.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"symmetric.*\(problem 1 of the flattened batch\)"):
        conflict_opt.solve(torch.stack([nan, asymmetric]))
    eye = torch.eye(2, dtype=torch.float64)
    indefinite = torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"semidefinite.*\(problem 2 of the flattened batch\)"):
        conflict_opt.solve(torch.stack([nan, eye, indefinite]))


def test_roundoff_negative_eigenvalues_are_accepted() -> None:
    g = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    gram = torch.cat([g, -g]) @ torch.cat([g, -g]).T  # rank 1, exactly opposite gradients
    gram = gram - 1e-14 * torch.eye(2, dtype=torch.float64)  # slightly indefinite
    res = conflict_opt.solve(gram, [0.7, 0.3], strict=True)
    assert torch.isfinite(res.coeffs).all()


@pytest.mark.parametrize(
    ("weights", "match"),
    [
        ([0.5, 0.6, -0.1], r"nonnegative, got weights=\[0.5, 0.6, -0.1"),
        ([0.5, 0.6, 0.1], r"sum to 1 .*got sum=1.2 for weights=\[0.5, 0.6, 0.1"),
        ([0.5, 0.5], r"shape \[K\] or \[\.\.\., K\] with K=3, got shape=\(2,\)"),
        ([float("nan"), 0.5, 0.5], "finite, got weights=\\[nan"),
        (0.3, "got shape=\\(\\)"),
        ("abc", r"real numbers, got weights='abc'"),
        ([0.5, None, 0.5], r"real numbers, got weights=\[0.5, None, 0.5\]"),
        ([[0.5], [0.25, 0.25]], r"real numbers, got weights=\[\[0.5\], \[0.25, 0.25\]\]"),
    ],
)
def test_bad_weights_are_rejected(weights: object, match: str) -> None:
    gram, _ = conflict_gram()
    with pytest.raises(ValueError, match=match):
        conflict_opt.solve(gram, weights)  # type: ignore[arg-type]


def test_weights_that_do_not_broadcast_are_rejected() -> None:
    gram = torch.eye(3, dtype=torch.float64).expand(4, 3, 3)
    with pytest.raises(ValueError, match=r"does not broadcast to the Gram batch \(4,\)"):
        conflict_opt.solve(gram, torch.full((5, 3), 1 / 3))


def test_weights_are_renormalised_within_tolerance() -> None:
    gram, _ = conflict_gram()
    res = conflict_opt.solve(gram, [0.2, 0.3, 0.5 + 1e-9], method="linear")
    assert math.isclose(float(res.coeffs.sum()), 1.0, abs_tol=1e-15)


def test_validate_false_skips_value_checks() -> None:
    gram = torch.tensor([[1.0, 0.5], [-0.5, 1.0]], dtype=torch.float64)
    res = conflict_opt.solve(gram, validate=False)  # symmetrised internally, no raise
    assert res.coeffs.shape == (2,)


# MGDA ignores the weights, so only the other methods can be poisoned by them.
@pytest.mark.parametrize("method", ["cagrad_clip", "cagrad", "linear"])
@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("batched", [False, True], ids=["host", "torch"])
@pytest.mark.parametrize("weights", [[0.0, 0.0, 0.0], [math.nan, 0.5, 0.5]], ids=["zero", "nan"])
def test_unvalidated_nonfinite_weights_are_nonfinite_never_optimal(
    method: str, backend: str, batched: bool, weights: list[float]
) -> None:
    """validate=False lets all-zero weights through (renormalised to 0/0): NaN coefficients and
    a NaN gap, which compares false against every tolerance and so once read as OPTIMAL."""
    gram, _ = conflict_gram()
    res = conflict_opt.solve(
        gram[None] if batched else gram, weights, method=method, backend=backend, validate=False
    )
    assert Status(int(res.status.reshape(()))) == Status.NONFINITE
    assert torch.equal(res.coeffs.reshape(3), torch.zeros(3, dtype=torch.float64))
    assert float(res.gap.reshape(())) == math.inf


def test_status_follows_the_documented_gap_thresholds() -> None:
    """docs/solvers.md, "Statuses": OPTIMAL up to a gap of 1e-9, INACCURATE up to 1e-6, MAX_ITER
    beyond, whether or not an iteration budget ran out (the closed form or the reference may
    fail to certify as well); and check() passes OPTIMAL and INACCURATE only."""
    from conflict_opt.solvers import _problem

    gap = torch.tensor([0.0, 1e-9, 1.5e-9, 1e-7, 1e-6, 1.5e-6, 1e-3], dtype=torch.float64)
    ok, loose, failed = Status.OPTIMAL, Status.INACCURATE, Status.MAX_ITER
    expected = [ok, ok, loose, loose, loose, failed, failed]
    for exhausted in (None, torch.zeros(7, dtype=torch.bool), torch.ones(7, dtype=torch.bool)):
        status = _problem.status_from_gap(gap, exhausted)
        assert [Status(int(s)) for s in status] == expected, exhausted
    zeros = torch.zeros(7, 2, dtype=torch.float64)
    res = SolveResult(zeros, zeros, zeros, status, torch.zeros(7, dtype=torch.int64), gap)
    conflict_opt.check(helpers.row(res, 4))  # INACCURATE passes
    with pytest.raises(SolverError, match=r"2 of 7 problems failed: MAX_ITER=2 .*index 5"):
        conflict_opt.check(res)


def test_nan_gap_maps_to_nonfinite() -> None:
    from conflict_opt.solvers import _problem

    gap = torch.tensor([0.0, math.nan, math.inf, 1e-3], dtype=torch.float64)
    status = _problem.status_from_gap(gap, torch.tensor([False, True, False, True]))
    assert [Status(int(s)) for s in status] == [
        Status.OPTIMAL,
        Status.NONFINITE,
        Status.NONFINITE,
        Status.MAX_ITER,
    ]


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("batched", [False, True], ids=["host", "torch"])
def test_weights_requiring_grad_do_not_leak_autograd(backend: str, batched: bool) -> None:
    """The solve is not differentiable: weights that require grad are read as values, like the
    Gram, and the result (and its repr) carries no graph."""
    gram, w = conflict_gram()
    ref = conflict_opt.solve(gram[None] if batched else gram, w, backend=backend)
    w = w.clone().requires_grad_(True)
    res = conflict_opt.solve(gram[None] if batched else gram, w, backend=backend)
    for field in res:
        assert field.grad_fn is None and not field.requires_grad
    torch.testing.assert_close(res.coeffs, ref.coeffs, rtol=1e-12, atol=1e-14)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        repr(res)


# --- shapes, dtypes, batching -------------------------------------------------------------------


@pytest.mark.parametrize("method", ["cagrad_clip", "cagrad", "mgda", "linear"])
@pytest.mark.parametrize("backend", FAST)
def test_batched_solve_equals_one_by_one(method: str, backend: str) -> None:
    """A batch equals its problems solved one by one: through the same torch path (a batch of
    one), to round-off in the coefficients; unbatched (the host path, solvers/_host.py), in the
    update direction, which is unique where the coefficients are not (duplicated gradients)."""
    rng = np.random.default_rng(7)
    cases = [helpers.case(rng, 3, kind=helpers.KINDS[i % 5]) for i in range(12)]
    gram = torch.tensor(np.stack([c.gram for c in cases])).reshape(3, 4, 3, 3)
    weights = torch.tensor(np.stack([c.weights for c in cases])).reshape(3, 4, 3)
    batched = conflict_opt.solve(gram, weights, method=method, backend=backend)
    assert batched.coeffs.shape == (3, 4, 3)
    assert batched.status.shape == (3, 4)
    for i in range(3):
        for j in range(4):
            case = cases[4 * i + j]
            one = conflict_opt.solve(
                gram[i, j : j + 1], weights[i, j : j + 1], method=method, backend=backend
            )
            torch.testing.assert_close(batched.coeffs[i, j], one.coeffs[0], rtol=1e-12, atol=1e-13)
            single = conflict_opt.solve(gram[i, j], weights[i, j], method=method, backend=backend)
            d = batched.coeffs[i, j].numpy() @ case.grads
            d_single = single.coeffs.numpy() @ case.grads
            tol = 1e-9 * np.linalg.norm(case.grads, axis=1).max()
            assert np.linalg.norm(d - d_single) <= tol, (case, batched.coeffs[i, j], single.coeffs)
            assert int(batched.status[i, j]) == int(one.status[0]) == int(single.status)


def test_one_weight_vector_broadcasts_over_a_batch() -> None:
    gram = torch.stack([conflict_gram(3, s)[0] for s in range(5)])
    w = torch.tensor([0.5, 0.3, 0.2])
    res = conflict_opt.solve(gram, w)
    for b in range(5):
        torch.testing.assert_close(res.coeffs[b], conflict_opt.solve(gram[b], w).coeffs)


def test_empty_batch_returns_empty_result() -> None:
    res = conflict_opt.solve(torch.zeros(0, 3, 3))
    assert res.coeffs.shape == (0, 3)
    assert res.status.shape == (0,)
    assert "empty batch" in repr(res)


@pytest.mark.parametrize(
    ("dtype", "rtol"),
    [(torch.float32, 1e-5), (torch.float16, 2e-2), (torch.bfloat16, 5e-2), (torch.float64, 1e-12)],
)
def test_low_precision_grams_solve_in_float64_and_return_at_least_float32(
    dtype: torch.dtype, rtol: float
) -> None:
    # A well-conditioned problem: a near-cancelling one would turn the Gram's own rounding in
    # bf16/fp16 into large coefficient changes, which says nothing about the solver.
    case = helpers.case(np.random.default_rng(5), 3, kind="random")
    gram, w = case.gram_tensor(), torch.tensor(case.weights)
    assert float(torch.linalg.cond(gram)) < 100
    ref = conflict_opt.solve(gram, w)
    res = conflict_opt.solve(gram.to(dtype), w)
    assert res.coeffs.dtype == torch.promote_types(dtype, torch.float32)
    assert Status(int(res.status)) == Status.OPTIMAL
    # The rounding of the Gram itself, not the solve, sets the tolerance.
    torch.testing.assert_close(res.coeffs.double(), ref.coeffs, rtol=rtol, atol=rtol)


def test_result_stays_on_the_gram_device(device: torch.device) -> None:
    gram, w = conflict_gram()
    res = conflict_opt.solve(gram.to(device), w.to(device), backend="iterative")
    for field in res:
        assert field.device.type == device.type


def test_repr_summarises_the_result() -> None:
    gram, w = conflict_gram()
    assert "status=OPTIMAL" in repr(conflict_opt.solve(gram, w))
    batched = conflict_opt.solve(gram.expand(3, 3, 3), w)
    assert "shape=(3, 3)" in repr(batched) and "OPTIMAL=3" in repr(batched)
    assert isinstance(batched, SolveResult)


def test_repr_of_many_objectives_summarises_the_coefficients() -> None:
    """Up to 8 objectives the values are printed; beyond, their count and range only."""
    eight = conflict_opt.solve(torch.eye(8, dtype=torch.float64), method="mgda")
    assert "coeffs=[0.125, 0.125" in repr(eight) and "dual=[" in repr(eight)
    gram, w = conflict_gram(9)
    res = conflict_opt.solve(gram, w)
    text = repr(res)
    low, high = float(res.coeffs.min()), float(res.coeffs.max())
    assert text == (
        f"SolveResult(coeffs=<9 values in [{low:.4g}, {high:.4g}]>, "
        f"status=OPTIMAL, gap={float(res.gap):.3g})"
    )


# --- degenerate policy ----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", [*FAST, "exact"])
@pytest.mark.parametrize("method", ["cagrad_clip", "cagrad", "mgda"])
def test_zero_gram_is_degenerate_with_weights_as_coefficients(method: str, backend: str) -> None:
    if backend == "exact":
        pytest.importorskip("cvxpy")
    w = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)
    res = conflict_opt.solve(torch.zeros(3, 3), w, method=method, backend=backend, strict=False)
    assert Status(int(res.status)) == Status.DEGENERATE
    torch.testing.assert_close(res.coeffs.double(), w)
    with pytest.raises(SolverError, match="DEGENERATE=1"):
        conflict_opt.check(res)


@pytest.mark.parametrize("backend", FAST)
def test_cancelling_weighted_gradient_is_degenerate_and_finite(backend: str) -> None:
    # g_0 = 0.5 g + 0.5 (−g) = 0 while the Gram is not zero: RACO gives G_0 = g_0 = 0.
    g = torch.tensor([[1.0, 2.0], [-1.0, -2.0]], dtype=torch.float64)
    res = conflict_opt.solve(g @ g.T, [0.5, 0.5], backend=backend)
    assert Status(int(res.status)) == Status.DEGENERATE
    torch.testing.assert_close(res.coeffs, torch.tensor([0.5, 0.5], dtype=torch.float64))
    assert float(res.gap) == 0.0


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_gram_gives_nonfinite_status_zero_coefficients(backend: str, bad: float) -> None:
    gram, w = conflict_gram()
    gram = gram.clone()
    gram[0, 1] = gram[1, 0] = bad
    res = conflict_opt.solve(gram, w, backend=backend)
    assert Status(int(res.status)) == Status.NONFINITE
    assert torch.equal(res.coeffs, torch.zeros(3, dtype=torch.float64))
    assert not torch.isnan(res.dual).any()
    with pytest.raises(SolverError, match="NONFINITE=1"):
        conflict_opt.solve(gram, w, backend=backend, strict=True)


def test_nonfinite_problem_does_not_poison_its_batch() -> None:
    gram, w = conflict_gram()
    batch = torch.stack([gram, torch.full_like(gram, float("nan")), gram])
    res = conflict_opt.solve(batch, w)
    assert [Status(int(s)) for s in res.status] == [
        Status.OPTIMAL,
        Status.NONFINITE,
        Status.OPTIMAL,
    ]
    torch.testing.assert_close(res.coeffs[0], res.coeffs[2])


@pytest.mark.parametrize(("method", "c"), [("linear", 0.4), ("cagrad_clip", 0.0), ("cagrad", 0.0)])
@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("batched", [False, True], ids=["host", "torch"])
def test_nonfinite_gram_is_nonfinite_even_without_a_dual_to_solve(
    method: str, c: float, backend: str, batched: bool
) -> None:
    """The NaN/Inf policy covers every method: linear scalarisation and c = 0 solve no dual
    (a = w), but a NaN Gram must still give NONFINITE with a = 0, never a = w as OPTIMAL."""
    gram, w = conflict_gram()
    gram = gram.clone()
    gram[0, 2] = gram[2, 0] = math.nan
    res = conflict_opt.solve(
        gram[None] if batched else gram, w, method=method, c=c, backend=backend
    )
    assert Status(int(res.status.reshape(()))) == Status.NONFINITE
    assert torch.equal(res.coeffs.reshape(3), torch.zeros(3, dtype=torch.float64))
    assert float(res.gap.reshape(())) == math.inf


@pytest.mark.parametrize("backend", FAST)
def test_single_objective(backend: str) -> None:
    """K = 1: p = w = 1 and G_0 = g + c‖g‖ g/‖g‖, so a = 1 + c (RACO Algorithm 1, no rescaling)."""
    gram = torch.tensor([[4.0]], dtype=torch.float64)
    for method, expected in [("cagrad_clip", 1.4), ("cagrad", 1.4), ("mgda", 1.0), ("linear", 1.0)]:
        res = conflict_opt.solve(gram, method=method, c=0.4, backend=backend, strict=True)
        assert float(res.coeffs) == pytest.approx(expected, abs=1e-12)


def test_strict_passes_on_success_and_check_returns_the_result() -> None:
    gram, w = conflict_gram()
    res = conflict_opt.solve(gram, w, strict=True)
    assert conflict_opt.check(res) is res


def test_iterative_budget_exhaustion_is_reported_as_max_iter() -> None:
    from conflict_opt.solvers import _iterative, _problem

    gram, w = conflict_gram(8)
    problem = _problem.prepare(gram[None], w[None], "cagrad", 0.4)
    _, iterations, gap, exhausted = _iterative.solve_iterative(problem, max_iter=2)
    status = _problem.status_from_gap(gap, exhausted)
    assert bool(exhausted.all()) and int(iterations) == 2
    assert Status(int(status)) == Status.MAX_ITER


@pytest.mark.parametrize("batched", [False, True], ids=["host", "torch"])
def test_iterative_budget_grows_with_the_number_of_objectives(batched: bool) -> None:
    """K = 129 full-rank needs 263 iterations, beyond the fixed 200 it once had: the budget is
    max(200, 4K) (docs/solvers.md, "Iterative"), and the answer is certified."""
    from conflict_opt.solvers import _iterative

    g = torch.randn(129, 258, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    gram = g @ g.T
    res = conflict_opt.solve(gram[None] if batched else gram, backend="iterative")
    assert Status(int(res.status.reshape(()))) == Status.OPTIMAL
    assert float(res.gap.reshape(())) <= 1e-9
    assert 200 < int(res.iterations.reshape(())) <= _iterative.budget(129) == 516


def test_exact_backend_without_cvxpy_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    from conflict_opt.solvers import _exact

    real_import = builtins.__import__

    def fake_import(name: str, *args: object, **kwargs: object) -> object:
        if name == "cvxpy":
            raise ImportError("No module named 'cvxpy'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r"pip install 'conflict-opt\[exact\]'"):
        _exact._import_cvxpy()


def test_auto_never_picks_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    from conflict_opt.solvers import _exact

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("auto must not call the exact backend")

    monkeypatch.setattr(_exact, "solve_exact", boom)
    for k in (2, 3, 5):
        gram, w = conflict_gram(k)
        conflict_opt.solve(gram, w, backend="auto", strict=True)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("batched", [False, True], ids=["host", "torch"])
def test_auto_is_the_closed_form_up_to_three_objectives_then_iterative(
    k: int, batched: bool
) -> None:
    """docs/solvers.md, "Backends": auto takes the closed form for K <= 3 (exact, no iterations)
    and the iterative backend beyond; its answer is that backend's, field for field."""
    gram, w = conflict_gram(k)
    if batched:
        gram, w = gram[None], w[None]
    auto = conflict_opt.solve(gram, w, backend="auto")
    chosen = conflict_opt.solve(gram, w, backend="closed_form" if k <= 3 else "iterative")
    for name in SolveResult._fields:
        assert torch.equal(getattr(auto, name), getattr(chosen, name)), name
    if k <= 3:
        assert int(auto.iterations.reshape(())) == 0


def zero_gradient_vertex() -> tuple[torch.Tensor, list[float]]:
    """A zero gradient whose vertex is the dual optimum (G_p* = 0), with the third gradient's
    constraint binding off the support: the face dual (u = 0) cannot certify it."""
    g = torch.tensor([[1.0, 0.0], [0.0, 0.0], [-0.5, 3.0]], dtype=torch.float64)
    return g @ g.T, [0.5, 0.5, 0.0]


@pytest.mark.parametrize(
    "backend", ["auto", "closed_form", "iterative", pytest.param("exact", marks=pytest.mark.exact)]
)
@pytest.mark.parametrize("batched", [False, True], ids=["host", "torch"])
def test_zero_gradient_vertex_is_certified_optimal(backend: str, batched: bool) -> None:
    gram, w = zero_gradient_vertex()
    res = conflict_opt.solve(gram[None] if batched else gram, w, backend=backend, strict=True)
    assert Status(int(res.status.reshape(()))) == Status.OPTIMAL
    assert float(res.gap.reshape(())) <= 1e-9
    torch.testing.assert_close(res.dual.reshape(3), torch.tensor([0.0, 1.0, 0.0]).double())
    # G̃_p = 0, so RACO's step 6 gives a = w.
    torch.testing.assert_close(res.coeffs.reshape(3), torch.tensor(w).double())


@pytest.mark.cuda
@pytest.mark.parametrize("backend", FAST)
def test_hot_path_has_no_host_synchronisation(backend: str) -> None:
    """STYLE rule 7: with validate=False and device-resident weights, solving never syncs."""
    gram, w = conflict_gram(3)
    gram, w = gram.cuda(), w.cuda()
    conflict_opt.solve(gram, w, backend=backend, validate=False)  # warm-up (lazy init syncs)
    torch.cuda.set_sync_debug_mode("error")
    try:
        res = conflict_opt.solve(gram, w, backend=backend, validate=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert res.coeffs.is_cuda


@pytest.mark.parametrize("backend", ["closed_form", "iterative"])
@pytest.mark.parametrize("batched", [False, True], ids=["host", "torch"])
def test_roundoff_indefinite_low_precision_gram_is_certified(backend: str, batched: bool) -> None:
    """Rounding a Gram to bfloat16 can leave it slightly indefinite (validation accepts that
    as round-off). Every backend then solves the PSD projection the certificate measures, so
    the answer is certified, and both backends give the same direction."""
    rng = np.random.default_rng(4)
    g = rng.standard_normal((3, 6))
    g -= 0.5 * g.mean(0)  # conflicting, with an optimum on an edge
    exact = g @ g.T
    evals, evecs = np.linalg.eigh(exact)
    # Push the smallest eigenvalue below zero by 1e-3 of the trace, as bf16 rounding can.
    shifted = exact - (evals[0] + 1e-3 * evals.sum()) * np.outer(evecs[:, 0], evecs[:, 0])
    gram = torch.tensor(shifted, dtype=torch.bfloat16)
    assert np.linalg.eigvalsh(gram.double().numpy())[0] < 0
    w = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    if batched:
        res = conflict_opt.solve(gram[None], w[None], backend=backend)
        res = helpers.row(res, 0)
    else:
        res = conflict_opt.solve(gram, w, backend=backend)
    assert Status(int(res.status)) == Status.OPTIMAL, (res.status, res.gap)
    other = "iterative" if backend == "closed_form" else "closed_form"
    ref = conflict_opt.solve(gram[None], w[None], backend=other)
    h = gram.double().numpy()
    diff = (res.coeffs.double() - ref.coeffs[0].double()).numpy()
    # Directions compared in the (projected) Gram metric, relative to the update's size.
    assert abs(diff @ h @ diff) <= 1e-10 * abs(
        ref.coeffs[0].double().numpy() @ h @ ref.coeffs[0].double().numpy()
    )
