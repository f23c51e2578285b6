"""Shared fixtures and Hypothesis profiles: one test body runs on every backend.

Hypothesis runs the ``repeatable`` profile unless ``HYPOTHESIS_PROFILE`` names another:
derandomized, so every run of the suite draws the same examples and a pass or a failure
repeats. ``HYPOTHESIS_PROFILE=explore`` draws fresh random examples, 500 a test instead of
25, to look for new failures; it prints how to reproduce the one it finds.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest
from hypothesis import settings

import gpucnn
from gpucnn.backend import BackendUnavailable

settings.register_profile("repeatable", max_examples=25, derandomize=True, database=None, deadline=None)
settings.register_profile("explore", max_examples=500, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

# The layers' portability check: array_api_strict arrays with the generic kernel set. A
# test-only backend, not in the registry.
STRICT = "array-api-strict"


@functools.cache
def _strict_backend() -> gpucnn.Backend:
    from .strict_backend import make_strict_backend

    return make_strict_backend()


def backend_or_skip(name: str) -> gpucnn.Backend:
    """The backend called ``name``; the test skips, with the reason, when it cannot run here."""
    if name == STRICT:
        pytest.importorskip("array_api_strict", reason="the array-api-strict backend needs array_api_strict")
        return _strict_backend()
    try:
        return gpucnn.get_backend(name)
    except BackendUnavailable as exc:
        pytest.skip(f"backend {name!r} unavailable: {exc}")


# The cupy cases carry the `gpu` mark, so `pytest -m gpu` runs every layer, model and
# training test on the GPU as well.
BACKEND_PARAMS = [
    pytest.param(name, marks=pytest.mark.gpu) if name == "cupy" else name for name in [*gpucnn.known_backends(), STRICT]
]


@pytest.fixture(params=BACKEND_PARAMS)
def backend(request) -> gpucnn.Backend:
    """Every registered backend and array-api-strict; the unavailable ones skip with the reason.

    The test body runs with the backend current (``gpucnn.use_backend``), whatever
    ``GPUCNN_BACKEND`` says.
    """
    b = backend_or_skip(request.param)
    with gpucnn.use_backend(b):
        yield b


@pytest.fixture
def numpy_kernels():
    """The oracle kernel set."""
    return gpucnn.get_backend("numpy").kernels


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def results_on_threads(counts, compute) -> list:
    """``compute()`` with Numba on each thread count of ``counts`` in turn (at most
    ``NUMBA_NUM_THREADS``), small launches included (``parallel_min_bytes`` 0), its results
    in that order; the thread count and the threshold are put back after."""
    numba = pytest.importorskip("numba", reason="the numba kernel set needs Numba")
    from gpucnn.kernels import numba_runtime

    threads, min_bytes = numba.get_num_threads(), numba_runtime.parallel_min_bytes
    results = []
    try:
        numba_runtime.parallel_min_bytes = 0
        for count in counts:
            numba.set_num_threads(min(count, numba.config.NUMBA_NUM_THREADS))
            results.append(compute())
    finally:
        numba.set_num_threads(threads)
        numba_runtime.parallel_min_bytes = min_bytes
    return results
