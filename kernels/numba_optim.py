"""Numba loops of the optimizer steps: one pass over flat, contiguous arrays, in place.

The scalars arrive cast to the arrays' dtype, so each step does NumPy's float operations
in NumPy's order (see :mod:`.numba_set`). They run on one thread: a parallel launch
would cost more than the work.
"""

from __future__ import annotations

import numpy as np

from .numba_runtime import jit


@jit
def sgd_step(param, grad, lr):
    for i in range(param.size):
        param[i] -= lr * grad[i]


@jit
def momentum_step(param, grad, velocity, lr, momentum):
    for i in range(param.size):
        velocity[i] = velocity[i] * momentum - lr * grad[i]
        param[i] += velocity[i]


@jit
def adagrad_step(param, grad, h, lr, eps):
    for i in range(param.size):
        g = grad[i]
        h[i] += g * g
        param[i] -= lr * g / (np.sqrt(h[i]) + eps)


@jit
def rmsprop_step(param, grad, h, lr, decay, one_minus_decay, eps):
    for i in range(param.size):
        g = grad[i]
        h[i] = h[i] * decay + one_minus_decay * g * g
        param[i] -= lr * g / (np.sqrt(h[i]) + eps)


@jit
def adam_step(param, grad, m, v, lr_t, one_minus_beta1, one_minus_beta2, eps):
    for i in range(param.size):
        g = grad[i]
        m[i] += one_minus_beta1 * (g - m[i])
        v[i] += one_minus_beta2 * (g * g - v[i])
        param[i] -= lr_t * m[i] / (np.sqrt(v[i]) + eps)
