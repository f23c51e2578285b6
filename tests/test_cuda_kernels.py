"""What is particular to the CUDA kernel set: its launch geometry, its argument checks, the
emulation that runs its sources on the CPU (``cuda-emu``) and, on a GPU (``-m gpu``), whole
networks. Its operations are compared with the oracle in ``test_kernel_agreement.py``."""

from __future__ import annotations

import numpy as np
import pytest

import gpucnn
from gpucnn.kernels import KERNEL_OPERATIONS
from gpucnn.kernels.cuda_set import BLOCK_SIZE, CUDA_SOURCES, CudaKernels, counting
from gpucnn.kernels.generic import GenericKernels
from gpucnn.kernels.numpy_set import NumpyKernels

from .conftest import backend_or_skip

NP = NumpyKernels()

# The CUDA set's two launchers: the emulation on the CPU, and CuPy on a GPU.
LAUNCHERS = ["cuda-emu", pytest.param("cupy", marks=pytest.mark.gpu)]


@pytest.fixture(scope="module")
def emu() -> CudaKernels:
    return backend_or_skip("cuda-emu").kernels


@pytest.fixture(scope="module", params=LAUNCHERS)
def cuda(request) -> gpucnn.Backend:
    """The CUDA set's backends: ``cuda-emu``, and ``cupy`` where a GPU is usable."""
    return backend_or_skip(request.param)


def test_every_cuda_kernel_backs_an_operation():
    kernels = {k for source in CUDA_SOURCES for k in source.kernels}
    assert kernels <= set(KERNEL_OPERATIONS)
    for name in kernels:  # the wrapper runs the kernel instead of the generic composition
        assert getattr(CudaKernels, name) is not getattr(GenericKernels, name), name


# -- launch geometry ----------------------------------------------------------------------------


def test_im2col_rows_wider_than_a_block(cuda):
    x = np.random.default_rng(5).standard_normal((2, 30, 5, 4))  # 270 columns: two blocks per row
    assert 30 * 3 * 3 > BLOCK_SIZE
    col = cuda.kernels.im2col(cuda.asarray(x), 3, 3, 2, 1)
    np.testing.assert_array_equal(cuda.to_numpy(col), NP.im2col(x, 3, 3, 2, 1))


@pytest.mark.parametrize(
    ("n", "fn", "oh", "ow"),
    [(3, 45, 7, 9), (2, 32, 8, 4), (1, 1, 1, 1), (2, 70, 1, 33)],  # 63 and 33 pixels, 45 and 70 filters: partial tiles
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layout_transposes_tiles_that_do_not_divide_the_shape(cuda, n, fn, oh, ow, dtype):
    rows = np.random.default_rng(11).standard_normal((n * oh * ow, fn)).astype(dtype)
    nchw = cuda.kernels.rows_to_nchw(cuda.asarray(rows), n, oh, ow)
    want = NP.rows_to_nchw(rows, n, oh, ow)
    assert nchw.dtype == dtype
    np.testing.assert_array_equal(cuda.to_numpy(nchw), want)
    back = cuda.kernels.nchw_to_rows(cuda.asarray(want))
    np.testing.assert_array_equal(cuda.to_numpy(back), NP.nchw_to_rows(want))
    np.testing.assert_array_equal(cuda.to_numpy(back), rows)


def test_softmax_cross_entropy_rows_in_several_blocks(cuda):
    rng = np.random.default_rng(9)
    x, t = 30 * rng.standard_normal((600, 10)), rng.integers(0, 10, 600)  # one thread a row: 3 blocks
    assert len(x) > 2 * BLOCK_SIZE
    loss, probs = cuda.kernels.softmax_cross_entropy(cuda.asarray(x), cuda.asarray(t))
    ref_loss, ref_probs = NP.softmax_cross_entropy(x, t)
    np.testing.assert_allclose(cuda.to_numpy(loss), ref_loss, rtol=1e-12)  # exp and log of another library
    np.testing.assert_allclose(cuda.to_numpy(probs), ref_probs, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(
        cuda.to_numpy(cuda.kernels.softmax_cross_entropy_backward(probs, cuda.asarray(t), 0.5)),
        NP.softmax_cross_entropy_backward(cuda.to_numpy(probs), t, 0.5),
    )


def test_a_first_layer_convolution_is_computed_directly_with_more_weights_than_a_block(cuda):
    """SimpleConvNet's first layer: one kernel forward and one for both parameter gradients
    (one block per filter, each summing its 25 weights and its bias), no column matrix; a deep layer's many taps
    take im2col and the GEMM."""
    kernels = cuda.kernels
    assert kernels.prefers_direct_conv(1, 5, 5, 1) and not kernels.prefers_direct_conv(64, 3, 3, 1)
    rng = np.random.default_rng(12)
    x, w, b = rng.standard_normal((3, 1, 28, 28)), rng.standard_normal((30, 1, 5, 5)), rng.standard_normal(30)
    geometry = (1, 0, 2, 2, 2, 0)
    assert w.size > BLOCK_SIZE
    with counting() as work:
        out, argmax = kernels.conv_bias_relu_maxpool(cuda.asarray(x), cuda.asarray(w), cuda.asarray(b), *geometry)
        dout = cuda.asarray(rng.standard_normal(out.shape))
        dw, db = kernels.conv_maxpool_relu_backward_params(dout, argmax, out, cuda.asarray(x), w.shape, *geometry)
    assert work.by_name["kernel conv_bias_relu_maxpool<double>"] == 1
    assert work.by_name["kernel conv_maxpool_relu_backward_params<double>"] == 1
    assert work.operations["kernel"] == 2 and work.operations["gemm"] == 0
    out, argmax, dout = (cuda.to_numpy(a) for a in (out, argmax, dout))
    want_out, want_argmax = NP.conv_bias_relu_maxpool(x, w, b, *geometry)
    np.testing.assert_allclose(out, want_out, rtol=1e-13, atol=1e-13)  # 25 taps summed in another order
    np.testing.assert_array_equal(argmax, want_argmax)  # no two window values within rounding here
    want_dw, want_db = NP.conv_maxpool_relu_backward_params(dout, argmax, out, x, w.shape, *geometry)
    np.testing.assert_allclose(cuda.to_numpy(dw), want_dw, rtol=1e-12, atol=1e-12)  # 432 routed terms
    np.testing.assert_allclose(cuda.to_numpy(db), want_db, rtol=1e-12, atol=1e-12)


# -- arguments --------------------------------------------------------------------------------------


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


def test_an_optimizer_step_the_kernels_cannot_take_takes_the_generic_path(emu):
    """A strided view or a gradient of another dtype: the generic composition, in place."""
    param = np.ones((4, 6))
    emu.sgd_update(param[:, ::2], np.ones((4, 3)), 0.5)
    np.testing.assert_array_equal(param, np.tile([0.5, 1.0], (4, 3)))
    param = np.ones(5)
    emu.sgd_update(param, np.ones(5, np.float32), 0.25)
    np.testing.assert_array_equal(param, 0.75)


# -- the emulation harness ----------------------------------------------------------------------


def test_emulation_checks_every_argument(emu):
    from gpucnn.kernels.cuda_set import LAYOUT, TRANSPOSE_ROWS, TRANSPOSE_TILE

    launcher = emu.launcher
    rows, out = np.ones((4, 2)), np.empty((1, 2, 2, 2))
    sizes = tuple(np.int32(v) for v in (2, 2, 2))  # fn, oh, ow
    block = (TRANSPOSE_TILE, TRANSPOSE_ROWS)
    launcher.launch(LAYOUT, "rows_to_nchw<double>", (1,), block, (rows, out, *sizes))
    np.testing.assert_array_equal(out, 1.0)
    with pytest.raises(TypeError, match="argument 0 must be a float32 array, got float64"):
        launcher.launch(LAYOUT, "rows_to_nchw<float>", (1,), block, (rows, out, *sizes))
    with pytest.raises(ValueError, match="argument 1 must be C-contiguous"):
        launcher.launch(LAYOUT, "rows_to_nchw<double>", (1,), block, (rows, np.empty((2, 8)).T, *sizes))
    with pytest.raises(TypeError, match="argument 2 must be a numpy.int32, got int"):
        launcher.launch(LAYOUT, "rows_to_nchw<double>", (1,), block, (rows, out, 2, *sizes[1:]))
    with pytest.raises(RuntimeError, match="takes 5 arguments, got 4"):
        launcher.launch(LAYOUT, "rows_to_nchw<double>", (1,), block, (rows, out, *sizes[1:]))


def test_emulation_without_a_compiler_is_unavailable():
    from gpucnn.kernels.emu import EmulationUnavailable, EmuLauncher

    with pytest.raises(EmulationUnavailable, match="no C\\+\\+ compiler found"):
        EmuLauncher(compiler="no-such-c++-compiler")


# -- whole networks on a GPU (python -m benchmarks.gpu_check, or pytest -m gpu) ----------------------


@pytest.fixture(scope="module")
def gpu() -> CudaKernels:
    return backend_or_skip("cupy").kernels


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
