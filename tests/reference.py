"""Plain-loop NumPy references: slow, obvious, and independent of the kernels under test."""

from __future__ import annotations

import numpy as np


def out_size(h: int, k: int, stride: int, pad: int) -> int:
    return (h + 2 * pad - k) // stride + 1


def window_taps(i, j, kh, kw, stride, pad, h, w):
    """The taps of output cell (i, j)'s window that fall inside an H x W image, in ascending
    (ky, kx) order: ``(ky, kx, y, x)`` with (y, x) the pixel under tap (ky, kx)."""
    for ky in range(kh):
        for kx in range(kw):
            y, x = i * stride - pad + ky, j * stride - pad + kx
            if 0 <= y < h and 0 <= x < w:
                yield ky, kx, y, x


def im2col_loops(x, kh, kw, stride, pad):
    n, c, h, w = x.shape
    oh, ow = out_size(h, kh, stride, pad), out_size(w, kw, stride, pad)
    col = np.zeros((n * oh * ow, c * kh * kw), dtype=x.dtype)
    for b in range(n):
        for i in range(oh):
            for j in range(ow):
                for ch in range(c):
                    for ky, kx, y, xx in window_taps(i, j, kh, kw, stride, pad, h, w):
                        col[(b * oh + i) * ow + j, (ch * kh + ky) * kw + kx] = x[b, ch, y, xx]
    return col


def col2im_loops(col, x_shape, kh, kw, stride, pad):
    """The adjoint of :func:`im2col_loops`: every column entry added to its pixel, in float64."""
    n, c, h, w = x_shape
    oh, ow = out_size(h, kh, stride, pad), out_size(w, kw, stride, pad)
    dx = np.zeros(x_shape)
    for b in range(n):
        for i in range(oh):
            for j in range(ow):
                for ch in range(c):
                    for ky, kx, y, xx in window_taps(i, j, kh, kw, stride, pad, h, w):
                        dx[b, ch, y, xx] += col[(b * oh + i) * ow + j, (ch * kh + ky) * kw + kx]
    return dx


def conv_loops(x, W, b, stride, pad):
    n, c, h, w = x.shape
    fn, _, kh, kw = W.shape
    oh, ow = out_size(h, kh, stride, pad), out_size(w, kw, stride, pad)
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out = np.zeros((n, fn, oh, ow), dtype=np.float64)
    for i in range(oh):
        for j in range(ow):
            window = xp[:, :, i * stride : i * stride + kh, j * stride : j * stride + kw]
            out[:, :, i, j] = np.tensordot(window, W, axes=([1, 2, 3], [1, 2, 3])) + b
    return out


def pool_loops(x, kh, kw, stride, pad, mode):
    """Max (pad cells ignored, first maximum) or average (pad counted) pooling, with argmax."""
    n, c, h, w = x.shape
    oh, ow = out_size(h, kh, stride, pad), out_size(w, kw, stride, pad)
    out = np.zeros((n, c, oh, ow), dtype=x.dtype)
    arg = np.zeros((n, c, oh, ow), dtype=np.int32)
    for b in range(n):
        for ch in range(c):
            for i in range(oh):
                for j in range(ow):
                    best, best_k, total = -np.inf, 0, 0.0
                    for ky, kx, y, xx in window_taps(i, j, kh, kw, stride, pad, h, w):
                        v = x[b, ch, y, xx]
                        total += v
                        if v > best:
                            best, best_k = v, ky * kw + kx
                    out[b, ch, i, j] = best if mode == "max" else total / (kh * kw)
                    arg[b, ch, i, j] = best_k
    return out, arg


def maxpool_backward_loops(dout, argmax, x_shape, kh, kw, stride, pad):
    """Each ``dout`` entry added to the pixel its window-local ``argmax`` names, in float64."""
    n, c, oh, ow = dout.shape
    dx = np.zeros(x_shape)
    for b in range(n):
        for ch in range(c):
            for i in range(oh):
                for j in range(ow):
                    ky, kx = divmod(int(argmax[b, ch, i, j]), kw)
                    dx[b, ch, i * stride - pad + ky, j * stride - pad + kx] += dout[b, ch, i, j]
    return dx


def avgpool_backward_loops(dout, x_shape, kh, kw, stride, pad):
    """``dout / (KH*KW)`` added to every pixel of each window (pad cells dropped), in float64."""
    n, c, oh, ow = dout.shape
    h, w = x_shape[2], x_shape[3]
    dx = np.zeros(x_shape)
    for b in range(n):
        for ch in range(c):
            for i in range(oh):
                for j in range(ow):
                    for _, _, y, xx in window_taps(i, j, kh, kw, stride, pad, h, w):
                        dx[b, ch, y, xx] += float(dout[b, ch, i, j]) / (kh * kw)
    return dx


def rows_to_nchw(rows, n, oh, ow):
    """GEMM rows (N*OH*OW, F), row ``(n*OH + oh)*OW + ow``, as (N, F, OH, OW)."""
    return rows.reshape(n, oh, ow, rows.shape[1]).transpose(0, 3, 1, 2)


def nchw_to_rows(y):
    """(N, F, OH, OW) as GEMM rows (N*OH*OW, F)."""
    n, f, oh, ow = y.shape
    return y.transpose(0, 2, 3, 1).reshape(n * oh * ow, f)


def log_softmax(x):
    """Row-wise log-softmax of (N, K) scores in float64, and the log-sum-exp (N, 1) it subtracts."""
    z = x.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=1, keepdims=True))
    return z - lse, lse
