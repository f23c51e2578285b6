"""Numba loops of im2col and col2im (see :mod:`gpucnn.kernels` for the layout).

Decorators and launching: :mod:`.numba_runtime`; the kernel set that calls these loops:
:mod:`.numba_set`. Hot loops hold no integer division (tens of cycles each): indices are
stepped instead.
"""

from __future__ import annotations

import numpy as np

from .numba_runtime import jit, tjit


@jit
def split(i, m):
    """(i // m, i % m) in signed integers (a task index may come unsigned, and unsigned
    mixed with signed arithmetic would give floats)."""
    t = np.int64(i)
    return t // m, t % m


@tjit
def im2col(first, last, x, kh, kw, stride, pad, oh, ow, col):
    """x (N, C, H, W) → col (N*OH*OW, C*KH*KW); one task per output row (n, oh)."""
    n, c, h, w = x.shape
    for i in range(first, last):
        b, y = split(i, oh)
        r0 = (b * oh + y) * ow
        for ch in range(c):
            for ky in range(kh):
                j = (ch * kh + ky) * kw
                iy = y * stride - pad + ky
                if iy < 0 or iy >= h:
                    for xo in range(ow):
                        for kx in range(kw):
                            col[r0 + xo, j + kx] = 0
                    continue
                for xo in range(ow):
                    x0 = xo * stride - pad
                    if x0 >= 0 and x0 + kw <= w:  # the window row lies inside the image
                        for kx in range(kw):
                            col[r0 + xo, j + kx] = x[b, ch, iy, x0 + kx]
                    else:
                        for kx in range(kw):
                            ix = x0 + kx
                            col[r0 + xo, j + kx] = x[b, ch, iy, ix] if 0 <= ix < w else 0


@tjit
def col2im(first, last, col, kh, kw, stride, pad, oh, ow, dx):
    """Adjoint of im2col; one task per plane (n, c).

    Windows are visited last to first, so that every pixel receives its taps in
    ascending (ky, kx) order, the order in which the NumPy set adds them.
    """
    n, c, h, w = dx.shape
    for i in range(first, last):
        b, ch = split(i, c)
        dx[b, ch] = 0
        for y in range(oh - 1, -1, -1):
            for xo in range(ow - 1, -1, -1):
                r = (b * oh + y) * ow + xo
                for ky in range(kh):
                    iy = y * stride - pad + ky
                    if iy < 0 or iy >= h:
                        continue
                    for kx in range(kw):
                        ix = xo * stride - pad + kx
                        if 0 <= ix < w:
                            dx[b, ch, iy, ix] += col[r, (ch * kh + ky) * kw + kx]
