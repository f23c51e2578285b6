"""Hypothesis strategies shared by the kernel tests."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st


def data(rng: np.random.Generator, shape: tuple[int, ...], dtype, ties: bool) -> np.ndarray:
    """Normal values, or small integers when ``ties`` (so that windows hold equal maxima)."""
    if ties:
        return rng.integers(-2, 3, size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


@st.composite
def window_case(draw, pool: bool = False, max_window: int = 4):
    """``(x, kh, kw, stride, pad, rng)`` for a windowed kernel, with an output of at least 1x1.

    Batches 1, 2, 3 and 5; channels 1-16; non-square images up to 11x11; strides 1-3; pads
    0-3 (pooling: at most half the window, so ``max_window=7`` reaches pad 3); float32 and
    float64. Half the cases hold small integers, so that windows have tied maxima and the
    first-maximum rule is exercised. ``rng`` is seeded by the case, for more data.
    """
    n = draw(st.sampled_from([1, 2, 3, 5]))
    c = draw(st.integers(1, 16))
    kh, kw = draw(st.integers(1, max_window)), draw(st.integers(1, max_window))
    stride = draw(st.integers(1, 3))
    pad = draw(st.integers(0, min(3, kh // 2, kw // 2))) if pool else draw(st.integers(0, 3))
    h = draw(st.integers(max(1, kh - 2 * pad), 11))
    w = draw(st.integers(max(1, kw - 2 * pad), 11))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return data(rng, (n, c, h, w), dtype, ties=draw(st.booleans())), kh, kw, stride, pad, rng
