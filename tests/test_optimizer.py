"""MultiObjectiveOptimizer and aggregate_: equivalences with the inner optimizer, backend
independence, memory modes, accumulation, mixed precision, state round trips, bad input."""

from __future__ import annotations

import copy
import io
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

import conflict_opt
from conflict_opt import MultiObjectiveOptimizer, primitives

try:
    from conflict_opt.kernels import multi_tensor
except ImportError:
    multi_tensor = None


class Net(nn.Module):
    """A trunk, one head per objective, a layer no objective reaches, a zero-size parameter."""

    def __init__(self, k: int = 3) -> None:
        super().__init__()
        self.trunk = nn.Linear(4, 8)
        self.heads = nn.ModuleList(nn.Linear(8, 1) for _ in range(k))
        self.unused = nn.Linear(2, 2)
        self.empty = nn.Parameter(torch.zeros(0))

    def losses(self, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        z = torch.tanh(self.trunk(x))
        out = []
        for i, head in enumerate(self.heads):
            target = y if i % 2 == 0 else -y
            out.append((head(z).squeeze(-1) - target + 0.1 * i).pow(2).mean())
        out[0] = out[0] + self.empty.sum()  # a zero-size parameter in the graph
        return out


def _data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + step)
    return torch.randn(16, 4, generator=gen), torch.randn(16, generator=gen)


def _model(k: int = 3, seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net(k)


OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    "adam": lambda p: torch.optim.Adam(p, lr=0.01),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
}


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_k1_reproduces_the_inner_optimizer_bitwise(name: str) -> None:
    """K = 1 with method 'linear' or 'mgda': a = 1 exactly, so the steps are identical."""
    for method in ("linear", "mgda"):
        plain, wrapped = _model(1), _model(1)
        opt_plain = OPTIMIZERS[name](plain.parameters())
        opt = MultiObjectiveOptimizer(OPTIMIZERS[name](wrapped.parameters()), method=method)
        for step in range(4):
            x, y = _data(step)
            opt_plain.zero_grad()
            plain.losses(x, y)[0].backward()
            opt_plain.step()
            opt.zero_grad()
            opt.step(wrapped.losses(x, y))
            for a, b in zip(plain.parameters(), wrapped.parameters(), strict=True):
                assert torch.equal(a, b), (method, step)


def test_k1_cagrad_scales_the_step_by_one_plus_c() -> None:
    """RACO's formula with K = 1: G_0 = g + c‖g‖ g/‖g‖ = (1 + c) g (no hidden rescaling)."""
    model = _model(1)
    before = model.trunk.weight.detach().clone()
    opt = MultiObjectiveOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), c=0.4)
    x, y = _data(0)
    grads = torch.autograd.grad(model.losses(x, y)[0], model.trunk.weight)
    opt.step(model.losses(x, y))
    torch.testing.assert_close(model.trunk.weight, before - 0.1 * 1.4 * grads[0])


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_linear_reproduces_the_inner_optimizer_on_the_weighted_sum(name: str) -> None:
    w = [0.5, 0.3, 0.2]
    plain, wrapped = _model(), _model()
    opt_plain = OPTIMIZERS[name](plain.parameters())
    opt = MultiObjectiveOptimizer(OPTIMIZERS[name](wrapped.parameters()), w, method="linear")
    for step in range(5):
        x, y = _data(step)
        opt_plain.zero_grad()
        sum(wi * loss for wi, loss in zip(w, plain.losses(x, y), strict=True)).backward()
        opt_plain.step()
        opt.zero_grad()
        opt.step(torch.stack(wrapped.losses(x, y)))
        # Σ w_k g_k summed by combine_ vs by autograd: same terms, another order (fp32).
        for a, b in zip(plain.parameters(), wrapped.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def _backend_options() -> list[dict]:
    opts = [
        {"backend": "closed_form", "primitive_backend": "torch"},
        {"backend": "iterative", "primitive_backend": "torch"},
        {"backend": "exact", "primitive_backend": "torch"},
        {"backend": "closed_form", "primitive_backend": "reference"},
    ]
    if multi_tensor is not None and primitives.triton_unavailable(torch.device("cpu")) is None:
        opts.append({"backend": "closed_form", "primitive_backend": "triton"})
    return opts


def _train(options: dict, steps: int = 6, name: str = "adam", **kw) -> list[list[torch.Tensor]]:
    """Train with a layer frozen at step 2 and unfrozen at step 4; record the parameters and
    the inner optimizer's state tensors after every step."""
    model = _model()
    opt = MultiObjectiveOptimizer(
        OPTIMIZERS[name](model.parameters()), [0.6, 0.3, 0.1], **options, **kw
    )
    history = []
    for step in range(steps):
        model.heads[1].weight.requires_grad_(step not in (2, 3))
        x, y = _data(step)
        opt.zero_grad()
        opt.step(model.losses(x, y))
        state = [
            v.detach().clone()
            for p in model.parameters()
            for v in opt.state.get(p, {}).values()
            if isinstance(v, torch.Tensor)
        ]
        history.append(_params(model) + state)
        assert int(opt.last_info["status"]) <= int(conflict_opt.Status.INACCURATE)
    return history


@pytest.mark.exact
def test_flipping_backends_gives_the_same_training() -> None:
    runs = [_train(o) for o in _backend_options()]
    for other in runs[1:]:
        for step, (a_step, b_step) in enumerate(zip(runs[0], other, strict=True)):
            for a, b in zip(a_step, b_step, strict=True):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"step {step}")


def test_unreached_frozen_and_empty_parameters() -> None:
    model = _model()
    opt = MultiObjectiveOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    unused, frozen_before = _params(model.unused), model.heads[1].weight.detach().clone()
    model.heads[1].weight.requires_grad_(False)
    x, y = _data(0)
    opt.zero_grad()
    opt.step(model.losses(x, y))
    assert model.heads[1].weight.grad is None
    assert torch.equal(model.heads[1].weight, frozen_before)
    for p, before in zip(model.unused.parameters(), unused, strict=True):
        # Reached by no objective: no gradient, as after a plain backward; SGD skips it.
        assert p.grad is None
        assert torch.equal(p, before)
    assert model.empty.grad is not None and model.empty.grad.numel() == 0


@pytest.mark.parametrize(
    ("losses", "error", "match"),
    [
        (lambda m, x, y: [torch.stack(m.losses(x, y))], ValueError, "must be a scalar"),
        (lambda m, x, y: m.losses(x, y)[:2], ValueError, "got 2 losses for 3 weights"),
        (lambda m, x, y: [], ValueError, "at least one loss"),
        (lambda m, x, y: [*m.losses(x, y)[:2], torch.tensor(1.0)], ValueError, "require grad"),
        (
            lambda m, x, y: [*m.losses(x, y)[:2], m.losses(x, y)[2] * float("nan")],
            FloatingPointError,
            "non-finite loss",
        ),
        (lambda m, x, y: torch.ones(3, 1), ValueError, r"shape \[K\]"),
        (lambda m, x, y: 3.0, ValueError, "sequence or a"),
    ],
)
def test_bad_input_raises_and_leaves_parameters_untouched(losses, error, match) -> None:
    model = _model()
    opt = MultiObjectiveOptimizer(torch.optim.Adam(model.parameters()), [0.5, 0.25, 0.25])
    before = _params(model)
    x, y = _data(0)
    with pytest.raises(error, match=match):
        opt.step(losses(model, x, y))
    for a, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(a, b)
        assert a.grad is None
    assert not opt.optimizer.state  # the inner optimizer never stepped


def test_bad_options_raise() -> None:
    params = [nn.Parameter(torch.zeros(2))]
    sgd = torch.optim.SGD(params, lr=0.1)
    for kwargs, match in [
        ({"weights": [0.5, 0.6]}, "sum to 1"),
        ({"weights": [-0.5, 1.5]}, "nonnegative"),
        ({"method": "pcgrad"}, "method='pcgrad'"),
        ({"c": 1.0}, "c=1.0"),
        ({"mode": "lazy"}, "mode='lazy'"),
        ({"mode": "gram_first", "accumulation": "per_step"}, "per_micro_batch"),
        ({"store_dtype": torch.int8}, "store_dtype"),
        ({"primitive_backend": "cuda"}, "primitive_backend='cuda'"),
        ({"check_finite": "yes"}, "check_finite='yes'"),
    ]:
        with pytest.raises(ValueError, match=match):
            MultiObjectiveOptimizer(sgd, **kwargs)
    with pytest.raises(ValueError, match=r"torch\.optim\.Optimizer"):
        MultiObjectiveOptimizer(params)  # type: ignore[arg-type]
    opt = MultiObjectiveOptimizer(sgd)
    with pytest.raises(RuntimeError, match="before step"):
        opt.step()
    params[0].requires_grad_(False)
    with pytest.raises(ValueError, match="no parameter with requires_grad=True"):
        opt.step([(torch.ones(2, requires_grad=True) * 2).sum()])


def test_state_dict_round_trip_continues_identically() -> None:
    def run(model, opt, steps):
        for step in steps:
            x, y = _data(step)
            opt.zero_grad()
            opt.step(model.losses(x, y))

    model = _model()
    opt = MultiObjectiveOptimizer(
        torch.optim.Adam(model.parameters(), lr=0.01), [0.6, 0.3, 0.1], store_dtype=torch.bfloat16
    )
    run(model, opt, range(3))
    saved_model = copy.deepcopy(model.state_dict())
    buffer = io.BytesIO()  # through a file, as a checkpoint goes, with torch.load's safe mode
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    saved_opt = torch.load(buffer, weights_only=True)
    run(model, opt, range(3, 6))

    fresh = _model(seed=7)
    fresh.load_state_dict(saved_model)
    opt2 = MultiObjectiveOptimizer(torch.optim.Adam(fresh.parameters(), lr=0.5), method="mgda")
    opt2.load_state_dict(saved_opt)
    assert opt2.method == "cagrad_clip" and opt2.steps == 3
    assert opt2.store_dtype == torch.bfloat16
    assert opt2.weights.tolist() == [0.6, 0.3, 0.1]
    run(fresh, opt2, range(3, 6))
    for a, b in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="keys"):
        opt2.load_state_dict(saved_opt["optimizer"])


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"method": "pcgrad"}, "method='pcgrad'"),
        ({"c": 1.5}, "c=1.5"),
        ({"c": "0.4"}, "c='0.4'"),
        ({"backend": "gpu"}, "backend='gpu'"),
        ({"mode": "gram_first", "accumulation": "per_step"}, "per_micro_batch"),
        ({"store_dtype": torch.int32}, "store_dtype"),
        ({"check_finite": None}, "check_finite=None"),
        ({"weights": torch.tensor([0.2, 0.2], dtype=torch.float64)}, "sum to 1"),
        ({"steps": -1}, r"\['steps'\] must be an int >= 0, got -1"),
        ({"steps": 2.0}, "got 2.0"),
        ({"extra": 1}, "must have the keys .* got .*'extra'"),
        ({"mode": ...}, r"must have the keys .*, got \['accumulation', 'backend', 'c',"),
    ],
)
def test_load_state_dict_refuses_bad_wrapper_state_with_nothing_loaded(change, match) -> None:
    """A bad or foreign state dict must not leave the inner optimizer loaded and the wrapper
    half-loaded: everything is checked before anything is loaded."""
    donor = _model()
    opt = MultiObjectiveOptimizer(torch.optim.Adam(donor.parameters(), lr=0.01), [0.6, 0.3, 0.1])
    opt.step(donor.losses(*_data(0)))
    bad = copy.deepcopy(opt.state_dict())
    for key, value in change.items():
        if value is ...:
            del bad["wrapper"][key]
        else:
            bad["wrapper"][key] = value

    model = _model(seed=1)
    target = MultiObjectiveOptimizer(torch.optim.Adam(model.parameters(), lr=0.5), method="mgda")
    before = copy.deepcopy(target.state_dict())
    with pytest.raises(ValueError, match=match):
        target.load_state_dict(bad)
    after = target.state_dict()
    assert after["optimizer"] == before["optimizer"] and not target.optimizer.state
    assert after["wrapper"] == before["wrapper"]


def test_store_modes_agree() -> None:
    """bf16 store (fp32 Gram) and gram_first (polarised Gram, one Σ a_k L_k backward) take
    the same steps as the full-precision store, to their precision."""
    base = _train({}, name="sgd")
    bf16 = _train({"store_dtype": torch.bfloat16}, name="sgd")
    gram_first = _train({"mode": "gram_first"}, name="sgd")
    for a_step, b_step, c_step in zip(base, bf16, gram_first, strict=True):
        for a, b, c in zip(a_step, b_step, c_step, strict=True):
            torch.testing.assert_close(b, a, rtol=2e-2, atol=2e-3)
            torch.testing.assert_close(c, a, rtol=1e-4, atol=1e-5)


def test_gram_first_gram_matches_the_store_gram() -> None:
    model = _model()
    x, y = _data(0)
    params = [p for p in model.parameters()]
    grads = [
        torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
        for loss in model.losses(x, y)
    ]
    want = conflict_opt.gram(grads, backend="reference")
    opt = MultiObjectiveOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), mode="gram_first")
    opt.backward(model.losses(x, y))
    torch.testing.assert_close(opt.last_info["gram"], want, rtol=1e-5, atol=1e-6)


def test_accumulation_per_step_equals_one_big_batch() -> None:
    """per_step: per-objective gradients summed over micro-batches, one solve: the same as a
    single backward of the summed losses."""
    one, two = _model(), _model()
    opt_one = MultiObjectiveOptimizer(torch.optim.SGD(one.parameters(), lr=0.1))
    opt_two = MultiObjectiveOptimizer(torch.optim.SGD(two.parameters(), lr=0.1))
    (x1, y1), (x2, y2) = _data(0), _data(1)
    opt_one.zero_grad()
    opt_one.step([a + b for a, b in zip(one.losses(x1, y1), one.losses(x2, y2), strict=True)])
    opt_two.zero_grad()
    opt_two.backward(two.losses(x1, y1))
    opt_two.backward(two.losses(x2, y2))
    opt_two.step()
    for a, b in zip(one.parameters(), two.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_accumulation_per_step_counts_a_shared_gradient_once() -> None:
    """Autograd hands the two inputs of an add one gradient tensor; summing micro-batches in
    place into it would add the second micro-batch twice (it did, before the store summed out
    of place). With method="linear" the result is the gradient of the weighted summed losses."""
    torch.manual_seed(0)
    a, b = nn.Parameter(torch.randn(5)), nn.Parameter(torch.randn(5))

    def losses(x: torch.Tensor) -> list[torch.Tensor]:
        y = (a + b) * x
        return [y.sum() ** 2, (y**2).mean()]

    xs = [torch.randn(5) for _ in range(3)]
    w = [0.3, 0.7]
    per_batch = [losses(x) for x in xs]
    total = sum(wk * sum(batch[k] for batch in per_batch) for k, wk in enumerate(w))
    want = torch.autograd.grad(total, [a, b])
    opt = MultiObjectiveOptimizer(torch.optim.SGD([a, b], lr=0.0), w, method="linear")
    opt.zero_grad()
    for x in xs:
        opt.backward(losses(x))
    opt.step()
    torch.testing.assert_close(a.grad, want[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(b.grad, want[1], rtol=1e-6, atol=1e-6)


def test_accumulation_per_micro_batch_sums_directions() -> None:
    model, ref = _model(), _model()
    opt = MultiObjectiveOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), accumulation="per_micro_batch"
    )
    opt.zero_grad()
    expected = [torch.zeros_like(p) for p in ref.parameters()]
    for step in (0, 1):
        x, y = _data(step)
        opt.backward(model.losses(x, y))
        params = list(ref.parameters())
        grads = [
            torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
            for loss in ref.losses(x, y)
        ]
        for p in params:
            p.grad = None
        conflict_opt.aggregate_(params, grads, None)
        for e, p in zip(expected, params, strict=True):
            if p.grad is not None:
                e += p.grad
    for p, e in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(torch.zeros_like(p) if p.grad is None else p.grad, e)
    opt.step()


@pytest.mark.parametrize("mode", ["store", "gram_first"])
def test_grad_scaler_unscales_and_skips_inf_steps(mode: str) -> None:
    """In either mode the Gram the solve and last_info see is the unscaled one (the scaled
    Gram is S² times it), and an overflowing step writes nothing."""
    plain, scaled = _model(), _model()
    opt_plain = MultiObjectiveOptimizer(torch.optim.SGD(plain.parameters(), lr=0.1), mode=mode)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    opt = MultiObjectiveOptimizer(
        torch.optim.SGD(scaled.parameters(), lr=0.1), scaler=scaler, mode=mode
    )
    x, y = _data(0)
    opt_plain.zero_grad()
    opt_plain.step(plain.losses(x, y))
    opt.zero_grad()
    opt.step(scaled.losses(x, y))
    scaler.update()
    torch.testing.assert_close(opt.last_info["gram"], opt_plain.last_info["gram"])
    for a, b in zip(plain.parameters(), scaled.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    # An overflowing step (inf gradient from a huge scale): skipped, scale reduced.
    before = _params(scaled)
    opt.zero_grad()
    scaler.update(new_scale=torch.tensor(1e38))
    opt.step(scaled.losses(x * 1e3, y))
    scaler.update()
    for a, b in zip(scaled.parameters(), before, strict=True):
        assert torch.equal(a, b)
    assert scaler.get_scale() < 1e38


def test_nonfinite_gradients_skip_the_step_without_scaler() -> None:
    model = _model()
    opt = MultiObjectiveOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    before = _params(model)
    x, y = _data(0)
    model.trunk.weight.register_hook(lambda g: g * float("inf"))
    opt.zero_grad()
    opt.step(model.losses(x, y))
    assert bool(opt.last_info["skipped"])
    for a, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(a, b)


def test_autocast_and_last_info() -> None:
    model = _model()
    opt = MultiObjectiveOptimizer(torch.optim.AdamW(model.parameters(), lr=0.01), [0.2, 0.3, 0.5])
    before = _params(model)
    x, y = _data(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model.losses(x, y)
    opt.zero_grad()
    opt.step(losses)
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), before, strict=True))
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    info = opt.last_info
    assert set(info) >= {
        "coeffs",
        "dual",
        "clipped",
        "clipping_active",
        "pairwise_cosines",
        "directional",
        "cosines",
        "status",
        "gap",
        "skipped",
    }
    assert all(isinstance(v, torch.Tensor) for v in info.values())
    assert info["coeffs"].shape == (3,) and info["pairwise_cosines"].shape == (3, 3)
    assert info["skipped"].dtype == torch.bool and info["skipped"].shape == ()
    assert not bool(info["skipped"])
    torch.testing.assert_close(info["directional"], info["gram"] @ info["coeffs"].double())
    torch.testing.assert_close(info["pairwise_cosines"].diagonal(), torch.ones(3).double())


def test_lr_scheduler_and_zero_grad_behave_as_in_torch() -> None:
    model = _model()
    opt = MultiObjectiveOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    sched = torch.optim.lr_scheduler.StepLR(opt.optimizer, step_size=1, gamma=0.5)
    x, y = _data(0)
    opt.zero_grad()
    opt.step(model.losses(x, y))
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    opt.zero_grad(set_to_none=False)
    reached = [p for p in model.parameters() if p.grad is not None]
    assert len(reached) == 9 and all(not bool(p.grad.any()) for p in reached)
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_aggregate_rejects_mismatched_gradients() -> None:
    p = nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="objective 1 has 2 gradients for 1 parameters"):
        conflict_opt.aggregate_([p], [[torch.ones(2)], [torch.ones(2), None]])


def test_bf16_store_keeps_accumulated_grad_across_micro_batches() -> None:
    """The bfloat16 store gathers with ``autograd.grad``, which leaves ``.grad`` alone: directions
    accumulated by earlier micro-batches survive, and match the float32 store's."""
    runs = []
    for dtype in (None, torch.bfloat16):
        model = _model()
        opt = MultiObjectiveOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.1),
            accumulation="per_micro_batch",
            store_dtype=dtype,
        )
        opt.zero_grad()
        for step in (0, 1, 2):
            opt.backward(model.losses(*_data(step)))
        runs.append([None if p.grad is None else p.grad.clone() for p in model.parameters()])
    for a, b in zip(*runs, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(b, a, rtol=2e-2, atol=2e-3)


class Shared(nn.Module):
    """Parameters whose gradients autograd hands out as one tensor (the two inputs of an add)
    or as an expanded one (a parameter only summed): neither may become a reused .grad."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.randn(5))
        self.b = nn.Parameter(torch.randn(5))
        self.c = nn.Parameter(torch.randn(5))
        self.w = nn.Parameter(torch.randn(5, 5))

    def losses(self, x: torch.Tensor) -> list[torch.Tensor]:
        s = self.a + self.b  # one gradient tensor for a and b
        h = torch.tanh(x @ self.w)
        return [
            (h * s).sum() + self.c.sum(),  # c's gradient is expanded (stride 0)
            ((h - s) ** 2).mean() - 2.0 * self.c.sum(),
        ]


def test_reused_store_gradients_give_the_same_step_as_fresh_grads() -> None:
    """The wrapper writes the combination into its own store's gradient tensors where it is
    safe (saving a P-sized allocation); the step must equal aggregate_ into fresh .grad."""
    torch.manual_seed(0)
    model = Shared()
    ref = copy.deepcopy(model)
    x = torch.randn(7, 5)
    ga, gb = torch.autograd.grad(model.losses(x)[0], [model.a, model.b])
    assert ga is gb  # the premise: autograd shares the tensor
    opt = MultiObjectiveOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), [0.3, 0.7])
    opt.zero_grad()
    opt.step(model.losses(x))

    params = list(ref.parameters())
    losses = ref.losses(x)
    grads = [
        [g.clone() for g in torch.autograd.grad(loss, params, retain_graph=True)] for loss in losses
    ]
    conflict_opt.aggregate_(params, grads, [0.3, 0.7])
    torch.optim.SGD(params, lr=0.1).step()
    for p, q in zip(model.parameters(), params, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert model.a.grad is not model.b.grad
    assert model.a.grad.untyped_storage().data_ptr() != model.b.grad.untyped_storage().data_ptr()


def test_store_gradients_become_grad_when_safe(monkeypatch: pytest.MonkeyPatch) -> None:
    """For an ordinary layer the .grad after the step is one of autograd's own gradient
    tensors: no second P-sized buffer is allocated for it."""
    returned: list[int] = []
    real = torch.autograd.grad

    def spy(*args: object, **kwargs: object):
        out = real(*args, **kwargs)
        returned.extend(g.data_ptr() for g in out if g is not None)
        return out

    model = _model(2)
    opt = MultiObjectiveOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    monkeypatch.setattr(torch.autograd, "grad", spy)
    opt.zero_grad()
    opt.step(model.losses(*_data(0)))
    assert model.trunk.weight.grad.data_ptr() in returned


class _GiveBack(torch.autograd.Function):
    """d/dx (x·t).sum() = t, returned as the very tensor the caller passed in."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(t)
        return (x * t).sum()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (t,) = ctx.saved_tensors
        return t, None


def test_gradients_owned_by_someone_else_are_never_overwritten() -> None:
    """A custom Function may return the caller's tensor as a gradient; the wrapper must not
    write the combination into it (AccumulateGrad's own rule for stealing gradients)."""
    torch.manual_seed(0)
    x = nn.Parameter(torch.randn(6))
    user = torch.randn(6)
    kept = user.clone()
    opt = MultiObjectiveOptimizer(torch.optim.SGD([x], lr=0.1), [0.5, 0.5])
    opt.zero_grad()
    opt.step([_GiveBack.apply(x, user), (x**2).sum()])
    assert torch.equal(user, kept)
    assert x.grad.data_ptr() != user.data_ptr()


def test_last_info_is_the_same_whenever_it_is_read() -> None:
    """The diagnostics are computed when read: reading after every call or only at the end
    gives the same values, the per-micro-batch solves report the last one, and ``skipped``
    appears only once ``step`` has decided it."""
    eager_model, lazy_model = _model(seed=3), _model(seed=3)
    eager = MultiObjectiveOptimizer(
        torch.optim.SGD(eager_model.parameters(), lr=0.1), accumulation="per_micro_batch"
    )
    lazy = MultiObjectiveOptimizer(
        torch.optim.SGD(lazy_model.parameters(), lr=0.1), accumulation="per_micro_batch"
    )
    assert eager.last_info == {} and lazy.last_info == {}
    for step in range(3):
        for opt, model in ((eager, eager_model), (lazy, lazy_model)):
            opt.zero_grad()
            for micro in range(2):
                x, y = _data(10 * step + micro)
                opt.backward(model.losses(x, y))
                if opt is eager:
                    info = opt.last_info
                    assert "skipped" not in info  # the step has not decided yet
                    first = {key: v.clone() for key, v in info.items()}
            opt.step()
        assert set(eager.last_info) == set(lazy.last_info) == {*first, "skipped"}
        for key, value in lazy.last_info.items():
            torch.testing.assert_close(eager.last_info[key], value, rtol=0, atol=0)
        for key, value in first.items():  # read before step: the same solve's values
            torch.testing.assert_close(eager.last_info[key], value, rtol=0, atol=0)


def test_last_info_keeps_the_weights_of_its_solve() -> None:
    """Weights changed in place after a step do not leak into that step's diagnostics."""
    model = _model(seed=5)
    weights = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)
    opt = MultiObjectiveOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), weights)
    x, y = _data(0)
    opt.zero_grad()
    opt.step(model.losses(x, y))
    info = opt.last_info
    want = {key: v.clone() for key, v in info.items()}
    model2 = _model(seed=5)
    opt2 = MultiObjectiveOptimizer(torch.optim.SGD(model2.parameters(), lr=0.1), weights.clone())
    opt2.zero_grad()
    opt2.step(model2.losses(x, y))
    opt2.weights.copy_(torch.tensor([0.1, 0.1, 0.8], dtype=torch.float64))  # before any read
    for key, value in opt2.last_info.items():
        torch.testing.assert_close(value, want[key], rtol=0, atol=0)


def _store(model: Net, store_dtype: torch.dtype | None) -> tuple[list, list]:
    """The wrapper's own per-objective gradients of one batch, as ``step`` sees them."""
    opt = MultiObjectiveOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), store_dtype=store_dtype
    )
    params = opt._trainable()
    return params, opt._gradients(opt._losses(model.losses(*_data(0)))[0], params)


@pytest.mark.parametrize("store_dtype", [None, torch.bfloat16])
def test_own_store_is_described_as_validation_would(store_dtype: torch.dtype | None) -> None:
    """The wrapper skips ``as_grads``' per-tensor checks for its own store (autograd already
    made every gradient match its parameter): the description must be the same, including
    objectives that miss a head (None), a layer none reaches and a zero-size parameter."""
    from conflict_opt.optimizer import _own_grads

    params, grads = _store(_model(), store_dtype)
    assert any(x is None for g in grads for x in g)  # the premise: sparse slots
    own, checked = _own_grads(params, grads), primitives.as_grads(grads)
    assert own.k == checked.k and own.device == checked.device
    assert own.shapes == checked.shapes and own.dtypes == checked.dtypes
    assert all(
        a is b
        for slot, ref in zip(own.slots, checked.slots, strict=True)
        for a, b in zip(slot, ref, strict=True)
    )
    assert (store_dtype or torch.float32) in own.dtypes and None in own.dtypes


def test_own_store_on_several_devices_goes_to_validation() -> None:
    from conflict_opt.optimizer import _own_grads

    params = [nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2, device="meta"))]
    grads = [[torch.ones(2), torch.ones(2, device="meta")]]
    with pytest.raises(ValueError, match="one device"):
        _own_grads(params, grads)


def test_aggregate_checks_gradients_against_the_parameters() -> None:
    p = nn.Parameter(torch.zeros(2))
    with pytest.raises(
        ValueError, match=r"objective 0's gradient for params\[0\] has shape \(3,\), but the "
    ):
        conflict_opt.aggregate_([p], [[torch.ones(3)], [torch.ones(3)]])
    assert p.grad is None


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ([2.0, -1.0], "must be nonnegative"),
        ([float("nan"), 0.5], "must be finite"),
        ([3.0, 1.0], "must sum to 1"),
        ("ab", "must be a \\[K\\] vector of real numbers, got weights='ab'"),
        ([0.5, None], "real numbers, got weights=\\[0.5, None\\]"),
        ([0.5, 0.3, 0.2], "got 2 objectives' gradients for 3 weights"),
    ],
)
@pytest.mark.parametrize("method", ["cagrad_clip", "linear"])
def test_aggregate_checks_the_weights(weights, message: str, method: str) -> None:
    """As solve() and the wrapper check them: before, the fused path's hand-back ran the solve
    with validate=False, and [2, -1] stepped with coefficients [2.98, -1.96], status OPTIMAL."""
    p = nn.Parameter(torch.zeros(2))
    g = [[torch.tensor([1.0, 0.0])], [torch.tensor([-0.5, 1.0])]]
    with pytest.raises(ValueError, match=message):
        conflict_opt.aggregate_([p], g, weights, method=method)
    assert p.grad is None


def test_aggregate_refuses_a_parameter_twice_and_names_the_backend_option() -> None:
    p = nn.Parameter(torch.zeros(2))
    g = [[torch.ones(2), torch.ones(2)], [torch.ones(2), -torch.ones(2)]]
    # The Gram would count both slots while .grad kept the last slot's combination only.
    with pytest.raises(ValueError, match=r"params\[0\] and params\[1\] are the same tensor"):
        conflict_opt.aggregate_([p, p], g)
    with pytest.raises(ValueError, match=r"`primitive_backend` must be one of .* got "):
        conflict_opt.aggregate_([p], [[torch.ones(2)]], primitive_backend="foo")
    assert p.grad is None


# ------------------------------------------------------------------------------ closures
def _lbfgs(params, line_search: str | None) -> torch.optim.LBFGS:
    return torch.optim.LBFGS(params, lr=0.5, max_iter=4, line_search_fn=line_search)


@pytest.mark.parametrize("mode", ["store", "gram_first"])
@pytest.mark.parametrize("line_search", [None, "strong_wolfe"])
def test_closure_linear_reproduces_lbfgs_on_the_weighted_sum(
    mode: str, line_search: str | None
) -> None:
    """LBFGS evaluates the closure several times per step: each evaluation must start from
    zero gradients (gram_first sums into .grad) and return Σ w_k L_k."""
    w = [0.5, 0.3, 0.2]
    plain, wrapped = _model(), _model()
    opt_plain = _lbfgs(plain.parameters(), line_search)
    opt = MultiObjectiveOptimizer(
        _lbfgs(wrapped.parameters(), line_search), w, method="linear", mode=mode
    )
    calls = {"plain": 0, "wrapped": 0}
    for step in range(3):
        x, y = _data(step)

        def closure_plain(x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
            calls["plain"] += 1
            opt_plain.zero_grad()
            loss = sum(wi * li for wi, li in zip(w, plain.losses(x, y), strict=True))
            loss.backward()
            return loss

        def closure(x: torch.Tensor = x, y: torch.Tensor = y) -> list[torch.Tensor]:
            calls["wrapped"] += 1
            return wrapped.losses(x, y)

        loss_plain = opt_plain.step(closure_plain)
        loss = opt.step(closure=closure)
        assert loss.dtype == torch.float64 and loss.shape == () and not loss.requires_grad
        torch.testing.assert_close(loss.float(), loss_plain.detach())
        for a, b in zip(plain.parameters(), wrapped.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert calls["plain"] == calls["wrapped"] > 3  # re-evaluations happened, none added
    assert opt.steps == 3 and not bool(opt.last_info["skipped"])


def test_closure_is_evaluated_once_for_a_one_evaluation_optimizer() -> None:
    """The first evaluation runs before the inner step, which receives it without a second
    evaluation: the same parameters as step(losses), bitwise."""
    direct, wrapped = _model(), _model()
    opt_direct = MultiObjectiveOptimizer(OPTIMIZERS["adam"](direct.parameters()), [0.6, 0.3, 0.1])
    opt = MultiObjectiveOptimizer(OPTIMIZERS["adam"](wrapped.parameters()), [0.6, 0.3, 0.1])
    calls = 0
    w = [0.6, 0.3, 0.1]
    for step in range(3):
        x, y = _data(step)
        with torch.no_grad():
            expected = sum(wk * li for wk, li in zip(w, direct.losses(x, y), strict=True))
        opt_direct.zero_grad()
        opt_direct.step(direct.losses(x, y))

        def closure(x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
            nonlocal calls
            calls += 1
            return torch.stack(wrapped.losses(x, y))

        # Positional, as torch's optimizer.step(closure); Adam returns the closure's value.
        value = opt.step(closure)
        assert calls == step + 1
        torch.testing.assert_close(value, expected.double())
        for a, b in zip(direct.parameters(), wrapped.parameters(), strict=True):
            assert torch.equal(a, b)
        assert torch.equal(opt.last_info["coeffs"], opt_direct.last_info["coeffs"])


def test_lbfgs_without_closure_raises_with_nothing_written() -> None:
    model = _model()
    opt = MultiObjectiveOptimizer(_lbfgs(model.parameters(), None))
    before = _params(model)
    x, y = _data(0)
    with pytest.raises(ValueError, match=r"LBFGS\.step requires a closure"):
        opt.step(model.losses(x, y))
    for a, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(a, b)
        assert a.grad is None
    assert not opt.optimizer.state


def _closure_for(model: Net, bad: str = "") -> Callable[[], list[torch.Tensor]]:
    x, y = _data(0)

    def closure() -> list[torch.Tensor]:
        losses = model.losses(x, y)
        if bad == "nan":
            losses[1] = losses[1] * float("nan")
        return losses

    return closure


def test_closure_bad_use_raises_with_nothing_written() -> None:
    model = _model()
    before = _params(model)
    opt = MultiObjectiveOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    closure = _closure_for(model)
    with pytest.raises(ValueError, match="both `losses` and a `closure`"):
        opt.step(closure(), closure=closure)
    with pytest.raises(ValueError, match="a callable for `losses` and a `closure`"):
        opt.step(closure, closure=closure)
    with pytest.raises(ValueError, match="`closure` must be callable, got int"):
        opt.step(closure=3)
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        opt.step(closure=_closure_for(model, "nan"))
    for a, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(a, b)
        assert a.grad is None
    opt.backward(closure())
    with pytest.raises(RuntimeError, match="backward\\(losses\\) already ran"):
        opt.step(closure=closure)
    scaled = MultiObjectiveOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), scaler=torch.amp.GradScaler("cpu")
    )
    with pytest.raises(ValueError, match="GradScaler"):
        scaled.step(closure=closure)
    for a, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(a, b)
    assert opt.steps == scaled.steps == 0 and not opt.optimizer.state


def test_closure_with_nonfinite_gradients_skips_the_step() -> None:
    model = _model()
    opt = MultiObjectiveOptimizer(_lbfgs(model.parameters(), None))
    before = _params(model)
    model.trunk.weight.register_hook(lambda g: g * float("inf"))
    value = opt.step(closure=_closure_for(model))
    assert bool(opt.last_info["skipped"]) and opt.steps == 1
    assert torch.isfinite(value)  # the losses were finite; their gradients were not
    for a, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(a, b)
    assert not opt.optimizer.state


def test_closure_nan_in_a_re_evaluation_says_the_parameters_moved() -> None:
    model = _model()
    opt = MultiObjectiveOptimizer(_lbfgs(model.parameters(), None))
    good, bad = _closure_for(model), _closure_for(model, "nan")
    calls = 0

    def closure() -> list[torch.Tensor]:
        nonlocal calls
        calls += 1
        return good() if calls == 1 else bad()

    before = _params(model)
    with pytest.raises(FloatingPointError, match=r"re-evaluation inside LBFGS\.step"):
        opt.step(closure=closure)
    assert calls == 2
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), before, strict=True))


def test_add_param_group_takes_part_from_the_next_backward() -> None:
    """A layer added mid-training (as in progressive unfreezing) is trained from the next step
    on, with its group's own options, exactly as the inner optimizer given it directly."""
    plain, wrapped = _model(), _model()
    opt_plain = torch.optim.SGD(plain.trunk.parameters(), lr=0.1)
    opt = MultiObjectiveOptimizer(
        torch.optim.SGD(wrapped.trunk.parameters(), lr=0.1), [1.0], method="linear"
    )
    for step in range(3):
        x, y = _data(step)
        if step == 1:
            opt_plain.add_param_group({"params": plain.heads[0].parameters(), "lr": 0.05})
            opt.add_param_group({"params": wrapped.heads[0].parameters(), "lr": 0.05})
            assert opt.param_groups[1]["lr"] == 0.05 and opt.defaults["lr"] == 0.1
        opt_plain.zero_grad()
        plain.losses(x, y)[0].backward()
        opt_plain.step()
        opt.zero_grad()
        opt.step(wrapped.losses(x, y)[:1])
        for a, b in zip(plain.parameters(), wrapped.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    x, y = _data(3)
    opt.backward(wrapped.losses(x, y)[:1])
    with pytest.raises(RuntimeError, match="add_param_group between backward and step"):
        opt.add_param_group({"params": wrapped.heads[1].parameters()})
    assert len(opt.param_groups) == 2


def _embedding_losses(emb: nn.Embedding, step: int) -> list[torch.Tensor]:
    idx = torch.tensor([1, 2, 3, 2, 7])[: 3 + step % 3]  # index 2 repeated from step 1 on
    e = emb(idx)
    return [e.pow(2).sum(), (e[:, :2] - 1).pow(2).sum(), (e[:, 1:] + 0.5 * e[:, :-1]).sum()]


@pytest.mark.parametrize("accumulation", ["per_step", "per_micro_batch"])
def test_sparse_gradients_in_store_mode_raise_with_nothing_written(accumulation: str) -> None:
    torch.manual_seed(0)
    emb, dense = nn.Embedding(10, 4, sparse=True), nn.Linear(4, 1)
    opt = MultiObjectiveOptimizer(
        torch.optim.SGD([*dense.parameters(), *emb.parameters()], lr=0.1),
        accumulation=accumulation,
    )
    before = [p.detach().clone() for p in (*dense.parameters(), *emb.parameters())]
    losses = _embedding_losses(emb, 0)
    losses[0] = losses[0] + dense(torch.ones(4)).sum()
    with pytest.raises(ValueError, match=r"parameter 2 \(shape \(10, 4\)\) got a torch.sparse_coo"):
        opt.step(losses)
    for p, b in zip((*dense.parameters(), *emb.parameters()), before, strict=True):
        assert torch.equal(p, b) and p.grad is None
    assert not opt.optimizer.state


def test_gram_first_takes_sparse_gradients_as_their_dense_form() -> None:
    """Gram-first needs only gradient norms, which the coalesced values of a sparse gradient
    give (repeated indices summed first): the same Gram and training as the dense module."""
    runs = {}
    for sparse in (True, False):
        torch.manual_seed(0)
        emb = nn.Embedding(10, 4, sparse=sparse)
        opt = MultiObjectiveOptimizer(
            torch.optim.SGD(emb.parameters(), lr=0.05), [0.5, 0.3, 0.2], mode="gram_first"
        )
        grams = []
        for step in range(4):
            opt.zero_grad()
            opt.step(_embedding_losses(emb, step))
            grams.append(opt.last_info["gram"])
        assert emb.weight.grad.layout == (torch.sparse_coo if sparse else torch.strided)
        runs[sparse] = (emb.weight.detach().clone(), grams)
    torch.testing.assert_close(runs[True][0], runs[False][0])
    for a, b in zip(runs[True][1], runs[False][1], strict=True):
        # float32 gradients summed in another order (coalescing against index_put_)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # SparseAdam takes sparse gradients only: it runs under the wrapper in this mode.
    emb = nn.Embedding(10, 4, sparse=True)
    before = emb.weight.detach().clone()
    opt = MultiObjectiveOptimizer(torch.optim.SparseAdam(emb.parameters()), mode="gram_first")
    opt.step(_embedding_losses(emb, 1))
    assert int(opt.last_info["status"]) == conflict_opt.Status.OPTIMAL
    changed = (emb.weight != before).any(dim=1)
    assert changed.tolist() == [i in (1, 2, 3) for i in range(10)]


def test_weights_can_be_reassigned_or_changed_in_place_and_are_checked() -> None:
    """A weight schedule: new weights (assigned, or written into the tensor passed in) take
    effect at the next step, and weights off the simplex raise before anything is written."""
    model = _model()
    w = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)
    opt = MultiObjectiveOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), w)
    assert opt.weights.data_ptr() == w.data_ptr()  # kept, not copied

    def coeffs_match(expected: list[float]) -> None:
        info = opt.last_info
        ref = conflict_opt.solve(info["gram"], torch.tensor(expected, dtype=torch.float64))
        torch.testing.assert_close(info["coeffs"], ref.coeffs)

    opt.step(model.losses(*_data(0)))
    coeffs_match([0.6, 0.3, 0.1])
    w.copy_(
        torch.tensor([0.2, 0.2, 0.6], dtype=torch.float64)
    )  # in place: the cached solve options must not stay
    opt.step(model.losses(*_data(1)))
    coeffs_match([0.2, 0.2, 0.6])
    opt.weights = [0.1, 0.1, 0.8]
    assert opt.weights.dtype == torch.float64 and opt.weights.tolist() == [0.1, 0.1, 0.8]
    opt.step(model.losses(*_data(2)))
    coeffs_match([0.1, 0.1, 0.8])

    with pytest.raises(ValueError, match="sum to 1"):
        opt.weights = [0.5, 0.5, 0.5]
    assert opt.weights.tolist() == [0.1, 0.1, 0.8]  # unchanged
    opt.weights = w
    w[2] = 0.9  # off the simplex, in place
    before = _params(model)
    opt.zero_grad()
    with pytest.raises(ValueError, match=r"changed in place to \[0.2, 0.2, 0.9\]: .*sum to 1"):
        opt.step(model.losses(*_data(3)))
    for a, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(a, b) and a.grad is None
    w[2] = 0.6
    opt.step(model.losses(*_data(3)))
    coeffs_match([0.2, 0.2, 0.6])
    opt.weights = None  # uniform over however many losses come
    opt.step(model.losses(*_data(4))[:2])
    coeffs_match([0.5, 0.5])


def _clip_run(scaler: torch.amp.GradScaler | None, max_norm: float) -> tuple[Net, list]:
    """Three steps of backward, aggregate, (unscale,) clip, step; the .grad norms before the
    clip, as clip_grad_norm_ reports them."""
    model = _model()
    opt = MultiObjectiveOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), [0.5, 0.3, 0.2], scaler=scaler
    )
    norms = []
    for step in range(3):
        opt.zero_grad()
        opt.backward(model.losses(*_data(step)))
        opt.aggregate()
        assert "coeffs" in opt.last_info and "skipped" not in opt.last_info
        if scaler is not None:
            scaler.unscale_(opt.optimizer)
        norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
        opt.step()
        if scaler is not None:
            scaler.update()
    return model, norms


def test_aggregate_writes_grad_for_clipping_before_the_step() -> None:
    """aggregate() writes what step() would, so that clip_grad_norm_ acts on it; step() then
    runs the inner step on the clipped .grad. Through a GradScaler (unscale_ first, as in
    torch) the result is the same."""
    direct = _model()
    opt_direct = MultiObjectiveOptimizer(
        torch.optim.SGD(direct.parameters(), lr=0.1), [0.5, 0.3, 0.2]
    )
    model = _model()
    opt = MultiObjectiveOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), [0.5, 0.3, 0.2])
    opt.backward(model.losses(*_data(0)))
    opt.aggregate()
    opt_direct.step(direct.losses(*_data(0)))
    before = _params(model)
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    direct_grads = [p.grad for p in direct.parameters() if p.grad is not None]
    assert len(grads) == len(direct_grads) > 0
    assert all(torch.equal(a, b) for a, b in zip(grads, direct_grads, strict=True))
    opt.step()
    assert not bool(opt.last_info["skipped"]) and opt.steps == 1
    for a, b in zip(model.parameters(), direct.parameters(), strict=True):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), before, strict=True))

    plain, norms = _clip_run(None, max_norm=0.05)
    assert all(float(n) > 0.05 for n in norms)  # the clip acted at every step
    unclipped, _ = _clip_run(None, max_norm=1e9)
    assert any(
        not torch.allclose(a, b)
        for a, b in zip(plain.parameters(), unclipped.parameters(), strict=True)
    )
    scaled, scaled_norms = _clip_run(torch.amp.GradScaler("cpu", init_scale=2.0**8), 0.05)
    torch.testing.assert_close(torch.stack(scaled_norms), torch.stack(norms))
    for a, b in zip(plain.parameters(), scaled.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_aggregate_misuse_raises_and_nonfinite_still_skips() -> None:
    model = _model()
    opt = MultiObjectiveOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(RuntimeError, match=r"backward\(losses\) before aggregate"):
        opt.aggregate()
    opt.backward(model.losses(*_data(0)))
    opt.aggregate()
    with pytest.raises(RuntimeError, match=r"aggregate\(\) already ran"):
        opt.aggregate()
    with pytest.raises(RuntimeError, match=r"aggregate\(\) already wrote \.grad"):
        opt.backward(model.losses(*_data(1)))
    with pytest.raises(RuntimeError, match="already ran for this step"):
        opt.step(closure=lambda: model.losses(*_data(1)))
    with pytest.raises(RuntimeError, match="add_param_group between backward and step"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(1))]})
    opt.zero_grad()  # drops the aggregated step: backward works again
    before = _params(model)
    model.trunk.weight.register_hook(lambda g: g * float("inf"))
    opt.backward(model.losses(*_data(1)))
    opt.aggregate()
    opt.step()
    assert bool(opt.last_info["skipped"])
    for a, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(a, b)
    with pytest.raises(RuntimeError, match="before step"):
        opt.step()  # the aggregated step was consumed


@pytest.mark.parametrize("mode", ["store", "gram_first"])
def test_backward_retain_graph_keeps_the_graph_for_another_backward(mode: str) -> None:
    model = _model()
    opt = MultiObjectiveOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), mode=mode)
    losses = model.losses(*_data(0))
    opt.backward(losses, retain_graph=True)
    extra = torch.autograd.grad(losses[0], model.trunk.weight)  # the graph is still there
    assert extra[0].shape == model.trunk.weight.shape
    opt.step()
    losses = model.losses(*_data(1))
    opt.zero_grad()
    opt.backward(losses)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        torch.autograd.grad(losses[0], model.trunk.weight)
    with pytest.raises(ValueError, match="retain_graph=1"):
        opt.backward(model.losses(*_data(2)), retain_graph=1)


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        ("method", "pcgrad", "method='pcgrad'"),
        ("c", 5.0, "c=5.0"),
        ("c", True, "c=True"),
        ("backend", "fast", "backend='fast'"),
        ("primitive_backend", "cuda", "primitive_backend='cuda'"),
        ("mode", "gramfirst", "mode='gramfirst'"),
        ("store_dtype", torch.int8, "torch.int8"),
        ("accumulation", "x", "accumulation='x'"),
        ("check_finite", "yes", "check_finite='yes'"),
    ],
)
def test_assigned_options_are_checked_and_a_bad_one_changes_nothing(name, value, match) -> None:
    """Before, `opt.c = 5.0` solved with c = 5 and `opt.mode = "gramfirst"` made every step
    write nothing, silently."""
    model = _model()
    opt = MultiObjectiveOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), [0.6, 0.3, 0.1])
    options = {n: getattr(opt, n) for n in opt.state_dict()["wrapper"] if n != "weights"}
    with pytest.raises(ValueError, match=match):
        setattr(opt, name, value)
    assert {n: getattr(opt, n) for n in options} == options


def _steps(opt: MultiObjectiveOptimizer, model: Net, steps: range) -> None:
    for step in steps:
        opt.zero_grad()
        opt.step(model.losses(*_data(step)))


def test_options_changed_between_steps_act_as_if_built_with_them() -> None:
    """A c schedule and a switch to Gram-first mode: after the change, training goes on as a
    wrapper built with the new options would (same inner state, bit for bit)."""
    changed, fresh = _model(), _model()
    opt = MultiObjectiveOptimizer(torch.optim.Adam(changed.parameters(), lr=0.01), [0.6, 0.3, 0.1])
    ref = MultiObjectiveOptimizer(torch.optim.Adam(fresh.parameters(), lr=0.01), [0.6, 0.3, 0.1])
    _steps(opt, changed, range(2))
    _steps(ref, fresh, range(2))
    opt.c = 0.1
    opt.method = "cagrad"
    assert isinstance(opt.c, float) and opt.c == 0.1
    ref2 = MultiObjectiveOptimizer(ref.optimizer, [0.6, 0.3, 0.1], c=0.1, method="cagrad")
    _steps(opt, changed, range(2, 4))
    _steps(ref2, fresh, range(2, 4))
    for a, b in zip(changed.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b)
    opt.accumulation = "per_micro_batch"
    opt.mode = "gram_first"
    ref3 = MultiObjectiveOptimizer(
        ref.optimizer, [0.6, 0.3, 0.1], c=0.1, method="cagrad", mode="gram_first"
    )
    _steps(opt, changed, range(4, 6))
    _steps(ref3, fresh, range(4, 6))
    for a, b in zip(changed.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b)
    opt.mode = "store"  # accumulation was set explicitly: it stays
    assert opt.accumulation == "per_micro_batch"
    opt.accumulation = None  # follows the mode again
    assert opt.accumulation == "per_step"


def test_accumulation_left_at_none_follows_the_mode_also_across_state_dict() -> None:
    model = _model()
    opt = MultiObjectiveOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    assert opt.accumulation == "per_step"
    opt.mode = "gram_first"
    assert opt.accumulation == "per_micro_batch"
    opt.mode = "store"
    assert opt.accumulation == "per_step"
    assert opt.state_dict()["wrapper"]["accumulation"] is None
    explicit = MultiObjectiveOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), accumulation="per_step"
    )
    assert explicit.state_dict()["wrapper"]["accumulation"] == "per_step"
    with pytest.raises(ValueError, match="per_micro_batch"):
        explicit.mode = "gram_first"  # an explicit per_step cannot go with gram_first
    explicit.load_state_dict(opt.state_dict())  # and loading makes it follow the mode
    explicit.mode = "gram_first"
    assert explicit.accumulation == "per_micro_batch"


@pytest.mark.parametrize(
    ("name", "value"),
    [("mode", "gram_first"), ("store_dtype", torch.bfloat16), ("accumulation", "per_micro_batch")],
)
def test_gathering_options_cannot_change_between_backward_and_step(name, value) -> None:
    model, fresh = _model(), _model()
    opt = MultiObjectiveOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), [0.6, 0.3, 0.1])
    ref = MultiObjectiveOptimizer(
        torch.optim.SGD(fresh.parameters(), lr=0.1), [0.6, 0.3, 0.1], c=0.2
    )
    opt.backward(model.losses(*_data(0)))
    if name == "mode":
        with pytest.raises(RuntimeError, match="between backward and step"):
            opt.accumulation = "per_micro_batch"
    with pytest.raises(RuntimeError, match=f"`{name}` decides what backward gathers"):
        setattr(opt, name, value)
    state = copy.deepcopy(opt.state_dict())
    state["wrapper"][name] = value
    if name == "mode":
        state["wrapper"]["accumulation"] = "per_micro_batch"
    with pytest.raises(RuntimeError, match="while a step is in progress"):
        opt.load_state_dict(state)
    opt.c = 0.2  # the solve's options may change: the pending solve uses them
    opt.step()  # the gathered step is intact
    ref.step(fresh.losses(*_data(0)))
    for a, b in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b)
    setattr(opt, name, value)  # and between steps it is allowed
    assert getattr(opt, name) == value


# ------------------------------------------------------------------------------ review fixes
def test_numpy_weights_are_copied_and_a_change_in_place_before_step_is_checked() -> None:
    """A numpy array is copied: changing it later changes nothing, in either mode (before, store
    mode kept solving with the cached old values while gram_first read the new ones). Weights
    changed in place between backward and step are checked before the step computes."""
    arr = np.array([0.6, 0.3, 0.1])
    coeffs = {}
    for mode in ("store", "gram_first"):
        model = _model()
        opt = MultiObjectiveOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), arr, mode=mode)
        arr[:] = [0.1, 0.1, 0.8]
        opt.step(model.losses(*_data(0)))
        arr[:] = [0.6, 0.3, 0.1]
        assert opt.weights.tolist() == [0.6, 0.3, 0.1]
        info = opt.last_info
        ref = conflict_opt.solve(info["gram"], [0.6, 0.3, 0.1])
        torch.testing.assert_close(info["coeffs"], ref.coeffs)
        coeffs[mode] = info["coeffs"]
    torch.testing.assert_close(coeffs["store"], coeffs["gram_first"], rtol=1e-5, atol=1e-7)

    model = _model()
    w = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)
    opt = MultiObjectiveOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), w)
    before = _params(model)
    opt.zero_grad()
    opt.backward(model.losses(*_data(0)))
    w.copy_(torch.tensor([2.0, -1.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"changed in place to \[2.0, -1.0, 0.0\]"):
        opt.step()
    for a, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(a, b) and a.grad is None
    w.copy_(torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64))
    opt.step()  # the pending step, with valid weights again
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), before, strict=True))


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"accumulation": "per_micro_batch"},
        {"mode": "gram_first"},
        {"store_dtype": torch.float64},
    ],
)
def test_an_existing_grad_is_added_to_in_every_mode(kw: dict) -> None:
    """A gradient already in .grad (another backward before the wrapper's) is added to, as a
    torch backward adds; before, the default mode overwrote it ([1, -1]) while the others added
    to it."""
    p = nn.Parameter(torch.tensor([1.0, 2.0]))
    opt = MultiObjectiveOptimizer(torch.optim.SGD([p], lr=0.1), method="linear", **kw)
    opt.zero_grad()
    (100 * p.sum()).backward()
    opt.backward([p[0] ** 2, (p[1] - 3) ** 2])
    opt.aggregate()
    assert p.grad.tolist() == pytest.approx([101.0, 99.0])
    # zero_grad(set_to_none=False) leaves zeros, which the step adds to: the same as None.
    opt.step()
    opt.zero_grad(set_to_none=False)
    opt.backward([p[0] ** 2, (p[1] - 3) ** 2])
    opt.aggregate()
    expected = [0.5 * 2 * p[0].item(), 0.5 * 2 * (p[1].item() - 3)]
    assert p.grad.tolist() == pytest.approx(expected)


@pytest.mark.parametrize("method", ["cagrad_clip", "cagrad", "mgda"])
def test_clipping_active_only_where_the_clip_changed_the_dual(method: str) -> None:
    """Gradients whose dual puts all its weight on objective 1 (p_1 = 1 > w_1 = 0.3): only
    CAGrad-Clip clips; the others' clipped dual is their dual, and the flag must say so."""
    p = nn.Parameter(torch.zeros(2))
    g = [torch.tensor([1.0, 0.0]), torch.tensor([-0.9, 0.2]), torch.tensor([0.1, 1.0])]
    opt = MultiObjectiveOptimizer(torch.optim.SGD([p], lr=0.1), [0.2, 0.3, 0.5], method=method)
    opt.backward([(p * gi).sum() for gi in g])
    opt.aggregate()
    info = opt.last_info
    clipped = bool((info["clipped"] < info["dual"]).any())
    assert bool(info["clipping_active"]) == clipped == (method == "cagrad_clip")


def test_a_failed_backward_does_not_count_towards_the_step() -> None:
    """A backward that raised in its passes kept nothing; the next one, with another number
    of losses, is not refused as disagreeing with it."""
    model = _model()
    opt = MultiObjectiveOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    losses = model.losses(*_data(0))[:2]
    losses[0].backward()  # frees the graph: the wrapper's first pass fails
    with pytest.raises(RuntimeError):
        opt.backward(losses)
    opt.backward(model.losses(*_data(1)))  # three losses
    opt.step()
    assert opt.last_info["coeffs"].shape == (3,)


def test_gram_first_names_a_complex_parameter() -> None:
    p = nn.Parameter(torch.ones(2, dtype=torch.complex64))
    opt = MultiObjectiveOptimizer(torch.optim.SGD([p], lr=0.1), mode="gram_first")
    with pytest.raises(ValueError, match=r"parameter 0 \(shape \(2,\)\) has dtype torch.complex64"):
        opt.backward([p.abs().sum(), p.real.sum()])
    assert p.grad is None


# ------------------------------------ skipped steps, refusals, diagnostics against the gradients
def test_a_skipped_step_writes_nothing_to_the_parameters_or_the_inner_state() -> None:
    """A non-finite Gram skips the step as GradScaler does: the parameters and the inner
    optimizer's state (AdamW's step counts and moments; its weight decay would move the
    parameters even on zero gradients) stay as they were, so the next step equals that of a
    run that never saw the bad batch. The skipped step is reported and counted."""
    model, ref = _model(), _model()
    opt = MultiObjectiveOptimizer(
        torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1), [0.6, 0.3, 0.1]
    )
    opt_ref = MultiObjectiveOptimizer(
        torch.optim.AdamW(ref.parameters(), lr=0.01, weight_decay=0.1), [0.6, 0.3, 0.1]
    )
    _steps(opt, model, range(1))
    _steps(opt_ref, ref, range(1))
    before, inner_before = _params(model), copy.deepcopy(opt.optimizer.state_dict())
    hook = model.trunk.weight.register_hook(lambda g: g * float("inf"))
    opt.zero_grad()
    assert opt.step(model.losses(*_data(1))) is None
    hook.remove()
    assert bool(opt.last_info["skipped"]) and opt.steps == 2
    for a, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(a, b)
    after = opt.optimizer.state_dict()
    assert after["state"].keys() == inner_before["state"].keys()
    for key, state in inner_before["state"].items():
        for name, value in state.items():
            assert torch.equal(after["state"][key][name], value), (key, name)
    _steps(opt, model, range(2, 3))
    _steps(opt_ref, ref, range(2, 3))
    assert not bool(opt.last_info["skipped"])
    for a, b in zip(model.parameters(), ref.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kw", [{"accumulation": "per_micro_batch"}, {"mode": "gram_first"}])
def test_a_nonfinite_gram_in_an_earlier_micro_batch_still_skips_the_step(kw: dict) -> None:
    """Solving per micro-batch, the step is skipped if any micro-batch's Gram was non-finite,
    not only the last one's: the first one's inf/NaN is already summed into .grad."""
    model = _model()
    opt = MultiObjectiveOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), **kw)
    before = _params(model)
    opt.zero_grad()
    hook = model.trunk.weight.register_hook(lambda g: g * float("inf"))
    opt.backward(model.losses(*_data(0)))
    hook.remove()
    opt.backward(model.losses(*_data(1)))  # finite
    assert opt.step() is None
    assert bool(opt.last_info["skipped"])
    for a, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "kw",
    [{}, {"accumulation": "per_micro_batch"}, {"mode": "gram_first"}],
    ids=["per_step", "per_micro_batch", "gram_first"],
)
@pytest.mark.parametrize("micro_batches", [1, 2])
def test_a_layer_frozen_between_backward_and_step_still_takes_that_step(
    kw: dict, micro_batches: int
) -> None:
    """Which parameters take part is decided at backward (docs/optimizer.md): a layer frozen
    after the passes and before step is moved by that step, as its .grad would be in plain
    torch, in every mode and whether the step gathered one micro-batch or two. So the step
    equals that of a run in which nothing was frozen."""
    frozen, free = _model(), _model()
    w = [0.6, 0.3, 0.1]
    opt_frozen = MultiObjectiveOptimizer(torch.optim.SGD(frozen.parameters(), lr=0.1), w, **kw)
    opt_free = MultiObjectiveOptimizer(torch.optim.SGD(free.parameters(), lr=0.1), w, **kw)
    before = frozen.heads[1].weight.detach().clone()
    for model, opt in ((frozen, opt_frozen), (free, opt_free)):
        for micro in range(micro_batches):
            opt.backward(model.losses(*_data(micro)))
    frozen.heads[1].weight.requires_grad_(False)
    opt_frozen.step()
    opt_free.step()
    assert not torch.equal(frozen.heads[1].weight, before)
    for a, b in zip(frozen.parameters(), free.parameters(), strict=True):
        assert torch.equal(a, b)
        assert (a.grad is None and b.grad is None) or torch.equal(a.grad, b.grad)


@pytest.mark.parametrize("mode", ["store", "gram_first"])
def test_backward_refuses_a_wrong_number_of_losses_before_any_pass(mode: str) -> None:
    """backward itself raises for K losses against another number of weights, before any
    backward pass (the graph is still whole) and with nothing gathered for the step."""
    model = _model()
    opt = MultiObjectiveOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), [0.6, 0.3, 0.1], mode=mode
    )
    losses = model.losses(*_data(0))[:2]
    with pytest.raises(ValueError, match="got 2 losses for 3 weights"):
        opt.backward(losses)
    assert all(p.grad is None for p in model.parameters())
    torch.autograd.grad(losses[0], model.trunk.weight)  # no pass freed the graph
    with pytest.raises(RuntimeError, match="before step"):
        opt.step()


def _flat(params: list[torch.Tensor], grads) -> torch.Tensor:
    """One float64 vector of per-parameter gradients, zeros where one is None."""
    return torch.cat(
        [
            (torch.zeros_like(p) if x is None else x).flatten().double()
            for p, x in zip(params, grads, strict=True)
        ]
    )


def test_last_info_matches_the_diagnostics_computed_from_the_gradients() -> None:
    """last_info against the gradients themselves, with non-uniform weights: ⟨g_i, d⟩,
    cos(g_i, d), ‖d‖ / ‖Σ w_k g_k‖, cos(g_i, g_j) and the Gram, for d the .grad written."""
    w = [0.6, 0.3, 0.1]
    model = _model()
    opt = MultiObjectiveOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), w)
    params = list(model.parameters())
    losses = model.losses(*_data(0))
    g = torch.stack(
        [
            _flat(params, torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True))
            for loss in losses
        ]
    )
    opt.zero_grad()
    opt.backward(losses)
    opt.aggregate()
    d = _flat(params, [p.grad for p in params])
    info = opt.last_info
    norms = g.norm(dim=1)
    # d is the float32 .grad; the Gram is of the float32 gradients, summed in float64.
    torch.testing.assert_close(info["gram"], g @ g.T)
    torch.testing.assert_close(info["directional"], g @ d, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(info["cosines"], g @ d / (norms * d.norm()), rtol=1e-5, atol=1e-9)
    g0 = torch.tensor(w, dtype=torch.float64) @ g
    torch.testing.assert_close(info["relative_norm"], d.norm() / g0.norm(), rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(info["pairwise_cosines"], g @ g.T / torch.outer(norms, norms))


def test_a_c_schedule_alone_changes_the_step() -> None:
    """K = 1: CAGrad's step is (1 + c) g for the c of that step, whatever c the earlier steps
    used (a schedule that changes only c, with nothing else to tell the steps apart)."""
    model = _model(1)
    opt = MultiObjectiveOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), c=0.4)
    for step, c in enumerate([0.4, 0.1, 0.0, 0.25]):
        opt.c = c
        x, y = _data(step)
        (grad,) = torch.autograd.grad(model.losses(x, y)[0], model.trunk.weight)
        before = model.trunk.weight.detach().clone()
        opt.zero_grad()
        opt.step(model.losses(x, y))
        torch.testing.assert_close(model.trunk.weight, before - 0.1 * (1 + c) * grad)


def test_a_parameter_listed_twice_in_the_inner_optimizer_counts_once() -> None:
    """torch allows a parameter twice in a group (with a warning): its gradients must enter
    the Gram and .grad once, as aggregate_ over the distinct parameters has them."""
    torch.manual_seed(0)
    p, q = nn.Parameter(torch.randn(3)), nn.Parameter(torch.randn(4))

    def losses() -> list[torch.Tensor]:
        return [(p**2).sum() + q.sum(), p[0] * q[1] + (q**2).mean() - p.sum()]

    with pytest.warns(UserWarning, match="duplicate parameters"):
        sgd = torch.optim.SGD([p, p, q], lr=0.1)
    opt = MultiObjectiveOptimizer(sgd, [0.7, 0.3])
    opt.backward(losses())
    opt.aggregate()
    got = [p.grad.clone(), q.grad.clone()]
    grads = [list(torch.autograd.grad(loss, [p, q])) for loss in losses()]
    p.grad = q.grad = None
    agg = conflict_opt.aggregate_([p, q], grads, [0.7, 0.3])
    torch.testing.assert_close(opt.last_info["gram"], agg.gram)
    torch.testing.assert_close(got[0], p.grad)
    torch.testing.assert_close(got[1], q.grad)
