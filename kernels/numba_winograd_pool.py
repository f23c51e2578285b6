"""Numba loops of a Winograd convolution's output transform fused with its bias and ReLU,
with or without a 2x2, stride-2 max pooling, and of their backwards (see
:mod:`gpucnn.kernels`, ``winograd_bias_relu_maxpool``, ``winograd_maxpool_relu_backward``,
``winograd_bias_relu`` and ``winograd_relu_backward``).

The loops go from the products M (16, T, FN) to the NCHW output, pooled (N, FN, OH//2,
OW//2) or not (N, FN, OH, OW), and back without the GEMM rows (N*OH*OW, FN). With
pooling, each pooling window is one 2x2 output tile; an odd OH's last row of tiles and
an odd OW's last column are not pooled: the forward skips them, the backward gives them
a zero dM. Without pooling, the forward crops the tiles that reach past OH x OW, and
the backward reads zeros there, as :func:`.numba_winograd.winograd_output_grad` does.

The values are the composition's, bit for bit, except the bias gradient, whose sum runs
in another order: each tile's outputs are the additions of
:func:`.numba_winograd.winograd_output` in its order, pooled with the rules of
:func:`.numba_pool.bias_relu_maxpool` (first maximum in row-major order, the last NaN of
a window winning it) or passed through the ReLU of :func:`.numba_elementwise.bias_relu`
(``maximum(v, 0)``: a NaN stays NaN, -0.0 becomes +0.0); a tile's dM is
:func:`.numba_winograd.winograd_output_grad`'s additions on its 2x2 gradient (``dout``
where ``out > 0``, else 0; with pooling, zero but at the argmax). The bias gradient sums
each row of tiles' gradients in a fixed order, and the caller adds the rows in order:
the same bytes on any number of threads.

Loops are laid out as in :mod:`.numba_winograd` ("Passes, not tiles"): one task per row
of tiles (n, ty), each innermost loop along the filters, contiguous in M and dM, and
touching at most four rows of each array. The NCHW planes, whose filters lie a plane
apart, are read or written through a buffer of the row's pixels with the filters last.
"""

from __future__ import annotations

import numpy as np

from .numba_conv import split  # the index helper of every task loop
from .numba_runtime import jit, tjit
from .numba_winograd import grads_along_j, nonnegative, products_along_i


@jit
def pool_tile_row(m_rows, row, bias, s, best, arg, out, argmax, b, ty, with_argmax):
    """Pooled row of tiles ty of image b, from row ``row`` of ``m_rows`` (16, rows, TW*FN),
    into out[b, :, ty] (and argmax[b, :, ty] if ``with_argmax``): see
    :func:`winograd_bias_relu_maxpool`. Buffers: ``s`` (8, PW*FN), ``best`` and ``arg`` (PW, FN).
    """
    fn = nonnegative(out.shape[1])
    pw = out.shape[3]
    span = nonnegative(pw * fn)  # the pooled tiles of a row
    zero = m_rows.dtype.type(0)
    one, two, three = np.int32(1), np.int32(2), np.int32(3)
    products_along_i(m_rows, row, span, s)
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


@tjit
def winograd_bias_relu_maxpool(first, last, m, bias, n, th, tw, out, argmax, with_argmax):
    """M (16, T, FN) and bias (FN,) → out, and argmax if ``with_argmax`` (inference
    skips it), both (N, FN, PH, PW) with PH = OH//2 and PW = OW//2.

    One task per pooled row of tiles (n, ty) (:func:`pool_tile_row`): along i into ``s``
    (entry (a, j) of every pooled tile of the row in row ``4*a + j``), then for each tile
    along j into its four outputs, with the bias; their running maximum and argmax (taps
    k = 2*a + b in increasing order) go to ``best`` and ``arg`` (PW, FN), then to the
    NCHW planes.
    """
    fn = nonnegative(m.shape[2])
    ph, pw = out.shape[2], out.shape[3]
    m_rows = m.reshape(16, n * th, tw * fn)
    for task in range(first, last):
        b, ty = split(task, ph)
        s = np.empty((8, pw * fn), dtype=m.dtype)
        best = np.empty((pw, fn), dtype=m.dtype)
        arg = np.empty((pw, fn) if with_argmax else (0, 0), dtype=np.int32)
        pool_tile_row(m_rows, b * th + ty, bias, s, best, arg, out, argmax, b, ty, with_argmax)


@jit
def maxpool_relu_backward_tile_row(dout, argmax, out, b, ty, tw, grad, arg, s, db_rows, db_row, dm_rows, row):
    """Row of tiles ty of image b: dM into row ``row`` of ``dm_rows`` (16, rows, TW*FN),
    the sum of its gradients that pass the ReLU into ``db_rows[db_row]``; see
    :func:`winograd_maxpool_relu_backward`. Buffers: ``grad`` and ``arg`` (TW, FN),
    ``s`` (4, 2*TW*FN).
    """
    fn, ph, pw = dout.shape[1], dout.shape[2], dout.shape[3]
    fn = nonnegative(fn)
    span = nonnegative(tw * fn)
    zero = dout.dtype.type(0)
    for tx in range(tw):
        for f in range(fn):
            grad[tx, f] = zero
            arg[tx, f] = 0
    if ty < ph:
        for f in range(fn):
            for tx in range(pw):
                d = dout[b, f, ty, tx]  # loaded before the test: a select, not a branch
                grad[tx, f] = d if out[b, f, ty, tx] > 0 else zero
                arg[tx, f] = argmax[b, f, ty, tx]
    for f in range(fn):
        db_rows[db_row, f] = zero
    for tx in range(tw):
        for f in range(fn):
            db_rows[db_row, f] += grad[tx, f]
    for col in range(2):  # the tiles' column b: dY[0, b] at tap b, dY[1, b] at tap 2 + b
        e = col * span
        for tx in range(tw):
            q0 = e + tx * fn
            for f in range(fn):
                d, k = grad[tx, f], arg[tx, f]
                g0 = d if k == col else zero
                g1 = d if k == col + 2 else zero
                s[0, q0 + f] = g0
                s[1, q0 + f] = g0 + g1
                s[2, q0 + f] = g0 - g1
                s[3, q0 + f] = -g1
    grads_along_j(s, span, dm_rows, row)


@tjit
def winograd_maxpool_relu_backward(first, last, dout, argmax, out, th, tw, dm, db_rows):
    """dout, argmax and out (N, FN, PH, PW) → dM (16, T, FN), and each row of tiles' sum
    of the gradients that pass the ReLU in ``db_rows`` (N*TH, FN).

    One task per row of tiles (n, ty) (:func:`maxpool_relu_backward_tile_row`). ``grad``
    and ``arg`` (TW, FN) hold the row's gradients (``dout`` where ``out > 0``, else 0) and
    argmax, zero in the tiles that are not pooled. Each tile's 2x2 gradient dY, zero but
    at the argmax, goes along i into ``s`` (entry (i, b) of every tile of the row in row
    i, column b's tiles after column 0's, as in the polyphase layout), then along j into dM.
    """
    n, fn = dout.shape[0], nonnegative(dout.shape[1])
    span = nonnegative(tw * fn)
    dm_rows = dm.reshape(16, n * th, span)
    for task in range(first, last):
        b, ty = split(task, th)
        grad = np.empty((tw, fn), dtype=dout.dtype)
        arg = np.empty((tw, fn), dtype=np.int32)
        s = np.empty((4, 2 * span), dtype=dout.dtype)
        maxpool_relu_backward_tile_row(dout, argmax, out, b, ty, tw, grad, arg, s, db_rows, task, dm_rows, task)


@jit
def bias_relu_tile_row(m_rows, row, bias, s, line, out, b, ty):
    """Row of tiles ty of image b, from row ``row`` of ``m_rows`` (16, rows, TW*FN), into
    out[b, :, 2*ty : 2*ty + 2]: see :func:`winograd_bias_relu`. Buffers: ``s`` (8, TW*FN),
    ``line`` (2*TW, FN).
    """
    fn, oh, ow = out.shape[1], out.shape[2], out.shape[3]
    fn = nonnegative(fn)
    tw = line.shape[0] // 2
    span = nonnegative(tw * fn)
    zero = m_rows.dtype.type(0)
    products_along_i(m_rows, row, span, s)
    y = 2 * ty
    for a in range(min(2, oh - y)):
        e = 4 * a
        for tx in range(tw):
            q0 = tx * fn
            for f in range(fn):
                q = q0 + f
                c = bias[f]
                v0 = (s[e, q] + s[e + 1, q] + s[e + 2, q]) + c
                v1 = (s[e + 1, q] - s[e + 2, q] - s[e + 3, q]) + c
                # maximum(v, 0): a NaN stays NaN, -0.0 becomes +0.0
                line[2 * tx, f] = v0 if v0 > zero or v0 != v0 else zero
                line[2 * tx + 1, f] = v1 if v1 > zero or v1 != v1 else zero
        for f in range(fn):
            for x in range(ow):
                out[b, f, y + a, x] = line[x, f]


@tjit
def winograd_bias_relu(first, last, m, bias, n, th, tw, out):
    """M (16, T, FN) and bias (FN,) → out (N, FN, OH, OW) = maximum(y + bias, 0), y the
    output transform ``A^T M A`` of each tile, cropped to OH x OW.

    One task per row of tiles (n, ty) (:func:`bias_relu_tile_row`): along i into ``s``
    (entry (a, j) of every tile of the row in row ``4*a + j``), then, for each of the
    row's (at most) two rows of pixels, along j with the bias and the ReLU into ``line``
    (2*TW, FN), pixel x at ``line[x]``, and from there into the NCHW planes.
    """
    fn = nonnegative(m.shape[2])
    span = nonnegative(tw * fn)
    m_rows = m.reshape(16, n * th, span)
    for task in range(first, last):
        b, ty = split(task, th)
        s = np.empty((8, span), dtype=m.dtype)
        line = np.empty((2 * tw, fn), dtype=m.dtype)
        bias_relu_tile_row(m_rows, task, bias, s, line, out, b, ty)


@jit
def relu_backward_tile_row(dout, out, b, ty, tw, grad, s, db_rows, db_row, dm_rows, row):
    """Row of tiles ty of image b: dM into row ``row`` of ``dm_rows`` (16, rows, TW*FN),
    the sum of its dY into ``db_rows[db_row]``; see :func:`winograd_relu_backward`.
    Buffers: ``grad`` and ``s`` (4, 2*TW*FN).
    """
    fn, oh, ow = dout.shape[1], dout.shape[2], dout.shape[3]
    fn = nonnegative(fn)
    span = nonnegative(tw * fn)  # one phase of a polyphase row
    zero = dout.dtype.type(0)
    for a in range(2):
        y = 2 * ty + a
        if y < oh:
            for f in range(fn):
                for p in range(ow):
                    d = dout[b, f, y, p]  # loaded before the test: a select, not a branch
                    grad[a, nonnegative((p & 1) * span + (p >> 1) * fn + f)] = d if out[b, f, y, p] > zero else zero
            for p in range(ow, 2 * tw):  # the column past the output, when OW is odd
                at = nonnegative((p & 1) * span + (p >> 1) * fn)
                for f in range(fn):
                    grad[a, at + f] = zero
        else:  # the row below the output, when OH is odd
            for q in range(2 * span):
                grad[a, q] = zero
    for f in range(fn):
        db_rows[db_row, f] = zero
    for a in range(2):
        for p in range(ow):
            at = nonnegative((p & 1) * span + (p >> 1) * fn)
            for f in range(fn):
                db_rows[db_row, f] += grad[a, at + f]
    for q in range(2 * span):  # along i
        g0, g1 = grad[0, q], grad[1, q]
        s[0, q] = g0
        s[1, q] = g0 + g1
        s[2, q] = g0 - g1
        s[3, q] = -g1
    grads_along_j(s, span, dm_rows, row)


@tjit
def winograd_relu_backward(first, last, dout, out, th, tw, dm, db_rows):
    """dout and out (N, FN, OH, OW) → dM (16, T, FN), ``A dY A^T`` of each 2x2 tile of
    dY = where(out > 0, dout, 0) (zero where the tile reaches past OH x OW), and each row
    of tiles' sum of dY in ``db_rows`` (N*TH, FN).

    One task per row of tiles (n, ty) (:func:`relu_backward_tile_row`). ``grad`` holds
    the row's two rows of pixels of dY, each a polyphase row of the tiles (pixel p,
    filter f at ``(p & 1)*span + (p >> 1)*FN + f``, span = TW*FN), read from the NCHW
    planes along x. Their sum, pixel by pixel in row-major order, goes to ``db_rows``;
    then, as in :func:`.numba_winograd.winograd_output_grad`, they go along i into ``s``
    and along j into dM.
    """
    n, fn = dout.shape[0], nonnegative(dout.shape[1])
    span = nonnegative(tw * fn)
    dm_rows = dm.reshape(16, n * th, span)
    for task in range(first, last):
        b, ty = split(task, th)
        grad = np.empty((2, 2 * span), dtype=dout.dtype)
        s = np.empty((4, 2 * span), dtype=dout.dtype)
        relu_backward_tile_row(dout, out, b, ty, tw, grad, s, db_rows, task, dm_rows, task)
