"""diagnostics() against direct computation from gradients, and the conflict-opt command."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import conflict_opt
from conflict_opt.cli import main

from . import helpers


@pytest.mark.parametrize("method", ["cagrad_clip", "cagrad", "mgda", "linear"])
def test_diagnostics_match_the_gradients(method: str) -> None:
    case = helpers.case(np.random.default_rng(11), 4, kind="conflict")
    gram = case.gram_tensor()
    res = conflict_opt.solve(gram, case.weights, method=method, c=0.5)
    diag = conflict_opt.diagnostics(gram, case.weights, res.coeffs, dual=res.dual)
    d = res.coeffs.numpy() @ case.grads
    np.testing.assert_allclose(diag.directional.numpy(), case.grads @ d, rtol=1e-10)
    cos = case.grads @ d / (np.linalg.norm(case.grads, axis=1) * np.linalg.norm(d))
    np.testing.assert_allclose(diag.cosines.numpy(), cos, rtol=1e-10)
    g0 = np.linalg.norm(case.weights @ case.grads)
    assert float(diag.relative_norm) == pytest.approx(np.linalg.norm(d) / g0, rel=1e-10)
    assert bool(diag.conflict) == bool((case.grads @ d < 0).any())
    p = res.dual.numpy()
    assert bool(diag.clipping_active) == bool((p > case.weights + 1e-12).any())


def test_diagnostics_batched_and_without_dual() -> None:
    rng = np.random.default_rng(3)
    gram = torch.tensor(np.stack([helpers.case(rng, 3).gram for _ in range(5)]))
    res = conflict_opt.solve(gram)
    diag = conflict_opt.diagnostics(gram, None, res.coeffs)
    assert diag.directional.shape == (5, 3)
    assert diag.relative_norm.shape == (5,)
    assert diag.clipping_active is None


def test_diagnostics_zero_direction_has_zero_cosines() -> None:
    diag = conflict_opt.diagnostics(torch.zeros(2, 2), [0.5, 0.5], torch.tensor([0.5, 0.5]))
    assert torch.equal(diag.cosines, torch.zeros(2, dtype=torch.float64))
    assert torch.isnan(diag.relative_norm)


def test_diagnostics_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match=r"end in K=3, got coeffs shape=\(2,\)"):
        conflict_opt.diagnostics(torch.eye(3), None, torch.ones(2))


def test_cli_demo_prints_every_method(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    for method in ("cagrad_clip", "cagrad", "mgda", "linear"):
        assert method in out
    assert "OPTIMAL" in out and "gradient cosines" in out


def test_cli_demo_json_is_consistent_with_solve(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--json", "--method", "cagrad_clip", "--c", "0.7"]) == 0
    report = json.loads(capsys.readouterr().out)
    row = report["rows"][0]
    gram = torch.tensor(report["gram"], dtype=torch.float64)
    res = conflict_opt.solve(gram, method="cagrad_clip", c=0.7)
    np.testing.assert_allclose(row["coeffs"], res.coeffs.numpy(), rtol=1e-12)
    assert row["status"] == "OPTIMAL"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--c", "1.5"], "`c` must be in [0, 1), got c=1.5"),
        (["demo", "--weights", "0.5,0.5"], "--weights needs 3 numbers, got 2"),
        (["demo", "--weights", "0.5,0.6,0.2"], "must sum to 1"),
    ],
)
def test_cli_reports_bad_input(argv: list[str], message: str, capsys) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_console_script_help_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "conflict_opt.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "demo" in out and "conflict-opt" in out
