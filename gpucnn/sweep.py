"""``gpucnn sweep``: the same training once per batch size, side by side.

Every run starts from the same initial weights (the same seed) with the same optimizer
and learning rate, so the batch size is the only difference, as in the comparison
people make by hand for batch sizes 16, 32 and 64. Per run it keeps the
:class:`gpucnn.History` (test accuracy and wall time per epoch), the images/s, and the
peak memory of a training step, measured (:func:`gpucnn.memory.training_step_peak`,
after the run, so the tracing does not slow the timed epochs) and estimated
(:func:`gpucnn.memory.estimate_memory`).

Output, in one folder: ``sweep.json`` (everything, with the machine), ``sweep.md``
(a table) and ``sweep.png`` (test accuracy per epoch, wall time per epoch and test
accuracy against training time).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

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
    verbose: int = 0,
    log: Callable[[str], None] = print,
) -> dict:
    """Train ``model_name`` once per batch size; returns the JSON-able result.

    Args:
        model_name: a zoo model (:data:`gpucnn.models.MODELS`).
        train, test: ``(x, t)`` arrays; ``x`` (N, C, H, W).
        batch_sizes: the batch sizes, each trained from the same initial weights.
        epochs: epochs per run; the test set is evaluated after each.
        optimizer, lr, seed, dtype: the same for every run.
        dataset: a name for the plots and the table.
        verbose: passed to ``fit``.
        log: where a line per finished run goes.
    """
    from .backend import get_backend
    from .memory import estimate_memory, training_step_peak
    from .models import build_model
    from .optimizers import get_optimizer
    from .report import machine_description

    x_train, t_train = train
    classes = int(max(t_train.max(), test[1].max())) + 1

    def build() -> Any:
        model = build_model(model_name, x_train.shape[1:], classes, dtype=dtype, seed=seed)
        model.optimizer = get_optimizer(optimizer, lr=lr)
        return model

    runs = []
    for batch_size in batch_sizes:
        model = build()
        history = model.fit(
            x_train, t_train, batch_size=batch_size, epochs=epochs, validation_data=test, seed=seed, verbose=verbose
        )
        step = min(batch_size, len(x_train))
        peak = training_step_peak(build, x_train[:step], t_train[:step])
        logs = history.history
        run = {
            "batch_size": batch_size,
            "history": history.to_dict(),
            "final_test_accuracy": logs["val_accuracy"][-1],
            "best_test_accuracy": max(logs["val_accuracy"]),
            "epoch_time": float(np.mean(logs["epoch_time"])),
            "images_per_s": float(np.mean(logs["images_per_s"])),
            "peak_bytes": peak,
            "model_bytes": estimate_memory(model, step).total,
        }
        runs.append(run)
        log(
            f"batch {batch_size}: test accuracy {run['final_test_accuracy']:.4f}, "
            f"{run['epoch_time']:.1f} s/epoch, {run['images_per_s']:,.0f} images/s"
        )
    return {
        "model": model_name,
        "dataset": dataset,
        "backend": get_backend().name,
        "epochs": epochs,
        "optimizer": optimizer,
        "lr": lr,
        "seed": seed,
        "dtype": dtype,
        "train_samples": len(x_train),
        "test_samples": len(test[0]),
        "machine": machine_description(),
        "runs": runs,
    }


def _table(result: dict) -> str:
    from .memory import format_bytes

    lines = [
        f"# Batch-size sweep: {result['model']} on {result['dataset'] or 'the data'}",
        "",
        f"{result['train_samples']:,} training and {result['test_samples']:,} test images, "
        f"{result['epochs']} epochs, {result['optimizer']} lr {result['lr']}, seed {result['seed']}, "
        f"{result['dtype']}, backend {result['backend']}; machine: {result['machine'].get('cpu')}, "
        f"{result['machine'].get('cores')} cores"
        + (f", GPU {result['machine']['gpu']['name']}" if (result["machine"].get("gpu") or {}).get("name") else ""),
        "",
        "![sweep](sweep.png)",
        "",
        "| batch | final test accuracy | best test accuracy | time per epoch (s) | images/s | "
        "peak memory (step) | memory model |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in result["runs"]:
        lines.append(
            f"| {run['batch_size']} | {run['final_test_accuracy']:.4f} | {run['best_test_accuracy']:.4f} | "
            f"{run['epoch_time']:.2f} | {run['images_per_s']:,.0f} | {format_bytes(run['peak_bytes'])} | "
            f"{format_bytes(run['model_bytes'])} |"
        )
    return "\n".join(lines) + "\n"


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from .plotting import save_figure

    runs = result["runs"]
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(runs)))
    fig, (ax_acc, ax_time, ax_wall) = plt.subplots(1, 3, figsize=(16, 4.5), constrained_layout=True)
    for run, color in zip(runs, colors):
        logs = run["history"]["history"]
        epochs = [e + 1 for e in run["history"]["epoch"]]
        label = f"batch {run['batch_size']}"
        ax_acc.plot(epochs, logs["val_accuracy"], marker="o", color=color, label=label)
        ax_time.plot(epochs, logs["epoch_time"], marker="o", color=color, label=label)
        ax_wall.plot(np.cumsum(logs["epoch_time"]), logs["val_accuracy"], marker="o", color=color, label=label)
    ax_acc.set_title("test accuracy per epoch")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("test accuracy")
    ax_time.set_title("wall time per epoch (training)")
    ax_time.set_xlabel("epoch")
    ax_time.set_ylabel("seconds")
    ax_time.set_ylim(bottom=0)
    ax_wall.set_title("test accuracy against training time")
    ax_wall.set_xlabel("training time (s, cumulative)")
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
    import json

    from .io import atomic_write

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "sweep.json", out / "sweep.md", out / "sweep.png"]
    with atomic_write(paths[0], "w") as f:
        json.dump(result, f, indent=1)
    with atomic_write(paths[1], "w") as f:
        f.write(_table(result))
    _plot(result, paths[2])
    return paths
