"""What a measurement ran on: CPU, cores, memory, GPU, driver and library versions.

``gpucnn sweep`` stores :func:`machine_description` beside its results; the benchmark
suite in ``benchmarks/`` stores it in the pytest-benchmark JSON (``machine_info``).
"""

from __future__ import annotations

import os
import platform
from importlib import metadata

__all__ = ["ENVIRONMENT", "LIBRARIES", "machine_description"]

# Distributions whose versions are recorded (None when not installed).
LIBRARIES = ("gpucnn", "numpy", "numba", "cupy-cuda12x", "cupy-cuda13x", "torch")
# Environment variables that change how fast the libraries run; recorded when set.
ENVIRONMENT = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS", "CUDA_VISIBLE_DEVICES")


def distribution_version(distribution: str) -> str | None:
    """The installed version of ``distribution`` (``"numpy"``, ``"cupy-cuda12x"``), or None."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def meminfo_bytes(field: str) -> int | None:
    """The ``field`` of /proc/meminfo (``MemTotal``, ``MemAvailable``, ...) in bytes, or None
    where there is no such file (not Linux) or no such field."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _gpu_description() -> dict | None:
    """Name, memory, driver and runtime of CUDA device 0 through CuPy, or None."""
    from importlib.util import find_spec

    if find_spec("cupy") is None:
        return None
    try:
        import cupy

        if not cupy.is_available():
            return None
        runtime = cupy.cuda.runtime
        props = runtime.getDeviceProperties(0)
        name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        return {
            "name": name,
            "memory_bytes": int(props["totalGlobalMem"]),
            "compute_capability": f"{props['major']}.{props['minor']}",
            "driver_version": runtime.driverGetVersion(),
            "runtime_version": runtime.runtimeGetVersion(),
            "devices": runtime.getDeviceCount(),
        }
    except Exception as exc:  # a broken driver must not break the description
        return {"error": f"{type(exc).__name__}: {exc}"}


def _blas_description() -> list[dict]:
    try:
        import numpy  # noqa: F401  (loads the BLAS that threadpoolctl then reports)
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    keys = ("internal_api", "version", "num_threads", "threading_layer", "architecture")
    return [{k: pool.get(k) for k in keys if pool.get(k) is not None} for pool in threadpool_info()]


def machine_description() -> dict:
    """CPU, cores, memory, GPU, driver and library versions: what a measurement ran on.

    Keys: ``cpu``, ``cores``, ``usable_cores``, ``memory_bytes``, ``python``, ``platform``,
    ``libraries`` (:data:`LIBRARIES` → version or None), ``blas`` (threadpoolctl's pools),
    ``gpu`` (None without a usable CUDA device) and ``environment`` (the variables of
    :data:`ENVIRONMENT` that are set).
    """
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "memory_bytes": meminfo_bytes("MemTotal"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libraries": {name: distribution_version(name) for name in LIBRARIES},
        "blas": _blas_description(),
        "gpu": _gpu_description(),
        "environment": {name: os.environ[name] for name in ENVIRONMENT if name in os.environ},
    }
