"""The gpucnn command: tiny real runs into temporary folders, and every way a user can get it wrong.

The contract (gpucnn/cli.py): a failure is one ``gpucnn: error: ...`` line on stderr, exit
status 2 for usage errors and 1 for run-time failures, no traceback unless ``--debug``.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import gpucnn
from gpucnn import backend as backend_registry
from gpucnn import cli
from gpucnn.cli import CommandError, main

from .cli_helpers import SIZE, fails, history, params, resume_args, train_args
from .idx_files import write_cifar10, write_mnist


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The data, a run of one epoch and the same run trained for two epochs without a stop."""
    root = tmp_path_factory.mktemp("cli")
    write_mnist(root / "data", n_train=60, n_test=30, size=SIZE)
    assert main(train_args(root / "data", root / "one", "--epochs", "1")) == 0
    assert main(train_args(root / "data", root / "two", "--epochs", "2")) == 0
    return root


@pytest.fixture
def run(runs, tmp_path):
    """A copy of the one-epoch run, to resume or damage."""
    shutil.copytree(runs / "one", tmp_path / "run")
    return tmp_path / "run"


def assert_same_as_uninterrupted(out, runs) -> None:
    """The resumed run ends with the weights and the history of the run trained without a stop."""
    want, got = params(runs / "two" / "model.npz"), params(out / "model.npz")
    assert want.keys() == got.keys()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    h, ref = history(out), history(runs / "two")
    assert h["epoch"] == [0, 1] and h["iteration_loss"] == ref["iteration_loss"]
    assert h["epoch_iterations"] == [3, 3] and h["params_sha256"] == ref["params_sha256"]
    assert h["history"]["val_accuracy"] == ref["history"]["val_accuracy"]
    assert not list(out.glob(".*.tmp"))


# -- runs that work ---------------------------------------------------------------------


def test_train_evaluate_resume(runs, run, capsys):
    out = runs / "one"
    for name in ("model.npz", "history.json", "curves.png"):
        assert (out / name).stat().st_size > 0, name
    h = history(out)
    assert h["epoch"] == [0] and len(h["iteration_loss"]) == 3 and h["epoch_iterations"] == [3]
    assert set(h["history"]) >= {"loss", "accuracy", "val_loss", "val_accuracy", "epoch_time"}
    assert h["params"]["options"] == {
        "model": "simple_convnet",
        "dataset": "mnist",
        "batch_size": 20,
        "sampling": "epoch",
        "limit": None,
        "optimizer": "adagrad",
        "lr": 0.05,
        "dtype": "float32",
        "seed": 0,
    }
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert main(["evaluate", str(out / "model.npz"), "--dataset", "mnist", "--data", str(runs / "data")]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["samples"] == 30 and 0 <= report["accuracy"] <= 1

    assert main(resume_args(runs / "data", run, 2)) == 0
    assert "resuming" in capsys.readouterr().out
    assert gpucnn.load(run / "model.npz").epoch == 2
    assert_same_as_uninterrupted(run, runs)
    assert main(resume_args(runs / "data", run, 2)) == 0
    assert "has already trained 2 epochs" in capsys.readouterr().out


@pytest.mark.parametrize(("every_s", "drawn"), [(0.0, [0, 1, 2]), (1e9, [0, 2])])
def test_curves_are_redrawn_at_most_every_few_seconds_and_after_the_last_epoch(
    every_s, drawn, runs, tmp_path, monkeypatch
):
    """Epochs of a small table take milliseconds: drawing each would cost more than training."""
    epochs_drawn = []
    monkeypatch.setattr(cli, "CURVES_EVERY_S", every_s)
    monkeypatch.setattr(cli, "plot_history", lambda record, path, title: epochs_drawn.append(record["epoch"][-1]))
    assert main(train_args(runs / "data", tmp_path / "out", "--epochs", "3")) == 0
    assert epochs_drawn == drawn
    assert history(tmp_path / "out")["epoch"] == [0, 1, 2]


def test_thread_counts_are_recorded(runs):
    threads = history(runs / "one")["params"]["threads"]
    assert threads["cpus"] == os.cpu_count()
    pytest.importorskip("threadpoolctl")
    from threadpoolctl import threadpool_info

    blas = {pool["internal_api"]: pool["num_threads"] for pool in threadpool_info()}
    assert blas and all(threads[name] == count for name, count in blas.items())


def test_library_warnings_are_one_line(runs, tmp_path, capsys):
    assert main(train_args(runs / "data", tmp_path / "run", "--epochs", "1", "--limit", "10")) == 0
    err = capsys.readouterr().err
    assert "gpucnn: warning: batch_size 20 is larger than the 10 samples; using batch_size=10" in err
    assert "warnings.warn" not in err and ".py:" not in err


def test_a_new_run_into_a_run_folder_says_it_replaces_the_earlier_run(runs, run, capsys):
    capsys.readouterr()
    assert main(train_args(runs / "data", run, "--epochs", "1")) == 0
    err = capsys.readouterr().err
    assert f"gpucnn: warning: {run / 'model.npz'} holds an earlier run, which this one replaces" in err
    assert history(run)["epoch"] == [0]


def test_info_and_the_installed_command():
    """``python -m gpucnn`` (one subprocess: the command as users start it)."""
    result = subprocess.run(
        [sys.executable, "-m", "gpucnn", "info"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "GPUCNN_BACKEND": "numpy"},
    )
    assert result.returncode == 0, result.stderr
    assert "numpy" in result.stdout and "backends:" in result.stdout
    assert "  numpy     usable" in result.stdout and "default backend: numpy ($GPUCNN_BACKEND)" in result.stdout


def test_a_reader_that_stops_early_is_not_an_error(monkeypatch, capsys):
    """``gpucnn info | head -1``: the closed pipe ends the command quietly, with status 0."""

    def closed_pipe(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, "_info", closed_pipe)
    assert main(["info"]) == 0
    assert capsys.readouterr().err == ""


# -- usage errors: exit status 2 ---------------------------------------------------------------


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "--batch-size", "0"], "argument --batch-size: expected a number >= 1, got 0"),
        (["train", "--epochs", "two"], "expected a whole number, got 'two'"),
        (["train", "--model", "resnet"], "invalid choice: 'resnet'"),
        (["train", "--lr", "-1"], "expected a finite number > 0, got -1.0"),
        (["train", "--lr", "nan"], "expected a finite number > 0, got nan"),
        (["train", "--lr", "inf"], "argument --lr: expected a finite number > 0, got inf"),
        (["train", "--seed", "-1"], "argument --seed: expected a whole number from 0 to 4294967295, got -1"),
        (["train", "--seed", str(2**32)], "expected a whole number from 0 to 4294967295, got 4294967296"),
        (["sweep", "--batch-sizes", "8,zero"], "expected a whole number, got 'zero'"),
        (["train", "--backend", "tpu"], "invalid choice: 'tpu'"),
        ([], "required"),
    ],
)
def test_bad_arguments(argv, message, capsys):
    line = fails(argv, capsys, status=2)
    assert message in line and "--help" in line


@pytest.mark.parametrize("command", ["train", "evaluate", "sweep"])
def test_bad_backend_variable(command, runs, tmp_path, monkeypatch, capsys):
    argv = {
        "train": train_args(runs / "data", tmp_path / "run")[:-2],
        "evaluate": ["evaluate", str(runs / "one" / "model.npz"), "--dataset", "mnist", "--data", str(runs / "data")],
        "sweep": ["sweep", "--dataset", "mnist", "--data", str(runs / "data"), "--out", str(tmp_path / "sweep")],
    }[command]
    monkeypatch.setenv("GPUCNN_BACKEND", "bogus")
    line = fails(argv, capsys, status=2)
    assert "$GPUCNN_BACKEND=bogus is not a known backend; known backends: numpy, numba" in line

    def unusable():
        raise gpucnn.BackendUnavailable("backend 'unusable' needs a device this machine lacks: pip install x")

    monkeypatch.setitem(backend_registry._factories, "unusable", unusable)  # registered for this test only
    monkeypatch.setenv("GPUCNN_BACKEND", "unusable")
    line = fails(argv, capsys, status=2)
    assert "$GPUCNN_BACKEND=unusable: backend 'unusable' needs a device this machine lacks: pip install x" in line
    monkeypatch.setenv("GPUCNN_BACKEND", "bogus")  # an explicit --backend wins over the variable
    if command == "evaluate":
        assert main([*argv, "--backend", "numpy"]) == 0
    assert not (tmp_path / "run").exists() and not (tmp_path / "sweep").exists()


def test_missing_cupy_is_a_usage_error(runs, tmp_path, monkeypatch, capsys):
    try:
        gpucnn.get_backend("cupy")
        pytest.skip("CuPy runs here")
    except gpucnn.BackendUnavailable:
        pass
    monkeypatch.setenv("GPUCNN_BACKEND", "cupy")
    line = fails(train_args(runs / "data", tmp_path / "run")[:-2], capsys, status=2)
    assert line.startswith("gpucnn: error: $GPUCNN_BACKEND=cupy: ")


def test_info_reports_a_bad_backend_variable(monkeypatch, capsys):
    monkeypatch.setenv("GPUCNN_BACKEND", "bogus")
    line = fails(["info"], capsys, status=2)
    assert "$GPUCNN_BACKEND=bogus is not a known backend" in line


def test_a_model_that_cannot_take_the_dataset(runs, tmp_path, capsys):
    line = fails(train_args(runs / "data", tmp_path / "run", "--model", "binary_mlp"), capsys, status=2)
    assert "--model binary_mlp does not fit --dataset mnist (images of (1, 12, 12), 10 classes)" in line
    assert "two-class model" in line
    assert not (tmp_path / "run").exists()


def test_resume_refuses_other_options(runs, run, capsys):
    before = (run / "model.npz").read_bytes()
    line = fails(resume_args(runs / "data", run, 2, "--optimizer", "adam", "--lr", "0.001"), capsys, status=2)
    assert "--optimizer adam (the run has adagrad), --lr 0.001 (the run has 0.05)" in line
    line = fails(resume_args(runs / "data", run, 2, "--batch-size", "30", "--seed", "1"), capsys, status=2)
    assert "--batch-size 30 (the run has 20), --seed 1 (the run has 0)" in line
    line = fails(resume_args(runs / "data", run, 2, "--limit", "50"), capsys, status=2)
    assert "--limit 50 (the run has all images)" in line
    assert (run / "model.npz").read_bytes() == before
    assert main(resume_args(runs / "data", run, 2, "--optimizer", "adagrad", "--lr", "0.05")) == 0  # the same: fine


# -- run-time failures: exit status 1 ------------------------------------------------------------


def test_missing_data_and_model(runs, tmp_path, capsys, monkeypatch):
    line = fails(["train", "--dataset", "mnist", "--data", str(tmp_path / "nowhere")], capsys)
    assert "not a folder" in line
    line = fails(["evaluate", str(tmp_path / "absent.npz")], capsys)
    assert line == f"gpucnn: error: no model file at {tmp_path / 'absent.npz'}"
    monkeypatch.delenv("GPUCNN_DATA", raising=False)
    line = fails(["evaluate", str(runs / "one" / "model.npz"), "--dataset", "cifar10"], capsys)
    assert "data_batch_1.bin" in line and "test_batch.bin" in line and "ubyte" not in line
    line = fails(resume_args(runs / "data", tmp_path / "run", 2), capsys)
    assert line == f"gpucnn: error: --resume: no saved run at {tmp_path / 'run' / 'model.npz'}"


def _rewrite(source, target, **changes) -> None:
    """A copy of a model file with entries replaced (a value) or removed (None)."""
    with np.load(source) as data:
        arrays = {key: data[key] for key in data.files}
    for key, value in changes.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = np.array(value)
    with open(target, "wb") as f:
        np.savez(f, **arrays)


def _architecture(path) -> dict:
    with np.load(path) as data:
        return json.loads(str(data["architecture"]))


@pytest.mark.parametrize("damage", ["no architecture", "broken JSON", "unknown config key", "half"])
def test_evaluate_a_damaged_model_file(damage, runs, tmp_path, capsys):
    source, target = runs / "one" / "model.npz", tmp_path / "model.npz"
    if damage == "half":
        target.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    elif damage == "no architecture":
        _rewrite(source, target, architecture=None)
    elif damage == "broken JSON":
        _rewrite(source, target, architecture='{"class": "SimpleConvNet", "hyper')
    else:
        arch = _architecture(source)
        arch["hyperparameters"]["colour"] = "blue"
        arch["class"] = "Sequential"
        arch["layers"] = [{"type": "ReLU", "name": "relu1", "config": {"colour": "blue"}}]
        arch["loss"] = "SoftmaxWithLoss"
        _rewrite(source, target, architecture=json.dumps(arch))
    line = fails(["evaluate", str(target), "--dataset", "mnist", "--data", str(runs / "data")], capsys)
    assert str(target) in line


def test_evaluate_on_a_dataset_of_other_images(runs, tmp_path, capsys):
    write_cifar10(tmp_path / "cifar")
    argv = ["evaluate", str(runs / "one" / "model.npz"), "--dataset", "cifar10", "--data", str(tmp_path / "cifar")]
    line = fails(argv, capsys)
    assert "takes inputs of shape (1, 12, 12), but --dataset cifar10 has images of (3, 32, 32)" in line


def test_evaluate_a_model_with_non_finite_outputs(runs, tmp_path, capsys):
    model = gpucnn.load(runs / "one" / "model.npz")
    key = next(iter(model.params))
    model.params[key] = np.full(model.params[key].shape, np.nan, dtype=np.float32)
    model.save(tmp_path / "nan.npz")
    assert main(["evaluate", str(tmp_path / "nan.npz"), "--dataset", "mnist", "--data", str(runs / "data")]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out.strip().splitlines()[-1])["loss"] is None  # strict JSON: null, not NaN
    assert "gpucnn: warning:" in captured.err and "the model's outputs are not finite" in captured.err


def test_out_is_a_file_or_under_one(runs, tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    line = fails(train_args(tmp_path / "no-data", tmp_path / "file"), capsys)
    assert line == f"gpucnn: error: --out {tmp_path / 'file'} is a file, not a folder"
    line = fails(train_args(tmp_path / "no-data", tmp_path / "file" / "run"), capsys)
    assert f"--out {tmp_path / 'file' / 'run'} is under {tmp_path / 'file'}, which is a file" in line
    line = fails(["sweep", "--out", str(tmp_path / "file"), "--data", str(tmp_path / "no-data")], capsys)
    assert "is a file, not a folder" in line


def test_a_diverging_run(runs, tmp_path, capsys):
    line = fails(train_args(runs / "data", tmp_path / "run", "--optimizer", "sgd", "--lr", "1e30"), capsys)
    assert "training stopped: loss is nan at epoch 1" in line and "no checkpoint was written" in line
    assert not (tmp_path / "run").exists()


def test_resume_over_a_damaged_checkpoint(runs, run, capsys):
    half = (run / "model.npz").read_bytes()[:1000]
    (run / "model.npz").write_bytes(half)
    line = fails(resume_args(runs / "data", run, 2), capsys)
    assert line.startswith(f"gpucnn: error: --resume: {run / 'model.npz'} is not a readable gpucnn model file")
    assert (run / "model.npz").read_bytes() == half


@pytest.mark.parametrize(
    "text,message",
    [
        ('{"epoch": [0], "hist', "is damaged (Unterminated string"),
        ("[1, 2]", "is not a history written by gpucnn train: a JSON list, not an object"),
        ('{"epoch": [0], "history": {"loss": [1, 2]}}', "'history.loss' has 2 values for 1 epochs"),
    ],
)
def test_resume_over_a_damaged_history(text, message, runs, run, capsys):
    (run / "history.json").write_text(text)
    line = fails(resume_args(runs / "data", run, 2), capsys)
    assert message in line and "move it away" in line
    assert (run / "history.json").read_text() == text


# -- one checkpoint, one history -----------------------------------------------------------------


class Killed(BaseException):
    """A kill -9 stand-in: nothing in gpucnn catches it."""


def test_killed_between_the_history_and_the_checkpoint(runs, run, monkeypatch, capsys):
    def killed(self, path):
        raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(gpucnn.Sequential, "save", killed)
        with pytest.raises(Killed):
            main(resume_args(runs / "data", run, 2))
    assert history(run)["epoch"] == [0, 1] and gpucnn.load(run / "model.npz").epoch == 1
    (run / ".history.json.kill9.tmp").write_text("{")  # what a kill during a write leaves
    assert main(resume_args(runs / "data", run, 2)) == 0
    printed = capsys.readouterr().out
    assert "records epoch(s) 2, which" in printed and "training them again" in printed
    assert "removed .history.json.kill9.tmp" in printed
    assert_same_as_uninterrupted(run, runs)


def test_a_history_behind_its_checkpoint_is_flagged(runs, tmp_path, capsys):
    """A checkpoint of two epochs whose history has the first only (a kill in an older gpucnn)."""
    run = tmp_path / "run"
    shutil.copytree(runs / "two", run)
    shutil.copy(runs / "one" / "history.json", run / "history.json")
    assert main(resume_args(runs / "data", run, 3)) == 0
    err = capsys.readouterr().err
    assert "gpucnn: warning:" in err and "has no record of epoch(s) 2 of the 2 that" in err
    h = history(run)
    assert h["epoch"] == [0, 2] and h["missing_epochs"] == [1] and h["epoch_iterations"] == [3, 3]


def test_a_history_of_another_run_is_refused(runs, run, tmp_path, capsys):
    assert main(train_args(runs / "data", tmp_path / "other", "--epochs", "1", "--seed", "7")) == 0
    shutil.copy(tmp_path / "other" / "history.json", run / "history.json")
    line = fails(resume_args(runs / "data", run, 2, "--seed", "0"), capsys)
    assert "does not belong to" in line and "the parameters after epoch 1 differ" in line


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("failing", ["history.json", "model.npz"])
def test_a_full_disk_during_a_checkpoint(failing, runs, run, monkeypatch, capsys):
    before = {name: (run / name).read_bytes() for name in ("model.npz", "history.json")}
    with monkeypatch.context() as patch:
        if failing == "model.npz":

            def half_written(file, **arrays):
                file.write(b"PK\x03\x04 half an archive")
                _no_space()

            patch.setattr(np, "savez", half_written)
        else:
            patch.setattr(os, "fsync", _no_space)
        line = fails(resume_args(runs / "data", run, 2), capsys)
    assert f"cannot write {run / failing}: No space left on device" in line
    assert f"{run / 'model.npz'} still holds the model after epoch 1" in line
    assert (run / "model.npz").read_bytes() == before["model.npz"]
    if failing == "history.json":
        assert (run / "history.json").read_bytes() == before["history.json"]
    assert not list(run.glob(".*.tmp"))
    assert main(resume_args(runs / "data", run, 2)) == 0
    assert_same_as_uninterrupted(run, runs)


@pytest.mark.parametrize("resume", [False, True])
def test_a_read_only_checkpoint_stops_the_run_before_its_history_is_replaced(resume, runs, run, capsys):
    before = {name: (run / name).read_bytes() for name in ("model.npz", "history.json")}
    os.chmod(run / "model.npz", 0o444)
    try:
        argv = resume_args(runs / "data", run, 2) if resume else train_args(runs / "data", run, "--epochs", "1")
        line = fails(argv, capsys)
    finally:
        os.chmod(run / "model.npz", 0o644)
    assert {name: (run / name).read_bytes() for name in before} == before
    assert f"cannot write {run / 'model.npz'}: the file is read-only (mode 444)" in line
    assert "nothing was trained" in line
    assert not list(run.glob(".*.tmp"))


def test_interrupted_run(runs, run, monkeypatch, capsys):
    def interrupt(self, path):
        raise KeyboardInterrupt

    monkeypatch.setattr(gpucnn.Sequential, "save", interrupt)
    assert main(resume_args(runs / "data", run, 2)) == 130
    assert "still holds the model after epoch 1; continue with the same command and --resume" in capsys.readouterr().err


# -- tracebacks: bugs, and --debug -----------------------------------------------------------------


def test_an_unexpected_exception_is_reported_as_a_bug(monkeypatch, capsys):
    def broken(args):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(cli, "_info", broken)
    line = fails(["info"], capsys)
    assert line == (
        "gpucnn: error: internal error: ZeroDivisionError: division by zero "
        "(a bug in gpucnn; rerun with --debug for the traceback and report it)"
    )


@pytest.mark.parametrize("how", ["--debug", "train --debug", "GPUCNN_DEBUG=1"])
def test_debug_shows_the_traceback(how, runs, run, monkeypatch):
    (run / "model.npz").write_bytes(b"PK\x03\x04")
    argv = resume_args(runs / "data", run, 2)
    if how == "--debug":
        argv = ["--debug", *argv]
    elif how == "train --debug":
        argv = [*argv, "--debug"]
    else:
        monkeypatch.setenv("GPUCNN_DEBUG", "1")
    with pytest.raises(CommandError) as info:
        main(argv)
    assert isinstance(info.value.__cause__, gpucnn.io.ModelFileError)
