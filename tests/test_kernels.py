"""The kernel interface: NumPy set against loop references, generic set against NumPy,
the generic set under array_api_strict, and the documented conventions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gpucnn
from gpucnn.kernels import KERNEL_OPERATIONS, check_pool_pad, conv_output_size
from gpucnn.kernels.generic import GenericKernels
from gpucnn.kernels.numpy_set import NumpyKernels

from .reference import im2col_loops, pool_loops
from .strategies import window_case

NP = NumpyKernels()
GEN = GenericKernels(gpucnn.get_backend("numpy").xp)


def test_every_set_answers_every_operation(backend):
    for kernels in (GEN, backend.kernels):
        for name in KERNEL_OPERATIONS:
            assert callable(getattr(kernels, name)), name


@settings(max_examples=60, deadline=None)
@given(window_case())
def test_im2col_matches_loops_and_generic(case):
    x, kh, kw, stride, pad, _ = case
    col = NP.im2col(x, kh, kw, stride, pad)
    assert col.dtype == x.dtype and col.flags.c_contiguous
    np.testing.assert_array_equal(col, im2col_loops(x, kh, kw, stride, pad))
    np.testing.assert_array_equal(GEN.im2col(x, kh, kw, stride, pad), col)


@settings(max_examples=60, deadline=None)
@given(window_case())
def test_col2im_is_the_adjoint_of_im2col(case):
    x, kh, kw, stride, pad, _ = case
    col = NP.im2col(x, kh, kw, stride, pad)
    c = np.random.default_rng(0).standard_normal(col.shape).astype(x.dtype)
    dx = NP.col2im(c, x.shape, kh, kw, stride, pad)
    assert dx.shape == x.shape and dx.dtype == x.dtype
    # <im2col(x), c> == <x, col2im(c)> for every x: col2im is exactly im2col's transpose.
    np.testing.assert_allclose(np.vdot(col, c), np.vdot(x, dx), rtol=1e-4 if x.dtype == np.float32 else 1e-10)
    np.testing.assert_allclose(
        GEN.col2im(c, x.shape, kh, kw, stride, pad), dx, rtol=1e-5 if x.dtype == np.float32 else 1e-12, atol=1e-5
    )


@settings(max_examples=60, deadline=None)
@given(window_case(pool=True))
def test_pooling_matches_loops_and_generic(case):
    x, kh, kw, stride, pad, _ = case
    out, arg = NP.maxpool_forward(x, kh, kw, stride, pad)
    ref_out, ref_arg = pool_loops(x, kh, kw, stride, pad, "max")
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_array_equal(arg, ref_arg)
    assert out.dtype == x.dtype and arg.dtype == np.int32
    g_out, g_arg = GEN.maxpool_forward(x, kh, kw, stride, pad)
    np.testing.assert_array_equal(g_out, out)
    np.testing.assert_array_equal(g_arg, arg)

    dout = np.random.default_rng(1).standard_normal(out.shape).astype(x.dtype)
    dx = NP.maxpool_backward(dout, arg, x.shape, kh, kw, stride, pad)
    np.testing.assert_allclose(GEN.maxpool_backward(dout, arg, x.shape, kh, kw, stride, pad), dx, rtol=1e-6)
    # Each dout entry lands on one input pixel: the totals agree.
    np.testing.assert_allclose(dx.sum(), dout.sum(), rtol=1e-4, atol=1e-4)

    avg = NP.avgpool_forward(x, kh, kw, stride, pad)
    tol = 1e-5 if x.dtype == np.float32 else 1e-12
    np.testing.assert_allclose(avg, pool_loops(x, kh, kw, stride, pad, "avg")[0], rtol=tol, atol=tol)
    np.testing.assert_allclose(GEN.avgpool_forward(x, kh, kw, stride, pad), avg, rtol=tol, atol=tol)
    davg = NP.avgpool_backward(dout, x.shape, kh, kw, stride, pad)
    assert davg.dtype == x.dtype
    np.testing.assert_allclose(GEN.avgpool_backward(dout, x.shape, kh, kw, stride, pad), davg, rtol=tol, atol=tol)


@settings(max_examples=40, deadline=None)
@given(window_case(pool=True), st.integers(1, 5))
def test_fused_bias_relu_maxpool_equals_its_composition(case, fn):
    x, kh, kw, stride, pad, _ = case
    n, _, h, w = x.shape
    rng = np.random.default_rng(2)
    rows = rng.standard_normal((n * h * w, fn)).astype(x.dtype)
    b = rng.standard_normal(fn).astype(x.dtype)
    y = NP.rows_to_nchw(rows + b, n, h, w)
    pooled, arg = NP.maxpool_forward(np.maximum(y, 0), kh, kw, stride, pad)
    for kernels in (NP, GEN):
        out, argmax = kernels.bias_relu_maxpool(rows, b, n, h, w, kh, kw, stride, pad)
        np.testing.assert_array_equal(out, pooled)
        dout = rng.standard_normal(out.shape).astype(x.dtype)
        drows = kernels.maxpool_relu_backward(dout, argmax, out, n, h, w, kh, kw, stride, pad)
        unfused = NP.maxpool_backward(dout, arg, y.shape, kh, kw, stride, pad) * (y > 0)
        np.testing.assert_allclose(drows, NP.nchw_to_rows(unfused), rtol=1e-6, atol=1e-6)


def test_max_pooling_never_picks_a_pad_cell():
    x = -np.ones((1, 1, 2, 2), dtype=np.float32) * np.arange(1, 5, dtype=np.float32).reshape(1, 1, 2, 2)
    out, arg = NP.maxpool_forward(x, 3, 3, 1, 1)
    # Every window is padded, every value is negative: a zero pad would win; -inf pad never does.
    np.testing.assert_array_equal(out, [[[[-1, -1], [-1, -1]]]])
    assert (arg == np.array([[[[4, 3], [1, 0]]]])).all()


def test_argmax_is_window_local_first_maximum():
    x = np.array([[[[1, 5, 5, 0], [5, 2, 3, 9]]]], dtype=np.float64)
    out, arg = NP.maxpool_forward(x, 2, 2, 2, 0)
    np.testing.assert_array_equal(out, [[[[5, 9]]]])
    np.testing.assert_array_equal(arg, [[[[1, 3]]]])  # ties: the first in row-major order


def test_average_pooling_counts_pad_cells():
    x = np.ones((1, 1, 2, 2))
    np.testing.assert_allclose(NP.avgpool_forward(x, 2, 2, 2, 1), np.full((1, 1, 2, 2), 0.25))


def test_output_size_formula_and_ignored_remainder():
    assert conv_output_size(28, 5, 1, 0) == 24
    assert conv_output_size(7, 3, 2, 0) == 3  # (7 - 3) // 2 + 1: the remainder is ignored
    assert conv_output_size(8, 3, 2, 0) == 3  # the last column is never reached
    assert conv_output_size(5, 3, 2, 1) == 3
    x = np.arange(8.0).reshape(1, 1, 1, 8)
    dx = NP.col2im(np.ones((3, 3)), x.shape, 1, 3, 2, 0)
    assert dx[0, 0, 0, 7] == 0  # the unreached column gets a zero gradient


def test_output_size_errors_name_the_numbers():
    with pytest.raises(ValueError, match=r"window 5 does not fit in input 3 with pad 0 .* = -1, below 1"):
        conv_output_size(3, 5, 1, 0)
    with pytest.raises(ValueError, match="stride must be >= 1, got 0"):
        conv_output_size(3, 1, 0, 0)
    with pytest.raises(ValueError, match="pooling pad 2 is more than half the window 3x3"):
        check_pool_pad(3, 3, 2)
    with pytest.raises(ValueError, match="pooling pad"):
        NP.maxpool_forward(np.zeros((1, 1, 4, 4)), 2, 2, 2, 2)


def test_optimizer_updates_keep_dtype_and_work_in_place():
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        p = rng.standard_normal(5).astype(dtype)
        g = rng.standard_normal(5).astype(dtype)
        h = np.zeros_like(p)
        expected = p - 0.1 * g / (np.sqrt(g * g) + 1e-7)
        ref = p
        NP.adagrad_update(p, g, h, 0.1, 1e-7)
        assert p is ref and p.dtype == dtype
        np.testing.assert_allclose(p, expected, rtol=1e-6)


# -- the generic set under array_api_strict -------------------------------------------------


@pytest.mark.parametrize("kh,kw,stride,pad", [(3, 3, 1, 1), (2, 3, 2, 0), (3, 2, 3, 1)])
def test_generic_kernels_run_on_array_api_strict(kh, kw, stride, pad):
    xps = pytest.importorskip("array_api_strict")
    k = GenericKernels(xps)
    x = np.random.default_rng(3).standard_normal((2, 3, 7, 6))
    xs = xps.asarray(x)
    host = lambda a: np.from_dlpack(a)  # noqa: E731
    col = k.im2col(xs, kh, kw, stride, pad)
    np.testing.assert_array_equal(host(col), NP.im2col(x, kh, kw, stride, pad))
    np.testing.assert_allclose(
        host(k.col2im(col, x.shape, kh, kw, stride, pad)), NP.col2im(host(col), x.shape, kh, kw, stride, pad)
    )
    ppad = min(pad, kh // 2, kw // 2)
    out, arg = k.maxpool_forward(xs, kh, kw, stride, ppad)
    ref_out, ref_arg = NP.maxpool_forward(x, kh, kw, stride, ppad)
    np.testing.assert_array_equal(host(out), ref_out)
    np.testing.assert_array_equal(host(arg), ref_arg)
    dout = xps.ones(out.shape, dtype=xps.float64)
    np.testing.assert_allclose(
        host(k.maxpool_backward(dout, arg, x.shape, kh, kw, stride, ppad)),
        NP.maxpool_backward(np.ones(ref_out.shape), ref_arg, x.shape, kh, kw, stride, ppad),
    )
    np.testing.assert_allclose(
        host(k.avgpool_forward(xs, kh, kw, stride, ppad)), NP.avgpool_forward(x, kh, kw, stride, ppad)
    )


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 7), st.integers(1, 12), st.sampled_from([np.float32, np.float64]), st.integers(0, 2**16))
def test_bias_relu_and_softmax_cross_entropy(n, k, dtype, seed):
    rng = np.random.default_rng(seed)
    rows = (rng.standard_normal((n, k)) * 30).astype(dtype)  # large scores: the log-sum-exp must hold
    b = rng.standard_normal(k).astype(dtype)
    t = rng.integers(0, k, n)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for kernels in (NP, GEN):
        np.testing.assert_allclose(kernels.bias_grad(rows), rows.sum(axis=0, dtype=np.float64), rtol=tol, atol=tol)
        out = kernels.bias_relu(rows, b)
        assert out.dtype == dtype
        np.testing.assert_array_equal(out, np.maximum(rows + b, 0))
        loss, probs = kernels.softmax_cross_entropy(rows, t)
        z = rows.astype(np.float64) - rows.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        assert loss.shape == () and loss.dtype == dtype and probs.dtype == dtype
        assert float(loss) == pytest.approx(-logp[np.arange(n), t].mean(), rel=tol, abs=tol)
        np.testing.assert_allclose(probs, np.exp(logp), rtol=tol, atol=tol)
        onehot = np.eye(k, dtype=dtype)[t]
        assert float(kernels.softmax_cross_entropy(rows, onehot)[0]) == pytest.approx(float(loss), rel=tol, abs=tol)
        dx = kernels.softmax_cross_entropy_backward(probs, t, 0.5)
        np.testing.assert_allclose(dx, (probs - onehot) * 0.5, rtol=tol, atol=tol)
        np.testing.assert_allclose(kernels.softmax_cross_entropy_backward(probs, onehot, 0.5), dx, rtol=tol, atol=tol)


def test_a_nan_in_a_window_gives_nan_on_every_backend(backend):
    x = np.arange(32, dtype=np.float32).reshape(1, 2, 4, 4)
    x[0, 0, 1, 2] = np.nan  # window (0, 1) of channel 0
    k = backend.kernels
    out, _ = k.maxpool_forward(backend.asarray(x), 2, 2, 2, 0)
    out = backend.to_numpy(out)
    assert np.isnan(out[0, 0, 0, 1]) and np.isnan(out).sum() == 1
    rows = backend.asarray(x.transpose(0, 2, 3, 1).reshape(16, 2))  # the same values as GEMM rows
    fused = backend.to_numpy(k.bias_relu_maxpool(rows, backend.asarray(np.zeros(2, np.float32)), 1, 4, 4, 2, 2, 2)[0])
    assert np.isnan(fused[0, 0, 0, 1]) and np.isnan(fused).sum() == 1
