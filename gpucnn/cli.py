"""The ``gpucnn`` command: ``train``, ``evaluate``, ``info``, ``bench``, ``sweep``.

    gpucnn train --model simple_convnet --dataset fashion-mnist --batch-size 100 \\
        --epochs 10 --optimizer adagrad --lr 0.06 --backend numpy --seed 0 --out runs/classic
    gpucnn evaluate runs/classic/model.npz
    gpucnn info
    gpucnn bench --out benchmarks/results/cpu                  # run the benchmark suite, write the report
    gpucnn bench --from bench.json --out report                # report on an earlier run
    gpucnn sweep --batch-sizes 16,32,64,128,256 --epochs 5 --model simple_convnet --dataset fashion-mnist
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["main"]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    from .backend import known_backends
    from .datasets import DATASETS
    from .models import MODELS
    from .optimizers import OPTIMIZERS

    parser = argparse.ArgumentParser(prog="gpucnn", description="Train and evaluate CNNs on NumPy, Numba or CuPy.")
    sub = parser.add_subparsers(dest="command", required=True)

    def data_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dataset", choices=sorted(DATASETS), default="fashion-mnist")
        p.add_argument(
            "--data", metavar="DIR", help="dataset folder (default: $GPUCNN_DATA or the dataset's usual place)"
        )
        p.add_argument("--backend", choices=known_backends(), help="default: $GPUCNN_BACKEND or numpy")

    def training_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adagrad")
        p.add_argument("--lr", type=_positive_float, default=0.06)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
        p.add_argument("--limit", type=_positive_int, help="train on the first N training images only")

    train = sub.add_parser("train", help="train a model, saving it every epoch")
    train.add_argument("--model", choices=sorted(MODELS), default="simple_convnet")
    data_options(train)
    train.add_argument("--batch-size", type=_positive_int, default=100)
    train.add_argument("--epochs", type=_positive_int, default=10)
    training_options(train)
    train.add_argument("--sampling", choices=["epoch", "random"], default="epoch")
    train.add_argument("--out", metavar="DIR", help="output folder (default: runs/MODEL-DATASET)")
    train.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    train.add_argument("--quiet", action="store_true", help="no progress bar, one line per epoch")

    evaluate = sub.add_parser("evaluate", help="loss and accuracy of a saved model on a test set")
    evaluate.add_argument("model_path", metavar="MODEL.npz")
    data_options(evaluate)
    evaluate.add_argument("--batch-size", type=_positive_int, default=500)

    sub.add_parser("info", help="backends usable here, devices and library versions")

    bench = sub.add_parser("bench", help="run the benchmark suite (or read its JSON) and write the report")
    bench.add_argument(
        "--from",
        dest="from_json",
        metavar="FILE",
        help="a pytest-benchmark JSON to report on, instead of running the suite",
    )
    bench.add_argument("--out", metavar="DIR", default="bench-report", help="output folder (default: bench-report)")
    bench.add_argument("--suite", metavar="DIR", default="benchmarks", help="the source tree's benchmarks/ folder")
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
    sweep.add_argument("--model", choices=sorted(MODELS), default="simple_convnet")
    data_options(sweep)
    sweep.add_argument("--epochs", type=_positive_int, default=5)
    training_options(sweep)
    sweep.add_argument("--out", metavar="DIR", help="output folder (default: runs/sweep-MODEL-DATASET)")
    return parser


def _batch_sizes(text: str) -> list[int]:
    sizes = [_positive_int(part.strip()) for part in text.split(",") if part.strip()]
    if not sizes:
        raise argparse.ArgumentTypeError(f"expected batch sizes like 16,32,64, got {text!r}")
    return sizes


def _load_data(args: argparse.Namespace):
    from .datasets import DatasetError, load_dataset

    try:
        return load_dataset(args.dataset, args.data)
    except (FileNotFoundError, DatasetError) as exc:
        raise SystemExit(f"gpucnn: error: {exc}") from None


def _write_json(path: Path, data: Any) -> None:
    from .io import atomic_write

    with atomic_write(path, "w") as f:
        json.dump(data, f, indent=1)


def _train(args: argparse.Namespace) -> int:
    from . import load
    from .models import build_model
    from .optimizers import get_optimizer
    from .plotting import plot_history
    from .training import History

    (x_train, t_train), (x_test, t_test) = _load_data(args)
    if args.limit:
        x_train, t_train = x_train[: args.limit], t_train[: args.limit]
    out = Path(args.out or f"runs/{args.model}-{args.dataset}")
    model_path, history_path, curves_path = out / "model.npz", out / "history.json", out / "curves.png"
    past = History()
    if args.resume:
        if not model_path.is_file():
            raise SystemExit(f"gpucnn: error: --resume: no saved run at {model_path}")
        model = load(model_path)
        if history_path.is_file():
            past = History.from_dict(json.loads(history_path.read_text()))
        if model.epoch >= args.epochs:
            print(f"{model_path} has already trained {model.epoch} epochs (--epochs {args.epochs})")
            return 0
        print(f"resuming {model_path} at epoch {model.epoch + 1}")
    else:
        classes = int(max(t_train.max(), t_test.max())) + 1
        model = build_model(args.model, x_train.shape[1:], classes, dtype=args.dtype, seed=args.seed)
        model.optimizer = get_optimizer(args.optimizer, lr=args.lr)
    out.mkdir(parents=True, exist_ok=True)
    print(
        f"{args.model} on {args.dataset}: {len(x_train):,} training and {len(x_test):,} test images, "
        f"backend {model.backend.name}, batch {args.batch_size}, {model.optimizer!r}"
    )

    def record(model: Any, epoch: int, logs: dict) -> None:
        """After every epoch: history.json and curves.png beside the checkpoint."""
        combined = past.merged(model.history)
        _write_json(history_path, combined.to_dict())
        plot_history(combined, curves_path, title=f"{args.model} on {args.dataset}, batch {args.batch_size}")

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
            checkpoint=str(model_path),
            callbacks=[record],
        )
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: {model_path} holds the model after epoch {model.epoch}; "
            f"continue with the same command and --resume",
            file=sys.stderr,
        )
        return 130
    print(f"saved {model_path}, {history_path} and {curves_path}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from . import load
    from .io import ModelFileError

    try:
        model = load(args.model_path)
    except (FileNotFoundError, ModelFileError) as exc:
        raise SystemExit(f"gpucnn: error: {exc}") from None
    _, (x_test, t_test) = _load_data(args)
    loss, accuracy = model.evaluate(x_test, t_test, batch_size=args.batch_size)
    print(
        json.dumps(
            {
                "model": str(args.model_path),
                "dataset": args.dataset,
                "samples": len(x_test),
                "loss": round(loss, 6),
                "accuracy": round(accuracy, 6),
                "backend": model.backend.name,
            }
        )
    )
    return 0


def _info(args: argparse.Namespace) -> int:
    from .backend import BackendUnavailable, get_backend, known_backends

    print(
        f"gpucnn {__import__('gpucnn').__version__}, Python {platform.python_version()}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs"
    )
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
    return 0


def _bench(args: argparse.Namespace) -> int:
    from .report import bench

    try:
        written = bench(args.out, from_json=args.from_json, suite=args.suite, sizes=args.sizes)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        raise SystemExit(f"gpucnn: error: {exc}") from None
    print("wrote " + ", ".join(str(path) for path in written))
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from .sweep import run_sweep, write_sweep

    (x_train, t_train), test = _load_data(args)
    if args.limit:
        x_train, t_train = x_train[: args.limit], t_train[: args.limit]
    print(
        f"{args.model} on {args.dataset}: {len(x_train):,} training images, batch sizes "
        f"{', '.join(map(str, args.batch_sizes))}, {args.epochs} epochs each"
    )
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
        dataset=args.dataset,
    )
    written = write_sweep(result, args.out or f"runs/sweep-{args.model}-{args.dataset}")
    print("wrote " + ", ".join(str(path) for path in written))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if getattr(args, "backend", None):
        from .backend import BackendUnavailable, set_backend

        try:
            set_backend(args.backend)
        except BackendUnavailable as exc:
            raise SystemExit(f"gpucnn: error: {exc}") from None
    commands = {"train": _train, "evaluate": _evaluate, "info": _info, "bench": _bench, "sweep": _sweep}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
