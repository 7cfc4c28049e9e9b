"""Summarise the wrapper's step per backend: the default route (``ours-cagrad_clip-store``)
beside the same route with one backend changed (``optimizer_cases.BACKEND_ROUTES``).

Inputs: round-robin probe runs made with ``optimizer_overhead.py --routes backends`` (the
figures to trust on a shared machine), the memory probe's ``--routes backends`` run and,
optionally, a pytest-benchmark run of the same routes::

    for run in 1 2 3; do
        python benchmarks/optimizer_overhead.py --routes backends --out /tmp/opt_backends_$run.json
    done
    python benchmarks/optimizer_memory.py --routes backends --out /tmp/opt_memory_backends.json
    python -m pytest benchmarks/test_bench_optimizer.py -k "cagrad_clip-store" \\
        --benchmark-json=/tmp/opt_backends_bench.json -q
    python benchmarks/report_backends.py /tmp/opt_backends_?.json \\
        --memory /tmp/opt_memory_backends.json --bench /tmp/opt_backends_bench.json \\
        --save benchmarks/results/optimizer_backends_cpu.json

No target applies per backend: the overhead target (≤ 0.10 of a backward) is the default
route's, whose figures are in ``optimizer_cpu.json``. These tables show what choosing another
backend costs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from optimizer_cases import BACKEND_ROUTES
from report_optimizer import MACHINE, backend_table, load, row_of, save_json, step_table


def table(backends: list[dict[str, Any]], memory: list[dict[str, Any]]) -> str:
    """Markdown: one row per route, one column per model and K; each cell the overhead (paired)
    in backwards, the step time over the default route's and, where measured, the peak above
    ``plain`` in K×P float32 stores."""
    keys = sorted({(b["model"], b["k"]) for b in backends})
    names = list(dict.fromkeys(b["route"] for b in backends))
    header = ["route", *[f"{m} K={k}" for m, k in keys]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in names:
        cells = [f"`{name}`"]
        for m, k in keys:
            b = row_of(backends, m, k, name)
            mem = row_of(memory, m, k, name)
            if b is None:
                cells.append("–")
                continue
            cell = (
                f"{b['overhead']:+.3f} ({b['overhead_paired']:+.3f}), {b['time_over_default']:.2f}×"
            )
            if mem is not None:
                cell += f", {mem['above_plain_over_store']:+.2f}"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "probe", type=Path, nargs="+", help="optimizer_overhead.py --routes backends"
    )
    parser.add_argument("--memory", type=Path, help="optimizer_memory.py --routes backends")
    parser.add_argument("--bench", type=Path, help="pytest-benchmark JSON of the same routes")
    parser.add_argument("--save", type=Path)
    args = parser.parse_args(argv)
    runs = [json.loads(path.read_text()) for path in args.probe]
    for path, rows in zip(args.probe, runs, strict=True):
        if not any(r["route"] in BACKEND_ROUTES for r in rows):
            raise ValueError(f"{path} has no backend route: was it run with --routes backends?")
    backends = backend_table(runs)
    memory = json.loads(args.memory.read_text()) if args.memory else []
    bench = load(args.bench) if args.bench else []
    print(
        "Overhead beyond the K backward passes in backwards (paired in brackets), step time "
        "over the default route's, peak above plain in K×P float32 stores\n"
    )
    print(table(backends, memory))
    if bench:
        print()
        print(step_table(bench))
    if args.save:
        summary = {
            "machine": MACHINE,
            "backends": backends,
            "memory": memory,
            "steps": bench,
            "probe_runs": runs,
        }
        save_json(args.save, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
