"""The ``--benchmark`` switch of the benchmark suite in ``benchmarks/``.

    pytest --benchmark                                # the suite, timed by pytest-benchmark
    pytest --benchmark --benchmark-json=bench.json    # ... and the JSON that `gpucnn bench --from` reads
                                                      # (python -m benchmarks.report: the report)
    GPUCNN_BENCH_SIZES=small pytest --benchmark       # the quick version (batch sizes 1, 8, 32)
    pytest                                            # tests, plus every benchmark body once, untimed,
                                                      # at its smallest batch size

``pytest --benchmark`` without paths collects ``benchmarks/`` only (not the tests of
``testpaths``). ``--benchmark-only`` and ``--benchmark-enable`` also switch timing on;
every other ``--benchmark-*`` option of pytest-benchmark works as documented.
``GPUCNN_BENCH_SIZES`` (see :func:`benchmarks.report.bench_batch_sizes`) and
``--benchmark-max-time`` (seconds of timed rounds per case, default 1) set how long the
suite runs.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import pytest

from benchmarks.report import SIZES_ENV
from gpucnn.machine import distribution_version, machine_description

# The fastest call a round may be: shorter steps are repeated within a round, so that the
# timer's resolution and the call overhead stay below a percent.
MIN_ROUND_S = 2e-3
MIN_ROUNDS = 3


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--benchmark",
        action="store_true",
        default=False,
        help="run the benchmark suite in benchmarks/ timed, through pytest-benchmark "
        "(without it each benchmark body runs once, untimed, at its smallest batch size)",
    )


def _timing(config: pytest.Config) -> bool:
    return bool(
        config.getoption("--benchmark")
        or config.getoption("benchmark_only", default=False)
        or config.getoption("benchmark_enable", default=False)
    )


def pytest_configure(config: pytest.Config) -> None:
    # pytest-benchmark reads its options in its own (trylast) pytest_configure, after this.
    if not _timing(config) and hasattr(config.option, "benchmark_disable"):
        config.option.benchmark_disable = True


def pytest_ignore_collect(collection_path, config: pytest.Config) -> bool | None:
    """``pytest --benchmark`` without paths collects ``benchmarks/`` only: the tests of
    ``testpaths`` are neither imported nor collected. Without pytest-benchmark (not a dev
    install, or ``-p no:benchmark``) the suite cannot run: leave its files out."""
    benchmarks = config.rootpath / "benchmarks"
    suite_only = config.getoption("--benchmark") and config.args_source == pytest.Config.ArgsSource.TESTPATHS
    on_the_way = {benchmarks, *benchmarks.parents}  # the folder, and those above it
    if suite_only and collection_path not in on_the_way and benchmarks not in collection_path.parents:
        return True
    in_suite = collection_path.parent == benchmarks and collection_path.name.startswith("test_")
    return True if in_suite and not config.pluginmanager.hasplugin("benchmark") else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Untimed runs keep, of each benchmark case, its smallest batch size only."""
    benchmarks = config.rootpath / "benchmarks"
    if _timing(config):
        return

    def case(item: pytest.Item) -> tuple | None:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if "batch_size" not in params or benchmarks not in item.path.parents:
            return None
        others = tuple(sorted((k, repr(v)) for k, v in params.items() if k != "batch_size"))
        return item.path, item.originalname, others

    keyed = [(item, case(item)) for item in items]
    smallest: dict[tuple, int] = {}
    for item, key in keyed:
        if key is not None:
            size = item.callspec.params["batch_size"]
            smallest[key] = min(size, smallest.get(key, size))
    larger = [item for item, key in keyed if key is not None and item.callspec.params["batch_size"] > smallest[key]]
    _deselect(config, items, larger)


def _deselect(config: pytest.Config, items: list[pytest.Item], drop: list[pytest.Item]) -> None:
    if drop:
        dropped = set(drop)
        config.hook.pytest_deselected(items=drop)
        items[:] = [item for item in items if item not in dropped]


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-benchmark, which may be missing
def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    """The JSON's machine_info gains cores, GPU, driver and library versions
    (:func:`gpucnn.machine.machine_description`), and the suite's own settings."""
    machine = machine_description()
    machine["libraries"]["pytest-benchmark"] = distribution_version("pytest-benchmark")
    if SIZES_ENV in os.environ:
        machine["environment"][SIZES_ENV] = os.environ[SIZES_ENV]
    machine_info["gpucnn"] = machine


@pytest.fixture
def measure(benchmark: Any, request: pytest.FixtureRequest) -> Callable[..., None]:
    """Time a call with pytest-benchmark and record what it measured.

    ``measure(fn, backend=..., images=None, bytes_moved=None, **info)``: ``fn`` runs
    once untimed (warm-up: JIT and kernel compilation, memory pool growth), then in
    rounds that fill ``--benchmark-max-time`` (at least three).

    Two figures, so that a benchmark says which of them it measures:

    * **latency** (``latency_s``, and the pytest-benchmark statistics): every call ends
      with ``backend.synchronize()``, so each call's queued device work is inside it;
    * **pipelined** (``pipelined_s``, the time per call): rounds of calls queued back to
      back and synchronized once at the end of the round, as ``fit`` runs its steps. On a
      GPU the host queues the next call while the device still runs the last one. On a
      host backend every call has finished when it returns: the two are one measurement.

    ``images_per_s`` (from ``images`` per call) and ``gb_per_s`` (from ``bytes_moved``)
    follow the pipelined time; ``latency_images_per_s`` the latency. The backend's name,
    ``info`` and ``median_s`` (the latency, for older readers) go to
    ``benchmark.extra_info`` too. Untimed runs call ``fn`` once.
    """

    def run(
        fn: Callable[[], Any], *, backend: Any, images: int | None = None, bytes_moved: int | None = None, **info: Any
    ) -> None:
        def call() -> None:
            fn()
            backend.synchronize()

        benchmark.extra_info.update(backend=backend.name, **info)
        if benchmark.disabled:
            benchmark(call)  # pytest-benchmark calls it once, untimed
            return
        start = time.perf_counter()
        call()  # warm-up
        once = time.perf_counter() - start
        if once < 0.25:  # cheap: time one more call, free of compilation, to choose the rounds
            start = time.perf_counter()
            call()
            once = time.perf_counter() - start
        once = max(once, 1e-9)
        iterations = max(1, math.ceil(MIN_ROUND_S / once))
        budget = float(request.config.getoption("benchmark_max_time"))
        rounds = max(MIN_ROUNDS, math.ceil(budget / (once * iterations)))
        benchmark.pedantic(call, rounds=rounds, iterations=iterations)
        latency = benchmark.stats.stats.median
        pipelined = _pipelined_seconds(fn, backend, once, budget) if backend.is_gpu else latency
        benchmark.extra_info.update(latency_s=latency, pipelined_s=pipelined, median_s=latency)
        if images:
            benchmark.extra_info["images_per_s"] = images / pipelined
            benchmark.extra_info["latency_images_per_s"] = images / latency
        if bytes_moved:
            benchmark.extra_info["gb_per_s"] = bytes_moved / pipelined / 1e9

    return run


# Calls queued per pipelined round: enough that the one synchronization at its end and the
# first call's start, which no earlier call hides, weigh little in the round.
PIPELINE_DEPTH = 20


def _pipelined_seconds(fn: Callable[[], Any], backend: Any, once: float, budget: float) -> float:
    """Median seconds per call of ``fn`` over rounds of :data:`PIPELINE_DEPTH` calls queued
    back to back and synchronized once at the end of each round; ``once`` (a synchronized
    call's time) sizes the rounds to ``budget`` seconds, at least :data:`MIN_ROUNDS`."""
    rounds = max(MIN_ROUNDS, math.ceil(budget / (once * PIPELINE_DEPTH)))
    per_call = []
    backend.synchronize()
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(PIPELINE_DEPTH):
            fn()
        backend.synchronize()
        per_call.append((time.perf_counter() - start) / PIPELINE_DEPTH)
    return statistics.median(per_call)
