"""The ``gpucnn`` command: ``train``, ``evaluate``, ``info``, ``bench``, ``sweep``, ``profile``.

    gpucnn train --model simple_convnet --dataset fashion-mnist --batch-size 100 \\
        --epochs 10 --optimizer adagrad --lr 0.06 --backend numpy --seed 0 --out runs/classic
    gpucnn train --out runs/classic --epochs 20 --resume    # continue that run to epoch 20
    gpucnn evaluate runs/classic/model.npz
    gpucnn info
    gpucnn bench --out benchmarks/results/cpu                  # run the benchmark suite, write the report
    gpucnn bench --from bench.json --out report                # report on an earlier run
    gpucnn sweep --batch-sizes 16,32,64,128,256 --epochs 5 --model simple_convnet --dataset fashion-mnist
    gpucnn profile --model simple_convnet --batch-size 100 --json  # count one step's device work (cuda-emu)

Tables. ``--dataset breast-cancer`` (scikit-learn's copy: ``pip install 'gpucnn[tables]'``)
and ``--data-csv X.csv [--labels-csv Y.csv | --label-column NAME|INDEX]`` (your own files,
read by :func:`gpucnn.tables.load_csv`) are split into training and test rows by
:func:`gpucnn.tables.stratified_split` with ``--test-fraction`` (default 0.2) and the fixed
seed :data:`SPLIT_SEED`, which the run records. ``--standardize`` fits a
:class:`gpucnn.tables.Standardizer` on the training rows only and saves it in the model
file, so ``evaluate`` applies the same transform::

    gpucnn train --model binary_mlp --dataset breast-cancer --standardize --optimizer rmsprop \
        --lr 0.001 --batch-size 32 --epochs 100
    gpucnn train --model binary_mlp --data-csv xtrain.csv --labels-csv ytrain.csv --standardize
    gpucnn evaluate runs/binary_mlp-csv/model.npz --data-csv xtest.csv --labels-csv ytest.csv

``evaluate`` on ``--data-csv`` reads every row of the file, or with ``--test-fraction`` the
test rows of the split that ``train`` held out with it.

Errors. A failure prints one line to stderr, ``gpucnn: error: ...``, naming the problem and
the numbers, and exits with status 2 for a usage error (a bad option value, a bad
``$GPUCNN_BACKEND``, options that contradict the dataset or the run that ``--resume``
continues) or 1 for a run-time failure (missing or damaged data or model files, a model
that does not fit the data, a diverging loss, memory, a failing write). Warnings are one
line too, ``gpucnn: warning: ...``. Any other exception is a bug in gpucnn: it prints
``gpucnn: error: internal error: TYPE: message`` and a request to rerun with ``--debug``,
and exits 1. ``--debug`` (or ``GPUCNN_DEBUG=1``) shows the traceback of every error
instead. Ctrl-C stops with status 130. Called in-process, :func:`main` returns 0 (or 130)
and raises ``SystemExit`` with the status after printing an error.

A run folder. After every epoch ``gpucnn train`` writes ``history.json``, then the
checkpoint ``model.npz`` (each atomically: a temporary file renamed over the old one),
then ``curves.png`` (redrawn after the last epoch and otherwise at most every
``CURVES_EVERY_S`` seconds, so that epochs of a few milliseconds are not spent plotting).
``history.json`` keeps, per epoch, the number of iterations and a
checksum of the parameters, so that ``--resume`` can check that the two files belong
together: epochs that the history holds and the checkpoint does not (a run stopped
between the two writes) are dropped and trained again, epochs that the checkpoint holds
and the history does not are reported and listed under ``missing_epochs``, and a history
of other parameters is refused. A failing write (a full disk) stops the run with an error
and leaves the previous checkpoint as it was. The temporary files of a killed run are
removed by the next run into the folder. ``history.json`` also records the options of the
run and the thread counts of BLAS and Numba, on which a run's last bits depend.

``--resume`` continues the run as it was started: the options that define it (``--model``,
``--dataset``, ``--batch-size``, ``--sampling``, ``--limit``, ``--optimizer``, ``--lr``,
``--dtype``, ``--seed``) default to the saved ones, and a different value is a usage error.

Large batches. ``--lr-scaling linear`` multiplies ``--lr``, the rate for batches of
``--lr-reference-batch`` samples (default 100), by ``--batch-size`` over that size, after a
warm-up of ``--lr-warmup-epochs`` epochs that climbs to it from ``--lr``
(:class:`gpucnn.schedules.LinearScaling`); a run records and resumes these options too.

Distributed. ``mpiexec -n N gpucnn train ... --distributed`` trains data-parallel over N
ranks (``pip install 'gpucnn[mpi]'``; :mod:`gpucnn.distributed`): ``--batch-size`` is the
global batch, split over the ranks. ``sweep --distributed`` shares its batch sizes over the
ranks and ``evaluate --distributed`` its samples. Every rank computes on one BLAS and one
Numba thread unless ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS``, ``OMP_NUM_THREADS`` or
``NUMBA_NUM_THREADS`` says otherwise. Rank 0 alone writes the run folder and prints; the
others print nothing. The ranks compare their command lines before their first sum, and a
difference is a usage error naming it. An error met while setting up is printed once, by
rank 0 (naming the rank that met it, unless every rank did), and every rank exits with its
status; an error that one rank meets while training is printed once, by that rank, and
ends every rank within seconds (``MPI_Abort``; ``mpiexec`` then exits with status 1 and
adds its own note). Started by ``mpiexec`` on several ranks without ``--distributed``, the
command refuses to run N copies of one run into the same files.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from . import __version__
from .backend import ENV_VAR as BACKEND_ENV_VAR
from .backend import BackendUnavailable, get_backend, known_backends, use_backend
from .datasets import CLASSES, DATASETS, TABLES, DatasetError, load_dataset
from .distributed import (
    DistributedError,
    LaunchMismatchError,
    MPIUnavailable,
    default_communicator,
    launch_differences,
    limit_threads,
)
from .files import check_writable
from .io import ModelFileError, atomic_write, load, temporary_files
from .memory import OutOfMemoryError
from .models import MODELS, build_model
from .optimizers import OPTIMIZERS, get_optimizer
from .plotting import plot_history
from .profile import profile_step
from .schedules import LinearScaling
from .sweep import run_sweep, write_sweep
from .tables import MissingDependency, Standardizer, TableError, load_csv, stratified_split

__all__ = ["CommandError", "main"]

USAGE_ERROR = 2
RUNTIME_ERROR = 1
INTERRUPTED = 130
DEBUG_ENV_VAR = "GPUCNN_DEBUG"
MAX_SEED = 2**32 - 1

# The options that define a training run, with their defaults: `--resume` takes the saved ones.
RUN_DEFAULTS: dict[str, Any] = {
    "model": "simple_convnet",
    "dataset": "fashion-mnist",
    "batch_size": 100,
    "sampling": "epoch",
    "limit": None,
    "optimizer": "adagrad",
    "lr": 0.06,
    "dtype": "float32",
    "seed": 0,
}
# The options that define a run on a table (--dataset breast-cancer or --data-csv), recorded
# and resumed like the ones above; a run on images leaves them out.
TABLE_DEFAULTS: dict[str, Any] = {
    "data_csv": None,
    "labels_csv": None,
    "label_column": None,
    "csv_delimiter": ",",
    "standardize": False,
    "test_fraction": 0.2,
}
# The learning-rate options for large batches (see "Large batches" above), recorded and
# resumed like the ones above by a run that scales its rate; other runs leave them out.
LR_DEFAULTS: dict[str, Any] = {
    "lr_scaling": "none",
    "lr_reference_batch": 100,
    "lr_warmup_epochs": 0.0,
}
# What MPI launchers tell the processes they start (Open MPI, then MPICH and Intel MPI):
# read before MPI starts, so that errors are printed once and a forgotten --distributed caught.
LAUNCHER_RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMI_RANK")
LAUNCHER_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE")
CSV_DATASET = "csv"  # the dataset name of a run on --data-csv
SPLIT_SEED = 0  # the seed of the training/test split of a table, the same for every run
# Files of a run folder, in the order they are written after each epoch.
HISTORY, CHECKPOINT, CURVES = "history.json", "model.npz", "curves.png"
CURVES_EVERY_S = 10.0  # drawing the curves costs about as much as an epoch of a small table


class CommandError(Exception):
    """A failure the user can act on: ``message`` is the line printed, ``status`` the exit status."""

    def __init__(self, message: str, status: int = RUNTIME_ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


# -- output ---------------------------------------------------------------------------


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _warn(message: str) -> None:
    print(f"gpucnn: warning: {_one_line(message)}", file=sys.stderr, flush=True)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` for the command: the library's warnings as one line each."""
    _warn(str(message))


def _explain(exc: Exception) -> tuple[str, int]:
    """The error line and exit status for an exception that ended a command."""
    if isinstance(exc, CommandError):
        return exc.message, exc.status
    if isinstance(exc, (BackendUnavailable, MissingDependency, MPIUnavailable, LaunchMismatchError)):
        return str(exc), USAGE_ERROR
    if isinstance(exc, DistributedError):
        return str(exc), RUNTIME_ERROR
    if isinstance(exc, (FloatingPointError, OutOfMemoryError, DatasetError, ModelFileError, TableError)):
        return str(exc), RUNTIME_ERROR
    if isinstance(exc, OSError):
        if exc.strerror and exc.filename:
            return f"{exc.filename}: {exc.strerror}", RUNTIME_ERROR
        return str(exc) or type(exc).__name__, RUNTIME_ERROR
    if isinstance(exc, MemoryError):
        return f"out of memory ({exc or 'no details'}): try a smaller --batch-size or --limit", RUNTIME_ERROR
    return (
        f"internal error: {type(exc).__name__}: {exc} (a bug in gpucnn; "
        f"rerun with --debug for the traceback and report it)",
        RUNTIME_ERROR,
    )


# -- arguments ------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as one ``gpucnn: error:`` line (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        if _launcher_rank() == 0:  # once, not once per rank of an mpiexec
            print(f"gpucnn: error: {_one_line(message)} (see '{self.prog} --help')", file=sys.stderr)
        raise SystemExit(USAGE_ERROR)


def _launcher_rank() -> int:
    """This process's rank as an MPI launcher set it (0 when not started by one)."""
    return next((int(os.environ[name]) for name in LAUNCHER_RANK_VARIABLES if name in os.environ), 0)


def _launcher_size() -> int:
    """The number of processes an MPI launcher started (1 when not started by one)."""
    return next((int(os.environ[name]) for name in LAUNCHER_SIZE_VARIABLES if name in os.environ), 1)


def _number(text: str, kind: type[int] | type[float]) -> Any:
    """``text`` as an ``int`` or a ``float``, or the ArgumentTypeError that names what was expected."""
    try:
        return kind(text)
    except ValueError:
        expected = "a whole number" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None


def _positive_int(text: str) -> int:
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = _number(text, float)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = _number(text, float)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {value}")
    return value


def _seed(text: str) -> int:
    value = _number(text, int)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected a whole number from 0 to {MAX_SEED}, got {value}")
    return value


def _fraction(text: str) -> float:
    value = _number(text, float)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction strictly between 0 and 1, got {value}")
    return value


def _delimiter(text: str) -> str:
    if len(text) != 1 or text in '"\r\n' or text.isalnum():
        raise argparse.ArgumentTypeError(
            f"expected one character other than a quote, a letter or a digit, got {text!r}"
        )
    return text


def _label_column(text: str) -> int | str:
    """A column by 0-based index (``-1``: the last) when ``text`` is a whole number, else by name."""
    name = text.strip()
    if not name:
        raise argparse.ArgumentTypeError("expected a column name or a 0-based index, got an empty string")
    try:
        return int(name)
    except ValueError:
        return name


def _batch_sizes(text: str) -> list[int]:
    sizes = [_positive_int(part.strip()) for part in text.split(",") if part.strip()]
    if not sizes:
        raise argparse.ArgumentTypeError(f"expected batch sizes like 16,32,64, got {text!r}")
    return sizes


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gpucnn", description="Train and evaluate CNNs on NumPy, Numba or CuPy.")
    parser.add_argument(
        "--debug", action="store_true", help=f"show the traceback of an error (also ${DEBUG_ENV_VAR}=1)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def default(name: str, resumable: bool) -> Any:
        """``None`` for the options `train --resume` takes from the saved run."""
        return None if resumable else RUN_DEFAULTS[name]

    def shown(name: str) -> str:
        return f"default: {RUN_DEFAULTS[name]}"

    def data_options(p: argparse.ArgumentParser, command: str) -> None:
        # --dataset has no default here: --data-csv takes its place (see _choose_data).
        p.add_argument("--dataset", choices=sorted(DATASETS), help=shown("dataset"))
        p.add_argument(
            "--data", metavar="DIR", help="dataset folder (default: $GPUCNN_DATA or the dataset's usual place)"
        )
        p.add_argument(
            "--data-csv",
            metavar="X.csv",
            help="a table of your own instead of --dataset: a CSV file of numbers, one row per sample",
        )
        p.add_argument(
            "--labels-csv", metavar="Y.csv", help="the labels of --data-csv (class numbers 0..K-1), one row per sample"
        )
        p.add_argument(
            "--label-column",
            type=_label_column,
            metavar="NAME|INDEX",
            help="the labels' column, by header name or 0-based index (-1: the last): of --labels-csv when it "
            "has several columns, else of --data-csv, whose other columns are then the features",
        )
        p.add_argument(
            "--csv-delimiter",
            type=_delimiter,
            metavar="CHAR",
            help="the character between the cells of --data-csv and --labels-csv (default: ',', e.g. ';')",
        )
        if command == "evaluate":
            p.add_argument(
                "--test-fraction",
                type=_fraction,
                metavar="F",
                help="evaluate on the test rows of the split train made with this fraction "
                "(default: every row of --data-csv; 0.2 for a --dataset table)",
            )
        else:
            p.add_argument(
                "--test-fraction",
                type=_fraction,
                metavar="F",
                help=f"the share of a table's rows held out for testing (default: {TABLE_DEFAULTS['test_fraction']}; "
                f"the split's seed is fixed, {SPLIT_SEED})",
            )
            p.add_argument(
                "--standardize",
                action="store_true",
                default=None,
                help="standardize a table's features with the mean and scale of its training rows, "
                "saved with the model",
            )
        p.add_argument("--backend", choices=known_backends(), help=f"default: ${BACKEND_ENV_VAR} or numpy")

    def training_options(p: argparse.ArgumentParser, resumable: bool = False) -> None:
        p.add_argument(
            "--optimizer",
            choices=sorted(OPTIMIZERS),
            default=default("optimizer", resumable),
            help=shown("optimizer"),
        )
        p.add_argument("--lr", type=_positive_float, default=default("lr", resumable), help=shown("lr"))
        p.add_argument(
            "--seed", type=_seed, default=default("seed", resumable), help=f"0 to {MAX_SEED}, {shown('seed')}"
        )
        p.add_argument(
            "--dtype", choices=["float32", "float64"], default=default("dtype", resumable), help=shown("dtype")
        )
        p.add_argument("--limit", type=_positive_int, help="train on the first N training samples only")

        def lr_default(name: str) -> Any:
            """None for the options `train --resume` takes from the saved run."""
            return None if resumable else LR_DEFAULTS[name]

        p.add_argument(
            "--lr-scaling",
            choices=["none", "linear"],
            default=lr_default("lr_scaling"),
            help="linear: multiply --lr by the batch size over --lr-reference-batch, for large (global) batches "
            "(Goyal et al. 2017; default: none)",
        )
        p.add_argument(
            "--lr-reference-batch",
            type=_positive_int,
            default=lr_default("lr_reference_batch"),
            metavar="N",
            help=f"the batch size that --lr is meant for (default: {LR_DEFAULTS['lr_reference_batch']})",
        )
        p.add_argument(
            "--lr-warmup-epochs",
            type=_non_negative_float,
            default=lr_default("lr_warmup_epochs"),
            metavar="E",
            help="with --lr-scaling linear, climb from --lr to the scaled rate over E epochs (default: 0)",
        )

    def distributed_option(p: argparse.ArgumentParser, what: str) -> None:
        p.add_argument(
            "--distributed",
            action="store_true",
            help=f"under mpiexec: {what} (pip install 'gpucnn[mpi]'; one BLAS and Numba thread per rank)",
        )

    train = sub.add_parser("train", help="train a model, saving it every epoch")
    train.add_argument("--model", choices=sorted(MODELS), help=shown("model"))
    data_options(train, "train")
    train.add_argument("--batch-size", type=_positive_int, help=shown("batch_size"))
    train.add_argument("--epochs", type=_positive_int, default=10, help="the epoch to stop at (default: 10)")
    training_options(train, resumable=True)
    train.add_argument("--sampling", choices=["epoch", "random"], help=shown("sampling"))
    train.add_argument("--out", metavar="DIR", help="output folder (default: runs/MODEL-DATASET)")
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue the run saved in --out, with its options (giving other values is an error)",
    )
    train.add_argument("--quiet", action="store_true", help="no progress bar, one line per epoch")
    distributed_option(train, "train data-parallel over the ranks, --batch-size being the global batch")

    evaluate = sub.add_parser(
        "evaluate", help="loss and accuracy (and ROC AUC for a binary classifier) of a saved model on a test set"
    )
    evaluate.add_argument("model_path", metavar="MODEL.npz")
    data_options(evaluate, "evaluate")
    evaluate.add_argument("--batch-size", type=_positive_int, default=500)
    distributed_option(evaluate, "each rank evaluates its share of the samples")

    sub.add_parser("info", help="backends usable here, devices and library versions")

    bench = sub.add_parser(
        "bench", help="run the benchmark suite of a source checkout (or read its JSON) and write the report"
    )
    bench.add_argument(
        "--from",
        dest="from_json",
        metavar="FILE",
        help="a pytest-benchmark JSON to report on, instead of running the suite",
    )
    bench.add_argument("--out", metavar="DIR", default="bench-report", help="output folder (default: bench-report)")
    bench.add_argument(
        "--suite",
        metavar="DIR",
        help="the benchmarks/ folder of a gpucnn source checkout "
        "(default: ./benchmarks, else the one beside an editable install)",
    )
    bench.add_argument(
        "--sizes",
        metavar="SPEC",
        help="batch sizes: default, small or a list like 1,32,256 (sets $GPUCNN_BENCH_SIZES for the run)",
    )

    sweep = sub.add_parser("sweep", help="train once per batch size and compare accuracy, time and memory")
    sweep.add_argument(
        "--batch-sizes",
        type=_batch_sizes,
        default=[16, 32, 64, 128, 256],
        metavar="B1,B2,...",
        help="comma-separated batch sizes (default: 16,32,64,128,256)",
    )
    sweep.add_argument("--model", choices=sorted(MODELS), default=RUN_DEFAULTS["model"], help=shown("model"))
    data_options(sweep, "sweep")
    sweep.add_argument("--epochs", type=_positive_int, default=5)
    training_options(sweep)
    sweep.add_argument("--out", metavar="DIR", help="output folder (default: runs/sweep-MODEL-DATASET)")
    distributed_option(sweep, "share the batch sizes over the ranks (rank 0 writes the report)")

    profile = sub.add_parser("profile", help="count what one training step asks of the device (cuda-emu)")
    profile.add_argument("--model", choices=sorted(MODELS), default=RUN_DEFAULTS["model"], help=shown("model"))
    profile.add_argument("--backend", default="cuda-emu", help="the backend to count on (default: cuda-emu)")
    profile.add_argument("--batch-size", type=_positive_int, default=100)
    profile.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adagrad")
    profile.add_argument("--json", action="store_true", help="print one JSON object")

    for command in sub.choices.values():  # `gpucnn train --debug` as well as `gpucnn --debug train`
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


# -- pieces shared by the commands ---------------------------------------------------------


def _chosen_backend(args: argparse.Namespace) -> Any:
    """The backend named by --backend, else by $GPUCNN_BACKEND, else numpy; a usage error
    when the name is unknown or the backend cannot run here."""
    from_env = os.environ.get(BACKEND_ENV_VAR)
    name = args.backend or from_env or "numpy"
    source = f"--backend {name}" if args.backend else f"${BACKEND_ENV_VAR}={name}" if from_env else "numpy"
    if name not in known_backends():
        raise CommandError(
            f"{source} is not a known backend; known backends: {', '.join(known_backends())}", USAGE_ERROR
        )
    try:
        return get_backend(name)
    except BackendUnavailable as exc:
        raise CommandError(f"{source}: {exc}", USAGE_ERROR) from exc
    except Exception as exc:  # a broken optional install (CuPy, CUDA libraries) is not a bug of gpucnn
        raise CommandError(f"{source}: the backend failed to start: {type(exc).__name__}: {exc}") from exc


def _is_table(dataset: str) -> bool:
    return dataset == CSV_DATASET or dataset in TABLES


def _noun(dataset: str) -> str:
    """What the samples of ``dataset`` are called in messages."""
    return "samples" if _is_table(dataset) else "images"


def _data_name(args: argparse.Namespace) -> str:
    """The data as the messages name it: ``--dataset mnist`` or ``--data-csv FILE``."""
    return f"--data-csv {args.data_csv}" if args.dataset == CSV_DATASET else f"--dataset {args.dataset}"


def _choose_data(args: argparse.Namespace, evaluate: bool = False) -> None:
    """Settle the data a command reads, before it reads any: ``--data-csv`` (the dataset
    ``csv``) or ``--dataset`` (default fashion-mnist), and the defaults of the table options
    for a table (``evaluate``: no --test-fraction on --data-csv means every row). A usage
    error for options that contradict each other or the data."""

    def usage(message: str) -> NoReturn:
        raise CommandError(message, USAGE_ERROR)

    if args.data_csv is not None:
        if args.dataset not in (None, CSV_DATASET):
            usage(f"--data-csv {args.data_csv} and --dataset {args.dataset} both name the data: give one of them")
        if args.data is not None:
            usage(f"--data {args.data} is the folder of an image dataset; --data-csv names the file itself")
        if args.labels_csv is None and args.label_column is None:
            usage(
                f"--data-csv {args.data_csv}: where are the labels? Give --labels-csv Y.csv (a file of labels) or "
                f"--label-column NAME|INDEX (a column of {args.data_csv})"
            )
        args.dataset = CSV_DATASET
    else:
        if args.dataset == CSV_DATASET:
            usage("the run was trained on a --data-csv file that its history does not name: give --data-csv")
        given = [name for name in ("labels_csv", "label_column", "csv_delimiter") if getattr(args, name) is not None]
        if given:
            usage(f"{_flag(given[0])} goes with --data-csv, the file of the features")
        args.dataset = args.dataset or RUN_DEFAULTS["dataset"]
        if not _is_table(args.dataset):
            given = [name for name in ("standardize", "test_fraction") if getattr(args, name, None)]
            if given:
                usage(
                    f"{_flag(given[0])} applies to tables (--dataset {', '.join(sorted(TABLES))} or --data-csv), "
                    f"not to the images of --dataset {args.dataset}"
                )
        elif args.data is not None:
            usage(f"--dataset {args.dataset} is read from scikit-learn's bundled copy, not a folder: leave out --data")
    if args.dataset == CSV_DATASET and args.csv_delimiter is None:
        args.csv_delimiter = TABLE_DEFAULTS["csv_delimiter"]
    if _is_table(args.dataset):
        if getattr(args, "standardize", False) is None:
            args.standardize = TABLE_DEFAULTS["standardize"]
        if args.test_fraction is None and not (evaluate and args.dataset == CSV_DATASET):
            args.test_fraction = TABLE_DEFAULTS["test_fraction"]


def _read_csv(args: argparse.Namespace, classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every row of --data-csv: features and labels (``classes``: labels must lie in 0..classes-1)."""
    return load_csv(
        args.data_csv, args.labels_csv, label_column=args.label_column, delimiter=args.csv_delimiter, classes=classes
    )


def _load_data(args: argparse.Namespace, classes: int | None = None) -> tuple:
    """``(x_train, t_train), (x_test, t_test)`` of the data :func:`_choose_data` settled; a
    table is split by --test-fraction with :data:`SPLIT_SEED`, ``classes`` bounds the labels
    of --data-csv (else every class 0..K-1 must be in the file); --limit cuts the training set."""
    if _is_table(args.dataset):
        x, t = _read_csv(args, classes) if args.dataset == CSV_DATASET else (None, None)
        try:
            if args.dataset == CSV_DATASET:
                train, test = stratified_split(t, args.test_fraction, SPLIT_SEED)
                (x_train, t_train), test = (x[train], t[train]), (x[test], t[test])
            else:
                (x_train, t_train), test = load_dataset(args.dataset, test_fraction=args.test_fraction, seed=SPLIT_SEED)
        except TableError:
            raise
        except ValueError as exc:  # a split that leaves a part empty
            raise CommandError(f"--test-fraction {args.test_fraction}: {exc}", USAGE_ERROR) from exc
    else:
        (x_train, t_train), test = load_dataset(args.dataset, args.data)
    if getattr(args, "limit", None):
        x_train, t_train = x_train[: args.limit], t_train[: args.limit]
    return (x_train, t_train), test


def _classes(args: argparse.Namespace, *labels: np.ndarray) -> int:
    """The number of classes of the data: the dataset's, or for --data-csv the labels' (0..K-1)."""
    if args.dataset != CSV_DATASET:
        return CLASSES[args.dataset]
    classes = max(int(t.max()) for t in labels) + 1
    if classes < 2:
        source = args.labels_csv or args.data_csv
        raise CommandError(f"{source}: every label is 0: a classifier needs rows of two classes at least")
    return classes


def _load_model(path: Path, what: str = "") -> Any:
    """``gpucnn.load(path)``, its failures as one-line errors (``what`` prefixes them)."""
    prefix = f"{what}: " if what else ""
    try:
        return load(path)
    except ModelFileError as exc:  # every file it cannot use; OSErrors (permissions) are reported as such
        raise CommandError(f"{prefix}{exc}") from exc


def _check_model_fits(
    model: Any, x: np.ndarray, args: argparse.Namespace, model_path: Path, classes: int | None
) -> None:
    """The saved ``model`` takes the samples of the data and tells its ``classes`` apart (None: not checked)."""
    want, got = tuple(model.input_shape), tuple(x.shape[1:])
    if want != got:
        raise CommandError(
            f"{model_path} takes inputs of shape {want}, but {_data_name(args)} has {_noun(args.dataset)} of {got}"
        )
    if classes is not None and model.num_classes != classes:
        outputs = model.layers[-1].output_shape[-1]
        raise CommandError(
            f"{model_path} has {outputs} outputs for {model.num_classes} classes, "
            f"but {_data_name(args)} has {classes} classes"
        )


def _build(args: argparse.Namespace, input_shape: tuple[int, ...], classes: int) -> Any:
    """A new zoo model for the data; a usage error when --model cannot take it."""
    try:
        return build_model(args.model, input_shape, classes, dtype=args.dtype, seed=args.seed)
    except ValueError as exc:
        hint = "; a table takes --model binary_mlp (two classes) or two_layer_net" if _is_table(args.dataset) else ""
        raise CommandError(
            f"--model {args.model} does not fit {_data_name(args)} "
            f"({_noun(args.dataset)} of {tuple(input_shape)}, {classes} classes): {exc}{hint}",
            USAGE_ERROR,
        ) from exc


def _check_out_folder(out: Path) -> None:
    """Fail now, not after loading the data, when the --out folder cannot be made."""
    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is None:
        return
    if not existing.is_dir():
        where = "is" if existing == out else f"is under {existing}, which is"
        raise CommandError(f"--out {out} {where} a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CommandError(f"--out {out}: {existing} is not writable")


def _lr_schedule(args: argparse.Namespace) -> LinearScaling | None:
    """The schedule of --lr-scaling, --lr-reference-batch and --lr-warmup-epochs (None: the plain --lr)."""
    if args.lr_scaling == "linear":
        return LinearScaling(args.lr_reference_batch, args.lr_warmup_epochs)
    given = [name for name in ("lr_reference_batch", "lr_warmup_epochs") if getattr(args, name) != LR_DEFAULTS[name]]
    if given:
        raise CommandError(f"{_flag(given[0])} goes with --lr-scaling linear", USAGE_ERROR)
    return None


class _Ranks:
    """The ranks of a ``--distributed`` command (see "Distributed" in the module docstring):
    their communicator, and the one place where they meet before their first sum."""

    def __init__(self, communicator: Any, command_line: dict[str, Any]) -> None:
        self.communicator = communicator
        self.command_line = command_line  # the options as parsed, compared between the ranks
        self.met = False

    @property
    def root(self) -> bool:
        return self.communicator.rank == 0

    def meet(self, failure: tuple[str, int] | None = None) -> None:
        """Called once by every rank, before the command's first sum (or on its way out),
        with the error line and status it met setting up, if any. Raises on every rank
        alike: CommandError with the first rank's failure (naming that rank unless every
        rank met the same), else LaunchMismatchError if the command lines differ."""
        if self.met:
            return
        self.met = True
        everyone = self.communicator.allgather_object((failure, self.command_line))
        failures = [(rank, failed) for rank, (failed, _) in enumerate(everyone) if failed is not None]
        if failures:
            rank, (message, status) = failures[0]
            alike = len(failures) == len(everyone) and all(failed == failures[0][1] for _, failed in failures)
            raise CommandError(message if alike else f"rank {rank} of {len(everyone)}: {message}", status)
        differences = launch_differences([command_line for _, command_line in everyone])
        if differences:
            raise LaunchMismatchError(
                f"the {len(everyone)} ranks were started with different command lines; every rank needs the same: "
                f"{'; '.join(differences)}"
            )


def _start_ranks(args: argparse.Namespace, backend: Any, stack: contextlib.ExitStack, debug: bool) -> _Ranks | None:
    """For --distributed: the communicator on ``backend``, one thread per rank (unless the
    environment says otherwise), and the output of every rank but 0 silenced."""
    if not getattr(args, "distributed", False):
        if _launcher_size() > 1:
            raise CommandError(
                f"gpucnn {args.command} was started by an MPI launcher as one of {_launcher_size()} processes, "
                f"without --distributed: each would run the whole command into the same files; add --distributed",
                USAGE_ERROR,
            )
        return None

    def describe(error: BaseException) -> str:
        return f"gpucnn: error: rank {communicator.rank} of {communicator.size}: {_one_line(_explain(error)[0])}"

    communicator = default_communicator(backend, describe_failure=None if debug else describe, stderr=sys.stderr)
    command_line = {_flag(name): value for name, value in sorted(vars(args).items()) if name != "ranks"}
    stack.enter_context(limit_threads(backend))
    if communicator.rank != 0:
        devnull = stack.enter_context(open(os.devnull, "w"))
        stack.enter_context(contextlib.redirect_stdout(devnull))
        stack.enter_context(contextlib.redirect_stderr(devnull))
    return _Ranks(communicator, command_line)


def _thread_counts(backend: Any) -> dict[str, Any]:
    """The thread pools a run's last bits depend on: BLAS (and OpenMP), and Numba's on its backend."""
    counts: dict[str, Any] = {"cpus": os.cpu_count()}
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        counts["blas"] = "unknown (threadpoolctl is not installed)"
    else:
        for pool in threadpool_info():
            counts[pool["internal_api"]] = pool["num_threads"]
    if backend.name == "numba":
        counts["numba"] = sys.modules["numba"].get_num_threads()
    return counts


def _params_checksum(model: Any) -> str:
    """A checksum of the model's parameters (names, shapes, dtypes and bytes)."""
    digest = hashlib.sha256()
    for key in sorted(model.params):
        value = np.ascontiguousarray(model.backend.to_numpy(model.params[key]))
        digest.update(f"{key} {value.dtype.str} {value.shape};".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()[:16]


def _epochs_text(epochs: list[int]) -> str:
    """0-based epochs as the 1-based ranges people count: ``[0, 1, 2, 5]`` → ``1-3, 6``."""
    parts, start = [], None
    for i, e in enumerate(epochs):
        if start is None:
            start = e
        if i + 1 == len(epochs) or epochs[i + 1] != e + 1:
            parts.append(f"{start + 1}" if start == e else f"{start + 1}-{e + 1}")
            start = None
    return ", ".join(parts)


# -- the run folder --------------------------------------------------------------------------


def _history_problem(data: Any) -> str | None:
    """What makes ``data`` something other than a history written by ``gpucnn train``, or None."""

    def whole(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if not isinstance(data, dict):
        return f"a JSON {type(data).__name__}, not an object"
    epochs = data.get("epoch", [])
    if not isinstance(epochs, list) or not all(whole(e) for e in epochs):
        return "'epoch' is not a list of epoch numbers"
    if any(b <= a for a, b in zip(epochs, epochs[1:])):
        return f"its epochs {epochs} do not increase"
    series = data.get("history", {})
    if not isinstance(series, dict) or not all(isinstance(v, list) for v in series.values()):
        return "'history' is not an object of lists"
    for key, values in series.items():
        if len(values) != len(epochs):
            return f"'history.{key}' has {len(values)} values for {len(epochs)} epochs"
    losses = data.get("iteration_loss", [])
    if not isinstance(losses, list) or not all(number(v) for v in losses):
        return "'iteration_loss' is not a list of numbers"
    params = data.get("params", {})
    if not isinstance(params, dict) or not isinstance(params.get("options", {}), dict):
        return "'params' is not an object of options"
    counts = data.get("epoch_iterations")
    if counts is not None:
        if not isinstance(counts, list) or not all(whole(c) for c in counts) or len(counts) != len(epochs):
            return f"'epoch_iterations' is not a count for each of the {len(epochs)} epochs"
        if sum(counts) != len(losses):
            return f"'epoch_iterations' adds up to {sum(counts)} iterations, 'iteration_loss' holds {len(losses)}"
    sums = data.get("params_sha256")
    if sums is not None and (not isinstance(sums, list) or len(sums) != len(epochs)):
        return f"'params_sha256' is not a checksum for each of the {len(epochs)} epochs"
    missing = data.get("missing_epochs", [])
    if not isinstance(missing, list) or not all(whole(e) for e in missing):
        return "'missing_epochs' is not a list of epoch numbers"
    return None


class _RunFolder:
    """The folder of a training run: ``history.json``, the checkpoint ``model.npz`` and
    ``curves.png``, kept as one unit (see "A run folder" in the module docstring).

    ``record`` is the history as written: ``history`` (per-epoch series), ``epoch``,
    ``iteration_loss``, ``params`` (of ``fit``, with the run's ``options`` and ``threads``),
    and per epoch ``epoch_iterations`` and ``params_sha256``; ``missing_epochs`` lists the
    epochs of the checkpoint that the history lacks.
    """

    def __init__(self, out: Path) -> None:
        self.out = out
        self.history_path, self.model_path, self.curves_path = out / HISTORY, out / CHECKPOINT, out / CURVES
        self.record: dict[str, Any] = {
            "history": {},
            "epoch": [],
            "iteration_loss": [],
            "params": {},
            "epoch_iterations": [],
            "params_sha256": [],
            "missing_epochs": [],
        }
        self.saved_epoch: int | None = None  # the epoch model.npz holds, once this run has read or written it
        self._fit_iterations = 0  # iterations of the running fit already in the record
        self._curves_drawn_at: float | None = None  # time.monotonic() of the last drawing

    def remove_temporary_files(self) -> None:
        """Remove what a killed run left: the temporary files of gpucnn.io.atomic_write, ``.NAME.*.tmp``."""
        if not self.out.is_dir():
            return
        stray = sorted(path for name in (HISTORY, CHECKPOINT, CURVES) for path in temporary_files(self.out / name))
        for path in stray:
            path.unlink(missing_ok=True)
        if stray:
            print(f"removed {', '.join(p.name for p in stray)} from {self.out}: temporary files of an interrupted run")

    def check_writable(self) -> None:
        """Fail before the first epoch when a file of the run cannot be replaced: after
        an epoch, history.json would be written and model.npz not, and the history of the
        run that model.npz holds would be lost."""
        for path in (self.history_path, self.model_path, self.curves_path):
            try:
                check_writable(path)
            except PermissionError as exc:
                raise CommandError(f"cannot write {path}: {exc.strerror}; nothing was trained") from exc

    def read_history(self) -> None:
        """Take the saved history (if any); a damaged one is an error, left as it is."""
        path = self.history_path
        if not path.is_file():
            return
        advice = "move it away to resume without the history of the earlier epochs"
        try:
            data = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CommandError(f"{path} is damaged ({exc}); {advice}") from exc
        problem = _history_problem(data)
        if problem is not None:
            raise CommandError(f"{path} is not a history written by gpucnn train: {problem}; {advice}")
        if "epoch_iterations" not in data and data.get("epoch"):
            del self.record["epoch_iterations"]  # an older history: the counts stay unknown
        self.record.update(data)
        self.record.setdefault("params_sha256", [None] * len(self.record["epoch"]))

    def saved_options(self, model: Any) -> dict[str, Any]:
        """The options of the saved run: from the model file where it holds them, else from the history."""
        saved = dict(self.record["params"].get("options", {}))
        saved["dtype"] = model.architecture()["dtype"]
        if model.train_seed is not None:
            saved["seed"] = model.train_seed
        if model.optimizer is not None:
            names = {cls.__name__: name for name, cls in OPTIMIZERS.items()}
            saved["optimizer"] = names.get(type(model.optimizer).__name__, type(model.optimizer).__name__)
            saved["lr"] = model.optimizer.lr
        if self.record["params"].get("options"):  # a run recorded without them did not scale its rate
            saved = {**LR_DEFAULTS, **saved}
        known = {**RUN_DEFAULTS, **TABLE_DEFAULTS, **LR_DEFAULTS}
        return {name: value for name, value in saved.items() if name in known}

    def match_checkpoint(self, model: Any) -> None:
        """Make the history describe the checkpoint ``model``: epochs after it are dropped
        (they are trained again), a history of other parameters is an error, and epochs
        it lacks are reported and listed under ``missing_epochs``."""
        record, done = self.record, model.epoch
        self.saved_epoch = done
        epochs = record["epoch"]
        keep = sum(1 for e in epochs if e < done)
        if keep < len(epochs):
            if "epoch_iterations" not in record:
                raise CommandError(
                    f"{self.history_path} records epochs up to {epochs[-1] + 1}, more than the {done} of "
                    f"{self.model_path}, without the iterations of each epoch; move it away to resume without "
                    f"the earlier history"
                )
            print(
                f"{self.history_path} records epoch(s) {_epochs_text(epochs[keep:])}, which {self.model_path} "
                f"does not hold (the run stopped between the two writes): training them again"
            )
            record["iteration_loss"] = record["iteration_loss"][: sum(record["epoch_iterations"][:keep])]
            for key in ("epoch", "epoch_iterations", "params_sha256"):
                record[key] = record[key][:keep]
            record["history"] = {key: values[:keep] for key, values in record["history"].items()}
            epochs = record["epoch"]
        recorded = record["params_sha256"][-1] if epochs and epochs[-1] == done - 1 else None
        if recorded is not None and recorded != _params_checksum(model):
            raise CommandError(
                f"{self.history_path} does not belong to {self.model_path}: the parameters after epoch {done} "
                f"differ from the ones it recorded (was one of the files replaced?); move {HISTORY} away to "
                f"resume without the earlier history"
            )
        record["missing_epochs"] = sorted(set(range(done)) - set(epochs))
        if record["missing_epochs"]:
            _warn(
                f"{self.history_path} has no record of epoch(s) {_epochs_text(record['missing_epochs'])} of the "
                f"{done} that {self.model_path} has trained: {HISTORY} and {CURVES} will miss them"
            )

    def saved_note(self) -> str:
        if self.saved_epoch is None:
            return "no checkpoint was written"
        return f"{self.model_path} still holds the model after epoch {self.saved_epoch}"

    def checkpoint(self, model: Any, epoch: int, params: dict[str, Any], title: str, last_epoch: int) -> None:
        """After epoch ``epoch`` of ``model.fit``: history.json, then model.npz, then curves.png
        (after ``last_epoch``, the run's final epoch, or when ``CURVES_EVERY_S`` have passed)."""
        record, fit = self.record, model.history
        losses = fit.iteration_loss[self._fit_iterations :]
        self._fit_iterations = len(fit.iteration_loss)
        for key in [*record["history"], *(k for k in fit.history if k not in record["history"])]:
            values = fit.history.get(key, [None])
            record["history"].setdefault(key, [None] * len(record["epoch"])).append(values[-1])
        record["epoch"].append(epoch)
        record["iteration_loss"] += losses
        if "epoch_iterations" in record:
            record["epoch_iterations"].append(len(losses))
        record["params_sha256"].append(_params_checksum(model))
        record["params"] = {**record["params"], **fit.params, **params}
        for path, write in (
            (self.out, lambda: self.out.mkdir(parents=True, exist_ok=True)),  # now: a failed run leaves no folder
            (self.history_path, lambda: _write_json(self.history_path, record)),
            (self.model_path, lambda: model.save(self.model_path)),
        ):
            try:
                write()
            except OSError as exc:
                raise CommandError(f"cannot write {path}: {exc.strerror or exc}; {self.saved_note()}") from exc
        self.saved_epoch = model.epoch
        now = time.monotonic()
        due = self._curves_drawn_at is None or now - self._curves_drawn_at >= CURVES_EVERY_S
        if epoch < last_epoch and not due:
            return
        self._curves_drawn_at = now
        try:
            plot_history(record, self.curves_path, title=title)
        except OSError as exc:
            raise CommandError(f"cannot write {self.curves_path}: {exc.strerror or exc}; {self.saved_note()}") from exc


def _write_json(path: Path, data: Any) -> None:
    with atomic_write(path, "w") as f:
        json.dump(data, f, indent=1)


def _take_saved_options(args: argparse.Namespace, saved: dict[str, Any], model_path: Path) -> None:
    """Take the options left out from the saved run; a usage error for any given with another value."""
    conflicts = []
    for name, value in saved.items():
        given = getattr(args, name)
        if given is None:
            setattr(args, name, value)
        elif given != value:
            if isinstance(value, bool) or isinstance(given, bool):
                conflicts.append(f"{_flag(name)} (the run has {'it' if value else 'no ' + _flag(name)})")
                continue
            shown = value
            if value is None:
                shown = f"all {_noun(saved.get('dataset'))}" if name == "limit" else f"no {_flag(name)}"
            conflicts.append(f"{_flag(name)} {given} (the run has {shown})")
    if conflicts:
        raise CommandError(
            f"--resume continues {model_path} with the options it was started with, but got "
            f"{', '.join(conflicts)}; leave these options out to continue the run, or start a new one in "
            f"another --out",
            USAGE_ERROR,
        )


def _fill_defaults(args: argparse.Namespace) -> None:
    for name, value in {**RUN_DEFAULTS, **LR_DEFAULTS}.items():
        if getattr(args, name) is None:
            setattr(args, name, value)


# -- the commands -------------------------------------------------------------------------


def _train(args: argparse.Namespace) -> int:
    model_name = args.model or RUN_DEFAULTS["model"]
    dataset = args.dataset or (CSV_DATASET if args.data_csv else RUN_DEFAULTS["dataset"])
    folder = _RunFolder(Path(args.out or f"runs/{model_name}-{dataset}"))
    _check_out_folder(folder.out)
    folder.remove_temporary_files()
    folder.check_writable()
    if not args.resume and folder.model_path.is_file():
        _warn(f"{folder.model_path} holds an earlier run, which this one replaces (--resume continues it instead)")
    model = None
    if args.resume:
        if not folder.model_path.is_file():
            raise CommandError(f"--resume: no saved run at {folder.model_path}")
        model = _load_model(folder.model_path, "--resume")
        folder.read_history()
        _take_saved_options(args, folder.saved_options(model), folder.model_path)
        folder.match_checkpoint(model)
        if model.epoch >= args.epochs:
            print(f"{folder.model_path} has already trained {model.epoch} epochs (--epochs {args.epochs})")
            return 0
    _choose_data(args)
    _fill_defaults(args)
    schedule = _lr_schedule(args)
    (x_train, t_train), (x_test, t_test) = _load_data(args)
    classes = _classes(args, t_train, t_test)
    if model is None:
        model = _build(args, tuple(x_train.shape[1:]), classes)
        if args.standardize:
            model.preprocessing = Standardizer.fit(x_train)  # the training rows only
    else:
        _check_model_fits(model, x_train, args, folder.model_path, classes)
        if bool(args.standardize) != (model.preprocessing is not None):
            raise CommandError(
                f"{folder.model_path} {'has no' if args.standardize else 'has a'} standardization, but its run "
                f"{'has' if args.standardize else 'has no'} --standardize: the two files do not belong together"
            )
        print(f"resuming {folder.model_path} at epoch {model.epoch + 1}")
    if model.optimizer is None:
        model.optimizer = get_optimizer(args.optimizer, lr=args.lr)
    names = [*RUN_DEFAULTS, *(TABLE_DEFAULTS if _is_table(args.dataset) else ()), *(LR_DEFAULTS if schedule else ())]
    params = {"options": {name: getattr(args, name) for name in names}, "threads": _thread_counts(model.backend)}
    if _is_table(args.dataset):
        params["split"] = {
            "test_fraction": args.test_fraction,
            "seed": SPLIT_SEED,
            "train_samples": len(x_train),
            "test_samples": len(x_test),
        }
    before = folder.record["params"]
    if (before.get("backend"), before.get("threads")) not in ((None, None), (model.backend.name, params["threads"])):
        _warn(
            f"the run was trained on backend {before.get('backend')} with threads {before.get('threads')}, "
            f"continues on {model.backend.name} with {params['threads']}: its last bits may differ from those of "
            f"an uninterrupted run"
        )
    data = Path(args.data_csv).name if args.dataset == CSV_DATASET else args.dataset
    print(
        f"{args.model} on {data}: {len(x_train):,} training and {len(x_test):,} test {_noun(args.dataset)}"
        f"{', standardized' if model.preprocessing is not None else ''}, "
        f"backend {model.backend.name}, batch {args.batch_size}, {model.optimizer!r}"
        + (f", {schedule!r}" if schedule else "")
        + (f", over {args.ranks.communicator.size} ranks" if args.ranks else "")
    )
    title = f"{args.model} on {data}, batch {args.batch_size}"
    writes = args.ranks is None or args.ranks.root  # rank 0 alone writes the run folder
    if args.ranks:
        args.ranks.meet()
    try:
        model.fit(
            x_train,
            t_train,
            batch_size=args.batch_size,
            epochs=args.epochs,
            validation_data=(x_test, t_test),
            seed=None if args.resume else args.seed,
            verbose=2 if args.quiet else 1,
            sampling=args.sampling,
            callbacks=[lambda model, epoch, logs: folder.checkpoint(model, epoch, params, title, args.epochs - 1)]
            if writes
            else [],
            communicator=args.ranks and args.ranks.communicator,
            lr_schedule=schedule,
        )
    except (FloatingPointError, OutOfMemoryError) as exc:  # NonFiniteLossError is a FloatingPointError
        raise CommandError(f"training stopped: {exc}; {folder.saved_note()}") from exc
    except KeyboardInterrupt:
        print(f"\ninterrupted: {folder.saved_note()}; continue with the same command and --resume", file=sys.stderr)
        return INTERRUPTED
    print(f"saved {folder.model_path}, {folder.history_path} and {folder.curves_path}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    model_path = Path(args.model_path)
    _choose_data(args, evaluate=True)
    model = _load_model(model_path)
    if args.dataset == CSV_DATASET and args.test_fraction is None:
        x_test, t_test = _read_csv(args, model.num_classes)  # a file of test rows may lack a class
        rows = "all"
    else:
        _, (x_test, t_test) = _load_data(args, model.num_classes)
        rows = "test"
    _check_model_fits(model, x_test, args, model_path, None if args.dataset == CSV_DATASET else CLASSES[args.dataset])
    if args.ranks:
        args.ranks.meet()
    communicator = args.ranks and args.ranks.communicator
    scores = model.evaluate(x_test, t_test, batch_size=args.batch_size, return_dict=True, communicator=communicator)
    if not math.isfinite(scores["loss"]):
        _warn(f"the loss of {model_path} on {_data_name(args)} is {scores['loss']}: the model's outputs are not finite")
    report = {"model": str(args.model_path), "dataset": args.dataset}
    if args.dataset == CSV_DATASET:
        report["data_csv"] = args.data_csv
    if _is_table(args.dataset):
        report["rows"] = rows if rows == "all" else f"test, fraction {args.test_fraction}, split seed {SPLIT_SEED}"
    report["samples"] = len(x_test)
    report.update({name: round(value, 6) if math.isfinite(value) else None for name, value in scores.items()})
    if _is_table(args.dataset):
        report["standardized"] = model.preprocessing is not None
    report["backend"] = model.backend.name
    print(json.dumps(report))
    return 0


def _info(args: argparse.Namespace) -> int:
    print(f"gpucnn {__version__}, Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs")
    print(f"numpy {np.__version__}")
    for name in ("numba", "cupy"):
        try:
            module = __import__(name)
            print(f"{name} {module.__version__}")
        except ImportError:
            print(f"{name}: not installed")
    print("backends:")
    for name in known_backends():
        try:
            backend = get_backend(name)
            detail = backend.kernels.describe() if hasattr(backend.kernels, "describe") else ""
            print(f"  {name:9s} usable {detail}".rstrip())
        except BackendUnavailable as exc:
            print(f"  {name:9s} unusable: {exc}")
        except Exception as exc:  # a broken optional install must not break `info`
            print(f"  {name:9s} unusable: {type(exc).__name__}: {exc}")
    from_env = os.environ.get(BACKEND_ENV_VAR)
    print(f"default backend: {from_env} (${BACKEND_ENV_VAR})" if from_env else "default backend: numpy")
    if from_env:
        _chosen_backend(argparse.Namespace(backend=None))  # a bad $GPUCNN_BACKEND is an error here too
    return 0


def _bench(args: argparse.Namespace) -> int:
    """``python -m benchmarks.report`` from the root of the source checkout that holds the suite.

    The suite and its report are not installed with gpucnn: they live in the checkout's
    ``benchmarks/`` folder, found as ``--suite``, else ``./benchmarks``, else beside the
    ``gpucnn/`` folder of an editable install.
    """

    def is_suite(folder: Path) -> bool:
        return (folder / "report.py").is_file() and (folder.parent / "gpucnn" / "__init__.py").is_file()

    if args.suite is not None:
        suite = Path(args.suite)
        if not is_suite(suite):
            raise CommandError(
                f"--suite {suite} is not the benchmarks/ folder of a gpucnn source checkout "
                "(no report.py in it, or no gpucnn/ beside it)",
                USAGE_ERROR,
            )
    else:
        found = [f for f in (Path("benchmarks"), Path(__file__).resolve().parents[1] / "benchmarks") if is_suite(f)]
        if not found:
            raise CommandError(
                "the benchmark suite is not installed with gpucnn; it is the benchmarks/ folder of a gpucnn "
                "source checkout: run gpucnn bench (or pytest --benchmark) from the checkout's root"
            )
        suite = found[0]
    command = [sys.executable, "-m", "benchmarks.report", "--out", str(Path(args.out).resolve())]
    if args.from_json is not None:
        command += ["--from", str(Path(args.from_json).resolve())]
    if args.sizes is not None:
        command += ["--sizes", args.sizes]
    return subprocess.run(command, cwd=suite.resolve().parent).returncode


def _sweep(args: argparse.Namespace) -> int:
    _choose_data(args)
    out = Path(args.out or f"runs/sweep-{args.model}-{args.dataset}")
    _check_out_folder(out)
    (x_train, t_train), test = _load_data(args)
    _build(args, tuple(x_train.shape[1:]), _classes(args, t_train, test[1]))  # --model fits, before the first run
    preprocessing = Standardizer.fit(x_train) if args.standardize else None
    data = Path(args.data_csv).name if args.dataset == CSV_DATASET else args.dataset
    print(
        f"{args.model} on {data}: {len(x_train):,} training {_noun(args.dataset)}"
        f"{', standardized' if preprocessing is not None else ''}, batch sizes "
        f"{', '.join(map(str, args.batch_sizes))}, {args.epochs} epochs each"
    )
    larger = [size for size in args.batch_sizes if size > len(x_train)]
    if larger:
        _warn(
            f"batch sizes {', '.join(map(str, larger))} are larger than the {len(x_train):,} training "
            f"{_noun(args.dataset)}: they train as {len(x_train):,}, the whole set in one step an epoch"
        )
    schedule = _lr_schedule(args)
    if args.ranks:
        args.ranks.meet()
    try:
        result = run_sweep(
            args.model,
            (x_train, t_train),
            test,
            args.batch_sizes,
            args.epochs,
            optimizer=args.optimizer,
            lr=args.lr,
            seed=args.seed,
            dtype=args.dtype,
            dataset=data,
            preprocessing=preprocessing,
            lr_schedule=schedule,
            communicator=args.ranks and args.ranks.communicator,
        )
    except (FloatingPointError, OutOfMemoryError) as exc:
        raise CommandError(f"sweep stopped: {exc}; nothing was written to {out}") from exc
    if args.ranks and not args.ranks.root:
        return 0  # rank 0 writes the one report
    written = write_sweep(result, out)
    print("wrote " + ", ".join(str(path) for path in written))
    return 0


def _profile(args: argparse.Namespace) -> int:
    """Count one steady-state fit step (:mod:`gpucnn.profile`) and print the counts."""
    try:
        result = profile_step(args.model, args.batch_size, backend=args.backend, optimizer=args.optimizer)
    except ValueError as exc:
        raise CommandError(str(exc), USAGE_ERROR) from exc
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.format())
    return 0


_BACKEND_COMMANDS = {"train", "evaluate", "sweep"}  # they compute, on the chosen backend


def main(argv: list[str] | None = None) -> int:
    """Run the ``gpucnn`` command; returns its exit status, or raises SystemExit after an error line."""
    args = _parser().parse_args(argv)
    debug = args.debug or os.environ.get(DEBUG_ENV_VAR, "") not in ("", "0")
    commands = {
        "train": _train,
        "evaluate": _evaluate,
        "info": _info,
        "bench": _bench,
        "sweep": _sweep,
        "profile": _profile,
    }
    with warnings.catch_warnings(), contextlib.ExitStack() as stack:
        warnings.showwarning = _show_warning
        ranks = args.ranks = None  # the ranks of --distributed
        try:
            if args.command in _BACKEND_COMMANDS:
                backend = _chosen_backend(args)
                stack.enter_context(use_backend(backend))
                ranks = args.ranks = _start_ranks(args, backend, stack, debug)
            status = commands[args.command](args)
            if ranks is not None:
                ranks.meet()  # a command that ended before its first sum (nothing to train) meets the others here
            return status
        except KeyboardInterrupt:
            if debug:
                raise
            print("\ngpucnn: interrupted", file=sys.stderr)
            return INTERRUPTED
        except BrokenPipeError:  # the reader of our output went away (``gpucnn info | head``): not an error
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            return 0
        except Exception as exc:
            message, status = _explain(exc)
            if ranks is not None and not ranks.met:  # an error met setting up: the ranks compare theirs
                try:
                    ranks.meet((message, status))
                except Exception as first:
                    message, status = _explain(first)
            if debug:
                raise
            if ranks.root if ranks is not None else _launcher_rank() == 0:  # printed once, by rank 0
                print(f"gpucnn: error: {_one_line(message)}", file=sys.stderr)
            raise SystemExit(status) from None


if __name__ == "__main__":
    sys.exit(main())
