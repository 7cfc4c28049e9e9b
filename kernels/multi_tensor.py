"""Multi-tensor Triton kernels: the Gram of K gradients and their weighted combination.

Both kernels cover every parameter tensor of one dtype in a single launch. The host builds

* a pointer table ``[K, T]`` (int64 addresses; 0 for a ``None`` gradient, read as zeros), and
* a chunk table: each tensor is cut into chunks of at most ``CHUNK`` elements, one program per
  chunk, listing (tensor, start, length). It depends only on the tensor sizes and is cached.

``_gram_kernel`` (split-P reduction): the program of chunk c and tile pair (I, J), I ≤ J, loads
the ``[TILE, BLOCK]`` slices of objectives I·TILE… and J·TILE… (one tile when I = J), accumulates
their ``[TILE, TILE]`` products over its chunk in float32 (float64 for float64 inputs with a
float64 result), and writes one partial tile. The host sums the partials over chunks in the
accumulation dtype and mirrors the upper tiles (symmetric tiling: only I ≤ J is computed). For
K ≤ 8 there is a single tile: each value is read from memory once.

``_combine_kernel``: the program of chunk c loads the K slices ``[KP, BLOCK]`` and the
coefficients, forms Σ_k a_k g_k in float32 (float64 when an input or the output is float64),
optionally adds the output's current values, and stores into the output tensor in place: K
reads and one write per element, the minimum.

No host synchronisation: coefficients are read by the kernel; tables are copied host→device.
Under ``TRITON_INTERPRET=1`` (set before this module is imported) the same kernels run on CPU
tensors in triton's interpreter; that is how the test suite exercises them without a GPU.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import torch
import triton
import triton.language as tl

if TYPE_CHECKING:
    from conflict_opt.primitives import Grads

CHUNK = 1 << 15  # elements per program
_TRITON_DTYPES = {
    torch.float16: tl.float16,
    torch.bfloat16: tl.bfloat16,
    torch.float32: tl.float32,
    torch.float64: tl.float64,
}
_MAX_TILE = 8
# Register budget of one step: TILE·TILE·BLOCK products (Gram) or KP·BLOCK values (combine).
_GRAM_STEP = 8192
_COMBINE_STEP = 4096


@triton.jit
def _gram_kernel(
    table,  # int64 [K, T] addresses
    chunk_tensor,  # int32 [C]
    chunk_start,  # int64 [C]
    chunk_len,  # int32 [C]
    pair_i,  # int32 [NP] first tile of each pair
    pair_j,  # int32 [NP] second tile (pair_i <= pair_j)
    partial,  # [C, NP, TILE, TILE] accumulation dtype
    T,
    K: tl.constexpr,
    TILE: tl.constexpr,
    BLOCK: tl.constexpr,
    DTYPE: tl.constexpr,
    ACC: tl.constexpr,
):
    c = tl.program_id(0)
    pair = tl.program_id(1)
    n_pairs = tl.num_programs(1)
    t = tl.load(chunk_tensor + c)
    start = tl.load(chunk_start + c)
    length = tl.load(chunk_len + c)
    ti = tl.load(pair_i + pair)
    tj = tl.load(pair_j + pair)
    rows = tl.arange(0, TILE)
    ki = ti * TILE + rows
    kj = tj * TILE + rows
    addr_i = tl.load(table + ki.to(tl.int64) * T + t, mask=ki < K, other=0)
    addr_j = tl.load(table + kj.to(tl.int64) * T + t, mask=kj < K, other=0)
    ptr_i = addr_i.to(tl.pointer_type(DTYPE))
    ptr_j = addr_j.to(tl.pointer_type(DTYPE))
    valid_i = addr_i != 0
    valid_j = addr_j != 0
    acc = tl.zeros((TILE, TILE), dtype=ACC)
    cols = tl.arange(0, BLOCK)
    for s in range(0, length, BLOCK):
        offs = start + s + cols
        inside = (s + cols) < length
        xi = tl.load(
            ptr_i[:, None] + offs[None, :], mask=valid_i[:, None] & inside[None, :], other=0.0
        )
        xj = tl.load(
            ptr_j[:, None] + offs[None, :], mask=valid_j[:, None] & inside[None, :], other=0.0
        )
        xi = xi.to(ACC)
        xj = xj.to(ACC)
        acc += tl.sum(xi[:, None, :] * xj[None, :, :], axis=2)
    base = (c.to(tl.int64) * n_pairs + pair) * TILE * TILE
    tl.store(partial + base + rows[:, None] * TILE + rows[None, :], acc)


@triton.jit
def _round_to(y, OUT_DTYPE: tl.constexpr):
    """``y`` rounded to nearest-even in ``OUT_DTYPE``.

    bfloat16 is rounded by hand (add half an ulp of bfloat16 to the float32 bits, then cut):
    triton's interpreter truncates on a plain float32 → bfloat16 cast, the GPU rounds; the
    explicit form is exact on both, so both give the reference's rounding. NaN is kept as is.
    """
    if OUT_DTYPE == tl.bfloat16:  # noqa: SIM300 (constexpr comparison, triton's idiom)
        y32 = y.to(tl.float32)
        bits = y32.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        rounded = bits.to(tl.float32, bitcast=True)
        return tl.where(y32 != y32, y32, rounded).to(tl.bfloat16)
    return y.to(OUT_DTYPE)


@triton.jit
def _combine_kernel(
    table,  # int64 [K, T] gradient addresses
    out_table,  # int64 [T] output addresses
    chunk_tensor,
    chunk_start,
    chunk_len,
    coeffs,  # [K] in the compute dtype
    T,
    K: tl.constexpr,
    KP: tl.constexpr,
    BLOCK: tl.constexpr,
    DTYPE: tl.constexpr,
    OUT_DTYPE: tl.constexpr,
    ACC: tl.constexpr,
    ACCUMULATE: tl.constexpr,
):
    c = tl.program_id(0)
    t = tl.load(chunk_tensor + c)
    start = tl.load(chunk_start + c)
    length = tl.load(chunk_len + c)
    rows = tl.arange(0, KP)
    addr = tl.load(table + rows.to(tl.int64) * T + t, mask=rows < K, other=0)
    ptr = addr.to(tl.pointer_type(DTYPE))
    valid = addr != 0
    a = tl.load(coeffs + rows, mask=rows < K, other=0.0).to(ACC)
    out = tl.load(out_table + t).to(tl.pointer_type(OUT_DTYPE))
    cols = tl.arange(0, BLOCK)
    for s in range(0, length, BLOCK):
        offs = start + s + cols
        inside = (s + cols) < length
        x = tl.load(ptr[:, None] + offs[None, :], mask=valid[:, None] & inside[None, :], other=0.0)
        # Absent gradients are zeros, as in the reference: a_k · 0 (NaN when a_k is NaN).
        y = tl.sum(a[:, None] * x.to(ACC), axis=0)
        if ACCUMULATE:
            y += tl.load(out + offs, mask=inside, other=0.0).to(ACC)
        tl.store(out + offs, _round_to(y, OUT_DTYPE), mask=inside)


# Whether the kernels were decorated in interpreter mode (fixed when this module is imported).
INTERPRET: bool = type(_gram_kernel).__name__ == "InterpretedFunction"


def _to_device(table: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a host table to ``device``; to CUDA from pinned memory, without a host sync."""
    if device.type == "cuda":
        return table.pin_memory().to(device, non_blocking=True)
    return table.to(device)


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@functools.lru_cache(maxsize=64)
def _chunk_table(
    numels: tuple[int, ...], chunk: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tensor, start, length) per chunk of at most ``chunk`` elements, on ``device``."""
    tensors, starts, lengths = [], [], []
    for t, n in enumerate(numels):
        for s in range(0, n, chunk):
            tensors.append(t)
            starts.append(s)
            lengths.append(min(chunk, n - s))
    return (
        _to_device(torch.tensor(tensors, dtype=torch.int32), device),
        _to_device(torch.tensor(starts, dtype=torch.int64), device),
        _to_device(torch.tensor(lengths, dtype=torch.int32), device),
    )


@functools.lru_cache(maxsize=16)
def _pairs(tiles: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    first = [i for i in range(tiles) for j in range(i, tiles)]
    second = [j for i in range(tiles) for j in range(i, tiles)]
    return (
        _to_device(torch.tensor(first, dtype=torch.int32), device),
        _to_device(torch.tensor(second, dtype=torch.int32), device),
    )


def _address_table(rows: list[list[torch.Tensor | None]], device: torch.device) -> torch.Tensor:
    addresses = [[0 if x is None else x.data_ptr() for x in row] for row in rows]
    return _to_device(torch.tensor(addresses, dtype=torch.int64), device)


def _gradient_table(g: Grads, slots: list[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The ``[K, len(slots)]`` address table of ``slots``' gradients, and the contiguous copies
    made for it (the caller keeps them alive until the launch). The kernels address a tensor
    as flat memory, so a non-contiguous one is copied, by itself."""
    copies: list[torch.Tensor] = []

    def flat(x: torch.Tensor | None) -> torch.Tensor | None:
        if x is None or x.is_contiguous():
            return x
        copies.append(x.contiguous())
        return copies[-1]

    rows = [[flat(g.slots[t][i]) for t in slots] for i in range(g.k)]
    return _address_table(rows, g.device), copies


def gram(g: Grads, accumulate_dtype: torch.dtype) -> torch.Tensor:
    """:func:`conflict_opt.gram` with the triton backend (validated input)."""
    k = g.k
    tile = min(_MAX_TILE, max(2, _next_pow2(k)))
    tiles = -(-k // tile)
    block = max(16, _GRAM_STEP // (tile * tile))
    first, second = _pairs(tiles, g.device)
    n_pairs = first.numel()
    total = torch.zeros(tiles * tile, tiles * tile, dtype=accumulate_dtype, device=g.device)
    by_dtype: dict[torch.dtype, list[int]] = {}
    for t, (dtype, n) in enumerate(zip(g.dtypes, g.numels, strict=True)):
        if dtype is not None and n > 0:
            by_dtype.setdefault(dtype, []).append(t)
    for dtype, slots in by_dtype.items():
        table, keep_alive = _gradient_table(g, slots)
        chunks = _chunk_table(tuple(g.numels[t] for t in slots), CHUNK, g.device)
        n_chunks = chunks[0].numel()
        acc = (
            torch.float64
            if dtype == torch.float64 and accumulate_dtype == torch.float64
            else torch.float32
        )
        partial = torch.empty(n_chunks, n_pairs, tile, tile, dtype=acc, device=g.device)
        _gram_kernel[(n_chunks, n_pairs)](
            table,
            *chunks,
            first,
            second,
            partial,
            len(slots),
            K=k,
            TILE=tile,
            BLOCK=block,
            DTYPE=_TRITON_DTYPES[dtype],
            ACC=_TRITON_DTYPES[acc],
        )
        summed = partial.sum(0, dtype=accumulate_dtype)  # [NP, TILE, TILE]
        pairs = [(i, j) for i in range(tiles) for j in range(i, tiles)]
        for p, (ti, tj) in enumerate(pairs):
            total[ti * tile : (ti + 1) * tile, tj * tile : (tj + 1) * tile] += summed[p]
        del keep_alive
    upper = total[:k, :k].triu()
    return upper + upper.triu(1).T


def combine_(outs: tuple[torch.Tensor, ...], g: Grads, a: torch.Tensor, accumulate: bool) -> None:
    """:func:`conflict_opt.combine_` with the triton backend (validated input)."""
    k = g.k
    kp = max(2, _next_pow2(k))
    block = max(16, _COMBINE_STEP // kp)
    groups: dict[tuple[torch.dtype, torch.dtype], list[int]] = {}
    for t, (dtype, o) in enumerate(zip(g.dtypes, outs, strict=True)):
        if o.numel() == 0:
            continue
        if dtype is None:
            if not accumulate:
                o.zero_()  # no objective reaches this parameter
            continue
        groups.setdefault((dtype, o.dtype), []).append(t)
    for (dtype, out_dtype), slots in groups.items():
        acc = torch.float64 if torch.float64 in (dtype, out_dtype) else torch.float32
        table, keep_alive = _gradient_table(g, slots)
        targets = [outs[t] if outs[t].is_contiguous() else outs[t].contiguous() for t in slots]
        out_table = _address_table([targets], g.device)[0]
        chunks = _chunk_table(tuple(g.numels[t] for t in slots), CHUNK, g.device)
        _combine_kernel[(chunks[0].numel(),)](
            table,
            out_table,
            *chunks,
            a.to(acc),
            len(slots),
            K=k,
            KP=kp,
            BLOCK=block,
            DTYPE=_TRITON_DTYPES[dtype],
            OUT_DTYPE=_TRITON_DTYPES[out_dtype],
            ACC=_TRITON_DTYPES[acc],
            ACCUMULATE=accumulate,
        )
        for t, target in zip(slots, targets, strict=True):
            if target is not outs[t]:
                outs[t].copy_(target)
        del keep_alive
