"""The NumPy kernel set's own ways: its Winograd input transform in phases and its
inference operations.

The input transform lays the padded pixels out channels-last in phases before its
additions; it still makes the generic set's additions in the generic set's order, so the
two give the same bytes, on NCHW arrays and on NCHW views of channels-last arrays (what the
inference operations hand to the next layer). The inference operations (``*_infer``)
answer the training operations' ``out`` to the bit, as NCHW views of channels-last arrays;
they pool before they add the bias, and a network's scores through them are those of its
training forward.
"""

from __future__ import annotations

import array_api_compat.numpy as xp_numpy
import numpy as np
import pytest

import gpucnn
from gpucnn.kernels import winograd_tiles
from gpucnn.kernels.generic import GenericKernels
from gpucnn.kernels.numpy_set import NumpyKernels
from gpucnn.layers import Affine, Convolution, Flatten, MaxPooling, ReLU, SoftmaxWithLoss
from gpucnn.model import Sequential

from .bounds import assert_close_to_sum, sum_rtol

NP = NumpyKernels()
GENERIC = GenericKernels(xp_numpy)
EQUAL = np.testing.assert_array_equal
DTYPES = (np.float32, np.float64)


def channels_last(x: np.ndarray) -> np.ndarray:
    """x (N, C, H, W) as the NCHW view of a channels-last copy: the same values, another layout."""
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


INPUT_SHAPES = [  # N, C, H, W, pad
    (1, 1, 3, 3, 0),  # one tile
    (2, 3, 1, 1, 1),  # one pixel: every phase but one all padding
    (2, 3, 1, 2, 2),  # pad 2: whole rows and columns of tiles in the padding
    (1, 2, 4, 7, 1),  # an odd output width
    (3, 2, 7, 4, 0),  # an odd output height
    (2, 5, 8, 8, 3),
    (2, 32, 32, 32, 0),  # cifar_cnn's second convolution
    (2, 32, 15, 15, 1),  # cifar_cnn's third
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", INPUT_SHAPES, ids=["x".join(map(str, s[:4])) + f"-p{s[4]}" for s in INPUT_SHAPES])
def test_the_input_transform_makes_the_generic_sets_additions_on_every_layout(shape, dtype):
    n, c, h, w, pad = shape
    x = np.random.default_rng(0).standard_normal((n, c, h, w)).astype(dtype)
    want = GENERIC.winograd_input(x, pad)
    wide = np.random.default_rng(1).standard_normal((n, c, h, 2 * w)).astype(dtype)
    wide[..., ::2] = x
    for layout in (x, channels_last(x), wide[..., ::2]):  # contiguous, channels-last, strided
        got = NP.winograd_input(layout, pad)
        assert got.dtype == dtype and got.shape == want.shape
        EQUAL(got, want)


def small_integers(rng, shape, dtype) -> np.ndarray:
    """Integers in [-4, 4]: every sum and product of these tests is exact, in any order."""
    return rng.integers(-4, 5, shape).astype(dtype)


POOLS = [(1, 1, 1, 0), (2, 2, 2, 0), (3, 3, 2, 1), (2, 3, 1, 1)]  # KH, KW, stride, pad
CONVS = [  # N, C, H, W, FN, FH, stride, pad: through Winograd (C >= 16, 3x3, stride 1) or im2col
    (3, 16, 7, 6, 4, 3, 1, 1),
    (2, 16, 6, 9, 5, 3, 1, 0),  # odd output width: a last column of tiles past the output
    (2, 3, 8, 7, 4, 3, 1, 1),
    (2, 4, 9, 9, 3, 5, 2, 2),
]


@pytest.mark.parametrize("block_bytes", [None, 1])  # the whole batch, or one image per block
@pytest.mark.parametrize("pool", POOLS, ids=["{}x{}-s{}-p{}".format(*p) for p in POOLS])
@pytest.mark.parametrize(
    "conv", CONVS, ids=["x".join(map(str, s[:4])) + "-f{}x{}-s{}-p{}".format(*s[4:]) for s in CONVS]
)
def test_inference_answers_the_training_operations_out(conv, pool, block_bytes, monkeypatch):
    n, c, h, w, fn, fh, stride, pad = conv
    rng = np.random.default_rng(2)
    x = small_integers(rng, (n, c, h, w), np.float64)
    weights, b = small_integers(rng, (fn, c, fh, fh), np.float64), small_integers(rng, (fn,), np.float64)
    kernels = NumpyKernels()
    monkeypatch.setattr(kernels, "winograd_block_bytes", block_bytes)
    monkeypatch.setattr(kernels, "infer_block_bytes", block_bytes or 2**30)
    assert kernels.prefers_winograd(c, fn, fh, fh, stride) == (c >= 16)
    out, _ = GENERIC.conv_bias_relu_maxpool(x, weights, b, stride, pad, *pool)  # im2col and the generic pooling
    got = kernels.conv_bias_relu_maxpool_infer(x, weights, b, stride, pad, *pool)
    assert got.shape == out.shape and got.dtype == out.dtype
    EQUAL(got, out)
    rows = GENERIC.im2col(x, fh, fh, stride, pad) @ weights.reshape(fn, -1).T
    oh, ow = (h + 2 * pad - fh) // stride + 1, (w + 2 * pad - fh) // stride + 1
    EQUAL(kernels.bias_relu_maxpool_infer(rows, b, n, oh, ow, *pool), out)


@pytest.mark.parametrize("dtype", DTYPES)
def test_inference_pools_before_the_bias_to_the_bit(dtype):
    """On normal values, whose sums round, the inference operations still give the training
    operations' out bit for bit: the maximum of t + b is the maximum of t, plus b."""
    rng = np.random.default_rng(3)
    n, oh, ow, fn = 2, 6, 8, 5
    rows, b = rng.standard_normal((n * oh * ow, fn)).astype(dtype), rng.standard_normal(fn).astype(dtype)
    for pool in POOLS:
        EQUAL(NP.bias_relu_maxpool_infer(rows, b, n, oh, ow, *pool), NP.bias_relu_maxpool(rows, b, n, oh, ow, *pool)[0])
    th, tw = winograd_tiles(oh, ow)
    m = rng.standard_normal((16, n * th * tw, fn)).astype(dtype)
    EQUAL(NP.winograd_bias_relu_maxpool_infer(m, b, n, oh, ow), NP.winograd_bias_relu_maxpool(m, b, n, oh, ow)[0])


@pytest.mark.parametrize("c", [3, 16])  # through im2col, through Winograd
def test_inference_hands_the_next_layer_a_channels_last_array(c):
    rng = np.random.default_rng(4)
    x, w, b = rng.standard_normal((2, c, 8, 8)), rng.standard_normal((4, c, 3, 3)), rng.standard_normal(4)
    for pool in [(1, 1, 1, 0), (2, 2, 2, 0)]:
        out = NP.conv_bias_relu_maxpool_infer(x, w, b, 1, 1, *pool)
        assert out.shape == (2, 4, 8 // pool[0], 8 // pool[0])
        assert out.transpose(0, 2, 3, 1).flags.c_contiguous


def test_a_networks_inference_scores_are_its_training_forwards(monkeypatch):
    """Scores through the inference operations (LinearReLU through im2col and through
    Winograd with an odd output, a ConvReluMaxPool pooled from the Winograd products, the
    Winograd steps in blocks of one image) equal those of the training forward, to the bit."""
    layers = [Convolution(16, 3, pad=1), ReLU(), Convolution(16, 3), ReLU(), Convolution(16, 3, pad=1), ReLU()]
    layers += [MaxPooling(2), Flatten(), Affine(5)]
    with gpucnn.use_backend("numpy") as backend:
        net = Sequential(layers, SoftmaxWithLoss(), input_shape=(3, 9, 10), dtype="float32", seed=5)
    monkeypatch.setattr(backend.kernels, "winograd_block_bytes", 1)
    assert [layer.winograd() for layer in net.layers[0:6:2]] == [False, True, True]
    x = np.random.default_rng(6).standard_normal((4, 3, 9, 10)).astype(np.float32)
    EQUAL(net.predict(x), net.forward(x, train=True))


@pytest.mark.parametrize("taps, slice_bytes", [((1, 5, 5), 2**10), ((3, 3, 3), 2**11), ((8, 3, 3), 2**10)])
def test_the_weight_gradient_of_few_columns_is_summed_over_slices_of_rows(taps, slice_bytes):
    """A column matrix of at most ``weight_grad_slice_columns`` columns goes through the GEMM
    in slices of rows, their products added in order: drows^T col to float rounding, the
    same bytes from run to run; a wider one in one product."""
    rng = np.random.default_rng(7)
    c, kh, kw = taps
    x = rng.standard_normal((3, c, 9, 8)).astype(np.float32)
    sliced = NumpyKernels()
    sliced.weight_grad_slice_bytes = slice_bytes
    col = sliced.im2col(x, kh, kw, 1, 1)
    drows = rng.standard_normal((col.shape[0], 4)).astype(np.float32)
    rows_per_slice = slice_bytes // ((col.shape[1] + 4) * 4)
    assert col.shape[0] > rows_per_slice  # more than one slice
    dw = sliced.weight_grad(drows, col)
    assert dw.shape == (4, col.shape[1]) and dw.dtype == np.float32 and dw.flags.c_contiguous
    want = drows.T.astype(np.float64) @ col.astype(np.float64)
    assert_close_to_sum(dw, want, np.abs(drows.T).astype(np.float64) @ np.abs(col), sum_rtol(np.float32, col.shape[0]))
    EQUAL(sliced.weight_grad(drows, col), dw)
    col_t = col.T  # the tap-major array, (K, M)
    if col.shape[1] <= sliced.weight_grad_slice_columns:  # the slices' products, added in order
        want_t = col_t[:, :rows_per_slice] @ drows[:rows_per_slice]
        for r0 in range(rows_per_slice, col.shape[0], rows_per_slice):
            want_t += col_t[:, r0 : r0 + rows_per_slice] @ drows[r0 : r0 + rows_per_slice]
    else:  # one product
        want_t = col_t @ drows
    EQUAL(dw, want_t.T)
