"""Numba loops of the direct convolution: stride 1, few taps, fused with the max pooling.

A convolution with few taps per output (C*KH*KW: 25 for SimpleConvNet's first layer)
makes im2col's column matrix KH*KW times the input and gives the GEMM little work per
byte; computed directly, one image and two filters at a time, everything stays in the
L1 cache. The kernel set decides when (``NumbaKernels.prefers_direct_conv``); the values
equal im2col, the GEMM and the fused pooling to float rounding (see :mod:`.numba_set`).

Polyphase layout
----------------
The max pooling that follows reads the convolution's output at its stride S, which no
loop vectorizes; so the output of a filter is computed as S*S phase planes, plane
(oy, ox) holding the outputs at (m*S + oy, n*S + ox) in HQ rows of pitch WQ. Each
pooling tap then reads one phase plane at unit stride, shifted by whole rows and
columns, and the gradient goes back the same way. The rows and columns past the output
are computed and never read (SimpleConvNet: 800 values a filter for 576 outputs), and
pooled windows are laid out at the same pitch WQ while they are being computed.

For the convolution, each image is first laid out as S**4 phase copies per channel:
copy (a, b, oy, ox) holds xpad[c, m*S + oy + a, n*S + ox + b] at (m, n). A tap
(fy, fx) = (S*dy + a, S*dx + b) of output phase (oy, ox) reads copy (a, b, oy, ox)
shifted by (dy, dx); the S*S copies of one (a, b) follow each other at the phase
planes' stride PS, so one tap is one contiguous multiply-add over all phase planes at
once, ``span`` values (S*S*PS rounded up to a multiple of 32, the vectorized loop's
step, so that no scalar remainder loop runs). Two filters share each load of a tap.

The smallest helpers (:func:`_add_taps`, :func:`_add_tap`) are inlined into the hot
loops; the per-filter helpers are called, which ran as fast and compiles faster. The
measurements behind this layout and these choices: ``benchmarks/results/numba_notes.md``.
"""

from __future__ import annotations

import numpy as np

from .numba_pool import tap_ranges
from .numba_runtime import compiled, ijit, jit, tjit

# The one place where LLVM may reorder a sum (see _add_weight_grads).
reassoc_jit = compiled(fastmath={"reassoc"})

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
    (y_lo, y_hi), (x_lo, x_hi) = tap_ranges(oh, ph, kh, s, pad), tap_ranges(ow, pw, kw, s, pad)
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


@tjit
def conv_bias_relu_maxpool(first, last, x, w, bias, pad, oh, ow, kh, kw, stride, ppad, out, argmax, with_argmax):
    """x (N, C, H, W) * w (FN, C, FH, FW), stride 1 → + bias → max pooling (KH, KW,
    stride, ppad) → ReLU: out, and argmax if ``with_argmax``, (N, FN, PH, PW). One task
    per image: images ``first .. last - 1``."""
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
    for b in range(first, last):
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


@reassoc_jit
def _add_weight_grads(g, span, xs, offsets, dw, q, f0, f1):
    """dw[q, f] += sum(g_f * the phase copies read by tap t), for every tap t, of filters
    f0 (phase planes g[:span]) and f1 (g[span:2*span]; skipped when f1 == f0).

    The one place where LLVM may reorder a sum ("reassoc"), as BLAS does in its dot
    products: kept in order, the sum cannot be vectorized and runs many times slower
    (see benchmarks/results/numba_notes.md). The order is fixed by the compiled code,
    so results repeat. Not inlined: inlined code is compiled with its caller's flags."""
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


@reassoc_jit
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


@tjit
def conv_maxpool_relu_backward_params(
    first, last, dout, argmax, out, x, fh, fw, pad, oh, ow, kh, kw, stride, ppad, dw, db, chunk
):
    """Chunks ``first .. last - 1`` (a task each), per chunk of ``chunk`` images q: adds
    into dw[q] (FN, C*FH*FW) and db[q] (FN,), zeroed by the caller, the weight and bias
    gradients of
    :func:`conv_bias_relu_maxpool`. For each image and pair of filters, the gradient
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
    for q in range(first, last):
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
