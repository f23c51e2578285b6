"""The whole-layer Winograd operations: a Convolution (3x3, stride 1) -> bias -> ReLU,
with or without a 2x2 / stride-2 max pooling, and their backwards, from the input and
the filters (``winograd_conv_*``).

Every set's operations equal the composition they stand for (the NumPy set's
``winograd_*`` passes and GEMMs over the whole batch): bit for bit on small integers,
where every transform, product and sum is exact, so that a band, a group or a tile put in
the wrong place cannot hide in rounding; within the rounding of the GEMMs' sums on normal
values. The Numba set takes the work a band of tile rows at a time and sums dU per group
of images: several bands and groups are reached on purpose, and its bytes do not depend
on the number of threads. Layers that run through these operations are checked in
``test_layers.py`` (gradients) and ``test_model.py`` (training).
"""

from __future__ import annotations

import numpy as np
import pytest

from .bounds import sum_rtol
from .conftest import STRICT, backend_or_skip, results_on_threads
from .winograd_layer import Layer

EQUAL = np.testing.assert_array_equal

MNIST_CNN = (5, 32, 26, 26, 0, 64)  # mnist_cnn's second convolution: several bands of tile rows
SHAPES = [  # N, C, H, W, pad, FN
    (1, 1, 4, 4, 0, 1),  # one tile, one pooling window
    (2, 3, 5, 4, 1, 2),  # an odd output height
    (3, 2, 6, 9, 0, 3),  # an odd output width, pad 0
    (9, 16, 8, 8, 1, 5),  # three groups of dU's partial sums, the last short
    (3, 16, 7, 6, 2, 4),  # pad 2: an output larger than the input
    MNIST_CNN,
    (2, 64, 15, 15, 0, 32),  # partial tiles
]
SHAPE_IDS = ["x".join(map(str, s[:4])) + f"-p{s[4]}-f{s[5]}" for s in SHAPES]


SETS = ["numpy", "numba", STRICT]


@pytest.fixture(scope="module", params=SETS)
def backend(request):
    return backend_or_skip(request.param)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_on_integers_the_whole_layer_is_the_composition_bit_for_bit(backend, shape, dtype):
    layer = Layer.seeded(shape, dtype, integers=True)
    got, want = layer.results(backend.kernels, backend), layer.composed()
    for name, value in want.items():
        assert got[name].shape == value.shape and got[name].dtype == value.dtype, name
        EQUAL(got[name], value, err_msg=name)
    if got["relu out"].size >= 64:  # the data hold what the rules are about: ReLU zeros and ties
        assert (got["relu out"] == 0).any() and (got["relu out"] > 0).any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES[3:], ids=SHAPE_IDS[3:])
def test_on_normal_values_the_whole_layer_is_the_composition_to_rounding(backend, shape, dtype):
    """Outputs and dx within the rounding of a GEMM over C (or FN) terms and the
    transforms; dW within that of its sum over every tile; argmax equal where the two
    largest values of a window are apart; db to the rounding of its sum."""
    layer = Layer.seeded(shape, dtype, integers=False)
    layer.assert_agrees(layer.results(backend.kernels, backend), lambda kind, terms: sum_rtol(dtype, 2 * terms))


def test_without_an_input_gradient_dx_is_none_and_the_rest_is_unchanged(backend):
    layer = Layer.seeded(SHAPES[3], np.float32, integers=True)
    with_dx, without = layer.results(backend.kernels, backend), layer.results(backend.kernels, backend, False)
    assert set(with_dx) - set(without) == {"pooled dx", "relu dx"}
    for name, value in without.items():
        EQUAL(value, with_dx[name], err_msg=name)


@pytest.mark.parametrize(
    ("shape", "band_bytes"),
    [(MNIST_CNN, 2**14), (MNIST_CNN, 2**30)] + [(shape, 1) for shape in SHAPES],
    ids=["mnist_cnn-a-few", "mnist_cnn-whole-image"] + [f"{i}-one-tile-row" for i in SHAPE_IDS],
)
def test_the_numba_sets_bands_give_the_composition(monkeypatch, shape, band_bytes):
    """One tile row per band (the backward's dx tiles then meet across bands; on odd
    sizes, pads and with bands past the pooled rows), a few, or the whole image: the
    same exact values."""
    backend = backend_or_skip("numba")
    monkeypatch.setattr(backend.kernels, "winograd_band_bytes", band_bytes)
    layer = Layer.seeded(shape, np.float32, integers=True)
    got, want = layer.results(backend.kernels), layer.composed()
    for name, value in want.items():
        EQUAL(got[name], value, err_msg=name)


def test_the_numba_set_gives_the_same_bytes_twice_and_on_one_thread_and_on_all():
    numba = pytest.importorskip("numba", reason="the numba kernel set needs Numba")
    kernels = backend_or_skip("numba").kernels
    layer = Layer.seeded(SHAPES[3], np.float32, integers=False)
    threads = numba.get_num_threads()
    runs = results_on_threads(
        [threads, threads, 1], lambda: {name: a.tobytes() for name, a in layer.results(kernels).items()}
    )
    assert runs[0] == runs[1] == runs[2]


def test_the_numba_set_refuses_arrays_of_another_shape():
    """Its loops index without bounds checks: a wrong shape raises, naming the array."""
    kernels = backend_or_skip("numba").kernels
    layer = Layer.seeded(SHAPES[1], np.float32, integers=True)
    x, w, b, pad = layer.x, layer.w, layer.b, layer.pad
    with pytest.raises(ValueError, match=r"w has shape \(2, 2, 3, 3\), expected \(2, 3, 3, 3\)"):
        kernels.winograd_conv_bias_relu(x, w[:, :2], b, pad)
    with pytest.raises(ValueError, match=r"b has shape \(1,\), expected \(2,\)"):
        kernels.winograd_conv_bias_relu_maxpool(x, w, b[:1], pad)
    out, argmax = kernels.winograd_conv_bias_relu_maxpool(x, w, b, pad)
    with pytest.raises(ValueError, match=r"dout has shape \(2, 2, 1, 2\), expected \(2, 2, 2, 2\)"):
        kernels.winograd_conv_maxpool_relu_backward(layer.dout_pooled[:, :, :1], argmax, out, x, w, pad)
    # the forward's arrays with another pad than the backward's: shapes of another output
    with pytest.raises(ValueError, match=r"dout has shape \(2, 2, 2, 2\), expected \(2, 2, 1, 1\)"):
        kernels.winograd_conv_maxpool_relu_backward(layer.dout_pooled, argmax, out, x, w, 0)
    relu = kernels.winograd_conv_bias_relu(x, w, b, pad)
    with pytest.raises(ValueError, match=r"out has shape \(2, 2, 5, 4\), expected \(2, 1, 5, 4\)"):
        kernels.winograd_conv_relu_backward(layer.dout[:, :1], relu, x, w[:1], pad)
