"""A zoo network float32 on the CPU: gpucnn (default backend ``numba``) against PyTorch.

Run from the repository root::

    python -m benchmarks.bench_cpu_vs_torch --model mnist_cnn --batch-sizes 64 256
    python -m benchmarks.bench_cpu_vs_torch --model cifar_cnn --batch-sizes 32 --backend numpy
    python -m benchmarks.bench_cpu_vs_torch --epoch         # adds one 60,000-image epoch per library
    python -m benchmarks.bench_cpu_vs_torch --native-blas   # children run without OPENBLAS_CORETYPE/L2_SIZE

The report goes to ``benchmarks/results/cpu_vs_torch_<model>_<backend>.md`` unless
``--out`` says otherwise.

The network is ``gpucnn.models.build_model(--model)`` (default ``simple_convnet``) at the
builder's default input shape and class count, float32, seed 0; the PyTorch side is its
twin with the same initial weights (:func:`benchmarks.torch_peer.mirror`). Both train
with ``--optimizer`` (Adam, lr 0.001, by default; AdaGrad 0.06 is the classic recipe) and
dropout active; inference runs in eval mode.

What is measured, per batch size: training-step throughput (forward, backward and
optimizer update; images/s), inference throughput (forward only), and the peak working
memory of training: the process's peak resident set size (``ru_maxrss``) after the
training steps minus the same after importing the library (and, for gpucnn, building its
backend). Every measurement
runs in its own subprocess, so that two OpenMP runtimes never share a process, and the
libraries alternate (gpucnn, torch, gpucnn, torch, ...) over ``--rounds`` rounds so that
a slow spell of the machine hits both. Inside a subprocess, warm-up steps (the JIT
compilation included) come first; then steps are timed one by one for at least
``--min-time`` seconds and their median gives the throughput. The report gives the
median over rounds and the ratio of the medians.

On 2 cores, a third busy process wrecks every 2-thread pool (OpenBLAS's, OpenMP's):
threads that wait for each other lose whole scheduler time slices, and a 20 ms step
takes 200 ms. So each measurement reads /proc/stat around its subprocess, and a run
during which other processes used more than ``--max-others`` of the CPUs is repeated
(``--retries``); the report gives the share they used.

The one-time JIT compilation is its own figure: the first training step and the first
inference of a fresh process, with an empty Numba cache (cold) and again with the cache
that run filled (warm), next to a steady-state step.

The script asserts nothing: targets are printed with the figures.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np

RESULTS = Path("benchmarks/results")
LR = {"adagrad": 0.06, "adam": 0.001}  # the classic recipe's AdaGrad 0.06; Adam's usual 0.001
EPOCH_IMAGES = 60_000
BLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
# The issues' targets for each backend: ratios to PyTorch at every batch size, batch 1024 against
# the best batch size, and the classic recipe's epoch time.
TARGETS = {
    "numba": {"train": 1.2, "infer": 1.0, "large_batch": 0.8, "epoch_s": 7.5},
    "numpy": {"train": 0.6, "infer": 0.5, "large_batch": 0.8, "epoch_s": 12.5},
}


# -- workers: each runs in a fresh subprocess and prints one JSON line --------------------


def _timed(step: Callable[[], object], min_time: float, min_steps: int = 5) -> list[float]:
    """Seconds of each call of ``step``, called until ``min_time`` and ``min_steps`` are both reached."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_steps or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


def _model_defaults(model: str) -> tuple[tuple[int, ...], int]:
    """The zoo builder's default (input shape, number of classes)."""
    from gpucnn.models import MODELS

    if model not in MODELS:
        raise SystemExit(f"unknown model {model!r}; known: {', '.join(MODELS)}")
    params = inspect.signature(MODELS[model]).parameters
    return tuple(params["input_shape"].default), int(params["num_classes"].default)


def _data(model: str, batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random inputs in [0, 1) and random labels for ``model``."""
    shape, classes = _model_defaults(model)
    rng = np.random.default_rng(seed)
    return rng.random((batch, *shape), dtype=np.float32), rng.integers(0, max(classes, 2), batch)


def _gpucnn_model(model: str, backend: str, optimizer: str):
    """The zoo model (float32, seed 0) on ``backend`` and its optimizer."""
    import gpucnn
    from gpucnn.models import build_model

    shape, classes = _model_defaults(model)
    with gpucnn.use_backend(backend):
        net = build_model(model, shape, num_classes=classes, dtype="float32", seed=0)
    return net, gpucnn.optimizers.get_optimizer(optimizer, lr=LR[optimizer])


def _torch_trainer(model: str, optimizer: str):
    """The PyTorch twin of the zoo model, with the same initial weights, and its trainer."""
    from .torch_peer import TorchTrainer, mirror

    source, _ = _gpucnn_model(model, "numpy", optimizer)
    net, loss = mirror(source)
    del source  # its arrays are freed before the measured steps
    return TorchTrainer(net, lr=LR[optimizer], optimizer=optimizer, loss=loss)


def _torch_targets(trainer, t: np.ndarray):
    """Labels as the trainer's loss takes them: class indices, or (N, 1) floats for a binary loss."""
    import torch

    if isinstance(trainer.loss, torch.nn.BCEWithLogitsLoss):
        return torch.from_numpy(t.astype(np.float32).reshape(-1, 1))
    return torch.from_numpy(t)


def _peak_rss_bytes() -> int:
    """The process's peak resident set size so far (``ru_maxrss``), in bytes; 0 where unknown."""
    try:
        import resource
    except ImportError:
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # kilobytes on Linux


def _thread_info() -> dict:
    """Thread pools of this process as threadpoolctl sees them, plus Numba's and torch's own."""
    info: dict = {"pools": []}
    try:
        from threadpoolctl import threadpool_info

        info["pools"] = [
            {
                k: p.get(k)
                for k in ("internal_api", "version", "num_threads", "architecture", "threading_layer", "prefix")
            }
            for p in threadpool_info()
        ]
    except ImportError:
        info["pools"] = "threadpoolctl is not installed"
    if "numba" in sys.modules:
        import numba

        info["numba_threads"] = numba.get_num_threads()
        try:
            info["numba_threading_layer"] = numba.threading_layer()
        except ValueError:
            info["numba_threading_layer"] = "not started"
    if "torch" in sys.modules:
        info["torch_threads"] = sys.modules["torch"].get_num_threads()
    return info


def worker_throughput(library: str, backend: str, model: str, optimizer: str, batch: int, min_time: float) -> dict:
    """Training-step and inference throughput (images/s) of one library at one batch size,
    and the peak working memory of training (bytes above the import's peak)."""
    if library == "torch":
        import torch

        import gpucnn  # noqa: F401  (builds the twin's weights: its import is not working memory)

        imported = _peak_rss_bytes()
        x, t = _data(model, batch)
        trainer = _torch_trainer(model, optimizer)
        xb, tb = torch.from_numpy(x), _torch_targets(trainer, t)
        train = lambda: trainer.train_step(xb, tb)  # noqa: E731
        infer = lambda: trainer.predict(xb)  # noqa: E731
    else:
        import gpucnn

        gpucnn.get_backend(backend)  # builds the backend: imports Numba, configures its cache and threads
        imported = _peak_rss_bytes()
        x, t = _data(model, batch)
        net, opt = _gpucnn_model(model, backend, optimizer)
        xb, tb = net.backend.asarray(x), net.backend.asarray(t)

        def train() -> None:
            opt.update(net.params, net.gradient(xb, tb))

        infer = lambda: net.predict(xb)  # noqa: E731
    for _ in range(3):  # warm-up: JIT compilation, allocator and thread-pool start
        train()
    train_times = _timed(train, min_time)
    trained = _peak_rss_bytes()
    for _ in range(3):
        infer()
    infer_times = _timed(infer, min_time)
    return {
        "train_ips": batch / statistics.median(train_times),
        "infer_ips": batch / statistics.median(infer_times),
        "train_steps": len(train_times),
        "infer_steps": len(infer_times),
        "train_memory": trained - imported,
        "threads": _thread_info(),
    }


def worker_compile(backend: str, model: str, optimizer: str, batch: int) -> dict:
    """Seconds of a fresh process's import, first training step and first inference, then a steady step."""
    t0 = time.perf_counter()
    import gpucnn

    gpucnn.get_backend(backend)  # builds the backend: imports Numba, configures its cache and threads
    imported = time.perf_counter() - t0
    net, opt = _gpucnn_model(model, backend, optimizer)
    x, t = _data(model, batch)

    def train() -> None:
        opt.update(net.params, net.gradient(x, t))

    first_train = _timed(train, 0.0, min_steps=1)[0]
    first_infer = _timed(lambda: net.predict(x), 0.0, min_steps=1)[0]
    steady = statistics.median(_timed(train, 0.5))
    return {
        "import_s": imported,
        "first_train_s": first_train,
        "first_infer_s": first_infer,
        "steady_train_s": steady,
        "threads": _thread_info(),
    }


def worker_epoch(library: str, backend: str, model: str, optimizer: str, batch: int) -> dict:
    """Training time of one epoch of 60,000 random images of the model's input shape (no evaluation)."""
    x, t = _data(model, EPOCH_IMAGES, seed=1)
    if library == "torch":
        import torch

        trainer = _torch_trainer(model, optimizer)
        xt, tt = torch.from_numpy(x), _torch_targets(trainer, t)
        trainer.train_step(xt[:batch], tt[:batch])  # warm-up
        rng = np.random.default_rng(0)
        t0 = time.perf_counter()
        order = torch.from_numpy(rng.permutation(EPOCH_IMAGES))
        for i in range(0, EPOCH_IMAGES, batch):
            idx = order[i : i + batch]
            trainer.train_step(xt[idx], tt[idx])
        return {"epoch_s": time.perf_counter() - t0, "threads": _thread_info()}
    net, opt = _gpucnn_model(model, backend, optimizer)
    net.train_on_batch(x[:batch], t[:batch], optimizer=opt)  # warm-up: JIT compilation
    history = net.fit(x, t, batch_size=batch, epochs=1, optimizer=opt, verbose=0, seed=0)
    return {"epoch_s": history.history["epoch_time"][-1], "threads": _thread_info()}


# -- the driver ---------------------------------------------------------------------------


def _cpu_seconds() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat (Linux), else None."""
    try:
        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    hz = os.sysconf("SC_CLK_TCK")
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks[:8]) - idle) / hz, sum(ticks[:8]) / hz


def _others_share(before: tuple[float, float] | None, children_cpu: float) -> float | None:
    """Share of the machine's CPU time that processes other than our children used since ``before``."""
    after = _cpu_seconds()
    if before is None or after is None:
        return None
    busy, total = after[0] - before[0], after[1] - before[1]
    return max(0.0, busy - children_cpu) / max(total, 1e-9)


def _children_cpu() -> float:
    """CPU seconds used so far by finished child processes (0 where ``resource`` is missing)."""
    try:
        import resource
    except ImportError:  # not on Unix: the share of other processes is then overestimated
        return 0.0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _wait_until_quiet(max_wait: float, threshold: float) -> None:
    """Wait (at most ``max_wait`` s) until other processes use less than ``threshold`` of the CPUs."""
    deadline = time.monotonic() + max_wait
    while time.monotonic() < deadline:
        before = _cpu_seconds()
        time.sleep(0.5)
        share = _others_share(before, 0.0)
        if share is None or share < threshold:
            return


def _run_worker(args: list[str], env: dict[str, str], opts: argparse.Namespace, timeout: float = 3600) -> dict:
    """Run one measurement in a fresh process. A run during which other processes used more
    than ``--max-others`` of the CPUs is repeated (up to ``--retries`` times): two threads
    that wait for each other on 2 cores lose whole scheduler time slices when a third
    process runs, which turns a 20 ms step into 200 ms, for every library alike."""
    cmd = [sys.executable, "-m", "benchmarks.bench_cpu_vs_torch", "--worker", *args]
    for attempt in range(opts.retries + 1):
        _wait_until_quiet(opts.idle_wait, opts.max_others)
        before, cpu0 = _cpu_seconds(), _children_cpu()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        others = _others_share(before, _children_cpu() - cpu0)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        if others is None or others <= opts.max_others or attempt == opts.retries:
            result = json.loads(done.stdout.strip().splitlines()[-1])
            return {**result, "others_cpu": others, "attempts": attempt + 1}


def _child_env(args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ)
    if args.native_blas:
        for name in BLAS_ENV:
            env.pop(name, None)
    if args.openblas_thread_timeout is not None:
        env["OPENBLAS_THREAD_TIMEOUT"] = str(args.openblas_thread_timeout)
    return env


def _torch_available() -> bool:
    try:
        metadata.version("torch")
    except metadata.PackageNotFoundError:
        return False
    return True


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in ("gpucnn", "numpy", "numba", "llvmlite", "torch", "threadpoolctl"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def measure(args: argparse.Namespace) -> dict:
    """Every figure of the report, measured in subprocesses."""
    env = _child_env(args)
    libraries = ["gpucnn", "torch"] if _torch_available() and not args.no_torch else ["gpucnn"]
    runs: dict[tuple[str, int], list[dict]] = {(lib, b): [] for lib in libraries for b in args.batch_sizes}
    for r in range(args.rounds):
        for batch in args.batch_sizes:
            for lib in libraries:  # A B A B ...: each round alternates the libraries
                result = _run_worker(["throughput", lib, *_model_args(args), str(batch), str(args.min_time)], env, args)
                runs[lib, batch].append(result)
                print(
                    f"round {r + 1}/{args.rounds} batch {batch:5d} {lib:6s} "
                    f"train {result['train_ips']:9,.0f} img/s  infer {result['infer_ips']:9,.0f} img/s  "
                    f"memory {result['train_memory'] / 1e6:6.0f} MB  "
                    f"(others' CPU share: {_pct(result['others_cpu'])}, attempts {result['attempts']})",
                    flush=True,
                )
    report = {"libraries": libraries, "runs": runs, "compile": None, "epoch": {}}
    if not args.no_compile and args.backend == "numba":
        with tempfile.TemporaryDirectory(prefix="gpucnn-numba-cache-") as cache:
            compile_env = {**env, "NUMBA_CACHE_DIR": cache}
            batch = str(args.batch_sizes[0])
            cold = _run_worker(["compile", "gpucnn", *_model_args(args), batch], compile_env, args)
            warm = _run_worker(["compile", "gpucnn", *_model_args(args), batch], compile_env, args)
        report["compile"] = {"cold": cold, "warm": warm}
        print(
            f"first training step: cold cache {cold['first_train_s']:.2f} s, warm cache {warm['first_train_s']:.3f} s",
            flush=True,
        )
    if args.epoch:
        names = [args.backend, "numpy"] if args.backend != "numpy" else ["numpy"]
        for r in range(args.rounds if args.epoch_rounds is None else args.epoch_rounds):
            for name in [*names, *(["torch"] if "torch" in libraries else [])]:
                lib = "torch" if name == "torch" else "gpucnn"
                result = _run_worker(["epoch", lib, name, args.model, args.optimizer, "100"], env, args)
                report["epoch"].setdefault(name, []).append(result)
                print(f"epoch round {r + 1} {name:6s} {result['epoch_s']:.2f} s", flush=True)
    return report


def _model_args(args: argparse.Namespace) -> list[str]:
    """The worker arguments that name what is measured: backend, model, optimizer."""
    return [args.backend, args.model, args.optimizer]


def _pct(fraction: float | None) -> str:
    return "n/a" if fraction is None else f"{fraction:.0%}"


def _fmt_ips(values: list[float]) -> str:
    if not values:
        return "–"
    return f"{_median(values):,.0f} ({min(values):,.0f}–{max(values):,.0f})"


def render(report: dict, args: argparse.Namespace) -> str:
    """The markdown report: machine, throughput tables, ratios, compile time, targets."""
    targets = TARGETS.get(args.backend, TARGETS["numba"])
    libs, runs = report["libraries"], report["runs"]
    first = runs[libs[0], args.batch_sizes[0]][0]["threads"]
    torch_threads = runs["torch", args.batch_sizes[0]][0]["threads"] if "torch" in libs else None
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    env = _child_env(args)
    lines = [
        f"# `{args.model}` float32 on the CPU: gpucnn `{args.backend}` against PyTorch",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M %Z')} with "
        f"`{' '.join(['python -m benchmarks.bench_cpu_vs_torch', *args.argv])}`.",
        "",
        "## Machine",
        "",
        f"- CPU: {_cpu_model()}; {os.cpu_count()} logical CPUs, {affinity} usable by this process",
        f"- {platform.system()} {platform.release()}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in _versions().items()),
        f"- gpucnn backend `{args.backend}`: threads {json.dumps({k: v for k, v in first.items() if k != 'pools'})}",
        f"- BLAS and OpenMP pools in the gpucnn process (threadpoolctl): {json.dumps(first['pools'])}",
    ]
    if torch_threads is not None:
        lines.append(
            f"- torch process: {torch_threads.get('torch_threads')} threads; pools {json.dumps(torch_threads['pools'])}"
        )
    lines += [
        "- environment: "
        + ", ".join(
            f"{k}={env.get(k, '(unset)')}"
            for k in (
                *BLAS_ENV,
                "OPENBLAS_NUM_THREADS",
                "OPENBLAS_THREAD_TIMEOUT",
                "OMP_NUM_THREADS",
                "NUMBA_NUM_THREADS",
                "NUMBA_THREADING_LAYER",
            )
        ),
        "- "
        + (
            "`--native-blas`: OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE removed from the children"
            if args.native_blas
            else "children inherit the environment as it is"
        ),
        "",
        f"Each cell: median over {args.rounds} rounds of one subprocess each (min–max); a subprocess's figure is "
        f"batch / median step time over ≥ {args.min_time} s of steps, after warm-up. Libraries alternate A B A B.",
        f"Network: `gpucnn.models.{args.model}` at input shape {_model_defaults(args.model)[0]}, float32, seed 0; "
        f"PyTorch trains its twin with the same initial weights. Optimizer: {args.optimizer} "
        f"(lr {LR[args.optimizer]}); dropout active in training, eval mode in inference.",
        "Peak working memory: the process's peak resident set size after the training steps minus after "
        "importing the library (median over rounds).",
        "",
    ]
    for mode, title in (("train", f"Training step (forward + backward + {args.optimizer})"), ("infer", "Inference")):
        key = f"{mode}_ips"
        header = "| batch | gpucnn img/s |" + (" torch img/s | gpucnn / torch |" if "torch" in libs else "")
        if mode == "train":
            header += " gpucnn memory MB |" + (" torch memory MB |" if "torch" in libs else "")
        lines += [f"### {title}", "", header, "|" + "---|" * (header.count("|") - 1)]
        for batch in args.batch_sizes:
            ours = [r[key] for r in runs["gpucnn", batch]]
            row = f"| {batch} | {_fmt_ips(ours)} |"
            if "torch" in libs:
                theirs = [r[key] for r in runs["torch", batch]]
                row += f" {_fmt_ips(theirs)} | {_median(ours) / _median(theirs):.2f}× |"
            if mode == "train":
                for lib in libs:
                    row += f" {_median([r['train_memory'] for r in runs[lib, batch]]) / 1e6:,.0f} |"
            lines.append(row)
        best = max(_median([r[key] for r in runs["gpucnn", b]]) for b in args.batch_sizes)
        if 1024 in args.batch_sizes:
            at_1024 = _median([r[key] for r in runs["gpucnn", 1024]])
            lines += [
                "",
                f"gpucnn at batch 1024: {at_1024 / best:.2f} of its best batch size "
                f"(target ≥ {targets['large_batch']:.2f}).",
            ]
        if "torch" in libs:
            lines += ["", f"Target: gpucnn / torch ≥ {targets[mode]:.1f}× at every batch size."]
        lines.append("")
    others = [r["others_cpu"] for rs in runs.values() for r in rs if r["others_cpu"] is not None]
    if others:
        retried = sum(r["attempts"] - 1 for rs in runs.values() for r in rs)
        lines += [
            f"Share of the CPUs used by other processes during each measurement: median {_median(others):.0%}, "
            f"max {max(others):.0%} ({retried} runs above {args.max_others:.0%} were repeated).",
            "",
        ]
    if report["compile"]:
        cold, warm = report["compile"]["cold"], report["compile"]["warm"]
        lines += [
            f"### One-time JIT compilation (batch {args.batch_sizes[0]}, fresh process)",
            "",
            "| Numba cache | import gpucnn + backend | first training step | first inference | steady training step |",
            "|---|---|---|---|---|",
        ]
        for name, c in (("cold (empty)", cold), ("warm (filled by the cold run)", warm)):
            lines.append(
                f"| {name} | {c['import_s']:.2f} s | {c['first_train_s']:.3f} s | {c['first_infer_s']:.3f} s "
                f"| {c['steady_train_s'] * 1e3:.1f} ms |"
            )
        lines.append("")
    if report["epoch"]:
        lines += [
            f"### One epoch: 60,000 random images of the input shape, batch 100, {args.optimizer} {LR[args.optimizer]}",
            "",
            "| library | epoch training time, s (median; min–max) |",
            "|---|---|",
        ]
        for name, results in report["epoch"].items():
            values = [r["epoch_s"] for r in results]
            label = "torch" if name == "torch" else f"gpucnn {name}"
            lines.append(f"| {label} | {_median(values):.2f} ({min(values):.2f}–{max(values):.2f}) |")
        lines += ["", f"Target for the `{args.backend}` backend: ≤ {targets['epoch_s']} s.", ""]
    return "\n".join(lines)


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_cpu_vs_torch", description=__doc__.split("\n")[0])
    p.add_argument("--backend", default="numba", help="gpucnn backend to measure (default: numba)")
    p.add_argument(
        "--model", default="simple_convnet", help="zoo network (gpucnn.models.MODELS; default simple_convnet)"
    )
    p.add_argument("--optimizer", choices=sorted(LR), default="adam", help="optimizer on both sides (default: adam)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 100, 256, 1024])
    p.add_argument("--rounds", type=int, default=3, help="A B rounds (at least 3 for a median)")
    p.add_argument("--min-time", type=float, default=1.0, help="seconds of timed steps per subprocess and mode")
    p.add_argument(
        "--out", type=Path, default=None, help=f"markdown report (default: {RESULTS}/cpu_vs_torch_MODEL_BACKEND.md)"
    )
    p.add_argument(
        "--native-blas",
        action="store_true",
        help="remove OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE from the children's environment",
    )
    p.add_argument(
        "--openblas-thread-timeout",
        type=int,
        default=None,
        metavar="N",
        help="set OPENBLAS_THREAD_TIMEOUT=N in the children (both libraries): OpenBLAS's idle "
        "threads then sleep after 2**N cycles instead of spinning for 2**28 (about 0.1 s)",
    )
    p.add_argument("--epoch", action="store_true", help="also time one 60,000-image epoch per library")
    p.add_argument("--epoch-rounds", type=int, default=None, help="rounds of the epoch timing (default: --rounds)")
    p.add_argument(
        "--idle-wait",
        type=float,
        default=30.0,
        help="before each subprocess, wait up to this many seconds for other processes to go quiet",
    )
    p.add_argument(
        "--max-others",
        type=float,
        default=0.1,
        help="repeat a run during which other processes used more than this share of the CPUs",
    )
    p.add_argument("--retries", type=int, default=3, help="repeats of a disturbed run (default 3)")
    p.add_argument("--no-torch", action="store_true", help="measure gpucnn only")
    p.add_argument("--no-compile", action="store_true", help="skip the JIT compile-time figure")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.min_time <= 0:
        p.error("--rounds must be >= 1 and --min-time > 0")
    _model_defaults(args.model)  # an unknown name stops here, before any subprocess
    if args.out is None:
        args.out = RESULTS / f"cpu_vs_torch_{args.model}_{args.backend}.md"
    args.argv = argv
    return args


def _worker_main(argv: list[str]) -> None:
    kind, library, backend, model, optimizer, batch, *rest = argv
    if kind == "throughput":
        result = worker_throughput(library, backend, model, optimizer, int(batch), float(rest[0]))
    elif kind == "compile":
        result = worker_compile(backend, model, optimizer, int(batch))
    elif kind == "epoch":
        result = worker_epoch(library, backend, model, optimizer, int(batch))
    else:
        raise SystemExit(f"unknown worker {kind!r}")
    print(json.dumps(result))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        _worker_main(argv[1:])
        return 0
    args = _parse(argv)
    report = measure(args)
    text = render(report, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(text + "\n")
    os.replace(tmp, args.out)  # atomic: a report is whole or absent
    print(f"\nwrote {args.out}\n\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
