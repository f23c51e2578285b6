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

from gpucnn.kernels.numpy_set import NumpyKernels

from . import winograd_reference as ref
from .bounds import assert_argmax_up_to_rounding, assert_close_to_sum, pool_windows, sum_rtol
from .conftest import STRICT, backend_or_skip

NP = NumpyKernels()
EQUAL = np.testing.assert_array_equal

SHAPES = [  # N, C, H, W, pad, FN
    (1, 1, 4, 4, 0, 1),  # one tile, one pooling window
    (2, 3, 5, 4, 1, 2),  # an odd output height
    (3, 2, 6, 9, 0, 3),  # an odd output width, pad 0
    (9, 16, 8, 8, 1, 5),  # three groups of dU's partial sums, the last short
    (5, 32, 26, 26, 0, 64),  # mnist_cnn's second convolution
    (2, 64, 15, 15, 0, 32),  # partial tiles
]
SHAPE_IDS = ["x".join(map(str, s[:4])) + f"-p{s[4]}-f{s[5]}" for s in SHAPES]


class Layer:
    """x (N, C, H, W), w (FN, C, 3, 3), b (FN,) and the gradients of both outputs (pooled
    and not), of ``dtype``, from a seeded generator: integers in [-3, 3] (b in [-4, 1]),
    where everything is exact, or standard normal values."""

    def __init__(self, shape, dtype, integers: bool, seed: int = 0) -> None:
        n, c, h, w, pad, fn = shape
        self.pad = pad
        self.oh, self.ow = h + 2 * pad - 2, w + 2 * pad - 2
        rng = np.random.default_rng(seed)

        def draw(*dims, low=-3, high=4):
            values = rng.integers(low, high, dims) if integers else rng.standard_normal(dims)
            return values.astype(dtype)

        self.x, self.w, self.b = draw(n, c, h, w), draw(fn, c, 3, 3), draw(fn, low=-4, high=2)
        self.dout_pooled = draw(n, fn, self.oh // 2, self.ow // 2)
        self.dout = draw(n, fn, self.oh, self.ow)

    def results(self, kernels, backend=None, input_grad=True) -> dict:
        """Every whole-layer operation of ``kernels`` on this layer, NumPy arrays out."""
        move = (lambda a: a) if backend is None else backend.asarray
        back = (lambda a: a) if backend is None else (lambda a: np.asarray(backend.to_numpy(a)))
        x, w, b, pad = move(self.x), move(self.w), move(self.b), self.pad
        out, argmax = kernels.winograd_conv_bias_relu_maxpool(x, w, b, pad)
        dx, dw, db = kernels.winograd_conv_maxpool_relu_backward(
            move(self.dout_pooled), argmax, out, x, w, pad, input_grad
        )
        relu = kernels.winograd_conv_bias_relu(x, w, b, pad)
        rdx, rdw, rdb = kernels.winograd_conv_relu_backward(move(self.dout), relu, x, w, pad, input_grad)
        got = {
            "pooled out": out,
            "argmax": argmax,
            "pooled out (inference)": kernels.winograd_conv_bias_relu_maxpool_infer(x, w, b, pad),
            "pooled dW": dw,
            "pooled db": db,
            "relu out": relu,
            "relu dW": rdw,
            "relu db": rdb,
        }
        if input_grad:
            got.update({"pooled dx": dx, "relu dx": rdx})
        else:
            assert dx is None and rdx is None
        return {name: back(a) for name, a in got.items()}

    def composed(self) -> dict:
        """The composition: the NumPy set's passes over the whole batch, and float64
        sums of absolute values that bound each result's rounding."""
        x, w, b, pad, oh, ow = self.x, self.w, self.b, self.pad, self.oh, self.ow
        n = x.shape[0]
        u, v = NP.winograd_filter(w), NP.winograd_input(x, pad)
        m = v @ u
        out, argmax = NP.winograd_bias_relu_maxpool(m, b, n, oh, ow)
        relu = NP.winograd_bias_relu(m, b, n, oh, ow)
        self.biased = NP.rows_to_nchw(NP.winograd_output(m, n, oh, ow) + b, n, oh, ow)  # what the pooling sees
        want = {"pooled out": out, "argmax": argmax, "pooled out (inference)": out, "relu out": relu}
        for kind, (dm, db) in {
            "pooled": NP.winograd_maxpool_relu_backward(self.dout_pooled, argmax, out, n, oh, ow),
            "relu": NP.winograd_relu_backward(self.dout, relu, n, oh, ow),
        }.items():
            want[f"{kind} dW"] = NP.winograd_filter_grad(np.matrix_transpose(v) @ dm)
            want[f"{kind} dx"] = NP.winograd_input_grad(dm @ np.matrix_transpose(u), x.shape, pad)
            want[f"{kind} db"] = db
        return want

    def absolute(self) -> dict:
        """Each result's float64 sum of the absolute values of its terms."""
        x, w, pad, oh, ow = self.x, self.w, self.pad, self.oh, self.ow
        n = x.shape[0]
        v_abs, u_abs = ref.input_transform(x, pad, True), ref.filter_transform(w, True)
        out_abs = ref.output_transform(v_abs @ u_abs, n, oh, ow, True) + np.abs(self.b)[None, :]
        relu_abs = NP.rows_to_nchw(out_abs, n, oh, ow)
        bounds = {"relu out": relu_abs}
        for kind, dout in (("pooled", self.dout_pooled), ("relu", self.dout)):
            drows = np.abs(dout.astype(np.float64))
            if kind == "pooled":  # every pixel of a window may carry its gradient
                drows = np.repeat(np.repeat(drows, 2, axis=2), 2, axis=3)
                drows = np.pad(drows, ((0, 0), (0, 0), (0, oh - drows.shape[2]), (0, ow - drows.shape[3])))
            dm_abs = ref.output_transform_adjoint(NP.nchw_to_rows(drows), n, oh, ow, True)
            bounds[f"{kind} dW"] = ref.filter_transform_adjoint(np.matrix_transpose(v_abs) @ dm_abs, True)
            bounds[f"{kind} dx"] = ref.input_transform_adjoint(dm_abs @ np.matrix_transpose(u_abs), x.shape, pad, True)
            bounds[f"{kind} db"] = drows.sum(axis=(0, 2, 3))
        pooled = relu_abs[:, :, : oh // 2 * 2, : ow // 2 * 2]
        pooled = pooled.reshape(n, -1, oh // 2, 2, ow // 2, 2).max(axis=(3, 5))
        bounds["pooled out"] = bounds["pooled out (inference)"] = pooled
        return bounds


SETS = ["numpy", "numba", STRICT]


@pytest.fixture(scope="module", params=SETS)
def backend(request):
    return backend_or_skip(request.param)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_on_integers_the_whole_layer_is_the_composition_bit_for_bit(backend, shape, dtype):
    layer = Layer(shape, dtype, integers=True)
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
    layer = Layer(shape, dtype, integers=False)
    got, want, bounds = layer.results(backend.kernels, backend), layer.composed(), layer.absolute()
    n, c = layer.x.shape[:2]
    fn = layer.w.shape[0]
    tiles = n * len(range(0, layer.oh, 2)) * len(range(0, layer.ow, 2))
    rtol = {"out": sum_rtol(dtype, 2 * (c + 16)), "dx": sum_rtol(dtype, 2 * (fn + 64))}
    rtol.update(dW=sum_rtol(dtype, 2 * (tiles + 16)), db=sum_rtol(dtype, 2 * n * layer.oh * layer.ow))
    for name, value in want.items():
        if name == "argmax":
            continue
        assert got[name].shape == value.shape and got[name].dtype == value.dtype, name
        kind = name.split()[1]
        assert_close_to_sum(got[name], value, bounds[name], rtol[kind], name)
    slack = 2 * rtol["out"] * bounds["pooled out"]  # both sides' rounding
    assert_argmax_up_to_rounding(got["argmax"], want["argmax"], pool_windows(layer.biased, 2, 2, 2, 0), slack)


def test_without_an_input_gradient_dx_is_none_and_the_rest_is_unchanged(backend):
    layer = Layer(SHAPES[3], np.float32, integers=True)
    with_dx, without = layer.results(backend.kernels, backend), layer.results(backend.kernels, backend, False)
    assert set(with_dx) - set(without) == {"pooled dx", "relu dx"}
    for name, value in without.items():
        EQUAL(value, with_dx[name], err_msg=name)


@pytest.mark.parametrize("band_bytes", [1, 2**14, 2**30], ids=["one-tile-row", "a-few", "whole-image"])
def test_the_numba_sets_bands_give_the_composition(monkeypatch, band_bytes):
    """One tile row per band (the backward's dx tiles then meet across bands), a few,
    or the whole image: the same exact values."""
    backend = backend_or_skip("numba")
    monkeypatch.setattr(backend.kernels, "winograd_band_bytes", band_bytes)
    layer = Layer(SHAPES[4], np.float32, integers=True)
    got, want = layer.results(backend.kernels), layer.composed()
    for name, value in want.items():
        EQUAL(got[name], value, err_msg=name)


def test_the_numba_set_gives_the_same_bytes_twice_and_on_one_thread_and_on_all():
    numba = pytest.importorskip("numba", reason="the numba kernel set needs Numba")
    kernels = backend_or_skip("numba").kernels
    layer = Layer(SHAPES[3], np.float32, integers=False)
    threads = numba.get_num_threads()
    runs = []
    try:
        for count in (threads, threads, 1):
            numba.set_num_threads(count)
            runs.append({name: a.tobytes() for name, a in layer.results(kernels).items()})
    finally:
        numba.set_num_threads(threads)
    assert runs[0] == runs[1] == runs[2]


def test_the_numba_set_refuses_arrays_of_another_shape():
    """Its loops index without bounds checks: a wrong shape raises, naming the array."""
    kernels = backend_or_skip("numba").kernels
    layer = Layer(SHAPES[1], np.float32, integers=True)
    x, w, b, pad = layer.x, layer.w, layer.b, layer.pad
    with pytest.raises(ValueError, match=r"w has shape \(2, 2, 3, 3\), expected \(2, 3, 3, 3\)"):
        kernels.winograd_conv_bias_relu(x, w[:, :2], b, pad)
    with pytest.raises(ValueError, match=r"b has shape \(1,\), expected \(2,\)"):
        kernels.winograd_conv_bias_relu_maxpool(x, w, b[:1], pad)
    out, argmax = kernels.winograd_conv_bias_relu_maxpool(x, w, b, pad)
    with pytest.raises(ValueError, match=r"dout has shape \(2, 2, 1, 2\), expected \(2, 2, 2, 2\)"):
        kernels.winograd_conv_maxpool_relu_backward(layer.dout_pooled[:, :, :1], argmax, out, x, w, pad)
