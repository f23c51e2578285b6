"""The emulation of cooperative CUDA kernels (``__shared__`` memory, barriers, warp
shuffles and votes) on kernels of the tests' own, ``tests/cuda/cooperative.cu``: the
correct ones give a GPU's results, and a missing barrier, a barrier some threads skip or a
shuffle some lanes skip is reported, whatever order the threads happen to run in. The
kernels that are correct run on a GPU too (``-m gpu``), through CuPy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import gpucnn
from gpucnn.kernels import compile_check
from gpucnn.kernels.cuda_set import CudaSource
from gpucnn.kernels.emu import (
    EmulationError,
    EmuLauncher,
    KernelFault,
    SharedMemoryRace,
    SynchronizationError,
    is_cooperative,
)

from .bounds import assert_close_to_sum, sum_rtol
from .conftest import backend_or_skip

COOPERATIVE = CudaSource(
    "cooperative.cu",
    (
        "transpose",
        "transpose_without_barrier",
        "block_sum",
        "warp_votes",
        "warp_rotate",
        "reverse_early_exit",
        "half_warp_shuffle",
    ),
    directory=Path(__file__).parent / "cuda",
)
TILE, TILE_ROWS = 32, 8  # as in cooperative.cu

# The kernels that are correct run on both launchers of the CUDA set.
LAUNCHERS = ["cuda-emu", pytest.param("cupy", marks=pytest.mark.gpu)]


@pytest.fixture(scope="module", params=LAUNCHERS)
def backend(request) -> gpucnn.Backend:
    return backend_or_skip(request.param)


@pytest.fixture(scope="module")
def emu() -> gpucnn.Backend:
    return backend_or_skip("cuda-emu")


def launch(backend: gpucnn.Backend, name: str, grid: tuple, block: tuple, *args) -> None:
    """Kernel ``name`` of the tests' source, on the backend's arrays, as any kernel source
    outside the package is launched."""
    backend.kernels.launcher.launch(COOPERATIVE, name, grid, block, args)


def transposed(backend: gpucnn.Backend, kernel: str, a: np.ndarray) -> np.ndarray:
    rows, cols = a.shape
    out = backend.asarray(np.zeros((cols, rows), a.dtype))
    grid = (-(-cols // TILE), -(-rows // TILE))
    launch(
        backend, f"{kernel}<{_ctype(a.dtype)}>", grid, (TILE, TILE_ROWS), backend.asarray(a), out, *_ints(rows, cols)
    )
    return backend.to_numpy(out)


def _ctype(dtype: np.dtype) -> str:
    return {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}[np.dtype(dtype)]


def _ints(*values: int) -> tuple[np.int32, ...]:
    return tuple(np.int32(v) for v in values)


# -- cooperative kernels give a GPU's results ---------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tiled_transpose(backend, dtype):
    """70 x 45: tiles cut at both edges, 3 x 2 blocks, each writing the tile that another
    block's threads read in the previous interval: no race across blocks."""
    a = np.random.default_rng(1).standard_normal((70, 45)).astype(dtype)
    np.testing.assert_array_equal(transposed(backend, "transpose", a), a.T)


@pytest.mark.parametrize("threads", [32, 256, 1024])
def test_block_reduction_by_shuffles(backend, threads):
    rng = np.random.default_rng(threads)
    items, blocks = 3, 4
    n = blocks * threads * items - 5  # the last block's last threads add nothing
    x = rng.standard_normal(n)
    out = backend.asarray(np.zeros(blocks))
    launch(backend, "block_sum<double>", (blocks,), (threads,), backend.asarray(x), out, *_ints(n, items))
    chunks = np.array_split(x, np.arange(1, blocks) * threads * items)
    expected = [c.sum() for c in chunks]
    abs_terms = [np.abs(c).sum() for c in chunks]
    assert_close_to_sum(backend.to_numpy(out), expected, abs_terms, sum_rtol(np.float64, threads * items))


def test_warp_votes_barrier_counts_and_segmented_scan(backend):
    """96 threads, three warps: one all positive, one mixed, one with no positive value."""
    rng = np.random.default_rng(5)
    x = np.concatenate([np.ones(32), rng.choice([-1.0, 1.0], 32), -np.ones(32)]).astype(np.float32)
    out = backend.asarray(np.zeros(7 * 96, np.int32))
    launch(backend, "warp_votes<float>", (1,), (96,), backend.asarray(x), out)
    got = backend.to_numpy(out).reshape(96, 7)
    positive = (x > 0).reshape(3, 32)
    ballots = (positive * (1 << np.arange(32, dtype=np.uint64))).sum(axis=1).astype(np.uint32)
    np.testing.assert_array_equal(got[:, 0].view(np.uint32), np.repeat(ballots, 32))
    np.testing.assert_array_equal(got[:, 1], np.repeat(positive.any(axis=1), 32))
    np.testing.assert_array_equal(got[:, 2], np.repeat(positive.all(axis=1), 32))
    np.testing.assert_array_equal(got[:, 3], positive.sum())
    np.testing.assert_array_equal(got[:, 4], 0)
    np.testing.assert_array_equal(got[:, 5], 1)
    scan = positive.reshape(12, 8).cumsum(axis=1).ravel()  # segments of 8 lanes
    np.testing.assert_array_equal(got[:, 6], scan)


def test_syncwarp_orders_the_lanes_of_a_warp(backend):
    x = np.arange(64, dtype=np.float32)
    data = backend.asarray(x)
    launch(backend, "warp_rotate<float>", (1,), (64,), data, np.int32(1))
    np.testing.assert_array_equal(backend.to_numpy(data), np.roll(x.reshape(2, 32), -1, axis=1).ravel())


# -- what a GPU may get wrong by luck is reported ------------------------------------------------


def test_a_missing_barrier_is_a_race(emu):
    a = np.arange(70 * 45, dtype=np.float32).reshape(70, 45)
    with pytest.raises(SharedMemoryRace) as raised:
        transposed(emu, "transpose_without_barrier", a)
    message = str(raised.value)
    assert "shared memory race in transpose_without_barrier<float>, block (0, 0, 0)" in message
    # thread (8, 0, 0) writes the element that thread (0, 0, 0) has read: tile[0][8]
    assert "thread (8, 0, 0) writes tile[0][8], which thread (0, 0, 0) read in the same barrier interval" in message


def test_a_missing_syncwarp_is_a_race(emu):
    data = emu.asarray(np.arange(64, dtype=np.float32))
    with pytest.raises(
        SharedMemoryRace, match=r"thread \(1, 0, 0\) writes staging\[1\], which thread \(0, 0, 0\) read"
    ):
        launch(emu, "warp_rotate<float>", (1,), (64,), data, np.int32(0))


def test_a_barrier_some_threads_return_before_is_an_error(emu):
    data = emu.asarray(np.arange(64, dtype=np.float32))
    with pytest.raises(
        SynchronizationError, match=r"divergent barrier in reverse_early_exit<float>.*thread \(40, 0, 0\)"
    ):
        launch(emu, "reverse_early_exit<float>", (1,), (64,), data, np.int32(40))
    launch(emu, "reverse_early_exit<float>", (1,), (64,), data, np.int32(64))  # every thread at the barrier
    np.testing.assert_array_equal(emu.to_numpy(data), np.arange(64, dtype=np.float32)[::-1])


def test_a_shuffle_some_lanes_never_join_is_an_error(emu):
    data = emu.asarray(np.ones(32, np.float32))
    with pytest.raises(
        SynchronizationError, match=r"__shfl_xor_sync in half_warp_shuffle<float>.*lanes 16-31 returned"
    ):
        launch(emu, "half_warp_shuffle<float>", (1,), (32,), data)


def _launcher(tmp_path: Path, code: str) -> tuple[EmuLauncher, CudaSource]:
    (tmp_path / "kernel.cu").write_text(code)
    return EmuLauncher(cache_dir=tmp_path / "cache"), CudaSource("kernel.cu", ("kernel",), directory=tmp_path)


def test_a_shared_index_out_of_bounds_or_too_large_a_block_is_an_error(tmp_path):
    launcher, source = _launcher(
        tmp_path,
        "template <typename T>\n__global__ void kernel(T* x) {\n"
        "    __shared__ T s[4][8];\n    s[threadIdx.x / 8][threadIdx.x % 8] = x[threadIdx.x];\n}\n",
    )
    launcher.launch(source, "kernel<float>", (1,), (32,), (np.zeros(40, np.float32),))
    with pytest.raises(
        KernelFault, match=r"index 4 out of bounds for axis 0 of __shared__ s \(size 4\).*thread \(32, 0, 0\)"
    ):
        launcher.launch(source, "kernel<float>", (1,), (40,), (np.zeros(40, np.float32),))
    with pytest.raises(KernelFault, match="a block of 2048 threads; a CUDA block holds at most 1024"):
        launcher.launch(source, "kernel<float>", (1,), (64, 32), (np.zeros(40, np.float32),))


def test_dynamic_shared_memory_is_refused(tmp_path):
    launcher, source = _launcher(
        tmp_path,
        "template <typename T>\n__global__ void kernel(T* x) {\n"
        "    extern __shared__ T s[];\n    s[threadIdx.x] = x[threadIdx.x];\n}\n",
    )
    with pytest.raises(EmulationError, match=r"(?s)cannot emulate this __shared__ declaration.*kernel\.cu:3:"):
        launcher.launch(source, "kernel<float>", (1,), (32,), (np.zeros(32, np.float32),))


# -- kernels that do not cooperate keep the one-thread-at-a-time launcher ---------------------------


def test_only_cooperative_sources_run_as_fibers(tmp_path, emu):
    plain = "// no __syncthreads() needed: each thread its own element\n__global__ void k(float* x) { x[0] = 1; }\n"
    assert not is_cooperative(plain)
    assert is_cooperative("__global__ void k(float* x) { __syncthreads(); }")
    assert is_cooperative("float y = __shfl_down_sync(0xffffffffu, x, 1);")
    assert emu.kernels.launcher.module(COOPERATIVE).cooperative
    launcher, source = _launcher(tmp_path, "template <typename T>\n" + plain.replace("void k(float", "void kernel(T"))
    assert not launcher.module(source).cooperative


def test_the_kernels_compile_with_nvcc():
    if compile_check._nvcc() is None:
        pytest.skip("nvcc not found")
    usages = compile_check.check("nvcc", sources=(COOPERATIVE,))
    assert {(u.kernel, u.arch) for u in usages} == {
        (name, arch) for name in COOPERATIVE.name_expressions for arch in compile_check.ARCHS
    }
