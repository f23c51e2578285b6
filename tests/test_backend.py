"""The backend registry: names, defaults, context managers, clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
import types

import numpy as np
import pytest

import gpucnn
from gpucnn import backend as registry
from gpucnn.backend import BackendUnavailable


def test_known_names_and_numpy_always_available():
    assert {"numpy", "numba", "cupy", "cuda-emu"} <= set(gpucnn.known_backends())
    assert "numpy" in gpucnn.available_backends()


def test_unknown_backend_lists_the_known_names():
    with pytest.raises(ValueError, match="unknown backend 'tpu'.*numpy.*numba.*cupy"):
        gpucnn.get_backend("tpu")
    with pytest.raises(ValueError, match="known backends"):
        with gpucnn.use_backend("tpu"):
            pass


def test_use_backend_nests_and_restores():
    outer = gpucnn.get_backend()
    with gpucnn.use_backend("numpy") as b:
        assert gpucnn.get_backend() is b and b.name == "numpy"
        with gpucnn.use_backend(b):
            assert gpucnn.get_backend() is b
    assert gpucnn.get_backend() is outer


def test_set_backend_changes_the_default(monkeypatch):
    monkeypatch.setattr(registry, "_default", [None])
    assert gpucnn.set_backend("numpy").name == "numpy"
    assert gpucnn.get_backend().name == "numpy"


def _run(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env}, timeout=120
    )


def test_env_var_picks_the_default_and_never_breaks_import():
    ok = _run("import gpucnn; print(gpucnn.get_backend().name)", GPUCNN_BACKEND="numpy")
    assert ok.returncode == 0 and ok.stdout.strip() == "numpy"
    bogus = _run(
        "import gpucnn\ntry:\n    gpucnn.get_backend()\nexcept ValueError as e:\n    print('refused:', e)",
        GPUCNN_BACKEND="bogus",
    )
    assert bogus.returncode == 0, bogus.stderr
    assert "refused: unknown backend 'bogus'" in bogus.stdout


def test_import_works_without_numba_and_cupy():
    code = (
        "import sys; sys.modules['numba'] = None; sys.modules['cupy'] = None\n"
        "import gpucnn; print(gpucnn.available_backends())\n"
        "try:\n    gpucnn.get_backend('numba')\nexcept gpucnn.BackendUnavailable as e:\n    print('numba:', e)\n"
        "try:\n    gpucnn.get_backend('cupy')\nexcept gpucnn.BackendUnavailable as e:\n    print('cupy:', e)"
    )
    out = _run(code)
    assert out.returncode == 0, out.stderr
    assert "'numpy'" in out.stdout
    assert "numba: backend 'numba' needs Numba" in out.stdout and "pip install" in out.stdout
    assert "cupy: backend 'cupy' needs CuPy" in out.stdout


def test_cupy_installed_without_a_gpu_is_a_clear_error(monkeypatch):
    fake = types.ModuleType("cupy")
    fake.is_available = lambda: False
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.delitem(registry._built, "cupy", raising=False)
    with pytest.raises(BackendUnavailable, match="CuPy is installed but no CUDA device is usable"):
        gpucnn.get_backend("cupy")
    monkeypatch.delitem(registry._built, "cupy", raising=False)
    assert "cupy" not in gpucnn.available_backends()


def test_backend_helpers_round_trip(backend):
    host = np.arange(6, dtype=np.float32).reshape(2, 3)
    dev = backend.asarray(host)
    assert backend.is_array(dev)
    back = backend.to_numpy(dev)
    assert isinstance(back, np.ndarray) and back.dtype == np.float32
    np.testing.assert_array_equal(back, host)
    backend.synchronize()
    assert isinstance(backend.memory_info(), dict)
    assert backend.asarray(host, dtype="float64").dtype == backend.xp.float64


def test_backend_for_finds_the_owner():
    assert gpucnn.backend.backend_for(np.zeros(2)).is_array(np.zeros(2))
    with pytest.raises(TypeError, match="no gpucnn backend holds a builtins.list"):
        gpucnn.backend.backend_for([1, 2])
