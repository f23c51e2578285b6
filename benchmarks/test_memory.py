"""Peak memory of a training step against batch size, beside the memory model.

Host backends are traced with ``tracemalloc`` (NumPy reports its array buffers to it),
CuPy through its memory pool; see :func:`gpucnn.memory.training_step_peak`. The timing
pytest-benchmark records here is that of the traced run and means nothing; the figures
are ``peak_bytes`` and ``model_bytes`` in ``extra_info``.
"""

from __future__ import annotations

import numpy as np
import pytest

import gpucnn
from gpucnn.memory import estimate_memory, training_step_peak
from gpucnn.models import build_model
from gpucnn.optimizers import AdaGrad

from .report import bench_batch_sizes

MODELS = ("simple_convnet", "mnist_cnn")
INPUT_SHAPE = (1, 28, 28)
CLASSES = 10
BACKENDS = [name for name in gpucnn.available_backends() if name != "cuda-emu"]


def cases() -> list:
    return [
        pytest.param(backend, model, batch, id=f"{backend}-{model}-b{batch}")
        for backend in BACKENDS
        for model in MODELS
        for batch in bench_batch_sizes(gpu=gpucnn.get_backend(backend).is_gpu)
    ]


@pytest.mark.parametrize("backend_name, model_name, batch_size", cases())
def test_training_memory(benchmark, backend_name, model_name, batch_size):
    backend = gpucnn.get_backend(backend_name)

    def build():
        model = build_model(model_name, INPUT_SHAPE, CLASSES, seed=0)
        model.optimizer = AdaGrad(lr=1e-3)
        return model

    with gpucnn.use_backend(backend):
        estimate = estimate_memory(build(), batch_size)
        if backend.is_gpu and estimate.total > 0.8 * backend.memory_info()["device_free"]:
            pytest.skip(f"batch {batch_size} needs about {estimate.total / 2**30:.1f} GiB")
        rng = np.random.default_rng(0)
        x = rng.random((batch_size, *INPUT_SHAPE), dtype=np.float32)
        t = rng.integers(0, CLASSES, batch_size)
        build()  # first-use imports and compilation stay out of the trace
        peak = benchmark.pedantic(training_step_peak, args=(build, x, t), rounds=1, iterations=1)
    benchmark.extra_info.update(
        kind="memory",
        backend=backend_name,
        model=model_name,
        batch_size=batch_size,
        peak_bytes=peak,
        model_bytes=estimate.total,
        im2col_bytes=estimate.im2col,
        activation_bytes=estimate.activations,
        workspace_bytes=estimate.workspace,
    )
    assert peak > 0
