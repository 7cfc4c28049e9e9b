"""The wrapper's overhead beyond its K backward passes, timed round-robin.

The overhead target is a difference of step times: (``ours-*`` − ``k_backward_step``) over
(``forward_backward`` − ``forward``). pytest-benchmark times each route in its own block of
rounds, so on a shared machine a slow minute lands on one route and not on the other, and the
difference swings by more than the target (−0.6 to +1.4 of a backward in one run). Here every
round runs each route once, in alternating order, on the same model and batch
(``optimizer_cases``), so that disturbances hit all routes alike; the medians over the rounds
then give the difference. Run::

    python benchmarks/optimizer_overhead.py --out /tmp/opt_overhead.json

and pass the file to ``report_optimizer.py --overhead``.
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

ROUTES = (
    "forward",
    "forward_backward",
    "k_backward_step",
    "ours-cagrad_clip-store",
    "ours-cagrad_clip-bf16",
    "ours-mgda-store",
    "ours-linear-store",
)


def measure(model: str, k: int, rounds: int) -> list[dict[str, object]]:
    from optimizer_cases import route, setup

    s = setup(model, k)
    times = round_robin({name: route(name, s) for name in ROUTES}, rounds, warmup=3)
    return [
        {
            "model": model,
            "k": k,
            "p": s.p,
            "route": name,
            "median_s": statistics.median(ts),
            "rounds": rounds,
        }
        for name, ts in times.items()
    ]


def main(argv: list[str] | None = None) -> int:
    import torch
    from optimizer_cases import KS, MODELS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("CONFLICT_OPT_BENCH_OPTIMIZER_THREADS", "2")))
    rows: list[dict[str, object]] = []
    for model in MODELS:
        for k in KS:
            got = measure(model, k, args.rounds)
            rows += got
            t = {row["route"]: row["median_s"] for row in got}
            backward = t["forward_backward"] - t["forward"]
            for name in ROUTES[3:]:
                ratio = (t[name] - t["k_backward_step"]) / backward
                print(f"{model:12s} K={k} {name:26s} overhead {ratio:+.3f} backward", flush=True)
    args.out.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
