"""Data-parallel training (gpucnn.distributed).

The single-process tests run here; the multi-rank ones launch this file as a script under
``mpiexec -n 2`` or ``-n 3`` (``python tests/test_distributed.py SCENARIO OUT``), each rank
writing what it ended with to ``OUT``, and compare with one process trained here. They
skip, saying what to install, where mpi4py or ``mpiexec`` is missing.
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
from gpucnn import SimpleConvNet
from gpucnn.backend import BackendUnavailable
from gpucnn.distributed import (
    Communicator,
    DataParallel,
    GradientBuckets,
    LaunchMismatchError,
    LocalCommunicator,
    MPICommunicator,
    MPIUnavailable,
    NCCLCommunicator,
    limit_threads,
    mpiexec_path,
    shard_bounds,
    shard_sizes,
    spread,
)
from gpucnn.layers import Affine, BatchNormalization, Convolution, Dropout, Flatten, ReLU
from gpucnn.optimizers import SGD, Momentum
from gpucnn.schedules import LinearScaling

HERE = Path(__file__).resolve()
LAUNCH_TIMEOUT = 120  # a guard against a hang, not a timing target


# -- the runs every test compares ----------------------------------------------------


def _data(n: int = 201) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    return rng.standard_normal((n, 1, 10, 10)), rng.integers(0, 5, n)


def _convnet() -> SimpleConvNet:
    return SimpleConvNet((1, 10, 10), {"filter_num": 4, "filter_size": 3}, 16, 5, 0.1, dtype="float64", seed=1)


def _bn_dropout_net() -> gpucnn.Sequential:
    layers = [Convolution(4, 3), BatchNormalization(), ReLU(), Dropout(0.3), Flatten(), Affine(5)]
    return gpucnn.Sequential(layers, input_shape=(1, 10, 10), dtype="float64", seed=2)


def _fit(model, communicator=None, *, epochs=2, batch_size=100, **options):
    """The training every comparison runs: 201 samples, batches of 100, 100 and 1."""
    x, t = _data()
    optimizer = options.pop("optimizer", Momentum(lr=0.1))
    return model.fit(
        x,
        t,
        batch_size=batch_size,
        epochs=epochs,
        optimizer=optimizer,
        seed=5,
        verbose=0,
        validation_data=(x[:50], t[:50]),
        communicator=communicator,
        **options,
    )


def _arrays(model) -> dict[str, np.ndarray]:
    return {key: model.backend.to_numpy(value) for key, value in model.state_dict().items()}


def _assert_close(got: dict, want: dict, rtol: float) -> None:
    """Each array within ``rtol`` of the largest magnitude of its reference (the updates
    sum many products, so the rounding scales with the array, not with each entry)."""
    assert sorted(got) == sorted(want)
    for key in want:
        scale = max(float(np.max(np.abs(want[key]))), 1e-300)
        error = float(np.max(np.abs(got[key] - want[key]))) / scale
        assert error <= rtol, f"{key}: relative difference {error:.3g} > {rtol}"


# -- one process ----------------------------------------------------------------------


def test_shard_sizes_split_as_evenly_as_possible():
    assert shard_sizes(100, 3) == [34, 33, 33]
    assert shard_sizes(2, 3) == [1, 1, 0]
    assert shard_sizes(256, 2) == [128, 128]
    for n in range(0, 12):
        for ranks in range(1, 5):
            bounds = [shard_bounds(n, ranks, rank) for rank in range(ranks)]
            assert [stop - start for start, stop in bounds] == shard_sizes(n, ranks)
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(bounds[r][1] == bounds[r + 1][0] for r in range(ranks - 1))
    with pytest.raises(ValueError, match="rank 3 is not in"):
        shard_bounds(10, 3, 3)


class FakeRanks(LocalCommunicator):
    """Rank ``rank`` of ``size`` in one process, whose sums add what the other ranks would
    add (``others``, one array per bucket, in order) and record the buffers they got."""

    def __init__(self, rank: int, size: int, others: list[np.ndarray] | None = None, **options) -> None:
        super().__init__(**options)
        self.rank, self.size = rank, size
        self.others = list(others or [])
        self.sent: list[np.ndarray] = []

    def iallreduce(self, buffer):
        self.sent.append(buffer.copy())
        if self.others:
            buffer += self.others.pop(0)
        return super().iallreduce(buffer)


def test_each_rank_weights_its_mean_gradient_by_its_share_of_the_global_batch():
    # Two ranks holding 34 and 66 of a global batch of 100: rank 0 sends 34/100 of its mean
    # gradient; with rank 1's 66/100 added, the update uses the mean over all 100 samples.
    x, t = _data(100)
    whole = _convnet()
    whole.optimizer = Momentum(lr=0.1)
    whole.train_step(whole.as_input(x), whole.as_target(t))

    second = _convnet()
    second.optimizer = Momentum(lr=0.1)
    gradient = second.gradient(x[34:], t[34:])
    model = _convnet()
    model.optimizer = Momentum(lr=0.1)
    buckets_of_second = GradientBuckets(second, LocalCommunicator(bucket_bytes=256))
    others = [
        np.concatenate([gradient[key].reshape(-1) * 0.66 for key in bucket]) for bucket in buckets_of_second.buckets
    ]
    fake = FakeRanks(0, 2, others, bucket_bytes=256)
    parallel = DataParallel(model, fake)
    parallel.shard([np.arange(100)])
    parallel.train_step(model.as_input(x[:34]), model.as_target(t[:34]))

    assert len(fake.sent) == len(buckets_of_second.buckets) + 1 > 2  # the buckets, then loss and right answers
    _assert_close(_arrays(model), _arrays(whole), 1e-12)


def test_buckets_start_last_layer_first_and_keep_a_layer_together():
    model = _convnet()
    buckets = GradientBuckets(model, LocalCommunicator(bucket_bytes=1))
    assert buckets.buckets == [["b3", "W3"], ["b2", "W2"], ["b1", "W1"]]
    one = GradientBuckets(model, LocalCommunicator(bucket_bytes=1 << 30))
    assert one.buckets == [["b3", "W3", "b2", "W2", "b1", "W1"]]


@pytest.mark.parametrize("overlap", [True, False])
def test_a_local_communicator_trains_exactly_as_one_process(overlap):
    alone, local = _convnet(), _convnet()
    history = _fit(alone)
    local_history = _fit(local, LocalCommunicator(bucket_bytes=512, overlap=overlap))
    for key, value in _arrays(alone).items():
        np.testing.assert_array_equal(_arrays(local)[key], value, err_msg=key)
    assert local_history.history["loss"] == history.history["loss"]
    assert local_history.history["val_loss"] == history.history["val_loss"]
    assert local_history.params["ranks"] == 1


def test_a_rank_without_samples_in_a_batch_adds_zeros_and_still_steps():
    # The last batch of 201 samples in batches of 100 has 1 sample: rank 2 of 3 gets none.
    model = _convnet()
    model.optimizer = Momentum(lr=0.1)
    before = _arrays(model)
    fake = FakeRanks(2, 3)
    parallel = DataParallel(model, fake)
    parallel.shard([np.arange(1)])
    x, t = _data(1)
    loss, correct = parallel.train_step(model.as_input(x[:0]), model.as_target(t[:0]))
    assert float(loss) == 0.0 and float(correct) == 0.0
    assert all(not sent.any() for sent in fake.sent)
    assert model.optimizer.iterations == 1
    for key, value in _arrays(model).items():
        np.testing.assert_array_equal(value, before[key])  # zero gradient, zero velocity


def test_launch_check_names_each_difference_and_every_rank_value():
    class TwoRanks(LocalCommunicator):
        size = 2

        def allgather_object(self, value):
            return [value, {**value, "batch_size": 128} if "batch_size" in value else value]

    parallel = DataParallel(_convnet(), TwoRanks())
    parallel.check_launch({"epochs": 2})
    with pytest.raises(LaunchMismatchError, match=r"batch_size \(rank 0: 256, rank 1: 128\)"):
        parallel.check_launch({"batch_size": 256, "epochs": 2})


def test_communicator_must_be_one():
    with pytest.raises(TypeError, match="gpucnn.distributed.Communicator"):
        _convnet().fit(*_data(10), verbose=0, communicator="mpi")


def test_without_mpi4py_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(MPIUnavailable, match=r"pip install 'gpucnn\[mpi\]'"):
        MPICommunicator()


# -- learning rates for large batches -------------------------------------------------


def test_linear_scaling_climbs_from_the_reference_rate_to_k_times_it():
    schedule = LinearScaling(reference_batch=50, warmup_epochs=1)  # batch 200: k = 4; 10 iterations an epoch
    assert [schedule.factor(i, 200, 10) for i in (0, 5, 10, 99)] == [1.0, 2.5, 4.0, 4.0]
    assert [schedule.factor(i, 25, 10) for i in (0, 99)] == [0.5, 0.5]  # a smaller batch: scaled down, no warm-up
    assert LinearScaling(50).factor(0, 200, 10) == 4.0
    assert repr(schedule) == "LinearScaling(reference_batch=50, warmup_epochs=1)"
    with pytest.raises(ValueError, match="reference_batch must be a whole number >= 1, got 0"):
        LinearScaling(0)
    with pytest.raises(ValueError, match="warmup_epochs must be a finite number >= 0, got -1"):
        LinearScaling(10, -1)


class RecordingSGD(SGD):
    """SGD that records the rate of every step."""

    def __init__(self, lr: float) -> None:
        super().__init__(lr)
        self.rates: list[float] = []

    def update(self, params, grads, *, backend=None):
        self.rates.append(self.lr)
        super().update(params, grads, backend=backend)


def test_fit_steps_with_the_scheduled_rates_keeps_its_own_and_resumes_alike():
    # 201 samples in batches of 100: 3 iterations an epoch, k = 2, a warm-up of 3 iterations.
    schedule = LinearScaling(reference_batch=50, warmup_epochs=1)
    whole = _convnet()
    optimizer = RecordingSGD(0.1)
    history = _fit(whole, optimizer=optimizer, lr_schedule=schedule)
    np.testing.assert_allclose(optimizer.rates, [0.1, 0.1 * 4 / 3, 0.1 * 5 / 3, 0.2, 0.2, 0.2], rtol=1e-15)
    assert optimizer.lr == 0.1 and history.params["lr_schedule"] == repr(schedule)

    resumed = _convnet()
    _fit(resumed, epochs=1, optimizer=RecordingSGD(0.1), lr_schedule=schedule)
    _fit(resumed, optimizer=None, lr_schedule=schedule)
    assert resumed.optimizer.rates == optimizer.rates
    for key, value in _arrays(whole).items():
        np.testing.assert_array_equal(_arrays(resumed)[key], value, err_msg=key)


# -- sharing configurations, threads ---------------------------------------------------


class Ranks(LocalCommunicator):
    """Rank ``rank`` of ``size`` for code that only asks who it is (and splits)."""

    def __init__(self, rank: int, size: int) -> None:
        super().__init__()
        self.rank, self.size = rank, size
        self.colors: list[int] = []

    def split(self, color):
        self.colors.append(color)
        return super().split(color)


def test_spread_gives_each_configuration_a_rank_or_a_group():
    shares = [spread(5, Ranks(rank, 2)) for rank in range(2)]
    assert [share.mine for share in shares] == [[0, 2, 4], [1, 3]]
    assert shares[0].ranks == [[0], [1], [0], [1], [0]] and shares[0].group is None
    ranks = [Ranks(rank, 5) for rank in range(5)]
    shares = [spread(2, r) for r in ranks]
    assert shares[0].ranks == [[0, 1, 2], [3, 4]]
    assert [share.mine for share in shares] == [[0], [0], [0], [1], [1]]
    assert [r.colors for r in ranks] == [[0], [0], [0], [1], [1]]  # the groups' communicators


def test_limit_threads_runs_one_thread_unless_the_user_chose(monkeypatch):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    for name in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS", "NUMBA_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)

    def blas_threads():
        return [pool["num_threads"] for pool in threadpoolctl.threadpool_info() if pool["user_api"] == "blas"]

    before = blas_threads()
    with limit_threads(gpucnn.get_backend("numpy")) as applied:
        assert applied == {"blas": 1, "numba": None}
        assert set(blas_threads()) <= {1}
    assert blas_threads() == before
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    with limit_threads(gpucnn.get_backend("numpy")) as applied:
        assert applied["blas"] is None and blas_threads() == before
    if "numba" in gpucnn.available_backends():
        import numba

        threads = numba.get_num_threads()
        with limit_threads(gpucnn.get_backend("numba")) as applied:
            assert applied["numba"] == 1 and numba.get_num_threads() == 1
        assert numba.get_num_threads() == threads


# -- NCCL on one GPU ----------------------------------------------------------------------


@pytest.mark.gpu
def test_nccl_on_one_rank_sums_device_buffers_and_trains_as_the_host_path(monkeypatch):
    cupy = pytest.importorskip("cupy")
    try:
        backend = gpucnn.get_backend("cupy")
    except BackendUnavailable as error:
        pytest.skip(f"backend 'cupy' unavailable: {error}")
    from cupy.cuda import nccl

    if not nccl.available:
        pytest.skip("this CuPy has no NCCL (pip install nvidia-nccl-cu12 or nvidia-nccl-cu13)")
    try:
        host = MPICommunicator(bucket_bytes=2048)  # one process: MPI's singleton start
    except MPIUnavailable:
        host = LocalCommunicator(bucket_bytes=2048)  # the same host-array path, without MPI
    with gpucnn.use_backend(backend):
        communicator = NCCLCommunicator(LocalCommunicator(bucket_bytes=2048))
        assert communicator.device_buffers and (communicator.rank, communicator.size) == (0, 1)
        buffer = cupy.arange(1000, dtype=cupy.float32)
        summed = communicator.allreduce(buffer)
        assert summed.data.ptr == buffer.data.ptr  # summed in place, on the device
        np.testing.assert_array_equal(cupy.asnumpy(summed), np.arange(1000, dtype=np.float32))

        # A step's gradients and statistics are summed without a copy to the host.
        model = _convnet()
        model.optimizer = Momentum(lr=0.1)
        parallel = DataParallel(model, communicator)
        parallel.shard([np.arange(100)])
        x, t = _data(100)
        xb, tb = model.as_input(x), model.as_target(t)

        def no_host_copy(self, array):
            raise AssertionError("a device array was copied to the host")

        with monkeypatch.context() as patch:
            patch.setattr(gpucnn.Backend, "to_numpy", no_host_copy)  # a frozen dataclass: patched on the class
            parallel.train_step(xb, tb)

        on_nccl, on_host = _convnet(), _convnet()
        _fit(on_nccl, communicator)
        _fit(on_host, host)
        for key, value in _arrays(on_host).items():
            np.testing.assert_array_equal(_arrays(on_nccl)[key], value, err_msg=key)


# -- several ranks, under mpiexec ------------------------------------------------------


def _mpi_missing() -> str | None:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed (pip install 'gpucnn[mpi]')"
    if mpiexec_path() is None:
        return "no mpiexec beside the Python interpreter or on PATH (pip install 'gpucnn[mpi]')"
    return None


needs_mpi = pytest.mark.skipif(_mpi_missing() is not None, reason=str(_mpi_missing()))


def launch(ranks: int, scenario: str, out: Path, *args: str) -> subprocess.CompletedProcess:
    """Run ``scenario`` of this file on ``ranks`` ranks, one thread each."""
    env = {
        **os.environ,
        "OMPI_ALLOW_RUN_AS_ROOT": "1",
        "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "NUMBA_NUM_THREADS": "1",
    }
    command = [
        mpiexec_path(),
        "--oversubscribe",
        "-n",
        str(ranks),
        sys.executable,
        str(HERE),
        scenario,
        str(out),
        *args,
    ]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)


def _rank_arrays(out: Path, ranks: int) -> list[dict[str, np.ndarray]]:
    return [dict(np.load(out / f"rank{rank}.npz")) for rank in range(ranks)]


@needs_mpi
@pytest.mark.parametrize("ranks", [2, 3])
def test_ranks_end_with_the_weights_of_one_process(tmp_path, ranks):
    result = launch(ranks, "train", tmp_path, "numpy")
    assert result.returncode == 0, result.stderr
    alone = _convnet()
    history = _fit(alone)
    finals = _rank_arrays(tmp_path, ranks)
    for rank in range(1, ranks):
        for key, value in finals[0].items():
            np.testing.assert_array_equal(finals[rank][key], value, err_msg=f"rank {rank}, {key}")
    _assert_close(finals[0], _arrays(alone), 1e-9)
    logged = json.loads((tmp_path / "history0.json").read_text())
    np.testing.assert_allclose(logged["loss"], history.history["loss"], rtol=1e-9)
    np.testing.assert_allclose(logged["val_loss"], history.history["val_loss"], rtol=1e-9)
    assert logged["accuracy"] == history.history["accuracy"]
    assert logged["val_accuracy"] == history.history["val_accuracy"]
    # Every rank was given a checkpoint path of its own; rank 0 alone wrote one.
    assert sorted(path.name for path in tmp_path.glob("model*.npz")) == ["model0.npz"]


@needs_mpi
@pytest.mark.parametrize("backend", ["numba", "cuda-emu"])
def test_compiled_kernels_ranks_end_with_the_weights_of_one_process(tmp_path, backend):
    if backend not in gpucnn.available_backends():
        pytest.skip(f"backend {backend} is not available here")
    result = launch(2, "train", tmp_path, backend)
    assert result.returncode == 0, result.stderr
    with gpucnn.use_backend(backend):
        alone = _convnet()
        _fit(alone)
    _assert_close(_rank_arrays(tmp_path, 2)[0], _arrays(alone), 1e-9)


@needs_mpi
def test_resuming_on_another_number_of_ranks_ends_with_the_uninterrupted_weights(tmp_path):
    first = launch(3, "train", tmp_path, "numpy", "1")
    assert first.returncode == 0, first.stderr
    second = launch(2, "resume", tmp_path, "numpy")
    assert second.returncode == 0, second.stderr
    alone = _convnet()
    _fit(alone)
    _assert_close(_rank_arrays(tmp_path, 2)[0], _arrays(alone), 1e-9)


@needs_mpi
def test_batch_normalization_and_dropout_keep_the_ranks_identical(tmp_path):
    result = launch(2, "bn", tmp_path, "numpy")
    assert result.returncode == 0, result.stderr
    first, second = _rank_arrays(tmp_path, 2)
    for key, value in first.items():
        assert np.all(np.isfinite(value)), key
        np.testing.assert_array_equal(second[key], value, err_msg=key)
    assert any(key.startswith("state/") for key in first)
    # Each rank's own statistics and masks: not the single process's run.
    alone = _bn_dropout_net()
    _fit(alone, optimizer=Momentum(lr=0.05))
    assert any(not np.allclose(value, first[key]) for key, value in _arrays(alone).items())


@needs_mpi
def test_a_rank_that_raises_stops_every_rank_with_one_message(tmp_path):
    result = launch(3, "raise", tmp_path, "numpy")
    assert result.returncode != 0
    assert result.stderr.count("Traceback") == 1
    assert result.stderr.count("gpucnn: rank 1 of 3") == 1
    assert "with RuntimeError: a callback failed on rank 1; stopping every rank" in result.stderr
    assert not (tmp_path / "rank0.npz").exists()


@needs_mpi
def test_a_mismatched_launch_is_refused_on_every_rank_naming_the_difference(tmp_path):
    result = launch(2, "mismatch", tmp_path, "numpy")
    assert result.returncode == 0, result.stderr
    messages = [json.loads((tmp_path / f"error{rank}.json").read_text()) for rank in range(2)]
    assert messages[0] == messages[1]
    assert messages[0]["type"] == "LaunchMismatchError"
    assert "batch_size (rank 0: 100, rank 1: 50)" in messages[0]["message"]


# -- what each rank runs ------------------------------------------------------------------


def _save_rank(out: Path, model, communicator: Communicator, history=None) -> None:
    np.savez(out / f"rank{communicator.rank}.npz", **_arrays(model))
    if history is not None and communicator.rank == 0:
        (out / "history0.json").write_text(json.dumps(history.history))


def _rank_main(scenario: str, out: Path, backend: str, *args: str) -> int:
    gpucnn.set_backend(backend)
    communicator = MPICommunicator(bucket_bytes=2048)
    if scenario == "train":
        epochs = int(args[0]) if args else 2
        model = _convnet()
        history = _fit(model, communicator, epochs=epochs, checkpoint=out / f"model{communicator.rank}.npz")
        _save_rank(out, model, communicator, history)
    elif scenario == "resume":
        model = gpucnn.load(out / "model0.npz")
        _fit(model, communicator, epochs=2, optimizer=None)
        _save_rank(out, model, communicator)
    elif scenario == "bn":
        model = _bn_dropout_net()
        _fit(model, communicator, optimizer=Momentum(lr=0.05))
        _save_rank(out, model, communicator)
    elif scenario == "raise":

        def fail_on_rank_1(model, epoch, logs):
            if communicator.rank == 1:
                raise RuntimeError("a callback failed on rank 1")

        model = _convnet()
        _fit(model, communicator, callbacks=[fail_on_rank_1])
        _save_rank(out, model, communicator)
    elif scenario == "mismatch":
        try:
            _fit(_convnet(), communicator, batch_size=100 if communicator.rank == 0 else 50)
        except LaunchMismatchError as error:
            report = {"type": type(error).__name__, "message": str(error)}
            (out / f"error{communicator.rank}.json").write_text(json.dumps(report))
    else:
        raise ValueError(f"unknown scenario {scenario!r}")
    return 0


if __name__ == "__main__":
    sys.exit(_rank_main(sys.argv[1], Path(sys.argv[2]), *sys.argv[3:]))
