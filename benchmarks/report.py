"""The benchmark suite's report: run ``pytest --benchmark``, read its JSON, draw the answer.

    python -m benchmarks.report --out bench-report                 # run the suite, then the report
    python -m benchmarks.report --sizes small --out bench-report   # batch sizes 1, 8, 32 only
    python -m benchmarks.report --from bench.json --out report     # report on an earlier run

``gpucnn bench`` runs this module from the root of a source checkout. Every case of the
suite stores what it measured in pytest-benchmark's ``extra_info``: ``kind``
(``train_step``, ``inference``, ``kernel``, ``launch``, ``memory``, ``epoch``, ``h2d``),
``backend``, ``model``, ``batch_size`` and the figures (``images_per_s``,
``latency_images_per_s``, ``gb_per_s``, ``us_per_launch``, ``peak_bytes``, ...). The
report groups by those fields, never by parsing test names, and writes into one folder:

* ``report.md``: the machine, then tables of throughput (with the latency where it
  differs, the PyTorch peer and the ratio to it), kernels, launch overhead, transfer
  overhead and memory;
* ``throughput.png``: images/s against batch size, log axes, one line per backend and peer
  (and a dotted one for a backend's latency where it differs);
* ``transfer.png``: the share of an epoch spent on host→device copies (GPU runs only);
* ``memory.png``: peak memory of a training step against batch size, with the memory model;
* ``bench.json``: the pytest-benchmark JSON itself (``machine_info`` holds the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterable
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from gpucnn.io import atomic_write
from gpucnn.memory import format_bytes
from gpucnn.plotting import save_figure

__all__ = [
    "DEFAULT_BATCH_SIZES",
    "PEER",
    "SIZES_ENV",
    "SMALL_BATCH_SIZES",
    "bench_batch_sizes",
    "load_results",
    "main",
    "run_suite",
    "transfer_shares",
    "write_report",
]

SUITE = Path(__file__).resolve().parent
SIZES_ENV = "GPUCNN_BENCH_SIZES"
DEFAULT_BATCH_SIZES = (1, 8, 32, 100, 256, 1024)
SMALL_BATCH_SIZES = (1, 8, 32)
# Tried on GPU backends on top of the defaults; a case whose estimated memory does not
# fit the device skips itself.
GPU_EXTRA_BATCH_SIZES = (2048, 4096, 8192, 16384)
PEER = "torch"


def bench_batch_sizes(gpu: bool = False, spec: str | None = None) -> list[int]:
    """Batch sizes of the throughput and memory cases.

    ``spec`` (default: ``$GPUCNN_BENCH_SIZES``, else ``"default"``): ``"default"``
    (1, 8, 32, 100, 256, 1024, plus 2048 to 16384 on a GPU), ``"small"`` (1, 8, 32) or
    a comma-separated list such as ``"1,32,256"``.
    """
    spec = (os.environ.get(SIZES_ENV) or "default") if spec is None else spec
    spec = spec.strip().lower()
    if spec == "default":
        return [*DEFAULT_BATCH_SIZES, *(GPU_EXTRA_BATCH_SIZES if gpu else ())]
    if spec == "small":
        return list(SMALL_BATCH_SIZES)
    try:
        sizes = sorted({int(part) for part in spec.split(",") if part.strip()})
    except ValueError:
        raise ValueError(
            f"{SIZES_ENV} must be 'default', 'small' or batch sizes like '1,32,256', got {spec!r}"
        ) from None
    if not sizes or sizes[0] < 1:
        raise ValueError(f"{SIZES_ENV} needs batch sizes >= 1, got {spec!r}")
    return sizes


# -- running the suite -----------------------------------------------------------------------


def run_suite(json_path: str | os.PathLike, sizes: str | None = None, pytest_args: Iterable[str] = ()) -> int:
    """``pytest --benchmark benchmarks/ --benchmark-json JSON_PATH`` in a child process; its exit code.

    pytest runs from the checkout's root, so that its ``conftest.py`` (the ``--benchmark``
    switch and the ``measure`` fixture) applies. ``sizes`` sets ``$GPUCNN_BENCH_SIZES``
    for the run.
    """
    missing = [name for name in ("pytest", "pytest_benchmark") if find_spec(name) is None]
    if missing:
        raise RuntimeError(
            f"the benchmark suite needs {' and '.join(missing)} in {sys.executable}: "
            "pip install pytest pytest-benchmark (or pip install -e '.[dev]' in the checkout)"
        )
    env = dict(os.environ)
    if sizes is not None:
        bench_batch_sizes(spec=sizes)  # refuse a bad spec here, not in the child
        env[SIZES_ENV] = sizes
    command = [
        sys.executable,
        "-m",
        "pytest",
        "--benchmark",
        str(SUITE),
        f"--benchmark-json={Path(json_path).resolve()}",
        "-q",
        "-p",
        "no:cacheprovider",
        *pytest_args,
    ]
    return subprocess.run(command, cwd=SUITE.parent, env=env).returncode


def load_results(path: str | os.PathLike) -> dict:
    """A pytest-benchmark JSON file, checked to be one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise ValueError(f"{path} is not a pytest-benchmark JSON (no 'benchmarks' list)")
    return data


def _records(results: dict) -> list[dict]:
    """One flat dict per case: its extra_info, its name and its median time."""
    records = []
    for case in results["benchmarks"]:
        record = dict(case.get("extra_info") or {})
        if "kind" not in record:
            continue  # not a case of this suite
        record["name"] = case.get("name", "?")
        record.setdefault("median_s", (case.get("stats") or {}).get("median"))
        records.append(record)
    return records


# -- the report -----------------------------------------------------------------------------


def _fmt_rate(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}"


def _fmt_bytes(value: float | None) -> str:
    return "–" if value is None else format_bytes(value)


def _machine_lines(results: dict) -> list[str]:
    info = results.get("machine_info") or {}
    mine = info.get("gpucnn") or {}
    libs = ", ".join(f"{k} {v}" for k, v in (mine.get("libraries") or {}).items() if v)
    gpu = mine.get("gpu")
    gpu_text = "none"
    if gpu and "name" in gpu:
        gpu_text = (
            f"{gpu['name']} ({_fmt_bytes(gpu['memory_bytes'])}, compute {gpu['compute_capability']}, "
            f"driver {gpu['driver_version']}, CUDA runtime {gpu['runtime_version']})"
        )
    blas = "; ".join(
        " ".join(str(b[k]) for k in ("internal_api", "version") if b.get(k)) + f" ({b.get('num_threads')} threads)"
        for b in mine.get("blas") or []
    )
    lines = [
        f"- CPU: {mine.get('cpu') or (info.get('cpu') or {}).get('brand_raw', '?')}, "
        f"{mine.get('cores', '?')} cores ({mine.get('usable_cores', '?')} usable), "
        f"memory {_fmt_bytes(mine.get('memory_bytes'))}",
        f"- GPU: {gpu_text}",
        f"- Python {info.get('python_version', mine.get('python', '?'))} "
        f"on {mine.get('platform') or info.get('system', '?')}",
        f"- Libraries: {libs or '?'}",
    ]
    if blas:
        lines.append(f"- BLAS: {blas}")
    if mine.get("environment"):
        lines.append(f"- Environment: {', '.join(f'{k}={v}' for k, v in mine['environment'].items())}")
    if results.get("datetime"):
        lines.append(
            f"- Run: {results['datetime']}"
            + (f", commit {results['commit_info'].get('id', '')[:10]}" if results.get("commit_info") else "")
        )
    return lines


def _saturation(points: dict[int, float]) -> int | None:
    """The smallest batch size reaching 90% of the best throughput."""
    if not points:
        return None
    best = max(points.values())
    return min(b for b, v in points.items() if v >= 0.9 * best)


def _throughput_section(records: list[dict]) -> list[str]:
    lines = [
        "## Throughput (images/s)",
        "",
        "Training step = forward, backward and AdaGrad update on one batch already in the backend's "
        "memory; inference = forward only. Median of the timed rounds. Throughput: calls queued back "
        "to back and synchronized once, as `fit` runs them; a `latency` column, where a backend's "
        "differs (a GPU's, whose device works while the host queues the next call), gives the images/s "
        "of calls each synchronized (on a CPU backend the two are one measurement, shown once). "
        "`torch`: the same network in PyTorch, run in a worker process of its own so that thread pools "
        "never share a process; the last columns divide gpucnn's throughput by PyTorch's (above 1: "
        "gpucnn is faster).",
        "",
    ]
    table: dict[tuple, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in records:
        if r["kind"] in ("train_step", "inference") and r.get("images_per_s"):
            table[(r["model"], r["kind"])][r["backend"]][int(r["batch_size"])] = r["images_per_s"]
    latency = {kind: _latency_series(records, kind) for kind in ("train_step", "inference")}
    order = {"train_step": 0, "inference": 1}
    for (model, kind), series in sorted(table.items(), key=lambda item: (item[0][0], order[item[0][1]])):
        backends = sorted(b for b in series if b != PEER) + ([PEER] if PEER in series else [])
        ours = [b for b in backends if b != PEER]
        sizes = sorted({b for s in series.values() for b in s})
        waited = latency[kind].get(model, {})
        columns = []  # (points, header): each backend's throughput, then its latency where it differs
        for b in backends:
            columns.append((series[b], b))
            if b in waited:
                columns.append((waited[b], f"{b} latency"))
        head = ["batch", *(name for _, name in columns)] + ([f"{b}/{PEER}" for b in ours] if PEER in series else [])
        lines += [
            f"### {model}, {'training step' if kind == 'train_step' else 'inference'}",
            "",
            "| " + " | ".join(head) + " |",
            "|" + "---:|" * len(head),
        ]
        for size in sizes:
            row = [str(size)] + [_fmt_rate(points.get(size)) for points, _ in columns]
            if PEER in series:
                peer = series[PEER].get(size)
                row += [f"{series[b][size] / peer:.2f}" if peer and size in series[b] else "–" for b in ours]
            lines.append("| " + " | ".join(row) + " |")
        knees = [f"{b} at batch {_saturation(series[b])}" for b in backends if series[b]]
        lines += ["", f"Throughput within 10% of its best: {', '.join(knees)}.", ""]
    return lines if table else []


def _latency_series(records: list[dict], kind: str) -> dict[str, dict[str, dict[int, float]]]:
    """``{model: {backend: {batch: latency images/s}}}`` of the records of one kind whose
    latency differs from their throughput (pipelined GPU calls); on a host backend the two
    are one measurement and the latency adds nothing."""
    out: dict[str, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in records:
        waited = r.get("latency_images_per_s")
        if r["kind"] == kind and waited and waited != r.get("images_per_s"):
            out[r["model"]][r["backend"]][int(r["batch_size"])] = waited
    return out


def _launch_section(records: list[dict]) -> list[str]:
    rows = [r for r in records if r["kind"] == "launch" and r.get("us_per_launch") is not None]
    if not rows:
        return []
    lines = [
        "## Kernel launch overhead",
        "",
        "Host time of one launch of the CUDA set, on the CPU (`benchmarks/test_launch.py`): the median "
        "time of a call that makes `launches` launches, divided by their number.",
        "",
        "| case | launches per call | µs per launch |",
        "|---|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: r["case"]):
        lines.append(f"| {r['case']} | {r['launches']:,} | {r['us_per_launch']:.2f} |")
    return [*lines, ""]


def _kernel_section(records: list[dict]) -> list[str]:
    rows = [r for r in records if r["kind"] == "kernel"]
    if not rows:
        return []
    lines = [
        "## Kernels",
        "",
        "GB/s: effective bandwidth = (bytes read once + bytes written once), the least traffic the operation "
        "needs, / the time per call of calls queued back to back. Time: one synchronized call (on a CPU "
        "backend the two times are one measurement).",
        "",
        "| kernel | layer shape | batch | backend | time (ms) | GB/s |",
        "|---|---|---:|---|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: (r["op"], r["shape"], r["batch_size"], r["backend"])):
        lines.append(
            f"| {r['op']} | {r['shape']} | {r['batch_size']} | {r['backend']} | "
            f"{1e3 * r['median_s']:.3f} | {r.get('gb_per_s', 0):.2f} |"
        )
    return [*lines, ""]


def transfer_shares(records: list[dict]) -> dict[tuple, dict[str, float]]:
    """``{(backend, model, batch): {mode: share}}``: the share of an epoch spent copying.

    ``on_device`` computes with no per-batch copy; its one-time copy of the data set
    (``copy_s``) is measured apart. The compute time of an epoch is therefore
    ``epoch_s(on_device) - copy_s``, and a mode's share is ``1 - compute / epoch_s(mode)``.
    """
    epochs: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for r in records:
        if r["kind"] == "epoch":
            epochs[(r["backend"], r["model"], int(r["batch_size"]))][r["mode"]] = r
    shares = {}
    for key, modes in epochs.items():
        if "on_device" not in modes:
            continue
        base = modes["on_device"]
        compute = max(base["epoch_s"] - base.get("copy_s", 0.0), 1e-12)
        shares[key] = {mode: max(0.0, 1 - compute / r["epoch_s"]) for mode, r in modes.items() if mode != "on_device"}
        shares[key]["on_device"] = base.get("copy_s", 0.0) / base["epoch_s"]
    return shares


def _transfer_section(records: list[dict]) -> list[str]:
    shares = transfer_shares(records)
    copies = [r for r in records if r["kind"] == "h2d"]
    if not shares and not copies:
        return ["## Transfer overhead", "", "No GPU backend in this run: host→device transfers were not measured.", ""]
    lines = [
        "## Transfer overhead",
        "",
        "Share of a training epoch spent on host→device copies: (a) pageable per-batch copies, (b) "
        "`fit(prefetch=True)` (pinned memory, copy of batch i+1 overlapped with batch i), (c) "
        "`fit(data_on_device=True)` (one copy of the whole set, counted in its epoch).",
        "",
        "| backend | model | batch | pageable | prefetch | on device |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for (backend, model, batch), s in sorted(shares.items()):
        cells = [f"{100 * s[m]:.1f}%" if m in s else "–" for m in ("pageable", "prefetch", "on_device")]
        lines.append(f"| {backend} | {model} | {batch} | " + " | ".join(cells) + " |")
    if copies:
        lines += ["", "| backend | host memory | batch | H2D GB/s |", "|---|---|---:|---:|"]
        for r in sorted(copies, key=lambda r: (r["backend"], r["memory"], r["batch_size"])):
            lines.append(f"| {r['backend']} | {r['memory']} | {r['batch_size']} | {r.get('gb_per_s', 0):.2f} |")
    return [*lines, ""]


def _memory_section(records: list[dict]) -> list[str]:
    rows = [r for r in records if r["kind"] == "memory"]
    if not rows:
        return []
    lines = [
        "## Memory of a training step",
        "",
        "Measured: peak bytes allocated while building the model and running two training steps "
        "(host: tracemalloc; GPU: CuPy's memory pool). Model: `gpucnn.memory.estimate_memory`.",
        "",
        "| model | backend | batch | measured | memory model | measured/model | im2col columns |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: (r["model"], r["backend"], r["batch_size"])):
        ratio = r["peak_bytes"] / r["model_bytes"] if r.get("model_bytes") else float("nan")
        lines.append(
            f"| {r['model']} | {r['backend']} | {r['batch_size']} | {_fmt_bytes(r['peak_bytes'])} | "
            f"{_fmt_bytes(r['model_bytes'])} | {ratio:.2f} | {_fmt_bytes(r.get('im2col_bytes'))} |"
        )
    return [*lines, ""]


def _series(records: list[dict], kind: str, value: str) -> dict[str, dict[str, dict[int, float]]]:
    """``{model: {backend: {batch: value}}}`` of the records of one kind."""
    out: dict[str, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in records:
        if r["kind"] == kind and r.get(value) is not None:
            out[r["model"]][r["backend"]][int(r["batch_size"])] = r[value]
    return out


def _log_axes(ax: Any, sizes: Iterable[int], log_y: bool = True) -> None:
    """Log axes with the batch sizes as plain-number ticks and plain-number y labels."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    sizes = sorted(set(sizes))
    ax.set_xscale("log")
    if sizes:
        ax.set_xticks(sizes)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    if log_y:
        ax.set_yscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:,.6g}")
        ax.yaxis.set_major_formatter(plain)
        # label the 2s and 5s between powers of ten, so that a narrow range still reads
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: plain(v) if f"{v:.3e}"[0] in "25" else ""))
    ax.grid(alpha=0.3, which="both")


def _line_style(backend: str) -> dict:
    return {"linestyle": "--", "marker": "s"} if backend == PEER else {"linestyle": "-", "marker": "o"}


def _plot_throughput(records: list[dict], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    kinds = [("train_step", "training step"), ("inference", "inference")]
    data = {kind: _series(records, kind, "images_per_s") for kind, _ in kinds}
    latency = {kind: _latency_series(records, kind) for kind, _ in kinds}
    models = sorted({m for d in data.values() for m in d})
    if not models:
        return False
    fig, axes = plt.subplots(len(models), 2, figsize=(11, 4 * len(models)), squeeze=False, constrained_layout=True)
    for row, model in enumerate(models):
        for col, (kind, title) in enumerate(kinds):
            ax = axes[row][col]
            every = set()
            waited = latency[kind].get(model, {})
            for backend, points in sorted(data[kind].get(model, {}).items()):
                sizes = sorted(points)
                every.update(sizes)
                (line,) = ax.plot(sizes, [points[s] for s in sizes], label=backend, **_line_style(backend))
                if backend in waited:  # dotted, in the colour of the backend's throughput
                    slow = waited[backend]
                    sizes = sorted(slow)
                    ax.plot(
                        sizes,
                        [slow[s] for s in sizes],
                        color=line.get_color(),
                        linestyle=":",
                        marker=".",
                        label=f"{backend} latency",
                    )
            _log_axes(ax, every)
            ax.set_xlabel("batch size")
            ax.set_ylabel("images / s")
            ax.set_title(f"{model}: {title}")
            if ax.lines:
                ax.legend()
    fig.suptitle("Throughput against batch size (higher is better)")
    save_figure(fig, path)
    return True


def _plot_transfer(records: list[dict], path: Path) -> bool:
    shares = transfer_shares(records)
    if not shares:
        return False
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    models = sorted({model for _, model, _ in shares})
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False, constrained_layout=True)
    for ax, model in zip(axes[0], models):
        every = set()
        for backend in sorted({b for b, m, _ in shares if m == model}):
            batches = sorted(batch for b, m, batch in shares if b == backend and m == model)
            every.update(batches)
            for mode, label in (
                ("pageable", "pageable copies"),
                ("prefetch", "prefetch (pinned, overlapped)"),
                ("on_device", "data on device (one copy)"),
            ):
                values = [100 * shares[(backend, model, batch)].get(mode, float("nan")) for batch in batches]
                ax.plot(batches, values, marker="o", label=f"{backend}: {label}")
        _log_axes(ax, every, log_y=False)
        ax.set_xlabel("batch size")
        ax.set_ylabel("share of the epoch spent copying (%)")
        ax.set_title(model)
        ax.legend(fontsize="small")
    fig.suptitle("Host→device transfer overhead against batch size")
    save_figure(fig, path)
    return True


def _plot_memory(records: list[dict], path: Path) -> bool:
    measured = _series(records, "memory", "peak_bytes")
    if not measured:
        return False
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    estimated = _series(records, "memory", "model_bytes")
    models = sorted(measured)
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False, constrained_layout=True)
    mib = 2**20
    for ax, model in zip(axes[0], models):
        for backend, points in sorted(measured[model].items()):
            sizes = sorted(points)
            ax.plot(sizes, [points[s] / mib for s in sizes], marker="o", label=f"{backend}: measured")
        model_points = {}
        for points in estimated[model].values():
            model_points.update(points)
        sizes = sorted(model_points)
        ax.plot(sizes, [model_points[s] / mib for s in sizes], color="black", linestyle=":", label="memory model")
        _log_axes(ax, sizes)
        ax.set_xlabel("batch size")
        ax.set_ylabel("peak memory of a training step (MiB)")
        ax.set_title(model)
        ax.legend(fontsize="small")
    fig.suptitle("Peak memory against batch size")
    save_figure(fig, path)
    return True


def write_report(results: dict, out_dir: str | os.PathLike) -> list[Path]:
    """Write ``report.md`` and the plots for ``results`` (a pytest-benchmark JSON) into ``out_dir``.

    Returns the files written. Plots without data (transfer on a CPU-only run) are left out,
    and the markdown says why.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = _records(results)
    if not records:
        raise ValueError("the JSON holds no case of the gpucnn benchmark suite (no 'kind' in any extra_info)")
    written = []
    plots = {"throughput.png": _plot_throughput, "transfer.png": _plot_transfer, "memory.png": _plot_memory}
    drawn = []
    for name, plot in plots.items():
        if plot(records, out / name):
            written.append(out / name)
            drawn.append(name)
    lines = ["# gpucnn benchmark report", "", *_machine_lines(results), ""]
    lines += [f"![{name[:-4]}]({name})" for name in drawn] + [""]
    for section in (_throughput_section, _kernel_section, _launch_section, _transfer_section, _memory_section):
        lines += section(records)
    with atomic_write(out / "report.md", "w") as f:
        f.write("\n".join(lines).rstrip() + "\n")
    return [out / "report.md", *written]


def bench(
    out_dir: str | os.PathLike, from_json: str | os.PathLike | None = None, sizes: str | None = None
) -> list[Path]:
    """Run the suite into ``OUT/bench.json`` (or copy ``from_json`` there) and write the
    report beside it; returns the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "bench.json"
    if from_json is not None:
        results = load_results(from_json)
        if Path(from_json).resolve() != json_path.resolve():
            shutil.copyfile(from_json, json_path)
    else:
        code = run_suite(json_path, sizes=sizes)
        if not json_path.is_file():
            raise RuntimeError(f"the benchmark run failed (pytest exit code {code}) and wrote no {json_path}")
        if code != 0:
            print(f"pytest exited with code {code}; reporting what was measured", file=sys.stderr)
        results = load_results(json_path)
    return [*write_report(results, out), json_path]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n")[0])
    parser.add_argument("--out", metavar="DIR", default="bench-report", help="output folder (default: %(default)s)")
    parser.add_argument(
        "--from",
        dest="from_json",
        metavar="FILE",
        help="a pytest-benchmark JSON to report on, instead of running the suite",
    )
    parser.add_argument(
        "--sizes",
        metavar="SPEC",
        help=f"batch sizes: default, small or a list like 1,32,256 (sets ${SIZES_ENV} for the run)",
    )
    args = parser.parse_args(argv)
    try:
        written = bench(args.out, from_json=args.from_json, sizes=args.sizes)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        raise SystemExit(f"{parser.prog}: error: {exc}") from None
    print("wrote " + ", ".join(str(path) for path in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
