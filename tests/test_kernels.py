"""The interface module's own functions: the output size and the checks of the arguments.

Every kernel set's operations are compared with the oracle in ``test_kernel_agreement.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

from gpucnn.kernels import check_pool_pad, conv_output_size
from gpucnn.kernels.numpy_set import NumpyKernels

NP = NumpyKernels()


def test_output_size_formula_and_ignored_remainder():
    assert conv_output_size(28, 5, 1, 0) == 24
    assert conv_output_size(7, 3, 2, 0) == 3  # (7 - 3) // 2 + 1: the remainder is ignored
    assert conv_output_size(8, 3, 2, 0) == 3  # the last column is never reached
    assert conv_output_size(5, 3, 2, 1) == 3
    x = np.arange(8.0).reshape(1, 1, 1, 8)
    dx = NP.col2im(np.ones((3, 3)), x.shape, 1, 3, 2, 0)
    assert dx[0, 0, 0, 7] == 0  # the unreached column gets a zero gradient


def test_output_size_errors_name_the_numbers():
    with pytest.raises(ValueError, match=r"window 5 does not fit in input 3 with pad 0 .* = -1, below 1"):
        conv_output_size(3, 5, 1, 0)
    with pytest.raises(ValueError, match="stride must be >= 1, got 0"):
        conv_output_size(3, 1, 0, 0)
    with pytest.raises(ValueError, match="pooling pad 2 is more than half the window 3x3"):
        check_pool_pad(3, 3, 2)
    with pytest.raises(ValueError, match="pooling pad"):
        NP.maxpool_forward(np.zeros((1, 1, 4, 4)), 2, 2, 2, 2)
