"""The fused step: Gram, host solve and combination in one native call
(``conflict_opt._native.step``, used by ``MultiObjectiveOptimizer`` and ``aggregate_`` on CPU).

It must change nothing but speed: the same Gram bit for bit, the same coefficients up to the
round-off between the C and the Python solves, the same parameters and diagnostics after
training; a Gram its C solve refuses goes to the ordinary solve without being computed again;
and it is taken exactly where it applies.
"""

from __future__ import annotations

import math

import pytest
import torch

import conflict_opt
from conflict_opt import MultiObjectiveOptimizer, optimizer, primitives
from conflict_opt.solvers import _host

from .test_optimizer import _data, _model

native = primitives._native
pytestmark = pytest.mark.skipif(native is None, reason="conflict_opt._native is not built")


def _spy(monkeypatch: pytest.MonkeyPatch) -> list:
    """Record what every ``_step_native`` call returned."""
    calls: list = []
    real = optimizer._step_native

    def spy(*args: object, **kwargs: object) -> object:
        out = real(*args, **kwargs)
        calls.append(out)
        return out

    monkeypatch.setattr(optimizer, "_step_native", spy)
    return calls


def _train(
    monkeypatch: pytest.MonkeyPatch,
    fused: bool,
    k: int,
    steps: int = 4,
    micro_batches: int = 1,
    losses=None,
    **options: object,
) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]], list]:
    """Parameters and diagnostics after each step, with the fused path on or off."""
    with monkeypatch.context() as m:
        calls = _spy(m)
        if not fused:
            m.setattr(optimizer, "_fused", lambda *args, **kwargs: None)
        model = _model(k)
        opt = MultiObjectiveOptimizer(torch.optim.Adam(model.parameters(), lr=0.01), **options)
        infos = []
        for step in range(steps):
            opt.zero_grad()
            for micro in range(micro_batches):
                items = model.losses(*_data(step * micro_batches + micro))
                opt.backward(items if losses is None else losses(items))
            opt.step()
            infos.append({name: t.clone() for name, t in opt.last_info.items()})
        return [p.detach().clone() for p in model.parameters()], infos, calls


CASES = [
    (2, {"method": "cagrad_clip"}),
    (3, {"method": "cagrad_clip"}),
    (4, {"method": "cagrad_clip"}),
    (3, {"method": "cagrad", "c": 0.7}),
    (5, {"method": "cagrad_clip", "backend": "iterative"}),
    (2, {"method": "cagrad_clip", "backend": "iterative"}),
    (3, {"method": "mgda"}),
    (4, {"method": "linear"}),
    (3, {"method": "cagrad", "c": 0.0}),
    (3, {"method": "cagrad_clip", "weights": [0.6, 0.3, 0.1]}),
    (3, {"method": "cagrad_clip", "store_dtype": torch.bfloat16}),
    (3, {"method": "cagrad_clip", "accumulation": "per_micro_batch"}),
]


@pytest.mark.parametrize(("k", "options"), CASES, ids=[str(c) for c in CASES])
def test_fused_training_matches_the_separate_calls(
    k: int, options: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    micro = 2
    fused, fused_infos, calls = _train(monkeypatch, True, k, micro_batches=micro, **options)
    plain, plain_infos, plain_calls = _train(monkeypatch, False, k, micro_batches=micro, **options)
    assert plain_calls == []
    # The fused path answered every solve (these Grams are well conditioned).
    assert calls and all(answer is not None for _, answer in calls), calls
    for a, b in zip(fused, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    for a, b in zip(fused_infos, plain_infos, strict=True):
        assert a.keys() == b.keys()
        torch.testing.assert_close(a["gram"], b["gram"], rtol=1e-9, atol=1e-12)
        for name in ("coeffs", "dual", "clipped", "cosines", "directional", "pairwise_cosines"):
            torch.testing.assert_close(a[name], b[name], rtol=1e-9, atol=1e-12, msg=name)
        assert torch.equal(a["status"], b["status"]) and int(a["status"]) == 0
        assert torch.equal(a["clipping_active"], b["clipping_active"])
        assert not bool(a["skipped"])


def test_the_fused_gram_is_the_gram_bit_for_bit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Same kernel, same block order: the Gram of the fused call equals gram() exactly, and its
    combination equals combine_() with the same coefficients exactly."""
    model = _model(4)
    params = list(model.parameters())
    grads = [
        list(torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True))
        for loss in model.losses(*_data(0))
    ]
    agg = conflict_opt.aggregate_(params, grads, None)
    assert torch.equal(agg.gram, conflict_opt.gram(grads))
    reached = [t for t, p in enumerate(params) if p.grad is not None]
    out = [torch.full_like(params[t], math.nan) for t in reached]
    conflict_opt.combine_(out, [[g[t] for t in reached] for g in grads], agg.result.coeffs)
    for t, o in zip(reached, out, strict=True):
        assert torch.equal(params[t].grad, o), t


def test_the_fused_path_is_taken_where_it_applies_and_only_there(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def steps(k: int, **options: object) -> list:
        return _train(monkeypatch, True, k, steps=1, **options)[2]

    assert [a is not None for _, a in steps(4)] == [True]
    assert [a is not None for _, a in steps(3, method="mgda")] == [True]  # closed form in C
    assert steps(4, method="mgda") == []  # MGDA's active set is numpy's
    assert steps(3, primitive_backend="reference") == []
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    assert steps(3, scaler=scaler) == []  # the Gram is unscaled before the solve
    monkeypatch.setenv(primitives.NATIVE_DISABLE_ENV, "1")
    assert steps(3) == [None]  # asked, and declined: the kernels are off


@pytest.mark.exact
def test_the_exact_backend_is_never_fused(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("cvxpy")
    assert _train(monkeypatch, True, 3, steps=1, backend="exact")[2] == []


def test_a_gram_the_c_solve_refuses_goes_to_the_solver_without_a_second_gram(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two identical objectives: a singular Gram, which the active set (K = 4) refuses. The
    fused call hands back its Gram; the torch path solves it; the step equals the unfused one."""

    def duplicated(items: list[torch.Tensor]) -> list[torch.Tensor]:
        return [items[0], items[0] * 1.0, items[1], items[2]]

    def no_gram(*args: object, **kwargs: object) -> None:
        raise AssertionError("the Gram was computed a second time")

    with monkeypatch.context() as m:
        m.setattr(optimizer, "_gram_grads", no_gram)
        fused, fused_infos, calls = _train(m, True, 4, steps=2, losses=duplicated)
    plain, plain_infos, _ = _train(monkeypatch, False, 4, steps=2, losses=duplicated)
    assert len(calls) == 2 and all(answer is None for _, answer in calls)
    for a, b in zip(fused, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    for a, b in zip(fused_infos, plain_infos, strict=True):
        assert torch.equal(a["gram"], b["gram"])
        assert torch.equal(a["status"], b["status"])


def test_a_nonfinite_gram_is_handed_back_and_the_step_skipped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = _model(3)
    opt = MultiObjectiveOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    calls = _spy(monkeypatch)
    before = [p.detach().clone() for p in model.parameters()]
    model.trunk.weight.register_hook(lambda g: g * math.nan)
    opt.zero_grad()
    opt.step(model.losses(*_data(0)))
    assert len(calls) == 1 and calls[0][1] is None
    assert math.isnan(calls[0][0][0])
    info = opt.last_info
    assert bool(info["skipped"]) and int(info["status"]) == int(conflict_opt.Status.NONFINITE)
    for a, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(a, b)


def test_grad_is_assigned_only_once_written(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure between the Gram and the combination leaves every ``.grad`` as it was."""
    model = _model(4)
    params = list(model.parameters())
    grads = [
        list(torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True))
        for loss in model.losses(*_data(0))
    ]

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("solver failure")

    monkeypatch.setattr(optimizer, "_fused", lambda *args, **kwargs: None)
    monkeypatch.setattr(optimizer, "solve", broken)
    with pytest.raises(RuntimeError, match="solver failure"):
        conflict_opt.aggregate_(params, grads, None)
    assert all(p.grad is None for p in params)


def _step_args(k: int = 3, **changes: object) -> list:
    rows = [torch.randn(10, dtype=torch.float32) for _ in range(k)]
    out = torch.empty(10)
    args = {
        "k": k,
        "rows": [r.data_ptr() for r in rows],
        "lens": [10],
        "kind": 0,
        "nthreads": 1,
        "outs": [out.data_ptr()],
        "out_kind": 0,
        "accumulate": False,
        "stream": False,
        "weights": [1.0 / k] * k,
        "options": _host.native_options("cagrad_clip", True, 0.4, torch.float64, k, False),
    }
    args.update(changes)
    return [rows, out, list(args.values())]


def test_native_step_checks_its_arguments() -> None:
    rows, out, args = _step_args()
    gram, answer, skipped = native.step(*args)
    assert len(gram) == 9 and answer is not None and skipped == []
    j = torch.stack(rows).double()
    h = torch.tensor(gram, dtype=torch.float64).view(3, 3)
    torch.testing.assert_close(h, j @ j.T, rtol=1e-6, atol=1e-6)
    a = torch.tensor(answer[0], dtype=torch.float64)
    torch.testing.assert_close(out.double(), a @ j, rtol=1e-6, atol=1e-6)
    for changes, error, match in (
        ({"weights": [0.5, 0.5]}, ValueError, "got 2 weights for k = 3"),
        ({"options": (1, True)}, TypeError, "options"),
        ({"options": [1]}, TypeError, "options must be a tuple"),
        ({"out_kind": 1}, ValueError, "float64 .1. rows and outputs go together"),
        ({"outs": []}, ValueError, "outs has 0 pointers, expected 1"),
        ({"rows": [0]}, ValueError, "rows has 1 pointers"),
        ({"nthreads": 0}, ValueError, "nthreads = 0"),
    ):
        bad = _step_args(**changes)[2]
        with pytest.raises(error, match=match):
            native.step(*bad)
    k = native.HOST_MAX_K + 1
    with pytest.raises(ValueError, match=f"k = {k} is outside 1..{native.HOST_MAX_K}"):
        native.step(*_step_args(k)[2])
    # No options: the Gram only, nothing written.
    rows, out, args = _step_args()
    out.fill_(math.nan)
    args[-1] = None
    gram, answer, skipped = native.step(*args)
    assert len(gram) == 9 and answer is None and skipped is None and out.isnan().all()
