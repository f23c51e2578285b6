"""The cuda-emu backend's device-strict arrays, the counting of device work, and ``gpucnn profile``."""

from __future__ import annotations

import json

import numpy as np
import pytest

import gpucnn
from gpucnn.cli import main
from gpucnn.kernels.cuda_set import counting
from gpucnn.kernels.emu import DeviceArray
from gpucnn.profile import profile_step

from .conftest import backend_or_skip


@pytest.fixture(scope="module")
def emu() -> gpucnn.Backend:
    return backend_or_skip("cuda-emu")


# -- device-strict arrays ------------------------------------------------------------------------


def test_an_emulated_device_array_refuses_implicit_conversion_as_cupy_does(emu):
    a = emu.asarray(np.arange(6.0).reshape(2, 3))
    assert isinstance(a, DeviceArray)
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
        np.asarray(a)
    with pytest.raises(TypeError, match="cannot meet a cuda-emu array"):
        a + np.ones((2, 3))
    with pytest.raises(TypeError, match="cannot meet a cuda-emu array"):
        emu.xp.where(a > 0, a, np.zeros((2, 3)))
    np.testing.assert_array_equal(emu.to_numpy(a), np.arange(6.0).reshape(2, 3))


def test_host_syncs_and_copies_are_counted(emu):
    with counting() as work:
        a = emu.asarray(np.ones((4, 5), np.float32))  # one host→device copy
        total = emu.xp.sum(a)
        assert float(total) == 20.0
        assert int(total) == 20 and bool(total) and total.item() == 20.0
        host = emu.to_numpy(a)  # a copy to the host, and a sync
    assert host.dtype == np.float32
    assert work.host_syncs == 5
    assert work.operations["copy"] == 2
    assert work.bytes_to_device == 80 and work.bytes_to_host == 80 + 4 * 4


def test_namespace_calls_count_as_cupy_runs_them(emu):
    xp = emu.xp
    scores = emu.asarray(np.random.default_rng(0).standard_normal((8, 3)).astype(np.float32))
    labels = emu.asarray(np.arange(8) % 3)
    with counting() as work:
        right = xp.sum(xp.argmax(scores, axis=1) == labels)  # argmax, ==, sum: three kernels
    assert work.operations == {"kernel": 0, "gemm": 0, "array": 3, "memset": 0, "copy": 0}
    assert work.allocations == 3
    with counting() as work:
        xp.reshape(scores, (24,))  # a view: nothing
        scores[2:4, ...]  # a view: nothing
        xp.astype(right, right.dtype)  # array-api-compat copies even to the same dtype
        xp.zeros((3,), dtype=xp.float32)  # a memset
        scores @ xp.ones((3, 2), dtype=xp.float32)  # a fill and a GEMM
        scores += 1.0  # in place: a kernel, no allocation
    assert work.operations == {"kernel": 0, "gemm": 1, "array": 3, "memset": 1, "copy": 0}
    assert work.allocations == 4
    assert work.host_syncs == 0


# -- fit, evaluate, predict with device-resident data ----------------------------------------------------


def _tiny(emu):
    with gpucnn.use_backend(emu):
        return gpucnn.Sequential(
            [
                gpucnn.layers.Convolution(4, 3),
                gpucnn.layers.ReLU(),
                gpucnn.layers.MaxPooling(2, 2),
                gpucnn.layers.Affine(3),
            ],
            input_shape=(1, 8, 8),
            seed=0,
        )


@pytest.mark.parametrize("data_on_device", [False, True])
def test_fit_evaluate_and_predict_take_device_arrays(emu, data_on_device):
    """Samples and labels already on the device give the numbers host data give: no
    ``np.asarray`` of a device array on the way (a CuPy array raises there)."""
    rng = np.random.default_rng(3)
    x, t = rng.random((12, 1, 8, 8), dtype=np.float32), rng.integers(0, 3, 12)
    results = []
    for data in ((x, t), (emu.asarray(x), emu.asarray(t))):
        model = _tiny(emu)
        history = model.fit(*data, batch_size=5, epochs=1, seed=0, verbose=0, validation_data=data)
        history = model.fit(*data, batch_size=5, epochs=2, seed=0, verbose=0, data_on_device=data_on_device)
        scores = emu.to_numpy(model.predict(data[0], batch_size=5))
        results.append((history.iteration_loss, model.evaluate(*data), model.accuracy(*data), scores))
    (host_loss, host_eval, host_acc, host_scores), (dev_loss, dev_eval, dev_acc, dev_scores) = results
    assert dev_loss == host_loss
    assert dev_eval == host_eval and dev_acc == host_acc
    np.testing.assert_array_equal(dev_scores, host_scores)


# -- the counted step ---------------------------------------------------------------------------------


def test_a_simple_convnet_step_is_counted_without_host_syncs(emu):
    profile = profile_step("simple_convnet", 10)
    step = profile.step
    assert step.host_syncs == 0
    assert step.device_operations == sum(step.operations.values())
    # Our kernels: the direct first convolution with its bias, ReLU and pooling, bias_relu,
    # the last Affine's bias with the loss, the right answers, the scores' gradient and the
    # bias's gradient (two passes), relu_backward, the first convolution's weight and bias
    # gradients, then one AdaGrad update of all 6 parameters. No column matrix, no backward
    # kernel for the loss, and no add for the last bias.
    assert step.operations["kernel"] == 7
    assert step.by_name["kernel conv_bias_relu_maxpool<float>"] == 1
    assert step.by_name["kernel conv_maxpool_relu_backward_params<float>"] == 1
    assert step.by_name["kernel bias_softmax_cross_entropy_count_grad<float>"] == 2
    assert not {
        "kernel im2col<float>",
        "kernel softmax_cross_entropy_backward<float>",
        "kernel softmax_cross_entropy_count_grad<float>",
    } & set(step.by_name)
    assert step.operations["array"] == 0  # no "array add" for the last Affine's bias
    # GEMMs: two Affine layers forward, their dW and dx products, and the first Affine's
    # bias-gradient product (the last Affine's comes with the loss)
    assert step.operations["gemm"] == 7
    assert step.device_operations == 16
    assert step.by_name["kernel adagrad_update_many<float>"] == 1
    assert step.by_name["kernel adagrad_update<float>"] == 0
    # No fill of a ones vector for the bias gradients (kept by the kernel set), no zero
    # scalar for the ReLU's backward, no argmax, isfinite or sum for the right answers.
    assert step.operations["memset"] == 0
    assert not {"array ones", "array where", "array argmax", "array isfinite", "array sum"} & {
        name for name in step.by_name
    }
    assert step.operations["copy"] == 2  # the batch's samples and labels
    assert step.bytes_to_device == 10 * 28 * 28 * 4 + 10 * 4  # float32 samples, int32 labels
    assert profile.loss_fetch.host_syncs == 2  # the losses and the right answers, once per loss_every steps
    assert profile_step("simple_convnet", 10).to_dict() == profile.to_dict()  # counted, so repeatable


def test_labels_prepared_by_fit_reach_the_kernels_without_a_cast(emu):
    """fit converts integer labels to the kernels' int32 once, on the host: a step on such a
    batch casts nothing on the device."""
    model = _tiny(emu)
    model.optimizer = gpucnn.optimizers.SGD()
    rng = np.random.default_rng(5)
    x, t = model.prepare(rng.random((6, 1, 8, 8), dtype=np.float32), rng.integers(0, 3, 6))
    assert t.dtype == np.int32
    xb, tb = model.as_input(x), model.as_target(t)
    model.train_step(xb, tb)
    with counting() as work:
        model.train_step(xb, tb)
    assert work.by_name["array astype"] == 0
    assert work.host_syncs == 0


def test_only_a_counting_backend_is_profiled():
    with pytest.raises(ValueError, match="backend 'numpy' cannot be profiled"):
        profile_step("simple_convnet", 10, backend="numpy")


def test_the_profile_command_prints_one_json_object(emu, capsys):
    assert main(["profile", "--model", "simple_convnet", "--batch-size", "4", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["host_syncs"] == 0
    assert report["device_operations"] == profile_step("simple_convnet", 4).step.device_operations
    assert report["loss_fetch"]["host_syncs"] == 2
