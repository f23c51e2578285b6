"""The Numba kernel set against the NumPy set (the oracle) on random shapes and data.

Exact equality wherever the Numba set promises it (see :mod:`gpucnn.kernels.numba_set`);
``avgpool_forward`` to float rounding.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("numba", reason="the numba kernel set needs Numba (pip install 'gpucnn[numba]')")

import gpucnn  # noqa: E402
from gpucnn.kernels import conv_output_size  # noqa: E402
from gpucnn.kernels.numba_set import NumbaKernels  # noqa: E402
from gpucnn.kernels.numpy_set import NumpyKernels  # noqa: E402

from .strategies import data, window_case  # noqa: E402

NP = NumpyKernels()
NB = NumbaKernels(gpucnn.get_backend("numpy").xp)
EQUAL = np.testing.assert_array_equal


@settings(max_examples=50, deadline=None)
@given(window_case())
def test_im2col_and_col2im_equal_numpy(args):
    x, kh, kw, stride, pad, rng = args
    col = NB.im2col(x, kh, kw, stride, pad)
    assert col.dtype == x.dtype and col.flags.c_contiguous
    EQUAL(col, NP.im2col(x, kh, kw, stride, pad))
    dcol = rng.standard_normal(col.shape).astype(x.dtype)
    dx = NB.col2im(dcol, x.shape, kh, kw, stride, pad)
    assert dx.shape == x.shape and dx.dtype == x.dtype
    EQUAL(dx, NP.col2im(dcol, x.shape, kh, kw, stride, pad))


def test_im2col_accepts_strided_views():
    x = np.random.default_rng(0).standard_normal((3, 4, 9, 8))[:, ::2, :, 1:]
    EQUAL(NB.im2col(x, 3, 2, 2, 1), NP.im2col(x, 3, 2, 2, 1))


@settings(max_examples=50, deadline=None)
@given(window_case(pool=True))
def test_pooling_equals_numpy(args):
    x, kh, kw, stride, pad, rng = args
    out, argmax = NB.maxpool_forward(x, kh, kw, stride, pad)
    ref_out, ref_argmax = NP.maxpool_forward(x, kh, kw, stride, pad)
    assert out.dtype == x.dtype and argmax.dtype == np.int32
    EQUAL(out, ref_out)
    EQUAL(argmax, ref_argmax)
    dout = rng.standard_normal(out.shape).astype(x.dtype)
    EQUAL(
        NB.maxpool_backward(dout, argmax, x.shape, kh, kw, stride, pad),
        NP.maxpool_backward(dout, ref_argmax, x.shape, kh, kw, stride, pad),
    )

    tol = 1e-6 if x.dtype == np.float32 else 1e-14
    avg = NB.avgpool_forward(x, kh, kw, stride, pad)
    assert avg.dtype == x.dtype
    np.testing.assert_allclose(avg, NP.avgpool_forward(x, kh, kw, stride, pad), rtol=tol, atol=tol)
    EQUAL(
        NB.avgpool_backward(dout, x.shape, kh, kw, stride, pad), NP.avgpool_backward(dout, x.shape, kh, kw, stride, pad)
    )


@settings(max_examples=60, deadline=None)
@given(window_case(pool=True), st.integers(1, 16), st.booleans())
def test_fused_conv_relu_pool_ops_equal_numpy(args, fn, ties):
    """Both paths of the backward: disjoint windows (stride >= window) and overlapping ones."""
    x, kh, kw, stride, pad, rng = args
    n, _, oh, ow = x.shape  # x only sets the geometry: the conv output is (n, fn, oh, ow)
    rows = data(rng, (n * oh * ow, fn), x.dtype, ties)
    b = data(rng, (fn,), x.dtype, ties)
    out, argmax = NB.bias_relu_maxpool(rows, b, n, oh, ow, kh, kw, stride, pad)
    ref_out, ref_argmax = NP.bias_relu_maxpool(rows, b, n, oh, ow, kh, kw, stride, pad)
    ph, pw = conv_output_size(oh, kh, stride, pad), conv_output_size(ow, kw, stride, pad)
    assert out.shape == argmax.shape == (n, fn, ph, pw) and out.dtype == x.dtype
    EQUAL(out, ref_out)
    EQUAL(argmax, ref_argmax)
    EQUAL(NB.bias_relu_maxpool_infer(rows, b, n, oh, ow, kh, kw, stride, pad), ref_out)
    dout = rng.standard_normal(out.shape).astype(x.dtype)
    drows = NB.maxpool_relu_backward(dout, argmax, out, n, oh, ow, kh, kw, stride, pad)
    assert drows.shape == rows.shape and drows.dtype == x.dtype
    EQUAL(drows, NP.maxpool_relu_backward(dout, ref_argmax, ref_out, n, oh, ow, kh, kw, stride, pad))


@pytest.mark.parametrize("where", [0, 1, 3])
def test_nan_wins_the_window_as_in_numpy(where):
    """A NaN anywhere in a window makes the pooled value NaN; the last NaN is the argmax."""
    x = np.arange(16.0, dtype=np.float32).reshape(1, 1, 4, 4)
    x[0, 0, where // 2, where % 2] = np.nan
    x[0, 0, 3, 3] = np.nan
    x[0, 0, 2, 2] = np.nan
    ref = NP.maxpool_forward(x, 2, 2, 2, 0)
    for got, want in zip(NB.maxpool_forward(x, 2, 2, 2, 0), ref):
        EQUAL(got, want)
    rows = NP.nchw_to_rows(x)
    ref = NP.bias_relu_maxpool(rows, np.zeros(1, np.float32), 1, 4, 4, 2, 2, 2, 0)
    for got, want in zip(NB.bias_relu_maxpool(rows, np.zeros(1, np.float32), 1, 4, 4, 2, 2, 2, 0), ref):
        EQUAL(got, want)
    EQUAL(NB.bias_relu_maxpool_infer(rows, np.zeros(1, np.float32), 1, 4, 4, 2, 2, 2, 0), ref[0])


@st.composite
def direct_conv_case(draw):
    """``(x, w, b, pad, pool, exact, rng)`` for a stride-1 convolution that the Numba set
    computes directly (C*FH*FW taps at most ``direct_conv_max_taps``), followed by a max
    pooling ``pool = (kh, kw, stride, pad)``. Half the cases are ``exact``: small integers
    everywhere, so that every sum is exact whatever its order and windows hold ties."""
    n = draw(st.sampled_from([1, 2, 3, 5]))
    c = draw(st.integers(1, 3))
    fh = draw(st.integers(1, 5))
    fw = draw(st.integers(1, max(1, min(5, NB.direct_conv_max_taps // (c * fh)))))
    fn = draw(st.integers(1, 9))
    pad = draw(st.integers(0, 3))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    pool = (kh, kw, draw(st.integers(1, 3)), draw(st.integers(0, min(kh, kw) // 2)))
    h = draw(st.integers(max(1, fh - 2 * pad + kh - 2 * pool[3]), 12))
    w = draw(st.integers(max(1, fw - 2 * pad + kw - 2 * pool[3]), 12))
    exact = draw(st.booleans())
    dtype = draw(st.sampled_from([np.float32, np.float64])) if exact else np.float64
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x, wt, bias = (data(rng, shape, dtype, exact) for shape in ((n, c, h, w), (fn, c, fh, fw), (fn,)))
    return x, wt, bias, pad, pool, exact, rng


@settings(max_examples=60, deadline=None)
@given(direct_conv_case())
def test_direct_convolution_equals_numpys_composition(case):
    """Equal to im2col, a GEMM and the fused pooling: exactly when every sum is exact,
    to float64 rounding otherwise (the sums run in another order)."""
    x, w, b, pad, pool, exact, rng = case
    assert NB.prefers_direct_conv(w.shape[1], w.shape[2], w.shape[3], 1)
    out, argmax = NB.conv_bias_relu_maxpool(x, w, b, 1, pad, *pool)
    ref_out, ref_argmax = NP.conv_bias_relu_maxpool(x, w, b, 1, pad, *pool)
    assert out.dtype == x.dtype and argmax.dtype == np.int32 and out.shape == ref_out.shape
    close = EQUAL if exact else lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    close(out, ref_out)
    EQUAL(argmax, ref_argmax)
    EQUAL(NB.conv_bias_relu_maxpool_infer(x, w, b, 1, pad, *pool), out)
    dout = data(rng, out.shape, x.dtype, exact)
    dw, db = NB.conv_maxpool_relu_backward_params(dout, argmax, out, x, w.shape, 1, pad, *pool)
    ref_dw, ref_db = NP.conv_maxpool_relu_backward_params(dout, ref_argmax, ref_out, x, w.shape, 1, pad, *pool)
    assert dw.shape == w.shape and db.shape == b.shape and dw.dtype == db.dtype == x.dtype
    close(dw, ref_dw)
    close(db, ref_db)


@pytest.mark.parametrize("stride, filter_size, channels", [(2, 3, 1), (1, 3, 4)])
def test_convolutions_the_numba_set_does_not_compute_directly_take_the_gemm(stride, filter_size, channels):
    """A stride above 1 or more taps than ``direct_conv_max_taps``: im2col and the GEMM,
    the NumPy set's computation, bit for bit."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, channels, 9, 8))
    w, b = rng.standard_normal((5, channels, filter_size, filter_size)), rng.standard_normal(5)
    assert not NB.prefers_direct_conv(channels, filter_size, filter_size, stride)
    out, argmax = NB.conv_bias_relu_maxpool(x, w, b, stride, 1, 2, 2, 2, 0)
    for got, want in zip((out, argmax), NP.conv_bias_relu_maxpool(x, w, b, stride, 1, 2, 2, 2, 0)):
        EQUAL(got, want)
    EQUAL(NB.conv_bias_relu_maxpool_infer(x, w, b, stride, 1, 2, 2, 2, 0), out)
    dout = rng.standard_normal(out.shape)
    for got, want in zip(
        NB.conv_maxpool_relu_backward_params(dout, argmax, out, x, w.shape, stride, 1, 2, 2, 2, 0),
        NP.conv_maxpool_relu_backward_params(dout, argmax, out, x, w.shape, stride, 1, 2, 2, 2, 0),
    ):
        EQUAL(got, want)


def test_direct_convolution_lets_a_nan_win_its_window():
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 1, 2] = np.nan
    w, b = np.ones((1, 1, 1, 1)), np.zeros(1)
    out, argmax = NB.conv_bias_relu_maxpool(x, w, b, 1, 0, 2, 2, 2, 0)
    ref_out, ref_argmax = NP.conv_bias_relu_maxpool(x, w, b, 1, 0, 2, 2, 2, 0)
    assert np.isnan(out[0, 0, 0, 1])
    assert np.isnan(NB.conv_bias_relu_maxpool_infer(x, w, b, 1, 0, 2, 2, 2, 0)[0, 0, 0, 1])
    EQUAL(out, ref_out)
    EQUAL(argmax, ref_argmax)


OPTIMIZER_STEPS = {
    "sgd_update": ((), (0.05,)),
    "momentum_update": (("velocity",), (0.05, 0.9)),
    "adagrad_update": (("h",), (0.06, 1e-7)),
    "rmsprop_update": (("h",), (0.01, 0.99, 1e-7)),
    "adam_update": (("m", "v"), (0.003, 0.9, 0.999, 1e-7)),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZER_STEPS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(7,), (5, 3), (2, 3, 4, 5)])
def test_optimizer_steps_equal_numpy_in_place(name, dtype, shape):
    states, scalars = OPTIMIZER_STEPS[name]
    rng = np.random.default_rng(5)
    param = rng.standard_normal(shape).astype(dtype)
    slots = [np.abs(rng.standard_normal(shape)).astype(dtype) for _ in states]
    ref_param, ref_slots = param.copy(), [s.copy() for s in slots]
    for _ in range(3):  # several steps, so that the state feeds back
        grad = rng.standard_normal(shape).astype(dtype)
        same = param
        getattr(NB, name)(param, grad, *slots, *scalars)
        getattr(NP, name)(ref_param, grad, *ref_slots, *scalars)
        assert param is same and param.dtype == dtype
        EQUAL(param, ref_param)
        for s, r in zip(slots, ref_slots):
            EQUAL(s, r)


def test_optimizer_step_on_a_strided_parameter_updates_it_in_place():
    base = np.ones((4, 6))
    param = base[:, ::2]
    NB.sgd_update(param, np.ones_like(param), 0.5)
    EQUAL(base[:, ::2], 0.5)
    EQUAL(base[:, 1::2], 1.0)


_OPENBLAS_TIMEOUT = """
import ctypes, os
from threadpoolctl import threadpool_info
import numpy, gpucnn.kernels.numba_set
pool = next(p for p in threadpool_info() if p["internal_api"] == "openblas")
print(ctypes.CDLL(pool["filepath"]).openblas_thread_timeout(), os.environ.get("OPENBLAS_THREAD_TIMEOUT"))
"""


@pytest.mark.parametrize("users_value", [None, "10"])
def test_openblas_workers_sleep_when_idle_unless_the_user_says_otherwise(users_value):
    """Loading the Numba set sets OpenBLAS's idle timeout to 2**4 cycles (see its Threads
    section), in a fresh process where NumPy loaded OpenBLAS first; a value the user put
    in the environment stays, and the environment seen by child processes is unchanged."""
    import subprocess
    import sys

    threadpoolctl = pytest.importorskip("threadpoolctl")
    if not any(p["internal_api"] == "openblas" for p in threadpoolctl.threadpool_info()):
        pytest.skip("NumPy does not use OpenBLAS here")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    if users_value is not None:
        env["OPENBLAS_THREAD_TIMEOUT"] = users_value
    done = subprocess.run([sys.executable, "-c", _OPENBLAS_TIMEOUT], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [users_value or "4", str(users_value)]


def test_parallel_kernels_can_be_called_from_several_threads():
    from concurrent.futures import ThreadPoolExecutor

    x = np.random.default_rng(3).standard_normal((4, 3, 16, 16)).astype(np.float32)
    want = NP.im2col(x, 3, 3, 1, 1)
    with ThreadPoolExecutor(4) as pool:
        for col in pool.map(lambda _: NB.im2col(x, 3, 3, 1, 1), range(16)):
            EQUAL(col, want)
