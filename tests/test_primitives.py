"""``gram`` and ``combine_``: every backend against the float64 reference, over a case table
that hits every branch (K = 1…8 and beyond a Gram tile; P = 0, 1, 63, 1,000, 65,537; 1, 7 and
200 tensors; non-contiguous tensors; None gradients; the [K, P] form; four dtypes; blocks and
chunks split small enough to exercise multi-block code), plus NaN/Inf propagation, outputs
poisoned with NaN, aliasing, device-free input validation and backend selection.

The triton kernels run here in triton's interpreter (``TRITON_INTERPRET=1``, set by conftest
when there is no GPU).

Tolerances follow the classical dot-product error bound (Higham, *Accuracy and Stability of
Numerical Algorithms*, §3.1): |fl(xᵀy) − xᵀy| ≤ γ_n Σ|x_i y_i| with γ_n ≈ n·u. The tests use
u_c·(4·sqrt(n) + 8)·Σ|x_i y_i|, u_c the unit round-off of the compute precision: a realistic
(not worst-case) bound that a genuine bug (a dropped block, a wrong dtype, a lost term) exceeds
by orders of magnitude.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import conflict_opt
from conflict_opt import primitives

try:
    from conflict_opt.kernels import multi_tensor
except ImportError:  # the [triton] extra is not installed
    multi_tensor = None

# "torch-ops": the torch backend with its native CPU kernels disabled, so that its torch-ops
# path (the one other devices and 16-bit dtypes take) is tested on CPU for every case too.
BACKENDS = ["reference", "torch", "torch-ops", "triton"]
_UNIT = {
    torch.float16: 2.0**-11,
    torch.bfloat16: 2.0**-8,
    torch.float32: 2.0**-24,
    torch.float64: 2.0**-53,
}


@pytest.fixture(autouse=True)
def _torch_ops(request, monkeypatch) -> None:
    """Disable the native kernels for the "torch-ops" variant of a test."""
    params = getattr(request.node, "callspec", None)
    if params is not None and params.params.get("backend") == "torch-ops":
        monkeypatch.setenv(primitives.NATIVE_DISABLE_ENV, "1")


def _b(backend: str) -> str:
    """The backend argument of a (possibly "torch-ops") test variant."""
    return "torch" if backend == "torch-ops" else backend


def _need(backend: str) -> None:
    if backend != "triton":
        return
    if multi_tensor is None:
        pytest.skip("needs the [triton] extra")
    reason = primitives.triton_unavailable(torch.device("cpu"))
    if reason is not None:
        pytest.skip(f"triton backend unavailable on CPU: {reason}")


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    k: int
    shapes: tuple[tuple[int, ...], ...]
    dtype: torch.dtype = torch.float32
    none_every: int = 0  # objective k misses tensor t when (k + t) % none_every == 0
    noncontiguous: bool = False
    packed: bool = False  # one [K, P] tensor


def _transformerish(n: int) -> tuple[tuple[int, ...], ...]:
    base = [(16, 16), (16,), (64, 16), (64,), (16, 64), (16,), (0,), (1,), (3, 5, 7)]
    return tuple(base[i % len(base)] for i in range(n))


CASES = [
    *[Case(f"K{k}-7tensors", k, _transformerish(7), none_every=3) for k in range(1, 9)],
    Case("K12-two-tiles", 12, _transformerish(7), none_every=5),
    Case("K17-three-tiles", 17, ((40,), (3, 3)), none_every=4),
    *[Case(f"P{p}-1tensor", 3, ((p,),)) for p in (0, 1, 63, 1000, 65537)],
    *[Case(f"P{p}-packed", 3, ((p,),), packed=True) for p in (0, 1, 63, 1000)],
    Case("packed-noncontiguous", 4, ((1000,),), packed=True, noncontiguous=True),
    Case("200tensors", 4, _transformerish(200), none_every=7),
    Case("noncontiguous", 3, ((20, 30), (9, 4), (64,)), noncontiguous=True, none_every=4),
    *[
        Case(f"dtype-{str(dt).split('.')[-1]}", 3, _transformerish(7), dtype=dt, none_every=4)
        for dt in (torch.float16, torch.bfloat16, torch.float64)
    ],
    Case("all-none-tensor", 2, ((5,), (6,)), none_every=1),
]


def _make(case: Case, *, seed: int = 0) -> list:
    gen = torch.Generator().manual_seed(seed)
    if case.packed:
        p = case.shapes[0][0]
        if case.noncontiguous:
            j = torch.randn(2 * p, case.k, generator=gen).to(case.dtype).T[:, ::2]
            assert not j.is_contiguous()
        else:
            j = torch.randn(case.k, p, generator=gen).to(case.dtype)
        return j
    grads = []
    for k in range(case.k):
        row = []
        for t, shape in enumerate(case.shapes):
            if case.none_every and (k + t) % case.none_every == 0:
                row.append(None)
                continue
            x = torch.randn(shape, generator=gen) * (1.0 + t % 3)
            if case.noncontiguous and len(shape) == 2:
                x = torch.randn(shape[::-1], generator=gen).T
                assert not x.is_contiguous() or min(shape) <= 1
            elif case.noncontiguous and len(shape) == 1:
                x = torch.randn(2 * shape[0], generator=gen)[::2]
            row.append(x.to(case.dtype))
        grads.append(row)
    return grads


def _flat64(grads, case: Case) -> torch.Tensor:
    """The K×P float64 matrix of ``grads``, computed independently of the library."""
    if isinstance(grads, torch.Tensor):
        return grads.to(torch.float64)
    numels = [math.prod(shape) for shape in case.shapes]
    return torch.stack(
        [
            torch.cat(
                [
                    torch.zeros(n, dtype=torch.float64)
                    if grads[i][t] is None
                    else grads[i][t].reshape(-1).double()
                    for t, n in enumerate(numels)
                ]
            )
            for i in range(case.k)
        ]
    )


def _compute_unit(dtype: torch.dtype, accumulate: torch.dtype) -> float:
    if dtype == torch.float64 and accumulate == torch.float64:
        return _UNIT[torch.float64]
    return _UNIT[torch.float32]


def _assert_gram_close(got, j: torch.Tensor, dtype, accumulate) -> None:
    want = j @ j.T
    assert got.shape == want.shape
    assert got.dtype == accumulate
    assert torch.equal(got, got.T), "the Gram must be exactly symmetric"
    n = max(1, j.shape[1])
    bound = j.abs() @ j.abs().T
    unit = _compute_unit(dtype, accumulate)
    tol = unit * (4 * math.sqrt(n) + 8) * bound + _UNIT[accumulate] * want.abs()
    err = (got.double() - want).abs()
    assert bool((err <= tol).all()), f"max err {float(err.max()):.3g}, tol {float(tol.max()):.3g}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_gram_matches_reference(case: Case, backend: str) -> None:
    _need(backend)
    grads = _make(case)
    j = _flat64(grads, case)
    for accumulate in (torch.float64, torch.float32):
        got = conflict_opt.gram(grads, backend=_b(backend), accumulate_dtype=accumulate)
        _assert_gram_close(got, j, case.dtype, accumulate)


def _outs(case: Case, grads, dtype: torch.dtype, fill: float = float("nan")):
    if case.packed:
        return torch.full((case.shapes[0][0],), fill, dtype=dtype)
    outs = []
    for shape in case.shapes:
        o = torch.full(shape, fill, dtype=dtype)
        if case.noncontiguous and len(shape) == 2:
            o = torch.full(shape[::-1], fill, dtype=dtype).T
        outs.append(o)
    return outs


def _assert_combined(case, outs, j, a, start, out_dtype) -> None:
    """Check ``outs`` = start + Σ a_k g_k within the rounding of the output and the compute."""
    want = a.double() @ j
    size = (a.double().abs()[:, None] * j.abs()).sum(0)
    if start is not None:
        want = want + start
        size = size + start.abs()
    flat = outs.double() if case.packed else torch.cat([o.reshape(-1).double() for o in outs])
    # Tensors no objective reaches are zero columns of j: written as zeros, or left as they
    # are when accumulating.
    compute = _UNIT[torch.float64] if torch.float64 in (case.dtype, out_dtype) else 2.0**-24
    tol = _UNIT[out_dtype] * want.abs() + compute * (case.k + 2) * size + 1e-300
    assert not bool(flat.isnan().any()), "an output element was not written"
    err = (flat - want).abs()
    assert bool((err <= tol).all()), f"max err {float(err.max()):.3g}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_combine_matches_reference(case: Case, backend: str) -> None:
    _need(backend)
    grads = _make(case)
    j = _flat64(grads, case)
    a = torch.linspace(-1.0, 2.0, case.k, dtype=torch.float64)
    for out_dtype in {case.dtype, torch.float32}:
        outs = _outs(case, grads, out_dtype)  # poisoned: every element must be written
        returned = conflict_opt.combine_(outs, grads, a, backend=_b(backend))
        assert returned is outs
        _assert_combined(case, outs, j, a, None, out_dtype)
        # Accumulating adds to what is there.
        start = _outs(case, grads, out_dtype, fill=0.5)
        conflict_opt.combine_(start, grads, a, backend=_b(backend), accumulate=True)
        base = torch.full((j.shape[1],), 0.5, dtype=torch.float64)
        _assert_combined(case, start, j, a, base, out_dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "dtype",
    [torch.float32, torch.bfloat16, torch.float16, torch.float64],
    ids=lambda d: str(d).split(".")[-1],
)
def test_combine_into_float64_outputs_is_formed_in_float64(
    dtype: torch.dtype, backend: str
) -> None:
    """The sum is formed in float64 when a gradient or the output is float64, with the
    coefficients as given (docs/kernels.md, "Precision"). Here every output is float64 and the
    coefficients are not float32 numbers, so a sum formed in float32 (32- or 16-bit gradients
    into a float64 output) or coefficients rounded to float32 miss the float64 tolerance by
    errors of order 2⁻²⁴. A tensor big enough for the torch path's in-place slices, small
    staged ones, and an absent gradient."""
    _need(backend)
    case = Case("float64-out", 3, ((40_000,), (5, 7), (300,)), dtype=dtype, none_every=4)
    grads = _make(case)
    j = _flat64(grads, case)
    a = torch.tensor([0.1, -1.0 / 3.0, 0.7], dtype=torch.float64)
    outs = _outs(case, grads, torch.float64)  # poisoned: every element must be written
    conflict_opt.combine_(outs, grads, a, backend=_b(backend))
    _assert_combined(case, outs, j, a, None, torch.float64)
    start = _outs(case, grads, torch.float64, fill=0.5)
    conflict_opt.combine_(start, grads, a, backend=_b(backend), accumulate=True)
    base = torch.full((j.shape[1],), 0.5, dtype=torch.float64)
    _assert_combined(case, start, j, a, base, torch.float64)


# float32 bit patterns for bfloat16 rounding: ties between two bfloat16 neighbours (to the even
# one, up and down, both signs), just below and above a tie, a carry into the exponent, the
# largest finite tie (to Inf), and NaNs whose payload fills the mantissa (rounded like numbers,
# they would carry into the sign bit or wrap around to zero).
_BF16_BITS = [
    0x3F808000,
    0x3F818000,
    0xBF808000,
    0xBF818000,
    0x3F80C000,
    0x3F807FFF,
    0x3F808001,
    0x3FFFFFFF,
    0x477FE000,
    0x7F7F8000,
    0x7FFFFFFF,
    0xFFFFFFFF,
    0x7FFF8000,
    0x7FC00000,
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_bfloat16_outputs_are_rounded_to_nearest_even_and_keep_nan(backend: str) -> None:
    """A bfloat16 output gets one rounding of the float32 sum, to nearest even, NaN kept, in
    every backend (the triton kernel rounds by hand, its interpreter truncating on a plain
    cast). With one coefficient 1 the sum is the gradient itself, so the output must be torch's
    own rounding of it bit for bit: ties included, which a tolerance cannot tell apart."""
    _need(backend)
    bits = torch.tensor(_BF16_BITS, dtype=torch.int64).to(torch.int32)
    values = bits.view(torch.float32).repeat(300)  # several chunks and steps of each kernel
    grads = [[values[:1000], values[1000:]]]
    outs = [torch.empty(x.shape, dtype=torch.bfloat16) for x in grads[0]]
    conflict_opt.combine_(outs, grads, [1.0], backend=_b(backend))
    got, want = torch.cat(outs), values.bfloat16()
    assert torch.equal(got.isnan(), want.isnan()), "NaN must stay NaN"
    bad = ~want.isnan() & (got.view(torch.int16) != want.view(torch.int16))
    assert not bool(bad.any()), sorted(
        {hex(_BF16_BITS[int(i) % len(_BF16_BITS)]) for i in bad.nonzero()}
    )


SPLIT_CASES = [c for c in CASES if c.name in ("200tensors", "P65537-1tensor", "K12-two-tiles")]
SPLIT_CASES += [c for c in CASES if c.name in ("noncontiguous", "dtype-bfloat16", "dtype-float64")]


@pytest.mark.parametrize("backend", ["torch-ops", "triton"])
@pytest.mark.parametrize("case", SPLIT_CASES, ids=lambda c: c.name)
def test_many_blocks_and_chunks(case: Case, backend: str, monkeypatch) -> None:
    """Tiny blocks (torch) and chunks (triton) so that every tensor spans several of them, with
    partial last blocks: the multi-block and multi-chunk branches, on the same answers."""
    _need(backend)
    monkeypatch.setattr(primitives, "_BLOCK_VALUES", 4 * 96)
    monkeypatch.setattr(primitives, "_MAX_SLICE", 96)
    if multi_tensor is not None:
        monkeypatch.setattr(multi_tensor, "CHUNK", 100)
    grads = _make(case)
    j = _flat64(grads, case)
    _assert_gram_close(conflict_opt.gram(grads, backend=_b(backend)), j, case.dtype, torch.float64)
    a = torch.tensor([0.5, -1.5, 2.0, 0.25] * 5, dtype=torch.float64)[: case.k]
    outs = _outs(case, grads, case.dtype)
    conflict_opt.combine_(outs, grads, a, backend=_b(backend))
    _assert_combined(case, outs, j, a, None, case.dtype)


# Inf · 0 in triton's interpreter is a numpy multiply, which warns: the NaN is the point here.
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_values_propagate(backend: str, bad: float) -> None:
    _need(backend)
    grads = [
        [torch.randn(50), torch.randn(3, 4)],
        [torch.randn(50), None],
        [torch.zeros(50), torch.randn(3, 4)],
    ]
    grads[1][0][17] = bad
    h = conflict_opt.gram(grads, backend=_b(backend))
    assert not bool(torch.isfinite(h[1]).any()), h  # NaN·0 and Inf·0 are NaN, not 0
    assert not bool(torch.isfinite(h[:, 1]).any()), h
    assert bool(torch.isfinite(h[[0, 2]][:, [0, 2]]).all()), h
    for a in ([0.2, 0.3, 0.5], [0.2, 0.0, 0.8]):
        outs = [torch.zeros(50), torch.zeros(3, 4)]
        conflict_opt.combine_(outs, grads, a, backend=_b(backend))
        assert not bool(torch.isfinite(outs[0][17])), outs[0][17]
        rest = torch.cat([outs[0][:17], outs[0][18:], outs[1].reshape(-1)])
        assert bool(torch.isfinite(rest).all())
    # A NaN coefficient reaches every element, including those of an absent gradient.
    outs = [torch.zeros(50), torch.zeros(3, 4)]
    conflict_opt.combine_(outs, grads, [0.5, float("nan"), 0.5], backend=_b(backend))
    assert bool(outs[0].isnan().all()) and bool(outs[1].isnan().all())


@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_combine_may_write_into_a_gradient(backend: str, accumulate: bool) -> None:
    """``out`` may be one of the gradient tensors: every block is read before it is written.
    The 70,000-value tensor is big enough for the torch path's in-place blocks, which write
    straight into the output unless it shares storage with a gradient."""
    _need(backend)
    gen = torch.Generator().manual_seed(3)
    shapes = [(1000,), (7, 3), (70_000,)]
    g1 = [torch.randn(s, generator=gen) for s in shapes]
    g2 = [torch.randn(s, generator=gen) for s in shapes]
    want = [0.25 * x + 0.75 * y + (y if accumulate else 0) for x, y in zip(g1, g2, strict=True)]
    conflict_opt.combine_(g2, [g1, g2], [0.25, 0.75], backend=_b(backend), accumulate=accumulate)
    for got, w in zip(g2, want, strict=True):
        torch.testing.assert_close(got, w)


# Outputs in the memory of another slot's gradients. Each builder returns (outs, grads,
# staged): K = 3 objectives over slots of N values, N big enough for the torch path's in-place
# blocks and several native and triton chunks, and the slots whose outputs must go through a
# temporary (see _cross_slot_aliases), in order. Slot order matters to the old bug: only an
# output written before the slot it aliases is read came out wrong.
_N = 70_000


def _fresh(gen: torch.Generator) -> torch.Tensor:
    return torch.randn(_N, generator=gen)


def _alias_grads(gen: torch.Generator) -> list[list[torch.Tensor]]:
    return [[_fresh(gen) for _ in range(3)] for _ in range(3)]


def _exact(gen):  # out[0] is slot 1's gradient of objective 0, as in the bug report
    g = _alias_grads(gen)
    return [g[0][1], _fresh(gen), _fresh(gen)], g, [0]


def _swapped(gen):  # out[0] is slot 1's gradient, out[1] slot 0's
    g = _alias_grads(gen)
    return [g[2][1], g[1][0], _fresh(gen)], g, [0, 1]


def _cycle(gen):  # every output is the next slot's gradient: no order of slots is safe
    g = _alias_grads(gen)
    return [g[0][1], g[1][2], g[2][0]], g, [0, 1, 2]


def _view_of_another(gen):  # out[0] is a view into slot 2's gradient storage, overlapping it
    store = torch.randn(2 * _N, generator=gen)
    g = _alias_grads(gen)
    g[1][2] = store[:_N]
    return [store[_N // 2 : _N // 2 + _N], _fresh(gen), _fresh(gen)], g, [0]


def _gradient_view_of_out(gen):  # slot 2's gradient is a strided view of out[0]'s storage
    buffer = torch.randn(2 * _N, generator=gen)
    g = _alias_grads(gen)
    g[2][2] = buffer[1::2]
    return [buffer[:_N], _fresh(gen), _fresh(gen)], g, [0]


def _shared_by_two_slots(gen):  # one tensor is the gradient of slots 0 and 1; out[0] is it
    g = _alias_grads(gen)
    g[1][1] = g[1][0]
    return [g[1][0], _fresh(gen), _fresh(gen)], g, [0]


def _disjoint_views(gen):  # views of one buffer that share no byte: nothing to stage
    buffer = torch.randn(4 * _N, generator=gen)
    g = _alias_grads(gen)
    g[0][0], g[0][1] = buffer[:_N], buffer[_N : 2 * _N]
    return [buffer[2 * _N : 3 * _N], buffer[3 * _N :], _fresh(gen)], g, []


def _own_slot(gen):  # each output one of its own slot's gradients: fine as it is
    g = _alias_grads(gen)
    return [g[0][0], g[2][1], g[1][2]], g, []


def _with_none_and_small(gen):  # absent gradients; a small (staged) slot 0 writing into slot 1
    g = _alias_grads(gen)
    for row in g:
        row.insert(0, torch.randn(5, generator=gen))
    g[0][2] = None
    g[2][3] = None
    return [g[2][1][10:15], g[1][2], _fresh(gen), _fresh(gen)], g, [0, 1]


ALIAS_CASES = [
    _exact,
    _swapped,
    _cycle,
    _view_of_another,
    _gradient_view_of_out,
    _shared_by_two_slots,
    _disjoint_views,
    _own_slot,
    _with_none_and_small,
]


@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("build", ALIAS_CASES, ids=lambda f: f.__name__.strip("_"))
def test_outputs_in_another_slots_gradients_match_separate_outputs(
    build, backend: str, accumulate: bool
) -> None:
    """An output that is (or shares storage with) another slot's gradient gets what a
    separate output would: every gradient as it was before the call, and with
    ``accumulate=True`` the output's own old values, which are that gradient's."""
    _need(backend)
    outs, grads, _ = build(torch.Generator().manual_seed(7))
    a = [0.5, -1.25, 2.0]
    before = [[None if x is None else x.clone() for x in row] for row in grads]
    want = []
    for t, o in enumerate(outs):
        total = o.clone() if accumulate else torch.zeros_like(o)
        for k in range(3):
            if before[k][t] is not None:
                total = total + a[k] * before[k][t]
        want.append(total)
    conflict_opt.combine_(outs, grads, a, backend=_b(backend), accumulate=accumulate)
    for t, (got, w) in enumerate(zip(outs, want, strict=True)):
        torch.testing.assert_close(got, w, msg=lambda m, t=t: f"out[{t}]: {m}")


@pytest.mark.parametrize("build", ALIAS_CASES, ids=lambda f: f.__name__.strip("_"))
def test_only_outputs_in_another_slots_gradients_are_staged(build) -> None:
    """The check finds exactly the outputs that need a temporary: none for outputs of their
    own, or one of their own slot's gradients, or views that share a buffer but no byte."""
    outs, grads, staged = build(torch.Generator().manual_seed(7))
    g = primitives.as_grads(grads)
    assert primitives._cross_slot_aliases(tuple(outs), g) == staged


def test_the_fused_step_refuses_outputs_in_another_slots_gradients() -> None:
    """``aggregate_`` on CPU runs the Gram, the solve and the combination in one native call
    (``_step_native``); an output there that is another parameter's gradient takes the
    three calls instead, with the same result as separate outputs."""
    gen = torch.Generator().manual_seed(5)
    grads = [[_fresh(gen) for _ in range(2)] for _ in range(2)]
    before = [[x.clone() for x in row] for row in grads]
    params = [torch.nn.Parameter(torch.zeros(_N)) for _ in range(2)]
    params[0].grad = grads[0][1]  # parameter 0's .grad is parameter 1's gradient
    separate = [torch.nn.Parameter(torch.zeros(_N)) for _ in range(2)]
    got = conflict_opt.aggregate_(params, grads, primitive_backend="torch")
    want = conflict_opt.aggregate_(separate, before, primitive_backend="reference")
    torch.testing.assert_close(got.result.coeffs, want.result.coeffs)
    for p, q in zip(params, separate, strict=True):
        torch.testing.assert_close(p.grad, q.grad)


@pytest.mark.parametrize(
    ("out", "grads", "match"),
    [
        (
            [None],
            [[torch.ones(3)], [torch.ones(3)]],
            r"^`out\[0\]` is None but objective 0 has a gradient there; pass a tensor of "
            r"shape \(3,\)\.$",
        ),
        (
            [torch.ones(2), None],
            [[torch.ones(2), None], [torch.ones(2), torch.ones(4, 5)]],
            r"`out\[1\]` is None but objective 1 has a gradient there; pass a tensor of "
            r"shape \(4, 5\)",
        ),
        (
            # No objective reaches parameter 0: it still needs an output, which is zeroed.
            [None, torch.ones(2)],
            [[None, torch.ones(2)], [None, torch.ones(2)]],
            r"`out\[0\]` is None: `out` needs a tensor for every parameter, also for one "
            "that no objective reaches",
        ),
        ([[1.0, 2.0]], [[torch.ones(2)]], r"^`out\[0\]` must be a torch.Tensor, got list\.$"),
        (None, torch.ones(2, 3), r"`out` must be a \[P\] tensor .* got NoneType"),
    ],
)
def test_a_missing_output_raises_stating_the_rule(out, grads, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        conflict_opt.combine_(out, grads, [1.0] * len(grads))


@pytest.mark.parametrize(
    ("coeffs", "match"),
    [
        (None, r"sequence or tensor of K = 2 real numbers, got None\."),
        ("ab", r"K = 2 real numbers, got 'ab'"),
        (b"ab", r"K = 2 real numbers, got b'ab'"),
        ([1.0, None], r"K = 2 real numbers, got \[1\.0, None\]"),
        ([[1.0], [2.0, 3.0]], r"K = 2 real numbers, got \[\[1\.0\], \[2\.0, 3\.0\]\]"),
        ({"a": 1.0}, r"K = 2 real numbers, got \{'a': 1\.0\}"),
        ([2**70, 1], r"K = 2 real numbers, got \[1180591620717411303424, 1\]"),
        (torch.tensor([True, False]), r"not one\), got dtype=torch.bool"),
        (torch.tensor([1.0, 2.0], dtype=torch.complex64), r"got dtype=torch.complex64"),
        ([1.0, 2.0, 3.0], r"shape \[K\] = \[2\], got shape=\(3,\)"),
        (torch.tensor(1.0), r"shape \[K\] = \[2\], got shape=\(\)"),
    ],
)
def test_bad_coeffs_raise_naming_the_value(coeffs, match: str) -> None:
    grads = [[torch.ones(3)], [torch.ones(3)]]
    out = [torch.full((3,), 7.0)]
    with pytest.raises(ValueError, match=match):
        conflict_opt.combine_(out, grads, coeffs)
    assert bool((out[0] == 7.0).all())
    # Also with nothing to write.
    with pytest.raises(ValueError, match=match):
        conflict_opt.combine_([], [[], []], coeffs)


_REAL_DTYPES = [
    d
    for d in (
        getattr(torch, name, None)
        for name in [
            "uint8",
            "uint16",
            "uint32",
            "uint64",
            "int8",
            "int16",
            "int32",
            "int64",
            "float8_e4m3fn",
            "float8_e5m2",
            "float16",
            "bfloat16",
            "float32",
            "float64",
        ]
    )
    if d is not None
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", _REAL_DTYPES, ids=str)
def test_coeffs_of_every_real_dtype_are_accepted(dtype: torch.dtype, backend: str) -> None:
    """Every integer and floating dtype holds real numbers, exactly representable here."""
    _need(backend)
    grads = [[torch.arange(4.0)], [torch.ones(4)]]
    out = [torch.empty(4)]
    conflict_opt.combine_(out, grads, torch.tensor([2, 1]).to(dtype), backend=_b(backend))
    torch.testing.assert_close(out[0], 2 * torch.arange(4.0) + 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_inputs_are_not_modified_and_empty_inputs(backend: str) -> None:
    _need(backend)
    grads = [[torch.randn(30), torch.randn(2, 2)], [torch.randn(30), torch.randn(2, 2)]]
    before = [[x.clone() for x in row] for row in grads]
    conflict_opt.gram(grads, backend=_b(backend))
    conflict_opt.combine_(
        [torch.empty(30), torch.empty(2, 2)], grads, [1.0, 2.0], backend=_b(backend)
    )
    for row, old in zip(grads, before, strict=True):
        for x, y in zip(row, old, strict=True):
            assert torch.equal(x, y)
    # No parameters at all, or P = 0: a zero Gram and nothing to write.
    assert torch.equal(conflict_opt.gram([[], []], backend=_b(backend)), torch.zeros(2, 2).double())
    assert conflict_opt.combine_([], [[], []], [0.5, 0.5], backend=_b(backend)) == []
    empty = torch.empty(3, 0)
    assert torch.equal(conflict_opt.gram(empty, backend=_b(backend)), torch.zeros(3, 3).double())


class _TensorLike:
    """Has a tensor's shape, dtype and device, and is not one."""

    def __init__(self, t: torch.Tensor) -> None:
        self.shape, self.dtype, self.device = t.shape, t.dtype, t.device


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: conflict_opt.gram([]), "at least one objective"),
        (lambda: conflict_opt.gram(torch.randn(5)), r"shape \[K, P\]"),
        (lambda: conflict_opt.gram(torch.ones(2, 3, dtype=torch.int64)), "dtype=torch.int64"),
        (lambda: conflict_opt.gram("grads"), "got str"),
        (lambda: conflict_opt.gram([[torch.ones(2)], 3]), r"`grads\[1\]` must be a sequence"),
        (lambda: conflict_opt.gram([[torch.ones(2)], []]), "has 1 tensors, `grads.1.` has 0"),
        (
            lambda: conflict_opt.gram([[torch.ones(2)], [torch.ones(3)]]),
            r"shape \(2,\), `grads\[1\]\[0\]` has \(3,\)",
        ),
        (
            lambda: conflict_opt.gram([[torch.ones(2)], [torch.ones(2).double()]]),
            "torch.float32, `grads.1..0.` is torch.float64",
        ),
        (lambda: conflict_opt.gram([[torch.ones(2)], [[1.0, 2.0]]]), "got list"),
        (
            # Tensor-like attributes pass the list-at-a-time checks; the type check stops it.
            lambda: conflict_opt.gram([[torch.ones(2)], [_TensorLike(torch.ones(2))]]),
            "got _TensorLike",
        ),
        (
            lambda: conflict_opt.gram([[torch.ones(2)], [torch.ones(2, device="meta")]]),
            r"one device, got \['cpu', 'meta'\]",
        ),
        (
            lambda: conflict_opt.gram([[torch.ones(2)]], accumulate_dtype=torch.float16),
            "accumulate_dtype=torch.float16",
        ),
        (lambda: conflict_opt.gram([[torch.ones(2)]], backend="cuda"), "backend='cuda'"),
        (
            lambda: conflict_opt.combine_([torch.ones(2)], [[torch.ones(2)]], [1.0, 2.0]),
            r"shape \[K\] = \[1\], got shape=\(2,\)",
        ),
        (
            lambda: conflict_opt.combine_([], [[torch.ones(2)]], [1.0]),
            "expected 1, got 0",
        ),
        (
            lambda: conflict_opt.combine_([torch.ones(3)], [[torch.ones(2)]], [1.0]),
            r"`out\[0\]` must have the gradients' shape \(2,\), got \(3,\)",
        ),
        (
            lambda: conflict_opt.combine_(torch.ones(2), [[torch.ones(2)]], [1.0]),
            "sequence of tensors",
        ),
        (
            lambda: conflict_opt.combine_([torch.ones(2)], torch.ones(1, 2), [1.0]),
            r"\[P\] tensor",
        ),
        (
            lambda: conflict_opt.combine_(torch.ones(3), torch.ones(1, 2), [1.0]),
            r"shape \[P\] = \[2\], got shape=\(3,\)",
        ),
        (
            lambda: conflict_opt.combine_([None], [[torch.ones(2)]], [1.0]),
            r"`out\[0\]` is None but objective 0 has a gradient there",
        ),
        (
            lambda: conflict_opt.combine_([torch.ones(2)], [[torch.ones(2)]], [1.0], accumulate=1),
            "accumulate=1",
        ),
        (
            lambda: conflict_opt.combine_([torch.ones(2)], [[torch.ones(2)]], [True]),
            "dtype=torch.bool",
        ),
        # Sparse layouts: in the first objective, in a later one only (which the
        # list-at-a-time checks must not pass), as one [K, P] tensor, and as an output.
        (
            lambda: conflict_opt.gram([[torch.ones(2).to_sparse()], [torch.ones(2)]]),
            r"`grads\[0\]\[0\]` must be a dense \(strided\) tensor, got layout=torch.sparse_coo",
        ),
        (
            lambda: conflict_opt.gram(
                [[torch.ones(2), torch.ones(3)], [torch.ones(2), torch.ones(3).to_sparse()]]
            ),
            r"`grads\[1\]\[1\]` must be a dense",
        ),
        (
            lambda: conflict_opt.gram(torch.eye(2).to_sparse()),
            "`grads` must be a dense .strided. tensor, got layout=torch.sparse_coo",
        ),
        # An output on another device than the gradients, either way round.
        (
            lambda: conflict_opt.combine_(
                [torch.empty(2, device="meta")], [[torch.ones(2)]], [1.0]
            ),
            r"^`out\[0\]` must be on the gradients' device cpu, got meta\.$",
        ),
        (
            lambda: conflict_opt.combine_(
                [torch.empty(2)], [[torch.ones(2, device="meta")]], [1.0], backend="reference"
            ),
            r"^`out\[0\]` must be on the gradients' device meta, got cpu\.$",
        ),
        (
            lambda: conflict_opt.combine_([torch.ones(2).to_sparse()], [[torch.ones(2)]], [1.0]),
            r"`out\[0\]` must be a dense .strided. tensor, got layout=torch.sparse_coo",
        ),
    ],
)
def test_bad_input_raises_naming_the_value(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_bad_input_leaves_out_untouched() -> None:
    out = [torch.full((2,), 7.0), torch.full((3,), 7.0)]
    with pytest.raises(ValueError):
        conflict_opt.combine_(out, [[torch.ones(2), torch.ones(4)]], [1.0])
    assert all(bool((o == 7.0).all()) for o in out)


def test_auto_and_explicit_backend_selection(monkeypatch) -> None:
    calls: list[str] = []
    real_torch, real_ref = primitives._gram_torch, primitives._gram_reference
    monkeypatch.setattr(
        primitives, "_gram_torch", lambda g, a: calls.append("torch") or real_torch(g, a)
    )
    monkeypatch.setattr(primitives, "_gram_reference", lambda g: calls.append("ref") or real_ref(g))
    grads = [[torch.ones(3)], [torch.arange(3.0)]]
    conflict_opt.gram(grads)  # CPU tensors: auto is the torch path, even with triton around
    conflict_opt.gram(grads, backend="reference")
    assert calls == ["torch", "ref"]

    monkeypatch.setenv(primitives.DISABLE_ENV, "1")
    with pytest.raises(RuntimeError, match="disabled by CONFLICT_OPT_DISABLE_TRITON=1"):
        conflict_opt.gram(grads, backend="triton")
    with pytest.raises(RuntimeError, match="disabled"):
        conflict_opt.combine_([torch.empty(3)], grads, [0.5, 0.5], backend="triton")
    monkeypatch.delenv(primitives.DISABLE_ENV)

    if multi_tensor is not None:
        monkeypatch.setattr(multi_tensor, "INTERPRET", False)
        with pytest.raises(RuntimeError, match="need CUDA tensors, got device cpu"):
            conflict_opt.gram(grads, backend="triton")
    monkeypatch.setitem(__import__("sys").modules, "conflict_opt.kernels.multi_tensor", None)
    with pytest.raises(RuntimeError, match=r"pip install 'conflict-opt\[triton\]'"):
        conflict_opt.gram(grads, backend="triton")


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_cuda_matches_reference_without_host_sync(backend: str) -> None:
    if backend == "triton" and primitives.triton_unavailable(torch.device("cuda")):
        pytest.skip("triton unavailable on CUDA")
    case = next(c for c in CASES if c.name == "200tensors")
    grads = _make(case)
    j = _flat64(grads, case)
    on_gpu = [[None if x is None else x.cuda() for x in row] for row in grads]
    a = torch.tensor([0.5, -1.0, 2.0, 0.25], dtype=torch.float64, device="cuda")
    outs = [torch.full(s, float("nan"), device="cuda") for s in case.shapes]
    conflict_opt.gram(on_gpu, backend=_b(backend))  # warm-up: compile, cache chunk tables
    conflict_opt.combine_(outs, on_gpu, a, backend=_b(backend))
    torch.cuda.set_sync_debug_mode("error")
    try:
        h = conflict_opt.gram(on_gpu, backend=_b(backend))
        conflict_opt.combine_(outs, on_gpu, a, backend=_b(backend))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    _assert_gram_close(h.cpu(), j, case.dtype, torch.float64)
    _assert_combined(case, [o.cpu() for o in outs], j, a.cpu(), None, case.dtype)


def test_list_at_a_time_validation_matches_the_per_slot_checks(monkeypatch) -> None:
    """``as_grads`` checks whole lists first and falls back to per-slot checks on anything
    unusual: both give the same Grads, and every irregular input takes the per-slot path."""
    gen = torch.Generator().manual_seed(0)
    grads = [[torch.randn(s, generator=gen) for s in ((3, 4), (5,), (0,))] for _ in range(3)]
    fast = primitives._as_grads_fast(3, [tuple(r) for r in grads])
    assert fast is not None
    monkeypatch.setattr(primitives, "_as_grads_fast", lambda k, per: None)
    slow = primitives.as_grads(grads)
    assert (fast.k, fast.shapes, fast.dtypes, fast.device) == (
        slow.k,
        slow.shapes,
        slow.dtypes,
        slow.device,
    )
    assert fast.slots == slow.slots  # the very same tensor objects, not copies or detached
    monkeypatch.undo()
    x = torch.randn(5)
    irregular = [
        [[x], [None]],  # an absent gradient
        [[x], [torch.randn(6)]],  # shapes differ
        [[x], [x.double()]],  # dtypes differ
        [[x.long()], [x.long()]],  # not a float dtype
        [[x], [torch.empty(5, device="meta")]],  # two devices
        [[x], [x.numpy()]],  # not a tensor
    ]
    for case in irregular:
        assert primitives._as_grads_fast(2, [tuple(r) for r in case]) is None, case


def test_list_at_a_time_description_matches_the_per_tensor_one() -> None:
    """as_grads' list-at-a-time path (which reads ``is_cpu`` instead of building a device per
    tensor) describes a list as the per-slot checks do: on CPU, on one other device, and it
    hands two devices to the checks that name them."""
    for device in ("cpu", "meta"):
        grads = [[torch.ones(3, device=device), torch.ones(2, 2, device=device)] for _ in range(3)]
        fast = primitives._as_grads_fast(3, [tuple(g) for g in grads])
        assert fast is not None and fast.device == torch.device(device)
        assert fast.shapes == (torch.Size([3]), torch.Size([2, 2]))
        assert fast.dtypes == (torch.float32, torch.float32)
    mixed = [(torch.ones(2),), (torch.ones(2, device="meta"),)]
    assert primitives._as_grads_fast(2, mixed) is None
    assert primitives._as_grads_fast(1, [()]).device == torch.device("cpu")


@pytest.mark.skipif(primitives._native is None, reason="conflict_opt._native is not built")
def test_native_rows_list_at_a_time_matches_the_loop() -> None:
    """Pointers of the kernels' rows: all present and contiguous (one map), or with None and a
    strided tensor (the loop, which copies the strided one and keeps the copy alive)."""
    a, b, c, d = torch.randn(4), torch.randn(2, 3), torch.randn(4), torch.randn(2, 3)
    g = primitives.as_grads([[a, b], [c, d]])
    ptrs, lens, keep = primitives._native_rows(g, [0, 1])
    assert ptrs == [a.data_ptr(), c.data_ptr(), b.data_ptr(), d.data_ptr()]
    assert lens == [4, 6] and keep == []
    strided = torch.randn(3, 2).T
    g = primitives.as_grads([[None, b], [c, strided]])
    ptrs, lens, keep = primitives._native_rows(g, [0, 1])
    assert ptrs[:3] == [0, c.data_ptr(), b.data_ptr()] and lens == [4, 6]
    assert len(keep) == 1 and ptrs[3] == keep[0].data_ptr()
    assert torch.equal(keep[0].view(2, 3), strided)
