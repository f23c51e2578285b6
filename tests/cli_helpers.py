"""What the tests of the gpucnn command share: tiny runs' arguments, the one error line of a
failure, and the files a run leaves (``history.json``, the model's parameters)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gpucnn.cli import main

SIZE = 12  # 12x12 images: SimpleConvNet's 5x5 convolution and 2x2 pooling still fit


def run_options(out) -> list[str]:
    """The options every tiny run ends with: seed 0, into ``out``, quiet, on the NumPy backend."""
    return ["--seed", "0", "--out", str(out), "--quiet", "--backend", "numpy"]


def train_args(data, out, *extra: str) -> list[str]:
    """A tiny run on the IDX files in ``data``: 60 training images, batches of 20 (3 iterations an epoch)."""
    return [
        "train",
        "--dataset",
        "mnist",
        "--data",
        str(data),
        "--batch-size",
        "20",
        "--lr",
        "0.05",
        *run_options(out),
        *extra,
    ]


def resume_args(data, out, epochs: int, *extra: str) -> list[str]:
    """``--resume`` names only what it needs; the run's options come from the saved run."""
    return ["train", "--data", str(data), "--out", str(out), "--epochs", str(epochs), "--quiet", "--resume", *extra]


def fails(argv: list[str], capsys, status: int = 1) -> str:
    """Run the command, which must fail with ``status``; returns its one error line."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == status
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("gpucnn: error: ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def history(out) -> dict:
    """The ``history.json`` of the run folder ``out``."""
    return json.loads((out / "history.json").read_text())


def params(path) -> dict[str, np.ndarray]:
    """The parameters (``param/...``) of the model file at ``path``."""
    with np.load(path) as data:
        return {key: data[key] for key in data.files if key.startswith("param/")}
