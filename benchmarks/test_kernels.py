"""The hot kernels alone: im2col, col2im and max pooling forward and backward.

Each case records its time and effective bandwidth: the bytes the operation must read
once plus the bytes it must write once, over its time (``gb_per_s``). Shapes come
from the zoo's layers at batch 100 (8 with ``GPUCNN_BENCH_SIZES=small``).
"""

from __future__ import annotations

import numpy as np
import pytest

import gpucnn
from gpucnn.kernels import conv_output_size

from .report import bench_batch_sizes

BACKENDS = [name for name in gpucnn.available_backends() if name != "cuda-emu"]
BATCH = 8 if bench_batch_sizes() == bench_batch_sizes(spec="small") else 100

# name: (C, H, W, window, stride, pad)
CONVOLUTIONS = {
    "simple_convnet-conv1": (1, 28, 28, 5, 1, 0),
    "mnist_cnn-conv2": (32, 26, 26, 3, 1, 0),
    "cifar_cnn-conv3": (32, 16, 16, 3, 1, 1),
}
POOLINGS = {
    "simple_convnet-pool1": (30, 24, 24, 2, 2, 0),
    "mnist_cnn-pool1": (64, 24, 24, 2, 2, 0),
    "overlapping-3x3s2p1": (64, 16, 16, 3, 2, 1),
}


def cases(shapes: dict) -> list:
    return [
        pytest.param(backend, name, BATCH, id=f"{backend}-{name}-b{BATCH}") for backend in BACKENDS for name in shapes
    ]


def setup(backend_name: str, shape: tuple, batch: int):
    """The backend, its kernel set, a random input (N, C, H, W) on it and the output size."""
    backend = gpucnn.get_backend(backend_name)
    c, h, w, k, stride, pad = shape
    x = np.random.default_rng(0).standard_normal((batch, c, h, w), dtype=np.float32)
    oh, ow = conv_output_size(h, k, stride, pad), conv_output_size(w, k, stride, pad)
    return backend, backend.kernels, backend.asarray(x), oh, ow


def nbytes(*arrays) -> int:
    return sum(int(a.size) * a.dtype.itemsize for a in arrays)


@pytest.mark.parametrize("backend_name, shape, batch_size", cases(CONVOLUTIONS))
def test_im2col(measure, backend_name, shape, batch_size):
    backend, kernels, x, _, _ = setup(backend_name, CONVOLUTIONS[shape], batch_size)
    _, _, _, k, stride, pad = CONVOLUTIONS[shape]
    col = kernels.im2col(x, k, k, stride, pad)
    measure(
        lambda: kernels.im2col(x, k, k, stride, pad),
        backend=backend,
        bytes_moved=nbytes(x, col),
        kind="kernel",
        op="im2col",
        shape=shape,
        batch_size=batch_size,
    )


@pytest.mark.parametrize("backend_name, shape, batch_size", cases(CONVOLUTIONS))
def test_col2im(measure, backend_name, shape, batch_size):
    backend, kernels, x, _, _ = setup(backend_name, CONVOLUTIONS[shape], batch_size)
    _, _, _, k, stride, pad = CONVOLUTIONS[shape]
    col = kernels.im2col(x, k, k, stride, pad)
    measure(
        lambda: kernels.col2im(col, tuple(x.shape), k, k, stride, pad),
        backend=backend,
        bytes_moved=nbytes(col, x),
        kind="kernel",
        op="col2im",
        shape=shape,
        batch_size=batch_size,
    )


@pytest.mark.parametrize("backend_name, shape, batch_size", cases(POOLINGS))
def test_maxpool_forward(measure, backend_name, shape, batch_size):
    backend, kernels, x, _, _ = setup(backend_name, POOLINGS[shape], batch_size)
    _, _, _, k, stride, pad = POOLINGS[shape]
    out, argmax = kernels.maxpool_forward(x, k, k, stride, pad)
    measure(
        lambda: kernels.maxpool_forward(x, k, k, stride, pad),
        backend=backend,
        bytes_moved=nbytes(x, out, argmax),
        kind="kernel",
        op="maxpool_forward",
        shape=shape,
        batch_size=batch_size,
    )


@pytest.mark.parametrize("backend_name, shape, batch_size", cases(POOLINGS))
def test_maxpool_backward(measure, backend_name, shape, batch_size):
    backend, kernels, x, _, _ = setup(backend_name, POOLINGS[shape], batch_size)
    _, _, _, k, stride, pad = POOLINGS[shape]
    out, argmax = kernels.maxpool_forward(x, k, k, stride, pad)
    dout = out  # any array of the output's shape and dtype
    measure(
        lambda: kernels.maxpool_backward(dout, argmax, tuple(x.shape), k, k, stride, pad),
        backend=backend,
        bytes_moved=nbytes(dout, argmax, x),
        kind="kernel",
        op="maxpool_backward",
        shape=shape,
        batch_size=batch_size,
    )
