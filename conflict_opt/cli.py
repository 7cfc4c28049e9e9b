"""The ``conflict-opt`` command. Subcommands: ``verify`` (the main job) and ``demo``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import tempfile
from collections.abc import Callable, Sequence

import torch

from . import __version__
from ._types import BACKENDS, METHODS, Status
from .diagnostics import diagnostics
from .solvers import solve
from .verify import PROBLEMS, VERIFY_METHODS, VerifyConfig, verify

_DEFAULTS = VerifyConfig()

# Three objectives whose gradients conflict pairwise in part: the first two are nearly opposite
# (think helpfulness vs harmlessness), the third is mostly orthogonal (conciseness).
_DEMO_GRADS = [
    [1.0, 0.2, 0.0, 0.1],
    [-0.8, 0.5, 0.1, 0.0],
    [0.1, -0.3, 0.9, 0.2],
]


def _parse_floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",")]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from err


def _demo(args: argparse.Namespace) -> int:
    grads = torch.tensor(_DEMO_GRADS, dtype=torch.float64)
    gram = grads @ grads.T
    weights = args.weights
    if weights is not None and len(weights) != gram.shape[0]:
        print(
            f"error: --weights needs {gram.shape[0]} numbers, got {len(weights)}: {weights}",
            file=sys.stderr,
        )
        return 2
    methods = METHODS if args.method == "all" else (args.method,)
    rows = []
    for method in methods:
        result = solve(gram, weights, method=method, c=args.c, backend=args.backend)
        # Clipping exists only in RACO's method; elsewhere comparing p with w means nothing.
        dual = result.dual if method == "cagrad_clip" else None
        diag = diagnostics(gram, weights, result.coeffs, dual=dual)
        rows.append(
            {
                "method": method,
                "coeffs": result.coeffs.tolist(),
                "dual": result.dual.tolist(),
                "clipped": result.clipped.tolist(),
                "status": Status(int(result.status)).name,
                "gap": float(result.gap),
                "directional": diag.directional.tolist(),
                "cosines": diag.cosines.tolist(),
                "relative_norm": float(diag.relative_norm),
                "clipping_active": None if dual is None else bool(diag.clipping_active),
            }
        )
    if args.json:
        print(json.dumps({"gram": gram.tolist(), "weights": weights, "c": args.c, "rows": rows}))
        return 0
    w = weights or [1.0 / gram.shape[0]] * gram.shape[0]
    print(f"conflict-opt {__version__} demo: K=3 objectives, weights={w}, c={args.c}")
    print("gradient cosines:")
    norms = gram.diagonal().sqrt()
    cos = gram / (norms[:, None] * norms[None, :])
    for i in range(gram.shape[0]):
        print("  " + "  ".join(f"{float(v):+.3f}" for v in cos[i]))
    header = f"{'method':<12} {'coeffs a':<26} {'<g_i, d>':<26} {'|d|/|g0|':>8} {'clip':>5}"
    print(header + f"  {'status':<10} {'gap':>8}")
    for row in rows:
        coeffs = " ".join(f"{v:7.4f}" for v in row["coeffs"])
        dirs = " ".join(f"{v:+7.4f}" for v in row["directional"])
        clip = {None: "-", True: "yes", False: "no"}[row["clipping_active"]]
        print(
            f"{row['method']:<12} {coeffs:<26} {dirs:<26} {row['relative_norm']:8.4f} "
            f"{clip:>5}  {row['status']:<10} {row['gap']:8.1e}"
        )
    print("d = sum_k a_k g_k; <g_i, d> > 0 means objective i decreases along d.")
    return 0


def _parse_list(kind: type) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(x) for x in text.split(",") if x)
        except ValueError as err:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list, got {text!r}"
            ) from err

    return parse


# The run options: every VerifyConfig field but the output folder, which has its own flags.
_VERIFY_OPTIONS = tuple(f.name for f in dataclasses.fields(VerifyConfig) if f.name != "output")
_QUICK = VerifyConfig.quick()


def _verify(args: argparse.Namespace) -> int:
    given = {name: getattr(args, name) for name in _VERIFY_OPTIONS}
    given = {name: value for name, value in given.items() if value is not None}
    if args.quick and given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise ValueError(f"--quick is a fixed configuration and takes no run options; got {flags}.")
    output = None if args.no_output else _writable_folder(args.output)
    config = (
        VerifyConfig.quick(output=output) if args.quick else VerifyConfig(**given, output=output)
    )
    report = verify(config, progress=not args.no_progress and sys.stderr.isatty())
    print(report.table())
    if report.files:
        print("wrote: " + ", ".join(report.files))
    return 0 if report.ok else 1


def _csv(values: Sequence[object]) -> str:
    return ",".join(map(str, values))


def _writable_folder(text: str) -> pathlib.Path:
    """The ``--output`` folder, created and probed with a file before anything runs, so that a
    bad path fails at once rather than after the whole run."""
    if not text.strip():
        raise ValueError("--output is empty; name a folder, or pass --no-output.")
    path = pathlib.Path(text)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--output {text!r} is a file, not a folder.")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise ValueError(f"cannot write --output {text!r}: {err.strerror or err}.") from None
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="conflict-opt",
        description="Conflict-averse multi-objective update directions (RACO CAGrad-Clip, "
        "CAGrad, MGDA, linear scalarisation).",
    )
    parser.add_argument("--version", action="version", version=f"conflict-opt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    ver = sub.add_parser(
        "verify",
        help="check RACO's convergence theorems on synthetic problems (the main job)",
        description="Run deterministic gradient descent with each method on synthetic "
        "problems and check Theorem 3.1, each solve's answer, the per-step certificate, "
        "Theorem 3.2, weight-respecting limits and the Pareto-front sweep; reproduce the "
        "CAGrad toy. "
        "Exits 1 when a theorem check fails. See docs/verify.md.",
    )
    ver.add_argument(
        "--quick",
        action="store_true",
        help=f"a fixed smoke run of about 11 s ({_csv(_QUICK.problems)}, K = {_csv(_QUICK.ks)}, "
        f"c = {_csv(_QUICK.cs)}, seed {_csv(_QUICK.seeds)}, {_QUICK.steps} steps); no other run "
        "option may be given with it",
    )
    ver.add_argument(
        "--problems",
        type=_parse_list(str),
        help=f"comma-separated, from {','.join(PROBLEMS)} (default: all)",
    )
    ver.add_argument(
        "--methods",
        type=_parse_list(str),
        help=f"comma-separated, from {','.join(VERIFY_METHODS)} (default: all)",
    )
    ver.add_argument(
        "--ks",
        type=_parse_list(int),
        help=f"numbers of objectives, each >= 2 (default: {_csv(_DEFAULTS.ks)})",
    )
    ver.add_argument(
        "--cs", type=_parse_list(float), help=f"radii c in [0, 1) (default: {_csv(_DEFAULTS.cs)})"
    )
    ver.add_argument(
        "--seeds", type=_parse_list(int), help=f"seeds >= 0 (default: {_csv(_DEFAULTS.seeds)})"
    )
    ver.add_argument(
        "--steps", type=int, help=f"gradient steps per run, >= 10 (default: {_DEFAULTS.steps})"
    )
    ver.add_argument(
        "--dim", type=int, help=f"parameter dimension, >= 2 (default: {_DEFAULTS.dim})"
    )
    ver.add_argument(
        "--step-scale",
        type=float,
        help=f"η = step_scale / L, in (0, 1] (default: {_DEFAULTS.step_scale})",
    )
    ver.add_argument(
        "--sweep",
        type=int,
        help=f"weights in the front sweep, 0 skips it, else >= 2 (default: {_DEFAULTS.sweep})",
    )
    ver.add_argument(
        "--toy-steps",
        type=int,
        help=f"Adam steps on the CAGrad toy, 0 skips it (default: {_DEFAULTS.toy_steps})",
    )
    ver.add_argument(
        "--toy-lr",
        type=float,
        help=f"Adam's learning rate on the toy (default: {_DEFAULTS.toy_lr})",
    )
    ver.add_argument(
        "--output",
        default="verify-output",
        help="folder for report.json and the plots, created if needed (default: verify-output)",
    )
    ver.add_argument("--no-output", action="store_true", help="write no files")
    ver.add_argument("--no-progress", action="store_true", help="no progress bar")
    ver.set_defaults(func=_verify)
    demo = sub.add_parser(
        "demo",
        help="solve a small three-objective conflict and print coefficients and diagnostics",
        description="Solve a fixed three-objective conflicting problem with each method and "
        "print the coefficients, directional derivatives, step size, status and certificate.",
    )
    demo.add_argument("--method", choices=("all", *METHODS), default="all")
    demo.add_argument("--backend", choices=BACKENDS, default="auto")
    demo.add_argument("--c", type=float, default=0.4, help="radius c in [0, 1) (default 0.4)")
    demo.add_argument(
        "--weights", type=_parse_floats, default=None, help="comma-separated simplex weights"
    )
    demo.add_argument("--json", action="store_true", help="print one JSON object instead")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
