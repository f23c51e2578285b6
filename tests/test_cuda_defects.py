"""The CUDA path's host side and arithmetic, checked where a CPU can check them: the
launcher's per-launch work, the multiply-add fusion setting of both compilers, float32
optimizer updates against the NumPy set, the bias gradient's formulation, and the batch
size cap that the kernels' 32-bit indices put on the memory model."""

from __future__ import annotations

import importlib.resources
import math

import numpy as np
import pytest

import gpucnn
from gpucnn import memory
from gpucnn.kernels import cuda_set, emu
from gpucnn.kernels.compile_check import _compile_nvcc
from gpucnn.kernels.cuda_set import IM2COL, MAX_ELEMENTS, NVRTC_OPTIONS, CudaSource, CupyLauncher
from gpucnn.kernels.generic import GenericKernels
from gpucnn.kernels.numpy_set import NumpyKernels
from gpucnn.models import build_model
from gpucnn.optimizers import AdaGrad

from .bounds import assert_close_to_sum, sum_rtol
from .conftest import STRICT, backend_or_skip

NP = NumpyKernels()


@pytest.fixture(scope="module")
def emu_backend() -> gpucnn.Backend:
    return backend_or_skip("cuda-emu")


# -- the launcher's host work per launch ------------------------------------------------------


class _StubCupy:
    """What CupyLauncher uses of CuPy: ``RawModule`` and ``cuda.runtime.getDevice``; the
    modules it builds record their kernels' calls instead of running them."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.compiled: list[tuple[str, tuple]] = []
        stub = self

        class RawModule:
            def __init__(self, code, options, name_expressions):
                stub.compiled.append((code, tuple(options)))

            def get_function(self, name):
                return lambda grid, block, args: stub.calls.append((name, grid, block, args))

        class runtime:
            @staticmethod
            def getDevice() -> int:
                return 0

        self.RawModule = RawModule
        self.cuda = type("cuda", (), {"runtime": runtime})


def test_a_launch_after_the_first_resolves_no_path_and_compiles_nothing(monkeypatch):
    stub = _StubCupy()
    launcher = CupyLauncher(stub)
    source = CudaSource(IM2COL.file, IM2COL.kernels)  # a fresh object: its path not resolved yet
    lookups = []
    files = importlib.resources.files
    monkeypatch.setattr(importlib.resources, "files", lambda package: lookups.append(package) or files(package))
    for _ in range(5):
        launcher.launch(source, "im2col<float>", (1,), (32,), ())
    assert len(stub.calls) == 5
    assert len(stub.compiled) == 1, "one NVRTC compile per source and device"
    assert len(lookups) <= 1, f"the source's path was looked up {len(lookups)} times in 5 launches"


# -- multiply-add fusion: pinned off on both compilers --------------------------------------------


def test_neither_compiler_fuses_multiply_adds():
    assert "--fmad=false" in NVRTC_OPTIONS  # NVRTC and nvcc fuse by default
    assert CupyLauncher.OPTIONS == NVRTC_OPTIONS
    assert "-ffp-contract=off" in emu.CXX_FLAGS  # g++ fuses by default where the target has FMA
    stub = _StubCupy()
    CupyLauncher(stub).launch(IM2COL, "im2col<float>", (1,), (32,), ())
    assert stub.compiled[0][1] == NVRTC_OPTIONS


def test_the_compile_check_compiles_with_the_launchers_options(monkeypatch):
    commands = []

    class Done:
        returncode, stdout, stderr = 0, "", ""

    monkeypatch.setattr("gpucnn.kernels.compile_check._nvcc", lambda: "nvcc")
    monkeypatch.setattr("subprocess.run", lambda command, **kwargs: commands.append(command) or Done())
    _compile_nvcc(IM2COL, "sm_90")
    assert all(option in commands[0] for option in NVRTC_OPTIONS)


# -- float32 optimizer updates: the same rounding as the NumPy set -----------------------------

UPDATES = {
    "sgd_update": ((), (0.01,)),
    "momentum_update": (("velocity",), (0.01, 0.9)),
    "adagrad_update": (("h",), (0.01, 1e-7)),
    "rmsprop_update": (("h",), (0.01, 0.99, 1e-7)),
    "adam_update": (("m", "v"), (0.001, 0.9, 0.999, 1e-8)),
}


@pytest.mark.parametrize("update", sorted(UPDATES))
def test_float32_optimizer_steps_round_as_the_numpy_set(emu_backend, update):
    """Five steps on 1000 elements: the kernels' float32 arithmetic is the NumPy set's,
    operation for operation (no fused multiply-add, complements such as 1 - beta2 rounded
    once from double), so the results agree to the last bit; 1 ulp is allowed for a
    square root or a division rounded differently by another math library."""
    state_names, scalars = UPDATES[update]
    rng = np.random.default_rng(11)
    param = rng.standard_normal(1000).astype(np.float32)
    states = [np.abs(rng.standard_normal(1000)).astype(np.float32) * 1e-3 for _ in state_names]
    ours = [param.copy(), *(s.copy() for s in states)]
    oracle = [param.copy(), *(s.copy() for s in states)]
    for _ in range(5):
        grad = rng.standard_normal(1000).astype(np.float32)
        getattr(emu_backend.kernels, update)(ours[0], grad, *ours[1:], *scalars)
        getattr(NP, update)(oracle[0], grad, *oracle[1:], *scalars)
    for name, got, want in zip(("param", *state_names), ours, oracle):
        assert got.dtype == np.float32
        assert got.dtype == want.dtype, name
        np.testing.assert_array_max_ulp(got, want, maxulp=1, dtype=np.float32)


# -- multi-tensor optimizer updates: one launch, the one-parameter step's values ----------------

MANY_UPDATES = {
    "sgd_update": (0, (0.05,)),
    "momentum_update": (1, (0.05, 0.9)),
    "adagrad_update": (1, (0.06, 1e-7)),
    "rmsprop_update": (1, (0.01, 0.99, 1e-7)),
    "adam_update": (2, (0.003, 0.9, 0.999, 1e-7)),
}
# A model's parameter shapes (SimpleConvNet's, and sizes that end inside a block of 256 threads).
MANY_SHAPES = [(30, 1, 5, 5), (30,), (4320, 100), (100,), (100, 10), (10,), (3, 7), (1,)]


def _many_case(emu_backend, update, dtype, shapes, seed):
    """(one-parameter arrays, multi-tensor arrays): param, grad and state columns, equal."""
    state_count, _ = MANY_UPDATES[update]
    rng = np.random.default_rng(seed)
    host = [[rng.standard_normal(shape).astype(dtype) for shape in shapes] for _ in range(2 + state_count)]
    host[2:] = [[np.abs(a) for a in column] for column in host[2:]]
    return tuple([[emu_backend.asarray(a) for a in column] for column in host] for _ in range(2))


def _assert_columns_equal(emu_backend, got, want):
    for column_got, column_want in zip(got, want):
        for a, b in zip(column_got, column_want):
            np.testing.assert_array_equal(emu_backend.to_numpy(a), emu_backend.to_numpy(b))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("update", sorted(MANY_UPDATES))
def test_one_launch_updates_every_parameter_as_the_one_parameter_step(emu_backend, update, dtype):
    state_count, scalars = MANY_UPDATES[update]
    one, many = _many_case(emu_backend, update, dtype, MANY_SHAPES, 3)
    for _ in range(2):  # the second step starts from updated state
        for arrays in zip(*one):
            getattr(emu_backend.kernels, update)(*arrays, *scalars)
        with cuda_set.counting() as work:
            getattr(emu_backend.kernels, f"{update}_many")(*many, *scalars)
        kind = cuda_set.CUDA_TYPES[np.dtype(dtype)]
        assert dict(work.by_name) == {f"kernel {update}_many<{kind}>": 1}
    _assert_columns_equal(emu_backend, many, one)


def test_more_parameters_than_a_table_holds_take_one_launch_per_table(emu_backend):
    count = cuda_set.MULTI_TENSOR_MAX + 8
    one, many = _many_case(emu_backend, "adam_update", np.float32, [(k % 5 + 1, 3) for k in range(count)], 4)
    scalars = MANY_UPDATES["adam_update"][1]
    for arrays in zip(*one):
        emu_backend.kernels.adam_update(*arrays, *scalars)
    with cuda_set.counting() as work:
        emu_backend.kernels.adam_update_many(*many, *scalars)
    assert work.by_name["kernel adam_update_many<float>"] == 2
    _assert_columns_equal(emu_backend, many, one)


def test_arrays_no_kernel_takes_and_a_parameter_named_twice_keep_the_one_parameter_steps(emu_backend):
    """A strided parameter view takes the one-parameter step, a float64 parameter among
    float32 ones its own launch, and a parameter named twice a second launch after the
    first, so that its two steps (with different gradients) follow one another in order."""
    kernels = emu_backend.kernels

    def arrays():
        rng = np.random.default_rng(6)
        base = emu_backend.asarray(rng.standard_normal((4, 6)).astype(np.float32))
        params = [
            base[:, ::2],
            emu_backend.asarray(rng.standard_normal(5)),
            emu_backend.asarray(np.ones(7, np.float32)),
        ]
        params.append(params[2])
        hs = [emu_backend.asarray(np.zeros(p.shape, p.dtype)) for p in params[:3]]
        grads = [emu_backend.asarray(np.full(p.shape, k + 1.0, p.dtype)) for k, p in enumerate(params)]
        return base, params, grads, [*hs, hs[2]]  # one state for the parameter named twice

    base_one, params_one, grads_one, hs_one = arrays()
    base_many, params_many, grads_many, hs_many = arrays()
    for arrays_one in zip(params_one, grads_one, hs_one):
        kernels.adagrad_update(*arrays_one, 0.1, 1e-7)
    with cuda_set.counting() as work:
        kernels.adagrad_update_many(params_many, grads_many, hs_many, 0.1, 1e-7)
    assert work.by_name["kernel adagrad_update_many<float>"] == 2
    assert work.by_name["kernel adagrad_update_many<double>"] == 1
    for a, b in ((base_many, base_one), *zip(params_many[1:], params_one[1:]), *zip(hs_many, hs_one)):
        np.testing.assert_array_equal(emu_backend.to_numpy(a), emu_backend.to_numpy(b))


def test_the_tensor_table_is_the_kernels_struct(emu_backend):
    """TENSOR_TABLE's bytes are optimizers.cu's TensorTable (whose size a static_assert fixes
    for every compiler): the emulation takes a structured scalar of its size and no other."""
    assert cuda_set.TENSOR_TABLE.itemsize == 1160
    launcher = emu_backend.kernels.launcher
    wrong = np.zeros((), dtype=np.dtype([("address", np.uint64, (4, 32))]))[()]
    with pytest.raises(TypeError, match="is a struct of 1160 bytes, got a scalar of 1024"):
        launcher.launch(cuda_set.OPTIMIZERS, "sgd_update_many<float>", (1,), (32,), (wrong, np.float32(1)))


# -- the bias gradient: a matrix-vector product --------------------------------------------------


def test_cuda_bias_grad_is_the_numpy_sets_product(emu_backend):
    """The CUDA sets take the generic bias gradient, ``ones(M) @ drows`` (cuBLAS on CuPy,
    which splits the long axis; a sum down axis 0 runs on a block or two of a GPU for
    a convolution's tall (N*OH*OW, FN) rows). On NumPy arrays it is the NumPy set's own
    product, to the bit; a sum down axis 0 rounds differently."""
    drows = np.random.default_rng(3).standard_normal((5000, 30)).astype(np.float32)
    got = emu_backend.kernels.bias_grad(drows)
    assert got.dtype == np.float32 and got.shape == (30,)
    np.testing.assert_array_equal(got, NP.bias_grad(drows))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_generic_bias_grad_on_the_array_api(dtype):
    strict = backend_or_skip(STRICT)
    drows = np.random.default_rng(4).standard_normal((700, 6)).astype(dtype)
    got = strict.to_numpy(GenericKernels(strict.xp).bias_grad(strict.asarray(drows)))
    assert got.dtype == dtype and got.shape == (6,)
    assert_close_to_sum(got, drows.astype(np.float64).sum(axis=0), np.abs(drows).sum(axis=0), sum_rtol(dtype, 700))
    empty = GenericKernels(strict.xp).bias_grad(strict.asarray(np.zeros((0, 6), dtype=dtype)))
    np.testing.assert_array_equal(strict.to_numpy(empty), np.zeros(6, dtype=dtype))


# -- the batch size cap of 32-bit indices ------------------------------------------------------


def _simple_convnet(backend: gpucnn.Backend):
    with gpucnn.use_backend(backend):
        model = build_model("simple_convnet", (1, 28, 28), 10, seed=0)
    model.optimizer = AdaGrad(lr=1e-3)
    return model


def test_max_batch_size_stays_within_the_kernels_element_limit(emu_backend):
    """SimpleConvNet: its convolution's output, 30*24*24 elements a sample, caps the batch
    at 124,275 on the CUDA set, where 80 GB alone would allow several times that."""
    model = _simple_convnet(emu_backend)
    limit = memory.kernel_batch_limit(model)
    assert limit == MAX_ELEMENTS // (30 * 24 * 24) == 124_275
    assert memory.max_batch_size(model, 80e9) == limit
    assert memory.max_batch_size(model, 1e9) < limit  # a small budget still decides
    numpy_model = _simple_convnet(backend_or_skip("numpy"))
    assert memory.kernel_batch_limit(numpy_model) is None  # 64-bit indices: memory alone decides
    assert memory.max_batch_size(numpy_model, 80e9) > limit


def test_the_cap_is_the_largest_batch_the_kernels_run(emu_backend, monkeypatch):
    """With the limit made small, a training step at the cap runs and one sample more is
    refused by the kernels: the memory model and the kernels count the same arrays. A
    parameter larger than the limit leaves no batch size at all."""
    # The largest parameter (Affine's 4320 x 100 weights) still fits; 25 samples of the
    # convolution's output (30*24*24 a sample) just fit, 26 do not. The first convolution
    # through im2col and the GEMM, whose rows are that output: computed directly, it
    # stores no array that large, and the cap is a bound that the kernels do not reach.
    monkeypatch.setattr(cuda_set, "MAX_ELEMENTS", 25 * 30 * 24 * 24 + 100)
    monkeypatch.setattr(emu_backend.kernels, "direct_conv_max_taps", 0)
    model = _simple_convnet(emu_backend)
    cap = memory.kernel_batch_limit(model)
    assert cap == 25
    rng = np.random.default_rng(0)
    for n in (cap, cap + 1):
        x = rng.random((n, 1, 28, 28), dtype=np.float32)
        t = rng.integers(0, 10, n)
        if n == cap:
            model.train_step(model.as_input(x), model.as_target(t))
        else:
            with pytest.raises(ValueError, match="too large for the CUDA kernels"):
                model.train_step(model.as_input(x), model.as_target(t))
    monkeypatch.setattr(cuda_set, "MAX_ELEMENTS", 4320 * 100 - 1)
    assert memory.kernel_batch_limit(model) == 0
    assert memory.max_batch_size(model, 80e9) == 0


def test_out_of_memory_advice_stays_within_the_kernels_element_limit(emu_backend, monkeypatch):
    model = _simple_convnet(emu_backend)
    monkeypatch.setattr(memory, "_available_bytes", lambda backend: int(80e9))
    batch = 500_000
    with pytest.raises(memory.OutOfMemoryError) as raised:
        with memory.translate_out_of_memory(model, batch, "fit"):
            raise MemoryError("out of memory")
    assert 1 <= raised.value.suggested_batch_size <= memory.kernel_batch_limit(model)
    assert math.isfinite(raised.value.needed_bytes)
