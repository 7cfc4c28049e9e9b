"""The two data-heavy operations of a step: the Gram of K gradients, and their combination.

* :func:`gram` computes H_ij = ⟨g_i, g_j⟩ for K per-objective gradients, each spread over many
  parameter tensors.
* :func:`combine_` writes Σ_k a_k g_k into one output per parameter (typically ``.grad``).

Both are bandwidth-bound: the least memory traffic is one read of the K·P gradient values (plus
one write of P values for the combination). Three backends share one signature:

* ``"reference"``: plain float64 torch on a concatenated K×P copy; the test oracle.
* ``"torch"``: the fast path on any device, with no K×P copy. On CPU, float32, float64 and
  bfloat16 gradients go to the native kernels of ``conflict_opt._native``
  (csrc/multi_tensor_cpu.c): one multi-threaded pass over all tensors in cache-sized chunks,
  one triangle of register tiles per chunk. Everything else (other devices, float16, float64
  outputs of 32/16-bit gradients and the reverse, or every CPU tensor with
  ``CONFLICT_OPT_DISABLE_NATIVE=1``) runs on torch ops: the gradients are walked
  in blocks small enough to stay in cache, so each value is read from memory once; big tensors
  are sliced, small ones packed together into one staging block (one op per objective, instead
  of a few per tensor); Gram blocks use one dot product per pair i ≤ j (one triangle).
* ``"triton"``: the kernels of :mod:`conflict_opt.kernels`: a multi-tensor Gram with a split-P
  reduction and symmetric tiles, and a multi-tensor combination writing in place. CUDA tensors,
  or CPU tensors under ``TRITON_INTERPRET=1`` (set before the kernels are first imported).

``"auto"`` picks ``"triton"`` for CUDA tensors when triton is importable and not disabled by
``CONFLICT_OPT_DISABLE_TRITON=1``, else ``"torch"``. An explicit backend is honoured or raises.

Precision: sums over a block (at most 2²⁰ values on torch ops, 8,192 in the native Gram
kernel) run in the input's precision promoted to at least float32 (float64 inputs stay float64);
block sums are accumulated in at least ``accumulate_dtype`` (Gram) or written in the output's dtype
(combination). docs/kernels.md has the details and the benchmark table.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import importlib
import itertools
import operator
import os
import reprlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union

import torch

from ._types import FLOAT_DTYPES

__all__ = ["PRIMITIVE_BACKENDS", "PrimitiveBackend", "combine_", "gram"]

PrimitiveBackend = Literal["auto", "reference", "torch", "triton"]
PRIMITIVE_BACKENDS: tuple[str, ...] = ("auto", "reference", "torch", "triton")

# Aliases evaluated at import time: typing.Union keeps them valid on Python 3.10.
GradsLike = Union[torch.Tensor, Sequence[Union[torch.Tensor, Sequence[Union[torch.Tensor, None]]]]]  # noqa: UP007
OutLike = Union[torch.Tensor, Sequence[torch.Tensor]]  # noqa: UP007

_ACCUMULATE_DTYPES = (torch.float32, torch.float64)
_EMPTY = torch.Size([0])
DISABLE_ENV = "CONFLICT_OPT_DISABLE_TRITON"
NATIVE_DISABLE_ENV = "CONFLICT_OPT_DISABLE_NATIVE"

try:
    from . import _native
except ImportError as _err:  # not built (Windows), or a broken build: see native_unavailable()
    _native = None
    _NATIVE_IMPORT_ERROR: str | None = f"{type(_err).__name__}: {_err}"
else:
    _NATIVE_IMPORT_ERROR = None
# setup.py builds the extension everywhere but on Windows: elsewhere its absence is an error.
_NATIVE_BUILT = sys.platform != "win32"
# Gradient dtypes of the native kernels, with the kernels' code for each.
_NATIVE_KIND = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2}
_KIND_BYTES = (4, 8, 2)  # bytes per value of each kind
_CPU = torch.device("cpu")
# Tensor._use_count is private torch API (see _sole_owner); without it, nothing the
# combination writes is one of the gradients themselves.
_HAS_USE_COUNT = hasattr(torch.Tensor, "_use_count")


def _sole_owner(g: torch.Tensor) -> bool:
    """Whether no other tensor shares ``g``'s TensorImpl (a custom autograd Function may return
    a tensor it saved, even the caller's own), so that ``g`` may become a ``.grad`` and be
    overwritten: PyTorch's AccumulateGrad makes the same check before it steals a gradient into
    ``.grad``. ``Tensor._use_count`` is private torch API; where it is missing nothing is
    reused."""
    return _HAS_USE_COUNT and g._use_count() == 1


# Values per thread below which the native kernels use fewer threads. Their threads come from
# torch's own OpenMP pool (csrc/multi_tensor_cpu.c, run_split): right after a torch op its
# workers are still spinning and join at once, and measured there (K = 4, 2 cores) two threads
# made both kernels about 2× faster than one from 64K values per objective. A pool that has
# gone to sleep takes 50-100 µs to wake on the benchmark VM, which two threads win back from
# about 2¹⁷ values each.
_NATIVE_PER_THREAD = 1 << 17
# Outputs of the combination of at least this many bytes (beyond this class of machine's caches)
# are written with non-temporal stores: no read of their old contents into cache first.
_NATIVE_STREAM_BYTES = 32 << 20

# Values per block of the torch path, across all K objectives: 2²¹ values (8 MiB in float32)
# stay in this class of machine's L2 + L3 while the K(K+1)/2 dot products re-read them. One
# objective's slice is at most 2²⁰ values (see the precision note above).
_BLOCK_VALUES = 1 << 21
_MAX_SLICE = 1 << 20
# Tensors of at least this many values are used in place (sliced, never copied): the per-op
# cost of a few µs is then small against the data; smaller ones are packed into staging.
_IN_PLACE = 1 << 15


@dataclass(frozen=True)
class Grads:
    """K gradients as parameter slots: ``slots[t][k]`` is objective k's tensor t (or None), as
    given: not detached (one object per tensor per step would cost more than the check), so
    everything that reads them runs under ``torch.no_grad()``."""

    k: int
    slots: tuple[tuple[torch.Tensor | None, ...], ...]
    shapes: tuple[torch.Size, ...]
    dtypes: tuple[torch.dtype | None, ...]  # None: every objective's tensor t is None
    device: torch.device
    packed: bool  # given as one [K, P] tensor

    @functools.cached_property
    def numels(self) -> tuple[int, ...]:
        return tuple(s.numel() for s in self.shapes)


def _check_tensor(t: object, where: str, optional: bool = True) -> torch.Tensor:
    """``t`` if it is a dense float tensor, else a ValueError naming ``where``. ``optional``:
    the entry may be None (a gradient), which the caller handles before the check."""
    if not isinstance(t, torch.Tensor):
        alternative = " or None" if optional else ""
        raise ValueError(f"{where} must be a torch.Tensor{alternative}, got {type(t).__name__}.")
    if t.dtype not in FLOAT_DTYPES:
        raise ValueError(
            f"{where} must be float16, bfloat16, float32 or float64, got dtype={t.dtype}."
        )
    if t.layout is not torch.strided:
        raise ValueError(
            f"{where} must be a dense (strided) tensor, got layout={t.layout}: sparse gradients "
            "(e.g. from nn.Embedding(sparse=True)) are not supported; use .to_dense(), or "
            "build the module with sparse=False."
        )
    return t


_shape_of = operator.attrgetter("shape")
_dtype_of = operator.attrgetter("dtype")
_device_of = operator.attrgetter("device")
_layout_of = operator.attrgetter("layout")
# Reading ``is_cpu`` gives a bool; reading ``device`` builds a torch.device object per tensor.
_is_cpu = operator.attrgetter("is_cpu")
# Mapped over lists: the unbound methods take the tensor as their argument and build no bound
# method object per tensor (operator.methodcaller does, and is slower than a plain loop).
_is_contiguous = torch.Tensor.is_contiguous
_data_ptr = torch.Tensor.data_ptr
_FLOAT_DTYPE_SET = frozenset(FLOAT_DTYPES)


def _as_grads_fast(k: int, per_objective: list[tuple[Any, ...]]) -> Grads | None:
    """:class:`Grads` for the common case, checked list-at-a-time (C-level ``map`` and list
    comparisons, about a quarter of the per-tensor checks' cost): every entry a tensor, one
    shape and dtype list across objectives, float dtypes, one device. None otherwise, and
    the per-slot checks then find (and name) the problem."""
    try:
        first = per_objective[0]
        shapes = list(map(_shape_of, first))
        dtypes = list(map(_dtype_of, first))
        for seq in per_objective[1:]:
            if list(map(_shape_of, seq)) != shapes or list(map(_dtype_of, seq)) != dtypes:
                return None
        for seq in per_objective:  # sparse layouts: the per-slot checks name them
            if list(map(_layout_of, seq)).count(torch.strided) != len(seq):
                return None
        if all(all(map(_is_cpu, seq)) for seq in per_objective):
            devices = {_CPU} if first else set()
        else:
            devices = set()
            for seq in per_objective:
                devices.update(map(_device_of, seq))
    except AttributeError:  # None, or not a tensor
        return None
    if len(devices) > 1 or not _FLOAT_DTYPE_SET.issuperset(dtypes):
        return None
    for seq in per_objective:
        if not all(map(isinstance, seq, itertools.repeat(torch.Tensor))):
            return None  # an object with tensor-like attributes
    device = devices.pop() if devices else torch.device("cpu")
    return Grads(
        k, tuple(zip(*per_objective, strict=True)), tuple(shapes), tuple(dtypes), device, False
    )


def as_grads(grads: GradsLike) -> Grads:
    """Validate ``grads`` (K sequences of tensors, or one ``[K, P]`` tensor) into :class:`Grads`."""
    if isinstance(grads, torch.Tensor):
        _check_tensor(grads, "`grads`")
        if grads.ndim != 2 or grads.shape[0] == 0:
            raise ValueError(
                "`grads` as one tensor must have shape [K, P] with K >= 1, got shape="
                f"{tuple(grads.shape)}."
            )
        rows = tuple(grads.detach()[k] for k in range(grads.shape[0]))
        return Grads(grads.shape[0], (rows,), (rows[0].shape,), (grads.dtype,), grads.device, True)
    if isinstance(grads, (str, bytes)) or not isinstance(grads, Sequence):
        raise ValueError(
            "`grads` must be K sequences of tensors (one per parameter) or one [K, P] tensor, "
            f"got {type(grads).__name__}."
        )
    k = len(grads)
    if k == 0:
        raise ValueError("`grads` must hold at least one objective, got K=0.")
    per_objective: list[tuple[torch.Tensor | None, ...]] = []
    for i, seq in enumerate(grads):
        if isinstance(seq, torch.Tensor):
            seq = (seq,)  # one tensor per objective
        elif isinstance(seq, (str, bytes)) or not isinstance(seq, Sequence):
            raise ValueError(
                f"`grads[{i}]` must be a sequence of tensors (or a tensor), "
                f"got {type(seq).__name__}."
            )
        per_objective.append(tuple(seq))
    n = len(per_objective[0])
    for i, seq in enumerate(per_objective):
        if len(seq) != n:
            raise ValueError(
                f"every objective must list the same parameters: `grads[0]` has {n} tensors, "
                f"`grads[{i}]` has {len(seq)}."
            )
    fast = _as_grads_fast(k, per_objective)
    if fast is not None:
        return fast
    slots, shapes, dtypes = [], [], []
    devices: set[torch.device] = set()
    # One pass per parameter slot; messages are formatted only on failure (this runs for every
    # tensor of every objective at every step).
    for t, slot in enumerate(zip(*per_objective, strict=True)):
        g0: torch.Tensor | None = None
        i0 = -1
        for i, g in enumerate(slot):
            if g is None:
                continue
            if (
                not isinstance(g, torch.Tensor)
                or g.dtype not in FLOAT_DTYPES
                or g.layout is not torch.strided
            ):
                _check_tensor(g, f"`grads[{i}][{t}]`")  # raises, naming the entry
            if g0 is None:
                g0, i0 = g, i
                continue
            if g.shape != g0.shape:
                raise ValueError(
                    f"tensor {t} must have one shape across objectives: `grads[{i0}][{t}]` "
                    f"has shape {tuple(g0.shape)}, `grads[{i}][{t}]` has {tuple(g.shape)}."
                )
            if g.dtype != g0.dtype:
                raise ValueError(
                    f"tensor {t} must have one dtype across objectives: `grads[{i0}][{t}]` "
                    f"is {g0.dtype}, `grads[{i}][{t}]` is {g.dtype}."
                )
            devices.add(g.device)
        if g0 is None:
            shapes.append(_EMPTY)
            dtypes.append(None)
        else:
            devices.add(g0.device)
            shapes.append(g0.shape)
            dtypes.append(g0.dtype)
        slots.append(slot)
    if len(devices) > 1:
        raise ValueError(f"`grads` must live on one device, got {sorted(str(d) for d in devices)}.")
    device = devices.pop() if devices else torch.device("cpu")
    return Grads(k, tuple(slots), tuple(shapes), tuple(dtypes), device, False)


def _as_out(out: OutLike, g: Grads) -> tuple[torch.Tensor, ...]:
    """Validate ``out`` against ``g``: one ``[P]`` tensor or one tensor per parameter slot."""
    if g.packed:
        if not isinstance(out, torch.Tensor):
            raise ValueError(
                "`out` must be a [P] tensor when `grads` is one [K, P] tensor, got "
                f"{type(out).__name__}."
            )
        outs: tuple[object, ...] = (out,)
        expected = g.shapes
        if out.ndim != 1 or out.shape[0] != g.shapes[0].numel():
            raise ValueError(
                f"`out` must have shape [P] = [{g.shapes[0].numel()}], got shape="
                f"{tuple(out.shape)}."
            )
        expected = (out.shape,)
    else:
        if isinstance(out, torch.Tensor) or not isinstance(out, Sequence):
            raise ValueError(
                "`out` must be a sequence of tensors (one per parameter) when `grads` is K "
                f"sequences, got {type(out).__name__}."
            )
        outs = tuple(out)
        if len(outs) != len(g.slots):
            raise ValueError(
                f"`out` must hold one tensor per parameter: expected {len(g.slots)}, "
                f"got {len(outs)}."
            )
        expected = g.shapes
        if _outs_fast(outs, g):
            return outs  # type: ignore[return-value]  # all tensors: checked just now
    result = []
    for t, (o, shape) in enumerate(zip(outs, expected, strict=True)):
        if o is None:
            raise ValueError(_none_out_message(t, g))
        o = _check_tensor(o, "`out`" if g.packed else f"`out[{t}]`", optional=False)
        if g.dtypes[t] is not None and o.shape != shape:
            raise ValueError(
                f"`out[{t}]` must have the gradients' shape {tuple(shape)}, got {tuple(o.shape)}."
            )
        if g.dtypes[t] is not None and o.device != g.device:
            raise ValueError(
                f"`out[{t}]` must be on the gradients' device {g.device}, got {o.device}."
            )
        result.append(o)
    return tuple(result)


def _outs_fast(outs: tuple[object, ...], g: Grads) -> bool:
    """Whether ``outs`` passes :func:`_as_out`'s checks, tested list-at-a-time as in
    :func:`_as_grads_fast`: float dtypes, dense layouts, the gradients' shapes (of every slot:
    an output of a slot no objective reaches may have any shape, and takes the per-slot
    checks) and device. False also for anything irregular, which the per-slot checks name."""
    try:
        if list(map(_shape_of, outs)) != list(g.shapes):
            return False
        if not _FLOAT_DTYPE_SET.issuperset(map(_dtype_of, outs)):
            return False
        if list(map(_layout_of, outs)).count(torch.strided) != len(outs):
            return False
        if g.device.type == "cpu":
            if not all(map(_is_cpu, outs)):
                return False
        elif set(map(_device_of, outs)) != {g.device}:
            return False
    except AttributeError:  # None, or not a tensor
        return False
    return all(map(isinstance, outs, itertools.repeat(torch.Tensor)))


def _none_out_message(t: int, g: Grads) -> str:
    """Why ``out[t]`` may not be None: every parameter has an output, written even where no
    objective reaches it (zeros), and read with ``accumulate=True``."""
    if g.dtypes[t] is None:
        return (
            f"`out[{t}]` is None: `out` needs a tensor for every parameter, also for one that no "
            "objective reaches, as here (it is zeroed, or kept with accumulate=True); pass the "
            "parameter's .grad or a tensor of its shape."
        )
    i = next(i for i, x in enumerate(g.slots[t]) if x is not None)
    return (
        f"`out[{t}]` is None but objective {i} has a gradient there; pass a tensor of shape "
        f"{tuple(g.shapes[t])}."
    )


# Dtypes of coefficients: every integer and floating dtype that holds one real number per
# element (bool is a flag, not a number; complex is not real; sub-byte and packed ones cannot
# be converted). getattr: the unsigned 16 to 64-bit and float8 ones are newer than torch 2.1.
_COEFF_DTYPES = frozenset(
    d
    for d in (
        getattr(torch, name, None)
        for name in (
            "uint8",
            "uint16",
            "uint32",
            "uint64",
            "int8",
            "int16",
            "int32",
            "int64",
            "float8_e5m2",
            "float8_e4m3fn",
            "float8_e5m2fnuz",
            "float8_e4m3fnuz",
            "float8_e8m0fnu",
            "float16",
            "bfloat16",
            "float32",
            "float64",
        )
    )
    if d is not None
)


def _check_coeffs(coeffs: object, k: int) -> torch.Tensor:
    """``coeffs`` as a ``[K]`` tensor of a real dtype, as given (not moved), or a ValueError
    naming the value: anything but a sequence or tensor of K real numbers (NaN and Inf are
    numbers: they propagate)."""
    if coeffs is None or isinstance(coeffs, (str, bytes)):
        a = None
    else:
        try:
            a = torch.as_tensor(coeffs)
        except (TypeError, ValueError, RuntimeError, OverflowError):
            a = None  # None or a string among them, ragged nesting, an int beyond int64
    if a is None:
        raise ValueError(
            f"`coeffs` must be a sequence or tensor of K = {k} real numbers, "
            f"got {reprlib.repr(coeffs)}."
        )
    if a.dtype not in _COEFF_DTYPES:
        raise ValueError(
            "`coeffs` must be real numbers (an integer or floating dtype; bool is not one), got "
            f"dtype={a.dtype}: {reprlib.repr(coeffs)}."
        )
    if a.shape != (k,):
        raise ValueError(f"`coeffs` must have shape [K] = [{k}], got shape={tuple(a.shape)}.")
    return a


def _coeffs(coeffs: torch.Tensor | Sequence[float], k: int, device: torch.device) -> torch.Tensor:
    """Checked ``coeffs`` (:func:`_check_coeffs`) as float64 on ``device``."""
    # A device copy, not a read: no host synchronisation even for CUDA coefficients.
    return _check_coeffs(coeffs, k).detach().to(device=device, dtype=torch.float64)


def _env_flag(name: str) -> bool:
    """Whether the switch ``name`` is set in the environment (1, true, yes or on)."""
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def triton_unavailable(device: torch.device) -> str | None:
    """Why the triton backend cannot run on ``device`` (None when it can)."""
    if _env_flag(DISABLE_ENV):
        return f"it is disabled by {DISABLE_ENV}={os.environ[DISABLE_ENV]}"
    try:
        multi_tensor = importlib.import_module("conflict_opt.kernels.multi_tensor")
    except ImportError as err:
        return f"triton is not importable ({err}); pip install 'conflict-opt[triton]'"
    if device.type == "cuda":
        return None
    if device.type == "cpu" and multi_tensor.INTERPRET:
        return None
    return (
        f"its kernels need CUDA tensors, got device {device} (CPU tensors run only in "
        "triton's interpreter: TRITON_INTERPRET=1 set before conflict_opt.kernels is imported)"
    )


def native_unavailable() -> str | None:
    """Why the torch backend does not use its native CPU kernels (None when it does).

    They are used for float32, float64 and bfloat16 CPU tensors unless
    ``CONFLICT_OPT_DISABLE_NATIVE=1``, and are not built on Windows. Anywhere else a missing or
    broken ``conflict_opt._native`` is an error, raised by the first CPU call of the torch
    backend rather than covered up. The same switch and the same rule cover the compiled
    solves of the solvers' host path (``conflict_opt.solvers._host``).
    """
    if _env_flag(NATIVE_DISABLE_ENV):
        return f"they are disabled by {NATIVE_DISABLE_ENV}={os.environ[NATIVE_DISABLE_ENV]}"
    if _native is None:
        where = "" if _NATIVE_BUILT else " (not built on Windows)"
        return f"conflict_opt._native is not importable{where}: {_NATIVE_IMPORT_ERROR}"
    return None


def _use_native(device: torch.device) -> bool:
    """Whether the torch backend runs CPU float32/float64/bfloat16 work natively; raises for a
    broken install (the extension should be there but is not), naming the way out."""
    if device.type != "cpu" or _env_flag(NATIVE_DISABLE_ENV):
        return False
    if _native is not None:
        return True
    if _NATIVE_BUILT:
        raise RuntimeError(
            f"the torch backend's CPU kernels are missing: {native_unavailable()}. Reinstall "
            f"conflict-opt with a C compiler available, or set {NATIVE_DISABLE_ENV}=1 to run on "
            "torch ops."
        )
    return False


def _select(backend: str, device: torch.device) -> str:
    if backend not in PRIMITIVE_BACKENDS:
        raise ValueError(f"`backend` must be one of {PRIMITIVE_BACKENDS}, got backend={backend!r}.")
    if backend == "auto":
        if device.type == "cuda" and triton_unavailable(device) is None:
            return "triton"
        return "torch"
    if backend == "triton":
        reason = triton_unavailable(device)
        if reason is not None:
            raise RuntimeError(f"backend='triton' was requested but {reason}.")
    return backend


def gram(
    grads: GradsLike,
    *,
    backend: PrimitiveBackend = "auto",
    accumulate_dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    r"""Gram matrix H_ij = ⟨g_i, g_j⟩ of K gradients, each spread over many tensors.

    Args:
        grads: K sequences of tensors, ``grads[k][t]`` being objective k's gradient of
            parameter t (same shape and dtype across objectives; ``None`` means zero), or one
            ``[K, P]`` tensor. float16, bfloat16, float32 or float64.
        backend: ``"auto"``, ``"reference"``, ``"torch"`` or ``"triton"`` (module docstring).
        accumulate_dtype: ``torch.float64`` (default) or ``torch.float32``: the dtype of the
            result and of the accumulation across blocks.

    Returns:
        ``[K, K]`` symmetric tensor of ``accumulate_dtype`` on the gradients' device (CPU when
        every gradient is None). NaN and Inf in a gradient propagate to its row and column.

    Raises:
        ValueError: malformed ``grads`` (shapes, dtypes, devices, counts; the message names the
            offending entry), an unknown backend or an ``accumulate_dtype`` below float32.
        RuntimeError: ``backend="triton"`` where it cannot run (the message says why).

    Example:
        >>> import torch, conflict_opt
        >>> g1 = [torch.tensor([1.0, 0.0]), torch.tensor([[2.0]])]   # objective 1, 2 params
        >>> g2 = [torch.tensor([0.0, 3.0]), None]                    # objective 2 misses one
        >>> conflict_opt.gram([g1, g2])
        tensor([[5., 0.],
                [0., 9.]], dtype=torch.float64)
    """
    if accumulate_dtype not in _ACCUMULATE_DTYPES:
        raise ValueError(
            "`accumulate_dtype` must be torch.float32 or torch.float64 (accumulation is at "
            f"least float32), got accumulate_dtype={accumulate_dtype}."
        )
    return _gram_grads(as_grads(grads), backend, accumulate_dtype)


def _gram_grads(g: Grads, backend: str, accumulate_dtype: torch.dtype) -> torch.Tensor:
    """:func:`gram` of already validated gradients (``MultiObjectiveOptimizer`` builds its
    :class:`Grads` from autograd's output, whose shapes, dtypes and device autograd checked)."""
    chosen = _select(backend, g.device)
    with torch.no_grad():  # the gradients are data here, whatever their requires_grad
        if chosen == "reference":
            return _gram_reference(g).to(accumulate_dtype)
        if chosen == "torch":
            return _gram_torch(g, accumulate_dtype)
        from .kernels import multi_tensor

        return multi_tensor.gram(g, accumulate_dtype)


def combine_(
    out: OutLike,
    grads: GradsLike,
    coeffs: torch.Tensor | Sequence[float],
    *,
    backend: PrimitiveBackend = "auto",
    accumulate: bool = False,
) -> OutLike:
    r"""Write Σ_k coeffs_k · grads_k into ``out`` in place (``out +=`` with ``accumulate=True``).

    Args:
        out: one tensor per parameter (e.g. the parameters' ``.grad``) matching ``grads``'
            shapes, or a ``[P]`` tensor when ``grads`` is one ``[K, P]`` tensor. Any of the four
            float dtypes, independently of the gradients'. Never None: a parameter that no
            objective reaches needs an output too. ``out[t]`` may be one of parameter t's own
            gradient tensors (each block is read before it is written) but must not partially
            overlap one. It may share memory with another parameter's gradients (be one of
            them, or a view of their storage): such an output is written through a temporary
            once every gradient is read (one copy of it more), so the result is the one of
            separate outputs. Two outputs must not overlap each other.
        grads: as for :func:`gram`; ``None`` means zero. A parameter with no gradient in any
            objective gets zeros (or is left as is with ``accumulate=True``).
        coeffs: ``[K]`` coefficients (e.g. ``SolveResult.coeffs``): a sequence of K real
            numbers or a ``[K]`` tensor of any integer or floating dtype (not bool), on any
            device; they are moved, never read on the host. NaN and Inf are allowed.
        backend: ``"auto"``, ``"reference"``, ``"torch"`` or ``"triton"`` (module docstring).
        accumulate: add to ``out`` instead of overwriting it.

    Returns:
        ``out``. The sum is formed in float32 (float64 when a gradient or the output is
        float64) and rounded once to ``out``'s dtype. NaN and Inf propagate.

    Raises:
        ValueError: malformed ``grads``, ``out`` or ``coeffs`` (the message names the entry
            or the value), or an unknown backend. ``out`` is then untouched.
        RuntimeError: ``backend="triton"`` where it cannot run (the message says why).

    Example:
        >>> import torch, conflict_opt
        >>> params = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))]
        >>> g1 = [torch.tensor([1.0, 2.0]), torch.tensor([1.0])]
        >>> g2 = [torch.tensor([3.0, 4.0]), None]
        >>> for p in params:
        ...     p.grad = torch.empty_like(p)
        >>> _ = conflict_opt.combine_([p.grad for p in params], [g1, g2], [0.5, 0.25])
        >>> [p.grad.tolist() for p in params]
        [[1.25, 2.0], [0.5]]
    """
    if not isinstance(accumulate, bool):
        raise ValueError(f"`accumulate` must be a bool, got accumulate={accumulate!r}.")
    g = as_grads(grads)
    _combine_grads(_as_out(out, g), g, coeffs, backend, accumulate)
    return out


def _combine_grads(
    outs: tuple[torch.Tensor, ...],
    g: Grads,
    coeffs: torch.Tensor | Sequence[float],
    backend: str,
    accumulate: bool,
    aliases: bool = True,
) -> None:
    """:func:`combine_` of already validated gradients and outputs (see :func:`_gram_grads`;
    ``MultiObjectiveOptimizer`` writes into ``.grad``, whose shape, dtype and device torch
    itself keeps equal to the parameter's). ``aliases=False`` skips the search for outputs in
    another slot's gradients: for callers whose gradients are autograd's fresh tensors, which
    no ``.grad`` shares (the wrapper), where it would cost a storage lookup per tensor."""
    reached = any(d is not None for d in g.dtypes)
    device = g.device if reached or not outs else outs[0].device
    if outs:
        a = _coeffs(coeffs, g.k, device)
    else:
        _check_coeffs(coeffs, g.k)  # nothing to write, and nothing moved, but bad input raises
        a = torch.zeros(g.k, dtype=torch.float64)
    chosen = _select(backend, device)
    with torch.no_grad():  # the gradients are data here, whatever their requires_grad
        if chosen == "reference":
            # It reads every gradient (into its float64 copy) before it writes any output.
            _combine_reference(outs, g, a, accumulate)
            return
        # The other backends read a slot's gradients as they write its output, so an output in
        # the memory of another slot's gradients could be written before that slot is read:
        # such outputs are written through a temporary, copied in once everything is read.
        staged = _cross_slot_aliases(outs, g) if aliases else []
        work = outs
        if staged:
            work = list(outs)
            for t in staged:
                o = outs[t]
                work[t] = (
                    o.clone(memory_format=torch.contiguous_format)
                    if accumulate
                    else torch.empty_like(o, memory_format=torch.contiguous_format)
                )
            work = tuple(work)
        if chosen == "torch":
            _combine_torch(work, g, a, accumulate)
        else:
            from .kernels import multi_tensor

            multi_tensor.combine_(work, g, a, accumulate)
        for t in staged:
            outs[t].copy_(work[t])


_untyped_storage = torch.Tensor.untyped_storage
_storage_ptr = torch.UntypedStorage.data_ptr
_is_present = functools.partial(operator.is_not, None)


@functools.lru_cache(maxsize=8)
def _slot_ids(slots: int, k: int) -> tuple[int, ...]:
    """The slot of each of the ``slots`` × ``k`` gradients in slot-major order."""
    return tuple(itertools.chain.from_iterable(map(itertools.repeat, range(slots), [k] * slots)))


def _cross_slot_aliases(outs: tuple[torch.Tensor, ...], g: Grads) -> list[int]:
    """The slots, in order, whose output shares memory with a gradient of another slot.

    An output that shares memory only with its own slot's gradients is not listed: each
    backend reads a slot's blocks before writing them, and finds a partial overlap itself.
    The common case, no output in a gradient's storage, takes one set of storage addresses
    built list-at-a-time (C-level ``map``: no Python frame per tensor; this runs for every
    tensor of every objective at every call). Otherwise outputs whose storage holds another
    slot's gradient (views of one buffer, or that very tensor) are checked on their bytes.
    """
    if len(outs) < 2:  # one slot, or the [K, P] form
        return []
    out_keys = list(map(_storage_ptr, map(_untyped_storage, outs)))
    tensors: Sequence[torch.Tensor | None] = list(itertools.chain.from_iterable(g.slots))
    ids: Sequence[int] = _slot_ids(len(outs), g.k)
    try:
        keys = list(map(_storage_ptr, map(_untyped_storage, tensors)))
    except TypeError:  # absent gradients (None): without them
        present = filter(_is_present, tensors)
        if set(out_keys).isdisjoint(map(_storage_ptr, map(_untyped_storage, present))):
            return []
        pairs = [(x, t) for x, t in zip(tensors, ids, strict=True) if x is not None]
        tensors, ids = [x for x, _ in pairs], [t for _, t in pairs]
        keys = list(map(_storage_ptr, map(_untyped_storage, tensors)))
    if set(out_keys).isdisjoint(keys):
        return []  # outputs of their own, as .grad usually is
    # Storage -> the first and last slot with a gradient in it (``ids`` is in slot order): an
    # output whose storage has neither, or only its own slot for both, is fine. Where every
    # gradient has a storage of its own (autograd's), first and last are one.
    slots = range(len(outs))
    by_key = dict(zip(keys, ids, strict=True))
    last = list(map(by_key.get, out_keys, slots))
    if len(by_key) < len(keys):
        by_key = dict(zip(reversed(keys), reversed(ids), strict=True))
    first = list(map(by_key.get, out_keys, slots))
    if first == last == list(slots):
        return []  # each output shares a storage with its own slot's gradients only
    suspects = [t for t in slots if first[t] != t or last[t] != t]
    # The gradients in the suspects' storages, by start address, with the highest end
    # address so far: an output then meets only the gradients that start before its end and
    # reach past its start, found by bisection.
    wanted = {out_keys[t] for t in suspects}
    spans: dict[int, list[tuple[int, int, int]]] = {}
    for key, t, x in zip(keys, ids, tensors, strict=True):
        if key in wanted:
            lo, hi = _byte_span(x)
            if hi > lo:
                spans.setdefault(key, []).append((lo, hi, t))
    sorted_spans = {}
    for key, found in spans.items():
        found.sort()
        reach = list(itertools.accumulate((s[1] for s in found), max))
        sorted_spans[key] = ([s[0] for s in found], reach, found)
    staged = []
    for t in suspects:
        if out_keys[t] not in sorted_spans:
            continue
        starts, reach, found = sorted_spans[out_keys[t]]
        lo, hi = _byte_span(outs[t])
        j = bisect.bisect_left(starts, hi) - 1
        while j >= 0 and reach[j] > lo:
            if found[j][1] > lo and found[j][2] != t:
                staged.append(t)
                break
            j -= 1
    return staged


def _byte_span(x: torch.Tensor) -> tuple[int, int]:
    """The addresses ``[lo, hi)`` that ``x``'s elements lie within (empty for no elements):
    every byte ``x`` reads or writes is in it, though not every byte in it is ``x``'s (a
    strided view skips some), so that two spans that meet may still share no element."""
    if x.numel() == 0:
        return 0, 0
    last = sum((n - 1) * s for n, s in zip(x.shape, x.stride(), strict=True))
    lo = x.data_ptr()
    return lo, lo + (last + 1) * x.element_size()


# ----------------------------------------------------------------------------------- reference


def _flat64(g: Grads) -> torch.Tensor:
    """The K×P float64 matrix J of ``g`` (None → zeros)."""
    rows = []
    for k in range(g.k):
        parts = [
            torch.zeros(n, dtype=torch.float64, device=g.device)
            if slot[k] is None
            else slot[k].reshape(-1).to(torch.float64)
            for slot, n in zip(g.slots, g.numels, strict=True)
        ]
        rows.append(torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64))
    return torch.stack(rows).to(g.device)


def _gram_reference(g: Grads) -> torch.Tensor:
    # Memory traffic: reads the K·P inputs, writes a K×P float64 copy (2× the bytes of float32
    # inputs, 4× of 16-bit ones) and reads it back in J Jᵀ: about 5× the minimum for float32.
    # Simple and exact to float64 round-off: the oracle the other backends are tested against.
    j = _flat64(g)
    h = j @ j.T
    return h.triu() + h.triu(1).T  # BLAS need not return an exactly symmetric product


def _combine_reference(
    outs: tuple[torch.Tensor, ...], g: Grads, a: torch.Tensor, accumulate: bool
) -> None:
    # Memory traffic: as _gram_reference for J, plus a float64 [P] result and one pass per out.
    total = a.to(g.device) @ _flat64(g)
    offset = 0
    for t, (o, n) in enumerate(zip(outs, g.numels, strict=True)):
        if g.dtypes[t] is None:
            if not accumulate:
                o.zero_()
            continue
        part = total[offset : offset + n].reshape(o.shape)
        offset += n
        if accumulate:
            o.copy_(o.to(torch.float64) + part)
        else:
            o.copy_(part)


# --------------------------------------------------------------------------------------- torch


def _compute_dtype(*dtypes: torch.dtype | None) -> torch.dtype:
    return torch.float64 if torch.float64 in dtypes else torch.float32


def _flat(t: torch.Tensor) -> torch.Tensor:
    # A copy only for a non-contiguous tensor (one tensor at a time, never K×P).
    return t.reshape(-1)


@dataclass
class _Block:
    """Consecutive pieces of the parameter list that form one block of the torch path."""

    pieces: list[tuple[int, int, int]]  # (slot, start, length)
    dtype: torch.dtype  # compute dtype
    staged: bool  # packed into a staging buffer (small tensors, or a 16-bit slice)


def _blocks(g: Grads, extra_dtype: Sequence[torch.dtype | None] | None = None) -> list[_Block]:
    """Split the slots into blocks of at most _BLOCK_VALUES / K values per objective."""
    per = max(1, min(_MAX_SLICE, _BLOCK_VALUES // g.k))
    blocks: list[_Block] = []
    open_: dict[torch.dtype, tuple[_Block, int]] = {}
    for t, (dtype, n) in enumerate(zip(g.dtypes, g.numels, strict=True)):
        if n == 0:
            continue
        other = None if extra_dtype is None else extra_dtype[t]
        cdt = _compute_dtype(dtype, other)
        if n >= min(_IN_PLACE, per):
            # Big tensor: its own slices; a native slice is used in place, a 16-bit one staged.
            for start in range(0, n, per):
                blocks.append(_Block([(t, start, min(per, n - start))], cdt, dtype != cdt))
            continue
        block, used = open_.get(cdt, (None, 0))
        if block is None or used + n > per:
            block, used = _Block([], cdt, True), 0
            blocks.append(block)
        block.pieces.append((t, 0, n))
        open_[cdt] = (block, used + n)
    return blocks


class _Staging:
    """Reusable ``[K, per]`` buffers of each compute dtype, plus a zero row for absent pieces."""

    def __init__(self, k: int, device: torch.device) -> None:
        self.k, self.device = k, device
        self._buffers: dict[torch.dtype, torch.Tensor] = {}
        self._zero_rows: dict[torch.dtype, torch.Tensor] = {}
        self._results: dict[torch.dtype, torch.Tensor] = {}

    def fill(
        self, flats: list[tuple[torch.Tensor | None, ...]], block: _Block
    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """The block's K rows in its compute dtype, and the ``[K, n]`` matrix when staged.

        A native slice of one big tensor is used in place; anything else is copied once into
        the staging buffer. Absent gradients are rows of zeros, so that a NaN elsewhere still
        meets them as NaN · 0 = NaN, as in the reference.
        """
        n = sum(length for _, _, length in block.pieces)
        if not block.staged:
            (t, start, length) = block.pieces[0]
            return [
                self._zeros(block.dtype, n) if f is None else f[start : start + length]
                for f in flats[t]
            ], None
        matrix = self._buffer(block.dtype, n)
        for k in range(self.k):
            parts = [
                self._zeros(block.dtype, length)
                if flats[t][k] is None
                else flats[t][k][start : start + length]
                for t, start, length in block.pieces
            ]
            if len(parts) == 1:
                matrix[k].copy_(parts[0])
            else:
                torch.cat(parts, out=matrix[k])
        return list(matrix.unbind(0)), matrix

    def _buffer(self, dtype: torch.dtype, n: int) -> torch.Tensor:
        have = self._buffers.get(dtype)
        if have is None or have.shape[1] < n:
            have = torch.empty(self.k, n, dtype=dtype, device=self.device)
            self._buffers[dtype] = have
        return have[:, :n]

    def result(self, dtype: torch.dtype, n: int) -> torch.Tensor:
        """A reusable ``[n]`` output row: a fresh multi-MiB tensor per block would cost page
        faults on every call (the allocator returns big blocks to the OS)."""
        have = self._results.get(dtype)
        if have is None or have.shape[0] < n:
            have = torch.empty(n, dtype=dtype, device=self.device)
            self._results[dtype] = have
        return have[:n]

    def _zeros(self, dtype: torch.dtype, n: int) -> torch.Tensor:
        have = self._zero_rows.get(dtype)
        if have is None or have.shape[0] < n:
            have = torch.zeros(n, dtype=dtype, device=self.device)
            self._zero_rows[dtype] = have
        return have[:n]


def _flats(g: Grads) -> list[tuple[torch.Tensor | None, ...]]:
    return [tuple(None if x is None else _flat(x) for x in slot) for slot in g.slots]


def _subset(g: Grads, slots: list[int]) -> Grads:
    """``g`` restricted to the given parameter slots."""
    return dataclasses.replace(
        g,
        slots=tuple(g.slots[t] for t in slots),
        shapes=tuple(g.shapes[t] for t in slots),
        dtypes=tuple(g.dtypes[t] for t in slots),
    )


def _native_threads(values: int) -> int:
    return max(1, min(torch.get_num_threads(), values // _NATIVE_PER_THREAD))


def _native_rows(g: Grads, slots: list[int]) -> tuple[list[int], list[int], list[torch.Tensor]]:
    """Data pointers (0 for None) and lengths of the given slots, piece-major, and the flat
    tensors that must stay alive while the kernel reads them (a non-contiguous tensor is
    copied, one at a time)."""
    numels = g.numels
    # The common case list-at-a-time (C-level map: no Python frame per tensor): every tensor
    # present and contiguous. None is refused by the unbound method (TypeError) and takes the
    # loop below.
    tensors = list(itertools.chain.from_iterable(g.slots[t] for t in slots))
    try:
        if all(map(_is_contiguous, tensors)):
            return list(map(_data_ptr, tensors)), [numels[t] for t in slots], []
    except TypeError:
        pass
    ptrs: list[int] = []
    lens: list[int] = []
    keep: list[torch.Tensor] = []
    for t in slots:
        lens.append(numels[t])
        for x in g.slots[t]:
            if x is None:
                ptrs.append(0)
            elif x.is_contiguous():
                ptrs.append(x.data_ptr())
            else:
                flat = x.contiguous()  # a copy of one strided tensor
                keep.append(flat)
                ptrs.append(flat.data_ptr())
    return ptrs, lens, keep


def _gram_native(g: Grads, slots: list[int], dtype: torch.dtype) -> torch.Tensor:
    """The float64 Gram of the given slots (all of ``dtype``), natively."""
    ptrs, lens, keep = _native_rows(g, slots)
    values = _native.gram(g.k, ptrs, lens, _NATIVE_KIND[dtype], _native_threads(sum(lens) * g.k))
    del keep
    return _gram_tensor(values, g.k)


def _gram_tensor(values: list[float], k: int) -> torch.Tensor:
    """The ``[K, K]`` float64 Gram from the kernels' K·K values."""
    return torch.tensor(values, dtype=torch.float64).view(k, k)


def _native_split(
    g: Grads, out_dtypes: Sequence[torch.dtype | None] | None = None
) -> tuple[dict[tuple[torch.dtype, torch.dtype | None], list[int]], list[int], list[int]]:
    """Slots for the native kernels, by (gradient dtype, output dtype); the other non-empty
    slots, for torch ops; and the empty or all-None slots (nothing to read: the Gram skips
    them, the combination zeroes their outputs). ``out_dtypes``: the combination's output
    dtype per slot, None for an output the kernels cannot write; omitted for the Gram."""
    native: dict[tuple[torch.dtype, torch.dtype | None], list[int]] = {}
    rest: list[int] = []
    empty: list[int] = []
    for t, (dtype, n) in enumerate(zip(g.dtypes, g.numels, strict=True)):
        if dtype is None or n == 0:
            empty.append(t)
            continue
        out = None if out_dtypes is None else out_dtypes[t]
        if dtype in _NATIVE_KIND and (out_dtypes is None or out is not None):
            native.setdefault((dtype, out), []).append(t)
        else:
            rest.append(t)
    return native, rest, empty


def _gram_torch(g: Grads, accumulate_dtype: torch.dtype) -> torch.Tensor:
    if not _use_native(g.device):
        return _gram_torch_ops(g, accumulate_dtype)
    native, rest, _ = _native_split(g)
    # One part per gradient dtype (usually one in all, returned as it is) plus the torch-ops rest.
    parts = [_gram_native(g, slots, dtype) for (dtype, _), slots in native.items()]
    if rest:
        parts.append(_gram_torch_ops(_subset(g, rest), torch.float64))
    if not parts:  # nothing to read: every slot empty or None
        return torch.zeros(g.k, g.k, dtype=accumulate_dtype)
    return sum(parts[1:], parts[0]).to(accumulate_dtype)


def _gram_torch_ops(g: Grads, accumulate_dtype: torch.dtype) -> torch.Tensor:
    k = g.k
    pairs = [(i, j) for i in range(k) for j in range(i, k)]
    flats = _flats(g)
    staging = _Staging(k, g.device)
    sums = []
    for block in _blocks(g):
        rows, _ = staging.fill(flats, block)
        # One triangle: K(K+1)/2 dot products over cache-resident rows.
        sums.append(torch.stack([torch.dot(rows[i], rows[j]) for i, j in pairs]))
    out = torch.zeros(k, k, dtype=accumulate_dtype, device=g.device)
    if sums:
        upper = torch.stack(sums).to(accumulate_dtype).sum(0)
        rows_idx, cols_idx = torch.triu_indices(k, k, device=g.device)
        out[rows_idx, cols_idx] = upper
        out[cols_idx, rows_idx] = upper
    return out


def _direct_target(
    work: list[torch.Tensor], block: _Block, rows: list[torch.Tensor]
) -> torch.Tensor | None:
    """The output slice of an unstaged single-piece block, if it can be written directly: the
    output has the compute dtype (one rounding, as through the result row) and shares no
    storage with the gradients it combines (``out`` may be one of them)."""
    if len(block.pieces) != 1:
        return None
    t, start, length = block.pieces[0]
    out = work[t]
    if out.dtype != block.dtype or any(r.dtype != block.dtype for r in rows):
        return None
    ptr = out.untyped_storage().data_ptr()
    if any(r.untyped_storage().data_ptr() == ptr for r in rows):
        return None
    return out.view(-1)[start : start + length]


def _add_scaled(dst: torch.Tensor, rows: list[torch.Tensor], scale: list, start: int) -> None:
    """dst += Σ_{i ≥ start} scale_i · rows[i]: a Python-float scale as ``add_``'s alpha (one
    fused pass), a 0-dim tensor through ``addcmul_`` (nothing read to the host)."""
    for i in range(start, len(rows)):
        if isinstance(scale[i], float):
            dst.add_(rows[i], alpha=scale[i])
        else:
            dst.addcmul_(rows[i], scale[i])


def _combine_native(
    outs: tuple[torch.Tensor, ...],
    g: Grads,
    slots: list[int],
    dtypes: tuple[torch.dtype, torch.dtype],
    coeffs: list[float],
    accumulate: bool,
) -> list[int]:
    """Write the given slots natively (gradients and outputs of ``dtypes``); returns those left
    unwritten because their output partially overlaps one of their gradients (checked by the
    kernel, on the pointers)."""
    work, stream, keep = _native_combine_work(outs, g, slots, dtypes)
    skipped = _native.combine(*work, coeffs, accumulate, stream)
    del keep
    return [slots[i] for i in skipped]


def _native_combine_work(
    outs: tuple[torch.Tensor, ...],
    g: Grads,
    slots: list[int],
    dtypes: tuple[torch.dtype, torch.dtype],
) -> tuple[tuple, bool, list[torch.Tensor]]:
    """The leading arguments that ``_native.combine`` and ``_native.step`` share (k, rows,
    lens, kind, threads, outs, out_kind) for the given slots, whether to write with
    non-temporal stores, and the flat copies that must stay alive during the call."""
    dtype, out_dtype = dtypes
    ptrs, lens, keep = _native_rows(g, slots)
    out_kind = _NATIVE_KIND[out_dtype]
    threads, stream = _native_pass(sum(lens), g.k, out_kind)
    work = (
        g.k,
        ptrs,
        lens,
        _NATIVE_KIND[dtype],
        threads,
        [outs[t].data_ptr() for t in slots],
        out_kind,
    )
    return work, stream, keep


def _native_pass(values: int, k: int, out_kind: int) -> tuple[int, bool]:
    """Threads for a native pass that reads K rows of ``values`` values each and writes one
    output of ``out_kind``, and whether to write that output with non-temporal stores."""
    return _native_threads(values * (k + 1)), values * _KIND_BYTES[out_kind] >= _NATIVE_STREAM_BYTES


def _step_native(
    outs: tuple[torch.Tensor, ...],
    g: Grads,
    weights: list[float],
    options: tuple,
    accumulate: bool,
    exclusive: bool = True,
) -> tuple[list[float], tuple | None] | None:
    """Gram, host solve and combination of ``g`` into ``outs`` in one native call
    (``conflict_opt._native.step``), or ``None`` where it does not apply: not on CPU, the
    kernels off, gradients and outputs not all of one natively written dtype pair, or an
    output in memory it does not own with ``exclusive``: partly in one of its gradients, in
    another slot's gradient or in another output (then nothing was read or written).
    ``exclusive=False`` (the wrapper, whose gradients are autograd's fresh tensors) skips that
    check: outputs partly overlapping their own gradients are then skipped by the kernel and
    written on torch ops here.

    Returns the K·K Gram values and the solve's (coeffs, dual, clipped, gap, pieces); the
    latter ``None`` where the C solve hands the problem back (``options`` as
    :func:`conflict_opt.solvers._host.native_options`), and then nothing was written: the
    caller solves the Gram its own way and combines. The Gram is the one :func:`gram` returns
    on the same gradients (same kernel, same summation order), the combination the one
    :func:`combine_` writes with the returned coefficients.
    """
    if not _use_native(g.device) or g.k > _native.HOST_MAX_K:
        return None
    out_dtypes = [_native_out_dtype(o, d) for o, d in zip(outs, g.dtypes, strict=True)]
    native, rest, empty = _native_split(g, out_dtypes)
    if rest or len(native) != 1 or any(g.numels[t] for t in empty):
        return None
    ((dtypes, slots),) = native.items()
    work, stream, keep = _native_combine_work(outs, g, slots, dtypes)
    # exclusive: the kernel checks, on the pointers, that no output overlaps any memory but
    # its own gradients where it is exactly one of them. Another slot's gradient may be read
    # after the output is written (the combination is then :func:`combine_`'s, which writes
    # such outputs through temporaries), and a partial overlap would be skipped.
    done = _native.step(*work, accumulate, stream, weights, options, exclusive)
    del keep
    if done is None:
        return None  # nothing read or written: the caller takes the general path
    gram, answer, skipped = done
    if skipped:
        # Outputs that partially overlap their own gradients: written on torch ops instead.
        rest = [slots[i] for i in skipped]
        a = torch.tensor(answer[0], dtype=torch.float64)
        _combine_torch_ops(tuple(outs[t] for t in rest), _subset(g, rest), a, accumulate)
    return gram, answer


def _step_store(
    params: list[torch.Tensor],
    grads: list[list[torch.Tensor | None]],
    store_dtype: torch.dtype | None,
    weights: list[float],
    options: tuple,
    steal: bool = True,
) -> tuple[list[float], tuple | None, list[tuple[torch.Tensor, torch.Tensor]]] | None:
    """:func:`_step_native` for ``MultiObjectiveOptimizer``'s own store, overwriting ``.grad``:
    what ``_own_grads``, ``_outputs`` and :func:`_step_native` find out in some ten passes
    over the K×T tensors, in one.

    It relies on what the wrapper's store guarantees (autograd gives every gradient its
    parameter's shape, dtype and device, or ``store_dtype``; accumulation sums like tensors) and
    checks the rest: CPU parameters, one natively read dtype, contiguous gradients and
    ``.grad``, one output dtype. A parameter without ``.grad`` gets one of its own gradient
    tensors where no other tensor object holds it (:func:`_sole_owner`), else a fresh one.
    Whether an output overlaps another parameter's gradients (autograd may hand one tensor to
    several parameters) is checked by the kernel on the pointers (``exclusive``), for all of
    them at once. Where anything does not hold, returns ``None`` with nothing read or written,
    and the caller takes the general path.

    Returns the K·K Gram values, the solve's answer (``None`` where the C solve hands the
    problem back, and then nothing was written) and the (parameter, tensor) pairs still to be
    assigned as ``.grad``. ``steal=False``: every missing ``.grad`` is a fresh tensor (the
    store's tensors are views of a larger buffer, which a ``.grad`` would keep alive).
    """
    if _native is None or len(grads) > _native.HOST_MAX_K or not _use_native(_CPU):
        return None
    # One loop of as few calls as the checks allow: it runs between the backward passes and
    # the inner step, with the interpreter's code and data evicted from the caches, where each
    # call costs several times what it does in a loop (docs/optimizer.md, "Where the overhead
    # goes").
    kind = out_kind = -1
    ptrs: list[int] = []
    lens: list[int] = []
    out_ptrs: list[int] = []
    fresh: list[tuple[torch.Tensor, torch.Tensor]] = []
    kinds = _NATIVE_KIND
    for p, *slot in zip(params, *grads, strict=True):
        out = p.grad
        take = steal and out is None and (store_dtype is None or store_dtype == p.dtype)
        row = []
        reached = False
        for x in slot:
            if x is None:
                row.append(0)
                continue
            if not x.is_contiguous():
                return None
            if take and _sole_owner(x):
                out, take = x, False
                fresh.append((p, x))
            row.append(x.data_ptr())  # 0 for a zero-size tensor too: no value is read
            reached = True
        if not reached:
            continue  # no objective reaches p: its .grad stays as it is
        if not p.is_cpu:
            return None
        row_kind = kinds.get(p.dtype if store_dtype is None else store_dtype, -1)
        if row_kind != kind:
            if kind != -1 or row_kind == -1:
                return None
            kind = row_kind
        if out is None:
            out = torch.empty_like(p)
            fresh.append((p, out))
        elif not out.is_contiguous():
            return None
        o_kind = kinds.get(out.dtype, -1)
        if o_kind != out_kind:
            if out_kind != -1 or o_kind == -1 or (o_kind == 1) != (kind == 1):
                return None
            out_kind = o_kind
        ptrs += row
        lens.append(p.numel())
        out_ptrs.append(out.data_ptr())
    if kind == -1:
        return None  # no objective reaches any parameter
    k = len(grads)
    threads, stream = _native_pass(sum(lens), k, out_kind)
    done = _native.step(
        k, ptrs, lens, kind, threads, out_ptrs, out_kind, False, stream, weights, options, True
    )
    if done is None:
        return None
    gram, answer, _ = done
    return gram, answer, fresh


_NATIVE_16_32 = (torch.float32, torch.bfloat16)


def _native_out_dtype(o: torch.Tensor, dtype: torch.dtype | None) -> torch.dtype | None:
    """The dtype in which the kernels write ``o`` for gradients of ``dtype``, or None: a
    contiguous output, float64 for float64 gradients, float32 or bfloat16 for float32 or
    bfloat16 ones (as the store of ``MultiObjectiveOptimizer(store_dtype=torch.bfloat16)``
    into float32 ``.grad``). The sum is formed in the compute dtype and rounded once."""
    if dtype is None or not o.is_contiguous():
        return None
    if o.dtype == dtype or (dtype in _NATIVE_16_32 and o.dtype in _NATIVE_16_32):
        return o.dtype
    return None


def _combine_torch(
    outs: tuple[torch.Tensor, ...], g: Grads, a: torch.Tensor, accumulate: bool
) -> None:
    if not _use_native(g.device):
        _combine_torch_ops(outs, g, a, accumulate)
        return
    # An output that is exactly one of its gradients is fine (each chunk is read before it is
    # written); a partial overlap is found and skipped by the kernel. Outputs in another
    # slot's gradients are temporaries here (_combine_grads).
    out_dtypes = [_native_out_dtype(o, d) for o, d in zip(outs, g.dtypes, strict=True)]
    native, rest, empty = _native_split(g, out_dtypes)
    if native:
        coeffs = a.tolist()  # a CPU tensor: its values are already on the host
        for dtypes, slots in native.items():
            rest += _combine_native(outs, g, slots, dtypes, coeffs, accumulate)
    # Parameters no objective reaches get zeros (or are left alone), as on torch ops.
    rest += empty
    if rest:
        _combine_torch_ops(tuple(outs[t] for t in rest), _subset(g, rest), a, accumulate)


def _combine_torch_ops(
    outs: tuple[torch.Tensor, ...], g: Grads, a: torch.Tensor, accumulate: bool
) -> None:
    # Non-contiguous outputs are written through a contiguous copy (one tensor at a time).
    work = [o if o.is_contiguous() else o.contiguous() for o in outs]
    for t, dtype in enumerate(g.dtypes):
        if dtype is None and not accumulate:
            work[t].zero_()  # no objective reaches this parameter
    flats = _flats(g)
    staging = _Staging(g.k, g.device)
    coeffs = {dt: a.to(dt) for dt in (torch.float32, torch.float64)}
    # On CPU the coefficients are read as Python floats (a CPU tensor's values are already on
    # the host), so that add_ takes them as alpha: one fused multiply-add pass, where addcmul_
    # with a 0-dim tensor broadcasts it (measured 1.9× slower on 0.6M float32 values).
    floats = a.tolist() if g.device.type == "cpu" else None
    scales = {dt: floats if floats is not None else list(c.unbind()) for dt, c in coeffs.items()}
    for block in _blocks(g, [o.dtype for o in outs]):
        rows, matrix = staging.fill(flats, block)
        a_dt, scale = coeffs[block.dtype], scales[block.dtype]
        direct = _direct_target(work, block, rows) if matrix is None else None
        if direct is not None:
            # A slice of one big tensor into an output of the compute dtype: written in place,
            # without a result row and a copy pass (one pass less over the output).
            if not accumulate:
                torch.mul(rows[0], scale[0], out=direct)
            _add_scaled(direct, rows, scale, 0 if accumulate else 1)
            continue
        total = staging.result(block.dtype, rows[0].shape[0])
        if matrix is not None:
            torch.mv(matrix.T, a_dt, out=total)  # [K] @ [K, n], from cache
        else:
            torch.mul(rows[0], scale[0], out=total)
            _add_scaled(total, rows, scale, 1)
        offset = 0
        for t, start, length in block.pieces:
            target = work[t].view(-1)[start : start + length]
            part = total[offset : offset + length]
            offset += length
            # One rounding to the output's dtype (the add itself runs in the compute dtype).
            if accumulate:
                target.add_(part)
            else:
                target.copy_(part)
    for o, w in zip(outs, work, strict=True):
        if w is not o:
            o.copy_(w)
