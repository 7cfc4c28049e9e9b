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
    """Record the (Gram, answer) of every fused call: every ``_step_native`` call's result
    (None where it declined), and those of ``_step_store`` that ran (its None only means that
    the wrapper goes on to the general path, which may call ``_step_native``)."""
    calls: list = []
    real, real_store = optimizer._step_native, optimizer._step_store

    def spy(*args: object, **kwargs: object) -> object:
        out = real(*args, **kwargs)
        calls.append(out)
        return out

    def spy_store(*args: object, **kwargs: object) -> object:
        out = real_store(*args, **kwargs)
        if out is not None:
            calls.append(out[:2])
        return out

    monkeypatch.setattr(optimizer, "_step_native", spy)
    monkeypatch.setattr(optimizer, "_step_store", spy_store)
    return calls


def _train(
    monkeypatch: pytest.MonkeyPatch,
    fused: bool,
    k: int,
    steps: int = 4,
    micro_batches: int = 1,
    losses=None,
    store_path: bool = True,
    **options: object,
) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]], list]:
    """Parameters and diagnostics after each step, with the fused path on or off (and the
    wrapper's one-pass route to it, ``_step_store``, on or off)."""
    with monkeypatch.context() as m:
        calls = _spy(m)
        if not fused:
            m.setattr(optimizer, "_native_solve", lambda *args, **kwargs: None)
        if not store_path:  # (with fused off, _native_solve has turned it off already)
            m.setattr(optimizer, "_step_store", lambda *args, **kwargs: None)
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
    assert [a is not None for _, a in steps(4, method="mgda")] == [True]  # active set in C
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

    monkeypatch.setattr(optimizer, "_native_solve", lambda *args, **kwargs: None)
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


# ---------------------------------------------------------------------------------------------
# The wrapper's one-pass route to the fused call (primitives._step_store) and the kernel's
# check that no output overlaps memory another piece reads (native.step(..., exclusive=True)).


def _exclusive(
    rows: list[int], lens: list[int], outs: list[int], k: int = 2, kind: int = 0, out_kind: int = 0
) -> object:
    """native.step with exclusive=True and no solve (the Gram only, nothing written)."""
    return native.step(k, rows, lens, kind, 1, outs, out_kind, False, False, [0.5] * k, None, True)


def test_exclusive_accepts_an_output_that_is_its_own_row_and_nothing_else() -> None:
    buf = torch.randn(64)
    p = buf.data_ptr()
    f = 4  # bytes per float32
    # Piece 0: rows [0, 8) and [8, 16), written in place over its first row; piece 1: rows
    # [16, 24) and [24, 32), written to [32, 40).
    rows = [p, p + 8 * f, p + 16 * f, p + 24 * f]
    ok = _exclusive(rows, [8, 8], [p, p + 32 * f])
    assert ok is not None and len(ok[0]) == 4
    refused = {
        "an output over another piece's row": [p + 16 * f, p + 32 * f],
        "an output partly over its own row": [p + 4 * f, p + 32 * f],
        "an output partly over another piece's row": [p, p + 20 * f],
        "two outputs overlapping": [p + 32 * f, p + 36 * f],
        "an output over the other row of its own piece, one element on": [p + 9 * f, p + 40 * f],
    }
    for why, outs in refused.items():
        assert _exclusive(rows, [8, 8], outs) is None, why
    # The same memory read as bfloat16 and written as float32 is not "exactly its own row".
    assert _exclusive(rows, [8, 8], [p, p + 32 * f], kind=2, out_kind=0) is None
    # Empty pieces and absent (0) rows take no memory.
    assert _exclusive([p, 0, p, p], [8, 0], [p, p]) is not None
    # Rows may overlap one another (read only): two pieces reading the same memory.
    assert _exclusive([p, p + 8 * f, p, p + 8 * f], [8, 8], [p + 32 * f, p + 40 * f]) is not None


def test_exclusive_finds_an_output_inside_a_long_row_behind_shorter_ones() -> None:
    """The kernel sorts the spans by start and looks back from an output as far as the running
    maximum of their ends reaches: an output inside a long row is found even when shorter
    spans, which end before the output starts, lie between the two."""
    buf = torch.randn(512)
    p = buf.data_ptr()
    f = 4  # bytes per float32
    # Piece 0 (100 values) reads [0, 100) and [100, 200), writes [300, 400). Piece 1 (10
    # values) reads [10, 20) and [30, 40): spans that start after [0, 100) and end before 50.
    rows = [p, p + 100 * f, p + 10 * f, p + 30 * f]
    assert _exclusive(rows, [100, 10], [p + 300 * f, p + 400 * f]) is not None
    # Piece 1 writing [50, 60), inside piece 0's first row, which it may be read after.
    assert _exclusive(rows, [100, 10], [p + 300 * f, p + 50 * f]) is None


def test_exclusive_refuses_before_reading_or_writing() -> None:
    """A refusal returns None at once: the output keeps its values even with a solve asked."""
    x = torch.randn(3, 10)
    out = x[1]  # the second piece's row, as the first piece's output
    before = x.clone()
    spare = torch.empty(10)  # the second piece's output, alive for the calls
    args = [
        2,
        [x[0].data_ptr(), x[2].data_ptr(), x[1].data_ptr(), x[2].data_ptr()],
        [10, 10],
        0,
        1,
        [out.data_ptr(), spare.data_ptr()],
        0,
        False,
        False,
        [0.5, 0.5],
        _host.native_options("cagrad_clip", True, 0.4, torch.float64, 2, False),
        True,
    ]
    assert native.step(*args) is None
    assert torch.equal(x, before)
    args[-1] = False  # without the check the same call writes (and corrupts piece 1's row)
    assert native.step(*args) is not None
    assert not torch.equal(x, before)


def _store_calls(monkeypatch: pytest.MonkeyPatch, on: bool = True) -> list:
    """Record what every ``_step_store`` call returned (None: declined); ``on=False`` turns
    the route off (the general path takes every step) and records nothing."""
    calls: list = []
    if not on:
        monkeypatch.setattr(optimizer, "_step_store", lambda *args, **kwargs: None)
        return calls
    real = optimizer._step_store

    def spy(*args: object, **kwargs: object) -> object:
        out = real(*args, **kwargs)
        calls.append(out)
        return out

    monkeypatch.setattr(optimizer, "_step_store", spy)
    return calls


class _Pair(torch.nn.Module):
    """Two parameters that reach the losses through ``a + b`` (autograd hands both the same
    gradient tensor) or through ``cat([a, b])`` (two views of one gradient buffer)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a = torch.nn.Parameter(torch.randn(6))
        self.b = torch.nn.Parameter(torch.randn(6))
        self.w = torch.nn.Parameter(torch.randn(4, 6))

    def losses(self, x: torch.Tensor) -> list[torch.Tensor]:
        s = self.a + self.b if self.how == "add" else torch.cat([self.a, self.b])[::2]
        h = torch.tanh(x @ self.w)
        return [(h * s).sum() ** 2 / 10, ((h - s) ** 2).mean(), (h.sum(0) - s).pow(2).sum()]


def _pair_step(monkeypatch: pytest.MonkeyPatch, how: str, store_path: bool) -> tuple:
    torch.manual_seed(0)
    model = _Pair(how)
    x = torch.randn(5, 4)
    with monkeypatch.context() as m:
        calls = _store_calls(m, store_path)
        opt = MultiObjectiveOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), [0.2, 0.3, 0.5])
        opt.zero_grad()
        opt.step(model.losses(x))
    return model, calls


@pytest.mark.parametrize("how", ["add", "cat"])
def test_store_path_with_gradients_shared_between_parameters(
    how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One gradient tensor for two parameters: the kernel refuses to write it as either one's
    .grad and the general path takes the step. Two disjoint views of one buffer: each may be
    written as its own parameter's .grad. Either way the step is the general path's."""
    model, calls = _pair_step(monkeypatch, how, True)
    ref, _ = _pair_step(monkeypatch, how, False)
    assert len(calls) == 1
    if how == "add":
        ga, gb = torch.autograd.grad(model.losses(torch.randn(5, 4))[0], [model.a, model.b])
        assert ga is gb  # the premise
        assert calls[0] is None
        assert model.a.grad.data_ptr() != model.b.grad.data_ptr()
    else:
        assert calls[0] is not None and calls[0][1] is not None
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-12)


class _Mixed(torch.nn.Module):
    def __init__(self, case: str) -> None:
        super().__init__()
        self.case = case
        self.a = torch.nn.Parameter(torch.randn(4, 3))
        dtype = torch.float64 if case == "float64 parameter" else torch.float32
        self.b = torch.nn.Parameter(torch.randn(3, dtype=dtype))
        self.t = torch.nn.Parameter(torch.randn(3, 4))
        self.e = torch.nn.Parameter(torch.randn(2))

    def losses(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = torch.tanh(x @ self.a + self.b.float()) @ self.t
        out = [h.pow(2).mean(), (h - 1).abs().mean(), h.sum().tanh()]
        if self.case == "expanded gradient":  # the gradient of a sum is expanded (stride 0)
            out[0] = out[0] + self.e.sum()
        return out


@pytest.mark.parametrize(
    ("case", "declined"),
    [
        ("plain", False),
        ("float64 parameter", True),  # two gradient dtypes: one kind per call
        ("expanded gradient", True),  # not contiguous: the general path copies it
        # An existing .grad is added to (as backward adds): the accumulating route, not this
        # one, takes the step (None: never asked).
        ("existing .grad", None),
        ("non-contiguous .grad", None),
        ("kernels off", True),
    ],
)
def test_store_path_declines_what_it_cannot_do_in_one_call(
    case: str, declined: bool | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the one-pass route declines, nothing is read or written and the general path
    takes the step; where it answers, the step is the general path's, .grad included."""

    def run(store_path: bool) -> tuple[list[torch.Tensor], list[torch.Tensor], list]:
        torch.manual_seed(1)
        model = _Mixed(case)
        x = torch.randn(6, 4)
        with monkeypatch.context() as m:
            calls = _store_calls(m, store_path)
            if case == "kernels off":
                m.setenv(primitives.NATIVE_DISABLE_ENV, "1")
            opt = MultiObjectiveOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))
            opt.zero_grad()
            if case in ("existing .grad", "non-contiguous .grad"):
                for p in model.parameters():
                    p.grad = torch.full_like(p, 7.0)  # added to, or kept if unreached
            if case == "non-contiguous .grad":
                model.a.grad = torch.zeros(3, 4).T
            held = [p.grad for p in model.parameters()]
            opt.step(model.losses(x))
            if case in ("existing .grad", "non-contiguous .grad"):
                assert all(p.grad is g for p, g in zip(model.parameters(), held, strict=True))
        return list(model.parameters()), [p.grad for p in model.parameters()], calls

    params, grads, calls = run(True)
    ref_params, ref_grads, _ = run(False)
    if declined is None:
        assert calls == []
    else:
        assert len(calls) == 1 and (calls[0] is None) == declined
    for a, b in zip(params + grads, ref_params + ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_store_path_follows_weights_changed_in_place_or_replaced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The wrapper keeps the C solve's options and weights between steps; an in-place change
    of its weight tensor, or new weights from load_state_dict, must reach the next solve."""
    model = _model(3)
    weights = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)
    opt = MultiObjectiveOptimizer(torch.optim.SGD(model.parameters(), lr=0.01), weights)
    calls = _store_calls(monkeypatch)

    def step_coeffs(data: int) -> tuple[torch.Tensor, torch.Tensor]:
        opt.zero_grad()
        opt.step(model.losses(*_data(data)))
        info = opt.last_info
        return info["coeffs"], info["gram"]

    for new in ([0.6, 0.3, 0.1], [0.1, 0.1, 0.8]):
        opt.weights.copy_(torch.tensor(new, dtype=torch.float64))
        coeffs, h = step_coeffs(0)
        want = conflict_opt.solve(h, torch.tensor(new, dtype=torch.float64)).coeffs
        torch.testing.assert_close(coeffs, want, rtol=1e-9, atol=1e-12)
    state = opt.state_dict()
    state["wrapper"]["weights"] = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    opt.load_state_dict(state)
    coeffs, h = step_coeffs(1)
    want = conflict_opt.solve(h, state["wrapper"]["weights"]).coeffs
    torch.testing.assert_close(coeffs, want, rtol=1e-9, atol=1e-12)
    assert len(calls) == 3 and all(c is not None and c[1] is not None for c in calls)


def test_store_path_reuses_gradients_as_grad_and_leaves_unreached_parameters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """.grad becomes one of the store's own tensors (no fresh allocation); a parameter no
    objective reaches keeps .grad None; a zero-size one gets an empty .grad, as on the
    general path."""
    returned: list[int] = []
    real = torch.autograd.grad

    def spy(*args: object, **kwargs: object):
        out = real(*args, **kwargs)
        returned.extend(g.data_ptr() for g in out if g is not None and g.numel())
        return out

    model = _model(3)
    calls = _store_calls(monkeypatch)
    opt = MultiObjectiveOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    monkeypatch.setattr(torch.autograd, "grad", spy)
    opt.zero_grad()
    opt.step(model.losses(*_data(0)))
    assert len(calls) == 1 and calls[0] is not None
    assert model.trunk.weight.grad.data_ptr() in returned
    assert model.heads[0].weight.grad.data_ptr() in returned
    assert model.unused.weight.grad is None
    assert model.empty.grad is not None and model.empty.grad.numel() == 0
