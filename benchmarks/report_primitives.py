"""Summarise a ``test_bench_primitives.py`` run (and optionally the peak-memory probe).

Prints markdown tables of GB/s per provider, the targets of the primitives issue as ratios
measured in the same run, and saves a JSON summary::

    python benchmarks/report_primitives.py /tmp/prim.json /tmp/prim_memory.json \\
        --paired /tmp/prim_paired.json --save benchmarks/results/primitives_cpu.json

Throughput is the least memory traffic divided by the median time: K·P·4 bytes read for
``gram`` and for ``limit`` (a plain sum over K·P float32 values: the read bandwidth), and
K·P·4 read + P·4 written for ``combine``.

With ``--paired FILE`` (``primitives_paired.py``: limit, torch and torch_ops called in turn in
every round, so that each ratio compares calls made under the same machine load) the
bandwidth targets are also computed from those round-robin medians, as ``round-robin`` rows
next to the ``blocks`` rows of pytest-benchmark's per-provider blocks.

Targets (ratios in one run): the torch path ≥ 0.8× the read-bandwidth limit for P ≥ 10M;
≥ 2× faster than the per-parameter loop on the 196-tensor transformer list; a peak extra
allocation well below one K×P copy (< 0.5 × K·P·4 bytes; a K×P copy shows ≥ 1.0).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ORDER = ("limit", "torch", "torch_ops", "triton", "reference", "stack", "per_param", "torchjd")
BANDWIDTH_TARGET = 0.8
LOOP_TARGET = 2.0
MEMORY_TARGET = 0.5


def load(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    raw = json.loads(path.read_text())
    rows = []
    for b in raw["benchmarks"]:
        info = b["extra_info"]
        median = b["stats"]["median"]
        # extra_info["bytes"]: the least traffic, set by the benchmark (primitives_cases).
        rows.append({**info, "median_s": median, "gbps": info["bytes"] / median / 1e9})
    return raw.get("machine_info", {}), rows


def _find(rows: list[dict[str, Any]], **want: Any) -> dict[str, Any] | None:
    for r in rows:
        if all(r.get(key) == value for key, value in want.items()):
            return r
    return None


def table(header: list[str], body: Iterable[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def throughput_tables(rows: list[dict[str, Any]]) -> str:
    out = []
    providers = [p for p in ORDER if any(r["provider"] == p for r in rows)]
    for kind in ("gram", "combine"):
        body = []
        keys = sorted(
            {(r["shape"], r["k"], r["p"], r["tensors"]) for r in rows if r["kind"] == kind},
            key=lambda x: (x[0] == "transformer", x[2], x[1]),
        )
        for shape, k, p, tensors in keys:
            cells = [shape, str(k), f"{p / 1e6:.1f}M", str(tensors)]
            for prov in providers:
                r = _find(rows, kind=kind, shape=shape, k=k, provider=prov)
                cells.append("–" if r is None else f"{r['gbps']:.1f}")
            body.append(cells)
        out.append(f"**{kind}** (GB/s of least traffic; higher is better)\n")
        out.append(table(["shape", "K", "P", "tensors", *providers], body))
        out.append("")
    return "\n".join(out)


def bandwidth_targets(rows: list[dict[str, Any]], timing: str) -> list[dict[str, Any]]:
    """torch / limit for P ≥ 10M from ``rows`` (``timing``: "blocks" or "round-robin")."""
    result = []
    for kind in ("gram", "combine"):
        for r in rows:
            if r["kind"] != kind or r["provider"] != "torch" or r["p"] < 10_000_000:
                continue
            limit = _find(rows, kind=kind, shape=r["shape"], k=r["k"], provider="limit")
            if limit is None:
                continue
            ratio = r["gbps"] / limit["gbps"]
            result.append(
                {
                    "target": f"torch / read-bandwidth limit >= 0.8 (P >= 10M), {timing}",
                    "kind": kind,
                    "shape": r["shape"],
                    "k": r["k"],
                    "torch_gbps": round(r["gbps"], 2),
                    "limit_gbps": round(limit["gbps"], 2),
                    "ratio": round(ratio, 3),
                    "met": ratio >= BANDWIDTH_TARGET,
                }
            )
    return result


def targets(
    rows: list[dict[str, Any]], memory: list[dict[str, Any]], paired: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    result = bandwidth_targets(rows, "blocks") + bandwidth_targets(paired, "round-robin")
    for kind in ("gram", "combine"):
        for r in rows:
            if r["kind"] != kind or r["provider"] != "torch" or r["shape"] != "transformer":
                continue
            loop = _find(rows, kind=kind, shape="transformer", k=r["k"], provider="per_param")
            if loop is None:
                continue
            speedup = loop["median_s"] / r["median_s"]
            result.append(
                {
                    "target": "per-parameter loop time / torch time >= 2 (transformer list)",
                    "kind": kind,
                    "shape": "transformer",
                    "k": r["k"],
                    "torch_ms": round(1e3 * r["median_s"], 3),
                    "per_param_ms": round(1e3 * loop["median_s"], 3),
                    "ratio": round(speedup, 3),
                    "met": speedup >= LOOP_TARGET,
                }
            )
    for m in memory:
        if m["provider"] != "torch":
            continue
        result.append(
            {
                "target": "torch peak extra allocation / (K·P·4 bytes) < 0.5",
                "kind": m["kind"],
                "shape": m["shape"],
                "k": m["k"],
                "peak_extra_mib": round(m["peak_extra_bytes"] / 2**20, 1),
                "ratio": round(m["peak_extra_over_kp"], 4),
                "met": m["peak_extra_over_kp"] < MEMORY_TARGET,
            }
        )
    return result


def memory_table(memory: list[dict[str, Any]]) -> str:
    providers = [p for p in ORDER if any(m["provider"] == p for m in memory)]
    keys = sorted({(m["kind"], m["shape"], m["k"]) for m in memory})
    body = []
    for kind, shape, k in keys:
        cells = [kind, shape, str(k)]
        for prov in providers:
            m = _find(memory, kind=kind, shape=shape, k=k, provider=prov)
            cells.append(
                "–"
                if m is None
                else f"{m['peak_extra_bytes'] / 2**20:.0f} MiB ({m['peak_extra_over_kp']:.2f})"
            )
        body.append(cells)
    return "**peak extra memory** (MiB, and as a fraction of one K×P float32 copy)\n\n" + table(
        ["kind", "shape", "K", *providers], body
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench", type=Path)
    parser.add_argument("memory", type=Path, nargs="?")
    parser.add_argument("--save", type=Path)
    parser.add_argument("--paired", type=Path, help="primitives_paired.py output")
    args = parser.parse_args(argv)
    machine_info, rows = load(args.bench)
    memory = json.loads(args.memory.read_text()) if args.memory else []
    paired = json.loads(args.paired.read_text()) if args.paired else []
    goals = targets(rows, memory, paired)
    print(throughput_tables(rows))
    if memory:
        print(memory_table(memory))
        print()
    print(
        table(
            ["target", "kind", "shape", "K", "ratio", "met"],
            (
                [g["target"], g["kind"], g["shape"], str(g["k"]), str(g["ratio"]), str(g["met"])]
                for g in goals
            ),
        )
    )
    if args.save:
        summary = {
            "machine": {
                "cpu": machine_info.get("cpu", {}).get("brand_raw", platform.processor()),
                "cores": machine_info.get("cpu", {}).get("count"),
                "python": machine_info.get("python_version"),
                "device": rows[0]["device"] if rows else None,
                "threads": rows[0]["threads"] if rows else None,
            },
            "targets": goals,
            "throughput": [
                {
                    key: (round(v, 6) if isinstance(v, float) else v)
                    for key, v in r.items()
                    if key in ("kind", "shape", "k", "p", "tensors", "provider", "median_s", "gbps")
                }
                for r in rows
            ],
            "memory": memory,
            "round_robin": [
                {key: (round(v, 6) if isinstance(v, float) else v) for key, v in r.items()}
                for r in paired
            ],
        }
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
