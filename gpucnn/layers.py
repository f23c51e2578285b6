"""Layers, written once against the array API and the backend's kernel set (NCHW).

Every layer has ``forward(x, train=True)`` and ``backward(dout)``; loss layers have
``forward(x, t)`` and ``backward(dout=1)``. Arrays a layer keeps between forward and
backward are declared in its ``__init__``. Trainable arrays live in ``layer.params``
and their gradients in ``layer.grads`` (same keys), which is all an optimizer sees;
the book's names ``W``, ``b``, ``dW``, ``db`` are properties over those dicts.

A layer is bound to the backend that was current when it was made (``layer.backend``);
it refuses arrays of any other backend instead of copying them silently, and never
asks which backend it is on: it calls ``xp`` and ``backend.kernels``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .backend import Backend, get_backend
from .initializers import get_initializer
from .kernels import check_pool_pad, output_hw

__all__ = [
    "Affine",
    "ConvReluMaxPool",
    "LinearReLU",
    "AvgPooling",
    "BatchNormalization",
    "Convolution",
    "Dropout",
    "Flatten",
    "Layer",
    "LossLayer",
    "MaxPooling",
    "ReLU",
    "Relu",
    "Sigmoid",
    "SigmoidWithLoss",
    "SoftmaxWithLoss",
]

Array = Any
Shape = tuple[int, ...]


def xp_dtype(xp: Any, spec: Any) -> Any:
    """The namespace's dtype object for ``spec`` (a name, a NumPy dtype or an xp dtype)."""
    if spec is None:
        return None
    if isinstance(spec, str):
        return getattr(xp, spec)
    try:
        return getattr(xp, np.dtype(spec).name)
    except TypeError:
        return spec  # already the namespace's own dtype object


def dtype_name(dtype: Any) -> str:
    try:
        return np.dtype(dtype).name
    except TypeError:
        return str(dtype).rsplit(".", 1)[-1]


class Layer:
    """Base class: backend binding, dtype rules, parameter bookkeeping, lazy building."""

    param_names: tuple[str, ...] = ()

    def __init__(self, *, dtype: Any = None, name: str | None = None) -> None:
        self.backend: Backend = get_backend()
        self.dtype = xp_dtype(self.backend.xp, dtype)
        self.name = name
        self.params: dict[str, Array] = {}
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
    def built(self) -> bool:
        return self.input_shape is not None

    def build(self, input_shape: Shape, rng: np.random.Generator | None = None, dtype: Any = None) -> Shape:
        """Fix the input shape (one sample), create parameters, return the output shape."""
        if self.dtype is None:
            self.dtype = xp_dtype(self.xp, dtype if dtype is not None else "float32")
        input_shape = tuple(int(d) for d in input_shape)
        self.output_shape = self._build(input_shape, rng if rng is not None else np.random.default_rng())
        self.input_shape = input_shape
        return self.output_shape

    def _build(self, input_shape: Shape, rng: np.random.Generator) -> Shape:
        return input_shape

    def _param(self, value: np.ndarray) -> Array:
        return self.backend.asarray(np.asarray(value), dtype=self.dtype)

    def to(self, backend: str | Backend) -> Layer:
        """Move parameters and state to ``backend`` (in place); returns the layer."""
        target = get_backend(backend)
        for store in (self.params, *self._state_dicts()):
            for key, value in store.items():
                store[key] = target.asarray(self.backend.to_numpy(value))
        self.grads = {}
        self.dtype = xp_dtype(target.xp, dtype_name(self.dtype)) if self.dtype is not None else None
        self.backend = target
        self._clear_cache()
        return self

    def _state_dicts(self) -> tuple[dict, ...]:
        """Non-trainable arrays that travel with the layer (BatchNormalization's statistics)."""
        return ()

    def _clear_cache(self) -> None:
        """Drop arrays kept from the last forward pass."""

    # -- checks -----------------------------------------------------------------------

    def _check_input(self, x: Array, ndim: int | None = None) -> None:
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

    def forward(self, x: Array, train: bool = True) -> Array:
        raise NotImplementedError

    def backward(self, dout: Array) -> Array:
        raise NotImplementedError

    def __call__(self, x: Array, train: bool = True) -> Array:
        return self.forward(x, train)

    def count_params(self) -> int:
        return sum(math.prod(p.shape) for p in self.params.values())

    def config(self) -> dict:
        """Hyperparameters that rebuild the layer (saved with a model)."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


def _pair(v: int | tuple[int, int], what: str) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{what} must be an int or a pair (h, w), got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


class _WeightBias(Layer):
    """A layer with a weight ``W`` and a bias ``b``, built lazily or from explicit arrays."""

    param_names = ("W", "b")

    def __init__(self, *, W=None, b=None, weight_init: Any = "he", dtype: Any = None, name: str | None = None):
        super().__init__(dtype=dtype, name=name)
        self.weight_init = weight_init
        self._explicit = W is not None
        if W is not None:
            W = W if self.backend.is_array(W) else np.asarray(W)
            if self.dtype is None:
                self.dtype = xp_dtype(self.xp, dtype_name(W.dtype))
            self.params["W"] = self.backend.asarray(W, dtype=self.dtype)
            fan_out = W.shape[0] if W.ndim == 4 else W.shape[1]
            bias = np.zeros(fan_out) if b is None else b
            self.params["b"] = self.backend.asarray(bias, dtype=self.dtype)

    W = property(lambda self: self.params["W"], lambda self, v: self.params.__setitem__("W", v))
    b = property(lambda self: self.params["b"], lambda self, v: self.params.__setitem__("b", v))
    dW = property(lambda self: self.grads.get("W"))
    db = property(lambda self: self.grads.get("b"))


class Convolution(_WeightBias):
    """2-D convolution (cross-correlation) through im2col and one GEMM.

    ``Convolution(filter_num, filter_size, stride=1, pad=0)`` with lazy weights, or the
    book's ``Convolution(W=W, b=b, stride=1, pad=0)`` with ``W`` (FN, C, FH, FW), ``b`` (FN,).
    Input (N, C, H, W) → output (N, FN, OH, OW).
    """

    def __init__(
        self,
        filter_num: int | None = None,
        filter_size: int | tuple[int, int] | None = None,
        stride: int = 1,
        pad: int = 0,
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
        self.filter_num = int(filter_num)
        self.filter_size = _pair(filter_size, "filter_size")
        self.stride = int(stride)
        self.pad = int(pad)
        if self.stride < 1 or self.pad < 0:
            raise ValueError(f"Convolution needs stride >= 1 and pad >= 0, got stride={stride}, pad={pad}")
        self._x_shape: Shape | None = None
        self._col: Array | None = None

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
            self.params["W"] = self._param(init(rng, (self.filter_num, c, fh, fw), fan_in, fan_out))
            self.params["b"] = self._param(np.zeros(self.filter_num))
        oh, ow = output_hw(h, w, fh, fw, self.stride, self.pad)
        return (self.filter_num, oh, ow)

    def _check_channels(self, x: Array) -> None:
        """The checks of every forward: the input's backend, rank, dtype and channel count."""
        self._check_input(x, ndim=4)
        c, wc = x.shape[1], self.W.shape[1]
        if c != wc:
            raise ValueError(f"Convolution: input has {c} channels but W expects {wc} (W shape {tuple(self.W.shape)})")

    def _rows(self, x: Array) -> tuple[Array, tuple[int, int, int]]:
        """im2col and the GEMM, no bias: rows (N*OH*OW, FN) in (n, oh, ow) order, and (N, OH, OW)."""
        self._check_channels(x)
        n, c, h, w = x.shape
        fn, wc, fh, fw = self.W.shape
        oh, ow = output_hw(h, w, fh, fw, self.stride, self.pad)
        col = self.backend.kernels.im2col(x, fh, fw, self.stride, self.pad)
        self._x_shape, self._col = tuple(x.shape), col
        return col @ self.xp.matrix_transpose(self.xp.reshape(self.W, (fn, wc * fh * fw))), (n, oh, ow)

    def _backward_rows(self, rows: Array) -> Array | None:
        """Gradients from the gradient of the GEMM rows (N*OH*OW, FN); returns dx or None."""
        xp = self.xp
        fn, c, fh, fw = self.W.shape
        self.grads["b"] = self.backend.kernels.bias_grad(rows)
        self.grads["W"] = xp.reshape(xp.matrix_transpose(rows) @ self._col, (fn, c, fh, fw))
        if not self.needs_input_grad:
            return None
        dcol = rows @ xp.reshape(self.W, (fn, c * fh * fw))
        return self.backend.kernels.col2im(dcol, self._x_shape, fh, fw, self.stride, self.pad)

    def forward(self, x, train=True):
        rows, (n, oh, ow) = self._rows(x)
        return self.backend.kernels.rows_to_nchw(rows + self.b, n, oh, ow)

    def backward(self, dout):
        return self._backward_rows(self.backend.kernels.nchw_to_rows(dout))

    def _clear_cache(self):
        self._x_shape = self._col = None

    def config(self):
        return {"filter_num": self.filter_num, "filter_size": self.filter_size, "stride": self.stride, "pad": self.pad}


class ConvReluMaxPool:
    """Convolution → ReLU → MaxPooling run as one step through fused kernel operations.

    Models build it over three consecutive layers; the layers keep their parameters and
    gradients (``conv.params``, ``conv.grads``), so nothing else changes. The ReLU output
    and the unpooled activation are never stored. Two ways through the kernels:

    - from the input (``conv_bias_relu_maxpool`` and its backward
      ``conv_maxpool_relu_backward_params``), when the input needs no gradient (a first
      layer) and the kernel set computes such a convolution directly
      (``prefers_direct_conv``): no column matrix at all;
    - from the GEMM rows (``im2col``, a GEMM, ``bias_relu_maxpool`` and
      ``maxpool_relu_backward``) otherwise.

    Inference always asks for ``conv_bias_relu_maxpool_infer`` (no argmax is tracked);
    a large batch runs ``infer_block`` images at a time, so that a column matrix and its
    GEMM output stay in the CPU's caches, where those of a whole batch of 1024 (tens of
    MB) would stream from memory twice. The results are the same.
    """

    infer_block = 128

    def __init__(self, conv: Convolution, relu: ReLU, pool: MaxPooling) -> None:
        self.conv, self.relu, self.pool = conv, relu, pool
        self._conv_shape: tuple[int, int, int] | None = None  # (N, OH, OW) of the convolution, rows path
        self._x: Array | None = None  # the input, direct path
        self._argmax: Array | None = None
        self._out: Array | None = None

    @staticmethod
    def fits(layers: list[Layer], i: int) -> bool:
        """Whether ``layers[i:i+3]`` is a Convolution, a ReLU and a MaxPooling."""
        return (
            i + 2 < len(layers)
            and type(layers[i]) is Convolution
            and type(layers[i + 1]) is ReLU
            and type(layers[i + 2]) is MaxPooling
        )

    def _direct(self) -> bool:
        """Whether training takes the direct way (see the class docstring)."""
        conv = self.conv
        _, c, fh, fw = conv.W.shape
        return not conv.needs_input_grad and conv.backend.kernels.prefers_direct_conv(c, fh, fw, conv.stride)

    def forward(self, x, train=True):
        block = self.infer_block
        if not train and x.shape[0] > block:
            parts = [self.forward(x[i : i + block], train=False) for i in range(0, x.shape[0], block)]
            return self.conv.xp.concat(parts, axis=0)
        conv, k = self.conv, self.conv.backend.kernels
        pool = self._pool_args()
        self._out = self._argmax = self._x = self._conv_shape = None
        if not train:  # no gradient will flow back: no argmax, nothing kept
            conv._check_channels(x)
            return k.conv_bias_relu_maxpool_infer(x, conv.W, conv.b, conv.stride, conv.pad, *pool)
        if self._direct():
            conv._check_channels(x)
            self._x = x
            self._out, self._argmax = k.conv_bias_relu_maxpool(x, conv.W, conv.b, conv.stride, conv.pad, *pool)
            return self._out
        rows, self._conv_shape = conv._rows(x)
        self._out, self._argmax = k.bias_relu_maxpool(rows, conv.b, *self._conv_shape, *pool)
        return self._out

    def backward(self, dout):
        conv, k = self.conv, self.conv.backend.kernels
        pool = self._pool_args()
        if self._x is not None:  # the direct path: the input needs no gradient
            conv.grads["W"], conv.grads["b"] = k.conv_maxpool_relu_backward_params(
                dout, self._argmax, self._out, self._x, tuple(conv.W.shape), conv.stride, conv.pad, *pool
            )
            return None
        rows = k.maxpool_relu_backward(dout, self._argmax, self._out, *self._conv_shape, *pool)
        return conv._backward_rows(rows)

    def _pool_args(self) -> tuple[int, int, int, int]:
        """The pooling's (KH, KW, stride, pad), as the kernel operations take them."""
        return (*self.pool.pool_size, self.pool.stride, self.pool.pad)


class LinearReLU:
    """Affine → ReLU or Convolution → ReLU run as one step: the bias and the ReLU in one
    pass over the GEMM output (the kernel operation ``bias_relu``)."""

    def __init__(self, linear: Affine | Convolution, relu: ReLU) -> None:
        self.linear, self.relu = linear, relu
        self._conv_shape: tuple[int, int, int] | None = None
        self._out: Array | None = None  # the ReLU output as GEMM rows: its sign is the mask

    @staticmethod
    def fits(layers: list[Layer], i: int) -> bool:
        """Whether ``layers[i:i+2]`` is an Affine or a Convolution followed by a ReLU."""
        return i + 1 < len(layers) and type(layers[i]) in (Affine, Convolution) and type(layers[i + 1]) is ReLU

    def forward(self, x, train=True):
        k = self.linear.backend.kernels
        rows, self._conv_shape = self.linear._rows(x)
        self._out = k.bias_relu(rows, self.linear.b)
        return self._out if self._conv_shape is None else k.rows_to_nchw(self._out, *self._conv_shape)

    def backward(self, dout):
        xp, k = self.linear.xp, self.linear.backend.kernels
        rows = dout if self._conv_shape is None else k.nchw_to_rows(dout)
        return self.linear._backward_rows(xp.where(self._out > 0, rows, xp.zeros((), dtype=rows.dtype)))


class _Pooling(Layer):
    def __init__(
        self, pool_size: int | tuple[int, int] = 2, stride: int | None = None, pad: int = 0, *, name: str | None = None
    ):
        super().__init__(name=name)
        self.pool_size = _pair(pool_size, "pool_size")
        self.stride = int(stride) if stride is not None else self.pool_size[0]
        self.pad = int(pad)
        if stride is None and self.pool_size[0] != self.pool_size[1]:
            raise ValueError(f"pool_size {self.pool_size} is not square: give the stride explicitly")
        if self.stride < 1 or self.pad < 0:
            raise ValueError(f"{type(self).__name__} needs stride >= 1 and pad >= 0, got stride={stride}, pad={pad}")
        check_pool_pad(*self.pool_size, self.pad)
        self._x_shape: Shape | None = None

    def _build(self, input_shape, rng):
        if len(input_shape) != 3:
            raise ValueError(f"{type(self).__name__} expects (C, H, W) samples, got shape {input_shape}")
        c, h, w = input_shape
        ph, pw = self.pool_size
        return (c, *output_hw(h, w, ph, pw, self.stride, self.pad))

    def config(self):
        return {"pool_size": self.pool_size, "stride": self.stride, "pad": self.pad}

    def _clear_cache(self):
        self._x_shape = None


class MaxPooling(_Pooling):
    """Max pooling; ``stride`` defaults to the pool size. (N, C, H, W) → (N, C, OH, OW)."""

    def __init__(self, pool_size=2, stride=None, pad=0, *, name=None):
        super().__init__(pool_size, stride, pad, name=name)
        self._argmax: Array | None = None

    def forward(self, x, train=True):
        self._check_input(x, ndim=4)
        ph, pw = self.pool_size
        out, argmax = self.backend.kernels.maxpool_forward(x, ph, pw, self.stride, self.pad)
        self._x_shape, self._argmax = tuple(x.shape), argmax
        return out

    def backward(self, dout):
        ph, pw = self.pool_size
        return self.backend.kernels.maxpool_backward(dout, self._argmax, self._x_shape, ph, pw, self.stride, self.pad)

    def _clear_cache(self):
        self._x_shape = self._argmax = None


class AvgPooling(_Pooling):
    """Average pooling, pad cells counted in the divisor. (N, C, H, W) → (N, C, OH, OW)."""

    def forward(self, x, train=True):
        self._check_input(x, ndim=4)
        ph, pw = self.pool_size
        self._x_shape = tuple(x.shape)
        return self.backend.kernels.avgpool_forward(x, ph, pw, self.stride, self.pad)

    def backward(self, dout):
        ph, pw = self.pool_size
        return self.backend.kernels.avgpool_backward(dout, self._x_shape, ph, pw, self.stride, self.pad)


class Affine(_WeightBias):
    """Fully connected layer ``x @ W + b``; N-D input is flattened to (N, D) and its shape
    restored in backward. ``W`` (D, units), ``b`` (units,)."""

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
        self.units = int(units)
        self._x_shape: Shape | None = None
        self._x2d: Array | None = None

    def _build(self, input_shape, rng):
        d = math.prod(input_shape)
        if self._explicit:
            if self.W.shape[0] != d:
                raise ValueError(
                    f"Affine: input has {d} features (shape {input_shape}) but W expects {self.W.shape[0]}"
                )
        else:
            init = get_initializer(self.weight_init)
            self.params["W"] = self._param(init(rng, (d, self.units), d, self.units))
            self.params["b"] = self._param(np.zeros(self.units))
        return (self.units,)

    def _rows(self, x: Array) -> tuple[Array, None]:
        """The GEMM ``x @ W`` without bias, (N, units); None: no spatial shape."""
        if getattr(x, "ndim", 2) < 2:
            raise ValueError(f"Affine.forward expects (N, ...) input, got shape {tuple(x.shape)}")
        self._check_input(x)
        x2d = self.xp.reshape(x, (x.shape[0], -1))
        if x2d.shape[1] != self.W.shape[0]:
            raise ValueError(
                f"Affine: input has {x2d.shape[1]} features (shape {tuple(x.shape)}) but W expects {self.W.shape[0]}"
            )
        self._x_shape, self._x2d = tuple(x.shape), x2d
        return x2d @ self.W, None

    def _backward_rows(self, dout: Array) -> Array | None:
        xp = self.xp
        self.grads["W"] = xp.matrix_transpose(self._x2d) @ dout
        self.grads["b"] = self.backend.kernels.bias_grad(dout)
        if not self.needs_input_grad:
            return None
        return xp.reshape(dout @ xp.matrix_transpose(self.W), self._x_shape)

    def forward(self, x, train=True):
        return self._rows(x)[0] + self.b

    def backward(self, dout):
        return self._backward_rows(dout)

    def _clear_cache(self):
        self._x_shape = self._x2d = None

    def config(self):
        return {"units": self.units}


class ReLU(Layer):
    """max(x, 0); backward passes the gradient where the input was positive."""

    def __init__(self, *, name=None):
        super().__init__(name=name)
        self._mask: Array | None = None

    def forward(self, x, train=True):
        self._check_input(x)
        self._mask = x > 0
        return self.xp.maximum(x, 0)  # maximum, unlike where(x > 0, ...), keeps NaN visible

    def backward(self, dout):
        return self.xp.where(self._mask, dout, self.xp.zeros((), dtype=dout.dtype))

    def _clear_cache(self):
        self._mask = None


Relu = ReLU  # the book's spelling


def _sigmoid(xp: Any, x: Array) -> Array:
    """1 / (1 + exp(-x)) without overflow for large |x|."""
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))


class Sigmoid(Layer):
    """Logistic function; backward uses the stored output: dout * y * (1 - y)."""

    def __init__(self, *, name=None):
        super().__init__(name=name)
        self._out: Array | None = None

    def forward(self, x, train=True):
        self._check_input(x)
        self._out = _sigmoid(self.xp, x)
        return self._out

    def backward(self, dout):
        return dout * self._out * (1 - self._out)

    def _clear_cache(self):
        self._out = None


class Flatten(Layer):
    """(N, d1, d2, ...) → (N, d1*d2*...)."""

    def __init__(self, *, name=None):
        super().__init__(name=name)
        self._x_shape: Shape | None = None

    def _build(self, input_shape, rng):
        return (math.prod(input_shape),)

    def forward(self, x, train=True):
        self._check_input(x)
        self._x_shape = tuple(x.shape)
        return self.xp.reshape(x, (x.shape[0], -1))

    def backward(self, dout):
        return self.xp.reshape(dout, self._x_shape)


class Dropout(Layer):
    """Inverted dropout: at training time zero a fraction ``rate`` of the inputs and scale
    the rest by 1/(1 - rate); identity at inference."""

    def __init__(self, rate: float = 0.5, *, seed: int | None = None, name=None):
        super().__init__(name=name)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"Dropout rate must be in [0, 1), got {rate}")
        self.rate = float(rate)
        self.seed = seed
        self._rng = None
        self._scale: Array | None = None

    def reseed(self, seed: int | None) -> None:
        self.seed, self._rng = seed, None

    def forward(self, x, train=True):
        self._check_input(x)
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

    def _clear_cache(self):
        self._scale = None

    def config(self):
        return {"rate": self.rate}


class BatchNormalization(Layer):
    """Batch normalisation (Ioffe and Szegedy 2015): per feature for (N, D) input, per
    channel for (N, C, H, W). Running statistics, updated as
    ``running = momentum*running + (1 - momentum)*batch``, are used at inference."""

    param_names = ("gamma", "beta")

    def __init__(self, momentum: float = 0.9, eps: float = 1e-5, *, dtype: Any = None, name=None):
        super().__init__(dtype=dtype, name=name)
        self.momentum = float(momentum)
        self.eps = float(eps)
        self.state: dict[str, Array] = {}
        self._xhat: Array | None = None
        self._inv_std: Array | None = None

    def _state_dicts(self):
        return (self.state,)

    def _build(self, input_shape, rng):
        features = input_shape[0]
        self.params["gamma"] = self._param(np.ones(features))
        self.params["beta"] = self._param(np.zeros(features))
        self.state["running_mean"] = self._param(np.zeros(features))
        self.state["running_var"] = self._param(np.ones(features))
        return input_shape

    def _axes_and_shape(self, x):
        if x.ndim == 2:
            return (0,), (1, x.shape[1])
        if x.ndim == 4:
            return (0, 2, 3), (1, x.shape[1], 1, 1)
        raise ValueError(f"BatchNormalization expects (N, D) or (N, C, H, W) input, got shape {tuple(x.shape)}")

    def forward(self, x, train=True):
        self._check_input(x)
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

    def _clear_cache(self):
        self._xhat = self._inv_std = None

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


class SoftmaxWithLoss(LossLayer):
    """Softmax followed by the mean cross-entropy over the batch.

    ``x`` (N, K) scores; ``t`` either integer labels (N,) in [0, K) or one-hot / soft
    targets (N, K). The log-softmax is computed with the log-sum-exp trick, so the loss
    is exact where the book's ``log(y + 1e-7)`` is off by about 1e-7 and overflows never
    occur. backward returns ``(softmax(x) - t) * dout / N``.
    """

    def __init__(self, *, name=None):
        super().__init__(name=name)
        self._y: Array | None = None
        self._t: Array | None = None

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
        self._check_input(x)
        if x.ndim != 2:
            raise ValueError(f"SoftmaxWithLoss expects (N, K) scores, got shape {tuple(x.shape)}")
        self._t = self._check_targets(x, t, check_labels)
        loss, self._y = self.backend.kernels.softmax_cross_entropy(x, self._t)
        return loss

    def backward(self, dout=1.0):
        return self.backend.kernels.softmax_cross_entropy_backward(self._y, self._t, dout / self._y.shape[0])

    def _clear_cache(self):
        self._y = self._t = None


class SigmoidWithLoss(LossLayer):
    """Sigmoid followed by the mean binary cross-entropy, computed from the logits as
    ``max(x, 0) - x*t + log1p(exp(-|x|))`` (no overflow, no log(0)).

    ``x`` (N,) or (N, 1) logits; ``t`` 0/1 targets of the same number of elements.
    """

    def __init__(self, *, name=None):
        super().__init__(name=name)
        self._y: Array | None = None
        self._t: Array | None = None

    def activation(self, x):
        return _sigmoid(self.xp, x)

    def forward(self, x, t, *, check_labels=True):
        xp = self.xp
        self._check_input(x)
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

    def backward(self, dout=1.0):
        return (self._y - self._t) * (dout / self._y.shape[0])

    def _clear_cache(self):
        self._y = self._t = None


def _dev(x):
    return getattr(x, "device", None)


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
