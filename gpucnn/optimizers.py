"""Optimizers with the book's update rules and defaults.

``optimizer.update(params, grads)`` updates every array of ``params`` in place (so a
model's layers, which hold the same arrays, see the change). State (velocities, squared
gradient sums, moments) is created with ``zeros_like`` on the first step and kept in
``optimizer.state[key]`` beside the parameter's stable name, never under ``id()``.
The arithmetic of each step is a kernel-set operation on every parameter at once
(``adagrad_update_many``, ...), so a backend can fuse it into one pass over memory: the
CUDA kernel set updates all of a model's parameters in one launch, each one as the
one-parameter step (``adagrad_update``) would, bit for bit.
"""

from __future__ import annotations

import math
from typing import Any

from .backend import Backend, backend_for

__all__ = ["SGD", "AdaGrad", "Adam", "Momentum", "Optimizer", "RMSprop", "get_optimizer"]


class Optimizer:
    """Base class. ``weight_decay`` adds ``weight_decay * param`` to each gradient (L2)."""

    state_names: tuple[str, ...] = ()

    def __init__(self, lr: float, weight_decay: float = 0.0) -> None:
        if not lr > 0:
            raise ValueError(f"learning rate must be > 0, got {lr}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.state: dict[str, dict[str, Any]] = {}
        self.iterations = 0

    def update(self, params: dict, grads: dict, *, backend: Backend | None = None) -> None:
        """One step on every key of ``grads`` (the book's signature)."""
        if not grads:
            return
        if backend is None:  # a model's params know their backend; plain dicts are asked
            backend = getattr(params, "backend", None) or backend_for(next(iter(params.values())))
        self.iterations += 1
        keys = list(grads)
        step_params = [params[key] for key in keys]
        step_grads = [grads[key] for key in keys]
        if self.weight_decay:
            step_grads = [grad + self.weight_decay * param for param, grad in zip(step_params, step_grads)]
        for key, param in zip(keys, step_params):
            if key not in self.state:
                self.state[key] = {name: backend.xp.zeros_like(param) for name in self.state_names}
        slots = {name: [self.state[key][name] for key in keys] for name in self.state_names}
        self._step(backend.kernels, step_params, step_grads, slots)

    def _step(self, kernels: Any, params: list, grads: list, slots: dict[str, list]) -> None:
        """One step on every parameter: ``slots`` maps each state name to the parameters' arrays."""
        raise NotImplementedError

    def to(self, backend: Backend, *, source: Backend | None = None) -> Optimizer:
        """Move the state arrays to ``backend`` (in place); ``source`` is the backend they are
        on now (None: host NumPy arrays). Returns the optimizer."""
        for slots in self.state.values():
            for name, value in slots.items():
                slots[name] = backend.asarray(value if source is None else source.to_numpy(value))
        return self

    def config(self) -> dict:
        return {"lr": self.lr, "weight_decay": self.weight_decay}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.config().items())})"


class SGD(Optimizer):
    """``p -= lr * g``."""

    def __init__(self, lr: float = 0.01, weight_decay: float = 0.0) -> None:
        super().__init__(lr, weight_decay)

    def _step(self, kernels, params, grads, slots):
        kernels.sgd_update_many(params, grads, self.lr)


class Momentum(Optimizer):
    """``v = momentum*v - lr*g; p += v``."""

    state_names = ("v",)

    def __init__(self, lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 0.0) -> None:
        super().__init__(lr, weight_decay)
        self.momentum = float(momentum)

    def _step(self, kernels, params, grads, slots):
        kernels.momentum_update_many(params, grads, slots["v"], self.lr, self.momentum)

    def config(self):
        return {**super().config(), "momentum": self.momentum}


class AdaGrad(Optimizer):
    """``h += g*g; p -= lr*g / (sqrt(h) + 1e-7)``."""

    state_names = ("h",)

    def __init__(self, lr: float = 0.01, eps: float = 1e-7, weight_decay: float = 0.0) -> None:
        super().__init__(lr, weight_decay)
        self.eps = float(eps)

    def _step(self, kernels, params, grads, slots):
        kernels.adagrad_update_many(params, grads, slots["h"], self.lr, self.eps)

    def config(self):
        return {**super().config(), "eps": self.eps}


class RMSprop(Optimizer):
    """``h = decay*h + (1 - decay)*g*g; p -= lr*g / (sqrt(h) + 1e-7)``."""

    state_names = ("h",)

    def __init__(
        self, lr: float = 0.01, decay_rate: float = 0.99, eps: float = 1e-7, weight_decay: float = 0.0
    ) -> None:
        super().__init__(lr, weight_decay)
        self.decay_rate = float(decay_rate)
        self.eps = float(eps)

    def _step(self, kernels, params, grads, slots):
        kernels.rmsprop_update_many(params, grads, slots["h"], self.lr, self.decay_rate, self.eps)

    def config(self):
        return {**super().config(), "decay_rate": self.decay_rate, "eps": self.eps}


class Adam(Optimizer):
    """Adam (Kingma and Ba 2014) in the book's form: the bias correction folded into
    ``lr_t = lr * sqrt(1 - beta2**t) / (1 - beta1**t)``, then
    ``m += (1-beta1)*(g - m); v += (1-beta2)*(g*g - v); p -= lr_t*m / (sqrt(v) + 1e-7)``."""

    state_names = ("m", "v")

    def __init__(
        self, lr: float = 0.001, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-7, weight_decay: float = 0.0
    ) -> None:
        super().__init__(lr, weight_decay)
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        self._lr_t = self.lr

    def update(self, params, grads, *, backend=None):
        t = self.iterations + 1
        self._lr_t = self.lr * math.sqrt(1.0 - self.beta2**t) / (1.0 - self.beta1**t)
        super().update(params, grads, backend=backend)

    def _step(self, kernels, params, grads, slots):
        kernels.adam_update_many(params, grads, slots["m"], slots["v"], self._lr_t, self.beta1, self.beta2, self.eps)

    def config(self):
        return {**super().config(), "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps}


OPTIMIZERS = {"sgd": SGD, "momentum": Momentum, "adagrad": AdaGrad, "rmsprop": RMSprop, "adam": Adam}


def get_optimizer(spec: str | Optimizer, **kwargs: Any) -> Optimizer:
    """An optimizer object, or one built from its name (``"adagrad"``) and keyword arguments."""
    if isinstance(spec, Optimizer):
        if kwargs:
            raise ValueError(f"optimizer options {sorted(kwargs)} given with an optimizer object")
        return spec
    if not isinstance(spec, str) or spec.lower() not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {spec!r}; known: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[spec.lower()](**kwargs)
