"""The CUDA kernel set against the NumPy oracle: on the CPU through the ``cuda-emu``
backend (the very .cu sources compiled as C++), and on a GPU (``-m gpu``) through CuPy."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gpucnn
from gpucnn.backend import BackendUnavailable
from gpucnn.kernels import KERNEL_OPERATIONS
from gpucnn.kernels.cuda_set import CUDA_SOURCES, CudaKernels, CudaSource
from gpucnn.kernels.generic import GenericKernels
from gpucnn.kernels.numpy_set import NumpyKernels

from .strategies import window_case

NP = NumpyKernels()


def _kernels_or_skip(name: str) -> CudaKernels:
    try:
        return gpucnn.get_backend(name).kernels
    except BackendUnavailable as exc:
        pytest.skip(f"backend {name!r} unavailable: {exc}")


@pytest.fixture(scope="module")
def emu() -> CudaKernels:
    return _kernels_or_skip("cuda-emu")


def _tol(dtype) -> dict:
    return {"rtol": 1e-5, "atol": 1e-5} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-12}


# -- the kernels against the NumPy oracle (cuda-emu) ------------------------------------------


def test_every_cuda_kernel_backs_an_operation():
    kernels = {k for source in CUDA_SOURCES for k in source.kernels}
    assert kernels <= set(KERNEL_OPERATIONS)
    for name in kernels:  # the wrapper runs the kernel instead of the generic composition
        assert getattr(CudaKernels, name) is not getattr(GenericKernels, name), name


@settings(max_examples=25, deadline=None)
@given(window_case())
def test_im2col_and_col2im_match_numpy(emu, case):
    x, kh, kw, stride, pad, _ = case
    col = emu.im2col(x, kh, kw, stride, pad)
    assert col.dtype == x.dtype
    np.testing.assert_array_equal(col, NP.im2col(x, kh, kw, stride, pad))
    c = np.random.default_rng(0).standard_normal(col.shape).astype(x.dtype)
    dx = emu.col2im(c, x.shape, kh, kw, stride, pad)
    assert dx.shape == x.shape and dx.dtype == x.dtype
    np.testing.assert_allclose(dx, NP.col2im(c, x.shape, kh, kw, stride, pad), **_tol(x.dtype))


@settings(max_examples=25, deadline=None)
@given(window_case(pool=True, max_window=7))
def test_pooling_matches_numpy(emu, case):
    x, kh, kw, stride, pad, _ = case
    out, argmax = emu.maxpool_forward(x, kh, kw, stride, pad)
    ref_out, ref_argmax = NP.maxpool_forward(x, kh, kw, stride, pad)
    assert out.dtype == x.dtype and argmax.dtype == np.int32
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_array_equal(argmax, ref_argmax)

    dout = np.random.default_rng(1).standard_normal(out.shape).astype(x.dtype)
    np.testing.assert_allclose(
        emu.maxpool_backward(dout, argmax, x.shape, kh, kw, stride, pad),
        NP.maxpool_backward(dout, argmax, x.shape, kh, kw, stride, pad),
        **_tol(x.dtype),
    )
    np.testing.assert_allclose(
        emu.avgpool_forward(x, kh, kw, stride, pad), NP.avgpool_forward(x, kh, kw, stride, pad), **_tol(x.dtype)
    )
    np.testing.assert_allclose(
        emu.avgpool_backward(dout, x.shape, kh, kw, stride, pad),
        NP.avgpool_backward(dout, x.shape, kh, kw, stride, pad),
        **_tol(x.dtype),
    )


@settings(max_examples=25, deadline=None)
@given(window_case(pool=True, max_window=7), st.integers(1, 6))
def test_fused_and_layout_kernels_match_numpy(emu, case, fn):
    x, kh, kw, stride, pad, _ = case
    n, _, oh, ow = x.shape  # x only gives the shapes: rows are a conv output of OH x OW pixels
    rng = np.random.default_rng(2)
    rows = rng.standard_normal((n * oh * ow, fn)).astype(x.dtype)
    b = rng.standard_normal(fn).astype(x.dtype)

    nchw = emu.rows_to_nchw(rows, n, oh, ow)
    np.testing.assert_array_equal(nchw, NP.rows_to_nchw(rows, n, oh, ow))
    np.testing.assert_array_equal(emu.nchw_to_rows(nchw), rows)

    out, argmax = emu.bias_relu_maxpool(rows, b, n, oh, ow, kh, kw, stride, pad)
    ref_out, ref_argmax = NP.bias_relu_maxpool(rows, b, n, oh, ow, kh, kw, stride, pad)
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_array_equal(argmax, ref_argmax)
    dout = rng.standard_normal(out.shape).astype(x.dtype)
    np.testing.assert_allclose(
        emu.maxpool_relu_backward(dout, argmax, out, n, oh, ow, kh, kw, stride, pad),
        NP.maxpool_relu_backward(dout, argmax, out, n, oh, ow, kh, kw, stride, pad),
        **_tol(x.dtype),
    )


@st.composite
def loss_case(draw):
    """(x, t, b): scores x (N, K) with N 1-9 and K 1-12, large (30*randn: exp() alone would
    overflow), int32 or int64 labels t (N,) and a bias b (K,) for bias_relu."""
    n, k = draw(st.integers(1, 9)), draw(st.integers(1, 12))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    x = (30 * rng.standard_normal((n, k))).astype(dtype)
    t = rng.integers(0, k, n).astype(draw(st.sampled_from([np.int32, np.int64])))
    b = rng.standard_normal(k).astype(dtype)
    return x, t, b


@settings(max_examples=40, deadline=None)
@given(loss_case())
def test_bias_relu_and_softmax_cross_entropy_match_numpy(emu, case):
    x, t, b = case
    out = emu.bias_relu(x, b)
    assert out.dtype == x.dtype
    np.testing.assert_array_equal(out, NP.bias_relu(x, b))

    loss, probs = emu.softmax_cross_entropy(x, t)
    ref_loss, ref_probs = NP.softmax_cross_entropy(x, t)
    assert isinstance(loss, np.ndarray) and loss.shape == () and loss.dtype == x.dtype
    assert probs.shape == x.shape and probs.dtype == x.dtype
    np.testing.assert_allclose(loss, ref_loss, **_tol(x.dtype))
    np.testing.assert_allclose(probs, ref_probs, **_tol(x.dtype))

    scale = 0.7 / x.shape[0]  # dout / N
    dx = emu.softmax_cross_entropy_backward(ref_probs, t, scale)
    assert dx.dtype == x.dtype
    np.testing.assert_array_equal(dx, NP.softmax_cross_entropy_backward(ref_probs, t, scale))

    onehot = np.eye(x.shape[1], dtype=x.dtype)[t]  # (N, K) targets: the generic path, same values
    np.testing.assert_allclose(emu.softmax_cross_entropy(x, onehot)[0], ref_loss, **_tol(x.dtype))
    np.testing.assert_allclose(emu.softmax_cross_entropy_backward(ref_probs, onehot, scale), dx, **_tol(x.dtype))


def test_softmax_cross_entropy_rows_in_several_blocks(emu):
    rng = np.random.default_rng(9)
    x, t = 30 * rng.standard_normal((600, 10)), rng.integers(0, 10, 600)  # 600 rows: 3 blocks of 256
    loss, probs = emu.softmax_cross_entropy(x, t)
    ref_loss, ref_probs = NP.softmax_cross_entropy(x, t)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
    np.testing.assert_allclose(probs, ref_probs, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(
        emu.softmax_cross_entropy_backward(probs, t, 0.5), NP.softmax_cross_entropy_backward(probs, t, 0.5)
    )


def test_labels_outside_the_classes_match_no_class_as_in_numpy(emu):
    # Unchecked labels (SoftmaxWithLoss(check_labels=False)): the row adds 0 and no memory
    # outside the arrays is read.
    x, t = np.random.default_rng(10).standard_normal((3, 4)), np.array([-1, 2, 4])
    loss, probs = emu.softmax_cross_entropy(x, t)
    ref_loss, ref_probs = NP.softmax_cross_entropy(x, t)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
    np.testing.assert_array_equal(
        emu.softmax_cross_entropy_backward(probs, t, 1.0), NP.softmax_cross_entropy_backward(probs, t, 1.0)
    )


def test_nan_propagates_through_bias_relu_and_the_softmax(emu):
    rows = np.array([[np.nan, -1.0, 2.0], [1.0, -3.0, np.inf]], dtype=np.float32)
    out = emu.bias_relu(rows, np.zeros(3, np.float32))
    np.testing.assert_array_equal(out, NP.bias_relu(rows, np.zeros(3, np.float32)))  # [[nan, 0, 2], [1, 0, inf]]
    loss, probs = emu.softmax_cross_entropy(rows, np.array([1, 0]))
    assert np.isnan(loss) and np.isnan(probs).all()
    with np.errstate(invalid="ignore"):  # NumPy warns about inf - inf
        assert np.isnan(NP.softmax_cross_entropy(rows, np.array([1, 0]))[0])


def test_loss_and_bias_relu_bad_arguments_raise_clear_errors(emu):
    x = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"b has shape \(3,\), expected \(4,\)"):
        emu.bias_relu(x, np.ones(3, np.float32))
    with pytest.raises(ValueError, match=r"rows must be 2-D \(M, F\), got shape \(12,\)"):
        emu.bias_relu(x.ravel(), np.ones(4, np.float32))
    with pytest.raises(TypeError, match="labels must be integers, got float32"):
        emu.softmax_cross_entropy(x, np.zeros(3, np.float32))
    with pytest.raises(ValueError, match=r"t has shape \(2,\), expected \(3,\)"):
        emu.softmax_cross_entropy_backward(x, np.zeros(2, np.int64), 1.0)
    with pytest.raises(ValueError, match="no classes"):
        emu.softmax_cross_entropy(np.ones((3, 0), np.float32), np.zeros(3, np.int64))


UPDATES = [
    ("sgd_update", 0, (0.1,)),
    ("momentum_update", 1, (0.1, 0.9)),
    ("adagrad_update", 1, (0.1, 1e-7)),
    ("rmsprop_update", 1, (0.1, 0.99, 1e-7)),
    ("adam_update", 2, (0.01, 0.9, 0.999, 1e-7)),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("op", "n_state", "scalars"), UPDATES)
def test_optimizer_updates_match_numpy_in_place(emu, op, n_state, scalars, dtype):
    rng = np.random.default_rng(3)
    shape = (7, 5)
    param, grad = rng.standard_normal(shape).astype(dtype), rng.standard_normal(shape).astype(dtype)
    state = [np.abs(rng.standard_normal(shape)).astype(dtype) for _ in range(n_state)]
    ref = [a.copy() for a in (param, *state)]
    for _ in range(3):
        getattr(emu, op)(param, grad, *state, *scalars)
        getattr(NP, op)(ref[0], grad, *ref[1:], *scalars)
    tol = {"rtol": 1e-6, "atol": 1e-6} if dtype == np.float32 else {"rtol": 1e-14}
    for got, want in zip((param, *state), ref):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, **tol)


def test_optimizer_update_of_a_strided_view_takes_the_generic_path(emu):
    param = np.ones((4, 6))
    view = param[:, ::2]
    emu.sgd_update(view, np.ones_like(view), 0.5)
    np.testing.assert_array_equal(param[:, ::2], 0.5)
    np.testing.assert_array_equal(param[:, 1::2], 1.0)


def test_strided_inputs_are_read_as_their_values(emu):
    x = np.random.default_rng(4).standard_normal((5, 3, 2, 4)).transpose(2, 1, 3, 0)  # (2, 3, 4, 5) view
    np.testing.assert_array_equal(emu.im2col(x, 3, 2, 1, 1), NP.im2col(x, 3, 2, 1, 1))
    out, argmax = emu.maxpool_forward(x, 2, 2, 2, 0)
    np.testing.assert_array_equal(out, NP.maxpool_forward(x, 2, 2, 2, 0)[0])


def test_im2col_rows_wider_than_a_block(emu):
    x = np.random.default_rng(5).standard_normal((2, 30, 5, 4))  # 270 columns: two blocks per row
    np.testing.assert_array_equal(emu.im2col(x, 3, 3, 2, 1), NP.im2col(x, 3, 3, 2, 1))


def test_bad_arguments_raise_clear_errors(emu):
    with pytest.raises(TypeError, match="float32 or float64.*int64"):
        emu.im2col(np.ones((1, 1, 4, 4), dtype=np.int64), 2, 2)
    with pytest.raises(TypeError, match="float32, float64"):
        emu.bias_relu_maxpool(np.ones((16, 2)), np.ones(2, dtype=np.float32), 1, 4, 4, 2, 2, 2)
    with pytest.raises(ValueError, match=r"col has shape \(3, 4\), expected \(9, 4\)"):
        emu.col2im(np.ones((3, 4)), (1, 1, 4, 4), 2, 2, 1, 0)
    with pytest.raises(ValueError) as ours:  # too large a window: the same message as every set
        emu.im2col(np.ones((1, 1, 2, 2)), 5, 5)
    with pytest.raises(ValueError) as oracle:
        NP.im2col(np.ones((1, 1, 2, 2)), 5, 5)
    assert str(ours.value) == str(oracle.value)


# -- a whole network: same losses on numpy and cuda-emu ---------------------------------------


# -- the emulation harness ----------------------------------------------------------------------


REFUSED = {
    "__syncthreads": "__syncthreads();\n    x[i] = T(1);",
    "__shared__": "__shared__ T tile[32];\n    x[i] = tile[0];",
}


@pytest.mark.parametrize("feature", sorted(REFUSED))
def test_emulation_refuses_what_it_cannot_run(tmp_path, feature):
    from gpucnn.kernels.emu import EmulationError, EmuLauncher

    (tmp_path / "cooperative.cu").write_text(
        "template <typename T>\n"
        "__global__ void cooperative(T* x) {\n"
        "    const int i = threadIdx.x;\n"
        f"    {REFUSED[feature]}\n"
        "}\n"
    )
    source = CudaSource("cooperative.cu", ("cooperative",), directory=tmp_path)
    launcher = EmuLauncher(cache_dir=tmp_path / "cache")
    with pytest.raises(EmulationError, match=rf"(?s)cannot emulate {feature}.*cooperative\.cu:4:"):
        launcher.launch(source, "cooperative<float>", (1,), (32,), (np.zeros(32, np.float32),))


def test_emulation_checks_every_argument(emu):
    from gpucnn.kernels.cuda_set import LAYOUT

    launcher = emu.launcher
    rows, out = np.ones((4, 2)), np.empty((1, 2, 2, 2))
    sizes = tuple(np.int32(v) for v in (8, 2, 2, 2))
    launcher.launch(LAYOUT, "rows_to_nchw<double>", (1,), (8,), (rows, out, *sizes))
    np.testing.assert_array_equal(out, 1.0)
    with pytest.raises(TypeError, match="argument 0 must be a float32 array, got float64"):
        launcher.launch(LAYOUT, "rows_to_nchw<float>", (1,), (8,), (rows, out, *sizes))
    with pytest.raises(ValueError, match="argument 1 must be C-contiguous"):
        launcher.launch(LAYOUT, "rows_to_nchw<double>", (1,), (8,), (rows, np.empty((2, 8)).T, *sizes))
    with pytest.raises(TypeError, match="argument 2 must be a numpy.int32, got int"):
        launcher.launch(LAYOUT, "rows_to_nchw<double>", (1,), (8,), (rows, out, 8, *sizes[1:]))
    with pytest.raises(RuntimeError, match="takes 6 arguments, got 5"):
        launcher.launch(LAYOUT, "rows_to_nchw<double>", (1,), (8,), (rows, out, *sizes[1:]))


def test_emulation_without_a_compiler_is_unavailable():
    from gpucnn.kernels.emu import EmulationUnavailable, EmuLauncher

    with pytest.raises(EmulationUnavailable, match="no C\\+\\+ compiler found"):
        EmuLauncher(compiler="no-such-c++-compiler")


# -- on a GPU (python -m benchmarks.gpu_check, or pytest -m gpu) --------------------------------


@pytest.fixture(scope="module")
def gpu() -> CudaKernels:
    return _kernels_or_skip("cupy")


GPU_CASES = [  # (N, C, H, W, KH, KW, stride, pad)
    (1, 1, 5, 7, 3, 3, 1, 1),
    (3, 16, 13, 9, 3, 2, 2, 1),
    (2, 5, 12, 12, 5, 5, 3, 2),
    (4, 8, 28, 28, 2, 2, 2, 0),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", GPU_CASES)
def test_gpu_kernels_match_numpy(gpu, case, dtype):
    import cupy

    n, c, h, w, kh, kw, stride, pad = case
    rng = np.random.default_rng(5)
    x = rng.integers(-2, 3, (n, c, h, w)).astype(dtype)
    x_gpu = cupy.asarray(x)
    col = gpu.im2col(x_gpu, kh, kw, stride, pad)
    np.testing.assert_array_equal(col.get(), NP.im2col(x, kh, kw, stride, pad))
    dcol = rng.standard_normal(col.shape).astype(dtype)
    np.testing.assert_allclose(
        gpu.col2im(cupy.asarray(dcol), x.shape, kh, kw, stride, pad).get(),
        NP.col2im(dcol, x.shape, kh, kw, stride, pad),
        **_tol(dtype),
    )

    out, argmax = gpu.maxpool_forward(x_gpu, kh, kw, stride, pad)
    ref_out, ref_argmax = NP.maxpool_forward(x, kh, kw, stride, pad)
    np.testing.assert_array_equal(out.get(), ref_out)
    np.testing.assert_array_equal(argmax.get(), ref_argmax)
    dout = rng.standard_normal(out.shape).astype(dtype)
    np.testing.assert_allclose(
        gpu.maxpool_backward(cupy.asarray(dout), argmax, x.shape, kh, kw, stride, pad).get(),
        NP.maxpool_backward(dout, ref_argmax, x.shape, kh, kw, stride, pad),
        **_tol(dtype),
    )
    np.testing.assert_allclose(
        gpu.avgpool_forward(x_gpu, kh, kw, stride, pad).get(), NP.avgpool_forward(x, kh, kw, stride, pad), **_tol(dtype)
    )
    np.testing.assert_allclose(
        gpu.avgpool_backward(cupy.asarray(dout), x.shape, kh, kw, stride, pad).get(),
        NP.avgpool_backward(dout, x.shape, kh, kw, stride, pad),
        **_tol(dtype),
    )

    fn = 3
    rows = rng.standard_normal((n * h * w, fn)).astype(dtype)
    b = rng.standard_normal(fn).astype(dtype)
    fused, fused_argmax = gpu.bias_relu_maxpool(cupy.asarray(rows), cupy.asarray(b), n, h, w, kh, kw, stride, pad)
    ref_fused, ref_fused_argmax = NP.bias_relu_maxpool(rows, b, n, h, w, kh, kw, stride, pad)
    np.testing.assert_array_equal(fused.get(), ref_fused)
    np.testing.assert_array_equal(fused_argmax.get(), ref_fused_argmax)
    dfused = rng.standard_normal(fused.shape).astype(dtype)
    drows = gpu.maxpool_relu_backward(cupy.asarray(dfused), fused_argmax, fused, n, h, w, kh, kw, stride, pad)
    np.testing.assert_allclose(
        drows.get(),
        NP.maxpool_relu_backward(dfused, ref_fused_argmax, ref_fused, n, h, w, kh, kw, stride, pad),
        **_tol(dtype),
    )
    np.testing.assert_array_equal(gpu.rows_to_nchw(cupy.asarray(rows), n, h, w).get(), NP.rows_to_nchw(rows, n, h, w))


@pytest.mark.gpu
@pytest.mark.parametrize(("op", "n_state", "scalars"), UPDATES)
def test_gpu_optimizer_updates_match_numpy(gpu, op, n_state, scalars):
    import cupy

    rng = np.random.default_rng(6)
    param, grad = rng.standard_normal((64, 33)), rng.standard_normal((64, 33))
    state = [np.abs(rng.standard_normal(param.shape)) for _ in range(n_state)]
    on_gpu = [cupy.asarray(a) for a in (param, *state)]
    getattr(gpu, op)(on_gpu[0], cupy.asarray(grad), *on_gpu[1:], *scalars)
    getattr(NP, op)(param, grad, *state, *scalars)
    for got, want in zip(on_gpu, (param, *state)):
        np.testing.assert_allclose(got.get(), want, rtol=1e-12, atol=1e-15)  # GPU fma: not bit-equal


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("n", "k"), [(1, 1), (7, 10), (600, 12)])  # 600 rows: several blocks
def test_gpu_bias_relu_and_softmax_cross_entropy_match_numpy(gpu, n, k, dtype):
    import cupy

    rng = np.random.default_rng(11)
    x = (30 * rng.standard_normal((n, k))).astype(dtype)
    t, b = rng.integers(0, k, n), rng.standard_normal(k).astype(dtype)
    x_gpu, t_gpu = cupy.asarray(x), cupy.asarray(t)
    np.testing.assert_array_equal(gpu.bias_relu(x_gpu, cupy.asarray(b)).get(), NP.bias_relu(x, b))

    loss, probs = gpu.softmax_cross_entropy(x_gpu, t_gpu)
    ref_loss, ref_probs = NP.softmax_cross_entropy(x, t)
    assert isinstance(loss, cupy.ndarray) and loss.shape == () and loss.dtype == dtype
    np.testing.assert_allclose(loss.get(), ref_loss, **_tol(dtype))  # GPU exp/log: not bit-equal
    np.testing.assert_allclose(probs.get(), ref_probs, **_tol(dtype))
    dx = gpu.softmax_cross_entropy_backward(cupy.asarray(ref_probs), t_gpu, 0.5 / n)
    np.testing.assert_allclose(dx.get(), NP.softmax_cross_entropy_backward(ref_probs, t, 0.5 / n), **_tol(dtype))


@pytest.mark.gpu
def test_gpu_training_follows_numpy(gpu):
    # cuBLAS sums in another order than NumPy's BLAS: equal to rounding, not to the bit.
    from .test_model import seeded_losses

    np.testing.assert_allclose(seeded_losses("cupy", steps=6), seeded_losses("numpy", steps=6), rtol=1e-9)


@pytest.mark.gpu
def test_gpu_gradient_matches_numerical_gradient(gpu):
    rng = np.random.default_rng(7)
    x, t = rng.standard_normal((3, 1, 12, 10)), rng.integers(0, 10, 3)
    with gpucnn.use_backend("cupy"):
        net = gpucnn.SimpleConvNet(
            input_dim=(1, 12, 10),
            conv_param={"filter_num": 4, "filter_size": 3, "pad": 1, "stride": 1},
            hidden_size=16,
            weight_init_std=0.3,
            dtype="float64",
            seed=1,
        )
        grads = {key: g.get() for key, g in net.gradient(x, t).items()}
        for key, param in net.params.items():
            for flat in rng.choice(param.size, size=min(5, param.size), replace=False):
                index = np.unravel_index(flat, param.shape)
                saved = float(param[index])
                param[index] = saved + 1e-5
                up = net.loss(x, t)
                param[index] = saved - 1e-5
                down = net.loss(x, t)
                param[index] = saved
                np.testing.assert_allclose(
                    grads[key][index], (up - down) / 2e-5, rtol=1e-5, atol=1e-8, err_msg=f"{key}{index}"
                )


@pytest.mark.gpu
def test_gpu_memory_pool_is_steady_across_steps(gpu):
    import cupy

    rng = np.random.default_rng(8)
    with gpucnn.use_backend("cupy") as backend:
        x = backend.asarray(rng.standard_normal((32, 1, 28, 28)), dtype="float32")
        t = backend.asarray(rng.integers(0, 10, 32))
        net = gpucnn.SimpleConvNet(seed=0)
        opt = gpucnn.optimizers.Adam()
        pool = cupy.get_default_memory_pool()

        def steps(k: int) -> None:
            for _ in range(k):
                opt.update(net.params, net.gradient(x, t))
            cupy.cuda.get_current_stream().synchronize()

        steps(3)
        held = pool.total_bytes()
        steps(10)
        assert pool.total_bytes() == held  # every step reuses the pool's blocks
        assert all(isinstance(p, cupy.ndarray) for p in net.params.values())
