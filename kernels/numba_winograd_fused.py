"""Numba loops of a whole Winograd F(2x2, 3x3) Convolution -> ReLU (-> 2x2 max pooling)
and its backward, a band of tiles at a time (see :mod:`gpucnn.kernels`,
``winograd_conv_bias_relu`` and ``winograd_conv_relu_backward``).

The composed operations pass the whole batch through each step in turn: the transformed
input V (16, T, C), the products M = V @ U (16, T, FN), then the output. With few
channels each of the sixteen GEMMs does little arithmetic per byte, and V and M go to
memory and back between the steps. Here one task takes a band of tile rows of an image
through all the steps while its V and M stay in the core's cache: the input transform
(:func:`.numba_winograd.input_tile_rows`), sixteen small GEMMs (``np.dot``, which Numba
hands to SciPy's BLAS; the caller runs that BLAS on one thread, see
:func:`.numba_runtime.run_tasks`), and the output transform with bias, ReLU and
pooling (:mod:`.numba_winograd_pool`'s row helpers). The tasks take views of the shared
U (``u[e]``), whose reference count all threads touch: 16 or 32 per band, little beside
the band's work. The backward does the same for dM,
dV and dx, and makes V again from the input instead of keeping it: a pass over the
input in cache costs less than writing V and reading it back, and the layer keeps
nothing but its input. It calls the input transform last in a band, after the helpers
only it calls: Numba compiles a kernel's helpers in the order it meets their calls, and
while a second process compiles the backward ahead of a first step (see
:mod:`.numba_runtime`, "Compiling ahead"), the first one compiles that transform for the
forward.

Values: the transforms are the composed operations' additions in their order; a GEMM
over a band's tiles gives what the whole batch's GEMM gives to float rounding (BLAS may
block a product differently), and dU sums its bands' products: per group of ``group``
images in order, then the groups in order (the caller), the same bytes on any number of
threads as long as the BLAS's one-thread GEMM repeats its bytes (OpenBLAS's does; MKL's only
with ``MKL_CBWR`` set). Tasks: the forward one per band of an image, the backward one per group of
images (dU's partial sums), an image's bands last to first so that dx's tiles are added
as :func:`.numba_winograd.input_grad_tile_rows` needs.
"""

from __future__ import annotations

import numpy as np

from .numba_conv import split  # the index helper of every task loop
from .numba_runtime import tjit
from .numba_winograd import input_grad_tile_rows, input_tile_rows, nonnegative
from .numba_winograd_pool import (
    bias_relu_tile_row,
    maxpool_relu_backward_tile_row,
    pool_tile_row,
    relu_backward_tile_row,
)


@tjit
def winograd_conv_forward(first, last, x, u, bias, pad, th, tw, band, pooled, with_argmax, out, argmax):
    """Tasks ``first .. last - 1`` of the forward: x (N, C, H, W), U (16, C, FN) and bias
    (FN,) → out: pooled (N, FN, OH//2, OW//2), and argmax if ``with_argmax``, when
    ``pooled``; else (N, FN, OH, OW). A task per ``band`` tile rows of an image (a pooled
    output row is one tile row): N * ceil(TH / band) tasks."""
    c, w = nonnegative(x.shape[1]), x.shape[3]
    fn = nonnegative(u.shape[2])
    span = nonnegative((tw + 1) * c)
    bands = (th + band - 1) // band
    last_row = out.shape[2] if pooled else th  # tile rows that reach the output
    strip = np.empty((4, 2 * span), dtype=x.dtype)
    s = np.empty((4, 2 * span), dtype=x.dtype)
    line = np.empty((c, w + 1), dtype=x.dtype)
    pw = out.shape[3] if pooled else tw
    so = np.empty((8, pw * fn), dtype=x.dtype)
    best = np.empty((pw, fn), dtype=x.dtype)
    arg = np.empty((pw, fn) if with_argmax else (0, 0), dtype=np.int32)
    out_line = np.empty((2 * tw, fn), dtype=x.dtype)
    for task in range(first, last):
        b, k = split(task, bands)
        ty0 = k * band
        ty1 = min(ty0 + band, last_row)
        if ty1 <= ty0:
            continue
        rows = ty1 - ty0
        v = np.empty((16, rows * tw, c), dtype=x.dtype)
        m = np.empty((16, rows * tw, fn), dtype=x.dtype)
        input_tile_rows(x, b, ty0, ty1, pad, tw, strip, s, line, v.reshape(16, rows, tw * c), -ty0)
        for e in range(16):
            np.dot(v[e], u[e], m[e])
        m_rows = m.reshape(16, rows, tw * fn)
        for ty in range(ty0, ty1):
            if pooled:
                pool_tile_row(m_rows, ty - ty0, bias, so, best, arg, out, argmax, b, ty, with_argmax)
            else:
                bias_relu_tile_row(m_rows, ty - ty0, bias, so, out_line, out, b, ty)


@tjit
def winograd_conv_backward(
    first, last, x, u, dout, argmax, out, pad, th, tw, band, group, pooled, with_dx, du_parts, db_rows, dx
):
    """Tasks ``first .. last - 1`` of the backward of :func:`winograd_conv_forward`, from
    dout (its ``out``'s shape): dU's partial sums, one per group of ``group`` images (a
    task each), into ``du_parts`` (groups, 16, C, FN); each row of tiles' bias gradient
    into ``db_rows`` (N*TH, FN); dx (N, C, H, W) if ``with_dx``."""
    n, c, w = x.shape[0], nonnegative(x.shape[1]), x.shape[3]
    fn = nonnegative(u.shape[2])
    span = nonnegative((tw + 1) * c)
    bands = (th + band - 1) // band
    zero = x.dtype.type(0)
    for g in range(first, last):
        strip = np.empty((4, 2 * span), dtype=x.dtype)
        s = np.empty((4, 2 * span), dtype=x.dtype)
        line = np.empty((c, w + 1), dtype=x.dtype)
        acc = np.empty((4, 2 * span), dtype=x.dtype)
        s16 = np.empty((16, tw * c), dtype=x.dtype)
        grad = np.empty((tw, fn) if pooled else (2, 2 * tw * fn), dtype=x.dtype)
        arg = np.empty((tw, fn) if pooled else (0, 0), dtype=np.int32)
        sg = np.empty((4, 2 * tw * fn), dtype=x.dtype)
        part = np.empty((c, fn), dtype=x.dtype)
        for e in range(16):
            for i in range(c):
                for f in range(fn):
                    du_parts[g, e, i, f] = zero
        for b in range(g * group, min(n, g * group + group)):
            for r in range(4):
                for q in range(2 * span):
                    acc[r, q] = zero
            for k in range(bands - 1, -1, -1):
                ty0 = k * band
                ty1 = min(ty0 + band, th)
                rows = ty1 - ty0
                dm = np.empty((16, rows * tw, fn), dtype=x.dtype)
                dm_rows = dm.reshape(16, rows, tw * fn)
                for ty in range(ty0, ty1):
                    if pooled:
                        maxpool_relu_backward_tile_row(
                            dout, argmax, out, b, ty, tw, grad, arg, sg, db_rows, b * th + ty, dm_rows, ty - ty0
                        )
                    else:
                        relu_backward_tile_row(dout, out, b, ty, tw, grad, sg, db_rows, b * th + ty, dm_rows, ty - ty0)
                if with_dx:
                    dv = np.empty((16, rows * tw, c), dtype=x.dtype)
                    for e in range(16):
                        np.dot(dm[e], u[e].T, dv[e])
                    dv_rows = dv.reshape(16, rows, tw * c)
                    input_grad_tile_rows(dv_rows, -ty0, pad, ty0, ty1, th, tw, acc, s16, line, dx, b)
                v = np.empty((16, rows * tw, c), dtype=x.dtype)
                input_tile_rows(x, b, ty0, ty1, pad, tw, strip, s, line, v.reshape(16, rows, tw * c), -ty0)
                for e in range(16):
                    np.dot(v[e].T, dm[e], part)
                    for i in range(c):
                        for f in range(fn):
                            du_parts[g, e, i, f] += part[i, f]
