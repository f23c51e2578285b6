"""Throughput against batch size: one training step and one inference, per backend and model.

Ids read ``test_train_step[numba-simple_convnet-b100]``. The batch is already in the
backend's memory (transfers are measured in ``test_transfer.py``); a training step is
what ``fit`` runs per batch: forward, loss, backward and an AdaGrad update.

Each case records two figures (the ``measure`` fixture in the root ``conftest.py``):
``images_per_s``, the pipelined throughput (steps queued back to back and synchronized
once at the end, as ``fit`` runs them), and ``latency_images_per_s`` (each step
synchronized). On the CPU backends they are one measurement. GPU cases are marked ``gpu``,
so ``python -m benchmarks.gpu_check`` runs each once.
"""

from __future__ import annotations

import numpy as np
import pytest

import gpucnn
from gpucnn.memory import estimate_memory
from gpucnn.models import build_model
from gpucnn.optimizers import AdaGrad

from .report import bench_batch_sizes

MODELS = ("simple_convnet", "mnist_cnn")
INPUT_SHAPE = (1, 28, 28)
CLASSES = 10
BACKENDS = [name for name in gpucnn.available_backends() if name != "cuda-emu"]  # the emulator is for tests


def cases() -> list:
    params = []
    for backend in BACKENDS:
        for model in MODELS:
            gpu = gpucnn.get_backend(backend).is_gpu
            marks = [pytest.mark.gpu] if gpu else []
            for batch in bench_batch_sizes(gpu=gpu):
                params.append(pytest.param(backend, model, batch, id=f"{backend}-{model}-b{batch}", marks=marks))
    return params


def setup_model(backend_name: str, model_name: str, batch_size: int, training: bool):
    """The model (AdaGrad), a random batch on the backend, and the backend; skips a batch
    that the memory model says does not fit a GPU's free memory."""
    backend = gpucnn.get_backend(backend_name)
    with gpucnn.use_backend(backend):
        model = build_model(model_name, INPUT_SHAPE, CLASSES, seed=0)
    model.optimizer = AdaGrad(lr=1e-3)  # small: random data must not drive the weights to NaN
    if backend.is_gpu:
        free = backend.memory_info()["device_free"]
        needed = estimate_memory(model, batch_size, training=training).total
        if needed > 0.8 * free:
            pytest.skip(f"batch {batch_size} needs about {needed / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free")
    rng = np.random.default_rng(0)
    x = backend.asarray(rng.random((batch_size, *INPUT_SHAPE), dtype=np.float32), dtype=model.dtype)
    t = backend.asarray(rng.integers(0, CLASSES, batch_size))
    return backend, model, x, t


@pytest.mark.parametrize("backend_name, model_name, batch_size", cases())
def test_train_step(measure, backend_name, model_name, batch_size):
    backend, model, x, t = setup_model(backend_name, model_name, batch_size, training=True)
    # train_step is fit's inner loop: no host synchronization of its own, so steps queue.
    measure(
        lambda: model.train_step(x, t),
        backend=backend,
        images=batch_size,
        kind="train_step",
        model=model_name,
        batch_size=batch_size,
    )


@pytest.mark.parametrize("backend_name, model_name, batch_size", cases())
def test_inference(measure, backend_name, model_name, batch_size):
    backend, model, x, _ = setup_model(backend_name, model_name, batch_size, training=False)
    measure(
        lambda: model.predict(x),
        backend=backend,
        images=batch_size,
        kind="inference",
        model=model_name,
        batch_size=batch_size,
    )
