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

from . import check_pool_pad, output_hw, winograd_tiles
from .generic import GenericKernels


def _rows_of_b(v0, v1, v2, v3):
    """The rows of B v in Winograd F(2x2, 3x3)'s input gradient, one at a time."""
    yield v0
    yield v1 - v2 + v3
    yield v1 + v2 - v0
    yield -v3


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

    # Winograd for a 3x3 convolution at stride 1 with at least this many input channels:
    # with fewer, each of its 16 GEMMs has little work, and the transforms cost more than
    # the multiplications they save.
    winograd_min_channels = 16
    # The Winograd passes in blocks of images whose GEMM products take at most 2 MiB: a
    # block's transforms and products stay in the caches, and no array is large enough
    # for the C library to map fresh (page-faulted) memory for it at every step
    # (benchmarks/results/numba_notes.md, "Blocks of images").
    winograd_block_bytes = 2 * 2**20

    def prefers_winograd(self, c, fn, fh, fw, stride):
        return fh == 3 and fw == 3 and stride == 1 and c >= self.winograd_min_channels

    def im2col(self, x, kh, kw, stride=1, pad=0):
        # One copy per tap from the padded image laid out channels-last, whose rows then
        # run along C: a 6-D copy straight from the NCHW windows runs its innermost loop
        # over KW values only, about three times slower for 3x3 filters.
        n, c, h, w = x.shape
        oh, ow = output_hw(h, w, kh, kw, stride, pad)
        padded = np.zeros((n, h + 2 * pad, w + 2 * pad, c), dtype=x.dtype)
        padded[:, pad : pad + h, pad : pad + w] = x.transpose(0, 2, 3, 1)
        col = np.empty((n, oh, ow, c, kh, kw), dtype=x.dtype)
        for ky in range(kh):
            for kx in range(kw):
                col[..., ky, kx] = padded[:, ky : ky + stride * oh : stride, kx : kx + stride * ow : stride]
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

    # -- Winograd F(2x2, 3x3) ------------------------------------------------------
    # The generic set's additions in its order, on channels-last arrays: each addition is
    # one ufunc over all tiles at once, along a contiguous innermost axis (C or FN), its
    # result written straight into its place in V, the output or dM where it can be.

    def winograd_input(self, x, pad):
        n, c, h, w = x.shape
        th, tw = winograd_tiles(*output_hw(h, w, 3, 3, 1, pad))
        padded = np.zeros((n, 2 * th + 2, 2 * tw + 2, c), dtype=x.dtype)
        padded[:, pad : pad + h, pad : pad + w] = x.transpose(0, 2, 3, 1)
        d = [padded[:, i : i + 2 * th : 2] for i in range(4)]  # rows 2*ty + i: (N, TH, 2*TW + 2, C)
        bt_d = [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]]  # B^T d along i, every column
        v = np.empty((16, n, th, tw, c), dtype=x.dtype)
        for i in range(4):
            e = [bt_d[i][:, :, j : j + 2 * tw : 2] for j in range(4)]  # columns 2*tx + j
            np.subtract(e[0], e[2], out=v[4 * i])
            np.add(e[1], e[2], out=v[4 * i + 1])
            np.subtract(e[2], e[1], out=v[4 * i + 2])
            np.subtract(e[1], e[3], out=v[4 * i + 3])
        return v.reshape(16, n * th * tw, c)

    def winograd_input_grad(self, dv, x_shape, pad):
        n, c, h, w = x_shape
        th, tw = winograd_tiles(*output_hw(h, w, 3, 3, 1, pad))
        dv = dv.reshape(16, n, th, tw, c)
        padded = np.zeros((n, 2 * th + 2, 2 * tw + 2, c), dtype=dv.dtype)
        for ky, col in enumerate(_rows_of_b(dv[0:4], dv[4:8], dv[8:12], dv[12:16])):  # B dV along i: (4 j, ...)
            for kx, tile in enumerate(_rows_of_b(*col)):  # along j
                pixels = padded[:, ky : ky + 2 * th : 2, kx : kx + 2 * tw : 2]
                np.add(pixels, tile, out=pixels)
        return np.ascontiguousarray(padded[:, pad : pad + h, pad : pad + w].transpose(0, 3, 1, 2))

    @staticmethod
    def _winograd_tile_grads(dy, n, th, tw):
        """dY (N, 2*TH, 2*TW, FN), the tiles' gradients (zero past the output) → dM (16, T, FN),
        ``A dY A^T`` of each tile."""
        fn = dy.shape[3]
        g0, g1 = dy[:, 0::2], dy[:, 1::2]  # the tiles' two rows: (N, TH, 2*TW, FN)
        dm = np.empty((16, n, th, tw, fn), dtype=dy.dtype)
        for i, a_g in enumerate((g0, g0 + g1, g0 - g1, -g1)):  # A dY along i
            c0, c1 = a_g[:, :, 0::2], a_g[:, :, 1::2]  # the tiles' two columns
            np.copyto(dm[4 * i], c0)
            np.add(c0, c1, out=dm[4 * i + 1])
            np.subtract(c0, c1, out=dm[4 * i + 2])
            np.negative(c1, out=dm[4 * i + 3])
        return dm.reshape(16, n * th * tw, fn)

    def winograd_output(self, m, n, oh, ow):
        th, tw = winograd_tiles(oh, ow)
        fn = m.shape[2]
        m = m.reshape(16, n, th, tw, fn)
        y = np.empty((n, 2 * th, 2 * tw, fn), dtype=m.dtype)
        m0, m1, m2, m3 = m[0:4], m[4:8], m[8:12], m[12:16]
        for a, at_m in enumerate((m0 + m1 + m2, m1 - m2 - m3)):  # A^T M along i: (4 j, N, TH, TW, FN)
            even, odd = y[:, a::2, 0::2], y[:, a::2, 1::2]  # pixels (2*ty + a, 2*tx + b)
            np.add(at_m[0], at_m[1], out=even)
            np.add(even, at_m[2], out=even)
            np.subtract(at_m[1], at_m[2], out=odd)
            np.subtract(odd, at_m[3], out=odd)
        if (2 * th, 2 * tw) != (oh, ow):
            y = np.ascontiguousarray(y[:, :oh, :ow])
        return y.reshape(n * oh * ow, fn)

    def winograd_output_grad(self, drows, n, oh, ow):
        th, tw = winograd_tiles(oh, ow)
        fn = drows.shape[1]
        dy = drows.reshape(n, oh, ow, fn)
        if (2 * th, 2 * tw) != (oh, ow):  # zeros where the tiles reach past the output
            dy = np.zeros((n, 2 * th, 2 * tw, fn), dtype=drows.dtype)
            dy[:, :oh, :ow] = drows.reshape(n, oh, ow, fn)
        return self._winograd_tile_grads(dy, n, th, tw)

    # -- the ReLU's backward -----------------------------------------------------------

    @staticmethod
    def _passed(dout, out):
        """``where(out > 0, dout, 0)`` to the bit, branch-free: dout's bits under a mask of
        all ones where out > 0 and of zeros elsewhere (+0.0 there, whatever dout holds).
        ``np.where`` picks each element with a branch, which ReLU's unpredictable masks
        mispredict half the time: about ten times slower."""
        bits = np.dtype(f"i{dout.dtype.itemsize}")
        mask = np.greater(out, 0).astype(bits)
        np.negative(mask, out=mask)
        return np.bitwise_and(np.ascontiguousarray(dout).view(bits), mask, out=mask).view(dout.dtype)

    def relu_backward(self, dout, out):
        return self._passed(dout, out)

    # The backward of the bias and ReLU after a Winograd convolution (its forward is the
    # composition, which no whole-array version beat): dout is masked in NCHW and
    # transposed into the tiles' gradients in one copy, with no GEMM rows.

    def winograd_relu_backward(self, dout, out, n, oh, ow):
        th, tw = winograd_tiles(oh, ow)
        fn = dout.shape[1]
        passed = self._passed(dout, out)  # (N, FN, OH, OW)
        dy = np.empty((n, 2 * th, 2 * tw, fn), dtype=dout.dtype)
        if (2 * th, 2 * tw) != (oh, ow):  # zeros where the tiles reach past the output
            dy[:, oh:] = 0
            dy[:, :oh, ow:] = 0
        dy[:, :oh, :ow] = passed.transpose(0, 2, 3, 1)
        # db: the column sums of the GEMM rows, to which the zeros past the output add nothing
        return self._winograd_tile_grads(dy, n, th, tw), self.bias_grad(dy.reshape(-1, fn))

    # A 2x2, stride-2 max pooling after a Winograd convolution: each pooling window is one
    # output tile, so the pooled tiles' four outputs are computed as four (N, PH, PW, FN)
    # taps, with winograd_output's additions in its order, and pooled as bias_relu_maxpool
    # pools its rows; the backward routes each window's gradient to one of four such taps.
    # No GEMM rows are made, and an odd OH's or OW's last, unpooled tiles are skipped.

    def _winograd_pooled_taps(self, m, b, n, oh, ow):
        """The biased outputs of the pooled tiles, (4, N, PH, PW, FN): tap ``2*a + b`` of
        window (py, px) is output pixel (2*py + a, 2*px + b)."""
        th, tw = winograd_tiles(oh, ow)
        ph, pw = output_hw(oh, ow, 2, 2, 2, 0)
        fn = m.shape[2]
        m = m.reshape(16, n, th, tw, fn)[:, :, :ph, :pw]
        m0, m1, m2, m3 = m[0:4], m[4:8], m[8:12], m[12:16]
        taps = np.empty((4, n, ph, pw, fn), dtype=m.dtype)
        for a, at_m in enumerate((m0 + m1 + m2, m1 - m2 - m3)):  # A^T M along i: (4 j, N, PH, PW, FN)
            even, odd = taps[2 * a], taps[2 * a + 1]
            np.add(at_m[0], at_m[1], out=even)
            np.add(even, at_m[2], out=even)
            np.subtract(at_m[1], at_m[2], out=odd)
            np.subtract(odd, at_m[3], out=odd)
        np.add(taps, b, out=taps)
        return taps

    def winograd_bias_relu_maxpool(self, m, b, n, oh, ow):
        taps = self._winograd_pooled_taps(m, b, n, oh, ow)
        out, argmax = self._max_over_taps(lambda k: taps[k], 4)
        np.maximum(out, 0, out=out)
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2)), np.ascontiguousarray(argmax.transpose(0, 3, 1, 2))

    def winograd_bias_relu_maxpool_infer(self, m, b, n, oh, ow):
        taps = self._winograd_pooled_taps(m, b, n, oh, ow)
        out = taps[0]
        for k in range(1, 4):
            np.maximum(out, taps[k], out=out)
        np.maximum(out, 0, out=out)
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2))

    def winograd_maxpool_relu_backward(self, dout, argmax, out, n, oh, ow):
        th, tw = winograd_tiles(oh, ow)
        fn, ph, pw = dout.shape[1], dout.shape[2], dout.shape[3]
        to_nhwc = (0, 2, 3, 1)
        passed = np.ascontiguousarray((dout * (out > 0)).transpose(to_nhwc))  # (N, PH, PW, FN)
        arg = np.ascontiguousarray(argmax.transpose(to_nhwc))
        dy = np.empty((2, 2, n, ph, pw, fn), dtype=dout.dtype)  # dY[a, b] of every pooled tile
        for k in range(4):
            np.multiply(passed, arg == k, out=dy[k // 2, k % 2])
        dm = np.empty((16, n, th, tw, fn), dtype=dout.dtype)
        if (ph, pw) != (th, tw):  # the unpooled tiles get no gradient
            dm[:, :, ph:] = 0
            dm[:, :, :ph, pw:] = 0
        g0, g1 = dy[0], dy[1]  # the tiles' two rows: (2 b, N, PH, PW, FN)
        for i, a_g in enumerate((g0, g0 + g1, g0 - g1, -g1)):  # A dY along i, as winograd_output_grad
            c0, c1 = a_g[0], a_g[1]  # the tiles' two columns
            np.copyto(dm[4 * i, :, :ph, :pw], c0)
            np.add(c0, c1, out=dm[4 * i + 1, :, :ph, :pw])
            np.subtract(c0, c1, out=dm[4 * i + 2, :, :ph, :pw])
            np.negative(c1, out=dm[4 * i + 3, :, :ph, :pw])
        return dm.reshape(16, n * th * tw, fn), self.bias_grad(passed.reshape(n * ph * pw, fn))

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
