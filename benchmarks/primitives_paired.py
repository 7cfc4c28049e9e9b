"""The bandwidth targets of the primitives, timed round-robin against the read limit.

The target "the torch path ≥ 0.8× the read-bandwidth limit" is a ratio of two providers.
pytest-benchmark (``test_bench_primitives.py``) times each provider in its own block of
rounds, and on the shared benchmark VM the memory bandwidth itself changes between blocks: in
one run the ``limit`` read 29 to 35 GB/s in most blocks and 43 to 62 GB/s in a few, and a
ratio taken across two blocks then measures the machine rather than the kernel. Here every
round calls ``limit``, ``torch`` and ``torch_ops`` once each, in alternating order, on the
same tensors (``primitives_cases``), so that all three see the same machine; the medians over
the rounds give the ratios. Run::

    python benchmarks/primitives_paired.py --out /tmp/prim_paired.json

and pass the file to ``report_primitives.py --paired``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from round_robin import round_robin

PROVIDERS = ("limit", "torch", "torch_ops")
SHAPES = ("P10M", "P50M", "transformer")  # the targets' shapes: P ≥ 10M


def measure(kind: str, shape: str, k: int, rounds: int) -> list[dict[str, object]]:
    from primitives_cases import combine_bytes, combine_call, gram_bytes, gram_call, inputs

    grads, p = inputs(k, shape)
    make = gram_call if kind == "gram" else combine_call
    times = round_robin({name: make(name, grads, p) for name in PROVIDERS}, rounds)
    rows = []
    for name, ts in times.items():
        # The limit reads K·P values in either kind; the combination also writes P.
        nbytes = (gram_bytes if kind == "gram" or name == "limit" else combine_bytes)(k, p)
        median = statistics.median(ts)
        rows.append(
            {
                "kind": kind,
                "shape": shape,
                "k": k,
                "p": p,
                "tensors": len(grads[0]),
                "provider": name,
                "median_s": median,
                "gbps": nbytes / median / 1e9,
                "rounds": rounds,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    import torch
    from primitives_cases import KS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    threads = int(os.environ.get("CONFLICT_OPT_BENCH_PRIMITIVE_THREADS", str(os.cpu_count() or 1)))
    torch.set_num_threads(threads)
    rows: list[dict[str, object]] = []
    for shape in SHAPES:
        for k in KS:
            for kind in ("gram", "combine"):
                got = measure(kind, shape, k, args.rounds)
                rows += got
                gbps = {row["provider"]: row["gbps"] for row in got}
                print(
                    f"{kind:8s} {shape:12s} K={k} limit {gbps['limit']:6.1f} GB/s  torch "
                    f"{gbps['torch']:6.1f} ({gbps['torch'] / gbps['limit']:.3f})  torch_ops "
                    f"{gbps['torch_ops']:6.1f}",
                    flush=True,
                )
    for row in rows:
        row["threads"] = threads
    args.out.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
