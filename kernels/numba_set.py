"""The Numba kernel set: the interface as ``@njit`` loops, compiled once and cached.

Every kernel is one loop nest over its output, where the NumPy set makes several
whole-array passes through strided views and temporaries. Layouts and conventions:
see :mod:`gpucnn.kernels`. GEMMs stay on BLAS (NumPy ``matmul``), except for a
convolution with few taps per output, such as SimpleConvNet's first layer (25), which
is computed directly: there im2col's column matrix costs more than the GEMM saves. The
layout changes ``rows_to_nchw`` / ``nchw_to_rows`` stay NumPy's, whose strided copy no
loop beat (benchmarks/results/numba_notes.md).

This module wires the loops into :class:`NumbaKernels`; the loops live by job in
:mod:`.numba_conv` (im2col, col2im), :mod:`.numba_pool` (pooling, fused pooling),
:mod:`.numba_direct_conv` (the direct convolution), :mod:`.numba_winograd` (the
Winograd transforms), :mod:`.numba_winograd_pool` (the Winograd output transform fused
with bias and ReLU, with or without max pooling), :mod:`.numba_winograd_fused` (a whole
Winograd Convolution -> ReLU (-> pooling) layer a band of tiles at a time, its GEMMs
included), :mod:`.numba_elementwise` (bias and
ReLU, and the ReLU's backward) and :mod:`.numba_optim` (optimizer steps), and
:mod:`.numba_runtime` compiles and launches them: its "Compilation" and
"Threads" sections say where the cache goes and how the threads are set.

Values
------
Equal to the NumPy set bit for bit: ``im2col``, ``col2im``, max pooling forward and
backward (values and ``argmax``, NaN windows included), ``bias_relu_maxpool`` and
``bias_relu_maxpool_infer``, ``maxpool_relu_backward``, ``avgpool_backward``,
``bias_relu``, ``relu_backward``, the six
``winograd_*`` transforms, the three Winograd poolings (out, argmax and dM, whose zeros
may differ in sign), ``winograd_bias_relu`` and ``winograd_relu_backward``'s dM, and the
optimizer steps. Sums run in the NumPy set's order: where
windows overlap, a backward kernel visits them last to first, so that every pixel
receives its taps in ascending ``(ky, kx)`` order starting from zero, as the NumPy set's
loop over taps adds them; the Winograd transforms make the generic set's additions in
its order; the optimizer steps do the same float operations in the same dtype (Python
scalars are cast to the array's dtype first, as NumPy does). ``avgpool_forward`` sums a
window row by row, and the bias gradients of ``winograd_maxpool_relu_backward`` and
``winograd_relu_backward`` sum each row of tiles, then the rows in order, which may
differ from NumPy's reduction order: equal to float rounding.

The ``winograd_conv_*`` operations equal the composed ``winograd_*`` passes and GEMMs to
float rounding (their GEMMs run over a band's tiles, in SciPy's BLAS, and dU sums per
group of images, then the groups in order), and give the same bytes on any number of
threads (with a BLAS whose one-thread GEMM repeats its bytes, as OpenBLAS's does); on
integer data, where every sum is exact, they equal the composition bit for bit.

The ``conv_*`` operations compute a stride-1 convolution with at most
``direct_conv_max_taps`` taps per output directly (see :mod:`.numba_direct_conv`):
equal to the composed operations to float rounding, since each output sums its taps in
(c, ky, kx) order where BLAS uses its own, and the weight and bias gradients' sums are
vectorized. Other convolutions take im2col and the GEMM: the NumPy set's values, but for
the weight gradient's sums, which BLAS takes in the order of each set's column matrix (this
set's is C-order, the NumPy set's tap-major) and so equal to float rounding.
"""

from __future__ import annotations

import importlib.util

import numpy as np

from . import (
    check_pool_pad,
    numba_conv,
    numba_direct_conv,
    numba_elementwise,
    numba_optim,
    numba_pool,
    numba_winograd,
    numba_winograd_fused,
    numba_winograd_pool,
    output_hw,
    winograd_tiles,
)
from .generic import GenericKernels
from .numba_runtime import run_tasks
from .numpy_set import NumpyKernels

__all__ = ["NumbaKernels"]


def _contiguous(a: np.ndarray) -> np.ndarray:
    """C-contiguous (a no-op for the arrays layers pass), so each kernel compiles once per dtype."""
    return np.ascontiguousarray(a)


def _flat(*arrays: np.ndarray) -> tuple[np.ndarray, ...] | None:
    """1-D views of C-contiguous arrays of one shape and dtype, or None (then NumPy steps)."""
    first = arrays[0]
    for a in arrays:
        if not (
            isinstance(a, np.ndarray)
            and a.flags.c_contiguous
            and a.shape == first.shape
            and a.dtype == first.dtype
            and a.dtype.kind == "f"
        ):
            return None
    return tuple(a.reshape(-1) for a in arrays)


def _has_scipy() -> bool:
    """Whether SciPy is installed: Numba's ``np.dot`` calls its BLAS."""
    return importlib.util.find_spec("scipy") is not None


def _check_shape(what: str, a: np.ndarray, shape: tuple[int, ...]) -> None:
    """Raise unless ``a`` has ``shape``: the loops index without bounds checks."""
    if a.shape != shape:
        raise ValueError(f"{what} has shape {a.shape}, expected {shape}")


class NumbaKernels(NumpyKernels):
    """Kernel set for NumPy arrays, with the hot loops compiled by Numba.

    ``gpucnn.get_backend("numba")`` builds it after :func:`.numba_runtime.configure`,
    which sets up the cache and the threads; built directly, it computes the same
    values, compiled again in every process and with Numba's default threads.
    """

    name = "numba"

    # -- convolution -----------------------------------------------------------

    def im2col(self, x, kh, kw, stride=1, pad=0):
        n, c, h, w = x.shape
        oh, ow = output_hw(h, w, kh, kw, stride, pad)
        col = np.empty((n * oh * ow, c * kh * kw), dtype=x.dtype)
        run_tasks(numba_conv.im2col, n * oh, _contiguous(x), kh, kw, stride, pad, oh, ow, col)
        return col

    def col2im(self, col, x_shape, kh, kw, stride=1, pad=0):
        n, c, h, w = x_shape
        oh, ow = output_hw(h, w, kh, kw, stride, pad)
        dx = np.empty((n, c, h, w), dtype=col.dtype)
        run_tasks(numba_conv.col2im, n * c, _contiguous(col), kh, kw, stride, pad, oh, ow, dx)
        return dx

    # col2im of the product in the interface's C-order layout, as this set's col2im reads it
    conv_input_grad = GenericKernels.conv_input_grad

    # -- Winograd F(2x2, 3x3) ------------------------------------------------------

    # ``prefers_winograd`` (the NumPy set's rule) with this set's own threshold: Winograd
    # for a 3x3 convolution at stride 1 with at least this many input channels; with the
    # whole-layer kernels (winograd_whole_layer below), for every one (see prefers_direct_conv).
    winograd_min_channels = 1 if _has_scipy() else 16
    # Parallel tasks winograd_input aims at: an image's tile rows are split into bands
    # when the batch alone gives fewer tasks (each band lays out two image rows more
    # than it transforms).
    winograd_input_tasks = 16

    def winograd_filter(self, w):
        fn, c = w.shape[0], w.shape[1]
        u = np.empty((16, c, fn), dtype=w.dtype)
        numba_winograd.winograd_filter(_contiguous(w), u)
        return u

    def winograd_filter_grad(self, du):
        _check_shape("dU", du, (16, du.shape[1], du.shape[2]))
        c, fn = du.shape[1], du.shape[2]
        dw = np.empty((fn, c, 3, 3), dtype=du.dtype)
        numba_winograd.winograd_filter_grad(_contiguous(du), dw)
        return dw

    def winograd_input(self, x, pad):
        n, c, h, w = x.shape
        th, tw = winograd_tiles(*output_hw(h, w, 3, 3, 1, pad))
        bands = min(th, -(-self.winograd_input_tasks // max(n, 1)))
        band = -(-th // bands)
        v = np.empty((16, n * th * tw, c), dtype=x.dtype)
        run_tasks(numba_winograd.winograd_input, n * -(-th // band), _contiguous(x), pad, th, tw, band, v)
        return v

    def winograd_input_grad(self, dv, x_shape, pad):
        n, c, h, w = x_shape
        th, tw = winograd_tiles(*output_hw(h, w, 3, 3, 1, pad))
        _check_shape("dV", dv, (16, n * th * tw, c))
        dx = np.empty((n, c, h, w), dtype=dv.dtype)
        run_tasks(numba_winograd.winograd_input_grad, n, _contiguous(dv), pad, th, tw, dx)
        return dx

    def winograd_output(self, m, n, oh, ow):
        th, tw = winograd_tiles(oh, ow)
        _check_shape("M", m, (16, n * th * tw, m.shape[2]))
        rows = np.empty((n * oh * ow, m.shape[2]), dtype=m.dtype)
        run_tasks(numba_winograd.winograd_output, n * th, _contiguous(m), n, oh, ow, th, tw, rows)
        return rows

    def winograd_output_grad(self, drows, n, oh, ow):
        th, tw = winograd_tiles(oh, ow)
        _check_shape("drows", drows, (n * oh * ow, drows.shape[1]))
        dm = np.empty((16, n * th * tw, drows.shape[1]), dtype=drows.dtype)
        run_tasks(numba_winograd.winograd_output_grad, n * th, _contiguous(drows), n, oh, ow, th, tw, dm)
        return dm

    # A 2x2, stride-2 max pooling after a Winograd convolution, straight from the products
    # (see :mod:`.numba_winograd_pool`): no GEMM rows are made.

    def _winograd_pool(self, m, b, n, oh, ow, with_argmax):
        th, tw = winograd_tiles(oh, ow)
        ph, pw = output_hw(oh, ow, 2, 2, 2, 0)
        fn = m.shape[2]
        _check_shape("M", m, (16, n * th * tw, fn))
        _check_shape("b", b, (fn,))
        out = np.empty((n, fn, ph, pw), dtype=m.dtype)
        argmax = np.empty((n, fn, ph, pw) if with_argmax else (0, 0, 0, 0), dtype=np.int32)
        bias = _contiguous(b).astype(m.dtype, copy=False)
        kernel = numba_winograd_pool.winograd_bias_relu_maxpool
        run_tasks(kernel, n * ph, _contiguous(m), bias, n, th, tw, out, argmax, with_argmax)
        return out, argmax

    def winograd_bias_relu_maxpool(self, m, b, n, oh, ow):
        return self._winograd_pool(m, b, n, oh, ow, True)

    def winograd_bias_relu_maxpool_infer(self, m, b, n, oh, ow):
        return self._winograd_pool(m, b, n, oh, ow, False)[0]

    def winograd_maxpool_relu_backward(self, dout, argmax, out, n, oh, ow):
        th, tw = winograd_tiles(oh, ow)
        ph, pw = output_hw(oh, ow, 2, 2, 2, 0)
        fn = dout.shape[1]
        for what, a in (("dout", dout), ("argmax", argmax), ("out", out)):
            _check_shape(what, a, (n, fn, ph, pw))
        dm = np.empty((16, n * th * tw, fn), dtype=dout.dtype)
        db_rows = np.empty((n * th, fn), dtype=dout.dtype)  # a row of tiles' sum each, added in order below
        kernel = numba_winograd_pool.winograd_maxpool_relu_backward
        run_tasks(kernel, n * th, _contiguous(dout), _contiguous(argmax), _contiguous(out), th, tw, dm, db_rows)
        return dm, db_rows.sum(axis=0)

    # The bias and ReLU after a Winograd convolution, straight from the products to NCHW
    # (see :mod:`.numba_winograd_pool`): no GEMM rows are made.

    def winograd_bias_relu(self, m, b, n, oh, ow):
        th, tw = winograd_tiles(oh, ow)
        fn = m.shape[2]
        _check_shape("M", m, (16, n * th * tw, fn))
        _check_shape("b", b, (fn,))
        out = np.empty((n, fn, oh, ow), dtype=m.dtype)
        bias = _contiguous(b).astype(m.dtype, copy=False)
        run_tasks(numba_winograd_pool.winograd_bias_relu, n * th, _contiguous(m), bias, n, th, tw, out)
        return out

    def winograd_relu_backward(self, dout, out, n, oh, ow):
        th, tw = winograd_tiles(oh, ow)
        fn = dout.shape[1]
        for what, a in (("dout", dout), ("out", out)):
            _check_shape(what, a, (n, fn, oh, ow))
        dm = np.empty((16, n * th * tw, fn), dtype=dout.dtype)
        db_rows = np.empty((n * th, fn), dtype=dout.dtype)  # a row of tiles' sum each, added in order below
        kernel = numba_winograd_pool.winograd_relu_backward
        run_tasks(kernel, n * th, _contiguous(dout), _contiguous(out), th, tw, dm, db_rows)
        return dm, db_rows.sum(axis=0)

    # A whole Winograd Convolution -> ReLU (-> 2x2 max pooling), a band of tile rows of an
    # image at a time (see :mod:`.numba_winograd_fused`); its GEMMs call SciPy's BLAS
    # from the kernel, so the set offers it when SciPy is installed.
    winograd_whole_layer = _has_scipy()
    # A band's share of the cache: its tiles' V, M (and dV) take at most this many bytes,
    # or one row of tiles when a row alone takes more.
    winograd_band_bytes = 2**20
    # Images per partial sum of dU in the backward (the groups are then added in order).
    winograd_group = 4

    def _winograd_layer(self, x, w, b, pad, pooled):
        """(x, U, bias, TH, TW, band, the output's shape) of a whole-layer Winograd kernel,
        the shapes of w and b checked."""
        n, c, h, wd = x.shape
        fn = w.shape[0]
        _check_shape("w", w, (fn, c, 3, 3))
        if b is not None:
            _check_shape("b", b, (fn,))
            b = _contiguous(b).astype(x.dtype, copy=False)
        oh, ow = output_hw(h, wd, 3, 3, 1, pad)
        th, tw = winograd_tiles(oh, ow)
        per_row = 16 * tw * (2 * c + fn) * x.dtype.itemsize
        band = max(1, min(th, self.winograd_band_bytes // per_row))
        shape = (n, fn, *output_hw(oh, ow, 2, 2, 2, 0)) if pooled else (n, fn, oh, ow)
        return _contiguous(x), self.winograd_filter(w.astype(x.dtype, copy=False)), b, th, tw, band, shape

    def _winograd_conv_forward(self, x, w, b, pad, pooled, with_argmax):
        x, u, bias, th, tw, band, shape = self._winograd_layer(x, w, b, pad, pooled)
        n = x.shape[0]
        out = np.empty(shape, dtype=x.dtype)
        argmax = np.empty(shape if with_argmax else (0, 0, 0, 0), dtype=np.int32)
        kernel, tasks = numba_winograd_fused.winograd_conv_forward, n * -(-th // band)
        run_tasks(kernel, tasks, x, u, bias, pad, th, tw, band, pooled, with_argmax, out, argmax, blas_calls=True)
        return out, argmax

    def _winograd_conv_backward(self, dout, argmax, out, x, w, pad, input_grad):
        pooled = argmax is not None
        x, u, _, th, tw, band, shape = self._winograd_layer(x, w, None, pad, pooled)
        n, c = x.shape[0], x.shape[1]
        fn = w.shape[0]
        for what, a in (("dout", dout), ("out", out)) + ((("argmax", argmax),) if pooled else ()):
            _check_shape(what, a, shape)
        groups = -(-n // self.winograd_group)
        du_parts = np.empty((groups, 16, c, fn), dtype=x.dtype)
        db_rows = np.empty((n * th, fn), dtype=x.dtype)  # a row of tiles' sum each, added in order below
        dx = np.empty(x.shape if input_grad else (0, 0, 0, 0), dtype=x.dtype)
        argmax = _contiguous(argmax).astype(np.int32, copy=False) if pooled else np.empty((0, 0, 0, 0), np.int32)
        args = (x, u, _contiguous(dout), argmax, _contiguous(out), pad, th, tw, band, self.winograd_group, pooled)
        kernel = numba_winograd_fused.winograd_conv_backward
        run_tasks(kernel, groups, *args, input_grad, du_parts, db_rows, dx, blas_calls=True)
        dw = self.winograd_filter_grad(du_parts.sum(axis=0))
        return (dx if input_grad else None), dw, db_rows.sum(axis=0)

    def winograd_conv_bias_relu_maxpool(self, x, w, b, pad):
        return self._winograd_conv_forward(x, w, b, pad, True, True)

    def winograd_conv_bias_relu_maxpool_infer(self, x, w, b, pad):
        return self._winograd_conv_forward(x, w, b, pad, True, False)[0]

    def winograd_conv_maxpool_relu_backward(self, dout, argmax, out, x, w, pad, input_grad=True):
        return self._winograd_conv_backward(dout, argmax, out, x, w, pad, input_grad)

    def winograd_conv_bias_relu(self, x, w, b, pad):
        return self._winograd_conv_forward(x, w, b, pad, False, False)[0]

    def winograd_conv_relu_backward(self, dout, out, x, w, pad, input_grad=True):
        return self._winograd_conv_backward(dout, None, out, x, w, pad, input_grad)

    # -- pooling ---------------------------------------------------------------

    def maxpool_forward(self, x, kh, kw, stride, pad=0):
        check_pool_pad(kh, kw, pad)
        n, c, h, w = x.shape
        oh, ow = output_hw(h, w, kh, kw, stride, pad)
        out = np.empty((n, c, oh, ow), dtype=x.dtype)
        argmax = np.empty((n, c, oh, ow), dtype=np.int32)
        run_tasks(numba_pool.maxpool, n * c * oh, _contiguous(x), kh, kw, stride, pad, out, argmax)
        return out, argmax

    def maxpool_backward(self, dout, argmax, x_shape, kh, kw, stride, pad=0):
        dx = np.empty(x_shape, dtype=dout.dtype)
        tasks, arrays = x_shape[0] * x_shape[1], (_contiguous(dout), _contiguous(argmax))
        run_tasks(numba_pool.maxpool_backward, tasks, *arrays, kh, kw, stride, pad, dx)
        return dx

    def avgpool_forward(self, x, kh, kw, stride, pad=0):
        check_pool_pad(kh, kw, pad)
        n, c, h, w = x.shape
        oh, ow = output_hw(h, w, kh, kw, stride, pad)
        out = np.empty((n, c, oh, ow), dtype=x.dtype)
        run_tasks(numba_pool.avgpool, n * c, _contiguous(x), kh, kw, stride, pad, out)
        return out

    def avgpool_backward(self, dout, x_shape, kh, kw, stride, pad=0):
        share = dout / dout.dtype.type(kh * kw)
        dx = np.empty(x_shape, dtype=dout.dtype)
        run_tasks(numba_pool.avgpool_backward, x_shape[0] * x_shape[1], _contiguous(share), kh, kw, stride, pad, dx)
        return dx

    # -- fused operations ----------------------------------------------------------

    def _pool_rows(self, rows, b, n, oh, ow, kh, kw, stride, pad, with_argmax):
        check_pool_pad(kh, kw, pad)
        fn = rows.shape[1]
        ph, pw = output_hw(oh, ow, kh, kw, stride, pad)
        out = np.empty((n, fn, ph, pw), dtype=rows.dtype)
        argmax = np.empty((n, fn, ph, pw) if with_argmax else (0, 0, 0, 0), dtype=np.int32)
        bias = _contiguous(b).astype(rows.dtype, copy=False)
        rows = _contiguous(rows)
        kernel = numba_pool.bias_relu_maxpool
        run_tasks(kernel, n * ph, rows, bias, oh, ow, kh, kw, stride, pad, out, argmax, with_argmax)
        return out, argmax

    def bias_relu_maxpool(self, rows, b, n, oh, ow, kh, kw, stride, pad=0):
        return self._pool_rows(rows, b, n, oh, ow, kh, kw, stride, pad, True)

    def bias_relu_maxpool_infer(self, rows, b, n, oh, ow, kh, kw, stride, pad=0):
        return self._pool_rows(rows, b, n, oh, ow, kh, kw, stride, pad, False)[0]

    # A direct convolution when each output sums at most this many taps (C*KH*KW) and the
    # stride is 1; im2col and a GEMM otherwise. 32 keeps to the shapes where the direct
    # convolution was measured faster (benchmarks/results/numba_notes.md): few taps, where
    # the GEMM has little work per byte of its column matrix.
    direct_conv_max_taps = 32

    def prefers_direct_conv(self, c, fh, fw, stride):
        # A 3x3 convolution takes the whole-layer Winograd kernels, which a network's other
        # 3x3 layers compile anyway, rather than the direct ones: fewer kernels to compile
        # in a cold first step, for about the same speed (benchmarks/results/numba_notes.md).
        if self.winograd_whole_layer and self.prefers_winograd(c, 1, fh, fw, stride):
            return False
        return stride == 1 and c * fh * fw <= self.direct_conv_max_taps

    def _conv_pool(self, x, w, b, pad, kh, kw, pool_stride, pool_pad, with_argmax):
        check_pool_pad(kh, kw, pool_pad)
        n, _, h, wd = x.shape
        fn, _, fh, fw = w.shape
        oh, ow = output_hw(h, wd, fh, fw, 1, pad)
        ph, pw = output_hw(oh, ow, kh, kw, pool_stride, pool_pad)
        out = np.empty((n, fn, ph, pw), dtype=x.dtype)
        argmax = np.empty((n, fn, ph, pw) if with_argmax else (0, 0, 0, 0), dtype=np.int32)
        weights, bias = (_contiguous(a).astype(x.dtype, copy=False) for a in (w, b))
        args = (_contiguous(x), weights, bias, pad, oh, ow, kh, kw, pool_stride, pool_pad, out, argmax, with_argmax)
        run_tasks(numba_direct_conv.conv_bias_relu_maxpool, n, *args)
        return out, argmax

    def conv_bias_relu_maxpool(self, x, w, b, stride, pad, kh, kw, pool_stride, pool_pad=0):
        if not self.prefers_direct_conv(w.shape[1], w.shape[2], w.shape[3], stride):
            return super().conv_bias_relu_maxpool(x, w, b, stride, pad, kh, kw, pool_stride, pool_pad)
        return self._conv_pool(x, w, b, pad, kh, kw, pool_stride, pool_pad, True)

    def conv_bias_relu_maxpool_infer(self, x, w, b, stride, pad, kh, kw, pool_stride, pool_pad=0):
        if not self.prefers_direct_conv(w.shape[1], w.shape[2], w.shape[3], stride):
            return super().conv_bias_relu_maxpool_infer(x, w, b, stride, pad, kh, kw, pool_stride, pool_pad)
        return self._conv_pool(x, w, b, pad, kh, kw, pool_stride, pool_pad, False)[0]

    # Images per partial sum of the direct weight gradient: the partial sums, added in
    # order at the end, do not depend on the number of threads.
    grad_chunk = 4

    def conv_maxpool_relu_backward_params(
        self, dout, argmax, out, x, w_shape, stride, pad, kh, kw, pool_stride, pool_pad=0
    ):
        fn, c, fh, fw = w_shape
        pool = (kh, kw, pool_stride, pool_pad)
        if not self.prefers_direct_conv(c, fh, fw, stride):
            return super().conv_maxpool_relu_backward_params(dout, argmax, out, x, w_shape, stride, pad, *pool)
        n, _, h, wd = x.shape
        oh, ow = output_hw(h, wd, fh, fw, 1, pad)
        chunks = -(-n // self.grad_chunk)
        dw = np.zeros((chunks, fn, c * fh * fw), dtype=dout.dtype)
        db = np.zeros((chunks, fn), dtype=dout.dtype)
        arrays = (
            _contiguous(dout),
            _contiguous(argmax),
            _contiguous(out),
            _contiguous(x).astype(dout.dtype, copy=False),
        )
        kernel = numba_direct_conv.conv_maxpool_relu_backward_params
        run_tasks(kernel, chunks, *arrays, fh, fw, pad, oh, ow, kh, kw, pool_stride, pool_pad, dw, db, self.grad_chunk)
        return dw.sum(axis=0).reshape(w_shape), db.sum(axis=0)

    def maxpool_relu_backward(self, dout, argmax, out, n, oh, ow, kh, kw, stride, pad=0):
        drows = np.empty((n * oh * ow, dout.shape[1]), dtype=dout.dtype)
        disjoint = stride >= kh and stride >= kw
        kernel = numba_pool.maxpool_relu_backward_disjoint if disjoint else numba_pool.maxpool_relu_backward
        arrays = (_contiguous(dout), _contiguous(argmax), _contiguous(out))
        run_tasks(kernel, n, *arrays, kh, kw, stride, pad, oh, ow, drows)
        return drows

    # -- bias and ReLU ------------------------------------------------------------------

    # Below this many elements the NumPy set's passes (the same values): a task launch
    # costs more than the work, and a network whose arrays are all smaller (a dense layer's
    # activations) never compiles the loops.
    elementwise_min_elements = 2**16

    def bias_relu(self, rows, b):
        if rows.size < self.elementwise_min_elements:
            return super().bias_relu(rows, b)
        rows, b = _contiguous(rows), _contiguous(b)
        out = np.empty(rows.shape, dtype=rows.dtype)
        run_tasks(numba_elementwise.bias_relu, rows.shape[0], rows, b, rows.dtype.type(0), out)
        return out

    def relu_backward(self, dout, out):
        if dout.size < self.elementwise_min_elements:
            return super().relu_backward(dout, out)
        dout, out = _contiguous(dout), _contiguous(out)
        dx = np.empty(dout.shape, dtype=dout.dtype)
        flat = (dout.reshape(-1), out.reshape(-1), dout.dtype.type(0), dx.reshape(-1))
        run_tasks(numba_elementwise.relu_backward, dx.size, *flat)
        return dx

    # -- optimizer steps (in place) ----------------------------------------------------

    def sgd_update(self, param, grad, lr):
        flat = _flat(param, grad)
        if flat is None:
            return super().sgd_update(param, grad, lr)
        numba_optim.sgd_step(*flat, param.dtype.type(lr))

    def momentum_update(self, param, grad, velocity, lr, momentum):
        flat = _flat(param, grad, velocity)
        if flat is None:
            return super().momentum_update(param, grad, velocity, lr, momentum)
        t = param.dtype.type
        numba_optim.momentum_step(*flat, t(lr), t(momentum))

    def adagrad_update(self, param, grad, h, lr, eps):
        flat = _flat(param, grad, h)
        if flat is None:
            return super().adagrad_update(param, grad, h, lr, eps)
        t = param.dtype.type
        numba_optim.adagrad_step(*flat, t(lr), t(eps))

    def rmsprop_update(self, param, grad, h, lr, decay, eps):
        flat = _flat(param, grad, h)
        if flat is None:
            return super().rmsprop_update(param, grad, h, lr, decay, eps)
        t = param.dtype.type
        numba_optim.rmsprop_step(*flat, t(lr), t(decay), t(1 - decay), t(eps))

    def adam_update(self, param, grad, m, v, lr_t, beta1, beta2, eps):
        flat = _flat(param, grad, m, v)
        if flat is None:
            return super().adam_update(param, grad, m, v, lr_t, beta1, beta2, eps)
        t = param.dtype.type
        numba_optim.adam_step(*flat, t(lr_t), t(1 - beta1), t(1 - beta2), t(eps))
