"""How the Numba kernels are compiled and run: the decorators, the cache, the threads.

The kernel modules (:mod:`.numba_conv`, :mod:`.numba_pool`, :mod:`.numba_direct_conv`,
:mod:`.numba_elementwise`, :mod:`.numba_optim`, :mod:`.numba_winograd`,
:mod:`.numba_winograd_pool`) define their loops with the decorators below.
Importing them changes nothing in the process: :func:`configure` applies the settings the
kernels are tuned for, and is called by whoever builds the backend
(``gpucnn.get_backend("numba")``), before the first kernel runs. Kernels run without it
compute the same values, compiled again in every process and with Numba's default threads.

Compilation
-----------
A kernel is compiled on its first call with given argument types; the kernel set makes
inputs C-contiguous first, so that this happens once per dtype. After :func:`configure`
the machine code is written to a cache that later processes load instead of compiling:
``$NUMBA_CACHE_DIR`` when the user set it, else ``$XDG_CACHE_HOME/gpucnn/numba``
(``~/.cache/gpucnn/numba``), in one subfolder per installed copy of gpucnn. Nothing is
written inside the package, so a read-only install works and an uninstall leaves nothing
behind. When that folder cannot be written, a warning says so and every process compiles
the kernels again; a read or a write that fails later costs a warning and a compilation.

The cache is attached to gpucnn's kernels only (each kernel gets a Numba cache with its
own locator); ``numba.config`` and the user's own ``cache=True`` functions are left as
they are. An entry is valid for the text of all the ``numba_*.py`` files together, not
only the file that defines the kernel: Numba copies a helper's machine code into each
kernel that calls it, so a change to the pooling's window geometry must recompile the
direct convolution that uses it, which Numba's own stamp (one file) would not notice.

Compiling ahead
---------------
A cold first training step compiles each kernel it calls when it first calls it, one
after another: Numba compiles one function at a time in a process. :func:`compile_ahead`
(``Backend.compile_ahead``, which ``Sequential.train_step`` and ``gradient`` use for a
model's first training computation on the backend) shares that work with a second
process. Forked as the step starts, it walks the step once with every kernel replaced by
a recorder that runs nothing (what the step computes from the unwritten outputs is thrown
away with the process), then compiles the kernels it recorded from the last to the first,
into the cache, while the first process runs the step from its first kernel. A lock file
per kernel and signature, in a folder the two share for the step, keeps each compilation
to one process: a process that needs a kernel the other is compiling waits for it, then
loads it from the cache; and a kernel's cache index is written under a lock of its own
(:func:`_locked`). The values are those of the step run alone: the second process hands
over nothing but cache entries. When the step ends, every kernel it called is compiled,
and the first process ends the second (:func:`_end`).

It is done on Linux with the cache and at least two usable cores, when no other thread
could be inside BLAS or the compiler as the process forks, outside MPI jobs (forking an MPI
process is unsafe on some networks), and unless ``GPUCNN_COMPILE_AHEAD=0``; elsewhere the
step compiles alone, as before. The second process takes the first place for the
out-of-memory killer, and resets the user's signal handlers. The measurements:
``benchmarks/results/numba_notes.md``.

Threads
-------
Kernels over whole activations are task kernels (:data:`tjit`): a compiled loop over a
range of tasks (images, rows of images, bands of tiles), without the GIL, that
:func:`run_tasks` runs from Numba's thread count of Python threads (``NUMBA_NUM_THREADS``
or :func:`numba.set_num_threads`), one contiguous range each, the caller taking the
first. This skips Numba's ``parallel=True`` passes, which take seconds to compile each
kernel, and lets a task call BLAS (``np.dot``, SciPy's BLAS) on its own core
(``run_tasks(..., blas_calls=True)``). The optimizer steps run on one thread, where a parallel launch would
cost more than the work. Numba's kernels and NumPy's GEMMs never run at the same time
within a training step: each kernel sits between two GEMMs. What matters is how each
pool waits when idle, since an idle pool that spins takes cores from the next one (the
measurements: ``benchmarks/results/numba_notes.md``):

- Numba's own threads, which :func:`numba.get_num_threads` starts and gpucnn never gives
  work: :func:`configure` picks Numba's ``workqueue`` layer, whose idle threads sleep,
  unless ``NUMBA_THREADING_LAYER`` (or ``numba.config.THREADING_LAYER``) names one. The
  default OpenMP layer (GNU libgomp) keeps its threads spinning after each parallel
  region of the user's own parallel functions. The choice holds for the whole process
  and takes effect only if made before the process's first parallel launch.
- OpenBLAS's threads: an idle worker spins (yielding) for 2**28 cycles, about 0.1 s,
  after each GEMM, so a kernel launched after a GEMM shares its cores with it.
  :func:`configure` tells OpenBLAS to put idle workers to sleep at once, as
  ``OPENBLAS_THREAD_TIMEOUT=4`` would had it been set before NumPy loaded OpenBLAS
  (:func:`_let_openblas_workers_sleep`), but only while no other Python thread exists:
  with other threads (a notebook's, a data loader's) the workers keep spinning, which
  costs speed on few cores and nothing else. An ``OPENBLAS_THREAD_TIMEOUT`` set by the
  user is left as it is, and so is BLAS's thread count (``OPENBLAS_NUM_THREADS``,
  threadpoolctl), since the GEMMs need every core more than the kernels do.

Handing a range to another Python thread costs a wake-up and the GIL (tens of
microseconds on a small VM), so a launch over less than :data:`parallel_min_bytes` of
arrays runs on the calling thread: the same bytes, as its tasks write apart.

Task launches are serialised by a lock (:func:`run_tasks`): the task threads are shared,
and a launch whose tasks call BLAS changes process-wide BLAS thread counts while it runs.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import dataclasses
import functools
import hashlib
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import numba
import numpy as np
from numba.core import entrypoints, event, sigutils
from numba.core.caching import CompileResultCacheImpl, FunctionCache, _CacheLocator
from numba.core.compiler_lock import global_compiler_lock

try:
    import fcntl
except ImportError:  # Windows: no compiling ahead (see Compiling ahead above)
    fcntl = None

__all__ = ["cache_folder", "compile_ahead", "compiled", "configure", "ijit", "jit", "run_tasks", "tjit"]

# Every kernel made by compiled(), so that configure() can attach the cache to each.
_KERNELS: list[Any] = []
# The folder that configure() chose for the cache, once it has.
_cache_folder: Path | None = None
_configured = False
_lock = threading.Lock()  # guards the three above


def compiled(**options: Any) -> Callable[[Callable], Any]:
    """A decorator: ``numba.njit(**options)`` with NumPy's division semantics, and the
    kernel cache once :func:`configure` has chosen its folder.

    ``error_model="numpy"``: a division by zero gives inf or nan, as in NumPy, instead of
    raising ZeroDivisionError; the check Python semantics need would also keep loops from
    vectorizing.
    """

    def decorate(function: Callable) -> Any:
        kernel = numba.njit(error_model="numpy", **options)(function)
        with _lock:
            _KERNELS.append(kernel)
            if _cache_folder is not None:
                _attach_cache(kernel)
        return kernel

    return decorate


jit = compiled(fastmath=False)
# Inlined into its callers (the hot loops of the direct convolution): for the smallest helpers.
ijit = compiled(fastmath=False, inline="always")
# A task kernel, ``kernel(first, last, *args)`` doing tasks first .. last - 1, run on
# several threads by run_tasks (see Threads above): compiled without the GIL.
tjit = compiled(fastmath=False, nogil=True)


# One run_tasks at a time (see Threads above).
_LAUNCH = threading.Lock()
# A launch whose array arguments take fewer bytes than this runs on the calling thread:
# waking another thread for its range costs more than that thread would save (see Threads
# above). 0 sends every launch of more than one task to the threads.
parallel_min_bytes = 2**20
# run_tasks's threads besides the caller's, how many there are, and the process that
# started them (a forked child has none of its parent's threads and starts its own).
_task_pool: concurrent.futures.ThreadPoolExecutor | None = None
_task_pool_size = 0
_task_pool_pid = 0


def run_tasks(kernel: Any, tasks: int, *args: Any, blas_calls: bool = False) -> None:
    """Run a task kernel (:data:`tjit`) over tasks ``0 .. tasks - 1``, one contiguous range
    per thread, on Numba's thread count (on the calling thread alone when the array
    arguments take fewer than :data:`parallel_min_bytes`), the calling thread taking the
    first range; one caller at a time. The ranges depend on the thread count only, and a
    kernel whose tasks write apart gives the same bytes on any number of threads. ``blas_calls``: the
    tasks call BLAS, which then runs on one thread (:func:`_serial_blas`). Returns when
    every range has ended, raising a task's exception if one raised."""
    global _task_pool, _task_pool_size, _task_pool_pid
    if _recording:  # a recorder in the kernel's place (see Compiling ahead above)
        kernel(0, tasks, *args)
        return
    threads = max(1, min(numba.get_num_threads(), tasks))
    if threads > 1 and sum(a.nbytes for a in args if isinstance(a, np.ndarray)) < parallel_min_bytes:
        threads = 1
    bounds = [tasks * i // threads for i in range(threads + 1)]
    with _LAUNCH, _serial_blas() if blas_calls else contextlib.nullcontext():
        if threads == 1:
            kernel(0, tasks, *args)
            return
        if _task_pool_pid != os.getpid() or _task_pool_size < threads - 1:
            if _task_pool is not None and _task_pool_pid == os.getpid():
                _task_pool.shutdown()
            _task_pool = concurrent.futures.ThreadPoolExecutor(threads - 1, thread_name_prefix="gpucnn-task")
            _task_pool_size, _task_pool_pid = threads - 1, os.getpid()
        futures = [_task_pool.submit(kernel, bounds[i], bounds[i + 1], *args) for i in range(1, threads)]
        try:
            kernel(bounds[0], bounds[1], *args)
        finally:
            concurrent.futures.wait(futures)  # no range outlives the call, nor the lock
        for future in futures:
            future.result()


# threadpoolctl's controllers of the BLAS libraries in the process, found once SciPy's
# BLAS (the one Numba's np.dot calls) is loaded; None until then.
_blas_pools: list[Any] | None = None


@contextlib.contextmanager
def _serial_blas() -> Iterator[None]:
    """Every BLAS in the process on one thread for the block (:func:`run_tasks` with
    ``blas_calls``): for a task kernel whose tasks call BLAS (``np.dot``, which Numba hands
    to SciPy's BLAS), each task on its own core. A BLAS on several threads called from
    several tasks at once would serialise the calls (OpenBLAS locks its threaded GEMMs) or
    start more threads than cores. The thread counts are put back after the block; BLAS
    calls from other Python threads meanwhile run on one thread too. Without threadpoolctl
    nothing is changed.
    """
    global _blas_pools
    if _blas_pools is None:
        try:
            import scipy.linalg.cython_blas  # noqa: F401  (loads the BLAS that np.dot calls)
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _blas_pools = []
        else:
            _blas_pools = ThreadpoolController().select(user_api="blas").lib_controllers
    before = [pool.num_threads for pool in _blas_pools]
    try:
        for pool, threads in zip(_blas_pools, before):
            if threads != 1:
                pool.set_num_threads(1)
        yield
    finally:
        for pool, threads in zip(_blas_pools, before):
            if threads != 1:
                pool.set_num_threads(threads)


def configure() -> None:
    """Apply the process settings the kernels are tuned for, once: the kernel cache (see
    Compilation above), Numba's threading layer and OpenBLAS's idle workers (see Threads).

    Called by the ``numba`` backend's factory; call it before the first kernel runs, as
    a kernel compiled or a parallel launch made earlier does not see the settings. Later
    calls do nothing.
    """
    global _configured
    with _lock:
        if _configured:
            return
        _configured = True
        _use_cache(cache_folder())
        _prefer_workqueue_threads()
        _let_openblas_workers_sleep()


def cache_folder() -> Path:
    """Where :func:`configure` puts the kernel cache: ``$NUMBA_CACHE_DIR`` (as
    ``numba.config.CACHE_DIR`` holds it) if the user set it, else
    ``$XDG_CACHE_HOME/gpucnn/numba`` (``~/.cache/gpucnn/numba``)."""
    if numba.config.CACHE_DIR:
        return Path(numba.config.CACHE_DIR)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpucnn" / "numba"


# -- the cache ----------------------------------------------------------------------


def _use_cache(folder: Path) -> None:
    """Cache every kernel, present and future, in ``folder``; with a warning, none when
    the folder cannot be written. Called with ``_lock`` held."""
    global _cache_folder
    if numba.config.DISABLE_JIT:  # the kernels are plain Python functions
        return
    subfolder = folder / _KernelCacheLocator.get_suitable_cache_subpath(__file__)
    try:
        subfolder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=subfolder).close()  # the check Numba makes before it writes
    except OSError as exc:
        warnings.warn(
            f"gpucnn cannot write its Numba cache folder {subfolder} ({exc}): the numba backend's "
            "kernels are compiled again in every process (set XDG_CACHE_HOME or NUMBA_CACHE_DIR "
            "to a writable folder to keep them)",
            RuntimeWarning,
            stacklevel=3,
        )
        return
    _cache_folder = folder
    for kernel in _KERNELS:
        _attach_cache(kernel)


def _attach_cache(kernel: Any) -> None:
    """What ``Dispatcher.enable_caching()`` does, with gpucnn's locator instead of Numba's
    list of locators (whose first choice is the package's own ``__pycache__``)."""
    kernel._cache = _KernelCache(kernel.py_func)


class _KernelCacheLocator(_CacheLocator):
    """Where Numba keeps a kernel's cache files: ``_cache_folder``, in the subfolder Numba
    names after the kernel's directory; valid while the kernel files stay as they are."""

    def __init__(self, py_func: Callable, py_file: str) -> None:
        self._py_file = py_file  # named by Numba's warning for a kernel it cannot cache
        self._lineno = py_func.__code__.co_firstlineno
        self._cache_path = os.path.join(_cache_folder, self.get_suitable_cache_subpath(py_file))

    def get_cache_path(self) -> str:
        return self._cache_path

    def get_source_stamp(self) -> str:
        return _kernel_sources_digest()

    def get_disambiguator(self) -> str:
        return str(self._lineno)

    @classmethod
    def from_function(cls, py_func: Callable, py_file: str) -> _KernelCacheLocator:
        return cls(py_func, py_file)


class _KernelCacheImpl(CompileResultCacheImpl):
    _locator_classes = [_KernelCacheLocator]


class _KernelCache(FunctionCache):
    """Numba's cache of one kernel, except that a folder that can no longer be read or
    written (a full disk, changed permissions) costs a warning and a compilation, not
    the kernel's call."""

    _impl_class = _KernelCacheImpl

    def load_overload(self, sig: Any, target_context: Any) -> Any:
        # Numba calls this before it compiles a signature, and save_overload after: while a
        # second process compiles ahead (see Compiling ahead below), the kernel is claimed
        # here, or awaited if the other process has it, and let go once saved.
        key = _claim_compilation(self._py_func, sig) if _ahead is not None else None
        try:
            cres = super().load_overload(sig, target_context)
        except OSError as exc:
            warnings.warn(f"gpucnn cannot read its Numba cache ({exc})", RuntimeWarning, stacklevel=2)
            cres = None
        except BaseException:  # no compilation follows to let the lock file go
            if key is not None:
                _release_compilation(key)
            raise
        if cres is not None and key is not None:
            _release_compilation(key)
        return cres

    def has_entry(self, sig: Any, target_context: Any) -> bool:
        """Whether the cache holds the kernel for this signature (its index names it)."""
        try:
            return self._index_key(sig, target_context.codegen()) in self._cache_file._load_index()
        except Exception:  # an unreadable index: as if empty, as Numba's own load treats it
            return False

    def save_overload(self, sig: Any, data: Any) -> None:
        try:
            self._impl.locator.ensure_cache_path()  # the folder of the lock file
            with _locked(self._cache_file._index_path + ".lock"):
                super().save_overload(sig, data)
        except OSError as exc:
            warnings.warn(f"gpucnn cannot write its Numba cache ({exc})", RuntimeWarning, stacklevel=2)
        finally:
            if _ahead is not None:
                _release_compilation(_compilation_key(self._py_func, sig))


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    """Hold the lock file ``path`` for the block, against other processes: Numba adds a
    signature to a kernel's index by reading the index, then writing it whole with a new
    data file's name, and two processes doing so at once (two compiling ahead, or
    several that share the folder) could lose an entry or give two the same file.
    Without fcntl (Windows), no lock."""
    if fcntl is None:
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):  # a file system without flock: write as Numba does alone
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@functools.cache
def _kernel_sources_digest() -> str:
    """A hash of every ``numba_*.py`` file beside this one (see Compilation above)."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("numba_*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


# -- compiling ahead ------------------------------------------------------------------

# Seconds a process waits for the other to finish compiling a kernel before it compiles
# the kernel itself: far above any one kernel's compilation, so reached only by a process
# that hangs.
_AWAIT_SECONDS = 120.0


@dataclasses.dataclass
class _Ahead:
    """A compilation shared with a second process (:func:`compile_ahead`): the folder of
    its lock files, the lock files this process holds, by key, and the second process's
    id (in the first process)."""

    folder: str
    held: dict[str, int]
    second: int = 0


# The compile-ahead this process takes part in; guarded by Numba's compiler lock.
_ahead: _Ahead | None = None
# Set in the second process while it walks the step: run_tasks then calls the recorder once.
_recording = False


@contextlib.contextmanager
def compile_ahead(step: Callable[[], Any]) -> Iterator[None]:
    """Share the compilation of ``step``'s kernels with a second process while the block
    runs ``step`` (see Compiling ahead above). Does nothing where it cannot be done."""
    global _ahead
    if not (_can_compile_ahead() and _only_quiet_threads()):
        yield
        return
    try:
        folder = tempfile.mkdtemp(prefix="gpucnn-compile-")
    except OSError:
        yield
        return
    second = stop = None
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})  # no KeyboardInterrupt in between
    try:
        second, stop = _fork_second_process(step, folder)
        if second is not None:
            with global_compiler_lock:
                _ahead = _Ahead(folder, {}, second)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        try:
            if second is not None:
                with global_compiler_lock:
                    for key in list(_ahead.held):
                        _release_compilation(key)
                    _ahead = None
                os.close(stop)
                _end(second)
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def _fork_second_process(step: Callable[[], Any], folder: str) -> tuple[int | None, int | None]:
    """Fork the second process of :func:`compile_ahead`: (its process id, the pipe whose
    closing stops it), or (None, None) where it cannot start (another thread became busy,
    no memory for a fork). Called with SIGINT blocked."""
    try:
        stop_read, stop_write = os.pipe()
    except OSError:
        return None, None
    pid = None
    try:
        # No other thread is inside a task launch or Numba's compiler while the process
        # forks (the two locks, in run_tasks's order), so that the second process finds
        # neither held, and any other thread is one that cannot be inside BLAS either
        # (Python 3.12 warns of any fork with threads).
        with _LAUNCH, global_compiler_lock, warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            if _only_quiet_threads():
                pid = os.fork()
                if pid == 0:
                    os.close(stop_write)
                    _second_process(step, folder, stop_read)  # does not return
    except OSError:
        pass
    os.close(stop_read)
    if pid is None:
        os.close(stop_write)
        return None, None
    return pid, stop_write


def _can_compile_ahead() -> bool:
    """Whether :func:`compile_ahead` may share the work: on Linux (a fork without exec is
    unsafe on macOS, and Windows has none), with the kernel cache (the second process hands
    kernels over through it), two usable cores, outside an MPI job (forking an MPI process
    is unsafe on some networks) and unless ``GPUCNN_COMPILE_AHEAD=0``."""
    return (
        _ahead is None
        and sys.platform.startswith("linux")
        and fcntl is not None
        and _cache_folder is not None
        and len(os.sched_getaffinity(0)) >= 2
        and "mpi4py.MPI" not in sys.modules
        and os.environ.get("GPUCNN_COMPILE_AHEAD", "1") != "0"
    )


def _only_quiet_threads() -> bool:
    """Whether every Python thread but this one is known to stay out of BLAS, Numba's
    compiler and the locks the second process takes while the process forks: gpucnn's task
    threads (idle while the launch lock is held) and tqdm's monitor (asleep between its
    looks at the progress bars). A fork while another thread is in OpenBLAS can hang in
    OpenBLAS's own fork handler; with any other thread there is no second process."""
    this = threading.current_thread()
    return all(
        thread is this or thread.name.startswith("gpucnn-task") or type(thread).__name__ == "TMonitor"
        for thread in threading.enumerate()
    )


def _second_process(step: Callable[[], Any], folder: str, stop: int) -> NoReturn:
    """The second process of :func:`compile_ahead`: walks ``step`` to learn its kernels
    and their argument types, then compiles them last to first into the cache, each one
    that neither the cache nor the first process has, until ``stop`` is closed. Ends the
    process; writes nothing but cache entries (its output goes to /dev/null), and the
    user's signal handlers do not run in it (a Ctrl-C ends it)."""
    global _ahead
    try:
        for number in signal.valid_signals():
            if callable(signal.getsignal(number)):
                signal.signal(number, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked by compile_ahead
        quiet = os.open(os.devnull, os.O_WRONLY)
        os.dup2(quiet, 1)
        os.dup2(quiet, 2)
        warnings.simplefilter("ignore")
        with contextlib.suppress(OSError):  # the first to go if memory runs out
            Path("/proc/self/oom_score_adj").write_text("1000")
        os.set_blocking(stop, False)
        _ahead = _Ahead(folder, {})
        calls = _record(step)
        entrypoints.init_all()  # what Numba does before a compilation from a call
        for kernel, sig in reversed(calls):
            if _stopped(stop):
                break
            if sig in kernel.overloads or kernel._cache.has_entry(sig, kernel.targetctx):
                continue
            key = _claim_compilation(kernel.py_func, sig, wait=False)
            if key is None:  # the first process is compiling it
                continue
            try:
                kernel.compile(sig)  # compiles and saves; runs nothing
            except Exception:  # the first process meets the same error when it compiles
                pass
            finally:
                _release_compilation(key)
    finally:
        os._exit(0)


def _stopped(stop: int) -> bool:
    """Whether the first process has closed ``stop`` (ended its step, or died)."""
    try:
        return os.read(stop, 1) == b""
    except BlockingIOError:
        return False


def _end(second: int) -> None:
    """End the second process once the step has ended, and wait for it: every kernel the
    step called is compiled by then, so what it is still doing (a walk the step did not
    wait for, a kernel the step never called) is of no use. Killed at once, it may leave a
    temporary file of a cache entry it was writing, never a half-written entry (Numba writes
    each through a temporary file and a rename); its CPU time counts as the process's own
    (``RUSAGE_CHILDREN``)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(second, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(second, 0)


def _record(step: Callable[[], Any]) -> list[tuple[Any, tuple]]:
    """Run ``step`` with every kernel replaced by a recorder: (kernel, argument types) of
    each first call with new types, in call order. The kernels run nothing, so their
    outputs hold whatever the allocator gave; the step runs on to its end or to an error
    that garbage causes, and what it computes is thrown away with the process."""
    global _recording
    calls: list[tuple[Any, tuple]] = []

    def recorder(kernel: Any) -> Callable[..., None]:
        def record(*args: Any) -> None:
            sig = tuple(kernel.typeof_pyval(a) for a in args)
            if (kernel, sig) not in calls:
                calls.append((kernel, sig))

        return record

    replaced = []
    for kernel in _KERNELS:
        module, name = sys.modules.get(kernel.py_func.__module__), kernel.py_func.__name__
        if getattr(module, name, None) is kernel:
            setattr(module, name, recorder(kernel))
            replaced.append((module, name, kernel))
    _recording = True
    with np.errstate(all="ignore"):
        try:
            step()
        except Exception:  # garbage values broke the walk: compile what it reached
            pass
        finally:
            _recording = False
            for module, name, kernel in replaced:  # Numba compiles a kernel's calls from its globals
                setattr(module, name, kernel)
    return calls


def _compilation_key(py_func: Callable, sig: Any) -> str:
    """The name of a kernel's lock file for one signature: the same in both processes."""
    args, _ = sigutils.normalize_signature(sig)
    code = py_func.__code__
    text = f"{py_func.__module__}.{py_func.__qualname__}:{code.co_firstlineno}:{tuple(args)}"
    return hashlib.sha1(text.encode()).hexdigest()


class _FailedCompilations(event.Listener):
    """Lets go of the lock file of a compilation that raised, which no save follows: Numba
    tries a call's literal argument types first and may fail on them before it succeeds
    with the plain ones."""

    def on_start(self, ev: event.Event) -> None:
        pass

    def on_end(self, ev: event.Event) -> None:
        # The exception the event carries (Numba's Event.is_failed answers the opposite).
        if _ahead is not None and getattr(ev, "_exc_details", None) is not None:
            _release_compilation(_compilation_key(ev.data["dispatcher"].py_func, ev.data["args"]))


event.register("numba:compile", _FailedCompilations())


def _claim_compilation(py_func: Callable, sig: Any, wait: bool = True) -> str | None:
    """Take the lock file of a kernel's signature (already held: nothing to do); with
    ``wait``, first wait while the other process holds it. Returns its key, or None if
    it was not taken (held by the other process, or no lock file could be made: then the
    kernel is compiled here without one). Called with Numba's compiler lock held."""
    key = _compilation_key(py_func, sig)
    if key in _ahead.held:
        return key
    try:
        fd = os.open(os.path.join(_ahead.folder, key), os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return None
    deadline = time.monotonic() + _AWAIT_SECONDS
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not wait or time.monotonic() >= deadline:
                    raise
                time.sleep(0.005)
    except BaseException as exc:  # held elsewhere, no flock on this file system, or interrupted
        os.close(fd)
        if isinstance(exc, OSError):
            return None
        raise
    _ahead.held[key] = fd
    return key


def _release_compilation(key: str) -> None:
    """Let go of a lock file this process holds (none: nothing to do)."""
    fd = _ahead.held.pop(key, None)
    if fd is not None:
        with contextlib.suppress(OSError):  # unlocked before closed: a fork may hold a copy
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# -- threads --------------------------------------------------------------------------


def _prefer_workqueue_threads() -> None:
    """Numba's own thread pool unless the user picked a threading layer (see Threads above)."""
    if "NUMBA_THREADING_LAYER" not in os.environ and numba.config.THREADING_LAYER == "default":
        numba.config.THREADING_LAYER = "workqueue"


def _let_openblas_workers_sleep() -> None:
    """Make idle OpenBLAS workers sleep at once instead of spinning (see Threads above).

    OpenBLAS reads ``OPENBLAS_THREAD_TIMEOUT`` when it loads, before gpucnn can set it; it
    exports ``openblas_read_env`` to read the environment again and ``blas_thread_shutdown_``
    to stop its workers, which start again with the new setting at the next GEMM. The
    variable is set only for the reading, so child processes inherit the environment
    unchanged.

    Stopping the workers while a GEMM runs on them would leave that GEMM waiting forever
    for workers that are gone. So this is done only when the calling thread is the only
    Python thread: it is not inside a GEMM itself (it is here), no other thread exists to
    be inside one, and none can start before the shutdown returns, since only this
    thread could start it. NumPy's BLAS is called from Python threads: gpucnn's task
    threads call SciPy's BLAS on one thread only, and not before this has run (threads that
    a C library starts on its own are assumed not to call NumPy's BLAS either). With other threads nothing is
    done, and the workers keep spinning after each GEMM: the same values, a little slower
    on few cores. Nothing is done either without threadpoolctl (to find the library),
    with another BLAS, or when the user set the variable.
    """
    if "OPENBLAS_THREAD_TIMEOUT" in os.environ or threading.active_count() > 1:
        return
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return
    for pool in threadpool_info():
        if pool.get("internal_api") != "openblas":
            continue
        try:
            lib = ctypes.CDLL(pool["filepath"])
            read_env, shutdown = lib.openblas_read_env, lib.blas_thread_shutdown_
        except (OSError, AttributeError):  # an OpenBLAS without these entry points
            continue
        os.environ["OPENBLAS_THREAD_TIMEOUT"] = "4"  # 2**4 cycles: sleep at once
        try:
            read_env()
        finally:
            del os.environ["OPENBLAS_THREAD_TIMEOUT"]
        shutdown()
