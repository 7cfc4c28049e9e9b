"""The verifier: its quick run, its report, and that it catches deliberately broken solvers."""

from __future__ import annotations

import dataclasses
import json
import pathlib

import pytest
import torch

import conflict_opt
from conflict_opt import SolveResult
from conflict_opt.cli import main
from conflict_opt.verify import VerifyConfig, verify

# Small enough for the suite, large enough that every check has material: K = 2 runs with
# interior duals (Theorem 3.2's strict gain), K = 3 runs (clipping may lower ρ).
SMALL = VerifyConfig(
    problems=("quadratic", "least_squares"),
    ks=(2, 3),
    cs=(0.5,),
    seeds=(0, 1, 2),
    steps=120,
    sweep=0,
    toy_steps=0,
    output=None,
)


def checks(report) -> dict[str, bool | None]:
    return {check.name: check.passed for check in report.checks}


def test_the_real_solver_passes_every_theorem_check() -> None:
    report = verify(SMALL)
    assert report.ok, report.table()
    assert set(checks(report)) >= {
        "theorem_3_1",
        "rate",
        "step_certificate",
        "theorem_3_2",
        "weight_respecting",
    }
    figures = {c.name: c.figures for c in report.checks}
    assert figures["theorem_3_2"]["strict_steps"] > 0
    assert 0 < figures["theorem_3_1"]["worst_ratio"] <= 1


def skip_clipping(gram, weights, *, method, c):
    """Answers cagrad_clip with unclipped CAGrad."""
    method = "cagrad" if method == "cagrad_clip" else method
    return conflict_opt.solve(gram, weights, method=method, c=c)


def rescale(gram, weights, *, method, c):
    """Divides the step by 1 + c², as the official CAGrad code does."""
    res = conflict_opt.solve(gram, weights, method=method, c=c)
    if method in ("cagrad", "cagrad_clip"):
        res = res._replace(coeffs=res.coeffs / (1 + c**2))
    return res


def uniform_start(gram, weights, *, method, c):
    """Returns the uniform start, like an SLSQP run that stopped after one iteration."""
    res = conflict_opt.solve(gram, weights, method=method, c=c)
    k = gram.shape[-1]
    uniform = torch.full_like(res.coeffs, 1.0 / k)
    return SolveResult(uniform, uniform, uniform, res.status, res.iterations, res.gap)


@pytest.mark.parametrize(
    ("solver", "broken"),
    [
        (skip_clipping, "theorem_3_2"),
        (rescale, "step_certificate"),
        (uniform_start, "weight_respecting"),
    ],
)
def test_broken_solvers_fail_the_check_they_break(solver, broken: str) -> None:
    report = verify(SMALL, solver=solver)
    assert not report.ok
    assert checks(report)[broken] is False, report.table()


def test_bad_configuration_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown problem 'rosenbrock'"):
        VerifyConfig(problems=("rosenbrock",))
    with pytest.raises(ValueError, match=r"every c must be in \[0, 1\), got cs=\(1.0,\)"):
        VerifyConfig(cs=(1.0,))
    with pytest.raises(ValueError, match=r"`step_scale` must be in \(0, 1\], got step_scale=2"):
        VerifyConfig(step_scale=2.0)


def test_cli_quick_run_writes_report_and_plots(tmp_path: pathlib.Path, capsys) -> None:
    assert main(["verify", "--quick", "--output", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "theorem_3_1" in out and "all theorem checks passed" in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["ok"] is True
    for name in ("convergence.png", "toy.png", "front.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    assert {row["method"] for row in report["toy"]} == {"linear", "mgda", "cagrad", "cagrad_clip"}


def test_cli_exit_code_is_nonzero_when_a_check_fails(monkeypatch, capsys) -> None:
    import conflict_opt.verify as module

    real = module.verify
    monkeypatch.setattr(module, "verify", lambda config, progress: real(config, solver=rescale))
    small = ["--problems", "quadratic", "--ks", "2", "--cs", "0.5", "--seeds", "0"]
    args = ["verify", *small, "--steps", "60", "--sweep", "0", "--toy-steps", "0", "--no-output"]
    assert main(args) == 1
    assert "SOME THEOREM CHECKS FAILED" in capsys.readouterr().out


def test_report_is_json_serialisable() -> None:
    report = verify(dataclasses.replace(SMALL, problems=("quadratic",), seeds=(0,), steps=40))
    json.dumps(report.to_json())
