"""The generic kernel set: array-API operations only (slicing, stack, reshape, permute).

It runs on any namespace that follows the array API standard (tested on
``array_api_strict``) and defines every operation of the interface, fused ones
included, by composing the basic ones. Faster sets subclass it and override what they
do better. Layouts and conventions: see :mod:`gpucnn.kernels`.

Values
------
Against the NumPy set, as ``tests/test_kernel_agreement.py`` measured them on
``array_api_strict`` (its ``TOLERANCES`` table). Equal bit for bit: ``im2col``,
``col2im``, max pooling forward and backward (values and ``argmax``), ``avgpool_backward``,
``bias_relu_maxpool`` and ``bias_relu_maxpool_infer``, ``maxpool_relu_backward``,
``bias_relu``, ``relu_backward``, the softmax cross-entropy (with its count of right
answers) and its backward, the layout changes and the optimizer steps: the same float
operations in the same order; ``bias_softmax_cross_entropy_count_grad`` is the composition of
``+ b``, ``softmax_cross_entropy_count_grad`` and ``bias_grad``, so all but its ``db`` too. Equal
to float rounding:
``avgpool_forward``, which sums a window's stacked taps where the NumPy set reduces the
window's axes, and ``bias_grad`` and the ``conv_*`` operations, whose products
(``matmul``) take another BLAS path on ``array_api_strict``'s arrays than on NumPy's.
On another namespace the values also depend on that library's ``exp``, ``log`` and ``matmul``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from . import check_pool_pad, output_hw, winograd_tiles

Array = Any


class GenericKernels:
    """Kernel set written against the array API namespace ``xp``."""

    name = "generic"
    # No limit on array size: indexing is the namespace's (64-bit on NumPy). A set whose
    # kernels index with narrower integers overrides it (the CUDA set: 2**31 - 1).
    max_array_elements: int | None = None
    # None: a convolution's training passes through im2col take the whole batch in one call.
    # A number: the most bytes of one block's column matrix (see ``KernelSet``).
    conv_block_bytes: int | None = None
    # None: the Winograd passes take the whole batch at once (a GPU's way); a number: the
    # most bytes of one block's GEMM products (see ``KernelSet``).
    winograd_block_bytes: int | None = None
    # Whether the whole-layer ``winograd_conv_*`` operations are this set's way (the
    # composition below is their definition, for the sets that say no), and the images
    # per partial sum of dU in their backward.
    winograd_whole_layer: bool = False
    winograd_group: int = 4
    # Inference through a fused first layer in blocks of this many images, so that a
    # block's column matrix and GEMM output stay in a CPU's caches, where those of a whole
    # batch of 1024 (tens of MB) would stream from memory twice. None: the whole batch.
    inference_block: int | None = 128

    def __init__(self, xp: Any) -> None:
        self.xp = xp

    # -- helpers -----------------------------------------------------------------

    def _padded(self, x: Array, pad: int, fill: float) -> Array:
        """``x`` with ``pad`` cells of ``fill`` on every side of its last two axes."""
        if pad == 0:
            return x
        xp = self.xp
        n, c, h, w = x.shape
        out = xp.full((n, c, h + 2 * pad, w + 2 * pad), fill, dtype=x.dtype, device=_device(x))
        out[:, :, pad : pad + h, pad : pad + w] = x
        return out

    @staticmethod
    def _tap(xp_: Array, ky: int, kx: int, stride: int, oh: int, ow: int) -> Array:
        """The (N, C, OH, OW) view of the padded input seen by window tap (ky, kx)."""
        return xp_[:, :, ky : ky + stride * (oh - 1) + 1 : stride, kx : kx + stride * (ow - 1) + 1 : stride]

    def _taps(self, x: Array, kh: int, kw: int, stride: int, pad: int, fill: float):
        n, c, h, w = x.shape
        oh, ow = output_hw(h, w, kh, kw, stride, pad)
        xp_ = self._padded(x, pad, fill)
        taps = [self._tap(xp_, ky, kx, stride, oh, ow) for ky in range(kh) for kx in range(kw)]
        return taps, oh, ow

    def _scatter_taps(self, parts, x_shape, kh, kw, stride, pad, dtype, device) -> Array:
        """Sum per-tap (N, C, OH, OW) gradients back into an (N, C, H, W) array."""
        xp = self.xp
        n, c, h, w = x_shape
        oh, ow = parts[0].shape[2], parts[0].shape[3]
        dxp = xp.zeros((n, c, h + 2 * pad, w + 2 * pad), dtype=dtype, device=device)
        for k, part in enumerate(parts):
            ky, kx = divmod(k, kw)
            ys = slice(ky, ky + stride * (oh - 1) + 1, stride)
            xs = slice(kx, kx + stride * (ow - 1) + 1, stride)
            dxp[:, :, ys, xs] = dxp[:, :, ys, xs] + part
        return dxp[:, :, pad : pad + h, pad : pad + w] if pad else dxp

    # -- convolution -----------------------------------------------------------

    def im2col(self, x: Array, kh: int, kw: int, stride: int = 1, pad: int = 0) -> Array:
        """(N, C, H, W) → (N*OH*OW, C*KH*KW); see the module docstring for the layout."""
        xp = self.xp
        n, c = x.shape[0], x.shape[1]
        taps, oh, ow = self._taps(x, kh, kw, stride, pad, 0.0)
        stacked = xp.stack(taps, axis=0)  # (KH*KW, N, C, OH, OW)
        stacked = xp.reshape(stacked, (kh, kw, n, c, oh, ow))
        stacked = xp.permute_dims(stacked, (2, 4, 5, 3, 0, 1))  # (N, OH, OW, C, KH, KW)
        return xp.reshape(stacked, (n * oh * ow, c * kh * kw))

    def col2im(self, col: Array, x_shape, kh: int, kw: int, stride: int = 1, pad: int = 0) -> Array:
        """(N*OH*OW, C*KH*KW) → (N, C, H, W), adding overlapping taps."""
        xp = self.xp
        n, c, h, w = x_shape
        oh, ow = output_hw(h, w, kh, kw, stride, pad)
        col6 = xp.reshape(col, (n, oh, ow, c, kh, kw))
        col6 = xp.permute_dims(col6, (4, 5, 0, 3, 1, 2))  # (KH, KW, N, C, OH, OW)
        parts = [col6[ky, kx, ...] for ky in range(kh) for kx in range(kw)]
        return self._scatter_taps(parts, x_shape, kh, kw, stride, pad, col.dtype, _device(col))

    def conv_input_grad(self, drows: Array, w: Array, x_shape, stride: int, pad: int) -> Array:
        """The input gradient of an im2col convolution: col2im of ``drows @ W2``, W2 = w as
        an (FN, C*FH*FW) matrix."""
        fn, c, fh, fw = w.shape
        return self.col2im(drows @ self.xp.reshape(w, (fn, c * fh * fw)), x_shape, fh, fw, stride, pad)

    # -- Winograd F(2x2, 3x3) ---------------------------------------------------
    # A 3x3, stride-1 convolution as 16 GEMMs over 4x4 input tiles (Lavin and Gray, 2016):
    # out = A^T [(G w G^T) * (B^T d B)] A per 2x2 output tile. The transforms below are
    # written as explicit additions, in the order the Numba set repeats.

    def prefers_winograd(self, c: int, fn: int, fh: int, fw: int, stride: int) -> bool:
        """Whether a convolution with C input channels, FN filters, an FH x FW filter and
        this stride runs faster through the ``winograd_*`` operations than through im2col
        and one GEMM. Only 3x3 filters at stride 1 can; the generic set says no."""
        return False

    def winograd_filter(self, w: Array) -> Array:
        """w (FN, C, 3, 3) → U (16, C, FN): ``G w G^T`` of each filter, entry
        ``4*i + j`` of the 4x4 result in row ``4*i + j``."""
        xp = self.xp

        def g(v0, v1, v2):  # the rows of G v: v0, (v0 + v1 + v2)/2, (v0 - v1 + v2)/2, v2
            return [v0, (v0 + v1 + v2) * 0.5, (v0 - v1 + v2) * 0.5, v2]

        w = xp.permute_dims(w, (2, 3, 1, 0))  # (3, 3, C, FN)
        cols = g(w[0, ...], w[1, ...], w[2, ...])  # 4 of (3, C, FN)
        u = [t for col in cols for t in g(col[0, ...], col[1, ...], col[2, ...])]
        return xp.stack(u, axis=0)

    def winograd_filter_grad(self, du: Array) -> Array:
        """The adjoint of :meth:`winograd_filter`: dU (16, C, FN) → dW (FN, C, 3, 3),
        ``G^T dU G`` of each filter."""
        xp = self.xp

        def gt(v0, v1, v2, v3):  # the rows of G^T v
            return [v0 + (v1 + v2) * 0.5, (v1 - v2) * 0.5, (v1 + v2) * 0.5 + v3]

        cols = [
            gt(du[j, ...], du[4 + j, ...], du[8 + j, ...], du[12 + j, ...]) for j in range(4)
        ]  # cols[j][ky], (C, FN) each
        taps = [gt(*(cols[j][ky] for j in range(4))) for ky in range(3)]  # taps[ky][kx]
        dw = xp.stack([t for ky in range(3) for t in taps[ky]], axis=0)  # (9, C, FN)
        c, fn = du.shape[1], du.shape[2]
        return xp.permute_dims(xp.reshape(dw, (3, 3, c, fn)), (3, 2, 0, 1))

    def _winograd_padded(self, x: Array, pad: int, th: int, tw: int) -> Array:
        """x (N, C, H, W) with ``pad`` zeros above and left and as many below and right as
        the tiles need: (N, C, 2*TH + 2, 2*TW + 2)."""
        xp = self.xp
        n, c, h, w = x.shape
        out = xp.zeros((n, c, 2 * th + 2, 2 * tw + 2), dtype=x.dtype, device=_device(x))
        out[:, :, pad : pad + h, pad : pad + w] = x
        return out

    def winograd_input(self, x: Array, pad: int) -> Array:
        """x (N, C, H, W) → V (16, T, C), T = N*TH*TW tiles in (n, ty, tx) order:
        ``B^T d B`` of the 4x4 input tile ``d`` whose top-left corner is padded pixel
        (2*ty, 2*tx), with ``pad`` zeros on every side (and more below and right where
        the last tile reaches past the image)."""
        xp = self.xp
        n, c, h, w = x.shape
        th, tw = winograd_tiles(*output_hw(h, w, 3, 3, 1, pad))
        xpad = self._winograd_padded(x, pad, th, tw)

        def bt(d0, d1, d2, d3):  # the rows of B^T d
            return [d0 - d2, d1 + d2, d2 - d1, d1 - d3]

        taps = [[xpad[:, :, i : i + 2 * th - 1 : 2, j : j + 2 * tw - 1 : 2] for j in range(4)] for i in range(4)]
        cols = [bt(*(taps[i][j] for i in range(4))) for j in range(4)]  # cols[j][i]
        v = xp.stack([t for i in range(4) for t in bt(*(cols[j][i] for j in range(4)))], axis=0)
        v = xp.permute_dims(v, (0, 1, 3, 4, 2))  # (16, N, TH, TW, C)
        return xp.reshape(v, (16, n * th * tw, c))

    def winograd_input_grad(self, dv: Array, x_shape: tuple[int, int, int, int], pad: int) -> Array:
        """The adjoint of :meth:`winograd_input`: dV (16, T, C) → dx of ``x_shape``, each
        tile's ``B dV B^T`` added to the pixels it was read from (tiles overlap by two rows
        and columns); what falls in the padding is dropped."""
        xp = self.xp
        n, c, h, w = x_shape
        th, tw = winograd_tiles(*output_hw(h, w, 3, 3, 1, pad))
        dv = xp.permute_dims(xp.reshape(dv, (16, n, th, tw, c)), (0, 1, 4, 2, 3))  # (16, N, C, TH, TW)

        def b(v0, v1, v2, v3):  # the rows of B v
            return [v0, v1 - v2 + v3, v1 + v2 - v0, -v3]

        cols = [b(*(dv[4 * i + j, ...] for i in range(4))) for j in range(4)]  # cols[j][ky]
        tiles = [b(*(cols[j][ky] for j in range(4))) for ky in range(4)]  # tiles[ky][kx]: a tile's pixel
        dxp = xp.zeros((n, c, 2 * th + 2, 2 * tw + 2), dtype=dv.dtype, device=_device(dv))
        for ky in range(4):
            for kx in range(4):
                ys, xs = slice(ky, ky + 2 * th - 1, 2), slice(kx, kx + 2 * tw - 1, 2)
                dxp[:, :, ys, xs] = dxp[:, :, ys, xs] + tiles[ky][kx]
        return dxp[:, :, pad : pad + h, pad : pad + w]

    def winograd_output(self, m: Array, n: int, oh: int, ow: int) -> Array:
        """M (16, T, FN), the 16 GEMMs' products → GEMM rows (N*OH*OW, FN) in (n, oh, ow)
        order (the layout of ``im2col`` and one GEMM): ``A^T M A`` of each tile, cropped to
        OH x OW."""
        xp = self.xp
        th, tw = winograd_tiles(oh, ow)
        fn = m.shape[2]
        m = xp.reshape(m, (16, n, th, tw, fn))

        def at(m0, m1, m2, m3):  # the rows of A^T m
            return [m0 + m1 + m2, m1 - m2 - m3]

        cols = [at(*(m[4 * i + j, ...] for i in range(4))) for j in range(4)]  # cols[j][a]
        out = [at(*(cols[j][a] for j in range(4))) for a in range(2)]  # out[a][b]: a tile's pixel
        y = xp.stack([xp.stack(out[a], axis=3) for a in range(2)], axis=2)  # (N, TH, 2, TW, 2, FN)
        y = xp.reshape(y, (n, 2 * th, 2 * tw, fn))[:, :oh, :ow, :]
        return xp.reshape(y, (n * oh * ow, fn))

    def winograd_output_grad(self, drows: Array, n: int, oh: int, ow: int) -> Array:
        """The adjoint of :meth:`winograd_output`: GEMM rows (N*OH*OW, FN) → dM (16, T, FN),
        ``A dY A^T`` of each 2x2 tile (zero where the tile reaches past OH x OW)."""
        xp = self.xp
        th, tw = winograd_tiles(oh, ow)
        fn = drows.shape[1]
        dy = xp.zeros((n, 2 * th, 2 * tw, fn), dtype=drows.dtype, device=_device(drows))
        dy[:, :oh, :ow, :] = xp.reshape(drows, (n, oh, ow, fn))
        g = [[dy[:, a::2, b::2, :] for b in range(2)] for a in range(2)]  # g[a][b]: (N, TH, TW, FN)

        def a_(g0, g1):  # the rows of A g
            return [g0, g0 + g1, g0 - g1, -g1]

        cols = [a_(g[0][b], g[1][b]) for b in range(2)]  # cols[b][i]
        dm = xp.stack([t for i in range(4) for t in a_(cols[0][i], cols[1][i])], axis=0)
        return xp.reshape(dm, (16, n * th * tw, fn))

    # A 2x2 max pooling at stride 2 without padding after a Winograd convolution: each
    # pooling window is one 2x2 output tile, so a set can pool straight from the products.

    def winograd_bias_relu_maxpool(self, m: Array, b: Array, n: int, oh: int, ow: int) -> tuple[Array, Array]:
        """``bias_relu_maxpool(winograd_output(m, n, oh, ow), b, n, oh, ow, 2, 2, 2, 0)``:
        (out, argmax), both (N, FN, OH//2, OW//2)."""
        return self.bias_relu_maxpool(self.winograd_output(m, n, oh, ow), b, n, oh, ow, 2, 2, 2, 0)

    def winograd_bias_relu_maxpool_infer(self, m: Array, b: Array, n: int, oh: int, ow: int) -> Array:
        """:meth:`winograd_bias_relu_maxpool`'s ``out`` alone."""
        return self.bias_relu_maxpool_infer(self.winograd_output(m, n, oh, ow), b, n, oh, ow, 2, 2, 2, 0)

    def winograd_maxpool_relu_backward(
        self, dout: Array, argmax: Array, out: Array, n: int, oh: int, ow: int
    ) -> tuple[Array, Array]:
        """The adjoint of :meth:`winograd_bias_relu_maxpool`: (dM (16, T, FN), db (FN,)),
        ``winograd_output_grad`` and ``bias_grad`` of ``maxpool_relu_backward(dout, argmax,
        out, n, oh, ow, 2, 2, 2, 0)``."""
        drows = self.maxpool_relu_backward(dout, argmax, out, n, oh, ow, 2, 2, 2, 0)
        return self.winograd_output_grad(drows, n, oh, ow), self.bias_grad(drows)

    def winograd_bias_relu(self, m: Array, b: Array, n: int, oh: int, ow: int) -> Array:
        """``rows_to_nchw(bias_relu(winograd_output(m, n, oh, ow), b), n, oh, ow)``: the
        biased ReLU of a Winograd convolution straight from its products, (N, FN, OH, OW)."""
        return self.rows_to_nchw(self.bias_relu(self.winograd_output(m, n, oh, ow), b), n, oh, ow)

    def winograd_relu_backward(self, dout: Array, out: Array, n: int, oh: int, ow: int) -> tuple[Array, Array]:
        """The adjoint of :meth:`winograd_bias_relu`: (dM (16, T, FN), db (FN,)) from dout
        and the forward's out, both (N, FN, OH, OW)."""
        drows = self.relu_backward(self.nchw_to_rows(dout), self.nchw_to_rows(out))
        return self.winograd_output_grad(drows, n, oh, ow), self.bias_grad(drows)

    # A whole Convolution (3x3, stride 1, through Winograd) -> bias -> ReLU (-> 2x2 max
    # pooling at stride 2), and its backward, from the input and the filters.

    def _winograd_transforms(self, x: Array, w: Array, pad: int) -> tuple[Array, Array]:
        """(U, V) of x (N, C, H, W) and w (FN, C, 3, 3); their products are V @ U."""
        return self.winograd_filter(w), self.winograd_input(x, pad)

    def _winograd_products(self, x: Array, w: Array, pad: int) -> Array:
        """M = V @ U (16, T, FN)."""
        u, v = self._winograd_transforms(x, w, pad)
        return self.xp.matmul(v, u)

    def _winograd_conv_grads(self, dm: Array, u: Array, v: Array, x: Array, pad: int, input_grad: bool):
        """(dx or None, dW) from the products' gradient dM."""
        xp = self.xp
        dw = self.winograd_filter_grad(xp.matmul(xp.matrix_transpose(v), dm))
        if not input_grad:
            return None, dw
        return self.winograd_input_grad(xp.matmul(dm, xp.matrix_transpose(u)), tuple(x.shape), pad), dw

    def winograd_conv_bias_relu_maxpool(self, x: Array, w: Array, b: Array, pad: int) -> tuple[Array, Array]:
        """``winograd_bias_relu_maxpool(winograd_input(x, pad) @ winograd_filter(w), b, n,
        oh, ow)``: (out, argmax), both (N, FN, OH//2, OW//2)."""
        m = self._winograd_products(x, w, pad)
        return self.winograd_bias_relu_maxpool(m, b, *self._winograd_nhw(x, pad))

    def winograd_conv_bias_relu_maxpool_infer(self, x: Array, w: Array, b: Array, pad: int) -> Array:
        """:meth:`winograd_conv_bias_relu_maxpool`'s ``out`` alone."""
        m = self._winograd_products(x, w, pad)
        return self.winograd_bias_relu_maxpool_infer(m, b, *self._winograd_nhw(x, pad))

    def winograd_conv_maxpool_relu_backward(
        self, dout: Array, argmax: Array, out: Array, x: Array, w: Array, pad: int, input_grad: bool = True
    ) -> tuple[Array | None, Array, Array]:
        """The adjoint of :meth:`winograd_conv_bias_relu_maxpool`: (dx or None, dW, db)."""
        u, v = self._winograd_transforms(x, w, pad)
        dm, db = self.winograd_maxpool_relu_backward(dout, argmax, out, *self._winograd_nhw(x, pad))
        return (*self._winograd_conv_grads(dm, u, v, x, pad, input_grad), db)

    def winograd_conv_bias_relu(self, x: Array, w: Array, b: Array, pad: int) -> Array:
        """``winograd_bias_relu(winograd_input(x, pad) @ winograd_filter(w), b, n, oh, ow)``:
        (N, FN, OH, OW)."""
        m = self._winograd_products(x, w, pad)
        return self.winograd_bias_relu(m, b, *self._winograd_nhw(x, pad))

    def winograd_conv_relu_backward(
        self, dout: Array, out: Array, x: Array, w: Array, pad: int, input_grad: bool = True
    ) -> tuple[Array | None, Array, Array]:
        """The adjoint of :meth:`winograd_conv_bias_relu`: (dx or None, dW, db)."""
        u, v = self._winograd_transforms(x, w, pad)
        dm, db = self.winograd_relu_backward(dout, out, *self._winograd_nhw(x, pad))
        return (*self._winograd_conv_grads(dm, u, v, x, pad, input_grad), db)

    @staticmethod
    def _winograd_nhw(x: Array, pad: int) -> tuple[int, int, int]:
        """(N, OH, OW) of a 3x3 stride-1 convolution of x with ``pad``."""
        return (x.shape[0], *output_hw(x.shape[2], x.shape[3], 3, 3, 1, pad))

    # -- pooling ---------------------------------------------------------------

    def maxpool_forward(self, x: Array, kh: int, kw: int, stride: int, pad: int = 0):
        """(N, C, H, W) → (out, argmax), both (N, C, OH, OW); argmax is int32 ``ky*KW + kx``."""
        xp = self.xp
        check_pool_pad(kh, kw, pad)
        taps, _, _ = self._taps(x, kh, kw, stride, pad, -math.inf)
        stacked = xp.stack(taps, axis=0)
        out = xp.max(stacked, axis=0)
        argmax = xp.astype(xp.argmax(stacked, axis=0), xp.int32)
        return out, argmax

    def maxpool_backward(
        self, dout: Array, argmax: Array, x_shape, kh: int, kw: int, stride: int, pad: int = 0
    ) -> Array:
        xp = self.xp
        zero = xp.zeros((), dtype=dout.dtype, device=_device(dout))
        parts = [xp.where(argmax == k, dout, zero) for k in range(kh * kw)]
        return self._scatter_taps(parts, x_shape, kh, kw, stride, pad, dout.dtype, _device(dout))

    def avgpool_forward(self, x: Array, kh: int, kw: int, stride: int, pad: int = 0) -> Array:
        xp = self.xp
        check_pool_pad(kh, kw, pad)
        taps, _, _ = self._taps(x, kh, kw, stride, pad, 0.0)
        return xp.sum(xp.stack(taps, axis=0), axis=0) / (kh * kw)

    def avgpool_backward(self, dout: Array, x_shape, kh: int, kw: int, stride: int, pad: int = 0) -> Array:
        share = dout / (kh * kw)
        parts = [share] * (kh * kw)
        return self._scatter_taps(parts, x_shape, kh, kw, stride, pad, dout.dtype, _device(dout))

    # -- fused and layout operations ----------------------------------------------

    def bias_relu_maxpool(
        self, rows: Array, b: Array, n: int, oh: int, ow: int, kh: int, kw: int, stride: int, pad: int = 0
    ):
        """GEMM rows (N*OH*OW, FN) + bias → ReLU → max pooling: (out, argmax), (N, FN, PH, PW)."""
        xp = self.xp
        pooled, argmax = self.maxpool_forward(self.rows_to_nchw(rows + b, n, oh, ow), kh, kw, stride, pad)
        return xp.maximum(pooled, 0), argmax

    def bias_relu_maxpool_infer(
        self, rows: Array, b: Array, n: int, oh: int, ow: int, kh: int, kw: int, stride: int, pad: int = 0
    ) -> Array:
        """:meth:`bias_relu_maxpool` without the argmax: ``out`` (N, FN, PH, PW) only."""
        return self.bias_relu_maxpool(rows, b, n, oh, ow, kh, kw, stride, pad)[0]

    # -- convolution → ReLU → max pooling from the input ------------------------------
    # The same fused step as the three operations above, but from the convolution's input
    # and weights, so that a kernel set may compute the convolution directly (no column
    # matrix). Composed here of ``im2col``, a GEMM and those operations.

    def prefers_direct_conv(self, c: int, fh: int, fw: int, stride: int) -> bool:
        """Whether this set computes a convolution with C input channels, an FH x FW
        filter and this stride directly, faster than im2col and a GEMM. When it does, a
        layer whose input needs no gradient trains through the ``conv_*`` operations,
        which then keep no column matrix; otherwise through ``im2col`` and the rows."""
        return False

    def _conv_rows(self, x: Array, w: Array, stride: int, pad: int) -> tuple[Array, int, int]:
        """The convolution's GEMM rows (N*OH*OW, FN) without bias, with OH and OW: through
        Winograd when the set prefers it, else im2col and one GEMM."""
        xp = self.xp
        fn, c, fh, fw = w.shape
        oh, ow = output_hw(x.shape[2], x.shape[3], fh, fw, stride, pad)
        if self.prefers_winograd(c, fn, fh, fw, stride):
            m = xp.matmul(self.winograd_input(x, pad), self.winograd_filter(w))
            return self.winograd_output(m, x.shape[0], oh, ow), oh, ow
        rows = self.im2col(x, fh, fw, stride, pad) @ xp.matrix_transpose(xp.reshape(w, (fn, c * fh * fw)))
        return rows, oh, ow

    def conv_bias_relu_maxpool(
        self, x: Array, w: Array, b: Array, stride: int, pad: int, kh: int, kw: int, pool_stride: int, pool_pad: int = 0
    ):
        """The convolution of x (N, C, H, W) with w (FN, C, FH, FW), then
        :meth:`bias_relu_maxpool` (pooling window KH x KW, ``pool_stride``, ``pool_pad``):
        (out, argmax), (N, FN, PH, PW)."""
        rows, oh, ow = self._conv_rows(x, w, stride, pad)
        return self.bias_relu_maxpool(rows, b, x.shape[0], oh, ow, kh, kw, pool_stride, pool_pad)

    def conv_bias_relu_maxpool_infer(
        self, x: Array, w: Array, b: Array, stride: int, pad: int, kh: int, kw: int, pool_stride: int, pool_pad: int = 0
    ) -> Array:
        """:meth:`conv_bias_relu_maxpool` without the argmax: ``out`` only."""
        rows, oh, ow = self._conv_rows(x, w, stride, pad)
        return self.bias_relu_maxpool_infer(rows, b, x.shape[0], oh, ow, kh, kw, pool_stride, pool_pad)

    def conv_maxpool_relu_backward_params(
        self,
        dout: Array,
        argmax: Array,
        out: Array,
        x: Array,
        w_shape: tuple[int, int, int, int],
        stride: int,
        pad: int,
        kh: int,
        kw: int,
        pool_stride: int,
        pool_pad: int = 0,
    ) -> tuple[Array, Array]:
        """The gradients (dW with ``w_shape``, db (FN,)) of :meth:`conv_bias_relu_maxpool`'s
        weights and bias, from ``dout`` and the forward's ``argmax`` and ``out``; no input
        gradient. Composed, it computes the column matrix of ``x`` again."""
        xp = self.xp
        fn, c, fh, fw = w_shape
        oh, ow = output_hw(x.shape[2], x.shape[3], fh, fw, stride, pad)
        drows = self.maxpool_relu_backward(dout, argmax, out, x.shape[0], oh, ow, kh, kw, pool_stride, pool_pad)
        dw = self.weight_grad(drows, self.im2col(x, fh, fw, stride, pad))
        return xp.reshape(dw, w_shape), self.bias_grad(drows)

    def maxpool_relu_backward(
        self,
        dout: Array,
        argmax: Array,
        out: Array,
        n: int,
        oh: int,
        ow: int,
        kh: int,
        kw: int,
        stride: int,
        pad: int = 0,
    ) -> Array:
        """The gradient of :meth:`bias_relu_maxpool` with respect to its rows, (N*OH*OW, FN)."""
        xp = self.xp
        passed = xp.where(out > 0, dout, xp.zeros((), dtype=dout.dtype, device=_device(dout)))
        dy = self.maxpool_backward(passed, argmax, (n, dout.shape[1], oh, ow), kh, kw, stride, pad)
        return self.nchw_to_rows(dy)

    def bias_relu(self, rows: Array, b: Array) -> Array:
        """``maximum(rows + b, 0)``: (M, F) rows and an (F,) bias → (M, F)."""
        return self.xp.maximum(rows + b, 0)

    def relu_backward(self, dout: Array, out: Array) -> Array:
        """``where(out > 0, dout, 0)``: the gradient through a ReLU whose output was ``out``."""
        xp = self.xp
        return xp.where(out > 0, dout, xp.zeros((), dtype=dout.dtype, device=_device(dout)))

    def _targets(self, t: Array, k: int, dtype: Any) -> Array:
        """(N, K) targets: ``t`` itself, or the one-hot rows of (N,) integer labels."""
        xp = self.xp
        if t.ndim == 2:
            return t
        classes = xp.reshape(xp.arange(k, device=_device(t)), (1, k))
        return xp.astype(xp.reshape(t, (t.shape[0], 1)) == xp.astype(classes, t.dtype), dtype)

    def softmax_cross_entropy(self, x: Array, t: Array):
        """Scores (N, K), labels (N,) or targets (N, K) → (mean cross-entropy, 0-d; softmax (N, K))."""
        xp = self.xp
        n, k = x.shape
        z = x - xp.max(x, axis=1, keepdims=True)
        logp = z - xp.log(xp.sum(xp.exp(z), axis=1, keepdims=True))
        loss = -xp.sum(self._targets(t, k, x.dtype) * logp) / n
        return xp.asarray(loss), xp.exp(logp)  # asarray: NumPy reductions give scalars

    def softmax_cross_entropy_count(self, x: Array, t: Array):
        """:meth:`softmax_cross_entropy` and the number of right answers, a 0-d integer array:
        the rows whose scores are all finite and whose first maximum is the label (the
        target's first maximum for (N, K) targets)."""
        xp = self.xp
        loss, probs = self.softmax_cross_entropy(x, t)
        predicted = xp.argmax(x, axis=1)
        truth = xp.argmax(t, axis=1) if t.ndim == 2 else t
        if truth.dtype != predicted.dtype:
            predicted = xp.astype(predicted, truth.dtype)
        right = (predicted == truth) & xp.all(xp.isfinite(x), axis=1)
        return loss, probs, xp.sum(xp.astype(right, xp.int64))

    def softmax_cross_entropy_count_grad(self, x: Array, t: Array, scale: float):
        """:meth:`softmax_cross_entropy_count` and :meth:`softmax_cross_entropy_backward` of its
        probabilities at ``scale``: (loss, probs, right, dx)."""
        loss, probs, right = self.softmax_cross_entropy_count(x, t)
        return loss, probs, right, self.softmax_cross_entropy_backward(probs, t, scale)

    def bias_softmax_cross_entropy_count_grad(self, rows: Array, b: Array, t: Array, scale: float):
        """:meth:`softmax_cross_entropy_count_grad` of the scores ``rows + b`` and
        :meth:`bias_grad` of their gradient: (loss, probs, right, dx, db). The very operations
        of an Affine layer's ``+ b``, the loss and the layer's backward, one after the other."""
        loss, probs, right, dx = self.softmax_cross_entropy_count_grad(rows + b, t, scale)
        return loss, probs, right, dx, self.bias_grad(dx)

    def softmax_cross_entropy_backward(self, probs: Array, t: Array, scale: float) -> Array:
        """``(probs - targets) * scale``, (N, K)."""
        return (probs - self._targets(t, probs.shape[1], probs.dtype)) * scale

    def bias_grad(self, drows: Array) -> Array:
        """Column sums of (M, F) rows → (F,): the gradient of a bias added to every row.

        Computed as the product ``ones(M) @ drows``, not ``sum(drows, axis=0)``: a
        convolution's rows are tall and narrow (M = N*OH*OW in the tens of thousands, F a few
        dozen), and a reduction down the first axis parallelizes over the F columns only
        (CuPy's fallback reduction runs a block or two for such a shape), while a
        matrix-vector product goes to BLAS (cuBLAS on CuPy), which splits the long axis too.
        The NumPy set computes it the same way.
        """
        xp = self.xp
        return xp.ones((drows.shape[0],), dtype=drows.dtype, device=_device(drows)) @ drows

    def weight_grad(self, drows: Array, col: Array) -> Array:
        """``drows^T @ col``: the gradient (FN, K) of a GEMM's weights from its rows'
        gradient (M, FN) and its column matrix (M, K)."""
        return self.xp.matrix_transpose(drows) @ col

    def rows_to_nchw(self, y: Array, n: int, oh: int, ow: int) -> Array:
        """(N*OH*OW, FN) GEMM rows → (N, FN, OH, OW)."""
        xp = self.xp
        return xp.permute_dims(xp.reshape(y, (n, oh, ow, y.shape[1])), (0, 3, 1, 2))

    def nchw_to_rows(self, dout: Array) -> Array:
        """(N, FN, OH, OW) → (N*OH*OW, FN), the inverse of :meth:`rows_to_nchw`."""
        xp = self.xp
        n, fn, oh, ow = dout.shape
        return xp.reshape(xp.permute_dims(dout, (0, 2, 3, 1)), (n * oh * ow, fn))

    # -- optimizer steps (in place on ``param`` and the state arrays) ---------------

    def sgd_update(self, param: Array, grad: Array, lr: float) -> None:
        param -= lr * grad

    def momentum_update(self, param: Array, grad: Array, velocity: Array, lr: float, momentum: float) -> None:
        velocity *= momentum
        velocity -= lr * grad
        param += velocity

    def adagrad_update(self, param: Array, grad: Array, h: Array, lr: float, eps: float) -> None:
        h += grad * grad
        param -= lr * grad / (self.xp.sqrt(h) + eps)

    def rmsprop_update(self, param: Array, grad: Array, h: Array, lr: float, decay: float, eps: float) -> None:
        h *= decay
        h += (1 - decay) * grad * grad
        param -= lr * grad / (self.xp.sqrt(h) + eps)

    def adam_update(
        self, param: Array, grad: Array, m: Array, v: Array, lr_t: float, beta1: float, beta2: float, eps: float
    ) -> None:
        m += (1 - beta1) * (grad - m)
        v += (1 - beta2) * (grad * grad - v)
        param -= lr_t * m / (self.xp.sqrt(v) + eps)

    # -- optimizer steps on many parameters: the one-parameter step on each ---------------

    def sgd_update_many(self, params: Sequence[Array], grads: Sequence[Array], lr: float) -> None:
        for param, grad in _same_length("sgd_update_many", params, grads):
            self.sgd_update(param, grad, lr)

    def momentum_update_many(
        self, params: Sequence[Array], grads: Sequence[Array], velocities: Sequence[Array], lr: float, momentum: float
    ) -> None:
        for param, grad, velocity in _same_length("momentum_update_many", params, grads, velocities):
            self.momentum_update(param, grad, velocity, lr, momentum)

    def adagrad_update_many(
        self, params: Sequence[Array], grads: Sequence[Array], hs: Sequence[Array], lr: float, eps: float
    ) -> None:
        for param, grad, h in _same_length("adagrad_update_many", params, grads, hs):
            self.adagrad_update(param, grad, h, lr, eps)

    def rmsprop_update_many(
        self, params: Sequence[Array], grads: Sequence[Array], hs: Sequence[Array], lr: float, decay: float, eps: float
    ) -> None:
        for param, grad, h in _same_length("rmsprop_update_many", params, grads, hs):
            self.rmsprop_update(param, grad, h, lr, decay, eps)

    def adam_update_many(
        self,
        params: Sequence[Array],
        grads: Sequence[Array],
        ms: Sequence[Array],
        vs: Sequence[Array],
        lr_t: float,
        beta1: float,
        beta2: float,
        eps: float,
    ) -> None:
        for param, grad, m, v in _same_length("adam_update_many", params, grads, ms, vs):
            self.adam_update(param, grad, m, v, lr_t, beta1, beta2, eps)


def _same_length(op: str, *sequences: Sequence[Array]) -> zip:
    """The sequences zipped; ``ValueError`` naming their lengths when they differ."""
    lengths = [len(s) for s in sequences]
    if len(set(lengths)) > 1:
        raise ValueError(f"{op}: parameters, gradients and state arrays must be as many, got {lengths}")
    return zip(*sequences)


def _device(x: Array):
    return getattr(x, "device", None)
