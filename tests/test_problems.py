"""The test problems of ``conflict_opt.problems``: exact gradients, minimisers and smoothness
constants, Pareto criticality, the CAGrad toy against its published definition, determinism and
argument checking."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from conflict_opt.problems import (
    CAGradToy,
    ConvexQuadratic,
    LeastSquares,
    LogisticRegression,
    MultiObjectiveProblem,
    pareto_criticality,
)

F64 = torch.float64

CONVEX = {
    "quadratic": lambda: ConvexQuadratic(num_objectives=3, dim=6, condition=50.0, seed=1),
    "least_squares": lambda: LeastSquares(num_objectives=3, dim=5, samples=20, seed=2),
    "logistic": lambda: LogisticRegression(num_objectives=3, dim=5, samples=40, seed=3),
    "quadratic_k2": lambda: ConvexQuadratic(num_objectives=2, dim=4, conflict=3.0, seed=4),
    "logistic_k2": lambda: LogisticRegression(num_objectives=2, dim=4, samples=30, ridge=0.1),
}
ALL = {**CONVEX, "cagrad_toy": CAGradToy}


def weight_vectors(k: int) -> list[torch.Tensor]:
    """Vertices, the barycentre, an edge midpoint and two interior Dirichlet draws."""
    rng = np.random.default_rng(k)
    vectors = [np.eye(k)[i] for i in range(k)]
    vectors.append(np.full(k, 1.0 / k))
    vectors.append(np.r_[0.5, 0.5, np.zeros(k - 2)])
    vectors.extend(rng.dirichlet(np.ones(k)) for _ in range(2))
    return [torch.tensor(v, dtype=F64) for v in vectors]


def random_points(problem: MultiObjectiveProblem, count: int, seed: int = 0) -> torch.Tensor:
    """``[count, dim]`` points around the problem's scale (N(0, 4I)); the toy's box for the toy."""
    gen = torch.Generator().manual_seed(seed)
    if isinstance(problem, CAGradToy):
        return 20 * torch.rand(count, 2, generator=gen, dtype=F64) - 10
    return 2 * torch.randn(count, problem.dim, generator=gen, dtype=F64)


def away_from_toy_kinks(theta: torch.Tensor, margin: float = 1e-3) -> bool:
    x1, x2 = float(theta[0]), float(theta[1])
    inner1 = 0.5 * (-x1 - 7) - math.tanh(-x2)
    inner2 = 0.5 * (-x1 + 3) + math.tanh(-x2) + 2
    return min(abs(x2), abs(inner1), abs(inner2)) > margin


def autograd_jacobian(problem: MultiObjectiveProblem, theta: torch.Tensor) -> torch.Tensor:
    return torch.autograd.functional.jacobian(problem.losses, theta)  # [K, dim]


def toy_reference(x1: float, x2: float) -> tuple[float, float]:
    """The published toy (Liu et al. 2021, Cranial-XIX/CAGrad toy.py) in scalar math."""
    lower = 5e-6
    f1 = math.log(max(abs(0.5 * (-x1 - 7) - math.tanh(-x2)), lower)) + 6
    f2 = math.log(max(abs(0.5 * (-x1 + 3) + math.tanh(-x2) + 2), lower)) + 6
    c1 = max(math.tanh(x2 * 0.5), 0.0)
    c2 = max(math.tanh(-x2 * 0.5), 0.0)
    q1 = ((-x1 + 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    q2 = ((-x1 - 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    return f1 * c1 + q1 * c2, f2 * c1 + q2 * c2


# --- exact gradients ---------------------------------------------------------------------------


@pytest.mark.parametrize("key", list(ALL))
def test_gradients_match_autograd(key: str) -> None:
    problem = ALL[key]()
    points = [
        p
        for p in random_points(problem, 12, seed=5)
        if key != "cagrad_toy" or away_from_toy_kinks(p)
    ]
    assert len(points) >= 8
    for theta in points:
        expected = autograd_jacobian(problem, theta)
        got = problem.gradients(theta)
        assert got.dtype == F64 and got.shape == (problem.num_objectives, problem.dim)
        scale = float(expected.abs().max())
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-13 * max(scale, 1.0))


def test_toy_gradients_follow_autograd_at_the_kinks() -> None:
    """At x2 = 0 (both gates) and inside the log floor, the analytic gradient uses autograd's
    convention (clamp passes the gradient at the boundary; d|z| = sign z)."""
    toy = CAGradToy()
    valley = 2 * math.tanh(1.0) - 7  # inner1 = 0 at x2 = 1: f1 sits on the floor
    points = [
        (3.0, 0.0),
        (-8.5, 0.0),
        (valley, 1.0),
        (valley + 1e-6, 1.0),
        (1.0 + 2 * math.tanh(2.0), 2.0),
    ]
    for x1, x2 in points:
        theta = torch.tensor([x1, x2], dtype=F64)
        torch.testing.assert_close(
            toy.gradients(theta), autograd_jacobian(toy, theta), rtol=1e-10, atol=1e-12
        )
    on_floor = toy.gradients(torch.tensor([valley, 1.0], dtype=F64))
    assert float(on_floor[0, 0]) == 0.0  # the clamp cuts the x1-derivative of f1


@pytest.mark.parametrize("key", list(ALL))
def test_batched_inputs_match_pointwise(key: str) -> None:
    problem = ALL[key]()
    points = random_points(problem, 6, seed=6).reshape(2, 3, problem.dim)  # [2, 3, dim]
    losses, grads = problem.losses(points), problem.gradients(points)
    assert losses.shape == (2, 3, problem.num_objectives)
    assert grads.shape == (2, 3, problem.num_objectives, problem.dim)
    for i, j in itertools.product(range(2), range(3)):
        torch.testing.assert_close(losses[i, j], problem.losses(points[i, j]), rtol=1e-14, atol=0)
        torch.testing.assert_close(grads[i, j], problem.gradients(points[i, j]), rtol=1e-14, atol=0)


@pytest.mark.parametrize("key", list(ALL))
def test_weighted_loss_is_the_weighted_sum(key: str) -> None:
    problem = ALL[key]()
    theta = problem.initial_point()
    for w in weight_vectors(problem.num_objectives):
        assert float(problem.weighted_loss(theta, w)) == pytest.approx(
            float(w @ problem.losses(theta)), rel=1e-15, abs=1e-15
        )


# --- minimisers and smoothness ------------------------------------------------------------------


@pytest.mark.parametrize("key", list(ALL))
def test_minimiser_is_stationary(key: str) -> None:
    problem = ALL[key]()
    for w in weight_vectors(problem.num_objectives):
        theta = problem.minimiser(w)
        assert theta is not None and theta.shape == (problem.dim,)
        scale = max(1.0, float((w @ problem.gradients(problem.initial_point())).norm()))
        residual = float((w @ problem.gradients(theta)).norm())
        assert residual <= 1e-9 * scale, (w.tolist(), residual)


@pytest.mark.parametrize("key", list(CONVEX))
def test_minimiser_is_the_minimum(key: str) -> None:
    """Convexity: no random perturbation of the minimiser lowers L_w."""
    problem = CONVEX[key]()
    w = weight_vectors(problem.num_objectives)[-1]
    theta = problem.minimiser(w)
    best = float(problem.weighted_loss(theta, w))
    trials = theta + 1e-3 * random_points(problem, 50, seed=7)
    assert bool((problem.weighted_loss(trials, w) >= best - 1e-15).all())


@pytest.mark.parametrize("key", list(CONVEX))
def test_smoothness_bounds_the_hessian(key: str) -> None:
    problem = CONVEX[key]()
    for w in weight_vectors(problem.num_objectives)[::2]:
        bound = problem.smoothness(w)
        for theta in random_points(problem, 3, seed=8):
            hessian = torch.autograd.functional.hessian(
                lambda t, w=w: problem.weighted_loss(t, w), theta
            )
            top = float(torch.linalg.eigvalsh(hessian)[-1])
            assert bound >= top - 1e-9
            if not isinstance(problem, LogisticRegression):  # constant Hessian: the bound is exact
                assert bound == pytest.approx(top, rel=1e-12)


def test_logistic_smoothness_is_attained_at_the_origin() -> None:
    """σ(0)σ(0) = 1/4 is the largest curvature of log(1 + e^z): the bound is tight at θ = 0."""
    problem = CONVEX["logistic"]()
    for w in weight_vectors(problem.num_objectives):
        hessian = torch.autograd.functional.hessian(
            lambda t, w=w: problem.weighted_loss(t, w), torch.zeros(problem.dim, dtype=F64)
        )
        assert problem.smoothness(w) == pytest.approx(
            float(torch.linalg.eigvalsh(hessian)[-1]), rel=1e-12
        )


def test_toy_has_no_smoothness_constant() -> None:
    with pytest.raises(NotImplementedError, match="Adam"):
        CAGradToy().smoothness([0.5, 0.5])


@pytest.mark.parametrize("key", list(CONVEX))
def test_convex_losses_are_nonnegative(key: str) -> None:
    problem = CONVEX[key]()
    points = torch.cat(
        [
            random_points(problem, 50, seed=9),
            100 * random_points(problem, 20, seed=10),
            torch.stack([problem.minimiser(w) for w in weight_vectors(problem.num_objectives)]),
        ]
    )
    losses = problem.losses(points)
    assert bool(torch.isfinite(losses).all()) and bool((losses >= 0).all())


def test_logistic_is_stable_far_out() -> None:
    problem = CONVEX["logistic"]()
    theta = 1e4 * random_points(problem, 4, seed=11)
    assert bool(torch.isfinite(problem.losses(theta)).all())
    assert bool(torch.isfinite(problem.gradients(theta)).all())


def test_logistic_without_ridge() -> None:
    """With ridge = 0 the minimiser exists for overlapping data and is None for separable data
    (n < dim: always separable)."""
    overlapping = LogisticRegression(num_objectives=2, dim=3, samples=200, ridge=0.0, seed=1)
    theta = overlapping.minimiser([0.5, 0.5])
    assert theta is not None
    w = torch.tensor([0.5, 0.5], dtype=F64)
    assert float((w @ overlapping.gradients(theta)).norm()) <= 1e-12
    separable = LogisticRegression(num_objectives=2, dim=10, samples=5, ridge=0.0, seed=1)
    assert separable.minimiser([1.0, 0.0]) is None


def test_quadratic_structure() -> None:
    problem = ConvexQuadratic(num_objectives=3, dim=7, condition=30.0, conflict=2.0, seed=3)
    expected = torch.logspace(0, math.log10(30.0), 7, dtype=F64)
    for a in problem.hessians:
        torch.testing.assert_close(a, a.T, rtol=0, atol=0)
        torch.testing.assert_close(torch.linalg.eigvalsh(a), expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(
        problem.optima.norm(dim=1), torch.full((3,), 2.0 * math.sqrt(7), dtype=F64)
    )
    for i in range(3):
        torch.testing.assert_close(problem.minimiser(torch.eye(3, dtype=F64)[i]), problem.optima[i])
    assert bool((ConvexQuadratic(conflict=0.0).optima == 0).all())


def test_noiseless_least_squares_recovers_the_ground_truth() -> None:
    problem = LeastSquares(num_objectives=3, dim=4, samples=12, noise=0.0, seed=5)
    for i in range(3):
        theta = problem.minimiser(torch.eye(3, dtype=F64)[i])
        torch.testing.assert_close(theta, problem.ground_truth[i], rtol=1e-12, atol=1e-12)
        assert float(problem.losses(theta)[i]) < 1e-25


# --- Pareto criticality -------------------------------------------------------------------------


@pytest.mark.parametrize("key", list(ALL))
def test_criticality_vanishes_at_each_individual_minimiser(key: str) -> None:
    problem = ALL[key]()
    for i in range(problem.num_objectives):
        theta = problem.minimiser(torch.eye(problem.num_objectives, dtype=F64)[i])
        assert pareto_criticality(problem, theta) <= 1e-10


@pytest.mark.parametrize("key", list(CONVEX))
def test_criticality_vanishes_on_the_pareto_set(key: str) -> None:
    """Minimisers of L_w with w > 0 are Pareto optimal: M = 0 up to Newton's tolerance."""
    problem = CONVEX[key]()
    for w in weight_vectors(problem.num_objectives)[-2:]:
        assert pareto_criticality(problem, problem.minimiser(w)) <= 1e-10


@pytest.mark.parametrize("key", list(CONVEX))
def test_criticality_is_positive_where_gradients_agree(key: str) -> None:
    """Far out along v every ⟨v, ∇L_i⟩ > 0, and M ≥ min_i ⟨v, ∇L_i⟩ / ‖v‖ for any v."""
    problem = CONVEX[key]()
    v = random_points(problem, 1, seed=12)[0]
    v = v / v.norm()
    theta = problem.minimiser(weight_vectors(problem.num_objectives)[-1]) + 1e3 * v
    lower = float((problem.gradients(theta) @ v).min())
    assert lower > 0
    assert pareto_criticality(problem, theta) >= lower * (1 - 1e-12)


@pytest.mark.parametrize("key", ["quadratic", "logistic", "quadratic_k2", "cagrad_toy"])
def test_criticality_matches_a_brute_force_search(key: str) -> None:
    problem = ALL[key]()
    k = problem.num_objectives
    steps = 400 if k == 2 else 120
    grid = [np.array(c) / steps for c in itertools.product(range(steps + 1), repeat=k - 1)]
    simplex = torch.tensor(
        np.array([np.r_[c, 1 - c.sum()] for c in grid if c.sum() <= 1]), dtype=F64
    )  # [P, K]
    for seed in range(3):
        theta = problem.initial_point(seed)
        grads = problem.gradients(theta)
        brute = float((simplex @ grads).norm(dim=1).min())
        value = pareto_criticality(problem, theta)
        assert value <= brute + 1e-12
        assert value >= brute - 2.0 / steps * float(grads.norm(dim=1).max())


def test_quadratic_pareto_set_contains() -> None:
    problem = CONVEX["quadratic"]()
    assert problem.pareto_set_contains(problem.minimiser([0.2, 0.3, 0.5]))
    assert problem.pareto_set_contains(problem.optima[1])
    assert not problem.pareto_set_contains(problem.initial_point())


def test_criticality_rejects_a_batch() -> None:
    problem = CONVEX["quadratic"]()
    with pytest.raises(ValueError, match="single point"):
        pareto_criticality(problem, torch.zeros(2, problem.dim, dtype=F64))


# --- the CAGrad toy -----------------------------------------------------------------------------


def test_toy_matches_the_published_definition() -> None:
    toy = CAGradToy()
    valley = 2 * math.tanh(1.0) - 7
    points = [*CAGradToy.STARTS, (0.0, -8.3552), (3.0, 0.0), (valley, 1.0), (-2.0, 4.0)]
    points += [tuple(p.tolist()) for p in random_points(toy, 20, seed=13)]
    for x1, x2 in points:
        got = toy.losses(torch.tensor([x1, x2], dtype=F64)).tolist()
        assert got == pytest.approx(toy_reference(x1, x2), rel=1e-14, abs=1e-14)
    floor = math.log(5e-6) + 6
    assert toy.losses(torch.tensor([valley, 1.0], dtype=F64))[0].item() == pytest.approx(
        floor * math.tanh(0.5), rel=1e-14
    )
    assert float(toy.losses(torch.tensor(CAGradToy.STARTS[1], dtype=F64)).min()) < 0


def test_toy_pareto_set() -> None:
    toy = CAGradToy()
    (x1_min, x1_max), x2_nominal = toy.pareto_segment()
    assert (x1_min, x1_max, x2_nominal) == (-7.0, 7.0, -8.3552)
    x1 = torch.linspace(x1_min, x1_max, 29, dtype=F64)
    x2 = toy.pareto_curve(x1)
    # The exact set: x2 = -8.35511 at x1 = 0 (the paper draws -8.3552), bending down to
    # -8.4345 at the ends.
    assert float(x2[14]) == pytest.approx(-8.35511, abs=1e-5)
    assert float(x2[0]) == pytest.approx(-8.43446, abs=1e-5)
    assert bool((x2 <= x2_nominal + 1e-4).all()) and bool((x2 >= x2_nominal - 0.08).all())
    for a, b in zip(x1.tolist(), x2.tolist(), strict=True):
        on_curve = torch.tensor([a, b], dtype=F64)
        assert pareto_criticality(toy, on_curve) <= 1e-12
        assert toy.distance_to_pareto_set(on_curve) <= 1e-9
        # The paper's flat segment is within 0.08 of the set; M there is small, not zero.
        on_segment = torch.tensor([a, x2_nominal], dtype=F64)
        assert pareto_criticality(toy, on_segment) <= 2.5e-3
        assert toy.distance_to_pareto_set(on_segment) <= 0.08
    for start in CAGradToy.STARTS:
        theta = torch.tensor(start, dtype=F64)
        assert pareto_criticality(toy, theta) > 0.05
        assert toy.distance_to_pareto_set(theta) > 1.0
    # Off the x1-range the distance is measured to the curve's end points.
    end = torch.tensor([7.0, float(toy.pareto_curve(7.0))], dtype=F64)
    assert toy.distance_to_pareto_set(end + torch.tensor([3.0, 0.0], dtype=F64)) == (
        pytest.approx(3.0, rel=1e-12)
    )
    with pytest.raises(ValueError, match="x1"):
        toy.pareto_curve(7.5)


def test_toy_minimiser_is_global_on_a_grid() -> None:
    toy = CAGradToy()
    axis = torch.linspace(-10, 10, 201, dtype=F64)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), dim=-1).reshape(-1, 2)
    for w in weight_vectors(2):
        best = float(toy.weighted_loss(toy.minimiser(w), w))
        assert float(toy.weighted_loss(grid, w).min()) >= best


def test_toy_starts() -> None:
    toy = CAGradToy()
    assert toy.STARTS == ((-8.5, 7.5), (-8.5, -5.0), (9.0, 9.0))
    for seed, start in enumerate(toy.STARTS):
        assert toy.initial_point(seed).tolist() == list(start)
    extra = toy.initial_point(3)
    assert torch.equal(extra, toy.initial_point(3)) and bool((extra.abs() <= 10).all())


# --- determinism, arguments, repr ---------------------------------------------------------------

DATA = {
    ConvexQuadratic: ("hessians", "optima"),
    LeastSquares: ("features", "targets", "ground_truth"),
    LogisticRegression: ("features", "labels", "directions"),
}


@pytest.mark.parametrize("cls", list(DATA))
def test_seeds_determine_the_problem(cls: type) -> None:
    first, again, other = cls(seed=7), cls(seed=7), cls(seed=8)
    for name in DATA[cls]:
        assert torch.equal(getattr(first, name), getattr(again, name))
        assert not torch.equal(getattr(first, name), getattr(other, name))
    assert torch.equal(first.initial_point(3), again.initial_point(3))
    assert not torch.equal(first.initial_point(3), first.initial_point(4))
    assert not torch.equal(first.initial_point(3), other.initial_point(3))
    theta = first.initial_point()
    assert torch.equal(first.gradients(theta), again.gradients(theta))


@pytest.mark.parametrize(
    ("cls", "kwargs", "shown"),
    [
        (ConvexQuadratic, {"condition": 0.5}, "condition=0.5"),
        (ConvexQuadratic, {"condition": float("nan")}, "condition=nan"),
        (ConvexQuadratic, {"conflict": -1.0}, "conflict=-1.0"),
        (ConvexQuadratic, {"num_objectives": 0}, "num_objectives=0"),
        (ConvexQuadratic, {"dim": 2.5}, "dim=2.5"),
        (ConvexQuadratic, {"seed": -1}, "seed=-1"),
        (ConvexQuadratic, {"num_objectives": True}, "num_objectives=True"),
        (LeastSquares, {"dim": 10, "samples": 5}, "samples=5"),
        (LeastSquares, {"noise": -0.1}, "noise=-0.1"),
        (LeastSquares, {"dim": 0}, "dim=0"),
        (LogisticRegression, {"ridge": -1e-3}, "ridge=-0.001"),
        (LogisticRegression, {"samples": 0}, "samples=0"),
        (LogisticRegression, {"ridge": "0.1"}, "ridge='0.1'"),
    ],
)
def test_bad_arguments_are_named(cls: type, kwargs: dict, shown: str) -> None:
    with pytest.raises(ValueError, match=f"`{shown.split('=')[0]}`") as info:
        cls(**kwargs)
    assert shown in str(info.value)


@pytest.mark.parametrize("key", list(ALL))
def test_bad_inputs_are_rejected(key: str) -> None:
    problem = ALL[key]()
    k = problem.num_objectives
    with pytest.raises(ValueError, match="theta"):
        problem.losses(torch.zeros(problem.dim + 1, dtype=F64))
    for weights in ([1.0] * (k + 1), [-1.0] + [1.0] * (k - 1), [0.0] * k, [math.nan] * k):
        with pytest.raises(ValueError, match="weights"):
            problem.minimiser(weights)
    with pytest.raises(ValueError, match="seed"):
        problem.initial_point(-1)


def test_reprs() -> None:
    assert repr(CAGradToy()) == "CAGradToy()"
    assert repr(ConvexQuadratic()) == (
        "ConvexQuadratic(num_objectives=2, dim=10, condition=10.0, conflict=1.0, seed=0)"
    )
    assert "samples=50" in repr(LeastSquares()) and "ridge=0.01" in repr(LogisticRegression())
    names = {cls().name for cls in (ConvexQuadratic, LeastSquares, LogisticRegression, CAGradToy)}
    assert names == {"quadratic", "least_squares", "logistic", "cagrad_toy"}
