"""Host emulation of gpucnn's CUDA kernels: the ``cuda-emu`` backend's launcher.

:class:`EmuLauncher` compiles the very same ``.cu`` sources as the CuPy backend, as C++
with the system compiler, after a shim header (``cuda/emu_shim.h``) that turns
``__global__``/``__device__`` functions into plain functions and ``threadIdx``,
``blockIdx``, ``blockDim``, ``gridDim`` into variables set by a launcher loop that runs
the kernel once per CUDA thread, one thread after the other. The result is loaded with
ctypes and called with NumPy arrays, through the same :class:`~gpucnn.kernels.cuda_set.CudaKernels`
wrapper (grid, block, argument order) as on a GPU.

Running threads one at a time is exact only for kernels whose threads do not cooperate. A
source that uses ``__shared__`` memory, ``__syncthreads`` (``_count``, ``_and``, ``_or``),
``__syncwarp``, warp shuffles (``__shfl_sync``, ``_up``, ``_down``, ``_xor``) or votes
(``__ballot_sync``, ``__any_sync``, ``__all_sync``) is *cooperative* (:func:`is_cooperative`,
read from the source without its comments) and is built with ``cuda/emu_cooperative.h``:
the threads of a block run as fibers that interleave at barriers and warp operations, as a
GPU's would, and every access to ``__shared__`` memory is checked for races as
``compute-sanitizer --tool racecheck`` checks it. A race raises :class:`SharedMemoryRace`;
a barrier that not every thread of the block reaches, or a warp operation that not every
lane of its mask calls, raises :class:`SynchronizationError`. Blocks run one after the
other. Other sources keep the one-thread-at-a-time launcher.

``__shared__`` declarations are rewritten before compiling (:func:`_rewrite_shared`): a
``__shared__ T name[A][B];`` (up to 4 dimensions, or none for a scalar, ``T`` arithmetic)
becomes an object whose elements read and assign as ``T`` through the checker; taking an
element's address or dynamic (``extern``) shared memory is refused at compile time.

The backend's arrays are :class:`DeviceArray` objects: NumPy arrays that behave as device
arrays do on CuPy. ``numpy.asarray(a)`` raises ``TypeError``, so data reaches the host only
through the backend (``to_numpy``) or ``a.get()``; ``float()``, ``int()``, ``bool()`` and
``item()`` work, as host syncs; an operation that mixes one with a NumPy array raises
``TypeError``. Their namespace, :func:`namespace`, is array-api-compat's NumPy namespace on
such arrays. Inside :func:`gpucnn.kernels.cuda_set.counting`, every operation on them is
counted as the device operations CuPy would run for it (:data:`NAMESPACE_OPERATIONS`).

Counting global-memory sectors. ``EmuLauncher(instrument=True)`` builds each source with
``cuda/emu_coalescing.h`` (and ``GPUCNN_EMU_COALESCING`` defined, so with its own cache key):
:func:`_rewrite_pointers` turns every pointer of the source into a ``Global<T>`` whose
subscripts record the element's address and the source line and column, and each launch
then counts, for every warp request, the distinct 32-byte sectors its active lanes touch
(the k-th visit of lane L of warp w to a site joins request (w, site, k)). The counts of
each launch are appended to :attr:`EmuLauncher.sector_counts` as :class:`SiteCount` rows.
They are counted from the kernels' addresses, not measured on a GPU.

Built libraries are cached in ``$GPUCNN_EMU_CACHE``, else ``$XDG_CACHE_HOME/gpucnn/cuda-emu``
(``~/.cache/gpucnn/cuda-emu``), keyed by a hash of the compiler, its flags and the code.
Emulation is meant to be correct, not fast: keep its inputs small.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.resources
import operator
import os
import re
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .cuda_set import CudaSource, record

__all__ = [
    "NAMESPACE_OPERATIONS",
    "DeviceArray",
    "DEVICE",
    "DeviceNamespace",
    "EmuLauncher",
    "EmulationError",
    "EmulationUnavailable",
    "KernelFault",
    "SiteCount",
    "SharedMemoryRace",
    "SynchronizationError",
    "is_cooperative",
    "namespace",
    "to_device",
    "to_host",
]

# -ffp-contract=off: no fused multiply-adds, so float arithmetic rounds as NumPy's does.
CXX_FLAGS = ("-x", "c++", "-std=c++17", "-O2", "-shared", "-fPIC", "-ffp-contract=off")

SHIM = Path(str(importlib.resources.files("gpucnn.kernels") / "cuda" / "emu_shim.h"))
COOPERATIVE_SHIM = SHIM.with_name("emu_cooperative.h")
COALESCING_SHIM = SHIM.with_name("emu_coalescing.h")

# What makes a source cooperative: its threads share memory, wait for one another or talk.
_COOPERATIVE = re.compile(
    r"\b(__shared__|__syncthreads(_count|_and|_or)?|__syncwarp|__shfl(_up|_down|_xor)?_sync|__ballot_sync"
    r"|__any_sync|__all_sync)\b"
)
_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.DOTALL)
# `__shared__ T name[A][B];` on one line; T may be qualified or a template instance.
_SHARED = re.compile(
    r"\b__shared__[ \t]+(?P<type>[A-Za-z_][\w:<>, \t]*?)[ \t]+(?P<name>[A-Za-z_]\w*)[ \t]*"
    r"(?P<dims>(?:\[[^\]\n]+\][ \t]*)*);"
)
_EXTERN_SHARED = re.compile(r"\bextern[ \t]+__shared__\b")
_DIMENSION = re.compile(r"\[([^\]\n]+)\]")
# The type parameters of a template (`template <typename T, class U>`), and the arithmetic
# types a kernel's pointers may point to.
_TEMPLATE = re.compile(r"\btemplate\s*<([^<>]*)>")
_TYPE_PARAMETER = re.compile(r"\b(?:typename|class)\s+([A-Za-z_]\w*)")
_ARITHMETIC = ("unsigned long long", "long long", "unsigned int", "unsigned", "int", "float", "double", "char", "bool")

# Kernel parameter codes (see emu_shim.h): the NumPy dtype of each pointer, the NumPy
# scalar type of each value. CuPy hands a NumPy scalar to a kernel as its own C type, so
# an argument of another type here would be misread on a GPU too.
_POINTER_DTYPES = {"I": np.dtype(np.int32), "F": np.dtype(np.float32), "D": np.dtype(np.float64)}
_VALUE_TYPES = {"i": (np.int32, ctypes.c_int), "f": (np.float32, ctypes.c_float), "d": (np.float64, ctypes.c_double)}


class EmulationUnavailable(Exception):
    """No working C++ compiler here, so the kernels cannot be emulated."""


class EmulationError(RuntimeError):
    """A kernel source the emulation refuses or cannot build, or a launch with bad arguments."""


class KernelFault(EmulationError):
    """A kernel did something undefined while it ran (an index outside a ``__shared__``
    array, a block larger than CUDA allows); the launch stopped after the block at fault."""


class SharedMemoryRace(KernelFault):
    """Two threads of a block accessed one ``__shared__`` element, at least one of them a
    write, with no barrier between them. The message names the kernel, the block, the
    element and both threads; the launch stopped after that block."""


class SynchronizationError(KernelFault):
    """A barrier that some thread of the block never reaches (it returned, or waits at
    another barrier), or a warp operation that some lane of its mask never calls."""


# Fault codes of gpucnn_emu_launch_<id> (emu_cooperative.h), 0 being success.
_FAULTS = {1: SharedMemoryRace, 2: SynchronizationError, 3: KernelFault}


@dataclass(frozen=True)
class SiteCount:
    """The counted requests of one global-memory site of a kernel, for one visit number.

    ``file``, ``line``, ``column``: where the subscript is written (``column`` of its closing
    bracket, 0 where the compiler cannot tell); ``load``: a pointer to const (else an access
    that may load, store or both); ``element_bytes``: the size of its elements; ``visit``:
    k, the k-th time each lane reached the site (a loop's k-th iteration, a gather's k-th
    tap); ``requests``: the warp requests; ``sectors``: the distinct 32-byte sectors summed
    over them; ``ideal``: the sum of ceil(active lanes x element_bytes / 32); ``lanes``: the
    active lanes summed over them.
    """

    file: str
    line: int
    column: int
    load: bool
    element_bytes: int
    visit: int
    requests: int
    sectors: int
    ideal: int
    lanes: int


class EmuLauncher:
    """Runs CUDA kernels on the CPU, on NumPy arrays.

    ``compiler`` is a C++ compiler command (default ``$CXX``, else ``g++``, ``c++`` or
    ``clang++``, the first found); ``cache_dir`` where built libraries go. Raises
    :class:`EmulationUnavailable` when no compiler works. With ``instrument``, every launch
    also counts the 32-byte sectors of its warps' global-memory requests: one
    ``(kernel instance, [SiteCount, ...])`` entry per launch in :attr:`sector_counts`.
    """

    def __init__(
        self, compiler: str | None = None, cache_dir: str | os.PathLike | None = None, *, instrument: bool = False
    ) -> None:
        self.compiler = _find_compiler(compiler)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
        self.instrument = instrument
        self.sector_counts: list[tuple[str, list[SiteCount]]] = []
        self._identity = self._compiler_identity()
        self._modules: dict[Path, _EmuModule] = {}
        self._lock = threading.Lock()
        try:
            probe = _translation_unit(_PROBE_KERNEL, ("probe<float>",), False, instrument)
            self._build(probe if instrument else _with_shim(_PROBE), "probe")
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
                code = source.code()
                cooperative = is_cooperative(code)
                unit = _translation_unit(code, source.name_expressions, cooperative, self.instrument)
                library = self._build(unit, Path(source.file).stem, source.path)
                module = _EmuModule(library, source.name_expressions, cooperative, self.instrument)
                self._modules[source.path] = module
            return module

    def launch(self, source: CudaSource, name: str, grid: tuple[int, ...], block: tuple[int, ...], args: tuple) -> None:
        """Run kernel instance ``name`` of ``source`` over ``grid`` x ``block`` threads."""
        args = tuple(a.data if isinstance(a, DeviceArray) else a for a in args)
        counts = self.module(source).launch(name, _dims(grid, "grid"), _dims(block, "block"), args)
        if counts is not None:
            self.sector_counts.append((name, counts))

    def address(self, a: Any) -> int:
        """The address of ``a``'s first element (a DeviceArray's, or a NumPy array's)."""
        return (a.data if isinstance(a, DeviceArray) else a).ctypes.data

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
    """One built source: for each name expression, its launch function and signature.
    ``cooperative``: whether its blocks run as fibers (:func:`is_cooperative`);
    ``instrumented``: whether it counts sectors (built with emu_coalescing.h)."""

    def __init__(self, library: Path, names: tuple[str, ...], cooperative: bool = False, instrumented: bool = False):
        self.cooperative = cooperative
        self.instrumented = instrumented
        self._lib = ctypes.CDLL(str(library))
        self._error = self._lib.gpucnn_emu_error
        self._error.restype = ctypes.c_char_p
        self._error.argtypes = ()
        if instrumented:
            self._lib.gpucnn_emu_coalescing_begin.restype = None
            self._lib.gpucnn_emu_coalescing_report.restype = ctypes.c_char_p
        self._kernels: dict[str, tuple[Any, str]] = {}
        for k, name in enumerate(names):
            launch = getattr(self._lib, f"gpucnn_emu_launch_{k}")
            launch.restype = ctypes.c_int
            launch.argtypes = (
                ctypes.POINTER(ctypes.c_uint),
                ctypes.POINTER(ctypes.c_uint),
                ctypes.POINTER(ctypes.c_void_p),
            )
            signature = getattr(self._lib, f"gpucnn_emu_signature_{k}")
            signature.restype = ctypes.c_char_p
            codes = signature().decode()
            param_sizes = getattr(self._lib, f"gpucnn_emu_param_sizes_{k}")
            param_sizes.restype = ctypes.POINTER(ctypes.c_uint)
            self._kernels[name] = (launch, codes, tuple(param_sizes()[: len(codes)]))

    def launch(
        self, name: str, grid: tuple[int, int, int], block: tuple[int, int, int], args: tuple
    ) -> list[SiteCount] | None:
        """Run kernel instance ``name``; its sector counts when instrumented, else None."""
        if name not in self._kernels:
            raise EmulationError(f"no kernel instance {name!r} here; built: {', '.join(self._kernels)}")
        launch, signature, sizes = self._kernels[name]
        values = _pack(name, signature, sizes, args)
        pointers = (ctypes.c_void_p * max(len(values), 1))(*[ctypes.addressof(v) for v in values])
        if self.instrumented:
            self._lib.gpucnn_emu_coalescing_begin()
        fault = launch((ctypes.c_uint * 3)(*grid), (ctypes.c_uint * 3)(*block), pointers)
        # the counts and the message are the launching OS thread's, and this thread launched
        counts = _site_counts(self._lib.gpucnn_emu_coalescing_report().decode()) if self.instrumented else None
        if fault:
            raise _FAULTS.get(fault, KernelFault)(f"cuda-emu: {self._error().decode()}")
        return counts


def _site_counts(report: str) -> list[SiteCount]:
    """The rows of gpucnn_emu_coalescing_report()'s text (see emu_coalescing.h)."""
    rows = []
    for line in report.splitlines():
        file, *numbers = line.split("\t")
        line_number, column, load, element_bytes, visit, requests, sectors, ideal, lanes = map(int, numbers)
        rows.append(
            SiteCount(file, line_number, column, bool(load), element_bytes, visit, requests, sectors, ideal, lanes)
        )
    return rows


def _pack(name: str, signature: str, sizes: tuple[int, ...], args: tuple) -> list:
    """ctypes values for ``args``, checked against the kernel's parameter codes and sizes.
    A struct parameter (code ``S``) takes a NumPy structured scalar of its size, as CuPy
    passes one: its bytes are the struct's."""
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
        elif code == "S":
            if not isinstance(arg, np.void) or arg.dtype.names is None:
                raise TypeError(f"{where} must be a NumPy structured scalar, got {type(arg).__name__}")
            if arg.dtype.itemsize != sizes[k]:
                raise TypeError(f"{where} is a struct of {sizes[k]} bytes, got a scalar of {arg.dtype.itemsize}")
            struct = (ctypes.c_uint64 * -(-sizes[k] // 8))()  # 8-byte aligned, as the struct may need
            ctypes.memmove(struct, arg.tobytes(), sizes[k])
            values.append(struct)
        else:
            raise EmulationError(f"{name} parameter {k} has a type the emulation does not pass (signature {signature})")
    return values


# A one-line kernel: tells at start-up whether the compiler can build the emulation.
_PROBE_KERNEL = "template <typename T> __global__ void probe(T* x) { x[threadIdx.x] = T(1); }\n"
_PROBE = f"{_PROBE_KERNEL}GPUCNN_EMU_EXPORT(0, probe<float>)\n"


def is_cooperative(code: str) -> bool:
    """Whether CUDA C ``code`` shares memory between threads, synchronizes them or uses warp
    operations (comments aside): then its blocks run as fibers, else one thread at a time."""
    return _COOPERATIVE.search(_COMMENT.sub(" ", code)) is not None


def _rewrite_shared(code: str) -> str:
    """``code`` with each ``__shared__ T name[A][B];`` made a checked array of
    emu_cooperative.h, ``static thread_local gpucnn_emu::Shared<T, (A), (B)> name{"name"};``:
    one per OS thread, reused by the blocks that run there one after the other. Lines stay
    where they were; other ``__shared__`` declarations are left to the shim, which refuses them."""

    def rewrite(match: re.Match) -> str:
        element = " ".join(w for w in match.group("type").split() if w != "volatile")  # fibers see every write
        dims = "".join(f", ({d.strip()})" for d in _DIMENSION.findall(match.group("dims")))
        name = match.group("name")
        return f'static thread_local ::gpucnn_emu::Shared<{element}{dims}> {name}{{"{name}"}};'

    code = _EXTERN_SHARED.sub(r"__shared__ /* extern */", code)  # for the shim to refuse
    return _SHARED.sub(rewrite, code)


def _rewrite_pointers(code: str) -> str:
    """``code`` with every pointer to an arithmetic type or to a template type parameter,
    where it declares something (``const T* __restrict__ x``, ``T* p = ...``, a function's
    ``T*`` return type) or names a ``static_cast<T*>`` target, made a recording pointer of
    emu_coalescing.h, ``::gpucnn_emu::Global<const T> x``. Other casts
    (``reinterpret_cast<T*>``) are left alone: a Global is made from the raw pointer they give.
    Lines stay where they were."""
    parameters = {name for group in _TEMPLATE.findall(code) for name in _TYPE_PARAMETER.findall(group)}
    types = "|".join([*(re.escape(t).replace("\\ ", r"\s+") for t in _ARITHMETIC), *sorted(parameters)])
    element = rf"(?P<const>const\s+)?(?P<type>{types})\s*\*"
    declaration = re.compile(rf"(?<![\w:]){element}\s*(?:__restrict__\s*)?(?=(?!__restrict__)[A-Za-z_])")
    cast = re.compile(rf"\bstatic_cast\s*<\s*{element}\s*>")

    def recording(match: re.Match) -> str:
        return f"::gpucnn_emu::Global<{match.group('const') or ''}{' '.join(match.group('type').split())}>"

    code = cast.sub(lambda match: f"static_cast<{recording(match)}>", code)
    return declaration.sub(lambda match: f"{recording(match)} ", code)


def _translation_unit(code: str, names: tuple[str, ...], cooperative: bool, instrument: bool = False) -> str:
    """The C++ code built for a source's ``code``: shim, kernels, one exported launcher per
    instance in ``names``; with ``instrument``, its pointers made recording ones
    (:func:`_rewrite_pointers`) after the sector-counting header."""
    exports = "".join(f"GPUCNN_EMU_EXPORT({k}, {name})\n" for k, name in enumerate(names))
    if cooperative:
        code = _rewrite_shared(code)
    if not instrument:
        return _with_shim(f'{code}\n#line 1 "cuda-emu exports"\n{exports}', cooperative)
    code = _rewrite_pointers(code)
    shims = _with_shim("", cooperative)
    return (
        f"#define GPUCNN_EMU_COALESCING 1\n{shims}\n"
        f'#line 1 "{COALESCING_SHIM.name}"\n{COALESCING_SHIM.read_text()}\n'
        f'{code}\n#line 1 "cuda-emu exports"\n{exports}'
    )


def _with_shim(code: str, cooperative: bool = False) -> str:
    """``code`` after the shim's text (inlined, so that the cache key covers it), and after
    the cooperative shim's for a cooperative source."""
    if not cooperative:
        return f'#line 1 "{SHIM.name}"\n{SHIM.read_text()}\n{code}'
    return (
        f'#define GPUCNN_EMU_COOPERATIVE 1\n#line 1 "{SHIM.name}"\n{SHIM.read_text()}\n'
        f'#line 1 "{COOPERATIVE_SHIM.name}"\n{COOPERATIVE_SHIM.read_text()}\n{code}'
    )


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


# -- the backend's arrays: device arrays on the CPU -------------------------------------------


class _Device:
    """The emulated device: what ``DeviceArray.device`` answers and what ``device=`` takes."""

    def __repr__(self) -> str:
        return "Device('cuda-emu')"


DEVICE = _Device()


class DeviceArray:
    """An array of the ``cuda-emu`` backend: a NumPy array (``data``) that behaves as a
    CuPy array does (see the module docstring). Made by the backend (``asarray``) and by
    :func:`namespace`; ``data`` is for the launcher and the backend only."""

    __slots__ = ("data",)
    __array_ufunc__ = None  # NumPy scalars and arrays defer to our operators, as to CuPy's

    def __init__(self, data: np.ndarray) -> None:
        self.data = data

    # -- what a device array tells without a sync
    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: self.data.size)
    nbytes = property(lambda self: self.data.nbytes)
    itemsize = property(lambda self: self.data.itemsize)
    flags = property(lambda self: self.data.flags)
    strides = property(lambda self: self.data.strides)
    device = property(lambda self: DEVICE)
    T = property(lambda self: _apply("transpose", np.transpose, self))
    mT = property(lambda self: _apply("matrix_transpose", lambda a: np.swapaxes(a, -1, -2), self))

    def __array_namespace__(self, api_version: str | None = None) -> DeviceNamespace:
        return namespace()

    def __array__(self, dtype=None, copy=None):
        raise TypeError(
            "Implicit conversion to a NumPy array is not allowed for a cuda-emu array, as for a CuPy array: "
            "use the backend's to_numpy(a), or a.get()"
        )

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:  # no values: printing them would be a host sync
        return f"DeviceArray(shape={self.shape}, dtype={self.dtype})"

    # -- host syncs
    def get(self) -> np.ndarray:
        """A host copy (a device→host copy and a sync), as ``cupy.ndarray.get``."""
        record("copy", "device to host", syncs=1, to_host=self.nbytes)
        return self.data.copy()

    def item(self) -> Any:
        record(syncs=1, to_host=self.itemsize)
        return self.data.item()

    def __float__(self) -> float:
        return float(self.item())

    def __int__(self) -> int:
        return int(self.item())

    def __index__(self) -> int:
        return operator.index(self.item())

    def __bool__(self) -> bool:
        return bool(self.item())

    # -- device work
    def astype(self, dtype: Any, copy: bool = True) -> DeviceArray:
        return _apply("astype", lambda a: a.astype(dtype, copy=copy), self)

    def copy(self) -> DeviceArray:
        return _apply("copy", np.copy, self)

    def reshape(self, *shape: Any) -> DeviceArray:
        return _apply("reshape", lambda a: a.reshape(*shape), self)

    def __getitem__(self, key: Any) -> DeviceArray:
        return _apply("getitem", lambda a, k: a[k], self, key)

    def __setitem__(self, key: Any, value: Any) -> None:
        _check_on_device("setitem", (key, value))
        self.data[_unwrap(key)] = _unwrap(value)
        record("array", "setitem")


def _operator(name: str, function: Any, *, in_place: bool = False, reflected: bool = False) -> Any:
    kind = "gemm" if "matmul" in name else "array"

    def method(self: DeviceArray, *other: Any) -> Any:
        _check_on_device(name, other)
        if reflected:
            result = function(_unwrap(other[0]), self.data)
        else:
            result = function(self.data, *(_unwrap(o) for o in other))
        record(kind, name)
        if in_place:
            return self
        return _wrap(result, (self, *other))

    method.__name__ = f"__{name}__"
    return method


_BINARY = ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor", "lshift", "rshift")
for _name in _BINARY:
    _function = getattr(operator, f"{_name}_" if _name in ("and", "or") else _name)
    setattr(DeviceArray, f"__{_name}__", _operator(_name, _function))
    setattr(DeviceArray, f"__r{_name}__", _operator(_name, _function, reflected=True))
    setattr(DeviceArray, f"__i{_name}__", _operator(_name, getattr(operator, f"i{_name}"), in_place=True))
for _name in ("lt", "le", "gt", "ge", "eq", "ne"):
    setattr(DeviceArray, f"__{_name}__", _operator(_name, getattr(operator, _name)))
for _name in ("neg", "pos", "abs", "invert"):
    setattr(DeviceArray, f"__{_name}__", _operator(_name, getattr(operator, _name)))
DeviceArray.__hash__ = None


def _unwrap(value: Any) -> Any:
    """``value`` with each DeviceArray in it (lists and tuples too) replaced by its NumPy array."""
    if isinstance(value, DeviceArray):
        return value.data
    if isinstance(value, (tuple, list)):
        return type(value)(_unwrap(v) for v in value)
    return value


def _check_on_device(op: str, values: Any) -> None:
    """``TypeError`` for a NumPy array among ``values``: it lives on the host."""
    for value in values:
        if isinstance(value, np.ndarray):
            raise TypeError(
                f"{op}: a NumPy array (shape {value.shape}) cannot meet a cuda-emu array, as it cannot meet a "
                f"CuPy one: move it with the backend's asarray first"
            )
        if isinstance(value, (tuple, list)):
            _check_on_device(op, value)


def _root(a: np.ndarray) -> np.ndarray:
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def _arrays_in(values: Any) -> list[np.ndarray]:
    found = []
    for value in values:
        if isinstance(value, DeviceArray):
            found.append(value.data)
        elif isinstance(value, (tuple, list)):
            found += _arrays_in(value)
    return found


def _is_new(result: np.ndarray, sources: Any) -> bool:
    """Whether ``result`` is new device memory, not a view of one of ``sources``."""
    root = _root(result)
    return all(_root(a) is not root for a in _arrays_in(sources))


def _wrap(value: Any, sources: Any) -> Any:
    """NumPy results as DeviceArrays (a NumPy scalar as a 0-d array, as CuPy returns), the
    new ones counted as allocations."""
    if isinstance(value, np.generic):
        value = np.asarray(value)
    if isinstance(value, np.ndarray):
        if _is_new(value, sources):
            record(allocations=1)
        return DeviceArray(value)
    if isinstance(value, (tuple, list)):
        return type(value)(_wrap(v, sources) for v in value)
    return value


def _apply(name: str, function: Any, *args: Any) -> Any:
    """``function`` on the NumPy arrays of ``args``; one "array" operation if the result is
    new memory (a copy), none if it is a view."""
    result = function(*_unwrap(args))
    if isinstance(result, np.ndarray) and _is_new(result, args):
        record("array", name)
    return _wrap(result, args)


# How many device operations one namespace call is, by the kind CuPy runs it as. A name not
# listed is one elementwise or reduction kernel ("array"): ``argmax`` then ``==`` then
# ``sum`` is three. The operators count alike: ``a + b`` is one "array" operation (``a @ b``
# one "gemm"), ``a[idx] = b`` one, ``a[i:j]`` none (a view) and ``a[indices]`` one (a gather).
NAMESPACE_OPERATIONS = {
    # a view, or a copy when the result cannot be one ("array", one): none for a view
    "reshape": "view",
    "permute_dims": "view",
    "matrix_transpose": "view",
    "expand_dims": "view",
    "squeeze": "view",
    "broadcast_to": "view",
    "ascontiguousarray": "view",
    "astype": "view",  # array-api-compat copies by default, even to the same dtype
    "asarray": "view",  # from the host: one copy ("copy") and its bytes
    # no device work: an allocation only, or no array at all
    "empty": "none",
    "empty_like": "none",
    "finfo": "none",
    "iinfo": "none",
    "isdtype": "none",
    "result_type": "none",
    "can_cast": "none",
    # a cudaMemsetAsync
    "zeros": "memset",
    "zeros_like": "memset",
    # cuBLAS
    "matmul": "gemm",
    "tensordot": "gemm",
    "vecdot": "gemm",
    # one copy kernel per array joined (an upper bound: CuPy joins many same-shaped arrays in one)
    "concat": "join",
    "stack": "join",
}


class DeviceNamespace:
    """The ``cuda-emu`` backend's array namespace: each function of ``inner``
    (array-api-compat's NumPy namespace) on :class:`DeviceArray` arguments, counted as
    :data:`NAMESPACE_OPERATIONS` says; dtypes and constants as ``inner``'s."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.__name__ = "gpucnn.kernels.emu.namespace()"

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if isinstance(value, type) or not callable(value):
            return value  # dtypes, constants
        function = functools.partial(_namespace_call, name, value)
        functools.update_wrapper(function, value)
        setattr(self, name, function)  # looked up once
        return function

    def __repr__(self) -> str:
        return "<cuda-emu array namespace>"


def _on_host(args: tuple, kwargs: dict) -> bool:
    """Whether a namespace call is host work: it names the host (``device="cpu"``), or it
    takes NumPy arrays and no device array. Kernel operations called on NumPy arrays (the
    kernel tests) then compute on the host and return NumPy arrays, as NumPy's namespace does."""
    device = kwargs.get("device")
    if device is not None:
        return device is not DEVICE
    values = (*args, *kwargs.values())
    return not _arrays_in(values) and any(isinstance(v, (np.ndarray, np.generic)) for v in _flat(values))


def _flat(values: Any) -> list:
    found = []
    for value in values:
        found += _flat(value) if isinstance(value, (tuple, list)) else [value]
    return found


def _namespace_call(name: str, function: Any, *args: Any, **kwargs: Any) -> Any:
    if _on_host(args, kwargs):
        return function(*args, **kwargs)
    kwargs.pop("device", None)  # DEVICE: NumPy's namespace knows only the host
    kind = NAMESPACE_OPERATIONS.get(name, "array")
    if name == "asarray" and args and not isinstance(args[0], DeviceArray):
        host = np.asarray(args[0])  # Python data or a NumPy array: the host→device copy
        result = function(host, *args[1:], **kwargs)
        result = np.array(result, copy=True) if np.shares_memory(result, host) else result
        record("copy", "host to device", to_device=result.nbytes)
        return _wrap(result, ())
    _check_on_device(name, (*args, *kwargs.values()))
    result = function(*_unwrap(args), **{k: _unwrap(v) for k, v in kwargs.items()})
    sources = (*args, *kwargs.values())
    if kind == "view":
        if isinstance(result, np.ndarray) and _is_new(result, sources):
            record("array", name)
    elif kind == "join":
        record("array", name, len(args[0]))
    elif kind != "none":
        record(kind, name)
    return _wrap(result, sources)


def to_device(host: np.ndarray) -> DeviceArray:
    """A device copy of a host array (the backend's ``asarray``): one host→device copy."""
    data = np.array(host, copy=True, order="C")
    record("copy", "host to device", allocations=1, to_device=data.nbytes)
    return DeviceArray(data)


def to_host(a: DeviceArray) -> np.ndarray:
    """A host copy of a device array (the backend's ``to_numpy``): a copy and a sync."""
    return a.get()


@functools.cache
def namespace() -> DeviceNamespace:
    """The namespace of :class:`DeviceArray` (made on first use: importing gpucnn needs no
    array-api-compat)."""
    import array_api_compat.numpy

    return DeviceNamespace(array_api_compat.numpy)
