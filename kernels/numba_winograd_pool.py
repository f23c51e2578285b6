"""Numba loops of a Winograd convolution's output transform fused with its bias, ReLU and
a 2x2, stride-2 max pooling, and of its backward (see :mod:`gpucnn.kernels`,
``winograd_bias_relu_maxpool`` and ``winograd_maxpool_relu_backward``).

Each pooling window is one 2x2 output tile, so the loops go from the products M (16, T,
FN) to the pooled output (N, FN, OH//2, OW//2) and back without the GEMM rows
(N*OH*OW, FN). An odd OH's last row of tiles and an odd OW's last column are not
pooled: the forward skips them, the backward gives them a zero dM.

The values are the composition's, bit for bit, except the bias gradient, whose sum runs
in another order: each tile's outputs are the additions of
:func:`.numba_winograd.winograd_output` in its order, pooled with the rules of
:func:`.numba_pool.bias_relu_maxpool` (first maximum in row-major order, the last NaN of
a window winning it); a tile's dM is :func:`.numba_winograd.winograd_output_grad`'s
additions on its 2x2 gradient, zero but at the argmax.

Loops are laid out as in :mod:`.numba_winograd` ("Passes, not tiles"): one task per row
of tiles (n, ty), each innermost loop along the filters, contiguous in M and dM, and
touching at most four rows of each array. The NCHW planes, whose filters lie OH//2 *
OW//2 apart, are read or written through a (OW//2, FN) buffer of the row.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .numba_conv import split  # the index helper of every parallel loop
from .numba_runtime import pjit
from .numba_winograd import nonnegative


@pjit
def winograd_bias_relu_maxpool(m, bias, n, th, tw, out, argmax, with_argmax):
    """M (16, T, FN) and bias (FN,) → out, and argmax if ``with_argmax`` (inference
    skips it), both (N, FN, PH, PW) with PH = OH//2 and PW = OW//2.

    One task per pooled row of tiles (n, ty): along i into ``s`` (entry (a, j) of every
    pooled tile of the row in row ``4*a + j``), then for each tile along j into its four
    outputs, with the bias; their running maximum and argmax (taps k = 2*a + b in
    increasing order) go to ``best`` and ``arg`` (PW, FN), then to the NCHW planes.
    """
    fn = nonnegative(m.shape[2])
    ph, pw = out.shape[2], out.shape[3]
    span = nonnegative(pw * fn)  # the pooled tiles of a row
    m_rows = m.reshape(16, n * th, tw * fn)
    zero = m.dtype.type(0)
    one, two, three = np.int32(1), np.int32(2), np.int32(3)
    for task in prange(n * ph):
        b, ty = split(task, ph)
        row = b * th + ty
        s = np.empty((8, span), dtype=m.dtype)
        best = np.empty((pw, fn), dtype=m.dtype)
        arg = np.empty((pw, fn) if with_argmax else (0, 0), dtype=np.int32)
        for j in range(4):
            for q in range(span):
                m0, m1, m2, m3 = m_rows[j, row, q], m_rows[4 + j, row, q], m_rows[8 + j, row, q], m_rows[12 + j, row, q]
                s[j, q] = m0 + m1 + m2
                s[4 + j, q] = m1 - m2 - m3
        for tx in range(pw):
            q0 = tx * fn
            if with_argmax:
                for f in range(fn):
                    q = q0 + f
                    c = bias[f]
                    v0 = (s[0, q] + s[1, q] + s[2, q]) + c
                    v1 = (s[1, q] - s[2, q] - s[3, q]) + c
                    v2 = (s[4, q] + s[5, q] + s[6, q]) + c
                    v3 = (s[5, q] - s[6, q] - s[7, q]) + c
                    # np.maximum lets a NaN through; a NaN tap also counts as better, so
                    # that the last NaN of a window is its argmax, as in the NumPy set.
                    top, k = v0, np.int32(0)
                    k = one if (v1 > top) | (v1 != v1) else k
                    top = np.maximum(top, v1)
                    k = two if (v2 > top) | (v2 != v2) else k
                    top = np.maximum(top, v2)
                    k = three if (v3 > top) | (v3 != v3) else k
                    top = np.maximum(top, v3)
                    best[tx, f] = zero if top < zero else top  # not max(top, 0), which would turn a NaN into 0
                    arg[tx, f] = k
            else:
                for f in range(fn):
                    q = q0 + f
                    c = bias[f]
                    top = (s[0, q] + s[1, q] + s[2, q]) + c
                    top = np.maximum(top, (s[1, q] - s[2, q] - s[3, q]) + c)
                    top = np.maximum(top, (s[4, q] + s[5, q] + s[6, q]) + c)
                    top = np.maximum(top, (s[5, q] - s[6, q] - s[7, q]) + c)
                    best[tx, f] = zero if top < zero else top
        for f in range(fn):
            for tx in range(pw):
                out[b, f, ty, tx] = best[tx, f]
        if with_argmax:
            for f in range(fn):
                for tx in range(pw):
                    argmax[b, f, ty, tx] = arg[tx, f]


@pjit
def winograd_maxpool_relu_backward(dout, argmax, out, th, tw, dm, db_rows):
    """dout, argmax and out (N, FN, PH, PW) → dM (16, T, FN), and each row of tiles' sum
    of the gradients that pass the ReLU in ``db_rows`` (N*TH, FN).

    One task per row of tiles (n, ty). ``grad`` and ``arg`` (TW, FN) hold the row's
    gradients (``dout`` where ``out > 0``, else 0) and argmax, zero in the tiles that
    are not pooled. Each tile's 2x2 gradient dY, zero but at the argmax, goes along i
    into ``s`` (entry (i, b) of every tile of the row in row ``4*b + i``), then along j
    into dM.
    """
    n, fn, ph, pw = dout.shape
    fn = nonnegative(fn)
    span = nonnegative(tw * fn)
    dm_rows = dm.reshape(16, n * th, span)
    zero = dout.dtype.type(0)
    for task in prange(n * th):
        b, ty = split(task, th)
        grad = np.zeros((tw, fn), dtype=dout.dtype)
        arg = np.zeros((tw, fn), dtype=np.int32)
        if ty < ph:
            for f in range(fn):
                for tx in range(pw):
                    d = dout[b, f, ty, tx]  # loaded before the test: a select, not a branch
                    grad[tx, f] = d if out[b, f, ty, tx] > 0 else zero
                    arg[tx, f] = argmax[b, f, ty, tx]
        for f in range(fn):
            db_rows[task, f] = zero
        for tx in range(tw):
            for f in range(fn):
                db_rows[task, f] += grad[tx, f]
        s = np.empty((8, span), dtype=dout.dtype)
        for col in range(2):  # the tiles' column b: dY[0, b] at tap b, dY[1, b] at tap 2 + b
            e = 4 * col
            for tx in range(tw):
                q0 = tx * fn
                for f in range(fn):
                    d, k = grad[tx, f], arg[tx, f]
                    g0 = d if k == col else zero
                    g1 = d if k == col + 2 else zero
                    s[e, q0 + f] = g0
                    s[e + 1, q0 + f] = g0 + g1
                    s[e + 2, q0 + f] = g0 - g1
                    s[e + 3, q0 + f] = -g1
        for i in range(4):  # along j
            for q in range(span):
                g0, g1 = s[i, q], s[4 + i, q]
                dm_rows[4 * i, task, q] = g0
                dm_rows[4 * i + 1, task, q] = g0 + g1
                dm_rows[4 * i + 2, task, q] = g0 - g1
                dm_rows[4 * i + 3, task, q] = -g1
