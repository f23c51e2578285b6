"""Data-parallel training over MPI, as ChainerMN and Horovod do it.

Every rank (one process, launched by ``mpiexec``) holds the whole model and reads the
whole data set. Each global batch of ``fit`` (``batch_size`` samples, drawn from the
same shuffled order on every rank, since the order depends only on the seed and the
epoch) is split over the ranks as evenly as possible: 100 samples over 3 ranks are
34/33/33, the first ``100 % 3`` ranks taking one more (:func:`shard_sizes`). Each rank
runs forward and backward on its share; between backward and the update the gradients
are summed over the ranks, each rank's mean gradient first scaled by its share of the
global batch (``n_rank / n_global``), so every rank steps on the mean gradient over the
global batch: N ranks reach the weights of one process at the same global batch, to
float rounding.

The sum runs while backward is still going: :class:`GradientBuckets` collects the
gradients as the model's ``on_gradient`` hook hands them over (last layer first), packs
them into buckets of about ``bucket_bytes`` and starts a non-blocking all-reduce of each
bucket as soon as it is full; the update waits for the last one.

Communicators (:class:`Communicator`):

* :class:`LocalCommunicator`: one process; every sum is the identity.
* :class:`MPICommunicator`: mpi4py over host arrays (``pip install 'gpucnn[mpi]'``).
* :class:`NCCLCommunicator`: NCCL over CuPy device arrays, one GPU per rank chosen by
  the rank's index on its node; objects and host values still travel over MPI.
  :func:`default_communicator` picks it for a GPU backend when NCCL is there.

Layers with randomness or statistics:

* Dropout draws each rank's masks from its own stream, keyed by ``(seed, epoch, layer,
  rank)`` (rank 0's is the single-process stream), so the ranks drop different units of
  different samples and a run repeats exactly with the same number of ranks.
* BatchNormalization normalizes with each rank's own batch statistics, as PyTorch's
  ``DistributedDataParallel`` does without ``SyncBatchNorm``; the running mean and
  variance are averaged over the ranks after every epoch (before validation and the
  checkpoint), so every rank evaluates and saves the same model.

Failures: the ranks first agree on the launch (:meth:`DataParallel.check_launch`: the
arguments of ``fit``, the data's shapes and checksums, the model's architecture and
weights) and a difference raises :class:`LaunchMismatchError` on every rank, naming it.
Errors that every rank meets together (that one, a non-finite loss, which is the mean
over the global batch) are raised on every rank. Any other error raised on one rank while
training ends the whole job (:meth:`Communicator.guard`): that rank prints it once and
calls ``MPI_Abort``, which makes ``mpiexec`` stop the other ranks within seconds instead
of leaving them waiting in an all-reduce.

Waiting: a rank that waits for the others (an all-reduce, a slower rank, rank 0 writing a
checkpoint) tests the request and sleeps between tests, a little longer each time, instead
of calling ``MPI_Wait``, whose Open MPI implementation polls on its core: ranks that share
cores (more ranks than cores, or a rank beside its own compute threads) leave them to the
work. With :func:`limit_threads` a rank computes on one thread (BLAS and Numba), so that
N ranks on N cores do not run N times as many threads as there are cores.

Several runs at once: :func:`spread` shares independent configurations (the batch sizes
of ``gpucnn sweep``) over the ranks, each on its own rank, or on a group of ranks that
trains it data-parallel when there are more ranks than configurations.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import time
import traceback
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TextIO

import numpy as np

from .training import NonFiniteLossError

__all__ = [
    "Communicator",
    "DataParallel",
    "DistributedError",
    "GradientBuckets",
    "LaunchMismatchError",
    "LocalCommunicator",
    "MPICommunicator",
    "MPIUnavailable",
    "NCCLCommunicator",
    "Share",
    "default_communicator",
    "launch_differences",
    "limit_threads",
    "mpiexec_path",
    "shard_bounds",
    "shard_sizes",
    "spread",
]

Array = Any

INSTALL_MPI = "pip install 'gpucnn[mpi]'"


def mpiexec_path() -> str | None:
    """The ``mpiexec`` to launch ranks with: the one beside this Python interpreter (the
    ``mpi`` extra puts Open MPI's there, in a virtual environment that need not be active),
    else the first on ``PATH``; None when there is none."""
    for folder in (Path(sys.executable).parent, *map(Path, os.environ.get("PATH", "").split(os.pathsep))):
        if (folder / "mpiexec").is_file():
            return str(folder / "mpiexec")
    return None


DEFAULT_BUCKET_BYTES = 1 << 20  # PyTorch DDP uses 25 MiB; the models here are small
# Waiting for a request (see "Waiting" above): test it without pause for SPIN_S (a sum whose
# ranks arrive together ends within it), then sleep between tests, from PAUSE_S doubling up
# to the longest pause: short for the sums of a training step, longer for the waits on
# objects (a rank that finished its share of a sweep waits minutes for the others).
SPIN_S = 2e-4
PAUSE_S = 1e-5
LONGEST_STEP_PAUSE_S = 5e-4
LONGEST_OBJECT_PAUSE_S = 1e-2
# The thread-count variables that limit_threads leaves alone when the user set them.
BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS")
NUMBA_THREAD_VARIABLES = ("NUMBA_NUM_THREADS",)


class DistributedError(RuntimeError):
    """Data-parallel training cannot go on (raised on every rank alike)."""


class MPIUnavailable(DistributedError):
    """mpi4py (or an MPI library under it) is missing."""


class LaunchMismatchError(DistributedError):
    """The ranks were launched with different arguments, models or data."""


# Errors that every rank of a data-parallel job raises together, after the same sum.
COLLECTIVE_ERRORS: tuple[type[BaseException], ...] = (DistributedError, NonFiniteLossError)


# -- splitting a global batch -------------------------------------------------------


def shard_sizes(n: int, ranks: int) -> list[int]:
    """How many of ``n`` samples each of ``ranks`` ranks takes: as even as possible, the
    first ``n % ranks`` ranks one more (100 over 3: ``[34, 33, 33]``)."""
    if ranks < 1:
        raise ValueError(f"the number of ranks must be >= 1, got {ranks}")
    base, extra = divmod(int(n), ranks)
    return [base + (rank < extra) for rank in range(ranks)]


def shard_bounds(n: int, ranks: int, rank: int) -> tuple[int, int]:
    """``(start, stop)``: rank ``rank``'s contiguous part of ``range(n)`` (see :func:`shard_sizes`)."""
    if not 0 <= rank < ranks:
        raise ValueError(f"rank {rank} is not in [0, {ranks - 1}]")
    base, extra = divmod(int(n), ranks)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


# -- communicators ----------------------------------------------------------------------


class Request:
    """A sum over the ranks under way; ``wait()`` returns the summed buffer."""

    def __init__(self, buffer: Array) -> None:
        self.buffer = buffer

    def test(self) -> bool:
        """Whether the sum is done (and a chance for MPI to move it on)."""
        return True

    def wait(self) -> Array:
        return self.buffer


class Communicator:
    """What data-parallel training needs from the ranks of a job.

    Attributes:
        rank, size: this process's index and the number of ranks.
        local_rank: this process's index among the ranks on its node (picks its GPU).
        device_buffers: whether :meth:`iallreduce` takes the backend's device arrays
            (NCCL) rather than host NumPy arrays.
        bucket_bytes: size of a gradient bucket (:class:`GradientBuckets`).
        overlap: start each bucket's sum as soon as it is full (``True``), or all of
            them after the whole backward pass (``False``: for measuring the overlap).
        describe_failure: ``f(error) -> str``, the text a rank prints before it ends the
            job over an error of its own (:meth:`guard`); default: the traceback and a
            line naming the rank.
        stderr: where that text goes (default: ``sys.stderr`` at the time); a command
            that silences the other ranks' output gives the real one here.
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device_buffers: bool = False

    def __init__(
        self,
        *,
        bucket_bytes: int = DEFAULT_BUCKET_BYTES,
        overlap: bool = True,
        describe_failure: Callable[[BaseException], str] | None = None,
        stderr: TextIO | None = None,
    ) -> None:
        if bucket_bytes < 1:
            raise ValueError(f"bucket_bytes must be >= 1, got {bucket_bytes}")
        self.bucket_bytes = int(bucket_bytes)
        self.overlap = bool(overlap)
        self.describe_failure = describe_failure
        self.stderr = stderr

    def options(self) -> dict[str, Any]:
        """The constructor's options, for a communicator made from this one (:meth:`split`)."""
        return {
            "bucket_bytes": self.bucket_bytes,
            "overlap": self.overlap,
            "describe_failure": self.describe_failure,
            "stderr": self.stderr,
        }

    def iallreduce(self, buffer: Array) -> Request:
        """Start summing the 1-d ``buffer`` over the ranks, in place; non-blocking."""
        raise NotImplementedError

    def allreduce(self, buffer: Array) -> Array:
        """The sum of the 1-d ``buffer`` over the ranks (blocking)."""
        return self.iallreduce(buffer).wait()

    def sum_floats(self, values: Sequence[float]) -> list[float]:
        """Host numbers summed over the ranks, in float64."""
        return [float(v) for v in values]

    def broadcast_object(self, value: Any, root: int = 0) -> Any:
        """Rank ``root``'s ``value`` on every rank."""
        return value

    def allgather_object(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank."""
        return [value]

    def split(self, color: int) -> Communicator:
        """The ranks that pass the same ``color`` (every rank calls it), as a communicator
        of their own, in the same rank order."""
        return self

    def abort(self, message: str | None, code: int = 1) -> NoReturn:
        """Print ``message`` (from this rank; None: nothing) and end every rank of the job."""
        raise SystemExit(message if message is not None else code)

    def failure_message(self, error: BaseException) -> str:
        """What this rank prints before it ends the job over ``error`` (see ``describe_failure``)."""
        if self.describe_failure is not None:
            return self.describe_failure(error)
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        return (
            f"{text}gpucnn: rank {self.rank} of {self.size} (pid {os.getpid()}) failed with "
            f"{type(error).__name__}: {error}; stopping every rank"
        )

    @contextlib.contextmanager
    def guard(
        self, collective: tuple[type[BaseException], ...] = COLLECTIVE_ERRORS, group: Communicator | None = None
    ) -> Iterator[None]:
        """Run work that the other ranks wait on: an error raised on this rank alone ends
        the job (printed once, from this rank, then ``MPI_Abort``) instead of leaving the
        others waiting in a sum that never completes.

        Errors of the ``collective`` types are raised alike on every rank of ``group``
        (default: every rank of this communicator): they are raised again where ``group``
        is the whole job; for a smaller group they end the job, printed by the group's
        first rank alone (the others end it silently a few seconds later, should that
        rank not have done so). One process (``size == 1``) raises every error.
        """
        try:
            yield
        except Exception as error:
            if self.size == 1:
                raise
            if isinstance(error, collective):
                if group is None or group.size == self.size:
                    raise
                if group.rank != 0:
                    time.sleep(5.0)  # the group's first rank prints the error and aborts
                    self.abort(None)
            self.abort(self.failure_message(error))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, size={self.size})"


class LocalCommunicator(Communicator):
    """One process: rank 0 of 1; every sum is the identity."""

    def iallreduce(self, buffer: Array) -> Request:
        return Request(buffer)


def _wait(request: Any, longest_pause: float = LONGEST_STEP_PAUSE_S) -> None:
    """Wait for an MPI request without holding a core (see "Waiting" above)."""
    start = time.perf_counter()
    while not request.Test():
        if time.perf_counter() - start > SPIN_S:
            break
    else:
        return
    pause = PAUSE_S
    while not request.Test():
        time.sleep(pause)
        pause = min(2 * pause, longest_pause)


class _MPIRequest(Request):
    def __init__(self, request: Any, buffer: np.ndarray) -> None:
        super().__init__(buffer)
        self._request = request

    def test(self) -> bool:
        return bool(self._request.Test())

    def wait(self) -> np.ndarray:
        _wait(self._request)
        return self.buffer


def _import_mpi() -> Any:
    try:
        from mpi4py import MPI
    except ImportError as error:  # mpi4py missing, or its MPI library
        raise MPIUnavailable(f"distributed training needs mpi4py and an MPI library: {INSTALL_MPI} ({error})") from None
    return MPI


class MPICommunicator(Communicator):
    """The ranks of an MPI communicator (default ``MPI.COMM_WORLD``), summing host arrays.

    Raises :class:`MPIUnavailable`, naming ``pip install 'gpucnn[mpi]'``, without mpi4py.
    """

    def __init__(self, comm: Any = None, **options: Any) -> None:
        super().__init__(**options)
        self._mpi = _import_mpi()
        self.comm = self._mpi.COMM_WORLD if comm is None else comm
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        node = self.comm.Split_type(self._mpi.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank = node.Get_rank()
        node.Free()

    def iallreduce(self, buffer: np.ndarray) -> Request:
        if not isinstance(buffer, np.ndarray) or buffer.ndim != 1 or not buffer.flags.c_contiguous:
            raise TypeError(f"MPICommunicator sums contiguous 1-d NumPy arrays, got {type(buffer).__name__}")
        return _MPIRequest(self.comm.Iallreduce(self._mpi.IN_PLACE, buffer, op=self._mpi.SUM), buffer)

    def sum_floats(self, values: Sequence[float]) -> list[float]:
        buffer = np.ascontiguousarray(values, dtype=np.float64).reshape(-1)
        _wait(self.comm.Iallreduce(self._mpi.IN_PLACE, buffer, op=self._mpi.SUM), LONGEST_OBJECT_PAUSE_S)
        return [float(v) for v in buffer]

    def _gathered(self) -> None:
        """Wait until every rank has come (a non-blocking barrier, waited for politely), so
        that the blocking collective of objects that follows does not poll for long."""
        _wait(self.comm.Ibarrier(), LONGEST_OBJECT_PAUSE_S)

    def broadcast_object(self, value: Any, root: int = 0) -> Any:
        self._gathered()
        return self.comm.bcast(value, root=root)

    def allgather_object(self, value: Any) -> list[Any]:
        self._gathered()
        return self.comm.allgather(value)

    def split(self, color: int) -> MPICommunicator:
        return MPICommunicator(self.comm.Split(int(color), key=self.rank), **self.options())

    def abort(self, message: str | None, code: int = 1) -> NoReturn:
        if message is not None:
            print(message, file=self.stderr or sys.stderr, flush=True)
        sys.stdout.flush()
        self._mpi.COMM_WORLD.Abort(code)  # the whole job, whatever group this communicator holds
        raise SystemExit(code)  # not reached: Abort ends the process


class _StreamRequest(Request):
    """An NCCL sum queued on a side stream; ``wait`` orders the current stream after it
    without blocking the host."""

    def __init__(self, done: Any, buffer: Array, cupy: Any) -> None:
        super().__init__(buffer)
        self._done = done
        self._cupy = cupy

    def wait(self) -> Array:
        self._cupy.cuda.get_current_stream().wait_event(self._done)
        return self.buffer


class NCCLCommunicator(Communicator):
    """NCCL all-reduce of CuPy device arrays, one GPU per rank (``local_rank`` modulo the
    node's GPU count); host values, objects and aborts go through ``host`` (an
    :class:`MPICommunicator`, or a :class:`LocalCommunicator` for one rank).

    Each sum is queued on a stream of its own once the current stream has produced the
    buffer, so it overlaps the rest of backward; nothing is copied to the host.
    """

    device_buffers = True

    def __init__(self, host: Communicator | None = None, *, device: int | None = None, **options: Any) -> None:
        host = MPICommunicator() if host is None else host
        super().__init__(**{**host.options(), **options})
        import cupy
        from cupy.cuda import nccl

        if not nccl.available:
            raise DistributedError("this CuPy has no NCCL; install CuPy's NCCL (pip install nvidia-nccl-cu12 or -cu13)")
        self.host = host
        self.rank, self.size, self.local_rank = host.rank, host.size, host.local_rank
        self._cupy, self._nccl = cupy, nccl
        if device is None:
            device = self.local_rank % cupy.cuda.runtime.getDeviceCount()
        self.device = cupy.cuda.Device(device)
        self.device.use()
        unique_id = host.broadcast_object(nccl.get_unique_id() if self.rank == 0 else None)
        self.comm = nccl.NcclCommunicator(self.size, unique_id, self.rank)
        self._stream = cupy.cuda.Stream(non_blocking=True)
        self._types = {"float32": nccl.NCCL_FLOAT32, "float64": nccl.NCCL_FLOAT64}

    def iallreduce(self, buffer: Array) -> Request:
        dtype = str(buffer.dtype)
        if dtype not in self._types or buffer.ndim != 1 or not buffer.flags.c_contiguous:
            raise TypeError(f"NCCLCommunicator sums contiguous 1-d float32/float64 CuPy arrays, got {dtype}")
        self._stream.wait_event(self._cupy.cuda.get_current_stream().record())
        pointer = buffer.data.ptr
        self.comm.allReduce(pointer, pointer, buffer.size, self._types[dtype], self._nccl.NCCL_SUM, self._stream.ptr)
        return _StreamRequest(self._stream.record(), buffer, self._cupy)

    def sum_floats(self, values: Sequence[float]) -> list[float]:
        return self.host.sum_floats(values)

    def broadcast_object(self, value: Any, root: int = 0) -> Any:
        return self.host.broadcast_object(value, root)

    def allgather_object(self, value: Any) -> list[Any]:
        return self.host.allgather_object(value)

    def split(self, color: int) -> NCCLCommunicator:
        return NCCLCommunicator(self.host.split(color), device=self.device.id)

    def abort(self, message: str | None, code: int = 1) -> NoReturn:
        self.host.abort(message, code)


def default_communicator(backend: Any, **options: Any) -> Communicator:
    """The communicator for a job on ``backend``: NCCL on a GPU backend whose CuPy has it,
    else MPI over host arrays (:class:`MPIUnavailable` without mpi4py)."""
    host = MPICommunicator(**options)
    if backend.is_gpu:
        try:
            from cupy.cuda import nccl
        except ImportError:
            return host
        if nccl.available:
            return NCCLCommunicator(host)
    return host


# -- the gradient's sum over the ranks ---------------------------------------------


class GradientBuckets:
    """Sums a model's gradients over the ranks while backward runs.

    The parameters are grouped, last layer first (the order backward produces them), into
    buckets of at least ``bucket_bytes`` (a layer's parameters share a bucket). Passed as
    ``on_gradient`` to ``model.train_step``, the object takes each gradient, scales it by
    ``weight`` (this rank's share of the global batch) into the bucket's flat buffer, and
    starts the bucket's non-blocking sum once all its gradients are in. With the last
    gradient it waits for every sum and writes the results into the gradient arrays in
    place, before the optimizer reads them. Buckets are started in the same order on
    every rank, whatever order the gradients of one layer arrive in.
    """

    def __init__(self, model: Any, communicator: Communicator) -> None:
        self.model = model
        self.communicator = communicator
        params = model.params
        layers: list[tuple[Any, list[str]]] = []
        for key, (layer, _) in reversed(list(model.param_slots().items())):
            if layers and layers[-1][0] is layer:
                layers[-1][1].append(key)
            else:
                layers.append((layer, [key]))
        itemsize = np.dtype(model.np_dtype).itemsize
        self.buckets: list[list[str]] = []
        size = communicator.bucket_bytes
        for _, keys in layers:
            if size >= communicator.bucket_bytes:
                self.buckets.append([])
                size = 0
            self.buckets[-1].extend(keys)
            size += sum(int(np.prod(params[key].shape)) for key in keys) * itemsize
        self.shapes = {key: tuple(params[key].shape) for key in params}
        self._bucket_of = {key: i for i, keys in enumerate(self.buckets) for key in keys}
        self.weight = 1.0
        self._grads: dict[str, Array] = {}
        self._missing: list[int] = []
        self._started: list[tuple[int, Request]] = []
        self.done = True

    def begin(self, weight: float) -> None:
        """Get ready for one backward pass whose gradients count ``weight`` in the sum."""
        self.weight = float(weight)
        self._grads = {}
        self._missing = [len(keys) for keys in self.buckets]
        self._started = []
        self.done = False

    def __call__(self, key: str, grad: Array) -> None:
        """The ``on_gradient`` hook: one parameter's gradient is ready."""
        bucket = self._bucket_of[key]
        self._grads[key] = grad
        self._missing[bucket] -= 1
        if self.communicator.overlap:
            while len(self._started) < len(self.buckets) and self._missing[len(self._started)] == 0:
                self._start(len(self._started))
            if self._started:
                self._started[0][1].test()  # MPI moves a sum on only when called
        if not any(self._missing):
            while len(self._started) < len(self.buckets):
                self._start(len(self._started))
            self._finish()

    def _start(self, bucket: int) -> None:
        backend, xp = self.model.backend, self.model.backend.xp
        flat = xp.concat([xp.reshape(self._grads[key], (-1,)) for key in self.buckets[bucket]])
        if self.weight != 1.0:
            flat = flat * self.weight
        if not self.communicator.device_buffers:
            flat = np.ascontiguousarray(backend.to_numpy(flat))
        self._started.append((bucket, self.communicator.iallreduce(flat)))

    def _summed(self, request: Request) -> Array:
        flat = request.wait()
        return flat if self.communicator.device_buffers else self.model.backend.asarray(flat)

    def _finish(self) -> None:
        xp = self.model.backend.xp
        for bucket, request in self._started:
            flat, offset = self._summed(request), 0
            for key in self.buckets[bucket]:
                count = int(np.prod(self.shapes[key]))
                self._grads[key][...] = xp.reshape(flat[offset : offset + count], self.shapes[key])
                offset += count
        self.done = True

    def zero_share(self) -> dict[str, Array]:
        """The summed gradients when this rank has no samples in the batch (it adds zeros),
        keyed as ``model.params``."""
        xp = self.model.backend.xp
        started = []
        for keys in self.buckets:
            count = sum(int(np.prod(self.shapes[key])) for key in keys)
            if self.communicator.device_buffers:
                flat = xp.zeros((count,), dtype=self.model.dtype)
            else:
                flat = np.zeros(count, dtype=self.model.np_dtype)
            started.append(self.communicator.iallreduce(flat))
        grads = {}
        for keys, request in zip(self.buckets, started):
            flat, offset = self._summed(request), 0
            for key in keys:
                count = int(np.prod(self.shapes[key]))
                grads[key] = xp.reshape(flat[offset : offset + count], self.shapes[key])
                offset += count
        return {key: grads[key] for key in self.shapes}


# -- one rank's part of fit ------------------------------------------------------------


def _digest(arrays: Sequence[tuple[str, Any]], backend: Any) -> str:
    """A short hash of named arrays' shapes, dtypes and bytes."""
    h = hashlib.sha256()
    for name, value in arrays:
        host = np.ascontiguousarray(backend.to_numpy(value))
        h.update(f"{name}:{host.dtype}:{host.shape};".encode())
        h.update(host.tobytes())
    return h.hexdigest()[:16]


def _data_summary(a: Any) -> dict[str, Any]:
    """Shape, dtype and a CRC of a host array (device arrays: shape and dtype only)."""
    summary = {"shape": tuple(np.shape(a)), "dtype": str(a.dtype)}
    if isinstance(a, np.ndarray):
        summary["crc32"] = zlib.crc32(np.ascontiguousarray(a).view(np.uint8).reshape(-1))
    return summary


class DataParallel:
    """One rank's part of ``fit(..., communicator=...)`` on ``model``: the launch check,
    its share of each global batch, the training step over the ranks, the averaging of
    BatchNormalization statistics and the handling of errors."""

    def __init__(self, model: Any, communicator: Communicator) -> None:
        if not isinstance(communicator, Communicator):
            raise TypeError(f"communicator must be a gpucnn.distributed.Communicator, got {communicator!r}")
        self.model = model
        self.communicator = communicator
        self.rank, self.size = communicator.rank, communicator.size
        self._buckets: GradientBuckets | None = None
        self._global_sizes: deque[int] = deque()

    # the launch

    def from_root(self, value: Any) -> Any:
        """Rank 0's ``value`` (a seed drawn at random, say) on every rank."""
        return self.communicator.broadcast_object(value)

    def check_launch(self, settings: dict[str, Any]) -> None:
        """Raise :class:`LaunchMismatchError` on every rank unless every rank passed equal
        ``settings``; the message names each differing setting and its value per rank."""
        differences = launch_differences(self.communicator.allgather_object(settings))
        if differences:
            raise LaunchMismatchError(
                f"the {self.size} ranks were launched differently; every rank needs the same arguments, "
                f"model and data. Differences: {'; '.join(differences)}"
            )

    def data_settings(self, x: Any, t: Any) -> dict[str, Any]:
        """What the ranks must agree on about the training data."""
        return {"x": _data_summary(x), "t": _data_summary(t)}

    def model_settings(self) -> dict[str, Any]:
        """What the ranks must agree on about the model: architecture, backend, weights,
        state and optimizer."""
        model = self.model
        backend = model.backend
        optimizer = model.optimizer
        architecture = model.architecture()
        settings = {
            "layers": architecture["layers"],
            "loss": architecture["loss"],
            "input_shape": architecture["input_shape"],
            "dtype": architecture["dtype"],
            "backend": backend.name,
            "weights": _digest(sorted(model.state_dict().items()), backend),
            "optimizer": repr(optimizer),
        }
        if optimizer is not None:
            slots = [(f"{k}/{n}", v) for k, state in sorted(optimizer.state.items()) for n, v in sorted(state.items())]
            settings["optimizer_state"] = (optimizer.iterations, _digest(slots, backend))
        return settings

    # one epoch

    def shard(self, batches: Sequence[np.ndarray]) -> list[np.ndarray]:
        """This rank's share of each global batch (and the global sizes that
        :meth:`train_step` weights the shares with, in order)."""
        self._global_sizes = deque(len(idx) for idx in batches)
        local = []
        for idx in batches:
            start, stop = shard_bounds(len(idx), self.size, self.rank)
            local.append(idx[start:stop])
        return local

    def train_step(self, x: Array, t: Array) -> tuple[Array, Array]:
        """``model.train_step`` on this rank's share of a global batch, with the gradient
        summed over the ranks; returns the global batch's mean loss and right answers."""
        model = self.model
        xp = model.backend.xp
        if self._buckets is None:
            self._buckets = GradientBuckets(model, self.communicator)
        buckets = self._buckets
        n_global = self._global_sizes.popleft()
        n_local = int(x.shape[0])
        weight = n_local / n_global
        if n_local == 0:
            grads = buckets.zero_share()
            model.optimizer.update(model.params, grads, backend=model.backend)
            stats = xp.zeros((2,), dtype=model.dtype)
        else:
            buckets.begin(weight)
            loss, correct = model.train_step(x, t, on_gradient=buckets)
            if not buckets.done:
                raise DistributedError("backward left parameters without a gradient; the ranks are out of step")
            stats = xp.stack([loss * weight, xp.astype(correct, loss.dtype)])
        stats = self._sum(stats)
        return stats[0], stats[1]

    def _sum(self, values: Array) -> Array:
        """A small backend array summed over the ranks."""
        comm, backend = self.communicator, self.model.backend
        if comm.device_buffers:
            return comm.allreduce(values)
        return backend.asarray(comm.allreduce(np.ascontiguousarray(backend.to_numpy(values))))

    def average_state(self) -> None:
        """Replace every non-trainable array (BatchNormalization's running statistics) by
        its mean over the ranks."""
        model = self.model
        xp = model.backend.xp
        state = [(k, v) for k, v in model.state_dict().items() if k.startswith("state/")]
        if not state or self.size == 1:
            return
        flat = xp.concat([xp.reshape(v, (-1,)) for _, v in state])
        flat = self._sum(flat) / self.size
        offset = 0
        for _, value in state:
            count = int(np.prod(value.shape))
            value[...] = xp.astype(xp.reshape(flat[offset : offset + count], value.shape), value.dtype)
            offset += count

    # errors

    def guard(self) -> contextlib.AbstractContextManager[None]:
        """Run training: an error raised on this rank alone ends the job (printed once,
        from this rank, then ``MPI_Abort``); errors every rank meets together
        (:class:`DistributedError`, :class:`NonFiniteLossError`) are raised on every rank
        (:meth:`Communicator.guard`)."""
        return self.communicator.guard()


def launch_differences(everyone: Sequence[dict[str, Any]]) -> list[str]:
    """``"key (rank 0: v0, rank 1: v1)"`` for each key whose value differs between the
    ranks' settings (``everyone``, in rank order); empty when they all agree."""
    differences = []
    for key in sorted({key for settings in everyone for key in settings}):
        values = [settings.get(key) for settings in everyone]
        if any(v != values[0] for v in values[1:]):
            per_rank = ", ".join(f"rank {r}: {v!r}" for r, v in enumerate(values))
            differences.append(f"{key} ({per_rank})")
    return differences


# -- the process around the ranks -----------------------------------------------------


@contextlib.contextmanager
def limit_threads(backend: Any, threads: int = 1) -> Iterator[dict[str, int | None]]:
    """Compute with ``threads`` BLAS threads and, on the ``numba`` backend, ``threads``
    Numba threads, then restore the counts: one thread per rank, so that N ranks on N
    cores run N threads (see "Waiting" above).

    A count the user chose is left as it is: BLAS's when ``OPENBLAS_NUM_THREADS``,
    ``MKL_NUM_THREADS`` or ``OMP_NUM_THREADS`` is set, Numba's when ``NUMBA_NUM_THREADS``
    is. BLAS's is set through threadpoolctl (left alone without it). Apply it after the
    backend is built and before it computes. Yields ``{"blas": n, "numba": n}``, None for a
    pool left alone.
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    applied: dict[str, int | None] = {"blas": None, "numba": None}
    with contextlib.ExitStack() as stack:
        if not any(name in os.environ for name in BLAS_THREAD_VARIABLES):
            try:
                from threadpoolctl import threadpool_limits
            except ImportError:
                pass
            else:
                stack.enter_context(threadpool_limits(limits=threads, user_api="blas"))
                applied["blas"] = threads
        if backend.name == "numba" and not any(name in os.environ for name in NUMBA_THREAD_VARIABLES):
            numba = sys.modules["numba"]  # the backend imported it
            before = numba.get_num_threads()
            count = min(threads, numba.config.NUMBA_NUM_THREADS)
            numba.set_num_threads(count)
            stack.callback(numba.set_num_threads, before)
            applied["numba"] = count
        yield applied


@dataclass(frozen=True)
class Share:
    """One rank's part of :func:`spread`.

    Attributes:
        mine: the configurations (indices) this rank trains, in order.
        group: the communicator it trains them over (the ranks of its group), or None
            where it trains them alone.
        ranks: for each configuration, the ranks that train it.
    """

    mine: list[int]
    group: Communicator | None
    ranks: list[list[int]]


def spread(count: int, communicator: Communicator) -> Share:
    """Share ``count`` independent configurations over the ranks (every rank calls it).

    With no more ranks than configurations, configuration ``i`` goes to rank
    ``i % size``, which trains it alone. With more, the ranks form ``count`` groups of
    consecutive ranks, as even as possible (:func:`shard_bounds`), and group ``g``
    trains configuration ``g`` data-parallel over a communicator of its own.
    """
    if count < 1:
        raise ValueError(f"there must be at least one configuration, got {count}")
    size, rank = communicator.size, communicator.rank
    if size <= count:
        return Share([i for i in range(count) if i % size == rank], None, [[i % size] for i in range(count)])
    ranks = [list(range(*shard_bounds(size, count, g))) for g in range(count)]
    mine = next(g for g in range(count) if rank in ranks[g])
    return Share([mine], communicator.split(mine), ranks)
