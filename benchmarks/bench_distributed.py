"""Data-parallel training on one machine: throughput against ranks and threads, the overlap
of the gradient sums with backward, and the sums' share of a step against batch size.

    python -m benchmarks.bench_distributed --out benchmarks/results/distributed    # 5 rounds, a few minutes
    python -m benchmarks.bench_distributed --quick --out /tmp/distributed    # a check that it runs

1. Throughput: SimpleConvNet (1x28x28 inputs, 10 classes) on random data, global batch
   256, on the chosen backend (default numba), in these configurations, each a process
   or an ``mpiexec`` job of its own:

   - 1 rank x 1 thread (plain ``fit``, one BLAS and one Numba thread);
   - 2 ranks x 1 thread (``fit(..., communicator=MPICommunicator())`` under ``mpiexec -n 2``,
     the gradient sums overlapping backward), and the same with the overlap off;
   - 1 rank x 2 threads (plain ``fit`` on two threads: what ``gpucnn train`` runs without MPI).

   Each run trains one warm-up epoch, then ``--steps`` timed steps (one more epoch), and
   reports its samples per second. The rounds alternate the configurations (one run of
   each per round), so that a disturbance from the rest of the machine spreads over all
   of them, and the table gives the median over the rounds, with the smallest and the
   largest.

2. The sums' share of a step: 2 ranks x 1 thread, overlap off (every sum after the whole
   backward pass), one epoch of ``--share-samples`` samples at each batch size: the
   seconds spent in the communicator's sums (starting them, testing, waiting, which
   includes waiting for the slower rank) over the training time. The gradient is the
   same size at every batch size, so a larger batch sums it fewer times an epoch.

Writes ``distributed.md`` (the command, the machine, both tables), ``distributed.json``,
``throughput.png`` and ``allreduce_share.png`` into ``--out``. Needs mpi4py and an MPI
library (``pip install 'gpucnn[mpi]'``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

import gpucnn
from gpucnn.distributed import MPICommunicator, Request, mpiexec_path
from gpucnn.io import atomic_write
from gpucnn.machine import machine_description
from gpucnn.plotting import save_figure

RESULTS = Path(__file__).parent / "results" / "distributed"
MARK = "RESULT "  # the line a worker prints its result on
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
BATCH = 256
CONFIGURATIONS = [  # (label, ranks, threads per rank, overlap)
    ("1 rank x 1 thread", 1, 1, True),
    ("2 ranks x 1 thread", 2, 1, True),
    ("2 ranks x 1 thread, no overlap", 2, 1, False),
    ("1 rank x 2 threads", 1, 2, True),
]
TARGET = 1.6  # 2 ranks x 1 thread against 1 rank x 1 thread


# -- the worker: one configuration, in its own process (or mpiexec job) ----------------------


def _data(n: int) -> tuple[Any, Any]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, n)


def _model() -> Any:
    return gpucnn.SimpleConvNet(seed=0)


def _timed_communicator(overlap: bool) -> Any:
    """An MPICommunicator that adds up the seconds spent in its sums."""

    class TimedRequest(Request):
        def __init__(self, request: Request, owner: Any) -> None:
            super().__init__(request.buffer)
            self.request, self.owner = request, owner

        def test(self) -> bool:
            start = time.perf_counter()
            done = self.request.test()
            self.owner.seconds += time.perf_counter() - start
            return done

        def wait(self) -> Any:
            start = time.perf_counter()
            buffer = self.request.wait()
            self.owner.seconds += time.perf_counter() - start
            return buffer

    class TimedMPI(MPICommunicator):
        seconds = 0.0

        def iallreduce(self, buffer: Any) -> Request:
            start = time.perf_counter()
            request = super().iallreduce(buffer)
            self.seconds += time.perf_counter() - start
            return TimedRequest(request, self)

    return TimedMPI(overlap=overlap)


def work(args: argparse.Namespace) -> dict:
    """One run of the worker (under mpiexec for several ranks); rank 0's result."""
    gpucnn.set_backend(args.backend)
    communicator = _timed_communicator(args.overlap == "on") if args.ranks > 1 else None
    if args.worker == "throughput":
        x, t = _data(args.steps * BATCH)
        history = _model().fit(x, t, batch_size=BATCH, epochs=2, seed=0, verbose=0, communicator=communicator)
        return {"samples_per_s": history.history["images_per_s"][-1], "epoch_time": history.history["epoch_time"][-1]}
    x, t = _data(args.share_samples)
    model = _model()
    model.fit(x[:BATCH], t[:BATCH], batch_size=BATCH // 2, epochs=1, seed=0, verbose=0, communicator=communicator)
    rows = []
    for batch in args.batch_sizes:
        before = communicator.seconds
        history = model.fit(
            x, t, batch_size=batch, epochs=model.epoch + 1, seed=0, verbose=0, communicator=communicator
        )
        steps = history.params["iterations_per_epoch"]
        summing = communicator.seconds - before
        epoch = history.history["epoch_time"][-1]
        rows.append(
            {"batch": batch, "steps": steps, "epoch_time": epoch, "sum_time": summing, "share": summing / epoch}
        )
    return {"rows": rows, "rank": communicator.rank}


# -- the driver ---------------------------------------------------------------------------


def _mpiexec() -> str:
    path = mpiexec_path()
    if path is None:
        raise SystemExit("no mpiexec beside the Python interpreter or on PATH: pip install 'gpucnn[mpi]'")
    return path


def launch(ranks: int, threads: int, worker_args: list[str]) -> dict:
    """Run the worker on ``ranks`` ranks of ``threads`` threads each; rank 0's result."""
    env = {key: value for key, value in os.environ.items() if key not in THREAD_VARIABLES}
    env.update({name: str(threads) for name in THREAD_VARIABLES})
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    command = [sys.executable, "-m", "benchmarks.bench_distributed", "--worker", *worker_args, "--ranks", str(ranks)]
    if ranks > 1:  # one core per rank (Open MPI's default binding for few ranks)
        command = [_mpiexec(), "-n", str(ranks), *command]
    result = subprocess.run(
        command, env=env, cwd=Path(__file__).parent.parent, capture_output=True, text=True, timeout=1800
    )
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
    lines = [line[len(MARK) :] for line in result.stdout.splitlines() if line.startswith(MARK)]
    return json.loads(lines[0])


def measure(args: argparse.Namespace) -> dict:
    common = ["--backend", args.backend]
    throughput: dict[str, list[float]] = {label: [] for label, *_ in CONFIGURATIONS}
    for round_ in range(args.rounds):
        for label, ranks, threads, overlap in CONFIGURATIONS:
            worker = ["throughput", *common, "--steps", str(args.steps), "--overlap", "on" if overlap else "off"]
            value = launch(ranks, threads, worker)["samples_per_s"]
            throughput[label].append(value)
            print(f"round {round_ + 1}/{args.rounds}: {label}: {value:,.0f} samples/s", flush=True)
    sizes = ",".join(map(str, args.batch_sizes))
    worker = ["share", *common, "--overlap", "off", "--share-samples", str(args.share_samples), "--batch-sizes", sizes]
    share = launch(2, 1, worker)["rows"]
    for row in share:
        print(f"batch {row['batch']}: sums {100 * row['share']:.1f}% of the epoch", flush=True)
    return {
        "command": "python -m benchmarks.bench_distributed " + shlex.join(args.argv),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_description(),
        "note": args.note,
        "backend": args.backend,
        "steps": args.steps,
        "rounds": args.rounds,
        "throughput": throughput,
        "share_samples": args.share_samples,
        "share": share,
    }


def report(result: dict) -> str:
    machine = result["machine"]
    median = {label: statistics.median(values) for label, values in result["throughput"].items()}
    base = median["1 rank x 1 thread"]
    lines = [
        "# Data-parallel training on one machine",
        "",
        f"`{result['command']}`, {result['date']}; {machine.get('cpu')}, {machine.get('cores')} cores, "
        f"backend {result['backend']}.",
    ]
    if result.get("note"):
        lines += ["", result["note"]]
    lines += [
        "",
        f"## Throughput: SimpleConvNet, global batch {BATCH}",
        "",
        f"{result['steps']} timed steps per run after a warm-up epoch; median of {result['rounds']} rounds that "
        "alternate the configurations, with the smallest and the largest.",
        "",
        "![throughput](throughput.png)",
        "",
        "| configuration | samples/s (median) | min | max | against 1 rank x 1 thread |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, values in result["throughput"].items():
        low, high, ratio = min(values), max(values), median[label] / base
        lines.append(f"| {label} | {median[label]:,.0f} | {low:,.0f} | {high:,.0f} | {ratio:.2f}x |")
    speedup = median["2 ranks x 1 thread"] / base
    overlap = median["2 ranks x 1 thread"] / median["2 ranks x 1 thread, no overlap"]
    lines += [
        "",
        f"2 ranks x 1 thread against 1 rank x 1 thread: {speedup:.2f}x (target {TARGET}x: "
        f"{'met' if speedup >= TARGET else 'not met'}); overlapping the sums with backward: {overlap:.2f}x "
        "against summing after it.",
        "",
        f"## The sums' share of an epoch against batch size (2 ranks x 1 thread, overlap off, "
        f"{result['share_samples']:,} samples)",
        "",
        "![share](allreduce_share.png)",
        "",
        "| batch | steps | epoch (s) | in the sums (s) | share |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in result["share"]:
        lines.append(
            f"| {row['batch']} | {row['steps']} | {row['epoch_time']:.3f} | {row['sum_time']:.3f} | "
            f"{100 * row['share']:.1f}% |"
        )
    lines += [
        "",
        "The time in the sums counts starting them, testing them and waiting for them, which includes "
        "waiting for the slower rank; packing the gradients into buckets is not counted.",
    ]
    return "\n".join(lines) + "\n"


def plot(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    labels = list(result["throughput"])
    values = [result["throughput"][label] for label in labels]
    medians = [statistics.median(v) for v in values]
    errors = [[m - min(v) for m, v in zip(medians, values)], [max(v) - m for m, v in zip(medians, values)]]
    fig, ax = plt.subplots(figsize=(8, 4), constrained_layout=True)
    ax.barh(labels, medians, xerr=errors, color="tab:blue", alpha=0.8)
    ax.invert_yaxis()
    ax.set_xlabel("samples/s (median, min to max)")
    ax.set_title(f"SimpleConvNet, global batch {BATCH}, backend {result['backend']}")
    ax.grid(axis="x", alpha=0.3)
    save_figure(fig, out / "throughput.png")

    rows = result["share"]
    fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    ax.plot([r["batch"] for r in rows], [100 * r["share"] for r in rows], marker="o")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("global batch size")
    ax.set_ylabel("share of the epoch in the sums (%)")
    ax.set_ylim(bottom=0)
    ax.set_title("Bigger batch, fewer transfers: 2 ranks, gradient sums after backward")
    ax.grid(alpha=0.3)
    save_figure(fig, out / "allreduce_share.png")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_distributed", description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="numba")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of every configuration (default: 5)")
    parser.add_argument("--steps", type=int, default=100, help=f"timed steps of batch {BATCH} per run (default: 100)")
    parser.add_argument("--share-samples", type=int, default=4096, help="samples of the share epochs")
    parser.add_argument(
        "--batch-sizes",
        type=lambda text: [int(part) for part in text.split(",")],
        default=[16, 32, 64, 128, 256, 512],
        help="batch sizes of the share table (default: 16,32,64,128,256,512)",
    )
    parser.add_argument("--quick", action="store_true", help="one round, few steps: a check that it runs")
    parser.add_argument("--note", default="", help="a line for the report (how busy the machine was, say)")
    parser.add_argument("--out", default=str(RESULTS), help=f"output folder (default: {RESULTS})")
    parser.add_argument("--worker", choices=["throughput", "share"], help=argparse.SUPPRESS)
    parser.add_argument("--ranks", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--overlap", choices=["on", "off"], default="on", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        result = work(args)
        if "rank" not in result or result["rank"] == 0:
            print(MARK + json.dumps(result), flush=True)
        return 0
    if args.quick:
        args.rounds, args.steps, args.share_samples, args.batch_sizes = 1, 5, 512, [16, 64, 256]
    args.argv = argv
    result = measure(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "distributed.json", "w") as f:
        json.dump(result, f, indent=1)
    with atomic_write(out / "distributed.md", "w") as f:
        f.write(report(result))
    plot(result, out)
    print(f"wrote {out / 'distributed.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
