"""Numba loops of Winograd F(2x2, 3x3) (see :mod:`gpucnn.kernels`, "Winograd F(2x2, 3x3)").

Each loop makes the generic set's additions in its order (:class:`.generic.GenericKernels`,
the ``winograd_*`` methods): the values are equal to the bit. Layouts: U (16, C, FN),
V (16, T, C), M (16, T, FN), GEMM rows (N*OH*OW, FN); T = N*TH*TW tiles in (n, ty, tx)
order, entry (i, j) of a 4x4 transform at index ``4*i + j``.

Passes, not tiles
-----------------
A loop that transforms a whole tile reads or writes 16 planes of V or M, an element of
each: LLVM does not vectorize a loop over so many places that may overlap, and the
planes, often a multiple of 4 KiB apart, crowd into the same few cache sets. So the
loops work on a row of tiles at a time, in passes: each innermost loop runs along the
channels (C or FN), contiguous everywhere, and touches at most four places of each
array. A transform along i goes into a buffer of the tile row, the one along j reads it
back.

An NCHW image has its channels outermost: :func:`winograd_input` first lays out the
rows it reads with channels last, and :func:`winograd_input_grad` adds its tiles into
such rows before copying them into the image. Hot loops hold no integer division, and
parallel loops make no views (a view's reference count is an atomic that all threads
share).
"""

from __future__ import annotations

import numpy as np

from .numba_conv import split  # the index helper of every task loop
from .numba_runtime import ijit, jit, tjit


@ijit
def nonnegative(k):
    """``k``, which is a size or an offset, known to be >= 0: an index ``k + q`` then
    needs no wrap-around of negative indices, which would keep its loop from vectorizing."""
    return max(k, 0)


# -- filters (C*FN*16 values: one thread) ----------------------------------------------


@jit
def winograd_filter(w, u):
    """w (FN, C, 3, 3) → U (16, C, FN): ``G w G^T``, the rows of G v being v0,
    (v0 + v1 + v2)/2, (v0 - v1 + v2)/2, v2; along ky first, then kx."""
    fn, c = w.shape[0], w.shape[1]
    half = w.dtype.type(0.5)
    cols = np.empty((4, 3), dtype=w.dtype)  # G w of one filter: cols[i, kx]
    for f in range(fn):
        for ch in range(c):
            for kx in range(3):
                v0, v1, v2 = w[f, ch, 0, kx], w[f, ch, 1, kx], w[f, ch, 2, kx]
                cols[0, kx] = v0
                cols[1, kx] = (v0 + v1 + v2) * half
                cols[2, kx] = (v0 - v1 + v2) * half
                cols[3, kx] = v2
            for i in range(4):
                v0, v1, v2 = cols[i, 0], cols[i, 1], cols[i, 2]
                u[4 * i, ch, f] = v0
                u[4 * i + 1, ch, f] = (v0 + v1 + v2) * half
                u[4 * i + 2, ch, f] = (v0 - v1 + v2) * half
                u[4 * i + 3, ch, f] = v2


@jit
def winograd_filter_grad(du, dw):
    """The adjoint of :func:`winograd_filter`: dU (16, C, FN) → dW (FN, C, 3, 3),
    ``G^T dU G``, the rows of G^T v being v0 + (v1 + v2)/2, (v1 - v2)/2, (v1 + v2)/2 + v3;
    along i first, then j."""
    c, fn = du.shape[1], du.shape[2]
    half = du.dtype.type(0.5)
    cols = np.empty((3, 4), dtype=du.dtype)  # G^T dU of one filter: cols[ky, j]
    for f in range(fn):
        for ch in range(c):
            for j in range(4):
                v0, v1, v2, v3 = du[j, ch, f], du[4 + j, ch, f], du[8 + j, ch, f], du[12 + j, ch, f]
                cols[0, j] = v0 + (v1 + v2) * half
                cols[1, j] = (v1 - v2) * half
                cols[2, j] = (v1 + v2) * half + v3
            for ky in range(3):
                v0, v1, v2, v3 = cols[ky, 0], cols[ky, 1], cols[ky, 2], cols[ky, 3]
                dw[f, ch, ky, 0] = v0 + (v1 + v2) * half
                dw[f, ch, ky, 1] = (v1 - v2) * half
                dw[f, ch, ky, 2] = (v1 + v2) * half + v3


# -- the input tiles ----------------------------------------------------------------------

# The image's rows go to and from channels-last polyphase rows: padded pixel (y, p),
# channel ch at ``(p & 1)*span + (p >> 1)*C + ch`` of the row, span = (TW + 1)*C; the even
# columns first, then the odd ones. Tile tx then reads its columns 2*tx .. 2*tx + 3 at
# q, span + q, q + C and span + q + C, q = tx*C + ch: in one loop over q for a whole row
# of tiles. Rows pass through ``line`` (C, W + 1): read and written along W in the image
# and along C in the polyphase row, each side contiguous; its pitch W + 1 keeps the C
# values of a column off the few cache sets that a pitch of a multiple of 4 KiB (the
# image's own, for a 32x32 image) would crowd them into.


@jit
def _image_row_to_polyphase(x, b, y, pad, tw, line, rows, r):
    """Image row y of x[b] (zeros outside the image) → padded polyphase row ``rows[r]``."""
    c, h, w = x.shape[1], x.shape[2], x.shape[3]
    c = nonnegative(c)
    span = nonnegative((tw + 1) * c)
    if y < 0 or y >= h:
        for q in range(2 * span):
            rows[r, q] = 0
        return
    for ch in range(c):
        for p in range(w):
            line[ch, p] = x[b, ch, y, p]
    for p in range(2 * tw + 2):  # the padded columns
        at = nonnegative((p & 1) * span + (p >> 1) * c)
        if pad <= p < pad + w:
            for ch in range(c):
                rows[r, at + ch] = line[ch, p - pad]
        else:
            for ch in range(c):
                rows[r, at + ch] = 0


@jit
def _polyphase_to_image_row(rows, r, pad, tw, line, dx, b, y):
    """Padded polyphase row ``rows[r]`` → image row y of dx[b] (the padding dropped)."""
    c, w = dx.shape[1], dx.shape[3]
    c = nonnegative(c)
    span = nonnegative((tw + 1) * c)
    for p in range(pad, pad + w):
        at = nonnegative((p & 1) * span + (p >> 1) * c)
        for ch in range(c):
            line[ch, p - pad] = rows[r, at + ch]
    for ch in range(c):
        for p in range(w):
            dx[b, ch, y, p] = line[ch, p]


@jit
def input_tile_rows(x, b, ty0, ty1, pad, tw, strip, s, line, v_rows, row0):
    """Tile rows ``ty0 .. ty1 - 1`` of image b of x → rows ``row0 + ty`` of ``v_rows`` (16,
    rows, TW*C), each tile's ``B^T d B`` (see :func:`winograd_input`).

    ``strip`` holds the four padded image rows of the current tile row in polyphase rows,
    row y at ``y & 3`` (each image row is laid out once, the two a tile row shares with
    the next kept); each tile row is transformed along i into ``s`` (a polyphase row for
    each i), then along j into ``v_rows``. Buffers: ``strip`` and ``s`` (4, 2*(TW + 1)*C),
    ``line`` (C, W + 1).
    """
    c = nonnegative(x.shape[1])
    span = nonnegative((tw + 1) * c)
    for y in range(2 * ty0, 2 * ty0 + 2):
        _image_row_to_polyphase(x, b, y - pad, pad, tw, line, strip, y & 3)
    for ty in range(ty0, ty1):
        y = 2 * ty
        for r in range(y + 2, y + 4):
            _image_row_to_polyphase(x, b, r - pad, pad, tw, line, strip, r & 3)
        r0, r1, r2, r3 = y & 3, (y + 1) & 3, (y + 2) & 3, (y + 3) & 3
        for q in range(2 * span):  # along i: s[i] = (B^T d)[i] of every column
            d0, d1, d2, d3 = strip[r0, q], strip[r1, q], strip[r2, q], strip[r3, q]
            s[0, q] = d0 - d2
            s[1, q] = d1 + d2
            s[2, q] = d2 - d1
            s[3, q] = d1 - d3
        row = row0 + ty
        for i in range(4):  # along j
            for q in range(tw * c):
                d0, d1, d2, d3 = s[i, q], s[i, span + q], s[i, q + c], s[i, span + q + c]
                v_rows[4 * i, row, q] = d0 - d2
                v_rows[4 * i + 1, row, q] = d1 + d2
                v_rows[4 * i + 2, row, q] = d2 - d1
                v_rows[4 * i + 3, row, q] = d1 - d3


@tjit
def winograd_input(first, last, x, pad, th, tw, band, v):
    """x (N, C, H, W) → V (16, T, C): ``B^T d B`` of each 4x4 tile d, the rows of B^T d
    being d0 - d2, d1 + d2, d2 - d1, d1 - d3; along i first, then j.

    One task per ``band`` tile rows of an image (:func:`input_tile_rows`).
    """
    n, c, h, w = x.shape
    c = nonnegative(c)
    span = nonnegative((tw + 1) * c)
    bands = (th + band - 1) // band
    v_rows = v.reshape(16, n * th, tw * c)  # a row of tiles a row
    for task in range(first, last):
        b, k = split(task, bands)
        ty0 = k * band
        strip = np.empty((4, 2 * span), dtype=x.dtype)
        s = np.empty((4, 2 * span), dtype=x.dtype)
        line = np.empty((c, w + 1), dtype=x.dtype)
        input_tile_rows(x, b, ty0, min(ty0 + band, th), pad, tw, strip, s, line, v_rows, b * th)


@jit
def input_grad_tile_rows(dv_rows, row0, pad, ty0, ty1, th, tw, acc, s, line, dx, b):
    """Tile rows ``ty1 - 1`` down to ``ty0`` of image b: rows ``row0 + ty`` of ``dv_rows``
    (16, rows, TW*C) transformed (``B dV B^T``, see :func:`winograd_input_grad`) and added
    to the pixels of dx[b] they were read from.

    Each tile row is transformed along i into ``s`` (entry (ky, j) of every tile of the
    row in row ``4*ky + j``), then along j and added into ``acc``, the four padded rows it
    covers in polyphase rows, row y at ``y & 3``. Tile rows are visited last to first, so
    the two rows a tile row shares with the one below are complete when it is done: they
    go to dx, and their places start from zero for the next tile row. An image's tile
    rows may come in several calls, last rows first, ``acc`` kept between them and zero
    before the first. Buffers: ``acc`` (4, 2*(TW + 1)*C), ``s`` (16, TW*C), ``line`` (C, W + 1).
    """
    c, h = dx.shape[1], dx.shape[2]
    c = nonnegative(c)
    span = nonnegative((tw + 1) * c)
    for ty in range(ty1 - 1, ty0 - 1, -1):
        row = row0 + ty
        for j in range(4):  # along i: s[4*ky + j] = (B dV)[ky, j] of every tile
            for q in range(tw * c):
                v0, v1, v2, v3 = (
                    dv_rows[j, row, q],
                    dv_rows[4 + j, row, q],
                    dv_rows[8 + j, row, q],
                    dv_rows[12 + j, row, q],
                )
                s[j, q] = v0
                s[4 + j, q] = v1 - v2 + v3
                s[8 + j, q] = v1 + v2 - v0
                s[12 + j, q] = -v3
        # along j, added to pixels (2*ty + ky, 2*tx + kx): kx = 0 and 1 at q = tx*C + ch
        # of the even and the odd phase, then kx = 2 and 3 a column on
        for ky in range(4):
            r, e = (2 * ty + ky) & 3, 4 * ky
            for q in range(tw * c):
                acc[r, q] += s[e, q]
                acc[r, span + q] += s[e + 1, q] - s[e + 2, q] + s[e + 3, q]
            for q in range(tw * c):
                acc[r, c + q] += s[e + 1, q] + s[e + 2, q] - s[e, q]
                acc[r, span + c + q] += -s[e + 3, q]
        for y in range(2 * ty + 2 if ty > 0 else 0, 2 * ty + 4):  # the rows now complete
            r = y & 3
            if pad <= y < pad + h:
                _polyphase_to_image_row(acc, r, pad, tw, line, dx, b, y - pad)
            for q in range(2 * span):
                acc[r, q] = 0


@tjit
def winograd_input_grad(first, last, dv, pad, th, tw, dx):
    """The adjoint of :func:`winograd_input`: dV (16, T, C) → dx (N, C, H, W), each tile's
    ``B dV B^T`` (the rows of B v being v0, v1 - v2 + v3, v1 + v2 - v0, -v3; along i
    first, then j) added to the pixels it was read from.

    One task per image (:func:`input_grad_tile_rows`): every pixel receives its terms in
    ascending (ky, kx) order, starting from zero, the generic set's.
    """
    n, c, h, w = dx.shape
    c = nonnegative(c)
    span = nonnegative((tw + 1) * c)
    dv_rows = dv.reshape(16, n * th, tw * c)
    for b in range(first, last):
        acc = np.zeros((4, 2 * span), dtype=dx.dtype)
        s = np.empty((16, tw * c), dtype=dx.dtype)
        line = np.empty((c, w + 1), dtype=dx.dtype)
        input_grad_tile_rows(dv_rows, b * th, pad, 0, th, th, tw, acc, s, line, dx, b)


# -- the output tiles ------------------------------------------------------------------------


@jit
def products_along_i(m_rows, row, span, s):
    """``A^T`` along i of the first ``span`` values of row ``row`` of ``m_rows`` (16, rows,
    TW*FN): ``s[j]`` = m0 + m1 + m2 and ``s[4 + j]`` = m1 - m2 - m3 of entries (i, j), i = 0..3."""
    for j in range(4):
        for q in range(span):
            m0, m1, m2, m3 = m_rows[j, row, q], m_rows[4 + j, row, q], m_rows[8 + j, row, q], m_rows[12 + j, row, q]
            s[j, q] = m0 + m1 + m2
            s[4 + j, q] = m1 - m2 - m3


@tjit
def winograd_output(first, last, m, n, oh, ow, th, tw, rows):
    """M (16, T, FN) → GEMM rows (N*OH*OW, FN): ``A^T M A`` of each tile, the rows of A^T m
    being m0 + m1 + m2, m1 - m2 - m3; along i first, then j; cropped to OH x OW.

    One task per row of tiles (n, ty): along i into ``s`` (entry (a, j) of every tile of
    the row in row ``4*a + j``), then along j into the rows of pixels (2*ty + a, 2*tx + b).
    """
    fn = m.shape[2]
    m_rows = m.reshape(16, n * th, tw * fn)
    for task in range(first, last):
        b, ty = split(task, th)
        s = np.empty((8, tw * fn), dtype=m.dtype)
        products_along_i(m_rows, task, tw * fn, s)
        y = 2 * ty
        for a in range(min(2, oh - y)):
            r0 = (b * oh + y + a) * ow  # the row of pixel (b, y + a, 0)
            e = 4 * a
            for tx in range(tw):
                r, q0 = r0 + 2 * tx, tx * fn
                if 2 * tx + 1 < ow:
                    for f in range(fn):
                        s0, s1, s2, s3 = s[e, q0 + f], s[e + 1, q0 + f], s[e + 2, q0 + f], s[e + 3, q0 + f]
                        rows[r, f] = s0 + s1 + s2
                        rows[r + 1, f] = s1 - s2 - s3
                else:  # the last column of pixels, when OW is odd
                    for f in range(fn):
                        rows[r, f] = s[e, q0 + f] + s[e + 1, q0 + f] + s[e + 2, q0 + f]


@jit
def grads_along_j(s, span, dm_rows, row):
    """``A`` along j into row ``row`` of ``dm_rows`` (16, rows, TW*FN), from ``s`` (4,
    2*span): entry i of every tile, its column 0 at ``s[i, q]`` and column 1 at
    ``s[i, span + q]`` (the polyphase layout): g0, g0 + g1, g0 - g1, -g1."""
    for i in range(4):
        for q in range(span):
            g0, g1 = s[i, q], s[i, span + q]
            dm_rows[4 * i, row, q] = g0
            dm_rows[4 * i + 1, row, q] = g0 + g1
            dm_rows[4 * i + 2, row, q] = g0 - g1
            dm_rows[4 * i + 3, row, q] = -g1


@tjit
def winograd_output_grad(first, last, drows, n, oh, ow, th, tw, dm):
    """The adjoint of :func:`winograd_output`: GEMM rows (N*OH*OW, FN) → dM (16, T, FN),
    ``A dY A^T`` of each 2x2 tile dY (zero where the tile reaches past OH x OW), the rows
    of A g being g0, g0 + g1, g0 - g1, -g1; along i first, then j.

    One task per row of tiles (n, ty): the two rows of pixels along i into ``s`` (a
    polyphase row of the tiles for each i), then ``s`` along j into dM.
    """
    fn = drows.shape[1]
    zero = drows.dtype.type(0)
    span = nonnegative(tw * fn)  # one phase of a polyphase row
    dm_rows = dm.reshape(16, n * th, span)
    for task in range(first, last):
        b, ty = split(task, th)
        y = 2 * ty
        r0 = (b * oh + y) * ow  # the row of pixel (b, y, 0)
        s = np.empty((4, 2 * span), dtype=drows.dtype)
        for p in range(2 * tw):
            at = (p & 1) * span + (p >> 1) * fn
            r = r0 + p
            if p < ow and y + 1 < oh:
                for f in range(fn):
                    g0, g1 = drows[r, f], drows[r + ow, f]
                    s[0, at + f] = g0
                    s[1, at + f] = g0 + g1
                    s[2, at + f] = g0 - g1
                    s[3, at + f] = -g1
            elif p < ow:  # the last row of pixels, when OH is odd: zeros below it
                for f in range(fn):
                    g0 = drows[r, f]
                    s[0, at + f] = g0
                    s[1, at + f] = g0 + zero
                    s[2, at + f] = g0 - zero
                    s[3, at + f] = -zero
            else:  # the column past the output, when OW is odd
                for f in range(fn):
                    s[0, at + f] = zero
                    s[1, at + f] = zero + zero
                    s[2, at + f] = zero - zero
                    s[3, at + f] = -zero
        grads_along_j(s, span, dm_rows, task)
