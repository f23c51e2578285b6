"""Training as Keras and the book teach it: ``fit``, ``evaluate``, ``train_on_batch``.

Batching rules (``fit``):

* ``sampling="epoch"`` (default): one epoch shows every training sample once, in a
  fresh permutation when ``shuffle=True``; it has ``ceil(N / batch_size)`` iterations
  and keeps the last, smaller batch unless ``drop_last=True``.
* ``sampling="random"``: the book's mini-batch learning. Each iteration draws
  ``batch_size`` distinct indices at random from the whole set, so an "epoch" of
  ``max(N // batch_size, 1)`` iterations sees some samples twice and others not at all.
* ``batch_size > N`` behaves as ``batch_size = N`` (with a warning), as in Keras and
  PyTorch; ``batch_size < 1`` or a non-integer is an error.

Randomness is keyed by ``(seed, epoch)``: the shuffle of epoch ``e`` and its dropout
masks depend only on the seed and ``e``, so a run resumed at ``initial_epoch=e`` repeats
an uninterrupted one exactly (on the same backend).
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any

import numpy as np

__all__ = ["History", "NonFiniteLossError", "TrainingMixin"]

Array = Any


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class History:
    """What ``fit`` returns, as in Keras.

    Attributes:
        history: per-epoch lists: ``loss``, ``accuracy`` (running means over the epoch's
            batches), ``val_loss``, ``val_accuracy`` (a full pass over the validation
            data, when given), ``epoch_time`` (training only, seconds), ``val_time``,
            ``images_per_s``.
        epoch: the epoch numbers (0-based) these entries belong to.
        iteration_loss: the loss of every iteration, in order.
        params: ``batch_size``, ``epochs``, ``iterations_per_epoch``, ``samples``, ``seed``...
    """

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []
        self.iteration_loss: list[float] = []
        self.params: dict[str, Any] = {}

    def _append(self, epoch: int, logs: dict[str, float]) -> None:
        self.epoch.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)

    def merged(self, later: History) -> History:
        """A new History: this one's epochs followed by ``later``'s (a resumed run)."""
        out = History.from_dict(self.to_dict())
        for i, epoch in enumerate(later.epoch):
            out._append(epoch, {key: values[i] for key, values in later.history.items()})
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


def _epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch])


def _fmt(logs: dict[str, float]) -> str:
    parts = [f"{logs['epoch_time']:.1f}s", f"{logs['images_per_s']:,.0f} img/s"]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        if key in logs:
            parts.append(f"{key} {logs[key]:.4f}")
    return " - ".join(parts)


class TrainingMixin:
    """``fit``, ``evaluate`` and ``train_on_batch`` for models (see :class:`gpucnn.Sequential`)."""

    optimizer: Any = None
    epoch: int = 0  # epochs trained so far (restored by gpucnn.load)
    train_seed: int | None = None
    history: History | None = None  # the History of the running (or last) fit

    def _validate_targets(self, t: np.ndarray, n: int) -> np.ndarray:
        """Host-side check of the whole label array, once, so batches need no device sync."""
        t = np.asarray(t)
        if t.shape[0] != n:
            raise ValueError(f"{t.shape[0]} targets for {n} samples")
        classes = self.layers[-1].output_shape[-1] if self.layers[-1].output_shape else None
        if t.ndim == 1 and t.dtype.kind in "iu" and classes and classes > 1 and n:
            lo, hi = int(t.min()), int(t.max())
            if lo < 0 or hi >= classes:
                raise ValueError(
                    f"labels must lie in [0, {classes - 1}] for {classes} classes, got values from {lo} to {hi}"
                )
        elif t.ndim == 2 and classes and t.shape[1] != classes and classes > 1:
            raise ValueError(f"one-hot targets have {t.shape[1]} columns but the model has {classes} outputs")
        return t

    def _prepare(self, x: Any, t: Any) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(x) if not self.backend.is_array(x) else x
        if len(x) == 0:
            raise ValueError("no samples: x is empty")
        if not self.built:
            self.build(tuple(x.shape[1:]))
        if tuple(x.shape[1:]) != tuple(self.input_shape):
            raise ValueError(f"samples have shape {tuple(x.shape[1:])} but the model expects {tuple(self.input_shape)}")
        if isinstance(x, np.ndarray) and x.dtype != self._np_dtype():
            x = x.astype(self._np_dtype())  # cast once, not once per batch
        t = self._validate_targets(t if self.backend.is_array(t) else np.asarray(t), len(x))
        return x, t

    def _np_dtype(self) -> np.dtype:
        from .layers import dtype_name

        return np.dtype(dtype_name(self.dtype))

    def train_on_batch(self, x: Any, t: Any, optimizer: Any = None) -> float:
        """One optimizer step on one batch; returns its loss (before the update)."""
        from .optimizers import get_optimizer

        if optimizer is not None:
            self.optimizer = get_optimizer(optimizer)
        elif self.optimizer is None:
            raise ValueError("train_on_batch needs an optimizer the first time")
        xb, tb = self._as_input(x), self._as_target(t)
        self._ensure_built(xb)
        loss, _ = self._train_step(xb, tb, check_labels=True)
        return float(loss)

    def _train_step(self, xb: Array, tb: Array, check_labels: bool = False) -> tuple[Array, Array]:
        """Forward, backward, update. Returns (loss, correct) as 0-d backend arrays."""
        scores = self._forward(xb, True)
        loss = self.loss_layer.forward(scores, tb, check_labels=check_labels)
        correct = self._count_correct(scores, tb)
        self._backward()
        self.optimizer.update(self.params, self.grads, backend=self.backend)
        return loss, correct

    def fit(
        self,
        x: Any,
        t: Any,
        batch_size: int = 32,
        epochs: int = 1,
        optimizer: Any = None,
        validation_data: tuple[Any, Any] | None = None,
        shuffle: bool = True,
        seed: int | None = None,
        verbose: int = 1,
        *,
        sampling: str = "epoch",
        drop_last: bool = False,
        initial_epoch: int | None = None,
        loss_every: int | None = None,
        on_nonfinite: str = "raise",
        checkpoint: str | None = None,
        eval_batch_size: int = 500,
        data_on_device: bool = False,
        prefetch: bool = False,
        callbacks: list | None = None,
    ) -> History:
        """Train for ``epochs`` epochs; returns a :class:`History`.

        Args:
            x, t: training samples (N, ...) and labels (N,) or one-hot (N, K); NumPy arrays
                on any backend (moved one batch at a time).
            batch_size: samples per iteration (see the module docstring for the rules).
            epochs: the epoch to stop at (as in Keras, counted from 0 with ``initial_epoch``).
            optimizer: an optimizer object or name; default: the model's current one, else SGD(0.01).
            validation_data: ``(x_val, t_val)`` evaluated after every epoch.
            shuffle, sampling, drop_last: batching (module docstring).
            seed: seed of shuffling and dropout; the same seed repeats a CPU run exactly.
            verbose: 0 silent, 1 progress bar and a line per epoch, 2 the line only.
            initial_epoch: epoch to start from when resuming (default: ``model.epoch``).
            loss_every: fetch the loss to the host every k iterations (default 1 on a CPU
                backend, 20 on a GPU, where each fetch is a synchronisation).
            on_nonfinite: ``"raise"`` (stop with NonFiniteLossError naming the epoch and
                iteration), ``"warn"`` or ``"ignore"`` to keep going.
            checkpoint: a path: ``save`` the model there after every epoch.
            eval_batch_size: batch size of the validation pass.
            data_on_device: copy the whole training set to the device once and index
                batches there (no per-batch host→device copy; a no-op on CPU backends).
            prefetch: copy batch i+1 to the device while batch i computes (GPU backends;
                a no-op on CPU backends).
            callbacks: callables ``f(model, epoch, logs)`` run after each epoch.
        """
        from .memory import translate_out_of_memory
        from .optimizers import SGD, get_optimizer

        if on_nonfinite not in ("raise", "warn", "ignore"):
            raise ValueError(f"on_nonfinite must be 'raise', 'warn' or 'ignore', got {on_nonfinite!r}")
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
            raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}")
        x, t = self._prepare(x, t)
        n = len(x)
        batch_size = check_batch_size(batch_size, n)
        if optimizer is not None:
            self.optimizer = get_optimizer(optimizer)
        elif self.optimizer is None:
            self.optimizer = SGD(lr=0.01)
        start = self.epoch if initial_epoch is None else int(initial_epoch)
        if seed is None:
            seed = self.train_seed if self.train_seed is not None else int(np.random.SeedSequence().entropy % 2**63)
        self.train_seed = int(seed)
        loss_every = loss_every or (20 if self.backend.is_gpu else 1)
        source = _BatchSource(self, x, t, data_on_device=data_on_device, prefetch=prefetch)
        history = self.history = History()
        history.params = {
            "batch_size": batch_size,
            "epochs": epochs,
            "initial_epoch": start,
            "samples": n,
            "seed": self.train_seed,
            "sampling": sampling,
            "optimizer": repr(self.optimizer),
            "backend": self.backend.name,
        }

        for epoch in range(start, epochs):
            rng = _epoch_rng(self.train_seed, epoch)
            self._seed_dropout_for_epoch(epoch)
            batches = epoch_batches(n, batch_size, rng, shuffle=shuffle, sampling=sampling, drop_last=drop_last)
            history.params["iterations_per_epoch"] = len(batches)
            with translate_out_of_memory(self, batch_size, "fit"):
                logs = self._run_epoch(epoch, epochs, batches, source, history, loss_every, on_nonfinite, verbose)
            if validation_data is not None:
                t0 = time.perf_counter()
                logs["val_loss"], logs["val_accuracy"] = self.evaluate(*validation_data, batch_size=eval_batch_size)
                logs["val_time"] = time.perf_counter() - t0
            history._append(epoch, logs)
            self.epoch = epoch + 1
            if verbose:
                print(f"Epoch {epoch + 1}/{epochs} - {_fmt(logs)}", flush=True)
            if checkpoint is not None:
                self.save(checkpoint)
            for callback in callbacks or ():
                callback(self, epoch, logs)
        return history

    def _seed_dropout_for_epoch(self, epoch: int) -> None:
        from .layers import Dropout

        for i, layer in enumerate(self.layers):
            if isinstance(layer, Dropout):
                layer.reseed(int(np.random.SeedSequence([self.train_seed, epoch, i]).generate_state(1)[0]))

    def _run_epoch(self, epoch, epochs, batches, source, history, loss_every, on_nonfinite, verbose) -> dict:
        from tqdm.auto import tqdm

        xp = self.backend.xp
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
            losses = self.backend.to_numpy(xp.stack([p[1] for p in pending]))
            corrects = self.backend.to_numpy(xp.stack([p[2] for p in pending]))
            for (it, _, _, size), value, right in zip(pending, losses, corrects):
                value = float(value)
                if not math.isfinite(value):
                    first, last = pending[0][0] + 1, pending[-1][0] + 1
                    where = f"iteration {it + 1}"
                    if last > first:
                        where += f" (loss fetched for iterations {first}-{last})"
                    message = (
                        f"loss is {value} at epoch {epoch + 1}, {where}; "
                        f"lower the learning rate or check the inputs (fit(on_nonfinite='ignore') keeps going)"
                    )
                    if on_nonfinite == "raise":
                        raise NonFiniteLossError(message)
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
                loss, correct = self._train_step(xb, tb)
                pending.append((it, loss, correct, int(xb.shape[0])))
                if len(pending) >= loss_every:
                    flush()
            if pending:
                flush()
            self.backend.synchronize()
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

    def evaluate(self, x: Any, t: Any, batch_size: int = 100) -> tuple[float, float]:
        """Mean loss and accuracy over (x, t), ``batch_size`` samples at a time: ``(loss, accuracy)``."""
        from .memory import translate_out_of_memory

        batch_size = check_batch_size(batch_size)
        x, t = self._prepare(x, t)
        total_loss, total_correct = None, None
        n = len(x)
        with translate_out_of_memory(self, min(batch_size, n), "evaluate", training=False):
            for i in range(0, n, batch_size):
                xb, tb = self._as_input(x[i : i + batch_size]), self._as_target(t[i : i + batch_size])
                scores = self._forward(xb, False)
                loss = self.loss_layer.forward(scores, tb, check_labels=False) * xb.shape[0]
                correct = self._count_correct(scores, tb)
                total_loss = loss if total_loss is None else total_loss + loss
                total_correct = correct if total_correct is None else total_correct + correct
        self.loss_layer._clear_cache()
        return float(total_loss) / n, float(total_correct) / n


class _BatchSource:
    """Gives the model its batches: host slices moved one at a time (default), the whole
    set moved to the device once (``data_on_device``), or pinned copies overlapped with
    compute on a second stream (``prefetch``, CuPy only)."""

    def __init__(self, model: Any, x: Any, t: Any, *, data_on_device: bool, prefetch: bool) -> None:
        self.model = model
        backend = model.backend
        self.on_device = data_on_device and backend.is_gpu
        self.prefetch = prefetch and backend.is_gpu and not self.on_device
        if self.on_device:
            x, t = model._as_input(x), model._as_target(t)
        self.x, self.t = x, t

    def _take(self, idx: np.ndarray) -> tuple[Array, Array]:
        model = self.model
        if self.on_device:
            xp = model.backend.xp
            index = model.backend.asarray(idx)
            return xp.take(self.x, index, axis=0), xp.take(self.t, index, axis=0)
        return model._as_input(self.x[idx]), model._as_target(self.t[idx])

    def batches(self, batches: list[np.ndarray]):
        if self.prefetch:
            from .prefetch import prefetch_batches

            yield from prefetch_batches(self.model, self.x, self.t, batches)
            return
        for idx in batches:
            yield self._take(idx)
