"""The verifier: its quick run, its report, and that it catches deliberately broken solvers."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re

import pytest
import torch
import tqdm

import conflict_opt
from conflict_opt import SolveResult
from conflict_opt.cli import main
from conflict_opt.verify import VerifyConfig, verify

# Small enough for the suite, large enough that every check has material: K = 2 runs with
# interior duals (Theorem 3.2's strict gain), K = 3 runs (clipping may lower ρ), and runs long
# enough (200 steps) for weight_respecting to be a theorem check.
SMALL = VerifyConfig(
    problems=("quadratic", "least_squares"),
    ks=(2, 3),
    cs=(0.5,),
    seeds=(0, 1, 2),
    steps=200,
    sweep=0,
    toy_steps=0,
    output=None,
)
# Smaller still, for the broken solvers below: every one of them fails here too (60 steps,
# except where weight_respecting, a theorem check from 200 steps, is the one to fail).
TINY = dataclasses.replace(SMALL, problems=("quadratic",), seeds=(0,), steps=60)


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
    # Every check had material: none passed vacuously.
    assert report.not_applicable == []
    assert figures["solves"]["gaps_tested"] > 1000
    assert figures["step_certificate"]["radius_tested"] > 500
    assert figures["step_certificate"]["descent_tested"] > 500
    assert figures["theorem_3_2"]["strict_instances"] >= 50
    assert figures["theorem_3_2"]["gain_identity_error"] <= 1e-12


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


def is_cagrad(method: str) -> bool:
    return method in ("cagrad", "cagrad_clip")


def ray(gram, weights, clipped, c):
    """RACO's coefficients a = w + c‖g_0‖ p̃/‖G̃_p‖ (a = w where G̃_p = 0) for any p̃."""
    norm_0 = torch.einsum("...i,...ij,...j->...", weights, gram, weights).clamp_min(0).sqrt()
    norm_p = torch.einsum("...i,...ij,...j->...", clipped, gram, clipped).clamp_min(0).sqrt()
    factor = torch.where(norm_p > 0, c * norm_0 / torch.where(norm_p > 0, norm_p, 1.0), 0.0)
    return weights + factor.unsqueeze(-1) * clipped


def linear_step(gram, weights, *, method, c):
    """Steps along g_0 but reports the true dual: the correction is dropped."""
    res = conflict_opt.solve(gram, weights, method=method, c=c)
    return res._replace(coeffs=weights.clone()) if is_cagrad(method) else res


def flipped(gram, weights, *, method, c):
    """Turns the correction round: G_0 = g_0 − c‖g_0‖ G̃_p/‖G̃_p‖, same radius."""
    res = conflict_opt.solve(gram, weights, method=method, c=c)
    return res._replace(coeffs=2 * weights - res.coeffs) if is_cagrad(method) else res


def unclipped_step(gram, weights, *, method, c):
    """Reports CAGrad-Clip's clipped dual but steps with unclipped CAGrad's coefficients."""
    res = conflict_opt.solve(gram, weights, method=method, c=c)
    if method == "cagrad_clip":
        res = res._replace(coeffs=conflict_opt.solve(gram, weights, method="cagrad", c=c).coeffs)
    return res


def dual_is_w(gram, weights, *, method, c):
    """p = p̃ = w without solving: G_0 = (1 + c) g_0, every field consistent."""
    res = conflict_opt.solve(gram, weights, method=method, c=c)
    if is_cagrad(method):
        res = res._replace(coeffs=(1 + c) * weights, dual=weights.clone(), clipped=weights.clone())
    return res


def wrong_radius_dual(gram, weights, *, method, c):
    """Solves the dual at c = 0.05 and builds the step with the right c: consistent fields."""
    res = conflict_opt.solve(gram, weights, method=method, c=0.05 if is_cagrad(method) else c)
    return res._replace(coeffs=ray(gram, weights, res.clipped, c)) if is_cagrad(method) else res


def clip_up(gram, weights, *, method, c):
    """Clips with max(p, w) instead of min(p, w)."""
    res = conflict_opt.solve(gram, weights, method=method, c=c)
    if method == "cagrad_clip":
        clipped = torch.maximum(res.dual, weights)
        res = res._replace(clipped=clipped, coeffs=ray(gram, weights, clipped, c))
    return res


def random_correction(gram, weights, *, method, c):
    """A correction of the right length in a random direction of the gradients' span."""
    res = conflict_opt.solve(gram, weights, method=method, c=c)
    if is_cagrad(method):
        gen = torch.Generator().manual_seed(0)
        q = torch.rand(weights.shape, generator=gen, dtype=weights.dtype)
        res = res._replace(coeffs=ray(gram, weights, q, c))
    return res


def mgda_uniform(gram, weights, *, method, c):
    """MGDA answered by the uniform average."""
    if method == "mgda":
        k = gram.shape[-1]
        uniform = torch.full(gram.shape[:-1], 1.0 / k, dtype=gram.dtype)
        return conflict_opt.solve(gram, uniform, method="linear", c=0.0)
    return conflict_opt.solve(gram, weights, method=method, c=c)


def cagrad_clipped(gram, weights, *, method, c):
    """CAGrad answered by CAGrad-Clip."""
    method = "cagrad_clip" if method == "cagrad" else method
    return conflict_opt.solve(gram, weights, method=method, c=c)


def linear_with_radius(gram, weights, *, method, c):
    """Linear answered by CAGrad-Clip at c = 0.4."""
    if method == "linear":
        return conflict_opt.solve(gram, weights, method="cagrad_clip", c=0.4)
    return conflict_opt.solve(gram, weights, method=method, c=c)


def max_iter(gram, weights, *, method, c):
    """The right answers, every one reported as MAX_ITER."""
    res = conflict_opt.solve(gram, weights, method=method, c=c)
    return res._replace(status=torch.full_like(res.status, int(conflict_opt.Status.MAX_ITER)))


@pytest.mark.parametrize(
    ("solver", "broken"),
    [
        (skip_clipping, {"solves", "theorem_3_2"}),
        (rescale, {"solves", "step_certificate"}),
        (uniform_start, {"solves", "weight_respecting"}),
        (linear_step, {"solves", "step_certificate"}),
        (flipped, {"solves", "theorem_3_2"}),
        (unclipped_step, {"solves", "theorem_3_2"}),
        (dual_is_w, {"solves", "theorem_3_2"}),
        (wrong_radius_dual, {"solves", "theorem_3_2"}),
        (clip_up, {"solves", "theorem_3_2"}),
        (random_correction, {"solves", "theorem_3_2"}),
        (mgda_uniform, {"solves"}),
        (cagrad_clipped, {"solves"}),
        (linear_with_radius, {"solves", "step_certificate"}),
        (max_iter, {"solves", "theorem_3_2"}),
    ],
    ids=lambda x: x.__name__ if callable(x) else None,
)
def test_broken_solvers_fail_the_checks_they_break(solver, broken: set[str]) -> None:
    steps = 200 if "weight_respecting" in broken else TINY.steps
    report = verify(dataclasses.replace(TINY, steps=steps), solver=solver)
    assert not report.ok
    failed = {name for name, passed in checks(report).items() if passed is False}
    assert broken <= failed, report.table()


def test_only_mgda_leaves_the_weighted_checks_not_applicable(tmp_path: pathlib.Path) -> None:
    config = dataclasses.replace(TINY, methods=("mgda",), ks=(2,), output=tmp_path / "out")
    report = verify(config)
    assert report.ok
    assert report.not_applicable == ["step_certificate", "theorem_3_2", "weight_respecting"]
    assert "nothing to test here for: step_certificate, theorem_3_2" in report.table()
    assert "n/a" in report.table() and "all theorem checks passed" not in report.table()
    # max_relative_slack is -inf here: the file is strict JSON all the same.
    text = (tmp_path / "out" / "report.json").read_text()
    data = json.loads(text, parse_constant=lambda name: pytest.fail(f"non-JSON {name}"))
    assert data["not_applicable"] == report.not_applicable
    json.dumps(report.to_json(), allow_nan=False)


def test_short_runs_report_weight_respecting_without_gating_it() -> None:
    report = verify(TINY, solver=uniform_start)
    check = {c.name: c for c in report.checks}["weight_respecting"]
    assert check.passed is None and check.figures["reason"] == "runs of 60 steps"
    assert check.figures["failures"] > 0  # measured all the same


def test_progress_bar_counts_every_tick(monkeypatch) -> None:
    counted = {}

    class Bar:
        def __init__(self, total, **_):
            counted["total"], counted["ticks"] = total, 0

        def update(self, n):
            counted["ticks"] += n

        def close(self):
            pass

    monkeypatch.setattr(tqdm, "tqdm", Bar)
    config = dataclasses.replace(TINY, ks=(2,), steps=20, sweep=3, toy_steps=250)
    verify(config, progress=True)
    assert counted == {"total": 20 + 20 + 4 * 3, "ticks": 20 + 20 + 4 * 3}


def test_bad_configuration_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown problem 'rosenbrock'"):
        VerifyConfig(problems=("rosenbrock",))
    with pytest.raises(ValueError, match=r"every c must be in \[0, 1\), got cs=\(1.0,\)"):
        VerifyConfig(cs=(1.0,))
    with pytest.raises(ValueError, match=r"`step_scale` must be in \(0, 1\], got step_scale=2"):
        VerifyConfig(step_scale=2.0)
    with pytest.raises(ValueError, match="`dim` must be at least 2, got dim=1"):
        VerifyConfig(dim=1)
    with pytest.raises(
        ValueError, match=re.escape("`sweep` must be 0 (skip) or at least 2, got sweep=1")
    ):
        VerifyConfig(sweep=1)
    with pytest.raises(
        ValueError, match=re.escape("`toy_steps` must be >= 0 (0 skips), got toy_steps=-1")
    ):
        VerifyConfig(toy_steps=-1)
    with pytest.raises(ValueError, match="`toy_lr` must be a positive number, got toy_lr=nan"):
        VerifyConfig(toy_lr=float("nan"))
    with pytest.raises(
        ValueError, match=r"`seeds` must be one or more seeds >= 0, got seeds=\(-1,\)"
    ):
        VerifyConfig(seeds=(-1,))
    with pytest.raises(ValueError, match="`methods` must name at least one value"):
        VerifyConfig(methods=())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "0"], "`steps` must be at least 10, got steps=0."),
        (["--dim", "0"], "`dim` must be at least 2, got dim=0."),
        (["--step-scale", "0"], "`step_scale` must be in (0, 1], got step_scale=0.0."),
        (["--sweep", "-3"], "`sweep` must be 0 (skip) or at least 2, got sweep=-3."),
        (
            ["--quick", "--steps", "5", "--problems", "rosenbrock"],
            "--quick is a fixed configuration and takes no run options; got --problems, --steps.",
        ),
        (["--output", ""], "--output is empty; name a folder, or pass --no-output."),
    ],
)
def test_cli_rejects_bad_options_before_running(args, message: str, capsys, monkeypatch) -> None:
    import conflict_opt.cli as cli

    monkeypatch.setattr(cli, "verify", lambda *a, **k: pytest.fail("verify ran"))
    assert main(["verify", *args, "--no-progress"]) == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"


def test_cli_rejects_an_output_it_cannot_write_before_running(
    tmp_path: pathlib.Path, capsys, monkeypatch
) -> None:
    import conflict_opt.cli as cli

    monkeypatch.setattr(cli, "verify", lambda *a, **k: pytest.fail("verify ran"))
    afile = tmp_path / "afile"
    afile.write_text("")
    assert main(["verify", "--output", str(afile)]) == 2
    assert f"--output '{afile}' is a file, not a folder." in capsys.readouterr().err
    assert main(["verify", "--output", str(afile / "sub")]) == 2
    assert f"cannot write --output '{afile / 'sub'}'" in capsys.readouterr().err


def test_cli_passes_zero_and_other_falsy_values_through(monkeypatch) -> None:
    import conflict_opt.cli as cli

    seen = {}

    def fake(config, progress):
        seen["config"] = config
        return verify(dataclasses.replace(TINY, steps=10, ks=(2,)))

    monkeypatch.setattr(cli, "verify", fake)
    main(["verify", "--sweep", "0", "--toy-steps", "0", "--cs", "0", "--no-output"])
    config = seen["config"]
    assert (config.sweep, config.toy_steps, config.cs) == (0, 0, (0.0,))
    assert config.steps == VerifyConfig().steps  # an option not given keeps its default


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
    import conflict_opt.cli as cli

    monkeypatch.setattr(cli, "verify", lambda config, progress: verify(config, solver=rescale))
    small = ["--problems", "quadratic", "--ks", "2", "--cs", "0.5", "--seeds", "0"]
    args = ["verify", *small, "--steps", "60", "--sweep", "0", "--toy-steps", "0", "--no-output"]
    assert main(args) == 1
    assert "SOME THEOREM CHECKS FAILED" in capsys.readouterr().out


def test_report_is_strict_json() -> None:
    report = verify(TINY)
    json.dumps(report.to_json(), allow_nan=False)
