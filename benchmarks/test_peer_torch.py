"""The same networks in PyTorch, at the same batch sizes: the peer of test_throughput.py.

PyTorch runs in a worker process of its own (spawned, not forked), so that its OpenMP
thread pool and the pools of NumPy's BLAS and Numba never run, or spin, in the same
process; while the worker computes, this process waits on a pipe. Each timed call asks
the worker for ``steps`` training steps (or inferences) on a batch it already holds,
so that the pipe's round trip (tens of microseconds) stays below a percent of a call.
The report divides gpucnn's images/s by these (``kind`` and ``model`` match).
"""

from __future__ import annotations

import math
import multiprocessing
import time

import pytest

from .report import PEER, bench_batch_sizes

torch = pytest.importorskip("torch", reason="PyTorch is an optional peer: pip install torch")

MODELS = ("simple_convnet", "mnist_cnn")
INPUT_SHAPE = (1, 28, 28)
CLASSES = 10
MIN_CALL_S = 5e-3


def mnist_cnn(seed: int = 0):
    """``gpucnn.models.mnist_cnn`` in PyTorch: conv 32 3x3 - conv 64 3x3 - pool - dropout -
    dense 128 - dropout - dense, PyTorch's default initialisation."""
    from torch import nn

    torch.manual_seed(seed)
    c, h, w = INPUT_SHAPE
    flat = 64 * ((h - 4) // 2) * ((w - 4) // 2)
    return nn.Sequential(
        nn.Conv2d(c, 32, 3),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Dropout(0.25),
        nn.Flatten(),
        nn.Linear(flat, 128),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(128, CLASSES),
    )


def _worker(conn) -> None:
    """Serve ``(kind, model, batch, steps)`` requests until ``None``; answer each when done."""
    from benchmarks.torch_peer import TorchTrainer, simple_convnet

    builders = {"simple_convnet": lambda: simple_convnet(INPUT_SHAPE, output_size=CLASSES), "mnist_cnn": mnist_cnn}
    held: dict[tuple, tuple] = {}
    while (request := conn.recv()) is not None:
        kind, model, batch, steps = request
        if (model, batch) not in held:
            held.clear()
            trainer = TorchTrainer(builders[model](), lr=1e-3)
            x = torch.rand((batch, *INPUT_SHAPE), generator=torch.Generator().manual_seed(0))
            t = torch.randint(0, CLASSES, (batch,), generator=torch.Generator().manual_seed(0))
            held[(model, batch)] = (trainer, x, t)
        trainer, x, t = held[(model, batch)]
        for _ in range(steps):
            if kind == "train_step":
                trainer.net.train()
                trainer.train_step(x, t)
            else:
                trainer.net.eval()
                trainer.predict(x)
        conn.send(None)


class Peer:
    """The worker process and its pipe."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker, args=(child,), daemon=True)
        self.process.start()
        child.close()

    def run(self, kind: str, model: str, batch: int, steps: int) -> None:
        self.conn.send((kind, model, batch, steps))
        self.conn.recv()

    def close(self) -> None:
        self.conn.send(None)
        self.process.join(timeout=30)


@pytest.fixture(scope="module")
def peer():
    worker = Peer()
    yield worker
    worker.close()


def cases() -> list:
    return [
        pytest.param(model, batch, id=f"{PEER}-{model}-b{batch}") for model in MODELS for batch in bench_batch_sizes()
    ]


class _Worker:
    """What ``measure`` needs of a backend: a name and a synchronize (the worker's reply is one)."""

    name = PEER
    is_gpu = False

    @staticmethod
    def synchronize() -> None:
        pass


def measure_peer(measure, peer: Peer, kind: str, model: str, batch: int) -> None:
    peer.run(kind, model, batch, 1)  # build, warm up
    start = time.perf_counter()
    peer.run(kind, model, batch, 1)
    steps = max(1, math.ceil(MIN_CALL_S / max(time.perf_counter() - start, 1e-9)))
    measure(
        lambda: peer.run(kind, model, batch, steps),
        backend=_Worker,
        images=batch * steps,
        kind=kind,
        model=model,
        batch_size=batch,
        steps_per_call=steps,
        peer=True,
    )


@pytest.mark.parametrize("model_name, batch_size", cases())
def test_torch_train_step(measure, peer, model_name, batch_size):
    measure_peer(measure, peer, "train_step", model_name, batch_size)


@pytest.mark.parametrize("model_name, batch_size", cases())
def test_torch_inference(measure, peer, model_name, batch_size):
    measure_peer(measure, peer, "inference", model_name, batch_size)
