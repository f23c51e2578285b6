"""Layers, written once against the array API and the backend's kernel set (NCHW).

Every layer has ``forward(x, train=True)`` and ``backward(dout)``; loss layers have
``forward(x, t)`` and ``backward(dout=1)``. What a layer holds is declared once:

* trainable arrays are registered with ``add_param`` and live in ``layer.params``, their
  gradients in ``layer.grads`` (same keys), which is all an optimizer sees; the book's
  names ``W``, ``b``, ``dW``, ``db`` are properties over those dicts;
* non-trainable arrays that travel with the layer (BatchNormalization's running
  statistics) are registered with ``add_state`` and live in ``layer.state``;
* arrays kept from forward for backward are named in the class's ``cache_names``, set to
  None on construction and by ``clear_cache()``.

``state_dict()`` / ``load_state_dict()`` read and write the registered arrays; saving,
loading and ``to()`` go through them. Each layer also answers its own memory terms
(``memory()``, see :mod:`gpucnn.memory`).

A layer is bound to the backend that was current when it was made (``layer.backend``);
it refuses arrays of any other backend instead of copying them silently, and never
asks which backend it is on: it calls ``xp`` and ``backend.kernels``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .backend import Backend, get_backend
from .initializers import get_initializer
from .kernels import check_pool_pad, output_hw, winograd_tiles

__all__ = [
    "SUPPORTED_DTYPES",
    "Affine",
    "AvgPooling",
    "BatchNormalization",
    "Convolution",
    "Dropout",
    "Flatten",
    "GemmMemory",
    "Layer",
    "LossLayer",
    "MaxPooling",
    "MemoryTerms",
    "ReLU",
    "Relu",
    "Sigmoid",
    "SigmoidWithLoss",
    "SoftmaxWithLoss",
    "Step",
]

Array = Any
Shape = tuple[int, ...]

# Bytes per element of cached arrays whose dtype does not follow the model's.
ARGMAX_BYTES = 4  # int32 window-local indices of max pooling
MASK_BYTES = 1  # ReLU's boolean mask


# The dtypes layers and models compute in; every kernel set has both.
SUPPORTED_DTYPES = ("float32", "float64")


def xp_dtype(xp: Any, spec: Any) -> Any:
    """The namespace's dtype object for ``spec`` (a name, a NumPy dtype or an xp dtype),
    which must be one of :data:`SUPPORTED_DTYPES`; None stays None."""
    if spec is None:
        return None
    name = dtype_name(spec)
    if name not in SUPPORTED_DTYPES:
        raise ValueError(f"dtype {name!r} is not supported: gpucnn computes in {' or '.join(SUPPORTED_DTYPES)}")
    return getattr(xp, name)


def dtype_name(dtype: Any) -> str:
    """``"float32"`` for float32 whatever spells it: a name (``"f4"``), a NumPy dtype or an xp dtype."""
    try:
        return np.dtype(dtype).name
    except TypeError:
        return str(dtype).rsplit(".", 1)[-1]


def _integer(value: Any, what: str, minimum: int) -> int:
    """``value`` as an ``int``: an integer (not a bool, a float or a string) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{what} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {value}")
    return int(value)


def _nbytes(batch_size: int, shape: Shape, itemsize: int) -> int:
    """Bytes of a (batch_size, *shape) array."""
    return batch_size * math.prod(shape) * itemsize


@dataclass(frozen=True)
class MemoryTerms:
    """What one step (a layer or a fused step) holds at one batch size, in bytes.

    :mod:`gpucnn.memory` turns these terms into the peak of a training step.

    Attributes:
        output: the step's output array.
        kept: arrays kept from forward to backward (the step's cache), im2col's columns included.
        columns: the part of ``kept`` that is im2col's columns.
        forward: the peak of arrays alive only while forward runs, the output included.
        backward: the peak of arrays alive only while backward runs (the input gradient
            included, the incoming gradient not).
        output_in_cache: whether ``kept`` includes the output array itself.
        keeps_input: whether the cache holds the input array (or a view of it).
        view: whether the output is a view of the input (whoever keeps the output keeps the input).
        dropped: the part of ``kept`` that the step's forward lets go before it makes it
            again: a loop's next forward does not hold the two at once.
        released: the part of ``kept`` that the step's backward lets go (in training): not
            alive while the steps before it run, in backward or in the next forward.
    """

    output: int
    kept: int = 0
    columns: int = 0
    forward: int = 0
    backward: int = 0
    output_in_cache: bool = False
    keeps_input: bool = False
    view: bool = False
    dropped: int = 0
    released: int = 0


@dataclass(frozen=True)
class GemmMemory:
    """The arrays of a layer computed as one GEMM (Affine, Convolution), in bytes.

    Attributes:
        columns: im2col's columns, kept for backward (0 for Affine).
        rows: the GEMM output, (N*OH*OW, FN) or (N, units).
        input_grad: backward's arrays for the input gradient (dcol and dx); 0 when the
            input needs no gradient.
        keeps_input: whether the layer keeps (a view of) its input for backward.
        output_is_rows: whether the output has the rows' layout (no NCHW copy).
        block_columns: one block's columns, made again in backward, when a convolution
            passes through im2col in blocks of images (then ``columns`` is 0).
        products: a Winograd convolution's 16 GEMM products (forward) or their gradient
            (backward), (16, T, FN); then ``columns`` is the transformed input kept and
            ``input_grad`` holds its gradient (16, T, C) and dx.
        dropped_columns: the part of ``columns`` that a forward lets go before it makes
            its own (see ``MemoryTerms.dropped``).
        released_columns: the part of ``columns`` that backward lets go before it makes
            dcol, which then takes their memory (``input_grad`` counts the rest).
    """

    columns: int
    rows: int
    input_grad: int
    keeps_input: bool
    output_is_rows: bool
    block_columns: int = 0
    products: int = 0
    dropped_columns: int = 0
    released_columns: int = 0


class Step:
    """Anything a model runs in order: a layer, or a fused step over several layers
    (:mod:`gpucnn.fused`).

    The contract:

    * ``forward(x, train=True)`` returns the output;
    * ``backward(dout)`` returns the input gradient, or None when nothing upstream needs
      it, and leaves each parameter's gradient in its layer's ``grads``;
    * ``clear_cache()`` drops the arrays kept from the last forward (named once, in
      ``cache_names``);
    * ``memory(batch_size, itemsize, training)`` returns the step's :class:`MemoryTerms`;
    * ``layers`` is the tuple of layers the step runs, in order.
    """

    cache_names: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.clear_cache()

    @property
    def layers(self) -> tuple[Layer, ...]:
        raise NotImplementedError

    def forward(self, x: Array, train: bool = True) -> Array:
        raise NotImplementedError

    def backward(self, dout: Array) -> Array | None:
        raise NotImplementedError

    def clear_cache(self) -> None:
        """Drop the arrays kept from the last forward pass."""
        for name in self.cache_names:
            setattr(self, name, None)

    def memory(self, batch_size: int, itemsize: int, training: bool) -> MemoryTerms:
        """The step's memory terms at ``batch_size`` (see :class:`MemoryTerms`)."""
        raise NotImplementedError(
            f"{type(self).__name__} does not state its memory terms: define "
            f"{type(self).__name__}.memory(batch_size, itemsize, training) returning a gpucnn.layers.MemoryTerms, "
            f"so that gpucnn.memory can estimate a model that uses it"
        )


class Layer(Step):
    """Base class: backend binding, dtype rules, registered arrays, lazy building."""

    def __init__(self, *, dtype: Any = None, name: str | None = None) -> None:
        super().__init__()
        self.backend: Backend = get_backend()
        self.dtype = xp_dtype(self.backend.xp, dtype)
        self.name = name
        self.params: dict[str, Array] = {}  # trainable arrays (add_param)
        self.state: dict[str, Array] = {}  # non-trainable arrays saved with the layer (add_state)
        self.grads: dict[str, Array] = {}
        self.input_shape: Shape | None = None  # one sample's shape, without the batch axis
        self.output_shape: Shape | None = None
        # The first layer of a model needs no input gradient: the model switches it off.
        self.needs_input_grad = True

    # -- construction ------------------------------------------------------------

    @property
    def xp(self) -> Any:
        return self.backend.xp

    @property
    def layers(self) -> tuple[Layer, ...]:
        return (self,)

    @property
    def built(self) -> bool:
        return self.input_shape is not None

    def build(self, input_shape: Shape, rng: np.random.Generator | None = None, dtype: Any = None) -> Shape:
        """Fix the input shape (one sample), create parameters, return the output shape."""
        if self.dtype is None:
            self.dtype = xp_dtype(self.xp, dtype if dtype is not None else "float32")
        input_shape = tuple(int(d) for d in input_shape)
        if any(d < 1 for d in input_shape):
            raise ValueError(f"{type(self).__name__}: input shape {input_shape} has a size below 1")
        self.output_shape = self._build(input_shape, rng if rng is not None else np.random.default_rng())
        self.input_shape = input_shape
        return self.output_shape

    def _build(self, input_shape: Shape, rng: np.random.Generator) -> Shape:
        return input_shape

    def _as_own(self, value: Any) -> Array:
        """``value`` (a host array, Python data or an array of this backend) in this layer's
        backend and dtype."""
        return self.backend.asarray(value, dtype=self.dtype)

    def add_param(self, name: str, value: Any) -> Array:
        """Register a trainable array under ``name`` (cast to the layer's backend and dtype)."""
        if name in self.state:
            raise ValueError(f"{type(self).__name__}: {name!r} is already registered as state")
        self.params[name] = self._as_own(value)
        return self.params[name]

    def add_state(self, name: str, value: Any) -> Array:
        """Register a non-trainable array under ``name``: saved, loaded and moved with the layer."""
        if name in self.params:
            raise ValueError(f"{type(self).__name__}: {name!r} is already registered as a parameter")
        self.state[name] = self._as_own(value)
        return self.state[name]

    def state_dict(self) -> dict[str, Array]:
        """``{name: array}`` of every registered array, parameters then state (the layer's own arrays)."""
        return {**self.params, **self.state}

    def load_state_dict(self, arrays: Mapping[str, Any]) -> None:
        """Replace every registered array by a copy of ``arrays[name]`` (host arrays or
        arrays of this backend), in this layer's dtype; names and shapes must match."""
        own = self.state_dict()
        who = self.name or type(self).__name__
        if set(arrays) != set(own):
            raise ValueError(f"{who}: arrays {sorted(arrays)} do not match {sorted(own)}")
        for name, current in own.items():
            shape = tuple(np.shape(arrays[name]))
            if shape != tuple(current.shape):
                raise ValueError(f"{who}: {name!r} has shape {shape}, the layer needs {tuple(current.shape)}")
        for name in own:
            store = self.params if name in self.params else self.state
            value = arrays[name]
            if self.backend.is_array(value):
                store[name] = self._as_own(self.xp.asarray(value, copy=True))
            else:  # a host array: copied here, before the backend may wrap it without a copy
                store[name] = self._as_own(np.array(value) if isinstance(value, np.ndarray) else value)

    def to(self, backend: str | Backend) -> Layer:
        """Move the registered arrays to ``backend`` (in place); returns the layer."""
        target = get_backend(backend)
        arrays = {name: self.backend.to_numpy(value) for name, value in self.state_dict().items()}
        self.dtype = xp_dtype(target.xp, dtype_name(self.dtype)) if self.dtype is not None else None
        self.backend = target
        self.grads = {}
        self.clear_cache()
        self.load_state_dict(arrays)
        return self

    def reseed(self, seed: int | None) -> None:
        """Restart the layer's random stream from ``seed`` (a no-op for layers that draw none)."""

    # -- checks -----------------------------------------------------------------------

    def check_input(self, x: Array, ndim: int | None = None) -> None:
        """Refuse foreign arrays and wrong ranks, build lazily, then refuse a dtype mismatch."""
        what = f"{type(self).__name__}.forward"
        self.backend.check_array(x, what)
        if ndim is not None and x.ndim != ndim:
            raise ValueError(f"{what} expects a {ndim}-D array (N, C, H, W), got shape {tuple(x.shape)}")
        if not self.built:
            self.build(tuple(x.shape[1:]))
        if self.params and x.dtype != self.dtype:
            raise TypeError(
                f"{what}: input is {dtype_name(x.dtype)} but the parameters are {dtype_name(self.dtype)}; "
                f"cast the input (models do it for you) or build the layer with dtype={dtype_name(x.dtype)!r}"
            )

    # -- interface ------------------------------------------------------------------

    def __call__(self, x: Array, train: bool = True) -> Array:
        return self.forward(x, train)

    def count_params(self) -> int:
        return sum(math.prod(p.shape) for p in self.params.values())

    def config(self) -> dict:
        """Hyperparameters that rebuild the layer (saved with a model)."""
        return {}

    def _bytes_in(self, batch_size: int, itemsize: int) -> int:
        return _nbytes(batch_size, self.input_shape, itemsize)

    def _bytes_out(self, batch_size: int, itemsize: int) -> int:
        return _nbytes(batch_size, self.output_shape, itemsize)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


def _pair(v: int | tuple[int, int], what: str) -> tuple[int, int]:
    """An int or a pair (h, w) of ints >= 1, as a pair."""
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{what} must be an int or a pair (h, w), got {v!r}")
        return _integer(v[0], what, 1), _integer(v[1], what, 1)
    v = _integer(v, what, 1)
    return v, v


class _GemmLayer(Layer):
    """A layer computed as one GEMM plus a bias: weight ``W``, bias ``b``, built lazily or
    from explicit arrays.

    Its forward is ``rows_to_output(gemm_rows(x) + b)`` and its backward
    ``backward_rows(output_to_rows(dout))``; fused steps (:mod:`gpucnn.fused`) call the
    same four methods with their own work in between.
    """

    def __init__(self, *, W=None, b=None, weight_init: Any = "he", dtype: Any = None, name: str | None = None):
        super().__init__(dtype=dtype, name=name)
        self.weight_init = weight_init
        self._explicit = W is not None
        if W is not None:
            W = W if self.backend.is_array(W) else np.asarray(W)
            if self.dtype is None:
                if dtype_name(W.dtype) not in SUPPORTED_DTYPES:
                    raise ValueError(
                        f"{type(self).__name__}: W is {dtype_name(W.dtype)}, but gpucnn computes in "
                        f"{' or '.join(SUPPORTED_DTYPES)}: pass W.astype('float32') or give dtype"
                    )
                self.dtype = xp_dtype(self.xp, dtype_name(W.dtype))
            self.add_param("W", W)
            fan_out = W.shape[0] if W.ndim == 4 else W.shape[1]
            self.add_param("b", np.zeros(fan_out) if b is None else b)

    W = property(lambda self: self.params["W"], lambda self, v: self.params.__setitem__("W", v))
    b = property(lambda self: self.params["b"], lambda self, v: self.params.__setitem__("b", v))
    dW = property(lambda self: self.grads.get("W"))
    db = property(lambda self: self.grads.get("b"))

    def gemm_rows(self, x: Array) -> Array:
        """Check ``x``, keep what backward needs, and return the GEMM of ``x`` with ``W``
        without the bias: (N*OH*OW, FN) rows for a convolution, (N, units) for Affine."""
        raise NotImplementedError

    def rows_to_output(self, rows: Array) -> Array:
        """GEMM rows (of the last ``gemm_rows``) in the output's layout."""
        raise NotImplementedError

    def output_to_rows(self, dout: Array) -> Array:
        """An output-shaped gradient in the rows' layout."""
        raise NotImplementedError

    def backward_rows(self, drows: Array) -> Array | None:
        """Set ``grads`` from the gradient of the GEMM rows; return dx, or None when the
        input needs no gradient."""
        raise NotImplementedError

    def gemm_memory(self, batch_size: int, itemsize: int) -> GemmMemory:
        """The sizes of the GEMM's arrays at ``batch_size`` (see :class:`GemmMemory`)."""
        raise NotImplementedError

    def forward(self, x, train=True):
        return self.rows_to_output(self.gemm_rows(x) + self.b)

    def backward(self, dout):
        return self.backward_rows(self.output_to_rows(dout))


class Convolution(_GemmLayer):
    """2-D convolution (cross-correlation) through im2col and one GEMM.

    ``Convolution(filter_num, filter_size, stride=1, pad=0)`` with lazy weights, or the
    book's ``Convolution(W=W, b=b, stride=1, pad=0)`` with ``W`` (FN, C, FH, FW), ``b`` (FN,).
    Input (N, C, H, W) → output (N, FN, OH, OW).

    ``pad`` is the number of zero rows and columns on every side, or as Keras writes it:
    ``"valid"`` (0) or ``"same"`` (``filter_size // 2``, so that OH = H and OW = W; for a
    square, odd filter at stride 1, the only case where that padding is symmetric).
    ``self.pad`` is the number.

    A 3x3 filter at stride 1 runs through Winograd F(2x2, 3x3) when the kernel set says it
    is faster (``prefers_winograd``): 16 GEMMs over transformed 4x4 input tiles instead of
    im2col's one, with 2.25 times fewer multiplications; forward keeps the transformed
    input (16*T*C values, T = N*ceil(OH/2)*ceil(OW/2) tiles, against im2col's 9*N*OH*OW*C)
    and the transformed filters. Its output and gradients equal im2col's to float rounding
    (the transforms add and subtract inputs before the products: an output's error bound
    is a few times that of the direct sum of its products, see ``tests/test_winograd.py``),
    and are exact gradients of the Winograd forward.

    Training passes through im2col in blocks of images when the kernel set asks for it
    (``conv_block_bytes``, the most bytes of one block's column matrix): forward keeps the
    input instead of the columns, and backward computes each block's columns again, its
    share of ``dW`` (added in block order) and its rows of ``dx`` (col2im of that block's
    ``dcol``). The whole batch's columns and ``dcol`` never exist. The output and ``dx``
    are the whole-batch GEMM's rows, each computed from the same values; ``dW`` is a sum
    of per-block products, equal to the whole-batch product to float rounding.
    """

    # _col: the whole batch's columns, or _x: the input (blocks of images), or _v and _u: the
    # Winograd transforms of the input and the filters; see the class docstring
    cache_names = ("_x_shape", "_col", "_x", "_v", "_u", "_rows_shape")

    def __init__(
        self,
        filter_num: int | None = None,
        filter_size: int | tuple[int, int] | None = None,
        stride: int = 1,
        pad: int | str = 0,
        *,
        W=None,
        b=None,
        weight_init: Any = "he",
        dtype: Any = None,
        name: str | None = None,
    ):
        super().__init__(W=W, b=b, weight_init=weight_init, dtype=dtype, name=name)
        if W is not None:
            if np.ndim(W) != 4:
                raise ValueError(f"Convolution W must be 4-D (FN, C, FH, FW), got shape {tuple(W.shape)}")
            filter_num, filter_size = W.shape[0], (W.shape[2], W.shape[3])
        if filter_num is None or filter_size is None:
            raise ValueError("Convolution needs filter_num and filter_size, or explicit W")
        self.filter_num = _integer(filter_num, "Convolution filter_num", 1)
        self.filter_size = _pair(filter_size, "Convolution filter_size")
        self.stride = _integer(stride, "Convolution stride", 1)
        self.pad = self._pad_number(pad)

    def _pad_number(self, pad: int | str) -> int:
        """``pad`` as a number of zero rows/columns per side (see the class docstring)."""
        if not isinstance(pad, str):
            return _integer(pad, "Convolution pad", 0)
        if pad == "valid":
            return 0
        if pad != "same":
            raise ValueError(f'Convolution pad must be a number, "same" or "valid", got {pad!r}')
        fh, fw = self.filter_size
        if fh != fw or fh % 2 == 0 or self.stride != 1:
            raise ValueError(
                f'Convolution pad="same" needs a square, odd filter at stride 1, got filter_size '
                f"{self.filter_size} and stride {self.stride}: give pad as a number"
            )
        return fh // 2

    def _build(self, input_shape, rng):
        if len(input_shape) != 3:
            raise ValueError(f"Convolution expects (C, H, W) samples, got shape {input_shape}")
        c, h, w = input_shape
        fh, fw = self.filter_size
        if self._explicit:
            if self.W.shape[1] != c:
                raise ValueError(
                    f"Convolution: input has {c} channels but W expects {self.W.shape[1]} "
                    f"(W shape {tuple(self.W.shape)})"
                )
        else:
            fan_in, fan_out = c * fh * fw, self.filter_num * fh * fw
            init = get_initializer(self.weight_init)
            self.add_param("W", init(rng, (self.filter_num, c, fh, fw), fan_in, fan_out))
            self.add_param("b", np.zeros(self.filter_num))
        oh, ow = output_hw(h, w, fh, fw, self.stride, self.pad)
        return (self.filter_num, oh, ow)

    def check_input(self, x: Array, ndim: int | None = 4) -> None:
        """The checks of every forward: the input's backend, rank, dtype and channel count."""
        super().check_input(x, ndim)
        c, wc = x.shape[1], self.W.shape[1]
        if c != wc:
            raise ValueError(f"Convolution: input has {c} channels but W expects {wc} (W shape {tuple(self.W.shape)})")

    def output_nhw(self, x_shape: Shape) -> tuple[int, int, int]:
        """(N, OH, OW) of the output for an input of shape ``x_shape`` (N, C, H, W): the GEMM
        rows are (N*OH*OW, FN) in (n, oh, ow) order."""
        n, _, h, w = x_shape
        fh, fw = self.filter_size
        return (n, *output_hw(h, w, fh, fw, self.stride, self.pad))

    def winograd(self) -> bool:
        """Whether this layer runs through Winograd F(2x2, 3x3) (see the class docstring):
        when the kernel set prefers it, unless it asks for im2col in blocks of images
        (``conv_block_bytes``)."""
        kernels = self.backend.kernels
        fn, c, fh, fw = self.W.shape
        return kernels.conv_block_bytes is None and kernels.prefers_winograd(c, fn, fh, fw, self.stride)

    def winograd_whole(self) -> bool:
        """Whether a Convolution -> ReLU (-> 2x2 max pooling at stride 2) step over this
        layer runs through Winograd as one kernel operation per pass, the kernel set's
        ``winograd_conv_*`` operations (``winograd_whole_layer``), instead of
        :meth:`winograd_forward` and :meth:`winograd_backward`."""
        return self.winograd() and self.backend.kernels.winograd_whole_layer

    def winograd_whole_backward_bytes(self, batch_size: int, itemsize: int) -> int:
        """The arrays of a ``winograd_conv_*`` backward: dx (when the input needs a
        gradient), dU's partial sums (one per ``winograd_group`` images) and each row of
        tiles' bias gradient; beside them each thread holds one band's V, dM and dV (at most
        the kernel set's ``winograd_band_bytes``, or one row of tiles), not counted."""
        c, fn = self.input_shape[0], self.filter_num
        th, _ = winograd_tiles(*self.output_shape[1:])
        groups = -(-batch_size // self.backend.kernels.winograd_group)
        dx = self._bytes_in(batch_size, itemsize) if self.needs_input_grad else 0
        return dx + (groups * 16 * c * fn + batch_size * th * fn) * itemsize

    def block_images(self, batch_size: int, itemsize: int) -> int | None:
        """Images per block of the training passes through im2col (see the class docstring),
        or None when the kernel set takes the whole batch in one call."""
        budget = self.backend.kernels.conv_block_bytes
        if budget is None:
            return None
        fh, fw = self.filter_size
        per_image = math.prod(self.output_shape[1:]) * self.input_shape[0] * fh * fw * itemsize
        return max(1, min(batch_size, budget // per_image))

    def _blocks(self, n: int, block: int):
        """(first image, end image, first row, end row) of each block, in order."""
        ohw = self._rows_shape[1] * self._rows_shape[2]
        for i in range(0, n, block):
            j = min(i + block, n)
            yield i, j, i * ohw, j * ohw

    def gemm_rows(self, x):
        """im2col and the GEMM, no bias: rows (N*OH*OW, FN) in (n, oh, ow) order."""
        self.check_input(x)
        xp, kernels = self.xp, self.backend.kernels
        fn, wc, fh, fw = self.W.shape
        w_t = xp.matrix_transpose(xp.reshape(self.W, (fn, wc * fh * fw)))
        self._x_shape, self._rows_shape = tuple(x.shape), self.output_nhw(x.shape)
        n = x.shape[0]
        if self.winograd():
            return self._winograd_rows(x)
        self._v = self._u = None  # the caches of the other ways, which backward would take
        block = self.block_images(n, xp.finfo(x.dtype).bits // 8)
        if block is None:
            self._x = None
            # The last columns go once the new ones are made: freed first, they would leave the
            # top of the C heap free, which the allocator hands back to the system at a step's
            # end, to be faulted in again (benchmarks/results/numpy_notes.md).
            self._col = kernels.im2col(x, fh, fw, self.stride, self.pad)
            return self._col @ w_t
        self._col, self._x = None, x
        rows = xp.empty((n * self._rows_shape[1] * self._rows_shape[2], fn), dtype=x.dtype)
        for i, j, r0, r1 in self._blocks(n, block):
            rows[r0:r1, :] = kernels.im2col(x[i:j, ...], fh, fw, self.stride, self.pad) @ w_t
        return rows

    def winograd_forward(self, x, epilogue: Any, keep: bool = True) -> None:
        """The Winograd forward (see the class docstring) over blocks of images
        (``winograd_block_images``): ``epilogue(m, i, j)`` takes each block's GEMM products
        M (16, T, FN) of images ``i:j`` and makes of them what the caller needs (the GEMM
        rows, or the pooled output of a fused step). Keeps each block's transformed input
        and the transformed filters for :meth:`winograd_backward` when ``keep``."""
        self.check_input(x)
        xp, kernels = self.xp, self.backend.kernels
        self._x_shape, self._rows_shape = tuple(x.shape), self.output_nhw(x.shape)
        n = x.shape[0]
        self._col = self._x = None  # the caches of the other ways, which backward would take
        block = self.winograd_block_images(n, xp.finfo(x.dtype).bits // 8)
        self._u = kernels.winograd_filter(self.W)
        self._v = [] if keep else None
        for i in range(0, n, block):
            j = min(i + block, n)
            v = kernels.winograd_input(x if j - i == n else x[i:j, ...], self.pad)
            epilogue(xp.matmul(v, self._u), i, j)
            if keep:
                self._v.append(v)
        if not keep:
            self._u = None

    def winograd_backward(self, products_grad: Any) -> Array | None:
        """dW (into ``grads``) and dx through Winograd, block by block as
        :meth:`winograd_forward` ran: ``products_grad(i, j)`` gives the gradient dM
        (16, T, FN) of images ``i:j``'s products. dW's transform is summed over the blocks
        in order. Returns dx, or None when the input needs no gradient."""
        xp, kernels = self.xp, self.backend.kernels
        n, c, h, w = self._x_shape
        block = self.winograd_block_images(n, xp.finfo(self._u.dtype).bits // 8)  # as the forward's
        dx = None
        u_t, du = xp.matrix_transpose(self._u), None
        for k, v in enumerate(self._v):
            i, j = k * block, min(k * block + block, n)
            dm = products_grad(i, j)
            part = xp.matmul(xp.matrix_transpose(v), dm)
            du = part if du is None else du + part
            if not self.needs_input_grad:
                continue
            dx_block = kernels.winograd_input_grad(xp.matmul(dm, u_t), (j - i, c, h, w), self.pad)
            if j - i == n:
                dx = dx_block
            else:
                if dx is None:
                    dx = xp.empty(self._x_shape, dtype=dm.dtype)
                dx[i:j, ...] = dx_block
        self.grads["W"] = kernels.winograd_filter_grad(du)
        return dx

    def _winograd_rows(self, x):
        """The GEMM rows through :meth:`winograd_forward`."""
        kernels = self.backend.kernels
        n, oh, ow = self.output_nhw(x.shape)
        rows = []

        def to_rows(m, i, j):
            rows.append(kernels.winograd_output(m, j - i, oh, ow))

        self.winograd_forward(x, to_rows)
        return rows[0] if len(rows) == 1 else self.xp.concat(rows, axis=0)

    def winograd_block_images(self, batch_size: int, itemsize: int) -> int:
        """Images per block of the Winograd passes: as many as keep one block's GEMM
        products (16, T, FN) within the kernel set's ``winograd_block_bytes`` (the whole
        batch when that is None), at least one."""
        budget = self.backend.kernels.winograd_block_bytes
        if budget is None:
            return batch_size
        per_image = 16 * math.prod(winograd_tiles(*self.output_shape[1:])) * self.filter_num * itemsize
        return max(1, min(batch_size, budget // per_image))

    def rows_to_output(self, rows):
        return self.backend.kernels.rows_to_nchw(rows, *self._rows_shape)

    def output_to_rows(self, dout):
        return self.backend.kernels.nchw_to_rows(dout)

    def backward_rows(self, drows):
        xp, kernels = self.xp, self.backend.kernels
        fn, c, fh, fw = self.W.shape
        self.grads["b"] = kernels.bias_grad(drows)
        if self._v is not None:
            n, oh, ow = self._rows_shape
            return self.winograd_backward(
                lambda i, j: kernels.winograd_output_grad(drows[i * oh * ow : j * oh * ow, :], j - i, oh, ow)
            )
        if self._x is None:  # the whole batch's columns
            if self._col is None:
                raise RuntimeError(
                    f"{self.name or type(self).__name__}: backward needs a forward first (a backward that made "
                    "the input gradient has used the im2col columns of the last forward)"
                )
            self.grads["W"] = xp.reshape(kernels.weight_grad(drows, self._col), (fn, c, fh, fw))
            if not self.needs_input_grad:
                return None
            # Their last use: dropped before the input gradient, whose column gradient, the
            # same size, then takes their memory (no fresh pages to fault in at every step).
            self._col = None
            return kernels.conv_input_grad(drows, self.W, self._x_shape, self.stride, self.pad)
        n, _, h, w = self._x_shape
        dx = xp.empty(self._x_shape, dtype=drows.dtype) if self.needs_input_grad else None
        dw = None
        for i, j, r0, r1 in self._blocks(n, self.block_images(n, xp.finfo(drows.dtype).bits // 8)):
            block_rows = drows[r0:r1, :]
            col = kernels.im2col(self._x[i:j, ...], fh, fw, self.stride, self.pad)
            part = kernels.weight_grad(block_rows, col)
            dw = part if dw is None else dw + part
            if dx is not None:
                dx[i:j, ...] = kernels.conv_input_grad(block_rows, self.W, (j - i, c, h, w), self.stride, self.pad)
        self.grads["W"] = xp.reshape(dw, (fn, c, fh, fw))
        return dx

    def gemm_memory(self, batch_size, itemsize):
        fh, fw = self.filter_size
        c, fn = self.input_shape[0], self.filter_num
        if self.winograd():
            tiles = math.prod(winograd_tiles(*self.output_shape[1:]))  # per image
            block = self.winograd_block_images(batch_size, itemsize)
            x_bytes = self._bytes_in(batch_size, itemsize)
            return GemmMemory(
                columns=16 * (batch_size * tiles + fn) * c * itemsize,  # V and U
                rows=self._bytes_out(batch_size, itemsize),
                # a block's dV (16, T, C) and its dx, beside the whole dx
                input_grad=(16 * tiles * c * itemsize + x_bytes // batch_size) * block + x_bytes
                if self.needs_input_grad
                else 0,
                keeps_input=False,
                output_is_rows=False,
                products=16 * block * tiles * fn * itemsize,  # a block's M, or dM and dU
                dropped_columns=16 * batch_size * tiles * c * itemsize,  # winograd_forward lets V go first
            )
        per_image = math.prod(self.output_shape[1:]) * c * fh * fw * itemsize
        block = self.block_images(batch_size, itemsize)
        blocked = block is not None
        columns = (block if blocked else batch_size) * per_image
        x_bytes = self._bytes_in(batch_size, itemsize)
        # col2im's padded sum beside dx (the NumPy set's), per image
        c, h, w = self.input_shape
        per_image_dx = (c * (h + 2 * self.pad) * (w + 2 * self.pad) * itemsize) + x_bytes // batch_size
        # whole batch: dcol in the place of the columns, which backward_rows drops first, and
        # the padded sum and dx; blocks: one block's dcol (its columns are counted apart),
        # padded sum and dx, beside the whole dx
        if not self.needs_input_grad:
            input_grad = 0
        elif blocked:
            input_grad = columns + block * per_image_dx + x_bytes
        else:
            input_grad = batch_size * per_image_dx
        return GemmMemory(
            columns=0 if blocked else columns,
            rows=self._bytes_out(batch_size, itemsize),
            input_grad=input_grad,
            keeps_input=blocked,
            output_is_rows=False,
            block_columns=columns if blocked else 0,
            released_columns=columns if self.needs_input_grad and not blocked else 0,
        )

    def memory(self, batch_size, itemsize, training):
        gemm = self.gemm_memory(batch_size, itemsize)
        out = self._bytes_out(batch_size, itemsize)
        return MemoryTerms(
            output=out,
            kept=gemm.columns,
            columns=gemm.columns,
            # the GEMM rows (a block's columns or the Winograd products beside them), + bias, the NCHW copy
            forward=2 * gemm.rows + out + gemm.block_columns + gemm.products,
            # the rows' gradient, then a block's columns, dcol and dx (or dM, dV and dx)
            backward=gemm.rows + gemm.block_columns + gemm.products + gemm.input_grad,
            keeps_input=gemm.keeps_input,
            dropped=gemm.dropped_columns,
            released=gemm.released_columns,
        )

    def config(self):
        return {"filter_num": self.filter_num, "filter_size": self.filter_size, "stride": self.stride, "pad": self.pad}


class _Pooling(Layer):
    cache_names = ("_x_shape",)

    def __init__(
        self, pool_size: int | tuple[int, int] = 2, stride: int | None = None, pad: int = 0, *, name: str | None = None
    ):
        super().__init__(name=name)
        what = type(self).__name__
        self.pool_size = _pair(pool_size, f"{what} pool_size")
        self.stride = _integer(stride, f"{what} stride", 1) if stride is not None else self.pool_size[0]
        self.pad = _integer(pad, f"{what} pad", 0)
        if stride is None and self.pool_size[0] != self.pool_size[1]:
            raise ValueError(f"pool_size {self.pool_size} is not square: give the stride explicitly")
        check_pool_pad(*self.pool_size, self.pad)

    def _build(self, input_shape, rng):
        if len(input_shape) != 3:
            raise ValueError(f"{type(self).__name__} expects (C, H, W) samples, got shape {input_shape}")
        c, h, w = input_shape
        ph, pw = self.pool_size
        return (c, *output_hw(h, w, ph, pw, self.stride, self.pad))

    def config(self):
        return {"pool_size": self.pool_size, "stride": self.stride, "pad": self.pad}


class MaxPooling(_Pooling):
    """Max pooling; ``stride`` defaults to the pool size. (N, C, H, W) → (N, C, OH, OW)."""

    cache_names = ("_x_shape", "_argmax")

    def forward(self, x, train=True):
        self.check_input(x, ndim=4)
        ph, pw = self.pool_size
        out, argmax = self.backend.kernels.maxpool_forward(x, ph, pw, self.stride, self.pad)
        self._x_shape, self._argmax = tuple(x.shape), argmax
        return out

    def backward(self, dout):
        ph, pw = self.pool_size
        return self.backend.kernels.maxpool_backward(dout, self._argmax, self._x_shape, ph, pw, self.stride, self.pad)

    def memory(self, batch_size, itemsize, training):
        return MemoryTerms(
            output=self._bytes_out(batch_size, itemsize),
            kept=_nbytes(batch_size, self.output_shape, ARGMAX_BYTES),  # the argmax
            forward=self._bytes_out(batch_size, itemsize),
            backward=self._bytes_in(batch_size, itemsize),
        )


class AvgPooling(_Pooling):
    """Average pooling, pad cells counted in the divisor. (N, C, H, W) → (N, C, OH, OW)."""

    def forward(self, x, train=True):
        self.check_input(x, ndim=4)
        ph, pw = self.pool_size
        self._x_shape = tuple(x.shape)
        return self.backend.kernels.avgpool_forward(x, ph, pw, self.stride, self.pad)

    def backward(self, dout):
        ph, pw = self.pool_size
        return self.backend.kernels.avgpool_backward(dout, self._x_shape, ph, pw, self.stride, self.pad)

    def memory(self, batch_size, itemsize, training):
        return MemoryTerms(
            output=self._bytes_out(batch_size, itemsize),
            forward=self._bytes_out(batch_size, itemsize),
            backward=self._bytes_in(batch_size, itemsize),
        )


class Affine(_GemmLayer):
    """Fully connected layer ``x @ W + b``; N-D input is flattened to (N, D) and its shape
    restored in backward. ``W`` (D, units), ``b`` (units,)."""

    cache_names = ("_x_shape", "_x2d")

    def __init__(
        self,
        units: int | None = None,
        *,
        W=None,
        b=None,
        weight_init: Any = "he",
        dtype: Any = None,
        name: str | None = None,
    ):
        super().__init__(W=W, b=b, weight_init=weight_init, dtype=dtype, name=name)
        if W is not None:
            if np.ndim(W) != 2:
                raise ValueError(f"Affine W must be 2-D (in, out), got shape {tuple(W.shape)}")
            units = W.shape[1]
        if units is None:
            raise ValueError("Affine needs units, or explicit W")
        self.units = _integer(units, "Affine units", 1)

    def _build(self, input_shape, rng):
        d = math.prod(input_shape)
        if self._explicit:
            if self.W.shape[0] != d:
                raise ValueError(
                    f"Affine: input has {d} features (shape {input_shape}) but W expects {self.W.shape[0]}"
                )
        else:
            init = get_initializer(self.weight_init)
            self.add_param("W", init(rng, (d, self.units), d, self.units))
            self.add_param("b", np.zeros(self.units))
        return (self.units,)

    def gemm_rows(self, x):
        """The GEMM ``x @ W`` without bias, (N, units)."""
        if getattr(x, "ndim", 2) < 2:
            raise ValueError(f"Affine.forward expects (N, ...) input, got shape {tuple(x.shape)}")
        self.check_input(x)
        x2d = self.xp.reshape(x, (x.shape[0], -1))
        if x2d.shape[1] != self.W.shape[0]:
            raise ValueError(
                f"Affine: input has {x2d.shape[1]} features (shape {tuple(x.shape)}) but W expects {self.W.shape[0]}"
            )
        self._x_shape, self._x2d = tuple(x.shape), x2d
        return x2d @ self.W

    def rows_to_output(self, rows):
        return rows

    def output_to_rows(self, dout):
        return dout

    def backward_rows(self, drows, db=None):
        """As the GEMM layers' ``backward_rows``; ``db``, when given, is the bias's gradient
        already computed from ``drows`` (its column sums), taken instead of computing it."""
        xp = self.xp
        self.grads["W"] = xp.matrix_transpose(self._x2d) @ drows
        self.grads["b"] = self.backend.kernels.bias_grad(drows) if db is None else db
        if not self.needs_input_grad:
            return None
        return xp.reshape(drows @ xp.matrix_transpose(self.W), self._x_shape)

    def gemm_memory(self, batch_size, itemsize):
        return GemmMemory(
            columns=0,
            rows=_nbytes(batch_size, (self.units,), itemsize),
            input_grad=self._bytes_in(batch_size, itemsize) if self.needs_input_grad else 0,
            keeps_input=True,  # x reshaped to 2-D: a view of the input
            output_is_rows=True,
        )

    def memory(self, batch_size, itemsize, training):
        gemm = self.gemm_memory(batch_size, itemsize)
        out = self._bytes_out(batch_size, itemsize)
        return MemoryTerms(
            output=out,
            forward=gemm.rows + out,  # x @ W, then + b
            backward=self._bytes_in(batch_size, itemsize),
            keeps_input=gemm.keeps_input,
        )

    def config(self):
        return {"units": self.units}


class ReLU(Layer):
    """max(x, 0); backward passes the gradient where the input was positive."""

    cache_names = ("_mask",)

    def __init__(self, *, name=None):
        super().__init__(name=name)

    def forward(self, x, train=True):
        self.check_input(x)
        self._mask = x > 0
        return self.xp.maximum(x, 0)  # maximum, unlike where(x > 0, ...), keeps NaN visible

    def backward(self, dout):
        return self.xp.where(self._mask, dout, self.xp.zeros((), dtype=dout.dtype))

    def memory(self, batch_size, itemsize, training):
        return MemoryTerms(
            output=self._bytes_out(batch_size, itemsize),
            kept=_nbytes(batch_size, self.input_shape, MASK_BYTES),
            forward=self._bytes_out(batch_size, itemsize),
            backward=self._bytes_in(batch_size, itemsize),
        )


Relu = ReLU  # the book's spelling


def _sigmoid(xp: Any, x: Array) -> Array:
    """1 / (1 + exp(-x)) without overflow for large |x|."""
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))


class Sigmoid(Layer):
    """Logistic function; backward uses the stored output: dout * y * (1 - y)."""

    cache_names = ("_out",)

    def __init__(self, *, name=None):
        super().__init__(name=name)

    def forward(self, x, train=True):
        self.check_input(x)
        self._out = _sigmoid(self.xp, x)
        return self._out

    def backward(self, dout):
        return dout * self._out * (1 - self._out)

    def memory(self, batch_size, itemsize, training):
        out = self._bytes_out(batch_size, itemsize)
        return MemoryTerms(
            output=out, kept=out, output_in_cache=True, forward=out, backward=self._bytes_in(batch_size, itemsize)
        )


class Flatten(Layer):
    """(N, d1, d2, ...) → (N, d1*d2*...)."""

    cache_names = ("_x_shape",)

    def __init__(self, *, name=None):
        super().__init__(name=name)

    def _build(self, input_shape, rng):
        return (math.prod(input_shape),)

    def forward(self, x, train=True):
        self.check_input(x)
        self._x_shape = tuple(x.shape)
        return self.xp.reshape(x, (x.shape[0], -1))

    def backward(self, dout):
        return self.xp.reshape(dout, self._x_shape)

    def memory(self, batch_size, itemsize, training):
        return MemoryTerms(output=self._bytes_out(batch_size, itemsize), view=True)


class Dropout(Layer):
    """Inverted dropout: at training time zero a fraction ``rate`` of the inputs and scale
    the rest by 1/(1 - rate); identity at inference."""

    cache_names = ("_scale",)

    def __init__(self, rate: float = 0.5, *, seed: int | None = None, name=None):
        super().__init__(name=name)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"Dropout rate must be in [0, 1), got {rate}")
        self.rate = float(rate)
        self.seed = seed
        self._rng = None

    def reseed(self, seed: int | None) -> None:
        self.seed, self._rng = seed, None

    def forward(self, x, train=True):
        self.check_input(x)
        if not train or self.rate == 0.0:
            self._scale = None
            return x
        if self._rng is None:
            self._rng = self.backend.random(self.seed)
        keep = self.backend.asarray(self._rng.random(tuple(x.shape), dtype=np.float32)) >= self.rate
        self._scale = self.xp.astype(keep, x.dtype) / (1.0 - self.rate)
        return x * self._scale

    def backward(self, dout):
        return dout if self._scale is None else dout * self._scale

    def to(self, backend):
        super().to(backend)
        self._rng = None
        return self

    def memory(self, batch_size, itemsize, training):
        active = training and self.rate > 0
        out = self._bytes_out(batch_size, itemsize)
        return MemoryTerms(
            output=out,
            kept=self._bytes_in(batch_size, itemsize) if active else 0,  # the scale array
            forward=2 * out if active else 0,  # random draws, then x * scale
            backward=self._bytes_in(batch_size, itemsize),
        )

    def config(self):
        return {"rate": self.rate}


class BatchNormalization(Layer):
    """Batch normalisation (Ioffe and Szegedy 2015): per feature for (N, D) input, per
    channel for (N, C, H, W). Running statistics, updated as
    ``running = momentum*running + (1 - momentum)*batch``, are used at inference."""

    cache_names = ("_xhat", "_inv_std")

    def __init__(self, momentum: float = 0.9, eps: float = 1e-5, *, dtype: Any = None, name=None):
        super().__init__(dtype=dtype, name=name)
        self.momentum = float(momentum)
        self.eps = float(eps)
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"BatchNormalization momentum must be in [0, 1], got {momentum}")
        if not self.eps > 0.0:
            raise ValueError(f"BatchNormalization eps must be > 0, got {eps}")

    def _build(self, input_shape, rng):
        features = input_shape[0]
        self.add_param("gamma", np.ones(features))
        self.add_param("beta", np.zeros(features))
        self.add_state("running_mean", np.zeros(features))
        self.add_state("running_var", np.ones(features))
        return input_shape

    def _axes_and_shape(self, x):
        if x.ndim == 2:
            return (0,), (1, x.shape[1])
        if x.ndim == 4:
            return (0, 2, 3), (1, x.shape[1], 1, 1)
        raise ValueError(f"BatchNormalization expects (N, D) or (N, C, H, W) input, got shape {tuple(x.shape)}")

    def forward(self, x, train=True):
        self.check_input(x)
        xp = self.xp
        axes, shape = self._axes_and_shape(x)
        if x.shape[1] != self.params["gamma"].shape[0]:
            raise ValueError(
                f"BatchNormalization: input has {x.shape[1]} features/channels, "
                f"built for {self.params['gamma'].shape[0]}"
            )
        if train:
            mean = xp.mean(x, axis=axes)
            var = xp.var(x, axis=axes)
            m = self.momentum
            self.state["running_mean"] = m * self.state["running_mean"] + (1 - m) * mean
            self.state["running_var"] = m * self.state["running_var"] + (1 - m) * var
        else:
            mean, var = self.state["running_mean"], self.state["running_var"]
        inv_std = 1 / xp.sqrt(var + self.eps)
        xhat = (x - xp.reshape(mean, shape)) * xp.reshape(inv_std, shape)
        self._xhat, self._inv_std = xhat, inv_std
        return xp.reshape(self.params["gamma"], shape) * xhat + xp.reshape(self.params["beta"], shape)

    def backward(self, dout):
        xp = self.xp
        axes, shape = self._axes_and_shape(dout)
        count = math.prod(dout.shape[a] for a in axes)
        self.grads["beta"] = xp.sum(dout, axis=axes)
        self.grads["gamma"] = xp.sum(dout * self._xhat, axis=axes)
        dxhat = dout * xp.reshape(self.params["gamma"], shape)
        mean_dxhat = xp.sum(dxhat, axis=axes, keepdims=True) / count
        mean_dxhat_xhat = xp.sum(dxhat * self._xhat, axis=axes, keepdims=True) / count
        return (dxhat - mean_dxhat - self._xhat * mean_dxhat_xhat) * xp.reshape(self._inv_std, shape)

    def memory(self, batch_size, itemsize, training):
        out, x = self._bytes_out(batch_size, itemsize), self._bytes_in(batch_size, itemsize)
        return MemoryTerms(output=out, kept=x, forward=2 * out, backward=3 * x)  # kept: x-hat

    def config(self):
        return {"momentum": self.momentum, "eps": self.eps}


# -- losses ------------------------------------------------------------------------


class LossLayer(Layer):
    """A final layer that turns scores and targets into a scalar loss (a 0-d backend array)."""

    def forward(self, x: Array, t: Array, *, check_labels: bool = True) -> Array:  # type: ignore[override]
        raise NotImplementedError

    def backward(self, dout: float = 1.0) -> Array:
        raise NotImplementedError

    def activation(self, x: Array) -> Array:
        """Scores → probabilities (softmax or sigmoid)."""
        raise NotImplementedError

    def count_correct(self, x: Array, t: Array) -> Array:
        """The number of right answers among scores ``x`` for targets ``t``, a 0-d integer
        array (no host sync); a row with a NaN or infinite score is wrong."""
        raise NotImplementedError

    def forward_counting(self, x: Array, t: Array, *, check_labels: bool = True) -> tuple[Array, Array]:
        """``(forward(x, t), count_correct(x, t))``: a training step's loss and right answers."""
        return self.forward(x, t, check_labels=check_labels), self.count_correct(x, t)


def _loss_memory(layer: LossLayer, batch_size: int, itemsize: int) -> MemoryTerms:
    """Probabilities and targets kept (each the size of the scores); backward: the scores'
    gradient and one temporary. The output, a scalar, counts nothing."""
    scores = layer._bytes_in(batch_size, itemsize)
    return MemoryTerms(output=0, kept=2 * scores, backward=2 * scores)


class SoftmaxWithLoss(LossLayer):
    """Softmax followed by the mean cross-entropy over the batch.

    ``x`` (N, K) scores; ``t`` either integer labels (N,) in [0, K) or one-hot / soft
    targets (N, K). The log-softmax is computed with the log-sum-exp trick, so the loss
    is exact where the book's ``log(y + 1e-7)`` is off by about 1e-7 and overflows never
    occur. backward returns ``(softmax(x) - t) * dout / N``.
    """

    cache_names = ("_y", "_t", "_dx")  # _dx: the gradient at dout = 1, from forward_counting

    def __init__(self, *, name=None):
        super().__init__(name=name)

    def activation(self, x):
        xp = self.xp
        z = x - xp.max(x, axis=1, keepdims=True)
        e = xp.exp(z)
        return e / xp.sum(e, axis=1, keepdims=True)

    def _check_targets(self, x, t, check_labels):
        """Integer labels (N,) are returned as they are; (N, K) targets in ``x``'s dtype."""
        xp = self.xp
        n, k = x.shape
        self.backend.check_array(t, "SoftmaxWithLoss.forward (labels)")
        if t.ndim == 1:
            if not xp.isdtype(t.dtype, "integral"):
                raise TypeError(f"SoftmaxWithLoss: 1-D labels must be integers, got {dtype_name(t.dtype)}")
            if t.shape[0] != n:
                raise ValueError(f"SoftmaxWithLoss: {t.shape[0]} labels for {n} samples")
            if check_labels and k > 0:
                lo, hi = int(xp.min(t)), int(xp.max(t))
                if lo < 0 or hi >= k:
                    raise ValueError(
                        f"SoftmaxWithLoss: labels must lie in [0, {k - 1}] for {k} classes, "
                        f"got values from {lo} to {hi}"
                    )
            return t
        if tuple(t.shape) != (n, k):
            raise ValueError(
                f"SoftmaxWithLoss: targets must be (N,) labels or (N, K) = ({n}, {k}) one-hot, "
                f"got shape {tuple(t.shape)}"
            )
        return t if t.dtype == x.dtype else xp.astype(t, x.dtype)

    def forward(self, x, t, *, check_labels=True):
        self.check_input(x)
        if x.ndim != 2:
            raise ValueError(f"SoftmaxWithLoss expects (N, K) scores, got shape {tuple(x.shape)}")
        self._t = self._check_targets(x, t, check_labels)
        loss, self._y = self.backend.kernels.softmax_cross_entropy(x, self._t)
        self._dx = None
        return loss

    def count_correct(self, x, t):
        xp = self.xp
        predicted = xp.argmax(x, axis=1)
        truth = xp.argmax(t, axis=1) if t.ndim == 2 else t
        if truth.dtype != predicted.dtype:
            predicted = xp.astype(predicted, truth.dtype)
        right = (predicted == truth) & xp.all(xp.isfinite(x), axis=1)
        return xp.sum(xp.astype(right, xp.int64))

    def forward_counting(self, x, t, *, check_labels=True):
        """The loss, the right answers and the gradient that ``backward(1.0)`` returns, in one
        kernel operation (``softmax_cross_entropy_count_grad``): a training step's backward
        then launches nothing for the loss."""
        self._t = self._check_scores(x, t, check_labels)
        loss, self._y, right, self._dx = self.backend.kernels.softmax_cross_entropy_count_grad(
            x, self._t, self._scale(x)
        )
        return loss, right

    def forward_counting_biased(self, rows, b, t, *, check_labels=True):
        """:meth:`forward_counting` of the scores ``rows + b`` (GEMM rows (N, K) without the
        bias b (K,) of the layer that made them), with the gradient of ``b`` at dout = 1:
        ``(loss, right, db)``. One kernel operation
        (``bias_softmax_cross_entropy_count_grad``): the scores are never stored, and the
        bias's gradient needs no product of its own."""
        self._t = self._check_scores(rows, t, check_labels)
        loss, self._y, right, self._dx, db = self.backend.kernels.bias_softmax_cross_entropy_count_grad(
            rows, b, self._t, self._scale(rows)
        )
        return loss, right, db

    def _check_scores(self, x, t, check_labels):
        """Check (N, K) scores; return the targets as :meth:`_check_targets` does."""
        self.check_input(x)
        if x.ndim != 2:
            raise ValueError(f"SoftmaxWithLoss expects (N, K) scores, got shape {tuple(x.shape)}")
        return self._check_targets(x, t, check_labels)

    @staticmethod
    def _scale(x):
        """backward's dout / N at dout = 1 (an empty batch has no gradient)."""
        return 1.0 / max(x.shape[0], 1)

    def backward(self, dout=1.0):
        if self._dx is not None and isinstance(dout, (int, float)) and dout == 1:
            return self._dx
        return self.backend.kernels.softmax_cross_entropy_backward(self._y, self._t, dout / self._y.shape[0])

    def memory(self, batch_size, itemsize, training):
        return _loss_memory(self, batch_size, itemsize)


class SigmoidWithLoss(LossLayer):
    """Sigmoid followed by the mean binary cross-entropy, computed from the logits as
    ``max(x, 0) - x*t + log1p(exp(-|x|))`` (no overflow, no log(0)).

    ``x`` (N,) or (N, 1) logits; ``t`` 0/1 targets of the same number of elements.
    """

    cache_names = ("_y", "_t")

    def __init__(self, *, name=None):
        super().__init__(name=name)

    def activation(self, x):
        return _sigmoid(self.xp, x)

    def forward(self, x, t, *, check_labels=True):
        xp = self.xp
        self.check_input(x)
        self.backend.check_array(t, "SigmoidWithLoss.forward (targets)")
        n = x.shape[0]
        if x.ndim == 2 and x.shape[1] != 1 or x.ndim > 2:
            raise ValueError(f"SigmoidWithLoss expects (N,) or (N, 1) logits, got shape {tuple(x.shape)}")
        if math.prod(t.shape) != n:
            raise ValueError(f"SigmoidWithLoss: {math.prod(t.shape)} targets for {n} samples")
        t = xp.reshape(xp.astype(t, x.dtype), tuple(x.shape))
        if check_labels and n > 0:
            lo, hi = float(xp.min(t)), float(xp.max(t))
            if lo < 0 or hi > 1:
                raise ValueError(f"SigmoidWithLoss: targets must lie in [0, 1], got values from {lo} to {hi}")
        self._y, self._t = _sigmoid(xp, x), t
        loss = xp.maximum(x, 0) - x * t + xp.log1p(xp.exp(-xp.abs(x)))
        return xp.asarray(xp.sum(loss) / n)

    def count_correct(self, x, t):
        xp = self.xp
        x = xp.reshape(x, (-1,))
        truth = xp.reshape(xp.astype(t, x.dtype), (-1,)) > 0.5  # integer labels too
        return xp.sum(xp.astype(((x > 0) == truth) & xp.isfinite(x), xp.int64))

    def backward(self, dout=1.0):
        return (self._y - self._t) * (dout / self._y.shape[0])

    def memory(self, batch_size, itemsize, training):
        return _loss_memory(self, batch_size, itemsize)


LAYERS = {
    cls.__name__: cls
    for cls in (
        Convolution,
        MaxPooling,
        AvgPooling,
        Affine,
        ReLU,
        Sigmoid,
        Flatten,
        Dropout,
        BatchNormalization,
        SoftmaxWithLoss,
        SigmoidWithLoss,
    )
}
