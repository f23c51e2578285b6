"""What is particular to the Numba kernel set: which convolutions it computes directly,
its threads, its BLAS settings and its cache (:mod:`gpucnn.kernels.numba_runtime`; those
in a fresh process each). Its operations are compared with the oracle in
``test_kernel_agreement.py`` (see :mod:`gpucnn.kernels.numba_set`, Values).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("numba", reason="the numba kernel set needs Numba (pip install 'gpucnn[numba]')")

import gpucnn  # noqa: E402
from gpucnn.kernels import output_hw  # noqa: E402
from gpucnn.kernels.numba_set import NumbaKernels  # noqa: E402
from gpucnn.kernels.numpy_set import NumpyKernels  # noqa: E402

from .bounds import assert_argmax_up_to_rounding, assert_close_to_sum, pool_windows, sum_rtol  # noqa: E402

NP = NumpyKernels()
NB = gpucnn.get_backend("numba").kernels  # built as users get it: the process configured first
EQUAL = np.testing.assert_array_equal


def test_the_numba_backend_holds_the_numba_kernel_set():
    assert isinstance(NB, NumbaKernels)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("rows, columns", [(3, 5), (2**13, 9)])  # below and above elementwise_min_elements
def test_bias_relu_and_its_backward_give_numpys_bits_through_the_loops_and_below_them(rows, columns, dtype):
    """Large arrays go through the parallel loops, small ones through the NumPy set's passes:
    the same bits either way, NaN, infinities and a -0.0 (which NumPy's maximum makes +0.0)
    included."""
    rng = np.random.default_rng(6)
    x, b = rng.standard_normal((rows, columns)).astype(dtype), rng.standard_normal(columns).astype(dtype)
    x[0, :3] = [np.nan, -0.0, np.inf]
    b[1] = -0.0
    x[1, 0] = -np.inf
    assert (x.size >= NB.elementwise_min_elements) == (rows > 3)
    out = NB.bias_relu(x, b)
    want = NP.bias_relu(x, b)
    assert out.tobytes() == want.tobytes() and np.signbit(out[0, 1]) == np.signbit(want[0, 1])
    dout = rng.standard_normal((rows, columns)).astype(dtype)
    assert NB.relu_backward(dout, want).tobytes() == NP.relu_backward(dout, want).tobytes()


@pytest.mark.parametrize("stride, filter_size, channels", [(2, 3, 1), (1, 5, 2)])
def test_convolutions_the_numba_set_does_not_compute_directly_take_the_gemm(stride, filter_size, channels):
    """A stride above 1, or more taps than ``direct_conv_max_taps`` in a filter other than
    3x3 (which takes Winograd): im2col and the GEMM, the NumPy set's computation, to the
    rounding of the GEMMs' sums, which BLAS takes in the order of each set's layout of the
    column matrix (the Numba set's C order, the NumPy set's tap-major)."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, channels, 9, 8))
    w, b = rng.standard_normal((5, channels, filter_size, filter_size)), rng.standard_normal(5)
    assert not NB.prefers_direct_conv(channels, filter_size, filter_size, stride)
    out, argmax = NB.conv_bias_relu_maxpool(x, w, b, stride, 1, 2, 2, 2, 0)
    want_out, want_argmax = NP.conv_bias_relu_maxpool(x, w, b, stride, 1, 2, 2, 2, 0)
    # Each output sums C*KH*KW products and the bias; ReLU and the maximum keep the bound,
    # the largest of the window's sums of absolute terms.
    taps = channels * filter_size**2
    abs_out = NP.conv_bias_relu_maxpool(np.abs(x), np.abs(w), np.abs(b), stride, 1, 2, 2, 2, 0)[0]
    assert_close_to_sum(out, want_out, abs_out, sum_rtol(out.dtype, taps + 1), "out")
    oh, ow = output_hw(9, 8, filter_size, filter_size, stride, 1)
    rows = NP.im2col(x, filter_size, filter_size, stride, 1) @ w.reshape(5, -1).T + b
    windows = pool_windows(NP.rows_to_nchw(np.maximum(rows, 0), 2, oh, ow), 2, 2, 2, 0)
    assert_argmax_up_to_rounding(argmax, want_argmax, windows, 2 * sum_rtol(out.dtype, taps + 1) * abs_out)
    EQUAL(NB.conv_bias_relu_maxpool_infer(x, w, b, stride, 1, 2, 2, 2, 0), out)
    dout = rng.standard_normal(out.shape)
    dw, db = NB.conv_maxpool_relu_backward_params(dout, argmax, out, x, w.shape, stride, 1, 2, 2, 2, 0)
    want_dw, want_db = NP.conv_maxpool_relu_backward_params(dout, argmax, out, x, w.shape, stride, 1, 2, 2, 2, 0)
    EQUAL(db, want_db)
    drows = NP.maxpool_relu_backward(dout, argmax, out, 2, oh, ow, 2, 2, 2, 0)
    col = NP.im2col(x, filter_size, filter_size, stride, 1)
    abs_terms = (np.abs(drows).T @ np.abs(col)).reshape(w.shape)
    assert_close_to_sum(dw, want_dw, abs_terms, sum_rtol(dw.dtype, col.shape[0]), "dW")


def test_parallel_kernels_can_be_called_from_several_threads(monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    from gpucnn.kernels import numba_runtime

    monkeypatch.setattr(numba_runtime, "parallel_min_bytes", 0)  # every launch on the task threads

    x = np.random.default_rng(3).standard_normal((4, 3, 16, 16)).astype(np.float32)
    want = NP.im2col(x, 3, 3, 1, 1)
    with ThreadPoolExecutor(4) as pool:
        for col in pool.map(lambda _: NB.im2col(x, 3, 3, 1, 1), range(16)):
            EQUAL(col, want)


# A fresh process's first task launches: bias_relu over 4096 x 16 values (its loops, not the
# NumPy pass below elementwise_min_elements; 512 KiB in and out), then over more than
# parallel_min_bytes; whether the task threads exist after each.
_SMALL_THEN_LARGE_LAUNCH = """
import json
import numba
import numpy as np
import gpucnn
from gpucnn.kernels import numba_runtime
kernels = gpucnn.get_backend("numba").kernels
pools = []
for rows in (4096, 2 * numba_runtime.parallel_min_bytes // 64):
    kernels.bias_relu(np.ones((rows, 16), dtype=np.float32), np.zeros(16, dtype=np.float32))
    pools.append(numba_runtime._task_pool is not None)
print(json.dumps({"pools": pools, "threads": numba.get_num_threads()}))
"""


def test_a_launch_over_few_bytes_runs_on_the_calling_thread_alone():
    run = _run(_SMALL_THEN_LARGE_LAUNCH, env={"NUMBA_NUM_THREADS": "2"})
    if run["threads"] < 2:
        pytest.skip("one Numba thread: every launch runs on the calling thread")
    assert run["pools"] == [False, True]


# -- process settings (numba_runtime), each in a fresh process ----------------------------


def _run(script: str, *args: str, env: dict[str, str | None]) -> dict:
    """Run ``script`` in a fresh interpreter that imports this gpucnn, with ``env`` changed
    (None: unset); its JSON output."""
    full_env = {**os.environ, **env}
    root = str(Path(gpucnn.__file__).resolve().parents[1])
    full_env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])
    full_env = {k: v for k, v in full_env.items() if v is not None}
    done = subprocess.run([sys.executable, "-c", script, *args], env=full_env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _numba_files(folder: Path, since: float = 0.0) -> list[Path]:
    """Numba's cache files (index .nbi, data .nbc) under ``folder``, written at ``since`` or later."""
    return sorted(p for p in folder.rglob("*.nb[ic]") if p.is_file() and p.stat().st_mtime >= since)


# The numba backend built in a fresh process, then a plain and a parallel kernel run.
_RUN_TWO_KERNELS = """
import json, warnings
from pathlib import Path
import numpy as np
import gpucnn
from gpucnn.kernels import numba_conv, numba_optim

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    kernels = gpucnn.get_backend("numba").kernels
param = np.ones(3, np.float32)
kernels.sgd_update(param, np.ones(3, np.float32), 0.5)
col = kernels.im2col(np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3), 2, 2)
stats = [kernel.stats for kernel in (numba_optim.sgd_step, numba_conv.im2col)]
print(json.dumps({
    "param": param.tolist(),
    "col": col.tolist(),
    "warnings": [str(w.message) for w in caught],
    "cache_hits": sum(sum(s.cache_hits.values()) for s in stats),
    "package": str(Path(gpucnn.kernels.__file__).resolve().parent),
}))
"""
_PARAM = [0.5, 0.5, 0.5]
_COL = [[0, 1, 3, 4], [1, 2, 4, 5], [3, 4, 6, 7], [4, 5, 7, 8]]


def test_the_kernel_cache_is_in_the_user_cache_folder_and_nothing_in_the_package(tmp_path):
    """Compiled code goes to $XDG_CACHE_HOME/gpucnn/numba, where the next process finds
    it; nothing is written under the package's directory."""
    start = time.time() - 2  # file times may be coarser than the clock
    env = {"XDG_CACHE_HOME": str(tmp_path), "NUMBA_CACHE_DIR": None}
    first, second = _run(_RUN_TWO_KERNELS, env=env), _run(_RUN_TWO_KERNELS, env=env)
    for run in (first, second):
        assert (run["param"], run["col"], run["warnings"]) == (_PARAM, _COL, [])
    assert (first["cache_hits"], second["cache_hits"]) == (0, 2)
    cached = {p.name.split("-")[0] for p in _numba_files(tmp_path / "gpucnn" / "numba")}
    assert {"numba_optim.sgd_step", "numba_conv.im2col"} <= cached
    assert _numba_files(Path(first["package"]), since=start) == []


def test_a_numba_cache_dir_set_by_the_user_holds_the_cache(tmp_path):
    run = _run(_RUN_TWO_KERNELS, env={"XDG_CACHE_HOME": str(tmp_path / "xdg"), "NUMBA_CACHE_DIR": str(tmp_path / "nb")})
    assert (run["param"], run["col"], run["warnings"]) == (_PARAM, _COL, [])
    assert _numba_files(tmp_path / "nb") and not _numba_files(tmp_path / "xdg")


def test_an_unwritable_cache_folder_gives_a_warning_and_a_run_without_cache(tmp_path):
    """$XDG_CACHE_HOME is a file here, so no folder can be made in it: one warning that
    names the folder, the same values, and nothing cached, in the package either."""
    start = time.time() - 2
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    run = _run(_RUN_TWO_KERNELS, env={"XDG_CACHE_HOME": str(blocker), "NUMBA_CACHE_DIR": None})
    assert (run["param"], run["col"], run["cache_hits"]) == (_PARAM, _COL, 0)
    assert len(run["warnings"]) == 1
    assert "cannot write its Numba cache folder" in run["warnings"][0] and str(blocker) in run["warnings"][0]
    assert _numba_files(Path(run["package"]), since=start) == []


# The cache's folder replaced by a file after the backend was built, then a kernel run.
_CACHE_BREAKS_LATER = """
import json, shutil, warnings
import numpy as np
import gpucnn
from gpucnn.kernels import numba_runtime

kernels = gpucnn.get_backend("numba").kernels
for folder in numba_runtime.cache_folder().iterdir():
    shutil.rmtree(folder)
    folder.write_text("")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    param = np.ones(3, np.float32)
    kernels.sgd_update(param, np.ones(3, np.float32), 0.5)
print(json.dumps({"param": param.tolist(), "warnings": [str(w.message) for w in caught]}))
"""


def test_a_cache_folder_that_breaks_later_costs_warnings_not_the_call(tmp_path):
    run = _run(_CACHE_BREAKS_LATER, env={"XDG_CACHE_HOME": str(tmp_path), "NUMBA_CACHE_DIR": None})
    assert run["param"] == _PARAM
    assert [message.split(" (")[0] for message in run["warnings"]] == [
        "gpucnn cannot read its Numba cache",
        "gpucnn cannot write its Numba cache",
    ]


# A kernel made with the runtime's decorator that Numba cannot cache: it reads a global
# array large enough to be referenced by address (a "dynamic global").
_UNCACHABLE_KERNEL = """
import json, warnings
import numpy as np
import gpucnn
from gpucnn.kernels import numba_runtime

gpucnn.get_backend("numba")
TABLE = np.arange(2**20, dtype=np.float64)

@numba_runtime.jit
def last_entry():
    return TABLE[-1]

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    value = last_entry()
print(json.dumps({"value": value, "warnings": [str(w.message) for w in caught]}))
"""


def test_a_kernel_numba_cannot_cache_runs_with_numbas_warning(tmp_path):
    run = _run(_UNCACHABLE_KERNEL, env={"XDG_CACHE_HOME": str(tmp_path), "NUMBA_CACHE_DIR": None})
    assert run["value"] == 2**20 - 1
    assert any('Cannot cache compiled function "last_entry"' in message for message in run["warnings"])


# A function of the user's with cache=True, compiled after the numba backend was built.
_USERS_OWN_FUNCTION = """
import json, sys
import numba
import gpucnn
gpucnn.get_backend("numba")
sys.path.insert(0, sys.argv[1])
from users_module import add_one
print(json.dumps({"value": add_one(1), "cache_dir": numba.config.CACHE_DIR}))
"""


def test_the_users_own_numba_functions_keep_their_cache_where_numba_puts_it(tmp_path):
    (tmp_path / "users_module.py").write_text(
        "import numba\n\n\n@numba.njit(cache=True)\ndef add_one(x):\n    return x + 1\n"
    )
    env = {"XDG_CACHE_HOME": str(tmp_path / "xdg"), "NUMBA_CACHE_DIR": None}
    assert _run(_USERS_OWN_FUNCTION, str(tmp_path), env=env) == {"value": 2, "cache_dir": ""}
    assert {p.parent for p in _numba_files(tmp_path)} == {tmp_path / "__pycache__"}


# The process after importing the numba kernel set, then after building the backend,
# with or without another (idle) Python thread at that moment.
_PROCESS_SETTINGS = """
import ctypes, json, os, sys, threading
from threadpoolctl import threadpool_info
import numba, numpy
import gpucnn
import gpucnn.kernels.numba_set

pool = next(p for p in threadpool_info() if p["internal_api"] == "openblas")
openblas_timeout = ctypes.CDLL(pool["filepath"]).openblas_thread_timeout

def settings():
    return {"openblas_timeout": openblas_timeout(), "threading_layer": numba.config.THREADING_LAYER}

imported = settings()
release = threading.Event()
other = threading.Thread(target=release.wait)
if sys.argv[1] == "other-thread":
    other.start()
gpucnn.get_backend("numba")
release.set()
print(json.dumps({"imported": imported, "built": settings(), "env": os.environ.get("OPENBLAS_THREAD_TIMEOUT")}))
"""


@pytest.mark.parametrize(
    "users_value, threads, timeout_when_built", [(None, "alone", 4), ("10", "alone", 10), (None, "other-thread", 0)]
)
def test_building_the_backend_sets_the_threads_and_importing_sets_nothing(users_value, threads, timeout_when_built):
    """Importing the Numba set changes nothing. Building the backend picks Numba's
    workqueue layer, and sets OpenBLAS's idle timeout to 2**4 cycles (from its default,
    0) unless the user set one, or another Python thread exists and might be inside a
    GEMM (see numba_runtime, Threads); the environment that child processes inherit stays
    as it was."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if not any(p["internal_api"] == "openblas" for p in threadpoolctl.threadpool_info()):
        pytest.skip("NumPy does not use OpenBLAS here")
    env = {"OPENBLAS_THREAD_TIMEOUT": users_value, "NUMBA_THREADING_LAYER": None}
    assert _run(_PROCESS_SETTINGS, threads, env=env) == {
        "imported": {"openblas_timeout": int(users_value or 0), "threading_layer": "default"},
        "built": {"openblas_timeout": timeout_when_built, "threading_layer": "workqueue"},
        "env": users_value,
    }


def _im2col_in_this_process(x):
    return os.getpid(), gpucnn.get_backend("numba").kernels.im2col(x, 3, 3, 1, 1)


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")  # the fork is the point
def test_a_forked_child_runs_task_kernels_on_threads_of_its_own(monkeypatch):
    """The task threads do not survive a fork: a child that the parent forked after using
    them starts its own instead of queueing work for threads that do not exist there."""
    import multiprocessing

    import numba

    from gpucnn.kernels import numba_runtime

    monkeypatch.setattr(numba_runtime, "parallel_min_bytes", 0)  # the small launch on the task threads

    if numba.get_num_threads() < 2:
        pytest.skip("one Numba thread: task kernels run on the calling thread alone")
    x = np.arange(2 * 3 * 5 * 5, dtype=np.float32).reshape(2, 3, 5, 5)
    _, expected = _im2col_in_this_process(x)  # the parent's task threads now exist
    with multiprocessing.get_context("fork").Pool(1) as pool:
        child, got = pool.apply_async(_im2col_in_this_process, (x,)).get(timeout=120)
    assert child != os.getpid()
    np.testing.assert_array_equal(got, expected)


# -- compiling ahead (numba_runtime.compile_ahead), each in a fresh process with a cold cache --

# One first training step of a small network on the numba backend, a fresh process and an
# empty cache: "alone" (GPUCNN_COMPILE_AHEAD=0), "ahead" (the model's own first step, shared
# with the second process as the two go), "second" (the second process alone: the step runs
# once it has ended), "busy" (another thread of the user's is alive: no second process) or
# "no_flock" (a file system without flock: every lock fails). Prints the step's kernel
# compilations in this process, how many second processes started, the loss and a digest
# of the weights after the update.
_FIRST_STEP = """
import errno, fcntl, hashlib, json, os, sys, threading
import numpy as np
from numba.core import event
import gpucnn
from gpucnn.kernels import numba_runtime
from gpucnn.layers import Affine, Convolution, Flatten, MaxPooling, ReLU, SoftmaxWithLoss

mode = sys.argv[1]
started = []
fork = numba_runtime._fork_second_process
def counted_fork(step, folder):
    pid, stop = fork(step, folder)
    started.extend([pid] if pid is not None else [])
    return pid, stop
numba_runtime._fork_second_process = counted_fork
if mode == "busy":
    release = threading.Event()
    threading.Thread(target=release.wait, daemon=True).start()
if mode == "no_flock":
    def flock(fd, operation):
        raise OSError(errno.ENOLCK, "no locks available")
    fcntl.flock = flock
with gpucnn.use_backend("numba"):
    layers = [Convolution(3, 5), ReLU(), MaxPooling(2), Flatten(), Affine(6), ReLU(), Affine(3)]
    model = gpucnn.Sequential(layers, SoftmaxWithLoss(), input_shape=(2, 10, 10), seed=0)
    model.optimizer = gpucnn.optimizers.Adam(0.01)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 2, 10, 10)).astype(np.float32)
    t = rng.integers(0, 3, 5)
    with event.install_recorder("numba:compile") as compiled:
        if mode == "second":
            with model.backend.compile_ahead(lambda: model.train_step(x, t)):
                os.waitpid(numba_runtime._ahead.second, 0)
                loss, _ = model.train_step(x, t)
        else:
            loss, _ = model.train_step(x, t)
weights = hashlib.sha256(b"".join(np.ascontiguousarray(p).tobytes() for p in model.params.values())).hexdigest()
print(json.dumps({
    "compiled": sum(e.is_start for _, e in compiled.buffer), "second": len(started),
    "loss": float(loss), "weights": weights,
}))
"""


def _first_step(mode: str, cache: Path) -> dict:
    ahead = "0" if mode == "alone" else None
    return _run(_FIRST_STEP, mode, env={"NUMBA_CACHE_DIR": str(cache), "GPUCNN_COMPILE_AHEAD": ahead})


def _values(run: dict) -> tuple[float, str]:
    return run["loss"], run["weights"]


def _compiles_ahead() -> bool:
    from gpucnn.kernels import numba_runtime

    return numba_runtime._can_compile_ahead()


needs_compile_ahead = pytest.mark.skipif(
    not _compiles_ahead(), reason="compiling ahead needs Linux, two cores and the kernel cache"
)


@needs_compile_ahead
def test_the_second_process_compiles_the_steps_kernels_into_the_cache_and_changes_no_value(tmp_path):
    """A second process left to itself compiles every kernel of the step (the step then
    compiles none: it loads them), and the step's values are those of a step run alone,
    without a second process, to the bit."""
    alone = _first_step("alone", tmp_path / "alone")
    second = _first_step("second", tmp_path / "second")
    assert alone["second"] == 0 and alone["compiled"] > 0
    assert second["second"] == 1 and second["compiled"] == 0
    assert _values(second) == _values(alone)


@needs_compile_ahead
def test_a_first_step_shared_with_the_second_process_leaves_a_whole_cache_and_the_same_values(tmp_path):
    """The model's own first step, shared as the two processes go: whoever compiles what,
    the values are those of a step run alone, and the cache then holds every kernel (each
    index kept every entry: a later process compiles nothing)."""
    alone = _first_step("alone", tmp_path / "alone")
    shared = _first_step("ahead", tmp_path / "shared")
    later = _first_step("alone", tmp_path / "shared")
    assert shared["second"] == 1
    assert _values(shared) == _values(alone)
    assert later["compiled"] == 0 and _values(later) == _values(alone)


@needs_compile_ahead
def test_no_second_process_while_another_thread_runs_and_none_needed_without_file_locks(tmp_path):
    """A thread of the user's could be inside BLAS as the process forks: the step compiles
    alone. A file system without flock: the two processes compile without locks (each may
    then compile a kernel the other has) and the cache is written all the same. The values
    are those of the step run alone."""
    alone = _first_step("alone", tmp_path / "alone")
    busy = _first_step("busy", tmp_path / "busy")
    no_flock = _first_step("no_flock", tmp_path / "no_flock")
    assert busy["second"] == 0 and busy["compiled"] == alone["compiled"]
    assert no_flock["second"] == 1
    assert any(path.suffix == ".nbc" for path in _numba_files(tmp_path / "no_flock"))
    assert _values(busy) == _values(no_flock) == _values(alone)
