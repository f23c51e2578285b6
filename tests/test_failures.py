"""Failures a careful user meets: each a clear error that names the problem and the numbers,
or a warning where going on is reasonable, and nothing lost or half-written.

Model files under damage are in ``test_fuzz_model_file.py``; the CLI's errors in
``test_cli.py``.
"""

from __future__ import annotations

import errno
import math
import os
import re
import warnings

import numpy as np
import pytest

import gpucnn
from gpucnn.fused import ConvReluMaxPool
from gpucnn.io import atomic_write, temporary_files
from gpucnn.layers import Affine, AvgPooling, BatchNormalization, Convolution, MaxPooling, ReLU
from gpucnn.optimizers import AdaGrad, Adam
from gpucnn.training import ExplodingLossError, NonFiniteLossError

from .test_training import blobs, tiny_net


def host(model, a) -> np.ndarray:
    return model.backend.to_numpy(a)


def params_of(model) -> dict[str, np.ndarray]:
    return {key: np.array(host(model, value)) for key, value in model.params.items()}


def assert_same_params(model, before: dict[str, np.ndarray]) -> None:
    after = params_of(model)
    assert after.keys() == before.keys()
    for key in before:
        np.testing.assert_array_equal(after[key], before[key], err_msg=key)


# -- files: read-only targets, full disks, temporary files ----------------------------------------


def test_saving_over_a_read_only_file_is_refused(tmp_path):
    path = tmp_path / "m.npz"
    path.write_bytes(b"the previous model")
    os.chmod(path, 0o444)
    with pytest.raises(PermissionError, match=re.escape("the file is read-only (mode 444)")) as info:
        tiny_net().save(path)
    assert info.value.filename == str(path) and info.value.errno == errno.EACCES
    assert path.read_bytes() == b"the previous model"
    assert temporary_files(path) == [] and os.listdir(tmp_path) == ["m.npz"]
    os.chmod(path, 0o644)
    tiny_net().save(path)  # writable again: replaced
    assert gpucnn.load(path).epoch == 0


class _FullDisk:
    """A file whose writes fail with ENOSPC once ``room`` bytes are written: a disk filling up."""

    def __init__(self, f, room: int) -> None:
        self._f, self._room = f, room

    def write(self, data) -> int:
        if len(data) > self._room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(data)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self._f.close()


def test_a_full_disk_during_a_checkpoint_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """The disk fills while ``fit`` writes epoch 2's checkpoint: an OSError naming the file,
    and the file still holds epoch 1, complete; no temporary file is left."""
    x, t = blobs(30)
    path = tmp_path / "ck.npz"
    saved = {}

    def after_epoch(model, epoch, logs):
        saved.update(bytes=path.read_bytes(), params=params_of(model))
        real = os.fdopen
        monkeypatch.setattr(gpucnn.files.os, "fdopen", lambda fd, mode: _FullDisk(real(fd, mode), room=1000))

    net = tiny_net()
    with pytest.raises(OSError) as info:
        net.fit(x, t, batch_size=10, epochs=2, checkpoint=path, callbacks=[after_epoch], seed=0, verbose=0)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    assert str(path) in str(info.value) and "No space left on device" in str(info.value)
    assert path.read_bytes() == saved["bytes"] and temporary_files(path) == []
    monkeypatch.undo()
    restored = gpucnn.load(path)
    assert restored.epoch == 1
    assert_same_params(restored, saved["params"])


def test_temporary_files_lists_what_atomic_write_leaves(tmp_path):
    path = tmp_path / "history[1].json"  # a name with glob characters
    assert temporary_files(path) == [] and temporary_files(tmp_path / "absent" / "x") == []
    with atomic_write(path, "w") as f:
        f.write("{}")
        (during,) = temporary_files(path)
        assert during.parent == tmp_path and during.name.startswith(".history[1].json.")
    assert temporary_files(path) == [] and path.read_text() == "{}"
    left = tmp_path / ".history[1].json.k9x.tmp"  # what a killed process leaves
    left.write_text("{")
    (tmp_path / ".other.json.k9x.tmp").write_text("{")
    assert temporary_files(path) == [left]


# -- fit: validation data checked before the first epoch ---------------------------------------


@pytest.mark.parametrize(
    "case,error,message",
    [
        ("not a pair", ValueError, "validation_data must be a pair (x_val, t_val), got a ndarray"),
        ("three items", ValueError, "validation_data must be a pair (x_val, t_val), got a tuple"),
        ("labels out of range", ValueError, "validation_data: labels must lie in [0, 2] for 3 classes, got values"),
        ("fewer labels", ValueError, "validation_data: 5 targets for 6 samples"),
        ("another shape", ValueError, "validation_data: samples have shape (1, 9, 9) but the model expects (1, 8, 8)"),
        ("no samples", ValueError, "validation_data: no samples: x is empty"),
        ("strings", TypeError, "validation_data: samples must be numbers, got an array of <U1"),
        ("float labels", TypeError, "validation_data: labels (N,) must be integers, got float64"),
    ],
)
def test_bad_validation_data_fails_before_the_first_epoch(tmp_path, case, error, message):
    x, t = blobs(30)
    xv, tv = blobs(6, seed=1)
    validation_data = {
        "not a pair": xv,
        "three items": (xv, tv, tv),
        "labels out of range": (xv, tv + 3),
        "fewer labels": (xv, tv[:5]),
        "another shape": (np.zeros((6, 1, 9, 9), dtype=np.float32), tv),
        "no samples": (xv[:0], tv[:0]),
        "strings": (np.full(xv.shape, "a"), tv),
        "float labels": (xv, tv.astype(np.float64)),
    }[case]
    net = tiny_net()
    before = params_of(net)
    with pytest.raises(error, match=re.escape(message)):
        net.fit(x, t, epochs=2, validation_data=validation_data, checkpoint=tmp_path / "ck.npz", verbose=0)
    assert net.epoch == 0 and net.optimizer is None and not (tmp_path / "ck.npz").exists()
    assert_same_params(net, before)


def test_targets_are_checked_on_the_host_before_training():
    x = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    sigmoid = gpucnn.Sequential([Affine(1)], "binary_crossentropy", input_shape=(4,), seed=0)
    before = params_of(sigmoid)
    message = "targets of a sigmoid output must lie in [0, 1], got values from 0.0 to 2.0"
    with pytest.raises(ValueError, match=re.escape(message)):
        sigmoid.fit(x, np.arange(8) % 3, verbose=0)
    with pytest.raises(ValueError, match="must lie in"):
        sigmoid.fit(x, np.where(np.arange(8) == 2, np.nan, 1.0), verbose=0)
    assert_same_params(sigmoid, before)
    softmax = gpucnn.Sequential([Affine(3)], input_shape=(4,), seed=0)
    with pytest.raises(TypeError, match=re.escape("labels (N,) must be integers, got float64")):
        softmax.fit(x, (np.arange(8) % 3).astype(np.float64), verbose=0)
    with pytest.raises(TypeError, match="targets must be numbers, got an array of <U1"):
        softmax.fit(x, np.array(list("01201201")), verbose=0)
    assert softmax.epoch == 0


# -- counting right answers -----------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "binary_crossentropy"])
def test_rows_with_non_finite_scores_count_as_wrong(backend, loss):
    """A NaN or infinite input gives a row of non-finite scores; argmax (or "> 0") would turn
    it into class 0, which the label 0 would count as right."""
    outputs = 3 if loss == "softmax_cross_entropy" else 1
    model = gpucnn.Sequential([Affine(outputs)], loss, input_shape=(4,), dtype="float64", seed=0)
    x = np.random.default_rng(0).standard_normal((10, 4))
    x[[1, 4]] = np.nan
    x[7, 0] = np.inf
    t = np.zeros(10, dtype=np.int64)
    scores = host(model, model.predict(x))
    finite = np.isfinite(scores).all(axis=1)
    predicted = scores.argmax(axis=1) if outputs > 1 else (scores[:, 0] > 0).astype(np.int64)
    want = float(np.sum((predicted == t) & finite)) / len(x)
    assert not finite[[1, 4, 7]].any() and finite.sum() == 7
    assert model.accuracy(x, t, batch_size=3) == want
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the loss of the NaN rows
        assert model.evaluate(x, t, batch_size=4)[1] == want


# -- training that diverges -------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer_class", [AdaGrad, Adam])
def test_an_exploding_loss_stops_training_in_the_first_epoch(optimizer_class):
    """At lr 1e6 the loss leaps from about 1.1 to 1e18 at the second iteration, and would go on
    in the 1e12s for ever without overflowing: the run stops there, as for a NaN."""
    x, t = blobs(60)
    net = tiny_net()
    with pytest.raises(ExplodingLossError, match=r"loss is \S+e\+\d+ at epoch 1, iteration 2, over 1000 times") as info:
        net.fit(x, t, batch_size=10, epochs=3, optimizer=optimizer_class(lr=1e6), seed=0, verbose=0)
    assert isinstance(info.value, NonFiniteLossError)
    assert "the first loss of this fit (1.099)" in str(info.value) and net.epoch == 0
    assert len(net.history.iteration_loss) == 1

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        h = tiny_net().fit(
            x, t, batch_size=10, epochs=1, optimizer=optimizer_class(lr=1e6), seed=0, verbose=0, on_nonfinite="warn"
        )
    assert len(h.iteration_loss) == 6 and any("training diverged" in str(w.message) for w in caught)
    h = tiny_net().fit(
        x, t, batch_size=10, epochs=1, optimizer=optimizer_class(lr=1e6), seed=0, verbose=0, on_nonfinite="ignore"
    )
    assert len(h.iteration_loss) == 6 and max(h.iteration_loss) > 1e12


@pytest.mark.parametrize("optimizer_class", [AdaGrad, Adam])
def test_a_high_learning_rate_that_still_learns_is_not_stopped(optimizer_class):
    x, t = blobs(60)
    h = tiny_net().fit(x, t, batch_size=10, epochs=2, optimizer=optimizer_class(lr=0.06), seed=0, verbose=0)
    assert len(h.iteration_loss) == 12 and h.iteration_loss[-1] < h.iteration_loss[0]


# -- dtypes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["int32", "float16", np.int64, np.complex64, "bool", "foo"])
def test_models_and_layers_refuse_dtypes_they_cannot_compute_in(dtype):
    with pytest.raises(ValueError, match=r"dtype .* is not supported: gpucnn computes in float32 or float64"):
        gpucnn.Sequential([Affine(3)], input_shape=(4,), dtype=dtype)
    with pytest.raises(ValueError, match="is not supported: gpucnn computes in float32 or float64"):
        Affine(3, dtype=dtype)


def test_explicit_weights_of_integers_are_refused():
    with pytest.raises(ValueError, match=re.escape("Affine: W is int64, but gpucnn computes in float32 or float64")):
        Affine(W=np.ones((4, 3), dtype=np.int64))
    Affine(W=np.ones((4, 3), dtype=np.int64), dtype="float32")  # an explicit dtype casts them


@pytest.mark.parametrize("samples", [np.array([["a", "b", "c", "d"]]), np.ones((1, 4), dtype=np.complex64)])
def test_inputs_that_are_not_numbers_are_refused(samples):
    model = gpucnn.Sequential([Affine(3)], input_shape=(4,), seed=0)
    message = f"samples must be numbers, got an array of {samples.dtype}"
    for call in (model.predict, lambda x: model.evaluate(x, [0]), lambda x: model.fit(x, [0], verbose=0)):
        with pytest.raises(TypeError, match=re.escape(message)):
            call(samples)
    assert model.epoch == 0


# -- empty and degenerate inputs -------------------------------------------------------------------


def test_predict_on_no_samples_gives_no_rows(backend):
    model = gpucnn.Sequential([Affine(5), ReLU(), Affine(3)], input_shape=(4,), seed=0)
    x = np.zeros((0, 4), dtype=np.float32)
    for scores in (model.predict(x), model.predict(x, batch_size=2), model.predict_proba(x), model.predict([])):
        assert backend.is_array(scores) and tuple(scores.shape) == (0, 3) and scores.dtype == model.dtype
    lazy = gpucnn.Sequential([Affine(2)], "binary_crossentropy", seed=0)  # built from the empty batch's shape
    assert tuple(lazy.predict(np.zeros((0, 7))).shape) == (0, 2) and lazy.input_shape == (7,)
    with pytest.raises(ValueError, match=re.escape("samples have shape (5,) but the model expects (4,)")):
        model.predict(np.zeros((0, 5)))
    with pytest.raises(ValueError, match="no samples, and the model has no input shape yet"):
        gpucnn.Sequential([Affine(2)]).predict([])


def test_a_large_batch_of_the_wrong_rank_is_named_by_its_own_shape():
    """The fused first layer runs inference in blocks; the error names the caller's array, not a block."""
    model = gpucnn.SimpleConvNet(input_dim=(1, 8, 8), conv_param={"filter_num": 2, "filter_size": 3}, seed=0)
    n = model.backend.kernels.inference_block + 1
    assert isinstance(model.steps[0], ConvReluMaxPool)
    with pytest.raises(ValueError, match=re.escape(f"expects a 4-D array (N, C, H, W), got shape ({n},)")):
        model.predict(np.zeros(n, dtype=np.float32))


def test_measures_of_no_samples_are_errors_and_train_nothing():
    model = gpucnn.Sequential([Affine(3)], input_shape=(4,), seed=0)
    model.optimizer = gpucnn.optimizers.Momentum(lr=0.1)
    x, t = np.zeros((0, 4), dtype=np.float32), np.zeros(0, dtype=np.int64)
    before = params_of(model)
    for call in (model.accuracy, model.evaluate, model.loss, model.gradient, model.train_on_batch, model.fit):
        with pytest.raises(ValueError, match="no samples: x is empty"):
            call(x, t)
    assert_same_params(model, before)
    assert model.optimizer.iterations == 0


@pytest.mark.parametrize(
    "make,error,message",
    [
        (lambda: Convolution(0, 3), ValueError, "Convolution filter_num must be >= 1, got 0"),
        (lambda: Convolution(2, 0), ValueError, "Convolution filter_size must be >= 1, got 0"),
        (lambda: Convolution(2, (3, 0)), ValueError, "Convolution filter_size must be >= 1, got 0"),
        (lambda: Convolution(2, 3, stride=0), ValueError, "Convolution stride must be >= 1, got 0"),
        (lambda: Convolution(2, 3, pad=-1), ValueError, "Convolution pad must be >= 0, got -1"),
        (lambda: Convolution(2.5, 3), TypeError, "Convolution filter_num must be an integer, got 2.5"),
        (lambda: Affine(0), ValueError, "Affine units must be >= 1, got 0"),
        (lambda: Affine(-3), ValueError, "Affine units must be >= 1, got -3"),
        (lambda: Affine(2.5), TypeError, "Affine units must be an integer, got 2.5"),
        (lambda: Affine(True), TypeError, "Affine units must be an integer, got True"),
        (lambda: MaxPooling(0), ValueError, "MaxPooling pool_size must be >= 1, got 0"),
        (lambda: AvgPooling((2, 0), stride=1), ValueError, "AvgPooling pool_size must be >= 1, got 0"),
        (lambda: MaxPooling(2, stride=0), ValueError, "MaxPooling stride must be >= 1, got 0"),
        (lambda: MaxPooling(2, pad=-1), ValueError, "MaxPooling pad must be >= 0, got -1"),
        (lambda: BatchNormalization(eps=0), ValueError, "BatchNormalization eps must be > 0, got 0"),
        (
            lambda: BatchNormalization(momentum=1.5),
            ValueError,
            "BatchNormalization momentum must be in [0, 1], got 1.5",
        ),
        (
            lambda: gpucnn.Sequential([Affine(3)], input_shape=(0,)),
            ValueError,
            "Affine: input shape (0,) has a size below 1",
        ),
        (
            lambda: gpucnn.Sequential([Convolution(2, 3)], input_shape=(1, 0, 5)),
            ValueError,
            "Convolution: input shape (1, 0, 5) has a size below 1",
        ),
    ],
)
def test_layers_refuse_degenerate_sizes_naming_the_argument(make, error, message):
    with pytest.raises(error, match=re.escape(message)):
        make()


def test_the_book_layers_still_take_numpy_integers():
    layer = Convolution(np.int64(2), (np.int32(3), 3), stride=np.int64(1))
    assert layer.filter_num == 2 and layer.filter_size == (3, 3) and type(layer.stride) is int
    assert math.prod(MaxPooling(np.int64(2)).pool_size) == 4
