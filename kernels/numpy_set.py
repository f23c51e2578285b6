"""The NumPy kernel set: the CPU reference, built on strided views.

``sliding_window_view`` gives every window without copying; one copy then lays the
windows out as columns. Pooling never builds a full column matrix: it reduces over
the KH*KW strided tap views, which is a handful of whole-array operations. Python
loops run over window taps only, never over pixels. Layouts: see
:mod:`gpucnn.kernels`; the inference operations (``*_infer``) answer NCHW views of
channels-last arrays, the layout the next convolution reads.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from . import IDENTITY_POOL, check_pool_pad, output_hw, winograd_tiles
from .generic import GenericKernels


def _rows_of_b(v0, v1, v2, v3):
    """The rows of B v in Winograd F(2x2, 3x3)'s input gradient, one at a time."""
    yield v0
    yield v1 - v2 + v3
    yield v1 + v2 - v0
    yield -v3


def _rows_of_g(v0, v1, v2, out):
    """The rows of G v into out (4, ...): v0, (v0 + v1 + v2) * 0.5, (v0 - v1 + v2) * 0.5, v2."""
    np.copyto(out[0], v0)
    np.add(v0, v1, out=out[1])
    np.add(out[1], v2, out=out[1])
    np.multiply(out[1], 0.5, out=out[1])
    np.subtract(v0, v1, out=out[2])
    np.add(out[2], v2, out=out[2])
    np.multiply(out[2], 0.5, out=out[2])
    np.copyto(out[3], v2)


# The rows of B^T d in Winograd F(2x2, 3x3)'s input transform, each an operation on two of
# d's four rows: d0 - d2, d1 + d2, d2 - d1, d1 - d3.
_ROWS_OF_BT = ((np.subtract, 0, 2), (np.add, 1, 2), (np.subtract, 2, 1), (np.subtract, 1, 3))


def _tap_major(col: np.ndarray) -> bool:
    """Whether a column matrix (M, K) is the transposed view of a tap-major (K, M) array, as
    this set's im2col makes it (one that is both C- and Fortran-contiguous reads alike)."""
    return col.flags.f_contiguous and not col.flags.c_contiguous


def _phase_span(offset: int, size: int, count: int) -> tuple[int, int, int]:
    """Cells ``s`` in [0, count) that read source index ``2*s + offset`` of an axis of
    ``size``: (first, end) of those inside it, and the source index of the first."""
    first = min(count, max(0, (1 - offset) // 2))
    end = max(first, min(count, (size - 1 - offset) // 2 + 1))
    return first, end, 2 * first + offset


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
        # Tap-major: the (C, KH, KW, N, OH, OW) array, one copy per tap whose innermost
        # runs are rows of OW pixels, returned as a transposed view (Fortran order, the
        # values of the interface's C-order matrix). A copy into the C-order layout runs its
        # innermost loop over C or KW values only, two to three times slower; the GEMMs
        # take either layout.
        n, c, h, w = x.shape
        oh, ow = output_hw(h, w, kh, kw, stride, pad)
        padded = self._pad(x, pad, 0).transpose(1, 0, 2, 3)  # (C, N, H + 2*pad, W + 2*pad)
        col = np.empty((c, kh, kw, n, oh, ow), dtype=x.dtype)
        for ky in range(kh):
            for kx in range(kw):
                col[:, ky, kx] = padded[:, :, ky : ky + stride * oh : stride, kx : kx + stride * ow : stride]
        return col.reshape(c * kh * kw, n * oh * ow).T

    def col2im(self, col, x_shape, kh, kw, stride=1, pad=0):
        n, c, h, w = x_shape
        oh, ow = output_hw(h, w, kh, kw, stride, pad)
        if _tap_major(col):
            taps = col.T.reshape(c, kh, kw, n, oh, ow)
        else:
            taps = col.reshape(n, oh, ow, c, kh, kw).transpose(3, 4, 5, 0, 1, 2)
        return self._add_taps(taps, x_shape, stride, pad)

    # The most bytes of the padded input gradient that col2im adds all taps into at once: a
    # block of channels stays in the core's cache while the taps stream past it once.
    col2im_block_bytes = 2**18

    def _add_taps(self, taps, x_shape, stride, pad):
        """col2im of its taps (C, KH, KW, N, OH, OW), any strides: each tap added to the
        pixels it was read from, taps in (ky, kx) order, a block of channels at a time."""
        n, c, h, w = x_shape
        kh, kw, oh, ow = taps.shape[1], taps.shape[2], taps.shape[4], taps.shape[5]
        dxp = np.zeros((c, n, h + 2 * pad, w + 2 * pad), dtype=taps.dtype)
        block = max(1, self.col2im_block_bytes // max(1, dxp[0].nbytes))
        for c0 in range(0, c, block):
            part, share = dxp[c0 : c0 + block], taps[c0 : c0 + block]
            for ky in range(kh):
                for kx in range(kw):
                    part[:, :, ky : ky + stride * oh : stride, kx : kx + stride * ow : stride] += share[:, ky, kx]
        return np.ascontiguousarray(dxp[:, :, pad : pad + h, pad : pad + w].transpose(1, 0, 2, 3))

    def conv_input_grad(self, drows, w, x_shape, stride, pad):
        # The product tap-major, (C*FH*FW, N*OH*OW) = W2^T drows^T: each tap's values in one
        # contiguous row for col2im's additions.
        fn, c, fh, fw = w.shape
        n, _, h, wd = x_shape
        oh, ow = output_hw(h, wd, fh, fw, stride, pad)
        taps = (w.reshape(fn, c * fh * fw).T @ drows.T).reshape(c, fh, fw, n, oh, ow)
        return self._add_taps(taps, x_shape, stride, pad)

    # -- Winograd F(2x2, 3x3) ------------------------------------------------------
    # The generic set's additions in its order, on channels-last arrays: each addition is
    # one ufunc over all tiles at once, along a contiguous innermost axis (C or FN). A ufunc
    # over every other pixel of an image (runs of only C or FN values between strides) copies
    # its operands through a buffer first; so the input transform reads a copy of the input
    # laid out in phases, and the output transform adds over each of a tile's four pixels
    # apart before one copy interleaves them.

    def _winograd_phases(self, x, pad, th, tw):
        """x (N, C, H, W) → its padded pixels channels-last in phases, (2, 4, N, TH + 1, TW, C):
        ``[r, k, n, s, t]`` is padded pixel (2*s + r, 2*t + k) of image n, so that row i and
        column j of every tile, ``[i % 2, j, :, i // 2 : i // 2 + TH]``, is a whole block of
        (TH, TW, C) values per image."""
        n, c, h, w = x.shape
        pixels = x.transpose(0, 2, 3, 1)  # (N, H, W, C)
        if not pixels.flags.c_contiguous:  # one transposing copy, then the phases copy runs of C values
            pixels = np.ascontiguousarray(pixels)
        rows = [_phase_span(r - pad, h, th + 1) for r in range(2)]
        cols = [_phase_span(k - pad, w, tw) for k in range(4)]
        inside = all(s0 == 0 and s1 == th + 1 for s0, s1, _ in rows) and all(t0 == 0 and t1 == tw for t0, t1, _ in cols)
        phases = (np.empty if inside else np.zeros)((2, 4, n, th + 1, tw, c), dtype=x.dtype)
        for r, (s0, s1, y0) in enumerate(rows):
            for k, (t0, t1, x0) in enumerate(cols):
                if s1 > s0 and t1 > t0:
                    taken = pixels[:, y0 : y0 + 2 * (s1 - s0) - 1 : 2, x0 : x0 + 2 * (t1 - t0) - 1 : 2]
                    phases[r, k, :, s0:s1, t0:t1] = taken
        return phases

    def winograd_filter(self, w):
        # The generic set's additions in its order (G along ky, then along kx), each over
        # every filter and channel at once.
        fn, c = w.shape[0], w.shape[1]
        taps = np.ascontiguousarray(w.transpose(2, 3, 1, 0))  # (3 ky, 3 kx, C, FN)
        g_ky = np.empty((4, 3, c, fn), dtype=w.dtype)
        _rows_of_g(taps[0], taps[1], taps[2], g_ky)
        u = np.empty((4, 4, c, fn), dtype=w.dtype)
        for i in range(4):
            _rows_of_g(g_ky[i, 0], g_ky[i, 1], g_ky[i, 2], u[i])
        return u.reshape(16, c, fn)

    def winograd_input(self, x, pad):
        n, c, h, w = x.shape
        th, tw = winograd_tiles(*output_hw(h, w, 3, 3, 1, pad))
        phases = self._winograd_phases(x, pad, th, tw)

        def tile_rows(i, j):  # row i, column j of every tile: (N, TH, TW, C)
            return phases[i % 2, j, :, i // 2 : i // 2 + th]

        bt_d = np.empty((4, n, th, tw, c), dtype=x.dtype)  # one row of B^T d, at the four columns j
        v = np.empty((16, n, th, tw, c), dtype=x.dtype)
        for i, (along_i, a, b) in enumerate(_ROWS_OF_BT):
            for j in range(4):
                along_i(tile_rows(a, j), tile_rows(b, j), out=bt_d[j])
            for j, (along_j, a, b) in enumerate(_ROWS_OF_BT):  # (B^T d) B along j
                along_j(bt_d[a], bt_d[b], out=v[4 * i + j])
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

    @staticmethod
    def _winograd_pixels(m, n, th, tw, bias=None):
        """M (16, N*TH*TW, FN) → ``A^T M A`` of each tile, (2, 2, N, TH, TW, FN): ``[a, b]`` is
        pixel (2*ty + a, 2*tx + b) of every tile; through ``maximum(. + bias, 0)`` when a bias
        (FN,) is given. The additions run over contiguous arrays; one copy then interleaves
        the four pixels (an addition into every other pixel would run over FN values at a time)."""
        fn = m.shape[2]
        m = m.reshape(16, n, th, tw, fn)
        m0, m1, m2, m3 = m[0:4], m[4:8], m[8:12], m[12:16]
        pixels = np.empty((2, 2, n, th, tw, fn), dtype=m.dtype)
        for a, at_m in enumerate((m0 + m1 + m2, m1 - m2 - m3)):  # A^T M along i: (4 j, N, TH, TW, FN)
            even, odd = pixels[a]
            np.add(at_m[0], at_m[1], out=even)
            np.add(even, at_m[2], out=even)
            np.subtract(at_m[1], at_m[2], out=odd)
            np.subtract(odd, at_m[3], out=odd)
        if bias is not None:
            np.add(pixels, bias, out=pixels)
            np.maximum(pixels, 0, out=pixels)
        return pixels

    @staticmethod
    def _channels_last(pixels, out):
        """The tiles' pixels (2, 2, N, TH, TW, FN) into ``out`` (N, 2*TH, 2*TW, FN)."""
        _, _, n, th, tw, fn = pixels.shape
        out.reshape(n, th, 2, tw, 2, fn)[...] = pixels.transpose(2, 3, 0, 4, 1, 5)
        return out

    def winograd_output(self, m, n, oh, ow):
        th, tw = winograd_tiles(oh, ow)
        fn = m.shape[2]
        y = self._channels_last(self._winograd_pixels(m, n, th, tw), np.empty((n, 2 * th, 2 * tw, fn), dtype=m.dtype))
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

    def winograd_bias_relu(self, m, b, n, oh, ow):
        # The bias and ReLU over the tiles' pixels, which one copy then lays out in NCHW:
        # no GEMM rows are made.
        th, tw = winograd_tiles(oh, ow)
        pixels = self._winograd_pixels(m, n, th, tw, b)
        out = np.empty((n, m.shape[2], oh, ow), dtype=m.dtype)
        for py in range(2):
            for px in range(2):  # pixels (2*ty + py, 2*tx + px) inside the output
                rows, cols = (oh - py + 1) // 2, (ow - px + 1) // 2
                out[:, :, py::2, px::2] = pixels[py, px, :, :rows, :cols].transpose(0, 3, 1, 2)
        return out

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
        # The maximum of the four taps, then the bias (for a finite bias, max(t + b) is
        # max(t) + b to the bit: see the inference operations below): one pass instead of four.
        th, tw = winograd_tiles(oh, ow)
        ph, pw = output_hw(oh, ow, 2, 2, 2, 0)
        m = m.reshape(16, n, th, tw, m.shape[2])[:, :, :ph, :pw]
        m0, m1, m2, m3 = m[0:4], m[4:8], m[8:12], m[12:16]
        out = np.empty(m.shape[1:], dtype=m.dtype)  # (N, PH, PW, FN): the running maximum
        tap = np.empty_like(out)
        for a, at_m in enumerate((m0 + m1 + m2, m1 - m2 - m3)):  # A^T M along i, as _winograd_pooled_taps
            even = out if a == 0 else tap  # tap 2*a, then tap 2*a + 1
            np.add(at_m[0], at_m[1], out=even)
            np.add(even, at_m[2], out=even)
            if a:
                np.maximum(out, tap, out=out)
            np.subtract(at_m[1], at_m[2], out=tap)
            np.subtract(tap, at_m[3], out=tap)
            np.maximum(out, tap, out=out)
        np.add(out, b, out=out)
        np.maximum(out, 0, out=out)
        return out.transpose(0, 3, 1, 2)  # nothing is kept: channels-last under the NCHW view

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

    # Inference keeps nothing for a backward: the *_infer operations answer the NCHW view of
    # a channels-last array, which the next convolution reads as it is (no transposing copy
    # on either side), and pool before they add the bias (float addition is monotonic: for a
    # finite bias, max(t + b) is max(t) + b to the bit), which then takes one pass over the
    # pooled output instead of one over the convolution's.

    def _maxpool_bias_relu_infer(self, y, b, kh, kw, stride, pad):
        """``maximum(maxpool(y) + b, 0)`` of channels-last y (N, OH, OW, FN): (N, FN, PH, PW),
        a view of a channels-last array."""
        if (kh, kw, stride, pad) == IDENTITY_POOL:
            out = y + b
        else:
            n, oh, ow, fn = y.shape
            ph, pw = output_hw(oh, ow, kh, kw, stride, pad)
            if pad:
                y = np.pad(y, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=-np.inf)
            out = np.array(y[(slice(None), *self._tap_slices(0, kw, stride, ph, pw))], order="C")
            for k in range(1, kh * kw):
                np.maximum(out, y[(slice(None), *self._tap_slices(k, kw, stride, ph, pw))], out=out)
            np.add(out, b, out=out)
        np.maximum(out, 0, out=out)
        return out.transpose(0, 3, 1, 2)

    def bias_relu_maxpool_infer(self, rows, b, n, oh, ow, kh, kw, stride, pad=0):
        check_pool_pad(kh, kw, pad)
        return self._maxpool_bias_relu_infer(rows.reshape(n, oh, ow, rows.shape[1]), b, kh, kw, stride, pad)

    # The most bytes of one block's column matrix and GEMM rows in an inference through
    # im2col without pooling (a convolution -> ReLU): the block's bias and ReLU then run
    # over rows still in the caches.
    infer_block_bytes = 2**20

    def conv_bias_relu_maxpool_infer(self, x, w, b, stride, pad, kh, kw, pool_stride, pool_pad=0):
        # Through Winograd where the set prefers it (as _conv_rows) and through im2col without
        # pooling, in blocks of images whose outputs go straight into one channels-last array.
        fn, c, fh, fw = w.shape
        pool = (kh, kw, pool_stride, pool_pad)
        if self.prefers_winograd(c, fn, fh, fw, stride):
            return self._winograd_infer(x, w, b, pad, pool)
        if pool == IDENTITY_POOL:
            return self._im2col_relu_infer(x, w, b, stride, pad)
        return super().conv_bias_relu_maxpool_infer(x, w, b, stride, pad, *pool)

    def _im2col_relu_infer(self, x, w, b, stride, pad):
        """``maximum(conv(x, w) + b, 0)`` through im2col, (N, FN, OH, OW), in blocks of
        ``infer_block_bytes``."""
        n = x.shape[0]
        fn, c, fh, fw = w.shape
        oh, ow = output_hw(x.shape[2], x.shape[3], fh, fw, stride, pad)
        w_t = w.reshape(fn, c * fh * fw).T
        out = np.empty((n, oh, ow, fn), dtype=x.dtype)
        block = max(1, min(n, self.infer_block_bytes // (oh * ow * (c * fh * fw + fn) * out.itemsize)))
        for i in range(0, n, block):
            rows = out[i : i + block].reshape(-1, fn)
            np.matmul(self.im2col(x[i : i + block, ...], fh, fw, stride, pad), w_t, out=rows)
            np.add(rows, b, out=rows)
            np.maximum(rows, 0, out=rows)
        return out.transpose(0, 3, 1, 2)

    def _winograd_infer(self, x, w, b, pad, pool):
        """:meth:`conv_bias_relu_maxpool_infer` through Winograd, in blocks of images as a
        layer's winograd_forward takes them."""
        kh, kw, _, pool_pad = pool
        check_pool_pad(kh, kw, pool_pad)
        n, fn = x.shape[0], w.shape[0]
        oh, ow = output_hw(x.shape[2], x.shape[3], 3, 3, 1, pad)
        th, tw = winograd_tiles(oh, ow)
        u = self.winograd_filter(w)
        y = np.empty((n, 2 * th, 2 * tw, fn), dtype=x.dtype)  # a last row or column past OH x OW at most
        block = self._winograd_block_images(n, th * tw * fn * y.itemsize)
        identity = pool == IDENTITY_POOL  # then the bias and ReLU block by block
        for i in range(0, n, block):
            j = min(i + block, n)
            m = np.matmul(self.winograd_input(x[i:j, ...], pad), u)
            self._channels_last(self._winograd_pixels(m, j - i, th, tw, b if identity else None), y[i:j])
        if identity:
            return y[:, :oh, :ow].transpose(0, 3, 1, 2)
        return self._maxpool_bias_relu_infer(y[:, :oh, :ow], b, *pool)

    def _winograd_block_images(self, n: int, tile_bytes: int) -> int:
        """Images per block of the Winograd passes for N images of ``tile_bytes`` = TH*TW*FN*itemsize:
        as many as keep a block's products (16, T, FN) within ``winograd_block_bytes``."""
        if self.winograd_block_bytes is None:
            return n
        return max(1, min(n, self.winograd_block_bytes // (16 * tile_bytes)))

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

    # weight_grad of a column matrix of at most this many columns (a first layer's few taps)
    # in slices of rows of about weight_grad_slice_bytes, their products added in order:
    # BLAS multiplies such a long, thin pair at about half the speed of cached slices
    # (benchmarks/results/numpy_notes.md).
    weight_grad_slice_columns = 32
    weight_grad_slice_bytes = 2**18

    def weight_grad(self, drows, col):
        if not _tap_major(col):
            return drows.T @ col
        # (col^T drows)^T: BLAS then reads both operands in their own order, faster than
        # drows^T col with two transposed operands.
        col_t = col.T  # (K, M)
        k, m = col_t.shape
        rows = max(1, self.weight_grad_slice_bytes // ((k + drows.shape[1]) * col.itemsize))
        if k > self.weight_grad_slice_columns or m <= rows:
            return np.ascontiguousarray((col_t @ drows).T)
        dw_t = col_t[:, :rows] @ drows[:rows]
        for r0 in range(rows, m, rows):
            dw_t += col_t[:, r0 : r0 + rows] @ drows[r0 : r0 + rows]
        return np.ascontiguousarray(dw_t.T)

    def rows_to_nchw(self, y, n, oh, ow):
        return np.ascontiguousarray(y.reshape(n, oh, ow, y.shape[1]).transpose(0, 3, 1, 2))

    def nchw_to_rows(self, dout):
        n, fn, oh, ow = dout.shape
        return np.ascontiguousarray(dout.transpose(0, 2, 3, 1)).reshape(n * oh * ow, fn)
