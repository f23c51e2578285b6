"""Learning rates for large global batches: linear scaling with a gradual warm-up, as in
Goyal et al. 2017, "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour".

A learning rate tuned for batches of ``reference_batch`` samples is too small for
batches k times as large: a step averages k times as many gradients, so it moves the
weights about as far as one small step did, and an epoch makes k times fewer steps. The
linear scaling rule multiplies the rate by ``k = batch_size / reference_batch``. Early in
training, while the weights change fast, that rate can make the loss diverge; the
gradual warm-up starts at the reference rate and raises it by the same amount every
iteration until it reaches k times that rate after ``warmup_epochs`` epochs.

``fit(..., lr_schedule=LinearScaling(...))`` sets the optimizer's ``lr`` before every
step and puts the reference rate back after it, so a saved model holds the rate it was
given, and a resumed run (``initial_epoch``) takes up the schedule where it stopped: the
iteration is counted from the epoch, not from the optimizer's state. Under data-parallel
training ``batch_size`` is the global batch, whatever the number of ranks.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

__all__ = ["LinearScaling"]


class LinearScaling:
    """The optimizer's rate scaled linearly from a reference batch size, after a warm-up.

    With ``k = batch_size / reference_batch`` and ``W = round(warmup_epochs * iterations
    per epoch)``, iteration ``i`` (counted from the first epoch of training) steps with::

        lr * (1 + (k - 1) * i / W)    while i < W and k > 1 (the warm-up)
        lr * k                        after it, and from the start when k <= 1

    where ``lr`` is the optimizer's rate, the one for batches of ``reference_batch``.

    Args:
        reference_batch: the batch size that the optimizer's rate was chosen for.
        warmup_epochs: epochs (a fraction of one too) over which the rate climbs from
            ``lr`` to ``lr * k``; 0: ``lr * k`` from the first step.
    """

    def __init__(self, reference_batch: int, warmup_epochs: float = 0.0) -> None:
        if isinstance(reference_batch, bool) or not isinstance(reference_batch, int) or reference_batch < 1:
            raise ValueError(f"reference_batch must be a whole number >= 1, got {reference_batch!r}")
        if not (math.isfinite(warmup_epochs) and warmup_epochs >= 0):
            raise ValueError(f"warmup_epochs must be a finite number >= 0, got {warmup_epochs!r}")
        self.reference_batch = reference_batch
        self.warmup_epochs = float(warmup_epochs)

    def factor(self, iteration: int, batch_size: int, iterations_per_epoch: int) -> float:
        """What the optimizer's rate is multiplied by at ``iteration`` (0-based, from the
        start of training)."""
        k = batch_size / self.reference_batch
        warmup = round(self.warmup_epochs * iterations_per_epoch)
        if k <= 1 or iteration >= warmup:
            return k
        return 1 + (k - 1) * iteration / warmup

    def scheduled(
        self,
        step: Callable[..., Any],
        optimizer: Any,
        *,
        first_iteration: int,
        batch_size: int,
        iterations_per_epoch: int,
    ) -> Callable[..., Any]:
        """``step`` (one training step, which updates ``optimizer``) run with the rate of
        each iteration in turn, from ``first_iteration``; the optimizer's own rate is put
        back after every step."""
        base = optimizer.lr
        iterations = itertools.count(first_iteration)

        def scheduled_step(*args: Any) -> Any:
            optimizer.lr = base * self.factor(next(iterations), batch_size, iterations_per_epoch)
            try:
                return step(*args)
            finally:
                optimizer.lr = base

        return scheduled_step

    def config(self) -> dict[str, Any]:
        return {"reference_batch": self.reference_batch, "warmup_epochs": self.warmup_epochs}

    def __repr__(self) -> str:
        return f"LinearScaling(reference_batch={self.reference_batch}, warmup_epochs={self.warmup_epochs:g})"
