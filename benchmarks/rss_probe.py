"""Peak resident memory of one call, measured in a fresh process (the memory scripts' shared part).

A script's ``--one ...`` mode builds its inputs, reads :func:`peak_rss_bytes`, makes the call,
and reads it again: the difference is the call's own peak. :func:`run_child` starts that mode in
a fresh process with glibc's mmap threshold fixed at 64 KiB: otherwise the threshold grows as
memory is freed, freed blocks stay resident, and the peak blurs. Linux only (``ru_maxrss`` in
KiB).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from typing import Any

ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_child(script: str, *args: object) -> dict[str, Any]:
    """Run ``script --one *args`` in a fresh process and return the JSON line it prints last."""
    cmd = [sys.executable, script, "--one", *map(str, args)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, env=ENV)
    return json.loads(done.stdout.strip().splitlines()[-1])
