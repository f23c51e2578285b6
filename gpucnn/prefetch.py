"""Overlapping host→device copies with compute on a CuPy backend (``fit(prefetch=True)``).

Two slots, each a pinned host buffer and a device buffer big enough for the largest
batch. While the compute stream trains on batch i (slot i % 2), the host gathers batch
i+1 into the other slot's pinned buffer and a second, non-blocking stream copies it to
the device. Two CUDA events per slot keep the slots safe:

* ``copied`` (recorded on the copy stream): the compute stream waits on it before it
  reads the batch, and the host waits on it before it overwrites the pinned buffer;
* ``released`` (recorded on the compute stream after the step that used the slot was
  queued): the copy stream waits on it before it overwrites the device buffer.

What this buys over ``cupy.asarray(x[idx])`` per batch (the default): not an asynchronous
copy as such, since ``cupy.asarray`` of a NumPy array already returns before the copy
ends (CuPy 13 and 14 copy the array into a pinned staging buffer of their own on the host,
then queue the host→device copy on the current stream). Two things differ. That copy is
queued on the compute stream, so the device runs it between two steps instead of during
one; here it runs on its own stream, beside the step. And the batch is gathered straight
into the pinned buffer, not gathered and then copied once more into CuPy's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = ["prefetch_batches"]


class _Slot:
    """One pinned host buffer and one device buffer for ``x`` and ``t``, with their events."""

    def __init__(self, rows: int, x_shape: tuple, x_dtype: np.dtype, t_shape: tuple, t_dtype: np.dtype) -> None:
        import cupy
        import cupyx

        self.host_x = cupyx.empty_pinned((rows, *x_shape), dtype=x_dtype)
        self.host_t = cupyx.empty_pinned((rows, *t_shape), dtype=t_dtype)
        self.dev_x = cupy.empty((rows, *x_shape), dtype=x_dtype)
        self.dev_t = cupy.empty((rows, *t_shape), dtype=t_dtype)
        self.copied = cupy.cuda.Event(disable_timing=True)
        self.released = cupy.cuda.Event(disable_timing=True)


def prefetch_batches(model: Any, x: np.ndarray, t: np.ndarray, batches: list[np.ndarray]) -> Iterator[tuple[Any, Any]]:
    """Yield ``(x_batch, t_batch)`` device arrays for each index array in ``batches``.

    Args:
        model: a model on a CuPy backend: its ``np_dtype`` is the device dtype of ``x``, and
            ``as_input`` / ``as_target`` move data that is already on the device.
        x: host samples (N, ...) already in the model's dtype; t: host labels (N,) or (N, K).
        batches: index arrays, one per batch.

    The yielded arrays are views of reused buffers: work the consumer queues on the
    compute stream before it asks for the next batch sees this batch (the buffer is
    refilled only after that work), which is all a training step needs; keep a copy to
    hold on to a batch any longer.
    """
    import cupy

    if not batches:
        return
    if not (isinstance(x, np.ndarray) and isinstance(t, np.ndarray)):  # already on the device: nothing to copy
        for idx in batches:
            yield model.as_input(x[idx]), model.as_target(t[idx])
        return
    x_dtype = model.np_dtype
    t_dtype = t.dtype if t.dtype.kind in "iub" else x_dtype  # as model.as_target casts
    rows = max(len(idx) for idx in batches)
    slots = [_Slot(rows, x.shape[1:], x_dtype, t.shape[1:], t_dtype) for _ in range(2)]
    compute = cupy.cuda.get_current_stream()
    copier = cupy.cuda.Stream(non_blocking=True)

    def stage(i: int) -> None:
        """Gather batch i into its slot's pinned buffer and start its copy to the device."""
        slot, idx = slots[i % 2], batches[i]
        n = len(idx)
        slot.copied.synchronize()  # the slot's previous copy has left the pinned buffer
        # The indices come from the epoch's batches, always in range; mode="clip" lets
        # NumPy gather straight into the pinned buffer (mode="raise" goes through a copy).
        np.take(x, idx, axis=0, out=slot.host_x[:n], mode="clip")
        slot.host_t[:n] = t[idx]
        copier.wait_event(slot.released)  # the step that last read this device buffer is done
        slot.dev_x[:n].set(slot.host_x[:n], stream=copier)
        slot.dev_t[:n].set(slot.host_t[:n], stream=copier)
        slot.copied.record(copier)

    try:
        stage(0)
        for i in range(len(batches)):
            if i + 1 < len(batches):
                stage(i + 1)  # overlaps with the step on batch i queued below
            slot, n = slots[i % 2], len(batches[i])
            compute.wait_event(slot.copied)
            yield slot.dev_x[:n], slot.dev_t[:n]
            slot.released.record(compute)
    finally:
        copier.synchronize()  # no copy may still read a pinned buffer when it is freed
