"""Weight initialisers. They draw on the host from a NumPy ``Generator``, so that a seed
gives the same initial weights on every backend."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["get_initializer", "he_normal", "normal", "xavier_normal"]


def normal(std: float = 0.01):
    """N(0, std²), the book's ``weight_init_std * np.random.randn(...)``."""

    def init(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int, fan_out: int) -> np.ndarray:
        return std * rng.standard_normal(shape)

    init.__name__ = f"normal({std})"
    return init


def he_normal(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int, fan_out: int) -> np.ndarray:
    """N(0, 2/fan_in): He et al. 2015, for ReLU networks."""
    return math.sqrt(2.0 / fan_in) * rng.standard_normal(shape)


def xavier_normal(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int, fan_out: int) -> np.ndarray:
    """N(0, 2/(fan_in + fan_out)): Glorot and Bengio 2010."""
    return math.sqrt(2.0 / (fan_in + fan_out)) * rng.standard_normal(shape)


_NAMED = {
    "he": he_normal,
    "he_normal": he_normal,
    "xavier": xavier_normal,
    "glorot": xavier_normal,
    "xavier_normal": xavier_normal,
    "glorot_normal": xavier_normal,
}


def get_initializer(spec):
    """A name (``"he"``, ``"xavier"``/``"glorot"``), a float (normal with that std) or a callable."""
    if callable(spec):
        return spec
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return normal(float(spec))
    if isinstance(spec, str) and spec.lower() in _NAMED:
        return _NAMED[spec.lower()]
    raise ValueError(f"unknown initializer {spec!r}; use a std (float), 'he', 'xavier' or a callable")
