"""The benchmark reports' arithmetic: the paired overhead estimate, the allocator labels and
page-fault table, the per-backend table, and the JSON writer.

The reports turn raw timings into the figures the docs quote, so their arithmetic is tested
like the library's: on hand-made rows whose answers are known.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from report_optimizer import (
    backend_table,
    dump_json,
    fault_table,
    overhead_targets,
    paired_difference,
    probe_targets,
)


def _rows(ours_us: list[int], kb_us: list[int]) -> list[dict]:
    """Probe rows for one model and K: a backward of 1 ms, per-round times in µs."""

    def row(route: str, times: list[int]) -> dict:
        median = sorted(times)[len(times) // 2] * 1e-6
        return {
            "model": "mlp",
            "k": 2,
            "route": route,
            "median_s": median,
            "net_median_s": median,
            "times_us": times,
            "net_times_us": times,
        }

    return [
        row("forward", [1000, 1000, 1000]),
        row("forward_backward", [2000, 2000, 2000]),
        row("k_backward_step", kb_us),
        row("ours-cagrad_clip-store", ours_us),
    ]


def test_paired_difference_is_median_of_per_round_differences():
    # Medians 20 and 10 differ by 10; every round's own difference is 1 or 30.
    a, b = [11, 20, 31], [10, 10, 1]
    assert paired_difference(a, b) == pytest.approx(10e-6)
    a, b = [11, 20, 40], [10, 19, 10]
    assert paired_difference(a, b) == pytest.approx(1e-6)  # differences 1, 1, 30
    assert sorted(a)[1] - sorted(b)[1] == 10  # where the difference of medians says 10


def test_paired_difference_rejects_unequal_rounds():
    with pytest.raises(ValueError):
        paired_difference([1, 2, 3], [1, 2])


def test_overhead_targets_paired_and_unpaired_differ_as_computed_by_hand():
    # One slow minute in round 2 hits both steps: the paired figure follows it.
    rows = _rows(ours_us=[5050, 9050, 5100], kb_us=[5000, 9000, 4900])
    plain = overhead_targets(rows, "probe")
    paired = overhead_targets(rows, "probe, paired", paired=True)
    assert [t["route"] for t in plain] == ["ours-cagrad_clip-store"]
    # Medians 5100 and 5000 µs: 0.1 of a 1 ms backward, on the target.
    assert plain[0]["ratio"] == pytest.approx(0.1) and plain[0]["met"]
    # Per-round differences 50, 50, 200 µs: median 50 µs, 0.05 of a backward.
    assert paired[0]["ratio"] == pytest.approx(0.05) and paired[0]["met"]
    assert "paired" in paired[0]["target"]


def test_probe_targets_median_over_runs_keeps_each_run():
    runs = [
        _rows([5050, 5050, 5050], [5000, 5000, 5000]),  # 0.05
        _rows([5200, 5200, 5200], [5000, 5000, 5000]),  # 0.20
        _rows([5080, 5080, 5080], [5000, 5000, 5000]),  # 0.08
    ]
    got = {t["target"].rsplit("(", 1)[1]: t for t in probe_targets(runs)}
    paired = got["round-robin probe, paired)"]
    assert paired["runs"] == pytest.approx([0.05, 0.2, 0.08])
    assert paired["ratio"] == pytest.approx(0.08) and paired["met"]
    # Without per-round times no paired figure is made.
    for run in runs:
        for r in run:
            del r["times_us"], r["net_times_us"]
    assert not any("paired" in t["target"] for t in probe_targets(runs))


def _with_allocator(rows: list[dict], allocator: str, faults: list[int]) -> list[dict]:
    return [{**r, "allocator": allocator, "minor_faults": faults} for r in rows]


def test_probe_targets_keep_allocator_settings_apart():
    default = _with_allocator(_rows([5050] * 3, [5000] * 3), "default", [0, 0, 0])  # 0.05
    no_trim = _with_allocator(_rows([5300] * 3, [5000] * 3), "no-trim", [0, 0, 0])  # 0.30
    got = probe_targets([default, no_trim])
    plain = [t for t in got if t["target"].endswith("(round-robin probe)")]
    untrimmed = [t for t in got if t["target"].endswith("(round-robin probe, heap not trimmed)")]
    assert [t["runs"] for t in plain] == [pytest.approx([0.05])]
    assert [t["runs"] for t in untrimmed] == [pytest.approx([0.3])]
    assert not untrimmed[0]["met"] and plain[0]["met"]
    # Rows from before the option count as the default setting.
    old = _rows([5050] * 3, [5000] * 3)
    assert {t["target"] for t in probe_targets([old])} == {
        t["target"] for t in probe_targets([default])
    }
    mixed = default[:2] + no_trim[2:]
    with pytest.raises(ValueError, match="several allocator settings"):
        probe_targets([mixed])


def test_fault_table_pools_the_steps_of_all_runs():
    runs = [
        _with_allocator(_rows([1] * 3, [1] * 3), "default", faults)
        for faults in ([0, 900, 0], [0, 0, 0], [3000, 0, 0])
    ]
    runs.append(_with_allocator(_rows([1] * 3, [1] * 3), "no-trim", [1, 0, 0]))
    table = {(f["allocator"], f["route"]): f for f in fault_table(runs)}
    assert len(table) == 2 * 4  # two settings, four routes each
    row = table[("default", "k_backward_step")]
    assert row["steps"] == 9
    assert row["mean_per_step"] == pytest.approx(3900 / 9, abs=0.05)
    assert row["share_of_steps_with_faults"] == pytest.approx(2 / 9, abs=5e-4)
    assert row["max_in_one_step"] == 3000
    untrimmed = table[("no-trim", "k_backward_step")]
    assert (untrimmed["steps"], untrimmed["max_in_one_step"]) == (3, 1)
    for r in runs[2]:
        del r["minor_faults"]  # a run without counts is left out
    assert {(f["allocator"], f["route"]): f for f in fault_table(runs)}[("default", "forward")][
        "max_in_one_step"
    ] == 900


def test_probe_refuses_an_unknown_allocator_setting():
    from optimizer_overhead import set_allocator

    with pytest.raises(ValueError, match="'tcmalloc'"):
        set_allocator("tcmalloc")
    set_allocator("default")  # changes nothing


def test_dump_json_round_trips_and_puts_integer_lists_on_one_line():
    obj = {
        "times_us": [1, -2, 30000],
        "floats": [0.5, 1.0],
        "label": "kept as is: [1,2] and [3, 4]",
        "nested": [{"net_times_us": [7, 8]}, []],
    }
    text = dump_json(obj)
    assert json.loads(text) == obj
    assert '"times_us": [1, -2, 30000]' in text
    assert '"net_times_us": [7, 8]' in text
    assert text.endswith("\n")


def _backend_rows(default_us: list[int], exact_us: list[int]) -> list[dict]:
    """A --routes backends probe run: _rows' routes plus the exact solve's."""
    rows = _rows(ours_us=default_us, kb_us=[5000, 5000, 5000])
    exact = dict(rows[-1], route="ours-cagrad_clip-store-exact", times_us=exact_us)
    exact["median_s"] = sorted(exact_us)[1] * 1e-6
    return [*rows, exact]


def test_backend_table_as_computed_by_hand():
    runs = [
        # Default 5100 µs (0.1 of a 1 ms backward); exact 6000 µs median, paired differences
        # 1000, 1000, 3000 against k_backward_step's 5000: 1.0 either way, 6000/5100 the step.
        _backend_rows([5100, 5100, 5100], [6000, 6000, 8000]),
        # Default 5300 µs (0.3); exact 7000 µs: 2.0, 7000/5300.
        _backend_rows([5300, 5300, 5300], [7000, 7000, 7000]),
        _backend_rows([5200, 5200, 5200], [6500, 6500, 6500]),  # 0.2; 1.5, 6500/5200
    ]
    got = {(b["route"]): b for b in backend_table(runs)}
    assert set(got) == {"ours-cagrad_clip-store", "ours-cagrad_clip-store-exact"}
    default, exact = got["ours-cagrad_clip-store"], got["ours-cagrad_clip-store-exact"]
    assert default["overhead"] == pytest.approx(0.2) and default["time_over_default"] == 1.0
    assert default["runs"]["overhead"] == [0.1, 0.3, 0.2]
    assert exact["overhead"] == pytest.approx(1.5)
    assert exact["runs"]["overhead_paired"] == [1.0, 2.0, 1.5]
    assert exact["time_over_default"] == pytest.approx(round(6500 / 5200, 3))


def test_report_backends_refuses_a_run_without_backend_routes(tmp_path: Path):
    from report_backends import main

    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(_rows([5100] * 3, [5000] * 3)))
    with pytest.raises(ValueError, match="--routes backends"):
        main([str(plain)])
    run = tmp_path / "run.json"
    run.write_text(json.dumps(_backend_rows([5100] * 3, [6000] * 3)))
    out = tmp_path / "summary.json"
    assert main([str(run), "--save", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert [b["route"] for b in saved["backends"]] == [
        "ours-cagrad_clip-store",
        "ours-cagrad_clip-store-exact",
    ]


def test_backend_table_keeps_allocator_settings_apart():
    default = _backend_rows([5100] * 3, [6000] * 3)
    no_trim = [dict(r, allocator="no-trim") for r in _backend_rows([5100] * 3, [6000] * 3)]
    assert {b["allocator"] for b in backend_table([no_trim, no_trim])} == {"no-trim"}
    assert {b["allocator"] for b in backend_table([default])} == {"default"}
    with pytest.raises(ValueError, match=r"several allocator settings: \['default', 'no-trim'\]"):
        backend_table([default, no_trim])
