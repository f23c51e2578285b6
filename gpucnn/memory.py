"""How much memory a model needs at a given batch size, and what to do when it runs out.

The memory model
----------------
One training step (forward, backward, optimizer update) holds, at its peak:

* **parameters**, their **gradients** and the **optimizer state** (one array per
  parameter for Momentum, AdaGrad and RMSprop, two for Adam): independent of N;
* the **input batch** (N samples in the model's dtype, plus the labels);
* the **activations** every layer keeps from forward to backward: for each convolution,
  im2col's columns (N*OH*OW, C*KH*KW), or its input where the kernel set passes through
  im2col in blocks of images (the kernel set's ``conv_block_bytes``); argmax
  arrays of max pooling (int32), ReLU masks (one byte per element), dropout scales, the
  inputs kept by Affine layers (through views such as Flatten's), the loss layer's
  probabilities and one-hot targets;
* the **workspace** of the most demanding single layer: the arrays alive only while that
  layer runs, such as a convolution's GEMM output before it becomes NCHW, or in backward
  the incoming gradient, ``dcol`` (as large as the columns, or one block's) and the input
  gradient (the optimizer update counts as a layer whose workspace is two of the largest
  parameter).

Each step of the model (a layer, or a fused step of :mod:`gpucnn.fused`) answers its own
terms: ``step.memory(batch_size, itemsize, training)`` returns a
:class:`gpucnn.layers.MemoryTerms`; a step that does not define it makes the estimate
raise instead of guess. This module adds the terms up.

Every term but the first grows with N: linearly, except one block's columns, which stop
growing at the block's size. The largest batch that fits a budget is found by bisection
over the estimate (:func:`max_batch_size`). A kernel set may also cap N whatever the memory:
the CUDA kernels (backends ``cupy`` and ``cuda-emu``) index with 32-bit ints and refuse an
array of more than 2**31 - 1 elements, so the largest array a layer hands to them (its
input, its output or its im2col columns, whichever is largest per sample) bounds the batch
(:func:`kernel_batch_limit`). The NumPy and Numba sets index with 64-bit integers and set
no such cap. The layers keep their caches after a step and
replace them one layer at a time in the next, so in a loop of steps the running layer's
old cache is alive beside its new one: the model counts it in that layer's workspace;
but a Winograd convolution lets its transformed input go before its forward makes the new
one, and in training a convolution whose input needs a gradient lets its im2col columns go
before its backward makes ``dcol``, which then takes their place.
Inference (``predict``, ``evaluate``) holds the same caches (layers cache in either
mode) but no gradients and no backward workspace.

The model is an estimate in bytes of array data: the allocator's rounding (CuPy pools
round to 512 bytes), BLAS workspaces and Python objects come on top. ``tests/test_memory.py``
compares it with traced host allocations.

Running out
-----------
:func:`translate_out_of_memory` wraps the batch loops of ``fit``, ``evaluate`` and
``predict``: an allocator error there (NumPy's ``MemoryError``, CuPy's
``OutOfMemoryError`` or a CUDA/cuBLAS allocation failure) becomes
:class:`OutOfMemoryError`, which names the batch size, the estimate, the free memory
and a batch size that fits.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import traceback
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .backend import Backend, get_backend
from .layers import Step
from .machine import meminfo_bytes

__all__ = [
    "MemoryEstimate",
    "OutOfMemoryError",
    "estimate_memory",
    "format_bytes",
    "is_out_of_memory",
    "kernel_batch_limit",
    "max_batch_size",
    "measure_peak_bytes",
    "training_step_peak",
    "translate_out_of_memory",
]

_LABEL_BYTES = 8  # integer labels as NumPy reads them (int64 after indexing)


def format_bytes(n: float) -> str:
    """``1536`` → ``'1.5 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # the loop always returns


@dataclass
class LayerMemory:
    """One step of the model (a layer, or a fused Convolution-ReLU-MaxPooling) at batch N.

    Attributes:
        name: the layer's name (``"convolution1+relu1+max_pooling1"`` for a fused step).
        activations: bytes kept from forward to backward (im2col columns included).
        im2col: the part of ``activations`` that is im2col's columns.
        workspace: bytes alive only while this step runs (peak of its forward or backward).
        released: the part of ``activations`` that the step's backward lets go (in
            training): not alive while the steps before it run.
    """

    name: str
    activations: int
    im2col: int
    workspace: int
    released: int = 0


@dataclass
class MemoryEstimate:
    """The memory model's answer for one model, batch size and mode (bytes).

    ``total`` is the peak of one step: every fixed term, the inputs, every layer's
    activations and the largest single workspace, less the activations that the steps after
    that one have let go by then (``LayerMemory.released``).
    """

    batch_size: int
    training: bool
    params: int
    grads: int
    optimizer_state: int
    inputs: int
    layers: list[LayerMemory] = field(default_factory=list)

    @property
    def activations(self) -> int:
        return sum(layer.activations for layer in self.layers)

    @property
    def im2col(self) -> int:
        return sum(layer.im2col for layer in self.layers)

    @property
    def workspace(self) -> int:
        """The largest workspace, less what the steps after its own have released."""
        largest, released_after = 0, 0
        for layer in reversed(self.layers):
            largest = max(largest, layer.workspace - released_after)
            released_after += layer.released
        return largest

    @property
    def fixed(self) -> int:
        """Bytes that do not depend on the batch size."""
        return self.params + self.grads + self.optimizer_state

    @property
    def total(self) -> int:
        return self.fixed + self.inputs + self.activations + self.workspace

    def table(self) -> str:
        """A readable breakdown, one line per layer."""
        mode = "training step" if self.training else "inference"
        lines = [
            f"{mode} at batch {self.batch_size}: {format_bytes(self.total)}",
            f"  parameters {format_bytes(self.params)}, gradients {format_bytes(self.grads)}, "
            f"optimizer state {format_bytes(self.optimizer_state)}, inputs {format_bytes(self.inputs)}",
            f"  {'layer':<40} {'activations':>12} {'(im2col)':>12} {'workspace':>12}",
        ]
        for layer in self.layers:
            lines.append(
                f"  {layer.name:<40} {format_bytes(layer.activations):>12} "
                f"{format_bytes(layer.im2col):>12} {format_bytes(layer.workspace):>12}"
            )
        return "\n".join(lines)


def _optimizer_slots(optimizer: Any) -> int:
    """Arrays of state per parameter (0 for SGD or no optimizer, 2 for Adam)."""
    return len(getattr(optimizer, "state_names", ())) if optimizer is not None else 0


def _step_memory(step: Step, n: int, itemsize: int, keeps_output: bool, training: bool) -> tuple[LayerMemory, bool]:
    """Memory of one step at batch ``n`` and whether the step keeps its *input* alive.

    ``keeps_output``: whether a later step holds on to this step's output array.
    The step's terms follow the NumPy kernel set, the most generous one.
    """
    terms = step.memory(n, itemsize, training)
    name = "+".join(str(layer.name) for layer in step.layers)
    kept, keeps_input = terms.kept, terms.keeps_input
    # A layer replaces its caches only after computing new ones, so in a loop of steps the
    # previous step's cache of the running step is alive during its forward, but for what
    # it lets go first.
    work_forward = terms.forward + kept - terms.dropped - (terms.released if training else 0)
    if terms.view:  # the output is the input: whoever keeps the one keeps the other
        keeps_input, keeps_output = keeps_output, False
    if keeps_output and not terms.output_in_cache:  # a later step holds the output: count it as kept
        kept += terms.output
        work_forward = max(work_forward - terms.output, 0)
    # Backward holds the incoming gradient (output-sized) while it builds its own arrays.
    workspace = max(work_forward, terms.output + terms.backward) if training else work_forward
    return LayerMemory(name, kept, terms.columns, workspace, terms.released if training else 0), keeps_input


def estimate_memory(
    model: Any,
    batch_size: int,
    *,
    training: bool = True,
    optimizer: Any = None,
    input_shape: Sequence[int] | None = None,
) -> MemoryEstimate:
    """The memory model (module docstring) for ``model`` at ``batch_size``.

    Args:
        model: a :class:`gpucnn.Sequential` (what is used: ``steps``, ``layers``,
            ``loss_layer``, ``np_dtype``, ``optimizer``, ``input_shape``, ``built`` and
            ``build``); built from ``input_shape`` if it is not yet.
        batch_size: samples per step.
        training: a training step (True) or inference (False).
        optimizer: the optimizer whose state counts (default: the model's, else none).
        input_shape: one sample's shape, for an unbuilt model.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    _ensure_built(model, input_shape)
    n = int(batch_size)
    itemsize = model.np_dtype.itemsize
    param_bytes = sum(layer.count_params() for layer in model.layers) * itemsize
    optimizer = optimizer if optimizer is not None else model.optimizer
    rows: list[LayerMemory] = []
    keeps_output = True  # the scores stay referenced until the step ends
    for step in reversed(model.steps):
        row, keeps_input = _step_memory(step, n, itemsize, keeps_output, training)
        rows.append(row)
        keeps_output = keeps_input
    rows.reverse()
    rows.append(_step_memory(model.loss_layer, n, itemsize, False, training)[0])
    if training:  # the update's temporaries (the NumPy set: about two of the largest parameter)
        largest = max((math.prod(p.shape) for layer in model.layers for p in layer.params.values()), default=0)
        rows.append(LayerMemory("optimizer update", 0, 0, 2 * largest * itemsize))
    inputs = n * (math.prod(model.input_shape) * itemsize + _LABEL_BYTES)
    return MemoryEstimate(
        batch_size=n,
        training=training,
        params=param_bytes,
        grads=param_bytes if training else 0,
        optimizer_state=param_bytes * _optimizer_slots(optimizer) if training else 0,
        inputs=inputs,
        layers=rows,
    )


def _ensure_built(model: Any, input_shape: Sequence[int] | None) -> None:
    if model.built:
        if input_shape is not None and tuple(input_shape) != tuple(model.input_shape):
            raise ValueError(f"input_shape {tuple(input_shape)} differs from the model's {tuple(model.input_shape)}")
        return
    if input_shape is None:
        raise ValueError("the model is not built yet: pass input_shape (one sample's shape, e.g. (1, 28, 28))")
    model.build(tuple(input_shape))


def max_batch_size(
    model: Any,
    budget_bytes: float,
    input_shape: Sequence[int] | None = None,
    *,
    training: bool = True,
    optimizer: Any = None,
) -> int:
    """The largest batch size whose estimated peak (:func:`estimate_memory`) fits ``budget_bytes``.

    Returns 0 when not even one sample fits beside the parameters, gradients and
    optimizer state. The estimate grows with the batch size (linearly but for the
    convolutions' column blocks), so doubling and then bisecting finds the exact
    answer for the model. It never exceeds :func:`kernel_batch_limit`, the largest
    batch the model's kernel set can run at all.
    """
    if not budget_bytes >= 0:
        raise ValueError(f"budget_bytes must be >= 0, got {budget_bytes!r}")

    def fits(n: int) -> bool:
        return estimate_memory(model, n, training=training, optimizer=optimizer).total <= budget_bytes

    if estimate_memory(model, 1, training=training, optimizer=optimizer, input_shape=input_shape).total > budget_bytes:
        return 0
    limit = kernel_batch_limit(model)
    if limit == 0:
        return 0
    low, high = 1, 2  # fits(low); high is the first power of two that does not fit, or the limit
    while (limit is None or high <= limit) and fits(high):
        low, high = high, 2 * high
    if limit is not None:
        high = min(high, limit + 1)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


def kernel_batch_limit(model: Any, input_shape: Sequence[int] | None = None) -> int | None:
    """The largest batch size whose every kernel call stays within the kernel set's array
    limit, or None when the model's kernel set has none (NumPy, Numba).

    The CUDA set (``kernels.max_array_elements``, 2**31 - 1) refuses any larger array. Each
    layer's largest array per sample is the most of its input, its output and its im2col
    columns: every array a kernel sees is one of them or of their size (dcol, dx, argmax,
    the GEMM rows of a fused step, which are the convolution's output). A layer that runs
    no kernel is counted too, which can only lower the cap, by its input or output. 0 when
    a parameter alone is too large for the optimizer's kernels.
    """
    limit = model.backend.kernels.max_array_elements
    if limit is None:
        return None
    _ensure_built(model, input_shape)
    if any(math.prod(p.shape) > limit for layer in model.layers for p in layer.params.values()):
        return 0
    per_sample = max(_largest_array_per_sample(layer) for layer in [*model.layers, model.loss_layer])
    return int(limit) // per_sample


def _largest_array_per_sample(layer: Any) -> int:
    """Elements per sample of the largest of the layer's input, output and im2col columns."""
    columns = layer.memory(1, 1, True).columns  # at itemsize 1, bytes are elements
    return max(math.prod(layer.input_shape), math.prod(layer.output_shape), columns)


# -- measuring ---------------------------------------------------------------------


def measure_peak_bytes(backend: Backend, fn: Callable[[], Any]) -> int:
    """Peak bytes allocated while ``fn()`` runs, above what was allocated before it.

    Host backends: ``tracemalloc`` (NumPy reports its array buffers to it). CuPy: the
    default memory pool, emptied of cached blocks first, so that its size after ``fn``
    is the high-water mark of ``fn``'s arrays (blocks freed during ``fn`` stay cached).
    """
    if backend.is_gpu:
        import cupy

        pool = cupy.get_default_memory_pool()
        backend.synchronize()
        pool.free_all_blocks()
        before = pool.used_bytes()
        fn()
        backend.synchronize()
        return int(pool.total_bytes() - before)
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        if started:
            tracemalloc.stop()
    return int(peak - before)


def training_step_peak(build: Callable[[], Any], x: np.ndarray, t: np.ndarray) -> int:
    """Peak bytes of a short training loop at ``len(x)`` samples per batch, from nothing.

    ``build()`` returns a model with its optimizer set, on the current backend; the
    model, the batch on the device and two training steps (the second one replaces the
    first one's caches, which is the steady state of ``fit``) all run while traced, so
    the result compares with :func:`estimate_memory`'s ``total``.
    """

    def run() -> None:
        model = build()
        xb, tb = model.as_input(x), model.as_target(t)
        for _ in range(2):
            model.train_step(xb, tb)

    return measure_peak_bytes(get_backend(), run)


# -- running out of memory ------------------------------------------------------------


class OutOfMemoryError(MemoryError):
    """A batch did not fit in memory; the message suggests a batch size that does.

    Attributes:
        batch_size: the batch size that failed.
        suggested_batch_size: one that fits by the memory model and the free memory
            (0 when not even one sample does).
        needed_bytes: the memory model's estimate at ``batch_size``.
        available_bytes: the memory free for this model's batches when the error was raised.
    """

    def __init__(
        self,
        message: str,
        *,
        batch_size: int,
        suggested_batch_size: int,
        needed_bytes: int,
        available_bytes: int | None,
    ) -> None:
        super().__init__(message)
        self.batch_size = batch_size
        self.suggested_batch_size = suggested_batch_size
        self.needed_bytes = needed_bytes
        self.available_bytes = available_bytes


# Allocation failures that CUDA libraries report with their own exception types.
_CUDA_ERROR_TYPES = {"CUDARuntimeError", "CUDADriverError", "CUBLASError", "CUDNNError", "CUSOLVERError"}
_CUDA_OOM_WORDS = ("out of memory", "OUT_OF_MEMORY", "MemoryAllocation", "ALLOC_FAILED")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocator's out-of-memory error (host or device)."""
    if isinstance(exc, OutOfMemoryError):
        return False  # already translated
    if isinstance(exc, MemoryError):  # NumPy, and CuPy's OutOfMemoryError subclasses it
        return True
    return type(exc).__name__ in _CUDA_ERROR_TYPES and any(word in str(exc) for word in _CUDA_OOM_WORDS)


def _host_available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else free physical pages, else None."""
    available = meminfo_bytes("MemAvailable")
    if available is not None:
        return available
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _available_bytes(backend: Backend) -> int | None:
    """Memory this process could still allocate on the backend's device."""
    info = backend.memory_info()
    if "device_free" in info:
        return int(info["device_free"] + info.get("pool_total", 0) - info.get("used", 0))
    return _host_available_bytes()


def _free_failed_step(model: Any, exc: BaseException) -> None:
    """Drop what the failed batch left behind (layer caches, locals of finished frames)
    so that the free memory measured next is what the next attempt will find."""
    traceback.clear_frames(exc.__traceback__)
    model.clear_cache()
    gc.collect()


@contextlib.contextmanager
def translate_out_of_memory(model: Any, batch_size: int, what: str, *, training: bool = True) -> Iterator[None]:
    """Turn an allocator's out-of-memory error inside the block into :class:`OutOfMemoryError`.

    Args:
        model: the model running the batches.
        batch_size: the batch size in use (named in the message).
        what: ``"fit"``, ``"evaluate"`` or ``"predict"`` (named in the message).
        training: whether the batches are training steps (for the memory model).
    """
    try:
        yield
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        _free_failed_step(model, exc)
        raise _explain(model, batch_size, what, training, exc) from exc


def _explain(model: Any, batch_size: int, what: str, training: bool, exc: BaseException) -> OutOfMemoryError:
    backend = model.backend
    where = f"{what} with batch_size={batch_size} on backend {backend.name!r}"
    needed, suggestion, available = 0, 0, None
    try:
        estimate = estimate_memory(model, batch_size, training=training)
        needed = estimate.total
        available = _available_bytes(backend)
    except Exception:  # an unbuilt or unusual model: still give the plain message
        estimate = None

    def option(size: int) -> str:
        return f"predict(x, batch_size={size})" if what == "predict" else f"batch_size={size}"

    if estimate is None or available is None:
        suggestion = max(batch_size // 2, 0)
        advice = f"try {option(suggestion)}" if suggestion else "reduce the model or free memory"
        message = f"out of memory in {where}; {advice}"
    else:
        # The parameters, gradients and optimizer state are already allocated: the budget
        # of a whole step is what is free plus them, less a margin for the allocator.
        budget = 0.9 * available + estimate.fixed
        suggestion = max_batch_size(model, budget, training=training)
        if suggestion >= batch_size:  # the estimate thought it fits: halve instead
            suggestion = batch_size // 2
        head = (
            f"out of memory in {where}: the memory model puts one "
            f"{'training step' if training else 'inference batch'} at {format_bytes(needed)} "
            f"and {format_bytes(available)} is free"
        )
        if suggestion >= 1:
            message = (
                f"{head}; {option(suggestion)} should fit "
                f"(gpucnn.max_batch_size(model, budget_bytes) estimates it for any budget)"
            )
        else:
            message = (
                f"{head}; not even batch_size=1 fits: the parameters, gradients and optimizer state "
                f"alone need {format_bytes(estimate.fixed)}"
            )
    message += f". The allocator said: {type(exc).__name__}: {exc}"
    return OutOfMemoryError(
        message, batch_size=batch_size, suggested_batch_size=suggestion, needed_bytes=needed, available_bytes=available
    )
