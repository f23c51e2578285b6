"""Winograd F(2x2, 3x3) as matrix products in float64: the definitions of the six
``winograd_*`` operations (see :mod:`gpucnn.kernels`), independent of the order of
additions the kernels use.

With ``absolute=True`` every function computes the same products of the absolute values
of its matrices and its argument: for each result, the sum of the absolute values of
the terms it sums, which bounds its rounding (``tests/bounds.py``).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

# Lavin and Gray (2016): out = A^T [(G w G^T) * (B^T d B)] A for a 4x4 input tile d.
BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float64)
AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64)

# The most terms a result of each operation sums (its nonzero coefficients): any order of
# its additions rounds it within sum_rtol(dtype, terms) times the sum of the terms'
# absolute values. A pixel of the input's gradient adds up to 4 tiles' 16.
TERMS = {
    "winograd_filter": 9,
    "winograd_filter_grad": 16,
    "winograd_input": 16,
    "winograd_input_grad": 64,
    "winograd_output": 9,
    "winograd_output_grad": 4,
}


def tiles(oh: int, ow: int) -> tuple[int, int]:
    return (oh + 1) // 2, (ow + 1) // 2


def _prepare(a, matrices, absolute: bool):
    a = np.asarray(a, dtype=np.float64)
    if absolute:
        return np.abs(a), [np.abs(m) for m in matrices]
    return a, list(matrices)


def filter_transform(w, absolute: bool = False) -> np.ndarray:
    """w (FN, C, 3, 3) → U (16, C, FN) = G w G^T."""
    w, (g,) = _prepare(w, [G], absolute)
    fn, c = w.shape[:2]
    return np.einsum("ik,fckl,jl->ijcf", g, w, g).reshape(16, c, fn)


def filter_transform_adjoint(du, absolute: bool = False) -> np.ndarray:
    """dU (16, C, FN) → dW (FN, C, 3, 3) = G^T dU G."""
    du, (g,) = _prepare(du, [G], absolute)
    c, fn = du.shape[1:]
    return np.einsum("ik,ijcf,jl->fckl", g, du.reshape(4, 4, c, fn), g)


def input_transform(x, pad: int, absolute: bool = False) -> np.ndarray:
    """x (N, C, H, W) → V (16, T, C) = B^T d B of each 4x4 tile d of the padded input,
    tiles every 2 pixels in (n, ty, tx) order."""
    x, (bt,) = _prepare(x, [BT], absolute)
    n, c, h, w = x.shape
    th, tw = tiles(h + 2 * pad - 2, w + 2 * pad - 2)
    padded = np.zeros((n, c, 2 * th + 2, 2 * tw + 2))
    padded[:, :, pad : pad + h, pad : pad + w] = x
    d = sliding_window_view(padded, (4, 4), axis=(2, 3))[:, :, ::2, ::2]  # (N, C, TH, TW, 4, 4)
    return np.einsum("ik,ncstkl,jl->ijnstc", bt, d, bt).reshape(16, n * th * tw, c)


def input_transform_adjoint(dv, x_shape, pad: int, absolute: bool = False) -> np.ndarray:
    """dV (16, T, C) → dx of ``x_shape``: each tile's B dV B^T added to its pixels."""
    dv, (bt,) = _prepare(dv, [BT], absolute)
    n, c, h, w = x_shape
    th, tw = tiles(h + 2 * pad - 2, w + 2 * pad - 2)
    d = np.einsum("ik,ijnstc,jl->ncstkl", bt, dv.reshape(4, 4, n, th, tw, c), bt)
    padded = np.zeros((n, c, 2 * th + 2, 2 * tw + 2))
    for ky in range(4):
        for kx in range(4):
            padded[:, :, ky : ky + 2 * th : 2, kx : kx + 2 * tw : 2] += d[..., ky, kx]
    return padded[:, :, pad : pad + h, pad : pad + w]


def output_transform(m, n: int, oh: int, ow: int, absolute: bool = False) -> np.ndarray:
    """M (16, T, FN) → rows (N*OH*OW, FN): A^T M A of each tile, cropped to OH x OW."""
    m, (at,) = _prepare(m, [AT], absolute)
    th, tw = tiles(oh, ow)
    fn = m.shape[2]
    y = np.einsum("ai,ijnstf,bj->nsatbf", at, m.reshape(4, 4, n, th, tw, fn), at)
    return y.reshape(n, 2 * th, 2 * tw, fn)[:, :oh, :ow].reshape(n * oh * ow, fn)


def output_transform_adjoint(drows, n: int, oh: int, ow: int, absolute: bool = False) -> np.ndarray:
    """rows (N*OH*OW, FN) → dM (16, T, FN): A dY A^T of each 2x2 tile, zeros past OH x OW."""
    drows, (at,) = _prepare(drows, [AT], absolute)
    th, tw = tiles(oh, ow)
    fn = drows.shape[1]
    dy = np.zeros((n, 2 * th, 2 * tw, fn))
    dy[:, :oh, :ow] = drows.reshape(n, oh, ow, fn)
    dm = np.einsum("ai,nsatbf,bj->ijnstf", at, dy.reshape(n, th, 2, tw, 2, fn), at)
    return dm.reshape(16, n * th * tw, fn)
