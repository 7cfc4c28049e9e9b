"""The native CPU kernels of the torch backend (``conflict_opt._native``, csrc/multi_tensor_cpu.c).

The dispatch-level tables of test_primitives.py already run every case through them (backend
"torch" on CPU). Here: the kernels called directly over the shapes that hit each of their
branches (every 4×4 register-tile shape, chunk and vector-width boundaries, several pieces,
absent rows, 1 to 256 threads, non-temporal stores, misaligned and aliased outputs), the module's
own argument checks, and the routing between the kernels and the torch-ops path.
"""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
import threading

import pytest
import torch

import conflict_opt
from conflict_opt import primitives

native = primitives._native
pytestmark = pytest.mark.skipif(native is None, reason="conflict_opt._native is not built")

# Lengths around the vector width (16 float32 / 8 float64 lanes, unrolled up to 4×) and the
# chunks of both kernels (native.COMBINE_CHUNK and native.GRAM_CHUNK values).
_EDGES = (native.COMBINE_CHUNK, native.GRAM_CHUNK) if native is not None else ()
LENGTHS = (0, 1, 7, 15, 16, 17, 63, 64, 65, *(n + d for n in _EDGES for d in (-1, 0, 1)), 20_000)


def _pieces(
    k: int,
    lens: tuple[int, ...],
    dtype: torch.dtype,
    *,
    none_every: int = 0,
    seed=0,
    integers: bool = False,
):
    """K rows per piece (None every ``none_every``-th), and the K×P float64 matrix. With
    ``integers`` the values are integers in [-4, 4]: every product and every partial sum of the
    kernels is then exact in float32 (and in bfloat16 storage), so any lost, repeated or
    misplaced value shows up as an exact mismatch, however small against the rounding bounds."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for t, n in enumerate(lens):
        piece = []
        for i in range(k):
            if none_every and (i + t) % none_every == 0:
                piece.append(None)
            elif integers:
                piece.append(torch.randint(-4, 5, (n,), generator=gen).to(dtype))
            else:
                piece.append((torch.randn(n, generator=gen) * (1 + t % 3)).to(dtype))
        rows.append(piece)
    j = torch.stack(
        [
            torch.cat(
                [
                    torch.zeros(n, dtype=torch.float64)
                    if rows[t][i] is None
                    else rows[t][i].double()
                    for t, n in enumerate(lens)
                ]
            )
            if lens
            else torch.zeros(0, dtype=torch.float64)
            for i in range(k)
        ]
    )
    return rows, j


def _ptrs(rows) -> list[int]:
    return [0 if x is None else x.data_ptr() for piece in rows for x in piece]


KIND = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2}


def _unit(dtype: torch.dtype) -> float:
    """Unit round-off of the compute precision (bfloat16 is widened exactly to float32)."""
    return 2.0**-53 if dtype == torch.float64 else 2.0**-24


def _assert_gram(values: list[float], j: torch.Tensor, dtype: torch.dtype) -> None:
    k = j.shape[0]
    got = torch.tensor(values, dtype=torch.float64).view(k, k)
    assert torch.equal(got, got.T)
    want = j @ j.T
    bound = j.abs() @ j.abs().T
    # Higham's dot-product bound with a realistic constant, as in test_primitives.py.
    tol = _unit(dtype) * (4 * math.sqrt(max(1, j.shape[1])) + 8) * bound + 1e-300
    err = (got - want).abs()
    assert bool((err <= tol).all()), f"max err {float(err.max()):.3g}"


@pytest.mark.parametrize("dtype", list(KIND))
@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 7, 8, 9, 12, 17])
def test_gram_every_tile_shape_and_length(k: int, dtype: torch.dtype) -> None:
    """K = 1…17 covers every diagonal tile (1…4 rows) and off-diagonal tile (up to 4×4); the
    lengths cover the vector tails and chunk edges; pieces and absent rows in one call."""
    rows, j = _pieces(k, LENGTHS, dtype, none_every=4)
    for threads in (1, 2, 3):
        values = native.gram(k, _ptrs(rows), list(LENGTHS), KIND[dtype], threads)
        _assert_gram(values, j, dtype)


@pytest.mark.parametrize("threads", [1, 2, 3, 4, 5])
def test_gram_thread_split_over_pieces(threads: int) -> None:
    """Ranges of the threads cut through pieces of every size; the partial Grams add up."""
    lens = (9000, 1, 30_000, 2048, 0, 40_001)
    rows, j = _pieces(4, lens, torch.float32, none_every=5, seed=threads)
    _assert_gram(native.gram(4, _ptrs(rows), list(lens), False, threads), j, torch.float32)


def test_gram_is_bitwise_the_same_for_any_thread_count() -> None:
    """Blocks depend on the size of the work only, and their partials are added in order."""
    lens = (9000, 1, 700_000, 2048, 0, 40_001)
    rows, _ = _pieces(5, lens, torch.float32, none_every=4, seed=1)
    first = native.gram(5, _ptrs(rows), list(lens), False, 1)
    for threads in (2, 3, 4, 7, 64, 256):
        assert native.gram(5, _ptrs(rows), list(lens), False, threads) == first, threads


# Pieces of 636,866 values in all: past 64 chunks of either kernel, so that every block of the
# work holds several chunks (the Gram 2 of GRAM_CHUNK, the combination 5 of COMBINE_CHUNK) and
# chunk boundaries fall inside blocks as well as between them.
_MANY_CHUNKS = (600_000, 8191, 1, 8193, 0, 16_385, 2047, 2049)


@pytest.mark.parametrize("dtype", list(KIND))
def test_kernels_are_exact_on_integers_over_blocks_of_several_chunks(dtype: torch.dtype) -> None:
    """Past 64 chunks a block walks several chunks, and chunk boundaries fall inside a piece
    within one block: there the Gram and the combination must still read every value once.
    On small integers both kernels are exact, so the results must equal the float64 ones."""
    assert sum(_MANY_CHUNKS) > 64 * native.GRAM_CHUNK
    rows, j = _pieces(5, _MANY_CHUNKS, dtype, none_every=4, seed=3, integers=True)
    want = (j @ j.T).flatten().tolist()
    for threads in (1, 2):
        assert native.gram(5, _ptrs(rows), list(_MANY_CHUNKS), KIND[dtype], threads) == want
    a = torch.tensor([3.0, -1.0, 0.5, 2.0, -2.0, 1.0, 0.25, -0.5, 4.0], dtype=torch.float64)
    out_dtypes = [dtype] if dtype == torch.float64 else [torch.float32, torch.bfloat16]
    for k in (5, 9):  # in registers, and through the chunk buffer
        rows, j = _pieces(k, _MANY_CHUNKS, dtype, none_every=4, seed=k, integers=True)
        want = a[:k] @ j
        for out_dtype, accumulate, stream in itertools.product(
            out_dtypes, (False, True), (False, True)
        ):
            outs = [torch.full((n,), 1.0 if accumulate else math.nan) for n in _MANY_CHUNKS]
            outs = [o.to(out_dtype) for o in outs]
            native.combine(
                k,
                _ptrs(rows),
                list(_MANY_CHUNKS),
                KIND[dtype],
                2,
                [o.data_ptr() for o in outs],
                KIND[out_dtype],
                a[:k].tolist(),
                accumulate,
                stream,
            )
            got = torch.cat(outs).double()
            # Sums of at most 9 multiples of 1/4 below 64: exact in float32 and bfloat16 alike.
            assert torch.equal(got, want + (1.0 if accumulate else 0.0)), (k, out_dtype)


def _assert_combined(out: torch.Tensor, want: torch.Tensor, size: torch.Tensor, dtype) -> None:
    tol = 8 * _unit(dtype) * size + 1e-300
    err = (out.double() - want).abs()
    assert bool((err <= tol).all()), f"max err {float(err.max()):.3g}"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("dtype", "out_dtype"),
    [
        (torch.float32, torch.float32),
        (torch.float64, torch.float64),
        (torch.bfloat16, torch.bfloat16),
        (torch.bfloat16, torch.float32),
    ],
)
@pytest.mark.parametrize("k", [1, 2, 3, 4, 8, 9])
def test_combine_lengths_threads_and_streaming(
    k: int, dtype: torch.dtype, out_dtype: torch.dtype, stream: bool
) -> None:
    """Up to 8 rows, a float32 or float64 output is summed in registers (direct_*), streamed or
    not; a bfloat16 output or more rows go through the L1 buffer."""
    rows, j = _pieces(k, LENGTHS, dtype, none_every=3)
    a = torch.linspace(-1.0, 2.0, k, dtype=torch.float64)
    if dtype != torch.float64:
        a = a.float().double()  # the kernel rounds the coefficients to the compute dtype
    want = a @ j
    size = a.abs() @ j.abs()
    for threads in (1, 2, 3):
        for accumulate in (False, True):
            start = 0.5 if accumulate else math.nan
            outs = [torch.full((n,), start, dtype=out_dtype) for n in LENGTHS]
            native.combine(
                k,
                _ptrs(rows),
                list(LENGTHS),
                KIND[dtype],
                threads,
                [o.data_ptr() for o in outs],
                KIND[out_dtype],
                a.tolist(),
                accumulate,
                stream,
            )
            flat = torch.cat(outs)
            base = 0.5 if accumulate else 0.0
            if out_dtype == torch.bfloat16:
                # One rounding to bfloat16 (2⁻⁸ relative) of the float32 sum; the rounding
                # itself is checked bit for bit in test_bfloat16_rounding_is_nearest_even.
                exact = want + base
                assert bool(
                    (
                        (flat - exact).abs()
                        <= 2.0**-8 * exact.abs() + 8 * _unit(dtype) * (size + base)
                    ).all()
                )
                continue
            _assert_combined(flat, want + base, size + base, dtype)


def test_bfloat16_rounding_is_nearest_even_and_keeps_nan() -> None:
    """The kernel's float32 → bfloat16 rounding against torch's, on values built to hit ties,
    carries into the exponent, overflow to Inf, subnormals, signed zeros, Inf and NaN."""
    bits = torch.tensor(
        [
            0x3F808000,
            0x3F818000,
            0x3F80C000,
            0x3F807FFF,
            0x7F7FFFFF,
            0x7F7F8000,
            0x00008000,
            0x80018000,
            0x80000000,
            0x00000000,
            0x7F800000,
            0xFF800000,
            0x7FC00001,
            0xFF800001,
            0x3FFFFFFF,
            0x477FE000,
            # Quiet NaNs whose payload fills the mantissa: rounded like numbers, they would
            # carry into the sign bit (0x7FFF8000 -> -0.0) or wrap around to +0.0.
            0x7FFFFFFF,
            0xFFFFFFFF,
            0x7FFF8000,
        ],
        dtype=torch.int64,
    ).to(torch.int32)
    values = bits.view(torch.float32).repeat(200)  # long enough for the vector loops too
    out = torch.empty(values.numel(), dtype=torch.bfloat16)
    native.combine(
        1, [values.data_ptr()], [values.numel()], 0, 1, [out.data_ptr()], 2, [1.0], False, False
    )
    got, want = out.float(), values.bfloat16().float()
    assert bool(torch.equal(got.isnan(), want.isnan()))
    finite = ~want.isnan()
    assert torch.equal(got[finite].view(torch.int16), want[finite].view(torch.int16))
    # Accumulating into bfloat16 adds in float32 and rounds once.
    acc = torch.full((values.numel(),), 1.0, dtype=torch.bfloat16)
    native.combine(
        1, [values.data_ptr()], [values.numel()], 0, 1, [acc.data_ptr()], 2, [1.0], True, False
    )
    want = (values + 1.0).bfloat16().float()
    finite = ~want.isnan()
    assert torch.equal(acc.float()[finite].view(torch.int32), want[finite].view(torch.int32))
    assert bool(torch.equal(acc.float().isnan(), want.isnan()))


@pytest.mark.parametrize("k", [2, 9])
@pytest.mark.parametrize("offset", [0, 1, 2, 3])
def test_combine_streams_into_misaligned_outputs(offset: int, k: int) -> None:
    """Non-temporal stores need 16-byte alignment: a misaligned output takes the plain store,
    in the direct (k = 2) and the buffered (k = 9) combination."""
    rows, j = _pieces(k, (5000,), torch.float32)
    base = torch.full((5000 + offset,), math.nan)
    out = base[offset:]
    a = torch.linspace(0.5, -2.0, k, dtype=torch.float32).double()
    native.combine(k, _ptrs(rows), [5000], 0, 2, [out.data_ptr()], 0, a.tolist(), False, True)
    _assert_combined(out, a @ j, a.abs() @ j.abs(), torch.float32)
    assert bool(base[:offset].isnan().all()), "wrote before the output"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 6, 7, 8, 9])
def test_streaming_changes_no_bit(k: int, dtype: torch.dtype) -> None:
    """Non-temporal stores change how the output is written, not what: the same bits as the
    plain stores, for the direct (k <= 8) and the buffered (k = 9) combination, over lengths
    that end mid-vector and outputs aligned or not."""
    rows, _ = _pieces(k, LENGTHS, dtype, none_every=4, seed=7)
    a = torch.linspace(-1.5, 1.0, k, dtype=torch.float64).tolist()
    got = {}
    for stream in (False, True):
        # Every other output starts one element into its buffer: misaligned for the stores.
        outs = [
            torch.full((n + 1,), math.nan, dtype=dtype)[t % 2 : t % 2 + n]
            for t, n in enumerate(LENGTHS)
        ]
        native.combine(
            k,
            _ptrs(rows),
            list(LENGTHS),
            KIND[dtype],
            2,
            [o.data_ptr() for o in outs],
            KIND[dtype],
            a,
            False,
            stream,
        )
        got[stream] = torch.cat(outs)
    assert not bool(got[True].isnan().any())
    assert torch.equal(got[True], got[False])


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("k", "row"), [(3, 0), (3, 2), (9, 4)])
def test_combine_into_one_of_its_rows(k: int, row: int, stream: bool) -> None:
    """The output is one of the rows (how the optimizer reuses a gradient as ``.grad``): every
    value of it is read before it is written, in the direct and the buffered combination."""
    rows, j = _pieces(k, (10_000,), torch.float32, seed=5)
    target = rows[0][row]
    a = torch.arange(1.0, k + 1.0, dtype=torch.float64)
    native.combine(
        k, _ptrs(rows), [10_000], 0, 2, [target.data_ptr()], 0, a.tolist(), False, stream
    )
    _assert_combined(target, a @ j, a @ j.abs(), torch.float32)


def test_nonfinite_values_propagate_through_absent_rows() -> None:
    x = torch.randn(3000)
    x[2500] = math.nan
    values = native.gram(2, [x.data_ptr(), 0], [3000], False, 1)
    # NaN·0 = NaN against the absent row; the absent row against itself is a true zero.
    assert math.isnan(values[0]) and math.isnan(values[1]) and math.isnan(values[2])
    assert values[3] == 0.0
    out = torch.zeros(3000)
    native.combine(
        2, [x.data_ptr(), 0], [3000], 0, 1, [out.data_ptr()], 0, [0.0, 1.0], False, False
    )
    assert math.isnan(out[2500]) and bool(torch.isfinite(torch.cat([out[:2500], out[2501:]])).all())


def test_concurrent_calls_from_python_threads() -> None:
    """The kernels release the GIL and keep no global state: concurrent calls are independent."""
    rows, j = _pieces(3, (50_000, 333), torch.float32, seed=9)
    results: list[list[float]] = []

    def work() -> None:
        for _ in range(5):
            results.append(native.gram(3, _ptrs(rows), [50_000, 333], False, 2))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 20 and all(r == results[0] for r in results)
    _assert_gram(results[0], j, torch.float32)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="OpenMP build: Linux only")
def test_openmp_threads_are_torchs_own_runtime() -> None:
    """Built with OpenMP, the kernels' threads must be the workers of torch's OpenMP runtime,
    not of a second copy of libgomp competing with it for the cores (csrc, run_split)."""
    assert native.OPENMP in (0, 1)
    if not native.OPENMP:
        pytest.skip("built without OpenMP (POSIX threads)")
    with open("/proc/self/maps") as maps:
        loaded = {line.split()[-1] for line in maps if "libgomp" in line}
    assert len(loaded) == 1, loaded
    # And a parallel call from the OpenMP build gives the single-thread Gram bit for bit.
    rows, _ = _pieces(3, (200_000,), torch.float32, seed=2)
    assert native.gram(3, _ptrs(rows), [200_000], 0, 2) == native.gram(
        3, _ptrs(rows), [200_000], 0, 1
    )


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((0, [], [], False, 1), ValueError, r"k = 0 is outside 1\.\.256"),
        ((257, [], [], False, 1), ValueError, r"k = 257 is outside"),
        ((1, [], [], False, 0), ValueError, r"nthreads = 0 is outside"),
        (
            (2, [0], [5], False, 1),
            ValueError,
            r"rows has 1 pointers, expected len\(lens\) \* k = 2",
        ),
        ((1, [0], [-3], False, 1), ValueError, r"lens\[0\] = -3 is negative"),
        ((1, 5, [1], False, 1), TypeError, "rows must be a sequence"),
        ((1, [0], ["a"], False, 1), TypeError, "cannot be interpreted as an integer"),
    ],
)
def test_gram_argument_checks(args, error, match: str) -> None:
    with pytest.raises(error, match=match):
        native.gram(*args)


def test_combine_argument_checks() -> None:
    x, out = torch.randn(10), torch.empty(10)
    good = (1, [x.data_ptr()], [10], 0, 1, [out.data_ptr()], 0, [1.0], False, False)
    native.combine(*good)
    torch.testing.assert_close(out, x)
    for i, bad, match in [
        (5, [], r"outs has 0 pointers, expected 1"),
        (5, [0], r"outs\[0\] is a null pointer for 10 values"),
        (7, [1.0, 2.0], r"coeffs has 2 values, expected k = 1"),
        (3, 3, r"kind = 3 is not 0 \(float32\), 1 \(float64\) or 2 \(bfloat16\)"),
        (6, -1, r"out_kind = -1 is not 0"),
        (6, 1, r"out_kind = 1 with kind = 0: float64 \(1\) rows and outputs go together"),
    ]:
        args = list(good)
        args[i] = bad
        with pytest.raises(ValueError, match=match):
            native.combine(*args)


# ------------------------------------------------------------------------------------ routing


def test_mixed_dtypes_split_between_kernels_and_torch_ops(monkeypatch) -> None:
    """float32, float64 and bfloat16 slots go to the kernels (one call per dtype), float16 ones
    to torch ops, in one Gram; outputs go to the kernels in their gradients' dtype, or across
    float32 and bfloat16, and to torch ops otherwise (a float64 output of float32 gradients)."""
    calls: list[tuple[str, torch.dtype | None]] = []
    real_native, real_ops = primitives._gram_native, primitives._gram_torch_ops
    monkeypatch.setattr(
        primitives,
        "_gram_native",
        lambda g, slots, dt: calls.append(("native", dt)) or real_native(g, slots, dt),
    )
    monkeypatch.setattr(
        primitives,
        "_gram_torch_ops",
        lambda g, acc: calls.append(("ops", g.dtypes[0])) or real_ops(g, acc),
    )
    gen = torch.Generator().manual_seed(0)
    dtypes = [torch.float32, torch.bfloat16, torch.float64, torch.float32, torch.float16]
    grads = [[torch.randn(300, generator=gen).to(dt) for dt in dtypes] for _ in range(3)]
    got = conflict_opt.gram(grads, backend="torch")
    want = conflict_opt.gram(grads, backend="reference")
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert sorted(calls, key=str) == sorted(
        [
            ("native", torch.float32),
            ("native", torch.float64),
            ("native", torch.bfloat16),
            ("ops", torch.float16),
        ],
        key=str,
    )

    combined: list[tuple[list[int], tuple[torch.dtype, torch.dtype]]] = []
    real_combine = primitives._combine_native
    monkeypatch.setattr(
        primitives,
        "_combine_native",
        lambda outs, g, slots, dts, *rest: (
            combined.append((slots, dts)) or real_combine(outs, g, slots, dts, *rest)
        ),
    )
    out_dtypes = [torch.bfloat16, torch.float32, torch.float64, torch.float64, torch.float16]
    outs = [torch.full((300,), math.nan, dtype=dt) for dt in out_dtypes]
    conflict_opt.combine_(outs, grads, [0.5, 0.25, -1.0], backend="torch")
    assert sorted(combined, key=str) == sorted(
        [
            ([0], (torch.float32, torch.bfloat16)),
            ([1], (torch.bfloat16, torch.float32)),
            ([2], (torch.float64, torch.float64)),
        ],
        key=str,
    )
    ref = [torch.empty(300, dtype=o.dtype) for o in outs]
    conflict_opt.combine_(ref, grads, [0.5, 0.25, -1.0], backend="reference")
    for got_o, want_o in zip(outs, ref, strict=True):
        torch.testing.assert_close(got_o, want_o, rtol=1e-2, atol=1e-2)


def test_partially_overlapping_outputs_are_skipped_and_returned() -> None:
    """The kernel writes no piece whose output partially overlaps one of its rows, and says
    which; an output that is exactly one of its rows, or clear of them, is written."""
    store = torch.randn(300)
    g1, g2 = store[:100], store[100:200]
    clear = torch.full((100,), math.nan)
    overlapping = store[50:150]  # straddles g1 and g2
    before = store.clone()
    skipped = native.combine(
        2,
        [g1.data_ptr(), g2.data_ptr()] * 3,
        [100, 100, 100],
        False,
        1,
        [clear.data_ptr(), overlapping.data_ptr(), g1.data_ptr()],
        0,
        [1.0, 1.0],
        False,
        False,
    )
    assert skipped == [1]
    torch.testing.assert_close(clear, before[:100] + before[100:200])
    # Piece 1 untouched; piece 2 wrote g1 := g1 + g2 in place.
    torch.testing.assert_close(store[:100], before[:100] + before[100:200])
    torch.testing.assert_close(store[100:], before[100:])


def test_an_output_at_its_rows_address_in_another_dtype_is_a_partial_overlap() -> None:
    """Only an output that is exactly one of its rows, the same memory in the same dtype, may be
    written chunk by chunk. A float32 output that starts where its bfloat16 row starts covers
    the row and as much memory again, so each chunk written would overwrite row values that a
    later chunk reads: the kernel must skip it, and the dispatcher then writes it on torch ops
    with the result of a separate output."""
    n = 3 * native.COMBINE_CHUNK + 5
    gen = torch.Generator().manual_seed(11)
    store = torch.randn(2 * n, generator=gen).bfloat16()
    row, other = store[:n], torch.randn(n, generator=gen).bfloat16()
    out = store.view(torch.float32)  # n float32 values: over the row and past it
    assert out.data_ptr() == row.data_ptr() and out.shape == row.shape
    want = 0.5 * row.float() - 1.25 * other.float()
    before = store.clone()
    skipped = native.combine(
        2, _ptrs([[row, other]]), [n], 2, 1, [out.data_ptr()], 0, [0.5, -1.25], False, False
    )
    assert skipped == [0]
    assert torch.equal(store.view(torch.int16), before.view(torch.int16)), (
        "a skipped piece was written"
    )
    conflict_opt.combine_([out], [[row], [other]], [0.5, -1.25], backend="torch")
    torch.testing.assert_close(out, want)


def test_partial_overlap_routes_to_torch_ops(monkeypatch) -> None:
    """Through the dispatcher: the skipped slot is written on torch ops, the rest natively."""
    ops_slots: list[int] = []
    real_ops = primitives._combine_torch_ops
    monkeypatch.setattr(
        primitives,
        "_combine_torch_ops",
        lambda outs, g, a, acc: ops_slots.append(len(outs)) or real_ops(outs, g, a, acc),
    )
    store = torch.randn(60)
    x, y1, y2 = torch.randn(40), torch.randn(10), torch.randn(10)
    grads = [[store[:40], y1], [x, y2]]
    outs = [store[20:], torch.full((10,), math.nan)]  # the first overlaps grads[0][0] partially
    conflict_opt.combine_(outs, grads, [1.0, 1.0], backend="torch")
    assert ops_slots == [1]  # one slot on torch ops
    torch.testing.assert_close(outs[1], y1 + y2)


def test_multithreaded_and_streaming_through_the_dispatcher(monkeypatch) -> None:
    """Force threads and non-temporal stores on small inputs through the public functions."""
    monkeypatch.setattr(primitives, "_NATIVE_PER_THREAD", 1000)
    monkeypatch.setattr(primitives, "_NATIVE_STREAM_BYTES", 0)
    gen = torch.Generator().manual_seed(4)
    grads = [[torch.randn(s, generator=gen) for s in ((70, 90), (3001,), (5,))] for _ in range(5)]
    torch.testing.assert_close(
        conflict_opt.gram(grads, backend="torch"),
        conflict_opt.gram(grads, backend="reference"),
        rtol=1e-5,
        atol=1e-3,  # float32 sums of up to 9,000 products of size ~1
    )
    a = [0.5, -1.0, 0.25, 2.0, 1.0]
    outs = [torch.full(x.shape, math.nan) for x in grads[0]]
    want = [torch.empty(x.shape) for x in grads[0]]
    conflict_opt.combine_(outs, grads, a, backend="torch")
    conflict_opt.combine_(want, grads, a, backend="reference")
    for o, w in zip(outs, want, strict=True):
        torch.testing.assert_close(o, w)


def test_disabled_and_missing_kernels(monkeypatch) -> None:
    grads = [[torch.randn(10)], [torch.randn(10)]]
    want = conflict_opt.gram(grads, backend="reference")
    assert primitives.native_unavailable() is None

    monkeypatch.setenv(primitives.NATIVE_DISABLE_ENV, "1")
    assert "disabled by CONFLICT_OPT_DISABLE_NATIVE=1" in primitives.native_unavailable()
    monkeypatch.setattr(primitives, "_gram_native", pytest.fail)
    torch.testing.assert_close(conflict_opt.gram(grads, backend="torch"), want)
    monkeypatch.delenv(primitives.NATIVE_DISABLE_ENV)

    # A broken install where the extension should exist: an error naming the way out.
    monkeypatch.setattr(primitives, "_native", None)
    monkeypatch.setattr(primitives, "_NATIVE_IMPORT_ERROR", "ImportError: no module")
    assert "not importable: ImportError: no module" in primitives.native_unavailable()
    with pytest.raises(
        RuntimeError, match=r"CPU kernels are missing.*CONFLICT_OPT_DISABLE_NATIVE=1"
    ):
        conflict_opt.gram(grads, backend="torch")
    with pytest.raises(RuntimeError, match="CPU kernels are missing"):
        conflict_opt.combine_([torch.empty(10)], grads, [1.0, 1.0], backend="torch")
    # Where it is not built (Windows), torch ops run instead.
    monkeypatch.setattr(primitives, "_NATIVE_BUILT", False)
    assert "not built on Windows" in primitives.native_unavailable()
    torch.testing.assert_close(conflict_opt.gram(grads, backend="torch"), want)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_with_one_thread_runs_the_kernels() -> None:
    """libgomp's pool does not survive fork; a forked child with torch.set_num_threads(1)
    (what DataLoader workers do) must run both kernels on its own thread, without hanging."""
    script = """
import os, torch, conflict_opt
g = [[torch.randn(300_000)] for _ in range(3)]
want = conflict_opt.gram(g, backend="torch")  # the parent uses the pool first
pid = os.fork()
if pid == 0:
    torch.set_num_threads(1)
    ok = torch.equal(conflict_opt.gram(g, backend="torch"), want)
    out = [torch.empty(300_000)]
    conflict_opt.combine_(out, g, [0.5, 0.25, 0.25], backend="torch")
    os._exit(0 if ok and bool(torch.isfinite(out[0]).all()) else 3)
_, status = os.waitpid(pid, 0)
raise SystemExit(os.waitstatus_to_exitcode(status))
"""
    done = subprocess.run([sys.executable, "-c", script], timeout=120, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
