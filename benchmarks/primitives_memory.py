"""Peak memory of ``gram`` / ``combine_`` and their baselines, beyond the inputs and outputs.

Each measurement runs in a fresh subprocess (``rss_probe``): it builds the inputs
(``primitives_cases``) and the provider's call, reads the process's peak resident memory
(``ru_maxrss``), calls the provider once, and reads the peak again; the difference is the
call's own peak allocation. A provider
that materialises the K×P matrix shows about K·P·4 bytes (float32) or twice that (float64).
CPU only: on CUDA ``torch.cuda.max_memory_allocated`` would be the measure. Run::

    python benchmarks/primitives_memory.py --out /tmp/prim_memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rss_probe import peak_rss_bytes, run_child

PROVIDERS = ("torch", "torch_ops", "reference", "stack", "per_param", "torchjd")
SELECTION = [(shape, k) for shape in ("P10M", "transformer") for k in (2, 8)]


def one(kind: str, shape: str, k: int, provider: str) -> dict[str, object]:
    import torch
    from primitives_cases import combine_call, gram_call, inputs

    torch.set_num_threads(int(os.environ.get("CONFLICT_OPT_BENCH_PRIMITIVE_THREADS", "2")))
    grads, p = inputs(k, shape)
    call = (gram_call if kind == "gram" else combine_call)(provider, grads, p)
    before = peak_rss_bytes()
    call()
    extra = peak_rss_bytes() - before
    kp = 4 * k * p
    return {
        "kind": kind,
        "shape": shape,
        "k": k,
        "p": p,
        "provider": provider,
        "peak_extra_bytes": extra,
        "kp_bytes": kp,
        "peak_extra_over_kp": extra / kp,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=False)
    parser.add_argument("--one", nargs=4, metavar=("KIND", "SHAPE", "K", "PROVIDER"))
    args = parser.parse_args(argv)
    if args.one:
        kind, shape, k, provider = args.one
        print(json.dumps(one(kind, shape, int(k), provider)))
        return 0
    rows = []
    for kind in ("gram", "combine"):
        for shape, k in SELECTION:
            for provider in PROVIDERS:
                row = run_child(__file__, kind, shape, k, provider)
                rows.append(row)
                print(
                    f"{kind:8s} {shape:12s} K={k} {provider:10s} "
                    f"peak extra {row['peak_extra_bytes'] / 2**20:9.1f} MiB "
                    f"= {row['peak_extra_over_kp']:.3f} x K*P*4"
                )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
