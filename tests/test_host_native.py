"""The compiled solves of the host path (``conflict_opt._native.solve_host``, csrc/host_solve.c)
against their twins in conflict_opt/solvers/_host.py: the active sets (CAGrad's homotopy, MGDA's
Lawson–Hanson) against numpy/LAPACK,
the closed form (K ≤ 3, MGDA too) against scalar Python.

Both must refuse the same problems and return the same answers up to round-off: the C code is
a transcription, so any difference in what is accepted, in the number of homotopy pieces or in
the coefficients beyond round-off is a bug in one of them. Their accuracy against the cvxpy
reference is in test_parity.py, their routing and hand-over cases in test_host.py.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import conflict_opt
from conflict_opt import primitives
from conflict_opt.solvers import _host, _problem

from . import helpers

native = pytest.importorskip("conflict_opt._native")


def both(
    monkeypatch: pytest.MonkeyPatch,
    gram: torch.Tensor,
    weights,
    method: str,
    c: float,
    backend: str = "iterative",
) -> tuple[conflict_opt.SolveResult | None, conflict_opt.SolveResult | None]:
    """The host path's answer with the compiled solve, then with the Python one."""
    compiled = _host.solve_host(gram, weights, method, c, backend, True)
    with monkeypatch.context() as m:
        m.setenv(primitives.NATIVE_DISABLE_ENV, "1")
        python = _host.solve_host(gram, weights, method, c, backend, True)
    return compiled, python


def radii(method: str) -> tuple[float, ...]:
    """The radii c each grid problem is solved at; MGDA has none (one solve)."""
    return (0.4,) if method == "mgda" else (0.1, 0.4, 0.95)


def assert_same(a: conflict_opt.SolveResult, b: conflict_opt.SolveResult) -> None:
    assert int(a.iterations) == int(b.iterations)
    for name in ("coeffs", "dual", "clipped"):
        x, y = getattr(a, name).numpy(), getattr(b, name).numpy()
        np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-12 * np.abs(y).max(), err_msg=name)
    assert abs(float(a.gap) - float(b.gap)) <= 1e-12


def assert_same_or_tied(
    case: helpers.Case,
    a: conflict_opt.SolveResult,
    b: conflict_opt.SolveResult,
    c: float,
    method: str,
) -> None:
    """:func:`assert_same`, unless the dual has several optima (duplicated or rank-deficient
    gradients) and the two broke the tie differently, which round-off decides: then both duals
    must reach the same Φ (RACO's clip, not continuous in p, may then give different
    coefficients; each is certified by its own gap)."""
    if np.allclose(a.dual.numpy(), b.dual.numpy(), rtol=1e-8, atol=1e-10):
        assert_same(a, b)
        return
    scale = helpers.phi_scale(case, method)
    phi_a = helpers.phi(case, a.dual.numpy(), c, method)
    phi_b = helpers.phi(case, b.dual.numpy(), c, method)
    assert abs(phi_a - phi_b) <= 1e-9 * scale, (phi_a, phi_b)


GRID = list(
    itertools.product(
        (1, 2, 3, 4, 5, 8, 16),
        ("random", "aligned", "conflict", "duplicated", "opposite"),
        helpers.WEIGHT_KINDS,
        range(3),
    )
)


@pytest.mark.parametrize("method", ["cagrad_clip", "cagrad", "mgda"])
def test_refuses_and_answers_exactly_what_the_numpy_path_does(
    method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fixed grid of 420 problems × 3 radii (about 830 answered; MGDA, which has no radius,
    about 280): the same problems answered, the same answers, the same pivots."""
    answered = refused = 0
    for k, kind, weight_kind, seed in GRID:
        rng = np.random.default_rng(seed)
        scale = 10.0 ** (4 * seed - 4)
        case = helpers.case(rng, k, kind=kind, weight_kind=weight_kind, scale=scale)
        gram, weights = torch.tensor(case.gram), torch.tensor(case.weights)
        for c in radii(method):
            a, b = both(monkeypatch, gram, weights, method, c)
            assert (a is None) == (b is None), (k, kind, weight_kind, seed, c)
            if a is None:
                refused += 1
                continue
            answered += 1
            assert_same(a, b)
    # Both halves exercised: ordinary problems answered, rank-deficient ones refused.
    least = (200, 60) if method == "mgda" else (600, 200)
    assert answered >= least[0] and refused >= least[1], (answered, refused)


CLOSED_GRID = list(
    itertools.product(
        (1, 2, 3),
        ("random", "aligned", "conflict", "duplicated", "opposite"),
        (None, 1),
        helpers.WEIGHT_KINDS,
        range(4),
    )
)


@pytest.mark.parametrize("method", ["cagrad_clip", "cagrad", "mgda"])
def test_closed_form_refuses_and_answers_exactly_what_scalar_python_does(
    method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """K ≤ 3, singular and zero-norm Grams included (the closed form takes PSD Grams the
    active set refuses): the same problems answered, the same answers, for every radius."""
    answered = refused = 0
    ties = 0
    for k, kind, rank, weight_kind, seed in CLOSED_GRID:
        rng = np.random.default_rng(seed)
        scale = 10.0 ** (3 * seed - 4)
        case = helpers.case(rng, k, rank=rank, kind=kind, weight_kind=weight_kind, scale=scale)
        gram, weights = torch.tensor(case.gram), torch.tensor(case.weights)
        for c in radii(method):
            a, b = both(monkeypatch, gram, weights, method, c, "closed_form")
            assert (a is None) == (b is None), (k, kind, rank, weight_kind, seed, c)
            if a is None:
                refused += 1
                continue
            answered += 1
            assert_same_or_tied(case, a, b, c, method)
            ties += not np.allclose(a.dual.numpy(), b.dual.numpy(), rtol=1e-8, atol=1e-10)
    # Ties are rare: only duplicated or opposite gradients make them.
    assert ties <= answered // 20, (ties, answered)
    assert answered >= (150 if method == "mgda" else 450), answered
    assert refused >= 5, refused


@settings(max_examples=200)
@given(
    st.integers(1, 3),
    st.integers(0, 2**31 - 1),
    st.sampled_from(("random", "aligned", "conflict")),
    st.sampled_from((None, 1)),
    st.sampled_from(helpers.WEIGHT_KINDS),
    st.integers(-12, 12),
    st.floats(0.01, 0.99),
    st.sampled_from(("cagrad_clip", "cagrad", "mgda")),
)
def test_closed_form_agrees_with_scalar_python_on_random_problems(
    k: int,
    seed: int,
    kind: str,
    rank: int | None,
    weight_kind: str,
    exponent: int,
    c: float,
    method: str,
) -> None:
    rng = np.random.default_rng(seed)
    case = helpers.case(rng, k, rank=rank, kind=kind, weight_kind=weight_kind, scale=10.0**exponent)
    gram, weights = torch.tensor(case.gram), torch.tensor(case.weights)
    with pytest.MonkeyPatch.context() as monkeypatch:
        a, b = both(monkeypatch, gram, weights, method, c, "closed_form")
    if a is not None and b is not None:
        assert_same_or_tied(case, a, b, c, method)
        return
    # Only one answered: a threshold decided by round-off; that answer is still certified.
    for res in (a, b):
        if res is not None:
            ref = helpers.row(conflict_opt.solve(gram[None], weights[None], method=method, c=c), 0)
            helpers.assert_same_direction(case, res.coeffs.numpy(), ref.coeffs.numpy())


def test_closed_form_refuses_what_the_python_branch_refuses() -> None:
    """Each of solve_host's checks before the closed form, in C: an asymmetric Gram (with
    validation only), a non-finite entry, a zero trace, an indefinite Gram, a zero anchor."""
    h = torch.tensor([[2.0, -1.0, 0.5], [-1.0, 3.0, 0.2], [0.5, 0.2, 1.0]], dtype=torch.float64)
    assert _host.solve_host(h, None, "cagrad_clip", 0.4, "closed_form", True) is not None
    asym = h.clone()
    asym[0, 1] += 1e-3
    assert _host.solve_host(asym, None, "cagrad_clip", 0.4, "closed_form", True) is None
    assert _host.solve_host(asym, None, "cagrad_clip", 0.4, "closed_form", False) is not None
    for bad in (math.nan, math.inf):
        nonfinite = h.clone()
        nonfinite[1, 2] = nonfinite[2, 1] = bad
        assert _host.solve_host(nonfinite, None, "cagrad", 0.4, "closed_form", False) is None
    assert _host.solve_host(torch.zeros(3, 3), None, "mgda", 0.4, "closed_form", True) is None
    indefinite = torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=torch.float64)
    assert _host.solve_host(indefinite, None, "mgda", 0.4, "closed_form", False) is None
    # Opposite gradients with equal weights: g_0 = 0, the torch path's DEGENERATE case.
    opposite = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64)
    assert _host.solve_host(opposite, None, "cagrad", 0.4, "closed_form", True) is None


def test_closed_form_takes_the_compiled_path(monkeypatch: pytest.MonkeyPatch) -> None:
    gram = torch.tensor(helpers.case(np.random.default_rng(0), 3, kind="conflict").gram)

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("the scalar-Python closed form ran although C is enabled")

    monkeypatch.setattr(_host, "_closed_form", boom)
    for method in ("cagrad", "cagrad_clip", "mgda"):
        assert _host.solve_host(gram, None, method, 0.4, "closed_form", True) is not None
    assert conflict_opt.solve(gram, method="cagrad_clip").status == conflict_opt.Status.OPTIMAL
    monkeypatch.undo()
    monkeypatch.setenv(primitives.NATIVE_DISABLE_ENV, "1")
    monkeypatch.setattr(native, "solve_host", boom)
    assert _host.solve_host(gram, None, "cagrad_clip", 0.4, "closed_form", True) is not None


@st.composite
def problems(draw: st.DrawFn) -> tuple:
    k = draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**31 - 1))
    kind = draw(st.sampled_from(("random", "aligned", "conflict")))
    weight_kind = draw(st.sampled_from(helpers.WEIGHT_KINDS))
    scale = 10.0 ** draw(st.integers(-12, 12))
    c = draw(st.floats(0.01, 0.99))
    rng = np.random.default_rng(seed)
    return helpers.case(rng, k, kind=kind, scale=scale, weight_kind=weight_kind), c


@settings(max_examples=200)
@given(problems(), st.sampled_from(("cagrad_clip", "cagrad", "mgda")))
def test_agrees_with_the_numpy_path_on_random_problems(problem: tuple, method: str) -> None:
    """Where both answer, the same answer. Where only one does (a test decided by round-off
    at one of the thresholds: condition number, squared-norm floor, gap), that answer is
    still certified against the torch path."""
    case, c = problem
    gram, weights = torch.tensor(case.gram), torch.tensor(case.weights)
    with pytest.MonkeyPatch.context() as monkeypatch:
        a, b = both(monkeypatch, gram, weights, method, c)
    if a is not None and b is not None:
        assert_same(a, b)
        return
    for res in (a, b):
        if res is not None:
            w = torch.tensor(case.weights)[None]
            ref = helpers.row(conflict_opt.solve(gram[None], w, method=method, c=c), 0)
            helpers.assert_same_direction(case, res.coeffs.numpy(), ref.coeffs.numpy())


def test_every_method_takes_the_compiled_active_set(monkeypatch: pytest.MonkeyPatch) -> None:
    case = helpers.case(np.random.default_rng(0), 5, kind="conflict")
    gram = torch.tensor(case.gram)

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("a numpy active set ran although the compiled one is enabled")

    monkeypatch.setattr(_host, "_homotopy", boom)
    monkeypatch.setattr(_host, "_nnqp", boom)
    for method in ("cagrad", "cagrad_clip", "mgda"):
        assert _host.solve_host(gram, None, method, 0.4, "iterative", True) is not None
    # Disabled: the numpy path, and nothing of the compiled one.
    monkeypatch.undo()
    monkeypatch.setenv(primitives.NATIVE_DISABLE_ENV, "1")
    monkeypatch.setattr(native, "solve_host", boom)
    for method in ("cagrad_clip", "mgda"):
        assert _host.solve_host(gram, None, method, 0.4, "iterative", True) is not None


def test_strided_transposed_and_low_precision_grams_read_as_their_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    case = helpers.case(np.random.default_rng(4), 6, kind="conflict")
    base = torch.tensor(case.gram)
    strided = torch.zeros(6, 18, dtype=torch.float64)[:, ::3]
    strided.copy_(base)
    negated = torch._neg_view(-base)  # lazily negated: its memory holds -H
    assert negated.is_neg()
    ref = _host.solve_host(base, None, "cagrad_clip", 0.4, "iterative", True)
    assert ref is not None
    for gram in (strided, base.T, negated, base.float()):
        a, b = both(monkeypatch, gram, None, "cagrad_clip", 0.4)
        assert a is not None and b is not None
        assert_same(a, b)
        tol = 1e-6 if gram.dtype == torch.float32 else 1e-12
        torch.testing.assert_close(a.coeffs.double(), ref.coeffs, rtol=tol, atol=tol)


def test_validation_refuses_an_asymmetric_gram_only_when_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    case = helpers.case(np.random.default_rng(1), 4, kind="conflict")
    gram = torch.tensor(case.gram)
    gram[0, 1] += 1e-3 * float(gram.abs().max())
    assert _host.solve_host(gram, None, "cagrad", 0.4, "iterative", True) is None
    a = _host.solve_host(gram, None, "cagrad", 0.4, "iterative", False)
    monkeypatch.setenv(primitives.NATIVE_DISABLE_ENV, "1")
    b = _host.solve_host(gram, None, "cagrad", 0.4, "iterative", False)
    assert a is not None and b is not None
    assert_same(a, b)


def test_ill_conditioned_grams_are_refused_near_max_condition() -> None:
    """Condition number exactly computed: 1e9 answered, 1e11 refused (both well clear of the
    1e10 threshold, where LAPACK's estimate and the exact value could disagree)."""
    q, _ = np.linalg.qr(np.random.default_rng(2).standard_normal((3, 3)))
    for cond, answered in ((1e9, True), (1e11, False)):
        gram = torch.tensor(q @ np.diag([1.0, 0.5, 1.0 / cond]) @ q.T)
        res = _host.solve_host(gram, None, "cagrad", 0.4, "iterative", True)
        assert (res is not None) == answered, cond


def test_nonfinite_entries_are_refused_even_without_validation() -> None:
    for bad in (math.nan, math.inf):
        gram = torch.eye(4, dtype=torch.float64)
        gram[2, 3] = gram[3, 2] = bad
        assert _host.solve_host(gram, None, "cagrad_clip", 0.4, "iterative", False) is None


def args(gram: torch.Tensor, weights: list[float], k: int | None = None, **options) -> tuple:
    k = gram.shape[0] if k is None else k
    opts = dict(
        method=1,
        closed_form=False,
        c=0.4,
        floor=1e-7,
        zero=1e-13,
        tol=math.inf,
        budget=60,
        max_condition=_host.MAX_CONDITION,
        snap=_problem.SNAP,
        snap_cost=_problem._SNAP_COST,
        tol_optimal=_problem.TOL_OPTIMAL,
        min_det=1e-10,
        roundoff=1e-14,
    )
    opts.update(options)
    return (gram.data_ptr(), k, gram.stride(0), gram.stride(1), weights, tuple(opts.values()))


def test_entry_checks_its_arguments() -> None:
    gram = torch.eye(3, dtype=torch.float64)
    w = [1 / 3] * 3
    assert native.HOST_MAX_K == _host.MAX_K
    with pytest.raises(ValueError, match=r"k = 0 is outside 1\.\.128"):
        native.solve_host(*args(gram, [], k=0))
    with pytest.raises(ValueError, match=r"k = 129 is outside"):
        native.solve_host(*args(gram, w, k=129))
    with pytest.raises(ValueError, match="got 2 weights for k = 3"):
        native.solve_host(*args(gram, w[:2]))
    with pytest.raises(TypeError, match="must be real number"):
        native.solve_host(*args(gram, ["a", "b", "c"]))
    with pytest.raises(ValueError, match=r"method = 7 is not 0 \(cagrad\)"):
        native.solve_host(*args(gram, w, method=7))
    with pytest.raises(ValueError, match="budget = 0 is not positive"):
        native.solve_host(*args(gram, w, budget=0))
    with pytest.raises(TypeError, match="options"):
        native.solve_host(*args(gram, w)[:5], [1, 2])
    with pytest.raises(TypeError, match="options"):
        native.solve_host(*args(gram, w)[:5], (1, False))
    bad = list(args(gram, w))
    bad[0] = 0
    with pytest.raises(ValueError, match="data pointer is 0"):
        native.solve_host(*bad)
    for closed_form in (False, True):
        coeffs, dual, clipped, gap, pieces = native.solve_host(
            *args(gram, w, closed_form=closed_form)
        )
        # Three orthonormal gradients with uniform weights: p = w, a = w (1 + c).
        np.testing.assert_allclose(coeffs, [(1 + 0.4) / 3] * 3, rtol=1e-14)
        np.testing.assert_allclose(dual, w, rtol=1e-14)
        assert dual == clipped and gap <= _problem.TOL_OPTIMAL
        assert (pieces >= 1) != closed_form  # the closed form walks no pieces
    # The trivial solve: a = w whatever the Gram, unless it is non-finite.
    assert native.solve_host(*args(gram * -5.0, w, method=3)) == (w, w, w, 0.0, 0)
    assert native.solve_host(*args(gram * math.nan, w, method=3)) is None
    # MGDA on orthonormal gradients: p = a = uniform, the active set entering all three.
    for closed_form in (False, True):
        coeffs, dual, clipped, gap, pivots = native.solve_host(
            *args(gram, w, method=2, closed_form=closed_form)
        )
        np.testing.assert_allclose(coeffs, w, rtol=1e-14)
        assert coeffs == dual == clipped and gap <= _problem.TOL_OPTIMAL
        assert pivots == (0 if closed_form else 3)
    assert native.solve_host(*args(gram, w, method=2, budget=2)) is None  # out of pivots
    assert (
        native.solve_host(*args(torch.eye(4, dtype=torch.float64), [0.25] * 4, closed_form=True))
        is None
    )
