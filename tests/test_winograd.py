"""Winograd F(2x2, 3x3) on the CPU kernel sets: the NumPy set, the Numba set and the
generic set on array_api_strict.

Each set's six transforms follow their definitions (``tests/winograd_reference.py``) and,
on the shapes of the networks that use them, equal the NumPy set's to the bit; the
Winograd forward and gradients equal im2col's and the GEMM's to float rounding; each
backward transform is its forward's adjoint; and two calls give the same bytes. The
output transform fused with bias, ReLU and a 2x2 max pooling, and its backward, equal the
composition they fuse (the bias gradient to float rounding), and so do the output
transform fused with bias and ReLU alone and its backward. The agreement on drawn shapes
and values, for every backend, is in ``test_kernel_agreement.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

from gpucnn.kernels.generic import GenericKernels
from gpucnn.kernels.numpy_set import NumpyKernels

from . import winograd_reference as ref
from .bounds import assert_close_to_sum, pool_windows, sum_rtol
from .conftest import STRICT, backend_or_skip, results_on_threads

NP = NumpyKernels()
EQUAL = np.testing.assert_array_equal
DTYPES = (np.float32, np.float64)
SETS = ["numpy", "numba", STRICT]

SHAPES = [  # N, C, H, W, pad, FN
    (1, 1, 3, 3, 0, 1),  # a 1x1 output: one tile, three quarters of it past the output
    (1, 1, 4, 3, 1, 2),  # N = 1, C = 1, an odd output width
    (2, 3, 5, 4, 1, 2),  # an odd output height
    (3, 2, 6, 9, 0, 3),  # an odd output width, pad 0
    (2, 16, 8, 8, 2, 5),
    (2, 32, 26, 26, 0, 64),  # mnist_cnn's second convolution, 2 images
    (1, 32, 32, 32, 1, 32),  # cifar_cnn's first block
    (2, 64, 15, 15, 0, 64),  # cifar_cnn's second block: partial tiles
]
SHAPE_IDS = ["x".join(map(str, s[:4])) + f"-p{s[4]}-f{s[5]}" for s in SHAPES]


class Problem:
    """A 3x3 stride-1 convolution of x (N, C, H, W) by w (FN, C, 3, 3) with ``pad``, and
    arrays for every transform: M (16, T, FN), dY as GEMM rows (N*OH*OW, FN), dV (16, T, C)
    and dU (16, C, FN); standard normal values of ``dtype`` from a seeded generator."""

    def __init__(self, shape, dtype, seed: int = 0) -> None:
        n, c, h, w, pad, fn = shape
        self.n, self.c, self.fn, self.pad = n, c, fn, pad
        self.oh, self.ow = h + 2 * pad - 2, w + 2 * pad - 2
        th, tw = ref.tiles(self.oh, self.ow)
        t = n * th * tw
        rng = np.random.default_rng(seed)

        def draw(*dims):
            return rng.standard_normal(dims).astype(dtype)

        self.x, self.w = draw(n, c, h, w), draw(fn, c, 3, 3)
        self.m, self.drows, self.dv, self.du = (
            draw(16, t, fn),
            draw(n * self.oh * self.ow, fn),
            draw(16, t, c),
            draw(16, c, fn),
        )

    def operations(self) -> dict:
        """Operation: (its arguments, its definition ``reference(absolute)``)."""
        n, oh, ow, pad = self.n, self.oh, self.ow, self.pad
        return {
            "winograd_filter": ((self.w,), lambda a: ref.filter_transform(self.w, a)),
            "winograd_filter_grad": ((self.du,), lambda a: ref.filter_transform_adjoint(self.du, a)),
            "winograd_input": ((self.x, pad), lambda a: ref.input_transform(self.x, pad, a)),
            "winograd_input_grad": (
                (self.dv, self.x.shape, pad),
                lambda a: ref.input_transform_adjoint(self.dv, self.x.shape, pad, a),
            ),
            "winograd_output": ((self.m, n, oh, ow), lambda a: ref.output_transform(self.m, n, oh, ow, a)),
            "winograd_output_grad": (
                (self.drows, n, oh, ow),
                lambda a: ref.output_transform_adjoint(self.drows, n, oh, ow, a),
            ),
        }


class SetUnderTest:
    """A CPU kernel set called on NumPy arrays (moved to its backend and back)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.backend = backend_or_skip(name)
        self.kernels = self.backend.kernels

    def run(self, operation: str, *args):
        """``kernels.operation(*args)``, NumPy arrays in and out (a tuple of them for a tuple)."""
        moved = [self.backend.asarray(np.array(a)) if isinstance(a, np.ndarray) else a for a in args]
        result = getattr(self.kernels, operation)(*moved)
        if isinstance(result, tuple):
            return tuple(self.numpy(r) for r in result)
        return self.numpy(result)

    def forward(self, x, w, pad: int, oh: int, ow: int):
        """The Winograd forward as a layer computes it: V, U, M = V @ U, the rows; and V and U."""
        xp, k = self.backend.xp, self.kernels
        v, u = k.winograd_input(self.backend.asarray(x), pad), k.winograd_filter(self.backend.asarray(w))
        rows = k.winograd_output(xp.matmul(v, u), x.shape[0], oh, ow)
        return rows, v, u

    def gradients(self, v, u, drows, x_shape, pad: int, oh: int, ow: int):
        """dW and dx from the rows' gradient, as a layer computes them."""
        xp, k = self.backend.xp, self.kernels
        dm = k.winograd_output_grad(self.backend.asarray(drows), x_shape[0], oh, ow)
        dw = k.winograd_filter_grad(xp.matmul(xp.matrix_transpose(v), dm))
        dx = k.winograd_input_grad(xp.matmul(dm, xp.matrix_transpose(u)), x_shape, pad)
        return dw, dx

    def numpy(self, a) -> np.ndarray:
        return np.asarray(self.backend.to_numpy(a))


@pytest.fixture(scope="module", params=SETS)
def kernel_set(request) -> SetUnderTest:
    return SetUnderTest(request.param)


def abs64(a) -> np.ndarray:
    return np.abs(np.asarray(a, dtype=np.float64))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_the_transforms_follow_their_definitions_and_equal_the_numpy_sets(kernel_set, shape, dtype):
    """Within the rounding of their sums of their definitions, and bit for bit the NumPy
    set's: every set makes the generic set's additions in its order."""
    problem = Problem(shape, dtype)
    for operation, (args, definition) in problem.operations().items():
        got = kernel_set.run(operation, *args)
        want = definition(False)
        assert got.shape == want.shape and got.dtype == dtype, operation
        assert_close_to_sum(got, want, definition(True), sum_rtol(dtype, ref.TERMS[operation]), operation)
        EQUAL(got, getattr(NP, operation)(*args), err_msg=operation)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_the_winograd_convolution_is_im2cols_to_rounding(kernel_set, shape, dtype):
    """The forward and both gradients, computed as a layer does, against im2col and a GEMM
    in float64. Winograd's rounding is relative to its own sums of absolute values (those
    of its transforms and products), which bound the direct sum's too: each result within
    (C + 16) eps of them for the forward, (T + 16) eps for dW (its GEMM sums over T tiles)
    and (FN + 64) eps for dx."""
    problem = Problem(shape, dtype)
    x, w, drows, pad, oh, ow = problem.x, problem.w, problem.drows, problem.pad, problem.oh, problem.ow
    n, c, fn = problem.n, problem.c, problem.fn
    col = NP.im2col(x.astype(np.float64), 3, 3, 1, pad)
    w_rows = w.reshape(fn, -1).astype(np.float64)

    rows, v, u = kernel_set.forward(x, w, pad, oh, ow)
    rows = kernel_set.numpy(rows)
    assert rows.shape == (n * oh * ow, fn) and rows.dtype == dtype
    v_abs, u_abs = ref.input_transform(x, pad, True), ref.filter_transform(w, True)
    rows_abs = ref.output_transform(v_abs @ u_abs, n, oh, ow, True)
    assert_close_to_sum(rows, col @ w_rows.T, rows_abs, sum_rtol(dtype, c + 16) + sum_rtol(np.float64, 9 * c), "y")

    dw, dx = kernel_set.gradients(v, u, drows, x.shape, pad, oh, ow)
    dw, dx = kernel_set.numpy(dw), kernel_set.numpy(dx)
    assert dw.shape == w.shape and dx.shape == x.shape and dw.dtype == dx.dtype == dtype
    drows64 = drows.astype(np.float64)
    dm_abs = ref.output_transform_adjoint(drows, n, oh, ow, True)
    dw_abs = ref.filter_transform_adjoint(np.matrix_transpose(v_abs) @ dm_abs, True)
    rtol = sum_rtol(dtype, v.shape[1] + 16) + sum_rtol(np.float64, n * oh * ow)
    assert_close_to_sum(dw, (drows64.T @ col).reshape(w.shape), dw_abs, rtol, "dW")
    dx_abs = ref.input_transform_adjoint(dm_abs @ np.matrix_transpose(u_abs), x.shape, pad, True)
    want = NP.col2im(drows64 @ w_rows, x.shape, 3, 3, 1, pad)
    assert_close_to_sum(dx, want, dx_abs, sum_rtol(dtype, fn + 64) + sum_rtol(np.float64, 9 * fn), "dx")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES[:5], ids=SHAPE_IDS[:5])
def test_each_backward_transform_is_its_forwards_adjoint(kernel_set, shape, dtype):
    """<op(a), b> = <a, op_adjoint(b)>, in float64, within the rounding of both
    transforms relative to <|op|(|a|), |b|>, and of the dot products themselves."""
    problem = Problem(shape, dtype)
    n, oh, ow, pad, x = problem.n, problem.oh, problem.ow, problem.pad, problem.x
    pairs = [  # (forward, its argument and arguments after it, backward, its argument and arguments after it)
        ("winograd_filter", problem.w, (), "winograd_filter_grad", problem.du, ()),
        ("winograd_input", x, (pad,), "winograd_input_grad", problem.dv, (x.shape, pad)),
        ("winograd_output", problem.m, (n, oh, ow), "winograd_output_grad", problem.drows, (n, oh, ow)),
    ]
    definitions = problem.operations()
    for forward, a, forward_args, backward, b, backward_args in pairs:
        op_a = kernel_set.run(forward, a, *forward_args)
        adjoint_b = kernel_set.run(backward, b, *backward_args)
        assert op_a.shape == b.shape and adjoint_b.shape == a.shape, forward
        abs_sum = np.vdot(definitions[forward][1](True), abs64(b))
        rtol = (
            sum_rtol(dtype, ref.TERMS[forward])
            + sum_rtol(dtype, ref.TERMS[backward])
            + 2 * sum_rtol(np.float64, a.size + b.size)
        )
        lhs = np.vdot(op_a.astype(np.float64), b.astype(np.float64))
        rhs = np.vdot(a.astype(np.float64), adjoint_b.astype(np.float64))
        assert_close_to_sum(lhs, rhs, abs_sum, rtol, f"<{forward}(a), b> - <a, {backward}(b)>")


@pytest.mark.parametrize("shape", [SHAPES[3], SHAPES[5], SHAPES[7]], ids=[SHAPE_IDS[3], SHAPE_IDS[5], SHAPE_IDS[7]])
def test_two_calls_give_the_same_bytes(kernel_set, shape):
    problem = Problem(shape, np.float32)
    for operation, (args, _) in problem.operations().items():
        first, second = kernel_set.run(operation, *args), kernel_set.run(operation, *args)
        assert first.tobytes() == second.tobytes(), operation


def test_the_numba_set_gives_the_same_bytes_on_one_thread_and_on_all():
    """Each transform splits its work over the threads without changing any sum."""
    numba = pytest.importorskip("numba", reason="the numba kernel set needs Numba")
    kernels = backend_or_skip("numba").kernels
    problem = Problem(SHAPES[6], np.float32)
    one, all_ = results_on_threads(
        [1, numba.get_num_threads()],
        lambda: {op: getattr(kernels, op)(*args).tobytes() for op, (args, _) in problem.operations().items()},
    )
    assert one == all_


def test_the_numba_set_refuses_arrays_of_another_shape():
    """Its loops index without bounds checks: a wrong shape raises, naming the array."""
    kernels = backend_or_skip("numba").kernels
    problem = Problem(SHAPES[2], np.float32)
    n, oh, ow, pad = problem.n, problem.oh, problem.ow, problem.pad
    with pytest.raises(ValueError, match=r"M has shape \(16, 11, 2\), expected \(16, 12, 2\)"):
        kernels.winograd_output(problem.m[:, :11], n, oh, ow)
    with pytest.raises(ValueError, match=r"drows has shape \(39, 2\), expected \(40, 2\)"):
        kernels.winograd_output_grad(problem.drows[:39], n, oh, ow)
    with pytest.raises(ValueError, match=r"dV has shape \(16, 12, 2\), expected \(16, 12, 3\)"):
        kernels.winograd_input_grad(problem.dv[:, :, :2], problem.x.shape, pad)
    with pytest.raises(ValueError, match=r"dU has shape \(15, 3, 2\), expected \(16, 3, 2\)"):
        kernels.winograd_filter_grad(problem.du[:15])
    with pytest.raises(ValueError, match="window 3 does not fit in input 1 with pad 0"):
        kernels.winograd_input(np.zeros((1, 1, 1, 4), np.float32), 0)


@pytest.mark.parametrize("name", ["numpy", "numba"])
def test_the_cpu_sets_prefer_winograd_for_3x3_stride_1_with_enough_channels(name):
    kernels = backend_or_skip(name).kernels
    c = kernels.winograd_min_channels
    assert kernels.prefers_winograd(c, 8, 3, 3, 1) is True
    assert kernels.prefers_winograd(4 * c, 64, 3, 3, 1) is True
    assert kernels.prefers_winograd(c - 1, 8, 3, 3, 1) is False
    assert kernels.prefers_winograd(c, 8, 3, 3, 2) is False
    for fh, fw in [(5, 5), (3, 1), (1, 3), (1, 1)]:
        assert kernels.prefers_winograd(c, 8, fh, fw, 1) is False


# -- the output transform fused with bias, ReLU and a 2x2, stride-2 max pooling ----------------

POOL_SHAPES = [  # N, H, W, pad, FN of the convolution whose products are pooled
    (1, 4, 4, 0, 1),  # a 2x2 output: one tile, one window
    (2, 7, 9, 0, 3),  # a 5x7 output: its last row and column of tiles are not pooled
    (1, 4, 3, 1, 17),  # N = 1, a 4x3 output, FN one past a multiple of the vector width
    (3, 6, 4, 1, 5),  # pad 1, a 6x4 output
    (2, 15, 15, 0, 64),  # cifar_cnn's second block: a 13x13 output
    (14, 26, 26, 0, 64),  # mnist_cnn's second convolution, a block of 14 images
]
POOL_SHAPE_IDS = ["x".join(map(str, s[:3])) + f"-p{s[3]}-f{s[4]}" for s in POOL_SHAPES]
# Products set to NaN together in one tile, and the taps (2*a + b) of its window they make
# NaN: the first entry of M reaches output (0, 0) only, the last (1, 1) only, entry 5 all four.
NAN_ENTRIES = [(0,), (3,), (12,), (15,), (5,), (0, 15), (3, 12)]
NAN_ARGMAX_AS_NUMPY = ("numpy", "numba")  # the generic set's argmax of a NaN window is unspecified


class PoolProblem:
    """Products M (16, T, FN) of a convolution with an OH x OW output, a bias (FN,) and the
    gradient dout (N, FN, OH//2, OW//2) of the pooling, of ``dtype``, from a seeded generator.

    ``data``: ``"normal"``, standard normal values; ``"integers"``, integers in [-3, 3]
    (bias in [-4, 1]): every output and sum is exact, windows tie and many are <= 0;
    ``"nan"``, standard normal with the products of :data:`NAN_ENTRIES` NaN, each group
    in a pooled tile of its own (as far as there are tiles).
    """

    def __init__(self, shape, dtype, data: str = "normal", seed: int = 0) -> None:
        n, h, w, pad, fn = shape
        self.n, self.fn = n, fn
        self.oh, self.ow = h + 2 * pad - 2, w + 2 * pad - 2
        self.th, self.tw = ref.tiles(self.oh, self.ow)
        self.ph, self.pw = self.oh // 2, self.ow // 2
        t = n * self.th * self.tw
        rng = np.random.default_rng(seed)
        if data == "integers":
            self.m = rng.integers(-3, 4, (16, t, fn)).astype(dtype)
            self.b = rng.integers(-4, 2, fn).astype(dtype)
            self.dout = rng.integers(-3, 4, (n, fn, self.ph, self.pw)).astype(dtype)
        else:
            self.m = rng.standard_normal((16, t, fn)).astype(dtype)
            self.b = rng.standard_normal(fn).astype(dtype)
            self.dout = rng.standard_normal((n, fn, self.ph, self.pw)).astype(dtype)
        self.nan_windows = np.zeros((n, fn, self.ph, self.pw), dtype=bool)
        if data == "nan":
            pooled = [(b, ty, tx) for b in range(n) for ty in range(self.ph) for tx in range(self.pw)]
            for i, entries in enumerate(NAN_ENTRIES):
                b, ty, tx = pooled[i % len(pooled)]
                f = i % fn
                self.m[list(entries), (b * self.th + ty) * self.tw + tx, f] = np.nan
                self.nan_windows[b, f, ty, tx] = True

    @property
    def geometry(self) -> tuple[int, int, int]:
        return self.n, self.oh, self.ow

    def composed(self, kernels=NP):
        """The composition the fused operations stand for, of ``kernels``'s own operations:
        (out, argmax) and, from them and ``dout``, (dM, db)."""
        out, argmax = GenericKernels.winograd_bias_relu_maxpool(kernels, self.m, self.b, *self.geometry)
        dm, db = GenericKernels.winograd_maxpool_relu_backward(kernels, self.dout, argmax, out, *self.geometry)
        return out, argmax, dm, db


def pool_cases(datas):
    return [
        pytest.param(shape, dtype, data, id=f"{shape_id}-{np.dtype(dtype).name}-{data}")
        for shape, shape_id in zip(POOL_SHAPES, POOL_SHAPE_IDS)
        for dtype in DTYPES
        for data in datas
    ]


@pytest.mark.parametrize(("shape", "dtype", "data"), pool_cases(["normal", "integers", "nan"]))
def test_the_pooled_output_transform_is_the_composition_it_fuses(kernel_set, shape, dtype, data):
    """``winograd_bias_relu_maxpool`` equals ``bias_relu_maxpool(winograd_output(...))``
    bit for bit, argmax included (first maximum; the last NaN in a NaN window), and its
    ``_infer`` its ``out``. On integers, whose outputs are exact, both also follow the
    definition: the float64 output transform, biased, pooled and passed through a ReLU."""
    problem = PoolProblem(shape, dtype, data)
    n, fn, ph, pw = problem.n, problem.fn, problem.ph, problem.pw
    out, argmax = kernel_set.run("winograd_bias_relu_maxpool", problem.m, problem.b, *problem.geometry)
    assert out.shape == argmax.shape == (n, fn, ph, pw)
    assert out.dtype == dtype and argmax.dtype == np.int32
    want_out, want_argmax, _, _ = problem.composed()
    EQUAL(out, want_out)
    EQUAL(np.isnan(out), problem.nan_windows)
    if kernel_set.name in NAN_ARGMAX_AS_NUMPY:
        EQUAL(argmax, want_argmax)
    else:
        EQUAL(argmax[~problem.nan_windows], want_argmax[~problem.nan_windows])
    EQUAL(kernel_set.run("winograd_bias_relu_maxpool_infer", problem.m, problem.b, *problem.geometry), out)
    if data == "integers":
        y = ref.output_transform(problem.m, *problem.geometry) + problem.b
        windows = pool_windows(NP.rows_to_nchw(y, *problem.geometry), 2, 2, 2, 0)
        EQUAL(out, np.maximum(windows.max(axis=-1), 0))
        EQUAL(argmax, windows.argmax(axis=-1))
        if out.size >= 16:  # the data hold what the rules are about
            assert (out == 0).any() and (out > 0).any()
            assert ((windows == windows.max(axis=-1, keepdims=True)).sum(axis=-1) > 1).any()  # ties to break


@pytest.mark.parametrize(("shape", "dtype", "data"), pool_cases(["normal", "integers"]))
def test_the_pooled_backward_is_the_composition_it_fuses(kernel_set, shape, dtype, data):
    """``winograd_maxpool_relu_backward`` equals ``winograd_output_grad`` and ``bias_grad``
    of ``maxpool_relu_backward``: dM bit for bit (zero in the tiles no window pools), db
    within the rounding of a sum over the N*PH*PW windows (equal on integers)."""
    problem = PoolProblem(shape, dtype, data)
    n, fn, ph, pw = problem.n, problem.fn, problem.ph, problem.pw
    out, argmax, want_dm, want_db = problem.composed()
    dm, db = kernel_set.run("winograd_maxpool_relu_backward", problem.dout, argmax, out, *problem.geometry)
    assert dm.shape == (16, n * problem.th * problem.tw, fn) and db.shape == (fn,)
    assert dm.dtype == db.dtype == dtype
    EQUAL(dm, want_dm)
    tiles = dm.reshape(16, n, problem.th, problem.tw, fn)
    assert not tiles[:, :, ph:].any() and not tiles[:, :, :, pw:].any()
    passed = abs64(problem.dout) * (out > 0)
    rtol = 0.0 if data == "integers" else sum_rtol(dtype, n * ph * pw)
    assert_close_to_sum(db, want_db, passed.sum(axis=(0, 2, 3)), rtol, "db")


def pooled_operations(problem: PoolProblem) -> dict:
    """The three pooled operations and their arguments."""
    out, argmax = NP.winograd_bias_relu_maxpool(problem.m, problem.b, *problem.geometry)
    return {
        "winograd_bias_relu_maxpool": (problem.m, problem.b, *problem.geometry),
        "winograd_bias_relu_maxpool_infer": (problem.m, problem.b, *problem.geometry),
        "winograd_maxpool_relu_backward": (problem.dout, argmax, out, *problem.geometry),
    }


def as_bytes(result) -> tuple[bytes, ...]:
    return tuple(np.asarray(r).tobytes() for r in (result if isinstance(result, tuple) else (result,)))


@pytest.mark.parametrize("shape", [POOL_SHAPES[1], POOL_SHAPES[5]], ids=[POOL_SHAPE_IDS[1], POOL_SHAPE_IDS[5]])
def test_the_pooled_operations_give_the_same_bytes_twice(kernel_set, shape):
    problem = PoolProblem(shape, np.float32)
    for operation, args in pooled_operations(problem).items():
        first, second = kernel_set.run(operation, *args), kernel_set.run(operation, *args)
        assert as_bytes(first) == as_bytes(second), operation


def test_the_numba_set_pools_the_same_bytes_on_one_thread_and_on_all():
    """The bias gradient's partial sums are fixed by the rows of tiles, not the threads."""
    numba = pytest.importorskip("numba", reason="the numba kernel set needs Numba")
    kernels = backend_or_skip("numba").kernels
    operations = pooled_operations(PoolProblem(POOL_SHAPES[5], np.float32))
    one, all_ = results_on_threads(
        [1, numba.get_num_threads()],
        lambda: {op: as_bytes(getattr(kernels, op)(*args)) for op, args in operations.items()},
    )
    assert one == all_


def test_the_numba_set_refuses_pooling_arrays_of_another_shape():
    """Its loops index without bounds checks: a wrong shape raises, naming the array."""
    kernels = backend_or_skip("numba").kernels
    problem = PoolProblem(POOL_SHAPES[1], np.float32)  # 5x7 output: 3x4 tiles, 2x3 windows
    m, b, dout = problem.m, problem.b, problem.dout
    out, argmax = kernels.winograd_bias_relu_maxpool(m, b, *problem.geometry)
    with pytest.raises(ValueError, match=r"M has shape \(16, 23, 3\), expected \(16, 24, 3\)"):
        kernels.winograd_bias_relu_maxpool(m[:, :23], b, *problem.geometry)
    with pytest.raises(ValueError, match=r"b has shape \(2,\), expected \(3,\)"):
        kernels.winograd_bias_relu_maxpool_infer(m, b[:2], *problem.geometry)
    with pytest.raises(ValueError, match=r"dout has shape \(2, 3, 2, 2\), expected \(2, 3, 2, 3\)"):
        kernels.winograd_maxpool_relu_backward(dout[..., :2], argmax, out, *problem.geometry)
    with pytest.raises(ValueError, match=r"argmax has shape \(1, 3, 2, 3\), expected \(2, 3, 2, 3\)"):
        kernels.winograd_maxpool_relu_backward(dout, argmax[:1], out, *problem.geometry)


@pytest.mark.parametrize("name", ["numpy", "numba"])
def test_an_output_one_pixel_high_has_no_window_to_pool(name):
    """As ``bias_relu_maxpool`` says of it: the 2x2 window does not fit."""
    kernels = backend_or_skip(name).kernels
    m, b = np.zeros((16, 2, 1), np.float32), np.zeros(1, np.float32)
    for operation in ("winograd_bias_relu_maxpool", "winograd_bias_relu_maxpool_infer"):
        with pytest.raises(ValueError, match="window 2 does not fit in input 1 with pad 0"):
            getattr(kernels, operation)(m, b, 1, 1, 4)


# -- the output transform fused with bias and ReLU, without pooling -------------------------------

RELU_SHAPES = [  # N, OH, OW, FN of the convolution's output
    (1, 1, 1, 1),  # a 1x1 output: one tile, three quarters of it past the output
    (2, 5, 7, 3),  # odd OH and OW: the last row and column of tiles are partial
    (1, 4, 6, 17),  # N = 1, an even output, FN one past a multiple of the vector width
    (3, 6, 3, 1),  # FN = 1, an odd output width
    (2, 14, 16, 64),  # an even output, 64 filters
    (2, 15, 15, 64),  # cifar_cnn's third convolution: partial tiles
]
RELU_SHAPE_IDS = ["x".join(map(str, s[:3])) + f"-f{s[3]}" for s in RELU_SHAPES]


class ReluProblem:
    """Products M (16, T, FN) of a convolution with an OH x OW output, a bias (FN,), the
    gradient dout (N, FN, OH, OW) of its biased ReLU, of ``dtype``, from a seeded generator.

    ``data``: ``"normal"``, standard normal values; ``"integers"``, integers in [-3, 3]
    (bias in [-4, 1]): every output and sum is exact and many outputs are <= 0;
    ``"special"``, standard normal with the products of the first tile of the last filter
    all -0.0, with a bias of -0.0 for that filter: its output (0, 0), ``(m0 + m1 + m2)``
    of -0.0s along i and along j plus -0.0, is -0.0 before the ReLU; and the products of
    :data:`NAN_ENTRIES` NaN, each group in another tile or filter (as far as there are).
    """

    def __init__(self, shape, dtype, data: str = "normal", seed: int = 0) -> None:
        n, self.oh, self.ow, fn = shape
        self.n, self.fn = n, fn
        self.th, self.tw = ref.tiles(self.oh, self.ow)
        t = n * self.th * self.tw
        rng = np.random.default_rng(seed)
        if data == "integers":
            self.m = rng.integers(-3, 4, (16, t, fn)).astype(dtype)
            self.b = rng.integers(-4, 2, fn).astype(dtype)
            self.dout = rng.integers(-3, 4, (n, fn, self.oh, self.ow)).astype(dtype)
        else:
            self.m = rng.standard_normal((16, t, fn)).astype(dtype)
            self.b = rng.standard_normal(fn).astype(dtype)
            self.dout = rng.standard_normal((n, fn, self.oh, self.ow)).astype(dtype)
        self.has_nan = False
        if data == "special":
            self.m[:, 0, fn - 1] = -0.0
            self.b[fn - 1] = -0.0
            others = [(tile, f) for tile in range(t) for f in range(fn) if (tile, f) != (0, fn - 1)]
            for i, entries in enumerate(NAN_ENTRIES[: len(others)]):
                tile, f = others[i % len(others)]
                self.m[list(entries), tile, f] = np.nan
                self.has_nan = True

    @property
    def geometry(self) -> tuple[int, int, int]:
        return self.n, self.oh, self.ow

    def nan_outputs(self) -> np.ndarray:
        """(N, FN, OH, OW): the outputs a NaN product reaches (a nonzero coefficient of A^T M A)."""
        reached = ref.output_transform(np.isnan(self.m), *self.geometry, True) > 0
        return NP.rows_to_nchw(reached, *self.geometry)

    def composed(self, kernels=NP):
        """The composition the fused operations stand for, of ``kernels``'s own operations:
        out and, from it and ``dout``, (dM, db)."""
        out = GenericKernels.winograd_bias_relu(kernels, self.m, self.b, *self.geometry)
        dm, db = GenericKernels.winograd_relu_backward(kernels, self.dout, out, *self.geometry)
        return out, dm, db


def relu_cases(datas):
    return [
        pytest.param(shape, dtype, data, id=f"{shape_id}-{np.dtype(dtype).name}-{data}")
        for shape, shape_id in zip(RELU_SHAPES, RELU_SHAPE_IDS)
        for dtype in DTYPES
        for data in datas
    ]


@pytest.mark.parametrize(("shape", "dtype", "data"), relu_cases(["normal", "integers", "special"]))
def test_the_biased_relu_output_transform_is_the_composition_it_fuses(kernel_set, shape, dtype, data):
    """``winograd_bias_relu`` equals ``rows_to_nchw(bias_relu(winograd_output(...)))`` bit
    for bit: a NaN stays NaN where a NaN product reaches, -0.0 becomes +0.0, as NumPy's
    ``maximum(v, 0)``. On integers, whose outputs are exact, it also follows the
    definition: the float64 output transform, biased and passed through a ReLU."""
    problem = ReluProblem(shape, dtype, data)
    out = kernel_set.run("winograd_bias_relu", problem.m, problem.b, *problem.geometry)
    assert out.shape == (problem.n, problem.fn, problem.oh, problem.ow) and out.dtype == dtype
    want, _, _ = problem.composed()
    EQUAL(out, want)
    assert out.tobytes() == want.tobytes()  # the signs of the zeros too
    nan = np.isnan(out)
    EQUAL(nan, problem.nan_outputs())
    assert not np.signbit(out[~nan]).any()
    if data == "special":  # the data hold what the rules are about
        assert nan.any() or not problem.has_nan
        y = NP.rows_to_nchw(NP.winograd_output(problem.m, *problem.geometry) + problem.b, *problem.geometry)
        assert y[0, -1, 0, 0] == 0 and np.signbit(y[0, -1, 0, 0])
    if data == "integers":
        y = ref.output_transform(problem.m, *problem.geometry) + problem.b
        EQUAL(out, np.maximum(NP.rows_to_nchw(y, *problem.geometry), 0))
        if out.size >= 16:
            assert (out == 0).any() and (out > 0).any()


@pytest.mark.parametrize(("shape", "dtype", "data"), relu_cases(["normal", "integers", "special"]))
def test_the_relu_backward_is_the_composition_it_fuses(kernel_set, shape, dtype, data):
    """``winograd_relu_backward`` equals ``winograd_output_grad`` and ``bias_grad`` of
    ``relu_backward``: dM exactly (dY zero where ``out`` is 0, NaN or negative, whatever
    dout holds there), db within the rounding of a sum over the N*OH*OW outputs (equal on
    integers). On integers dM also follows the definition, the float64 adjoint."""
    problem = ReluProblem(shape, dtype, data)
    n, fn, oh, ow = problem.n, problem.fn, problem.oh, problem.ow
    out, _, _ = problem.composed()
    dout = problem.dout
    if data == "special":  # out below zero and -0.0; dout NaN and infinite where out does not pass it
        out, dout = out.copy(), dout.copy()
        out.flat[1::7], out.flat[2::7] = -1.0, -0.0
        blocked = ~(out > 0)
        dout[blocked & (np.arange(out.size).reshape(out.shape) % 2 == 0)] = np.nan
        dout[blocked & (np.arange(out.size).reshape(out.shape) % 2 == 1)] = -np.inf
        assert blocked.any() and (np.isnan(out).any() or not problem.has_nan)
    want_dm, want_db = GenericKernels.winograd_relu_backward(NP, dout, out, *problem.geometry)
    dm, db = kernel_set.run("winograd_relu_backward", dout, out, *problem.geometry)
    assert dm.shape == (16, n * problem.th * problem.tw, fn) and db.shape == (fn,)
    assert dm.dtype == db.dtype == dtype
    EQUAL(dm, want_dm)
    assert np.isfinite(dm).all() and np.isfinite(db).all()
    passed = np.where(out > 0, dout, 0)
    rtol = 0.0 if data == "integers" else sum_rtol(dtype, n * oh * ow)
    assert_close_to_sum(db, want_db, abs64(passed).sum(axis=(0, 2, 3)), rtol, "db")
    if data == "integers":
        EQUAL(dm, ref.output_transform_adjoint(NP.nchw_to_rows(passed), *problem.geometry))
        EQUAL(db, passed.sum(axis=(0, 2, 3), dtype=np.float64))


def relu_operations(problem: ReluProblem) -> dict:
    """The two operations and their arguments."""
    out = NP.winograd_bias_relu(problem.m, problem.b, *problem.geometry)
    return {
        "winograd_bias_relu": (problem.m, problem.b, *problem.geometry),
        "winograd_relu_backward": (problem.dout, out, *problem.geometry),
    }


@pytest.mark.parametrize("shape", [RELU_SHAPES[1], RELU_SHAPES[5]], ids=[RELU_SHAPE_IDS[1], RELU_SHAPE_IDS[5]])
def test_the_biased_relu_operations_give_the_same_bytes_twice(kernel_set, shape):
    problem = ReluProblem(shape, np.float32)
    for operation, args in relu_operations(problem).items():
        first, second = kernel_set.run(operation, *args), kernel_set.run(operation, *args)
        assert as_bytes(first) == as_bytes(second), operation


def test_the_numba_set_gives_the_biased_relus_bytes_on_one_thread_and_on_all():
    """The bias gradient's partial sums are fixed by the rows of tiles, not the threads."""
    numba = pytest.importorskip("numba", reason="the numba kernel set needs Numba")
    kernels = backend_or_skip("numba").kernels
    operations = relu_operations(ReluProblem((16, 15, 15, 64), np.float32))
    results = results_on_threads(
        [1, 2, numba.get_num_threads()],
        lambda: {op: as_bytes(getattr(kernels, op)(*args)) for op, args in operations.items()},
    )
    assert all(result == results[0] for result in results)


def test_the_numba_set_refuses_biased_relu_arrays_of_another_shape():
    """Its loops index without bounds checks: a wrong shape raises, naming the array."""
    kernels = backend_or_skip("numba").kernels
    problem = ReluProblem(RELU_SHAPES[1], np.float32)  # 5x7 output: 3x4 tiles
    m, b, dout = problem.m, problem.b, problem.dout
    out = kernels.winograd_bias_relu(m, b, *problem.geometry)
    with pytest.raises(ValueError, match=r"M has shape \(16, 23, 3\), expected \(16, 24, 3\)"):
        kernels.winograd_bias_relu(m[:, :23], b, *problem.geometry)
    with pytest.raises(ValueError, match=r"b has shape \(2,\), expected \(3,\)"):
        kernels.winograd_bias_relu(m, b[:2], *problem.geometry)
    with pytest.raises(ValueError, match=r"dout has shape \(2, 3, 5, 6\), expected \(2, 3, 5, 7\)"):
        kernels.winograd_relu_backward(dout[..., :6], out, *problem.geometry)
    with pytest.raises(ValueError, match=r"out has shape \(1, 3, 5, 7\), expected \(2, 3, 5, 7\)"):
        kernels.winograd_relu_backward(dout, out[:1], *problem.geometry)
