"""Host emulation of gpucnn's CUDA kernels: the ``cuda-emu`` backend's launcher.

:class:`EmuLauncher` compiles the very same ``.cu`` sources as the CuPy backend, as C++
with the system compiler, after a shim header (``cuda/emu_shim.h``) that turns
``__global__``/``__device__`` functions into plain functions and ``threadIdx``,
``blockIdx``, ``blockDim``, ``gridDim`` into variables set by a launcher loop that runs
the kernel once per CUDA thread, one thread after the other. The result is loaded with
ctypes and called with NumPy arrays, through the same :class:`~gpucnn.kernels.cuda_set.CudaKernels`
wrapper (grid, block, argument order) as on a GPU.

Running threads one at a time is exact only for kernels whose threads do not cooperate:
the shim makes ``__shared__``, ``__syncthreads()`` and warp-level operations compile
errors, so such a kernel is refused (:class:`EmulationError`) rather than run wrongly.

Built libraries are cached in ``$GPUCNN_EMU_CACHE``, else ``$XDG_CACHE_HOME/gpucnn/cuda-emu``
(``~/.cache/gpucnn/cuda-emu``), keyed by a hash of the compiler, its flags and the code.
Emulation is meant to be correct, not fast: keep its inputs small.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.resources
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from .cuda_set import CudaSource

__all__ = ["EmuLauncher", "EmulationError", "EmulationUnavailable"]

# -ffp-contract=off: no fused multiply-adds, so float arithmetic rounds as NumPy's does.
CXX_FLAGS = ("-x", "c++", "-std=c++17", "-O2", "-shared", "-fPIC", "-ffp-contract=off")

SHIM = Path(str(importlib.resources.files("gpucnn.kernels") / "cuda" / "emu_shim.h"))

# Kernel parameter codes (see emu_shim.h): the NumPy dtype of each pointer, the NumPy
# scalar type of each value. CuPy hands a NumPy scalar to a kernel as its own C type, so
# an argument of another type here would be misread on a GPU too.
_POINTER_DTYPES = {"I": np.dtype(np.int32), "F": np.dtype(np.float32), "D": np.dtype(np.float64)}
_VALUE_TYPES = {"i": (np.int32, ctypes.c_int), "f": (np.float32, ctypes.c_float), "d": (np.float64, ctypes.c_double)}


class EmulationUnavailable(Exception):
    """No working C++ compiler here, so the kernels cannot be emulated."""


class EmulationError(RuntimeError):
    """A kernel source the emulation refuses or cannot build, or a launch with bad arguments."""


class EmuLauncher:
    """Runs CUDA kernels on the CPU, on NumPy arrays.

    ``compiler`` is a C++ compiler command (default ``$CXX``, else ``g++``, ``c++`` or
    ``clang++``, the first found); ``cache_dir`` where built libraries go. Raises
    :class:`EmulationUnavailable` when no compiler works.
    """

    def __init__(self, compiler: str | None = None, cache_dir: str | os.PathLike | None = None) -> None:
        self.compiler = _find_compiler(compiler)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
        self._identity = self._compiler_identity()
        self._modules: dict[Path, _EmuModule] = {}
        self._lock = threading.Lock()
        try:
            self._build(_with_shim(_PROBE), "probe")
        except EmulationError as exc:
            raise EmulationUnavailable(f"the C++ compiler {self.compiler} cannot build the emulation: {exc}") from exc

    def _compiler_identity(self) -> str:
        try:
            done = subprocess.run([self.compiler, "--version"], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as exc:
            raise EmulationUnavailable(f"the C++ compiler {self.compiler} does not run: {exc}") from exc
        if done.returncode != 0:
            raise EmulationUnavailable(f"`{self.compiler} --version` failed: {done.stderr.strip()}")
        return f"{self.compiler}\n{done.stdout}"

    def module(self, source: CudaSource) -> _EmuModule:
        """``source`` compiled (or taken from the cache) and loaded."""
        with self._lock:
            module = self._modules.get(source.path)
            if module is None:
                library = self._build(_translation_unit(source), Path(source.file).stem, source.path)
                module = self._modules[source.path] = _EmuModule(library, source.name_expressions)
            return module

    def launch(self, source: CudaSource, name: str, grid: tuple[int, ...], block: tuple[int, ...], args: tuple) -> None:
        """Run kernel instance ``name`` of ``source`` over ``grid`` x ``block`` threads."""
        self.module(source).launch(name, _dims(grid, "grid"), _dims(block, "block"), args)

    def _build(self, unit: str, stem: str, origin: Any = "the probe") -> Path:
        """Compile C++ ``unit`` into a shared library, or find it in the cache."""
        key = hashlib.sha256("\0".join((self._identity, " ".join(CXX_FLAGS), unit)).encode()).hexdigest()[:24]
        library = self.cache_dir / f"{stem}-{key}.so"
        if library.exists():
            return library
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.cache_dir) as tmp:
            unit_path = Path(tmp) / f"{stem}.cpp"
            unit_path.write_text(unit)
            built = Path(tmp) / library.name
            command = [self.compiler, *CXX_FLAGS, "-o", str(built), str(unit_path)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                raise EmulationError(
                    f"cuda-emu cannot build {origin}:\n{done.stderr.strip()}\n(command: {' '.join(command)})"
                )
            os.replace(built, library)  # atomic: concurrent builders never see half a file
        return library


class _EmuModule:
    """One built source: for each name expression, its launch function and signature."""

    def __init__(self, library: Path, names: tuple[str, ...]) -> None:
        self._lib = ctypes.CDLL(str(library))
        self._kernels: dict[str, tuple[Any, str]] = {}
        for k, name in enumerate(names):
            launch = getattr(self._lib, f"gpucnn_emu_launch_{k}")
            launch.restype = None
            launch.argtypes = (
                ctypes.POINTER(ctypes.c_uint),
                ctypes.POINTER(ctypes.c_uint),
                ctypes.POINTER(ctypes.c_void_p),
            )
            signature = getattr(self._lib, f"gpucnn_emu_signature_{k}")
            signature.restype = ctypes.c_char_p
            self._kernels[name] = (launch, signature().decode())

    def launch(self, name: str, grid: tuple[int, int, int], block: tuple[int, int, int], args: tuple) -> None:
        if name not in self._kernels:
            raise EmulationError(f"no kernel instance {name!r} here; built: {', '.join(self._kernels)}")
        launch, signature = self._kernels[name]
        values = _pack(name, signature, args)
        pointers = (ctypes.c_void_p * max(len(values), 1))(*[ctypes.addressof(v) for v in values])
        launch((ctypes.c_uint * 3)(*grid), (ctypes.c_uint * 3)(*block), pointers)


def _pack(name: str, signature: str, args: tuple) -> list:
    """ctypes values for ``args``, checked against the kernel's parameter codes."""
    if len(args) != len(signature):
        raise EmulationError(f"{name} takes {len(signature)} arguments, got {len(args)}")
    values = []
    for k, (code, arg) in enumerate(zip(signature, args)):
        where = f"{name} argument {k}"
        if code in _POINTER_DTYPES:
            if not isinstance(arg, np.ndarray):
                raise TypeError(f"{where} must be a NumPy array, got {type(arg).__name__}")
            if arg.dtype != _POINTER_DTYPES[code]:
                raise TypeError(f"{where} must be a {_POINTER_DTYPES[code]} array, got {arg.dtype}")
            if not arg.flags.c_contiguous:
                raise ValueError(f"{where} must be C-contiguous (strides {arg.strides}, shape {arg.shape})")
            values.append(ctypes.c_void_p(arg.ctypes.data))
        elif code in _VALUE_TYPES:
            numpy_type, ctype = _VALUE_TYPES[code]
            if type(arg) is not numpy_type:
                raise TypeError(f"{where} must be a numpy.{numpy_type.__name__}, got {type(arg).__name__}")
            values.append(ctype(arg.item()))
        else:
            raise EmulationError(f"{name} parameter {k} has a type the emulation does not pass (signature {signature})")
    return values


# A one-line kernel: tells at start-up whether the compiler can build the emulation.
_PROBE = (
    "template <typename T> __global__ void probe(T* x) { x[threadIdx.x] = T(1); }\nGPUCNN_EMU_EXPORT(0, probe<float>)\n"
)


def _translation_unit(source: CudaSource) -> str:
    """The C++ code built for ``source``: shim, kernels, one exported launcher per instance."""
    exports = "".join(f"GPUCNN_EMU_EXPORT({k}, {name})\n" for k, name in enumerate(source.name_expressions))
    return _with_shim(f'{source.code()}\n#line 1 "cuda-emu exports"\n{exports}')


def _with_shim(code: str) -> str:
    """``code`` after the shim's text (inlined, so that the cache key covers it)."""
    return f'#line 1 "{SHIM.name}"\n{SHIM.read_text()}\n{code}'


def _dims(dims: tuple[int, ...], what: str) -> tuple[int, int, int]:
    if not 1 <= len(dims) <= 3 or any(int(d) < 1 for d in dims):
        raise EmulationError(f"{what} must be 1 to 3 positive sizes, got {dims}")
    return (*(int(d) for d in dims), *(1,) * (3 - len(dims)))


def _find_compiler(compiler: str | None) -> str:
    candidates = [compiler] if compiler else [os.environ.get("CXX"), "g++", "c++", "clang++"]
    for candidate in filter(None, candidates):
        found = shutil.which(candidate)
        if found:
            return found
    looked = ", ".join(filter(None, candidates))
    raise EmulationUnavailable(
        f"no C++ compiler found (looked for {looked}); install one (Debian: apt-get install g++) or point $CXX at it"
    )


def _default_cache_dir() -> Path:
    configured = os.environ.get("GPUCNN_EMU_CACHE")
    if configured:
        return Path(configured)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    cache = base / "gpucnn" / "cuda-emu"
    try:
        cache.mkdir(parents=True, exist_ok=True)
        if os.access(cache, os.W_OK):
            return cache
    except OSError:
        pass
    return Path(tempfile.gettempdir()) / f"gpucnn-cuda-emu-{os.getuid()}"
