"""Counting the 32-byte sectors of warp requests in the emulator (``EmuLauncher(instrument=True)``):
known access patterns of ``tests/cuda/coalescing.cu`` and the tiled transpose of
``tests/cuda/cooperative.cu`` give the counts their addresses imply; the pointer rewrite
leaves what is not a declaration alone; ``benchmarks/coalescing.py`` launches every kernel
of the CUDA set and names each site. Counts from the emulation, not GPU measurements."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks import coalescing
from gpucnn.kernels.cuda_set import CUDA_SOURCES, CudaSource
from gpucnn.kernels.emu import EmulationUnavailable, EmuLauncher, _rewrite_pointers

PATTERNS = CudaSource("coalescing.cu", ("copy", "strided_read", "row_sums"), directory=Path(__file__).parent / "cuda")
COOPERATIVE = CudaSource("cooperative.cu", ("transpose",), directory=Path(__file__).parent / "cuda")


@pytest.fixture(scope="module")
def launcher() -> EmuLauncher:
    try:
        return EmuLauncher(instrument=True)
    except EmulationUnavailable as exc:
        pytest.skip(str(exc))


def counted(launcher: EmuLauncher, source: CudaSource, name: str, grid: tuple, block: tuple, *args) -> list:
    """The SiteCount rows of one launch, sorted by line, column and visit."""
    launcher.sector_counts.clear()
    launcher.launch(source, name, grid, block, args)
    [(launched, counts)] = launcher.sector_counts
    assert launched == name
    return sorted(counts, key=lambda c: (c.line, c.column, c.visit))


def test_contiguous_copy_is_ideal(launcher):
    x = np.arange(64, dtype=np.float32)
    out = np.zeros(64, dtype=np.float32)
    counts = counted(launcher, PATTERNS, "copy<float>", (1,), (64,), x, out, np.int32(64))
    np.testing.assert_array_equal(out, x)  # the instrumented build computes as the plain one
    load, store = sorted(counts, key=lambda c: not c.load)
    for count in (load, store):
        # two warps of 32 float lanes, each request 128 contiguous bytes: 4 sectors, the ideal
        assert (count.requests, count.sectors, count.ideal, count.lanes) == (2, 8, 8, 64)
        assert count.element_bytes == 4
    assert load.load and not store.load


def test_stride_32_read_touches_a_sector_per_lane(launcher):
    x = np.arange(64 * 32, dtype=np.float32)
    out = np.zeros(64, dtype=np.float32)
    counts = counted(launcher, PATTERNS, "strided_read<float>", (1,), (64,), x, out, np.int32(64))
    np.testing.assert_array_equal(out, x[::32])
    [load] = [c for c in counts if c.load]
    assert load.sectors / load.requests == 32
    assert load.ideal / load.requests == 4


def test_each_visit_of_a_loop_is_its_own_request_and_a_partial_warp_counts_its_lanes(launcher):
    rows = 40  # a full warp and one of 8 lanes
    x = np.arange(rows * 4, dtype=np.float32)
    out = np.zeros(rows, dtype=np.float32)
    counts = counted(launcher, PATTERNS, "row_sums<float>", (1,), (rows,), x, out, np.int32(rows))
    np.testing.assert_array_equal(out, x.reshape(rows, 4).sum(axis=1))
    loads = [c for c in counts if c.load]
    assert [c.visit for c in loads] == [0, 1, 2, 3]  # through a pointer made inside the kernel
    for load in loads:
        # lanes 16 bytes apart: 32 lanes span 16 sectors, 8 lanes 4; ideal 4 + 1
        assert (load.requests, load.sectors, load.ideal, load.lanes) == (2, 20, 5, 40)


def test_shared_memory_tile_makes_a_transpose_coalesced(launcher):
    a = np.arange(64 * 96, dtype=np.float32).reshape(64, 96)
    out = np.zeros((96, 64), dtype=np.float32)
    counts = counted(launcher, COOPERATIVE, "transpose<float>", (3, 2), (32, 8), a, out, np.int32(64), np.int32(96))
    np.testing.assert_array_equal(out, a.T)
    assert {c.load for c in counts} == {True, False}
    for count in counts:
        assert count.sectors == count.ideal, count


def test_pointer_rewrite_touches_declarations_only():
    code = (
        "template <typename T>\n"
        "__global__ void k(const T* __restrict__ x, int* __restrict__ n, const int total) {\n"
        "    const T* row = x + total * 2;\n"
        "    T* p = reinterpret_cast<T*>(a * b);\n"
        "    f(static_cast<T*>(nullptr));\n"
        "}\n"
    )
    rewritten = _rewrite_pointers(code)
    assert "::gpucnn_emu::Global<const T> x" in rewritten
    assert "::gpucnn_emu::Global<int> n" in rewritten
    assert "::gpucnn_emu::Global<const T> row = x + total * 2;" in rewritten
    assert "::gpucnn_emu::Global<T> p = reinterpret_cast<T*>(a * b);" in rewritten
    assert "static_cast<::gpucnn_emu::Global<T>>(nullptr)" in rewritten
    assert rewritten.count("\n") == code.count("\n")  # lines stay where they were


@pytest.mark.parametrize(
    ("line", "column", "expression"),
    [
        ("    out[i] = x[i];", 15, "x[i]"),  # at the [
        ("    out[i] = x[i];", 17, "x[i]"),  # at the ]
        ("    if (o < n && argmax[o] == tap) {", 29, "argmax[o]"),  # at the operator beside it
        ("    f(tensor<T>(table, 0, k)[j], g);", 28, "tensor<T>(table, 0, k)[j]"),
        ("    int v = 0;", 5, "int v = 0;"),  # no subscript: the line
    ],
)
def test_site_expression(line, column, expression):
    assert coalescing.subscript_at(line, column) == expression


def test_access_kind():
    assert coalescing.access_kind("    out[i] = x[i];", 8, False) == "store"
    assert coalescing.access_kind("    sum[0] += v;", 8, False) == "load+store"
    assert coalescing.access_kind("    f(param[i], g);", 12, False) == "access"
    assert coalescing.access_kind("    out[i] = x[i];", 15, True) == "load"


def test_benchmark_counts_every_kernel_of_the_set(launcher):
    found, missing = coalescing.count_kernels()
    assert missing == []
    kernels = {s.kernel for s in found}
    assert kernels == {k for source in CUDA_SOURCES for k in source.kernels}
    for site in found:
        assert site.requests > 0 and site.ideal > 0, site
    report = coalescing.format_report(found, missing, "test")
    assert "| im2col | im2col.cu:" in report
