"""The machinery of training as Keras and the book teach it: batching, the epoch loop,
``History``.

The training methods themselves (``fit``, ``evaluate``, ``train_on_batch`` and the one
training step, ``train_step``) belong to the model, :class:`gpucnn.Sequential`; this
module holds what they use and what needs no model: the batch indices of an epoch, the
loop over one epoch's batches (:func:`run_epoch`), the batch source and ``History``.

Batching rules (``fit``):

* ``sampling="epoch"`` (default): one epoch shows every training sample once, in a
  fresh permutation when ``shuffle=True``; it has ``ceil(N / batch_size)`` iterations
  and keeps the last, smaller batch unless ``drop_last=True``.
* ``sampling="random"``: the book's mini-batch learning. Each iteration draws
  ``batch_size`` distinct indices at random from the whole set, so an "epoch" of
  ``max(N // batch_size, 1)`` iterations sees some samples twice and others not at all.
* ``batch_size > N`` behaves as ``batch_size = N`` (with a warning), as in Keras and
  PyTorch; ``batch_size < 1`` or a non-integer is an error.

Randomness is keyed by ``(seed, epoch)``: the shuffle of epoch ``e`` (:func:`epoch_rng`)
and its dropout masks depend only on the seed and ``e``, so a run resumed at
``initial_epoch=e`` repeats an uninterrupted one exactly (on the same backend).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from .backend import Backend
from .prefetch import prefetch_batches

__all__ = [
    "EXPLOSION_FACTOR",
    "BatchSource",
    "ExplodingLossError",
    "History",
    "NonFiniteLossError",
    "check_batch_size",
    "epoch_batches",
    "epoch_rng",
    "format_duration",
    "format_logs",
    "run_epoch",
]

Array = Any


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class ExplodingLossError(NonFiniteLossError):
    """The training loss exploded: it rose above :data:`EXPLOSION_FACTOR` times the first
    loss of the ``fit`` (or of 1, when that is smaller), on its way to infinity."""


# Cross-entropy starts near ln K for K classes; a run that learns never climbs three
# orders of magnitude above where it started, while a learning rate far too high sends
# the loss to 1e12 and beyond, and the weights with it, long before it overflows.
EXPLOSION_FACTOR = 1000.0


class History:
    """What ``fit`` returns, as in Keras.

    Attributes:
        history: per-epoch lists: ``loss``, ``accuracy`` (running means over the epoch's
            batches), ``val_loss``, ``val_accuracy`` (a full pass over the validation
            data, when given) and, for a binary classifier (one sigmoid output),
            ``val_roc_auc`` (exact, from that pass's logits), ``epoch_time`` (training
            only, seconds), ``val_time``, ``images_per_s``.
        epoch: the epoch numbers (0-based) these entries belong to.
        iteration_loss: the loss of every iteration, in order.
        params: ``batch_size``, ``epochs``, ``iterations_per_epoch``, ``samples``, ``seed``...
    """

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []
        self.iteration_loss: list[float] = []
        self.params: dict[str, Any] = {}

    def append(self, epoch: int, logs: dict[str, float]) -> None:
        """Add one epoch's logs."""
        self.epoch.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)

    def merged(self, later: History) -> History:
        """A new History: this one's epochs followed by ``later``'s (a resumed run)."""
        out = History.from_dict(self.to_dict())
        for i, epoch in enumerate(later.epoch):
            out.append(epoch, {key: values[i] for key, values in later.history.items()})
        out.iteration_loss += later.iteration_loss
        out.params = {**self.params, **later.params}
        return out

    def to_dict(self) -> dict:
        return {
            "history": self.history,
            "epoch": self.epoch,
            "iteration_loss": self.iteration_loss,
            "params": self.params,
        }

    @classmethod
    def from_dict(cls, data: dict) -> History:
        h = cls()
        h.history = {k: list(v) for k, v in data.get("history", {}).items()}
        h.epoch = list(data.get("epoch", []))
        h.iteration_loss = list(data.get("iteration_loss", []))
        h.params = dict(data.get("params", {}))
        return h

    def __repr__(self) -> str:
        return f"History(epochs={len(self.epoch)}, keys={list(self.history)})"


def check_batch_size(batch_size: Any, n: int | None = None) -> int:
    """Validate ``batch_size``; clamp it to ``n`` (with a warning) when it is larger."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise TypeError(f"batch_size must be an integer, got {batch_size!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batch_size = int(batch_size)
    if n is not None and batch_size > n:
        warnings.warn(f"batch_size {batch_size} is larger than the {n} samples; using batch_size={n}", stacklevel=3)
        batch_size = n
    return batch_size


def epoch_batches(
    n: int,
    batch_size: int,
    rng: np.random.Generator,
    *,
    shuffle: bool = True,
    sampling: str = "epoch",
    drop_last: bool = False,
) -> list[np.ndarray]:
    """The index arrays of one epoch's batches (see the module docstring for the rules)."""
    if sampling == "random":
        return [rng.choice(n, size=batch_size, replace=False) for _ in range(max(n // batch_size, 1))]
    if sampling != "epoch":
        raise ValueError(f"sampling must be 'epoch' or 'random', got {sampling!r}")
    order = rng.permutation(n) if shuffle else np.arange(n)
    stop = n - n % batch_size if drop_last else n
    return [order[i : i + batch_size] for i in range(0, max(stop, 0), batch_size)]


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The generator of epoch ``epoch``'s batches in a run seeded with ``seed``."""
    return np.random.default_rng([seed, epoch])


def format_duration(seconds: float) -> str:
    """``12.3s``, or ``4.56ms`` under a second, so that the epochs of a small table read as more than 0.0s."""
    return f"{seconds:.1f}s" if seconds >= 1 else f"{1000 * seconds:.2f}ms"


def format_logs(logs: dict[str, float]) -> str:
    """One epoch's logs as the line ``fit`` prints: ``1.2s - 5,000 img/s - loss 0.3012 - ...``."""
    parts = [format_duration(logs["epoch_time"]), f"{logs['images_per_s']:,.0f} img/s"]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "val_roc_auc"):
        if key in logs:
            parts.append(f"{key} {logs[key]:.4f}")
    return " - ".join(parts)


class BatchSource:
    """Gives a model its training batches: host slices moved one at a time (default), the
    whole set moved to the device once (``data_on_device``), or pinned copies overlapped
    with compute on a second stream (``prefetch``, CuPy only).

    ``model`` needs ``backend`` and the boundary methods ``as_input`` and ``as_target``
    (``prefetch`` also ``np_dtype``); ``x`` and ``t`` are host arrays, host ``x`` already
    in the model's dtype, or arrays of the model's backend (gathered there, batch by batch).
    """

    def __init__(self, model: Any, x: Any, t: Any, *, data_on_device: bool, prefetch: bool) -> None:
        self.model = model
        backend = model.backend
        self.on_device = data_on_device and backend.is_gpu
        self.prefetch = prefetch and backend.is_gpu and not self.on_device
        if self.on_device:
            x, t = model.as_input(x), model.as_target(t)
        self.x, self.t = x, t

    def _take(self, idx: np.ndarray) -> tuple[Array, Array]:
        model = self.model
        if self.on_device:
            xp = model.backend.xp
            index = model.backend.asarray(idx)
            return xp.take(self.x, index, axis=0), xp.take(self.t, index, axis=0)
        return model.as_input(self._rows(self.x, idx)), model.as_target(self._rows(self.t, idx))

    def _rows(self, a: Any, idx: np.ndarray) -> Array:
        """Rows ``idx`` of ``a``: a host array is indexed on the host, an array of the backend
        gathered where it lives (a strict array-API array takes no NumPy index)."""
        if isinstance(a, np.ndarray):
            return a[idx]
        backend = self.model.backend
        return backend.xp.take(a, backend.asarray(idx), axis=0)

    def batches(self, batches: list[np.ndarray]) -> Iterator[tuple[Array, Array]]:
        """``(x_batch, t_batch)`` on the model's backend for each index array."""
        if self.prefetch:
            yield from prefetch_batches(self.model, self.x, self.t, batches)
            return
        for idx in batches:
            yield self._take(idx)


def run_epoch(
    step: Callable[[Array, Array], tuple[Array, Array]],
    source: BatchSource,
    batches: list[np.ndarray],
    *,
    backend: Backend,
    history: History,
    epoch: int,
    epochs: int,
    loss_every: int,
    on_nonfinite: str,
    verbose: int,
    sizes: Sequence[int] | None = None,
) -> dict[str, float]:
    """Run ``step(x_batch, t_batch) -> (loss, correct)`` on each batch of one epoch.

    ``sizes``: the number of samples each batch's loss and right answers stand for
    (default: its rows; under data-parallel training, the global batch of which ``step``
    returns the mean loss and the right answers).

    The losses and counts of right answers stay on the device and are fetched
    ``loss_every`` iterations at a time (each fetch synchronises); every loss goes to
    ``history.iteration_loss``. A non-finite loss raises :class:`NonFiniteLossError`
    (``on_nonfinite="raise"``), warns (``"warn"``) or passes (``"ignore"``); so does a
    loss above ``EXPLOSION_FACTOR`` times the first finite loss in ``history`` (at least
    1), as :class:`ExplodingLossError`. The check reads the losses already fetched, so it
    adds no synchronisation. Returns the
    epoch's logs: ``loss`` and ``accuracy`` (means over the samples), ``epoch_time``,
    ``images_per_s``.
    """
    from tqdm.auto import tqdm  # imported on first use: it brings asyncio, which `import gpucnn` does without

    xp = backend.xp
    bar = tqdm(
        total=len(batches),
        desc=f"Epoch {epoch + 1}/{epochs}",
        unit="batch",
        leave=False,
        disable=verbose != 1,
        dynamic_ncols=True,
    )
    pending: list[tuple[int, Array, Array, int]] = []  # (iteration, loss, correct, batch size)
    sums = {"loss": 0.0, "correct": 0.0, "seen": 0}
    t0 = time.perf_counter()

    def flush() -> None:
        losses = backend.to_numpy(xp.stack([p[1] for p in pending]))
        corrects = backend.to_numpy(xp.stack([p[2] for p in pending]))
        for (it, _, _, size), value, right in zip(pending, losses, corrects):
            value = float(value)
            reference = next((v for v in history.iteration_loss if math.isfinite(v)), value)
            exploded = value > EXPLOSION_FACTOR * max(reference, 1.0)
            if not math.isfinite(value) or exploded:
                first, last = pending[0][0] + 1, pending[-1][0] + 1
                where = f"iteration {it + 1}"
                if last > first:
                    where += f" (loss fetched for iterations {first}-{last})"
                if exploded:
                    error = ExplodingLossError
                    message = (
                        f"loss is {value:.4g} at epoch {epoch + 1}, {where}, over {EXPLOSION_FACTOR:g} times "
                        f"the first loss of this fit ({reference:.4g}): training diverged; "
                        f"lower the learning rate (fit(on_nonfinite='ignore') keeps going)"
                    )
                else:
                    error = NonFiniteLossError
                    message = (
                        f"loss is {value} at epoch {epoch + 1}, {where}; "
                        f"lower the learning rate or check the inputs (fit(on_nonfinite='ignore') keeps going)"
                    )
                if on_nonfinite == "raise":
                    raise error(message)
                if on_nonfinite == "warn":
                    warnings.warn(message, RuntimeWarning, stacklevel=4)
            history.iteration_loss.append(value)
            sums["loss"] += value * size
            sums["correct"] += float(right)
            sums["seen"] += size
        elapsed = time.perf_counter() - t0
        bar.set_postfix(
            loss=f"{sums['loss'] / max(sums['seen'], 1):.4f}",
            img_s=f"{sums['seen'] / max(elapsed, 1e-9):,.0f}",
            refresh=False,
        )
        bar.update(len(pending))
        pending.clear()

    try:
        for it, (xb, tb) in enumerate(source.batches(batches)):
            loss, correct = step(xb, tb)
            pending.append((it, loss, correct, int(xb.shape[0]) if sizes is None else sizes[it]))
            if len(pending) >= loss_every:
                flush()
        if pending:
            flush()
        backend.synchronize()
    finally:
        bar.close()
    elapsed = time.perf_counter() - t0
    seen = max(sums["seen"], 1)
    return {
        "loss": sums["loss"] / seen,
        "accuracy": sums["correct"] / seen,
        "epoch_time": elapsed,
        "images_per_s": sums["seen"] / elapsed if elapsed > 0 else float("inf"),
    }
