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

from . import check_pool_pad, conv_output_size
from .generic import GenericKernels


class NumpyKernels(GenericKernels):
    """Kernel set for NumPy arrays on the CPU."""

    name = "numpy"

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
        oh = conv_output_size(h, kh, stride, pad)
        ow = conv_output_size(w, kw, stride, pad)
        win = self._windows(self._pad(x, pad, 0.0), kh, kw, stride, oh, ow)
        col = np.empty((n, oh, ow, c, kh, kw), dtype=x.dtype)
        col[...] = win.transpose(0, 2, 3, 1, 4, 5)
        return col.reshape(n * oh * ow, c * kh * kw)

    def col2im(self, col, x_shape, kh, kw, stride=1, pad=0):
        n, c, h, w = x_shape
        oh = conv_output_size(h, kh, stride, pad)
        ow = conv_output_size(w, kw, stride, pad)
        col6 = col.reshape(n, oh, ow, c, kh, kw).transpose(0, 3, 4, 5, 1, 2)  # (N, C, KH, KW, OH, OW)
        dxp = np.zeros((n, c, h + 2 * pad, w + 2 * pad), dtype=col.dtype)
        for ky in range(kh):
            for kx in range(kw):
                dxp[:, :, ky : ky + stride * oh : stride, kx : kx + stride * ow : stride] += col6[:, :, ky, kx]
        return np.ascontiguousarray(dxp[:, :, pad : pad + h, pad : pad + w]) if pad else dxp

    def maxpool_forward(self, x, kh, kw, stride, pad=0):
        check_pool_pad(kh, kw, pad)
        n, c, h, w = x.shape
        oh = conv_output_size(h, kh, stride, pad)
        ow = conv_output_size(w, kw, stride, pad)
        xp_ = self._pad(x, pad, -np.inf)
        out = np.array(xp_[:, :, : stride * oh : stride, : stride * ow : stride], order="C")
        argmax = np.zeros((n, c, oh, ow), dtype=np.int32)
        for k in range(1, kh * kw):
            ky, kx = divmod(k, kw)
            tap = xp_[:, :, ky : ky + stride * oh : stride, kx : kx + stride * ow : stride]
            # Strict '>': the first maximum in row-major order wins. A NaN always wins, so a
            # window holding one gives NaN, as the generic set's max does.
            better = (tap > out) | (tap != tap)
            np.copyto(out, tap, where=better)
            argmax[better] = k
        return out, argmax

    def maxpool_backward(self, dout, argmax, x_shape, kh, kw, stride, pad=0):
        n, c, h, w = x_shape
        oh, ow = dout.shape[2], dout.shape[3]
        dxp = np.zeros((n, c, h + 2 * pad, w + 2 * pad), dtype=dout.dtype)
        disjoint = stride >= kh and stride >= kw
        for k in range(kh * kw):
            ky, kx = divmod(k, kw)
            target = dxp[:, :, ky : ky + stride * oh : stride, kx : kx + stride * ow : stride]
            hit = argmax == k
            if disjoint:
                np.copyto(target, dout, where=hit)
            else:
                target += np.where(hit, dout, 0)
        return np.ascontiguousarray(dxp[:, :, pad : pad + h, pad : pad + w]) if pad else dxp

    def avgpool_forward(self, x, kh, kw, stride, pad=0):
        check_pool_pad(kh, kw, pad)
        n, c, h, w = x.shape
        oh = conv_output_size(h, kh, stride, pad)
        ow = conv_output_size(w, kw, stride, pad)
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

    def rows_to_nchw(self, y, n, oh, ow):
        return np.ascontiguousarray(y.reshape(n, oh, ow, y.shape[1]).transpose(0, 3, 1, 2))

    def nchw_to_rows(self, dout):
        n, fn, oh, ow = dout.shape
        return np.ascontiguousarray(dout.transpose(0, 2, 3, 1)).reshape(n * oh * ow, fn)
