"""Gradient checks: analytic backward passes against central differences.

Run them in float64: with float32 the differences drown in rounding error.

    >>> import numpy as np, gpucnn
    >>> from gpucnn.gradcheck import check_model_gradients
    >>> net = gpucnn.SimpleConvNet(input_dim=(1, 8, 8), dtype="float64", seed=0)
    >>> errors = check_model_gradients(net, np.random.rand(2, 1, 8, 8), np.array([1, 3]))
    >>> max(errors.values()) < 1e-6
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["check_layer_gradients", "check_model_gradients", "numerical_gradient", "relative_error"]


def numerical_gradient(f: Callable[[], float], x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central-difference gradient of the scalar ``f()`` with respect to the host array ``x``,
    which ``f`` must read (it is perturbed in place, one element at a time, and restored)."""
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        original = flat[i]
        flat[i] = original + eps
        plus = f()
        flat[i] = original - eps
        minus = f()
        flat[i] = original
        gflat[i] = (plus - minus) / (2 * eps)
    return grad


def relative_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    """``||a - n|| / (||a|| + ||n||)`` (Euclidean norms): 0 when equal, about 1e-9 or less
    for a correct float64 backward. The norm form keeps near-zero entries, where central
    differences carry ~1e-10 of absolute rounding noise, from dominating."""
    analytic, numeric = np.asarray(analytic, dtype=np.float64), np.asarray(numeric, dtype=np.float64)
    scale = np.linalg.norm(analytic) + np.linalg.norm(numeric)
    return float(np.linalg.norm(analytic - numeric) / scale) if scale > 0 else 0.0


def check_layer_gradients(layer: Any, x: np.ndarray, *, eps: float = 1e-6, seed: int = 0) -> dict[str, float]:
    """Relative errors of ``layer``'s input and parameter gradients.

    The scalar is ``sum(forward(x) * r)`` for a fixed random ``r``, so every output
    element contributes. ``x`` is a host float64 array; the layer may live on any backend.
    Returns ``{"x": err, "W": err, ...}``.
    """
    backend = layer.backend
    x = np.array(x, dtype=np.float64)
    out = layer.forward(backend.asarray(x), train=True)
    r = np.random.default_rng(seed).standard_normal(tuple(out.shape))
    r_dev = backend.asarray(r)

    def scalar() -> float:
        y = layer.forward(backend.asarray(x), train=True)
        return float(backend.xp.sum(y * r_dev))

    scalar()
    dx = layer.backward(r_dev)
    errors = {"x": relative_error(backend.to_numpy(dx), numerical_gradient(scalar, x, eps))}
    analytic = {name: backend.to_numpy(g) for name, g in layer.grads.items()}
    for name, value in layer.params.items():
        host = np.array(backend.to_numpy(value), dtype=np.float64)

        def scalar_p(name=name, host=host) -> float:
            layer.params[name] = backend.asarray(host)
            return scalar()

        numeric = numerical_gradient(scalar_p, host, eps)
        layer.params[name] = backend.asarray(host)
        errors[name] = relative_error(analytic[name], numeric)
    return errors


def check_model_gradients(model: Any, x: np.ndarray, t: np.ndarray, *, eps: float = 1e-6) -> dict[str, float]:
    """Relative error of every parameter gradient of ``model`` (built in float64) on (x, t)."""
    analytic = {k: model.backend.to_numpy(v) for k, v in model.gradient(x, t).items()}
    errors = {}
    params = model.params
    for key in list(params):
        host = np.array(model.backend.to_numpy(params[key]), dtype=np.float64)

        def loss(key=key, host=host) -> float:
            params[key] = host
            return model.loss(x, t)

        numeric = numerical_gradient(loss, host, eps)
        params[key] = host
        errors[key] = relative_error(analytic[key], numeric)
    return errors
