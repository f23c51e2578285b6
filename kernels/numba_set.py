"""The Numba kernel set: the interface as ``@njit`` loops, compiled once and cached.

Every kernel is one loop nest over its output, where the NumPy set makes several
whole-array passes through strided views and temporaries. Layouts and conventions:
see :mod:`gpucnn.kernels`. GEMMs stay on BLAS (NumPy ``matmul``), except for a
convolution with few taps per output, such as SimpleConvNet's first layer (25), which
is computed directly: there im2col's column matrix costs more than the GEMM saves. The
layout changes ``rows_to_nchw`` / ``nchw_to_rows`` stay NumPy's: its strided copy was
as fast as any loop tried here.

Values
------
Equal to the NumPy set bit for bit: ``im2col``, ``col2im``, max pooling forward and
backward (values and ``argmax``, NaN windows included), ``bias_relu_maxpool`` and
``bias_relu_maxpool_infer``, ``maxpool_relu_backward``, ``avgpool_backward`` and the
optimizer steps. Sums run in the NumPy set's order: where windows overlap, a backward
kernel visits them last to first, so that every pixel receives its taps in ascending
``(ky, kx)`` order starting from zero, as the NumPy set's loop over taps adds them; the
optimizer steps do the same float operations in the same dtype (Python scalars are cast
to the array's dtype first, as NumPy does). ``avgpool_forward`` sums a window row by row, which may differ from
NumPy's reduction order: equal to float rounding.

The ``conv_*`` operations compute a stride-1 convolution with at most
``direct_conv_max_taps`` taps per output directly (see "direct convolution" below):
equal to the composed operations to float rounding, since each output sums its taps in
(c, ky, kx) order where BLAS uses its own, and the weight and bias gradients' sums are
vectorized. Other convolutions take im2col and the GEMM, bit for bit the NumPy set's.

Threads
-------
Kernels over whole activations run ``parallel=True``, split over the batch (and rows),
with Numba's thread count (``NUMBA_NUM_THREADS`` or :func:`numba.set_num_threads`);
the optimizer steps run on one thread, where a parallel launch would cost more than the
work. Numba and BLAS never run at the same time: each kernel sits between two GEMMs.
What remains is how each pool waits when idle, measured on 2 cores with SimpleConvNet:

- Unless ``NUMBA_THREADING_LAYER`` says otherwise, Numba's own ``workqueue`` pool is
  used: its idle threads sleep. The default OpenMP layer (GNU libgomp) keeps them
  spinning after every parallel region, right when the next GEMM wants both cores: the
  GEMM of the layer after a kernel took 6.7 ms instead of 0.65 ms.
- OpenBLAS's idle worker spins (yielding) for 2**28 cycles, about 0.1 s, after each
  GEMM, so on 2 cores every kernel launched after a GEMM shares a core with it and
  runs at the speed of its slowed thread: the direct convolution of SimpleConvNet's
  inference took 8.3 ms after a GEMM against 4.5 ms without the spinning worker, and
  ``NUMBA_NUM_THREADS=1`` did no better (8.2 ms). So when this module loads, OpenBLAS
  is told to put idle workers to sleep at once, as ``OPENBLAS_THREAD_TIMEOUT=4`` would
  had it been set before NumPy loaded OpenBLAS (see :func:`_let_openblas_workers_sleep`):
  inference at batch 100 went from 9.9 to 6.3 ms a step, training from 26.8 to 23.3 ms
  (medians of 4 alternating processes, 2-core AMD EPYC). An ``OPENBLAS_THREAD_TIMEOUT``
  set by the user is left as it is. BLAS's thread count is left to the user
  (``OPENBLAS_NUM_THREADS``, threadpoolctl), since the GEMMs need both cores more than
  the kernels do.

Parallel launches are serialised by a lock: the workqueue pool must not be entered by
two threads at once.

Compilation
-----------
``cache=True``: the machine code is written to Numba's cache on the first call with
a given dtype and loaded from it by later processes. When this package's directory is
read-only (a system-wide install) and ``NUMBA_CACHE_DIR`` is unset, the cache goes to
``$XDG_CACHE_HOME/gpucnn/numba`` (``~/.cache/gpucnn/numba``). Inputs are made
C-contiguous first, so each kernel compiles once per dtype.
"""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path

import numba
import numpy as np
from numba import prange

from . import check_pool_pad, output_hw
from .numpy_set import NumpyKernels


def _use_per_user_cache_if_needed() -> None:
    """Point Numba's cache at a per-user directory when it cannot write beside this file."""
    if os.environ.get("NUMBA_CACHE_DIR") or os.access(Path(__file__).parent, os.W_OK):
        return
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpucnn" / "numba"
    cache.mkdir(parents=True, exist_ok=True)
    os.environ["NUMBA_CACHE_DIR"] = str(cache)  # for child processes
    numba.config.CACHE_DIR = str(cache)  # Numba read the environment when it was imported


def _prefer_workqueue_threads() -> None:
    """Numba's own thread pool unless the user picked a threading layer (see Threads above)."""
    if "NUMBA_THREADING_LAYER" not in os.environ and numba.config.THREADING_LAYER == "default":
        numba.config.THREADING_LAYER = "workqueue"


def _let_openblas_workers_sleep() -> None:
    """Make idle OpenBLAS workers sleep at once instead of spinning (see Threads above).

    OpenBLAS reads ``OPENBLAS_THREAD_TIMEOUT`` when it loads, before this module can set
    it; it exports ``openblas_read_env`` to read the environment again and
    ``blas_thread_shutdown_`` to stop its workers, which start again with the new setting
    at the next GEMM. Done once, at import, when no GEMM can be running. The variable is
    set only for the reading, so child processes inherit the environment unchanged.
    Without threadpoolctl (to find the library), with another BLAS, or when the user set
    the variable, nothing is done.
    """
    if "OPENBLAS_THREAD_TIMEOUT" in os.environ:
        return
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return
    for pool in threadpool_info():
        if pool.get("internal_api") != "openblas":
            continue
        try:
            lib = ctypes.CDLL(pool["filepath"])
            read_env, shutdown = lib.openblas_read_env, lib.blas_thread_shutdown_
        except (OSError, AttributeError):  # an OpenBLAS without these entry points
            continue
        os.environ["OPENBLAS_THREAD_TIMEOUT"] = "4"  # 2**4 cycles: sleep at once
        try:
            read_env()
        finally:
            del os.environ["OPENBLAS_THREAD_TIMEOUT"]
        shutdown()


# All three must happen before the first kernel is compiled or launched.
_use_per_user_cache_if_needed()
_prefer_workqueue_threads()
_let_openblas_workers_sleep()

# The workqueue layer aborts the process when two threads launch parallel kernels at once;
# this lock makes concurrent callers wait their turn instead.
_LAUNCH = threading.Lock()

# error_model="numpy": a division by zero gives inf or nan, as in NumPy, instead of raising
# ZeroDivisionError; the check Python semantics need would also keep loops from vectorizing.
jit = numba.njit(cache=True, fastmath=False, error_model="numpy")
pjit = numba.njit(cache=True, fastmath=False, error_model="numpy", parallel=True)
# The smallest helpers are inlined into their callers, the hot loops of the direct
# convolution. Its per-filter helpers are called instead: the same speed (a training step
# of SimpleConvNet 12.6-14.4 ms as calls, 13.1-14.7 ms inlined, alternating processes),
# and the first compilation of its two parallel kernels took 24 s instead of 33 s.
ijit = numba.njit(cache=True, fastmath=False, error_model="numpy", inline="always")


# -- convolution ------------------------------------------------------------------
# Hot loops hold no integer division (tens of cycles each): indices are stepped instead.


@jit
def _split(i, m):
    """(i // m, i % m) in signed integers (a prange index is unsigned, and unsigned mixed
    with signed arithmetic would give floats)."""
    t = np.int64(i)
    return t // m, t % m


@pjit
def _im2col(x, kh, kw, stride, pad, oh, ow, col):
    """x (N, C, H, W) → col (N*OH*OW, C*KH*KW); one task per output row (n, oh)."""
    n, c, h, w = x.shape
    for i in prange(n * oh):
        b, y = _split(i, oh)
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


@pjit
def _col2im(col, kh, kw, stride, pad, oh, ow, dx):
    """Adjoint of _im2col; one task per plane (n, c).

    Windows are visited last to first, so that every pixel receives its taps in
    ascending (ky, kx) order, the order in which the NumPy set adds them.
    """
    n, c, h, w = dx.shape
    for i in prange(n * c):
        b, ch = _split(i, c)
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
def _tap_ranges(length, pooled, k, stride, pad):
    """For each window column kx < k along an axis of ``length`` cells pooled to ``pooled``
    windows: the windows ``lo[kx] <= p < hi[kx]`` whose tap kx falls inside the axis."""
    lo = np.empty(k, dtype=np.int64)
    hi = np.empty(k, dtype=np.int64)
    for kx in range(k):
        lo[kx] = (pad - kx + stride - 1) // stride if pad > kx else 0
        hi[kx] = min(pooled, (length - 1 + pad - kx) // stride + 1)
    return lo, hi


@pjit
def _maxpool(x, kh, kw, stride, pad, out, argmax):
    """Window maximum and the first argmax; pad cells count as -inf, as in NumPy's set.

    One task per output row (n, c, oh). The row's running maximum is updated tap by
    tap with the ``max`` forms of :func:`_bias_relu_maxpool`, which vectorize.
    """
    n, c, h, w = x.shape
    oh, ow = out.shape[2], out.shape[3]
    xo_lo, xo_hi = _tap_ranges(w, ow, kw, stride, pad)
    for i in prange(n * c * oh):
        plane, y = _split(i, oh)
        b, ch = _split(plane, c)
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


@pjit
def _maxpool_backward(dout, argmax, kh, kw, stride, pad, dx):
    """Each window adds its ``dout`` to the pixel its argmax names; windows are visited
    last to first, which is the NumPy set's order of addition (ascending tap index)."""
    n, c, h, w = dx.shape
    oh, ow = dout.shape[2], dout.shape[3]
    for i in prange(n * c):
        b, ch = _split(i, c)
        dx[b, ch] = 0
        for y in range(oh - 1, -1, -1):
            for xo in range(ow - 1, -1, -1):
                k = argmax[b, ch, y, xo]
                ky = k // kw  # once per window: cheap next to the pixels it touches
                iy = y * stride - pad + ky
                ix = xo * stride - pad + k - ky * kw
                if 0 <= iy < h and 0 <= ix < w:
                    dx[b, ch, iy, ix] += dout[b, ch, y, xo]


@pjit
def _avgpool(x, kh, kw, stride, pad, out):
    """Window sum (row by row, pad cells as zeros) divided by KH*KW."""
    n, c, h, w = x.shape
    oh, ow = out.shape[2], out.shape[3]
    count = x.dtype.type(kh * kw)
    for i in prange(n * c):
        b, ch = _split(i, c)
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


@pjit
def _avgpool_backward(share, kh, kw, stride, pad, dx):
    """Each window adds ``share = dout / (KH*KW)`` to its pixels, last window first."""
    n, c, h, w = dx.shape
    oh, ow = share.shape[2], share.shape[3]
    for i in prange(n * c):
        b, ch = _split(i, c)
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


# -- fused operations -----------------------------------------------------------------


@pjit
def _bias_relu_maxpool(rows, bias, oh, ow, kh, kw, stride, pad, out, argmax, with_argmax):
    """rows (N*OH*OW, FN) + bias → max pooling (pad = -inf) → ReLU; out, and argmax if
    ``with_argmax`` (inference skips it), both (N, FN, PH, PW).

    One task per pooled row (n, py). The running maximum of the row lives in a
    (PW, FN) scratch so that the filter axis, contiguous in ``rows``, is the inner
    loop; both are updated with ``max`` forms, which LLVM turns into vector code (a
    conditional store stays scalar).
    """
    n, fn, ph, pw = out.shape
    for i in prange(n * ph):
        b, py = _split(i, ph)
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


# -- direct convolution (stride 1, few taps) -------------------------------------------
# A convolution with few taps per output (C*KH*KW: 25 for SimpleConvNet's first layer)
# makes im2col's column matrix KH*KW times the input and gives the GEMM little work per
# byte; computed directly, one image and two filters at a time, everything stays in the
# L1 cache.
#
# Polyphase layout. The max pooling that follows reads the convolution's output at its
# stride S, which no loop vectorizes; so the output of a filter is computed as S*S phase
# planes, plane (oy, ox) holding the outputs at (m*S + oy, n*S + ox) in HQ rows of pitch
# WQ. Each pooling tap then reads one phase plane at unit stride, shifted by whole rows
# and columns, and the gradient goes back the same way. The rows and columns past the
# output are computed and never read (SimpleConvNet: 800 values a filter for 576 outputs), and
# pooled windows are laid out at the same pitch WQ while they are being computed.
#
# For the convolution, each image is first laid out as S**4 phase copies per channel:
# copy (a, b, oy, ox) holds xpad[c, m*S + oy + a, n*S + ox + b] at (m, n). A tap
# (fy, fx) = (S*dy + a, S*dx + b) of output phase (oy, ox) reads copy (a, b, oy, ox)
# shifted by (dy, dx); the S*S copies of one (a, b) follow each other at the phase
# planes' stride PS, so one tap is one contiguous multiply-add over all phase planes at
# once, ``span`` values (S*S*PS rounded up to a multiple of 32, the vectorized loop's
# step, so that no scalar remainder loop runs). Two filters share each load of a tap.
#
# Measured on SimpleConvNet's first layer, batch 100 of Fashion-MNIST, 2 threads on a
# 2-core AMD EPYC (medians of 15 rounds in each of 3 alternating processes), against
# the full-width layout that came before, one output plane at the input's row pitch
# whose pooling read every S-th value: forward with argmax 3.4-4.0 ms against 5.5-6.1,
# inference 3.0-3.2 against 4.1-4.3, weight gradient 3.1-3.2 against 4.0-4.3.
#
# The helpers take indices, not views: a view's reference count is an atomic that all
# threads share.

# Step of the vectorized loops (4 AVX vectors of 8 float32): loop lengths are rounded up to it.
_RUN = 32


@jit
def _phase_geometry(h, w, fh, fw, pad, s, pw):
    """(HQ, WQ, PS, span) of the polyphase layout for an H x W image, an FH x FW filter,
    padding ``pad``, pooling stride ``s`` and PW pooled columns: HQ rows of pitch WQ
    hold every phase's outputs, every padded pixel that a tap reads and a row of
    windows, PS = HQ*WQ values, and ``span`` covers the S*S phase planes."""
    hp, wp = h + 2 * pad, w + 2 * pad
    oh, ow = hp - fh + 1, wp - fw + 1
    hq = max((oh + s - 1) // s + (fh - 1) // s, (hp + s - 1) // s)
    wq = max((ow + s - 1) // s + (fw - 1) // s, (wp + s - 1) // s, pw)
    ps = hq * wq
    span = (s * s * ps + _RUN - 1) // _RUN * _RUN
    return hq, wq, ps, span


@jit
def _tap_offsets(c, fh, fw, s, wq, ps):
    """Where tap t = (c, fy, fx) starts reading the phase copies, for every phase at once."""
    offsets = np.empty(c * fh * fw, dtype=np.uint64)
    t = 0
    for ch in range(c):
        for fy in range(fh):
            for fx in range(fw):
                copy = ((ch * s + fy % s) * s + fx % s) * s * s
                offsets[t] = copy * ps + (fy // s) * wq + fx // s
                t += 1
    return offsets


@jit
def _phase_buffers(c, s, hq, wq, ps, span, dtype):
    """Empty buffers for :func:`_phase_copies`: the phases xq and the copies xs. The tail
    of xs past the copies, read by loops that run ``span`` values from a tap's offset, is
    zeroed once: the weight gradient multiplies it by zeros of ``g``, which a NaN there
    would turn into NaN."""
    xq = np.empty(c * s * s * (hq + 2) * wq, dtype=dtype)
    copies = c * s**4 * ps
    xs = np.empty(copies + span, dtype=dtype)
    xs[copies:] = 0
    return xq, xs


@jit
def _phase_copies(x, b, pad, s, hq, wq, ps, xq, xs):
    """xs (C*S**4*PS values, then a zero tail) = the phase copies of image ``b`` of x.

    The padded image is first split into its S*S phases xq[c, ry, rx] ((HQ + 2) rows of
    pitch WQ: xpad[c, i*S + ry, j*S + rx] at (i, j)); copy (a, b, oy, ox) is then phase
    ((oy + a) % S, (ox + b) % S) from row (oy + a) // S and column (ox + b) // S on, PS
    contiguous values (where a row runs past WQ it reads the next one: only outputs
    past the image use those values)."""
    _, c, h, w = x.shape
    qs = (hq + 2) * wq
    xq[:] = 0
    for ch in range(c):
        for y in range(h):
            yy = y + pad
            row = (ch * s + yy % s) * s * qs + yy // s * wq
            for rx in range(s):  # columns i of phase rx: (i + pad) % S == rx
                i0 = (rx - pad) % s
                dst = row + rx * qs + (i0 + pad) // s
                for k in range((w - i0 + s - 1) // s):
                    xq[dst + k] = x[b, ch, y, i0 + k * s]
    n = np.uint64(ps)
    for ch in range(c):
        for a in range(s):
            for bb in range(s):
                for oy in range(s):
                    for ox in range(s):
                        dst = np.uint64((((ch * s + a) * s + bb) * s * s + oy * s + ox) * ps)
                        phase = (ch * s + (oy + a) % s) * s + (ox + bb) % s
                        src = np.uint64(phase * qs + (oy + a) // s * wq + (ox + bb) // s)
                        for u in range(n):
                            xs[dst + u] = xq[src + u]


@ijit
def _add_taps(acc, n, xs, offsets, weights, f0, f1, t):
    """acc[u] += taps t..t+3 of filter f0, acc[n + u] the same of filter f1, added in tap
    order; unsigned indices skip the negative-index check, which would keep the loop
    from vectorizing."""
    o0, o1, o2, o3 = offsets[t], offsets[t + 1], offsets[t + 2], offsets[t + 3]
    w0, w1, w2, w3 = weights[f0, t], weights[f0, t + 1], weights[f0, t + 2], weights[f0, t + 3]
    v0, v1, v2, v3 = weights[f1, t], weights[f1, t + 1], weights[f1, t + 2], weights[f1, t + 3]
    for u in range(n):
        s0, s1, s2, s3 = xs[o0 + u], xs[o1 + u], xs[o2 + u], xs[o3 + u]
        acc[u] = acc[u] + w0 * s0 + w1 * s1 + w2 * s2 + w3 * s3
        acc[n + u] = acc[n + u] + v0 * s0 + v1 * s1 + v2 * s2 + v3 * s3


@ijit
def _add_tap(acc, n, xs, offsets, weights, f0, f1, t):
    """:func:`_add_taps` for the one tap t."""
    o0, w0, v0 = offsets[t], weights[f0, t], weights[f1, t]
    for u in range(n):
        s0 = xs[o0 + u]
        acc[u] += w0 * s0
        acc[n + u] += v0 * s0


@jit
def _conv_pair(xs, offsets, span, weights, f0, f1, acc):
    """acc[:span] and acc[span:2*span] = the phase planes of filters f0 and f1, each
    output summing its taps in (c, fy, fx) order from zero."""
    n = np.uint64(span)
    acc[: 2 * span] = 0
    t = 0
    while t + 4 <= offsets.shape[0]:
        _add_taps(acc, n, xs, offsets, weights, f0, f1, t)
        t += 4
    while t < offsets.shape[0]:
        _add_tap(acc, n, xs, offsets, weights, f0, f1, t)
        t += 1


@jit
def _pool_runs(oh, ow, ph, pw, pool, s, wq, ps):
    """The windows that each pooling tap reads inside the convolution's output, in tap
    order, as runs of windows (pitch WQ) one row apart: rows of (tap, first window,
    length, shift from a window's index to the phase-plane value it reads). A tap that
    reads a whole row of windows reads all its rows in one run, the columns past PW
    included."""
    kh, kw, _, pad = pool
    (y_lo, y_hi), (x_lo, x_hi) = _tap_ranges(oh, ph, kh, s, pad), _tap_ranges(ow, pw, kw, s, pad)
    runs = np.empty((kh * kw * ph, 4), dtype=np.int64)
    count = 0
    for ky in range(kh):
        for kx in range(kw):
            oy, ox = (ky - pad) % s, (kx - pad) % s
            shift = (oy * s + ox) * ps + (ky - pad - oy) // s * wq + (kx - pad - ox) // s
            y0, y1, x0, x1 = y_lo[ky], y_hi[ky], x_lo[kx], x_hi[kx]
            if y1 <= y0 or x1 <= x0:
                continue
            if x0 == 0 and x1 == pw:  # whole rows of windows: one run
                first, length, rows = y0 * wq, (y1 - y0) * wq, 1
            else:
                first, length, rows = y0 * wq + x0, x1 - x0, y1 - y0
            for r in range(rows):
                runs[count, 0] = ky * kw + kx
                runs[count, 1] = first + r * wq
                runs[count, 2] = length
                runs[count, 3] = shift
                count += 1
    return runs[:count]


@jit
def _pool_phases(acc, a0, bias, runs, best, arg, with_argmax):
    """best (and arg) at pitch WQ = max pooling of the phase planes at acc[a0:], + bias
    before the maximum when ``with_argmax`` (the argmax is the first maximum of the
    biased values, as from GEMM rows), after it otherwise (``max(a + b, c + b) ==
    max(a, c) + b`` in floating point too: rounding is monotonic). Pad cells are -inf."""
    best[:] = -np.inf
    arg[:] = 0
    for r in range(runs.shape[0]):
        k = np.int32(runs[r, 0])
        lo, n, src = np.uint64(runs[r, 1]), np.uint64(runs[r, 2]), np.uint64(a0 + runs[r, 3] + runs[r, 1])
        if with_argmax:
            for u in range(n):
                v = acc[src + u] + bias
                top = best[lo + u]
                best[lo + u] = np.maximum(top, v)
                arg[lo + u] = k if v > top else arg[lo + u]
        else:
            for u in range(n):
                best[lo + u] = np.maximum(best[lo + u], acc[src + u])


@jit
def _last_nan_phase_tap(acc, a0, bias, runs, window):
    """The last tap that reads a NaN (bias added) for ``window`` (pitch WQ)."""
    last = 0
    for r in range(runs.shape[0]):
        if runs[r, 1] <= window < runs[r, 1] + runs[r, 2]:
            v = acc[a0 + runs[r, 3] + window] + bias
            if v != v:
                last = runs[r, 0]
    return last


@jit
def _store_pooled(acc, a0, bias, runs, wq, pw, best, arg, out, argmax, plane, with_argmax):
    """out[plane] (and argmax[plane]), PH*PW = ReLU of the pooled ``best`` at pitch WQ."""
    nan = False
    for py in range(out.shape[1] // pw):
        for px in range(pw):
            v = best[py * wq + px]
            if not with_argmax:
                v = v + bias
            out[plane, py * pw + px] = 0 if v < 0 else v
            nan |= v != v
        if with_argmax:
            for px in range(pw):
                argmax[plane, py * pw + px] = arg[py * wq + px]
    if not (with_argmax and nan):
        return
    for j in range(out.shape[1]):  # np.maximum let a NaN through: the last NaN wins its window
        window = j // pw * wq + j % pw
        if best[window] != best[window]:
            argmax[plane, j] = _last_nan_phase_tap(acc, a0, bias, runs, window)


@pjit
def _conv_bias_relu_maxpool(x, w, bias, pad, oh, ow, kh, kw, stride, ppad, out, argmax, with_argmax):
    """x (N, C, H, W) * w (FN, C, FH, FW), stride 1 → + bias → max pooling (KH, KW,
    stride, ppad) → ReLU: out, and argmax if ``with_argmax``, (N, FN, PH, PW). One task
    per image."""
    n, c, h, wd = x.shape
    fn, fh, fw = w.shape[0], w.shape[2], w.shape[3]
    ph, pw = out.shape[2], out.shape[3]
    s = stride
    hq, wq, ps, span = _phase_geometry(h, wd, fh, fw, pad, s, pw)
    offsets = _tap_offsets(c, fh, fw, s, wq, ps)
    weights = w.reshape(fn, c * fh * fw)
    runs = _pool_runs(oh, ow, ph, pw, (kh, kw, s, ppad), s, wq, ps)
    # (plane, window) views: two indices per store instead of four
    planes_out = out.reshape(n * fn, ph * pw)
    planes_argmax = argmax.reshape(argmax.shape[0] * argmax.shape[1], argmax.shape[2] * argmax.shape[3])
    for b in prange(n):
        xq, xs = _phase_buffers(c, s, hq, wq, ps, span, x.dtype)
        acc = np.empty(2 * span + ps, dtype=x.dtype)
        best = np.empty(ph * wq, dtype=x.dtype)
        arg = np.empty(ph * wq, dtype=np.int32)
        _phase_copies(x, b, pad, s, hq, wq, ps, xq, xs)
        for f0 in range(0, fn, 2):
            f1 = min(f0 + 1, fn - 1)  # an odd last filter is computed twice, kept once
            _conv_pair(xs, offsets, span, weights, f0, f1, acc)
            for f in range(f0, f1 + 1):
                a0, plane = (f - f0) * span, b * fn + f
                _pool_phases(acc, a0, bias[f], runs, best, arg, with_argmax)
                _store_pooled(acc, a0, bias[f], runs, wq, pw, best, arg, planes_out, planes_argmax, plane, with_argmax)


@numba.njit(cache=True, fastmath={"reassoc"}, error_model="numpy")
def _add_weight_grads(g, span, xs, offsets, dw, q, f0, f1):
    """dw[q, f] += sum(g_f * the phase copies read by tap t), for every tap t, of filters
    f0 (phase planes g[:span]) and f1 (g[span:2*span]; skipped when f1 == f0).

    The one place where LLVM may reorder a sum ("reassoc"), as BLAS does in its dot
    products: kept in order, the sum cannot be vectorized and ran 13 times slower. The
    order is fixed by the compiled code, so results repeat. Not inlined: inlined code is
    compiled with its caller's flags."""
    n = np.uint64(span)
    zero = g.dtype.type(0)
    t = 0
    while t + 4 <= offsets.shape[0]:  # four taps of two filters share their loads
        o0, o1, o2, o3 = offsets[t], offsets[t + 1], offsets[t + 2], offsets[t + 3]
        a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = zero
        for u in range(n):
            s0, s1, s2, s3 = xs[o0 + u], xs[o1 + u], xs[o2 + u], xs[o3 + u]
            g0, g1 = g[u], g[n + u]
            a0 += g0 * s0
            a1 += g0 * s1
            a2 += g0 * s2
            a3 += g0 * s3
            b0 += g1 * s0
            b1 += g1 * s1
            b2 += g1 * s2
            b3 += g1 * s3
        dw[q, f0, t] += a0
        dw[q, f0, t + 1] += a1
        dw[q, f0, t + 2] += a2
        dw[q, f0, t + 3] += a3
        if f1 != f0:
            dw[q, f1, t] += b0
            dw[q, f1, t + 1] += b1
            dw[q, f1, t + 2] += b2
            dw[q, f1, t + 3] += b3
        t += 4
    while t < offsets.shape[0]:
        o0 = offsets[t]
        a0 = b0 = zero
        for u in range(n):
            s0 = xs[o0 + u]
            a0 += g[u] * s0
            b0 += g[n + u] * s0
        dw[q, f0, t] += a0
        if f1 != f0:
            dw[q, f1, t] += b0
        t += 1


@numba.njit(cache=True, fastmath={"reassoc"}, error_model="numpy")
def _total(a):
    """sum(a), vectorized (see :func:`_add_weight_grads`)."""
    total = a.dtype.type(0)
    for i in range(a.shape[0]):
        total += a[i]
    return total


@jit
def _scatter_phases(gw, aw, g, a0, runs):
    """g[a0:] (phase planes) += each window's gradient gw at the tap its argmax aw names
    (both at pitch WQ, zero past PW)."""
    zero = g.dtype.type(0)
    for r in range(runs.shape[0]):
        k = np.int32(runs[r, 0])
        lo, n, dst = np.uint64(runs[r, 1]), np.uint64(runs[r, 2]), np.uint64(a0 + runs[r, 3] + runs[r, 1])
        for u in range(n):
            d = gw[lo + u]
            g[dst + u] += d if aw[lo + u] == k else zero


@jit
def _window_grads(dout, out, argmax, row, pw, wq, gw, aw):
    """gw, aw (pitch WQ) = the gradient of each window of one plane whose output passed
    the ReLU (else 0), and its argmax; the plane's windows start at row ``row`` of the
    flat (N*FN*PH, PW) arrays."""
    zero = gw.dtype.type(0)
    n = np.uint64(pw)
    for py in range(gw.shape[0] // wq):
        src, dst = np.uint64((row + py) * pw), np.uint64(py * wq)
        for u in range(n):
            d = dout[src + u]  # loaded before the test: a select, not a branch
            gw[dst + u] = d if out[src + u] > 0 else zero
            aw[dst + u] = argmax[src + u]


@pjit
def _conv_maxpool_relu_backward_params(dout, argmax, out, x, fh, fw, pad, oh, ow, kh, kw, stride, ppad, dw, db, chunk):
    """Per chunk of ``chunk`` images q: adds into dw[q] (FN, C*FH*FW) and db[q] (FN,),
    zeroed by the caller, the weight and bias gradients of
    :func:`_conv_bias_relu_maxpool`. For each image and pair of filters, the gradient
    of the convolution's output is laid out as phase planes ``g`` (each window whose
    output passed the ReLU adds its ``dout`` where its argmax points); then each
    weight's gradient is one dot product of ``g`` with the phase copies that its tap
    reads."""
    n, c, h, wd = x.shape
    fn, ph, pw = dout.shape[1], dout.shape[2], dout.shape[3]
    s = stride
    hq, wq, ps, span = _phase_geometry(h, wd, fh, fw, pad, s, pw)
    offsets = _tap_offsets(c, fh, fw, s, wq, ps)
    runs = _pool_runs(oh, ow, ph, pw, (kh, kw, s, ppad), s, wq, ps)
    windows_dout, windows_out, windows_argmax = dout.reshape(-1), out.reshape(-1), argmax.reshape(-1)
    for q in prange(dw.shape[0]):
        xq, xs = _phase_buffers(c, s, hq, wq, ps, span, x.dtype)
        g = np.empty(2 * span + ps, dtype=dout.dtype)
        gw = np.zeros(ph * wq, dtype=dout.dtype)  # columns past PW stay zero
        aw = np.zeros(ph * wq, dtype=np.int32)
        for b in range(q * chunk, min(n, (q + 1) * chunk)):
            _phase_copies(x, b, pad, s, hq, wq, ps, xq, xs)
            for f0 in range(0, fn, 2):
                f1 = min(f0 + 1, fn - 1)
                g[:] = 0
                for f in range(f0, f1 + 1):
                    _window_grads(windows_dout, windows_out, windows_argmax, (b * fn + f) * ph, pw, wq, gw, aw)
                    db[q, f] += _total(gw)
                    _scatter_phases(gw, aw, g, (f - f0) * span, runs)
                _add_weight_grads(g, span, xs, offsets, dw, q, f0, f1)


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


@pjit
def _maxpool_relu_backward_disjoint(dout, argmax, out, kh, kw, stride, pad, oh, ow, drows):
    """drows (N*OH*OW, FN) when windows do not overlap: each conv output pixel takes the
    ``dout`` of its window if the window's argmax names it and its output passed the
    ReLU, else 0. One task per image; the image's window values are first laid out
    (window, FN) so that the inner loop runs along contiguous filters."""
    n, fn, ph, pw = dout.shape
    win_y, tap_y = _window_of(oh, ph, kh, stride, pad)
    win_x, tap_x = _window_of(ow, pw, kw, stride, pad)
    zero = drows.dtype.type(0)
    for b in prange(n):
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


@pjit
def _maxpool_relu_backward(dout, argmax, out, kh, kw, stride, pad, oh, ow, drows):
    """drows (N*OH*OW, FN) for overlapping windows: each window whose pooled output
    passed the ReLU adds its ``dout`` to the row its argmax names; one task per image,
    windows last to first (the NumPy set's order of addition)."""
    n, fn, ph, pw = dout.shape
    rows_per_image = oh * ow
    for b in prange(n):
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


# -- optimizer steps: one pass over flat, contiguous arrays --------------------------
# The scalars arrive cast to the arrays' dtype, so each step does NumPy's float operations.


@jit
def _sgd(param, grad, lr):
    for i in range(param.size):
        param[i] -= lr * grad[i]


@jit
def _momentum(param, grad, velocity, lr, momentum):
    for i in range(param.size):
        velocity[i] = velocity[i] * momentum - lr * grad[i]
        param[i] += velocity[i]


@jit
def _adagrad(param, grad, h, lr, eps):
    for i in range(param.size):
        g = grad[i]
        h[i] += g * g
        param[i] -= lr * g / (np.sqrt(h[i]) + eps)


@jit
def _rmsprop(param, grad, h, lr, decay, one_minus_decay, eps):
    for i in range(param.size):
        g = grad[i]
        h[i] = h[i] * decay + one_minus_decay * g * g
        param[i] -= lr * g / (np.sqrt(h[i]) + eps)


@jit
def _adam(param, grad, m, v, lr_t, one_minus_beta1, one_minus_beta2, eps):
    for i in range(param.size):
        g = grad[i]
        m[i] += one_minus_beta1 * (g - m[i])
        v[i] += one_minus_beta2 * (g * g - v[i])
        param[i] -= lr_t * m[i] / (np.sqrt(v[i]) + eps)


# -- the kernel set -------------------------------------------------------------------


def _c(a: np.ndarray) -> np.ndarray:
    """C-contiguous (a no-op for the arrays layers pass), so each kernel compiles once per dtype."""
    return np.ascontiguousarray(a)


def _launch(kernel, *args) -> None:
    """Run a parallel kernel, one caller at a time (see ``_LAUNCH``)."""
    with _LAUNCH:
        kernel(*args)


def _flat(*arrays: np.ndarray) -> tuple[np.ndarray, ...] | None:
    """1-D views of C-contiguous arrays of one shape and dtype, or None (then NumPy steps)."""
    first = arrays[0]
    for a in arrays:
        if not (
            isinstance(a, np.ndarray)
            and a.flags.c_contiguous
            and a.shape == first.shape
            and a.dtype == first.dtype
            and a.dtype.kind == "f"
        ):
            return None
    return tuple(a.reshape(-1) for a in arrays)


class NumbaKernels(NumpyKernels):
    """Kernel set for NumPy arrays, with the hot loops compiled by Numba."""

    name = "numba"

    # -- convolution -----------------------------------------------------------

    def im2col(self, x, kh, kw, stride=1, pad=0):
        n, c, h, w = x.shape
        oh, ow = output_hw(h, w, kh, kw, stride, pad)
        col = np.empty((n * oh * ow, c * kh * kw), dtype=x.dtype)
        _launch(_im2col, _c(x), kh, kw, stride, pad, oh, ow, col)
        return col

    def col2im(self, col, x_shape, kh, kw, stride=1, pad=0):
        n, c, h, w = x_shape
        oh, ow = output_hw(h, w, kh, kw, stride, pad)
        dx = np.empty((n, c, h, w), dtype=col.dtype)
        _launch(_col2im, _c(col), kh, kw, stride, pad, oh, ow, dx)
        return dx

    # -- pooling ---------------------------------------------------------------

    def maxpool_forward(self, x, kh, kw, stride, pad=0):
        check_pool_pad(kh, kw, pad)
        n, c, h, w = x.shape
        oh, ow = output_hw(h, w, kh, kw, stride, pad)
        out = np.empty((n, c, oh, ow), dtype=x.dtype)
        argmax = np.empty((n, c, oh, ow), dtype=np.int32)
        _launch(_maxpool, _c(x), kh, kw, stride, pad, out, argmax)
        return out, argmax

    def maxpool_backward(self, dout, argmax, x_shape, kh, kw, stride, pad=0):
        dx = np.empty(x_shape, dtype=dout.dtype)
        _launch(_maxpool_backward, _c(dout), _c(argmax), kh, kw, stride, pad, dx)
        return dx

    def avgpool_forward(self, x, kh, kw, stride, pad=0):
        check_pool_pad(kh, kw, pad)
        n, c, h, w = x.shape
        oh, ow = output_hw(h, w, kh, kw, stride, pad)
        out = np.empty((n, c, oh, ow), dtype=x.dtype)
        _launch(_avgpool, _c(x), kh, kw, stride, pad, out)
        return out

    def avgpool_backward(self, dout, x_shape, kh, kw, stride, pad=0):
        share = dout / dout.dtype.type(kh * kw)
        dx = np.empty(x_shape, dtype=dout.dtype)
        _launch(_avgpool_backward, _c(share), kh, kw, stride, pad, dx)
        return dx

    # -- fused operations ----------------------------------------------------------

    def _pool_rows(self, rows, b, n, oh, ow, kh, kw, stride, pad, with_argmax):
        check_pool_pad(kh, kw, pad)
        fn = rows.shape[1]
        ph, pw = output_hw(oh, ow, kh, kw, stride, pad)
        out = np.empty((n, fn, ph, pw), dtype=rows.dtype)
        argmax = np.empty((n, fn, ph, pw) if with_argmax else (0, 0, 0, 0), dtype=np.int32)
        bias = _c(b).astype(rows.dtype, copy=False)
        _launch(_bias_relu_maxpool, _c(rows), bias, oh, ow, kh, kw, stride, pad, out, argmax, with_argmax)
        return out, argmax

    def bias_relu_maxpool(self, rows, b, n, oh, ow, kh, kw, stride, pad=0):
        return self._pool_rows(rows, b, n, oh, ow, kh, kw, stride, pad, True)

    def bias_relu_maxpool_infer(self, rows, b, n, oh, ow, kh, kw, stride, pad=0):
        return self._pool_rows(rows, b, n, oh, ow, kh, kw, stride, pad, False)[0]

    # A direct convolution when each output sums at most this many taps (C*KH*KW) and the
    # stride is 1; im2col and a GEMM otherwise. Measured with SimpleConvNet's shape (28x28
    # inputs, batch 100), training step and inference: direct was faster at 25 to 75 taps
    # with 30 filters (16.0 against 19.4 ms a training step at 25 taps), and still at 576
    # taps with 30 filters, but slower at 288 taps with 64 filters (158 against 101 ms),
    # where the GEMM has enough work. 32 keeps to the cases measured faster.
    direct_conv_max_taps = 32

    def prefers_direct_conv(self, c, fh, fw, stride):
        return stride == 1 and c * fh * fw <= self.direct_conv_max_taps

    def _conv_pool(self, x, w, b, pad, kh, kw, pool_stride, pool_pad, with_argmax):
        check_pool_pad(kh, kw, pool_pad)
        n, _, h, wd = x.shape
        fn, _, fh, fw = w.shape
        oh, ow = output_hw(h, wd, fh, fw, 1, pad)
        ph, pw = output_hw(oh, ow, kh, kw, pool_stride, pool_pad)
        out = np.empty((n, fn, ph, pw), dtype=x.dtype)
        argmax = np.empty((n, fn, ph, pw) if with_argmax else (0, 0, 0, 0), dtype=np.int32)
        weights, bias = (_c(a).astype(x.dtype, copy=False) for a in (w, b))
        args = (_c(x), weights, bias, pad, oh, ow, kh, kw, pool_stride, pool_pad, out, argmax, with_argmax)
        _launch(_conv_bias_relu_maxpool, *args)
        return out, argmax

    def conv_bias_relu_maxpool(self, x, w, b, stride, pad, kh, kw, pool_stride, pool_pad=0):
        if not self.prefers_direct_conv(w.shape[1], w.shape[2], w.shape[3], stride):
            return super().conv_bias_relu_maxpool(x, w, b, stride, pad, kh, kw, pool_stride, pool_pad)
        return self._conv_pool(x, w, b, pad, kh, kw, pool_stride, pool_pad, True)

    def conv_bias_relu_maxpool_infer(self, x, w, b, stride, pad, kh, kw, pool_stride, pool_pad=0):
        if not self.prefers_direct_conv(w.shape[1], w.shape[2], w.shape[3], stride):
            return super().conv_bias_relu_maxpool_infer(x, w, b, stride, pad, kh, kw, pool_stride, pool_pad)
        return self._conv_pool(x, w, b, pad, kh, kw, pool_stride, pool_pad, False)[0]

    # Images per partial sum of the direct weight gradient: the partial sums, added in
    # order at the end, do not depend on the number of threads.
    grad_chunk = 4

    def conv_maxpool_relu_backward_params(
        self, dout, argmax, out, x, w_shape, stride, pad, kh, kw, pool_stride, pool_pad=0
    ):
        fn, c, fh, fw = w_shape
        pool = (kh, kw, pool_stride, pool_pad)
        if not self.prefers_direct_conv(c, fh, fw, stride):
            return super().conv_maxpool_relu_backward_params(dout, argmax, out, x, w_shape, stride, pad, *pool)
        n, _, h, wd = x.shape
        oh, ow = output_hw(h, wd, fh, fw, 1, pad)
        chunks = -(-n // self.grad_chunk)
        dw = np.zeros((chunks, fn, c * fh * fw), dtype=dout.dtype)
        db = np.zeros((chunks, fn), dtype=dout.dtype)
        args = (_c(dout), _c(argmax), _c(out), _c(x).astype(dout.dtype, copy=False), fh, fw, pad, oh, ow)
        _launch(_conv_maxpool_relu_backward_params, *args, kh, kw, pool_stride, pool_pad, dw, db, self.grad_chunk)
        return dw.sum(axis=0).reshape(w_shape), db.sum(axis=0)

    def maxpool_relu_backward(self, dout, argmax, out, n, oh, ow, kh, kw, stride, pad=0):
        drows = np.empty((n * oh * ow, dout.shape[1]), dtype=dout.dtype)
        disjoint = stride >= kh and stride >= kw
        kernel = _maxpool_relu_backward_disjoint if disjoint else _maxpool_relu_backward
        _launch(kernel, _c(dout), _c(argmax), _c(out), kh, kw, stride, pad, oh, ow, drows)
        return drows

    # -- optimizer steps (in place) ----------------------------------------------------

    def sgd_update(self, param, grad, lr):
        flat = _flat(param, grad)
        if flat is None:
            return super().sgd_update(param, grad, lr)
        _sgd(*flat, param.dtype.type(lr))

    def momentum_update(self, param, grad, velocity, lr, momentum):
        flat = _flat(param, grad, velocity)
        if flat is None:
            return super().momentum_update(param, grad, velocity, lr, momentum)
        t = param.dtype.type
        _momentum(*flat, t(lr), t(momentum))

    def adagrad_update(self, param, grad, h, lr, eps):
        flat = _flat(param, grad, h)
        if flat is None:
            return super().adagrad_update(param, grad, h, lr, eps)
        t = param.dtype.type
        _adagrad(*flat, t(lr), t(eps))

    def rmsprop_update(self, param, grad, h, lr, decay, eps):
        flat = _flat(param, grad, h)
        if flat is None:
            return super().rmsprop_update(param, grad, h, lr, decay, eps)
        t = param.dtype.type
        _rmsprop(*flat, t(lr), t(decay), t(1 - decay), t(eps))

    def adam_update(self, param, grad, m, v, lr_t, beta1, beta2, eps):
        flat = _flat(param, grad, m, v)
        if flat is None:
            return super().adam_update(param, grad, m, v, lr_t, beta1, beta2, eps)
        t = param.dtype.type
        _adam(*flat, t(lr_t), t(1 - beta1), t(1 - beta2), t(eps))
