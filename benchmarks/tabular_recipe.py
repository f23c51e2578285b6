"""The Keras tabular recipe on the breast-cancer table, several seeds, as one markdown table.

``binary_mlp`` (30-16-8-6-1, ReLU, a sigmoid output, binary cross-entropy), RMSprop at
lr 0.001, batch 32 (Keras's default), 100 epochs, on
:func:`gpucnn.tables.load_breast_cancer`'s split (stratified, seed 0: 455 training and 114
test rows). Per training seed (initial weights and shuffling): the final test loss,
accuracy at 0.5 and ROC AUC (``model.evaluate(..., return_dict=True)``), and the training
time per epoch. Three recipes: Keras's RMSprop (rho 0.9) on the features standardized by
the model (``model.preprocessing``, a :class:`gpucnn.tables.Standardizer` fitted on the
training rows), the same on the raw features, and gpucnn's RMSprop default (decay 0.99) on
standardized features, which is what ``gpucnn train --optimizer rmsprop`` runs.

    python -m benchmarks.tabular_recipe --seeds 0 1 2 --backend numpy

Needs scikit-learn (``pip install 'gpucnn[tables]'``) for the table.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

import gpucnn
from gpucnn.io import atomic_write
from gpucnn.models import build_model
from gpucnn.optimizers import RMSprop
from gpucnn.tables import Standardizer, load_breast_cancer

BATCH_SIZE = 32
EPOCHS = 100
LR = 0.001
RHO = 0.9  # Keras's RMSprop
GPUCNN_DECAY = RMSprop().decay_rate  # gpucnn's (the book's) RMSprop


# (name, features standardized, RMSprop decay rate)
RECIPES = [
    ("gpucnn with Keras's RMSprop (rho 0.9)", True, RHO),
    ("gpucnn with Keras's RMSprop (rho 0.9)", False, RHO),
    (f"gpucnn default, decay {GPUCNN_DECAY}", True, GPUCNN_DECAY),
]


def run(seed: int, recipe: tuple, data: tuple) -> dict:
    """One training run; returns its test metrics and median time per epoch."""
    name, standardize, decay_rate = recipe
    (x_train, t_train), (x_test, t_test) = data
    model = build_model("binary_mlp", x_train.shape[1:], 2, seed=seed)
    if standardize:
        model.preprocessing = Standardizer.fit(x_train)  # the training rows only
    history = model.fit(
        x_train,
        t_train,
        batch_size=BATCH_SIZE,
        epochs=EPOCHS,
        optimizer=RMSprop(lr=LR, decay_rate=decay_rate),
        seed=seed,
        verbose=0,
    )
    return {
        "recipe": name,
        "seed": seed,
        "standardize": standardize,
        **model.evaluate(x_test, t_test, batch_size=500, return_dict=True),
        "epoch_time": float(np.median(history.history["epoch_time"])),
    }


def _recipe_label(recipe: tuple) -> str:
    name, standardize, _ = recipe
    return f"{name}, {'standardized' if standardize else 'raw'}"


def summarise(runs: list[dict], backend: str, seeds: list[int], note: str = "") -> str:
    seed_list = " ".join(map(str, seeds))
    lines = [
        "# The Keras tabular recipe on the breast-cancer table",
        "",
        f"binary_mlp (30-16-8-6-1, ReLU, sigmoid, binary cross-entropy), RMSprop lr {LR}, "
        f"batch {BATCH_SIZE}, {EPOCHS} epochs, float32, backend {backend}; the Wisconsin diagnostic table "
        "(scikit-learn's copy), stratified split with seed 0: 455 training and 114 test rows. "
        "The seed sets the initial weights and the shuffling. Standardized: the model's `preprocessing`, "
        "a Standardizer fitted on the 455 training rows. Keras's RMSprop keeps its running mean of squared "
        f"gradients with rho {RHO}; gpucnn's default (the book's) with decay {GPUCNN_DECAY}.",
        "",
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.machine()} "
        f"({platform.processor() or 'CPU'}) with `python -m benchmarks.tabular_recipe --seeds {seed_list} "
        f"--backend {backend}`. The rows of gpucnn's default are what the command line trains, the same "
        f"weights bit for bit (`tests/test_tabular_cli.py`):",
        "",
        "```sh",
        "for seed in " + seed_list + "; do",
        "  gpucnn train --model binary_mlp --dataset breast-cancer --standardize --optimizer rmsprop --lr 0.001 \\",
        f"      --batch-size {BATCH_SIZE} --epochs {EPOCHS} --seed $seed --backend {backend} --out runs/bc-$seed",
        "done",
        "```",
        "",
        "| recipe | features | seed | test loss | test accuracy | test ROC AUC | time per epoch (median, ms) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        features = "standardized" if r["standardize"] else "raw"
        lines.append(
            f"| {r['recipe']} | {features} | {r['seed']} | {r['loss']:.4f} | {r['accuracy']:.2%} | "
            f"{r['roc_auc']:.4f} | {1000 * r['epoch_time']:.2f} |"
        )
    lines.append("")
    for recipe in RECIPES:
        chosen = [r for r in runs if (r["recipe"], r["standardize"]) == recipe[:2]]
        accuracies = [r["accuracy"] for r in chosen]
        lines.append(
            f"{_recipe_label(recipe)}: test accuracy {', '.join(f'{a:.2%}' for a in accuracies)}; "
            f"median **{statistics.median(accuracies):.2%}**, "
            f"ROC AUC median {statistics.median(r['roc_auc'] for r in chosen):.4f}."
        )
        lines.append("")
    if note:
        lines += ["## Notes", "", note, ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--backend", default="numpy")
    parser.add_argument("--note", default="", help="a paragraph appended to the table (conditions, peers)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/breast_cancer_recipe.md"))
    args = parser.parse_args(argv)
    gpucnn.set_backend(args.backend)
    data = load_breast_cancer()
    runs = []
    for recipe in RECIPES:
        for seed in args.seeds:
            runs.append(run(seed, recipe, data))
            r = runs[-1]
            print(
                f"{_recipe_label(recipe)}, seed {seed}: accuracy {r['accuracy']:.4f}, ROC AUC {r['roc_auc']:.4f}",
                flush=True,
            )
    text = summarise(runs, args.backend, args.seeds, args.note)
    with atomic_write(args.out, "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
