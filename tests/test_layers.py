"""Every layer on every backend: forward against plain NumPy, backward against central
differences in float64, dtype rules and clear errors for bad input."""

from __future__ import annotations

import numpy as np
import pytest

import gpucnn
from gpucnn.gradcheck import check_layer_gradients
from gpucnn.layers import (
    Affine,
    AvgPooling,
    BatchNormalization,
    Convolution,
    Dropout,
    Flatten,
    MaxPooling,
    ReLU,
    Sigmoid,
    SigmoidWithLoss,
    SoftmaxWithLoss,
)

from .reference import conv_loops, pool_loops

TOL = 1e-6  # the bound on the relative error of a float64 gradient

CONV_CASES = [  # (N, C, H, W), FN, filter, stride, pad: non-square, remainders, padding
    ((2, 3, 7, 6), 4, 3, 1, 0),
    ((1, 2, 8, 5), 3, (3, 2), 2, 1),  # stride 2 leaves a remainder on H
    ((3, 1, 6, 6), 2, 5, 3, 2),
    ((1, 16, 5, 4), 2, 3, 1, 1),  # 3x3 at stride 1 over 16 channels: Winograd where the set prefers it
]
POOL_CASES = [((2, 3, 6, 5), 2, None, 0), ((1, 2, 7, 7), 3, 2, 1), ((2, 1, 5, 8), (2, 3), 1, 1)]


def host(backend, a):
    return backend.to_numpy(a)


def as64(backend, a):
    return backend.asarray(np.asarray(a, dtype=np.float64))


@pytest.mark.parametrize("shape,fn,size,stride,pad", CONV_CASES)
def test_convolution_forward_and_gradients(backend, shape, fn, size, stride, pad):
    rng = np.random.default_rng(0)
    layer = Convolution(fn, size, stride, pad, dtype="float64")
    x = rng.standard_normal(shape)
    layer.build(shape[1:], rng)  # seeded weights: the gradient check sees the same numbers every run
    out = layer.forward(as64(backend, x))
    np.testing.assert_allclose(
        host(backend, out),
        conv_loops(x, host(backend, layer.W), host(backend, layer.b), stride, pad),
        rtol=1e-10,
        atol=1e-12,
    )
    errors = check_layer_gradients(layer, x)
    assert max(errors.values()) < TOL, errors


@pytest.mark.parametrize("images_per_block", [1, 2, 5])
def test_convolution_in_blocks_of_images_agrees_with_the_whole_batch(backend, monkeypatch, images_per_block):
    """Training in blocks of images (``conv_block_bytes``) computes the whole batch's values:
    each output row and each row of dx from the same products; dW summed block by block,
    which moves only its rounding (bounded by the sum of the absolute terms)."""
    rng = np.random.default_rng(3)
    shape, (fn, size, stride, pad) = (5, 3, 6, 7), (4, 3, 2, 1)
    layer = Convolution(fn, size, stride, pad, dtype="float64")
    layer.build(shape[1:], rng)
    x = rng.standard_normal(shape)
    dout = rng.standard_normal((5, *layer.output_shape))
    per_image = 3 * 4 * 3 * 3 * 3 * 8  # one image's columns: OH*OW windows of C*KH*KW float64 values
    results = {}
    for budget in (None, images_per_block * per_image + 7):
        monkeypatch.setattr(backend.kernels, "conv_block_bytes", budget)
        assert layer.block_images(5, 8) == (None if budget is None else images_per_block)
        out = layer.forward(as64(backend, x))
        dx = layer.backward(as64(backend, dout))
        results[budget] = [host(backend, a) for a in (out, dx, layer.dW, layer.db)]
    # The sums of absolute terms bound each value's rounding.
    with gpucnn.use_backend("numpy"):
        magnitude = Convolution(W=np.abs(host(backend, layer.W)), b=np.zeros(fn), stride=stride, pad=pad)
        bound_out = magnitude.forward(np.abs(x))
        bound_dx = magnitude.backward(np.abs(dout))
        bound_dw = magnitude.dW
    eps = np.finfo(np.float64).eps
    whole, blocks = results[None], results[images_per_block * per_image + 7]
    for got, want, bound in zip(blocks[:3], whole[:3], (bound_out, bound_dx, bound_dw)):
        assert np.all(np.abs(got - want) <= 4 * 27 * eps * bound + 1e-300)
    np.testing.assert_array_equal(blocks[3], whole[3])  # db: the same sum of the same rows
    errors = check_layer_gradients(layer, x)  # still in blocks
    assert max(errors.values()) < TOL, errors


@pytest.mark.parametrize("shape,pad", [((3, 5, 7, 6), 1), ((2, 4, 6, 9), 0), ((1, 2, 3, 3), 0)])
def test_convolution_through_winograd_agrees_with_im2col(backend, monkeypatch, shape, pad):
    """A 3x3 stride-1 convolution through the ``winograd_*`` operations (forced on, so that
    every kernel set runs them) gives im2col's output and gradients to float rounding: the
    transforms add and subtract at most 4x4 inputs and 3x3 weights before each of the C*16
    products, so the error is bounded by a multiple of eps times the same convolution of
    the absolute values."""
    rng = np.random.default_rng(5)
    fn = 3
    layer = Convolution(fn, 3, 1, pad, dtype="float64")
    layer.build(shape[1:], rng)
    x = rng.standard_normal(shape)
    dout = rng.standard_normal((shape[0], *layer.output_shape))
    results = {}
    for winograd in (False, True):
        monkeypatch.setattr(backend.kernels, "prefers_winograd", lambda *args, on=winograd: on)
        assert layer.winograd() is winograd
        out = layer.forward(as64(backend, x))
        dx = layer.backward(as64(backend, dout))
        results[winograd] = [host(backend, a) for a in (out, dx, layer.dW, layer.db)]
    with gpucnn.use_backend("numpy"):
        magnitude = Convolution(W=np.abs(host(backend, layer.W)), b=np.zeros(fn), stride=1, pad=pad)
        bounds = (magnitude.forward(np.abs(x)), magnitude.backward(np.abs(dout)), magnitude.dW)
    eps = np.finfo(np.float64).eps
    terms = 16 * shape[1] + 16  # products per output, and the transforms' additions
    for got, want, bound in zip(results[True][:3], results[False][:3], bounds):
        assert np.all(np.abs(got - want) <= 16 * terms * eps * bound + 1e-300)
    np.testing.assert_array_equal(results[True][3], results[False][3])  # db: the same column sums
    errors = check_layer_gradients(layer, x)  # still through Winograd: exact gradients of its forward
    assert max(errors.values()) < TOL, errors


def test_a_forward_lets_the_caches_of_another_way_go(backend, monkeypatch):
    """A convolution switched between its ways from one step to the next (Winograd, blocks of
    images, the whole batch's columns) trains each step as a fresh layer does: no cache of
    the last way is read. Its backward after the whole batch's columns, when it made the
    input gradient, has used them: a second backward asks for a forward."""
    rng = np.random.default_rng(6)
    layer = Convolution(3, 3, 1, 1, dtype="float64")
    layer.build((2, 5, 6), rng)
    x, other_x = (as64(backend, rng.standard_normal((4, 2, 5, 6))) for _ in range(2))
    dout = as64(backend, rng.standard_normal((4, *layer.output_shape)))
    ways = {  # (prefers_winograd, conv_block_bytes)
        "winograd": (True, None),
        "blocks": (False, 2 * 5 * 6 * 2 * 9 * 8),
        "whole": (False, None),
    }

    def step(way, x=x):
        winograd, block_bytes = ways[way]
        monkeypatch.setattr(backend.kernels, "prefers_winograd", lambda *args: winograd)
        monkeypatch.setattr(backend.kernels, "conv_block_bytes", block_bytes)
        layer.forward(x)
        dx = layer.backward(dout)
        return [host(backend, a) for a in (dx, layer.dW, layer.db)]

    fresh = {way: step(way) for way in ways}
    for last, way in (("winograd", "blocks"), ("winograd", "whole"), ("blocks", "whole"), ("whole", "winograd")):
        step(last, other_x)  # its caches, if read, would give other gradients
        for got, want in zip(step(way), fresh[way]):
            np.testing.assert_array_equal(got, want, err_msg=f"{last} then {way}")
    step("whole")
    with pytest.raises(RuntimeError, match="backward needs a forward first"):
        layer.backward(dout)


@pytest.mark.parametrize("images_per_block", [1, 2, 4])
def test_convolution_through_winograd_in_blocks_agrees_with_the_whole_batch(backend, monkeypatch, images_per_block):
    """The Winograd passes over blocks of images (``winograd_block_bytes``) compute the
    whole batch's values: each image's tiles go through the same transforms and products;
    dW's transform is summed block by block, which moves only its rounding."""
    rng = np.random.default_rng(4)
    shape, fn = (5, 4, 6, 7), 3
    layer = Convolution(fn, 3, 1, 1, dtype="float64")
    layer.build(shape[1:], rng)
    x = rng.standard_normal(shape)
    dout = rng.standard_normal((5, *layer.output_shape))
    monkeypatch.setattr(backend.kernels, "prefers_winograd", lambda *args: True)
    per_image = 16 * 3 * 4 * fn * 8  # one image's products: 16 x (3 x 4 tiles) x FN float64 values
    results = {}
    for budget in (None, images_per_block * per_image + 7):
        monkeypatch.setattr(backend.kernels, "winograd_block_bytes", budget)
        assert layer.winograd_block_images(5, 8) == (5 if budget is None else images_per_block)
        out = layer.forward(as64(backend, x))
        dx = layer.backward(as64(backend, dout))
        results[budget] = [host(backend, a) for a in (out, dx, layer.dW, layer.db)]
    with gpucnn.use_backend("numpy"):
        magnitude = Convolution(W=np.abs(host(backend, layer.W)), b=np.zeros(fn), stride=1, pad=1)
        bounds = (magnitude.forward(np.abs(x)), magnitude.backward(np.abs(dout)), magnitude.dW)
    eps = np.finfo(np.float64).eps
    terms = 16 * shape[1] + 16
    whole, blocks = results[None], results[images_per_block * per_image + 7]
    for got, want, bound in zip(blocks[:3], whole[:3], bounds):
        assert np.all(np.abs(got - want) <= 16 * terms * eps * bound + 1e-300)
    np.testing.assert_array_equal(blocks[3], whole[3])


def test_convolution_from_the_books_arrays(backend):
    rng = np.random.default_rng(1)
    W, b = rng.standard_normal((2, 3, 3, 3)), rng.standard_normal(2)
    layer = Convolution(W=W, b=b, stride=1, pad=1)
    assert layer.dtype == backend.xp.float64  # explicit arrays keep their dtype
    x = rng.standard_normal((1, 3, 4, 5))
    np.testing.assert_allclose(host(backend, layer.forward(as64(backend, x))), conv_loops(x, W, b, 1, 1), rtol=1e-10)
    assert layer.filter_num == 2 and layer.filter_size == (3, 3)


@pytest.mark.parametrize("shape,size,stride,pad", POOL_CASES)
@pytest.mark.parametrize("cls,mode", [(MaxPooling, "max"), (AvgPooling, "avg")])
def test_pooling_forward_and_gradients(backend, shape, size, stride, pad, cls, mode):
    rng = np.random.default_rng(2)
    layer = cls(size, stride, pad)
    x = rng.standard_normal(shape)
    kh, kw = layer.pool_size
    out = layer.forward(as64(backend, x))
    np.testing.assert_allclose(host(backend, out), pool_loops(x, kh, kw, layer.stride, pad, mode)[0], rtol=1e-12)
    errors = check_layer_gradients(layer, x)
    assert errors["x"] < TOL, errors


def test_pool_stride_defaults_to_pool_size():
    assert MaxPooling(3).stride == 3 and AvgPooling((2, 2)).stride == 2
    with pytest.raises(ValueError, match="not square"):
        MaxPooling((2, 3))


@pytest.mark.parametrize("shape,units", [((4, 5), 3), ((2, 3, 2, 2), 4)])
def test_affine_forward_and_gradients(backend, shape, units):
    rng = np.random.default_rng(3)
    layer = Affine(units, dtype="float64")
    x = rng.standard_normal(shape)
    layer.build(shape[1:], rng)  # seeded weights: the gradient check sees the same numbers every run
    out = layer.forward(as64(backend, x))
    W, b = host(backend, layer.W), host(backend, layer.b)
    np.testing.assert_allclose(host(backend, out), x.reshape(shape[0], -1) @ W + b, rtol=1e-12)
    dx = layer.backward(backend.asarray(np.ones((shape[0], units))))
    assert tuple(dx.shape) == shape  # N-D input: shape restored
    errors = check_layer_gradients(layer, x)
    assert max(errors.values()) < TOL, errors


@pytest.mark.parametrize("cls,ref", [(ReLU, lambda x: np.maximum(x, 0)), (Sigmoid, lambda x: 1 / (1 + np.exp(-x)))])
def test_activations_forward_and_gradients(backend, cls, ref):
    x = np.random.default_rng(4).standard_normal((3, 2, 4, 3))
    x[np.abs(x) < 1e-3] = 0.5  # keep central differences away from ReLU's kink
    layer = cls()
    np.testing.assert_allclose(host(backend, layer.forward(as64(backend, x))), ref(x), rtol=1e-12)
    assert check_layer_gradients(layer, x)["x"] < TOL


def test_sigmoid_does_not_overflow(backend):
    y = Sigmoid().forward(backend.asarray(np.array([-1000.0, 0.0, 1000.0])))
    np.testing.assert_allclose(host(backend, y), [0.0, 0.5, 1.0])


def test_flatten_round_trip(backend):
    x = np.arange(24.0).reshape(2, 3, 2, 2)
    layer = Flatten()
    out = layer.forward(as64(backend, x))
    assert tuple(out.shape) == (2, 12)
    assert tuple(layer.backward(out).shape) == (2, 3, 2, 2)


def test_dropout_is_inverted_and_identity_at_inference(backend):
    x = np.ones((200, 50))
    layer = Dropout(0.3, seed=5)
    out = host(backend, layer.forward(as64(backend, x), train=True))
    kept = out != 0
    assert 0.6 < kept.mean() < 0.8
    np.testing.assert_allclose(out[kept], 1 / 0.7)  # survivors are scaled, so the mean is kept
    dx = host(backend, layer.backward(backend.asarray(np.full((200, 50), 2.0))))
    np.testing.assert_allclose(dx, 2 * out)
    np.testing.assert_array_equal(host(backend, layer.forward(as64(backend, x), train=False)), x)
    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\), got 1.5"):
        Dropout(1.5)


@pytest.mark.parametrize("shape", [(6, 4), (4, 3, 3, 2)])
def test_batch_normalization(backend, shape):
    rng = np.random.default_rng(6)
    x = rng.standard_normal(shape) * 3 + 2
    layer = BatchNormalization(dtype="float64")
    out = host(backend, layer.forward(as64(backend, x), train=True))
    axes = (0,) if len(shape) == 2 else (0, 2, 3)
    np.testing.assert_allclose(out.mean(axis=axes), 0, atol=1e-10)
    np.testing.assert_allclose(out.var(axis=axes), 1, rtol=1e-4)
    running = host(backend, layer.state["running_mean"])
    np.testing.assert_allclose(running, 0.1 * x.mean(axis=axes), rtol=1e-10)
    inference = host(backend, layer.forward(as64(backend, x), train=False))
    assert not np.allclose(inference, out)  # running statistics, not the batch's
    errors = check_layer_gradients(layer, x)
    assert max(errors.values()) < TOL, errors


def test_softmax_with_loss_values_and_gradient(backend):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((5, 4))
    t = np.array([0, 3, 1, 1, 2])
    layer = SoftmaxWithLoss()
    loss = layer.forward(as64(backend, x), backend.asarray(t))
    assert loss.ndim == 0 and backend.is_array(loss)  # a 0-d backend array: no host sync needed
    p = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
    expected = -np.mean(np.log(p[np.arange(5), t]))
    assert abs(float(loss) - expected) < 1e-12
    onehot = np.eye(4)[t]
    assert abs(float(layer.forward(as64(backend, x), as64(backend, onehot))) - expected) < 1e-12
    np.testing.assert_allclose(host(backend, layer.backward()), (p - onehot) / 5, rtol=1e-10)
    big = layer.forward(as64(backend, np.array([[1000.0, 0.0], [0.0, 1000.0]])), backend.asarray(np.array([0, 0])))
    assert abs(float(big) - 500.0) < 1e-9  # log-sum-exp: no overflow, exact


def test_softmax_loss_of_biased_rows_and_the_affine_that_takes_its_bias_gradient(backend):
    """``forward_counting_biased(rows, b, t)`` is ``forward_counting(rows + b, t)`` with the
    bias's gradient, and ``Affine.backward_rows(drows, db)`` takes that gradient as it is."""
    rng = np.random.default_rng(8)
    x, t = rng.standard_normal((5, 3)), backend.asarray(np.array([0, 3, 1, 1, 2]))
    affine = Affine(W=as64(backend, rng.standard_normal((3, 4))), b=as64(backend, rng.standard_normal(4)))
    rows = affine.gemm_rows(as64(backend, x))
    plain, fused = SoftmaxWithLoss(), SoftmaxWithLoss()
    want = plain.forward_counting(rows + affine.b, t)
    loss, right, db = fused.forward_counting_biased(rows, affine.b, t)
    for got, expected in zip((loss, right, fused.backward()), (*want, plain.backward()), strict=True):
        np.testing.assert_array_equal(host(backend, got), host(backend, expected))
    dx = fused.backward()
    # the column sums of dx: |dx| <= 1/5, so each sum of 5 terms is off by at most 5 eps
    np.testing.assert_allclose(host(backend, db), host(backend, dx).sum(axis=0), rtol=0, atol=5 * 2.0**-52)
    affine.backward_rows(dx, db=db)
    assert affine.grads["b"] is db
    affine.backward_rows(dx)
    np.testing.assert_array_equal(host(backend, affine.grads["b"]), host(backend, backend.kernels.bias_grad(dx)))
    with pytest.raises(ValueError, match="shape"):
        fused.forward_counting_biased(affine.b, affine.b, t)  # (K,) rows


def test_sigmoid_with_loss_values_and_gradient(backend):
    x = np.array([-800.0, -1.0, 0.0, 2.0, 900.0])
    t = np.array([0.0, 1.0, 1.0, 0.0, 1.0])
    layer = SigmoidWithLoss()
    loss = float(layer.forward(as64(backend, x), as64(backend, t)))
    expected = np.mean(np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x))))
    assert np.isfinite(loss) and abs(loss - expected) < 1e-12
    y = 1 / (1 + np.exp(-np.clip(x, -500, 500)))
    np.testing.assert_allclose(host(backend, layer.backward()), (y - t) / 5, atol=1e-15)


# -- dtype rules ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dtype_is_kept_through_every_layer(backend, dtype):
    xp = backend.xp
    x = backend.asarray(np.random.default_rng(8).standard_normal((2, 3, 6, 6)), dtype=dtype)
    layers = [
        Convolution(4, 3, pad=1, dtype=dtype),
        ReLU(),
        MaxPooling(2),
        AvgPooling(1),
        Sigmoid(),
        BatchNormalization(dtype=dtype),
        Dropout(0.5, seed=0),
        Flatten(),
        Affine(3, dtype=dtype),
    ]
    for layer in layers:
        x = layer.forward(x)
        assert x.dtype == getattr(xp, dtype), type(layer).__name__
    d = backend.asarray(np.ones(tuple(x.shape)), dtype=dtype)
    for layer in reversed(layers):
        d = layer.backward(d)
        assert d.dtype == getattr(xp, dtype), type(layer).__name__
        for g in layer.grads.values():
            assert g.dtype == getattr(xp, dtype)


def test_backward_never_overwrites_its_gradient(backend):
    rng = np.random.default_rng(9)
    x = backend.asarray(rng.standard_normal((2, 2, 4, 4)), dtype="float32")
    for layer in [
        ReLU(),
        Sigmoid(),
        MaxPooling(2),
        AvgPooling(2),
        Convolution(2, 3, dtype="float32"),
        Affine(3, dtype="float32"),
        Dropout(0.5, seed=1),
        BatchNormalization(dtype="float32"),
    ]:
        out = layer.forward(x)
        dout = backend.asarray(rng.standard_normal(tuple(out.shape)), dtype="float32")
        before = host(backend, dout).copy()
        layer.backward(dout)
        np.testing.assert_array_equal(host(backend, dout), before, err_msg=type(layer).__name__)


def test_bare_layer_refuses_another_dtype(backend):
    layer = Convolution(2, 3)  # float32 by default
    with pytest.raises(TypeError, match="input is float64 but the parameters are float32"):
        layer.forward(backend.asarray(np.zeros((1, 1, 5, 5))))
    affine = Affine(W=np.zeros((4, 2), dtype=np.float64))
    with pytest.raises(TypeError, match="input is float32 but the parameters are float64"):
        affine.forward(backend.asarray(np.zeros((1, 4), dtype=np.float32)))


# -- bad input -------------------------------------------------------------------------


def test_channel_mismatch(backend):
    layer = Convolution(W=np.zeros((2, 3, 3, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="input has 1 channels but W expects 3"):
        layer.forward(backend.asarray(np.zeros((1, 1, 5, 5), dtype=np.float32)))


def test_output_below_one(backend):
    with pytest.raises(ValueError, match="window 5 does not fit in input 3"):
        Convolution(1, 5, dtype="float32").forward(backend.asarray(np.zeros((1, 1, 3, 3), dtype=np.float32)))


@pytest.mark.parametrize("size,pad,number", [(3, "same", 1), (5, "same", 2), (3, "valid", 0), (5, "valid", 0)])
def test_convolution_pad_as_keras_writes_it(backend, size, pad, number):
    rng = np.random.default_rng(2)
    layer = Convolution(2, size, pad=pad, dtype="float64")
    x = rng.standard_normal((2, 3, 7, 6))
    layer.build(x.shape[1:], rng)
    assert layer.pad == number and layer.config()["pad"] == number
    out = host(backend, layer.forward(as64(backend, x)))
    assert out.shape == ((2, 2, 7, 6) if pad == "same" else (2, 2, 8 - size, 7 - size))
    np.testing.assert_allclose(
        out, conv_loops(x, host(backend, layer.W), host(backend, layer.b), 1, number), rtol=1e-10
    )


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (
            {"filter_size": 2, "pad": "same"},
            r"pad=\"same\" needs a square, odd filter at stride 1, got filter_size \(2, 2\)",
        ),
        ({"filter_size": (3, 5), "pad": "same"}, r"got filter_size \(3, 5\) and stride 1"),
        ({"filter_size": 3, "stride": 2, "pad": "same"}, r"got filter_size \(3, 3\) and stride 2"),
        ({"filter_size": 3, "pad": "full"}, r"pad must be a number, \"same\" or \"valid\", got 'full'"),
    ],
)
def test_convolution_pad_words_it_cannot_honour(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Convolution(2, **kwargs)


def test_pooling_pad_over_half_the_window():
    with pytest.raises(ValueError, match="pooling pad 2 is more than half the window 2x2"):
        MaxPooling(2, pad=2)


def test_wrong_number_of_dimensions(backend):
    with pytest.raises(ValueError, match=r"expects a 4-D array \(N, C, H, W\), got shape \(5, 5\)"):
        Convolution(1, 3).forward(backend.asarray(np.zeros((5, 5), dtype=np.float32)))
    with pytest.raises(ValueError, match="expects a 4-D array"):
        MaxPooling(2).forward(backend.asarray(np.zeros((2, 5, 5), dtype=np.float32)))
    with pytest.raises(ValueError, match=r"expects \(N, K\) scores"):
        SoftmaxWithLoss().forward(backend.asarray(np.zeros(3)), backend.asarray(np.zeros(3, dtype=np.int64)))


def test_labels_out_of_range_or_wrong_shape(backend):
    x = backend.asarray(np.zeros((3, 4)))
    loss = SoftmaxWithLoss()
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\] for 4 classes, got values from 0 to 7"):
        loss.forward(x, backend.asarray(np.array([0, 7, 1])))
    with pytest.raises(ValueError, match="2 labels for 3 samples"):
        loss.forward(x, backend.asarray(np.array([0, 1])))
    with pytest.raises(ValueError, match=r"one-hot, got shape \(3, 5\)"):
        loss.forward(x, backend.asarray(np.zeros((3, 5))))
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 1\]"):
        SigmoidWithLoss().forward(backend.asarray(np.zeros(2)), backend.asarray(np.array([0.0, 2.0])))


def test_arrays_of_another_backend_are_refused():
    from .strict_backend import make_strict_backend

    pytest.importorskip("array_api_strict")
    strict = make_strict_backend()
    with gpucnn.use_backend("numpy"):
        layer = ReLU()
    with pytest.raises(TypeError, match="ReLU.forward got a array_api_strict.Array but is bound to backend 'numpy'"):
        layer.forward(strict.asarray(np.zeros((2, 2))))


# -- what a layer holds ------------------------------------------------------------------


def _every_layer(dtype="float64"):
    """One of each layer, with an input that fits it and a target for the losses."""
    image = np.random.default_rng(10).standard_normal((2, 3, 6, 5))
    flat = np.random.default_rng(11).standard_normal((4, 3))
    return [
        (Convolution(2, 3, pad=1, dtype=dtype), image, None),
        (MaxPooling(2), image, None),
        (AvgPooling(2), image, None),
        (Affine(3, dtype=dtype), image, None),
        (ReLU(), image, None),
        (Sigmoid(), image, None),
        (Flatten(), image, None),
        (Dropout(0.5, seed=0), image, None),
        (BatchNormalization(dtype=dtype), image, None),
        (SoftmaxWithLoss(), flat, np.array([0, 2, 1, 1])),
        (SigmoidWithLoss(), flat[:, :1], np.array([0.0, 1.0, 1.0, 0.0])),
    ]


def test_every_cached_array_is_declared_once(backend):
    """The arrays a layer keeps between forward and backward are exactly its ``cache_names``:
    None when made, set by a training step, None again after ``clear_cache``."""
    for layer, x, t in _every_layer():
        name = type(layer).__name__
        assert all(getattr(layer, cache) is None for cache in layer.cache_names), name
        layer.build(x.shape[1:], dtype="float64")
        before = dict(vars(layer))
        xb = as64(backend, x)
        out = layer.forward(xb, backend.asarray(t)) if t is not None else layer.forward(xb)
        layer.backward() if t is not None else layer.backward(backend.asarray(np.ones(tuple(out.shape))))
        changed = {key for key, value in vars(layer).items() if key not in before or value is not before[key]}
        changed.discard("_rng")  # Dropout's random stream, made at its first draw: not a cache
        assert changed and changed <= set(layer.cache_names), (name, changed, layer.cache_names)
        layer.clear_cache()
        assert all(getattr(layer, cache) is None for cache in layer.cache_names), name


def test_parameters_and_state_are_registered_once(backend):
    layer = BatchNormalization(dtype="float64")
    layer.forward(as64(backend, np.random.default_rng(12).standard_normal((5, 3))))
    assert list(layer.params) == ["gamma", "beta"] and list(layer.state) == ["running_mean", "running_var"]
    arrays = layer.state_dict()
    assert list(arrays) == ["gamma", "beta", "running_mean", "running_var"]
    assert all(arrays[name] is layer.params[name] for name in layer.params)  # the layer's own arrays

    saved = {name: host(backend, value) + 1.0 for name, value in arrays.items()}
    layer.load_state_dict(saved)
    for name, value in saved.items():
        np.testing.assert_array_equal(host(backend, layer.state_dict()[name]), value)
    before = saved["gamma"].copy()
    saved["gamma"] += 5.0  # the layer took copies
    np.testing.assert_array_equal(host(backend, layer.params["gamma"]), before)

    with pytest.raises(ValueError, match=r"'running_var' has shape \(4,\), the layer needs \(3,\)"):
        layer.load_state_dict({**saved, "running_var": np.ones(4)})
    with pytest.raises(ValueError, match=r"arrays \['beta', 'gamma', 'running_mean'\] do not match"):
        layer.load_state_dict({k: v for k, v in saved.items() if k != "running_var"})
    with pytest.raises(ValueError, match="'gamma' is already registered as a parameter"):
        layer.add_state("gamma", np.zeros(3))


def test_to_moves_every_registered_array(backend):
    with gpucnn.use_backend("numpy"):
        layer = BatchNormalization(dtype="float64")
        layer.build((3,))
    layer.state["running_var"] = np.arange(3.0)
    layer.to(backend)
    assert layer.backend is backend
    assert all(backend.is_array(value) for value in layer.state_dict().values())
    np.testing.assert_array_equal(host(backend, layer.state["running_var"]), np.arange(3.0))
