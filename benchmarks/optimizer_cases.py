"""Models, losses and per-step routines shared by the optimizer benchmark and its memory probe.

Two locally built models with K objectives on a shared trunk (so their gradients conflict):

* ``mlp``: 128 → 512 → 512 → 512, one linear head of 16 outputs per objective, batch 256;
  objective k regresses the heads' output onto its own random target.
* ``mlp_wide``: the same at width 2,048 and batch 64 (8.7M parameters), for the memory
  probe only, where it makes gradient stores large against allocator noise.
* ``transformer``: token embedding (vocabulary 1,000, width 128), two pre-norm encoder layers
  (4 heads, feed-forward 512), one output head per objective, batch 16 × 32 tokens; objective
  k is next-token cross-entropy against its own target sequence.

A *route* is one complete training step (zero_grad, forward, backward(s), optimizer step):

* ``forward``: the forward pass alone; ``forward_backward``: forward and one backward of
  Σ w_k L_k, no step. Their difference is one backward pass.
* ``k_backward_step``: forward, K ``autograd.grad`` passes (the wrapper's own gradient
  gathering, with nothing else), then the inner step. The wrapper's overhead is its step time
  minus this.
* ``plain``: forward, ``(Σ w_k L_k).backward()``, step: ordinary scalarised training.
* ``ours-<method>-<mode>``: ``MultiObjectiveOptimizer`` (mode ``store``, ``bf16`` = store in
  bfloat16, or ``gram_first``), default backends.
* ``ours-<method>-<mode>-<backend>`` (``BACKEND_ROUTES``): the same with one backend chosen:
  ``iterative`` or ``exact`` for the solve (``backend=``; the default ``auto`` is the closed form
  for K ≤ 3 and ``iterative`` beyond), ``reference`` for the Gram and the combination
  (``primitive_backend=``; the default on CPU is ``torch``). ``triton`` is not timed on CPU,
  where it runs only in Triton's interpreter.
* ``torchjd-cagrad`` / ``torchjd-upgrad``: TorchJD 0.18's ``autojac.backward`` then
  ``jac_to_grad`` with ``CAGrad(c=0.4)`` / ``UPGrad()``.
* ``research``: the common research-code route: K gradients concatenated into a K×P matrix,
  the Gram in numpy, CAGrad's dual by scipy SLSQP as the official code solves it, the update
  split back into ``.grad``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

import conflict_opt

KS = (2, 3, 4)
THREADS_ENV = "CONFLICT_OPT_BENCH_OPTIMIZER_THREADS"


def threads() -> int:
    """torch threads for every optimizer benchmark (pytest-benchmark, memory and overhead
    probes alike, so that their figures compare): ``$CONFLICT_OPT_BENCH_OPTIMIZER_THREADS``,
    default every core."""
    return int(os.environ.get(THREADS_ENV, str(os.cpu_count() or 1)))


MODELS = ("mlp", "transformer")
C = 0.4
OURS = (
    ("cagrad_clip", "store"),
    ("cagrad_clip", "bf16"),
    ("cagrad_clip", "gram_first"),
    ("mgda", "store"),
    ("linear", "store"),
)
PEERS = ("torchjd-cagrad", "torchjd-upgrad", "research")
# The default route with one backend changed; timed by the probe's --routes backends.
BACKEND_ROUTES = (
    "ours-cagrad_clip-store-iterative",
    "ours-cagrad_clip-store-exact",
    "ours-cagrad_clip-store-reference",
)
SOLVER_BACKENDS = ("iterative", "exact")
PRIMITIVE_BACKENDS = ("reference",)
ROUTES = (
    "forward",
    "forward_backward",
    "k_backward_step",
    "plain",
    *(f"ours-{m}-{mode}" for m, mode in OURS),
    *PEERS,
)


class MLP(nn.Module):
    def __init__(self, k: int, width: int = 512) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(128, width),
            nn.GELU(),
            nn.Linear(width, width),
            nn.GELU(),
            nn.Linear(width, width),
        )
        self.heads = nn.ModuleList(nn.Linear(width, 16) for _ in range(k))

    def losses(self, batch: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        x, targets = batch
        z = self.trunk(x)
        return [(head(z) - targets[i]).pow(2).mean() for i, head in enumerate(self.heads)]


class Transformer(nn.Module):
    def __init__(self, k: int, vocab: int = 1000, width: int = 128) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        layer = nn.TransformerEncoderLayer(
            width, 4, 512, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.heads = nn.ModuleList(nn.Linear(width, vocab) for _ in range(k))

    def losses(self, batch: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        tokens, targets = batch
        z = self.encoder(self.embed(tokens))
        return [
            nn.functional.cross_entropy(head(z).flatten(0, 1), targets[i].flatten())
            for i, head in enumerate(self.heads)
        ]


@dataclass
class Setup:
    model: nn.Module
    batch: tuple[torch.Tensor, ...]
    weights: list[float]

    @property
    def params(self) -> list[torch.Tensor]:
        return [p for p in self.model.parameters() if p.requires_grad]

    @property
    def p(self) -> int:
        return sum(p.numel() for p in self.params)


def setup(model: str, k: int, seed: int = 0) -> Setup:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    if model in ("mlp", "mlp_wide"):
        # mlp_wide (width 2,048, 8.7M parameters, batch 64) is for the memory probe: its
        # gradients dwarf the allocator's noise, as a model's gradients do at scale.
        wide = model == "mlp_wide"
        net: nn.Module = MLP(k, 2048 if wide else 512)
        n = 64 if wide else 256
        batch = (torch.randn(n, 128, generator=gen), torch.randn(k, n, 16, generator=gen))
    else:
        net = Transformer(k)
        tokens = torch.randint(0, 1000, (16, 32), generator=gen)
        batch = (tokens, torch.randint(0, 1000, (k, 16, 32), generator=gen))
    weights = list(np.linspace(1.0, 2.0, k) / np.linspace(1.0, 2.0, k).sum())
    return Setup(net, batch, [float(w) for w in weights])


def route(name: str, s: Setup, lr: float = 1e-3) -> Callable[[], None]:
    """A zero-argument callable running one training step of route ``name`` on ``s``."""
    params = s.params
    inner = torch.optim.SGD(params, lr=lr)
    w = s.weights

    if name == "forward":

        def forward() -> None:
            s.model.losses(s.batch)

        return forward
    if name in ("forward_backward", "plain"):

        def plain() -> None:
            inner.zero_grad()
            sum(wk * loss for wk, loss in zip(w, s.model.losses(s.batch), strict=True)).backward()
            if name == "plain":
                inner.step()

        return plain
    if name == "k_backward_step":

        def k_backward_step() -> None:
            inner.zero_grad()
            losses = s.model.losses(s.batch)
            grads = [
                torch.autograd.grad(
                    loss, params, retain_graph=i < len(losses) - 1, allow_unused=True
                )
                for i, loss in enumerate(losses)
            ]
            for p, g in zip(params, grads[0], strict=True):
                p.grad = g
            inner.step()

        return k_backward_step
    if name.startswith("ours-"):
        _, method, mode, *rest = name.split("-")
        backend = rest[0] if rest else None
        if backend not in (None, *SOLVER_BACKENDS, *PRIMITIVE_BACKENDS):
            raise ValueError(f"unknown backend {backend!r} in route {name!r}")
        opt = conflict_opt.MultiObjectiveOptimizer(
            inner,
            w,
            method=method,
            c=C,
            backend=backend if backend in SOLVER_BACKENDS else "auto",
            primitive_backend=backend if backend in PRIMITIVE_BACKENDS else "auto",
            mode="gram_first" if mode == "gram_first" else "store",
            store_dtype=torch.bfloat16 if mode == "bf16" else None,
        )

        def ours() -> None:
            opt.zero_grad()
            opt.step(s.model.losses(s.batch))

        return ours
    if name.startswith("torchjd-"):
        from torchjd.aggregation import CAGrad, UPGrad
        from torchjd.autojac import backward, jac_to_grad

        aggregator = CAGrad(c=C) if name == "torchjd-cagrad" else UPGrad()

        def torchjd() -> None:
            inner.zero_grad()
            backward(s.model.losses(s.batch), inputs=params)
            jac_to_grad(params, aggregator)
            inner.step()

        return torchjd
    if name == "research":
        from test_bench_solvers import slsqp_cagrad

        w_np = np.asarray(w)

        def research() -> None:
            inner.zero_grad()
            losses = s.model.losses(s.batch)
            rows = []
            for i, loss in enumerate(losses):
                g = torch.autograd.grad(
                    loss, params, retain_graph=i < len(losses) - 1, allow_unused=True
                )
                rows.append(
                    torch.cat(
                        [
                            torch.zeros(p.numel()) if x is None else x.reshape(-1)
                            for p, x in zip(params, g, strict=True)
                        ]
                    )
                )
            j = torch.stack(rows)
            gram = (j @ j.T).double().numpy()
            _, coeffs, _ = slsqp_cagrad(gram, w_np, C)
            d = torch.as_tensor(coeffs, dtype=j.dtype) @ j
            for p, part in zip(params, d.split([p.numel() for p in params]), strict=True):
                p.grad = part.view_as(p)
            inner.step()

        return research
    raise ValueError(name)


@functools.cache
def param_count(model: str, k: int) -> int:
    return setup(model, k).p
