"""Summarise a pytest-benchmark JSON of ``test_bench_solvers.py``: compact JSON + markdown.

Usage::

    python benchmarks/report.py /tmp/bench.json [--out benchmarks/results/solvers_cpu.json]

Prints markdown tables for the docs: K rows × provider columns of median µs, the "TorchJD ÷
ours" speed ratios against their targets, the batched per-problem numbers and the accuracy of
every provider against the exact backend. With ``--out``, also writes them as compact JSON
(machine, per-benchmark median / mean µs and ``extra_info``, ratios, batched numbers); without
it nothing is written, so a trial run cannot overwrite the committed results.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any

KS = (2, 3, 4, 8, 16, 32)
BACKENDS = ("closed_form", "iterative", "exact", "auto")
METHODS = ("cagrad_clip", "cagrad", "mgda", "linear")
# Targets: TorchJD CAGradWeighting median ÷ ours median, per backend ("auto" is closed_form for
# K ≤ 3 and iterative above, see target()).
TARGETS = {"closed_form": 100.0, "iterative": 10.0}
PEERS = {  # column label → (provider, backend, method it solves)
    "TorchJD CAGrad": ("torchjd", "CAGradWeighting", "cagrad"),
    "TorchJD MGDA": ("torchjd", "MGDAWeighting", "mgda"),
    "SLSQP (official CAGrad)": ("slsqp", "scipy-SLSQP", "cagrad"),
}


# ------------------------------------------------------------------------------------ loading
def cpu_model() -> str:
    """The ``model name`` line of /proc/cpuinfo (or platform.processor() elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine(raw: dict[str, Any], entries: list[dict[str, Any]]) -> dict[str, Any]:
    try:
        import torch

        torch_version = torch.__version__
    except ImportError:  # pragma: no cover - torch is a hard dependency of the package
        torch_version = None
    threads = sorted({e["extra_info"].get("threads") for e in entries} - {None})
    return {
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_version": torch_version,
        "torch_threads": threads[0] if len(threads) == 1 else threads,
        "python": platform.python_version(),
        "benchmark_date": raw.get("datetime"),
        "report_date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "pytest_benchmark_version": raw.get("version"),
    }


def entries_of(raw: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for b in raw["benchmarks"]:
        s = b["stats"]
        out.append(
            {
                "name": b["name"],
                "group": b.get("group"),
                "median_us": s["median"] * 1e6,
                "mean_us": s["mean"] * 1e6,
                "stddev_us": s["stddev"] * 1e6,
                "rounds": s["rounds"],
                "extra_info": b["extra_info"],
            }
        )
    return out


class Index:
    """Look benchmarks up by their ``extra_info`` fields; ``batched`` tells batch > 0."""

    def __init__(self, entries: list[dict[str, Any]]) -> None:
        self.entries = entries

    def find(self, *, batched: bool = False, **want: Any) -> dict[str, Any] | None:
        for e in self.entries:
            info = e["extra_info"]
            if bool(info.get("batch")) == batched and all(
                info.get(key) == value for key, value in want.items()
            ):
                return e
        return None

    def ours(
        self, backend: str, method: str, k: int, validate: bool = False, batched: bool = False
    ) -> dict[str, Any] | None:
        return self.find(
            provider="conflict_opt",
            backend=backend,
            method=method,
            K=k,
            validate=validate,
            batched=batched,
        )

    def peer(self, label: str, k: int, batched: bool = False) -> dict[str, Any] | None:
        provider, backend, _ = PEERS[label]
        return self.find(provider=provider, backend=backend, K=k, batched=batched)


def per_problem(e: dict[str, Any] | None) -> float | None:
    """Median µs per problem: the call's median divided by the problems it solves."""
    if e is None:
        return None
    info = e["extra_info"]
    return info.get("per_problem_median_us", e["median_us"] / info.get("problems_per_call", 1))


# ------------------------------------------------------------------------------------- ratios
def target_for(backend: str, k: int) -> float:
    """The speed-up target over TorchJD CAGrad of ``backend`` at ``k`` objectives."""
    if backend == "auto":
        backend = "closed_form" if k <= 3 else "iterative"
    return TARGETS[backend]


def ratios(ix: Index) -> list[dict[str, Any]]:
    """Peer median ÷ ours median per problem, on the same Grams; targets for TorchJD CAGrad.

    Single: one unbatched call each. Batched: ours solve the 1,024 K=3 problems in one call,
    peers (no batched API) loop over the first 32 of them; both as time per problem.
    """
    rows: list[dict[str, Any]] = []
    shapes = [(k, False) for k in KS] + [(3, True)]
    for label, (_, _, peer_method) in PEERS.items():
        methods = ("cagrad", "cagrad_clip") if peer_method == "cagrad" else (peer_method,)
        for method, backend, (k, batched), validate in itertools.product(
            methods, ("closed_form", "iterative", "auto"), shapes, (False, True)
        ):
            peer = per_problem(ix.peer(label, k, batched))
            ours = per_problem(ix.ours(backend, method, k, validate, batched))
            if peer is None or ours is None:
                continue
            target = target_for(backend, k) if label == "TorchJD CAGrad" else None
            rows.append(
                {
                    "peer": label,
                    "ours_backend": backend,
                    "method": method,
                    "K": k,
                    "batched": batched,
                    "validate": validate,
                    "peer_us_per_problem": peer,
                    "ours_us_per_problem": ours,
                    "ratio": peer / ours,
                    "target": target,
                    "meets_target": None if target is None else peer / ours >= target,
                }
            )
    return rows


# ----------------------------------------------------------------------------------- markdown
def us(x: float | None) -> str:
    if x is None:
        return "–"
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def sci(x: float | None) -> str:
    return "–" if x is None else f"{x:.1e}"


def table(header: list[str], rows: Iterable[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def timing_tables(ix: Index) -> str:
    """Per method: K rows × (our backends, peers solving the same problem) median µs."""
    out = []
    for method in METHODS:
        peers = [lbl for lbl, (_, _, m) in PEERS.items() if m == method.replace("_clip", "")]
        header = ["K", *BACKENDS, *peers]
        ratio_cols = [("TorchJD CAGrad", b) for b in ("closed_form", "iterative")]
        if "TorchJD CAGrad" in peers:
            header += [f"TorchJD ÷ {b}" for _, b in ratio_cols]
        rows = []
        for k in KS:
            row = [str(k)]
            for b in BACKENDS:
                lo, hi = ix.ours(b, method, k, False), ix.ours(b, method, k, True)
                row.append("–" if lo is None else f"{us(lo['median_us'])} / {us(hi['median_us'])}")
            for lbl in peers:
                e = ix.peer(lbl, k)
                row.append(us(e and e["median_us"]))
            if "TorchJD CAGrad" in peers:
                for lbl, b in ratio_cols:
                    peer, ours = ix.peer(lbl, k), ix.ours(b, method, k, False)
                    row.append(
                        "–"
                        if peer is None or ours is None
                        else f"{peer['median_us'] / ours['median_us']:.2f}×"
                    )
            rows.append(row)
        out.append(
            f"**{method}**: median µs per call, one unbatched problem; our backends as "
            "validate=False / validate=True; ratios use validate=False.\n\n" + table(header, rows)
        )
    return "\n\n".join(out)


def batched_table(ix: Index) -> str:
    rows = []
    for method in METHODS:
        for b in BACKENDS:
            lo = ix.ours(b, method, 3, False, batched=True)
            hi = ix.ours(b, method, 3, True, batched=True)
            if lo is None:
                continue
            info = lo["extra_info"]
            statuses = ", ".join(f"{k}={v}" for k, v in info.get("status_counts", {}).items())
            rows.append(
                [
                    f"conflict_opt {b}",
                    method,
                    str(info["problems_per_call"]),
                    f"{us(lo['median_us'])} / {us(hi and hi['median_us'])}",
                    f"{us(per_problem(lo))} / {us(per_problem(hi))}",
                    statuses,
                ]
            )
    for lbl, (_, _, method) in PEERS.items():
        e = ix.peer(lbl, 3, batched=True)
        if e is not None:
            n = e["extra_info"]["problems_per_call"]
            call, each = us(e["median_us"]), us(per_problem(e))
            rows.append([f"{lbl} (loop)", method, str(n), call, each, ""])
    header = ["provider", "method", "problems/call", "µs per call", "µs per problem", "status"]
    return (
        "Batched K=3 (ours: validate=False / validate=True; exact and peers on the first 32 "
        "problems of the 1,024)\n\n" + table(header, rows)
    )


def ratio_table(rows: list[dict[str, Any]]) -> str:
    """TorchJD CAGrad ÷ ours, per problem, for validate False and True, with the target."""
    body = []
    keyed = {
        (r["ours_backend"], r["method"], r["K"], r["batched"], r["validate"]): r
        for r in rows
        if r["peer"] == "TorchJD CAGrad"
    }
    cases = [("closed_form", k, False) for k in (2, 3)] + [("closed_form", 3, True)]
    cases += [("iterative", k, False) for k in KS] + [("iterative", 3, True)]
    for backend, k, batched in cases:
        line = [backend, str(k), "batched" if batched else "single"]
        for method in ("cagrad", "cagrad_clip"):
            for validate in (False, True):
                r = keyed.get((backend, method, k, batched, validate))
                line.append("–" if r is None else f"{r['ratio']:.2f}×")
        target = target_for(backend, k)
        met = [
            keyed[key]["meets_target"]
            for key in keyed
            if key[0] == backend and key[2] == k and key[3] == batched
        ]
        line += [f"≥ {target:.0f}×", "yes" if met and all(met) else "no"]
        body.append(line)
    header = [
        "ours",
        "K",
        "call",
        "cagrad",
        "cagrad (validate)",
        "cagrad_clip",
        "cagrad_clip (validate)",
        "target",
        "met",
    ]
    return "TorchJD CAGradWeighting median ÷ conflict_opt median (per problem)\n\n" + table(
        header, body
    )


def accuracy_table(ix: Index) -> str:
    """Max relative dual-objective error vs exact (and update cosine for peers) per K."""
    cols = [*(f"K={k}" for k in KS), "batch K=3"]
    rows = []
    for method in ("cagrad", "mgda"):
        for b in ("closed_form", "iterative", "auto"):
            cells = [sci(_get(ix.ours(b, method, k), "dual_rel_err_max")) for k in KS]
            cells.append(sci(_get(ix.ours(b, method, 3, batched=True), "dual_rel_err_max")))
            rows.append([f"conflict_opt {b}", method, "Φ error", *cells])
        for b in BACKENDS:
            cells = [sci(_get(ix.ours(b, method, k), "gap_max")) for k in KS]
            cells.append(sci(_get(ix.ours(b, method, 3, batched=True), "gap_max")))
            rows.append([f"conflict_opt {b}", method, "certified gap", *cells])
    for lbl, (_, _, method) in PEERS.items():
        for field, label in (
            ("dual_rel_err_max", "Φ error"),
            ("cosine_min", "1 − min cosine"),
            ("rel_norm_diff_max", "max rel ‖Δd‖"),
            ("dual_infeasibility", "simplex viol."),
        ):
            values = [_get(ix.peer(lbl, k), field) for k in KS]
            values.append(_get(ix.peer(lbl, 3, batched=True), field))
            if field == "cosine_min":  # shown as 1 − cos: the digits that matter
                values = [None if v is None else 1.0 - v for v in values]
            cells = [sci(v) for v in values]
            rows.append([lbl, method, label, *cells])
    header = ["provider", "method", "metric", *cols]
    note = (
        "Accuracy against backend='exact' on the same Grams: Φ error = max over problems of "
        "(Φ(p) − Φ(p_exact)) / phi_scale (p projected onto the simplex); TorchJD CAGrad is "
        "compared with exact CAGrad at uniform weights (its convention); cosine / ‖Δd‖ compare "
        "the update Σ a_k g_k; certified gap = the solver's own bound on Φ(p) − Φ*."
    )
    return note + "\n\n" + table(header, rows)


def _get(e: dict[str, Any] | None, field: str) -> Any:
    return None if e is None else e["extra_info"].get(field)


def _rounded(obj: Any, digits: int = 4) -> Any:
    """``obj`` with every float to ``digits`` significant digits (a compact, diffable JSON)."""
    if isinstance(obj, float):
        return float(f"{obj:.{digits}g}")
    if isinstance(obj, dict):  # a cosine keeps all its digits: 1 − cos is what matters
        return {k: v if k == "cosine_min" else _rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rounded(value, digits) for value in obj]
    return obj


def dump(summary: dict[str, Any]) -> str:
    """JSON with one line per list item (benchmark, ratio): compact yet diffable."""
    parts = []
    for key, value in summary.items():
        if isinstance(value, list) and value:
            body = ",\n".join("  " + json.dumps(item, ensure_ascii=False) for item in value)
            parts.append(f" {json.dumps(key)}: [\n{body}\n ]")
        else:
            parts.append(f" {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def non_optimal(ix: Index) -> list[str]:
    return [
        f"{e['name']}: {e['extra_info'].get('status_counts')}"
        for e in ix.entries
        if e["extra_info"].get("all_optimal") is False
    ]


# ------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench_json", type=Path, help="output of pytest --benchmark-json")
    parser.add_argument(
        "--out",
        type=Path,
        help="compact JSON to write, e.g. benchmarks/results/solvers_cpu.json (the committed "
        "results); without it only the tables are printed",
    )
    args = parser.parse_args(argv)

    raw = json.loads(args.bench_json.read_text())
    entries = entries_of(raw)
    ix = Index(entries)
    ratio_rows = ratios(ix)
    batched = [
        {
            "name": e["name"],
            "provider": e["extra_info"]["provider"],
            "backend": e["extra_info"]["backend"],
            "method": e["extra_info"]["method"],
            "validate": e["extra_info"].get("validate"),
            "problems_per_call": e["extra_info"]["problems_per_call"],
            "median_us_per_call": e["median_us"],
            "median_us_per_problem": per_problem(e),
        }
        for e in entries
        if e["extra_info"].get("batch")
    ]
    summary = {
        "machine": machine(raw, entries),
        "targets": {
            "closed_form": "TorchJD CAGrad median / ours >= 100 (K = 2, 3)",
            "iterative": "TorchJD CAGrad median / ours >= 10 (K <= 32)",
        },
        "ratios": ratio_rows,
        "batched": batched,
        "not_all_optimal": non_optimal(ix),
        "benchmarks": entries,
    }
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(dump(_rounded(summary)))

    m = summary["machine"]
    print(
        f"Machine: {m['cpu_model']}, {m['cpu_cores']} cores, torch {m['torch_version']} "
        f"({m['torch_threads']} thread(s)), {m['platform']}, {m['benchmark_date']}\n"
    )
    print(timing_tables(ix), end="\n\n")
    print(batched_table(ix), end="\n\n")
    print(ratio_table(ratio_rows), end="\n\n")
    print(accuracy_table(ix), end="\n\n")
    bad = summary["not_all_optimal"]
    print("Statuses: all OPTIMAL." if not bad else "Not all OPTIMAL:\n- " + "\n- ".join(bad))
    if args.out is not None:
        print(f"\nWrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
