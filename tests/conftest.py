"""Shared fixtures: one test body runs on every backend the registry knows."""

from __future__ import annotations

import numpy as np
import pytest

import gpucnn
from gpucnn.backend import BackendUnavailable


def _backend_or_skip(name: str) -> gpucnn.Backend:
    try:
        return gpucnn.get_backend(name)
    except BackendUnavailable as exc:
        pytest.skip(f"backend {name!r} unavailable: {exc}")


# The cupy cases carry the `gpu` mark, so `pytest -m gpu` runs every layer, model and
# training test on the GPU as well.
BACKEND_PARAMS = [pytest.param(n, marks=pytest.mark.gpu) if n == "cupy" else n for n in gpucnn.known_backends()]


@pytest.fixture(params=BACKEND_PARAMS)
def backend(request) -> gpucnn.Backend:
    """Every registered backend; the unavailable ones skip with the reason.

    The test body runs with the backend current (``gpucnn.use_backend``), whatever
    ``GPUCNN_BACKEND`` says.
    """
    b = _backend_or_skip(request.param)
    with gpucnn.use_backend(b):
        yield b


@pytest.fixture
def numpy_kernels():
    """The oracle kernel set."""
    return gpucnn.get_backend("numpy").kernels


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
