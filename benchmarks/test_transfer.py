"""Host→device transfer overhead per batch size (GPU backends; skipped elsewhere with the reason).

* ``test_h2d_copy``: one batch copied host→device from pageable and from pinned memory:
  the achieved GB/s.
* ``test_epoch``: one training epoch of ``fit`` on a synthetic set in three modes:
  ``pageable`` (the default: each batch sliced on the host and copied), ``prefetch``
  (``fit(prefetch=True)``: pinned buffers, batch i+1 copied on a second stream while
  batch i computes) and ``on_device`` (``fit(data_on_device=True)``: one copy of the
  whole set, batches indexed on the device; that copy is timed apart as ``copy_s``).
  The report turns the three epoch times into the share of an epoch spent copying
  (:func:`benchmarks.report.transfer_shares`).

Every case is marked ``gpu``: ``python -m benchmarks.gpu_check`` runs them (once, untimed),
so the transfer paths, ``prefetch`` included, run on every GPU check.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

import gpucnn
from gpucnn.memory import estimate_memory
from gpucnn.models import build_model
from gpucnn.optimizers import AdaGrad

from .report import bench_batch_sizes

INPUT_SHAPE = (1, 28, 28)
CLASSES = 10
MODELS = ("simple_convnet", "mnist_cnn")
MODES = ("pageable", "prefetch", "on_device")
SAMPLE_BYTES = int(np.prod(INPUT_SHAPE)) * 4 + 8  # one float32 image and its int64 label
SAMPLES = 2_000 if bench_batch_sizes() == bench_batch_sizes(spec="small") else 10_240
GPU_BACKENDS = [name for name in gpucnn.available_backends() if gpucnn.get_backend(name).is_gpu]
pytestmark = pytest.mark.gpu

NO_GPU = pytest.mark.skip(
    reason="no usable GPU backend (CuPy with a CUDA device): host→device transfers are measured on GPUs only"
)


def copy_cases() -> list:
    if not GPU_BACKENDS:
        return [pytest.param(None, None, 1, id="no-gpu", marks=NO_GPU)]
    return [
        pytest.param(backend, memory, batch, id=f"{backend}-{memory}-b{batch}")
        for backend in GPU_BACKENDS
        for memory in ("pageable", "pinned")
        for batch in bench_batch_sizes(gpu=True)
    ]


def epoch_cases() -> list:
    if not GPU_BACKENDS:
        return [pytest.param(None, None, None, 1, id="no-gpu", marks=NO_GPU)]
    # Below batch 32 an epoch takes thousands of steps; the copy cases cover small batches.
    batches = [b for b in bench_batch_sizes(gpu=True) if 32 <= b <= SAMPLES]
    return [
        pytest.param(backend, model, mode, batch, id=f"{backend}-{model}-{mode}-b{batch}")
        for backend in GPU_BACKENDS
        for model in MODELS
        for mode in MODES
        for batch in batches
    ]


def data(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((n, *INPUT_SHAPE), dtype=np.float32), rng.integers(0, CLASSES, n)


@pytest.mark.parametrize("backend_name, memory, batch_size", copy_cases())
def test_h2d_copy(measure, backend_name, memory, batch_size):
    import cupy
    import cupyx

    backend = gpucnn.get_backend(backend_name)
    x, _ = data(batch_size)
    if memory == "pinned":
        pinned = cupyx.empty_pinned(x.shape, dtype=x.dtype)
        pinned[...] = x
        x = pinned
    measure(
        lambda: cupy.asarray(x), backend=backend, bytes_moved=x.nbytes, kind="h2d", memory=memory, batch_size=batch_size
    )


@pytest.mark.parametrize("backend_name, model_name, mode, batch_size", epoch_cases())
def test_epoch(benchmark, backend_name, model_name, mode, batch_size):
    backend = gpucnn.get_backend(backend_name)
    with gpucnn.use_backend(backend):
        model = build_model(model_name, INPUT_SHAPE, CLASSES, seed=0)
    model.optimizer = AdaGrad(lr=1e-3)
    needed = estimate_memory(model, batch_size).total + (SAMPLES * SAMPLE_BYTES if mode == "on_device" else 0)
    if needed > 0.8 * backend.memory_info()["device_free"]:
        pytest.skip(f"batch {batch_size} in mode {mode} needs about {needed / 2**30:.1f} GiB")
    x, t = data(SAMPLES)
    options = {"prefetch": mode == "prefetch", "data_on_device": mode == "on_device"}

    def epoch() -> None:
        model.fit(x, t, batch_size=batch_size, epochs=1, verbose=0, seed=0, initial_epoch=0, **options)
        backend.synchronize()

    epoch()  # warm-up: kernel compilation, memory pool growth, pinned buffers
    benchmark.pedantic(epoch, rounds=3, iterations=1)
    info = {"kind": "epoch", "backend": backend_name, "model": model_name, "mode": mode, "batch_size": batch_size}
    if benchmark.stats is not None:
        epoch_s = benchmark.stats.stats.median
        info.update(epoch_s=epoch_s, images_per_s=SAMPLES / epoch_s)
    if mode == "on_device":
        start = time.perf_counter()
        backend.asarray(x)
        backend.synchronize()
        info["copy_s"] = time.perf_counter() - start
    benchmark.extra_info.update(info)
