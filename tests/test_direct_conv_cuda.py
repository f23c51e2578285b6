"""The CUDA set's direct convolution (``direct_conv.cu``) at shapes its tiles do not divide:
images of several tiles, partial tiles at the bottom and right, a filter count that is not a
multiple of a block's filters, strides and pads of both the convolution and the pooling, a
tile shrunk to fit its input copy, and the convolutions whose single pooled pixel reads more
input than a tile holds, which take im2col and the GEMM. On small integers every sum is
exact, so each result equals the NumPy set's bit for bit, whatever order it is summed in;
the sums' order on other data is the business of ``test_kernel_agreement.py``."""

from __future__ import annotations

import numpy as np
import pytest

import gpucnn
from gpucnn.kernels import output_hw
from gpucnn.kernels.cuda_set import DIRECT_FILTERS, DIRECT_THREADS, DIRECT_TILE, _direct_tile, counting
from gpucnn.kernels.numpy_set import NumpyKernels

from .conftest import backend_or_skip

NP = NumpyKernels()

LAUNCHERS = ["cuda-emu", pytest.param("cupy", marks=pytest.mark.gpu)]

FORWARD = "kernel conv_bias_relu_maxpool<{}>"
BACKWARD = "kernel conv_maxpool_relu_backward_params<{}>"


@pytest.fixture(scope="module", params=LAUNCHERS)
def cuda(request) -> gpucnn.Backend:
    return backend_or_skip(request.param)


def small_integers(rng: np.random.Generator, shape: tuple[int, ...], dtype) -> np.ndarray:
    """Integers in [-3, 3]: every sum the kernels form here is exact in float32."""
    return rng.integers(-3, 4, shape).astype(dtype)


# (N, C, H, W), (FN, FH, FW), stride, pad, (KH, KW, pool stride, pool pad), and why
GEOMETRIES = {
    "simple_convnet": ((3, 1, 28, 28), (11, 5, 5), 1, 0, (2, 2, 2, 0)),  # 11 filters: a partial group
    "partial_tile_rows": ((2, 2, 40, 37), (4, 3, 3), 1, 1, (2, 2, 2, 0)),  # 20 x 18 pooled: 14 + 6 rows
    "partial_tile_columns": ((2, 1, 3, 300), (3, 1, 3), 1, 0, (1, 1, 1, 0)),  # 298 columns: 256 + 42
    "overlapping_windows": ((5, 3, 13, 11), (9, 3, 3), 2, 2, (3, 3, 2, 1)),  # 27 taps, pool pad cells
    "windows_with_gaps": ((2, 1, 17, 14), (2, 4, 4), 1, 1, (2, 2, 3, 0)),  # pool stride 3 > window 2
    "tile_shrunk_to_its_copy": ((1, 2, 60, 60), (3, 4, 4), 3, 0, (3, 3, 2, 1)),  # 10 x 10 pooled, 4 rows a tile
}


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_direct_convolution_equals_the_numpy_set_on_exact_data(cuda, name, dtype):
    x_shape, (fn, fh, fw), stride, pad, pool = GEOMETRIES[name]
    c = x_shape[1]
    rng = np.random.default_rng(sorted(GEOMETRIES).index(name))
    x, w, b = (small_integers(rng, s, dtype) for s in (x_shape, (fn, c, fh, fw), (fn,)))
    geometry = (stride, pad, *pool)
    kernels = cuda.kernels
    assert kernels.prefers_direct_conv(c, fh, fw, stride)
    with counting() as work:
        out, argmax = kernels.conv_bias_relu_maxpool(cuda.asarray(x), cuda.asarray(w), cuda.asarray(b), *geometry)
        infer = kernels.conv_bias_relu_maxpool_infer(cuda.asarray(x), cuda.asarray(w), cuda.asarray(b), *geometry)
        dout = cuda.asarray(small_integers(rng, out.shape, dtype))
        dw, db = kernels.conv_maxpool_relu_backward_params(dout, argmax, out, cuda.asarray(x), w.shape, *geometry)
    ctype = "float" if dtype == np.float32 else "double"
    assert work.by_name[FORWARD.format(ctype)] == 1 and work.by_name[BACKWARD.format(ctype)] == 1
    assert work.operations["gemm"] == 0

    want_out, want_argmax = NP.conv_bias_relu_maxpool(x, w, b, *geometry)
    out, argmax, dout = (cuda.to_numpy(a) for a in (out, argmax, dout))
    np.testing.assert_array_equal(out, want_out)
    np.testing.assert_array_equal(argmax, want_argmax)  # exact values: the first maximum is the same one
    np.testing.assert_array_equal(cuda.to_numpy(infer), out)
    want_dw, want_db = NP.conv_maxpool_relu_backward_params(dout, argmax, out, x, w.shape, *geometry)
    np.testing.assert_array_equal(cuda.to_numpy(dw), want_dw)
    np.testing.assert_array_equal(cuda.to_numpy(db), want_db)


def pooled_tiles(name: str) -> tuple[tuple[int, int], tuple[int, int], int]:
    """The pooled (PH, PW) of a case, the (rows, columns) of its blocks' tiles and its filters."""
    (_, c, h, w), (fn, fh, fw), stride, pad, (kh, kw, pool_stride, pool_pad) = GEOMETRIES[name]
    oh, ow = output_hw(h, w, fh, fw, stride, pad)
    ph, pw = output_hw(oh, ow, kh, kw, pool_stride, pool_pad)
    return (ph, pw), _direct_tile(c, fh, fw, stride, kh, kw, pool_stride, ph, pw), fn


def test_the_geometries_reach_what_they_are_named_for():
    _, _, fn = pooled_tiles("simple_convnet")
    assert fn % DIRECT_FILTERS != 0
    (ph, pw), (rows, cols), _ = pooled_tiles("partial_tile_rows")
    assert cols == pw and ph > rows and ph % rows != 0
    (ph, pw), (rows, cols), _ = pooled_tiles("partial_tile_columns")
    assert cols == DIRECT_THREADS < pw and pw % cols != 0
    (ph, pw), (rows, cols), _ = pooled_tiles("tile_shrunk_to_its_copy")
    assert ph * pw <= DIRECT_THREADS and rows * cols < ph * pw  # the copy, not the threads, bounds it


def test_an_empty_batch_gives_zero_gradients(cuda):
    x = cuda.asarray(np.zeros((0, 1, 8, 8), np.float32))
    w, b = cuda.asarray(np.ones((2, 1, 3, 3), np.float32)), cuda.asarray(np.zeros(2, np.float32))
    out, argmax = cuda.kernels.conv_bias_relu_maxpool(x, w, b, 1, 0, 2, 2, 2, 0)
    assert out.shape == argmax.shape == (0, 2, 3, 3)
    dw, db = cuda.kernels.conv_maxpool_relu_backward_params(out, argmax, out, x, (2, 1, 3, 3), 1, 0, 2, 2, 2, 0)
    np.testing.assert_array_equal(cuda.to_numpy(dw), np.zeros((2, 1, 3, 3)))
    np.testing.assert_array_equal(cuda.to_numpy(db), np.zeros(2))


def test_a_pooled_pixel_reading_more_input_than_a_tile_takes_the_gemm(cuda):
    """A 1x1 filter of stride 70 under 2x2 windows of stride 1: one pooled pixel reads 71 x 71
    inputs, more than a block's copy holds, so im2col and the GEMM compute it."""
    rng = np.random.default_rng(3)
    x, w, b = (
        small_integers(rng, (2, 1, 141, 141), np.float32),
        np.ones((2, 1, 1, 1), np.float32),
        np.zeros(2, np.float32),
    )
    geometry = (70, 0, 2, 2, 1, 0)
    assert cuda.kernels.prefers_direct_conv(1, 1, 1, 70) and 71 * 71 > DIRECT_TILE
    assert _direct_tile(1, 1, 1, 70, 2, 2, 1, 1, 1) is None
    with counting() as work:
        out, argmax = cuda.kernels.conv_bias_relu_maxpool(cuda.asarray(x), cuda.asarray(w), cuda.asarray(b), *geometry)
        dout = cuda.asarray(small_integers(rng, out.shape, np.float32))
        dw, db = cuda.kernels.conv_maxpool_relu_backward_params(dout, argmax, out, cuda.asarray(x), w.shape, *geometry)
    assert work.by_name[FORWARD.format("float")] == work.by_name[BACKWARD.format("float")] == 0
    want_out, want_argmax = NP.conv_bias_relu_maxpool(x, w, b, *geometry)
    np.testing.assert_array_equal(cuda.to_numpy(out), want_out)
    np.testing.assert_array_equal(cuda.to_numpy(argmax), want_argmax)
    want_dw, want_db = NP.conv_maxpool_relu_backward_params(
        cuda.to_numpy(dout), want_argmax, want_out, x, w.shape, *geometry
    )
    np.testing.assert_array_equal(cuda.to_numpy(dw), want_dw)
    np.testing.assert_array_equal(cuda.to_numpy(db), want_db)


@pytest.mark.gpu
def test_the_gradients_are_the_same_bits_on_every_run():
    """Each block sums its filter's terms in a fixed order (no atomics): two launches on the
    same data give the same bits, on data whose sums round."""
    cupy = backend_or_skip("cupy")
    rng = np.random.default_rng(4)
    x, w, b = rng.standard_normal((64, 1, 28, 28)), rng.standard_normal((30, 1, 5, 5)), rng.standard_normal(30)
    geometry = (1, 0, 2, 2, 2, 0)
    out, argmax = cupy.kernels.conv_bias_relu_maxpool(cupy.asarray(x), cupy.asarray(w), cupy.asarray(b), *geometry)
    dout = cupy.asarray(rng.standard_normal(out.shape))
    runs = [
        cupy.kernels.conv_maxpool_relu_backward_params(dout, argmax, out, cupy.asarray(x), w.shape, *geometry)
        for _ in range(3)
    ]
    for dw, db in runs[1:]:
        np.testing.assert_array_equal(cupy.to_numpy(dw), cupy.to_numpy(runs[0][0]))
        np.testing.assert_array_equal(cupy.to_numpy(db), cupy.to_numpy(runs[0][1]))
