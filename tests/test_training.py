"""fit / evaluate: batching rules, history, chunked evaluation, repeatability, resuming."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import gpucnn
from gpucnn.models import binary_mlp, mnist_cnn, two_layer_net
from gpucnn.optimizers import AdaGrad
from gpucnn.training import NonFiniteLossError, check_batch_size, epoch_batches


def blobs(n=60, shape=(1, 8, 8), classes=3, seed=0):
    """Separable classes: each class lights up its own band of rows."""
    rng = np.random.default_rng(seed)
    t = rng.integers(0, classes, n)
    x = rng.random((n, *shape)).astype(np.float32) * 0.2
    band = shape[1] // classes
    for c in range(classes):
        x[t == c, :, c * band : (c + 1) * band, :] += 1.0
    return x, t


def tiny_net(seed=0, dtype="float32", classes=3):
    return gpucnn.SimpleConvNet(
        input_dim=(1, 8, 8),
        conv_param={"filter_num": 4, "filter_size": 3, "pad": 0, "stride": 1},
        hidden_size=16,
        output_size=classes,
        dtype=dtype,
        seed=seed,
    )


# -- batching rules ------------------------------------------------------------------------


def test_epoch_batches_cover_every_sample_once_with_a_partial_last_batch():
    rng = np.random.default_rng(0)
    batches = epoch_batches(10, 4, rng)
    assert [len(b) for b in batches] == [4, 4, 2]  # ceil(10 / 4) iterations, last one kept
    assert sorted(np.concatenate(batches)) == list(range(10))
    assert [len(b) for b in epoch_batches(10, 4, rng, drop_last=True)] == [4, 4]
    np.testing.assert_array_equal(np.concatenate(epoch_batches(5, 2, rng, shuffle=False)), np.arange(5))


def test_fresh_permutation_each_epoch():
    x, t = blobs(40)
    net = tiny_net()
    orders = []
    net.fit(
        x,
        t,
        batch_size=40,
        epochs=2,
        seed=0,
        verbose=0,
        callbacks=[lambda m, e, logs: orders.append(m.history.iteration_loss[-1])],
    )
    a = epoch_batches(40, 40, np.random.default_rng([0, 0]))[0]
    b = epoch_batches(40, 40, np.random.default_rng([0, 1]))[0]
    assert not np.array_equal(a, b)


def test_random_sampling_follows_the_books_minibatches():
    rng = np.random.default_rng(1)
    batches = epoch_batches(10, 3, rng, sampling="random")
    assert len(batches) == 3  # max(N // batch_size, 1)
    assert all(len(set(b)) == 3 for b in batches)  # no repeat inside a batch
    assert len(epoch_batches(5, 5, rng, sampling="random")) == 1
    seen = np.concatenate(epoch_batches(1000, 10, np.random.default_rng(2), sampling="random"))
    assert len(np.unique(seen)) < 1000  # some samples twice, some never
    with pytest.raises(ValueError, match="sampling must be 'epoch' or 'random'"):
        epoch_batches(5, 2, rng, sampling="bootstrap")


def test_batch_size_rules():
    with pytest.warns(UserWarning, match="batch_size 500 is larger than the 60 samples; using batch_size=60"):
        assert check_batch_size(500, 60) == 60
    for bad, error in [(0, ValueError), (-3, ValueError), (2.5, TypeError), ("32", TypeError), (True, TypeError)]:
        with pytest.raises(error, match="batch_size"):
            check_batch_size(bad, 10)
    x, t = blobs(30)
    with pytest.warns(UserWarning, match="larger than the 30 samples"):
        h = tiny_net().fit(x, t, batch_size=100, epochs=1, verbose=0)
    assert h.params["batch_size"] == 30 and h.params["iterations_per_epoch"] == 1


def test_history_contents():
    x, t = blobs(50)
    xv, tv = blobs(20, seed=1)
    h = tiny_net().fit(
        x, t, batch_size=16, epochs=3, optimizer=AdaGrad(lr=0.05), validation_data=(xv, tv), seed=0, verbose=0
    )
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "epoch_time", "val_time", "images_per_s"):
        assert len(h.history[key]) == 3, key
    assert h.epoch == [0, 1, 2]
    assert len(h.iteration_loss) == 3 * math.ceil(50 / 16)
    # Epoch loss: the running mean over the epoch's batches, weighted by batch size.
    sizes = [16, 16, 16, 2]
    first = h.iteration_loss[:4]
    assert h.history["loss"][0] == pytest.approx(np.dot(first, sizes) / 50)
    assert h.history["val_accuracy"][-1] > 0.9  # separable blobs are learned
    assert all(v > 0 for v in h.history["images_per_s"])


def test_optimizer_by_name_and_models_of_the_zoo_train():
    x, t = blobs(40, shape=(1, 12, 12))
    net = mnist_cnn(input_shape=(1, 12, 12), num_classes=3, seed=0)
    h = net.fit(x, t, batch_size=20, epochs=2, optimizer="adam", seed=0, verbose=0)
    assert isinstance(net.optimizer, gpucnn.optimizers.Adam) and len(h.history["loss"]) == 2
    mlp = two_layer_net(input_shape=(1, 12, 12), num_classes=3, seed=0)
    assert np.isfinite(mlp.fit(x, t, batch_size=8, epochs=1, optimizer="sgd", seed=0, verbose=0).history["loss"][0])
    xb = np.random.default_rng(0).random((64, 30)).astype(np.float32)
    tb = (xb[:, 0] > 0.5).astype(np.float32)
    model = binary_mlp(seed=0)
    model.fit(xb, tb, batch_size=16, epochs=30, optimizer="adam", seed=0, verbose=0)
    assert model.evaluate(xb, tb)[1] > 0.8


def test_evaluate_is_chunked_and_matches_one_pass():
    x, t = blobs(45)
    net = tiny_net()
    loss, acc = net.evaluate(x, t, batch_size=7)
    full_loss = net.loss(x, t, train=False)
    assert loss == pytest.approx(full_loss, rel=1e-5)
    assert acc == pytest.approx(net.accuracy(x, t, batch_size=45))
    assert isinstance(loss, float) and isinstance(acc, float)
    scores = net.predict(x, batch_size=4)
    np.testing.assert_allclose(scores, net.predict(x), rtol=1e-5)


def test_chunked_predict_keeps_peak_memory_flat():
    import tracemalloc

    net = tiny_net()
    peaks = []
    for n in (200, 800):
        x = np.random.default_rng(0).random((n, 1, 8, 8)).astype(np.float32)
        tracemalloc.start()
        net.evaluate(x, np.zeros(n, dtype=np.int64), batch_size=50)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 1.5 * peaks[0]  # 4x the samples, not 4x the memory


def test_seeded_runs_repeat_to_the_last_bit(backend):
    x, t = blobs(40)
    runs = []
    for _ in range(2):
        net = tiny_net(seed=5)
        h = net.fit(x, t, batch_size=16, epochs=2, optimizer=AdaGrad(lr=0.06), seed=11, verbose=0)
        runs.append((h.iteration_loss, backend.to_numpy(net.params["W1"])))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])


def test_dropout_masks_repeat_with_the_seed():
    x, t = blobs(40, shape=(1, 12, 12))
    losses = [
        mnist_cnn((1, 12, 12), 3, seed=0)
        .fit(x, t, batch_size=20, epochs=1, optimizer="sgd", seed=3, verbose=0)
        .iteration_loss
        for _ in range(2)
    ]
    assert losses[0] == losses[1]


def test_non_finite_loss_stops_training_with_the_epoch_and_iteration():
    x, t = blobs(40)
    x[25] = np.nan  # poison one sample: its batch gives a NaN loss
    net = tiny_net()
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at epoch 1, iteration 3\b"):
        net.fit(x, t, batch_size=10, epochs=1, shuffle=False, verbose=0)
    with pytest.raises(NonFiniteLossError, match=r"iteration 3 \(loss fetched for iterations 1-4\)"):
        tiny_net().fit(x, t, batch_size=10, epochs=1, shuffle=False, verbose=0, loss_every=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        h = tiny_net().fit(x, t, batch_size=10, epochs=1, shuffle=False, verbose=0, on_nonfinite="warn")
    assert any("loss is nan" in str(w.message) for w in caught)
    assert math.isnan(h.iteration_loss[2])


def test_bad_training_input():
    x, t = blobs(20)
    net = tiny_net()
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\] for 3 classes, got values from 1 to 5"):
        net.fit(x, np.where(t == 0, 5, t), verbose=0)
    with pytest.raises(ValueError, match="19 targets for 20 samples"):
        net.fit(x, t[:-1], verbose=0)
    with pytest.raises(ValueError, match=r"samples have shape \(1, 9, 9\) but the model expects \(1, 8, 8\)"):
        net.fit(np.zeros((4, 1, 9, 9)), t[:4], verbose=0)
    with pytest.raises(ValueError, match="epochs must be a non-negative integer"):
        net.fit(x, t, epochs=-1, verbose=0)


def test_prefetch_and_data_on_device_are_no_ops_on_cpu(backend):
    if backend.is_gpu:
        pytest.skip("CPU semantics only")
    x, t = blobs(30)
    a = tiny_net().fit(x, t, batch_size=8, epochs=1, seed=1, verbose=0).iteration_loss
    b = tiny_net().fit(x, t, batch_size=8, epochs=1, seed=1, verbose=0, prefetch=True).iteration_loss
    c = tiny_net().fit(x, t, batch_size=8, epochs=1, seed=1, verbose=0, data_on_device=True).iteration_loss
    assert a == b == c


def test_progress_bar_and_epoch_lines(capsys):
    x, t = blobs(20)
    tiny_net().fit(x, t, batch_size=10, epochs=2, verbose=2)
    out = capsys.readouterr().out
    assert "Epoch 1/2 - " in out and "Epoch 2/2 - " in out and "img/s - loss " in out
    tiny_net().fit(x, t, batch_size=10, epochs=1, verbose=0)
    assert capsys.readouterr().out == ""
