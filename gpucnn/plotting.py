"""Learning curves as pictures (matplotlib, no display needed)."""

from __future__ import annotations

import math
import os
from typing import Any

from .files import atomic_write

__all__ = ["plot_history", "save_figure"]


def save_figure(fig: Any, path: str | os.PathLike) -> None:
    """Save a matplotlib figure atomically (PNG by the path's suffix) and close it."""
    import matplotlib.pyplot as plt

    fmt = os.path.splitext(str(path))[1].lstrip(".") or "png"
    with atomic_write(path) as f:
        fig.savefig(f, format=fmt, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_history(history: Any, path: str | os.PathLike, title: str | None = None) -> None:
    """The two plots the book draws: training loss per iteration, and train and test
    accuracy per epoch. ``history`` is a :class:`gpucnn.training.History` or its dict."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    data = history.to_dict() if hasattr(history, "to_dict") else history
    logs, losses = data["history"], data["iteration_loss"]
    epochs = [e + 1 for e in data["epoch"]]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot(range(1, len(losses) + 1), losses, linewidth=0.6, color="tab:blue")
    finite = [v for v in losses if math.isfinite(v)]
    if finite:
        # A spike in the first iterations would flatten the rest of the curve: clip the axis.
        top = min(max(finite), 1.5 * sorted(finite)[int(0.99 * (len(finite) - 1))])
        ax_loss.set_ylim(0, top * 1.05)
    ax_loss.set_xlabel("iteration")
    ax_loss.set_ylabel("training loss (cross-entropy)")
    ax_loss.set_title("loss per iteration")
    ax_loss.grid(alpha=0.3)
    if "accuracy" in logs:
        ax_acc.plot(epochs, logs["accuracy"], marker="o", label="train (running mean)")
    if "val_accuracy" in logs:
        ax_acc.plot(epochs, logs["val_accuracy"], marker="s", linestyle="--", label="test")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy")
    ax_acc.set_title("accuracy per epoch")
    ax_acc.grid(alpha=0.3)
    ax_acc.legend(loc="lower right")
    if title:
        fig.suptitle(title)
    save_figure(fig, path)
