"""The backend registry: name → array namespace, kernel set and device helpers.

A :class:`Backend` is everything a layer needs to run somewhere: ``xp`` (an array API
namespace from array-api-compat), ``kernels`` (a kernel set, see
:mod:`gpucnn.kernels`) and four device helpers: ``asarray``, ``to_numpy``,
``synchronize`` and ``memory_info``.

Backends are built lazily, on first use, so that importing gpucnn never fails because
Numba or CuPy is missing or because ``GPUCNN_BACKEND`` names something unusable. Asking
for a backend that cannot run here raises :class:`BackendUnavailable`, which says why and
what to install.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .kernels import KernelSet, emu
from .kernels.cuda_set import CudaKernels, CupyLauncher
from .kernels.emu import EmulationUnavailable, EmuLauncher
from .kernels.numpy_set import NumpyKernels

__all__ = [
    "Backend",
    "BackendUnavailable",
    "available_backends",
    "backend_for",
    "get_backend",
    "known_backends",
    "register_backend",
    "set_backend",
    "use_backend",
]

ENV_VAR = "GPUCNN_BACKEND"
DEFAULT = "numpy"


class BackendUnavailable(RuntimeError):
    """A known backend cannot run on this machine; the message says why and what to install."""


@dataclass(frozen=True, eq=False)
class Backend:
    """One place arrays can live and be computed on.

    Attributes:
        name: registry name (``"numpy"``, ``"numba"``, ``"cupy"``, ``"cuda-emu"``, ...).
        xp: array API namespace used by layers.
        kernels: kernel set with the interface of :mod:`gpucnn.kernels`.
        array_type: the type of this backend's arrays (used to refuse foreign arrays).
        is_gpu: whether arrays live in device memory (host↔device copies cost time).
    """

    name: str
    xp: Any
    kernels: KernelSet
    array_type: type
    is_gpu: bool = False
    _to_device: Callable[[Any], Any] = field(default=None, repr=False)
    _to_host: Callable[[Any], np.ndarray] = field(default=None, repr=False)
    _synchronize: Callable[[], None] = field(default=None, repr=False)
    _memory_info: Callable[[], dict] = field(default=None, repr=False)
    random: Callable[[int | None], Any] = field(default=None, repr=False)
    _compile_ahead: Callable[[Callable[[], Any]], contextlib.AbstractContextManager] = field(default=None, repr=False)

    def asarray(self, a: Any, dtype: Any = None) -> Any:
        """``a`` (NumPy array, array of this backend or Python data) as an array of this backend."""
        if self.is_array(a):
            return a if dtype is None or a.dtype == dtype else self.xp.astype(a, dtype)
        host = np.asarray(a if not hasattr(a, "__array_namespace__") else _any_to_numpy(a))
        if dtype is not None:
            host = host.astype(_numpy_dtype(dtype), copy=False)
        return self._to_device(host) if self._to_device else host

    def to_numpy(self, a: Any) -> np.ndarray:
        """A host NumPy copy (or the array itself, when it already is one)."""
        if self._to_host is not None and self.is_array(a):
            return self._to_host(a)
        return np.asarray(a)

    def synchronize(self) -> None:
        """Wait until queued device work is finished (a no-op on CPU backends)."""
        if self._synchronize is not None:
            self._synchronize()

    def compile_ahead(self, step: Callable[[], Any]) -> contextlib.AbstractContextManager:
        """The context of the first run of ``step`` (a training step) on this backend. A
        backend that compiles its kernels on first use (``numba``) has a second process
        compile them meanwhile, from the last kernel the step calls back, and hands them
        over through its kernel cache; the step computes what it computes alone. Other
        backends do nothing."""
        if self._compile_ahead is None:
            return contextlib.nullcontext()
        return self._compile_ahead(step)

    def memory_info(self) -> dict:
        """Bytes in use by this backend's allocator, as a dict (``used``, plus what the device tells)."""
        if self._memory_info is not None:
            return self._memory_info()
        return {}

    def is_array(self, a: Any) -> bool:
        return isinstance(a, self.array_type)

    def check_array(self, a: Any, what: str) -> None:
        """Raise ``TypeError`` if ``a`` is not an array of this backend (no silent copies)."""
        if not self.is_array(a):
            owner = _describe(a)
            raise TypeError(
                f"{what} got {owner} but is bound to backend {self.name!r} "
                f"(arrays of type {self.array_type.__module__}.{self.array_type.__name__}); "
                f"move the data with gpucnn.get_backend({self.name!r}).asarray(...) "
                f"or move the model with model.to(...)"
            )

    def __repr__(self) -> str:
        return f"Backend({self.name!r})"


# -- registry -----------------------------------------------------------------

_factories: dict[str, Callable[[], Backend]] = {}
_built: dict[str, Backend] = {}
_lock = threading.Lock()
_state = threading.local()
_default: list[str | None] = [None]


def register_backend(name: str, factory: Callable[[], Backend]) -> None:
    """Add a backend under ``name``; ``factory`` builds it, or raises BackendUnavailable."""
    _factories[name] = factory
    _built.pop(name, None)


def known_backends() -> list[str]:
    """Every registered name, usable here or not."""
    return list(_factories)


def available_backends() -> list[str]:
    """The registered backends that can run on this machine, in registry order."""
    names = []
    for name in _factories:
        try:
            _build(name)
        except BackendUnavailable:
            continue
        names.append(name)
    return names


def _build(name: str) -> Backend:
    if name not in _factories:
        raise ValueError(f"unknown backend {name!r}; known backends: {', '.join(_factories)}")
    with _lock:
        if name not in _built:
            _built[name] = _factories[name]()
        return _built[name]


def get_backend(name: str | Backend | None = None) -> Backend:
    """The backend called ``name``, or the current one (``use_backend``, ``set_backend``,
    ``$GPUCNN_BACKEND``, else ``"numpy"``)."""
    if isinstance(name, Backend):
        return name
    if name is None:
        stack = getattr(_state, "stack", None)
        if stack:
            return stack[-1]
        name = _default[0] or os.environ.get(ENV_VAR) or DEFAULT
    return _build(name)


def set_backend(name: str) -> Backend:
    """Make ``name`` the default backend of this process; returns it."""
    backend = _build(name)
    _default[0] = name
    return backend


@contextlib.contextmanager
def use_backend(name: str | Backend) -> Iterator[Backend]:
    """Run a block with ``name`` as the current backend::

    with gpucnn.use_backend("numba"):
        net = gpucnn.SimpleConvNet()
    """
    backend = get_backend(name)
    stack = getattr(_state, "stack", None)
    if stack is None:
        stack = _state.stack = []
    stack.append(backend)
    try:
        yield backend
    finally:
        stack.pop()


def backend_for(a: Any) -> Backend:
    """The backend an array belongs to: the current one if it owns ``a``, else the first
    usable registered backend that does."""
    current = get_backend()
    if current.is_array(a):
        return current
    for name in _factories:
        try:
            backend = _build(name)
        except BackendUnavailable:
            continue
        if backend.is_array(a):
            return backend
    raise TypeError(f"no gpucnn backend holds {_describe(a)}")


# -- helpers ------------------------------------------------------------------


def _numpy_dtype(dtype: Any) -> np.dtype:
    if isinstance(dtype, str):
        return np.dtype(dtype)
    try:
        return np.dtype(dtype)
    except TypeError:
        return np.dtype(str(dtype).rsplit(".", 1)[-1])


def _any_to_numpy(a: Any) -> np.ndarray:
    if hasattr(a, "get"):  # CuPy
        return a.get()
    return np.asarray(a)


def _describe(a: Any) -> str:
    t = type(a)
    return f"a {t.__module__.split('.')[0]}.{t.__name__}"


def _host_memory_info() -> dict:
    import tracemalloc

    if tracemalloc.is_tracing():
        current, peak = tracemalloc.get_traced_memory()
        return {"used": current, "peak": peak, "source": "tracemalloc"}
    return {"source": "none (start tracemalloc to trace host allocations)"}


def _numpy_random(seed: int | None):
    return np.random.default_rng(seed)


# -- the built-in backends ----------------------------------------------------------


def _numpy_backend() -> Backend:
    import array_api_compat.numpy as xp

    return Backend(
        name="numpy",
        xp=xp,
        kernels=NumpyKernels(xp),
        array_type=np.ndarray,
        _memory_info=_host_memory_info,
        random=_numpy_random,
    )


def _numba_backend() -> Backend:
    try:
        import numba  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailable(
            "backend 'numba' needs Numba, which is not installed: pip install 'gpucnn[numba]'"
        ) from exc
    import array_api_compat.numpy as xp

    from .kernels import numba_runtime
    from .kernels.numba_set import NumbaKernels

    # The process settings the kernels are tuned for: their cache folder, Numba's threading
    # layer, OpenBLAS's idle workers (kernels/numba_runtime.py), before any kernel runs.
    numba_runtime.configure()
    return Backend(
        name="numba",
        xp=xp,
        kernels=NumbaKernels(xp),
        array_type=np.ndarray,
        _memory_info=_host_memory_info,
        random=_numpy_random,
        _compile_ahead=numba_runtime.compile_ahead,
    )


def _cupy_backend() -> Backend:
    try:
        import cupy
    except ImportError as exc:
        raise BackendUnavailable(
            "backend 'cupy' needs CuPy, which is not installed: "
            "pip install 'gpucnn[cuda13]' (or 'gpucnn[cuda12]' for a CUDA 12 driver)"
        ) from exc
    try:
        usable = cupy.is_available()
    except Exception:  # a broken driver install raises instead of answering
        usable = False
    if not usable:
        raise BackendUnavailable(
            "CuPy is installed but no CUDA device is usable (cupy.is_available() is False): "
            "check the NVIDIA driver and CUDA_VISIBLE_DEVICES, or pick another backend "
            "(GPUCNN_BACKEND=numpy)"
        )
    import array_api_compat.cupy as xp

    def memory_info() -> dict:
        pool = cupy.get_default_memory_pool()
        free, total = cupy.cuda.runtime.memGetInfo()
        return {
            "used": pool.used_bytes(),
            "pool_total": pool.total_bytes(),
            "device_free": free,
            "device_total": total,
            "source": "cupy memory pool",
        }

    return Backend(
        name="cupy",
        xp=xp,
        kernels=CudaKernels(xp, CupyLauncher()),
        array_type=cupy.ndarray,
        is_gpu=True,
        _to_device=cupy.asarray,
        _to_host=cupy.asnumpy,
        _synchronize=lambda: cupy.cuda.get_current_stream().synchronize(),
        _memory_info=memory_info,
        random=lambda seed: cupy.random.default_rng(seed),
    )


def _cuda_emu_backend() -> Backend:
    # Device arrays on the CPU (kernels/emu.py): NumPy's data, CuPy's rules (no implicit
    # conversion to NumPy, host syncs counted), so that a CPU run catches what a GPU would.
    try:
        launcher = EmuLauncher()
    except EmulationUnavailable as exc:
        raise BackendUnavailable(f"backend 'cuda-emu' is not usable here: {exc}") from exc
    xp = emu.namespace()
    return Backend(
        name="cuda-emu",
        xp=xp,
        kernels=CudaKernels(xp, launcher),
        array_type=emu.DeviceArray,
        _to_device=emu.to_device,
        _to_host=emu.to_host,
        _memory_info=_host_memory_info,
        random=_numpy_random,
    )


register_backend("numpy", _numpy_backend)
register_backend("numba", _numba_backend)
register_backend("cupy", _cupy_backend)
register_backend("cuda-emu", _cuda_emu_backend)
