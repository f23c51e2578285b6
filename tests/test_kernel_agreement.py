"""Every kernel set against its oracle: one test body per operation, run on every set.

The sets are those of the backends (``numpy``, ``numba``, ``cuda-emu``: the CUDA sources
compiled for the CPU, ``cupy``: the same on a GPU, marked ``gpu``) and the generic set on
``array-api-strict``. The NumPy set is the oracle of the others; its own oracle is the
plain loops and formulas of ``tests/reference.py`` (of ``tests/winograd_reference.py`` for
the Winograd transforms). Each set agrees with its oracle to the bit, except where
:data:`TOLERANCES` allows rounding.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import gpucnn
from gpucnn.kernels import KERNEL_OPERATIONS, KernelSet
from gpucnn.kernels.generic import GenericKernels
from gpucnn.kernels.numpy_set import NumpyKernels

from . import reference as ref
from . import winograd_reference as wref
from .bounds import assert_argmax_up_to_rounding, assert_close_to_sum, eps, pool_windows, sum_rtol
from .conftest import BACKEND_PARAMS, backend_or_skip
from .strategies import DTYPES, ConvPool, array, conv_pools, optimizer_arrays, pooled_rows, scores, windows
from .winograd_layer import Layer as WinogradLayer

NP = NumpyKernels()
EQUAL = np.testing.assert_array_equal

# -- what each set may differ by ---------------------------------------------------------------

ORDER = "sums in another order"
ULPS = "elementary functions or fused multiply-adds"

# How far each set's results may lie from its oracle's, by operation; an operation not
# listed agrees to the bit. The bounds are multiples of the dtype's eps, so the table
# serves float32 and float64 alike:
#
# ORDER  the operation's sums run in another order: each element within
#        ``terms * eps`` times the sum of its terms' absolute values (bounds.sum_rtol),
#        and equal to the bit on exact data (small integers, see tests/strategies.py);
#        a max-pooling argmax may then name another of two values within that bound.
# ULPS   exp and log of another math library, or fused multiply-adds: each element within
#        ELEMENTARY_ULPS * eps times the sum of the absolute terms of its formula.
#
# The NumPy set's oracle is float64 loops. The Numba set's entries are the promises of the
# "Values" section of its module's docstring; the generic and CUDA sets' follow from their
# arithmetic: they sum over another axis (avgpool_forward, bias_grad), matmul on
# array_api_strict's arrays takes another BLAS path, the CUDA kernels take exp and log from
# the C++ library (cuda-emu) or the device's and compute a first layer's convolution
# directly, and a GPU contracts a*b + c into one FMA.
CONV_OPERATIONS = ("conv_bias_relu_maxpool", "conv_bias_relu_maxpool_infer", "conv_maxpool_relu_backward_params")
WINOGRAD_OPERATIONS = (
    "winograd_filter",
    "winograd_filter_grad",
    "winograd_input",
    "winograd_input_grad",
    "winograd_output",
    "winograd_output_grad",
)
# Its db: the sum over the pooled windows where the composition's bias_grad sums the GEMM
# rows (or, in the Numba set, over rows of tiles); out, argmax and dM agree to the bit.
WINOGRAD_POOL_BACKWARD = "winograd_maxpool_relu_backward"
# Its db: the sum over the outputs where the composition's bias_grad sums the GEMM rows in
# another order (the NumPy set: with the zeros past the output; the Numba set: over rows of
# tiles); out and dM agree to the bit.
WINOGRAD_RELU_BACKWARD = "winograd_relu_backward"
# A whole Winograd layer from the input and filters: its GEMMs run over a band's tiles (the
# Numba set) or on another BLAS path, dW sums per group of images, db as the fused backwards'.
WINOGRAD_LAYER_OPERATIONS = (
    "winograd_conv_bias_relu_maxpool",
    "winograd_conv_bias_relu_maxpool_infer",
    "winograd_conv_maxpool_relu_backward",
    "winograd_conv_bias_relu",
    "winograd_conv_relu_backward",
)
OPTIMIZER_OPERATIONS = ("sgd_update", "momentum_update", "adagrad_update", "rmsprop_update", "adam_update")
TOLERANCES: dict[str, dict[str, str]] = {
    "numpy": {
        **dict.fromkeys(
            ("col2im", "maxpool_backward", "avgpool_forward", "avgpool_backward", "maxpool_relu_backward", "bias_grad"),
            ORDER,
        ),
        **dict.fromkeys(CONV_OPERATIONS, ORDER),
        **dict.fromkeys(WINOGRAD_OPERATIONS, ORDER),  # in the array's dtype, the oracle in float64
        WINOGRAD_POOL_BACKWARD: ORDER,
        WINOGRAD_RELU_BACKWARD: ORDER,
        "softmax_cross_entropy": ULPS,
    },
    "array-api-strict": {
        **dict.fromkeys(WINOGRAD_LAYER_OPERATIONS, ORDER),
        "avgpool_forward": ORDER,
        "bias_grad": ORDER,
        **dict.fromkeys(CONV_OPERATIONS, ORDER),
        WINOGRAD_POOL_BACKWARD: ORDER,
        WINOGRAD_RELU_BACKWARD: ORDER,
    },
    "numba": {
        **dict.fromkeys(WINOGRAD_LAYER_OPERATIONS, ORDER),
        "avgpool_forward": ORDER,
        **dict.fromkeys(CONV_OPERATIONS, ORDER),
        WINOGRAD_POOL_BACKWARD: ORDER,
        WINOGRAD_RELU_BACKWARD: ORDER,
    },
    "cuda-emu": {
        **dict.fromkeys(WINOGRAD_LAYER_OPERATIONS, ORDER),
        "avgpool_forward": ORDER,
        "bias_grad": ORDER,
        WINOGRAD_POOL_BACKWARD: ORDER,
        WINOGRAD_RELU_BACKWARD: ORDER,
        # the direct convolution of a first layer: taps summed in (c, ky, kx) order, the
        # weight and bias gradients over the batch's pooled elements, not BLAS's order
        **dict.fromkeys(CONV_OPERATIONS, ORDER),
        "softmax_cross_entropy": ULPS,
        "softmax_cross_entropy_count": ORDER,  # its mean: a serial sum of the row losses, not xp.sum's
        # its db: each column of dx summed serially in row order, where bias_grad is a GEMV
        "bias_softmax_cross_entropy_count_grad": ORDER,
    },
    "cupy": {  # as cuda-emu, with cuBLAS for the GEMMs and FMAs in the optimizer steps
        **dict.fromkeys(WINOGRAD_LAYER_OPERATIONS, ORDER),
        "avgpool_forward": ORDER,
        "bias_grad": ORDER,
        WINOGRAD_POOL_BACKWARD: ORDER,
        WINOGRAD_RELU_BACKWARD: ORDER,
        **dict.fromkeys(CONV_OPERATIONS, ORDER),
        "softmax_cross_entropy": ULPS,
        "softmax_cross_entropy_count": ORDER,
        "bias_softmax_cross_entropy_count_grad": ORDER,
        **dict.fromkeys(OPTIMIZER_OPERATIONS, ULPS),
    },
}
ELEMENTARY_ULPS = 8


@dataclass(frozen=True)
class KernelsUnderTest:
    """A backend's kernel set, called on NumPy data: ``run`` moves the arrays to the
    backend, calls the operation and brings the results back."""

    backend: gpucnn.Backend

    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def kernels(self) -> KernelSet:
        return self.backend.kernels

    @property
    def is_oracle(self) -> bool:
        return self.name == "numpy"

    def put(self, a: np.ndarray) -> Any:
        """A copy of ``a`` on the backend (some operations update their arguments in place)."""
        return self.backend.asarray(np.array(a))

    def get(self, a: Any) -> np.ndarray:
        return np.asarray(self.backend.to_numpy(a))

    def run(self, operation: str, *args: Any) -> Any:
        """``kernels.operation(*args)``, NumPy arrays in and out."""
        result = getattr(self.kernels, operation)(*(self.put(a) if isinstance(a, np.ndarray) else a for a in args))
        if isinstance(result, tuple):
            return tuple(self.get(r) for r in result)
        return result if result is None or isinstance(result, bool) else self.get(result)

    def tolerance(self, operation: str) -> str | None:
        return TOLERANCES[self.name].get(operation)

    def sum_rtol(self, operation: str, dtype, terms: int, exact: bool) -> float:
        """The ``rtol`` of :func:`assert_close_to_sum` for ``operation``'s sums of
        ``terms`` terms: 0 where the set sums as its oracle does or every sum is exact."""
        if exact or self.tolerance(operation) != ORDER:
            return 0.0
        return sum_rtol(dtype, terms)


@pytest.fixture(scope="module", params=BACKEND_PARAMS)
def subject(request) -> KernelsUnderTest:
    """Every backend's kernel set; the unavailable ones skip with the reason."""
    return KernelsUnderTest(backend_or_skip(request.param))


def abs64(a: np.ndarray) -> np.ndarray:
    return np.abs(a).astype(np.float64)


def assert_blas_ready(a: Any) -> None:
    """C- or Fortran-contiguous, where the array has a memory layout (NumPy, CuPy; the array
    API has none): a GEMM then reads the columns as they are, with no copy."""
    flags = getattr(a, "flags", None)
    assert flags is None or flags.c_contiguous or flags.f_contiguous


# -- the interface --------------------------------------------------------------------------


def _parameters(function) -> list[tuple]:
    """Names, kinds and defaults of ``function``'s parameters after ``self`` (annotations aside)."""
    parameters = list(inspect.signature(function).parameters.values())
    if parameters and parameters[0].name == "self":
        parameters = parameters[1:]
    return [(p.name, p.kind, p.default) for p in parameters]


def test_every_set_implements_the_interface(subject):
    assert isinstance(subject.kernels, KernelSet)
    for name in KERNEL_OPERATIONS:
        assert _parameters(getattr(subject.kernels, name)) == _parameters(getattr(KernelSet, name)), name


def test_every_operation_is_documented():
    for name in KERNEL_OPERATIONS:
        assert f"``{name}" in gpucnn.kernels.__doc__, name


# -- convolution lowering ---------------------------------------------------------------------


@given(windows())
def test_im2col_and_its_adjoint_col2im(subject, case):
    x, dcol, geometry = case.x, case.dy, case.geometry
    kh, kw = case.kh, case.kw
    col_on_backend = subject.kernels.im2col(subject.put(x), *geometry)
    assert_blas_ready(col_on_backend)
    col = subject.get(col_on_backend)
    assert col.dtype == x.dtype
    EQUAL(col, ref.im2col_loops(x, *geometry) if subject.is_oracle else NP.im2col(x, *geometry))

    # The weight gradient of a GEMM on these columns, from the set's own column matrix
    # (its memory order): drows^T col, each entry a sum over the M rows.
    drows = np.ascontiguousarray(dcol[:, : min(3, dcol.shape[1])])
    dw_on_backend = subject.kernels.weight_grad(subject.put(drows), col_on_backend)
    assert_blas_ready(dw_on_backend)
    flags = getattr(dw_on_backend, "flags", None)
    assert flags is None or flags.c_contiguous
    dw = subject.get(dw_on_backend)
    assert dw.shape == (drows.shape[1], col.shape[1]) and dw.dtype == x.dtype
    want = drows.T.astype(np.float64) @ col.astype(np.float64)
    assert_close_to_sum(dw, want, abs64(drows).T @ abs64(col), sum_rtol(x.dtype, col.shape[0]), "weight_grad")

    # The input gradient of the GEMM: col2im of drows @ W2, each pixel a sum over the FN
    # products of at most KH*KW taps.
    w = np.resize(dcol, (drows.shape[1], x.shape[1], kh, kw))  # dcol's values, repeated as needed
    dx = subject.run("conv_input_grad", drows, w, x.shape, *geometry[2:])
    assert dx.shape == x.shape and dx.dtype == x.dtype
    w2 = w.reshape(w.shape[0], -1).astype(np.float64)
    want = ref.col2im_loops(drows.astype(np.float64) @ w2, x.shape, *geometry)
    abs_terms = ref.col2im_loops(abs64(drows) @ np.abs(w2), x.shape, *geometry)
    assert_close_to_sum(dx, want, abs_terms, sum_rtol(x.dtype, drows.shape[1] * kh * kw), "conv_input_grad")

    dx = subject.run("col2im", dcol, x.shape, *geometry)
    assert dx.shape == x.shape and dx.dtype == x.dtype
    # <im2col(x), dcol> == <x, col2im(dcol)> for every x: col2im is im2col's transpose. The
    # dot products run in float64; dx's own sums have at most KH*KW terms.
    rtol = sum_rtol(x.dtype, kh * kw) + sum_rtol(np.float64, col.size)
    assert_close_to_sum(
        np.vdot(x.astype(np.float64), dx), np.vdot(col.astype(np.float64), dcol), np.vdot(abs64(col), abs64(dcol)), rtol
    )
    want = ref.col2im_loops(dcol, x.shape, *geometry) if subject.is_oracle else NP.col2im(dcol, x.shape, *geometry)
    rtol = subject.sum_rtol("col2im", x.dtype, kh * kw, case.exact)
    assert_close_to_sum(dx, want, NP.col2im(abs64(dcol), x.shape, *geometry), rtol, "col2im")


# -- pooling ------------------------------------------------------------------------------------


@given(windows(pool=True, max_window=7))
def test_max_and_average_pooling(subject, case):
    x, dout, geometry = case.x, case.dy, case.geometry
    taps = case.kh * case.kw
    out, argmax = subject.run("maxpool_forward", x, *geometry)
    assert out.dtype == x.dtype and argmax.dtype == np.int32
    if subject.is_oracle:
        want_out, want_argmax = ref.pool_loops(x, *geometry, "max")
    else:
        want_out, want_argmax = NP.maxpool_forward(x, *geometry)
    EQUAL(out, want_out)
    EQUAL(argmax, want_argmax)

    dx = subject.run("maxpool_backward", dout, argmax, x.shape, *geometry)
    assert dx.shape == x.shape and dx.dtype == x.dtype
    if subject.is_oracle:
        want = ref.maxpool_backward_loops(dout, argmax, x.shape, *geometry)
    else:
        want = NP.maxpool_backward(dout, argmax, x.shape, *geometry)
    rtol = subject.sum_rtol("maxpool_backward", x.dtype, taps, case.exact)
    abs_terms = NP.maxpool_backward(abs64(dout), argmax, x.shape, *geometry)
    assert_close_to_sum(dx, want, abs_terms, rtol, "maxpool_backward")

    out = subject.run("avgpool_forward", x, *geometry)
    assert out.dtype == x.dtype
    want = ref.pool_loops(x, *geometry, "avg")[0] if subject.is_oracle else NP.avgpool_forward(x, *geometry)
    rtol = subject.sum_rtol("avgpool_forward", x.dtype, taps + 1, case.exact)  # + 1: the division
    assert_close_to_sum(out, want, NP.avgpool_forward(abs64(x), *geometry), rtol, "avgpool_forward")

    dx = subject.run("avgpool_backward", dout, x.shape, *geometry)
    assert dx.shape == x.shape and dx.dtype == x.dtype
    if subject.is_oracle:
        want = ref.avgpool_backward_loops(dout, x.shape, *geometry)
    else:
        want = NP.avgpool_backward(dout, x.shape, *geometry)
    # Each term is divided before the sum: not exact even on exact data.
    rtol = subject.sum_rtol("avgpool_backward", x.dtype, taps + 1, exact=False)
    assert_close_to_sum(dx, want, NP.avgpool_backward(abs64(dout), x.shape, *geometry), rtol, "avgpool_backward")


# -- operations on a convolution's GEMM rows ------------------------------------------------------


@given(pooled_rows())
def test_operations_on_gemm_rows(subject, case):
    """Bias, ReLU and max pooling fused, its backward, and the rows' own operations."""
    rows, b, dout, geometry = case.rows, case.b, case.dout, case.geometry
    n, oh, ow, kh, kw, stride, pad = geometry
    out, argmax = subject.run("bias_relu_maxpool", rows, b, *geometry)
    assert out.dtype == rows.dtype and argmax.dtype == np.int32
    if subject.is_oracle:  # bias, then max pooling, then ReLU: the same values as ReLU, then pooling
        pooled, want_argmax = ref.pool_loops(ref.rows_to_nchw(rows + b, n, oh, ow), kh, kw, stride, pad, "max")
        want_out = np.maximum(pooled, 0)
    else:
        want_out, want_argmax = NP.bias_relu_maxpool(rows, b, *geometry)
    EQUAL(out, want_out)
    EQUAL(argmax, want_argmax)
    EQUAL(subject.run("bias_relu_maxpool_infer", rows, b, *geometry), out)

    drows = subject.run("maxpool_relu_backward", dout, argmax, out, *geometry)
    assert drows.shape == rows.shape and drows.dtype == rows.dtype
    if subject.is_oracle:  # the gradient passes where the output is positive
        dy = ref.maxpool_backward_loops(dout * (out > 0), argmax, (n, rows.shape[1], oh, ow), kh, kw, stride, pad)
        want = ref.nchw_to_rows(dy)
    else:
        want = NP.maxpool_relu_backward(dout, argmax, out, *geometry)
    rtol = subject.sum_rtol("maxpool_relu_backward", rows.dtype, kh * kw, case.exact)
    abs_terms = NP.maxpool_relu_backward(abs64(dout), argmax, out, *geometry)
    assert_close_to_sum(drows, want, abs_terms, rtol, "maxpool_relu_backward")

    out = subject.run("bias_relu", rows, b)
    assert out.dtype == rows.dtype
    EQUAL(out, np.maximum(rows + b, 0))
    dx = subject.run("relu_backward", rows, out)
    assert dx.dtype == rows.dtype and dx.shape == rows.shape
    EQUAL(dx, np.where(out > 0, rows, 0))
    db = subject.run("bias_grad", rows)
    assert db.shape == (rows.shape[1],) and db.dtype == rows.dtype
    want = rows.sum(axis=0, dtype=np.float64) if subject.is_oracle else NP.bias_grad(rows)
    rtol = subject.sum_rtol("bias_grad", rows.dtype, rows.shape[0], case.exact)
    assert_close_to_sum(db, want, abs64(rows).sum(axis=0), rtol, "bias_grad")
    nchw = subject.run("rows_to_nchw", rows, n, oh, ow)
    EQUAL(nchw, ref.rows_to_nchw(rows, n, oh, ow))
    EQUAL(subject.run("nchw_to_rows", nchw), rows)


# -- convolution, bias, ReLU and max pooling from the input ---------------------------------------


@given(conv_pools())
def test_fused_convolution_and_its_parameter_gradients(subject, case: ConvPool):
    x, w, b, dout, geometry = case.x, case.w, case.b, case.dout, case.geometry
    fn, c, fh, fw = w.shape
    kh, kw, pool_stride, pool_pad = case.pool
    assert isinstance(subject.kernels.prefers_direct_conv(c, fh, fw, case.stride), bool)
    out, argmax = subject.run("conv_bias_relu_maxpool", x, w, b, *geometry)
    assert out.dtype == x.dtype and argmax.dtype == np.int32
    # The convolution's output y and the sum of its terms' absolute values, in float64, from
    # the columns of x: the loops' for the NumPy set, its own for the others.
    if subject.is_oracle:
        col = ref.im2col_loops(x.astype(np.float64), fh, fw, case.stride, case.pad)
    else:
        col = NP.im2col(x.astype(np.float64), fh, fw, case.stride, case.pad)
    n = x.shape[0]
    oh, ow = ref.out_size(x.shape[2], fh, case.stride, case.pad), ref.out_size(x.shape[3], fw, case.stride, case.pad)
    y = ref.rows_to_nchw(col @ w.reshape(fn, -1).T.astype(np.float64) + b, n, oh, ow)
    y_abs = ref.rows_to_nchw(np.abs(col) @ abs64(w).reshape(fn, -1).T + np.abs(b), n, oh, ow)
    if subject.is_oracle:
        pooled, want_argmax = ref.pool_loops(y, *case.pool, "max")
        want_out = np.maximum(pooled, 0)
    else:
        want_out, want_argmax = NP.conv_bias_relu_maxpool(x, w, b, *geometry)
    rtol = subject.sum_rtol("conv_bias_relu_maxpool", x.dtype, c * fh * fw + 1, case.exact)
    window_abs = pool_windows(y_abs, *case.pool).max(axis=-1)
    assert_close_to_sum(out, want_out, window_abs, rtol, "conv_bias_relu_maxpool")
    assert_argmax_up_to_rounding(argmax, want_argmax, pool_windows(y, *case.pool), 2 * rtol * window_abs)
    EQUAL(subject.run("conv_bias_relu_maxpool_infer", x, w, b, *geometry), out)

    # The backward from this set's own forward (argmax and ReLU mask), so that only the
    # backward is compared.
    dw, db = subject.run("conv_maxpool_relu_backward_params", dout, argmax, out, x, w.shape, *geometry)
    assert dw.shape == w.shape and db.shape == b.shape and dw.dtype == db.dtype == x.dtype
    drows_abs = NP.maxpool_relu_backward(abs64(dout), argmax, out, n, oh, ow, *case.pool)
    if subject.is_oracle:
        dy = ref.maxpool_backward_loops(dout * (out > 0), argmax, y.shape, kh, kw, pool_stride, pool_pad)
        drows = ref.nchw_to_rows(dy)
        want_dw, want_db = (drows.T @ col).reshape(w.shape), drows.sum(axis=0)
    else:
        want_dw, want_db = NP.conv_maxpool_relu_backward_params(dout, argmax, out, x, w.shape, *geometry)
    terms = n * oh * ow + kh * kw  # the GEMM's sums, of the pooling's routed gradients
    rtol = subject.sum_rtol("conv_maxpool_relu_backward_params", x.dtype, terms, case.exact)
    assert_close_to_sum(dw, want_dw, (drows_abs.T @ np.abs(col)).reshape(w.shape), rtol, "dw")
    assert_close_to_sum(db, want_db, drows_abs.sum(axis=0), rtol, "db")


# -- Winograd F(2x2, 3x3) -------------------------------------------------------------------------


@dataclass(frozen=True)
class WinogradArrays:
    """A 3x3, stride-1 convolution of x (N, C, H, W) with ``pad`` and FN filters w, and an
    argument for each other transform: M (16, T, FN), GEMM rows (N*OH*OW, FN), dV (16, T, C)
    and dU (16, C, FN)."""

    x: np.ndarray
    w: np.ndarray
    m: np.ndarray
    drows: np.ndarray
    dv: np.ndarray
    du: np.ndarray
    pad: int
    exact: bool

    @property
    def geometry(self) -> tuple[int, int, int]:
        """``(n, oh, ow)``, the arguments after M and the rows."""
        n, _, h, w = self.x.shape
        return n, h + 2 * self.pad - 2, w + 2 * self.pad - 2


@st.composite
def winograd_arrays(draw) -> WinogradArrays:
    """Batches 1-3, 1-5 channels and filters, pads 0-2, images up to 9x9 with an output
    of at least 1x1 (odd sizes leave tiles that reach past it); float32 and float64;
    half of them exact (small integers: every transform is then exact, its halves too)."""
    n, c, fn = draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 5))
    pad = draw(st.integers(0, 2))
    h, w = draw(st.integers(max(1, 3 - 2 * pad), 9)), draw(st.integers(max(1, 3 - 2 * pad), 9))
    dtype = draw(st.sampled_from(DTYPES))
    exact = draw(st.booleans())
    oh, ow = h + 2 * pad - 2, w + 2 * pad - 2
    th, tw = wref.tiles(oh, ow)
    t = n * th * tw
    shapes = [(n, c, h, w), (fn, c, 3, 3), (16, t, fn), (n * oh * ow, fn), (16, t, c), (16, c, fn)]
    return WinogradArrays(*(draw(array(dtype, shape, exact)) for shape in shapes), pad, exact)


@given(winograd_arrays())
def test_winograd_transforms_and_their_adjoints(subject, case: WinogradArrays):
    x, pad, (n, oh, ow) = case.x, case.pad, case.geometry
    operations = {  # operation: (arguments, its float64 definition with absolute=False or True)
        "winograd_filter": ((case.w,), lambda a: wref.filter_transform(case.w, a)),
        "winograd_filter_grad": ((case.du,), lambda a: wref.filter_transform_adjoint(case.du, a)),
        "winograd_input": ((x, pad), lambda a: wref.input_transform(x, pad, a)),
        "winograd_input_grad": (
            (case.dv, x.shape, pad),
            lambda a: wref.input_transform_adjoint(case.dv, x.shape, pad, a),
        ),
        "winograd_output": ((case.m, n, oh, ow), lambda a: wref.output_transform(case.m, n, oh, ow, a)),
        "winograd_output_grad": (
            (case.drows, n, oh, ow),
            lambda a: wref.output_transform_adjoint(case.drows, n, oh, ow, a),
        ),
    }
    for operation, (args, definition) in operations.items():
        got = subject.run(operation, *args)
        want = definition(False) if subject.is_oracle else getattr(NP, operation)(*args)
        assert got.shape == want.shape and got.dtype == x.dtype, operation
        rtol = subject.sum_rtol(operation, x.dtype, wref.TERMS[operation], case.exact)
        assert_close_to_sum(got, want, definition(True), rtol, operation)
    c, fn = x.shape[1], case.w.shape[0]
    for fh, fw, stride in [(3, 3, 2), (5, 5, 1), (1, 1, 1), (3, 1, 1)]:  # none of them Winograd can do
        assert subject.kernels.prefers_winograd(c, fn, fh, fw, stride) is False
    assert isinstance(subject.kernels.prefers_winograd(c, fn, 3, 3, 1), bool)


@dataclass(frozen=True)
class WinogradProducts:
    """Products M (16, T, FN) of a 3x3, stride-1 convolution with an OH x OW output, a bias
    (FN,) and the gradient dout of what a fused operation makes of them: the 2x2, stride-2
    max pooling of their biased ReLU (N, FN, OH//2, OW//2), or the biased ReLU itself
    (N, FN, OH, OW)."""

    m: np.ndarray
    b: np.ndarray
    dout: np.ndarray
    n: int
    oh: int
    ow: int
    exact: bool

    @property
    def geometry(self) -> tuple[int, int, int]:
        """``(n, oh, ow)``, the arguments after M and the bias, or after dout (argmax) and out."""
        return self.n, self.oh, self.ow


@st.composite
def winograd_pools(draw) -> WinogradProducts:
    """Batches 1-3, 1-17 filters, outputs from 2x2 to 9x9 (an odd side leaves tiles that no
    window pools); float32 and float64; half of them exact (small integers)."""
    n, fn = draw(st.integers(1, 3)), draw(st.integers(1, 17))
    oh, ow = draw(st.integers(2, 9)), draw(st.integers(2, 9))
    dtype = draw(st.sampled_from(DTYPES))
    exact = draw(st.booleans())
    th, tw = wref.tiles(oh, ow)
    shapes = [(16, n * th * tw, fn), (fn,), (n, fn, oh // 2, ow // 2)]
    return WinogradProducts(*(draw(array(dtype, shape, exact)) for shape in shapes), n, oh, ow, exact)


@given(winograd_pools())
def test_winograd_output_fused_with_bias_relu_and_max_pooling(subject, case: WinogradProducts):
    """The output transform, bias, ReLU and 2x2 max pooling in one operation, and its
    backward. The NumPy set's oracle is the composition they stand for, of its operations
    checked above, and on exact data the float64 definition too."""
    m, b, dout, geometry = case.m, case.b, case.dout, case.geometry
    n, oh, ow = geometry
    out, argmax = subject.run("winograd_bias_relu_maxpool", m, b, *geometry)
    assert out.dtype == m.dtype and argmax.dtype == np.int32
    if subject.is_oracle:
        want_out, want_argmax = GenericKernels.winograd_bias_relu_maxpool(NP, m, b, *geometry)
        if case.exact:
            y = ref.rows_to_nchw(wref.output_transform(m, n, oh, ow) + b, n, oh, ow)
            pooled, first = ref.pool_loops(y, 2, 2, 2, 0, "max")
            EQUAL(out, np.maximum(pooled, 0))
            EQUAL(argmax, first)
    else:
        want_out, want_argmax = NP.winograd_bias_relu_maxpool(m, b, *geometry)
    EQUAL(out, want_out)
    EQUAL(argmax, want_argmax)
    EQUAL(subject.run("winograd_bias_relu_maxpool_infer", m, b, *geometry), out)

    dm, db = subject.run(WINOGRAD_POOL_BACKWARD, dout, argmax, out, *geometry)
    assert dm.dtype == db.dtype == m.dtype
    if subject.is_oracle:
        want_dm, want_db = GenericKernels.winograd_maxpool_relu_backward(NP, dout, argmax, out, *geometry)
    else:
        want_dm, want_db = NP.winograd_maxpool_relu_backward(dout, argmax, out, *geometry)
    EQUAL(dm, want_dm)
    rtol = subject.sum_rtol(WINOGRAD_POOL_BACKWARD, m.dtype, n * (oh // 2) * (ow // 2), case.exact)  # windows
    assert_close_to_sum(db, want_db, (abs64(dout) * (out > 0)).sum(axis=(0, 2, 3)), rtol, "db")


@st.composite
def winograd_relus(draw) -> WinogradProducts:
    """Batches 1-3, 1-17 filters, outputs from 1x1 to 9x9 (an odd side leaves tiles that
    reach past it); float32 and float64; half of them exact (small integers)."""
    n, fn = draw(st.integers(1, 3)), draw(st.integers(1, 17))
    oh, ow = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    dtype = draw(st.sampled_from(DTYPES))
    exact = draw(st.booleans())
    th, tw = wref.tiles(oh, ow)
    shapes = [(16, n * th * tw, fn), (fn,), (n, fn, oh, ow)]
    return WinogradProducts(*(draw(array(dtype, shape, exact)) for shape in shapes), n, oh, ow, exact)


@given(winograd_relus())
def test_winograd_output_fused_with_bias_and_relu(subject, case: WinogradProducts):
    """The output transform, bias and ReLU in one operation, to NCHW, and its backward. The
    NumPy set's oracle is the composition they stand for, of its operations checked above,
    and on exact data the float64 definition too."""
    m, b, dout, geometry = case.m, case.b, case.dout, case.geometry
    n, oh, ow = geometry
    out = subject.run("winograd_bias_relu", m, b, *geometry)
    assert out.shape == dout.shape and out.dtype == m.dtype
    if subject.is_oracle:
        want_out = GenericKernels.winograd_bias_relu(NP, m, b, *geometry)
        if case.exact:
            y = ref.rows_to_nchw(wref.output_transform(m, n, oh, ow) + b, n, oh, ow)
            EQUAL(out, np.maximum(y, 0))
    else:
        want_out = NP.winograd_bias_relu(m, b, *geometry)
    EQUAL(out, want_out)

    dm, db = subject.run(WINOGRAD_RELU_BACKWARD, dout, out, *geometry)
    assert dm.dtype == db.dtype == m.dtype
    if subject.is_oracle:
        want_dm, want_db = GenericKernels.winograd_relu_backward(NP, dout, out, *geometry)
        if case.exact:
            drows = ref.nchw_to_rows(np.where(out > 0, dout, 0))
            EQUAL(dm, wref.output_transform_adjoint(drows, n, oh, ow))
    else:
        want_dm, want_db = NP.winograd_relu_backward(dout, out, *geometry)
    EQUAL(dm, want_dm)
    rtol = subject.sum_rtol(WINOGRAD_RELU_BACKWARD, m.dtype, n * oh * ow, case.exact)
    assert_close_to_sum(db, want_db, (abs64(dout) * (out > 0)).sum(axis=(0, 2, 3)), rtol, "db")


@st.composite
def winograd_layers(draw) -> tuple[WinogradLayer, bool]:
    """Batches 1-5 (past the Numba set's groups of 4 images), 1-6 channels, 1-9 filters,
    pad 0 or 1, outputs from 2x2 to 8x8; float32 and float64; half of them exact."""
    n, c, fn, pad = draw(st.integers(1, 5)), draw(st.integers(1, 6)), draw(st.integers(1, 9)), draw(st.integers(0, 1))
    h, w = draw(st.integers(4 - 2 * pad, 10 - 2 * pad)), draw(st.integers(4 - 2 * pad, 10 - 2 * pad))
    dtype, exact = draw(st.sampled_from(DTYPES)), draw(st.booleans())
    oh, ow = h + 2 * pad - 2, w + 2 * pad - 2
    shapes = [(n, c, h, w), (fn, c, 3, 3), (fn,), (n, fn, oh // 2, ow // 2), (n, fn, oh, ow)]
    x, weights, b, dout_pooled, dout = (draw(array(dtype, shape, exact)) for shape in shapes)
    return WinogradLayer(x, weights, b, pad, dout_pooled, dout), exact


@given(winograd_layers())
def test_whole_winograd_layers(subject, drawn):
    """A Winograd Convolution -> bias -> ReLU (-> 2x2 max pooling) from the input and the
    filters, and its backward, against the NumPy set's composition of the operations
    checked above (which is the NumPy set's own way: its oracle); equal on exact data."""
    layer, exact = drawn
    got = layer.results(subject.kernels, subject.backend)
    operation, dtype = WINOGRAD_LAYER_OPERATIONS[0], layer.x.dtype  # all five alike
    layer.assert_agrees(got, lambda kind, terms: 2 * subject.sum_rtol(operation, dtype, terms, exact))


# -- softmax cross-entropy ----------------------------------------------------------------------


@given(scores())
def test_softmax_cross_entropy_and_its_backward(subject, case):
    x, t = case.x, case.t
    n, k = x.shape
    loss, probs = subject.run("softmax_cross_entropy", x, t)
    assert loss.shape == () and loss.dtype == x.dtype and probs.shape == x.shape and probs.dtype == x.dtype
    onehot = np.eye(k, dtype=x.dtype)[t]
    soft_loss, soft_probs = subject.run("softmax_cross_entropy", x, onehot)  # (N, K) targets

    logp, lse = ref.log_softmax(x)
    rows = np.arange(n)
    if subject.tolerance("softmax_cross_entropy") == ULPS:
        # log p = (x - max) - lse rounds relative to |x - max| + lse (and to K, from the sum
        # inside the log); p = exp(log p) turns that absolute error into a relative one, but
        # for a p below the normal range (which loses digits, or flushes to zero).
        bound = ELEMENTARY_ULPS * eps(x.dtype) * (np.abs(logp + lse) + lse + k)
        probs_bound = np.exp(logp) * (bound + eps(x.dtype)) + np.finfo(x.dtype).tiny
        want_loss = -logp[rows, t].mean()
        for got_loss, got_probs, terms in ((loss, probs, n), (soft_loss, soft_probs, n * k)):
            assert_close_to_sum(got_probs, np.exp(logp), probs_bound, 1.0, "probs")
            loss_bound = bound[rows, t].mean() + sum_rtol(x.dtype, terms) * want_loss
            assert_close_to_sum(got_loss, want_loss, loss_bound, 1.0, "loss")
    else:
        want_loss, want_probs = NP.softmax_cross_entropy(x, t)
        EQUAL(loss, want_loss)
        EQUAL(probs, want_probs)
        want_loss, want_probs = NP.softmax_cross_entropy(x, onehot)
        EQUAL(soft_loss, want_loss)
        EQUAL(soft_probs, want_probs)

    counted_loss, counted_probs, right = subject.run("softmax_cross_entropy_count", x, t)
    assert right.shape == () and np.issubdtype(right.dtype, np.integer)
    assert right == np.sum((np.argmax(x, axis=1) == t) & np.isfinite(x).all(axis=1))
    EQUAL(counted_probs, probs)  # the same arithmetic as softmax_cross_entropy's, row by row
    assert counted_loss.dtype == x.dtype
    if subject.tolerance("softmax_cross_entropy_count") == ORDER:  # the row losses summed in another order
        # the row losses are non-negative: their sum is its own sum of absolute terms; + 1: the division
        assert_close_to_sum(counted_loss, loss, np.abs(loss), sum_rtol(x.dtype, n + 1), "counted loss")
    else:
        EQUAL(counted_loss, loss)
    _, _, soft_right = subject.run("softmax_cross_entropy_count", x, onehot)
    assert soft_right == right

    scale = 0.7 / n  # dout / N
    ref_probs = np.exp(logp).astype(x.dtype)
    want = (ref_probs - onehot) * x.dtype.type(scale)
    EQUAL(subject.run("softmax_cross_entropy_backward", ref_probs, t, scale), want)
    EQUAL(subject.run("softmax_cross_entropy_backward", ref_probs, onehot, scale), want)

    # The count with the gradient: the count's results, and the backward of its own
    # probabilities, bit for bit.
    for targets in (t, onehot):
        *counted, dx = subject.run("softmax_cross_entropy_count_grad", x, targets, scale)
        for got, expected in zip(counted, subject.run("softmax_cross_entropy_count", x, targets)):
            EQUAL(got, expected)
        assert dx.dtype == x.dtype
        EQUAL(dx, subject.run("softmax_cross_entropy_backward", counted[1], targets, scale))


@given(scores())
def test_the_loss_of_biased_rows_and_its_bias_gradient(subject, case):
    """``bias_softmax_cross_entropy_count_grad`` is the set's ``softmax_cross_entropy_count_grad``
    of ``rows + b`` bit for bit (the bias added with the same one float add), and its db the
    set's ``bias_grad`` of that dx (to rounding where the set sums the columns in another order)."""
    rows, t, b = case.x, case.t, case.b
    n, k = rows.shape
    scale = 1.0 / n
    for targets in (t, np.eye(k, dtype=rows.dtype)[t]):
        *got, db = subject.run("bias_softmax_cross_entropy_count_grad", rows, b, targets, scale)
        want = subject.run("softmax_cross_entropy_count_grad", rows + b, targets, scale)
        for got_one, want_one in zip(got, want, strict=True):
            EQUAL(got_one, want_one)
        dx = want[3]
        assert db.shape == (k,) and db.dtype == rows.dtype
        rtol = subject.sum_rtol("bias_softmax_cross_entropy_count_grad", rows.dtype, n, exact=False)
        assert_close_to_sum(db, subject.run("bias_grad", dx), abs64(dx).sum(axis=0), rtol, "db")


# -- optimizer steps --------------------------------------------------------------------------------

# The state arrays and hyperparameters of each step. Every ``1 - beta`` (and ``1 - decay``)
# is exact in float32, so every set starts from the same coefficients: rounded in float32
# from a rounded beta, or in float64 and then to float32, they would differ by up to
# eps / (1 - beta) of themselves.
OPTIMIZER_STEPS = {
    "sgd_update": ((), (0.05,)),
    "momentum_update": (("velocity",), (0.05, 0.9)),
    "adagrad_update": (("h",), (0.06, 1e-7)),
    "rmsprop_update": (("h",), (0.01, 1 - 2**-7, 1e-7)),
    "adam_update": (("m", "v"), (0.003, 1 - 2**-3, 1 - 2**-10, 1e-7)),
}


def optimizer_step(name: str, param, grad, state, scalars) -> tuple[list, list]:
    """The step's formula (see :mod:`gpucnn.optimizers`) in the arrays' dtype, and the sum of
    the absolute terms of each updated array, in float64: ``(param, *state)`` both."""
    a = [abs64(v) for v in (param, grad, *state)]
    if name == "sgd_update":
        (lr,) = scalars
        return [param - lr * grad], [a[0] + lr * a[1]]
    if name == "momentum_update":
        lr, momentum = scalars
        velocity = state[0] * momentum - lr * grad
        velocity_abs = a[2] * momentum + lr * a[1]
        return [param + velocity, velocity], [a[0] + velocity_abs, velocity_abs]
    if name == "adagrad_update":
        lr, eps_ = scalars
        h = state[0] + grad * grad
        step_abs = lr * a[1] / (np.sqrt(h.astype(np.float64)) + eps_)
        return [param - lr * grad / (np.sqrt(h) + eps_), h], [a[0] + step_abs, a[2] + a[1] ** 2]
    if name == "rmsprop_update":
        lr, decay, eps_ = scalars
        h = state[0] * decay + (1 - decay) * grad * grad
        step_abs = lr * a[1] / (np.sqrt(h.astype(np.float64)) + eps_)
        return [param - lr * grad / (np.sqrt(h) + eps_), h], [a[0] + step_abs, decay * a[2] + (1 - decay) * a[1] ** 2]
    lr_t, beta1, beta2, eps_ = scalars
    m = state[0] + (1 - beta1) * (grad - state[0])
    v = state[1] + (1 - beta2) * (grad * grad - state[1])
    m_abs = a[2] + (1 - beta1) * (a[1] + a[2])
    v_abs = a[3] + (1 - beta2) * (a[1] ** 2 + a[3])
    step_abs = lr_t * m_abs / (np.sqrt(v.astype(np.float64)) + eps_)
    return [param - lr_t * m / (np.sqrt(v) + eps_), m, v], [a[0] + step_abs, m_abs, v_abs]


@given(optimizer_arrays())
def test_optimizer_steps_update_in_place(subject, case):
    param, grad = case.param, case.grad
    for name, (states, scalars) in OPTIMIZER_STEPS.items():
        state = case.state[: len(states)]
        on_backend = [subject.put(a) for a in (param, *state)]
        result = getattr(subject.kernels, name)(on_backend[0], subject.put(grad), *on_backend[1:], *scalars)
        assert result is None  # the step updates its arguments
        got = [subject.get(a) for a in on_backend]
        want, abs_terms = optimizer_step(name, param, grad, state, scalars)
        if not subject.is_oracle:
            want = [param.copy(), *(s.copy() for s in state)]
            getattr(NP, name)(want[0], grad, *want[1:], *scalars)
        rtol = ELEMENTARY_ULPS * eps(param.dtype) if subject.tolerance(name) == ULPS else 0.0
        for what, g, w, terms in zip(("param", *states), got, want, abs_terms):
            assert g.dtype == param.dtype, f"{name}: {what}"
            assert_close_to_sum(g, w, terms, rtol, f"{name}: {what}")


@pytest.mark.parametrize("name", sorted(OPTIMIZER_STEPS))
def test_optimizer_steps_on_many_parameters_are_the_one_parameter_steps(subject, name):
    """Every set's ``*_many`` step leaves each parameter and its state as its one-parameter
    step does, bit for bit (the CUDA set: one launch for all of them)."""
    states, scalars = OPTIMIZER_STEPS[name]
    rng = np.random.default_rng(8)
    shapes = [(6, 1, 3, 3), (6,), (54, 5), (5,), (1,)]
    columns = [[rng.standard_normal(shape).astype(np.float32) for shape in shapes] for _ in range(2 + len(states))]
    columns[2:] = [[np.abs(a) for a in column] for column in columns[2:]]
    one = [[subject.put(a) for a in column] for column in columns]
    many = [[subject.put(a) for a in column] for column in columns]
    for arrays in zip(*one):
        getattr(subject.kernels, name)(*arrays, *scalars)
    assert getattr(subject.kernels, f"{name}_many")(*many, *scalars) is None
    for column_one, column_many in zip(one, many):
        for a, b in zip(column_one, column_many):
            EQUAL(subject.get(b), subject.get(a))
    with pytest.raises(ValueError, match=r"must be as many, got \[5, 4"):
        getattr(subject.kernels, f"{name}_many")(many[0], many[1][:4], *many[2:], *scalars)


def test_optimizer_step_on_a_strided_view_updates_the_viewed_elements(subject):
    base = subject.put(np.ones((4, 6)))
    view = base[:, ::2]
    subject.kernels.sgd_update(view, subject.put(np.ones((4, 3))), 0.5)
    updated = subject.get(base)
    EQUAL(updated[:, ::2], 0.5)
    EQUAL(updated[:, 1::2], 1.0)


# -- strided inputs, conventions and NaN ------------------------------------------------------------


def test_strided_inputs_are_read_as_their_values(subject):
    """A permuted view, made by the backend's own namespace, is read as its values."""
    host = np.arange(120, dtype=np.float64).reshape(5, 3, 2, 4) % 7  # repeated values: tied maxima
    x = subject.backend.xp.permute_dims(subject.put(host), (2, 1, 3, 0))  # (2, 3, 4, 5)
    contiguous = host.transpose(2, 1, 3, 0).copy()
    EQUAL(subject.get(subject.kernels.im2col(x, 3, 2, 1, 1)), NP.im2col(contiguous, 3, 2, 1, 1))
    for got, want in zip(subject.kernels.maxpool_forward(x, 2, 2, 2, 0), NP.maxpool_forward(contiguous, 2, 2, 2, 0)):
        EQUAL(subject.get(got), want)
    EQUAL(subject.get(subject.kernels.avgpool_forward(x, 2, 3, 1, 1)), NP.avgpool_forward(contiguous, 2, 3, 1, 1))


def test_max_pooling_never_picks_a_pad_cell(subject):
    x = -np.arange(1, 5, dtype=np.float32).reshape(1, 1, 2, 2)
    out, argmax = subject.run("maxpool_forward", x, 3, 3, 1, 1)
    # Every window is padded, every value negative: a zero pad would win; a -inf pad never does.
    EQUAL(out, [[[[-1, -1], [-1, -1]]]])
    EQUAL(argmax, [[[[4, 3], [1, 0]]]])


def test_argmax_is_the_window_local_first_maximum(subject):
    x = np.array([[[[1, 5, 5, 0], [5, 2, 3, 9]]]], dtype=np.float64)
    out, argmax = subject.run("maxpool_forward", x, 2, 2, 2, 0)
    EQUAL(out, [[[[5, 9]]]])
    EQUAL(argmax, [[[[1, 3]]]])  # ties: the first in row-major order


def test_average_pooling_counts_pad_cells(subject):
    out = subject.run("avgpool_forward", np.ones((1, 1, 2, 2)), 2, 2, 2, 1)
    EQUAL(out, np.full((1, 1, 2, 2), 0.25))


REFUSED = {  # operation: arguments the interface excludes, and the message
    "im2col": ((np.zeros((1, 1, 4, 4)), 5, 5, 1, 0), "window 5 does not fit in input 4 with pad 0"),
    "maxpool_forward": ((np.zeros((1, 1, 4, 4)), 2, 2, 2, 2), "pooling pad 2 is more than half the window 2x2"),
    "avgpool_forward": ((np.zeros((1, 1, 4, 4)), 3, 2, 2, 2), "pooling pad 2 is more than half the window 3x2"),
    "bias_relu_maxpool": (
        (np.zeros((16, 2)), np.zeros(2), 1, 4, 4, 2, 2, 2, 2),
        "pooling pad 2 is more than half the window 2x2",
    ),
    "conv_bias_relu_maxpool": (
        (np.zeros((1, 1, 4, 4)), np.ones((1, 1, 1, 1)), np.zeros(1), 1, 0, 2, 2, 2, 2),
        "pooling pad 2 is more than half the window 2x2",
    ),
}


@pytest.mark.parametrize("operation", sorted(REFUSED))
def test_arguments_outside_the_interface_raise_the_same_error_on_every_set(subject, operation):
    args, message = REFUSED[operation]
    with pytest.raises(ValueError, match=message):
        subject.run(operation, *args)


# Sets whose NaN windows keep the NumPy set's argmax too (elsewhere it is unspecified).
NAN_ARGMAX_AS_NUMPY = {"numpy", "numba"}


@pytest.mark.parametrize("nans", [[(0, 0)], [(0, 1)], [(1, 1)], [(0, 1), (2, 2), (3, 3)], [(1, 0), (1, 1)]])
def test_a_nan_in_a_window_gives_nan(subject, nans):
    """Max pooling, fused or not, of 2x2 windows with stride 2: NaN exactly in the windows
    that hold one (as in PyTorch), the other windows as without it."""
    x = np.arange(32, dtype=np.float32).reshape(1, 2, 4, 4) % 5  # ties in the windows
    nan_windows = np.zeros((1, 2, 2, 2), dtype=bool)
    for y, xx in nans:
        x[0, 0, y, xx] = np.nan
        nan_windows[0, 0, y // 2, xx // 2] = True
    rows, zeros = ref.nchw_to_rows(x), np.zeros(2, np.float32)  # rows: the same values as a GEMM's
    channel0, copy = x[:, :1], np.ones((1, 1, 1, 1), np.float32)  # a 1x1 convolution copying channel 0
    cases = {  # operation: (arguments, the windows that hold a NaN)
        "maxpool_forward": ((x, 2, 2, 2, 0), nan_windows),
        "bias_relu_maxpool": ((rows, zeros, 1, 4, 4, 2, 2, 2, 0), nan_windows),
        "conv_bias_relu_maxpool": ((channel0, copy, zeros[:1], 1, 0, 2, 2, 2, 0), nan_windows[:, :1]),
    }
    for operation, (args, nan_expected) in cases.items():
        out, argmax = subject.run(operation, *args)
        want_out, want_argmax = getattr(NP, operation)(*args)
        EQUAL(np.isnan(out), nan_expected, err_msg=operation)
        EQUAL(out, want_out, err_msg=operation)  # NaN where NaN, the same values elsewhere
        if subject.name in NAN_ARGMAX_AS_NUMPY:
            EQUAL(argmax, want_argmax, err_msg=operation)
        else:
            EQUAL(argmax[~nan_expected], want_argmax[~nan_expected], err_msg=operation)
        if operation != "maxpool_forward":
            EQUAL(subject.run(f"{operation}_infer", *args), out, err_msg=operation)


def test_nan_and_inf_propagate_through_bias_relu_and_the_softmax(subject):
    rows = np.array([[np.nan, -1.0, 2.0], [1.0, -3.0, np.inf]], dtype=np.float32)
    EQUAL(subject.run("bias_relu", rows, np.zeros(3, np.float32)), [[np.nan, 0, 2], [1, 0, np.inf]])
    with np.errstate(invalid="ignore"):  # inf - inf
        loss, probs = subject.run("softmax_cross_entropy", rows, np.array([1, 0]))
        counted_loss, _, right = subject.run("softmax_cross_entropy_count", rows, np.array([2, 2]))
    assert np.isnan(loss) and np.isnan(probs).all()
    assert (
        np.isnan(counted_loss) and right == 0
    )  # the maxima 2.0 and inf are labelled, but a row with NaN or inf is wrong
