"""A whole Winograd layer for the tests of the ``winograd_conv_*`` operations
(``test_winograd_whole.py``, ``test_kernel_agreement.py``): its arrays, every operation's
results on a kernel set, the NumPy set's composition they stand for, and the bounds of
their rounding."""

from __future__ import annotations

import numpy as np

from gpucnn.kernels.numpy_set import NumpyKernels

from . import winograd_reference as ref
from .bounds import assert_argmax_up_to_rounding, assert_close_to_sum, pool_windows

NP = NumpyKernels()


class Layer:
    """x (N, C, H, W), w (FN, C, 3, 3), b (FN,), ``pad`` and the gradients of both outputs,
    pooled (N, FN, OH//2, OW//2) and not (N, FN, OH, OW)."""

    def __init__(self, x, w, b, pad: int, dout_pooled, dout) -> None:
        self.x, self.w, self.b, self.pad = x, w, b, pad
        self.oh, self.ow = x.shape[2] + 2 * pad - 2, x.shape[3] + 2 * pad - 2
        self.dout_pooled, self.dout = dout_pooled, dout

    @classmethod
    def seeded(cls, shape, dtype, integers: bool, seed: int = 0) -> Layer:
        """Of ``shape`` (N, C, H, W, pad, FN) and ``dtype``, from a seeded generator: integers
        in [-3, 3] (b in [-4, 1]), where everything is exact, or standard normal values."""
        n, c, h, w, pad, fn = shape
        oh, ow = h + 2 * pad - 2, w + 2 * pad - 2
        rng = np.random.default_rng(seed)

        def draw(*dims, low=-3, high=4):
            values = rng.integers(low, high, dims) if integers else rng.standard_normal(dims)
            return values.astype(dtype)

        x, weights, b = draw(n, c, h, w), draw(fn, c, 3, 3), draw(fn, low=-4, high=2)
        return cls(x, weights, b, pad, draw(n, fn, oh // 2, ow // 2), draw(n, fn, oh, ow))

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

    def assert_agrees(self, got: dict, rtol) -> None:
        """``got`` (:meth:`results`) against the composition: each result within ``rtol(kind,
        terms)`` times its sum of absolute values, ``kind`` being "out", "dx", "dW" or "db"
        and ``terms`` the count its sums run over (C + 16 for an output, FN + 64 for dx,
        every tile and 16 for dW, every output pixel for db); argmax equal but in windows
        whose two largest values lie within the outputs' rounding."""
        want, bounds = self.composed(), self.absolute()
        n, c = self.x.shape[:2]
        fn = self.w.shape[0]
        tiles = n * len(range(0, self.oh, 2)) * len(range(0, self.ow, 2))
        terms = {"out": c + 16, "dx": fn + 64, "dW": tiles + 16, "db": n * self.oh * self.ow}
        for name, value in want.items():
            if name == "argmax" or name not in got:
                continue
            assert got[name].shape == value.shape and got[name].dtype == value.dtype, name
            kind = name.split()[1]
            assert_close_to_sum(got[name], value, bounds[name], rtol(kind, terms[kind]), name)
        slack = 2 * rtol("out", terms["out"]) * bounds["pooled out"]  # both sides' rounding
        windows = pool_windows(self.biased, 2, 2, 2, 0)
        assert_argmax_up_to_rounding(got["argmax"], want["argmax"], windows, slack)
