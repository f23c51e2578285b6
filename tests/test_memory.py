"""The memory model, max_batch_size, out-of-memory translation and the prefetch pipeline."""

from __future__ import annotations

import dataclasses
import sys
import types

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gpucnn
from gpucnn import memory
from gpucnn.layers import Affine, Convolution, MaxPooling, ReLU
from gpucnn.memory import OutOfMemoryError, estimate_memory, max_batch_size, training_step_peak, translate_out_of_memory
from gpucnn.models import build_model
from gpucnn.optimizers import SGD, Adam


def small_cnn(seed: int = 0) -> gpucnn.Sequential:
    with gpucnn.use_backend("numpy"):
        return gpucnn.Sequential(
            [Convolution(4, 3), ReLU(), MaxPooling(2), Affine(10)], input_shape=(1, 10, 10), seed=seed
        )


def batch(n: int, shape=(1, 10, 10), classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(n)
    return rng.random((n, *shape), dtype=np.float32), rng.integers(0, classes, n)


# -- the model ------------------------------------------------------------------------------


def test_estimate_counts_columns_and_optimizer_state(monkeypatch):
    model = small_cnn()
    n = 16
    monkeypatch.setattr(model.backend.kernels, "conv_block_bytes", None)  # the whole batch's columns, kept
    estimate = estimate_memory(model, n, optimizer=Adam())
    # conv 3x3 on 10x10: 8x8 windows of 1*3*3 values per sample, float32
    assert estimate.im2col == n * 8 * 8 * 9 * 4
    params = (4 * 9 + 4 + 64 * 10 + 10) * 4
    assert estimate.params == params and estimate.grads == params and estimate.optimizer_state == 2 * params
    assert estimate_memory(model, n, optimizer=SGD()).optimizer_state == 0
    inference = estimate_memory(model, n, training=False)
    assert inference.grads == inference.optimizer_state == 0 and inference.total < estimate.total
    assert "im2col" in estimate.table() and estimate.layers[0].name.startswith("convolution1+")


def test_estimate_is_linear_in_the_batch_size_with_whole_batch_columns(monkeypatch):
    model = small_cnn()
    monkeypatch.setattr(model.backend.kernels, "conv_block_bytes", None)
    # From two images up: at one, the optimizer update's workspace (two of the largest
    # parameter, whatever the batch) is the largest.
    two, three, eleven = (estimate_memory(model, n).total for n in (2, 3, 11))
    assert eleven - two == 9 * (three - two) > 0


def test_blocks_of_images_keep_the_input_and_one_block_of_columns(monkeypatch):
    model = small_cnn()
    per_image = 8 * 8 * 9 * 4  # one image's columns, float32
    monkeypatch.setattr(model.backend.kernels, "conv_block_bytes", 3 * per_image + 5)  # 3 images per block
    assert model.layers[0].block_images(16, 4) == 3 and model.layers[0].block_images(2, 4) == 2
    estimate = {n: estimate_memory(model, n) for n in (1, 2, 3, 4, 30, 60)}
    assert all(e.im2col == 0 for e in estimate.values())
    monkeypatch.setattr(model.backend.kernels, "conv_block_bytes", None)
    whole = {n: estimate_memory(model, n) for n in (30, 60)}
    assert estimate[60].total < whole[60].total
    assert whole[60].total - whole[30].total > estimate[60].total - estimate[30].total  # the columns no longer grow


@pytest.mark.parametrize("budget", [30_000, 31_000, 33_000, 50_000, 123_456, 2**20])
def test_max_batch_size_is_tight_when_blocks_cap_the_columns(monkeypatch, budget):
    model = small_cnn()
    monkeypatch.setattr(model.backend.kernels, "conv_block_bytes", 3 * 8 * 8 * 9 * 4)
    n = max_batch_size(model, budget)
    assert n >= 1 and estimate_memory(model, n).total <= budget < estimate_memory(model, n + 1).total


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**24), st.integers(0, 2**24))
def test_max_batch_size_is_monotonic_and_tight(a, b):
    model = small_cnn()
    low, high = sorted((a, b))
    assert max_batch_size(model, low) <= max_batch_size(model, high)
    n = max_batch_size(model, high)
    if n:
        assert estimate_memory(model, n).total <= high < estimate_memory(model, n + 1).total
    else:
        assert estimate_memory(model, 1).total > high


def test_max_batch_size_builds_an_unbuilt_model_from_input_shape():
    with gpucnn.use_backend("numpy"):
        model = gpucnn.Sequential([Affine(8), ReLU(), Affine(3)])
    with pytest.raises(ValueError, match="not built yet: pass input_shape"):
        max_batch_size(model, 2**20)
    assert max_batch_size(model, 2**20, input_shape=(5,)) > 0 and model.input_shape == (5,)
    with pytest.raises(ValueError, match=r"input_shape \(6,\) differs from the model's \(5,\)"):
        max_batch_size(model, 2**20, input_shape=(6,))
    with pytest.raises(ValueError, match="budget_bytes must be >= 0"):
        max_batch_size(model, -1)


@pytest.mark.parametrize("block_bytes", [None, 2**21])
@pytest.mark.parametrize("name, n", [("mnist_cnn", 24), ("simple_convnet", 48), ("lenet5", 48)])
def test_estimate_against_traced_allocations(name, n, block_bytes, monkeypatch):
    """Two training steps from nothing, traced on the NumPy backend, peak near the model:
    the whole batch's columns, or blocks of images (3 of mnist_cnn's second convolution);
    LeNet-5's second convolution lets its columns go before its dcol."""
    monkeypatch.setattr(gpucnn.get_backend("numpy").kernels, "conv_block_bytes", block_bytes)

    def build():
        with gpucnn.use_backend("numpy"):
            model = build_model(name, (1, 28, 28), 10, seed=0)
        model.optimizer = SGD(0.01)
        return model

    x, t = batch(n, (1, 28, 28))
    with gpucnn.use_backend("numpy"):
        build()  # first-use imports stay out of the trace
        measured = training_step_peak(build, x, t)
    estimated = estimate_memory(build(), n).total
    assert 0.6 * estimated < measured < 1.3 * estimated, (measured, estimated)


def test_measure_peak_bytes_on_the_host():
    backend = gpucnn.get_backend("numpy")
    assert memory.measure_peak_bytes(backend, lambda: np.ones(1_000_000)) >= 8_000_000


# -- running out of memory ---------------------------------------------------------------


class CUDARuntimeError(RuntimeError):
    """Stands in for CuPy's error type of the same name (matched by name, not imported)."""


@pytest.fixture
def failing_im2col(monkeypatch):
    """im2col of the NumPy set fails like an allocator for batches above 8 samples."""
    kernels = gpucnn.get_backend("numpy").kernels
    real = kernels.im2col
    error = {"factory": lambda n: MemoryError(f"Unable to allocate {n} MiB for an array")}

    def im2col(x, *args, **kwargs):
        if x.shape[0] > 8:
            raise error["factory"](x.shape[0])
        return real(x, *args, **kwargs)

    monkeypatch.setattr(kernels, "im2col", im2col)
    return error


def test_fit_out_of_memory_names_the_batch_and_suggests_one(failing_im2col, monkeypatch):
    model = small_cnn()
    six, seven = estimate_memory(model, 6), estimate_memory(model, 7)
    budget = (six.total + seven.total) / 2  # free memory for six samples and a half
    monkeypatch.setattr(memory, "_available_bytes", lambda backend: (budget - six.fixed) / 0.9)
    x, t = batch(40)
    with pytest.raises(OutOfMemoryError) as info:
        model.fit(x, t, batch_size=32, epochs=1, verbose=0)
    error = info.value
    assert isinstance(error, MemoryError) and isinstance(error.__cause__, MemoryError)
    assert error.batch_size == 32 and error.suggested_batch_size == 6
    message = str(error)
    assert "out of memory in fit with batch_size=32 on backend 'numpy'" in message
    assert "batch_size=6 should fit" in message and "Unable to allocate 32 MiB" in message
    assert model.fit(x, t, batch_size=error.suggested_batch_size, epochs=1, seed=0, verbose=0).epoch == [0]


def test_evaluate_and_cuda_style_errors_are_translated(failing_im2col, monkeypatch):
    failing_im2col["factory"] = lambda n: CUDARuntimeError("cudaErrorMemoryAllocation: out of memory")
    monkeypatch.setattr(memory, "_available_bytes", lambda backend: 10**9)
    model = small_cnn()
    x, t = batch(20)
    with pytest.raises(
        OutOfMemoryError,
        match=r"evaluate with batch_size=20 .* inference batch .*"
        r"batch_size=10 should fit.*CUDARuntimeError",
    ):
        model.evaluate(x, t, batch_size=64)


def test_predict_advice_and_nothing_fits(monkeypatch):
    model = small_cnn()
    monkeypatch.setattr(memory, "_available_bytes", lambda backend: 10**9)
    with pytest.raises(OutOfMemoryError, match=r"predict\(x, batch_size=32\) should fit"):
        with translate_out_of_memory(model, 64, "predict", training=False):
            raise MemoryError("simulated")
    monkeypatch.setattr(memory, "_available_bytes", lambda backend: 0)
    with pytest.raises(OutOfMemoryError, match="not even batch_size=1 fits") as info:
        with translate_out_of_memory(model, 64, "fit"):
            raise MemoryError("simulated")
    assert info.value.suggested_batch_size == 0


def test_other_errors_pass_through(failing_im2col):
    failing_im2col["factory"] = lambda n: CUDARuntimeError("cudaErrorIllegalAddress: an illegal memory access")
    x, t = batch(20)
    with pytest.raises(CUDARuntimeError, match="illegal memory access"):
        small_cnn().fit(x, t, batch_size=16, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="plain"):
        with translate_out_of_memory(small_cnn(), 4, "fit"):
            raise ValueError("plain")


# -- prefetch_batches on a stand-in for CuPy --------------------------------------------------


class _DeviceArray(np.ndarray):
    """A NumPy array with CuPy's ``set`` (host → device copy)."""

    def set(self, host, stream=None):
        assert stream is not None and isinstance(host, np.ndarray)
        self[...] = host


def _fake_cupy(log: list) -> tuple[types.ModuleType, types.ModuleType]:
    """Just enough of ``cupy`` and ``cupyx`` for prefetch_batches, logging stream calls."""

    class Event:
        def __init__(self, disable_timing=False):
            self.name = f"event{id(self) % 1000}"

        def record(self, stream):
            log.append(("record", stream.name))

        def synchronize(self):
            pass

    class Stream:
        def __init__(self, non_blocking=False, name="copy"):
            self.name = name

        def wait_event(self, event):
            log.append(("wait", self.name))

        def synchronize(self):
            log.append(("synchronize", self.name))

    compute = Stream(name="compute")
    cuda = types.SimpleNamespace(Event=Event, Stream=Stream, get_current_stream=lambda: compute)
    cupy = types.ModuleType("cupy")
    cupy.cuda = cuda
    cupy.empty = lambda shape, dtype: np.empty(shape, dtype).view(_DeviceArray)
    cupyx = types.ModuleType("cupyx")
    cupyx.empty_pinned = lambda shape, dtype: np.empty(shape, dtype)
    return cupy, cupyx


def test_prefetch_batches_yields_every_batch_in_order(monkeypatch):
    from gpucnn.prefetch import prefetch_batches

    log: list = []
    cupy, cupyx = _fake_cupy(log)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setitem(sys.modules, "cupyx", cupyx)
    model = small_cnn()
    x, t = batch(23)
    order = np.random.default_rng(0).permutation(23)
    batches = [order[i : i + 5] for i in range(0, 23, 5)]  # the last one has 3 samples
    seen = []
    for xb, tb in prefetch_batches(model, x, t, batches):
        assert log[-1] == ("wait", "compute")  # the compute stream waited for the copy
        seen.append((np.array(xb), np.array(tb)))
    assert len(seen) == len(batches)
    for (xb, tb), idx in zip(seen, batches):
        np.testing.assert_array_equal(xb, x[idx])
        np.testing.assert_array_equal(tb, t[idx])
    assert log.count(("record", "compute")) == len(batches)  # every slot released after its step
    assert log[-1] == ("synchronize", "copy")


def pretend_gpu(model: gpucnn.Sequential) -> gpucnn.Sequential:
    """The model's batching takes its GPU paths (``backend.is_gpu``) while computing on NumPy."""
    model.backend = dataclasses.replace(model.backend, is_gpu=True)
    return model


def test_data_on_device_batches_equal_host_slices():
    from gpucnn.training import BatchSource

    model = pretend_gpu(small_cnn())
    x, t = batch(23)
    batches = [np.arange(i, min(i + 5, 23))[::-1] for i in range(0, 23, 5)]
    source = BatchSource(model, x, t, data_on_device=True, prefetch=True)
    assert source.on_device and not source.prefetch  # the data on the device needs no prefetch
    for (xb, tb), idx in zip(source.batches(batches), batches):
        np.testing.assert_array_equal(xb, x[idx])
        np.testing.assert_array_equal(tb, t[idx])


def test_fit_with_prefetch_trains_as_without(monkeypatch):
    log: list = []
    cupy, cupyx = _fake_cupy(log)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setitem(sys.modules, "cupyx", cupyx)
    x, t = batch(30)
    plain = small_cnn().fit(x, t, batch_size=8, epochs=2, seed=3, verbose=0, loss_every=1)
    prefetched = pretend_gpu(small_cnn()).fit(
        x, t, batch_size=8, epochs=2, seed=3, verbose=0, loss_every=1, prefetch=True
    )
    assert prefetched.iteration_loss == plain.iteration_loss
    assert log.count(("record", "compute")) == 2 * 4  # the batches came through prefetch_batches


# -- each layer answers its own terms ------------------------------------------------------


class Doubling(gpucnn.layers.Layer):
    """A layer from outside the package that states no memory terms."""

    def forward(self, x, train=True):
        self.check_input(x)
        if x.shape[0] > 4:
            raise MemoryError(f"Unable to allocate {x.shape[0]} MiB for an array")
        return x * 2

    def backward(self, dout):
        return dout * 2


def test_a_layer_without_memory_terms_makes_the_estimate_raise(monkeypatch):
    with gpucnn.use_backend("numpy"):
        model = gpucnn.Sequential([Affine(4), Doubling(), Affine(3)], input_shape=(5,), seed=0)
    with pytest.raises(NotImplementedError, match=r"Doubling does not state its memory terms: define Doubling.memory"):
        estimate_memory(model, 8)
    with pytest.raises(NotImplementedError, match="Doubling does not state its memory terms"):
        max_batch_size(model, 2**20)
    # Out of memory, the error still names the batch and carries the allocator's message.
    monkeypatch.setattr(memory, "_available_bytes", lambda backend: 10**9)
    x = np.random.default_rng(0).random((16, 5), dtype=np.float32)
    with pytest.raises(OutOfMemoryError) as info:
        model.fit(x, np.arange(16) % 3, batch_size=8, epochs=1, verbose=0)
    assert isinstance(info.value.__cause__, MemoryError)
    assert info.value.suggested_batch_size == 4  # no estimate: half the batch
    message = str(info.value)
    assert "out of memory in fit with batch_size=8 on backend 'numpy'; try batch_size=4" in message
    assert "The allocator said: MemoryError: Unable to allocate 8 MiB for an array" in message
    assert model.fit(x, np.arange(16) % 3, batch_size=4, epochs=1, seed=0, verbose=0).epoch == [0]


@pytest.mark.parametrize("fuse", [True, False])
def test_every_layer_and_fused_step_answers_its_memory_terms(fuse, monkeypatch):
    from gpucnn.layers import AvgPooling, BatchNormalization, Dropout, Flatten, Sigmoid

    with gpucnn.use_backend("numpy"):
        model = gpucnn.Sequential(
            [
                Convolution(4, 3, pad=1),
                BatchNormalization(),
                ReLU(),
                MaxPooling(2),
                Dropout(0.3),
                Convolution(5, 3),
                ReLU(),
                MaxPooling(1),
                Sigmoid(),
                AvgPooling(1),
                Flatten(),
                Affine(7),
                ReLU(),
                Affine(3),
            ],
            input_shape=(3, 10, 10),
            fuse=fuse,
        )
    monkeypatch.setattr(model.backend.kernels, "conv_block_bytes", 4 * 2**10)  # a few images per block
    blocked = estimate_memory(model, 16)
    monkeypatch.setattr(model.backend.kernels, "conv_block_bytes", None)  # the whole batch's columns, kept
    training, inference = estimate_memory(model, 16), estimate_memory(model, 16, training=False)
    assert blocked.im2col == 0 and blocked.total < training.total
    names = [row.name for row in training.layers]
    assert len(names) == len(model.steps) + 2  # and the loss, and the optimizer's update
    assert ("convolution2+relu2+max_pooling2" in names) == fuse and ("affine1+relu3" in names) == fuse
    assert names[-2:] == ["softmax_with_loss1", "optimizer update"]
    # Columns: 16 x 10x10 windows of 3*3*3 values, then (after pooling to 5x5) 16 x 3x3 of 4*3*3, float32.
    assert training.im2col == 16 * (100 * 27 + 9 * 36) * 4
    assert all(row.workspace > 0 for row in training.layers)
    # Inference: no gradients, no update; its total may pass training's, whose backward lets
    # the second convolution's columns go before the next forward makes new ones.
    assert inference.grads == 0 and [row.name for row in inference.layers] == names[:-1]
    # ... and the first convolution, whose input needs no gradient, keeps them.
    released = {row.name.split("+")[0]: row.released for row in training.layers}
    assert released["convolution2"] == 16 * 9 * 36 * 4 and released["convolution1"] == 0
    assert all(row.released == 0 for row in inference.layers)
