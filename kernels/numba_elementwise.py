"""Numba loops of the element-wise operations over GEMM rows: the bias and ReLU of a layer's
output and the ReLU's backward, each one parallel pass without temporaries.

They do NumPy's float operations in NumPy's order, so their values equal the NumPy set's
bit for bit: ``maximum(rows + b, 0)`` gives a NaN for a NaN and +0.0 for a -0.0, as
NumPy's ``maximum`` does, and ``where(out > 0, dout, 0)``.
"""

from __future__ import annotations

from .numba_runtime import tjit


@tjit
def bias_relu(first, last, rows, b, zero, out):
    """rows (M, F) and b (F,) → out (M, F) = maximum(rows + b, 0); ``zero`` is a 0 of the
    arrays' dtype (so that no value passes through another float type)."""
    m, f = rows.shape
    for i in range(first, last):
        for j in range(f):
            v = rows[i, j] + b[j]
            out[i, j] = v if v > zero or v != v else zero


@tjit
def relu_backward(first, last, dout, out, zero, dx):
    """Flat arrays of one size: dx = where(out > 0, dout, 0)."""
    for i in range(first, last):
        dx[i] = dout[i] if out[i] > zero else zero
