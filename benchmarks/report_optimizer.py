"""Summarise a ``test_bench_optimizer.py`` run (and optionally ``optimizer_memory.py``'s).

Prints the step-time table (ms, median) per model and K, the targets as ratios measured in the
same run, and saves a JSON summary::

    python benchmarks/report_optimizer.py /tmp/opt.json /tmp/opt_memory.json \\
        --overhead /tmp/opt_overhead_1.json /tmp/opt_overhead_2.json /tmp/opt_overhead_3.json \\
        --save benchmarks/results/optimizer_cpu.json

Targets:

* overhead: (``ours-*`` − ``k_backward_step``) / (``forward_backward`` − ``forward``) ≤ 0.10,
  i.e. what the wrapper adds beyond its K backward passes, in units of one backward pass. From
  the pytest-benchmark medians, and, given ``--overhead FILE ...`` (``optimizer_overhead.py``,
  one file per run), also from the round-robin probe, whose interleaved timing is the one to
  trust on a shared machine: the median over its runs, each run's figure kept beside it.
  Where the probe kept its per-round times, also paired: the median over the rounds of
  (``ours-*`` − ``k_backward_step``) within each round, over the same backward. Probe runs
  made with ``--malloc no-trim`` give their targets under their own label ("heap not
  trimmed"), and the page faults per step of every route are tabled per allocator setting;
* ``ours-cagrad_clip-store`` faster than ``torchjd-cagrad``, ``torchjd-upgrad`` and
  ``research``: from the pytest-benchmark medians and, given ``--overhead``, from the
  round-robin probe, which times the peers in the same rounds;
* memory: peak above ``plain`` ≤ 1 K×P float32 store (store mode), ≤ 0.5 (bfloat16 store).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any

from optimizer_cases import BACKEND_ROUTES, PEERS, ROUTES

OVERHEAD_TARGET = 0.10


def load(path: Path) -> list[dict[str, Any]]:
    raw = json.loads(path.read_text())
    return [{**b["extra_info"], "median_s": b["stats"]["median"]} for b in raw["benchmarks"]]


MACHINE = {"cpu": "2-core AMD EPYC VM"}


def row_of(rows: list[dict[str, Any]], model: str, k: int, name: str) -> dict[str, Any] | None:
    """The row of ``route`` ``name`` at (model, K); None if there is none."""
    for r in rows:
        if r["model"] == model and r["k"] == k and r["route"] == name:
            return r
    return None


def _t(rows: list[dict[str, Any]], model: str, k: int, name: str, key: str = "median_s") -> Any:
    """Field ``key`` of the row of ``route`` ``name`` at (model, K); None if there is none."""
    r = row_of(rows, model, k, name)
    return None if r is None else r.get(key)


def save_json(path: Path, summary: dict[str, Any]) -> None:
    """Write a report's summary with :func:`dump_json`, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_json(summary))


def _met(route: str, ratio: float) -> bool:
    """A peer's route: its time over ours must be above 1; the wrapper's: its overhead at most
    OVERHEAD_TARGET of one backward."""
    return ratio > 1 if route in PEERS else ratio <= OVERHEAD_TARGET


def dump_json(obj: Any) -> str:
    """``json.dumps(obj, indent=1)`` with every list of integers (per-round times) on one
    line. Only lists that the indentation spread over lines are joined: a JSON string holds no
    raw newline, so text such as ``"[1,2]"`` inside a string is left as it is."""
    text = json.dumps(obj, indent=1)

    def one_line(m: re.Match[str]) -> str:
        if "\n" not in m.group(0):
            return m.group(0)
        return "[" + ", ".join(x.strip() for x in m.group(0)[1:-1].split(",")) + "]"

    return re.sub(r"\[(?:\s*-?\d+,)*\s*-?\d+\s*\]", one_line, text) + "\n"


def paired_difference(a_us: list[int], b_us: list[int]) -> float:
    """Seconds: the median over the rounds of a − b, both timed in the same round."""
    return statistics.median(x - y for x, y in zip(a_us, b_us, strict=True)) * 1e-6


def overhead_targets(
    rows: list[dict[str, Any]], label: str, net: bool = False, paired: bool = False
) -> list[dict[str, Any]]:
    """The overhead target per model, K and wrapper route, from one set of step times.

    ``net``: the steps' times with their backward passes subtracted (``net_median_s`` of
    ``optimizer_overhead.py``). ``paired``: the difference is the median of the per-round
    differences (``times_us`` / ``net_times_us``) instead of the difference of the medians;
    the backward (``forward_backward`` − ``forward``) is a difference of medians either way."""
    key = "net_median_s" if net else "median_s"
    series = "net_times_us" if net else "times_us"
    out = []
    for model, k in sorted({(r["model"], r["k"]) for r in rows}):
        fwd = _t(rows, model, k, "forward")
        fb = _t(rows, model, k, "forward_backward")
        kb = _t(rows, model, k, "k_backward_step", key)
        if None in (fwd, fb, kb):
            continue
        for name in ROUTES:
            t = _t(rows, model, k, name, key)
            if not name.startswith("ours-") or t is None:
                continue
            if paired:
                a = _t(rows, model, k, name, series)
                b = _t(rows, model, k, "k_backward_step", series)
                if a is None or b is None:
                    continue
                ratio = paired_difference(a, b) / (fb - fwd)
            else:
                ratio = (t - kb) / (fb - fwd)
            out.append(
                {
                    "target": f"overhead beyond K backward passes / one backward <= 0.10 ({label})",
                    "model": model,
                    "k": k,
                    "route": name,
                    "ratio": round(ratio, 3),
                    "met": _met(name, ratio),
                }
            )
    return out


def faster_targets(rows: list[dict[str, Any]], label: str) -> list[dict[str, Any]]:
    """``ours-cagrad_clip-store`` against each peer's route, per model and K, from one set of
    step times."""
    out = []
    for model, k in sorted({(r["model"], r["k"]) for r in rows}):
        ours = _t(rows, model, k, "ours-cagrad_clip-store")
        for peer in PEERS:
            t = _t(rows, model, k, peer)
            if ours is None or t is None:
                continue
            out.append(
                {
                    "target": f"{peer} time / ours-cagrad_clip-store time > 1 ({label})",
                    "model": model,
                    "k": k,
                    "route": peer,
                    "ratio": round(t / ours, 3),
                    "met": _met(peer, t / ours),
                }
            )
    return out


def _allocator(run: list[dict[str, Any]]) -> str:
    """The probe run's ``--malloc`` setting (runs from before the option: ``default``)."""
    found = {r.get("allocator", "default") for r in run}
    if len(found) != 1:
        raise ValueError(f"one probe run with rows of several allocator settings: {sorted(found)}")
    return found.pop()


def _allocator_label(run: list[dict[str, Any]]) -> str:
    return {"default": "", "no-trim": ", heap not trimmed"}[_allocator(run)]


def fault_table(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Minor page faults per step, per allocator setting, model, K and route, over all rounds
    of all runs: the mean per step, the share of steps that took any, and the most in one
    step. Faults come in bursts (a step that re-maps a freed block takes hundreds, most take
    none), so a median would hide them. Runs without per-round fault counts are left out."""
    merged: dict[tuple, dict[str, Any]] = {}
    for run in runs:
        allocator = _allocator(run)
        for r in run:
            if "minor_faults" not in r:
                continue
            key = (allocator, r["model"], r["k"], r["route"])
            row = merged.setdefault(
                key,
                {"allocator": allocator, "model": r["model"], "k": r["k"], "route": r["route"]},
            )
            row.setdefault("faults", []).extend(r["minor_faults"])
    out = []
    for row in merged.values():
        faults = row.pop("faults")
        row["steps"] = len(faults)
        row["mean_per_step"] = round(statistics.mean(faults), 1)
        row["share_of_steps_with_faults"] = round(sum(f > 0 for f in faults) / len(faults), 3)
        row["max_in_one_step"] = max(faults)
        out.append(row)
    return out


def probe_targets(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The targets from one or more runs of the round-robin probe: per target, model, K and
    route, the median of the runs' ratios (``runs``: each run's, in order), met or not by
    that median. On a shared machine one run's figure moves by about ±0.1 of a backward from
    one run to the next; the runs show how much."""
    per_run = []
    for run in runs:
        probe = "round-robin probe" + _allocator_label(run)
        got = overhead_targets(run, probe)
        if all("net_median_s" in r for r in run):
            got += overhead_targets(run, f"{probe}, passes subtracted", net=True)
        if all("times_us" in r for r in run):
            got += overhead_targets(run, f"{probe}, paired", paired=True)
            got += overhead_targets(
                run, f"{probe}, paired, passes subtracted", net=True, paired=True
            )
        per_run.append(got + faster_targets(run, probe))
    merged: dict[tuple, dict[str, Any]] = {}
    for got in per_run:
        for g in got:
            key = (g["target"], g["model"], g["k"], g["route"])
            merged.setdefault(key, {**g, "runs": []})["runs"].append(g["ratio"])
    out = []
    for g in merged.values():
        ratio = statistics.median(g["runs"])
        g["ratio"] = round(ratio, 3)
        g["met"] = _met(g["route"], ratio)
        out.append(g)
    return out


def backend_table(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The default route and each of ``BACKEND_ROUTES`` per model and K, from probe runs made
    with ``--routes backends``: the overhead beyond the K backward passes in units of one
    backward (difference of medians, and paired), and the step time over the default route's.
    Each figure is the median over the runs; ``runs`` keeps every run's. The runs must share
    one ``--malloc`` setting (``allocator`` in each entry), since the setting moves the
    figures (page faults)."""
    allocators = {_allocator(rows) for rows in runs}
    if len(allocators) > 1:
        raise ValueError(
            f"backend probe runs of several allocator settings: {sorted(allocators)}; table "
            "each setting on its own"
        )
    allocator = allocators.pop() if allocators else "default"
    merged: dict[tuple[str, int, str], dict[str, Any]] = {}
    for rows in runs:
        for model, k in sorted({(r["model"], r["k"]) for r in rows}):
            fwd = _t(rows, model, k, "forward")
            fb = _t(rows, model, k, "forward_backward")
            kb = _t(rows, model, k, "k_backward_step")
            default = _t(rows, model, k, "ours-cagrad_clip-store")
            if None in (fwd, fb, kb, default):
                continue
            backward = fb - fwd
            for name in ("ours-cagrad_clip-store", *BACKEND_ROUTES):
                t = _t(rows, model, k, name)
                if t is None:
                    continue
                figures = {
                    "overhead": (t - kb) / backward,
                    "overhead_paired": paired_difference(
                        _t(rows, model, k, name, "times_us"),
                        _t(rows, model, k, "k_backward_step", "times_us"),
                    )
                    / backward,
                    "time_over_default": t / default,
                }
                entry = merged.setdefault(
                    (model, k, name),
                    {
                        "model": model,
                        "k": k,
                        "route": name,
                        "allocator": allocator,
                        "runs": {f: [] for f in figures},
                    },
                )
                for f, v in figures.items():
                    entry["runs"][f].append(round(v, 3))
    out = []
    for entry in merged.values():
        for f, values in entry["runs"].items():
            entry[f] = round(statistics.median(values), 3)
        out.append(entry)
    return out


def targets(
    rows: list[dict[str, Any]],
    memory: list[dict[str, Any]],
    overhead: list[list[dict[str, Any]]] | None = None,
) -> list[dict[str, Any]]:
    out = overhead_targets(rows, "pytest-benchmark medians")
    out += faster_targets(rows, "pytest-benchmark medians")
    if overhead:
        out += probe_targets(overhead)
    for m in memory:
        limit = {"ours-cagrad_clip-store": 1.0, "ours-cagrad_clip-bf16": 0.5}.get(m["route"])
        if limit is None:
            continue
        out.append(
            {
                "target": f"peak above plain / (K·P·4 bytes) <= {limit}",
                "model": m["model"],
                "k": m["k"],
                "route": m["route"],
                "ratio": round(m["above_plain_over_store"], 3),
                "met": m["above_plain_over_store"] <= limit,
            }
        )
    return out


def step_table(rows: list[dict[str, Any]]) -> str:
    keys = sorted({(r["model"], r["k"], r["p"]) for r in rows})
    header = ["route", *[f"{m} K={k}" for m, k, _ in keys]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    present = {r["route"] for r in rows}
    for name in (n for n in ROUTES + BACKEND_ROUTES if n in present):
        cells = [f"`{name}`"]
        for m, k, _ in keys:
            t = _t(rows, m, k, name)
            cells.append("–" if t is None else f"{1e3 * t:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    params = ", ".join(f"{m} K={k}: P = {p:,}" for m, k, p in keys)
    return "Median ms per training step (" + params + ")\n\n" + "\n".join(lines)


def memory_table(memory: list[dict[str, Any]]) -> str:
    keys = sorted({(m["model"], m["k"]) for m in memory})
    routes = list(dict.fromkeys(m["route"] for m in memory))
    header = ["route", *[f"{model} K={k}" for model, k in keys]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in routes:
        cells = [f"`{name}`"]
        for model, k in keys:
            m = row_of(memory, model, k, name)
            cells.append(
                "–"
                if m is None
                else f"{m['peak_step_bytes'] / 2**20:.1f} MiB ({m['above_plain_over_store']:+.2f})"
            )
        lines.append("| " + " | ".join(cells) + " |")
    return (
        "Peak memory of one step (MiB; in brackets: above `plain`, in K×P float32 stores)\n\n"
        + "\n".join(lines)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench", type=Path)
    parser.add_argument("memory", type=Path, nargs="?")
    parser.add_argument(
        "--overhead",
        type=Path,
        nargs="+",
        default=[],
        help="optimizer_overhead.py's JSON, one file per run",
    )
    parser.add_argument("--save", type=Path)
    args = parser.parse_args(argv)
    rows = load(args.bench)
    memory = json.loads(args.memory.read_text()) if args.memory else []
    overhead = [json.loads(path.read_text()) for path in args.overhead]
    goals = targets(rows, memory, overhead)
    faults = fault_table(overhead)
    print(step_table(rows))
    print()
    if faults:
        print("| allocator | model | K | route | faults per step, mean | steps with any | most |")
        print("|---|---|---|---|---|---|---|")
        for f in faults:
            print(
                f"| {f['allocator']} | {f['model']} | {f['k']} | {f['route']} | "
                f"{f['mean_per_step']:g} | {f['share_of_steps_with_faults']:.1%} | "
                f"{f['max_in_one_step']} |"
            )
        print()
    if memory:
        print(memory_table(memory))
        print()
    print("| target | model | K | route | ratio | runs | met |\n|---|---|---|---|---|---|---|")
    for g in goals:
        runs = ", ".join(map(str, g.get("runs", [])))
        print(
            f"| {g['target']} | {g['model']} | {g['k']} | {g['route']} | {g['ratio']} | "
            f"{runs} | {g['met']} |"
        )
    if args.save:
        summary = {
            "machine": {**MACHINE, "threads": rows[0]["threads"] if rows else None},
            "targets": goals,
            "steps": rows,
            "overhead_probe_runs": overhead,
            "minor_faults": faults,
            "memory": memory,
        }
        save_json(args.save, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
