"""A test-only backend: array_api_strict arrays with the generic kernel set.

Running layers and models here proves they use nothing beyond the array API standard.
"""

from __future__ import annotations

import numpy as np

from gpucnn.backend import Backend
from gpucnn.kernels.generic import GenericKernels


class _HostRandom:
    """Dropout's generator: NumPy draws, strict arrays come out of ``Backend.asarray``."""

    def __init__(self, seed):
        self._rng = np.random.default_rng(seed)

    def random(self, shape, dtype=np.float32):
        return self._rng.random(shape, dtype=dtype)


def make_strict_backend() -> Backend:
    import array_api_strict as xps

    return Backend(
        name="array-api-strict",
        xp=xps,
        kernels=GenericKernels(xps),
        array_type=type(xps.asarray(0.0)),
        _to_device=xps.asarray,
        _to_host=lambda a: np.from_dlpack(a).copy(),
        random=_HostRandom,
    )
