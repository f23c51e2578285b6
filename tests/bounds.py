"""Comparisons whose tolerance follows the arithmetic.

A sum can cancel: its value may be far smaller than its terms, and so can be compared only
against the sum of their absolute values. Two evaluations of a sum of ``terms`` products,
in any order and precision at least the dtype's, differ by at most ``terms * eps`` times
that sum (each rounds a product and an addition per term, each by at most ``eps / 2`` of
a partial sum; first order). :func:`sum_rtol` is that factor and
:func:`assert_close_to_sum` the comparison.
"""

from __future__ import annotations

import numpy as np


def eps(dtype) -> float:
    """The dtype's machine epsilon: twice its unit roundoff."""
    return float(np.finfo(dtype).eps)


def sum_rtol(dtype, terms: int) -> float:
    """``terms * eps(dtype)``: how far two evaluations of a sum of ``terms`` products in
    ``dtype`` may lie apart, relative to the sum of the terms' absolute values."""
    return terms * eps(dtype)


def assert_close_to_sum(actual, expected, abs_terms, rtol: float, what: str = "") -> None:
    """``|actual - expected| <= rtol * abs_terms`` elementwise (NaN only where ``expected``
    has NaN): ``abs_terms`` is the sum of the absolute values of the terms each element
    sums. ``rtol = 0`` asks for equality."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    abs_terms = np.broadcast_to(np.asarray(abs_terms, dtype=np.float64), expected.shape)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape}, expected {expected.shape}"
    both_nan = np.isnan(actual) & np.isnan(expected)
    error = np.abs(actual - expected)
    bad = ~((error <= rtol * abs_terms) | both_nan)
    if bad.any():
        i = np.unravel_index(np.argmax(np.where(bad, error, -1.0)), bad.shape)
        ratio = error[i] / abs_terms[i] if abs_terms[i] else np.inf
        raise AssertionError(
            f"{what}: {bad.sum()} of {bad.size} elements differ by more than {rtol:.3g} times the sum of "
            f"their absolute terms; the worst, at {tuple(int(k) for k in i)}: {actual[i]!r}, expected "
            f"{expected[i]!r}, absolute terms {abs_terms[i]!r}, error / absolute terms {ratio:.3g}"
        )


def pool_windows(y: np.ndarray, kh: int, kw: int, stride: int, pad: int) -> np.ndarray:
    """The max-pooling windows of y (N, C, H, W) as (N, C, OH, OW, KH*KW), tap ``ky*KW + kx``
    last, with ``-inf`` in the pad cells."""
    padded = np.pad(y, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=-np.inf)
    win = np.lib.stride_tricks.sliding_window_view(padded, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]
    oh, ow = (y.shape[2] + 2 * pad - kh) // stride + 1, (y.shape[3] + 2 * pad - kw) // stride + 1
    return win[:, :, :oh, :ow].reshape(*win.shape[:2], oh, ow, kh * kw)


def assert_argmax_up_to_rounding(argmax, expected, windows: np.ndarray, slack) -> None:
    """``argmax`` equals ``expected``, except in a window whose two largest values lie
    within ``slack`` (> 0) of each other, computed ones that rounding may order either
    way: there ``argmax`` may name the other, provided it names a real pixel.

    ``windows`` (..., KH*KW) holds each window's values (``-inf`` in pad cells, see
    :func:`pool_windows`); ``slack`` broadcasts against ``argmax``.
    """
    argmax, expected = np.asarray(argmax), np.asarray(expected)
    assert argmax.shape == expected.shape, f"argmax shape {argmax.shape}, expected {expected.shape}"
    assert ((argmax >= 0) & (argmax < windows.shape[-1])).all(), "argmax outside the window"
    picked = np.take_along_axis(windows, argmax[..., None].astype(np.intp), axis=-1)[..., 0]
    best = np.take_along_axis(windows, expected[..., None].astype(np.intp), axis=-1)[..., 0]
    slack = np.broadcast_to(slack, argmax.shape)
    bad = (argmax != expected) & ~((slack > 0) & (np.abs(best - picked) <= slack))
    if bad.any():
        i = tuple(int(k) for k in np.argwhere(bad)[0])
        raise AssertionError(
            f"{bad.sum()} argmax differ; the first, at {i}: {argmax[i]} (value {picked[i]!r}), expected "
            f"{expected[i]} (value {best[i]!r}), allowed difference {slack[i]!r}"
        )
