"""The NumPy kernel set: the CPU reference, built on strided views.

``sliding_window_view`` gives every window without copying; one copy then lays the
windows out as columns. Pooling never builds a full column matrix: it reduces over
the KH*KW strided tap views, which is a handful of whole-array operations. Python
loops run over window taps only, never over pixels. Layouts: see
:mod:`gpucnn.kernels`.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from . import check_pool_pad, output_hw
from .generic import GenericKernels


class NumpyKernels(GenericKernels):
    """Kernel set for NumPy arrays on the CPU."""

    name = "numpy"
    # None: a convolution trains on the whole batch's columns. Blocks (for example
    # ``conv_block_bytes = 8 * 2**20``, set on the backend's kernel set) keep a fraction
    # of the memory but compute im2col twice, which costs more time than the GEMMs save
    # (benchmarks/results/training_memory.md): the choice stays the user's.
    conv_block_bytes = None

    def __init__(self, xp=None) -> None:
        if xp is None:
            import array_api_compat.numpy as xp
        super().__init__(xp)

    @staticmethod
    def _pad(x: np.ndarray, pad: int, fill: float) -> np.ndarray:
        if pad == 0:
            return x
        return np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=fill)

    @staticmethod
    def _windows(xp_: np.ndarray, kh: int, kw: int, stride: int, oh: int, ow: int) -> np.ndarray:
        """(N, C, OH, OW, KH, KW) view of the windows of an already padded input."""
        win = sliding_window_view(xp_, (kh, kw), axis=(2, 3))
        return win[:, :, : stride * (oh - 1) + 1 : stride, : stride * (ow - 1) + 1 : stride]

    def im2col(self, x, kh, kw, stride=1, pad=0):
        n, c, h, w = x.shape
        oh, ow = output_hw(h, w, kh, kw, stride, pad)
        win = self._windows(self._pad(x, pad, 0.0), kh, kw, stride, oh, ow)
        col = np.empty((n, oh, ow, c, kh, kw), dtype=x.dtype)
        col[...] = win.transpose(0, 2, 3, 1, 4, 5)
        return col.reshape(n * oh * ow, c * kh * kw)

    def col2im(self, col, x_shape, kh, kw, stride=1, pad=0):
        n, c, h, w = x_shape
        oh, ow = output_hw(h, w, kh, kw, stride, pad)
        col6 = col.reshape(n, oh, ow, c, kh, kw).transpose(0, 3, 4, 5, 1, 2)  # (N, C, KH, KW, OH, OW)
        dxp = np.zeros((n, c, h + 2 * pad, w + 2 * pad), dtype=col.dtype)
        for ky in range(kh):
            for kx in range(kw):
                dxp[:, :, ky : ky + stride * oh : stride, kx : kx + stride * ow : stride] += col6[:, :, ky, kx]
        return np.ascontiguousarray(dxp[:, :, pad : pad + h, pad : pad + w]) if pad else dxp

    @staticmethod
    def _max_over_taps(tap, count: int):
        """Running maximum over the window taps ``tap(k)``, k = ky*KW + kx, with its argmax.

        Strict '>' keeps the first maximum in row-major order. A NaN always wins, so a
        window holding one gives NaN, as the generic set's max does. Everything is
        branch-free whole-array arithmetic: masked copies (``copyto(where=)``, boolean
        indexing) cost ten times as much on these unpredictable masks.
        """
        out = np.array(tap(0), order="C")
        argmax = np.zeros(out.shape, dtype=np.int32)
        better = np.empty(out.shape, dtype=bool)
        step = np.empty(out.shape, dtype=np.int32)
        for k in range(1, count):
            t = tap(k)
            np.greater(t, out, out=better)
            better |= np.isnan(t)
            # k grows with each tap, so the last tap that won is the largest k that won.
            np.maximum(argmax, np.multiply(better, k, out=step), out=argmax)
            np.maximum(out, t, out=out)  # the same values, NaN included
        return out, argmax

    @staticmethod
    def _route_to_taps(grad, argmax, target, count: int, disjoint: bool) -> None:
        """Add ``grad`` into the tap views ``target(k)`` where ``argmax == k``.

        ``grad * hit`` rather than a masked copy, for speed (see :meth:`_max_over_taps`);
        a non-finite ``grad`` therefore spreads over its whole window.
        """
        for k in range(count):
            hit = argmax == k
            if disjoint:  # windows do not overlap: each input cell gets one value at most
                np.multiply(grad, hit, out=target(k))
            else:
                target(k)[...] += grad * hit

    @staticmethod
    def _tap_slices(k: int, kw: int, stride: int, oh: int, ow: int) -> tuple[slice, slice]:
        ky, kx = divmod(k, kw)
        return slice(ky, ky + stride * oh, stride), slice(kx, kx + stride * ow, stride)

    def maxpool_forward(self, x, kh, kw, stride, pad=0):
        check_pool_pad(kh, kw, pad)
        n, c, h, w = x.shape
        oh, ow = output_hw(h, w, kh, kw, stride, pad)
        xp_ = self._pad(x, pad, -np.inf)
        return self._max_over_taps(lambda k: xp_[(..., *self._tap_slices(k, kw, stride, oh, ow))], kh * kw)

    def maxpool_backward(self, dout, argmax, x_shape, kh, kw, stride, pad=0):
        n, c, h, w = x_shape
        oh, ow = dout.shape[2], dout.shape[3]
        dxp = np.zeros((n, c, h + 2 * pad, w + 2 * pad), dtype=dout.dtype)
        self._route_to_taps(
            dout,
            argmax,
            lambda k: dxp[(..., *self._tap_slices(k, kw, stride, oh, ow))],
            kh * kw,
            disjoint=stride >= kh and stride >= kw,
        )
        return np.ascontiguousarray(dxp[:, :, pad : pad + h, pad : pad + w]) if pad else dxp

    @staticmethod
    def _nhwc(y, n, oh, ow, pad):
        """GEMM rows (N*OH*OW, FN) as (N, OH, OW, FN), padded with -inf for max pooling."""
        y = y.reshape(n, oh, ow, y.shape[1])
        if pad:
            y = np.pad(y, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=-np.inf)
        return y

    def bias_relu_maxpool(self, rows, b, n, oh, ow, kh, kw, stride, pad=0):
        # Pool straight in the GEMM's (N, OH, OW, FN) layout: only the pooled result, 1/(KH*KW)
        # of the activation, is transposed to NCHW.
        check_pool_pad(kh, kw, pad)
        ph, pw = output_hw(oh, ow, kh, kw, stride, pad)
        y = self._nhwc(rows + b, n, oh, ow, pad)
        out, argmax = self._max_over_taps(lambda k: y[(slice(None), *self._tap_slices(k, kw, stride, ph, pw))], kh * kw)
        np.maximum(out, 0, out=out)
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2)), np.ascontiguousarray(argmax.transpose(0, 3, 1, 2))

    def bias_relu_maxpool_infer(self, rows, b, n, oh, ow, kh, kw, stride, pad=0):
        check_pool_pad(kh, kw, pad)
        ph, pw = output_hw(oh, ow, kh, kw, stride, pad)
        y = self._nhwc(rows + b, n, oh, ow, pad)
        out = np.array(y[(slice(None), *self._tap_slices(0, kw, stride, ph, pw))], order="C")
        for k in range(1, kh * kw):
            np.maximum(out, y[(slice(None), *self._tap_slices(k, kw, stride, ph, pw))], out=out)
        np.maximum(out, 0, out=out)
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2))

    def maxpool_relu_backward(self, dout, argmax, out, n, oh, ow, kh, kw, stride, pad=0):
        fn, ph, pw = dout.shape[1], dout.shape[2], dout.shape[3]
        to_nhwc = (0, 2, 3, 1)
        # Contiguous NHWC copies: the per-tap passes below then read memory in order.
        passed = np.ascontiguousarray((dout * (out > 0)).transpose(to_nhwc))
        dy = np.zeros((n, oh + 2 * pad, ow + 2 * pad, fn), dtype=dout.dtype)
        self._route_to_taps(
            passed,
            np.ascontiguousarray(argmax.transpose(to_nhwc)),
            lambda k: dy[(slice(None), *self._tap_slices(k, kw, stride, ph, pw))],
            kh * kw,
            disjoint=stride >= kh and stride >= kw,
        )
        if pad:
            dy = np.ascontiguousarray(dy[:, pad : pad + oh, pad : pad + ow])
        return dy.reshape(n * oh * ow, fn)

    def avgpool_forward(self, x, kh, kw, stride, pad=0):
        check_pool_pad(kh, kw, pad)
        n, c, h, w = x.shape
        oh, ow = output_hw(h, w, kh, kw, stride, pad)
        win = self._windows(self._pad(x, pad, 0.0), kh, kw, stride, oh, ow)
        out = win.sum(axis=(4, 5), dtype=x.dtype)
        out /= kh * kw
        return out

    def avgpool_backward(self, dout, x_shape, kh, kw, stride, pad=0):
        n, c, h, w = x_shape
        oh, ow = dout.shape[2], dout.shape[3]
        share = dout / dout.dtype.type(kh * kw)
        dxp = np.zeros((n, c, h + 2 * pad, w + 2 * pad), dtype=dout.dtype)
        for ky in range(kh):
            for kx in range(kw):
                dxp[:, :, ky : ky + stride * oh : stride, kx : kx + stride * ow : stride] += share
        return np.ascontiguousarray(dxp[:, :, pad : pad + h, pad : pad + w]) if pad else dxp

    def bias_grad(self, drows):
        # A matrix-vector product through BLAS, which splits the long axis too: faster than
        # sum(axis=0) down a tall, narrow array such as a convolution's (N*OH*OW, FN) gradient.
        return np.ones(drows.shape[0], dtype=drows.dtype) @ drows

    def rows_to_nchw(self, y, n, oh, ow):
        return np.ascontiguousarray(y.reshape(n, oh, ow, y.shape[1]).transpose(0, 3, 1, 2))

    def nchw_to_rows(self, dout):
        n, fn, oh, ow = dout.shape
        return np.ascontiguousarray(dout.transpose(0, 2, 3, 1)).reshape(n * oh * ow, fn)
