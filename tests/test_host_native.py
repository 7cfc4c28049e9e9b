"""The compiled CAGrad active set of the host path (``conflict_opt._native.cagrad_host``,
csrc/host_solve.c) against its numpy/LAPACK twin in conflict_opt/solvers/_host.py.

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
    monkeypatch: pytest.MonkeyPatch, gram: torch.Tensor, weights, method: str, c: float
) -> tuple[conflict_opt.SolveResult | None, conflict_opt.SolveResult | None]:
    """The host path's answer with the compiled active set, then with the numpy one."""
    compiled = _host.solve_host(gram, weights, method, c, "iterative", True)
    with monkeypatch.context() as m:
        m.setenv(primitives.NATIVE_DISABLE_ENV, "1")
        numpy_ = _host.solve_host(gram, weights, method, c, "iterative", True)
    return compiled, numpy_


def assert_same(a: conflict_opt.SolveResult, b: conflict_opt.SolveResult) -> None:
    assert int(a.iterations) == int(b.iterations)
    for name in ("coeffs", "dual", "clipped"):
        x, y = getattr(a, name).numpy(), getattr(b, name).numpy()
        np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-12 * np.abs(y).max(), err_msg=name)
    assert abs(float(a.gap) - float(b.gap)) <= 1e-12


GRID = list(
    itertools.product(
        (1, 2, 3, 4, 5, 8, 16),
        ("random", "aligned", "conflict", "duplicated", "opposite"),
        helpers.WEIGHT_KINDS,
        range(3),
    )
)


@pytest.mark.parametrize("method", ["cagrad_clip", "cagrad"])
def test_refuses_and_answers_exactly_what_the_numpy_path_does(
    method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fixed grid of 420 problems × 3 radii (about 830 answered): the same problems
    answered, the same answers."""
    answered = refused = 0
    for k, kind, weight_kind, seed in GRID:
        rng = np.random.default_rng(seed)
        scale = 10.0 ** (4 * seed - 4)
        case = helpers.case(rng, k, kind=kind, weight_kind=weight_kind, scale=scale)
        gram, weights = torch.tensor(case.gram), torch.tensor(case.weights)
        for c in (0.1, 0.4, 0.95):
            a, b = both(monkeypatch, gram, weights, method, c)
            assert (a is None) == (b is None), (k, kind, weight_kind, seed, c)
            if a is None:
                refused += 1
                continue
            answered += 1
            assert_same(a, b)
    # Both halves exercised: ordinary problems answered, rank-deficient ones refused.
    assert answered >= 600 and refused >= 200, (answered, refused)


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
@given(problems(), st.sampled_from(("cagrad_clip", "cagrad")))
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


def test_cagrad_methods_take_the_compiled_path_and_mgda_does_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    case = helpers.case(np.random.default_rng(0), 5, kind="conflict")
    gram = torch.tensor(case.gram)

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("the numpy homotopy ran although the compiled one is enabled")

    monkeypatch.setattr(_host, "_homotopy", boom)
    for method in ("cagrad", "cagrad_clip"):
        assert _host.solve_host(gram, None, method, 0.4, "iterative", True) is not None
    assert _host.solve_host(gram, None, "mgda", 0.4, "iterative", True) is not None
    # Disabled: the numpy path, and nothing of the compiled one.
    monkeypatch.undo()
    monkeypatch.setenv(primitives.NATIVE_DISABLE_ENV, "1")
    monkeypatch.setattr(native, "cagrad_host", boom)
    assert _host.solve_host(gram, None, "cagrad_clip", 0.4, "iterative", True) is not None


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


def args(gram: torch.Tensor, weights: list[float], k: int | None = None) -> tuple:
    k = gram.shape[0] if k is None else k
    return (
        gram.data_ptr(),
        k,
        gram.stride(0),
        gram.stride(1),
        weights,
        True,
        0.4,
        1e-7,
        math.inf,
        60,
        _host.MAX_CONDITION,
        _problem.SNAP,
        _problem._SNAP_COST,
        _problem.TOL_OPTIMAL,
    )


def test_entry_checks_its_arguments() -> None:
    gram = torch.eye(3, dtype=torch.float64)
    w = [1 / 3] * 3
    assert native.HOST_MAX_K == _host.MAX_K
    with pytest.raises(ValueError, match=r"k = 0 is outside 1\.\.128"):
        native.cagrad_host(*args(gram, [], k=0))
    with pytest.raises(ValueError, match=r"k = 129 is outside"):
        native.cagrad_host(*args(gram, w, k=129))
    with pytest.raises(ValueError, match="got 2 weights for k = 3"):
        native.cagrad_host(*args(gram, w[:2]))
    with pytest.raises(TypeError, match="must be real number"):
        native.cagrad_host(*args(gram, ["a", "b", "c"]))
    bad = list(args(gram, w))
    bad[0] = 0
    with pytest.raises(ValueError, match="data pointer is 0"):
        native.cagrad_host(*bad)
    coeffs, dual, clipped, gap, pieces = native.cagrad_host(*args(gram, w))
    # Three orthonormal gradients with uniform weights: p = w, a = w (1 + c).
    np.testing.assert_allclose(coeffs, [(1 + 0.4) / 3] * 3, rtol=1e-15)
    assert dual == clipped and gap <= _problem.TOL_OPTIMAL and pieces >= 1
