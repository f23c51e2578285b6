"""The gpucnn command: a tiny real run into a temporary folder, then evaluate and resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import gpucnn
from gpucnn.cli import main

from .idx_files import write_mnist


@pytest.fixture
def data_dir(tmp_path):
    folder = tmp_path / "data"
    write_mnist(folder, n_train=60, n_test=30)
    return folder


def test_train_evaluate_resume(tmp_path, data_dir, capsys):
    out = tmp_path / "run"
    args = [
        "train",
        "--dataset",
        "mnist",
        "--data",
        str(data_dir),
        "--batch-size",
        "20",
        "--epochs",
        "1",
        "--lr",
        "0.05",
        "--seed",
        "0",
        "--out",
        str(out),
        "--quiet",
        "--backend",
        "numpy",
    ]
    assert main(args) == 0
    for name in ("model.npz", "history.json", "curves.png"):
        assert (out / name).stat().st_size > 0, name
    history = json.loads((out / "history.json").read_text())
    assert history["epoch"] == [0] and len(history["iteration_loss"]) == 3
    assert set(history["history"]) >= {"loss", "accuracy", "val_loss", "val_accuracy", "epoch_time"}
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "Epoch 1/1" in printed and "saved" in printed

    assert main(["evaluate", str(out / "model.npz"), "--dataset", "mnist", "--data", str(data_dir)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["samples"] == 30 and 0 <= report["accuracy"] <= 1

    assert main(args[:8] + ["2"] + args[9:] + ["--resume"]) == 0
    assert "resuming" in capsys.readouterr().out
    history = json.loads((out / "history.json").read_text())
    assert history["epoch"] == [0, 1] and len(history["iteration_loss"]) == 6
    assert gpucnn.load(out / "model.npz").epoch == 2


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "--batch-size", "0"], "expected a number >= 1, got 0"),
        (["train", "--epochs", "two"], "expected a whole number, got 'two'"),
        (["train", "--model", "resnet"], "invalid choice: 'resnet'"),
        (["train", "--lr", "-1"], "expected a number > 0"),
        (["train", "--backend", "tpu"], "invalid choice: 'tpu'"),
        ([], "required"),
    ],
)
def test_bad_arguments_are_argparse_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_data_and_model_are_clear_errors(tmp_path):
    with pytest.raises(SystemExit, match="gpucnn: error: .*not a folder"):
        main(["train", "--dataset", "mnist", "--data", str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit, match="gpucnn: error: no model file at"):
        main(["evaluate", str(tmp_path / "absent.npz")])


def test_info_and_the_installed_command():
    result = subprocess.run(
        [sys.executable, "-m", "gpucnn", "info"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "GPUCNN_BACKEND": "numpy"},
    )
    assert result.returncode == 0, result.stderr
    assert "numpy" in result.stdout and "backends:" in result.stdout
    assert "  numpy     usable" in result.stdout
