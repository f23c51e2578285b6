"""The one command for a machine with an NVIDIA GPU: every GPU test, then kernel timings.

    python -m benchmarks.gpu_check [--quick] [--no-tests] [--out benchmarks/results]

1. Runs ``pytest -m gpu`` on the tests (kernel equivalence on CuPy arrays, gradient check,
   a short training run, memory-pool behaviour, data-parallel training's NCCL path on one
   rank: a sum of device buffers in place, a step without a host copy, the weights of the
   host path; it skips where CuPy has no NCCL) and on the GPU-marked cases of the
   benchmark suite (host→device transfers, ``fit(prefetch=True)``, CuPy throughput), each
   run once, untimed, at its smallest size: proof that they run, not figures.
2. Times gpucnn's CUDA kernels at large sizes with CUDA events and reports each one's
   achieved bandwidth, the bytes it must move (every input read once, every output written
   once) over its median time, against the device's measured device-to-device copy
   bandwidth (a copy reads and writes each byte: 2 x size / time).
3. Prints a markdown report (GPU, driver, CUDA, CuPy, date, test summary, table) and writes
   it to ``benchmarks/results/gpu-check-<date>-<gpu>.md``.

Exits 2 when no GPU is usable, 1 when a GPU test fails. gpucnn and its dependencies must
be importable (see CONTRIBUTING.md for the offline steps).
"""

from __future__ import annotations

import argparse
import datetime
import re
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
TESTS = Path(__file__).parent.parent / "tests"
BENCHMARKS = Path(__file__).parent
GB = 1e9

# -- pure parts (tested on the CPU) --------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    """One kernel at one size: the bytes it must move and its median time."""

    kernel: str
    shape: str
    bytes_moved: int
    seconds: float

    @property
    def bandwidth(self) -> float:
        """Achieved bandwidth in GB/s."""
        return achieved_bandwidth(self.bytes_moved, self.seconds)


def achieved_bandwidth(bytes_moved: int, seconds: float) -> float:
    """GB/s (10^9 bytes per second) for ``bytes_moved`` bytes in ``seconds``."""
    if seconds <= 0:
        raise ValueError(f"a time must be positive, got {seconds}")
    return bytes_moved / seconds / GB


def copy_bandwidth(nbytes: int, seconds: float) -> float:
    """GB/s of a device-to-device copy of ``nbytes``: it reads and writes every byte."""
    return achieved_bandwidth(2 * nbytes, seconds)


def format_report(meta: dict[str, str], copy_gbs: float, timings: list[Timing]) -> str:
    """The markdown report: a header of ``meta`` lines, then one table row per timing."""
    lines = ["# gpucnn GPU check", ""]
    lines += [f"- {key}: {value}" for key, value in meta.items()]
    lines += [f"- device-to-device copy bandwidth (measured): {copy_gbs:.0f} GB/s", ""]
    lines += ["| kernel | shape | time (ms) | moved (MB) | GB/s | % of copy |", "|---|---|---:|---:|---:|---:|"]
    for t in timings:
        lines.append(
            f"| {t.kernel} | {t.shape} | {t.seconds * 1e3:.3f} | {t.bytes_moved / 1e6:.1f} | "
            f"{t.bandwidth:.0f} | {100 * t.bandwidth / copy_gbs:.0f}% |"
        )
    return "\n".join(lines) + "\n"


def report_name(date: datetime.date, gpu: str) -> str:
    """``gpu-check-2026-11-24-nvidia-h100-80gb-hbm3.md``: the date, then the GPU name as a slug."""
    slug = re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-") or "gpu"
    return f"gpu-check-{date.isoformat()}-{slug}.md"


# -- on the GPU ------------------------------------------------------------------------------


def time_kernel(cupy, run: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``run()`` between two CUDA events, after two warm-up calls."""
    for _ in range(2):
        run()
    times = []
    for _ in range(repeats):
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        run()
        stop.record()
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop) / 1e3)
    return statistics.median(times)


def measure_copy(cupy, nbytes: int, repeats: int) -> float:
    """Device-to-device copy bandwidth in GB/s (``cudaMemcpyAsync``)."""
    src = cupy.ones(nbytes // 4, dtype=cupy.float32)
    dst = cupy.empty_like(src)
    kind = cupy.cuda.runtime.memcpyDeviceToDevice
    stream = cupy.cuda.get_current_stream().ptr

    def copy():
        cupy.cuda.runtime.memcpyAsync(dst.data.ptr, src.data.ptr, src.nbytes, kind, stream)

    return copy_bandwidth(src.nbytes, time_kernel(cupy, copy, repeats))


Case = tuple[str, tuple, int, Callable[[], object]]  # kernel, shape, bytes moved, the call


def kernel_timings(cupy, kernels, quick: bool, repeats: int) -> list[Timing]:
    """Each CUDA kernel at a large float32 size (``quick``: a quarter of the batch)."""
    rng = cupy.random.default_rng(0)
    n = 16 if quick else 64
    timings = []
    for cases in (_convolution_cases, _pooling_cases, _fused_cases, _optimizer_cases):
        for kernel, shape, bytes_moved, run in cases(rng, kernels, n):
            seconds = time_kernel(cupy, run, repeats)
            timings.append(Timing(kernel, "x".join(map(str, shape)), bytes_moved, seconds))
        cupy.get_default_memory_pool().free_all_blocks()  # the cases' arrays are gone
    return timings


def _convolution_cases(rng, kernels, n: int) -> list[Case]:
    """A VGG-like 3x3 convolution: im2col's columns are 9x its input."""
    x = rng.standard_normal((n, 64, 56, 56), dtype="float32")
    col = kernels.im2col(x, 3, 3, 1, 1)
    return [
        ("im2col 3x3 s1 p1", x.shape, x.nbytes + col.nbytes, lambda: kernels.im2col(x, 3, 3, 1, 1)),
        ("col2im 3x3 s1 p1", x.shape, col.nbytes + x.nbytes, lambda: kernels.col2im(col, x.shape, 3, 3, 1, 1)),
    ]


def _pooling_cases(rng, kernels, n: int) -> list[Case]:
    """Pooling over a large activation."""
    x = rng.standard_normal((4 * n, 64, 112, 112), dtype="float32")
    out, argmax = kernels.maxpool_forward(x, 2, 2, 2, 0)
    avg = kernels.avgpool_forward(x, 3, 3, 2, 1)
    return [
        (
            "maxpool_forward 2x2 s2",
            x.shape,
            x.nbytes + out.nbytes + argmax.nbytes,
            lambda: kernels.maxpool_forward(x, 2, 2, 2, 0),
        ),
        (
            "maxpool_backward 2x2 s2",
            x.shape,
            out.nbytes + argmax.nbytes + x.nbytes,
            lambda: kernels.maxpool_backward(out, argmax, x.shape, 2, 2, 2, 0),
        ),
        ("avgpool_forward 3x3 s2 p1", x.shape, x.nbytes + avg.nbytes, lambda: kernels.avgpool_forward(x, 3, 3, 2, 1)),
        (
            "avgpool_backward 3x3 s2 p1",
            x.shape,
            avg.nbytes + x.nbytes,
            lambda: kernels.avgpool_backward(avg, x.shape, 3, 3, 2, 1),
        ),
    ]


def _fused_cases(rng, kernels, n: int) -> list[Case]:
    """The fused convolution epilogue and the layout change, on GEMM rows (N*OH*OW, FN)."""
    rows = rng.standard_normal((n * 56 * 56, 64), dtype="float32")
    b = rng.standard_normal(64, dtype="float32")
    pooled, argmax = kernels.bias_relu_maxpool(rows, b, n, 56, 56, 2, 2, 2, 0)
    return [
        (
            "bias_relu_maxpool 2x2 s2",
            rows.shape,
            rows.nbytes + pooled.nbytes + argmax.nbytes,
            lambda: kernels.bias_relu_maxpool(rows, b, n, 56, 56, 2, 2, 2, 0),
        ),
        (
            "maxpool_relu_backward 2x2 s2",
            rows.shape,
            2 * pooled.nbytes + argmax.nbytes + rows.nbytes,
            lambda: kernels.maxpool_relu_backward(pooled, argmax, pooled, n, 56, 56, 2, 2, 2, 0),
        ),
        ("rows_to_nchw", rows.shape, 2 * rows.nbytes, lambda: kernels.rows_to_nchw(rows, n, 56, 56)),
    ]


def _optimizer_cases(rng, kernels, n: int) -> list[Case]:
    """An Adam step: it reads param, grad, m, v and writes param, m, v."""
    size = n * 2**20
    param, grad, m, v = (rng.standard_normal(size, dtype="float32") for _ in range(4))
    return [
        (
            "adam_update",
            (size,),
            7 * param.nbytes,
            lambda: kernels.adam_update(param, grad, m, v, 1e-3, 0.9, 0.999, 1e-7),
        )
    ]


def device_meta(cupy) -> dict[str, str]:
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    driver = _nvidia_smi_driver() or _cuda_version(cupy.cuda.runtime.driverGetVersion())
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "GPU": props["name"].decode(),
        "compute capability": f"{props['major']}.{props['minor']}",
        "driver": driver,
        "CUDA runtime": _cuda_version(cupy.cuda.runtime.runtimeGetVersion()),
        "CuPy": cupy.__version__,
    }


def _cuda_version(code: int) -> str:
    return f"{code // 1000}.{code % 1000 // 10}"


def _nvidia_smi_driver() -> str | None:
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.splitlines()[0].strip() if done.returncode == 0 and done.stdout.strip() else None


def run_gpu_tests() -> tuple[int, str]:
    """``pytest -m gpu`` on the tests and the benchmark suite (its cases untimed), in this
    process (so it uses this gpucnn): exit code and summary."""
    import pytest

    class Summary:
        def __init__(self) -> None:
            self.counts: dict[str, int] = {}

        def pytest_runtest_logreport(self, report) -> None:
            if report.when == "call" or report.outcome != "passed":
                self.counts[report.outcome] = self.counts.get(report.outcome, 0) + 1

    summary = Summary()
    code = pytest.main(["-m", "gpu", "-q", "-p", "no:cacheprovider", str(TESTS), str(BENCHMARKS)], plugins=[summary])
    return int(code), ", ".join(f"{v} {k}" for k, v in sorted(summary.counts.items())) or "no test ran"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    parser.add_argument("--no-tests", action="store_true", help="skip pytest -m gpu, only time the kernels")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the report (default: %(default)s)")
    args = parser.parse_args(argv)

    try:
        import gpucnn
    except ImportError as exc:
        print(
            f"cannot import gpucnn ({exc}): install it with its dependencies "
            '(CONTRIBUTING.md, "On a GPU machine without network")',
            file=sys.stderr,
        )
        return 2
    try:
        backend = gpucnn.get_backend("cupy")
    except gpucnn.BackendUnavailable as exc:
        print(f"no usable GPU: {exc}", file=sys.stderr)
        return 2
    import cupy

    meta = device_meta(cupy)
    code = 0
    if not args.no_tests:
        code, summary = run_gpu_tests()
        meta["pytest -m gpu"] = summary
    repeats = 5 if args.quick else 20
    copy_gbs = measure_copy(cupy, (256 if args.quick else 1024) * 2**20, repeats)
    report = format_report(meta, copy_gbs, kernel_timings(cupy, backend.kernels, args.quick, repeats))
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / report_name(datetime.date.today(), meta["GPU"])
    path.write_text(report)
    print(f"written to {path}")
    return 1 if code else 0


if __name__ == "__main__":
    sys.exit(main())
