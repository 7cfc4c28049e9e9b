"""The unbatched CPU fast path (conflict_opt/solvers/_host.py): when it answers, what it returns,
and that everything it cannot certify reaches the torch path unchanged.

Every test runs twice: with the compiled CAGrad active set (csrc/host_solve.c, the default) and
with ``CONFLICT_OPT_DISABLE_NATIVE=1`` (the numpy/LAPACK one). Their agreement with each other
is in test_host_native.py, their accuracy against the cvxpy reference on the 2,100 generated
problems in test_parity.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import conflict_opt
from conflict_opt import Status, primitives
from conflict_opt.solvers import _host, _problem

from . import helpers

BACKENDS = ("closed_form", "iterative")
METHODS = ("cagrad_clip", "cagrad", "mgda")


@pytest.fixture(autouse=True, params=["native", "numpy"])
def host_impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which active set the ``iterative`` host path uses for CAGrad methods."""
    if request.param == "numpy":
        monkeypatch.setenv(primitives.NATIVE_DISABLE_ENV, "1")
    return request.param


def backend_for(k: int, backend: str) -> str:
    return backend if k <= 3 else "iterative"


def conflicting(k: int, seed: int = 0) -> helpers.Case:
    return helpers.case(np.random.default_rng(seed), k, kind="conflict")


def torch_path(gram: torch.Tensor, weights, **kwargs) -> conflict_opt.SolveResult:
    """The batched torch path on one problem (a batch of one never takes the host path)."""
    w = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)[None]
    return helpers.row(conflict_opt.solve(gram[None], w, **kwargs), 0)


# --- routing -------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["auto", *BACKENDS])
def test_unbatched_cpu_problems_take_the_host_path(
    monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    from conflict_opt.solvers import _problem

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("an ordinary unbatched problem must not reach the torch path")

    monkeypatch.setattr(_problem, "prepare", boom)
    for k in (2, 3, 5):
        case = conflicting(k)
        res = conflict_opt.solve(
            torch.tensor(case.gram), case.weights.tolist(), backend=backend_for(k, backend)
        )
        assert Status(int(res.status)) == Status.OPTIMAL


def test_batched_problems_never_take_the_host_path(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("a batch must stay on the torch path")

    monkeypatch.setattr(conflict_opt.solvers, "solve_host", boom)
    case = conflicting(3)
    conflict_opt.solve(torch.tensor(case.gram)[None], torch.tensor(case.weights)[None])


def test_exact_backend_never_takes_the_host_path(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("cvxpy")

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("backend='exact' is the reference and must stay one")

    monkeypatch.setattr(conflict_opt.solvers, "solve_host", boom)
    case = conflicting(3)
    conflict_opt.solve(torch.tensor(case.gram), torch.tensor(case.weights), backend="exact")


def test_a_non_square_gram_is_reported_as_such_before_any_backend_choice() -> None:
    with pytest.raises(ValueError, match=r"shape \[\.\.\., K, K\]"):
        conflict_opt.solve(torch.zeros(2, 5), backend="closed_form")


def test_closed_form_still_refuses_more_than_three_objectives() -> None:
    case = conflicting(4)
    with pytest.raises(ValueError, match="K <= 3"):
        conflict_opt.solve(torch.tensor(case.gram), backend="closed_form")


# --- what it hands to the torch path -------------------------------------------------------------


def opposite_gram() -> torch.Tensor:
    g = torch.tensor([[1.0, 2.0], [-1.0, -2.0], [0.5, 0.0]], dtype=torch.float64)
    return g @ g.T


HANDED_OVER = {
    "nan": (torch.tensor([[1.0, math.nan], [math.nan, 1.0]]), None),
    "inf": (torch.tensor([[math.inf, 0.0], [0.0, 1.0]]), None),
    "zero gram": (torch.zeros(3, 3), None),
    "asymmetric": (torch.tensor([[1.0, 0.5], [0.0, 1.0]]), None),
    "indefinite": (torch.tensor([[1.0, 2.0], [2.0, 1.0]]), None),
    "negative weight": (torch.eye(2), [1.5, -0.5]),
    "weights off the simplex": (torch.eye(2), [0.6, 0.6]),
    "wrong number of weights": (torch.eye(3), [0.5, 0.5]),
    "batched weights": (torch.eye(2), torch.tensor([[0.5, 0.5]])),
    "weights of another type": (torch.eye(2), np.array([0.5, 0.5])),
    "boolean weights": (torch.eye(2), [True, False]),
    "vanishing anchor": (opposite_gram()[:2, :2], [0.5, 0.5]),
    "zero-norm optimum": (opposite_gram(), [0.2, 0.2, 0.6]),
}


@pytest.mark.parametrize("name", list(HANDED_OVER))
@pytest.mark.parametrize("backend", BACKENDS)
def test_what_it_cannot_certify_goes_to_the_torch_path(name: str, backend: str) -> None:
    gram, weights = HANDED_OVER[name]
    method = "mgda" if name == "zero-norm optimum" else "cagrad_clip"
    assert _host.solve_host(gram, weights, method, 0.4, backend, True) is None


@pytest.mark.parametrize("method", ["cagrad_clip", "cagrad"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_gradient_vertex_handed_over_ends_optimal(backend: str, method: str) -> None:
    """The dual optimum is the vertex of a zero gradient (G_p* = 0): the host path cannot
    certify a zero norm and hands it over, and the torch path's certificate must then prove it
    OPTIMAL (the closed form's once ended MAX_ITER, gap 0.164)."""
    g = torch.tensor([[1.0, 0.0], [0.0, 0.0], [-0.5, 3.0]], dtype=torch.float64)
    gram, w = g @ g.T, [0.5, 0.5, 0.0]
    assert _host.solve_host(gram, w, method, 0.4, backend, True) is None
    res = conflict_opt.solve(gram, w, method=method, backend=backend)
    assert Status(int(res.status)) == Status.OPTIMAL and float(res.gap) <= 1e-9
    torch.testing.assert_close(res.dual, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(res.coeffs, torch.tensor(w, dtype=torch.float64))


def test_rank_deficient_grams_go_to_the_interior_point() -> None:
    """The active set takes positive definite Grams only (every face then has a unique KKT
    point); the closed form takes them, its candidates being certified one by one."""
    case = helpers.case(np.random.default_rng(3), 5, rank=3)
    gram = torch.tensor(case.gram)
    assert _host.solve_host(gram, None, "cagrad", 0.4, "iterative", True) is None
    res = conflict_opt.solve(gram, backend="iterative")
    assert int(res.iterations) > 0 and Status(int(res.status)) == Status.OPTIMAL


def test_invalid_input_still_raises_the_dispatchers_errors() -> None:
    with pytest.raises(ValueError, match="symmetric"):
        conflict_opt.solve(torch.tensor([[1.0, 0.5], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="positive semidefinite"):
        conflict_opt.solve(torch.tensor([[1.0, 2.0], [2.0, 1.0]]))
    with pytest.raises(ValueError, match="sum to 1"):
        conflict_opt.solve(torch.eye(2), [0.6, 0.6])
    with pytest.raises(ValueError, match="nonnegative"):
        conflict_opt.solve(torch.eye(5), [1.5, -0.5, 0.0, 0.0, 0.0], backend="iterative")


def _indefinite_gram() -> torch.Tensor:
    """A 3×3 Gram whose smallest eigenvalue is −2e-5 (−1.3e-5 of the trace): beyond the
    round-off that validation accepts for float64 (−1e-6 of the trace)."""
    q, _ = torch.linalg.qr(
        torch.tensor([[2.0, 1.0, 0.0], [1.0, 3.0, 1.0], [0.0, 1.0, 4.0]]).double()
    )
    return q @ torch.diag(torch.tensor([1.0, 0.5, -2e-5], dtype=torch.float64)) @ q.T


def _asymmetric_gram() -> torch.Tensor:
    """Asymmetric by 1e-5 of its largest entry: beyond float64's tolerance of 1e-6."""
    gram = torch.tensor([[2.0, 0.3, -0.4], [0.3, 1.0, 0.2], [-0.4, 0.2, 1.5]], dtype=torch.float64)
    gram[0, 1] += 2e-5
    return gram


JUST_BEYOND = {
    "asymmetric": (_asymmetric_gram, [0.2, 0.3, 0.5], r"symmetric: max \|H - H\^T\| = 2e-05 "),
    "indefinite": (_indefinite_gram, [0.2, 0.3, 0.5], r"semidefinite.*smallest eigenvalue -2e-05"),
    "weights": (lambda: torch.eye(3, dtype=torch.float64), [0.2, 0.3, 0.50001], r"sum=1.00001 "),
}


@pytest.mark.parametrize("name", list(JUST_BEYOND))
@pytest.mark.parametrize("method", ["cagrad_clip", "mgda", "linear"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_input_just_beyond_the_tolerances_raises_on_both_paths(
    name: str, method: str, backend: str
) -> None:
    """docs/solvers.md's tolerances are |H − Hᵀ| ≤ 1e-6·max|H|, eigenvalues ≥ −1e-6·tr(H) and
    |Σw − 1| ≤ 1e-6 (float64). Input 10 to 13 times beyond them is invalid: the host path
    must refuse it, so that the dispatcher raises with the bad value, as the torch path does."""
    make, weights, match = JUST_BEYOND[name]
    gram = make()
    assert _host.solve_host(gram, weights, method, 0.4, backend, True) is None
    for batched in (False, True):
        g = gram[None] if batched else gram
        w = torch.tensor([weights], dtype=torch.float64) if batched else weights
        with pytest.raises(ValueError, match=match):
            conflict_opt.solve(g, w, method=method, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nonfinite_and_degenerate_statuses_are_the_torch_paths(backend: str) -> None:
    res = conflict_opt.solve(torch.tensor([[1.0, math.nan], [math.nan, 1.0]]), backend=backend)
    assert Status(int(res.status)) == Status.NONFINITE
    assert torch.equal(res.coeffs, torch.zeros(2))
    res = conflict_opt.solve(opposite_gram()[:2, :2], [0.5, 0.5], backend=backend)
    assert Status(int(res.status)) == Status.DEGENERATE


# --- what it returns -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        (torch.float64, torch.float64),
        (torch.float32, torch.float32),
        (torch.bfloat16, torch.float32),
        (torch.float16, torch.float32),
    ],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_result_has_the_torch_paths_shapes_and_dtypes(
    dtype: torch.dtype, expected: torch.dtype, backend: str
) -> None:
    # Nearly aligned gradients: a bfloat16 Gram resolves only ~3 digits, and the torch path
    # calls any squared norm below 8·K·eps (0.19 at K = 3) of its yardstick round-off.
    gram = torch.tensor([[1.0, 0.9, 0.85], [0.9, 1.2, 0.9], [0.85, 0.9, 1.1]], dtype=dtype)
    res = _host.solve_host(gram, None, "cagrad_clip", 0.4, backend, True)
    assert res is not None
    ref = torch_path(gram, None, method="cagrad_clip", backend=backend)
    for name in conflict_opt.SolveResult._fields:
        got, want = getattr(res, name), getattr(ref, name)
        assert got.shape == want.shape and got.dtype == want.dtype, name
    assert res.coeffs.dtype == expected
    torch.testing.assert_close(res.coeffs, ref.coeffs, rtol=1e-6, atol=1e-6)


def test_result_fields_do_not_alias_each_other() -> None:
    case = conflicting(3)
    res = conflict_opt.solve(torch.tensor(case.gram), torch.tensor(case.weights))
    dual, clipped = res.dual.clone(), res.clipped.clone()
    res.coeffs.add_(1.0)
    assert torch.equal(res.dual, dual) and torch.equal(res.clipped, clipped)


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_weights_as_none_list_tuple_or_tensor_agree(k: int) -> None:
    case = conflicting(k, seed=5)
    gram = torch.tensor(case.gram)
    w = np.full(k, 1.0 / k)
    answers = [
        _host.solve_host(gram, weights, "cagrad_clip", 0.4, backend_for(k, "closed_form"), True)
        for weights in (None, w.tolist(), tuple(w.tolist()), torch.tensor(w))
    ]
    assert all(a is not None for a in answers)
    for a in answers[1:]:
        assert torch.equal(a.coeffs, answers[0].coeffs)


def test_iterations_count_homotopy_pieces_and_closed_form_reports_zero() -> None:
    case = conflicting(8)
    res = conflict_opt.solve(torch.tensor(case.gram), torch.tensor(case.weights))
    assert 1 <= int(res.iterations) <= _host._PIVOTS_PER_K * 8 + 20
    case = conflicting(3)
    res = conflict_opt.solve(torch.tensor(case.gram), backend="closed_form")
    assert int(res.iterations) == 0


@pytest.mark.parametrize("method", ["linear", "cagrad_clip"])
@pytest.mark.parametrize("k", [2, 3, 6])
def test_trivial_problems_return_the_weights(method: str, k: int) -> None:
    case = conflicting(k)
    c = 0.0 if method == "cagrad_clip" else 0.4
    gram, weights = torch.tensor(case.gram), case.weights.tolist()
    res = _host.solve_host(gram, weights, method, c, "iterative", True)
    assert res is not None
    np.testing.assert_allclose(res.coeffs.numpy(), case.weights, rtol=1e-15)
    assert float(res.gap) == 0.0 and Status(int(res.status)) == Status.OPTIMAL


def test_disjoint_dual_and_weights_give_the_weights() -> None:
    """RACO: when supp(p) ∩ supp(w) = ∅ the clipped dual is 0 and G_0 = g_0, a = w."""
    gram = torch.tensor([[1.0, -0.9], [-0.9, 1.0]], dtype=torch.float64)
    for backend in BACKENDS:
        res = _host.solve_host(gram, [1.0, 0.0], "cagrad_clip", 0.4, backend, True)
        ref = torch_path(gram, [1.0, 0.0], method="cagrad_clip", backend=backend)
        assert res is not None
        assert float(res.dual[0]) == 0.0 and torch.equal(res.coeffs, ref.coeffs)


# --- agreement with the torch path and internal certificates -------------------------------------


@st.composite
def problems(draw: st.DrawFn) -> tuple:
    k = draw(st.sampled_from((1, 2, 3, 4, 7, 12)))
    seed = draw(st.integers(0, 2**31 - 1))
    kind = draw(st.sampled_from(("random", "aligned", "conflict")))
    weight_kind = draw(st.sampled_from(helpers.WEIGHT_KINDS))
    scale = 10.0 ** draw(st.integers(-12, 12))
    c = draw(st.sampled_from((0.1, 0.4, 0.95)))
    rng = np.random.default_rng(seed)
    return helpers.case(rng, k, kind=kind, scale=scale, weight_kind=weight_kind), c


@given(problems(), st.sampled_from(METHODS), st.sampled_from(BACKENDS))
def test_agrees_with_the_torch_path(problem: tuple, method: str, backend: str) -> None:
    case, c = problem
    backend = backend_for(case.k, backend)
    gram, weights = torch.tensor(case.gram), torch.tensor(case.weights)
    res = _host.solve_host(gram, weights, method, c, backend, True)
    ref = torch_path(gram, weights, method=method, c=c, backend=backend)
    if res is None:
        return
    assert Status(int(ref.status)) in (Status.OPTIMAL, Status.INACCURATE)
    # Same update direction (unique for these full-rank, distinct gradients).
    helpers.assert_same_direction(case, res.coeffs.numpy(), ref.coeffs.numpy())


@given(
    st.integers(0, 2**31 - 1),
    st.sampled_from((1, 2, 3)),
    st.sampled_from((1, 2, 3)),
    st.floats(-1e-3, 1e-3),
)
def test_psd_test_matches_lapack(seed: int, k: int, rank: int, shift: float) -> None:
    """Accepted exactly when LAPACK's lowest eigenvalue is at least -margin, wherever the two
    are not within round-off of each other; singular Grams (repeated zero eigenvalues) too."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((k, min(rank, k)))
    h = a @ a.T
    h = h / np.trace(h) + shift * np.eye(k)
    margin = _problem._roundoff(torch.float64, k)
    lowest = np.linalg.eigvalsh(h)[0]
    if abs(lowest + margin) > 1e-13:
        assert _host._psd_within(h.tolist(), margin) == (lowest >= -margin), lowest


def test_psd_test_accepts_singular_grams() -> None:
    margin = _problem._roundoff(torch.float64, 3)
    for rank in (1, 2):
        for seed in range(50):
            a = np.random.default_rng(seed).standard_normal((3, rank)) * 10.0 ** (seed % 7 - 3)
            h = a @ a.T
            assert _host._psd_within((h / np.trace(h)).tolist(), margin), (rank, seed)
    assert not _host._psd_within([[0.5, 0.0], [0.0, -1e-12]], margin)


@given(st.integers(0, 2**31 - 1), st.sampled_from((1, 2, 5, 16)))
def test_nnqp_satisfies_its_kkt_conditions(seed: int, k: int) -> None:
    """argmin_{q≥0} ½qᵀHq − bᵀq: q ≥ 0, gradient zero on the support, ≤ 0 off it."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((k, 2 * k))
    h = a @ a.T / k
    b = rng.standard_normal(k)
    solved = _host._nnqp(h, b, 10 * k + 20)
    assert solved is not None
    q, support, _ = solved
    grad = b - h @ q
    scale = np.abs(b).max() + np.abs(h).max() * np.abs(q).sum()
    assert (q >= 0).all() and (q[~support] == 0).all()
    assert np.abs(grad[support]).max(initial=0.0) <= 1e-10 * scale
    assert grad[~support].max(initial=0.0) <= 1e-10 * scale


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_answers_only_what_it_certifies_at_tol_optimal(
    method: str, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The host path's contract: an answer's gap is at most TOL_OPTIMAL, whatever that
    threshold, and the rest goes to the torch path. Its exact KKT points certify at 0 to
    1e-15, so under a threshold of 1e-17 some must be refused and none answered above it
    (in C, the threshold arrives through native_options, cached per problem shape)."""
    monkeypatch.setattr(_problem, "TOL_OPTIMAL", 1e-17)
    _host.native_options.cache_clear()
    try:
        answered = refused = 0
        rng = np.random.default_rng(21)
        for i in range(40):
            k = (2, 3, 5)[i % 3]
            case = helpers.case(rng, k, kind=("random", "conflict")[i % 2])
            gram, weights = torch.tensor(case.gram), torch.tensor(case.weights)
            res = _host.solve_host(gram, weights, method, 0.4, backend_for(k, backend), True)
            if res is None:
                refused += 1
                continue
            answered += 1
            assert float(res.gap) <= 1e-17, (case, float(res.gap))
        assert answered > 0 and refused > 0, (answered, refused)
    finally:
        _host.native_options.cache_clear()


@pytest.mark.parametrize("delta", [1e-4, 1e-6, 1e-7, 1e-8, 1e-9])
def test_mgda_active_set_answers_a_gradient_that_barely_enters_the_min_norm_face(
    delta: float,
) -> None:
    """g_3 lowers the min-norm point of {g_1, g_2} only by a relative δ: the exact optimum is
    p = ((1 − b)/2, (1 − b)/2, b) with b = δ/(1 + 2δ²). The gradients are distinct and well
    conditioned, so the active set answers itself (docs/solvers.md, "Two paths"), at the KKT
    point to round-off, not at the face {g_1, g_2} where a loose entering test would stop."""
    g = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5 - delta, 0.5 - delta, 1.0]])
    res = _host.solve_host(torch.tensor(g @ g.T), None, "mgda", 0.4, "iterative", True)
    assert res is not None
    assert float(res.dual[2]) == pytest.approx(delta / (1 + 2 * delta**2), rel=1e-6)
    d = res.dual.numpy() @ g
    # Min-norm KKT: (Hp)_i ≥ pᵀHp for every i.
    assert (g @ d).min() >= d @ d - 1e-15


def test_noncontiguous_and_grad_requiring_grams_are_read_as_values() -> None:
    case = conflicting(4, seed=2)
    base = torch.tensor(case.gram)
    strided = torch.zeros(4, 8, dtype=torch.float64)[:, ::2]
    strided.copy_(base)
    assert not strided.is_contiguous()
    ref = conflict_opt.solve(base, backend="iterative")
    for gram in (strided, base.clone().requires_grad_(True), base.T):
        res = conflict_opt.solve(gram, backend="iterative")
        assert not res.coeffs.requires_grad
        torch.testing.assert_close(res.coeffs, ref.coeffs, rtol=1e-12, atol=1e-14)


def test_weights_requiring_grad_go_to_the_torch_path() -> None:
    w = torch.tensor([0.5, 0.5], dtype=torch.float64, requires_grad=True)
    assert _host.solve_host(torch.eye(2), w, "cagrad", 0.4, "closed_form", True) is None


def test_more_objectives_than_max_k_go_to_the_torch_path() -> None:
    rng = np.random.default_rng(0)
    g = rng.standard_normal((_host.MAX_K + 1, 2 * _host.MAX_K + 2))
    gram = torch.tensor(g @ g.T)
    assert _host.solve_host(gram, None, "mgda", 0.4, "iterative", False) is None
    g = g[: _host.MAX_K]
    res = _host.solve_host(torch.tensor(g @ g.T), None, "mgda", 0.4, "iterative", False)
    assert res is not None
