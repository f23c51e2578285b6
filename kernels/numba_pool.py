"""Numba loops of the pooling operations, plain and fused with a bias and a ReLU.

Max pooling counts pad cells as -inf and takes the first maximum as the argmax, a NaN
winning its window (the last NaN), as the NumPy set does (see :mod:`gpucnn.kernels`).
Backward loops visit windows last to first, so that every pixel receives its taps in the
NumPy set's order of addition.
"""

from __future__ import annotations

import numpy as np

from .numba_conv import split  # the index helper of every task loop
from .numba_runtime import jit, tjit

# -- pooling ----------------------------------------------------------------------


@jit
def _last_nan_tap(plane, y0, x0, kh, kw, bias):
    """The last tap (ky*KW + kx) of the window at (y0, x0) of a 2-D plane where
    ``plane + bias`` is NaN: the argmax of a window that holds a NaN."""
    h, w = plane.shape
    last = 0
    for ky in range(kh):
        for kx in range(kw):
            y, x = y0 + ky, x0 + kx
            if 0 <= y < h and 0 <= x < w:
                v = plane[y, x] + bias
                if v != v:
                    last = ky * kw + kx
    return last


@jit
def tap_ranges(length, pooled, k, stride, pad):
    """For each window column kx < k along an axis of ``length`` cells pooled to ``pooled``
    windows: the windows ``lo[kx] <= p < hi[kx]`` whose tap kx falls inside the axis."""
    lo = np.empty(k, dtype=np.int64)
    hi = np.empty(k, dtype=np.int64)
    for kx in range(k):
        lo[kx] = (pad - kx + stride - 1) // stride if pad > kx else 0
        hi[kx] = min(pooled, (length - 1 + pad - kx) // stride + 1)
    return lo, hi


@tjit
def maxpool(first, last, x, kh, kw, stride, pad, out, argmax):
    """Window maximum and the first argmax; pad cells count as -inf, as in NumPy's set.

    One task per output row (n, c, oh). The row's running maximum is updated tap by
    tap with the ``max`` forms of :func:`bias_relu_maxpool`, which vectorize.
    """
    n, c, h, w = x.shape
    oh, ow = out.shape[2], out.shape[3]
    xo_lo, xo_hi = tap_ranges(w, ow, kw, stride, pad)
    for i in range(first, last):
        plane, y = split(i, oh)
        b, ch = split(plane, c)
        for xo in range(ow):
            out[b, ch, y, xo] = -np.inf
            argmax[b, ch, y, xo] = 0
        for ky in range(kh):
            iy = y * stride - pad + ky
            if iy < 0 or iy >= h:
                continue  # a pad row: -inf never wins
            for kx in range(kw):
                k = np.int32(ky * kw + kx)
                first, stop = xo_lo[kx], xo_hi[kx]  # the windows whose tap kx falls inside the image
                for xo in range(first, stop):
                    v = x[b, ch, iy, xo * stride - pad + kx]
                    top = out[b, ch, y, xo]
                    out[b, ch, y, xo] = np.maximum(top, v)
                    argmax[b, ch, y, xo] = max(argmax[b, ch, y, xo], k if v > top else np.int32(0))
        for xo in range(ow):
            if out[b, ch, y, xo] != out[b, ch, y, xo]:  # a NaN wins, the last one does
                argmax[b, ch, y, xo] = _last_nan_tap(x[b, ch], y * stride - pad, xo * stride - pad, kh, kw, 0)


@tjit
def maxpool_backward(first, last, dout, argmax, kh, kw, stride, pad, dx):
    """Each window adds its ``dout`` to the pixel its argmax names; windows are visited
    last to first, which is the NumPy set's order of addition (ascending tap index)."""
    n, c, h, w = dx.shape
    oh, ow = dout.shape[2], dout.shape[3]
    for i in range(first, last):
        b, ch = split(i, c)
        dx[b, ch] = 0
        for y in range(oh - 1, -1, -1):
            for xo in range(ow - 1, -1, -1):
                k = argmax[b, ch, y, xo]
                ky = k // kw  # once per window: cheap next to the pixels it touches
                iy = y * stride - pad + ky
                ix = xo * stride - pad + k - ky * kw
                if 0 <= iy < h and 0 <= ix < w:
                    dx[b, ch, iy, ix] += dout[b, ch, y, xo]


@tjit
def avgpool(first, last, x, kh, kw, stride, pad, out):
    """Window sum (row by row, pad cells as zeros) divided by KH*KW."""
    n, c, h, w = x.shape
    oh, ow = out.shape[2], out.shape[3]
    count = x.dtype.type(kh * kw)
    for i in range(first, last):
        b, ch = split(i, c)
        for y in range(oh):
            for xo in range(ow):
                acc = x.dtype.type(0)
                for ky in range(kh):
                    iy = y * stride - pad + ky
                    if iy < 0 or iy >= h:
                        continue
                    for kx in range(kw):
                        ix = xo * stride - pad + kx
                        if 0 <= ix < w:
                            acc += x[b, ch, iy, ix]
                out[b, ch, y, xo] = acc / count


@tjit
def avgpool_backward(first, last, share, kh, kw, stride, pad, dx):
    """Each window adds ``share = dout / (KH*KW)`` to its pixels, last window first."""
    n, c, h, w = dx.shape
    oh, ow = share.shape[2], share.shape[3]
    for i in range(first, last):
        b, ch = split(i, c)
        dx[b, ch] = 0
        for y in range(oh - 1, -1, -1):
            for xo in range(ow - 1, -1, -1):
                s = share[b, ch, y, xo]
                for ky in range(kh):
                    iy = y * stride - pad + ky
                    if iy < 0 or iy >= h:
                        continue
                    for kx in range(kw):
                        ix = xo * stride - pad + kx
                        if 0 <= ix < w:
                            dx[b, ch, iy, ix] += s


# -- fused: bias, max pooling and ReLU over a GEMM's rows (N*OH*OW, FN) ---------------


@tjit
def bias_relu_maxpool(first, last, rows, bias, oh, ow, kh, kw, stride, pad, out, argmax, with_argmax):
    """rows (N*OH*OW, FN) + bias → max pooling (pad = -inf) → ReLU; out, and argmax if
    ``with_argmax`` (inference skips it), both (N, FN, PH, PW).

    One task per pooled row (n, py). The running maximum of the row lives in a
    (PW, FN) scratch so that the filter axis, contiguous in ``rows``, is the inner
    loop; both are updated with ``max`` forms, which LLVM turns into vector code (a
    conditional store stays scalar).
    """
    n, fn, ph, pw = out.shape
    for i in range(first, last):
        b, py = split(i, ph)
        best = np.full((pw, fn), -np.inf, dtype=rows.dtype)
        arg = np.zeros((pw, fn) if with_argmax else (0, 0), dtype=np.int32)
        k = np.int32(0)
        for ky in range(kh):
            y = py * stride - pad + ky
            for kx in range(kw):
                for px in range(pw):
                    x = px * stride - pad + kx
                    if y < 0 or y >= oh or x < 0 or x >= ow:
                        continue  # a pad cell: -inf never wins
                    r = (b * oh + y) * ow + x
                    if with_argmax:
                        for f in range(fn):
                            v = rows[r, f] + bias[f]
                            top = best[px, f]
                            best[px, f] = np.maximum(top, v)
                            # Taps come in increasing k, so "the last k that was strictly
                            # better" is a running maximum: the first maximum wins.
                            arg[px, f] = max(arg[px, f], k if v > top else np.int32(0))
                    else:
                        for f in range(fn):
                            best[px, f] = np.maximum(best[px, f], rows[r, f] + bias[f])
                k += np.int32(1)
        for f in range(fn):
            for px in range(pw):
                v = best[px, f]
                out[b, f, py, px] = 0 if v < 0 else v
                if not with_argmax:
                    continue
                if v != v:  # np.maximum let a NaN through; it wins, the last one does
                    plane = rows.reshape(n, oh, ow, fn)[b, :, :, f]
                    arg[px, f] = _last_nan_tap(plane, py * stride - pad, px * stride - pad, kh, kw, bias[f])
                argmax[b, f, py, px] = arg[px, f]


@jit
def _window_of(length, pooled, k, stride, pad):
    """For each pixel along one axis of a pooling with disjoint windows (stride >= k):
    its window (or -1 if no window holds it) and its tap within that window."""
    window = np.full(length, -1, dtype=np.int64)
    tap = np.zeros(length, dtype=np.int64)
    for p in range(pooled):
        for t in range(k):
            i = p * stride - pad + t
            if 0 <= i < length:
                window[i] = p
                tap[i] = t
    return window, tap


@tjit
def maxpool_relu_backward_disjoint(first, last, dout, argmax, out, kh, kw, stride, pad, oh, ow, drows):
    """drows (N*OH*OW, FN) when windows do not overlap: each conv output pixel takes the
    ``dout`` of its window if the window's argmax names it and its output passed the
    ReLU, else 0. One task per image; the image's window values are first laid out
    (window, FN) so that the inner loop runs along contiguous filters."""
    n, fn, ph, pw = dout.shape
    win_y, tap_y = _window_of(oh, ph, kh, stride, pad)
    win_x, tap_x = _window_of(ow, pw, kw, stride, pad)
    zero = drows.dtype.type(0)
    for b in range(first, last):
        grad = np.empty((ph * pw, fn), dtype=dout.dtype)
        arg = np.empty((ph * pw, fn), dtype=np.int32)
        for f in range(fn):
            for py in range(ph):
                for px in range(pw):
                    q = py * pw + px
                    d = dout[b, f, py, px]  # loaded before the test: a select, not a branch
                    grad[q, f] = d if out[b, f, py, px] > 0 else zero
                    arg[q, f] = argmax[b, f, py, px]
        for y in range(oh):
            for x in range(ow):
                r = (b * oh + y) * ow + x
                if win_y[y] < 0 or win_x[x] < 0:
                    for f in range(fn):
                        drows[r, f] = zero
                    continue
                q = win_y[y] * pw + win_x[x]
                k = tap_y[y] * kw + tap_x[x]
                for f in range(fn):
                    g = grad[q, f]
                    drows[r, f] = g if arg[q, f] == k else zero


@tjit
def maxpool_relu_backward(first, last, dout, argmax, out, kh, kw, stride, pad, oh, ow, drows):
    """drows (N*OH*OW, FN) for overlapping windows: each window whose pooled output
    passed the ReLU adds its ``dout`` to the row its argmax names; one task per image,
    windows last to first (the NumPy set's order of addition)."""
    n, fn, ph, pw = dout.shape
    rows_per_image = oh * ow
    for b in range(first, last):
        r0 = np.int64(b) * rows_per_image
        drows[r0 : r0 + rows_per_image] = 0
        for py in range(ph - 1, -1, -1):
            for px in range(pw - 1, -1, -1):
                for f in range(fn):
                    if not out[b, f, py, px] > 0:
                        continue
                    k = argmax[b, f, py, px]
                    ky = k // kw
                    y = py * stride - pad + ky
                    x = px * stride - pad + k - ky * kw
                    if 0 <= y < oh and 0 <= x < ow:
                        drows[r0 + y * ow + x, f] += dout[b, f, py, px]
