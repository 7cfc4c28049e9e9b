"""Inputs and the compared implementations of ``gram`` / ``combine_``, shared by the timing
benchmarks (``test_bench_primitives.py``) and the peak-memory probe (``primitives_memory.py``).

Shapes: one big tensor of P values per objective (P = 1M, 10M, 50M), and the parameter list
of a small transformer (``transformer``: 16 layers, width 256, vocabulary 8,000; 196 tensors,
14.8M values). Gradients are float32, the usual ``.grad`` dtype.

Providers, all on the same tensors:

* ``limit``: ``x.sum()`` over one contiguous buffer of the same K·P values: the read bandwidth.
* ``reference`` / ``torch`` / ``triton``: ``conflict_opt``'s backends (triton on CUDA only);
  on CPU ``torch`` runs the native kernels (``conflict_opt._native``) for float32.
* ``torch_ops``: the torch backend with the native kernels disabled
  (``CONFLICT_OPT_DISABLE_NATIVE=1``): its torch-ops path, which other devices take.
* ``stack``: concatenate the K gradients into one K×P matrix J, then ``J @ J.T`` / ``w @ J``
  (the common research-code route).
* ``per_param``: a loop over parameters: J_t = stack of the K gradients of tensor t, then
  ``H += J_t J_tᵀ`` / ``out_t = a @ J_t``.
* ``torchjd``: TorchJD 0.18's own per-parameter route in ``autojac.jac_to_grad``: Σ_t
  ``compute_gramian(jac_t)`` and ``tensordot(weights, jac_t)``, where jac_t is the ``[K, *shape]``
  Jacobian TorchJD stores per parameter (built outside the timing, as TorchJD holds it).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import torch

import conflict_opt
from conflict_opt import primitives

KS = (2, 3, 4, 8)
BIG = {"P1M": 1_000_000, "P10M": 10_000_000, "P50M": 50_000_000}
SHAPES = (*BIG, "transformer")


def transformer_shapes(
    layers: int = 16, width: int = 256, vocab: int = 8000
) -> list[tuple[int, ...]]:
    """Parameter shapes of a small pre-norm transformer: 196 tensors for the defaults."""
    shapes: list[tuple[int, ...]] = [(vocab, width), (512, width)]  # token + position
    for _ in range(layers):
        shapes += [(width,), (width,)]  # norm 1
        shapes += [(3 * width, width), (3 * width,), (width, width), (width,)]  # attention
        shapes += [(width,), (width,)]  # norm 2
        shapes += [(4 * width, width), (4 * width,), (width, 4 * width), (width,)]  # MLP
    shapes += [(width,), (width,)]  # final norm (the output head is tied to the embedding)
    return shapes


def shapes_of(name: str) -> list[tuple[int, ...]]:
    return [(BIG[name],)] if name in BIG else transformer_shapes()


@functools.lru_cache(maxsize=1)
def inputs(k: int, name: str, device: str = "cpu") -> tuple[list[list[torch.Tensor]], int]:
    """K objectives' float32 gradients (one list per objective) and P. One set is cached."""
    gen = torch.Generator().manual_seed(1000 * k + len(name))
    shapes = shapes_of(name)
    grads = [[torch.randn(s, generator=gen).to(device) for s in shapes] for _ in range(k)]
    return grads, sum(torch.Size(s).numel() for s in shapes)


def _torch_ops(call: Callable[[], object]) -> Callable[[], object]:
    """``call`` with the native CPU kernels disabled: the torch backend's torch-ops path."""

    def without_native() -> object:
        os.environ[primitives.NATIVE_DISABLE_ENV] = "1"
        try:
            return call()
        finally:
            del os.environ[primitives.NATIVE_DISABLE_ENV]

    return without_native


def _limit(grads: list[list[torch.Tensor]], p: int) -> Callable[[], object]:
    buf = torch.randn(len(grads) * p, device=grads[0][0].device)
    return buf.sum


def gram_call(provider: str, grads: list[list[torch.Tensor]], p: int) -> Callable[[], object]:
    """A zero-argument callable computing the Gram with ``provider`` (inputs bound)."""
    if provider == "limit":
        return _limit(grads, p)
    if provider in ("reference", "torch", "triton"):
        return functools.partial(conflict_opt.gram, grads, backend=provider)
    if provider == "torch_ops":
        return _torch_ops(functools.partial(conflict_opt.gram, grads, backend="torch"))
    k = len(grads)
    if provider == "stack":

        def stack() -> torch.Tensor:
            j = torch.stack([torch.cat([g.reshape(-1) for g in row]) for row in grads])
            return j @ j.T

        return stack
    if provider == "per_param":

        def per_param() -> torch.Tensor:
            h = torch.zeros(k, k, dtype=torch.float64, device=grads[0][0].device)
            for t in range(len(grads[0])):
                jt = torch.stack([grads[i][t].reshape(-1) for i in range(k)])
                h += jt @ jt.T
            return h

        return per_param
    if provider == "torchjd":
        from torchjd._linalg import compute_gramian

        jacs = [torch.stack([grads[i][t] for i in range(k)]) for t in range(len(grads[0]))]

        def torchjd() -> torch.Tensor:
            return sum(compute_gramian(j) for j in jacs)

        return torchjd
    raise ValueError(provider)


def combine_call(provider: str, grads: list[list[torch.Tensor]], p: int) -> Callable[[], object]:
    """A zero-argument callable writing Σ a_k g_k into preallocated outputs with ``provider``."""
    if provider == "limit":
        return _limit(grads, p)
    k = len(grads)
    device = grads[0][0].device
    a = torch.linspace(0.1, 0.9, k, device=device)
    # Written once here, so that the timed (and memory-probed) call finds its pages mapped.
    outs = [torch.empty_like(g).fill_(0.0) for g in grads[0]]
    if provider in ("reference", "torch", "triton"):
        return functools.partial(conflict_opt.combine_, outs, grads, a, backend=provider)
    if provider == "torch_ops":
        return _torch_ops(functools.partial(conflict_opt.combine_, outs, grads, a, backend="torch"))
    if provider == "stack":

        def stack() -> None:
            j = torch.stack([torch.cat([g.reshape(-1) for g in row]) for row in grads])
            flat = a @ j
            for o, part in zip(outs, flat.split([o.numel() for o in outs]), strict=True):
                o.copy_(part.view_as(o))

        return stack
    if provider == "per_param":

        def per_param() -> None:
            for t, o in enumerate(outs):
                jt = torch.stack([grads[i][t].reshape(-1) for i in range(k)])
                o.copy_((a @ jt).view_as(o))

        return per_param
    if provider == "torchjd":
        jacs = [torch.stack([grads[i][t] for i in range(k)]) for t in range(len(grads[0]))]

        def torchjd() -> None:
            for o, j in zip(outs, jacs, strict=True):
                o.copy_(torch.tensordot(a.to(j.dtype), j, dims=1))

        return torchjd
    raise ValueError(provider)


def gram_bytes(k: int, p: int) -> int:
    """Least memory traffic of the Gram: one read of K·P float32 values."""
    return 4 * k * p


def combine_bytes(k: int, p: int) -> int:
    """Least memory traffic of the combination: K·P reads and P writes of float32."""
    return 4 * (k + 1) * p
