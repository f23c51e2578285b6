"""Sequential, SimpleConvNet and the optimizers: the book's API, gradient checks, backends."""

from __future__ import annotations

import numpy as np
import pytest

import gpucnn
from gpucnn.gradcheck import check_model_gradients
from gpucnn.layers import Affine, Convolution, Dropout, Flatten, MaxPooling, ReLU, SoftmaxWithLoss
from gpucnn.optimizers import SGD, AdaGrad, Adam, Momentum, RMSprop, get_optimizer

TOL = 1e-6


def small_net(dtype="float64", seed=0, **kw):
    kw.setdefault("conv_param", {"filter_num": 3, "filter_size": 3, "pad": 1, "stride": 2})
    return gpucnn.SimpleConvNet(
        input_dim=(1, 7, 9), hidden_size=5, output_size=4, weight_init_std=0.3, dtype=dtype, seed=seed, **kw
    )


def data(n=3, shape=(1, 7, 9), classes=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, *shape)), rng.integers(0, classes, n)


@pytest.mark.parametrize(
    "conv_param",
    [
        {"filter_num": 3, "filter_size": 3, "pad": 1, "stride": 2},  # stride 2 leaves a remainder
        {"filter_num": 2, "filter_size": 2, "pad": 0, "stride": 1},
    ],
)
def test_simple_convnet_gradients(backend, conv_param):
    net = small_net(conv_param=conv_param)
    x, t = data()
    errors = check_model_gradients(net, x, t)
    assert max(errors.values()) < TOL, errors


@pytest.mark.parametrize("stride", [2, 1])  # stride 1: the Numba set's direct convolution
def test_fused_and_unfused_steps_agree(backend, stride):
    x, t = data(n=4)
    fused = small_net(conv_param={"filter_num": 3, "filter_size": 3, "pad": 1, "stride": stride})
    plain = gpucnn.Sequential(
        [
            Convolution(W=fused.params["W1"], b=fused.params["b1"], stride=stride, pad=1),
            ReLU(),
            MaxPooling(2),
            Affine(W=fused.params["W2"], b=fused.params["b2"]),
            ReLU(),
            Affine(W=fused.params["W3"], b=fused.params["b3"]),
        ],
        fuse=False,
    )
    assert fused.loss(x, t) == pytest.approx(plain.loss(x, t), rel=1e-12)
    g1, g2 = fused.gradient(x, t), plain.gradient(x, t)
    for k1, k2 in zip(g1, g2):
        np.testing.assert_allclose(backend.to_numpy(g1[k1]), backend.to_numpy(g2[k2]), rtol=1e-10, atol=1e-14)


def test_simple_convnet_books_api():
    net = gpucnn.SimpleConvNet(seed=0)
    assert list(net.params) == ["W1", "b1", "W2", "b2", "W3", "b3"]
    assert net.params["W1"].shape == (30, 1, 5, 5) and net.params["W2"].shape == (4320, 100)
    assert net.params["W1"].dtype == np.float32
    assert abs(float(np.std(net.params["W1"])) - 0.01) < 0.002  # weight_init_std
    x, t = data(n=2, shape=(1, 28, 28), classes=10)
    assert net.predict(x).shape == (2, 10)
    grads = net.gradient(x, t)
    assert set(grads) == set(net.params)
    # The layers use the very arrays of params: an in-place change changes the network.
    before = net.loss(x, t)
    net.params["W3"][...] = 0
    net.params["b3"][...] = 0
    assert net.loss(x, t) == pytest.approx(np.log(10), rel=1e-6) != before
    net.params["b3"] = np.arange(10, dtype=np.float32)  # assignment reaches the layer too
    assert float(net.predict(x)[0, 9]) == pytest.approx(9.0)
    with pytest.raises(ValueError, match=r"parameter 'b3' has shape \(10,\), got \(3,\)"):
        net.params["b3"] = np.zeros(3)
    assert 0.0 <= net.accuracy(x, t, batch_size=1) <= 1.0


def test_non_square_input():
    net = gpucnn.SimpleConvNet(input_dim=(3, 20, 32), seed=1)
    assert net.params["W2"].shape == (30 * 8 * 14, 100)
    assert net.predict(np.zeros((2, 3, 20, 32))).shape == (2, 10)


def test_same_seed_same_weights():
    a, b, c = gpucnn.SimpleConvNet(seed=3), gpucnn.SimpleConvNet(seed=3), gpucnn.SimpleConvNet(seed=4)
    np.testing.assert_array_equal(a.params["W1"], b.params["W1"])
    assert not np.array_equal(a.params["W1"], c.params["W1"])


def test_sequential_lazy_build_summary_and_keys():
    model = gpucnn.Sequential([Convolution(4, 3), ReLU(), MaxPooling(2), Flatten(), Affine(10)], seed=0)
    assert not model.built
    x, t = data(n=2, shape=(2, 9, 8), classes=10)
    model.loss(x, t)
    assert model.built and model.input_shape == (2, 9, 8)
    assert list(model.params) == ["convolution1.W", "convolution1.b", "affine1.W", "affine1.b"]
    text = model.summary()
    assert "(None, 4, 7, 6)" in text and "(None, 4, 3, 3)" in text and f"{model.count_params():,}" in text
    assert model.count_params() == 4 * 2 * 9 + 4 + 36 * 10 + 10


def test_sequential_builds_from_input_shape_and_explicit_weights():
    W = np.ones((6, 2))
    model = gpucnn.Sequential([Affine(W=W), SoftmaxWithLoss()], input_shape=(6,))
    assert model.dtype == np.float64  # explicit weights decide
    assert model.predict(np.ones((1, 6))).dtype == np.float64
    with pytest.raises(ValueError, match="W expects 6"):
        gpucnn.Sequential([Affine(W=W)], input_shape=(5,))


def test_model_casts_inputs_and_labels_at_the_boundary():
    net = gpucnn.SimpleConvNet(input_dim=(1, 8, 8), seed=0)
    x = (np.random.default_rng(0).random((2, 1, 8, 8)) * 255).astype(np.uint8)
    assert net.predict(x).dtype == np.float32
    assert np.isfinite(net.loss(x, [1, 2]))


def test_non_finite_loss_is_an_error():
    net = gpucnn.SimpleConvNet(input_dim=(1, 8, 8), seed=0)
    x = np.zeros((2, 1, 8, 8))
    x[0, 0, 0, 0] = np.nan
    with pytest.raises(FloatingPointError, match="the loss is nan on a batch of 2 samples"):
        net.loss(x, [0, 1])
    net.params["W3"] = np.full((100, 10), np.inf, dtype=np.float32)
    with pytest.raises(FloatingPointError, match="the loss is (nan|inf)"):
        net.loss(np.ones((2, 1, 8, 8)), [0, 1])


def test_model_moves_between_backends(backend):
    x, t = data()
    with gpucnn.use_backend("numpy"):
        net = small_net()
    expected = net.loss(x, t)
    net.to(backend)
    assert net.backend is backend and backend.is_array(net.params["W1"])
    assert net.loss(x, t) == pytest.approx(expected, rel=1e-10)
    net.to("numpy")
    assert isinstance(net.params["W1"], np.ndarray)


def test_model_refuses_arrays_of_another_backend():
    from .strict_backend import make_strict_backend

    pytest.importorskip("array_api_strict")
    strict = make_strict_backend()
    net = small_net()
    with pytest.raises(TypeError, match="bound to backend 'numpy'"):
        net.predict(strict.asarray(np.zeros((1, 1, 7, 9))))


def test_layers_and_model_run_on_array_api_strict():
    """The proof of portability: the same layers on array_api_strict with the generic kernels."""
    pytest.importorskip("array_api_strict")
    from .strict_backend import make_strict_backend

    strict = make_strict_backend()
    x, t = data(n=4)
    with gpucnn.use_backend("numpy"):
        reference = small_net()
        model = gpucnn.Sequential(
            [Convolution(2, 3, pad=1), ReLU(), MaxPooling(2, pad=1), Dropout(0.2), Flatten(), Affine(4)],
            input_shape=(1, 7, 9),
            dtype="float64",
            seed=0,
        )
    ref_loss, ref_grads = reference.loss(x, t), reference.gradient(x, t)
    for net in (reference, model):
        net.to(strict)
    assert reference.loss(x, t) == pytest.approx(ref_loss, rel=1e-12)
    grads = reference.gradient(x, t)
    for key in ref_grads:
        np.testing.assert_allclose(strict.to_numpy(grads[key]), ref_grads[key], rtol=1e-10, atol=1e-14)
    assert max(check_model_gradients(reference, x, t).values()) < TOL
    model.gradient(x, t)
    AdaGrad(lr=0.1).update(model.params, model.grads, backend=strict)
    assert np.isfinite(model.loss(x, t, train=False))


def _quadratic_steps(opt, steps=3):
    p = {"w": np.array([1.0, -2.0, 3.0])}
    history = []
    for _ in range(steps):
        opt.update(p, {"w": 2 * p["w"]})  # gradient of sum(w²)
        history.append(p["w"].copy())
    return history


def test_optimizers_follow_the_books_rules():
    w = np.array([1.0, -2.0, 3.0])
    np.testing.assert_allclose(_quadratic_steps(SGD(lr=0.1), 1)[0], w - 0.1 * 2 * w)
    v = -0.1 * 2 * w
    np.testing.assert_allclose(_quadratic_steps(Momentum(lr=0.1, momentum=0.9), 1)[0], w + v)
    g = 2 * w
    np.testing.assert_allclose(_quadratic_steps(AdaGrad(lr=0.5), 1)[0], w - 0.5 * g / (np.sqrt(g * g) + 1e-7))
    h = 0.01 * g * g
    np.testing.assert_allclose(_quadratic_steps(RMSprop(lr=0.5), 1)[0], w - 0.5 * g / (np.sqrt(h) + 1e-7))
    lr_t = 0.1 * np.sqrt(1 - 0.999) / (1 - 0.9)
    m, vv = 0.1 * g, 0.001 * g * g
    np.testing.assert_allclose(_quadratic_steps(Adam(lr=0.1), 1)[0], w - lr_t * m / (np.sqrt(vv) + 1e-7))
    for opt in (SGD(0.05), Momentum(0.05), AdaGrad(0.5), RMSprop(0.05), Adam(0.3)):
        assert np.abs(_quadratic_steps(opt, 60)[-1]).sum() < np.abs(w).sum() / 2, opt


def test_optimizer_state_is_keyed_by_name_and_lazy():
    opt = Adam()
    assert opt.state == {}
    params = {"a": np.ones(2), "b": np.ones((2, 2))}
    opt.update(params, {"a": np.ones(2), "b": np.ones((2, 2))})
    assert set(opt.state) == {"a", "b"} and opt.state["b"]["m"].shape == (2, 2)
    assert opt.state["a"]["m"].dtype == params["a"].dtype


def test_the_books_update_call_runs_the_models_kernel_set(backend, monkeypatch):
    """``opt.update(net.params, grads)`` steps with the model's backend, also where its
    arrays alone cannot tell (NumPy arrays on the ``numba`` backend)."""
    net = small_net()
    x, t = data()
    calls = []
    step = backend.kernels.adagrad_update_many
    monkeypatch.setattr(backend.kernels, "adagrad_update_many", lambda *args: calls.append(len(args[0])) or step(*args))
    with gpucnn.use_backend("numpy"):
        AdaGrad(lr=0.1).update(net.params, net.gradient(x, t))
    assert calls == [len(net.params)]  # one call with every parameter


def test_weight_decay_and_get_optimizer():
    p = {"w": np.array([2.0])}
    SGD(lr=0.1, weight_decay=0.5).update(p, {"w": np.array([0.0])})
    np.testing.assert_allclose(p["w"], [2.0 - 0.1 * 0.5 * 2.0])
    assert isinstance(get_optimizer("adagrad", lr=0.06), AdaGrad)
    with pytest.raises(ValueError, match="unknown optimizer 'nadam'"):
        get_optimizer("nadam")
    with pytest.raises(ValueError, match="learning rate must be > 0, got -1"):
        SGD(lr=-1)


def test_fused_linear_relu_steps_agree(backend):
    from gpucnn.models import mnist_cnn

    x, t = data(n=3, shape=(1, 9, 8), classes=4)
    fused = mnist_cnn((1, 9, 8), 4, dtype="float64", seed=0)
    plain = mnist_cnn((1, 9, 8), 4, dtype="float64", seed=0)
    plain.fuse = False
    assert any(type(s).__name__ == "LinearReLU" for s in fused.steps)
    assert not any(type(s).__name__ == "LinearReLU" for s in plain.steps)
    assert fused.loss(x, t, train=False) == pytest.approx(plain.loss(x, t, train=False), rel=1e-12)
    for model in (fused, plain):
        for layer in model.layers:
            if isinstance(layer, Dropout):
                layer.rate = 0.0  # deterministic forward for the comparison
    g1, g2 = fused.gradient(x, t), plain.gradient(x, t)
    for key in g1:
        np.testing.assert_allclose(backend.to_numpy(g1[key]), backend.to_numpy(g2[key]), rtol=1e-10, atol=1e-14)


def seeded_losses(backend: str | gpucnn.Backend, steps: int = 5) -> list[float]:
    """Losses of a seeded float64 SimpleConvNet trained with AdaGrad on fixed data."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((9, 1, 12, 10))
    t = rng.integers(0, 10, size=9)
    with gpucnn.use_backend(backend):
        net = gpucnn.SimpleConvNet(
            input_dim=(1, 12, 10),
            hidden_size=16,
            dtype="float64",
            seed=0,
            conv_param={"filter_num": 4, "filter_size": 3, "pad": 1, "stride": 1},
        )
        optimizer = AdaGrad(lr=0.06)
        losses = []
        for _ in range(steps):
            optimizer.update(net.params, net.gradient(x, t))
            losses.append(net.loss(x, t))
    return losses


def test_seeded_training_gives_numpys_losses(backend):
    """numba, cuda-emu and array-api-strict run other kernels (Numba JIT, the CUDA sources,
    the generic set) to the same losses."""
    if backend.is_gpu:
        pytest.skip("cuBLAS sums in another order: see test_gpu_training_follows_numpy")
    losses = seeded_losses(backend)
    assert losses[-1] < losses[0]  # it learns, so the comparison means something
    np.testing.assert_allclose(losses, seeded_losses("numpy"), rtol=0, atol=1e-10)


def test_large_inference_batches_run_in_the_kernel_sets_blocks_with_the_same_scores(backend, monkeypatch):
    """A fused first layer's inference takes ``kernels.inference_block`` images per call of
    ``conv_bias_relu_maxpool_infer`` (128 on the CPU sets), or the whole batch where it is
    None (CUDA); blocks or not, the scores are the same."""
    from gpucnn.fused import ConvReluMaxPool

    kernels = backend.kernels
    net = small_net(dtype="float64")
    assert isinstance(net.steps[0], ConvReluMaxPool)
    block = kernels.inference_block
    assert block == (None if backend.name in ("cupy", "cuda-emu") else 128)
    x = np.random.default_rng(3).random((300, 1, 7, 9))
    calls = []
    infer = kernels.conv_bias_relu_maxpool_infer
    monkeypatch.setattr(kernels, "conv_bias_relu_maxpool_infer", lambda x, *a: calls.append(x.shape[0]) or infer(x, *a))
    scores = backend.to_numpy(net.predict(x))
    assert scores.shape == (300, 4)
    assert calls == ([300] if block is None else [128, 128, 44])

    calls.clear()
    monkeypatch.setattr(kernels, "inference_block", 128 if block is None else None)  # the other way
    np.testing.assert_allclose(backend.to_numpy(net.predict(x)), scores, rtol=1e-12, atol=1e-14)
    assert calls == ([128, 128, 44] if block is None else [300])
    np.testing.assert_allclose(backend.to_numpy(net.predict(x, batch_size=50)), scores, rtol=1e-12, atol=1e-14)


def test_cuda_inference_of_a_large_batch_is_one_launch_and_no_concatenation():
    """cuda-emu runs a fused first layer's inference of 300 images as one kernel launch."""
    from gpucnn.kernels.cuda_set import counting

    from .conftest import backend_or_skip

    emu = backend_or_skip("cuda-emu")
    with gpucnn.use_backend(emu):
        net = small_net(dtype="float64")
    x = emu.asarray(np.random.default_rng(3).random((300, 1, 7, 9)))
    with counting() as work:
        net.steps[0].forward(x, train=False)
    assert dict(work.by_name) == {"kernel conv_bias_relu_maxpool_infer<double>": 1}


def test_methods_that_take_data_take_arrays_of_the_models_backend(backend):
    """predict(batch_size=...), accuracy, evaluate and fit on samples and labels already on
    the backend give what host arrays give. 7 samples in batches of 3 end in a partial batch:
    a strict array-API array has no len() and takes no slice that stops past its end."""
    x, _ = data(n=7)
    net = small_net()
    xd = backend.asarray(x)
    scores = backend.to_numpy(net.predict(x))
    np.testing.assert_allclose(backend.to_numpy(net.predict(xd, batch_size=3)), scores, rtol=1e-12, atol=1e-14)

    t = np.argmax(scores, axis=1)
    t[-1] = (t[-1] + 1) % 4  # the one wrong answer sits in the partial batch
    td = backend.asarray(t)
    assert net.accuracy(xd, td, batch_size=3) == net.accuracy(x, t, batch_size=3) == 6 / 7
    loss, accuracy = net.evaluate(xd, td, batch_size=3)
    assert accuracy == 6 / 7
    assert loss == pytest.approx(net.evaluate(x, t, batch_size=3)[0], rel=1e-12)

    histories = []
    for xs, ts in ((x, t), (xd, td)):
        model = small_net()
        histories.append(
            model.fit(xs, ts, batch_size=3, epochs=2, optimizer="adagrad", validation_data=(xs, ts), seed=0, verbose=0)
        )
    host, device = histories
    assert len(device.iteration_loss) == 6
    np.testing.assert_allclose(device.iteration_loss, host.iteration_loss, rtol=1e-12)
    np.testing.assert_allclose(device.history["val_loss"], host.history["val_loss"], rtol=1e-12)


# -- the training step, the gradient hook, the registered arrays ------------------------------


def test_backward_announces_each_gradient_as_soon_as_it_is_computed(backend):
    net = small_net()
    net.optimizer = SGD(lr=0.1)
    x, t = data()
    calls = []

    def hook(key, grad):
        ready = [layer.name for layer in net.layers if layer.grads]  # whose backward has run
        calls.append((key, grad, ready))

    net.train_step(net.as_input(x), net.as_target(t), on_gradient=hook)
    assert [key for key, _, _ in calls] == ["W3", "b3", "W2", "b2", "W1", "b1"]
    assert [ready for key, _, ready in calls if key.startswith("W")] == [
        ["affine2"],  # W3: before the backward of the layers upstream
        ["affine1", "affine2"],
        ["convolution1", "affine1", "affine2"],
    ]
    grads = net.grads
    assert all(grad is grads[key] for key, grad, _ in calls)  # the very arrays the update used
    # The same gradients as without the hook.
    assert_train_step_gradients(backend, net.grads, small_net().gradient(x, t), len(t))


# The kernel sets whose last bias gradient in train_step (bias_softmax_cross_entropy_count_grad)
# sums the columns in another order than bias_grad's GEMV, which gradient() takes.
SERIAL_BIAS_GRADIENT = {"cuda-emu", "cupy"}


def assert_train_step_gradients(backend, got, want, n):
    """train_step's gradients (the last Affine and its loss as one step) are gradient()'s (the
    plain path), bit for bit, but for the last bias where the set sums its columns serially:
    the scores' gradient is (probs - onehot) / N, so each column's N terms add up to at most 1
    in absolute value and the sums lie within N eps of each other."""
    assert got.keys() == want.keys()
    for key in want:
        g, w = backend.to_numpy(got[key]), backend.to_numpy(want[key])
        if key == "b3" and backend.name in SERIAL_BIAS_GRADIENT:
            np.testing.assert_allclose(g, w, rtol=0, atol=n * np.finfo(w.dtype).eps)
        else:
            np.testing.assert_array_equal(g, w, err_msg=key)


def test_train_step_runs_the_last_affine_and_its_loss_as_one_step(backend):
    from gpucnn.fused import AffineSoftmaxLoss

    net = small_net()
    assert isinstance(net.loss_head, AffineSoftmaxLoss) and net.loss_head.layers == (net.layers[-1],)
    x, t = data(n=7)
    want = small_net().gradient(x, t)
    scores = backend.to_numpy(net.predict(x))  # predict still returns the scores
    net.optimizer = SGD(lr=0.1)
    loss, correct = net.train_step(net.as_input(x), net.as_target(t))
    assert_train_step_gradients(backend, net.grads, want, len(t))
    plain = small_net()
    np.testing.assert_array_equal(backend.to_numpy(plain.predict(x)), scores)
    assert float(loss) == pytest.approx(plain.loss(x, t), rel=1e-12)  # the loss before the update
    assert int(correct) == int(np.sum(np.argmax(scores, axis=1) == t))
    # After train_step, gradient() (a plain forward pass, then backward) takes the plain path.
    plain.load_state_dict(net.state_dict())
    got = net.gradient(x, t)
    for key, value in plain.gradient(x, t).items():
        np.testing.assert_array_equal(backend.to_numpy(got[key]), backend.to_numpy(value))
    # Not planned without fusion, for a loss other than the softmax's, or after a non-Affine layer.
    net.fuse = False
    assert net.loss_head is None
    assert gpucnn.Sequential([Affine(3), ReLU()], input_shape=(4,)).loss_head is None
    assert gpucnn.Sequential([Affine(1)], "binary_crossentropy", input_shape=(4,)).loss_head is None


def test_fit_is_one_train_step_per_batch():
    net = small_net(dtype="float32")
    x, t = data(n=10)
    steps = []
    train_step = net.train_step

    def counted(xb, tb, **kwargs):
        steps.append(int(xb.shape[0]))
        return train_step(xb, tb, **kwargs)

    net.train_step = counted
    net.fit(x, t, batch_size=4, epochs=2, optimizer="adagrad", seed=0, verbose=0)
    assert steps == [4, 4, 2, 4, 4, 2]
    assert net.optimizer.iterations == 6
    with pytest.raises(ValueError, match="train_step needs an optimizer"):
        small_net().train_step(net.as_input(x), net.as_target(t))


def test_state_dict_holds_parameters_and_state_under_file_keys(backend):
    from gpucnn.layers import BatchNormalization

    x, t = data(n=6)
    make = lambda seed: gpucnn.Sequential(  # noqa: E731
        [Convolution(2, 3, pad=1), BatchNormalization(), ReLU(), Flatten(), Affine(4)],
        input_shape=(1, 7, 9),
        dtype="float64",
        seed=seed,
    )
    source, target = make(0), make(1)
    source.fit(x, t, batch_size=3, epochs=1, seed=0, verbose=0)
    arrays = source.state_dict()
    assert list(arrays) == [
        "param/convolution1.W",
        "param/convolution1.b",
        "param/batch_normalization1.gamma",
        "param/batch_normalization1.beta",
        "param/affine1.W",
        "param/affine1.b",
        "state/batch_normalization1/running_mean",
        "state/batch_normalization1/running_var",
    ]
    assert arrays["param/affine1.W"] is source.params["affine1.W"]
    host = {key: backend.to_numpy(value) for key, value in arrays.items()}

    before = backend.to_numpy(target.params["convolution1.W"]).copy()
    wrong = {**host, "param/affine1.W": np.zeros((3, 3))}
    with pytest.raises(ValueError, match=r"parameter 'affine1.W' has shape \(3, 3\), the architecture needs"):
        target.load_state_dict(wrong)
    np.testing.assert_array_equal(backend.to_numpy(target.params["convolution1.W"]), before)  # nothing changed
    with pytest.raises(ValueError, match=r"state arrays \['batch_normalization1/running_mean'\] do not match"):
        target.load_state_dict({k: v for k, v in host.items() if not k.endswith("running_var")})

    target.load_state_dict(host)
    np.testing.assert_array_equal(backend.to_numpy(target.predict(x)), backend.to_numpy(source.predict(x)))
    assert target.params["affine1.W"] is not source.params["affine1.W"]


def test_clear_cache_empties_every_step(backend):
    net = small_net()
    x, t = data()
    net.gradient(x, t)
    kept = [(step, name) for step in net.steps for name in step.cache_names if getattr(step, name) is not None]
    assert kept  # the fused steps cache arrays of their own
    net.clear_cache()
    for step in [*net.steps, *net.layers, net.loss_layer]:
        assert all(getattr(step, name) is None for name in step.cache_names), step


def test_fused_steps_reach_layers_through_public_methods_only():
    """No ``other._name`` in gpucnn/fused.py: a fused step uses what layers offer everyone."""
    import ast
    import inspect

    from gpucnn import fused

    tree = ast.parse(inspect.getsource(fused))
    private = [
        f"line {node.lineno}: {ast.unparse(node)}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
        and not (isinstance(node.value, ast.Name) and node.value.id == "self")
    ]
    assert not private, private


@pytest.mark.parametrize("block_bytes", [None, 1])
def test_winograd_steps_agree_with_im2col_and_the_plain_layers(backend, monkeypatch, block_bytes):
    """A network whose inner 3x3 convolutions run through Winograd (forced on, so that every
    kernel set runs it), one of them pooled straight from its products (2x2 at stride 2 over
    an odd 5 x 4 output: a partial tile row), in blocks of one image or the whole batch,
    gives the losses, predictions and gradients of the plain layers through im2col, and its
    gradients pass the float64 check."""
    from gpucnn.fused import ConvReluMaxPool, LinearReLU
    from gpucnn.model import Sequential

    def net(fuse):
        layers = [Convolution(3, 3, pad=1), ReLU(), Convolution(4, 3, pad=1), ReLU(), Convolution(5, 3), ReLU()]
        layers += [MaxPooling(2), Flatten(), Affine(4)]
        return Sequential(layers, SoftmaxWithLoss(), input_shape=(2, 7, 6), dtype="float64", seed=3, fuse=fuse)

    x, t = data(n=3, shape=(2, 7, 6))
    monkeypatch.setattr(backend.kernels, "prefers_winograd", lambda *args: False)
    plain = net(fuse=False)
    want_loss, want_grads = plain.loss(x, t), plain.gradient(x, t)
    want_scores = backend.to_numpy(plain.predict(x))
    monkeypatch.setattr(backend.kernels, "winograd_block_bytes", block_bytes)
    monkeypatch.setattr(backend.kernels, "prefers_winograd", lambda *args: True)
    fused = net(fuse=True)
    assert [type(s) for s in fused.steps[:3]] == [LinearReLU, LinearReLU, ConvReluMaxPool]
    assert fused.steps[2]._winograd_pool() and fused.layers[2].winograd()
    assert fused.loss(x, t) == pytest.approx(want_loss, rel=1e-12)
    np.testing.assert_allclose(backend.to_numpy(fused.predict(x)), want_scores, rtol=1e-10, atol=1e-13)
    got = fused.gradient(x, t)
    for key in want_grads:
        np.testing.assert_allclose(backend.to_numpy(got[key]), backend.to_numpy(want_grads[key]), rtol=1e-9, atol=1e-13)
    if block_bytes is None:  # the blocks run the same code per block
        errors = check_model_gradients(fused, x, t)
        assert max(errors.values()) < 1e-6, errors
