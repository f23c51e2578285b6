"""``gpucnn train|evaluate|sweep --distributed``: the command under ``mpiexec``.

The multi-rank tests start ``python -m gpucnn`` under ``mpiexec`` (2 and 3 ranks, without
thread variables, so that the command's own one-thread default applies) on a tiny IDX
dataset and compare with one process run here; they skip, saying what to install, where
mpi4py or ``mpiexec`` is missing. The single-process tests stand a fake rank in for MPI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from gpucnn import cli
from gpucnn.cli import main
from gpucnn.distributed import LocalCommunicator, mpiexec_path

from . import cli_helpers
from .cli_helpers import SIZE, history, params, resume_args
from .idx_files import write_mnist
from .test_distributed import LAUNCH_TIMEOUT, needs_mpi

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def train_args(data, out, *extra: str) -> list[str]:
    """:func:`tests.cli_helpers.train_args` in float64, so that the ranks' sums agree with one
    process to 1e-9."""
    return cli_helpers.train_args(data, out, "--dtype", "float64", *extra)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mnist")
    write_mnist(folder, n_train=60, n_test=30, size=SIZE)
    return folder


def _env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in THREAD_VARIABLES}
    return {**env, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


def gpucnn_on_ranks(*commands: tuple[int, list[str]]) -> subprocess.CompletedProcess:
    """``mpiexec -n N1 python -m gpucnn ARGS1 : -n N2 ...``: each part on its own ranks."""
    command = [mpiexec_path(), "--oversubscribe"]
    for i, (ranks, argv) in enumerate(commands):
        command += ([":"] if i else []) + ["-n", str(ranks), sys.executable, "-m", "gpucnn", *argv]
    return subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)


def error_lines(stderr: str) -> list[str]:
    # Open MPI's output forwarding at times puts a NUL byte before the line of a rank that
    # then aborts (seen with Open MPI 5 from PyPI): a terminal shows nothing of it.
    lines = (line.lstrip("\x00") for line in stderr.splitlines())
    return [line for line in lines if line.startswith("gpucnn: error:")]


# -- under mpiexec -----------------------------------------------------------------------


@needs_mpi
def test_train_over_ranks_resume_on_another_number_and_evaluate(data, tmp_path, capsys):
    out, alone = tmp_path / "run", tmp_path / "alone"
    first = gpucnn_on_ranks((2, train_args(data, out, "--epochs", "1", "--distributed")))
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("Epoch 1/1") == 1 and first.stdout.count("saved ") == 1  # rank 0 alone prints
    assert first.stderr == ""
    record = history(out)
    assert record["params"]["ranks"] == 2
    if "openblas" in record["params"]["threads"]:
        assert record["params"]["threads"]["openblas"] == 1  # one thread per rank by default

    resume = resume_args(data, out, 2, "--distributed")
    second = gpucnn_on_ranks((3, resume))
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("resuming") == 1 and second.stdout.count("Epoch 2/2") == 1
    assert sorted(path.name for path in out.iterdir()) == ["curves.png", "history.json", "model.npz"]

    assert main(train_args(data, alone, "--epochs", "2")) == 0
    want, got = params(alone / "model.npz"), params(out / "model.npz")
    for key, value in want.items():
        scale = float(np.max(np.abs(value)))
        assert float(np.max(np.abs(got[key] - value))) <= 1e-9 * scale, key
    record, reference = history(out), history(alone)
    assert record["epoch"] == [0, 1] and record["params"]["ranks"] == 3
    np.testing.assert_allclose(record["iteration_loss"], reference["iteration_loss"], rtol=1e-9)
    assert record["history"]["val_accuracy"] == reference["history"]["val_accuracy"]

    capsys.readouterr()
    evaluate = ["evaluate", str(out / "model.npz"), "--dataset", "mnist", "--data", str(data), "--batch-size", "7"]
    assert main(evaluate) == 0
    want = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    spread = gpucnn_on_ranks((2, [*evaluate, "--distributed"]))
    assert spread.returncode == 0, spread.stderr
    lines = spread.stdout.strip().splitlines()
    assert len(lines) == 1
    got = json.loads(lines[0])
    assert got.pop("loss") == pytest.approx(want.pop("loss"), rel=1e-9)
    assert got == want


@needs_mpi
def test_a_rank_failing_while_training_stops_every_rank_with_one_error_line(data, tmp_path):
    out = tmp_path / "run"
    # Rank 1's validation fails after the first epoch; rank 0 waits for it in a sum.
    fail_on_rank_1 = (
        "import sys, gpucnn\n"
        "from gpucnn import cli\n"
        "def fail(*args, **kwargs):\n"
        "    raise RuntimeError('validation failed on rank 1')\n"
        "if cli._launcher_rank() == 1:\n"
        "    gpucnn.Sequential.evaluate = fail\n"
        "sys.exit(cli.main(sys.argv[1:]))\n"
    )
    argv = train_args(data, out, "--epochs", "2", "--distributed")
    command = [mpiexec_path(), "-n", "2", sys.executable, "-c", fail_on_rank_1, *argv]
    result = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    assert result.returncode == 1
    lines = error_lines(result.stderr)
    assert lines == [
        "gpucnn: error: rank 1 of 2: internal error: RuntimeError: validation failed on rank 1 "
        "(a bug in gpucnn; rerun with --debug for the traceback and report it)"
    ], result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists() or not list(out.iterdir())  # no checkpoint, no temporary file


@needs_mpi
@pytest.mark.parametrize(
    "second,status,message",
    [
        (["--lr", "0.1"], 2, "the 2 ranks were started with different command lines; every rank needs the same: "
         "--lr (rank 0: 0.05, rank 1: 0.1)"),
        (["--data", "missing"], 1, "rank 1 of 2: MNIST-format data not found: missing is not a folder"),
    ],
    ids=["options", "data"],
)  # fmt: skip
def test_ranks_started_differently_are_refused_with_one_error_line(data, tmp_path, second, status, message):
    argv = train_args(data, tmp_path / "run", "--epochs", "1", "--distributed")
    result = gpucnn_on_ranks((1, argv), (1, [*argv, *second]))  # the last of a repeated option counts
    assert result.returncode == status
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"gpucnn: error: {message}"), result.stderr
    assert not (tmp_path / "run").exists()


@needs_mpi
def test_a_sweep_shares_its_batch_sizes_over_the_ranks_and_rank_0_writes_the_report(data, tmp_path):
    argv = ["sweep", "--dataset", "mnist", "--data", str(data), "--batch-sizes", "10,20,30", "--epochs", "1"]
    argv += ["--dtype", "float64", "--backend", "numpy"]
    result = gpucnn_on_ranks((2, [*argv, "--out", str(tmp_path / "spread"), "--distributed"]))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("wrote ") == 1 and result.stdout.count("batch 20: ") == 1
    assert main([*argv, "--out", str(tmp_path / "alone")]) == 0
    spread, alone = (json.loads((tmp_path / name / "sweep.json").read_text()) for name in ("spread", "alone"))
    assert [run["ranks"] for run in spread["runs"]] == [[0], [1], [0]]
    assert len(spread["distributed"]["hosts"]) == 2 and spread["distributed"]["ranks"] == 2
    for got, want in zip(spread["runs"], alone["runs"]):
        assert got["batch_size"] == want["batch_size"]
        losses = [run["history"]["history"]["val_loss"] for run in (got, want)]
        np.testing.assert_allclose(*losses, rtol=1e-9)
    table = (tmp_path / "spread" / "sweep.md").read_text()
    assert "batch 10 on rank 0; batch 20 on rank 1; batch 30 on rank 0" in table
    if len(set(spread["distributed"]["hosts"])) == 1:
        assert "Runs that shared a machine" in table and "not comparable to those of a run alone" in table


# -- one process, a fake rank standing in ----------------------------------------------


class TwinRank(LocalCommunicator):
    """Rank ``rank`` of two whose twin has the same data and options: every gathered
    object is this rank's own, and every sum adds nothing."""

    size = 2

    def __init__(self, rank: int, **options) -> None:
        super().__init__(**options)
        self.rank = rank

    def allgather_object(self, value):
        return [value, value]


@pytest.mark.parametrize("rank", [0, 1])
def test_rank_0_alone_writes_and_prints(rank, data, tmp_path, monkeypatch, capsys):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = threadpoolctl.threadpool_info()
    monkeypatch.setattr(cli, "default_communicator", lambda backend, **options: TwinRank(rank, **options))
    out = tmp_path / "run"
    assert main(train_args(data, out, "--epochs", "1", "--distributed")) == 0
    printed = capsys.readouterr()
    if rank == 0:
        assert sorted(path.name for path in out.iterdir()) == ["curves.png", "history.json", "model.npz"]
        assert "Epoch 1/1" in printed.out and "over 2 ranks" in printed.out
    else:
        assert not out.exists() and printed.out == "" and printed.err == ""
    assert threadpoolctl.threadpool_info() == before  # the thread counts are put back


def test_distributed_without_mpi4py_says_what_to_install(data, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(SystemExit) as info:
        main(train_args(data, tmp_path / "run", "--distributed"))
    assert info.value.code == 2
    assert "distributed training needs mpi4py and an MPI library: pip install 'gpucnn[mpi]'" in capsys.readouterr().err


@pytest.mark.parametrize("rank", ["0", "1"])
def test_started_by_mpiexec_without_distributed_is_refused_once(rank, data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", rank)
    with pytest.raises(SystemExit) as info:
        main(train_args(data, tmp_path / "run"))
    assert info.value.code == 2
    err = capsys.readouterr().err
    if rank == "0":
        assert "started by an MPI launcher as one of 2 processes, without --distributed" in err
    else:
        assert err == ""
    assert not (tmp_path / "run").exists()


def test_learning_rate_scaling_is_recorded_and_resumed(data, tmp_path, capsys):
    out = tmp_path / "run"
    scaled = ["--lr-scaling", "linear", "--lr-reference-batch", "10", "--lr-warmup-epochs", "0.5"]
    assert main(train_args(data, out, "--epochs", "1", *scaled)) == 0
    record = history(out)
    assert record["params"]["options"]["lr_scaling"] == "linear"
    assert record["params"]["lr_schedule"] == "LinearScaling(reference_batch=10, warmup_epochs=0.5)"
    resume = resume_args(data, out, 2)
    with pytest.raises(SystemExit) as info:
        main([*resume, "--lr-scaling", "none"])
    assert info.value.code == 2
    assert "--lr-scaling none (the run has linear)" in capsys.readouterr().err
    assert main(resume) == 0
    assert history(out)["params"]["options"]["lr_warmup_epochs"] == 0.5
    with pytest.raises(SystemExit) as info:
        main(train_args(data, tmp_path / "other", "--lr-warmup-epochs", "1"))
    assert info.value.code == 2
    assert "--lr-warmup-epochs goes with --lr-scaling linear" in capsys.readouterr().err
