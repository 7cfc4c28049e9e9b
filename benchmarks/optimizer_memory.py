"""Peak memory of one training step per route (``optimizer_cases``), beyond model and batch.

Each measurement runs in a fresh subprocess: build the model, batch and route (plain SGD, no
optimizer state), read the peak resident memory (``ru_maxrss``), run one step, read it again.
The difference is the step's own peak: activations, gradients, stores, copies (``rss_probe``
fixes glibc's mmap threshold so that freed memory leaves the resident set). The targets
compare routes to ``plain`` in units of one K×P float32 store (K·P·4 bytes). CPU only. Run::

    python benchmarks/optimizer_memory.py --out /tmp/opt_memory.json
    python benchmarks/optimizer_memory.py --routes backends --out /tmp/opt_memory_backends.json

``--routes backends`` measures ``plain``, the default route and the default route with one
backend changed (``optimizer_cases.BACKEND_ROUTES``) instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rss_probe import peak_rss_bytes, run_child

ROUTES = (
    "plain",
    "ours-cagrad_clip-store",
    "ours-cagrad_clip-bf16",
    "ours-cagrad_clip-gram_first",
    "torchjd-cagrad",
    "research",
)
SETS = ("default", "backends")


def routes(which: str) -> tuple[str, ...]:
    from optimizer_cases import BACKEND_ROUTES

    if which not in SETS:
        raise ValueError(f"routes must be one of {SETS}, got {which!r}")
    return ROUTES if which == "default" else ("plain", "ours-cagrad_clip-store", *BACKEND_ROUTES)


def one(model: str, k: int, name: str) -> dict[str, object]:
    import torch
    from optimizer_cases import route, setup, threads

    torch.set_num_threads(threads())
    s = setup(model, k)
    call = route(name, s)
    if name.endswith("-exact"):
        import cvxpy  # noqa: F401  (its import, ~60 MiB, is once per process, not per step)
    before = peak_rss_bytes()
    call()
    peak = peak_rss_bytes() - before
    return {"model": model, "k": k, "route": name, "p": s.p, "peak_step_bytes": peak}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--one", nargs=3, metavar=("MODEL", "K", "ROUTE"))
    parser.add_argument("--routes", choices=SETS, default="default")
    args = parser.parse_args(argv)
    if args.one:
        model, k, name = args.one
        print(json.dumps(one(model, int(k), name)))
        return 0
    rows = []
    for model in ("mlp", "transformer", "mlp_wide"):
        for k in (2, 4):
            plain = None
            for name in routes(args.routes):
                row = run_child(__file__, model, k, name)
                store = 4 * k * row["p"]
                if name == "plain":
                    plain = row["peak_step_bytes"]
                row["kp_store_bytes"] = store
                row["above_plain_over_store"] = (row["peak_step_bytes"] - plain) / store
                rows.append(row)
                print(
                    f"{model:12s} K={k} {name:28s} peak {row['peak_step_bytes'] / 2**20:8.1f} MiB, "
                    f"above plain {row['above_plain_over_store']:+.2f} x K*P*4"
                )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
