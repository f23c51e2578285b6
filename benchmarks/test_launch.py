"""Host overhead of one CUDA kernel launch, on the CPU.

A training step launches a few dozen kernels; on a GPU each costs the host a few
microseconds in the driver, and every microsecond of Python on the way adds to it. These
cases time the host side alone, with nothing for a device to do:

* ``test_launch_overhead_cuda_emu_sgd``: one call of the CUDA set's wrapper
  (``sgd_update`` on a one-element array) through the emulation (``cuda-emu``): argument
  checks, launch geometry, the launcher's lookup, ctypes and one emulated thread;
* ``test_launch_overhead_cupy_launcher_host``: :class:`CupyLauncher`'s own work per
  launch (its lookup by device, source and name) with a stand-in for CuPy whose kernels
  do nothing: what the CuPy backend adds to CuPy's own launch.

Each records ``us_per_launch``. Kept apart from the GPU cases: these are CPU figures.
"""

from __future__ import annotations

import numpy as np
import pytest

import gpucnn
from gpucnn.kernels.cuda_set import OPTIMIZERS, CudaKernels, CupyLauncher

LAUNCHES = 1000  # per timed call, so that one launch is far above the timer's resolution


def _emu_backend() -> gpucnn.Backend:
    if "cuda-emu" not in gpucnn.available_backends():
        pytest.skip("cuda-emu is not available here (no C++ compiler)")
    return gpucnn.get_backend("cuda-emu")


class _NoCupy:
    """The two things CupyLauncher asks of CuPy, answering without a GPU."""

    class cuda:
        class runtime:
            @staticmethod
            def getDevice() -> int:
                return 0

    class RawModule:
        def __init__(self, code, options, name_expressions) -> None:
            pass

        def get_function(self, name):
            return lambda grid, block, args: None


def test_launch_overhead_cuda_emu_sgd(measure, benchmark):
    """``sgd_update`` on one float32 element through the whole CUDA-set wrapper."""
    backend = _emu_backend()
    kernels: CudaKernels = backend.kernels
    param, grad = np.zeros(1, dtype=np.float32), np.ones(1, dtype=np.float32)

    def launches() -> None:
        for _ in range(LAUNCHES):
            kernels.sgd_update(param, grad, 0.0)

    _measure_launches(measure, benchmark, launches, backend, "cuda-emu-sgd_update")


def test_launch_overhead_cupy_launcher_host(measure, benchmark):
    """CupyLauncher.launch with a do-nothing kernel: the lookup a cached launch pays."""
    launcher = CupyLauncher(_NoCupy)
    args = (np.int32(1),)

    def launches() -> None:
        for _ in range(LAUNCHES):
            launcher.launch(OPTIMIZERS, "sgd_update<float>", (1,), (256,), args)

    _measure_launches(measure, benchmark, launches, gpucnn.get_backend("numpy"), "cupy-launcher-host")


def _measure_launches(measure, benchmark, launches, backend, case: str) -> None:
    measure(launches, backend=backend, kind="launch", case=case, launches=LAUNCHES)
    if "median_s" in benchmark.extra_info:  # timed runs only
        benchmark.extra_info["us_per_launch"] = benchmark.extra_info["median_s"] / LAUNCHES * 1e6
