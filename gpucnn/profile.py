"""What one training step costs on a backend, counted: ``gpucnn profile``.

:func:`profile_step` runs what ``fit`` runs for one batch (the batch moved to the device,
then :meth:`gpucnn.Sequential.train_step`) a few times and keeps the counts of the last,
steady-state step, where the optimizer state exists already. The loss and the count of
right answers stay on the device in such a step; ``fit`` fetches them every
``loss_every`` steps (20 on a GPU), and that fetch is counted on its own.

The counts come from reading the calls, not from a device (see
:func:`gpucnn.kernels.cuda_set.counting`): our kernel launches, the GEMMs, the array
namespace's kernels as CuPy runs them (:data:`gpucnn.kernels.emu.NAMESPACE_OPERATIONS` says
how each call maps: ``argmax`` then ``==`` then ``sum`` is three), memsets, host↔device
copies and their bytes, host syncs and new device arrays. They are counted on the
``cuda-emu`` backend, whose arrays count their operations and which runs the very code
path of the ``cupy`` backend (the same kernel set, the same layers); time per operation
needs a GPU and is not reported.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import numpy as np

from .backend import Backend, get_backend, use_backend
from .kernels.cuda_set import OPERATION_KINDS, DeviceWork, counting
from .kernels.emu import DeviceArray
from .models import MODELS, build_model
from .optimizers import get_optimizer
from .training import BatchSource

__all__ = ["StepProfile", "profile_step"]

# Steps run before the one counted: the first creates the optimizer state.
WARMUP_STEPS = 2


@dataclass
class StepProfile:
    """The counts of one steady-state ``fit`` step (``step``) and of one loss fetch
    (``loss_fetch``, for ``loss_every`` steps' losses and right answers)."""

    model: str
    backend: str
    batch_size: int
    optimizer: str
    loss_every: int
    step: DeviceWork
    loss_fetch: DeviceWork

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict: the step's counts at the top level, the fetch's under ``loss_fetch``."""
        return {
            "model": self.model,
            "backend": self.backend,
            "batch_size": self.batch_size,
            "optimizer": self.optimizer,
            "counted": "by reading the calls on cuda-emu, not measured",
            **_work_dict(self.step),
            "loss_fetch": {"every_steps": self.loss_every, **_work_dict(self.loss_fetch)},
        }

    def format(self) -> str:
        """The report ``gpucnn profile`` prints."""
        lines = [
            f"one fit step of {self.model}, batch {self.batch_size}, {self.optimizer}, on {self.backend} "
            "(counted by reading the calls, not measured)",
            *_work_lines(self.step),
            "",
            f"the loss fetch, once per {self.loss_every} steps:",
            *_work_lines(self.loss_fetch),
            "",
            "device operations of the step by name:",
            *(f"  {count:4d}  {name}" for name, count in sorted(self.step.by_name.items())),
        ]
        return "\n".join(lines)


def _work_dict(work: DeviceWork) -> dict[str, Any]:
    return {
        "device_operations": work.device_operations,
        "operations": dict(work.operations),
        "host_syncs": work.host_syncs,
        "allocations": work.allocations,
        "bytes_to_device": work.bytes_to_device,
        "bytes_to_host": work.bytes_to_host,
        "by_name": dict(sorted(work.by_name.items())),
    }


def _work_lines(work: DeviceWork) -> list[str]:
    kinds = ", ".join(f"{work.operations[kind]} {kind}" for kind in OPERATION_KINDS)
    return [
        f"  device operations  {work.device_operations} ({kinds})",
        f"  host syncs         {work.host_syncs}",
        f"  allocations        {work.allocations}",
        f"  host→device bytes  {work.bytes_to_device:,}",
        f"  device→host bytes  {work.bytes_to_host:,}",
    ]


def profile_step(
    model: str,
    batch_size: int = 100,
    *,
    backend: str | Backend = "cuda-emu",
    optimizer: str = "adagrad",
    loss_every: int = 20,
    seed: int = 0,
) -> StepProfile:
    """Count one steady-state ``fit`` step of the model ``model`` (a name of
    :data:`gpucnn.models.MODELS`, with its default input shape and 10 classes) on ``backend``.

    Only a backend whose arrays count their operations can be profiled: ``cuda-emu``
    (``ValueError`` for another). The data are random samples and labels, drawn with ``seed``.
    """
    target = get_backend(backend)
    if target.array_type is not DeviceArray:
        raise ValueError(
            f"backend {target.name!r} cannot be profiled: the counts come from the arrays of 'cuda-emu', which runs "
            "the cupy backend's code path on the CPU (gpucnn profile --backend cuda-emu)"
        )
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; models: {', '.join(MODELS)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    input_shape = tuple(inspect.signature(MODELS[model]).parameters["input_shape"].default)
    with use_backend(target):
        net = build_model(model, input_shape, 10, seed=seed)
    net.optimizer = get_optimizer(optimizer)
    classes = net.num_classes
    rng = np.random.default_rng(seed)
    x = rng.random((batch_size, *input_shape), dtype=np.float32).astype(net.np_dtype)
    t = rng.integers(0, classes, batch_size) if classes > 2 else rng.integers(0, 2, batch_size).astype(net.np_dtype)
    x, t = net.prepare(x, t)  # as fit prepares them: labels become int32 once, on the host
    source = BatchSource(net, x, t, data_on_device=False, prefetch=False)
    index = np.arange(batch_size)
    results = []
    for _ in range(WARMUP_STEPS + 1):
        with counting() as step:
            (xb, tb), *_ = source.batches([index])
            results.append(net.train_step(xb, tb))
    xp = target.xp
    pending = (results * loss_every)[:loss_every]
    with counting() as fetch:  # what run_epoch's flush does with loss_every steps' results
        target.to_numpy(xp.stack([loss for loss, _ in pending]))
        target.to_numpy(xp.stack([correct for _, correct in pending]))
    return StepProfile(model, target.name, batch_size, repr(net.optimizer), loss_every, step, fetch)
