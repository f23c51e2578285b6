"""Hypothesis strategies shared by the kernel tests: geometry and the arrays themselves.

Every array is drawn by Hypothesis (``hypothesis.extra.numpy.arrays``), so that a failing
example shrinks to a small, plain one. An array is a fill value with some elements drawn
apart: large arrays stay cheap to draw, and equal values sit side by side, which gives
max pooling's first-maximum rule ties to break.

Half the windowed cases are *exact*: small integers, so that every sum of products the
kernels compute is exact whatever its order (partial sums stay far below 2**24), and sets
that sum in other orders must still agree to the bit (unless each term is divided first,
as average pooling's gradient is). The others are real numbers (see :func:`reals`).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from gpucnn.kernels import conv_output_size

DTYPES = (np.float32, np.float64)


def reals(dtype) -> st.SearchStrategy[float]:
    """Zero, or a magnitude in [1/1024, 8] of either sign, representable in ``dtype``.

    No product of two such numbers underflows or overflows, so the rounding error of a
    sum of products is relative to its terms, as the bounds of ``tests/bounds.py`` assume.
    """
    magnitude = st.floats(2**-10, 8, width=np.finfo(dtype).bits)
    return st.one_of(st.just(0.0), magnitude, magnitude.map(operator.neg))


SMALL_INTEGERS = st.integers(-2, 2).map(float)


def array(dtype, shape: tuple[int, ...], exact: bool) -> st.SearchStrategy[np.ndarray]:
    """An array of ``shape``: small integers when ``exact``, else :func:`reals`."""
    elements = SMALL_INTEGERS if exact else reals(dtype)
    return arrays(dtype, shape, elements=elements, fill=elements)


@dataclass(frozen=True)
class Window:
    """An input x (N, C, H, W) of a windowed kernel, its geometry, and the gradient ``dy``
    of the kernel's output: columns (N*OH*OW, C*KH*KW) for im2col, (N, C, OH, OW) for pooling."""

    x: np.ndarray
    dy: np.ndarray
    kh: int
    kw: int
    stride: int
    pad: int
    exact: bool

    @property
    def geometry(self) -> tuple[int, int, int, int]:
        return self.kh, self.kw, self.stride, self.pad


@st.composite
def windows(draw, pool: bool = False, max_window: int = 4) -> Window:
    """A :class:`Window` with an output of at least 1x1.

    Batches 1, 2, 3 and 5; channels 1-16; non-square images up to 11x11; windows up to
    ``max_window``; strides 1-3 (a stride that does not divide the image leaves rows no
    window reaches); pads 0-3 (pooling: at most half the window, so ``max_window=7``
    reaches pad 3); float32 and float64.
    """
    n = draw(st.sampled_from([1, 2, 3, 5]))
    c = draw(st.integers(1, 16))
    kh, kw = draw(st.integers(1, max_window)), draw(st.integers(1, max_window))
    stride = draw(st.integers(1, 3))
    pad = draw(st.integers(0, min(3, kh // 2, kw // 2))) if pool else draw(st.integers(0, 3))
    h = draw(st.integers(max(1, kh - 2 * pad), 11))
    w = draw(st.integers(max(1, kw - 2 * pad), 11))
    dtype = draw(st.sampled_from(DTYPES))
    exact = draw(st.booleans())
    oh, ow = conv_output_size(h, kh, stride, pad), conv_output_size(w, kw, stride, pad)
    dy_shape = (n, c, oh, ow) if pool else (n * oh * ow, c * kh * kw)
    x = draw(array(dtype, (n, c, h, w), exact))
    return Window(x, draw(array(dtype, dy_shape, exact)), kh, kw, stride, pad, exact)


@dataclass(frozen=True)
class PooledRows:
    """A convolution's GEMM rows (N*OH*OW, FN) and bias (FN,), a max pooling of its
    (N, FN, OH, OW) output, and the gradient ``dout`` (N, FN, PH, PW) of the pooling."""

    rows: np.ndarray
    b: np.ndarray
    dout: np.ndarray
    n: int
    oh: int
    ow: int
    kh: int
    kw: int
    stride: int
    pad: int
    exact: bool

    @property
    def geometry(self) -> tuple[int, int, int, int, int, int, int]:
        """``(n, oh, ow, kh, kw, stride, pad)``, the arguments that follow ``rows`` and ``b``."""
        return self.n, self.oh, self.ow, self.kh, self.kw, self.stride, self.pad


@st.composite
def pooled_rows(draw) -> PooledRows:
    """Batches 1-5, 1-16 filters, outputs up to 11x11, pooling windows up to 7x7 (pads up
    to 3), strides 1-3: disjoint windows (stride >= window) and overlapping ones."""
    n = draw(st.integers(1, 5))
    fn = draw(st.integers(1, 16))
    kh, kw = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    stride = draw(st.integers(1, 3))
    pad = draw(st.integers(0, min(kh, kw) // 2))
    oh = draw(st.integers(max(1, kh - 2 * pad), 11))
    ow = draw(st.integers(max(1, kw - 2 * pad), 11))
    dtype = draw(st.sampled_from(DTYPES))
    exact = draw(st.booleans())
    ph, pw = conv_output_size(oh, kh, stride, pad), conv_output_size(ow, kw, stride, pad)
    rows = draw(array(dtype, (n * oh * ow, fn), exact))
    b = draw(array(dtype, (fn,), exact))
    dout = draw(array(dtype, (n, fn, ph, pw), exact))
    return PooledRows(rows, b, dout, n, oh, ow, kh, kw, stride, pad, exact)


@dataclass(frozen=True)
class ConvPool:
    """A convolution (x (N, C, H, W), w (FN, C, FH, FW), b (FN,), ``stride``, ``pad``)
    followed by ReLU and a max pooling ``pool = (kh, kw, pool_stride, pool_pad)``, and the
    gradient ``dout`` (N, FN, PH, PW) of its output."""

    x: np.ndarray
    w: np.ndarray
    b: np.ndarray
    dout: np.ndarray
    stride: int
    pad: int
    pool: tuple[int, int, int, int]
    exact: bool

    @property
    def geometry(self) -> tuple[int, ...]:
        """``(stride, pad, kh, kw, pool_stride, pool_pad)``, the arguments that follow ``x, w, b``."""
        return (self.stride, self.pad, *self.pool)


@st.composite
def conv_pools(draw) -> ConvPool:
    """Batches 1, 2, 3 and 5; 1-3 channels; filters up to 5x5 and 1-9 of them; strides 1-2;
    pads 0-3; pooling windows up to 3x3 with strides 1-3. Stride 1 with few taps is what a
    set may compute directly (``prefers_direct_conv``); the rest takes im2col and a GEMM."""
    n = draw(st.sampled_from([1, 2, 3, 5]))
    c = draw(st.integers(1, 3))
    fh, fw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    fn = draw(st.integers(1, 9))
    stride = draw(st.integers(1, 2))
    pad = draw(st.integers(0, 3))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    pool = (kh, kw, draw(st.integers(1, 3)), draw(st.integers(0, min(kh, kw) // 2)))
    # At least the smallest image whose convolution output holds one pooling window.
    h = draw(st.integers(max(1, fh - 2 * pad + stride * max(0, kh - 2 * pool[3] - 1)), 12))
    w = draw(st.integers(max(1, fw - 2 * pad + stride * max(0, kw - 2 * pool[3] - 1)), 12))
    dtype = draw(st.sampled_from(DTYPES))
    exact = draw(st.booleans())
    oh, ow = conv_output_size(h, fh, stride, pad), conv_output_size(w, fw, stride, pad)
    ph, pw = conv_output_size(oh, kh, pool[2], pool[3]), conv_output_size(ow, kw, pool[2], pool[3])
    x = draw(array(dtype, (n, c, h, w), exact))
    weights = draw(array(dtype, (fn, c, fh, fw), exact))
    b = draw(array(dtype, (fn,), exact))
    dout = draw(array(dtype, (n, fn, ph, pw), exact))
    return ConvPool(x, weights, b, dout, stride, pad, pool, exact)


@dataclass(frozen=True)
class Scores:
    """Scores x (N, K), integer labels t (N,) in [0, K) and a bias b (K,)."""

    x: np.ndarray
    t: np.ndarray
    b: np.ndarray


@st.composite
def scores(draw) -> Scores:
    """N 1-9 and K 1-12; scores up to 100 in magnitude (``exp`` alone would overflow, so
    the log-sum-exp must hold); int32 or int64 labels; float32 and float64."""
    n, k = draw(st.integers(1, 9)), draw(st.integers(1, 12))
    dtype = draw(st.sampled_from(DTYPES))
    width = np.finfo(dtype).bits
    x = draw(arrays(dtype, (n, k), elements=st.floats(-100, 100, width=width)))
    t = draw(arrays(draw(st.sampled_from([np.int32, np.int64])), (n,), elements=st.integers(0, k - 1)))
    b = draw(array(dtype, (k,), exact=False))
    return Scores(x, t, b)


@dataclass(frozen=True)
class OptimizerArrays:
    """A parameter, its gradient, and two state arrays for an optimizer step (non-negative:
    velocities may be, sums of squares must be)."""

    param: np.ndarray
    grad: np.ndarray
    state: tuple[np.ndarray, np.ndarray]


@st.composite
def optimizer_arrays(draw) -> OptimizerArrays:
    """Arrays of 1-4 dimensions up to 6 long, float32 or float64."""
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(array_shapes(min_dims=1, max_dims=4, max_side=6))
    param, grad, first, second = (draw(array(dtype, shape, exact=False)) for _ in range(4))
    return OptimizerArrays(param, grad, (np.abs(first), np.abs(second)))
