"""Shared fixtures: deterministic seeds, device/dtype from the environment, hypothesis profile.

``CONFLICT_OPT_TEST_DEVICE`` (default ``cpu``) and ``CONFLICT_OPT_TEST_DTYPE`` (default
``float64``) let the same suite run on CUDA or in another Gram dtype.
"""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

# Without a GPU the triton kernels run in triton's interpreter. The mode is fixed when the
# kernels are decorated, so it must be set before conflict_opt.kernels is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("ci")

DEVICE = torch.device(os.environ.get("CONFLICT_OPT_TEST_DEVICE", "cpu"))
DTYPE = getattr(torch, os.environ.get("CONFLICT_OPT_TEST_DTYPE", "float64"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture
def device() -> torch.device:
    return DEVICE


@pytest.fixture
def dtype() -> torch.dtype:
    return DTYPE


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import cvxpy  # noqa: F401
    except ImportError:
        have_cvxpy = False
    else:
        have_cvxpy = True
    skip_exact = pytest.mark.skip(
        reason="needs the [exact] extra: pip install 'conflict-opt[exact]'"
    )
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "exact" in item.keywords and not have_cvxpy:
            item.add_marker(skip_exact)
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_cuda)
