"""The CUDA kernel set: gpucnn's own CUDA C kernels (``kernels/cuda/*.cu``).

:class:`CudaKernels` is the one Python wrapper around those kernels. For each operation it
checks the arguments, allocates the outputs through ``xp``, and fixes the launch
configuration (one thread per output element, or one warp per row for the softmax, or one block per
shared-memory tile for the layout transposes and the fused pooling kernels, on a 1-D grid)
and the kernel's argument list. It then hands the launch to a *launcher*, which only knows
how to compile a source file and run ``kernel(grid, block, args)`` on its own arrays:

* :class:`CupyLauncher` (backend ``cupy``): CuPy arrays, ``cupy.RawModule`` compiled by
  NVRTC once per device and source file;
* :class:`~gpucnn.kernels.emu.EmuLauncher` (backend ``cuda-emu``): NumPy arrays, the same
  sources compiled as C++ and run on the CPU, so CI exercises everything but the CUDA
  runtime.

Every kernel is a template over the element type, instantiated for ``float`` and
``double`` (name expressions such as ``im2col<float>``). Kernel arguments are arrays,
``numpy.int32`` sizes and scalars of the arrays' dtype, in the kernel's parameter order.
GEMMs are not kernels of this set: layers call ``xp.matmul`` (cuBLAS on CuPy).
Layouts and conventions: see :mod:`gpucnn.kernels`.

Values
------
Against the NumPy set, as ``tests/test_kernel_agreement.py`` measured them on ``cuda-emu``
(its ``TOLERANCES`` table). Equal bit for bit: ``im2col``, ``col2im``, max pooling forward
and backward (values and ``argmax``), ``avgpool_backward``, ``bias_relu_maxpool`` and
``bias_relu_maxpool_infer``, ``maxpool_relu_backward``, ``bias_relu``, ``relu_backward``,
the layout changes, ``softmax_cross_entropy_backward``, the optimizer steps; the count of
``softmax_cross_entropy_count``, and its probabilities equal this set's
``softmax_cross_entropy``'s; ``softmax_cross_entropy_count_grad`` equals this set's
``softmax_cross_entropy_count`` and ``softmax_cross_entropy_backward`` of its probabilities;
``bias_softmax_cross_entropy_count_grad`` equals this set's ``softmax_cross_entropy_count_grad``
of ``rows + b`` (the kernel adds the bias to each score with the same one float add), and its
``db`` this set's ``bias_grad`` of that dx to float rounding (each column summed serially, in
row order, where ``bias_grad`` is a GEMV).
The sources are compiled without fused multiply-adds (``NVRTC_OPTIONS``;
``-ffp-contract=off`` in the emulation), so every product is rounded as NumPy rounds it.
Equal to float rounding: ``avgpool_forward`` (a thread sums its window in its own order),
``bias_grad`` (sums in another order), ``softmax_cross_entropy`` (``exp`` and ``log`` from
the C++ library, not NumPy's, and each row's sum of exponentials in another order: a warp's
lanes each sum a stride of the row, then a butterfly of warp shuffles adds the lanes' sums;
the table's elementary-function bound already grows with K for the sum inside the log), the loss of
``softmax_cross_entropy_count`` (its row losses summed serially, in row order, where
``softmax_cross_entropy`` takes ``xp.sum``'s), and the
three ``conv_*`` operations. Those compute a convolution with few taps
(``prefers_direct_conv``: a first layer) directly, without a column matrix, reading the input
through a shared-memory copy of what each block's tile of pooled pixels reads: each output
sums its taps from zero in (c, ky, kx) order, then adds the bias, where the GEMM sums in
BLAS's order, so a window's argmax may name another of two values within rounding of each
other; each filter's weight and bias gradients are one block's sums, each thread's serial
sum over its pooled pixel of every tile of the batch, then a butterfly of warp shuffles over
the lanes and a serial sum over the block's warps (the same order on every run). Other
convolutions, and those whose single pooled pixel reads more input than a block's copy
holds, take im2col and the GEMM: ``conv_bias_relu_maxpool`` and its ``_infer`` are then
equal bit for bit (NumPy's GEMM).

On a GPU (backend ``cupy``) the table's row comes from reading the kernels, not from a
measurement: the same, except that the GEMMs are cuBLAS's, so every ``conv_*`` operation
is equal to float rounding too, ``exp`` and ``log`` are the device's, and the optimizer
steps are allowed a few ulps for fused multiply-adds, a margin: with ``--fmad=false`` their
products are rounded one by one.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import importlib.resources
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from . import check_pool_pad, output_hw
from .generic import GenericKernels, _same_length

__all__ = [
    "CUDA_SOURCES",
    "MAX_ELEMENTS",
    "NVRTC_OPTIONS",
    "CudaKernels",
    "CudaSource",
    "CupyLauncher",
    "DeviceWork",
    "Launcher",
    "counting",
    "record",
]

Array = Any

# Threads per block: whole warps, and few enough that every architecture from sm_75 on
# holds several blocks per SM.
BLOCK_SIZE = 256

# Lanes of a warp: the loss kernels give each row one warp (BLOCK_SIZE // WARP_SIZE rows a block).
WARP_SIZE = 32

# The layout.cu transposes' tile (TILE) and block rows (TILE_ROWS): blocks of 32 x 8 threads.
TRANSPOSE_TILE = 32
TRANSPOSE_ROWS = 8

# The pool.cu fused kernels' tile (POOL_TILE) and block rows (POOL_TILE_ROWS): blocks of 32 x 8.
POOL_TILE = 32
POOL_TILE_ROWS = 8

# The direct_conv.cu kernels' blocks (DIRECT_THREADS threads), the elements of their input
# tile (DIRECT_TILE), the filters of one forward block (DIRECT_FILTERS) and the most taps
# C*FH*FW they take (DIRECT_MAX_TAPS), as in the source.
DIRECT_THREADS = 256
DIRECT_TILE = 4096
DIRECT_FILTERS = 8
DIRECT_MAX_TAPS = 32

# Element types the kernels are instantiated for, by NumPy dtype.
CUDA_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}

# The kernels index with 32-bit ints: every array they touch has fewer elements than this.
MAX_ELEMENTS = 2**31 - 1

# NVRTC's options, for the launcher and the compile check alike. -std=c++17 for the
# templates. --fmad=false: no fused multiply-adds (NVRTC fuses by default), so that a
# kernel rounds every product as NumPy and the emulation (-ffp-contract=off) do. Nothing
# device-specific, so one source serves every GPU.
NVRTC_OPTIONS = ("-std=c++17", "--fmad=false")

_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([^"]+)"[ \t]*$', re.MULTILINE)


@dataclass(frozen=True)
class CudaSource:
    """One ``.cu`` file and the kernel templates it defines.

    ``directory`` defaults to the ``cuda`` folder shipped inside ``gpucnn.kernels``.
    """

    file: str
    kernels: tuple[str, ...]
    directory: Path | None = None

    @functools.cached_property
    def path(self) -> Path:
        """The file, resolved once (``importlib.resources`` is slow enough to matter per launch)."""
        base = self.directory or Path(str(importlib.resources.files("gpucnn.kernels") / "cuda"))
        return Path(base) / self.file

    @property
    def name_expressions(self) -> tuple[str, ...]:
        """Every instance to compile: ``kernel<float>`` and ``kernel<double>`` for each kernel."""
        return tuple(name_expression(k, t) for k in self.kernels for t in CUDA_TYPES.values())

    def code(self) -> str:
        """The source with its local ``#include "..."`` files inlined (each once), with
        ``#line`` marks so that compiler messages name the right file and line.

        Self-contained code needs no include path, and CuPy's on-disk cache, keyed by the
        code, notices a change in a header.
        """
        return _inline_includes(self.path, set())


def name_expression(kernel: str, cuda_type: str) -> str:
    return f"{kernel}<{cuda_type}>"


def _inline_includes(path: Path, seen: set[Path]) -> str:
    seen.add(path.resolve())
    text = path.read_text()
    parts, last = [f'#line 1 "{path.name}"\n'], 0
    for match in _INCLUDE.finditer(text):
        header = (path.parent / match.group(1)).resolve()
        if not header.is_file():
            continue  # a system header: left to the compiler
        parts.append(text[last : match.start()])
        if header not in seen:
            parts.append(_inline_includes(header, seen).rstrip("\n") + "\n")
        line = text.count("\n", 0, match.end()) + 2
        parts.append(f'#line {line} "{path.name}"')
        last = match.end()
    parts.append(text[last:])
    return "".join(parts)


IM2COL = CudaSource("im2col.cu", ("im2col", "col2im"))
POOL = CudaSource(
    "pool.cu",
    (
        "maxpool_forward",
        "maxpool_backward",
        "avgpool_forward",
        "avgpool_backward",
        "bias_relu_maxpool",
        "bias_relu_maxpool_infer",
        "maxpool_relu_backward",
    ),
)
LAYOUT = CudaSource("layout.cu", ("rows_to_nchw", "nchw_to_rows"))
OPTIMIZERS = CudaSource(
    "optimizers.cu",
    (
        "sgd_update",
        "momentum_update",
        "adagrad_update",
        "rmsprop_update",
        "adam_update",
        "sgd_update_many",
        "momentum_update_many",
        "adagrad_update_many",
        "rmsprop_update_many",
        "adam_update_many",
    ),
)
ELEMENTWISE = CudaSource("elementwise.cu", ("bias_relu", "relu_backward"))
LOSS = CudaSource(
    "loss.cu",
    (
        "softmax_cross_entropy",
        "softmax_cross_entropy_backward",
        "softmax_cross_entropy_count",
        "softmax_cross_entropy_count_grad",
        "bias_softmax_cross_entropy_count_grad",
    ),
)
DIRECT_CONV = CudaSource(
    "direct_conv.cu",
    ("conv_bias_relu_maxpool", "conv_bias_relu_maxpool_infer", "conv_maxpool_relu_backward_params"),
)

# Every source of the set; the compile check and the emulation tests walk this tuple.
CUDA_SOURCES = (IM2COL, POOL, LAYOUT, OPTIMIZERS, ELEMENTWISE, LOSS, DIRECT_CONV)


# The parameters one multi-tensor optimizer launch updates, at most, and the kernel argument
# that names them: optimizers.cu's TensorTable, passed by value (a NumPy structured scalar,
# as CuPy passes a struct). address[0][k] is parameter k, [1][k] its gradient, [2][k] and
# [3][k] its state arrays; start[k] its first element in the parameters laid end to end.
MULTI_TENSOR_MAX = 32
TENSOR_TABLE = np.dtype(
    {
        "names": ["address", "start", "count"],
        "formats": [(np.uint64, (4, MULTI_TENSOR_MAX)), (np.int32, (MULTI_TENSOR_MAX + 1,)), np.int32],
    },
    align=True,
)


# -- counting the device work ------------------------------------------------------------
# What a stretch of code asks of the device, counted by reading the calls, not measured:
# our kernel launches (counted here, in CudaKernels), and the array namespace's operations,
# allocations, host syncs and copies (counted by the cuda-emu backend's arrays,
# :mod:`gpucnn.kernels.emu`). Nothing is counted outside a ``counting()`` block.

# The kinds of device operation, in the order reports list them.
OPERATION_KINDS = ("kernel", "gemm", "array", "memset", "copy")


@dataclass
class DeviceWork:
    """Counts of one stretch of device work.

    ``operations`` maps each kind of device operation (:data:`OPERATION_KINDS`: our kernel
    launches, GEMMs, array-namespace kernels, memsets, host↔device copies) to its count;
    ``by_name`` counts each operation by kind and name (``"kernel im2col<float>"``,
    ``"array sum"``); ``host_syncs`` counts the waits for the device (a value read on the
    host: ``float()``, ``int()``, ``bool()``, ``item()``, a copy to the host);
    ``allocations`` the new device arrays; ``bytes_to_device`` and ``bytes_to_host`` the
    copied bytes.
    """

    operations: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OPERATION_KINDS, 0))
    by_name: collections.Counter = field(default_factory=collections.Counter)
    host_syncs: int = 0
    allocations: int = 0
    bytes_to_device: int = 0
    bytes_to_host: int = 0

    @property
    def device_operations(self) -> int:
        """Every device operation: kernel launches and library calls, memsets and copies."""
        return sum(self.operations.values())

    def add(self, kind: str, name: str, count: int = 1) -> None:
        self.operations[kind] += count
        self.by_name[f"{kind} {name}"] += count


_recording: list[DeviceWork] = []


@contextlib.contextmanager
def counting() -> Iterator[DeviceWork]:
    """Count the device work of a block (nested blocks count into each open one)::

    with counting() as work:
        model.train_step(x, t)
    work.device_operations
    """
    work = DeviceWork()
    _recording.append(work)
    try:
        yield work
    finally:
        _recording.remove(work)


def record(
    kind: str | None = None,
    name: str = "",
    count: int = 1,
    *,
    syncs: int = 0,
    allocations: int = 0,
    to_device: int = 0,
    to_host: int = 0,
) -> None:
    """Add to every open :func:`counting` block: ``count`` operations of ``kind`` (one of
    :data:`OPERATION_KINDS`, or None for none), host syncs, allocations, copied bytes."""
    for work in _recording:
        if kind is not None and count:
            work.add(kind, name, count)
        work.host_syncs += syncs
        work.allocations += allocations
        work.bytes_to_device += to_device
        work.bytes_to_host += to_host


class Launcher(Protocol):
    """Compiles :class:`CudaSource` files and launches their kernels on its arrays."""

    def launch(self, source: CudaSource, name: str, grid: tuple[int, ...], block: tuple[int, ...], args: tuple) -> None:
        """Run kernel instance ``name`` (a name expression) of ``source``."""

    def address(self, a: Array) -> int:
        """The device address of array ``a``'s first element, for a kernel argument that names arrays."""


class CudaKernels(GenericKernels):
    """Kernel set running gpucnn's CUDA kernels through ``launcher``.

    ``xp`` is the array namespace of the launcher's arrays (CuPy's for
    :class:`CupyLauncher`, NumPy's for the emulation). Operations without a CUDA kernel
    come from :class:`~gpucnn.kernels.generic.GenericKernels`.
    """

    name = "cuda"
    # A fused first layer's inference takes the whole batch in one launch: blocks of
    # images would cost a launch each and a concatenation, and save no cache misses.
    inference_block: int | None = None

    # Distinct row counts whose ones vector (see bias_grad) is kept: a model's GEMM layers
    # and its last, smaller batch need a handful.
    ONES_KEPT = 16

    def __init__(self, xp: Any, launcher: Launcher) -> None:
        super().__init__(xp)
        self.launcher = launcher
        self._ones: dict[tuple, Array] = {}

    @property
    def max_array_elements(self) -> int:
        """The most elements an array handed to a kernel may have (32-bit indices): the
        memory model caps the batch size by it (:func:`gpucnn.memory.kernel_batch_limit`)."""
        return MAX_ELEMENTS

    # -- plumbing ------------------------------------------------------------------

    def _launch(self, source: CudaSource, kernel: str, dtype: np.dtype, total: int, *args: Any) -> None:
        """One thread per element of a ``total``-element output, on a 1-D grid."""
        if total == 0:
            return
        grid = ((total + BLOCK_SIZE - 1) // BLOCK_SIZE,)
        self._launch_grid(source, kernel, dtype, grid, (BLOCK_SIZE,), args)

    def _launch_rows(self, source: CudaSource, kernel: str, dtype: np.dtype, rows: int, *args: Any) -> None:
        """One warp per row of a ``rows``-row matrix, on a 1-D grid of BLOCK_SIZE-thread blocks."""
        if rows == 0:
            return
        per_block = BLOCK_SIZE // WARP_SIZE
        self._launch_grid(source, kernel, dtype, ((rows + per_block - 1) // per_block,), (BLOCK_SIZE,), args)

    def _launch_grid(
        self,
        source: CudaSource,
        kernel: str,
        dtype: np.dtype,
        grid: tuple[int, ...],
        block: tuple[int, ...],
        args: tuple,
    ) -> None:
        """Launch the ``dtype`` instance of ``kernel``; ``args`` in the kernel's parameter order."""
        for size in (a.size for a in args if not isinstance(a, np.generic)):  # the arrays
            if size > MAX_ELEMENTS:
                raise ValueError(
                    f"{kernel}: an array of {size} elements is too large for the CUDA kernels, "
                    f"which index with 32-bit ints (at most {MAX_ELEMENTS})"
                )
        name = name_expression(kernel, CUDA_TYPES[np.dtype(dtype)])
        if _recording:
            record("kernel", name)
        self.launcher.launch(source, name, grid, block, args)

    def _contiguous(self, a: Array) -> Array:
        return a if a.flags.c_contiguous else self.xp.ascontiguousarray(a)

    def _empty(self, shape: tuple[int, ...], dtype: Any, like: Array) -> Array:
        """An output array on ``like``'s device."""
        return self.xp.empty(shape, dtype=dtype, device=like.device)

    # -- convolution -----------------------------------------------------------

    def im2col(self, x, kh, kw, stride=1, pad=0):
        dtype = _float_dtype("im2col", x)
        n, c, h, w = x.shape
        oh, ow = output_hw(h, w, kh, kw, stride, pad)
        columns = c * kh * kw
        col = self._empty((n * oh * ow, columns), dtype, x)
        self._launch(
            IM2COL,
            "im2col",
            dtype,
            col.size,
            self._contiguous(x),
            col,
            *_ints(col.size, columns, c, h, w, kh, kw, stride, pad, oh, ow),
        )
        return col

    def col2im(self, col, x_shape, kh, kw, stride=1, pad=0):
        dtype = _float_dtype("col2im", col)
        n, c, h, w = x_shape
        oh, ow = output_hw(h, w, kh, kw, stride, pad)
        _check_shape("col2im", "col", col.shape, (n * oh * ow, c * kh * kw))
        dx = self._empty((n, c, h, w), dtype, col)
        self._launch(
            IM2COL,
            "col2im",
            dtype,
            dx.size,
            self._contiguous(col),
            dx,
            *_ints(dx.size, c, h, w, kh, kw, stride, pad, oh, ow),
        )
        return dx

    # -- pooling ---------------------------------------------------------------

    def maxpool_forward(self, x, kh, kw, stride, pad=0):
        dtype = _float_dtype("maxpool_forward", x)
        check_pool_pad(kh, kw, pad)
        n, c, h, w = x.shape
        oh, ow = output_hw(h, w, kh, kw, stride, pad)
        out = self._empty((n, c, oh, ow), dtype, x)
        argmax = self._empty((n, c, oh, ow), self.xp.int32, x)
        self._launch(
            POOL,
            "maxpool_forward",
            dtype,
            out.size,
            self._contiguous(x),
            out,
            argmax,
            *_ints(out.size, h, w, kh, kw, stride, pad, oh, ow),
        )
        return out, argmax

    def maxpool_backward(self, dout, argmax, x_shape, kh, kw, stride, pad=0):
        dtype = _float_dtype("maxpool_backward", dout)
        n, c, h, w = x_shape
        oh, ow = output_hw(h, w, kh, kw, stride, pad)
        _check_shape("maxpool_backward", "dout", dout.shape, (n, c, oh, ow))
        _check_shape("maxpool_backward", "argmax", argmax.shape, (n, c, oh, ow))
        dx = self._empty((n, c, h, w), dtype, dout)
        self._launch(
            POOL,
            "maxpool_backward",
            dtype,
            dx.size,
            self._contiguous(dout),
            self._index(argmax),
            dx,
            *_ints(dx.size, h, w, kh, kw, stride, pad, oh, ow),
        )
        return dx

    def avgpool_forward(self, x, kh, kw, stride, pad=0):
        dtype = _float_dtype("avgpool_forward", x)
        check_pool_pad(kh, kw, pad)
        n, c, h, w = x.shape
        oh, ow = output_hw(h, w, kh, kw, stride, pad)
        out = self._empty((n, c, oh, ow), dtype, x)
        self._launch(
            POOL,
            "avgpool_forward",
            dtype,
            out.size,
            self._contiguous(x),
            out,
            *_ints(out.size, h, w, kh, kw, stride, pad, oh, ow),
        )
        return out

    def avgpool_backward(self, dout, x_shape, kh, kw, stride, pad=0):
        dtype = _float_dtype("avgpool_backward", dout)
        n, c, h, w = x_shape
        oh, ow = output_hw(h, w, kh, kw, stride, pad)
        _check_shape("avgpool_backward", "dout", dout.shape, (n, c, oh, ow))
        dx = self._empty((n, c, h, w), dtype, dout)
        self._launch(
            POOL,
            "avgpool_backward",
            dtype,
            dx.size,
            self._contiguous(dout),
            dx,
            *_ints(dx.size, h, w, kh, kw, stride, pad, oh, ow),
        )
        return dx

    def _index(self, argmax: Array) -> Array:
        """``argmax`` as a C-contiguous int32 array, the kernels' index type."""
        if argmax.dtype != np.int32:
            argmax = self.xp.astype(argmax, self.xp.int32)
        return self._contiguous(argmax)

    # -- fused and layout operations ----------------------------------------------

    def bias_relu_maxpool(self, rows, b, n, oh, ow, kh, kw, stride, pad=0):
        dtype = _float_dtype("bias_relu_maxpool", rows, b)
        check_pool_pad(kh, kw, pad)
        fn = rows.shape[1]
        _check_shape("bias_relu_maxpool", "rows", rows.shape, (n * oh * ow, fn))
        _check_shape("bias_relu_maxpool", "b", b.shape, (fn,))
        ph, pw = output_hw(oh, ow, kh, kw, stride, pad)
        out = self._empty((n, fn, ph, pw), dtype, rows)
        argmax = self._empty((n, fn, ph, pw), self.xp.int32, rows)
        args = (
            self._contiguous(rows),
            self._contiguous(b),
            out,
            argmax,
            *_ints(fn, oh, ow, kh, kw, stride, pad, ph, pw),
        )
        self._launch_pool_tiles("bias_relu_maxpool", dtype, n, fn, ph * pw, args)
        return out, argmax

    def bias_relu_maxpool_infer(self, rows, b, n, oh, ow, kh, kw, stride, pad=0):
        dtype = _float_dtype("bias_relu_maxpool_infer", rows, b)
        check_pool_pad(kh, kw, pad)
        fn = rows.shape[1]
        _check_shape("bias_relu_maxpool_infer", "rows", rows.shape, (n * oh * ow, fn))
        _check_shape("bias_relu_maxpool_infer", "b", b.shape, (fn,))
        ph, pw = output_hw(oh, ow, kh, kw, stride, pad)
        out = self._empty((n, fn, ph, pw), dtype, rows)
        args = (self._contiguous(rows), self._contiguous(b), out, *_ints(fn, oh, ow, kh, kw, stride, pad, ph, pw))
        self._launch_pool_tiles("bias_relu_maxpool_infer", dtype, n, fn, ph * pw, args)
        return out

    def _launch_pool_tiles(self, kernel: str, dtype: np.dtype, n: int, fn: int, pixels: int, args: tuple) -> None:
        """A pool.cu fused kernel: blocks of POOL_TILE x POOL_TILE_ROWS threads, one per
        POOL_TILE x POOL_TILE tile of each image's (FN, ``pixels``) block, on a 1-D grid:
        ``pixels`` is PH*PW for the forwards, OH*OW for the backward."""
        tiles = n * -(-fn // POOL_TILE) * -(-pixels // POOL_TILE)
        if tiles == 0:
            return
        self._launch_grid(POOL, kernel, dtype, (tiles,), (POOL_TILE, POOL_TILE_ROWS), args)

    def maxpool_relu_backward(self, dout, argmax, out, n, oh, ow, kh, kw, stride, pad=0):
        dtype = _float_dtype("maxpool_relu_backward", dout, out)
        fn = dout.shape[1]
        ph, pw = output_hw(oh, ow, kh, kw, stride, pad)
        for what, a in (("dout", dout), ("argmax", argmax), ("out", out)):
            _check_shape("maxpool_relu_backward", what, a.shape, (n, fn, ph, pw))
        drows = self._empty((n * oh * ow, fn), dtype, dout)
        args = (
            self._contiguous(dout),
            self._index(argmax),
            self._contiguous(out),
            drows,
            *_ints(fn, oh, ow, kh, kw, stride, pad, ph, pw),
        )
        self._launch_pool_tiles("maxpool_relu_backward", dtype, n, fn, oh * ow, args)
        return drows

    # -- convolution -> ReLU -> max pooling from the input, computed directly ---------------

    # The most taps per output (C*FH*FW) of a convolution computed directly: a first layer
    # of few channels, where one step then launches one kernel forward (instead of im2col,
    # the GEMM and bias_relu_maxpool) and one backward (instead of maxpool_relu_backward
    # and the GEMMs of dW and db). The backward gives each filter one block, whose threads
    # keep one sum per tap, so it suits few taps.
    direct_conv_max_taps = DIRECT_MAX_TAPS

    def prefers_direct_conv(self, c, fh, fw, stride):
        return c * fh * fw <= self.direct_conv_max_taps

    def _takes_direct(self, c, fh, fw, stride, kh, kw, pool_stride):
        """Whether the direct kernels compute this convolution: it prefers them, and the input
        of one pooled pixel fits a block's tile (else im2col and the GEMM do)."""
        if not self.prefers_direct_conv(c, fh, fw, stride) or c * fh * fw > DIRECT_MAX_TAPS:
            return False
        return _direct_tile(c, fh, fw, stride, kh, kw, pool_stride, 1, 1) is not None

    @staticmethod
    def _direct_geometry(op, x, w_shape, stride, pad, kh, kw, pool_stride, pool_pad):
        """Checks; the launch's size arguments (FN, C, H, W, FH, FW, stride, pad, OH, OW,
        KH, KW, pool stride and pad, PH, PW) and the pooled shape (N, FN, PH, PW)."""
        check_pool_pad(kh, kw, pool_pad)
        if x.ndim != 4 or len(w_shape) != 4:
            raise ValueError(f"{op}: x and w must be 4-D, got shapes {tuple(x.shape)} and {tuple(w_shape)}")
        n, c, h, wd = x.shape
        fn, _, fh, fw = w_shape
        _check_shape(op, "w", w_shape, (fn, c, fh, fw))
        oh, ow = output_hw(h, wd, fh, fw, stride, pad)
        ph, pw = output_hw(oh, ow, kh, kw, pool_stride, pool_pad)
        sizes = (fn, c, h, wd, fh, fw, stride, pad, oh, ow, kh, kw, pool_stride, pool_pad, ph, pw)
        return sizes, (n, fn, ph, pw)

    def _direct_forward(self, op, x, w, b, stride, pad, kh, kw, pool_stride, pool_pad, with_argmax):
        """One launch of blocks of DIRECT_THREADS threads, one per image, tile of pooled
        pixels and DIRECT_FILTERS filters (see direct_conv.cu), on a 1-D grid."""
        dtype = _float_dtype(op, x, w, b)
        sizes, shape = self._direct_geometry(op, x, w.shape, stride, pad, kh, kw, pool_stride, pool_pad)
        _check_shape(op, "b", b.shape, (w.shape[0],))
        out = self._empty(shape, dtype, x)
        argmax = (self._empty(shape, self.xp.int32, x),) if with_argmax else ()
        n, fn, ph, pw = shape
        tile_ph, tile_pw = _direct_tile(x.shape[1], *w.shape[2:], stride, kh, kw, pool_stride, ph, pw)
        blocks = n * -(-ph // tile_ph) * -(-pw // tile_pw) * -(-fn // DIRECT_FILTERS)
        if blocks:
            inputs = (self._contiguous(x), self._contiguous(w), self._contiguous(b))
            args = (*inputs, out, *argmax, *_ints(*sizes, tile_ph, tile_pw))
            self._launch_grid(DIRECT_CONV, op, dtype, (blocks,), (DIRECT_THREADS,), args)
        return (out, *argmax)

    def conv_bias_relu_maxpool(self, x, w, b, stride, pad, kh, kw, pool_stride, pool_pad=0):
        if not self._takes_direct(*w.shape[1:], stride, kh, kw, pool_stride):
            return super().conv_bias_relu_maxpool(x, w, b, stride, pad, kh, kw, pool_stride, pool_pad)
        pool = (kh, kw, pool_stride, pool_pad)
        return self._direct_forward("conv_bias_relu_maxpool", x, w, b, stride, pad, *pool, True)

    def conv_bias_relu_maxpool_infer(self, x, w, b, stride, pad, kh, kw, pool_stride, pool_pad=0):
        if not self._takes_direct(*w.shape[1:], stride, kh, kw, pool_stride):
            return super().conv_bias_relu_maxpool_infer(x, w, b, stride, pad, kh, kw, pool_stride, pool_pad)
        pool = (kh, kw, pool_stride, pool_pad)
        return self._direct_forward("conv_bias_relu_maxpool_infer", x, w, b, stride, pad, *pool, False)[0]

    def conv_maxpool_relu_backward_params(
        self, dout, argmax, out, x, w_shape, stride, pad, kh, kw, pool_stride, pool_pad=0
    ):
        fn, c, fh, fw = w_shape
        pool = (kh, kw, pool_stride, pool_pad)
        if not self._takes_direct(c, fh, fw, stride, kh, kw, pool_stride):
            return super().conv_maxpool_relu_backward_params(dout, argmax, out, x, w_shape, stride, pad, *pool)
        op = "conv_maxpool_relu_backward_params"
        dtype = _float_dtype(op, dout, out, x)
        sizes, shape = self._direct_geometry(op, x, tuple(w_shape), stride, pad, *pool)
        for what, a in (("dout", dout), ("argmax", argmax), ("out", out)):
            _check_shape(op, what, a.shape, shape)
        dw = self._empty(tuple(w_shape), dtype, x)
        db = self._empty((fn,), dtype, x)
        arrays = (self._contiguous(dout), self._index(argmax), self._contiguous(out), self._contiguous(x), dw, db)
        # one block of DIRECT_THREADS threads per filter, walking the batch's tiles (see direct_conv.cu)
        tile = _direct_tile(c, fh, fw, stride, kh, kw, pool_stride, *shape[2:])
        if fn:
            args = (*arrays, *_ints(x.shape[0], *sizes[:8], *sizes[10:], *tile))
            self._launch_grid(DIRECT_CONV, op, dtype, (fn,), (DIRECT_THREADS,), args)
        return dw, db

    def bias_relu(self, rows, b):
        dtype = _float_dtype("bias_relu", rows, b)
        m, columns = _matrix_shape("bias_relu", "rows", rows, "(M, F)")
        _check_shape("bias_relu", "b", b.shape, (columns,))
        out = self._empty((m, columns), dtype, rows)
        self._launch(
            ELEMENTWISE,
            "bias_relu",
            dtype,
            out.size,
            self._contiguous(rows),
            self._contiguous(b),
            out,
            *_ints(out.size, columns),
        )
        return out

    def bias_grad(self, drows):
        """The generic product ``ones(M) @ drows`` (a GEMV: cuBLAS splits the long axis),
        with the ones vector made once per (M, dtype, device) and kept, not filled anew in
        every step's backward."""
        _matrix_shape("bias_grad", "drows", drows, "(M, F)")
        key = (drows.shape[0], np.dtype(drows.dtype), getattr(drows.device, "id", drows.device))
        ones = self._ones.get(key)
        if ones is None:
            if len(self._ones) >= self.ONES_KEPT:
                self._ones.pop(next(iter(self._ones)))  # the oldest
            ones = self._ones[key] = self.xp.ones((drows.shape[0],), dtype=drows.dtype, device=drows.device)
        return ones @ drows

    def relu_backward(self, dout, out):
        dtype = _float_dtype("relu_backward", dout, out)
        _check_shape("relu_backward", "dout", dout.shape, out.shape)
        dx = self._empty(tuple(out.shape), dtype, out)
        self._launch(
            ELEMENTWISE,
            "relu_backward",
            dtype,
            dx.size,
            self._contiguous(dout),
            self._contiguous(out),
            dx,
            *_ints(dx.size),
        )
        return dx

    def rows_to_nchw(self, y, n, oh, ow):
        dtype = _float_dtype("rows_to_nchw", y)
        fn = y.shape[1]
        _check_shape("rows_to_nchw", "y", y.shape, (n * oh * ow, fn))
        out = self._empty((n, fn, oh, ow), dtype, y)
        self._launch_transpose("rows_to_nchw", dtype, n, fn, oh, ow, self._contiguous(y), out)
        return out

    def nchw_to_rows(self, dout):
        dtype = _float_dtype("nchw_to_rows", dout)
        n, fn, oh, ow = dout.shape
        rows = self._empty((n * oh * ow, fn), dtype, dout)
        self._launch_transpose("nchw_to_rows", dtype, n, fn, oh, ow, self._contiguous(dout), rows)
        return rows

    def _launch_transpose(
        self, kernel: str, dtype: np.dtype, n: int, fn: int, oh: int, ow: int, src: Array, dst: Array
    ) -> None:
        """A layout.cu transpose: blocks of TRANSPOSE_TILE x TRANSPOSE_ROWS threads, one per
        TRANSPOSE_TILE x TRANSPOSE_TILE tile of each image's (OH*OW, FN) matrix, on a 1-D grid."""
        tiles = n * -(-fn // TRANSPOSE_TILE) * -(-(oh * ow) // TRANSPOSE_TILE)
        if tiles == 0:
            return
        block = (TRANSPOSE_TILE, TRANSPOSE_ROWS)
        self._launch_grid(LAYOUT, kernel, dtype, (tiles,), block, (src, dst, *_ints(fn, oh, ow)))

    # -- softmax cross-entropy ----------------------------------------------------------
    # The kernels take (N,) integer labels, as int32. (N, K) float targets are a plain
    # elementwise composition that the generic set already does well: they take its path.

    def softmax_cross_entropy(self, x, t):
        if t.ndim != 1:
            return super().softmax_cross_entropy(x, t)
        dtype = _float_dtype("softmax_cross_entropy", x)
        n, k = _matrix_shape("softmax_cross_entropy", "x", x, "(N, K)")
        labels = self._labels("softmax_cross_entropy", t, n)
        if k == 0 and n > 0:
            raise ValueError(f"softmax_cross_entropy: x has shape {tuple(x.shape)}: no classes to take a softmax over")
        probs = self._empty((n, k), dtype, x)
        row_loss = self._empty((n,), dtype, x)
        self._launch_rows(
            LOSS, "softmax_cross_entropy", dtype, n, self._contiguous(x), labels, probs, row_loss, *_ints(n, k)
        )
        # The mean on the device, as a 0-d array (no host sync): xp.sum is a fixed-order tree
        # sum, so the loss is the same from run to run, and closer to exact than a serial sum.
        return self.xp.asarray(self.xp.sum(row_loss) / n), probs

    def softmax_cross_entropy_count(self, x, t):
        if t.ndim != 1:
            return super().softmax_cross_entropy_count(x, t)
        return self._count("softmax_cross_entropy_count", x, t, None)

    def softmax_cross_entropy_count_grad(self, x, t, scale):
        if t.ndim != 1:
            return super().softmax_cross_entropy_count_grad(x, t, scale)
        return self._count("softmax_cross_entropy_count_grad", x, t, scale)

    def bias_softmax_cross_entropy_count_grad(self, rows, b, t, scale):
        if t.ndim != 1:
            return super().bias_softmax_cross_entropy_count_grad(rows, b, t, scale)
        op = "bias_softmax_cross_entropy_count_grad"
        k = _matrix_shape(op, "rows", rows, "(N, K)")[1]
        _float_dtype(op, rows, b)
        _check_shape(op, "b", b.shape, (k,))
        return self._count(op, rows, t, scale, b)

    def _count(self, op: str, x: Array, t: Array, scale: float | None, b: Array | None = None) -> tuple:
        """``op``'s two passes: (loss, probs, right), then dx when ``scale`` is given, then db
        when the bias ``b`` is (added to the scores ``x`` inside the kernel)."""
        dtype = _float_dtype(op, x)
        n, k = _matrix_shape(op, "x", x, "(N, K)")
        labels = self._labels(op, t, n)
        if k == 0 and n > 0:
            raise ValueError(f"{op}: x has shape {tuple(x.shape)}: no classes to take a softmax over")
        probs = self._empty((n, k), dtype, x)
        row_loss = self._empty((n,), dtype, x)
        row_right = self._empty((n,), self.xp.int32, x)
        loss = self._empty((), dtype, x)
        right = self._empty((), self.xp.int32, x)
        grad = () if scale is None else (self._empty((n, k), dtype, x),)
        db = () if b is None else (self._empty((k,), dtype, x),)
        sizes = _ints(n, k) if scale is None else (*_ints(n, k), dtype.type(scale))
        bias = () if b is None else (self._contiguous(b),)
        args = (self._contiguous(x), *bias, labels, probs, row_loss, row_right, loss, right, *grad, *db, *sizes)
        self._launch_rows(LOSS, op, dtype, n, *args, np.int32(0))
        # The two sums (and the bias's column sums) in a second pass: no host sync, and the
        # same sums on every run.
        self._launch(LOSS, op, dtype, 2 + (0 if b is None else k), *args, np.int32(1))
        return (loss, probs, right, *grad, *db)

    def softmax_cross_entropy_backward(self, probs, t, scale):
        if t.ndim != 1:
            return super().softmax_cross_entropy_backward(probs, t, scale)
        dtype = _float_dtype("softmax_cross_entropy_backward", probs)
        n, k = _matrix_shape("softmax_cross_entropy_backward", "probs", probs, "(N, K)")
        labels = self._labels("softmax_cross_entropy_backward", t, n)
        dx = self._empty((n, k), dtype, probs)
        self._launch(
            LOSS,
            "softmax_cross_entropy_backward",
            dtype,
            dx.size,
            self._contiguous(probs),
            labels,
            dx,
            *_ints(dx.size, k),
            dtype.type(scale),
        )
        return dx

    def _labels(self, op: str, t: Array, n: int) -> Array:
        """(N,) integer labels as the kernels' C-contiguous int32 array (converted once, on
        the device); ``TypeError`` for labels that are not integers."""
        if not np.issubdtype(np.dtype(t.dtype), np.integer):
            raise TypeError(f"{op}: (N,) labels must be integers, got {np.dtype(t.dtype)}")
        _check_shape(op, "t", t.shape, (n,))
        return self._index(t)

    # -- optimizer steps (in place) ----------------------------------------------------
    # A kernel updates memory in place, so it needs C-contiguous parameter and state
    # arrays; anything else (a strided view, another dtype) takes the generic path.

    @staticmethod
    def _suits_kernel(param: Array, grad: Array, state: tuple) -> bool:
        """Whether an update kernel can take these arrays: one float dtype, the parameter
        and its state C-contiguous, the gradient of the parameter's shape."""
        dtype = np.dtype(param.dtype)
        in_place = (param, *state)
        if dtype not in CUDA_TYPES or any(a.dtype != dtype or not a.flags.c_contiguous for a in in_place):
            return False
        return grad.dtype == dtype and grad.shape == param.shape

    def _update(self, kernel: str, param: Array, grad: Array, state: tuple, scalars: tuple) -> bool:
        """Run an update kernel; False when the arrays do not suit one."""
        if not self._suits_kernel(param, grad, state):
            return False
        dtype = np.dtype(param.dtype)
        scalars = tuple(dtype.type(s) for s in scalars)
        self._launch(
            OPTIMIZERS, kernel, dtype, param.size, param, self._contiguous(grad), *state, np.int32(param.size), *scalars
        )
        return True

    def sgd_update(self, param, grad, lr):
        if not self._update("sgd_update", param, grad, (), (lr,)):
            super().sgd_update(param, grad, lr)

    def momentum_update(self, param, grad, velocity, lr, momentum):
        if not self._update("momentum_update", param, grad, (velocity,), (lr, momentum)):
            super().momentum_update(param, grad, velocity, lr, momentum)

    def adagrad_update(self, param, grad, h, lr, eps):
        if not self._update("adagrad_update", param, grad, (h,), (lr, eps)):
            super().adagrad_update(param, grad, h, lr, eps)

    # The complements (1 - decay, 1 - beta) are computed here, in double, and rounded once
    # to the parameter's dtype, as the generic set's Python (1 - decay) is.

    def rmsprop_update(self, param, grad, h, lr, decay, eps):
        if not self._update("rmsprop_update", param, grad, (h,), (lr, decay, 1 - decay, eps)):
            super().rmsprop_update(param, grad, h, lr, decay, eps)

    def adam_update(self, param, grad, m, v, lr_t, beta1, beta2, eps):
        if not self._update("adam_update", param, grad, (m, v), (lr_t, 1 - beta1, 1 - beta2, eps)):
            super().adam_update(param, grad, m, v, lr_t, beta1, beta2, eps)

    # -- optimizer steps on many parameters: one launch per dtype and MULTI_TENSOR_MAX parameters

    def _update_many(self, op: str, columns: list, scalars: tuple, one: Any) -> None:
        """Run ``op``'s multi-tensor kernel on ``columns``, tuples ``(param, grad, *state)``,
        distinct arrays or the same array named again. The arrays that do not suit a kernel
        (and an empty or oversized parameter) take ``one(param, grad, *state)``, the
        one-parameter step. A parameter named again is updated after the launches of the
        columns before it, so that its steps follow one another in order."""
        groups: dict[np.dtype, list] = {}
        seen: set[int] = set()
        for param, grad, *state in columns:
            if not (0 < param.size <= MAX_ELEMENTS and self._suits_kernel(param, grad, tuple(state))):
                one(param, grad, *state)
                continue
            address = self.launcher.address(param)
            if address in seen:
                self._launch_many(op, groups, scalars)
                groups, seen = {}, set()
            seen.add(address)
            groups.setdefault(np.dtype(param.dtype), []).append((param, self._contiguous(grad), *state))
        self._launch_many(op, groups, scalars)

    def _launch_many(self, op: str, groups: dict[np.dtype, list], scalars: tuple) -> None:
        """One launch of ``op``'s multi-tensor kernel per dtype and table of parameters."""
        for dtype, group in groups.items():
            typed = tuple(dtype.type(s) for s in scalars)
            for chunk in _chunks(group):
                total = sum(arrays[0].size for arrays in chunk)
                self._launch(OPTIMIZERS, f"{op}_many", dtype, total, self._tensor_table(chunk), *typed)

    def _tensor_table(self, chunk: list) -> np.void:
        """The TensorTable kernel argument naming the arrays of ``chunk``."""
        table = np.zeros((), dtype=TENSOR_TABLE)
        for k, arrays in enumerate(chunk):
            for which, a in enumerate(arrays):
                table["address"][which, k] = self.launcher.address(a)
        table["start"][: len(chunk) + 1] = np.cumsum([0, *(arrays[0].size for arrays in chunk)])
        table["count"] = len(chunk)
        return table[()]

    def sgd_update_many(self, params, grads, lr):
        columns = list(_same_length("sgd_update_many", params, grads))
        self._update_many("sgd_update", columns, (lr,), lambda p, g: self.sgd_update(p, g, lr))

    def momentum_update_many(self, params, grads, velocities, lr, momentum):
        columns = list(_same_length("momentum_update_many", params, grads, velocities))
        self._update_many(
            "momentum_update", columns, (lr, momentum), lambda p, g, v: self.momentum_update(p, g, v, lr, momentum)
        )

    def adagrad_update_many(self, params, grads, hs, lr, eps):
        columns = list(_same_length("adagrad_update_many", params, grads, hs))
        self._update_many("adagrad_update", columns, (lr, eps), lambda p, g, h: self.adagrad_update(p, g, h, lr, eps))

    def rmsprop_update_many(self, params, grads, hs, lr, decay, eps):
        columns = list(_same_length("rmsprop_update_many", params, grads, hs))
        self._update_many(
            "rmsprop_update",
            columns,
            (lr, decay, 1 - decay, eps),
            lambda p, g, h: self.rmsprop_update(p, g, h, lr, decay, eps),
        )

    def adam_update_many(self, params, grads, ms, vs, lr_t, beta1, beta2, eps):
        columns = list(_same_length("adam_update_many", params, grads, ms, vs))
        self._update_many(
            "adam_update",
            columns,
            (lr_t, 1 - beta1, 1 - beta2, eps),
            lambda p, g, m, v: self.adam_update(p, g, m, v, lr_t, beta1, beta2, eps),
        )


def _chunks(group: list) -> Iterator[list]:
    """``group`` cut into runs of at most MULTI_TENSOR_MAX parameters and MAX_ELEMENTS elements."""
    chunk: list = []
    total = 0
    for arrays in group:
        size = arrays[0].size
        if chunk and (len(chunk) == MULTI_TENSOR_MAX or total + size > MAX_ELEMENTS):
            yield chunk
            chunk, total = [], 0
        chunk.append(arrays)
        total += size
    if chunk:
        yield chunk


def _float_dtype(op: str, *arrays: Array) -> np.dtype:
    """The one floating dtype of ``arrays``; ``TypeError`` naming what was given otherwise."""
    dtypes = {np.dtype(a.dtype) for a in arrays}
    if len(dtypes) != 1 or not dtypes <= CUDA_TYPES.keys():
        given = ", ".join(sorted(str(d) for d in dtypes))
        raise TypeError(f"{op}: the CUDA kernels take float32 or float64 arrays of one dtype, got {given}")
    return dtypes.pop()


def _direct_tile(
    c: int, fh: int, fw: int, stride: int, kh: int, kw: int, pool_stride: int, ph: int, pw: int
) -> tuple[int, int] | None:
    """The pooled rows and columns of a direct_conv.cu block's tile, (TILE_PH, TILE_PW): whole
    output rows where they fit, at most DIRECT_THREADS pixels, and an input tile of at most
    DIRECT_TILE elements (C planes of the rows and columns its windows read). None when the
    input of a single pooled pixel does not fit."""

    def elements(rows: int, cols: int) -> int:
        in_rows = ((rows - 1) * pool_stride + kh - 1) * stride + fh
        in_cols = ((cols - 1) * pool_stride + kw - 1) * stride + fw
        return c * in_rows * in_cols

    cols = max(1, min(pw, DIRECT_THREADS))
    while cols > 1 and elements(1, cols) > DIRECT_TILE:
        cols -= 1
    rows = max(1, min(ph, DIRECT_THREADS // cols))
    while rows > 1 and elements(rows, cols) > DIRECT_TILE:
        rows -= 1
    return (rows, cols) if elements(rows, cols) <= DIRECT_TILE else None


def _ints(*values: int) -> tuple[np.int32, ...]:
    return tuple(np.int32(v) for v in values)


def _matrix_shape(op: str, what: str, a: Array, axes: str) -> tuple[int, int]:
    """The two sizes of a 2-D array (``axes`` names them); ``ValueError`` naming its shape otherwise."""
    if a.ndim != 2:
        raise ValueError(f"{op}: {what} must be 2-D {axes}, got shape {tuple(a.shape)}")
    return a.shape


def _check_shape(op: str, what: str, shape: tuple, expected: tuple) -> None:
    if tuple(shape) != tuple(expected):
        raise ValueError(f"{op}: {what} has shape {tuple(shape)}, expected {tuple(expected)}")


class CupyLauncher:
    """Launches the kernels on CuPy arrays through ``cupy.RawModule``.

    Each source is compiled by NVRTC the first time one of its kernels runs on a device,
    then kept (per device and source); CuPy also caches the binary on disk. A launch after
    the first looks its function up by (device, source, name) and calls it: no path, file or
    package lookup on the way, since it runs once per kernel call of every step.

    ``cupy`` is the CuPy module (default: imported); a stand-in with ``RawModule`` and
    ``cuda.runtime.getDevice`` lets the host side be exercised without a GPU.
    """

    OPTIONS = NVRTC_OPTIONS

    def __init__(self, cupy: Any = None) -> None:
        if cupy is None:
            import cupy
        self._cupy = cupy
        self._device_id = cupy.cuda.runtime.getDevice
        self._modules: dict[tuple[int, CudaSource], Any] = {}
        self._functions: dict[tuple[int, CudaSource, str], Any] = {}

    def module(self, source: CudaSource) -> Any:
        """The compiled ``RawModule`` of ``source`` on the current device."""
        key = (self._device_id(), source)
        module = self._modules.get(key)
        if module is None:
            module = self._cupy.RawModule(
                code=source.code(), options=self.OPTIONS, name_expressions=list(source.name_expressions)
            )  # NVRTC runs on the first get_function
            self._modules[key] = module
        return module

    def address(self, a):
        return int(a.data.ptr)

    def launch(self, source, name, grid, block, args):
        key = (self._device_id(), source, name)
        function = self._functions.get(key)
        if function is None:
            function = self._functions[key] = self.module(source).get_function(name)
        function(grid, block, args)
