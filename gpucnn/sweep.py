"""``gpucnn sweep``: the same training once per batch size, side by side.

Every run starts from the same initial weights (the same seed) with the same optimizer
and learning rate, so the batch size is the only difference, as in the comparison
people make by hand for batch sizes 16, 32 and 64. Per run it keeps the
:class:`gpucnn.History` (test accuracy, and ROC AUC for a binary classifier, and wall
time per epoch), the samples/s, and the peak memory of a training step, measured
(:func:`gpucnn.memory.training_step_peak`, after the run, so the tracing does not slow
the timed epochs) and estimated (:func:`gpucnn.memory.estimate_memory`).

A batch size larger than the training set trains as the whole set, one step an epoch
(``fit`` warns); the run records the size it trained with as ``effective_batch_size``.

Output, in one folder: ``sweep.json`` (everything, with the machine), ``sweep.md``
(a table) and ``sweep.png`` (test accuracy per epoch, wall time per epoch and test
accuracy against training time). The table gives each run's median time per epoch, and
the samples per second it makes: one slow epoch (another process on the machine) moves
a mean, not a median, and short epochs show every such disturbance.

Under ``mpiexec`` (``communicator``, see :func:`gpucnn.distributed.spread`) the batch
sizes are shared over the ranks, each trained on its own rank, or data-parallel on a
group of ranks when there are more ranks than batch sizes; every rank returns the whole
result. Runs that trained at the same time on one machine shared its cores and memory
bandwidth: the report says so, as their times are not those of a run alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .backend import get_backend
from .distributed import COLLECTIVE_ERRORS, spread
from .files import atomic_write
from .machine import machine_description
from .memory import estimate_memory, format_bytes, training_step_peak
from .models import build_model
from .optimizers import get_optimizer
from .plotting import save_figure
from .training import format_duration

__all__ = ["run_sweep", "write_sweep"]


def run_sweep(
    model_name: str,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    batch_sizes: Sequence[int],
    epochs: int,
    *,
    optimizer: str = "adagrad",
    lr: float = 0.06,
    seed: int = 0,
    dtype: str = "float32",
    dataset: str = "",
    preprocessing: Any = None,
    verbose: int = 0,
    log: Callable[[str], None] = print,
    lr_schedule: Any = None,
    communicator: Any = None,
) -> dict:
    """Train ``model_name`` once per batch size; returns the JSON-able result.

    Args:
        model_name: a zoo model (:data:`gpucnn.models.MODELS`).
        train, test: ``(x, t)`` arrays; ``x`` (N, C, H, W) images or (N, F) rows.
        batch_sizes: the batch sizes, each trained from the same initial weights.
        epochs: epochs per run; the test set is evaluated after each.
        optimizer, lr, seed, dtype: the same for every run.
        dataset: a name for the plots and the table.
        preprocessing: set as every model's ``preprocessing`` (a
            :class:`gpucnn.tables.Standardizer` fitted on ``train``), or None.
        verbose: passed to ``fit``.
        log: where a line per finished run goes (under ``communicator``: this rank's
            runs as they end, then the other ranks' runs).
        lr_schedule: passed to ``fit`` (:class:`gpucnn.schedules.LinearScaling`).
        communicator: a :class:`gpucnn.distributed.Communicator` whose ranks share the
            batch sizes (every rank calls ``run_sweep`` alike).
    """
    x_train, t_train = train
    classes = int(max(t_train.max(), test[1].max())) + 1

    def build() -> Any:
        model = build_model(model_name, x_train.shape[1:], classes, dtype=dtype, seed=seed)
        model.optimizer = get_optimizer(optimizer, lr=lr)
        model.preprocessing = preprocessing
        return model

    share = None if communicator is None else spread(len(batch_sizes), communicator)
    group = None if share is None else share.group
    lead = group is None or group.rank == 0  # the rank that keeps and logs its group's runs
    guard = contextlib.nullcontext()
    if communicator is not None:  # alone on a rank, every error is this rank's own
        guard = communicator.guard(collective=COLLECTIVE_ERRORS if group is not None else (), group=group)
    runs: dict[int, dict] = {}
    with guard:
        for i in range(len(batch_sizes)) if share is None else share.mine:
            runs[i] = _one_run(build, batch_sizes[i], epochs, train, test, seed, verbose, lr_schedule, group)
            if lead:
                log(_run_line(runs[i], len(x_train)))
    distributed = None
    if communicator is not None:
        gathered = communicator.allgather_object(runs if lead else {})
        for rank, part in enumerate(gathered):
            for i, run in part.items():
                if i not in runs:
                    log(_run_line(run, len(x_train)) + f" (rank {rank})")
                runs[i] = run
        distributed = {"ranks": communicator.size, "hosts": communicator.allgather_object(socket.gethostname())}
        for i, run in runs.items():
            run["ranks"] = share.ranks[i]
    result = {
        "model": model_name,
        "dataset": dataset,
        "backend": get_backend().name,
        "epochs": epochs,
        "optimizer": optimizer,
        "lr": lr,
        "seed": seed,
        "dtype": dtype,
        "preprocessing": None if preprocessing is None else preprocessing.to_dict()["type"],
        "train_samples": len(x_train),
        "test_samples": len(test[0]),
        "machine": machine_description(),
        "runs": [runs[i] for i in range(len(batch_sizes))],
    }
    if lr_schedule is not None:
        result["lr_schedule"] = repr(lr_schedule)
    if distributed is not None:
        result["distributed"] = distributed
    return result


def _one_run(build, batch_size, epochs, train, test, seed, verbose, lr_schedule, group) -> dict:
    """Train one model at ``batch_size`` (data-parallel over ``group``, or alone) and measure it."""
    x_train, t_train = train
    model = build()
    history = model.fit(
        x_train,
        t_train,
        batch_size=batch_size,
        epochs=epochs,
        validation_data=test,
        seed=seed,
        verbose=verbose if group is None or group.rank == 0 else 0,
        lr_schedule=lr_schedule,
        communicator=group,
    )
    step = min(batch_size, len(x_train))
    peak = training_step_peak(build, x_train[:step], t_train[:step])
    logs = history.history
    run = {
        "batch_size": batch_size,
        "effective_batch_size": history.params["batch_size"],
        "history": history.to_dict(),
        "final_test_accuracy": logs["val_accuracy"][-1],
        "best_test_accuracy": max(logs["val_accuracy"]),
        "epoch_time": float(np.mean(logs["epoch_time"])),
        "epoch_time_median": float(np.median(logs["epoch_time"])),
        "images_per_s": float(np.mean(logs["images_per_s"])),
        "peak_bytes": peak,
        "model_bytes": estimate_memory(model, step).total,
    }
    if "val_roc_auc" in logs:
        run["final_test_roc_auc"] = logs["val_roc_auc"][-1]
    return run


def _run_line(run: dict, samples: int) -> str:
    """The line logged for a finished run."""
    auc = f", ROC AUC {run['final_test_roc_auc']:.4f}" if "final_test_roc_auc" in run else ""
    return (
        f"batch {_batch_label(run)}: test accuracy {run['final_test_accuracy']:.4f}{auc}, "
        f"{format_duration(run['epoch_time_median'])}/epoch (median), "
        f"{samples / run['epoch_time_median']:,.0f} samples/s"
    )


def _batch_label(run: dict) -> str:
    """``64``, or ``1000 (as 455)`` for a batch size larger than the training set."""
    effective = run.get("effective_batch_size", run["batch_size"])
    return str(run["batch_size"]) if effective == run["batch_size"] else f"{run['batch_size']} (as {effective})"


def _table(result: dict) -> str:
    runs = result["runs"]
    ranked = all("final_test_roc_auc" in run for run in runs)
    preprocessing = f", inputs through a {result['preprocessing']}" if result.get("preprocessing") else ""
    lines = [
        f"# Batch-size sweep: {result['model']} on {result['dataset'] or 'the data'}",
        "",
        f"{result['train_samples']:,} training and {result['test_samples']:,} test samples, "
        f"{result['epochs']} epochs, {result['optimizer']} lr {result['lr']}, seed {result['seed']}, "
        f"{result['dtype']}{preprocessing}, backend {result['backend']}; machine: {result['machine'].get('cpu')}, "
        f"{result['machine'].get('cores')} cores"
        + (f", GPU {result['machine']['gpu']['name']}" if (result["machine"].get("gpu") or {}).get("name") else ""),
        "",
    ]
    if result.get("lr_schedule"):
        lines += [f"Learning rate: {result['lr']} scaled by {result['lr_schedule']} (gpucnn.schedules).", ""]
    if result.get("distributed"):
        lines += [_sharing(result), ""]
    clamped = [run for run in runs if run.get("effective_batch_size", run["batch_size"]) != run["batch_size"]]
    if clamped:
        lines += [
            f"Batch sizes above the {result['train_samples']:,} training samples train as "
            f"{result['train_samples']:,}, the whole set in one step an epoch: "
            f"{', '.join(str(run['batch_size']) for run in clamped)}.",
            "",
        ]
    lines += [
        "![sweep](sweep.png)",
        "",
        "| batch | final test accuracy | best test accuracy | "
        + ("final test ROC AUC | " if ranked else "")
        + "time per epoch (median) | samples/s | peak memory (step) | memory model |",
        "|---:|---:|---:|" + ("---:|" if ranked else "") + "---:|---:|---:|---:|",
    ]
    for run in runs:
        auc = f" {run['final_test_roc_auc']:.4f} |" if ranked else ""
        epoch = run["epoch_time_median"]
        lines.append(
            f"| {_batch_label(run)} | {run['final_test_accuracy']:.4f} | {run['best_test_accuracy']:.4f} |{auc} "
            f"{format_duration(epoch)} | {result['train_samples'] / epoch:,.0f} | {format_bytes(run['peak_bytes'])} | "
            f"{format_bytes(run['model_bytes'])} |"
        )
    return "\n".join(lines) + "\n"


def _sharing(result: dict) -> str:
    """Which ranks trained which batch sizes, and which runs shared a machine."""
    hosts = result["distributed"]["hosts"]
    runs = result["runs"]
    who = "; ".join(
        f"batch {_batch_label(run)} on rank{'s' if len(run['ranks']) > 1 else ''} {', '.join(map(str, run['ranks']))}"
        for run in runs
    )
    text = f"Trained under mpiexec on {len(hosts)} ranks, the batch sizes at the same time: {who}."
    shared = []
    for host in sorted(set(hosts)):
        together = [run for run in runs if any(hosts[rank] == host for rank in run["ranks"])]
        if len(together) > 1:
            shared.append(f"{host} (batch sizes {', '.join(_batch_label(run) for run in together)})")
    if shared:
        text += (
            f" Runs that shared a machine: {'; '.join(shared)}. They shared its cores and memory bandwidth, so "
            "their times are not comparable to those of a run alone."
        )
    return text


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    runs = result["runs"]
    times = np.concatenate([run["history"]["history"]["epoch_time"] for run in runs])
    # Milliseconds for the sub-second epochs of a small table; a log scale when the epochs of
    # the smallest and largest batch differ by more than a factor of 20.
    unit, scale = ("ms", 1000.0) if times.max() < 1 else ("s", 1.0)
    spread = times.max() / max(times.min(), 1e-12) > 20
    marker = "o" if result["epochs"] <= 20 else None
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(runs)))
    fig, (ax_acc, ax_time, ax_wall) = plt.subplots(1, 3, figsize=(16, 4.5), constrained_layout=True)
    for run, color in zip(runs, colors):
        logs = run["history"]["history"]
        epochs = [e + 1 for e in run["history"]["epoch"]]
        label = f"batch {_batch_label(run)}"
        epoch_time = scale * np.asarray(logs["epoch_time"])
        ax_acc.plot(epochs, logs["val_accuracy"], marker=marker, color=color, label=label)
        ax_time.plot(epochs, epoch_time, marker=marker, color=color, label=label)
        ax_wall.plot(np.cumsum(epoch_time), logs["val_accuracy"], marker=marker, color=color, label=label)
    ax_acc.set_title("test accuracy per epoch")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("test accuracy")
    ax_time.set_title("wall time per epoch (training)")
    ax_time.set_xlabel("epoch")
    ax_time.set_ylabel("milliseconds" if unit == "ms" else "seconds")
    if spread:
        ax_time.set_yscale("log")
        ax_wall.set_xscale("log")
    else:
        ax_time.set_ylim(bottom=0)
    ax_wall.set_title("test accuracy against training time")
    ax_wall.set_xlabel(f"training time ({unit}, cumulative)")
    ax_wall.set_ylabel("test accuracy")
    for ax in (ax_acc, ax_time, ax_wall):
        ax.grid(alpha=0.3)
    for ax in (ax_acc, ax_time):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs
    ax_acc.legend(loc="lower right")
    fig.suptitle(
        f"{result['model']} on {result['dataset'] or 'the data'}: the same training at each batch size "
        f"({result['optimizer']} lr {result['lr']}, backend {result['backend']})"
    )
    save_figure(fig, path)


def write_sweep(result: dict, out_dir: str | os.PathLike) -> list[Path]:
    """Write ``sweep.json``, ``sweep.md`` and ``sweep.png`` into ``out_dir``; returns them."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "sweep.json", out / "sweep.md", out / "sweep.png"]
    with atomic_write(paths[0], "w") as f:
        json.dump(result, f, indent=1)
    with atomic_write(paths[1], "w") as f:
        f.write(_table(result))
    _plot(result, paths[2])
    return paths
