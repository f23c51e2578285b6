"""Saving, loading and resuming models; atomic writes; damaged files."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

import gpucnn
from gpucnn.io import FORMAT_VERSION, ModelFileError, atomic_write
from gpucnn.layers import Affine, BatchNormalization, Dropout, ReLU
from gpucnn.models import mnist_cnn

from .test_training import blobs, tiny_net


def test_round_trip_is_bit_identical(tmp_path, backend):
    x, t = blobs(30)
    net = tiny_net()
    net.fit(x, t, batch_size=10, epochs=1, optimizer="adam", seed=0, verbose=0)
    path = tmp_path / "model.npz"
    net.save(path)
    loaded = gpucnn.load(path)
    assert type(loaded) is gpucnn.SimpleConvNet and loaded.backend is backend
    np.testing.assert_array_equal(backend.to_numpy(loaded.predict(x)), backend.to_numpy(net.predict(x)))
    assert loaded.epoch == 1 and loaded.optimizer.iterations == net.optimizer.iterations
    np.testing.assert_array_equal(
        backend.to_numpy(loaded.optimizer.state["W1"]["v"]), backend.to_numpy(net.optimizer.state["W1"]["v"])
    )


def test_sequential_with_state_round_trips(tmp_path):
    model = gpucnn.Sequential(
        [Affine(8), BatchNormalization(), ReLU(), Dropout(0.3), Affine(3)], input_shape=(5,), seed=0
    )
    x = np.random.default_rng(0).random((16, 5)).astype(np.float32)
    model.fit(x, np.arange(16) % 3, batch_size=8, epochs=2, seed=0, verbose=0)
    model.save(tmp_path / "m.npz")
    loaded = gpucnn.load(tmp_path / "m.npz")
    assert [type(layer).__name__ for layer in loaded.layers] == [
        "Affine",
        "BatchNormalization",
        "ReLU",
        "Dropout",
        "Affine",
    ]
    np.testing.assert_array_equal(loaded.layers[1].state["running_var"], model.layers[1].state["running_var"])
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_a_gpu_style_file_loads_on_the_cpu(tmp_path):
    """Files hold host arrays whatever the backend they came from."""
    with gpucnn.use_backend("numpy"):
        net = mnist_cnn((1, 12, 12), 3, seed=0)
        net.save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz", allow_pickle=False) as data:
        assert all(data[k].dtype != object for k in data.files)


def test_resume_ends_with_the_same_weights(tmp_path):
    x, t = blobs(50)
    full = tiny_net(seed=2)
    full.fit(x, t, batch_size=16, epochs=4, optimizer="adagrad", seed=7, verbose=0)

    first = tiny_net(seed=2)
    first.fit(x, t, batch_size=16, epochs=2, optimizer="adagrad", seed=7, verbose=0)
    first.save(tmp_path / "ckpt.npz")
    resumed = gpucnn.load(tmp_path / "ckpt.npz")
    h = resumed.fit(x, t, batch_size=16, epochs=4, verbose=0)  # seed, optimizer and epoch come back
    assert h.epoch == [2, 3]
    for key in full.params:
        np.testing.assert_array_equal(resumed.params[key], full.params[key])


def test_checkpoint_every_epoch(tmp_path):
    x, t = blobs(20)
    path = tmp_path / "ck" / "model.npz"
    seen = []
    tiny_net().fit(
        x,
        t,
        batch_size=10,
        epochs=2,
        verbose=0,
        checkpoint=str(path),
        callbacks=[lambda m, e, logs: seen.append(gpucnn.load(path).epoch)],
    )
    assert seen == [1, 2]


def test_atomic_write_leaves_the_old_file_on_failure(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="crash"):
        with atomic_write(path) as f:
            f.write(b"half of the new")
            raise RuntimeError("crash")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]  # no temporary file left behind


def test_atomic_write_gives_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "new.txt", "w") as f:
            f.write("x")
        assert (tmp_path / "new.txt").stat().st_mode & 0o777 == 0o644
        os.chmod(tmp_path / "new.txt", 0o600)
        with atomic_write(tmp_path / "new.txt", "w") as f:
            f.write("y")
        assert (tmp_path / "new.txt").stat().st_mode & 0o777 == 0o600  # an existing file keeps its mode
    finally:
        os.umask(umask)


def test_save_failure_keeps_the_previous_model(tmp_path, monkeypatch):
    net = tiny_net()
    path = tmp_path / "m.npz"
    net.save(path)
    before = path.read_bytes()

    def broken_savez(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        net.save(path)
    assert path.read_bytes() == before


def test_bad_files_give_clear_errors(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip at all")
    with pytest.raises(ModelFileError, match="not a readable gpucnn model file"):
        gpucnn.load(junk)
    other = tmp_path / "other.npz"
    np.savez(other, weights=np.zeros(3))
    with pytest.raises(ModelFileError, match="not a gpucnn model file"):
        gpucnn.load(other)
    net = tiny_net()
    good = tmp_path / "good.npz"
    net.save(good)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ModelFileError):
        gpucnn.load(truncated)
    with np.load(good) as data:
        arrays = dict(data)
    newer = tmp_path / "newer.npz"
    np.savez(newer, **{**arrays, "format_version": np.array(FORMAT_VERSION + 1)})
    with pytest.raises(ModelFileError, match=f"format version {FORMAT_VERSION + 1}, newer than this gpucnn reads"):
        gpucnn.load(newer)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, **{**arrays, "param/W2": np.zeros((3, 3), dtype=np.float32)})
    with pytest.raises(ModelFileError, match=r"parameter 'W2' has shape \(3, 3\), the architecture needs \(36, 16\)"):
        gpucnn.load(wrong)
    arch = json.loads(str(arrays["architecture"]))
    arch["hyperparameters"]["hidden_size"] = 7
    mismatched = tmp_path / "mismatched.npz"
    np.savez(mismatched, **{**arrays, "architecture": np.array(json.dumps(arch))})
    with pytest.raises(ModelFileError, match="parameter 'W2' has shape"):
        gpucnn.load(mismatched)
    with pytest.raises(FileNotFoundError, match="no model file at"):
        gpucnn.load(tmp_path / "absent.npz")


# -- files written by release 0.1.0 ----------------------------------------------------------

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


@pytest.mark.parametrize(
    "name, model_class, optimizer_class",
    [("simple_convnet_v0.1.0", "SimpleConvNet", "AdaGrad"), ("sequential_bn_adam_v0.1.0", "Sequential", "Adam")],
)
def test_files_of_release_0_1_0_load_predict_and_resume(tmp_path, name, model_class, optimizer_class):
    path = os.path.join(FIXTURES, f"{name}.npz")
    with np.load(path) as data:
        saved = dict(data)
    with np.load(os.path.join(FIXTURES, f"{name}_check.npz")) as check:
        x, scores = check["x"], check["scores"]
    training = json.loads(str(saved["training"]))
    with gpucnn.use_backend("numpy"):
        model = gpucnn.load(path)
    assert type(model).__name__ == model_class
    np.testing.assert_array_equal(model.predict(x), scores)  # the same float32 scores, to the bit

    # Parameters, BatchNormalization's running statistics, the optimizer and its state, the epoch.
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, saved[key], err_msg=key)
    assert any(key.startswith("state/") for key in saved) == (model_class == "Sequential")
    assert type(model.optimizer).__name__ == optimizer_class
    assert model.optimizer.iterations == json.loads(str(saved["optimizer"]))["iterations"]
    slots = {f"optimizer_state/{key}/{slot}": v for key, s in model.optimizer.state.items() for slot, v in s.items()}
    assert set(slots) == {key for key in saved if key.startswith("optimizer_state/")}
    for key, value in slots.items():
        np.testing.assert_array_equal(value, saved[key], err_msg=key)
    assert (model.epoch, model.train_seed) == (training["epoch"], training["seed"])

    # Saved again, the file holds the same entries: the format has not moved.
    model.save(tmp_path / "again.npz")
    with np.load(tmp_path / "again.npz") as again:
        assert sorted(again.files) == sorted(saved)
        for key in saved:
            np.testing.assert_array_equal(again[key], saved[key], err_msg=key)

    # fit resumes at the saved epoch, with the saved optimizer state and seed, and repeats.
    t = np.arange(len(x)) % scores.shape[1]
    runs = []
    for _ in range(2):
        with gpucnn.use_backend("numpy"):
            resumed = gpucnn.load(path)
        h = resumed.fit(x, t, batch_size=4, epochs=training["epoch"] + 1, verbose=0)
        assert h.epoch == [training["epoch"]] and resumed.epoch == training["epoch"] + 1
        assert resumed.optimizer.iterations == model.optimizer.iterations + math.ceil(len(x) / 4)
        runs.append((h.iteration_loss, {key: np.array(v) for key, v in resumed.params.items()}))
    assert runs[0][0] == runs[1][0]
    for key in runs[0][1]:
        np.testing.assert_array_equal(runs[0][1][key], runs[1][1][key])
        assert not np.array_equal(runs[0][1][key], saved[f"param/{key}"]), key  # it trained
