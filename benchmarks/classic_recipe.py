"""The classic recipe on Fashion-MNIST, several seeds, as one markdown table.

SimpleConvNet, AdaGrad lr 0.06, batch 100, weights N(0, 0.01²), 10 epochs: test accuracy
and training time per epoch for each seed, and the median final accuracy.

    python -m benchmarks.classic_recipe --seeds 0 1 2 --backend numpy --runs runs/classic
    python -m benchmarks.classic_recipe --from runs/classic-seed0 runs/classic-seed1 ...

The first form trains (one ``gpucnn train`` run per seed, into RUNS-seedS); the second
only summarises existing run folders (their ``history.json``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from gpucnn.io import atomic_write

RECIPE = [
    "--model",
    "simple_convnet",
    "--dataset",
    "fashion-mnist",
    "--batch-size",
    "100",
    "--epochs",
    "10",
    "--optimizer",
    "adagrad",
    "--lr",
    "0.06",
]


def train(seeds: list[int], backend: str, runs: str) -> list[Path]:
    folders = []
    for seed in seeds:
        folder = Path(f"{runs}-seed{seed}")
        cmd = [
            sys.executable,
            "-m",
            "gpucnn",
            "train",
            *RECIPE,
            "--backend",
            backend,
            "--seed",
            str(seed),
            "--out",
            str(folder),
            "--quiet",
        ]
        print(" ".join(cmd[2:]), flush=True)
        subprocess.run(cmd, check=True)
        folders.append(folder)
    return folders


def _per_epoch(runs: list, epochs: int, key: str, fmt: str, with_backend: bool) -> list[str]:
    """A markdown table: one row per epoch, one column per run, the history's ``key``."""
    names = [f"seed {p.get('seed')}" + (f" ({p.get('backend')})" if with_backend else "") for _, p, _ in runs]
    rows = ["| epoch | " + " | ".join(names) + " |", "|---|" + "---|" * len(runs)]
    for e in range(epochs):
        cells = [fmt.format(h[key][e]) if e < len(h[key]) else "" for _, _, h in runs]
        rows.append(f"| {e + 1} | " + " | ".join(cells) + " |")
    return rows


def summarise(folders: list[Path], note: str = "") -> str:
    runs = []
    for folder in folders:
        data = json.loads((folder / "history.json").read_text())
        runs.append((folder, data["params"], data["history"]))
    epochs = max(len(h["val_accuracy"]) for _, _, h in runs)
    finals = [h["val_accuracy"][-1] for _, _, h in runs]
    lines = [
        "# The classic recipe on Fashion-MNIST",
        "",
        "SimpleConvNet (the book's constructor), AdaGrad lr 0.06, batch 100, weights N(0, 0.01²), "
        "10 epochs, 60,000 training and 10,000 test images.",
        "",
        f"Summarised {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.machine()} "
        f"({platform.processor() or 'CPU'}), from: {', '.join(str(f) for f, _, _ in runs)}.",
        "",
        "## Test accuracy after each epoch",
        "",
        *_per_epoch(runs, epochs, "val_accuracy", "{:.2%}", with_backend=True),
        "",
        f"Final test accuracy: {', '.join(f'{a:.2%}' for a in finals)}; median **{statistics.median(finals):.2%}**.",
        "",
        "## Training time per epoch (seconds; evaluation excluded)",
        "",
        *_per_epoch(runs, epochs, "epoch_time", "{:.1f}", with_backend=False),
    ]
    if note:
        lines += ["", "## Notes", "", note]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--backend", default="numpy")
    parser.add_argument("--runs", default="runs/classic", help="run folders are RUNS-seedS")
    parser.add_argument("--from", dest="folders", nargs="+", type=Path, help="summarise these run folders only")
    parser.add_argument("--note", default="", help="a paragraph appended to the table (conditions, peers)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/classic_recipe.md"))
    args = parser.parse_args(argv)
    folders = args.folders or train(args.seeds, args.backend, args.runs)
    text = summarise(folders, args.note)
    with atomic_write(args.out, "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
