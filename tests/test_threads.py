"""Backends shared with other threads: nothing hangs, and the values stay right.

Each case runs in a fresh process, since what it checks is a backend's first use in a
process, with a deadline: a regression fails within seconds instead of hanging the
suite, and the process prints where every thread stood (faulthandler). The kernels the
child needs are compiled here first, so that the deadline covers loading them from the
cache, not compiling them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gpucnn
from gpucnn.backend import BackendUnavailable
from gpucnn.layers import Affine, Convolution, MaxPooling, ReLU

DEADLINE_S = 30
# Sizes of small_cnn() whose GEMMs OpenBLAS runs on several threads and which take most of
# a step; two steps of it are enough.
LARGE_GEMMS = {"batch": 64, "hidden": 4096}


def small_cnn(batch: int = 8, hidden: int = 16):
    """A small CNN on the current backend, and a batch for it: ``(net, x, t)``. Its
    convolution has more taps (C*KH*KW = 100) than the numba set computes directly, and
    5x5 filters, which Winograd does not take, so that it takes the parallel im2col and
    pooling kernels."""
    layers = [
        Convolution(4, 5, pad=2),
        ReLU(),
        MaxPooling(2),
        Affine(hidden),
        ReLU(),
        Affine(hidden),
        ReLU(),
        Affine(5),
    ]
    net = gpucnn.Sequential(layers, input_shape=(4, 6, 6), seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 4, 6, 6)).astype(np.float32)
    t = rng.integers(0, 5, batch)
    return net, x, t


def train(steps: int = 3, **sizes: int) -> list[float]:
    """The losses of ``steps`` SGD steps of :func:`small_cnn` on the current backend."""
    net, x, t = small_cnn(**sizes)
    return [net.train_on_batch(x, t, optimizer="sgd") for _ in range(steps)]


_PRELUDE = f"""
import faulthandler, json, sys, threading
faulthandler.dump_traceback_later({DEADLINE_S - 5}, exit=True)
import numpy as np
import gpucnn
from tests.test_threads import LARGE_GEMMS, small_cnn, train
"""

# The first use of a backend (building it, then training on it) while another thread
# multiplies matrices through NumPy's BLAS.
_FIRST_USE_WHILE_MULTIPLYING = (
    _PRELUDE
    + """
a = np.random.default_rng(1).standard_normal((300, 300))
multiplying, stop = threading.Event(), threading.Event()

def multiply():
    while not stop.is_set():
        a @ a
        multiplying.set()

worker = threading.Thread(target=multiply)
worker.start()
multiplying.wait()
try:
    with gpucnn.use_backend(sys.argv[1]):
        losses = train()
finally:
    stop.set()
    worker.join()
print(json.dumps(losses))
"""
)

# Two threads train at once, one on numpy and one on numba; the numba backend is first
# used inside its thread, while the other one trains with large GEMMs.
_NUMPY_AND_NUMBA_AT_ONCE = (
    _PRELUDE
    + """
numpy_losses, numba_losses = [], []
numpy_trained, numba_done = threading.Event(), threading.Event()

def train_numpy():
    with gpucnn.use_backend("numpy"):
        net, x, t = small_cnn(**LARGE_GEMMS)
        numpy_losses.extend(net.train_on_batch(x, t, optimizer="sgd") for _ in range(2))
        numpy_trained.set()
        while not numba_done.is_set():  # keeps BLAS busy until the other thread is done
            net.train_on_batch(x, t)

def train_numba():
    numpy_trained.wait()
    try:
        with gpucnn.use_backend("numba"):
            numba_losses.extend(train(2, **LARGE_GEMMS))
    finally:
        numba_done.set()

threads = [threading.Thread(target=train_numpy), threading.Thread(target=train_numba)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps({"numpy": numpy_losses, "numba": numba_losses}))
"""
)


def _train_here(name: str, steps: int = 3, **sizes: int) -> list[float]:
    """:func:`train` in this process, which has no thread busy with BLAS: the reference
    losses, and the kernels compiled (and cached) before the child needs them (once per
    dtype, whatever the sizes)."""
    try:
        backend = gpucnn.get_backend(name)
    except BackendUnavailable as exc:
        pytest.skip(f"backend {name!r} unavailable: {exc}")
    with gpucnn.use_backend(backend):
        return train(steps, **sizes)


def _run_child(script: str, *args: str):
    """Run ``script`` in a fresh interpreter that imports this gpucnn and these tests; its JSON output."""
    roots = {str(Path(gpucnn.__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1])}
    path = os.pathsep.join([*sorted(roots), *filter(None, [os.environ.get("PYTHONPATH")])])
    try:
        done = subprocess.run(
            [sys.executable, "-c", script, *args],
            env={**os.environ, "PYTHONPATH": path},
            capture_output=True,
            text=True,
            timeout=DEADLINE_S,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the child process hung for {DEADLINE_S} s; its stderr:\n{exc.stderr}")
    assert done.returncode == 0, f"the child process failed (exit code {done.returncode}):\n{done.stderr}"
    return json.loads(done.stdout)


@pytest.mark.parametrize("name", ["numpy", "numba", "cuda-emu"])
def test_first_use_of_a_backend_while_another_thread_multiplies(name):
    """Building a backend and training on it while a GEMM runs in another thread finishes,
    with the losses of the same training in a process without that thread."""
    want = _train_here(name)
    assert _run_child(_FIRST_USE_WHILE_MULTIPLYING, name) == want


def test_a_numpy_and_a_numba_model_train_at_once_in_two_threads():
    """Both models get the losses the numpy model gets alone: on these shapes the numba
    set's kernels equal the NumPy set's bit for bit, and the GEMMs are the same."""
    _train_here("numba")
    want = _train_here("numpy", 2, **LARGE_GEMMS)
    assert _run_child(_NUMPY_AND_NUMBA_AT_ONCE) == {"numpy": want, "numba": want}
